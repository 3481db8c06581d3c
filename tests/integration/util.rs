//! Test harness: the real `berth` binary on port 0 against a real backend, and a small client.
//!
//! The backend comes from `BERTH_TEST_BACKEND`: `sqlite` (default; SQLite and a local
//! directory), `postgres` (Postgres and a local directory), `postgres-s3` (Postgres and S3) or
//! `memory`. Postgres and S3 come from `services.rs` (the environment, or containers); each
//! test gets its own database and key prefix.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    PostgresS3,
    Memory,
}

impl Backend {
    pub fn current() -> Backend {
        match std::env::var("BERTH_TEST_BACKEND").as_deref() {
            Ok("sqlite") | Err(_) => Backend::Sqlite,
            Ok("postgres") => Backend::Postgres,
            Ok("postgres-s3") => Backend::PostgresS3,
            Ok("memory") => Backend::Memory,
            Ok(other) => panic!(
                "unknown BERTH_TEST_BACKEND {other:?}: use sqlite, postgres, postgres-s3 or memory"
            ),
        }
    }

    /// Whether data survives a restart of the process.
    pub fn persistent(self) -> bool {
        self != Backend::Memory
    }

    /// Whether two processes can share the registry's state.
    pub fn shareable(self) -> bool {
        self != Backend::Memory
    }

    pub fn uses_s3(self) -> bool {
        self == Backend::PostgresS3
    }
}

/// Where one test's registry keeps its state; shared by every process started on it.
pub struct Deployment {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    database: Option<String>,
    pub s3_prefix: Option<String>,
    extra: Vec<(String, String)>,
    counter: std::sync::atomic::AtomicUsize,
}

/// The Postgres server of the Postgres configurations (see `services.rs`).
fn postgres_server() -> crate::services::Postgres {
    crate::services::for_configuration(
        crate::services::postgres(),
        &format!("{:?}", Backend::current()),
    )
}

/// The S3 server of the Postgres + S3 configuration (see `services.rs`).
pub fn s3_server() -> crate::services::S3 {
    crate::services::for_configuration(crate::services::s3(), "PostgresS3")
}

fn database_url(name: &str) -> String {
    postgres_server().database_url(name)
}

/// Runs a statement as the Postgres administrator (on a thread of its own, so that tests can
/// call it from inside their runtime).
fn postgres_admin(sql: &str) {
    let url = postgres_server().admin_url;
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sqlx::Connection as _;
            let mut connection = sqlx::postgres::PgConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connecting to Postgres at {url}: {e}"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
                .execute(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("{sql:?} failed: {e}"));
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

impl Deployment {
    pub fn new(extra: &[(&str, &str)]) -> Arc<Deployment> {
        let backend = Backend::current();
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let database = match backend {
            Backend::Postgres | Backend::PostgresS3 => {
                let name = format!("berth_test_{}", &unique[..16]);
                postgres_admin(&format!("CREATE DATABASE {name}"));
                Some(name)
            }
            _ => None,
        };
        let s3_prefix = backend
            .uses_s3()
            .then(|| format!("test-{}/", &unique[..16]));
        Arc::new(Deployment {
            backend,
            dir,
            database,
            s3_prefix,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            counter: Default::default(),
        })
    }

    /// A deployment whose storage is all in `extra` (whatever the suite's backend), for tests
    /// that bring their own database and S3 server.
    pub fn new_with_storage(extra: &[(&str, &str)]) -> Arc<Deployment> {
        Arc::new(Deployment {
            backend: Backend::Sqlite,
            dir: tempfile::Builder::new()
                .prefix("berth-test-")
                .tempdir()
                .unwrap(),
            database: None,
            s3_prefix: None,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            counter: Default::default(),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "BERTH_DATA_DIR".to_owned(),
                self.data_dir().display().to_string(),
            ),
            ("BERTH_LOG".to_owned(), "info,berth=debug".to_owned()),
            ("BERTH_SHUTDOWN_TIMEOUT".to_owned(), "10s".to_owned()),
        ];
        if let Some(db) = &self.database {
            env.push(("BERTH_DATABASE_URL".to_owned(), database_url(db)));
        }
        match self.backend {
            Backend::PostgresS3 => {
                let s3 = s3_server();
                env.push(("BERTH_STORAGE".to_owned(), "s3".to_owned()));
                env.push(("BERTH_S3_BUCKET".to_owned(), s3.bucket.clone()));
                env.push(("BERTH_S3_ENDPOINT".to_owned(), s3.endpoint.clone()));
                env.push(("BERTH_S3_REGION".to_owned(), s3.region.clone()));
                env.push(("BERTH_S3_FORCE_PATH_STYLE".to_owned(), "true".to_owned()));
                env.push((
                    "BERTH_S3_PREFIX".to_owned(),
                    self.s3_prefix.clone().unwrap_or_default(),
                ));
                env.extend(s3.credentials_env());
            }
            Backend::Memory => env.push(("BERTH_STORAGE".to_owned(), "memory".to_owned())),
            _ => {}
        }
        env.extend(self.extra.iter().cloned());
        env
    }

    /// Starts a `berth serve` process on this deployment.
    pub fn start(self: &Arc<Self>) -> Server {
        Server::spawn(Arc::clone(self))
    }

    /// Lines of every process's log on this deployment that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for path in files_under(self.dir.path()) {
            let named = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".log"));
            if named && let Ok(text) = std::fs::read_to_string(&path) {
                lines.extend(
                    text.lines()
                        .filter(|l| l.contains(needle))
                        .map(str::to_owned),
                );
            }
        }
        lines
    }

    /// Another `berth` command (`scrub`, `migrate`, …) on this deployment's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.args(args).envs(self.env());
        command
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(db) = &self.database {
            let db = db.clone();
            // A failure here only leaves a database behind in a throwaway server.
            let _ = std::panic::catch_unwind(|| {
                postgres_admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            });
        }
    }
}

