//! Configuration of the `berth` binary: every setting is a flag, an environment variable
//! (`BERTH_` + the key in upper case) and a key of the optional TOML file (`--config`).
//! Flags win over the environment, which wins over the file, which wins over defaults.
//!
//! Past 800 lines because every setting is declared once here, with its checks and tests; the
//! declarations are a list, not logic to split.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use berth::RegistryOptions;
use berth::client::TrustedProxies;
use berth::http::{HttpOptions, ServeOptions};
use berth::metadata::events::{EventAction, Subscription, Subscriptions};
use berth::metadata::sql::SqlOptions;
use berth::registry::gc::ImmutableTags;
use berth::upstream::{Credentials, UpstreamSettings, Upstreams};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// A byte count written as a number with an optional unit: `16MiB`, `5MB`, `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Size units, case-insensitive; no unit is bytes.
const SIZE_UNITS: &[(&[&str], u64)] = &[
    (&["", "b"], 1),
    (&["k", "kb"], 1000),
    (&["ki", "kib"], 1 << 10),
    (&["m", "mb"], 1000 * 1000),
    (&["mi", "mib"], 1 << 20),
    (&["g", "gb"], 1000 * 1000 * 1000),
    (&["gi", "gib"], 1 << 30),
];

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = Quantity {
            what: "size",
            examples: "16MiB, 5MB, 1048576",
            units: SIZE_UNITS,
            lowercase: true,
        };
        number.parse(s).map(ByteSize)
    }
}

/// A duration written as a number with a unit (`ms`, `s`, `m`, `h`, `d`); a bare number is
/// seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

/// Duration units, in milliseconds; no unit is seconds.
const SPAN_UNITS: &[(&[&str], u64)] = &[
    (&["ms"], 1),
    (&["", "s"], 1000),
    (&["m"], 60_000),
    (&["h"], 3_600_000),
    (&["d"], 86_400_000),
];

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = Quantity {
            what: "duration",
            examples: "30s, 20m, 24h",
            units: SPAN_UNITS,
            lowercase: false,
        };
        number
            .parse(s)
            .map(|millis| Span(Duration::from_millis(millis)))
    }
}

/// A whole number followed by a unit from a table of units and their factors.
struct Quantity {
    what: &'static str,
    examples: &'static str,
    units: &'static [(&'static [&'static str], u64)],
    lowercase: bool,
}

impl Quantity {
    fn parse(&self, s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a {} (e.g. {})", self.what, self.examples))?;
        let unit = unit.trim();
        let unit = if self.lowercase {
            unit.to_ascii_lowercase()
        } else {
            unit.to_owned()
        };
        let (_, factor) = self
            .units
            .iter()
            .find(|(names, _)| names.contains(&unit.as_str()))
            .ok_or_else(|| format!("unknown {} unit {unit:?} in {s:?}", self.what))?;
        number
            .checked_mul(*factor)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

macro_rules! string_or_number_deserialize {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
                    Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
string_or_number_deserialize!(ByteSize);
string_or_number_deserialize!(Span);

/// Where blobs are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A local directory under the data directory (the default).
    Filesystem,
    /// An S3 bucket (AWS, MinIO, Garage, …).
    S3,
    /// Process memory: blobs and metadata vanish on exit (throwaway registries).
    Memory,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No access control: anyone may do anything (the default).
    None,
    /// HTTP Basic with an htpasswd file; permissions from the ACL.
    Basic,
    /// Docker token authentication (Bearer JWTs).
    Token,
}

/// The `berth` command line.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "An OCI container registry", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Read every stored blob back and verify its digest, and check that manifests' references
    /// resolve; exit 1 if anything is wrong. Safe while the registry serves.
    Scrub(ScrubArgs),
    /// Run one garbage collection pass: delete blob links and blobs unreferenced for longer
    /// than gc_grace_period (and untagged manifests, with gc_untagged_after), expire idle
    /// uploads, and remove their bytes. Safe while the registry serves.
    Gc(GcArgs),
    /// Show the event outbox: per webhook, the events pending, delivered and dead-lettered,
    /// and the events themselves; `events replay` makes delivered or dead events due again.
    Events(EventsArgs),
    /// Check the configuration: load it exactly as `serve` does (flags over environment over
    /// the config file), refuse contradictions with the same messages, and print the
    /// effective settings with secrets redacted.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; `berth man | man -l -`).
    Man,
}

/// What `berth config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and check the configuration, and print the effective settings.
    Check,
}

/// Options of `berth events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub action: Option<EventsAction>,
    /// Only this webhook's events.
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
    /// Only events in this state: pending, delivered, dead or all.
    #[arg(long, value_name = "STATE", default_value = "pending")]
    pub state: Option<String>,
    /// Only events after this seq.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: i64,
    /// Most events to list.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `berth events` does besides listing.
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Make a webhook's delivered or dead-lettered events with seq FROM..=TO due again (with
    /// their original ids, so receivers can tell them apart from new ones).
    Replay {
        /// The webhook.
        #[arg(long, value_name = "NAME")]
        endpoint: String,
        /// First seq.
        #[arg(long, value_name = "SEQ")]
        from: i64,
        /// Last seq [default: FROM].
        #[arg(long, value_name = "SEQ")]
        to: Option<i64>,
    },
}

/// Options of `berth gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be deleted and freed, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `berth scrub`.
#[derive(Debug, Args)]
pub struct ScrubArgs {
    /// Only this repository's blobs and manifests.
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Read only this percentage of the blobs, picked at random.
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<f64>,
    /// Forget blobs whose bytes are damaged or missing (they answer 404 until pushed again).
    #[arg(long)]
    pub repair: bool,
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty, env = $env:literal, value_name = $vn:literal, )*) => {
        /// Every setting, each optional so that the layers (flags, environment, file) merge.
        #[derive(Debug, Default, Clone, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            /// TOML file with settings (keys as below, in snake_case).
            #[arg(long, env = "BERTH_CONFIG", global = true, value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, global = true, value_name = $vn)]
                pub $field: Option<$ty>,
            )*
            /// `[[upstream]]` entries: registries whose names this one mirrors (config file
            /// only).
            #[arg(skip)]
            #[serde(default, rename = "upstream")]
            pub upstreams: Vec<UpstreamEntry>,
            /// `[[webhook]]` entries: endpoints that receive the registry's events (config
            /// file only).
            #[arg(skip)]
            #[serde(default, rename = "webhook")]
            pub webhooks: Vec<WebhookEntry>,
        }

        impl Settings {
            /// Every setting as TOML, as `berth config check` prints it: `key = value` for the
            /// ones set (by a flag, the environment or the file), secrets redacted; the others
            /// as comments naming their default.
            pub fn effective(&self) -> String {
                let mut out = String::new();
                $(
                    let key = stringify!($field);
                    match &self.$field {
                        Some(value) => {
                            out.push_str(&format!("{key} = {}\n", redacted(&value.as_toml())));
                        }
                        None => {
                            let doc = concat!($($doc, " "),*);
                            out.push_str(&format!("# {key} is not set{}\n", default_note(doc)));
                        }
                    }
                )*
                for upstream in &self.upstreams {
                    out.push_str(&format!(
                        "# [[upstream]] {}: {}\n",
                        upstream.name,
                        redacted(&upstream.url)
                    ));
                }
                for webhook in &self.webhooks {
                    let name = webhook.name.as_deref().unwrap_or("(named by its URL's host)");
                    out.push_str(&format!(
                        "# [[webhook]] {name}: {}{}\n",
                        redacted(&webhook.url),
                        if webhook.headers.is_empty() {
                            String::new()
                        } else {
                            format!(" (headers {}: values not shown)", webhook.headers.keys().cloned().collect::<Vec<_>>().join(", "))
                        }
                    ));
                }
                out
            }

            /// Fills every setting missing here from `lower`.
            fn or(self, lower: Settings) -> Settings {
                Settings {
                    config: self.config.or(lower.config),
                    $( $field: self.$field.or(lower.$field), )*
                    upstreams: if self.upstreams.is_empty() {
                        lower.upstreams
                    } else {
                        self.upstreams
                    },
                    webhooks: if self.webhooks.is_empty() {
                        lower.webhooks
                    } else {
                        self.webhooks
                    },
                }
            }
        }
    };
}

