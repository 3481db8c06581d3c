//! Real OCI clients (skopeo, podman) push to and pull from Berth; what comes back is
//! byte-identical to what went in. The clients must be installed: a missing one fails the test.

use crate::util::*;

fn skopeo_copies_an_oci_image_and_pulls_it_back_byte_identical() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path());
    let image = layout.image(work.path(), "amd64", unique_seed());
    layout.index(&[(OCI_MANIFEST, &image.manifest, image.size, "v1")]);
    let dest = format!("docker://{}/skopeo/oci:v1", server.addr);
    ok(skopeo()
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(layout.reference("v1"))
        .arg(&dest));
    let raw = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&dest));
    assert_eq!(
        sha_hex(raw.as_bytes()),
        image.manifest,
        "the manifest is served as pushed"
    );
    let tags = ok(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/skopeo/oci", server.addr)));
    assert!(tags.contains("\"v1\""), "{tags}");

    let out = work.path().join("pulled");
    ok(skopeo()
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(&dest)
        .arg(format!("oci:{}:v1", out.display())));
    let pulled = blobs_of(&out);
    let pushed = blobs_of(&layout.dir);
    for (name, bytes) in &pulled {
        assert_eq!(pushed.get(name), Some(bytes), "blob {name} differs");
        assert_eq!(&sha_hex(bytes), name);
    }
    assert_eq!(pulled.len(), 3, "manifest, config and layer");
}

fn skopeo_copies_a_docker_v2s2_image() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path());
    let image = layout.image(work.path(), "amd64", unique_seed());
    layout.index(&[(OCI_MANIFEST, &image.manifest, image.size, "v1")]);
    let dest = format!("docker://{}/skopeo/docker:v2s2", server.addr);
    ok(skopeo()
        .args(["copy", "-q", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(layout.reference("v1"))
        .arg(&dest));
    let raw = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&dest));
    assert!(raw.contains(DOCKER_MANIFEST), "{raw}");
    let out = work.path().join("dir");
    ok(skopeo()
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(&dest)
        .arg(format!("dir:{}", out.display())));
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        raw,
        "manifest bytes match"
    );
    let pushed = blobs_of(&layout.dir);
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 64 {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(sha_hex(&bytes), name);
            if !bytes.starts_with(b"{") {
                assert_eq!(pushed.get(&name), Some(&bytes), "layer bytes match");
            }
        }
    }
}

fn skopeo_copy_all_of_a_multi_arch_index_is_byte_identical() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path());
    let seed = unique_seed();
    let amd = layout.image(work.path(), "amd64", seed);
    let arm = layout.image(work.path(), "arm64", seed + 1);
    let (index, index_hex) = layout.multi_arch(&[
        (&amd, r#"{"architecture":"amd64","os":"linux"}"#),
        (
            &arm,
            r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#,
        ),
    ]);
    layout.index(&[(OCI_INDEX, &index_hex, index.len(), "multi")]);

    let dest = format!("docker://{}/skopeo/multi:latest", server.addr);
    ok(skopeo()
        .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
        .arg(layout.reference("multi"))
        .arg(&dest));
    let raw = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&dest));
    assert_eq!(raw, index, "the index is served byte-identical");

    let out = work.path().join("pulled");
    ok(skopeo()
        .args(["copy", "-q", "--all", "--src-tls-verify=false"])
        .arg(&dest)
        .arg(format!("oci:{}:multi", out.display())));
    let pushed = blobs_of(&layout.dir);
    let pulled = blobs_of(&out);
    assert_eq!(
        pulled, pushed,
        "every blob and manifest comes back byte-identical"
    );
}

fn podman_pushes_and_pulls_single_and_multi_arch_images() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path());
    let image = layout.image(work.path(), "amd64", unique_seed());
    let arm = layout.image(work.path(), "arm64", unique_seed() + 1);
    layout.index(&[
        (OCI_MANIFEST, &image.manifest, image.size, "v1"),
        (OCI_MANIFEST, &arm.manifest, arm.size, "arm"),
    ]);
    let reg = server.addr.to_string();
    ok(skopeo()
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(layout.reference("v1"))
        .arg(format!("docker://{reg}/podman/base:v1")));
    ok(skopeo()
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(layout.reference("arm"))
        .arg(format!("docker://{reg}/podman/base:arm")));

    let store = work.path().join("store");
    let podman = || podman(&store, work.path());
    ok(podman()
        .args(["pull", "-q", "--tls-verify=false"])
        .arg(format!("{reg}/podman/base:v1")));
    ok(podman()
        .args(["pull", "-q", "--arch", "arm64", "--tls-verify=false"])
        .arg(format!("{reg}/podman/base:arm")));
    let digest = ok(podman()
        .args(["image", "inspect", "--format", "{{.Digest}}"])
        .arg(format!("{reg}/podman/base:v1")));
    assert_eq!(
        digest.trim(),
        format!("sha256:{}", image.manifest),
        "podman pulled the manifest as pushed"
    );

    ok(podman()
        .args(["tag"])
        .arg(format!("{reg}/podman/base:v1"))
        .arg(format!("{reg}/podman/copy:v1")));
    ok(podman()
        .args(["push", "-q", "--tls-verify=false"])
        .arg(format!("{reg}/podman/copy:v1")));
    let raw = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reg}/podman/copy:v1")));
    let pushed = blobs_of(&layout.dir);
    let amd64: serde_json::Value = serde_json::from_slice(&pushed[&image.manifest]).unwrap();
    let hex = |v: &serde_json::Value| v.as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let config = hex(&amd64["config"]["digest"]);
    let layer = hex(&amd64["layers"][0]["digest"]);
    assert!(
        raw.contains(&config),
        "podman pushed the same config: {raw}"
    );

    ok(podman().args(["manifest", "create", "localhost/multi:v1"]));
    ok(podman()
        .args(["manifest", "add", "localhost/multi:v1"])
        .arg(format!("containers-storage:{reg}/podman/base:v1")));
    ok(podman()
        .args(["manifest", "add", "--variant", "v8", "localhost/multi:v1"])
        .arg(format!("containers-storage:{reg}/podman/base:arm")));
    podman_push_list(
        podman,
        "localhost/multi:v1",
        &format!("docker://{reg}/podman/multi:v1"),
    );
    let index = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reg}/podman/multi:v1")));
    let parsed: serde_json::Value = serde_json::from_str(&index).unwrap();
    assert_eq!(parsed["manifests"].as_array().unwrap().len(), 2, "{index}");

    // Pulling the multi-arch image back gives the blobs pushed.
    let out = work.path().join("pulled");
    ok(skopeo()
        .args(["copy", "-q", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{reg}/podman/multi:v1"))
        .arg(format!("oci:{}:multi", out.display())));
    let pulled = blobs_of(&out);
    assert_eq!(pulled.get(&config), pushed.get(&config));
    for (name, bytes) in &pulled {
        assert_eq!(
            &sha_hex(bytes),
            name,
            "every pulled blob matches its digest"
        );
    }
    let pulled_layers = pulled
        .values()
        .filter(|b| b.starts_with(&[0x1f, 0x8b]))
        .count();
    assert_eq!(pulled_layers, 2, "one layer per architecture");
    assert!(
        pulled.contains_key(&layer),
        "the amd64 layer comes back as pushed"
    );
}

crate::harness::trials! {
    skopeo_copies_an_oci_image_and_pulls_it_back_byte_identical;
    skopeo_copies_a_docker_v2s2_image;
    skopeo_copy_all_of_a_multi_arch_index_is_byte_identical;
    podman_pushes_and_pulls_single_and_multi_arch_images;
}
