//! Berth's container image (`BERTH_TEST_IMAGE`, e.g. the `berth:check` that
//! `scripts/check-image.sh` builds) on a Docker network with Postgres and S3 containers,
//! configured only through environment variables, the way the Helm chart runs it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testcontainers::core::{ExecCommand, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use crate::services;
use crate::util::*;

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `command` can be run in the container: it fails to start where the image lacks it.
fn exec_succeeds(container: &Container<GenericImage>, command: &[&str]) -> bool {
    match container.exec(ExecCommand::new(command.iter().copied())) {
        // The exit code is known once the output has been read.
        Ok(mut result) => {
            let _ = result.stdout_to_vec();
            result.exit_code().ok().flatten() == Some(0)
        }
        Err(_) => false,
    }
}

/// Writes a one-layer OCI image layout at `dir`; its manifest and layer bytes.
fn oci_layout(dir: &Path, tag: &str) -> (Vec<u8>, Vec<u8>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = random_bytes(3 << 20, unique_seed());
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = image_manifest(
        &sha256(config),
        config.len(),
        &[(&sha256(&layer), layer.len())],
        None,
    );
    for blob in [&layer[..], &config[..], &manifest[..]] {
        let digest = sha256(blob);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), blob).unwrap();
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (manifest, layer)
}

fn the_image_runs_read_only_and_non_root_with_postgres_and_s3() {
    // Registered only where BERTH_TEST_IMAGE names the image and Docker runs (see the end of
    // this file): containers that then fail to start fail the test.
    let reference = std::env::var("BERTH_TEST_IMAGE").expect("BERTH_TEST_IMAGE names the image");
    require("skopeo");
    let network = format!("berth-image-test-{}", unique_seed());
    let (postgres, _) =
        services::postgres_container(Some(&network)).unwrap_or_else(|why| panic!("{why}"));
    let (s3_container, s3, s3_port) =
        services::s3_container(Some(&network)).unwrap_or_else(|why| panic!("{why}"));
    let berth = services::image(&reference)
        .with_exposed_port(5000.tcp())
        .with_exposed_port(5001.tcp())
        .with_wait_for(WaitFor::message_on_stdout("listening on"))
        .with_network(&network)
        .with_container_name(format!("{network}-berth"))
        .with_readonly_rootfs(true)
        .with_mount(Mount::tmpfs_mount("/tmp"))
        .with_cap_drop("ALL")
        .with_security_opt("no-new-privileges")
        .with_env_var(
            "BERTH_DATABASE_URL",
            format!("postgres://postgres@{network}-postgres:5432/postgres"),
        )
        .with_env_var("BERTH_STORAGE", "s3")
        .with_env_var("BERTH_S3_BUCKET", &s3.bucket)
        .with_env_var("BERTH_S3_REGION", &s3.region)
        .with_env_var(
            "BERTH_S3_ENDPOINT",
            format!("http://{network}-s3:{s3_port}"),
        )
        // Presigned downloads point where this test (the client) reaches S3.
        .with_env_var("BERTH_S3_PUBLIC_ENDPOINT", &s3.endpoint)
        .with_env_var("BERTH_S3_FORCE_PATH_STYLE", "true")
        .with_env_var("AWS_ACCESS_KEY_ID", &s3.access_key)
        .with_env_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .with_env_var("BERTH_SHUTDOWN_TIMEOUT", "10s")
        .with_env_var("BERTH_LOG_FORMAT", "json")
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .expect("the Berth container starts");
    let api = format!(
        "127.0.0.1:{}",
        berth.get_host_port_ipv4(5000.tcp()).unwrap()
    );
    let admin = format!(
        "http://127.0.0.1:{}",
        berth.get_host_port_ipv4(5001.tcp()).unwrap()
    );

    // Non-root, and nothing outside the data volume is writable. The image has no shell to
    // ask (FROM scratch): the engine lists the process's credentials, and refuses to write to
    // a read-only root (that the registry works so is what the push and pull below show).
    assert!(
        !exec_succeeds(&berth, &["sh", "-c", "true"]),
        "the image has a shell"
    );
    let top =
        run(Command::new("docker").args(["top", berth.id(), "-o", "pid,uid,euid,suid,fsuid"]));
    let uids = top
        .lines()
        .nth(1)
        .expect("the container's process")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>();
    assert_eq!(
        uids, ["10001"; 4],
        "the process's real, effective, saved and fs uids"
    );
    let work = tempfile::tempdir().unwrap();
    let probe = work.path().join("probe");
    std::fs::write(&probe, "probe").unwrap();
    let copied = Command::new("docker")
        .arg("cp")
        .arg(&probe)
        .arg(format!("{}:/usr/local/bin/probe", berth.id()))
        .output()
        .expect("docker cp runs");
    assert!(!copied.status.success(), "the root filesystem is writable");
    let refusal = String::from_utf8_lossy(&copied.stderr).to_lowercase();
    assert!(
        refusal.contains("read-only"),
        "docker cp failed otherwise: {refusal}"
    );

    for probe in ["/healthz", "/readyz"] {
        let status = run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{admin}{probe}"),
        ]));
        assert_eq!(status, "200", "{probe}");
    }

    // An image pushed and pulled with skopeo, bytes compared.
    let (manifest, layer) = oci_layout(&work.path().join("layout"), "v1");
    let layout = format!("oci:{}:v1", work.path().join("layout").display());
    let remote = format!("docker://{api}/image-test/app:v1");
    // As it is: skopeo would otherwise recompress a layer that is not really gzip.
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &layout,
        &remote,
    ]));
    let pulled = work.path().join("pulled");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        &remote,
        &format!("dir:{}", pulled.display()),
    ]));
    assert!(
        std::fs::read(pulled.join("manifest.json")).unwrap() == manifest,
        "the manifest comes back byte for byte"
    );
    let layer_file = pulled.join(sha256(&layer).trim_start_matches("sha256:"));
    assert!(
        std::fs::read(layer_file).unwrap() == layer,
        "the layer comes back intact"
    );

    let metrics = run(Command::new("curl").args(["-fsS", &format!("{admin}/metrics")]));
    assert!(
        metrics.contains(r#"berth_http_requests_total{operation="put_manifest",status="201"}"#),
        "the push is counted"
    );

    // SIGTERM: a clean exit well within the grace period, not a kill.
    let started = Instant::now();
    berth.stop_with_timeout(Some(30)).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    assert_eq!(
        berth.exit_code().unwrap(),
        Some(0),
        "berth exits 0 on SIGTERM"
    );
    drop((berth, s3_container, postgres));
}

crate::harness::trials! {
    the_image_runs_read_only_and_non_root_with_postgres_and_s3
        .needs(Image)
        .needs(Docker)
        .own_services();
}