/// A running `berth` process.
pub struct Server {
    pub deployment: Arc<Deployment>,
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

impl Server {
    /// A fresh deployment with one process.
    pub fn start() -> Server {
        Deployment::new(&[]).start()
    }

    /// A fresh deployment with extra environment settings.
    pub fn start_with(extra: &[(&str, &str)]) -> Server {
        Deployment::new(extra).start()
    }

    fn spawn(deployment: Arc<Deployment>) -> Server {
        Server::spawn_on(deployment, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// A process on `deployment` listening on `addr`.
    pub fn spawn_on(deployment: Arc<Deployment>, addr: SocketAddr) -> Server {
        let n = deployment
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = deployment.dir.path().join(format!("server-{n}.log"));
        let mut child = Command::new(binary())
            .args(["serve", "--listen", &addr.to_string()])
            .envs(deployment.env())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the berth binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "berth did not report its address; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server {
            deployment,
            child: Some(child),
            addr,
            log,
        }
    }

    /// Another process on the same deployment (a second replica).
    pub fn sibling(&self) -> Server {
        Server::spawn(Arc::clone(&self.deployment))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.addr))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("server is running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        (status, started.elapsed())
    }

    /// Kills the process and starts a new one on the same deployment.
    pub fn restart(&mut self) {
        self.kill();
        let fresh = Server::spawn(Arc::clone(&self.deployment));
        self.addr = fresh.addr;
        self.log = fresh.log.clone();
        let mut fresh = fresh;
        self.child = fresh.child.take();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident set size now and at its peak, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            // Errors are what explain a failure, and they may lie far before the tail.
            eprintln!(
                "---- berth errors and warnings ({}) ----",
                self.log.display()
            );
            for line in log
                .lines()
                .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
                .take(40)
            {
                eprintln!("{line}");
            }
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- berth log ({}) ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), different for every seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn unique_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64) << 32
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first error code of an OCI error envelope.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Asserts status and, for errors, the OCI code.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if let Some(code) = code {
            assert_eq!(
                self.error_code(),
                code,
                "body: {}",
                String::from_utf8_lossy(&self.body)
            );
            let message = self.json()["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert!(!message.is_empty(), "errors carry a message");
        }
        self
    }
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A pushed image: its manifest's bytes and digest, and its blobs.
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request reaches berth");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn call(&self, method: Method, path: &str) -> Answer {
        self.send(self.request(method, path)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path).await
    }

    /// GET, following a redirect to storage if there is one.
    pub async fn get_following(&self, path: &str) -> Answer {
        let first = self.get(path).await;
        if first.status == StatusCode::TEMPORARY_REDIRECT {
            let location = first
                .header("location")
                .expect("redirects carry a Location")
                .to_owned();
            return self.send(self.http.get(self.url(&location))).await;
        }
        first
    }

    pub async fn start_upload(&self, repo: &str) -> String {
        let a = self
            .call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        a.expect(202, None);
        a.header("location").unwrap().to_owned()
    }

    /// Bytes an upload session holds, read from its status `Range` (`0-<last>`). An empty
    /// session also answers `0-0`, so this is for sessions known to hold bytes.
    pub async fn upload_offset(&self, location: &str) -> usize {
        let status = self.get(location).await;
        status.expect(204, None);
        let range = status
            .header("range")
            .expect("an upload status has a Range");
        let last: usize = range
            .strip_prefix("0-")
            .and_then(|end| end.parse().ok())
            .unwrap_or_else(|| panic!("malformed upload Range {range:?}"));
        last + 1
    }

    /// Sends `data[from..]` as the last chunk, commits the upload under the digest of `data`
    /// and checks that the blob reads back byte-identical.
    pub async fn complete_upload(&self, repo: &str, location: &str, data: &[u8], from: usize) {
        self.send(
            self.request(Method::PATCH, location)
                .header("content-range", format!("{from}-{}", data.len() - 1))
                .body(data[from..].to_vec()),
        )
        .await
        .expect(202, None);
        self.commit_upload(repo, location, data).await;
    }

    /// Commits an upload holding all of `data` under its digest and checks that the blob reads
    /// back byte-identical.
    pub async fn commit_upload(&self, repo: &str, location: &str, data: &[u8]) {
        let digest = sha256(data);
        self.send(
            self.request(Method::PUT, location)
                .query(&[("digest", &digest)]),
        )
        .await
        .expect(201, None);
        let got = self
            .get_following(&format!("/v2/{repo}/blobs/{digest}"))
            .await;
        assert!(
            got.body[..] == data[..],
            "{repo}: the blob reads back as sent"
        );
    }

    /// Pushes a blob with POST then PUT; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let location = self.start_upload(repo).await;
        let a = self
            .send(
                self.request(Method::PUT, &location)
                    .query(&[("digest", &digest)])
                    .header("content-type", "application/octet-stream")
                    .body(data.to_vec()),
            )
            .await;
        a.expect(201, None);
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Answer {
        self.send(
            self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// Pushes a one-layer image and tags it.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: u64) -> Image {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        )
        .into_bytes();
        let layer = random_bytes(1000 + (seed % 1000) as usize, seed);
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            &config_digest,
            config.len(),
            &[(&layer_digest, layer.len())],
            None,
        );
        self.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .await
            .expect(201, None);
        Image {
            digest: sha256(&manifest),
            manifest,
            config,
            layer,
        }
    }
}