settings! {
    /// Address to listen on [default: 0.0.0.0:5000].
    listen: SocketAddr, env = "BERTH_LISTEN", value_name = "ADDR",
    /// Serve the web UI at /ui/ [default: true].
    ui: bool, env = "BERTH_UI", value_name = "BOOL",
    /// File holding the key (at least 32 bytes) web UI sessions are signed with; give every replica the same [default: a random key per process].
    ui_session_key: PathBuf, env = "BERTH_UI_SESSION_KEY", value_name = "FILE",
    /// PEM certificate chain (server certificate first) to serve HTTPS with; needs tls_key [default: plain HTTP].
    tls_cert: PathBuf, env = "BERTH_TLS_CERT", value_name = "FILE",
    /// PEM private key of tls_cert.
    tls_key: PathBuf, env = "BERTH_TLS_KEY", value_name = "FILE",
    /// PEM CA certificates: with it, only clients presenting a certificate from one of them may connect.
    tls_client_ca: PathBuf, env = "BERTH_TLS_CLIENT_CA", value_name = "FILE",
    /// How often the TLS files are read again; changed files serve new connections [default: 10s].
    tls_reload_interval: Span, env = "BERTH_TLS_RELOAD_INTERVAL", value_name = "DURATION",
    /// Optional second listener for health probes only (keep it off the public network).
    admin_listen: SocketAddr, env = "BERTH_ADMIN_LISTEN", value_name = "ADDR",
    /// Directory for the SQLite database and filesystem blobs [default: ./berth-data].
    data_dir: PathBuf, env = "BERTH_DATA_DIR", value_name = "DIR",
    /// Metadata database: sqlite:PATH or postgres://… [default: sqlite:<data-dir>/berth.db].
    database_url: String, env = "BERTH_DATABASE_URL", value_name = "URL",
    /// Run database migrations on start [default: true].
    migrate_on_start: bool, env = "BERTH_MIGRATE_ON_START", value_name = "BOOL",
    /// Most database connections [default: 16].
    db_max_connections: u32, env = "BERTH_DB_MAX_CONNECTIONS", value_name = "N",
    /// How long a request waits for a database connection before answering 503 [default: 5s].
    db_acquire_timeout: Span, env = "BERTH_DB_ACQUIRE_TIMEOUT", value_name = "DURATION",
    /// How long a database statement waits for a lock held elsewhere before answering 503 [default: 5s].
    db_lock_timeout: Span, env = "BERTH_DB_LOCK_TIMEOUT", value_name = "DURATION",
    /// Blob storage: filesystem, s3 or memory [default: filesystem].
    storage: StorageKind, env = "BERTH_STORAGE", value_name = "KIND",
    /// Filesystem storage: bytes written between syncs and session checkpoints [default: 16MiB].
    fs_part_size: ByteSize, env = "BERTH_FS_PART_SIZE", value_name = "SIZE",
    /// Filesystem storage: write with O_DIRECT where the filesystem supports it [default: true].
    fs_direct_io: bool, env = "BERTH_FS_DIRECT_IO", value_name = "BOOL",
    /// S3 bucket.
    s3_bucket: String, env = "BERTH_S3_BUCKET", value_name = "BUCKET",
    /// S3 region [default: from the AWS environment, else us-east-1].
    s3_region: String, env = "BERTH_S3_REGION", value_name = "REGION",
    /// S3 endpoint URL, for MinIO, Garage and other S3-compatible stores.
    s3_endpoint: String, env = "BERTH_S3_ENDPOINT", value_name = "URL",
    /// Endpoint to presign blob URLs for, when clients reach S3 at another address.
    s3_public_endpoint: String, env = "BERTH_S3_PUBLIC_ENDPOINT", value_name = "URL",
    /// Use path-style S3 URLs (MinIO, Garage) [default: false].
    s3_force_path_style: bool, env = "BERTH_S3_FORCE_PATH_STYLE", value_name = "BOOL",
    /// Key prefix for every object Berth writes [default: none].
    s3_prefix: String, env = "BERTH_S3_PREFIX", value_name = "PREFIX",
    /// S3 multipart part size, 5MiB to 5GiB [default: 16MiB].
    s3_part_size: ByteSize, env = "BERTH_S3_PART_SIZE", value_name = "SIZE",
    /// Parts one upload sends to S3 concurrently [default: 4].
    s3_upload_concurrency: usize, env = "BERTH_S3_UPLOAD_CONCURRENCY", value_name = "N",
    /// Lifetime of presigned blob URLs [default: 5m].
    s3_presign_expiry: Span, env = "BERTH_S3_PRESIGN_EXPIRY", value_name = "DURATION",
    /// Longest wait to connect to S3 [default: 3s].
    s3_connect_timeout: Span, env = "BERTH_S3_CONNECT_TIMEOUT", value_name = "DURATION",
    /// Longest one S3 request may take, body included, before it counts as unavailable [default: 60s].
    s3_timeout: Span, env = "BERTH_S3_TIMEOUT", value_name = "DURATION",
    /// Longest a database statement may run before it is cancelled (Postgres) [default: 30s].
    db_statement_timeout: Span, env = "BERTH_DB_STATEMENT_TIMEOUT", value_name = "DURATION",
    /// After SIGTERM, how long to keep serving while readiness already fails, so that load balancers stop sending first [default: 0s].
    shutdown_delay: Span, env = "BERTH_SHUTDOWN_DELAY", value_name = "DURATION",
    /// Redirect blob downloads to the storage's presigned URLs [default: true].
    redirect: bool, env = "BERTH_REDIRECT", value_name = "BOOL",
    /// Part buffers shared by all uploads: the upload memory budget [default: 8].
    upload_buffers: usize, env = "BERTH_UPLOAD_BUFFERS", value_name = "N",
    /// Uploads are refused (507) when they would leave less free on local disk (blob directory, SQLite database); 0 turns it off [default: 512MiB].
    min_free_space: ByteSize, env = "BERTH_MIN_FREE_SPACE", value_name = "SIZE",
    /// Longest an upload waits for a free part buffer before it is answered 503 [default: 30s].
    upload_buffer_wait: Span, env = "BERTH_UPLOAD_BUFFER_WAIT", value_name = "DURATION",
    /// Request bodies slower than this many bytes per second (over body_rate_window) are ended; 0 turns it off [default: 500].
    body_min_rate: ByteSize, env = "BERTH_BODY_MIN_RATE", value_name = "SIZE",
    /// Window of waiting for the client over which body_min_rate is measured [default: 20s].
    body_rate_window: Span, env = "BERTH_BODY_RATE_WINDOW", value_name = "DURATION",
    /// A request head must arrive complete within this time of a connection's start or first byte [default: 20s].
    http_header_timeout: Span, env = "BERTH_HTTP_HEADER_TIMEOUT", value_name = "DURATION",
    /// Keep-alive connections with no request for this long are closed [default: 90s].
    http_idle_timeout: Span, env = "BERTH_HTTP_IDLE_TIMEOUT", value_name = "DURATION",
    /// Most client connections open at once; more wait in the listen backlog, 0 for no cap [default: 4096].
    max_connections: usize, env = "BERTH_MAX_CONNECTIONS", value_name = "N",
    /// Idle upload sessions expire after this long [default: 24h].
    upload_ttl: Span, env = "BERTH_UPLOAD_TTL", value_name = "DURATION",
    /// How often expired uploads and orphaned storage are cleaned up [default: 5m].
    maintenance_interval: Span, env = "BERTH_MAINTENANCE_INTERVAL", value_name = "DURATION",
    /// Garbage collection deletes blob links and blobs only after they have been unreferenced this long, so that pushes about to reference them can [default: 24h].
    gc_grace_period: Span, env = "BERTH_GC_GRACE_PERIOD", value_name = "DURATION",
    /// How often each process runs a garbage collection pass; 0 turns the background worker off [default: 10m].
    gc_interval: Span, env = "BERTH_GC_INTERVAL", value_name = "DURATION",
    /// Garbage collection also deletes manifests this old that no tag, index or subject keeps [default: off].
    gc_untagged_after: Span, env = "BERTH_GC_UNTAGGED_AFTER", value_name = "DURATION",
    /// Comma-separated REPOSITORY-GLOB:TAG-GLOB patterns of tags that cannot be moved or deleted once set, e.g. release/**:v* [default: none].
    immutable_tags: String, env = "BERTH_IMMUTABLE_TAGS", value_name = "PATTERNS",
    /// OCI-Chunk-Min-Length advertised to clients [default: 5MiB].
    chunk_min_length: ByteSize, env = "BERTH_CHUNK_MIN_LENGTH", value_name = "SIZE",
    /// Largest manifest accepted [default: 4MiB].
    max_manifest_size: ByteSize, env = "BERTH_MAX_MANIFEST_SIZE", value_name = "SIZE",
    /// Serve the referrers API [default: true].
    referrers_api: bool, env = "BERTH_REFERRERS_API", value_name = "BOOL",
    /// Accept single-request uploads (POST ?digest=) [default: true].
    single_request_uploads: bool, env = "BERTH_SINGLE_REQUEST_UPLOADS", value_name = "BOOL",
    /// Accept manifests whose blobs or child manifests are not in the repository, as mirrors of one platform need [default: false].
    sparse_manifests: bool, env = "BERTH_SPARSE_MANIFESTS", value_name = "BOOL",
    /// Refuse tag and catalog pages with n above this [default: no limit].
    max_page_size: u32, env = "BERTH_MAX_PAGE_SIZE", value_name = "N",
    /// How long a mirror's claim on fetching a blob lasts unless renewed (others take over a dead fetcher's after it) [default: 30s].
    mirror_fetch_lease: Span, env = "BERTH_MIRROR_FETCH_LEASE", value_name = "DURATION",
    /// The URL other replicas reach this one at (http://POD_IP:5000): pulls on them follow this replica's upstream fetches through it instead of waiting for the blobs to be stored [default: none].
    advertise_url: String, env = "BERTH_ADVERTISE_URL", value_name = "URL",
    /// The URL clients reach the registry at (https://registry.example.com): event payloads name it as their source and in object URLs [default: none].
    public_url: String, env = "BERTH_PUBLIC_URL", value_name = "URL",
    /// How often each replica looks for events due to each webhook [default: 250ms].
    event_poll_interval: Span, env = "BERTH_EVENT_POLL_INTERVAL", value_name = "DURATION",
    /// How long a replica's claim on delivering to a webhook lasts unless renewed (another takes over a dead replica's after it); at least three times the longest webhook timeout [default: 30s].
    event_lease: Span, env = "BERTH_EVENT_LEASE", value_name = "DURATION",
    /// Longest wait between two attempts of an event a webhook failed (the wait doubles from 1s up to it) [default: 5m].
    event_retry_max: Span, env = "BERTH_EVENT_RETRY_MAX", value_name = "DURATION",
    /// How long delivered events are kept for `berth events` and replays [default: 24h].
    event_retention: Span, env = "BERTH_EVENT_RETENTION", value_name = "DURATION",
    /// How long dead-lettered events are kept [default: 14d].
    event_dead_letter_retention: Span, env = "BERTH_EVENT_DEAD_LETTER_RETENTION", value_name = "DURATION",
    /// Send Docker-Content-Digest on manifest GETs by tag [default: true].
    tag_digest_header: bool, env = "BERTH_TAG_DIGEST_HEADER", value_name = "BOOL",
    /// Send Link headers for further pages [default: true].
    link_headers: bool, env = "BERTH_LINK_HEADERS", value_name = "BOOL",
    /// Access control: none, basic (htpasswd) or token (Docker token auth) [default: none].
    auth: AuthMode, env = "BERTH_AUTH", value_name = "MODE",
    /// htpasswd file of users with bcrypt hashes (auth = basic, and the token issuer).
    auth_htpasswd: PathBuf, env = "BERTH_AUTH_HTPASSWD", value_name = "FILE",
    /// ACL file ([[rule]] entries); without one, signed-in users may do everything.
    auth_acl: PathBuf, env = "BERTH_AUTH_ACL", value_name = "FILE",
    /// Basic realm name, or the token realm URL [default: berth, or <this host>/token with the built-in issuer].
    auth_realm: String, env = "BERTH_AUTH_REALM", value_name = "REALM",
    /// Service name tokens are for (the aud claim) [default: berth].
    auth_service: String, env = "BERTH_AUTH_SERVICE", value_name = "NAME",
    /// Token issuer name (the iss claim) trusted and used by the built-in issuer [default: berth].
    auth_token_issuer: String, env = "BERTH_AUTH_TOKEN_ISSUER", value_name = "NAME",
    /// PEM private key of the built-in token issuer (serves /token); its tokens are trusted.
    auth_token_key: PathBuf, env = "BERTH_AUTH_TOKEN_KEY", value_name = "FILE",
    /// PEM public keys or certificates of an external token service to trust.
    auth_token_public_keys: PathBuf, env = "BERTH_AUTH_TOKEN_PUBLIC_KEYS", value_name = "FILE",
    /// JWKS file of an external token service to trust.
    auth_token_jwks: PathBuf, env = "BERTH_AUTH_TOKEN_JWKS", value_name = "FILE",
    /// Lifetime of tokens the built-in issuer signs, at least 60s [default: 5m].
    auth_token_lifetime: Span, env = "BERTH_AUTH_TOKEN_LIFETIME", value_name = "DURATION",
    /// Lifetime of refresh tokens (docker login's identity tokens) [default: 30d].
    auth_refresh_token_lifetime: Span, env = "BERTH_AUTH_REFRESH_TOKEN_LIFETIME", value_name = "DURATION",
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 30s].
    shutdown_timeout: Span, env = "BERTH_SHUTDOWN_TIMEOUT", value_name = "DURATION",
    /// Log filter, e.g. info or berth=debug,sqlx=warn [default: info].
    log: String, env = "BERTH_LOG", value_name = "FILTER",
    /// Log lines as text (for people) or json (one object per line, for collectors) [default: text].
    log_format: LogFormat, env = "BERTH_LOG_FORMAT", value_name = "FORMAT",
    /// Comma-separated addresses or networks (CIDR) of load balancers whose X-Forwarded-For and X-Request-Id are believed [default: none].
    trusted_proxies: String, env = "BERTH_TRUSTED_PROXIES", value_name = "NETWORKS",
}

