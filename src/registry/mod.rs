//! The registry: OCI semantics over a blob store and a metadata store, free of HTTP.
//!
//! [`Registry`] is cheap to clone and is what the HTTP layer calls. It owns the upload engine
//! ([`uploads`]), manifest handling ([`manifests`]) and background maintenance
//! ([`maintenance`]).

use std::sync::Arc;
use std::time::Duration;

use crate::buffers::BufferPool;
use crate::error::RegistryResult;
use crate::metadata::events::EventOrigin;
use crate::metadata::instrumented::Instrumented;
use crate::metadata::{BlobRecord, MetadataStore};
use crate::storage::BlobStore;

mod coalesce;
mod gauges;
pub mod gc;
mod hashing;
pub mod maintenance;
pub mod manifest_cache;
pub mod manifests;
pub mod mirror;
pub mod scrub;
mod space;
pub mod uploads;

/// A duration in the milliseconds rows are stamped with (saturating: an unbounded duration
/// is `i64::MAX`).
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The refusal of a digest whose algorithm Berth does not compute.
pub(crate) fn unsupported_digest_algorithm(
    digest: &crate::oci::Digest,
) -> crate::error::RegistryError {
    crate::error::RegistryError::new(
        crate::error::ErrorCode::DigestInvalid,
        format!(
            "digest algorithm {:?} is not supported; use sha256 or sha512",
            digest.algorithm_name()
        ),
    )
}

/// The largest manifest the spec asks registries to accept, and Berth's default limit.
pub const DEFAULT_MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Where a registry reads the time it stamps rows with and measures ages against (grace
/// periods, upload expiry), in Unix milliseconds: the system clock, or a simulated one in
/// tests that must replay exactly.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Behaviour switches of a registry.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Upload sessions idle this long are expired and their bytes removed.
    pub upload_ttl: Duration,
    /// How often expired sessions and garbage are looked for.
    pub maintenance_interval: Duration,
    /// How long a blob link or blob must have been unreferenced before garbage collection
    /// deletes it: pushes that are about to reference it have this long to do so.
    pub gc_grace_period: Duration,
    /// How often each process runs a garbage collection pass; zero turns the worker off
    /// (`berth gc` still collects).
    pub gc_interval: Duration,
    /// Delete manifests that no tag, index or subject keeps once they are this old.
    pub gc_untagged_after: Option<Duration>,
    /// Tags that may not be moved or deleted once set.
    pub immutable_tags: gc::ImmutableTags,
    /// Number of part buffers shared by all uploads (the upload memory budget).
    pub upload_buffers: usize,
    /// Uploads are refused (507) when they would leave less than this many bytes free where
    /// the registry keeps data on local disk (the blob directory, the SQLite database), so that
    /// the database always has room to record deletions, expiries and collection.
    pub min_free_space: u64,
    /// Longest an upload request waits for a part buffer before it is answered 503.
    pub upload_buffer_wait: Duration,
    /// Largest manifest accepted (bytes); larger ones get 413.
    pub max_manifest_size: usize,
    /// Serve the referrers API; when off, it answers 404 as if unknown.
    pub referrers_api: bool,
    /// Accept single-request uploads (`POST ?digest=`); when off, such a POST opens a session.
    pub single_request_uploads: bool,
    /// Accept manifests and indexes whose blobs or child manifests are not in the repository
    /// (mirrors that copy one platform of a multi-arch index).
    pub sparse_manifests: bool,
    /// Refuse tag and catalog pages larger than this (`n` above it gets 400).
    pub max_page_size: Option<u32>,
    /// How long a mirror's claim on fetching a blob lasts unless renewed: when its holder
    /// dies, pulls waiting for it take the fetch over this long after its last renewal.
    pub mirror_fetch_lease: Duration,
    /// The URL other replicas reach this process at (`http://POD_IP:5000`): pulls on them
    /// follow this process's upstream fetches through it while they run, instead of waiting
    /// for the blobs to be stored. `None`: they wait.
    pub advertise_url: Option<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            upload_ttl: Duration::from_secs(24 * 3600),
            maintenance_interval: Duration::from_secs(300),
            gc_grace_period: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(600),
            gc_untagged_after: None,
            immutable_tags: gc::ImmutableTags::default(),
            upload_buffers: 8,
            upload_buffer_wait: Duration::from_secs(30),
            min_free_space: 512 * 1024 * 1024,
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            referrers_api: true,
            single_request_uploads: true,
            sparse_manifests: false,
            max_page_size: None,
            mirror_fetch_lease: Duration::from_secs(30),
            advertise_url: None,
        }
    }
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("upload_ttl", &self.upload_ttl)
            .field("maintenance_interval", &self.maintenance_interval)
            .field("gc_grace_period", &self.gc_grace_period)
            .field("gc_interval", &self.gc_interval)
            .field("gc_untagged_after", &self.gc_untagged_after)
            .field("immutable_tags", &self.immutable_tags)
            .field("upload_buffers", &self.upload_buffers)
            .field("upload_buffer_wait", &self.upload_buffer_wait)
            .field("min_free_space", &self.min_free_space)
            .field("max_manifest_size", &self.max_manifest_size)
            .field("referrers_api", &self.referrers_api)
            .field("single_request_uploads", &self.single_request_uploads)
            .field("sparse_manifests", &self.sparse_manifests)
            .field("max_page_size", &self.max_page_size)
            .field("mirror_fetch_lease", &self.mirror_fetch_lease)
            .field("advertise_url", &self.advertise_url)
            .finish()
    }
}

