//! The Postgres and S3 servers the tests use, found once per test binary and shared (each test
//! still gets its own database and key prefix):
//!
//! 1. from the environment: `BERTH_TEST_DATABASE_URL` (an administrator's URL; each test creates
//!    its own database through it), and `AWS_ENDPOINT_URL` with `S3_BUCKET`, `AWS_REGION`,
//!    `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`;
//! 2. otherwise from containers started with `testcontainers`: `BERTH_TEST_POSTGRES_IMAGE`
//!    (default `postgres:17-alpine`) and `BERTH_TEST_S3_IMAGE` (default `minio/minio`), whose
//!    flavour, `minio` or `garage`, is `BERTH_TEST_S3_FLAVOUR` (default: `garage` if the image's
//!    name says so). The containers are removed when the test binary exits;
//! 3. otherwise they are missing. The harness (`harness.rs`) looks for the backend
//!    configuration's services once, before any test runs: if they are missing, the tests that
//!    need them are reported as ignored, with a line saying how to provide them, or fail when
//!    `BERTH_TEST_REQUIRE_SERVICES=1` (CI). A test that runs anyway (`--include-ignored`) fails
//!    where it asks for them; nothing here skips a test or ends the test binary.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use testcontainers::core::IntoContainerPort;
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

/// A Postgres server: an administrator's URL (to its `postgres` database).
#[derive(Clone, Debug)]
pub struct Postgres {
    pub admin_url: String,
}

impl Postgres {
    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        let url = &self.admin_url;
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (url.as_str(), String::new()),
        };
        let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
        format!("{base}/{name}{query}")
    }

    /// Runs `sql` as the administrator, on a thread with a runtime of its own (so that it also
    /// works from inside a test's runtime and from `Drop`); a failure panics.
    pub fn admin(&self, sql: &str) {
        let url = self.admin_url.clone();
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
}

/// An S3 server with a bucket the tests may write to.
#[derive(Clone, Debug)]
pub struct S3 {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    /// The environment a process needs to reach this server with the AWS SDK.
    pub fn credentials_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
        ]
    }

    /// An SDK client for this server.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "berth-tests",
            ))
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

type Found<T> = Result<T, String>;

static POSTGRES: OnceLock<Found<Postgres>> = OnceLock::new();
static S3_SERVER: OnceLock<Found<S3>> = OnceLock::new();
/// Containers to remove when the test binary exits (statics are never dropped).
static CONTAINERS: Mutex<Vec<Container<GenericImage>>> = Mutex::new(Vec::new());

/// Postgres, or why there is none.
pub fn postgres() -> Found<Postgres> {
    POSTGRES
        .get_or_init(|| {
            let from_env = std::env::var("BERTH_TEST_DATABASE_URL")
                .or_else(|_| std::env::var("BERTH_TEST_POSTGRES_URL"))
                .ok()
                .filter(|u| !u.is_empty());
            match from_env {
                Some(admin_url) => Ok(Postgres { admin_url }),
                None => off_the_test_thread(start_postgres),
            }
        })
        .clone()
}

/// S3, or why there is none.
pub fn s3() -> Found<S3> {
    S3_SERVER
        .get_or_init(|| {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            match (var("AWS_ENDPOINT_URL"), var("S3_BUCKET")) {
                (Some(endpoint), Some(bucket)) => Ok(S3 {
                    endpoint,
                    bucket,
                    region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key: var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
                    secret_key: var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
                }),
                _ => off_the_test_thread(start_s3),
            }
        })
        .clone()
}

/// Whether missing services fail the tests that need them instead of skipping them.
pub fn required() -> bool {
    std::env::var("BERTH_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The service a whole backend configuration needs. The harness has already found it, or
/// ignored the tests that need it; a test that runs without it anyway fails here.
pub fn for_configuration<T>(found: Found<T>, configuration: &str) -> T {
    found.unwrap_or_else(|why| {
        let required = if required() {
            " (BERTH_TEST_REQUIRE_SERVICES=1)"
        } else {
            ""
        };
        panic!("the {configuration} configuration: {why}{required}")
    })
}

/// Runs `start` on a thread of its own: the blocking container API runs its own runtime, which
/// cannot start inside a test's.
fn off_the_test_thread<T: Send + 'static>(start: fn() -> Found<T>) -> Found<T> {
    std::thread::spawn(start)
        .join()
        .unwrap_or_else(|_| Err("starting the container panicked".into()))
}

/// Whether there is a Docker engine to start containers in, or why not.
pub fn docker_available() -> Found<()> {
    let socket = std::path::Path::new("/var/run/docker.sock").exists();
    if socket || std::env::var("DOCKER_HOST").is_ok() {
        Ok(())
    } else {
        Err("no Docker engine (no /var/run/docker.sock, no DOCKER_HOST) to start it in".into())
    }
}

/// `name:tag` split at the tag's colon (not a registry's port).
pub fn image(reference: &str) -> GenericImage {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(colon) => {
            GenericImage::new(&reference[..slash + colon], &reference[slash + colon + 1..])
        }
        None => GenericImage::new(reference, "latest"),
    }
}

fn keep(container: Container<GenericImage>) {
    let mut containers = CONTAINERS.lock().unwrap_or_else(|e| e.into_inner());
    if containers.is_empty() {
        extern "C" fn remove_containers() {
            let taken = std::mem::take(&mut *CONTAINERS.lock().unwrap_or_else(|e| e.into_inner()));
            drop(taken);
        }
        // SAFETY: registers a plain function without arguments; it only drops containers.
        unsafe { libc::atexit(remove_containers) };
    }
    containers.push(container);
}

fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Found<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{what} was not ready within {timeout:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn start_postgres() -> Found<Postgres> {
    let (container, postgres) = postgres_container(None)?;
    keep(container);
    Ok(postgres)
}

fn start_s3() -> Found<S3> {
    let (container, s3, _) = s3_container(None)?;
    keep(container);
    Ok(s3)
}

/// A container on `network`, named after it and `role` so that the network's other
/// containers reach it by that name.
fn on_network(
    request: testcontainers::ContainerRequest<GenericImage>,
    network: Option<&str>,
    role: &str,
) -> testcontainers::ContainerRequest<GenericImage> {
    match network {
        Some(network) => request
            .with_network(network)
            .with_container_name(format!("{network}-{role}")),
        None => request,
    }
}

/// A Postgres container (on `network`, named `<network>-postgres`), once it answers queries.
pub fn postgres_container(network: Option<&str>) -> Found<(Container<GenericImage>, Postgres)> {
    let how = "set BERTH_TEST_DATABASE_URL, or run Docker so that a Postgres container can start";
    docker_available().map_err(|e| format!("Postgres is missing: {e}; {how}"))?;
    let reference = std::env::var("BERTH_TEST_POSTGRES_IMAGE")
        .unwrap_or_else(|_| "postgres:17-alpine".to_owned());
    let request = image(&reference)
        .with_exposed_port(5432.tcp())
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_PASSWORD", "unused");
    let container = on_network(request, network, "postgres")
        .start()
        .map_err(|e| format!("Postgres container {reference} did not start: {e}; {how}"))?;
    let host = container
        .get_host()
        .map_err(|e| format!("Postgres container: {e}"))?;
    let port = container
        .get_host_port_ipv4(5432.tcp())
        .map_err(|e| format!("Postgres container: {e}"))?;
    let postgres = Postgres {
        admin_url: format!("postgres://postgres@{host}:{port}/postgres"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Images that initialise a database first serve it on a socket only, then restart: TCP
    // answering a query means the real server is up.
    wait_until("Postgres", Duration::from_secs(60), || {
        runtime.block_on(async {
            use sqlx::Connection as _;
            let mut connection = sqlx::postgres::PgConnection::connect(&postgres.admin_url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query("SELECT 1")
                .execute(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    })?;
    Ok((container, postgres))
}

/// An S3 container (on `network`, named `<network>-s3`) with its bucket, and its port inside
/// the network.
pub fn s3_container(network: Option<&str>) -> Found<(Container<GenericImage>, S3, u16)> {
    let how = "set AWS_ENDPOINT_URL, S3_BUCKET, AWS_REGION and the AWS keys, or run Docker so that an S3 container can start";
    docker_available().map_err(|e| format!("S3 is missing: {e}; {how}"))?;
    let reference =
        std::env::var("BERTH_TEST_S3_IMAGE").unwrap_or_else(|_| "minio/minio".to_owned());
    let garage = match std::env::var("BERTH_TEST_S3_FLAVOUR").as_deref() {
        Ok("garage") => true,
        Ok("minio") => false,
        Ok(other) => {
            return Err(format!(
                "BERTH_TEST_S3_FLAVOUR {other:?}: use minio or garage"
            ));
        }
        Err(_) => reference.contains("garage"),
    };
    let bucket = "berth-tests".to_owned();
    let (request, port, region, access_key, secret_key) = if garage {
        // Garage's key ids are GK and 24 hex digits; its secrets 64 hex digits.
        let access_key = "GK0123456789abcdef01234567".to_owned();
        let secret_key = "0123456789abcdef".repeat(4);
        let request = image(&reference)
            .with_exposed_port(3900.tcp())
            .with_env_var("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
            .with_env_var("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
            .with_env_var("GARAGE_DEFAULT_BUCKET", &bucket);
        (request, 3900, "garage", access_key, secret_key)
    } else {
        let access_key = "berth-tests".to_owned();
        let secret_key = "berth-tests-secret".to_owned();
        let request = image(&reference)
            .with_exposed_port(9000.tcp())
            .with_env_var("MINIO_ROOT_USER", &access_key)
            .with_env_var("MINIO_ROOT_PASSWORD", &secret_key)
            .with_cmd(["server", "/data"]);
        (request, 9000, "us-east-1", access_key, secret_key)
    };
    let container = on_network(request, network, "s3")
        .start()
        .map_err(|e| format!("S3 container {reference} did not start: {e}; {how}"))?;
    let host = container
        .get_host()
        .map_err(|e| format!("S3 container: {e}"))?;
    let inside = port;
    let port = container
        .get_host_port_ipv4(port.tcp())
        .map_err(|e| format!("S3 container: {e}"))?;
    let s3 = S3 {
        endpoint: format!("http://{host}:{port}"),
        region: region.to_owned(),
        bucket,
        access_key,
        secret_key,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = s3.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Garage creates its bucket at start; MinIO needs it created.
            if !garage {
                let _ = client.create_bucket().bucket(&s3.bucket).send().await;
            }
            match client.head_bucket().bucket(&s3.bucket).send().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("S3 container {reference} was not ready: {e:?}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })?;
    Ok((container, s3, inside))
}