/// One `[[upstream]]` of the config file: a registry whose names are read through to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// A short name, for logs, metrics, errors and containerd's `ns`.
    pub name: String,
    /// Its base URL (`https://registry-1.docker.io`).
    pub url: String,
    /// The local namespace mapped to it (`dockerhub` maps `dockerhub/library/alpine`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Whether names under no upstream's prefix map to it (Docker's `registry-mirrors`).
    #[serde(default)]
    pub default: bool,
    /// User name for Basic authentication and the token flow.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password or access token (one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password or access token.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM CA certificates trusted for it besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a tag is served before it is checked again [default: 5m].
    #[serde(default)]
    pub tag_ttl: Option<Span>,
    /// Longest wait to connect [default: 5s].
    #[serde(default)]
    pub connect_timeout: Option<Span>,
    /// Longest wait for an answer, and between two chunks of a body [default: 60s].
    #[serde(default)]
    pub timeout: Option<Span>,
    /// Accept pushes and deletes into the names mapped to it [default: false].
    #[serde(default)]
    pub allow_push: bool,
    /// Manifests kept from it that nobody pulled for this long are removed by the garbage
    /// collector, and their blobs after the grace period [default: kept forever].
    #[serde(default)]
    pub evict_after: Option<Span>,
}

impl UpstreamEntry {
    fn resolve(&self) -> anyhow::Result<UpstreamSettings> {
        let who = &self.name;
        let password = match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => {
                bail!("upstream {who}: set password_file or password_env, not both")
            }
            (Some(file), None) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| {
                        format!("upstream {who}: reading password_file {}", file.display())
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, Some(var)) => Some(std::env::var(var).with_context(|| {
                format!("upstream {who}: password_env names {var}, which is not set")
            })?),
            (None, None) => None,
        };
        let credentials = match (&self.username, password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password,
            }),
            (None, None) => None,
            (Some(_), None) => bail!(
                "upstream {who}: username is set without a password: set password_file or password_env"
            ),
            (None, Some(_)) => bail!("upstream {who}: a password is set without a username"),
        };
        Ok(UpstreamSettings {
            name: self.name.clone(),
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            default: self.default,
            credentials,
            ca_file: self.ca_file.clone(),
            tag_ttl: self.tag_ttl.map_or(Duration::from_secs(300), |s| s.0),
            connect_timeout: self
                .connect_timeout
                .map_or(Duration::from_secs(5), |s| s.0)
                .max(Duration::from_millis(10)),
            timeout: self
                .timeout
                .map_or(Duration::from_secs(60), |s| s.0)
                .max(Duration::from_millis(100)),
            allow_push: self.allow_push,
            evict_after: self.evict_after.map(|s| s.0),
        })
    }
}

