//! Stores that fail on purpose: decorators around any `MetadataStore` and `BlobStore` that
//! number every call and, at a chosen call, inject one fault.
//!
//! - **fail before**: the call does not reach the store; the caller sees an error.
//! - **fail after**: the call takes effect and its reply is lost (a `COMMIT` that committed, an
//!   object that was written); the caller sees an error.
//! - **stall**: the caller's deadline passes while the call is in progress: it is polled once and
//!   abandoned where it first waits (a dropped future, as `tokio::time::timeout` leaves it),
//!   so whatever it started may still land afterwards; the caller sees a timeout.
//! - **crash**: the process stops before the call: this call and every later one of the same
//!   incarnation fail, until a new registry opens the same stores, as after a restart.
//! - **outage**: the call takes effect, its reply is lost, and the same store stays
//!   unreachable for the next [`OUTAGE_CALLS`] calls to it (a database that committed and then
//!   went away for a while): cleanup that follows the error cannot ask the store.
//!
//! With a [`Scheduler`], every call of an actor is also a point where the scheduler picks
//! which actor runs next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::FutureExt;

use berth::metadata::events::{
    DeliveryOutcome, EndpointBacklog, EndpointClaim, EventAction, EventOrigin, NewEvent,
    OutboxEvent, OutboxQuery,
};
use berth::metadata::{
    BlobCommit, BlobRecord, Census, Collected, DanglingReference, Garbage, ListedManifest,
    ManifestDeletion, ManifestRecord, MetadataError, MetadataResult, MetadataStore,
    MirrorFetchClaim, MirrorPull, NewManifest, Page, PoolUsage, PushedBefore, PutManifestOutcome,
    ReferrerRecord, SessionUpdate, TagGuard, UploadCheckpoint, UploadSession,
};
use berth::oci::{Digest, Reference, RepositoryName, Tag};
use berth::storage::{
    BlobStore, ByteRange, ByteStream, Durable, PartNumbers, PartRecord, Piece, Staged,
    StorageError, StorageResult, UploadWriter,
};

use crate::explore::Scheduler;

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    FailBefore,
    FailAfter,
    Stall,
    Crash,
    Outage,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::FailBefore,
        Fault::FailAfter,
        Fault::Stall,
        Fault::Crash,
        Fault::Outage,
    ];
}

/// Calls to a store that fail after an [`Fault::Outage`] began.
pub const OUTAGE_CALLS: u32 = 3;

/// Which store a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Metadata,
    Blobs,
}

/// A small deterministic random number generator (SplitMix64): a seed is a whole schedule.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What was injected, for reports.
#[derive(Clone, Debug)]
pub struct Injected {
    pub call: u64,
    pub name: &'static str,
    pub fault: Fault,
}

#[derive(Default)]
struct Plan {
    /// Calls are numbered only while counting (a workflow's faulted part).
    counting: bool,
    calls: u64,
    /// Inject this fault at this call number.
    at: Option<(u64, Fault)>,
    /// Or inject faults at random, with this probability per call.
    random: Option<(Rng, f64)>,
    injected: Vec<Injected>,
    log: Vec<&'static str>,
    /// Calls left of an outage of this store.
    outage: Option<(Store, u32)>,
}

/// The fault plan of one case, shared by every incarnation of its stores.
#[derive(Default)]
pub struct Faults {
    plan: Mutex<Plan>,
    scheduler: Mutex<Option<Arc<Scheduler>>>,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts numbering calls; `at` injects one fault.
    pub fn arm(&self, at: Option<(u64, Fault)>) {
        let mut plan = self.plan();
        plan.counting = true;
        plan.calls = 0;
        plan.at = at;
        plan.log.clear();
    }

    /// Injects faults at random while counting.
    pub fn arm_random(&self, seed: u64, probability: f64) {
        let mut plan = self.plan();
        plan.counting = true;
        plan.random = Some((Rng::new(seed), probability));
    }

    /// Stops numbering calls and injecting faults.
    pub fn disarm(&self) {
        let mut plan = self.plan();
        plan.counting = false;
        plan.at = None;
        plan.random = None;
    }

    pub fn calls(&self) -> u64 {
        self.plan().calls
    }

