//! HTTPS served by Berth itself: HTTP/2 by ALPN and HTTP/1.1, TLS 1.2 and later only, the
//! chain served, certificates replaced on disk while connections stream, client certificates,
//! the token realm's scheme, and real clients (curl, skopeo, Docker) verifying the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth_fixtures::AuthFiles;
use crate::util::*;

/// A TLS deployment's files: the CA clients trust, the server's chain and key.
pub(crate) struct TlsSetup {
    work: tempfile::TempDir,
    pki: Pki,
    cert: PathBuf,
    key: PathBuf,
    leaf: Vec<u8>,
}

impl TlsSetup {
    pub(crate) fn new(names: &[&str]) -> TlsSetup {
        let work = tempfile::tempdir().unwrap();
        let pki = Pki::new(work.path(), "server");
        let cert = work.path().join("tls.crt");
        let key = work.path().join("tls.key");
        let leaf = pki.issue_server(names, &cert, &key);
        TlsSetup {
            work,
            pki,
            cert,
            key,
            leaf,
        }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.work.path().join("server-ca.crt")
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BERTH_TLS_CERT".into(), self.cert.display().to_string()),
            ("BERTH_TLS_KEY".into(), self.key.display().to_string()),
            ("BERTH_TLS_RELOAD_INTERVAL".into(), "200ms".into()),
        ]
    }

    /// A registry serving HTTPS on `addr` with these files and `extra` settings.
    fn start_on(&self, addr: SocketAddr, extra: &[(&str, &str)]) -> Server {
        let mut env = self.env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::spawn_on(Deployment::new(&env), addr)
    }

    pub(crate) fn start(&self, extra: &[(&str, &str)]) -> Server {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }
}

fn curl(ca: &Path) -> Command {
    require("curl");
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "30", "--cacert"])
        .arg(ca);
    c
}

/// Pushes `data` in one request over HTTPS; its digest.
fn push_blob_over_https(ca: &Path, addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let code = ok(curl(ca)
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.path().display()))
        .arg(format!(
            "https://{addr}/v2/{repo}/blobs/uploads/?digest={digest}"
        )));
    assert_eq!(code, "201", "single-request upload over HTTPS");
    digest
}

fn tls_settings(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A verified TLS connection to `addr`, and the server certificate it was answered with.
async fn connect(
    settings: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(settings))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("the TLS handshake verifies against the test CA");
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, leaf)
}

fn tls_speaks_http2_and_http1_and_refuses_old_versions_and_plain_http() {
    let setup = TlsSetup::new(&["localhost", "127.0.0.1"]);
    let server = setup.start(&[]);
    let base = format!("https://{}/v2/", server.addr);
    let version = |args: &[&str]| {
        ok(curl(&setup.ca())
            .args(args)
            .args(["-o", "/dev/null", "-w", "%{http_version}"])
            .arg(&base))
    };
    // Clients trust only the root: the handshake works because the intermediate is served.
    assert_eq!(version(&["--http2"]), "2", "HTTP/2 negotiated by ALPN");
    assert_eq!(version(&["--http1.1"]), "1.1");
    assert_eq!(
        version(&["--tlsv1.2", "--tls-max", "1.2"]),
        "2",
        "TLS 1.2 works"
    );
    assert_eq!(version(&["--tlsv1.3"]), "2", "TLS 1.3 works");
    fails(
        curl(&setup.ca())
            .args(["--tlsv1", "--tls-max", "1.1", "-o", "/dev/null"])
            .arg(&base),
    );
    // Not trusted without the CA; plain HTTP gets no answer.
    let unverified = fails(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(&base),
    );
    assert!(unverified.contains("certificate"), "{unverified}");
    fails(
        Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10"])
            .arg(format!("http://{}/v2/", server.addr)),
    );
    // The API works end to end over HTTPS: a blob pushed and read back.
    let data = random_bytes(300_000, unique_seed());
    let digest = push_blob_over_https(&setup.ca(), server.addr, "tls/blob", &data);
    let out = tempfile::NamedTempFile::new().unwrap();
    ok(curl(&setup.ca()).arg("-o").arg(out.path()).arg(format!(
        "https://{}/v2/tls/blob/blobs/{digest}",
        server.addr
    )));
    assert_eq!(std::fs::read(out.path()).unwrap(), data);
}