/// The body format of a webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// CloudEvents 1.0, structured mode (a batch when batch_size > 1).
    #[default]
    CloudEvents,
    /// CNCF Distribution's notification envelope.
    Distribution,
}

/// One `[[webhook]]` of the config file: an endpoint that receives the registry's events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// A short name, for the outbox, metrics and `berth events` [default: the URL's host].
    pub name: Option<String>,
    /// Where events are POSTed.
    pub url: String,
    /// `cloudevents` or `distribution`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// A file holding the key of the HMAC-SHA256 signature sent in X-Berth-Signature-256.
    pub secret_file: Option<PathBuf>,
    /// Repository globs whose events it gets [default: all].
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Actions it gets: push, delete, tag_delete, blob_delete, repository_create, and pull
    /// (manifest GETs; a write per pull, so only where named) [default: all but pull].
    #[serde(default)]
    pub actions: Vec<String>,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// How long one request may take [default: 10s].
    pub timeout: Option<Span>,
    /// Attempts after which an event is dead-lettered [default: 25].
    pub max_attempts: Option<u32>,
    /// Age after which a failing event is dead-lettered [default: 24h].
    pub max_age: Option<Span>,
    /// Most requests in flight at once, each for another repository [default: 4].
    pub max_in_flight: Option<usize>,
    /// Most events a request [default: 1 for cloudevents, 50 for distribution].
    pub batch_size: Option<usize>,
}

/// A webhook, checked, with its secret read.
// A build without event delivery only checks webhooks, to refuse them.
#[cfg_attr(not(feature = "events"), allow(dead_code))]
#[derive(Clone)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub format: WebhookFormat,
    pub secret: Option<Vec<u8>>,
    pub repositories: Vec<String>,
    pub actions: Vec<EventAction>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub max_in_flight: usize,
    pub batch_size: usize,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("repositories", &self.repositories)
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}

impl WebhookEntry {
    fn resolve(&self) -> anyhow::Result<Webhook> {
        let host = self
            .url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .filter(|host| !host.is_empty());
        let Some(host) = host else {
            bail!(
                "webhook url must be http://HOST/… or https://HOST/…, got {:?}",
                self.url
            );
        };
        let name = self.name.clone().unwrap_or_else(|| host.to_owned());
        let who = format!("webhook {name:?}");
        if name.is_empty() || name.len() > 128 {
            bail!("{who}: name must be 1 to 128 characters");
        }
        let secret = match &self.secret_file {
            None => None,
            Some(file) => {
                let text = std::fs::read(file)
                    .with_context(|| format!("{who}: reading secret_file {}", file.display()))?;
                let secret = text.trim_ascii_end().to_vec();
                if secret.is_empty() {
                    bail!("{who}: secret_file {} is empty", file.display());
                }
                Some(secret)
            }
        };
        let actions = self
            .actions
            .iter()
            .map(|a| {
                EventAction::parse(a).with_context(|| {
                    format!(
                        "{who}: unknown action {a:?}; use push, delete, tag_delete, blob_delete, repository_create or pull"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (header, value) in &self.headers {
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .with_context(|| format!("{who}: {header:?} is not a header name"))?;
            if ["content-type", "content-length", "host"].contains(&name.as_str())
                || name.as_str().starts_with("x-berth-")
            {
                bail!("{who}: header {header} is set by Berth itself and cannot be configured");
            }
            http::HeaderValue::from_str(value)
                .with_context(|| format!("{who}: the value of header {header} is not valid"))?;
        }
        let max_in_flight = self.max_in_flight.unwrap_or(4);
        if !(1..=64).contains(&max_in_flight) {
            bail!("{who}: max_in_flight must be between 1 and 64, got {max_in_flight}");
        }
        let batch_size = self.batch_size.unwrap_or(match self.format {
            WebhookFormat::CloudEvents => 1,
            WebhookFormat::Distribution => 50,
        });
        if !(1..=1000).contains(&batch_size) {
            bail!("{who}: batch_size must be between 1 and 1000, got {batch_size}");
        }
        let max_attempts = self.max_attempts.unwrap_or(25);
        if max_attempts == 0 {
            bail!("{who}: max_attempts must be at least 1");
        }
        Ok(Webhook {
            name,
            url: self.url.clone(),
            format: self.format,
            secret,
            repositories: self.repositories.clone(),
            actions,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: self
                .timeout
                .map_or(Duration::from_secs(10), |s| s.0)
                .max(Duration::from_millis(10)),
            max_attempts,
            max_age: self.max_age.map_or(Duration::from_secs(24 * 3600), |s| s.0),
            max_in_flight,
            batch_size,
        })
    }
}

/// Where the registry's events go, and how they are kept.
#[cfg_attr(not(feature = "events"), allow(dead_code))]
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub webhooks: Vec<Webhook>,
    pub public_url: Option<String>,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub retry_max: Duration,
    pub retention: Duration,
    pub dead_letter_retention: Duration,
}

impl EventSettings {
    /// Which changes write outbox rows, for which webhook.
    pub fn subscriptions(&self) -> Subscriptions {
        Subscriptions(
            self.webhooks
                .iter()
                .map(|w| Subscription {
                    endpoint: w.name.clone(),
                    repositories: w.repositories.clone(),
                    actions: w.actions.clone(),
                })
                .collect(),
        )
    }
}

/// Resolved settings of a `berth` process.
// Builds without some backends leave their settings unread.
#[cfg_attr(
    not(all(feature = "sqlite", feature = "postgres", feature = "s3")),
    allow(dead_code)
)]
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The web UI.
    pub ui: UiSettings,
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS on `listen`, when configured.
    pub tls: Option<TlsSettings>,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub migrate_on_start: bool,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    pub db_lock_timeout: Duration,
    pub db_statement_timeout: Duration,
    pub storage: StorageKind,
    pub fs_part_size: usize,
    pub fs_direct_io: bool,
    pub s3: S3Settings,
    /// The registry's behaviour switches; unset settings keep the library's defaults.
    pub registry: RegistryOptions,
    /// How the API presents it (headers, redirects, body rates, trusted proxies).
    pub http: HttpOptions,
    pub shutdown_timeout: Duration,
    pub shutdown_delay: Duration,
    pub http_header_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub max_connections: usize,
    pub auth: AuthSettings,
    /// Upstream registries read through (none: no mirror).
    pub upstreams: Upstreams,
    pub events: EventSettings,
    pub log: String,
    pub log_format: LogFormat,
}

/// The web UI as configured.
#[cfg_attr(not(feature = "ui"), allow(dead_code))]
#[derive(Debug, Clone)]
pub struct UiSettings {
    pub enabled: bool,
    pub session_key: Option<PathBuf>,
}

/// HTTPS as configured.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub reload_interval: Duration,
}