    pub fn call_log(&self) -> Vec<&'static str> {
        self.plan().log.clone()
    }

    pub fn injected(&self) -> Vec<Injected> {
        self.plan().injected.clone()
    }

    pub fn set_scheduler(&self, scheduler: Option<Arc<Scheduler>>) {
        *self.scheduler.lock().unwrap_or_else(|p| p.into_inner()) = scheduler;
    }

    fn scheduler(&self) -> Option<Arc<Scheduler>> {
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn decide(&self, name: &'static str, store: Store) -> Option<Fault> {
        let mut plan = self.plan();
        if !plan.counting {
            return None;
        }
        if let Some((down, left)) = plan.outage
            && down == store
        {
            plan.outage = (left > 1).then_some((down, left - 1));
            return Some(Fault::FailBefore);
        }
        plan.calls += 1;
        let call = plan.calls;
        plan.log.push(name);
        let planned = plan.at.filter(|(k, _)| *k == call).map(|(_, fault)| fault);
        let fault = planned.or_else(|| {
            let (rng, p) = plan.random.as_mut()?;
            let p = *p;
            rng.chance(p)
                .then(|| Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize])
        });
        if let Some(fault) = fault {
            plan.injected.push(Injected { call, name, fault });
            if fault == Fault::Outage {
                plan.outage = Some((store, OUTAGE_CALLS));
            }
        }
        fault
    }
}

/// One life of the stores between restarts: a crash ends it.
pub struct Incarnation {
    faults: Arc<Faults>,
    crashed: AtomicBool,
}

/// How a call goes.
enum Gate {
    Pass,
    Fail(Fault),
    Dead,
}

/// A call let in: how it goes, and its turn (held while it runs) when a scheduler decides.
struct Entry {
    gate: Gate,
    _turn: Option<crate::explore::InCall>,
}

impl Incarnation {
    pub fn new(faults: Arc<Faults>) -> Arc<Incarnation> {
        Arc::new(Incarnation {
            faults,
            crashed: AtomicBool::new(false),
        })
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    async fn enter(&self, name: &'static str, store: Store) -> Entry {
        let turn = match self.faults.scheduler() {
            Some(scheduler) => scheduler.turn().await,
            None => None,
        };
        let gate = if self.crashed() {
            Gate::Dead
        } else {
            match self.faults.decide(name, store) {
                None => Gate::Pass,
                Some(Fault::Crash) => {
                    self.crashed.store(true, Ordering::SeqCst);
                    Gate::Dead
                }
                Some(fault) => Gate::Fail(fault),
            }
        };
        Entry { gate, _turn: turn }
    }
}

/// The errors of one store's faults.
trait FaultErrors {
    type Error;
    fn store(&self) -> Store;
    fn error(&self, name: &str, fault: Option<Fault>) -> Self::Error;
}

struct MetadataFaults;

impl FaultErrors for MetadataFaults {
    type Error = MetadataError;
    fn store(&self) -> Store {
        Store::Metadata
    }
    fn error(&self, name: &str, fault: Option<Fault>) -> MetadataError {
        metadata_error(name, fault)
    }
}

struct StorageFaults;

impl FaultErrors for StorageFaults {
    type Error = StorageError;
    fn store(&self) -> Store {
        Store::Blobs
    }
    fn error(&self, name: &str, fault: Option<Fault>) -> StorageError {
        storage_error(name, fault)
    }
}

fn metadata_error(name: &str, fault: Option<Fault>) -> MetadataError {
    match fault {
        None | Some(Fault::Crash) => {
            MetadataError::Unavailable(format!("injected: the process crashed before {name}"))
        }
        Some(Fault::Stall) => {
            MetadataError::Interrupted(format!("injected: {name} timed out (stalled)"))
        }
        Some(fault) => MetadataError::Interrupted(format!("injected: {name} failed ({fault:?})")),
    }
}

fn storage_error(name: &str, fault: Option<Fault>) -> StorageError {
    match fault {
        None | Some(Fault::Crash) => {
            StorageError::Unavailable(format!("injected: the process crashed before {name}"))
        }
        Some(fault) => StorageError::Unavailable(format!("injected: {name} failed ({fault:?})")),
    }
}

/// Runs `call` through `gate`: passes it, or fails it the way the gate says.
macro_rules! gated {
    ($incarnation:expr, $name:expr, $call:expr, $error:ident) => {{
        let entry = $incarnation.enter($name, $error.store()).await;
        match entry.gate {
            Gate::Pass => {
                let started = std::time::Instant::now();
                let result = $call.await;
                if crate::debug() && started.elapsed().as_millis() > 30 {
                    eprintln!("slow call {} {:?}", $name, started.elapsed());
                }
                result
            }
            Gate::Dead => Err($error.error($name, None)),
            Gate::Fail(Fault::FailBefore) => Err($error.error($name, Some(Fault::FailBefore))),
            Gate::Fail(fault @ (Fault::FailAfter | Fault::Outage)) => {
                let _ = $call.await;
                Err($error.error($name, Some(fault)))
            }
            Gate::Fail(fault) => {
                // Polled once: it finishes (its reply is lost) or is abandoned where it first
                // waits, and may still land later.
                let _ = $call.now_or_never();
                Err($error.error($name, Some(fault)))
            }
        }
    }};
}

/// A metadata store that fails on purpose.
pub struct FaultyMetadata {
    inner: Arc<dyn MetadataStore>,
    life: Arc<Incarnation>,
}

impl FaultyMetadata {
    pub fn new(inner: Arc<dyn MetadataStore>, life: Arc<Incarnation>) -> FaultyMetadata {
        FaultyMetadata { inner, life }
    }
}

macro_rules! faulty_calls {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $out:ty; )*) => {
        #[async_trait]
        impl MetadataStore for FaultyMetadata {
            fn pool_usage(&self) -> Option<PoolUsage> {
                self.inner.pool_usage()
            }
            fn announces(&self, action: EventAction) -> bool {
                self.inner.announces(action)
            }
            async fn ping(&self) -> MetadataResult<()> {
                self.inner.ping().await
            }
            async fn free_space(&self) -> MetadataResult<Option<u64>> {
                self.inner.free_space().await
            }
            async fn census(&self) -> MetadataResult<Census> {
                self.inner.census().await
            }
            $(
                async fn $name(&self $(, $arg: $ty)*) -> MetadataResult<$out> {
                    gated!(self.life, stringify!($name), self.inner.$name($($arg),*), MetadataFaults)
                }
            )*
        }
    };
}

