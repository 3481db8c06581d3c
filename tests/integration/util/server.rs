//! `berth` processes on port 0 against the suite's backend: [`Backend`], [`Deployment`]
//! (one test's state, shared by its processes) and [`Server`].

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

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

fn database_url(name: &str) -> String {
    postgres_server().database_url(name)
}

/// Runs a statement as the Postgres administrator.
fn postgres_admin(sql: &str) {
    postgres_server().admin(sql)
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
        Server::spawn_with_args(deployment, addr, &[])
    }

    /// Another process on this deployment that advertises its own URL to the others
    /// (`--advertise-url`), as a replica in a cluster does.
    pub fn advertised_sibling(&self) -> Server {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let url = format!("http://{addr}");
        Server::spawn_with_args(
            Arc::clone(&self.deployment),
            addr,
            &["--advertise-url", &url],
        )
    }

    /// A process on `deployment` listening on `addr`, with more `serve` flags.
    fn spawn_with_args(deployment: Arc<Deployment>, addr: SocketAddr, args: &[&str]) -> Server {
        let n = deployment
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = deployment.dir.path().join(format!("server-{n}.log"));
        let mut child = Command::new(binary())
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
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

/// A Postgres database of its own that Berth reaches through a proxy the test can cut: the
/// deployment that owns the database (it is dropped with it), the proxy, and the database URL
/// through the proxy.
pub async fn database_behind_proxy() -> (Arc<Deployment>, TcpProxy, String) {
    let database = Deployment::new(&[]);
    let url = database
        .database_url()
        .expect("a Postgres backend gives every deployment a database");
    // postgres://user@host:port/db: the server's address is between '@' and the next '/'.
    let authority = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(authority, _)| authority.to_owned())
        .expect("the database URL names a host and port");
    let proxy = TcpProxy::to_authority(&authority).await;
    let proxied = url.replacen(&authority, &format!("127.0.0.1:{}", proxy.port), 1);
    (database, proxy, proxied)
}

impl Deployment {
    /// The Postgres URL of this deployment's database, if it has one.
    pub fn database_url(&self) -> Option<String> {
        self.database.as_deref().map(database_url)
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

/// A TCP port free right now on loopback (for a second listener of a test server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
