//! What the pages show of a manifest, read from its bytes: kind, size, platforms, layers,
//! annotations. Pure functions of stored content, so they are tested without a server.

use std::collections::BTreeMap;

use crate::metadata::ManifestRecord;
use crate::oci::{Descriptor, ImageIndex, ImageManifest, ManifestKind, Platform};

/// A manifest as the pages describe it.
#[derive(Clone, Debug, Default)]
pub struct ManifestView {
    /// An index (or manifest list) rather than an image.
    pub is_index: bool,
    /// The image's config (images only).
    pub config: Option<Descriptor>,
    /// The image's layers (images only).
    pub layers: Vec<Descriptor>,
    /// The index's children (indexes only).
    pub children: Vec<Descriptor>,
    /// `artifactType`, or for an image its config's media type when that is not an image's.
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
}

/// Config media types of runnable images: anything else is an artifact's.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

impl ManifestView {
    /// Reads `record`'s content; content that does not parse shows as an empty image.
    pub fn of(record: &ManifestRecord) -> ManifestView {
        match ManifestKind::of_media_type(&record.media_type) {
            Some(ManifestKind::Index) => {
                match serde_json::from_slice::<ImageIndex>(&record.content) {
                    Ok(index) => ManifestView {
                        is_index: true,
                        children: index.manifests,
                        artifact_type: index.artifact_type,
                        annotations: index.annotations.unwrap_or_default(),
                        subject: index.subject,
                        ..ManifestView::default()
                    },
                    Err(_) => ManifestView {
                        is_index: true,
                        ..ManifestView::default()
                    },
                }
            }
            _ => match serde_json::from_slice::<ImageManifest>(&record.content) {
                Ok(image) => {
                    let artifact_type = image.artifact_type.clone().or_else(|| {
                        (!IMAGE_CONFIGS.contains(&image.config.media_type.as_str()))
                            .then(|| image.config.media_type.clone())
                    });
                    ManifestView {
                        is_index: false,
                        config: Some(image.config),
                        layers: image.layers,
                        children: Vec::new(),
                        artifact_type,
                        annotations: image.annotations.unwrap_or_default(),
                        subject: image.subject,
                    }
                }
                Err(_) => ManifestView::default(),
            },
        }
    }

    /// An image's compressed size: its config and layers (what a pull downloads besides the
    /// manifest). An index has none of its own; see [`index_size`].
    pub fn image_size(&self) -> u64 {
        // Sizes are the pusher's word: a crafted manifest may not overflow the sum.
        self.layers
            .iter()
            .fold(self.config.as_ref().map_or(0, |c| c.size), |sum, l| {
                sum.saturating_add(l.size)
            })
    }

    /// The platforms an index names, as `os/architecture[/variant]`, in its order.
    pub fn platforms(&self) -> Vec<String> {
        self.children
            .iter()
            .filter_map(|c| c.platform.as_ref().map(platform_name))
            .collect()
    }
}