/// Access control as configured.
#[cfg_attr(not(feature = "auth"), allow(dead_code))]
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub htpasswd: Option<PathBuf>,
    pub acl: Option<PathBuf>,
    pub realm: Option<String>,
    pub service: String,
    pub issuer: String,
    pub token_key: Option<PathBuf>,
    pub public_keys: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
}

/// S3 settings as configured.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub public_endpoint: Option<String>,
    pub force_path_style: bool,
    pub prefix: String,
    pub part_size: u64,
    pub upload_concurrency: usize,
    pub presign_expiry: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// A setting's value as TOML (for `berth config check`).
trait AsToml {
    fn as_toml(&self) -> String;
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

impl AsToml for String {
    fn as_toml(&self) -> String {
        toml_string(self)
    }
}

impl AsToml for PathBuf {
    fn as_toml(&self) -> String {
        toml_string(&self.display().to_string())
    }
}

impl AsToml for SocketAddr {
    fn as_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

macro_rules! plain_as_toml {
    ($($ty:ty),*) => {$(
        impl AsToml for $ty {
            fn as_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
plain_as_toml!(bool, u32, usize);

macro_rules! choice_as_toml {
    ($($ty:ty),*) => {$(
        impl AsToml for $ty {
            fn as_toml(&self) -> String {
                toml_string(self.to_possible_value().as_ref().map_or("", |v| v.get_name()))
            }
        }
    )*};
}
choice_as_toml!(StorageKind, LogFormat, AuthMode);

impl AsToml for Span {
    fn as_toml(&self) -> String {
        let ms = self.0.as_millis();
        let text = SPAN_UNITS
            .iter()
            .rev()
            .map(|(names, unit)| (names[0], u128::from(*unit)))
            .find(|(_, unit)| ms.is_multiple_of(*unit) && ms >= *unit)
            .map_or_else(
                || format!("{ms}ms"),
                |(name, unit)| {
                    let name = if name.is_empty() { "s" } else { name };
                    format!("{}{name}", ms / unit)
                },
            );
        toml_string(&text)
    }
}

impl AsToml for ByteSize {
    fn as_toml(&self) -> String {
        let binary = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        match binary
            .iter()
            .find(|(unit, _)| self.0 >= *unit && self.0.is_multiple_of(*unit))
        {
            Some((unit, name)) => toml_string(&format!("{}{name}", self.0 / unit)),
            None => self.0.to_string(),
        }
    }
}

/// `text` with the password of any URL in it (`scheme://user:password@host`) replaced.
fn redacted(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#', '"']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return text.to_owned();
    };
    format!(
        "{}{}:REDACTED{}",
        &text[..authority_start],
        &userinfo[..colon],
        &text[authority_start + at..]
    )
}

/// `" (default: X)"` from a setting's documentation ending in `[default: X]`, else nothing.
fn default_note(doc: &str) -> String {
    doc.rsplit_once("[default: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(default, _)| format!(" (default: {default})"))
        .unwrap_or_default()
}

const MIB: u64 = 1 << 20;

impl Settings {
    /// Settings from the command line and environment, over the TOML file they name.
    pub fn load(self) -> anyhow::Result<Settings> {
        match self.config.clone() {
            Some(path) => Ok(self.or(Self::from_file(&path)?)),
            None => Ok(self),
        }
    }

    fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Applies defaults and checks the settings fit together.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let storage = self.storage.unwrap_or(StorageKind::Filesystem);
        let s3_part_size = self.s3_part_size.map_or(16 * MIB, |b| b.0);
        if storage == StorageKind::S3 {
            if self.s3_bucket.as_deref().unwrap_or("").is_empty() {
                bail!("storage = s3 needs a bucket: set BERTH_S3_BUCKET or --s3-bucket");
            }
            if !(5 * MIB..=5 * 1024 * MIB).contains(&s3_part_size) {
                bail!(
                    "s3_part_size must be between 5MiB and 5GiB (S3's part limits), got {s3_part_size} bytes"
                );
            }
        }
        if storage == StorageKind::Memory
            && self.database_url.as_deref().is_some_and(|u| !u.is_empty())
        {
            bail!(
                "storage = memory keeps metadata in memory too; unset database_url or choose filesystem or s3 storage"
            );
        }
        let advertise_url = advertise_url(self.advertise_url.as_deref())?;
        let auth = self.auth_settings()?;
        let tls = self.tls_settings()?;
        let upstreams = Upstreams::new(
            self.upstreams
                .iter()
                .map(UpstreamEntry::resolve)
                .collect::<anyhow::Result<_>>()?,
        )?;
        let events = self.event_settings()?;
        let fs_part_size = self.fs_part_size.map_or(16 * MIB, |b| b.0);
        if !(64 * 1024..=1024 * MIB).contains(&fs_part_size) {
            bail!("fs_part_size must be between 64KiB and 1GiB, got {fs_part_size} bytes");
        }
        let defaults = RegistryOptions::default();
        let serve_defaults = ServeOptions::default();
        let db_defaults = SqlOptions::default();
        let upload_buffers = self.upload_buffers.unwrap_or(defaults.upload_buffers);
        if upload_buffers == 0 {
            bail!("upload_buffers must be at least 1");
        }
        let registry = RegistryOptions {
            upload_ttl: self.upload_ttl.map_or(defaults.upload_ttl, |s| s.0),
            maintenance_interval: self
                .maintenance_interval
                .map_or(defaults.maintenance_interval, |s| s.0)
                .max(Duration::from_millis(100)),
            gc_grace_period: self
                .gc_grace_period
                .map_or(defaults.gc_grace_period, |s| s.0),
            gc_interval: self.gc_interval.map_or(defaults.gc_interval, |s| s.0),
            gc_untagged_after: self.gc_untagged_after.map(|s| s.0),
            immutable_tags: ImmutableTags::parse(
                self.immutable_tags.as_deref().unwrap_or("").split(','),
            )
            .map_err(anyhow::Error::msg)
            .context("immutable_tags")?,
            upload_buffers,
            min_free_space: self.min_free_space.map_or(defaults.min_free_space, |b| b.0),
            upload_buffer_wait: self
                .upload_buffer_wait
                .map_or(defaults.upload_buffer_wait, |s| s.0)
                .max(Duration::from_millis(1)),
            max_manifest_size: self
                .max_manifest_size
                .map_or(defaults.max_manifest_size, |b| {
                    usize::try_from(b.0).unwrap_or(usize::MAX)
                }),
            referrers_api: self.referrers_api.unwrap_or(defaults.referrers_api),
            single_request_uploads: self
                .single_request_uploads
                .unwrap_or(defaults.single_request_uploads),
            sparse_manifests: self.sparse_manifests.unwrap_or(defaults.sparse_manifests),
            max_page_size: self.max_page_size,
            mirror_fetch_lease: self
                .mirror_fetch_lease
                .map_or(defaults.mirror_fetch_lease, |s| s.0)
                .max(Duration::from_secs(1)),
            advertise_url,
        };
        let http_defaults = HttpOptions::default();
        let http = HttpOptions {
            body_min_rate: self
                .body_min_rate
                .map_or(http_defaults.body_min_rate, |b| b.0),
            body_rate_window: self
                .body_rate_window
                .map_or(http_defaults.body_rate_window, |s| s.0)
                .max(Duration::from_millis(100)),
            chunk_min_length: self
                .chunk_min_length
                .map_or(http_defaults.chunk_min_length, |b| b.0),
            tag_digest_header: self
                .tag_digest_header
                .unwrap_or(http_defaults.tag_digest_header),
            link_headers: self.link_headers.unwrap_or(http_defaults.link_headers),
            redirect_blobs: self.redirect.unwrap_or(http_defaults.redirect_blobs),
            trusted_proxies: TrustedProxies::parse(self.trusted_proxies.as_deref().unwrap_or(""))
                .context("trusted_proxies")?,
            ..http_defaults
        };
        Ok(Config {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 5000))),
            ui: UiSettings {
                enabled: self.ui.unwrap_or(true),
                session_key: self.ui_session_key,
            },
            admin_listen: self.admin_listen,
            tls,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("berth-data")),
            database_url: self.database_url.filter(|s| !s.is_empty()),
            migrate_on_start: self.migrate_on_start.unwrap_or(true),
            db_max_connections: self
                .db_max_connections
                .unwrap_or(db_defaults.max_connections),
            db_acquire_timeout: self
                .db_acquire_timeout
                .map_or(db_defaults.acquire_timeout, |s| s.0),
            db_lock_timeout: self
                .db_lock_timeout
                .map_or(db_defaults.lock_timeout, |s| s.0)
                .max(Duration::from_millis(10)),
            db_statement_timeout: self
                .db_statement_timeout
                .map_or(db_defaults.statement_timeout, |s| s.0)
                .max(Duration::from_millis(100)),
            storage,
            fs_part_size: fs_part_size as usize,
            fs_direct_io: self.fs_direct_io.unwrap_or(true),
            s3: S3Settings {
                bucket: self.s3_bucket,
                region: self.s3_region.filter(|s| !s.is_empty()),
                endpoint: self.s3_endpoint.filter(|s| !s.is_empty()),
                public_endpoint: self.s3_public_endpoint.filter(|s| !s.is_empty()),
                force_path_style: self.s3_force_path_style.unwrap_or(false),
                prefix: self.s3_prefix.unwrap_or_default(),
                part_size: s3_part_size,
                upload_concurrency: self.s3_upload_concurrency.unwrap_or(4).max(1),
                presign_expiry: self
                    .s3_presign_expiry
                    .map_or(Duration::from_secs(300), |s| s.0),
                connect_timeout: self
                    .s3_connect_timeout
                    .map_or(Duration::from_secs(3), |s| s.0)
                    .max(Duration::from_millis(10)),
                timeout: self
                    .s3_timeout
                    .map_or(Duration::from_secs(60), |s| s.0)
                    .max(Duration::from_millis(100)),
            },
            registry,
            http,
            shutdown_timeout: self
                .shutdown_timeout
                .map_or(Duration::from_secs(30), |s| s.0),
            shutdown_delay: self.shutdown_delay.map_or(Duration::ZERO, |s| s.0),
            http_header_timeout: self
                .http_header_timeout
                .map_or(serve_defaults.header_timeout, |s| s.0)
                .max(Duration::from_millis(100)),
            http_idle_timeout: self
                .http_idle_timeout
                .map_or(serve_defaults.idle_timeout, |s| s.0)
                .max(Duration::from_millis(100)),
            max_connections: self
                .max_connections
                .unwrap_or(serve_defaults.max_connections),
            auth,
            upstreams,
            events,
            log: self.log.unwrap_or_else(|| "info".to_owned()),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
        })
    }
}

impl Settings {
    fn event_settings(&self) -> anyhow::Result<EventSettings> {
        let webhooks = self
            .webhooks
            .iter()
            .map(WebhookEntry::resolve)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut names = std::collections::BTreeSet::new();
        for webhook in &webhooks {
            if !names.insert(webhook.name.as_str()) {
                bail!(
                    "two webhooks are named {:?}: give each a name of its own",
                    webhook.name
                );
            }
        }
        let public_url = match self.public_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                Some(url.trim_end_matches('/').to_owned())
            }
            Some(url) => bail!("public_url must start with https:// or http://, got {url:?}"),
        };
        Ok(EventSettings {
            webhooks,
            public_url,
            poll_interval: self
                .event_poll_interval
                .map_or(Duration::from_millis(250), |s| s.0)
                .max(Duration::from_millis(10)),
            lease: self
                .event_lease
                .map_or(Duration::from_secs(30), |s| s.0)
                .max(Duration::from_secs(1)),
            retry_max: self
                .event_retry_max
                .map_or(Duration::from_secs(300), |s| s.0)
                .max(Duration::from_secs(1)),
            retention: self
                .event_retention
                .map_or(Duration::from_secs(24 * 3600), |s| s.0),
            dead_letter_retention: self
                .event_dead_letter_retention
                .map_or(Duration::from_secs(14 * 24 * 3600), |s| s.0),
        })
    }

    fn tls_settings(&self) -> anyhow::Result<Option<TlsSettings>> {
        let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let (cert, key, client_ca) = (
            set(&self.tls_cert),
            set(&self.tls_key),
            set(&self.tls_client_ca),
        );
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if client_ca.is_some() => bail!(
                "tls_client_ca is set but Berth serves plain HTTP; set tls_cert and tls_key (BERTH_TLS_CERT, BERTH_TLS_KEY) to serve HTTPS"
            ),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                bail!(
                    "tls_cert is set without tls_key: set BERTH_TLS_KEY to the certificate's private key"
                )
            }
            (None, Some(_)) => {
                bail!(
                    "tls_key is set without tls_cert: set BERTH_TLS_CERT to the certificate chain"
                )
            }
        };
        Ok(Some(TlsSettings {
            cert,
            key,
            client_ca,
            reload_interval: self
                .tls_reload_interval
                .map_or(Duration::from_secs(10), |s| s.0)
                .max(Duration::from_millis(100)),
        }))
    }

    fn auth_settings(&self) -> anyhow::Result<AuthSettings> {
        let mode = self.auth.unwrap_or(AuthMode::None);
        let given = |name: &str, set: bool| set.then(|| name.to_owned());
        let token_only: Vec<String> = [
            given("auth_token_key", self.auth_token_key.is_some()),
            given(
                "auth_token_public_keys",
                self.auth_token_public_keys.is_some(),
            ),
            given("auth_token_jwks", self.auth_token_jwks.is_some()),
        ]
        .into_iter()
        .flatten()
        .collect();
        match mode {
            AuthMode::None => {
                let mut set = token_only.clone();
                set.extend(given("auth_htpasswd", self.auth_htpasswd.is_some()));
                set.extend(given("auth_acl", self.auth_acl.is_some()));
                if !set.is_empty() {
                    bail!(
                        "{} {} set but auth = none; set auth = basic or token (BERTH_AUTH) to use {}",
                        set.join(", "),
                        if set.len() == 1 { "is" } else { "are" },
                        if set.len() == 1 { "it" } else { "them" }
                    );
                }
            }
            AuthMode::Basic => {
                if self.auth_htpasswd.is_none() {
                    bail!(
                        "auth = basic needs an htpasswd file: set auth_htpasswd (BERTH_AUTH_HTPASSWD)"
                    );
                }
                if !token_only.is_empty() {
                    bail!("{} only apply with auth = token", token_only.join(", "));
                }
            }
            AuthMode::Token => {
                if token_only.is_empty() {
                    bail!(
                        "auth = token needs keys to verify tokens: auth_token_key (a private key: Berth issues tokens at /token),                          or auth_token_public_keys / auth_token_jwks (an external token service)"
                    );
                }
                if self.auth_token_key.is_some() && self.auth_htpasswd.is_none() {
                    bail!(
                        "the built-in token issuer (auth_token_key) needs users: set auth_htpasswd (BERTH_AUTH_HTPASSWD)"
                    );
                }
                if self.auth_token_key.is_none() && self.auth_realm.is_none() {
                    bail!(
                        "with an external token service, set auth_realm (BERTH_AUTH_REALM) to the URL clients get tokens from"
                    );
                }
            }
        }
        let token_lifetime = self
            .auth_token_lifetime
            .map_or(Duration::from_secs(300), |s| s.0);
        if token_lifetime < Duration::from_secs(60) {
            bail!(
                "auth_token_lifetime must be at least 60s: clients expect tokens to live that long"
            );
        }
        Ok(AuthSettings {
            mode,
            htpasswd: self.auth_htpasswd.clone(),
            acl: self.auth_acl.clone(),
            realm: self.auth_realm.clone().filter(|r| !r.is_empty()),
            service: self
                .auth_service
                .clone()
                .unwrap_or_else(|| "berth".to_owned()),
            issuer: self
                .auth_token_issuer
                .clone()
                .unwrap_or_else(|| "berth".to_owned()),
            token_key: self.auth_token_key.clone(),
            public_keys: self.auth_token_public_keys.clone(),
            jwks: self.auth_token_jwks.clone(),
            token_lifetime,
            refresh_token_lifetime: self
                .auth_refresh_token_lifetime
                .map_or(Duration::from_secs(30 * 86_400), |s| s.0),
        })
    }
}

