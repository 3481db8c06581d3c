//! A world: the stores of one case (in memory, or SQLite and a directory), the registry that
//! serves them through the fault-injecting decorators, and restarts after a crash.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::Registry;
use berth::RegistryOptions;
use berth::metadata::MetadataStore;
use berth::metadata::memory::MemoryMetadataStore;
use berth::metadata::sql::{SqlMetadataStore, SqlOptions};
use berth::storage::BlobStore;
use berth::storage::fs::FsBlobStore;
use berth::storage::memory::MemoryBlobStore;
use berth::storage::s3::{S3BlobStore, S3Config};

use crate::faulty::{Faults, FaultyBlobs, FaultyMetadata, Incarnation};
use crate::net::{PgCutter, S3Cutter};
use crate::services;

/// Size of the pieces uploads are cut into: small, so that a blob of a few hundred KiB takes
/// several pieces, checkpoints and (on a directory) direct-I/O carries.
pub const PART_SIZE: usize = 64 * 1024;

/// The smallest part size S3 allows, for the Postgres + S3 world.
pub const S3_PART_SIZE: usize = 5 * 1024 * 1024;

/// Which stores a world runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The memory metadata store and memory blobs.
    Memory,
    /// SQLite and a directory (direct I/O where the filesystem allows it).
    SqliteDir,
    /// Postgres and an S3 server, each behind a proxy that can cut a reply after the server
    /// acted on the request.
    PostgresS3,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::SqliteDir => "sqlite+dir",
            Backend::PostgresS3 => "postgres+s3",
        }
    }
}

/// The registry's options in every case: no grace period (the collector may take anything
/// unreferenced at once), sessions that do not expire while a workflow runs, no free-space
/// reserve.
pub fn base_options() -> RegistryOptions {
    RegistryOptions {
        gc_grace_period: Duration::ZERO,
        gc_interval: Duration::ZERO,
        upload_ttl: Duration::from_secs(24 * 3600),
        min_free_space: 0,
        upload_buffers: 8,
        upload_buffer_wait: Duration::from_secs(10),
        ..RegistryOptions::default()
    }
}

struct Current {
    registry: Registry,
    life: Arc<Incarnation>,
}

/// The stores of one case and the registry serving them.
pub struct World {
    pub faults: Arc<Faults>,
    options: RegistryOptions,
    /// The blob directory, on a disk that takes direct I/O.
    dir: tempfile::TempDir,
    /// The SQLite database, in memory where the machine has a tmpfs: its syncs cost nothing
    /// there, and no fault here depends on them.
    metadata_dir: tempfile::TempDir,
    memory: Option<(Arc<MemoryMetadataStore>, Arc<MemoryBlobStore>)>,
    /// Postgres and S3 behind their cutting proxies.
    pub net: Option<Net>,
    /// Simulated time: every reading advances it by a millisecond, so timestamps and the
    /// collector's cutoffs replay exactly.
    clock: Arc<AtomicI64>,
    current: Mutex<Option<Current>>,
    restarts: AtomicU32,
}

impl World {
    pub async fn new(backend: Backend, options: RegistryOptions) -> Arc<World> {
        let dir = tempfile::Builder::new()
            .prefix("berth-sim-")
            .tempdir()
            .expect("a temporary directory");
        let shm = std::path::Path::new("/dev/shm");
        let metadata_dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("berth-sim-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("berth-sim-").tempdir()
        }
        .expect("a temporary directory");
        let memory = (backend == Backend::Memory).then(|| {
            (
                Arc::new(MemoryMetadataStore::new()),
                Arc::new(MemoryBlobStore::new(PART_SIZE)),
            )
        });
        let net = match backend {
            Backend::PostgresS3 => Some(Net::start().await),
            _ => None,
        };
        let world = Arc::new(World {
            net,
            faults: Faults::new(),
            options,
            dir,
            metadata_dir,
            memory,
            clock: Arc::new(AtomicI64::new(1_800_000_000_000)),
            current: Mutex::new(None),
            restarts: AtomicU32::new(0),
        });
        if backend != Backend::Memory {
            world.sql().await.migrate().await.expect("migrations apply");
        }
        world
    }

    async fn sql(&self) -> SqlMetadataStore {
        let url = match &self.net {
            Some(net) => net.database_url.clone(),
            None => format!(
                "sqlite:{}",
                self.metadata_dir.path().join("berth.db").display()
            ),
        };
        let options = SqlOptions {
            max_connections: 4,
            ..SqlOptions::default()
        };
        SqlMetadataStore::connect(&url, &options)
            .await
            .expect("the database opens")
    }

    /// The stores as they are, without faults: what a restarted process opens.
    pub async fn stores(&self) -> (Arc<dyn MetadataStore>, Arc<dyn BlobStore>) {
        match &self.memory {
            Some((metadata, blobs)) => (
                Arc::clone(metadata) as Arc<dyn MetadataStore>,
                Arc::clone(blobs) as Arc<dyn BlobStore>,
            ),
            None => {
                let blobs: Arc<dyn BlobStore> = match &self.net {
                    Some(net) => Arc::new(net.blobs().await),
                    None => Arc::new(
                        FsBlobStore::open(self.dir.path().join("data"), PART_SIZE, true)
                            .await
                            .expect("the blob directory opens"),
                    ),
                };
                (Arc::new(self.sql().await), blobs)
            }
        }
    }

