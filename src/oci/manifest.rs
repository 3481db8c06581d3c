//! Manifest, index and descriptor types, media types, and manifest validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// Media types Berth treats specially.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 1 manifests (unsigned and signed), which Berth refuses.
    pub const DOCKER_SCHEMA1: [&str; 2] = [
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ];
    /// The empty descriptor's media type (`{}`), used as config of artifacts.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// Docker foreign layers, which may live outside the registry.
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// Prefix of OCI non-distributable layers, which may live outside the registry.
    pub const OCI_NONDISTRIBUTABLE_PREFIX: &str =
        "application/vnd.oci.image.layer.nondistributable.";
    /// Blob content.
    pub const OCTET_STREAM: &str = "application/octet-stream";
}

/// What kind of manifest a media type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image (or artifact) manifest: a config and layers.
    Image,
    /// An index or manifest list: child manifests.
    Index,
}

impl ManifestKind {
    /// Classifies a manifest media type; `None` for anything else.
    pub fn of_media_type(media_type: &str) -> Option<ManifestKind> {
        match media_type {
            media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Some(ManifestKind::Image),
            media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            _ => None,
        }
    }
}

/// Strips parameters and whitespace from a `Content-Type` value.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Where else the content may be downloaded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Embedded content, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Type of the artifact the descriptor points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform an index entry runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Operating system (`linux`, `windows`, ...).
    pub os: String,
    /// Operating system version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required operating system features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v8`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Required CPU features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Type of artifact, when the manifest is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The configuration blob.
    pub config: Descriptor,
    /// The layer blobs.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Type of artifact, when the index is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The child manifests.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ImageIndex {
    /// An empty OCI index, as the referrers API answers for an unknown subject.
    pub fn empty() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: None,
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not a valid {kind}: {reason}")]
    Malformed {
        /// What the manifest was read as.
        kind: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// `schemaVersion` other than 2.
    #[error("manifest schemaVersion must be 2, got {0}")]
    SchemaVersion(u32),
    /// `Content-Type` and the body's `mediaType` disagree.
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {media_type:?}")]
    MediaTypeMismatch {
        /// The request's Content-Type.
        content_type: String,
        /// The body's mediaType.
        media_type: String,
    },
    /// A media type Berth does not store as a manifest.
    #[error("unsupported manifest media type {0:?}{hint}", hint = if media_type::DOCKER_SCHEMA1.contains(&.0.as_str()) { " (Docker schema 1 is deprecated; push schema 2 or OCI)" } else { "" })]
    UnsupportedMediaType(String),
    /// Neither a Content-Type nor a mediaType, and the shape is ambiguous.
    #[error("cannot tell the manifest's type: set Content-Type or mediaType")]
    UnknownType,
}

/// A manifest that passed validation, with the references its rows record.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedManifest {
    /// The media type served back on GET.
    pub media_type: String,
    /// Image manifest or index.
    pub kind: ManifestKind,
    /// Blobs that must be present in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Child manifests that must be present in the repository.
    pub children: Vec<Digest>,
    /// The manifest this one refers to (`subject`).
    pub subject: Option<Digest>,
    /// The artifact type reported by the referrers API.
    pub artifact_type: Option<String>,
    /// Top-level annotations, reported by the referrers API.
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    media_type: Option<String>,
    config: Option<serde::de::IgnoredAny>,
    manifests: Option<serde::de::IgnoredAny>,
}

fn is_generic_content_type(ct: &str) -> bool {
    ct.is_empty()
        || ct.eq_ignore_ascii_case("application/json")
        || ct.eq_ignore_ascii_case(media_type::OCTET_STREAM)
}