pub fn image_manifest(
    config: &str,
    config_size: usize,
    layers: &[(&str, usize)],
    extra: Option<&str>,
) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{}]{}}}"#,
        layers.join(","),
        extra.map(|e| format!(",{e}")).unwrap_or_default()
    )
    .into_bytes()
}

/// Waits until `check` holds, polling.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Files under a directory, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Deployment {
    /// The Postgres URL of this deployment's database, if it has one.
    pub fn database_url(&self) -> Option<String> {
        self.database.as_deref().map(database_url)
    }
}

/// A TCP forwarder that can cut every connection and refuse new ones, or hold them without
/// an answer, to take a dependency away from a running process and give it back.
pub struct TcpProxy {
    pub port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    generation: tokio::sync::watch::Sender<u64>,
}

const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const STALL: u8 = 2;

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(FORWARD));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let current = Arc::clone(&mode);
        let cuts = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cuts.subscribe();
                match current.load(std::sync::atomic::Ordering::SeqCst) {
                    REFUSE => drop(inbound),
                    STALL => {
                        // Accepted, never answered, until the mode changes.
                        tokio::spawn(async move {
                            let _ = cut.changed().await;
                            drop(inbound);
                        });
                    }
                    _ => {
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cut.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        TcpProxy {
            port,
            mode,
            generation,
        }
    }

    /// A proxy to `host:port` (its IPv4 address).
    pub async fn to_authority(authority: &str) -> TcpProxy {
        let target = tokio::net::lookup_host(authority)
            .await
            .unwrap()
            .find(|a| a.is_ipv4())
            .unwrap_or_else(|| panic!("{authority} has no IPv4 address"));
        TcpProxy::start(target).await
    }

    fn switch(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Cuts open connections and refuses new ones.
    pub fn disable(&self) {
        self.switch(REFUSE);
    }

    /// Cuts open connections and holds new ones without an answer.
    pub fn stall(&self) {
        self.switch(STALL);
    }

    pub fn enable(&self) {
        self.mode
            .store(FORWARD, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An S3 client for the test server, to look behind Berth's back.
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_server().client().await
}

pub fn s3_bucket() -> String {
    s3_server().bucket
}

/// Keys and in-progress multipart uploads under a prefix.
pub async fn s3_listing(prefix: &str) -> (Vec<String>, Vec<String>) {
    let client = s3_client().await;
    let objects = client
        .list_objects_v2()
        .bucket(s3_bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    let uploads = client
        .list_multipart_uploads()
        .bucket(s3_bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_owned))
        .collect();
    (objects, uploads)
}

/// A request body of `len` pseudo-random bytes produced on the fly, and its digest.
pub fn generated_body(len: usize, seed: u64, chunk: usize) -> (reqwest::Body, String) {
    let mut hasher = Sha256::new();
    let mut at = 0;
    let mut n = 0u64;
    while at < len {
        let size = chunk.min(len - at);
        hasher.update(random_bytes(size, seed ^ n));
        at += size;
        n += 1;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let stream = futures::stream::iter((0..n).map(move |i| {
        let size = chunk.min(len - i as usize * chunk);
        Ok::<_, std::io::Error>(random_bytes(size, seed ^ i))
    }));
    (reqwest::Body::wrap_stream(stream), digest)
}

/// A request written by hand on its own TCP connection, for clients that misbehave: slow,
/// stalled, or never finishing their headers.
pub struct RawConnection {
    pub stream: tokio::net::TcpStream,
    /// Bytes of a response head read so far.
    head: Vec<u8>,
}

/// The status line and headers of a response read from a [`RawConnection`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        RawConnection {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            head: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends the head of a `method` request to `path` with a chunked body to follow.
    pub async fn start_chunked(&mut self, method: &str, path: &str) -> std::io::Result<()> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        self.send(head.as_bytes()).await
    }

    /// Sends one chunk of a chunked body.
    pub async fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
        framed.extend_from_slice(data);
        framed.extend_from_slice(b"\r\n");
        self.send(&framed).await
    }

    /// Reads a response head, waiting at most `timeout`; `None` if none came in time (what
    /// arrived of it is kept for the next call).
    pub async fn response(&mut self, timeout: Duration) -> Option<RawResponse> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut byte = [0u8; 1];
            while !self.head.ends_with(b"\r\n\r\n") {
                // Reading a byte is cancel-safe: a timeout loses nothing.
                match self.stream.read(&mut byte).await {
                    Ok(1) => self.head.push(byte[0]),
                    _ => return None,
                }
            }
            let head = std::mem::take(&mut self.head);
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            Some(RawResponse { status, headers })
        };
        tokio::time::timeout(timeout, read).await.ok().flatten()
    }

    /// Whether the server closed the connection within `timeout` (end of stream or reset).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut sink = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Open file descriptors of a process.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The part size that makes pieces small on this backend (S3 allows no smaller than 5 MiB).