impl Config {
    /// The metadata database URL in effect.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("berth.db").display()),
        }
    }
}

/// The advertised URL, checked: absolute http(s) with a host, no path, query or fragment (the
/// relay path is appended to it); a trailing `/` is dropped. Empty means none.
fn advertise_url(url: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(url) = url
        .map(|u| u.trim_end_matches('/'))
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let split = ["http://", "https://"]
        .iter()
        .find_map(|scheme| Some((*scheme, url.strip_prefix(scheme)?)));
    match split {
        Some((scheme, authority))
            if !authority.is_empty()
                && !authority.contains(['/', '?', '#', ' '])
                && !authority.starts_with(':') =>
        {
            // A bare IPv6 address with a port (`fd00::7:5000`, what `$(POD_IP):PORT` gives
            // on an IPv6 pod) is bracketed, as a URL needs it.
            match authority.rsplit_once(':') {
                Some((host, port))
                    if host.contains(':') && !host.starts_with('[') && !port.is_empty() =>
                {
                    Ok(Some(format!("{scheme}[{host}]:{port}")))
                }
                _ => Ok(Some(url.to_owned())),
            }
        }
        _ => bail!(
            "advertise_url must be http://HOST:PORT or https://HOST:PORT with no path, got {url:?}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_shows_values_as_they_are_written_and_hides_passwords() {
        let span = |ms: u64| Span(Duration::from_millis(ms)).as_toml();
        assert_eq!(span(250), "\"250ms\"");
        assert_eq!(span(90_000), "\"90s\"");
        assert_eq!(span(120_000), "\"2m\"");
        assert_eq!(span(7_200_000), "\"2h\"");
        assert_eq!(span(86_400_000), "\"1d\"");
        assert_eq!(span(0), "\"0ms\"");
        assert_eq!(ByteSize(16 << 20).as_toml(), "\"16MiB\"");
        assert_eq!(ByteSize(1000).as_toml(), "1000");
        assert_eq!(
            redacted("postgres://berth:pw@db/x?sslmode=require"),
            "postgres://berth:REDACTED@db/x?sslmode=require"
        );
        assert_eq!(
            redacted("\"https://u:p:q@h/a@b\""),
            "\"https://u:REDACTED@h/a@b\""
        );
        assert_eq!(redacted("https://user@host/"), "https://user@host/");
        assert_eq!(redacted("sqlite:/data/berth.db"), "sqlite:/data/berth.db");
        assert_eq!(default_note("Most [default: 16]."), " (default: 16)");
        assert_eq!(default_note("No default."), "");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!("16MiB".parse::<ByteSize>().unwrap().0, 16 << 20);
        assert_eq!("5MB".parse::<ByteSize>().unwrap().0, 5_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert!("5 parsecs".parse::<ByteSize>().is_err());
        assert_eq!("24h".parse::<Span>().unwrap().0, Duration::from_secs(86400));
        assert_eq!(
            "250ms".parse::<Span>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("30".parse::<Span>().unwrap().0, Duration::from_secs(30));
        assert!("soon".parse::<Span>().is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:7000\"\nupload_ttl = \"2h\"\ns3_part_size = 8388608\nreferrers_api = false\n",
        )
        .unwrap();
        let cli = Settings {
            listen: Some("127.0.0.1:8000".parse().unwrap()),
            ..Default::default()
        };
        let config = cli.or(file).resolve().unwrap();
        assert_eq!(config.listen.port(), 8000);
        assert_eq!(config.registry.upload_ttl, Duration::from_secs(7200));
        assert_eq!(config.s3.part_size, 8 << 20);
        assert!(!config.registry.referrers_api);
    }

    #[test]
    fn upstreams_come_from_the_file_with_their_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("token");
        std::fs::write(&password, "s3cret\n").unwrap();
        let file: Settings = toml::from_str(&format!(
            r#"
[[upstream]]
name = "dockerhub"
url = "https://registry-1.docker.io"
prefix = "dockerhub"
default = true
username = "me"
password_file = "{}"
tag_ttl = "10m"
evict_after = "7d"

[[upstream]]
name = "internal"
url = "http://10.0.0.5:5000"
prefix = "internal"
allow_push = true
"#,
            password.display()
        ))
        .unwrap();
        let config = Settings::default().or(file).resolve().unwrap();
        let upstreams: Vec<_> = config.upstreams.iter().collect();
        assert_eq!(upstreams.len(), 2);
        let hub = upstreams[0];
        let credentials = hub.credentials.as_ref().unwrap();
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("me", "s3cret")
        );
        assert_eq!(hub.tag_ttl, Duration::from_secs(600));
        assert_eq!(hub.evict_after, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(
            upstreams[1].evict_after, None,
            "kept forever unless configured"
        );
        assert!(hub.default && !hub.allow_push);
        assert!(upstreams[1].allow_push && upstreams[1].credentials.is_none());
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the password is not printed"
        );
    }

    #[test]
    fn contradictory_upstreams_are_refused() {
        let refusal = |toml: &str| {
            let file: Settings = toml::from_str(toml).unwrap();
            format!("{:#}", Settings::default().or(file).resolve().unwrap_err())
        };
        let message = refusal(
            "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\nprefix = \"a\"\nusername = \"me\"\n",
        );
        assert!(message.contains("without a password"), "{message}");
        let message = refusal(
            "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\ndefault = true\n\
             [[upstream]]\nname = \"b\"\nurl = \"https://b.example\"\ndefault = true\n",
        );
        assert!(message.contains("both the default"), "{message}");
        let message = refusal(
            "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\nprefix = \"a\"\n\
             password_env = \"BERTH_TEST_UNSET_VARIABLE\"\nusername = \"me\"\n",
        );
        assert!(message.contains("not set"), "{message}");
        assert!(
            toml::from_str::<Settings>(
                "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\npasword_file = \"x\"\n"
            )
            .is_err(),
            "a misspelt upstream key is refused"
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    }

    #[test]
    fn advertised_urls_are_checked() {
        assert_eq!(advertise_url(None).expect("none"), None);
        assert_eq!(advertise_url(Some("")).expect("empty"), None);
        assert_eq!(
            advertise_url(Some("http://10.0.0.7:5000/")).expect("valid"),
            Some("http://10.0.0.7:5000".to_owned())
        );
        assert_eq!(
            advertise_url(Some("http://fd00::7:5000")).expect("valid"),
            Some("http://[fd00::7]:5000".to_owned())
        );
        assert_eq!(
            advertise_url(Some("https://[fd00::7]:5000")).expect("valid"),
            Some("https://[fd00::7]:5000".to_owned())
        );
        for bad in [
            "10.0.0.7:5000",
            "ftp://h",
            "http://",
            "http://h/v2",
            "http://:5000",
        ] {
            assert!(advertise_url(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn contradictory_settings_are_refused() {
        let s3_without_bucket = Settings {
            storage: Some(StorageKind::S3),
            ..Default::default()
        };
        assert!(s3_without_bucket.resolve().is_err());
        let tiny_parts = Settings {
            storage: Some(StorageKind::S3),
            s3_bucket: Some("b".into()),
            s3_part_size: Some(ByteSize(1 << 20)),
            ..Default::default()
        };
        assert!(tiny_parts.resolve().is_err());
        let basic_without_users = Settings {
            auth: Some(AuthMode::Basic),
            ..Default::default()
        };
        assert!(basic_without_users.resolve().is_err());
        let token_without_keys = Settings {
            auth: Some(AuthMode::Token),
            auth_htpasswd: Some("users".into()),
            ..Default::default()
        };
        assert!(token_without_keys.resolve().is_err());
        let external_without_realm = Settings {
            auth: Some(AuthMode::Token),
            auth_token_jwks: Some("keys.json".into()),
            ..Default::default()
        };
        assert!(external_without_realm.resolve().is_err());
        let users_without_auth = Settings {
            auth_htpasswd: Some("users".into()),
            ..Default::default()
        };
        let message = users_without_auth.resolve().unwrap_err().to_string();
        assert!(message.contains("auth = none"), "{message}");
        let memory_with_db = Settings {
            storage: Some(StorageKind::Memory),
            database_url: Some("sqlite:x.db".into()),
            ..Default::default()
        };
        assert!(memory_with_db.resolve().is_err());
        for (cert, key, ca, complaint) in [
            (Some("c.pem"), None, None, "without tls_key"),
            (None, Some("k.pem"), None, "without tls_cert"),
            (None, None, Some("ca.pem"), "plain HTTP"),
        ] {
            let half_tls = Settings {
                tls_cert: cert.map(PathBuf::from),
                tls_key: key.map(PathBuf::from),
                tls_client_ca: ca.map(PathBuf::from),
                ..Default::default()
            };
            let message = half_tls.resolve().unwrap_err().to_string();
            assert!(message.contains(complaint), "{message}");
        }
    }

    #[test]
    fn tls_files_from_the_config_file() {
        let settings: Settings = toml::from_str(
            "tls_cert = \"/tls/tls.crt\"\ntls_key = \"/tls/tls.key\"\ntls_client_ca = \"/tls/ca.crt\"\ntls_reload_interval = \"30s\"",
        )
        .unwrap();
        let tls = settings.resolve().unwrap().tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/tls/ca.crt")));
        assert_eq!(tls.reload_interval, Duration::from_secs(30));
        assert!(Settings::default().resolve().unwrap().tls.is_none());
    }

    #[test]
    fn defaults_make_an_embedded_registry() {
        let config = Settings::default().resolve().unwrap();
        assert_eq!(config.listen.port(), 5000);
        assert_eq!(config.storage, StorageKind::Filesystem);
        assert_eq!(
            config.effective_database_url(),
            "sqlite:berth-data/berth.db"
        );
        assert_eq!(config.registry.gc_grace_period, Duration::from_secs(86400));
        assert_eq!(config.registry.gc_untagged_after, None);
        assert!(config.registry.immutable_tags.is_empty());
    }

    /// The database defaults are the SQL store's own; `--help` states them as well.
    #[test]
    fn database_defaults_are_the_stores() {
        use clap::CommandFactory;

        let defaults = SqlOptions::default();
        let config = Settings::default().resolve().unwrap();
        assert_eq!(config.db_max_connections, defaults.max_connections);
        assert_eq!(config.db_acquire_timeout, defaults.acquire_timeout);
        assert_eq!(config.db_lock_timeout, defaults.lock_timeout);
        assert_eq!(config.db_statement_timeout, defaults.statement_timeout);
        let command = Cli::command();
        let help = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        for (id, default) in [
            ("db_max_connections", defaults.max_connections.to_string()),
            (
                "db_acquire_timeout",
                format!("{}s", defaults.acquire_timeout.as_secs()),
            ),
            (
                "db_lock_timeout",
                format!("{}s", defaults.lock_timeout.as_secs()),
            ),
            (
                "db_statement_timeout",
                format!("{}s", defaults.statement_timeout.as_secs()),
            ),
        ] {
            let help = help(id);
            assert!(
                help.contains(&format!("[default: {default}]")),
                "{id}: {help}"
            );
        }
    }

    #[test]
    fn garbage_collection_and_immutable_tags_are_configured() {
        let file: Settings = toml::from_str(
            "gc_grace_period = \"2h\"\ngc_interval = \"0s\"\ngc_untagged_after = \"30d\"\n\
             immutable_tags = \"release/**:v*, base:stable\"\n",
        )
        .unwrap();
        let config = file.resolve().unwrap();
        assert_eq!(config.registry.gc_grace_period, Duration::from_secs(7200));
        assert!(config.registry.gc_interval.is_zero());
        assert_eq!(
            config.registry.gc_untagged_after,
            Some(Duration::from_secs(30 * 86400))
        );
        assert!(config.registry.immutable_tags.protects("release/app", "v2"));
        assert!(config.registry.immutable_tags.protects("base", "stable"));
        let malformed = Settings {
            immutable_tags: Some("release/**".into()),
            ..Settings::default()
        };
        let error = format!("{:#}", malformed.resolve().unwrap_err());
        assert!(
            error.contains("immutable_tags") && error.contains("release/**"),
            "{error}"
        );
    }
}