pub(crate) struct Inner {
    /// Set when the process is shutting down: readiness fails so that load balancers stop
    /// sending, while requests are still served.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) metadata: Arc<dyn MetadataStore>,
    pub(crate) buffers: BufferPool,
    pub(crate) options: RegistryOptions,
    pub(crate) manifest_reads: manifests::ManifestReads,
    pub(crate) manifest_cache: Option<manifest_cache::ManifestCache>,
    pub(crate) clock: Clock,
    #[cfg(feature = "mirror")]
    pub(crate) mirror: Option<mirror::Mirror>,
}

/// A registry: the state the HTTP layer serves.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
    /// Who the changes made through this handle are announced as asked for by (events'
    /// `actor` and `request`); `None` for a mirror's fills, which are announced as nothing.
    announce: Option<Arc<EventOrigin>>,
}

/// The origin of the changes the registry makes on its own, and of an embedding program's.
static NO_ORIGIN: EventOrigin = EventOrigin {
    actor: None,
    request_id: None,
    client_addr: None,
    user_agent: None,
};

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("blobs", &self.inner.blobs.kind())
            .field("buffers", &self.inner.buffers)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Registry {
    /// A registry over the given stores with default options.
    pub fn new(blobs: Arc<dyn BlobStore>, metadata: Arc<dyn MetadataStore>) -> Registry {
        Registry::builder(blobs, metadata).build()
    }

    /// Starts configuring a registry.
    pub fn builder(blobs: Arc<dyn BlobStore>, metadata: Arc<dyn MetadataStore>) -> RegistryBuilder {
        RegistryBuilder {
            blobs,
            metadata,
            options: RegistryOptions::default(),
            manifest_cache: None,
            clock: Arc::new(crate::metadata::now_millis),
            #[cfg(feature = "mirror")]
            mirror: None,
        }
    }

    /// The options in force.
    pub fn options(&self) -> &RegistryOptions {
        &self.inner.options
    }

    /// The blob store.
    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// The metadata store.
    pub fn metadata_store(&self) -> &Arc<dyn MetadataStore> {
        &self.inner.metadata
    }

    /// The shared pool of upload part buffers.
    pub fn buffers(&self) -> &BufferPool {
        &self.inner.buffers
    }

    /// Marks the registry as shutting down: readiness fails from now on.
    pub fn drain(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the registry is shutting down.
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this process should receive requests: its metadata database and blob storage
    /// answer within [`READINESS_TIMEOUT`] each, and it is not shutting down. Low disk space
    /// does not make a process unready (reads still work, and a replica taken out of rotation
    /// would not free any space); it is reported as degraded, and the uploads it would refuse
    /// get 507.
    pub async fn readiness(&self) -> Readiness {
        if self.is_draining() {
            return Readiness::Draining;
        }
        let metadata = within("the metadata database", async {
            self.inner.metadata.ping().await.map_err(|e| e.to_string())
        });
        let blobs = within("blob storage", async {
            self.inner.blobs.check().await.map_err(|e| e.to_string())
        });
        let (metadata, blobs) = tokio::join!(metadata, blobs);
        let problems: Vec<String> = [metadata, blobs]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if !problems.is_empty() {
            return Readiness::Unready(problems);
        }
        match tokio::time::timeout(READINESS_TIMEOUT, self.storage_pressure()).await {
            Ok(Some(pressure)) => Readiness::Degraded(pressure),
            _ => Readiness::Ready,
        }
    }

    /// A URL clients can fetch `blob`'s bytes from directly (a presigned S3 URL), when the
    /// blob store offers one.
    pub async fn direct_url(&self, blob: &BlobRecord) -> RegistryResult<Option<String>> {
        Ok(self.inner.blobs.presigned_url(&blob.storage_key).await?)
    }

    /// The time now, in Unix milliseconds, by the registry's clock.
    pub(crate) fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// This registry, with the changes made through it announced as asked for by `origin`
    /// (the HTTP layer's caller).
    pub fn on_behalf_of(&self, origin: EventOrigin) -> Registry {
        Registry {
            inner: Arc::clone(&self.inner),
            announce: Some(Arc::new(origin)),
        }
    }

    /// This registry, for what a mirror keeps of its upstream: a cache fill is no change
    /// subscribers hear of.
    #[cfg_attr(not(feature = "mirror"), allow(dead_code))]
    pub(crate) fn filling(&self) -> Registry {
        Registry {
            inner: Arc::clone(&self.inner),
            announce: None,
        }
    }

    /// Who this handle's changes are announced as asked for by, if they are announced.
    pub(crate) fn announcing(&self) -> Option<&EventOrigin> {
        self.announce.as_deref()
    }

    /// Who this handle's removals are announced as asked for by (removals are always
    /// announced: a mirror's evictions too).
    pub(crate) fn origin(&self) -> &EventOrigin {
        self.announce.as_deref().unwrap_or(&NO_ORIGIN)
    }
}

/// How long readiness waits for each dependency: a probe must answer promptly even when a
/// dependency hangs.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`Registry::readiness`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving, every dependency answering.
    Ready,
    /// Serving, but uploads that would leave too little free disk space are refused.
    Degraded(String),
    /// A dependency did not answer, or not in time: what each problem was.
    Unready(Vec<String>),
    /// Shutting down: load balancers should stop sending.
    Draining,
}

