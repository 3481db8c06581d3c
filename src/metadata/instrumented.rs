//! A metadata store that records how long each call takes and how often it fails
//! ([`instruments::METADATA_DURATION`], [`instruments::METADATA_ERRORS`]), around any other.
//! The registry wraps its store in one, so every backend is measured the same way.

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;

use super::events::{
    DeliveryOutcome, EndpointBacklog, EndpointClaim, EventAction, EventOrigin, NewEvent,
    OutboxEvent, OutboxQuery,
};
use super::{
    BlobCommit, BlobRecord, Census, Collected, DanglingReference, Garbage, ListedManifest,
    ManifestDeletion, ManifestRecord, MetadataError, MetadataResult, MetadataStore,
    MirrorFetchClaim, MirrorPull, NewManifest, Page, PoolUsage, PushedBefore, PutManifestOutcome,
    ReferrerRecord, SessionUpdate, TagGuard, UploadCheckpoint, UploadSession,
};
use crate::instruments;
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::storage::PartRecord;

/// `inner`, measured.
pub struct Instrumented<M: ?Sized> {
    inner: std::sync::Arc<M>,
}

impl<M: ?Sized> Instrumented<M> {
    /// Measures every call to `inner`.
    pub fn new(inner: std::sync::Arc<M>) -> Self {
        Instrumented { inner }
    }
}

impl MetadataError {
    /// A low-cardinality name of the error's class, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataError::Unavailable(_) => "unavailable",
            MetadataError::Interrupted(_) => "interrupted",
            MetadataError::Full(_) => "full",
            MetadataError::Corrupt(_) => "corrupt",
            MetadataError::Database(_) => "database",
        }
    }
}

async fn measured<T>(
    operation: &'static str,
    call: impl Future<Output = MetadataResult<T>>,
) -> MetadataResult<T> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(instruments::METADATA_DURATION, "operation" => operation)
        .record(started.elapsed());
    if let Err(e) = &result {
        metrics::counter!(instruments::METADATA_ERRORS, "operation" => operation, "kind" => e.kind())
            .increment(1);
    }
    result
}

/// Implements every call of the trait as the same call on `inner`, measured under its name.
macro_rules! measured_calls {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $out:ty; )*) => {
        #[async_trait]
        impl<M: MetadataStore + ?Sized> MetadataStore for Instrumented<M> {
            fn pool_usage(&self) -> Option<PoolUsage> {
                self.inner.pool_usage()
            }
            fn announces(&self, action: EventAction) -> bool {
                self.inner.announces(action)
            }
            $(
                async fn $name(&self $(, $arg: $ty)*) -> MetadataResult<$out> {
                    measured(stringify!($name), self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

measured_calls! {
    fn ping(&self) -> ();
    fn free_space(&self) -> Option<u64>;
    fn upload_count(&self) -> u64;
    fn census(&self) -> Census;
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
    fn delete_tag(&self, repository: &RepositoryName, tag: &Tag, origin: &EventOrigin, now: i64) -> bool;
    fn tags(&self, repository: &RepositoryName, page: Page<'_>) -> Option<Vec<String>>;
    fn referrers(&self, repository: &RepositoryName, subject: &Digest, artifact_type: Option<&str>, page: Page<'_>) -> Vec<ReferrerRecord>;
    fn search_repositories(&self, needle: &str, page: Page<'_>) -> Vec<String>;
    fn recent_tags(&self, repository: &RepositoryName, before: Option<PushedBefore<'_>>, limit: u32) -> Option<Vec<ListedManifest>>;
    fn untagged_manifests(&self, repository: &RepositoryName, limit: u32) -> Vec<ListedManifest>;
    fn manifests_among(&self, repository: &RepositoryName, digests: &[Digest]) -> Vec<ManifestRecord>;
    fn tags_naming(&self, repository: &RepositoryName, digest: &Digest, limit: u32) -> Vec<String>;
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