/// `os/architecture[/variant]`.
pub fn platform_name(platform: &Platform) -> String {
    match &platform.variant {
        Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

/// An index's size: the sum of its children's image sizes, as far as `children` (the child
/// manifests this repository holds) tell; children it does not hold count as their manifest.
pub fn index_size(index: &ManifestView, children: &[ManifestRecord]) -> u64 {
    index
        .children
        .iter()
        .map(|c| {
            children
                .iter()
                .find(|m| m.digest == c.digest)
                .map_or(c.size, |m| ManifestView::of(m).image_size())
        })
        .fold(0u64, u64::saturating_add)
}

/// `n` bytes for people: `532 B`, `1.4 KiB`, `23.9 MiB`, `1.2 GiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago `then` was at `now` (Unix seconds), roughly: `just now`, `5 minutes ago`,
/// `3 hours ago`, `12 days ago`, `2 years ago`.
pub fn age(then: i64, now: i64) -> String {
    let seconds = (now - then).max(0);
    let (n, unit) = match seconds {
        0..60 => return "just now".to_owned(),
        60..3_600 => (seconds / 60, "minute"),
        3_600..86_400 => (seconds / 3_600, "hour"),
        86_400..31_536_000 => (seconds / 86_400, "day"),
        _ => (seconds / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// What kind of referrer an artifact type names, for the referrers tree.
pub fn referrer_kind(artifact_type: Option<&str>) -> &'static str {
    let t = artifact_type.unwrap_or("");
    if t.contains("cosign") || t.contains("notary") || t.contains("signature") {
        "signature"
    } else if t.contains("spdx")
        || t.contains("cyclonedx")
        || t.contains("sbom")
        || t.contains("syft")
    {
        "SBOM"
    } else if t.contains("in-toto")
        || t.contains("attestation")
        || t.contains("provenance")
        || t.contains("vex")
    {
        "attestation"
    } else {
        "artifact"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use bytes::Bytes;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn record(media_type: &str, content: serde_json::Value, d: char) -> ManifestRecord {
        ManifestRecord {
            digest: digest(d),
            media_type: media_type.to_owned(),
            content: Bytes::from(content.to_string()),
            subject: None,
        }
    }

    fn image(d: char, sizes: &[u64]) -> ManifestRecord {
        let layers: Vec<_> = sizes
            .iter()
            .map(|s| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('c').as_str(), "size": s}))
            .collect();
        record(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('b').as_str(), "size": 100},
                "layers": layers,
                "annotations": {"org.opencontainers.image.title": "<script>"}
            }),
            d,
        )
    }

    #[test]
    fn an_image_is_its_config_and_layers() {
        let view = ManifestView::of(&image('a', &[1000, 24]));
        assert!(!view.is_index);
        assert_eq!(view.image_size(), 1124);
        assert_eq!(view.layers.len(), 2);
        assert_eq!(view.artifact_type, None);
        assert_eq!(
            view.annotations["org.opencontainers.image.title"],
            "<script>"
        );
    }

    #[test]
    fn an_index_sums_the_children_it_holds_and_names_their_platforms() {
        let amd = image('d', &[1000]);
        let arm = image('e', &[2000]);
        let index = record(
            "application/vnd.oci.image.index.v1+json",
            serde_json::json!({
                "schemaVersion": 2,
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.digest.as_str(), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.digest.as_str(), "size": 10, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('f').as_str(), "size": 7}
                ]
            }),
            '9',
        );
        let view = ManifestView::of(&index);
        assert!(view.is_index);
        assert_eq!(view.platforms(), ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(index_size(&view, &[amd, arm]), 1100 + 2100 + 7);
    }

    #[test]
    fn artifacts_are_told_by_their_type_or_config() {
        let sbom = record(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.example.sbom.config", "digest": digest('b').as_str(), "size": 2},
                "layers": [],
                "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('a').as_str(), "size": 5}
            }),
            '8',
        );
        let view = ManifestView::of(&sbom);
        assert_eq!(
            view.artifact_type.as_deref(),
            Some("application/vnd.example.sbom.config")
        );
        assert_eq!(view.subject.map(|s| s.digest), Some(digest('a')));
        assert_eq!(referrer_kind(Some("application/spdx+json")), "SBOM");
        assert_eq!(
            referrer_kind(Some("application/vnd.dev.cosign.artifact.sig.v1+json")),
            "signature"
        );
        assert_eq!(
            referrer_kind(Some("application/vnd.cncf.notary.signature")),
            "signature"
        );
        assert_eq!(
            referrer_kind(Some("application/vnd.in-toto+json")),
            "attestation"
        );
        assert_eq!(referrer_kind(None), "artifact");
    }

    #[test]
    fn sizes_and_ages_read_as_people_say_them() {
        assert_eq!(human_size(532), "532 B");
        assert_eq!(human_size(1434), "1.4 KiB");
        assert_eq!(human_size(25_060_000), "23.9 MiB");
        assert_eq!(age(100, 100), "just now");
        assert_eq!(age(0, 61), "1 minute ago");
        assert_eq!(age(0, 3 * 3600 + 5), "3 hours ago");
        assert_eq!(age(0, 12 * 86_400), "12 days ago");
        assert_eq!(age(0, 2 * 31_536_000), "2 years ago");
    }
}