/// `check`'s outcome, or why it took too long.
async fn within(
    what: &'static str,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match tokio::time::timeout(READINESS_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{what} did not answer within {} ms",
            READINESS_TIMEOUT.as_millis()
        )),
    }
}

/// Builds a [`Registry`].
pub struct RegistryBuilder {
    blobs: Arc<dyn BlobStore>,
    metadata: Arc<dyn MetadataStore>,
    options: RegistryOptions,
    manifest_cache: Option<manifest_cache::ManifestCache>,
    clock: Clock,
    #[cfg(feature = "mirror")]
    mirror: Option<mirror::Mirror>,
}

impl RegistryBuilder {
    /// Reads the names the upstreams map to through to them (see [`mirror`]). No upstreams,
    /// no mirror.
    #[cfg(feature = "mirror")]
    pub fn mirror(
        mut self,
        upstreams: crate::upstream::Upstreams,
    ) -> Result<Self, crate::upstream::UpstreamError> {
        self.mirror = if upstreams.is_empty() {
            None
        } else {
            Some(mirror::Mirror::new(upstreams)?)
        };
        Ok(self)
    }

    /// Reads the time from `clock` instead of the system clock (tests that replay a schedule
    /// exactly).
    pub fn clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: RegistryOptions) -> Self {
        self.options = options;
        self
    }

    /// How long an idle upload session lives.
    pub fn upload_ttl(mut self, ttl: Duration) -> Self {
        self.options.upload_ttl = ttl;
        self
    }

    /// How often expired sessions and garbage are looked for.
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.options.maintenance_interval = interval;
        self
    }

    /// Number of part buffers shared by all uploads.
    pub fn upload_buffers(mut self, count: usize) -> Self {
        self.options.upload_buffers = count;
        self
    }

    /// Free bytes uploads must leave on local disk (default 512 MiB; 0 turns the check off).
    pub fn min_free_space(mut self, bytes: u64) -> Self {
        self.options.min_free_space = bytes;
        self
    }

    /// Longest an upload waits for a part buffer before it is answered 503 (default 30 s).
    pub fn upload_buffer_wait(mut self, wait: Duration) -> Self {
        self.options.upload_buffer_wait = wait;
        self
    }

    /// Largest manifest accepted.
    pub fn max_manifest_size(mut self, bytes: usize) -> Self {
        self.options.max_manifest_size = bytes;
        self
    }

    /// Serve the referrers API (on by default); off answers 404 as if unknown.
    pub fn referrers_api(mut self, enabled: bool) -> Self {
        self.options.referrers_api = enabled;
        self
    }

    /// Accept `POST ?digest=` single-request uploads (on by default).
    pub fn single_request_uploads(mut self, enabled: bool) -> Self {
        self.options.single_request_uploads = enabled;
        self
    }

    /// Accept manifests whose blobs or child manifests are not in the repository (off by
    /// default; on for mirrors that copy one platform of a multi-arch index).
    pub fn sparse_manifests(mut self, enabled: bool) -> Self {
        self.options.sparse_manifests = enabled;
        self
    }

    /// Refuse list pages larger than `n` with 400, as AWS ECR does.
    pub fn max_page_size(mut self, n: Option<u32>) -> Self {
        self.options.max_page_size = n;
        self
    }

    /// Caches manifests in memory, coordinated with every process on this machine through the
    /// change counter file at `counter_path` (see [`manifest_cache`]). Only for deployments
    /// whose processes all run on one machine, such as SQLite ones.
    pub fn manifest_cache(mut self, counter_path: &std::path::Path) -> std::io::Result<Self> {
        self.manifest_cache = Some(manifest_cache::ManifestCache::open(counter_path)?);
        Ok(self)
    }

    /// Builds the registry.
    pub fn build(self) -> Registry {
        let buffers = BufferPool::new(self.options.upload_buffers, self.blobs.part_size());
        Registry {
            announce: Some(Arc::new(EventOrigin::default())),
            inner: Arc::new(Inner {
                draining: std::sync::atomic::AtomicBool::new(false),
                blobs: self.blobs,
                metadata: Arc::new(Instrumented::new(self.metadata)),
                buffers,
                options: self.options,
                manifest_reads: manifests::ManifestReads::new(),
                manifest_cache: self.manifest_cache,
                clock: self.clock,
                #[cfg(feature = "mirror")]
                mirror: self.mirror,
            }),
        }
    }
}