async fn a_certificate_replaced_on_disk_serves_new_connections_while_old_ones_finish() {
    let setup = TlsSetup::new(&["127.0.0.1"]);
    let server = setup.start(&[]);
    let data = random_bytes(48 << 20, unique_seed());
    let digest = push_blob_over_https(&setup.ca(), server.addr, "tls/rotate", &data);
    let settings = tls_settings(&setup.pki.root_pem());

    // A pull that starts before the rotation.
    let (mut old, old_leaf) = connect(&settings, server.addr).await;
    assert_eq!(old_leaf, setup.leaf);
    let request = format!(
        "GET /v2/tls/rotate/blobs/{digest} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    old.write_all(request.as_bytes()).await.unwrap();
    let mut received = vec![0u8; 1 << 20];
    old.read_exact(&mut received).await.unwrap();

    // A key that is not the certificate's: new connections keep the old certificate.
    std::fs::write(
        &setup.key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, leaf) = connect(&settings, server.addr).await;
    assert_eq!(leaf, setup.leaf, "a set that does not load is not used");
    eventually(
        "the failed reload is logged",
        Duration::from_secs(5),
        async || server.log_text().contains("do not load"),
    )
    .await;

    // The new pair, written in place.
    let new_leaf = setup
        .pki
        .issue_server(&["127.0.0.1"], &setup.cert, &setup.key);
    eventually(
        "new connections get the new certificate",
        Duration::from_secs(10),
        async || connect(&settings, server.addr).await.1 == new_leaf,
    )
    .await;

    // The old connection still streams its blob to the end, intact.
    old.read_to_end(&mut received).await.unwrap();
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &received[head_end..];
    assert_eq!(body.len(), data.len(), "the whole blob arrived");
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(body))),
        digest
    );
}

fn client_certificates_are_required_from_the_configured_ca() {
    let setup = TlsSetup::new(&["127.0.0.1"]);
    let dir = setup.work.path();
    let clients = Pki::new(dir, "clients");
    let strangers = Pki::new(dir, "strangers");
    let (good_cert, good_key) = (dir.join("alice.crt"), dir.join("alice.key"));
    clients.issue_client("alice", &good_cert, &good_key);
    let (bad_cert, bad_key) = (dir.join("mallory.crt"), dir.join("mallory.key"));
    strangers.issue_client("mallory", &bad_cert, &bad_key);
    let client_ca = dir.join("clients-ca.crt");
    let server = setup.start(&[("BERTH_TLS_CLIENT_CA", client_ca.to_str().unwrap())]);
    let url = format!("https://{}/v2/", server.addr);

    let without = fails(curl(&setup.ca()).args(["-o", "/dev/null"]).arg(&url));
    assert!(!without.is_empty());
    fails(
        curl(&setup.ca())
            .arg("--cert")
            .arg(&bad_cert)
            .arg("--key")
            .arg(&bad_key)
            .args(["-o", "/dev/null"])
            .arg(&url),
    );
    let code = ok(curl(&setup.ca())
        .arg("--cert")
        .arg(&good_cert)
        .arg("--key")
        .arg(&good_key)
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(&url));
    assert_eq!(code, "200");
}

fn the_token_realm_names_https_when_served_over_tls() {
    let files = AuthFiles::new();
    let setup = TlsSetup::new(&["127.0.0.1"]);
    let settings = files.token_settings();
    let settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let server = setup.start(&settings);
    let head = ok(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--cacert",
        ])
        .arg(setup.ca())
        .arg(format!("https://{}/v2/", server.addr)));
    assert!(
        head.starts_with("HTTP/2 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    let expected = format!("realm=\"https://{}/token\"", server.addr);
    assert!(head.to_lowercase().contains("www-authenticate"), "{head}");
    assert!(head.contains(&expected), "{head}");
}

/// The web UI's session cookie is `Secure` when Berth serves TLS itself.
fn the_ui_session_cookie_is_secure_over_tls() {
    let setup = TlsSetup::new(&["127.0.0.1"]);
    let server = setup.start(&[]);
    let head = ok(curl(&setup.ca())
        .args(["-o", "/dev/null", "-D", "-"])
        .arg(format!("https://{}/ui/", server.addr)));
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    assert!(
        cookie.contains("berth_session=") && cookie.trim_end().ends_with("; Secure"),
        "{cookie}"
    );
}