pub fn small_part_size() -> &'static str {
    if Backend::current().uses_s3() {
        "5MiB"
    } else {
        "1MiB"
    }
}

/// [`small_part_size`] in bytes.
pub fn small_part_bytes() -> u64 {
    (if Backend::current().uses_s3() { 5 } else { 1 }) << 20
}

/// Settings giving uploads `buffers` part buffers of [`small_part_size`] bytes.
pub fn small_buffers(buffers: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("BERTH_UPLOAD_BUFFERS", buffers),
        ("BERTH_FS_PART_SIZE", small_part_size()),
        ("BERTH_S3_PART_SIZE", small_part_size()),
    ]
}

/// An HTTP proxy in front of the S3 server that, while `full` is set, answers every upload
/// (`PutObject`, `UploadPart`) the way MinIO does when its drives are full: 507 with
/// `XMinioStorageFull`. Everything else passes through unchanged (signatures included: the
/// `Host` header is kept).
pub struct FullS3 {
    pub endpoint: String,
    pub full: Arc<std::sync::atomic::AtomicBool>,
}

impl FullS3 {
    pub async fn start(target: String) -> FullS3 {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let flag = Arc::clone(&full);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, flag, target) = (client.clone(), Arc::clone(&flag), target.clone());
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, flag, target) =
                            (client.clone(), Arc::clone(&flag), target.clone());
                        async move {
                            let upload = request.method() == hyper::Method::PUT
                                && !request.headers().contains_key("x-amz-copy-source");
                            if upload && flag.load(std::sync::atomic::Ordering::SeqCst) {
                                // A server reads the request before it answers.
                                let _ = request.into_body().collect().await;
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>XMinioStorageFull</Code><Message>Storage backend has reached its minimum free drive threshold. Please delete a few objects to proceed.</Message></Error>";
                                let response = hyper::Response::builder()
                                    .status(507)
                                    .header("content-type", "application/xml")
                                    .body(
                                        http_body_util::Full::new(bytes::Bytes::from(body))
                                            .map_err(|e| match e {})
                                            .boxed(),
                                    )
                                    .unwrap();
                                return Ok::<_, std::convert::Infallible>(response);
                            }
                            let (parts, body) = request.into_parts();
                            let url = format!(
                                "{target}{}",
                                parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str())
                                    .unwrap_or("/")
                            );
                            let mut forward = client.request(parts.method.clone(), url);
                            for (name, value) in &parts.headers {
                                forward = forward.header(name, value);
                            }
                            let body = body.into_data_stream();
                            let forwarded =
                                forward.body(reqwest::Body::wrap_stream(body)).send().await;
                            let response = match forwarded {
                                Ok(r) => {
                                    let mut builder = hyper::Response::builder().status(r.status());
                                    for (name, value) in r.headers() {
                                        builder = builder.header(name, value);
                                    }
                                    let stream = futures::StreamExt::map(r.bytes_stream(), |c| {
                                        c.map(hyper::body::Frame::data)
                                            .map_err(std::io::Error::other)
                                    });
                                    builder
                                        .body(http_body_util::StreamBody::new(stream).boxed())
                                        .unwrap()
                                }
                                Err(_) => hyper::Response::builder()
                                    .status(502)
                                    .body(
                                        http_body_util::Empty::new()
                                            .map_err(|e| match e {})
                                            .boxed(),
                                    )
                                    .unwrap(),
                            };
                            Ok(response)
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FullS3 { endpoint, full }
    }

    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP port free right now on loopback (for a second listener of a test server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a metric (first sample of that name) in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Fails the test unless the command `name` is installed.
pub fn require(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is not installed; .ci/run installs it");
}

/// Runs a command that must succeed; its standard output.
#[track_caller]
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; what it printed.
#[track_caller]
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should fail");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The sum of the samples of metric `name` whose labels include every pair in `labels`
/// (0 if there is none).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads `/metrics` from an admin listener.
pub async fn scrape(admin: &Client) -> String {
    let exposition = admin.get("/metrics").await;
    exposition.expect(200, None);
    String::from_utf8_lossy(&exposition.body).into_owned()
}
