//! A production-shaped cluster on loopback: its own Postgres and Garage, three `berth`
//! replicas on fixed ports, and HAProxy in plain round-robin (no stickiness) in front of them.
//! Everything a test does goes through the load balancer; faults (killed replicas, a restarted
//! database, a frozen S3 server) hit only this cluster's own processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

const PG_BIN: &str = "/usr/lib/postgresql";

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir(PG_BIN)
        .expect("PostgreSQL's server binaries are installed under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .last()
        .expect("a PostgreSQL version is installed")
        .join("bin")
        .join(name)
}

/// Runs a command as the `postgres` user (the server refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

/// A Postgres server of its own, in a temporary directory.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster-pg-")
            .tempdir()
            .unwrap();
        ok(Command::new("chown").arg("postgres").arg(dir.path()));
        let data = dir.path().join("data");
        ok(as_postgres(&postgres_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        let pg = Postgres {
            dir,
            port: free_port(),
        };
        pg.run();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        ok(as_postgres(&postgres_bin("pg_ctl"))
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &options, "-D"])
            .arg(self.data())
            .arg("start"));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server, terminating every session.
    pub fn stop(&self) {
        ok(as_postgres(&postgres_bin("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("stop"));
    }

    pub fn start_again(&self) {
        self.run();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&postgres_bin("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}

/// A Garage S3 server of its own, with the same key and bucket as the suite's.
pub struct Garage {
    dir: tempfile::TempDir,
    pub port: u16,
    process: Option<Child>,
}

impl Garage {
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster-garage-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let rpc = free_port();
        let admin = free_port();
        let config = format!(
            "metadata_dir = \"{0}/meta\"\ndata_dir = \"{0}/data\"\ndb_engine = \"lmdb\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{1}\"\n[s3_api]\ns3_region = \"{2}\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            dir.path().display(),
            hex::encode(random_bytes(32, unique_seed())),
            std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into()),
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut garage = Garage {
            dir,
            port,
            process: None,
        };
        garage.run();
        garage
    }

    fn run(&mut self) {
        let bin = std::env::var("GARAGE_BIN").unwrap_or_else(|_| {
            let home = std::env::var("CARGO_HOME")
                .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
            format!("{home}/bin/garage")
        });
        let log = std::fs::File::create(self.dir.path().join("garage.log")).unwrap();
        let need = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
        let child = Command::new(bin)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_CONFIG_FILE", self.dir.path().join("garage.toml"))
            .env("GARAGE_DEFAULT_ACCESS_KEY", need("AWS_ACCESS_KEY_ID"))
            .env("GARAGE_DEFAULT_SECRET_KEY", need("AWS_SECRET_ACCESS_KEY"))
            .env("GARAGE_DEFAULT_BUCKET", need("S3_BUCKET"))
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("garage starts");
        self.process = Some(child);
        let endpoint = self.endpoint();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::thread::spawn({
                let endpoint = endpoint.clone();
                move || {
                    tokio::runtime::Runtime::new().unwrap().block_on(async {
                        let client = s3_client_at(&endpoint).await;
                        client
                            .list_objects_v2()
                            .bucket(s3_bucket())
                            .max_keys(1)
                            .send()
                            .await
                            .is_ok()
                    })
                }
            })
            .join()
            .unwrap_or(false);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "garage did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Freezes the server (SIGSTOP): connections hang.
    pub fn freeze(&self) {
        ok(Command::new("kill").args(["-STOP", &self.pid().to_string()]));
    }

    pub fn thaw(&self) {
        ok(Command::new("kill").args(["-CONT", &self.pid().to_string()]));
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An S3 client for an endpoint, with the suite's credentials.
pub async fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// HAProxy in front of the replicas.
pub struct Haproxy {
    process: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(replicas: &[SocketAddr]) -> Haproxy {
        require("haproxy");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, a)| format!("    server replica{i} {a} check\n"))
            .collect();
        // Plain round-robin, no stickiness and no connection reuse: every request may land on
        // any replica. A request whose connection fails before it was sent is retried on
        // another replica; readiness takes draining replicas out of rotation.
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 300s\n    timeout server 300s\n\
             \x20   retries 3\n    option redispatch\n    retry-on conn-failure\n    option http-server-close\n\
             frontend registry\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n\
             \x20   default-server inter 300ms fall 1 rise 1\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let process = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            process,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Postgres, Garage, replicas and the load balancer.
pub struct Cluster {
    pub replicas: Vec<Server>,
    pub addresses: Vec<SocketAddr>,
    pub haproxy: Haproxy,
    pub garage: Garage,
    pub postgres: Postgres,
    pub deployment: Arc<Deployment>,
}

impl Cluster {
    pub fn start(replicas: usize, extra: &[(&str, &str)]) -> Cluster {
        let postgres = Postgres::start();
        let garage = Garage::start();
        let endpoint = garage.endpoint();
        let url = postgres.url();
        let bucket = s3_bucket();
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into());
        let mut settings: Vec<(&str, &str)> = vec![
            ("BERTH_DATABASE_URL", &url),
            ("BERTH_STORAGE", "s3"),
            ("BERTH_S3_ENDPOINT", &endpoint),
            ("BERTH_S3_BUCKET", &bucket),
            ("BERTH_S3_REGION", &region),
            ("BERTH_S3_FORCE_PATH_STYLE", "true"),
            ("BERTH_S3_PREFIX", "cluster/"),
            ("BERTH_SHUTDOWN_DELAY", "1s"),
            ("BERTH_LOG", "info,berth=debug"),
        ];
        settings.extend_from_slice(extra);
        let deployment = Deployment::new_with_storage(&settings);
        let addresses: Vec<SocketAddr> = (0..replicas)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let replicas: Vec<Server> = addresses
            .iter()
            .map(|a| Server::spawn_on(Arc::clone(&deployment), *a))
            .collect();
        let haproxy = Haproxy::start(&addresses);
        Cluster {
            replicas,
            addresses,
            haproxy,
            garage,
            postgres,
            deployment,
        }
    }

    /// The registry, through the load balancer.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.haproxy.port))
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.addr()))
    }

    /// SIGKILLs replica `i` and starts it again on its port.
    pub fn kill_and_restart(&mut self, i: usize) {
        self.replicas[i].kill();
        self.replicas[i] = Server::spawn_on(Arc::clone(&self.deployment), self.addresses[i]);
    }

    /// SIGTERMs replica `i`, waits for it to exit, and starts it again.
    pub fn stop_and_restart(&mut self, i: usize) -> Duration {
        let (_, took) = self.replicas[i].terminate();
        self.replicas[i] = Server::spawn_on(Arc::clone(&self.deployment), self.addresses[i]);
        took
    }
}