fn skopeo_copies_over_https_verifying_the_server() {
    let setup = TlsSetup::new(&["127.0.0.1"]);
    let server = setup.start(&[]);
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(&work.path().join("layout"));
    let built = layout.image(work.path(), "amd64", unique_seed());
    layout.index(&[(OCI_MANIFEST, &built.manifest, built.size, "v1")]);
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(setup.ca(), certs.join("ca.crt")).unwrap();
    let dest = format!("docker://{}/tls/skopeo:v1", server.addr);
    // Without the CA, skopeo refuses the server it cannot verify.
    let refused = fails(
        skopeo()
            .args(["copy", "-q"])
            .arg(layout.reference("v1"))
            .arg(&dest),
    );
    assert!(refused.contains("certificate"), "{refused}");
    ok(skopeo()
        .args(["copy", "-q", "--dest-cert-dir"])
        .arg(&certs)
        .arg(layout.reference("v1"))
        .arg(&dest));
    let out = work.path().join("pulled");
    ok(skopeo()
        .args(["copy", "-q", "--src-cert-dir"])
        .arg(&certs)
        .arg(&dest)
        .arg(format!("oci:{}:v1", out.display())));
    let pushed = blobs_of(&layout.dir);
    for (name, bytes) in blobs_of(&out) {
        assert_eq!(
            pushed.get(&name),
            Some(&bytes),
            "{name} comes back as pushed"
        );
    }
}

/// Removes a Docker `certs.d` directory when the test ends, however it ends.
struct CertsD(PathBuf);

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Docker on another machine trusts a registry through `/etc/docker/certs.d/HOST:PORT/ca.crt`.
/// The registry listens on a non-loopback address: Docker treats loopback registries as
/// insecure and would not verify the certificate there.
fn docker_pushes_and_pulls_over_https_with_the_ca_in_certs_d() {
    let ip = non_loopback_ipv4();
    let setup = TlsSetup::new(&[&ip.to_string()]);
    let server = setup.start_on(SocketAddr::from((ip, 0)), &[]);
    let reg = server.addr.to_string();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let docker = || {
        require("docker");
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &config);
        c
    };
    let root = work.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("payload"), random_bytes(80_000, unique_seed())).unwrap();
    let tar = work.path().join("rootfs.tar");
    tar_dir(&root, &tar);
    let name = format!("{reg}/tls/docker:v{}", unique_seed() % 100_000);
    ok(docker().arg("import").arg(&tar).arg(&name));

    let refused = fails(docker().args(["push", &name]));
    assert!(
        refused.contains("certificate") || refused.contains("x509"),
        "{refused}"
    );
    let certs_d = CertsD(PathBuf::from(format!("/etc/docker/certs.d/{reg}")));
    std::fs::create_dir_all(&certs_d.0).unwrap();
    std::fs::copy(setup.ca(), certs_d.0.join("ca.crt")).unwrap();
    ok(docker().args(["push", &name]));
    let id = ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &name]));
    ok(docker().args(["rmi", &name]));
    ok(docker().args(["pull", &name]));
    let pulled = ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert_eq!(id, pulled, "the pulled image is the one pushed");
    let _ = docker().args(["rmi", &name]).output();
    drop(certs_d);
}

crate::harness::trials! {
    tls_speaks_http2_and_http1_and_refuses_old_versions_and_plain_http.needs(Sqlite);
    a_certificate_replaced_on_disk_serves_new_connections_while_old_ones_finish.needs(Sqlite);
    client_certificates_are_required_from_the_configured_ca.needs(Sqlite);
    the_token_realm_names_https_when_served_over_tls.needs(Sqlite);
    skopeo_copies_over_https_verifying_the_server.needs(Sqlite);
    docker_pushes_and_pulls_over_https_with_the_ca_in_certs_d.needs(Sqlite).needs(Docker);
    the_ui_session_cookie_is_secure_over_tls.needs(Sqlite);
}
