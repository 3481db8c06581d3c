//! Real clients log in and push and pull with credentials, in both access-control modes:
//! skopeo (`--creds`), podman (`login`), the Docker engine (`docker login`) and oras-py.
//! A missing client fails the test; `.ci/run` installs and starts them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::auth_fixtures::{AuthFiles, password_of as password, start_with_owned};
use crate::util::*;

/// A one-layer OCI layout with random content, tagged `v1`; returns the layout path.
fn layout(work: &Path, seed: u64) -> PathBuf {
    let layout = Layout::new(work);
    let image = layout.image(work, "amd64", seed);
    layout.index(&[(OCI_MANIFEST, &image.manifest, image.size, "v1")]);
    layout.dir
}

fn skopeo(work: &Path) -> Command {
    let mut c = crate::util::skopeo();
    c.env("TMPDIR", work);
    // No credentials from the machine's own auth files.
    c.env("REGISTRY_AUTH_FILE", work.join("no-auth.json"));
    c
}

fn skopeo_round_trip(server: &Server, work: &Path) {
    let source = layout(work, unique_seed());
    let reg = server.addr;
    let dest = format!("docker://{reg}/alice/skopeo:v1");
    let alice = format!("alice:{}", password("alice"));
    ok(skopeo(work)
        .args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--dest-creds",
            &alice,
        ])
        .arg(format!("oci:{}:v1", source.display()))
        .arg(&dest));
    let out = work.join("pulled");
    ok(skopeo(work)
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--src-creds",
            &alice,
        ])
        .arg(&dest)
        .arg(format!("oci:{}:v1", out.display())));
    for entry in std::fs::read_dir(source.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let pulled = std::fs::read(out.join("blobs/sha256").join(entry.file_name())).unwrap();
        assert_eq!(
            pulled,
            std::fs::read(entry.path()).unwrap(),
            "blobs come back as pushed"
        );
    }
    // Without credentials, or with someone else's, it is refused.
    let said = fails(
        skopeo(work)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(&dest),
    );
    assert!(
        said.to_lowercase().contains("unauthorized") || said.contains("401"),
        "{said}"
    );
    let bob = format!("bob:{}", password("bob"));
    fails(
        skopeo(work)
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--dest-creds",
                &bob,
            ])
            .arg(format!("oci:{}:v1", source.display()))
            .arg(format!("docker://{reg}/alice/stolen:v1")),
    );
    let wrong = fails(
        skopeo(work)
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "alice:wrong",
            ])
            .arg(&dest),
    );
    assert!(!wrong.contains(password("alice")));
}

fn skopeo_with_credentials_in_basic_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let work = tempfile::tempdir().unwrap();
    skopeo_round_trip(&server, work.path());
}

fn skopeo_with_credentials_in_token_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let work = tempfile::tempdir().unwrap();
    skopeo_round_trip(&server, work.path());
}

fn podman_round_trip(server: &Server, work: &Path) {
    require("podman");
    let source = layout(work, unique_seed());
    let reg = server.addr.to_string();
    let store = work.join("store");
    let auth_file = work.join("auth.json");
    let podman = || {
        let mut c = podman(&store, work);
        c.env("REGISTRY_AUTH_FILE", &auth_file);
        c
    };
    let said = fails(
        podman()
            .args(["login", "--tls-verify=false", "-u", "alice", "-p", "wrong"])
            .arg(&reg),
    );
    assert!(said.contains("invalid username/password"), "{said}");
    ok(podman()
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            password("alice"),
        ])
        .arg(&reg));
    ok(skopeo(work)
        .args(["copy", "-q", "--dest-tls-verify=false", "--dest-authfile"])
        .arg(&auth_file)
        .arg(format!("oci:{}:v1", source.display()))
        .arg(format!("docker://{reg}/alice/podman:v1")));
    podman_copy(
        podman,
        &format!("{reg}/alice/podman:v1"),
        &format!("{reg}/alice/podman-copy:v1"),
    );
    ok(podman().arg("logout").arg(&reg));
    fails(
        podman()
            .args(["pull", "-q", "--tls-verify=false"])
            .arg(format!("{reg}/alice/podman-copy:v1")),
    );
}

fn podman_login_push_and_pull_in_basic_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let work = tempfile::tempdir().unwrap();
    podman_round_trip(&server, work.path());
}

fn podman_login_push_and_pull_in_token_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let work = tempfile::tempdir().unwrap();
    podman_round_trip(&server, work.path());
}

/// The Docker engine must be running (`.ci/run` starts `dockerd`).
fn docker(config: &Path) -> Command {
    require("docker");
    let running = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        running,
        "the Docker engine is not running; scripts/services.sh starts dockerd"
    );
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", config);
    c
}

