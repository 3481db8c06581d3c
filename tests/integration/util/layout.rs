//! OCI image layouts built by hand, as a build tool would, and the client tools (skopeo,
//! podman) that push them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

pub fn sha_hex(data: &[u8]) -> String {
    sha256(data).trim_start_matches("sha256:").to_owned()
}

/// An OCI image layout built by hand, like a build tool would.
pub struct Layout {
    pub dir: PathBuf,
}

pub struct Built {
    pub manifest: String,
    pub size: usize,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let dir = root.join("layout");
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    pub fn blob(&self, data: &[u8]) -> String {
        let hex = sha_hex(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        hex
    }

    /// A single-layer image for `arch`: a gzip tar with one file of random content.
    pub fn image(&self, work: &Path, arch: &str, seed: u64) -> Built {
        let root = work.join(format!("rootfs-{arch}"));
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/payload.bin"), random_bytes(200_000, seed)).unwrap();
        let tar = work.join(format!("layer-{arch}.tar"));
        ok(Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let tar_bytes = std::fs::read(&tar).unwrap();
        ok(Command::new("gzip").args(["-n", "-f"]).arg(&tar));
        let gz = std::fs::read(work.join(format!("layer-{arch}.tar.gz"))).unwrap();
        let layer = self.blob(&gz);
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/data/payload.bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}},"history":[{{"created_by":"berth test {seed}"}}]}}"#,
            sha_hex(&tar_bytes)
        );
        let config_hex = self.blob(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer}","size":{}}}]}}"#,
            config.len(),
            gz.len()
        );
        let hex = self.blob(manifest.as_bytes());
        Built {
            manifest: hex,
            size: manifest.len(),
        }
    }

    /// Writes `index.json` naming each (media type, digest hex, size) under a tag.
    pub fn index(&self, entries: &[(&str, &str, usize, &str)]) {
        let manifests: Vec<String> = entries
            .iter()
            .map(|(media_type, hex, size, tag)| {
                format!(
                    r#"{{"mediaType":"{media_type}","digest":"sha256:{hex}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            manifests.join(",")
        );
        std::fs::write(self.dir.join("index.json"), index).unwrap();
    }

    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

pub fn descriptor(media_type: &str, hex: &str, size: usize, platform: Option<&str>) -> String {
    let platform = platform
        .map(|p| format!(r#","platform":{p}"#))
        .unwrap_or_default();
    format!(r#"{{"mediaType":"{media_type}","digest":"sha256:{hex}","size":{size}{platform}}}"#)
}

/// Every blob file of a layout directory, by name.
pub fn blobs_of(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_under(&dir.join("blobs"))
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

pub fn skopeo() -> Command {
    require("skopeo");
    let mut c = Command::new("skopeo");
    c.env("TMPDIR", std::env::temp_dir());
    c
}

impl Layout {
    /// An image index over `images`, each with its platform (JSON), stored as a blob: the
    /// index's bytes and digest hex.
    pub fn multi_arch(&self, images: &[(&Built, &str)]) -> (String, String) {
        let manifests: Vec<String> = images
            .iter()
            .map(|(image, platform)| {
                descriptor(OCI_MANIFEST, &image.manifest, image.size, Some(platform))
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            manifests.join(",")
        );
        let hex = self.blob(index.as_bytes());
        (index, hex)
    }
}

/// podman with a store of its own under `store` (vfs storage, no systemd) and its temporary
/// files under `work`.
pub fn podman(store: &Path, work: &Path) -> Command {
    require("podman");
    let mut c = Command::new("podman");
    c.arg("--root").arg(store.join("root"));
    c.arg("--runroot").arg(store.join("run"));
    c.args([
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]);
    c.env("TMPDIR", work);
    c
}

/// With podman (`podman` makes its commands): pulls `from`, tags it `to` and pushes that, over
/// plain HTTP.
pub fn podman_copy(podman: impl Fn() -> Command, from: &str, to: &str) {
    ok(podman()
        .args(["pull", "-q", "--tls-verify=false"])
        .arg(from));
    ok(podman().arg("tag").arg(from).arg(to));
    ok(podman().args(["push", "-q", "--tls-verify=false"]).arg(to));
}

/// With podman: pushes the manifest list `list` and all its images to `dest` (a `docker://`
/// reference), over plain HTTP.
pub fn podman_push_list(podman: impl Fn() -> Command, list: &str, dest: &str) {
    ok(podman()
        .args(["manifest", "push", "-q", "--all", "--tls-verify=false"])
        .arg(list)
        .arg(dest));
}

/// Packs the directory `root` into the plain tarball `tar`.
pub fn tar_dir(root: &Path, tar: &Path) {
    ok(Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar)
        .arg("."));
}