fn is_external_layer(d: &Descriptor) -> bool {
    let external_type = d.media_type == media_type::DOCKER_FOREIGN_LAYER
        || d.media_type
            .starts_with(media_type::OCI_NONDISTRIBUTABLE_PREFIX);
    external_type && d.urls.as_ref().is_some_and(|u| !u.is_empty())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl ParsedManifest {
    /// Validates manifest bytes received with `content_type` (the request header, if any).
    pub fn parse(
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<ParsedManifest, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
            kind: "JSON document",
            reason: e.to_string(),
        })?;
        let declared = content_type
            .map(essence)
            .filter(|ct| !is_generic_content_type(ct));
        let body_type = probe.media_type.as_deref().filter(|mt| !mt.is_empty());
        if let (Some(ct), Some(mt)) = (declared, body_type)
            && ct != mt
        {
            return Err(ManifestError::MediaTypeMismatch {
                content_type: ct.to_owned(),
                media_type: mt.to_owned(),
            });
        }
        let media_type = match declared.or(body_type) {
            Some(mt) => mt.to_owned(),
            None => match (probe.config.is_some(), probe.manifests.is_some()) {
                (true, false) => media_type::OCI_MANIFEST.to_owned(),
                (false, true) => media_type::OCI_INDEX.to_owned(),
                _ => return Err(ManifestError::UnknownType),
            },
        };
        let kind = ManifestKind::of_media_type(&media_type)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(media_type.clone()))?;
        match kind {
            ManifestKind::Image => {
                let m: ImageManifest =
                    serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
                        kind: "image manifest",
                        reason: e.to_string(),
                    })?;
                if m.schema_version != 2 {
                    return Err(ManifestError::SchemaVersion(m.schema_version));
                }
                let blobs = std::iter::once(&m.config)
                    .chain(m.layers.iter().filter(|l| !is_external_layer(l)))
                    .map(|d| d.digest.clone())
                    .collect();
                let config_type = m.config.media_type.clone();
                Ok(ParsedManifest {
                    media_type,
                    kind,
                    blobs,
                    children: Vec::new(),
                    subject: m.subject.map(|s| s.digest),
                    artifact_type: non_empty(m.artifact_type).or(Some(config_type)),
                    annotations: m.annotations,
                })
            }
            ManifestKind::Index => {
                let i: ImageIndex =
                    serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
                        kind: "image index",
                        reason: e.to_string(),
                    })?;
                if i.schema_version != 2 {
                    return Err(ManifestError::SchemaVersion(i.schema_version));
                }
                Ok(ParsedManifest {
                    media_type,
                    kind,
                    blobs: Vec::new(),
                    children: i.manifests.into_iter().map(|d| d.digest).collect(),
                    subject: i.subject.map(|s| s.digest),
                    artifact_type: non_empty(i.artifact_type),
                    annotations: i.annotations,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]{extra}}}"#,
            media_type::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest_lists_its_blobs() {
        let m =
            ParsedManifest::parse(Some(media_type::OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn content_type_parameters_are_ignored_and_mismatch_is_refused() {
        let body = image("");
        assert!(
            ParsedManifest::parse(
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                body.as_bytes()
            )
            .is_ok()
        );
        assert!(matches!(
            ParsedManifest::parse(Some(media_type::OCI_INDEX), body.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn subject_and_artifact_type_are_recorded() {
        let body = image(&format!(
            r#","artifactType":"application/x.sbom","subject":{{"mediaType":"{}","digest":"{D1}","size":9}},"annotations":{{"a":"b"}}"#,
            media_type::OCI_MANIFEST
        ));
        let m = ParsedManifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.subject.unwrap().as_str(), D1);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sbom"));
        assert_eq!(m.annotations.unwrap()["a"], "b");
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D1}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            media_type::OCI_MANIFEST
        );
        let m = ParsedManifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, media_type::OCI_INDEX);
        assert_eq!(m.children.len(), 1);
        assert_eq!(m.artifact_type, None);
    }

    #[test]
    fn malformed_manifests_are_refused() {
        for (ct, body) in [
            (None, "not json".to_owned()),
            (None, "{}".to_owned()),
            (None, "[]".to_owned()),
            (
                Some(media_type::OCI_MANIFEST),
                r#"{"schemaVersion":2}"#.to_owned(),
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace("\"size\":2", "\"size\":-2"),
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace(D1, "sha256:xyz"),
            ),
            (
                Some(media_type::OCI_MANIFEST),
                image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
            ),
            (
                Some(media_type::DOCKER_SCHEMA1[1]),
                r#"{"schemaVersion":1}"#.to_owned(),
            ),
            (Some("text/plain"), image("")),
        ] {
            assert!(
                ParsedManifest::parse(ct, body.as_bytes()).is_err(),
                "{ct:?} {body}"
            );
        }
    }

    #[test]
    fn foreign_layers_with_urls_need_not_be_present() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip\"",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip\",\"urls\":[\"https://example.com/l\"]",
        );
        let m = ParsedManifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.blobs.len(), 1);
    }
}