fn docker_round_trip(server: &Server, work: &Path) {
    let config = work.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let reg = server.addr.to_string();
    // An image made from a tarball: one file of random content.
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("payload"), random_bytes(50_000, unique_seed())).unwrap();
    let tar = work.join("rootfs.tar");
    tar_dir(&root, &tar);
    let name = format!("{reg}/alice/docker:v{}", unique_seed() % 100_000);
    ok(docker(&config).arg("import").arg(&tar).arg(&name));
    let said = fails(docker(&config).args(["push", &name]));
    assert!(
        [
            "no basic auth credentials",
            "denied",
            "unauthorized",
            "authentication required"
        ]
        .iter()
        .any(|m| said.contains(m)),
        "{said}"
    );
    fails(
        docker(&config)
            .args(["login", "-u", "alice", "--password-stdin", &reg])
            .stdin(std::fs::File::open(write(work, "wrong", "wrong-password\n")).unwrap()),
    );
    ok(docker(&config)
        .args(["login", "-u", "alice", "--password-stdin", &reg])
        .stdin(
            std::fs::File::open(write(work, "pw", &format!("{}\n", password("alice")))).unwrap(),
        ));
    ok(docker(&config).args(["push", &name]));
    let id = ok(docker(&config).args(["image", "inspect", "--format", "{{.Id}}", &name]));
    ok(docker(&config).args(["rmi", &name]));
    ok(docker(&config).args(["pull", &name]));
    let pulled = ok(docker(&config).args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert_eq!(id, pulled, "the pulled image is the one pushed");
    ok(docker(&config).args(["rmi", &name]));
    ok(docker(&config).args(["logout", &reg]));
    let stored = std::fs::read_to_string(config.join("config.json")).unwrap_or_default();
    assert!(!stored.contains(password("alice")));
}

fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn docker_login_push_and_pull_in_basic_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let work = tempfile::tempdir().unwrap();
    docker_round_trip(&server, work.path());
}

fn docker_login_push_and_pull_in_token_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let work = tempfile::tempdir().unwrap();
    docker_round_trip(&server, work.path());
}

const ORAS_SCRIPT: &str = r#"
import sys, os, hashlib, oras.client
host, user, password, work, backend = sys.argv[1:6]
client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend=backend)
client.login(username=user, password=password, hostname=host, config_path=os.path.join(work, "config.json"))
artifact = os.path.join(work, "artifact.bin")
with open(artifact, "wb") as f:
    f.write(os.urandom(300000))
os.chdir(work)
client.push(files=["artifact.bin"], target=f"{host}/alice/oras:v1")
client.push(files=["artifact.bin"], target=f"{host}/alice/oras:chunked", do_chunked=True, chunk_size=100000)
out = os.path.join(work, "out")
for tag in ["v1", "chunked"]:
    paths = client.pull(target=f"{host}/alice/oras:{tag}", outdir=out)
    for p in paths:
        assert open(p, "rb").read() == open(artifact, "rb").read(), "bytes differ"
print("ok")
"#;

fn oras_round_trip(server: &Server, work: &Path, backend: &str) {
    let script = write(work, "oras_test.py", ORAS_SCRIPT);
    let importable = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        importable,
        "oras-py is not installed; .ci/run installs it (pip install oras)"
    );
    let out = ok(Command::new("python3")
        .arg(&script)
        .arg(server.addr.to_string())
        .arg("alice")
        .arg(password("alice"))
        .arg(work)
        .arg(backend));
    assert!(out.contains("ok"), "{out}");
    let denied = Command::new("python3")
        .arg(&script)
        .arg(server.addr.to_string())
        .arg("bob")
        .arg(password("bob"))
        .arg(work)
        .arg(backend)
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "bob may not push to alice's repositories"
    );
}

fn oras_logs_in_pushes_and_pulls_in_basic_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let work = tempfile::tempdir().unwrap();
    oras_round_trip(&server, work.path(), "basic");
}

fn oras_logs_in_pushes_and_pulls_in_token_mode() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let work = tempfile::tempdir().unwrap();
    oras_round_trip(&server, work.path(), "token");
}

crate::harness::trials! {
    skopeo_with_credentials_in_basic_mode;
    skopeo_with_credentials_in_token_mode;
    podman_login_push_and_pull_in_basic_mode;
    podman_login_push_and_pull_in_token_mode;
    docker_login_push_and_pull_in_basic_mode;
    docker_login_push_and_pull_in_token_mode;
    oras_logs_in_pushes_and_pulls_in_basic_mode;
    oras_logs_in_pushes_and_pulls_in_token_mode;
}