faulty_calls! {
    fn upload_count(&self) -> u64;
    fn repository_exists(&self, repository: &RepositoryName) -> bool;
    fn repositories(&self, page: Page<'_>) -> Vec<String>;
    fn blob(&self, repository: &RepositoryName, digest: &Digest) -> Option<BlobRecord>;
    fn mount_blob(&self, repository: &RepositoryName, digest: &Digest, from: Option<&RepositoryName>, announce: Option<&EventOrigin>, now: i64) -> Option<BlobRecord>;
    fn unlink_blob(&self, repository: &RepositoryName, digest: &Digest, origin: &EventOrigin, now: i64) -> bool;
    fn create_upload(&self, session: &UploadSession) -> ();
    fn upload(&self, id: &str) -> Option<UploadSession>;
    fn upload_settled(&self, id: &str) -> Option<UploadSession>;
    fn reserve_part_number(&self, id: &str) -> u32;
    fn checkpoint_upload(&self, id: &str, expected_offset: u64, checkpoint: UploadCheckpoint<'_>) -> SessionUpdate;
    fn upload_parts(&self, id: &str) -> Vec<PartRecord>;
    fn upload_staged(&self, id: &str) -> (u64, Vec<u8>);
    fn promote_staged(&self, id: &str, from: u64, to: u64, part: &PartRecord) -> bool;
    fn begin_commit(&self, id: &str, expected_offset: u64, now: i64) -> SessionUpdate;
    fn commit_blob(&self, id: &str, blob: &BlobRecord, replacing: Option<&str>, announce: Option<&EventOrigin>, now: i64) -> BlobCommit;
    fn cancel_upload(&self, id: &str, now: i64) -> Option<Garbage>;
    fn expire_uploads(&self, cutoff: i64, limit: u32, now: i64) -> u64;
    fn expired_upload_count(&self, cutoff: i64) -> u64;
    fn garbage(&self, limit: u32) -> Vec<Garbage>;
    fn forget_garbage(&self, id: i64) -> ();
    fn stored_blob(&self, digest: &Digest) -> Option<BlobRecord>;
    fn list_blobs(&self, repository: Option<&RepositoryName>, after: Option<&Digest>, limit: u32) -> Vec<BlobRecord>;
    fn blob_totals(&self, repository: Option<&RepositoryName>) -> (u64, u64);
    fn dangling_references(&self, repository: Option<&RepositoryName>, limit: u32) -> Vec<DanglingReference>;
    fn forget_blob(&self, digest: &Digest, now: i64) -> Option<Garbage>;
    fn put_manifest(&self, manifest: NewManifest<'_>) -> PutManifestOutcome;
    fn manifest(&self, repository: &RepositoryName, reference: &Reference) -> Option<ManifestRecord>;
    fn delete_manifest(&self, repository: &RepositoryName, digest: &Digest, immutable: TagGuard<'_>, origin: &EventOrigin, now: i64) -> ManifestDeletion;
    fn search_repositories(&self, needle: &str, page: Page<'_>) -> Vec<String>;
    fn recent_tags(&self, repository: &RepositoryName, before: Option<PushedBefore<'_>>, limit: u32) -> Option<Vec<ListedManifest>>;
    fn untagged_manifests(&self, repository: &RepositoryName, limit: u32) -> Vec<ListedManifest>;
    fn manifests_among(&self, repository: &RepositoryName, digests: &[Digest]) -> Vec<ManifestRecord>;
    fn tags_naming(&self, repository: &RepositoryName, digest: &Digest, limit: u32) -> Vec<String>;
    fn delete_tag(&self, repository: &RepositoryName, tag: &Tag, origin: &EventOrigin, now: i64) -> bool;
    fn tags(&self, repository: &RepositoryName, page: Page<'_>) -> Option<Vec<String>>;
    fn referrers(&self, repository: &RepositoryName, subject: &Digest, artifact_type: Option<&str>, page: Page<'_>) -> Vec<ReferrerRecord>;
    fn collect_links(&self, cutoff: i64, limit: u32, now: i64) -> Collected;
    fn collect_blobs(&self, cutoff: i64, limit: u32, now: i64) -> Collected;
    fn collect_untagged_manifests(&self, cutoff: i64, limit: u32, now: i64) -> Collected;
    fn collect_preview(&self, cutoff: i64, untagged_cutoff: Option<i64>) -> Collected;
    fn mirror_tag_checked(&self, repository: &RepositoryName, tag: &Tag) -> Option<i64>;
    fn record_mirror_tag_check(&self, repository: &RepositoryName, tag: &Tag, at: i64) -> ();
    fn claim_mirror_fetch(&self, digest: &Digest, claim: &MirrorFetchClaim, now: i64) -> bool;
    fn mirror_fetch_claim(&self, digest: &Digest) -> Option<MirrorFetchClaim>;
    fn release_mirror_fetch(&self, digest: &Digest, owner: &str) -> ();
    fn keep_mirrored_manifest(&self, repository: &RepositoryName, digest: &Digest, upstream: &str, at: i64) -> ();
    fn disown_mirrored_manifest(&self, repository: &RepositoryName, digest: &Digest) -> ();
    fn record_mirror_pulls(&self, pulls: &[MirrorPull]) -> ();
    fn evict_unpulled_manifests(&self, upstream: &str, cutoff: i64, limit: u32, now: i64, apply: bool) -> u64;
    fn announce(&self, events: &[NewEvent]) -> ();
    fn claim_event_endpoint(&self, endpoint: &str, owner: &str, lease_until: i64, now: i64) -> EndpointClaim;
    fn due_events(&self, endpoint: &str, now: i64, limit: u32) -> Vec<OutboxEvent>;
    fn start_event_attempts(&self, seqs: &[i64]) -> ();
    fn settle_events(&self, outcomes: &[(i64, DeliveryOutcome)], now: i64) -> ();
    fn event_backlog(&self, with_delivered: bool) -> Vec<EndpointBacklog>;
    fn outbox_events(&self, query: OutboxQuery<'_>) -> Vec<OutboxEvent>;
    fn replay_events(&self, endpoint: &str, from: i64, to: i64, now: i64) -> u64;
    fn prune_events(&self, delivered_before: i64, dead_before: i64, limit: u32) -> u64;
}

/// A blob store that fails on purpose; its upload writers do too.
pub struct FaultyBlobs {
    inner: Arc<dyn BlobStore>,
    life: Arc<Incarnation>,
}

impl FaultyBlobs {
    pub fn new(inner: Arc<dyn BlobStore>, life: Arc<Incarnation>) -> FaultyBlobs {
        FaultyBlobs { inner, life }
    }
}

#[async_trait]
impl BlobStore for FaultyBlobs {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn part_size(&self) -> usize {
        self.inner.part_size()
    }

    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }

    async fn begin_upload(&self, upload_id: &str) -> StorageResult<String> {
        gated!(
            self.life,
            "begin_upload",
            self.inner.begin_upload(upload_id),
            StorageFaults
        )
    }

    async fn open_upload(
        &self,
        upload_id: &str,
        offset: u64,
        store_state: &str,
        staged: Staged,
        part_numbers: Arc<dyn PartNumbers>,
    ) -> StorageResult<Box<dyn UploadWriter>> {
        let opened = gated!(
            self.life,
            "open_upload",
            self.inner
                .open_upload(upload_id, offset, store_state, staged, part_numbers),
            StorageFaults
        )?;
        Ok(Box::new(FaultyWriter {
            inner: opened,
            life: Arc::clone(&self.life),
        }))
    }

    async fn discard_upload(&self, upload_id: &str, store_state: &str) -> StorageResult<()> {
        gated!(
            self.life,
            "discard_upload",
            self.inner.discard_upload(upload_id, store_state),
            StorageFaults
        )
    }

    fn published(&self, key: &str, size: u64) {
        if !self.life.crashed() {
            self.inner.published(key, size);
        }
    }

    async fn read(&self, key: &str, range: Option<ByteRange>) -> StorageResult<ByteStream> {
        gated!(
            self.life,
            "read",
            self.inner.read(key, range),
            StorageFaults
        )
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        gated!(self.life, "delete", self.inner.delete(key), StorageFaults)
    }

    async fn object_size(&self, key: &str) -> StorageResult<Option<u64>> {
        gated!(
            self.life,
            "object_size",
            self.inner.object_size(key),
            StorageFaults
        )
    }

    async fn presigned_url(&self, key: &str) -> StorageResult<Option<String>> {
        gated!(
            self.life,
            "presigned_url",
            self.inner.presigned_url(key),
            StorageFaults
        )
    }

    async fn check(&self) -> StorageResult<()> {
        self.inner.check().await
    }

    async fn free_space(&self) -> StorageResult<Option<u64>> {
        self.inner.free_space().await
    }

    async fn stored_keys(&self) -> StorageResult<Vec<String>> {
        self.inner.stored_keys().await
    }
}

struct FaultyWriter {
    inner: Box<dyn UploadWriter>,
    life: Arc<Incarnation>,
}

#[async_trait]
impl UploadWriter for FaultyWriter {
    fn carried(&self) -> usize {
        self.inner.carried()
    }

    async fn write(&mut self, piece: Piece) -> StorageResult<Vec<Durable>> {
        gated!(self.life, "write", self.inner.write(piece), StorageFaults)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    async fn settle(&mut self) -> StorageResult<Option<Durable>> {
        if self.inner.in_flight() == 0 {
            return Ok(None);
        }
        gated!(self.life, "settle", self.inner.settle(), StorageFaults)
    }

    fn recorded(&mut self, end_offset: u64) {
        self.inner.recorded(end_offset);
    }

    async fn drain(&mut self) -> StorageResult<()> {
        gated!(self.life, "drain", self.inner.drain(), StorageFaults)
    }

    async fn complete(&mut self, parts: &[PartRecord], size: u64) -> StorageResult<String> {
        gated!(
            self.life,
            "complete",
            self.inner.complete(parts, size),
            StorageFaults
        )
    }

    async fn abandon(&mut self) {
        // A crashed process cleans nothing up.
        if !self.life.crashed() {
            self.inner.abandon().await;
        }
    }
}