    /// The size of the pieces uploads are cut into.
    pub fn part_size(&self) -> usize {
        match self.net {
            Some(_) => S3_PART_SIZE,
            None => PART_SIZE,
        }
    }

    /// The time now, by the world's clock (advancing it).
    pub fn now(&self) -> i64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn build(
        &self,
        metadata: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        options: RegistryOptions,
    ) -> Registry {
        let clock = Arc::clone(&self.clock);
        Registry::builder(blobs, metadata)
            .options(options)
            .clock(move || clock.fetch_add(1, Ordering::SeqCst))
            .build()
    }

    /// The registry clients talk to; a new one over the same stores if the last crashed.
    pub async fn registry(&self) -> Registry {
        {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = current.as_ref().filter(|c| !c.life.crashed()) {
                return c.registry.clone();
            }
        }
        let (metadata, blobs) = self.stores().await;
        let life = Incarnation::new(Arc::clone(&self.faults));
        let registry = self.build(
            Arc::new(FaultyMetadata::new(metadata, Arc::clone(&life))),
            Arc::new(FaultyBlobs::new(blobs, Arc::clone(&life))),
            self.options.clone(),
        );
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref().filter(|c| !c.life.crashed()) {
            // Another actor restarted it meanwhile.
            Some(c) => c.registry.clone(),
            None => {
                if current.is_some() {
                    self.restarts.fetch_add(1, Ordering::SeqCst);
                }
                *current = Some(Current {
                    registry: registry.clone(),
                    life,
                });
                registry
            }
        }
    }

    /// How many times the registry was restarted after a crash.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// A registry over the stores without faults, with `options` (for checks and sweeps).
    pub async fn plain_registry(&self, options: RegistryOptions) -> Registry {
        let (metadata, blobs) = self.stores().await;
        self.build(metadata, blobs, options)
    }

    /// The world's options.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Drops the registry clients talk to (its pool, its open files).
    pub fn shut_down(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// A database of its own on the test Postgres server and a prefix of its own in the test
/// bucket, both reached through cutting proxies; the database is dropped with it.
pub struct Net {
    pub postgres: PgCutter,
    pub s3: S3Cutter,
    database: String,
    database_url: String,
    admin_url: String,
    prefix: String,
    server: services::S3,
}

/// Runs `sql` as the Postgres administrator at `admin_url`.
fn postgres_admin(admin_url: &str, sql: String) {
    services::Postgres {
        admin_url: admin_url.to_owned(),
    }
    .admin(&sql)
}

/// `url` with its host and port replaced by `authority` and its database by `database`.
fn through(url: &str, authority: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{authority}/{database}{query}")
}

/// The host and port of a URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

impl Net {
    async fn start() -> Net {
        let postgres = services::postgres()
            .unwrap_or_else(|why| panic!("the Postgres + S3 simulation needs Postgres: {why}"));
        let server = services::s3()
            .unwrap_or_else(|why| panic!("the Postgres + S3 simulation needs S3: {why}"));
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("berth_sim_{}", &unique[..16]);
        postgres_admin(&postgres.admin_url, format!("CREATE DATABASE {database}"));
        let target = tokio::net::lookup_host(authority(&postgres.admin_url))
            .await
            .expect("the Postgres server's address")
            .find(|a| a.is_ipv4())
            .expect("an IPv4 address for Postgres");
        let proxy = PgCutter::start(target).await;
        // In plain text, so that the proxy can read the protocol.
        let database_url = through(
            &postgres.admin_url,
            &format!("127.0.0.1:{}", proxy.port),
            &database,
        );
        let database_url = if database_url.contains('?') {
            format!("{database_url}&sslmode=disable")
        } else {
            format!("{database_url}?sslmode=disable")
        };
        let s3 = S3Cutter::start(server.endpoint.clone()).await;
        Net {
            postgres: proxy,
            s3,
            database,
            database_url,
            admin_url: postgres.admin_url,
            prefix: format!("sim-{}/", &unique[..16]),
            server,
        }
    }

    async fn blobs(&self) -> S3BlobStore {
        S3BlobStore::connect(S3Config {
            bucket: self.server.bucket.clone(),
            region: Some(self.server.region.clone()),
            endpoint: Some(self.s3.endpoint.clone()),
            public_endpoint: None,
            force_path_style: true,
            prefix: self.prefix.clone(),
            part_size: S3_PART_SIZE,
            upload_concurrency: 2,
            presign_expiry: Duration::from_secs(900),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        })
        .await
        .expect("the S3 store connects")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let (url, database) = (self.admin_url.clone(), self.database.clone());
        // A database left behind in a throwaway server is no failure of the case.
        let _ = std::panic::catch_unwind(move || {
            postgres_admin(
                &url,
                format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            )
        });
    }
}
