//! The metadata store: repositories, blob links, manifests and their references, tags,
//! referrers and upload sessions.
//!
//! References are rows, never derived from storage, so that pagination is an index scan and
//! garbage collection can trust what the database says is in use. The store knows digests and
//! storage keys as strings; it never touches bytes.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::oci::{Digest, DigestAlgorithm, ParsedManifest, Reference, RepositoryName, Tag};
use crate::storage::PartRecord;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
/// The SQL metadata store, built without a SQL backend: only its options, whose defaults the
/// `berth` binary's configuration uses in every build.
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
pub mod sql {
    #[path = "options.rs"]
    mod options;
    pub use options::SqlOptions;
}

pub mod events;
pub mod instrumented;
pub mod memory;

use events::{DeliveryOutcome, EndpointBacklog, OutboxEvent, OutboxQuery};

/// Errors of the metadata layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    /// The database cannot be reached (connection refused, pool timeout).
    #[error("metadata database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed because its connection did (a restart, an administrator's
    /// shutdown, a network cut) or the database could not serve it just then (locked,
    /// overloaded, a serialization conflict): the same statement can succeed if repeated.
    #[error("metadata database interrupted: {0}")]
    Interrupted(String),
    /// The database has no space left (disk or quota full).
    #[error("metadata database is full: {0}")]
    Full(String),
    /// A row holds something Berth did not write.
    #[error("metadata row is corrupt: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("metadata database error: {0}")]
    Database(String),
}

/// Result alias for the metadata layer.
pub type MetadataResult<T> = Result<T, MetadataError>;

/// A blob as the metadata store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Where the blob store keeps its bytes.
    pub storage_key: String,
}

/// A stored manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecord {
    /// Digest of the exact bytes.
    pub digest: Digest,
    /// Media type to answer with.
    pub media_type: String,
    /// The bytes, as pushed.
    pub content: Bytes,
    /// The manifest's `subject`, if any.
    pub subject: Option<Digest>,
}

/// A manifest about to be stored.
#[derive(Clone, Copy, Debug)]
pub struct NewManifest<'a> {
    /// Target repository.
    pub repository: &'a RepositoryName,
    /// Digest of `content`.
    pub digest: &'a Digest,
    /// What validation found in it.
    pub parsed: &'a ParsedManifest,
    /// The exact bytes.
    pub content: &'a [u8],
    /// Tags to point at it (the tag it was pushed to, and any `?tag=` of the push).
    pub tags: &'a [Tag],
    /// Those of `tags` that may not be moved once set: each is refused if it already names
    /// another manifest.
    pub immutable: &'a [Tag],
    /// Refuse the manifest when a blob or child manifest it references is not in the
    /// repository; off for registries that accept sparse manifests (mirrors of one platform).
    pub require_references: bool,
    /// For a client's push, who pushed: subscribed endpoints hear of it. `None` for what a
    /// mirror keeps from its upstream (a cache fill is no change to announce).
    pub announce: Option<&'a events::EventOrigin>,
    /// Unix milliseconds.
    pub now: i64,
}

/// Outcome of storing a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutManifestOutcome {
    /// Stored (or already present) and tagged.
    Stored,
    /// Refused: these blobs or child manifests are not in the repository.
    MissingReferences {
        /// Blobs (config, layers) not linked to the repository.
        blobs: Vec<Digest>,
        /// Child manifests not in the repository.
        manifests: Vec<Digest>,
    },
    /// Refused: an immutable tag already names another manifest.
    ImmutableTag {
        /// The tag.
        tag: Tag,
        /// The manifest it names.
        current: Digest,
    },
}

/// Outcome of deleting a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestDeletion {
    /// Deleted, with its tags and references.
    Deleted,
    /// There was no such manifest.
    NotFound,
    /// Refused: an immutable tag names it.
    Protected {
        /// The tag.
        tag: Tag,
    },
}

/// Which tags may not be moved or deleted once set, asked by the store under the lock that
/// makes the answer final.
pub type TagGuard<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// A pull of a manifest kept from an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MirrorPull {
    /// The repository it was pulled from (the local name).
    pub repository: String,
    /// The manifest.
    pub digest: Digest,
    /// When (Unix milliseconds).
    pub at: i64,
}

/// A claim on fetching one blob from an upstream (see [`MetadataStore::claim_mirror_fetch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorFetchClaim {
    /// The repository (local name) the blob is fetched into.
    pub repository: RepositoryName,
    /// Who holds it: a random id per fetch, known only to the holder and to whoever reads
    /// the claim from this store.
    pub owner: String,
    /// Where the holder serves the bytes it has read so far, if it says.
    pub relay: Option<String>,
    /// When the claim runs out unless renewed (Unix milliseconds).
    pub lease_until: i64,
}

/// What one step of garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Reviews taken off the queue (each looked at once).
    pub reviewed: u64,
    /// Untagged manifests deleted.
    pub manifests: u64,
    /// Blob links deleted from repositories.
    pub links: u64,
    /// Blob rows deleted; their objects are queued in the storage garbage.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
}

impl std::ops::AddAssign for Collected {
    fn add_assign(&mut self, other: Collected) {
        self.reviewed += other.reviewed;
        self.manifests += other.manifests;
        self.links += other.links;
        self.blobs += other.blobs;
        self.bytes += other.bytes;
    }
}

/// One entry of a referrers list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferrerRecord {
    /// The referring manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// `artifactType`, or the config's media type for image manifests without one.
    pub artifact_type: Option<String>,
    /// Its annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A manifest as a browser lists it: with the tag naming it (none for an untagged one) and
/// when that tag was last pointed at it (for an untagged one, when the manifest was stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedManifest {
    /// The tag, or `None` for a manifest no tag names.
    pub tag: Option<String>,
    /// When the push that set the tag (or stored the untagged manifest) was made, in Unix
    /// milliseconds like every time the store keeps.
    pub pushed_at: i64,
    /// The manifest.
    pub manifest: ManifestRecord,
}

/// Where a listing of tags by push time, newest first, goes on: after the tag `tag` pushed at
/// `pushed_at` (ties broken by name, descending).
#[derive(Clone, Copy, Debug)]
pub struct PushedBefore<'a> {
    /// The push time of the last tag shown.
    pub pushed_at: i64,
    /// Its name.
    pub tag: &'a str,
}

/// A page of a lexically ordered listing: up to `limit` entries strictly after `after`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Page<'a> {
    /// Most entries to return; `None` for all.
    pub limit: Option<u32>,
    /// Exclusive lower bound.
    pub after: Option<&'a str>,
}

/// An upload session between requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    /// Session id (a UUID).
    pub id: String,
    /// Repository the blob will be linked to.
    pub repository: RepositoryName,
    /// Bytes received and durable.
    pub offset: u64,
    /// Hash function of `hash_state`.
    pub algorithm: DigestAlgorithm,
    /// Hash state after `offset` bytes.
    pub hash_state: Vec<u8>,
    /// The blob store's own state for this upload.
    pub store_state: String,
    /// Bytes held for the blob store in the session (see `upload_staged`).
    pub staged_len: u64,
    /// A `PUT` has claimed the session and is completing it.
    pub committing: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last checkpoint.
    pub updated_at: i64,
}

/// New durable progress of an upload, saved only if the session is still at the offset the
/// writer started from.
#[derive(Clone, Copy, Debug)]
pub struct UploadCheckpoint<'a> {
    /// New offset.
    pub offset: u64,
    /// Hash function of `hash_state`.
    pub algorithm: DigestAlgorithm,
    /// Hash state after `offset` bytes.
    pub hash_state: &'a [u8],
    /// The blob store's new state.
    pub store_state: &'a str,
    /// Parts written since the previous checkpoint. They replace recorded parts that start at
    /// or after the first of them (a promotion of staged bytes they also hold).
    pub new_parts: &'a [PartRecord],
    /// Drop the staged bytes recorded so far (a part now holds them).
    pub clear_staged: bool,
    /// Bytes to stage, ending at `offset`: the store could not write them yet.
    pub staged: Option<&'a [u8]>,
    /// Claim the session for completion as well (as `begin_commit` does): these are the
    /// blob's last bytes and they match the digest the client named.
    pub claim: bool,
    /// Unix milliseconds.
    pub now: i64,
}

/// Outcome of a conditional session update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionUpdate {
    /// Saved.
    Saved,
    /// Another request moved the session first; it is now at `offset`.
    Conflict {
        /// The session's current offset.
        offset: u64,
    },
    /// The session no longer exists (completed, cancelled or expired).
    Gone,
}

/// Outcome of publishing an uploaded blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobCommit {
    /// The blob is new; its bytes stay where the upload wrote them.
    Created,
    /// The digest was already stored elsewhere: the upload's bytes are queued as garbage
    /// (`garbage_id`) and should be discarded.
    Deduplicated {
        /// Garbage entry to forget once the bytes are gone.
        garbage_id: i64,
    },
    /// The session was gone before the commit (expired or cancelled meanwhile).
    SessionGone,
}

/// Storage no row references any more, queued for removal: what an abandoned upload may have
/// written, or (with `storage_key`) one finished object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Garbage {
    /// Queue entry id.
    pub id: i64,
    /// The upload session's id (empty for an object).
    pub upload_id: String,
    /// The blob store's state for that upload.
    pub store_state: String,
    /// The key of a finished object to delete, instead of an upload's storage.
    pub storage_key: Option<String>,
}

/// How a manifest's reference fails to resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DanglingKind {
    /// The referenced blob is not in the registry at all.
    MissingBlob,
    /// The blob exists but is not linked to the manifest's repository.
    UnlinkedBlob,
    /// The referenced child manifest is not in the repository.
    MissingManifest,
}

/// A manifest reference that does not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DanglingReference {
    /// The manifest's repository.
    pub repository: RepositoryName,
    /// The manifest.
    pub manifest: Digest,
    /// What it references.
    pub target: Digest,
    /// Why that does not resolve.
    pub kind: DanglingKind,
}

/// How many rows of each kind a metadata store holds: what a check that nothing leaked
/// (every upload ended, every unreferenced blob collected) counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Repositories.
    pub repositories: u64,
    /// Blob rows.
    pub blobs: u64,
    /// Blob links (blob ↔ repository).
    pub links: u64,
    /// Manifests.
    pub manifests: u64,
    /// Tags.
    pub tags: u64,
    /// Upload sessions.
    pub sessions: u64,
    /// Staged byte rows of upload sessions.
    pub staged: u64,
    /// Recorded parts of upload sessions.
    pub parts: u64,
    /// Storage garbage entries waiting for removal.
    pub garbage: u64,
    /// Queued link reviews.
    pub link_reviews: u64,
    /// Queued blob reviews.
    pub blob_reviews: u64,
}

/// A connection pool's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections open.
    pub open: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Persistence of everything but blob bytes.
///
/// Every method is one transaction: a manifest with its references, tag and referrer entry
/// commits together; session updates are conditional on the offset they start from.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> MetadataResult<()>;
    /// Free bytes on the filesystem holding the database, for databases in a local file
    /// (SQLite); `None` otherwise.
    async fn free_space(&self) -> MetadataResult<Option<u64>> {
        Ok(None)
    }

    /// Connections of the store's pool, for databases that have one.
    fn pool_usage(&self) -> Option<PoolUsage> {
        None
    }
    /// How many upload sessions are in progress.
    async fn upload_count(&self) -> MetadataResult<u64>;
    /// How many rows of each kind the store holds.
    async fn census(&self) -> MetadataResult<Census>;

    /// Whether the repository exists.
    async fn repository_exists(&self, repository: &RepositoryName) -> MetadataResult<bool>;
    /// Repositories in lexical order.
    async fn repositories(&self, page: Page<'_>) -> MetadataResult<Vec<String>>;

    /// The blob, if linked to the repository.
    async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<Option<BlobRecord>>;
    /// Links an existing blob to `repository`: from `from` if given, else from any repository.
    /// Returns the blob if it was found (and is now linked). A repository this makes is
    /// announced as asked for by `announce`'s origin; not at all with `None` (a mirror's fill).
    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
        announce: Option<&events::EventOrigin>,
        now: i64,
    ) -> MetadataResult<Option<BlobRecord>>;
    /// Removes the blob's link to the repository, queueing the blob for review by the
    /// collector, announced as asked for by `origin`; `false` if it was not linked.
    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        origin: &events::EventOrigin,
        now: i64,
    ) -> MetadataResult<bool>;

    /// Starts an upload session.
    async fn create_upload(&self, session: &UploadSession) -> MetadataResult<()>;
    /// Reads an upload session.
    async fn upload(&self, id: &str) -> MetadataResult<Option<UploadSession>>;
    /// Reads an upload session once no transaction that changes it is still in progress (it
    /// takes the row's lock): after a checkpoint failed with its outcome unknown (a lost
    /// reply), what this returns says whether it landed.
    async fn upload_settled(&self, id: &str) -> MetadataResult<Option<UploadSession>>;
    /// Hands out a part number never handed out before for this session.
    async fn reserve_part_number(&self, id: &str) -> MetadataResult<u32>;
    /// Saves progress if the session is still at `expected_offset` and not committing.
    async fn checkpoint_upload(
        &self,
        id: &str,
        expected_offset: u64,
        checkpoint: UploadCheckpoint<'_>,
    ) -> MetadataResult<SessionUpdate>;
    /// Parts saved by checkpoints, in part-number order.
    async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>>;
    /// The staged bytes of a session, in upload order (they end at its offset), with the
    /// offset of the first one (0 when none are staged).
    async fn upload_staged(&self, id: &str) -> MetadataResult<(u64, Vec<u8>)>;
    /// Records `part`, written from the staged bytes `[from, to)`, and drops those bytes: only
    /// if they are still exactly the first staged bytes and the session is not committing.
    /// Whether it did. The session's offset does not change.
    async fn promote_staged(
        &self,
        id: &str,
        from: u64,
        to: u64,
        part: &PartRecord,
    ) -> MetadataResult<bool>;
    /// Claims the session for completion if it is at `expected_offset`; claiming twice is allowed.
    async fn begin_commit(
        &self,
        id: &str,
        expected_offset: u64,
        now: i64,
    ) -> MetadataResult<SessionUpdate>;
    /// Publishes the blob of a claimed session: records digest → key (unless the digest exists),
    /// links it to the repository and ends the session. With `replacing`, a row of the digest
    /// that still names that key (whose bytes were found lost) is pointed at the session's
    /// bytes instead, and the old key is queued as garbage: the push heals the blob. A
    /// repository this makes is announced as asked for by `announce`'s origin; not at all
    /// with `None` (a mirror's fill).
    async fn commit_blob(
        &self,
        id: &str,
        blob: &BlobRecord,
        replacing: Option<&str>,
        announce: Option<&events::EventOrigin>,
        now: i64,
    ) -> MetadataResult<BlobCommit>;
    /// Ends a session without publishing; its storage is queued as garbage.
    async fn cancel_upload(&self, id: &str, now: i64) -> MetadataResult<Option<Garbage>>;
    /// Ends sessions idle since before `cutoff`, queueing their storage as garbage.
    async fn expire_uploads(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<u64>;
    /// How many sessions are idle since before `cutoff`.
    async fn expired_upload_count(&self, cutoff: i64) -> MetadataResult<u64>;
    /// Storage waiting to be removed.
    async fn garbage(&self, limit: u32) -> MetadataResult<Vec<Garbage>>;
    /// Forgets a garbage entry once its storage is removed.
    async fn forget_garbage(&self, id: i64) -> MetadataResult<()>;

    /// A blob by digest, whichever repositories it is linked to.
    async fn stored_blob(&self, digest: &Digest) -> MetadataResult<Option<BlobRecord>>;
    /// Blobs in digest order after `after`: all of them, or those linked to `repository`.
    async fn list_blobs(
        &self,
        repository: Option<&RepositoryName>,
        after: Option<&Digest>,
        limit: u32,
    ) -> MetadataResult<Vec<BlobRecord>>;
    /// How many blobs [`MetadataStore::list_blobs`] lists, and their total size in bytes.
    async fn blob_totals(&self, repository: Option<&RepositoryName>) -> MetadataResult<(u64, u64)>;
    /// Up to `limit` manifest references (in `repository`, or anywhere) that do not resolve.
    async fn dangling_references(
        &self,
        repository: Option<&RepositoryName>,
        limit: u32,
    ) -> MetadataResult<Vec<DanglingReference>>;
    /// Forgets a blob whose stored bytes are damaged or gone: unlinks it from every
    /// repository and removes its row, queueing its object for removal, in one transaction, so
    /// that clients push it again instead of pulling bad bytes. The queue entry, if the blob
    /// was there.
    async fn forget_blob(&self, digest: &Digest, now: i64) -> MetadataResult<Option<Garbage>>;

    /// Stores a manifest with its references, referrer entry and tag, in one transaction.
    async fn put_manifest(&self, manifest: NewManifest<'_>) -> MetadataResult<PutManifestOutcome>;
    /// A manifest by tag or digest.
    async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> MetadataResult<Option<ManifestRecord>>;
    /// Deletes a manifest with its tags and references, queueing the links of its blobs for
    /// review by the collector, announced as asked for by `origin`; refused if `immutable`
    /// holds for one of its tags.
    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        immutable: TagGuard<'_>,
        origin: &events::EventOrigin,
        now: i64,
    ) -> MetadataResult<ManifestDeletion>;
    /// Deletes a tag, announced as asked for by `origin`; `false` if it did not exist.
    async fn delete_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        origin: &events::EventOrigin,
        now: i64,
    ) -> MetadataResult<bool>;
    /// Tags in lexical order; `None` if the repository does not exist.
    async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> MetadataResult<Option<Vec<String>>>;
    /// Manifests whose `subject` is `subject`, in digest order, optionally of one artifact type.
    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: Page<'_>,
    ) -> MetadataResult<Vec<ReferrerRecord>>;

    /// Repositories whose name contains `needle` (bytewise), in the catalog's order.
    async fn search_repositories(
        &self,
        needle: &str,
        page: Page<'_>,
    ) -> MetadataResult<Vec<String>>;
    /// Up to `limit` tags of `repository` with their manifests, most recently pushed first,
    /// those after `before`; `None` if the repository does not exist.
    async fn recent_tags(
        &self,
        repository: &RepositoryName,
        before: Option<PushedBefore<'_>>,
        limit: u32,
    ) -> MetadataResult<Option<Vec<ListedManifest>>>;
    /// Up to `limit` manifests of `repository` that no tag names, newest first.
    async fn untagged_manifests(
        &self,
        repository: &RepositoryName,
        limit: u32,
    ) -> MetadataResult<Vec<ListedManifest>>;
    /// Those of `digests` that `repository` holds, in no particular order.
    async fn manifests_among(
        &self,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> MetadataResult<Vec<ManifestRecord>>;
    /// Up to `limit` tags of `repository` naming `digest`, in bytewise order.
    async fn tags_naming(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        limit: u32,
    ) -> MetadataResult<Vec<String>>;

    /// Garbage collection, one batch: takes up to `limit` link reviews queued at or before
    /// `cutoff` off the queue; deletes each link no manifest of its repository references and
    /// not made again since `cutoff`, then each of their blobs that no link and no manifest
    /// references any more, queueing its object in the storage garbage. Reviews another
    /// process holds are skipped.
    async fn collect_links(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected>;
    /// Garbage collection, one batch: takes up to `limit` blob reviews queued at or before
    /// `cutoff` off the queue and deletes each blob that no link and no manifest references,
    /// queueing its object in the storage garbage.
    async fn collect_blobs(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected>;
    /// Garbage collection, one batch: deletes up to `limit` manifests created at or before
    /// `cutoff` that no tag names, no index in their repository lists, and whose `subject`
    /// (if any) is not in their repository; queues the links of their blobs for review.
    async fn collect_untagged_manifests(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected>;
    /// What collection would remove now, changing nothing: `reviewed` counts the reviews
    /// due (links and blobs), `manifests` the untagged manifests due (with
    /// `untagged_cutoff`), `links`, `blobs` and `bytes` what the due reviews would free.
    async fn collect_preview(
        &self,
        cutoff: i64,
        untagged_cutoff: Option<i64>,
    ) -> MetadataResult<Collected>;

    // A mirror's shared state.
    /// When `repository:tag` was last checked against its upstream, if ever.
    async fn mirror_tag_checked(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> MetadataResult<Option<i64>>;

    /// Records that `repository:tag` was checked against its upstream at `at`.
    async fn record_mirror_tag_check(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        at: i64,
    ) -> MetadataResult<()>;

    /// Claims the fetch of `digest` from an upstream for `claim.owner` until
    /// `claim.lease_until`: true when no one held it, its lease ran out before `now`, or the
    /// same owner already held it (a renewal); false while another owner's lease runs.
    async fn claim_mirror_fetch(
        &self,
        digest: &Digest,
        claim: &MirrorFetchClaim,
        now: i64,
    ) -> MetadataResult<bool>;

    /// The claim on fetching `digest`, if any (its lease may have run out).
    async fn mirror_fetch_claim(&self, digest: &Digest)
    -> MetadataResult<Option<MirrorFetchClaim>>;

    /// Gives up `owner`'s claim on fetching `digest` (done, or failed).
    async fn release_mirror_fetch(&self, digest: &Digest, owner: &str) -> MetadataResult<()>;

    /// Records that `digest` in `repository` was kept from `upstream` at `at` (its first
    /// pull): from now on it is evicted when nothing pulled it for the upstream's
    /// `evict_after`.
    async fn keep_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        upstream: &str,
        at: i64,
    ) -> MetadataResult<()>;

    /// Forgets that `digest` in `repository` was kept from an upstream: a client pushed it,
    /// so it is the registry's own and never evicted.
    async fn disown_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<()>;

    /// Moves the last pull of each kept manifest in `pulls` forward to its time (never back;
    /// manifests not kept from an upstream are left alone).
    async fn record_mirror_pulls(&self, pulls: &[MirrorPull]) -> MetadataResult<()>;

    /// Deletes up to `limit` manifests kept from `upstream` that nothing pulled since
    /// `cutoff` and no index of their repository lists (their tags go with them; their
    /// blobs are reviewed by the collector as for any deleted manifest). With `apply` false,
    /// only counts them.
    async fn evict_unpulled_manifests(
        &self,
        upstream: &str,
        cutoff: i64,
        limit: u32,
        now: i64,
        apply: bool,
    ) -> MetadataResult<u64>;

    // The event outbox (see [`events`]): every change above writes its events, for the
    // endpoints subscribed to them, in its own transaction; these calls deliver them.
    /// Whether any endpoint is subscribed to `action` (so that a caller can skip preparing an
    /// event nobody wants, and a pull stays free of writes).
    fn announces(&self, action: events::EventAction) -> bool {
        let _ = action;
        false
    }
    /// Writes the rows of events that are no change of their own (pulls), for the endpoints
    /// subscribed to them; nothing when none is.
    async fn announce(&self, events: &[events::NewEvent]) -> MetadataResult<()>;
    /// Claims delivery to `endpoint` for `owner` until `lease_until`: held when no one held it,
    /// its lease ran out before `now`, or `owner` already held it (a renewal); else held
    /// elsewhere, until the other lease's end where the store could read it. A replica that
    /// finds the claim being written by another skips it rather than waiting.
    async fn claim_event_endpoint(
        &self,
        endpoint: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> MetadataResult<events::EndpointClaim>;
    /// Up to `limit` of `endpoint`'s pending rows due at `now`, in commit order, leaving out
    /// those behind an earlier row of their repository that waits for a retry.
    async fn due_events(
        &self,
        endpoint: &str,
        now: i64,
        limit: u32,
    ) -> MetadataResult<Vec<OutboxEvent>>;
    /// Counts an attempt of each pending row of `seqs`, before a round sends them (one write a
    /// round): an attempt that never settles (its replica was killed mid-request) still
    /// counts, so that a resend is known for one and a row that kills every sender is
    /// dead-lettered in the end. Rows the round does not send after all are settled
    /// [`events::DeliveryOutcome::Unsent`], which gives their attempt back.
    async fn start_event_attempts(&self, seqs: &[i64]) -> MetadataResult<()>;
    /// Records what became of attempts (by row `seq`); rows no longer pending are left alone.
    async fn settle_events(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        now: i64,
    ) -> MetadataResult<()>;
    /// Rows per endpoint and state; delivered rows (the most, and read by no gauge) are
    /// counted only `with_delivered`.
    async fn event_backlog(&self, with_delivered: bool) -> MetadataResult<Vec<EndpointBacklog>>;
    /// Rows in `seq` order, filtered.
    async fn outbox_events(&self, query: OutboxQuery<'_>) -> MetadataResult<Vec<OutboxEvent>>;
    /// Makes `endpoint`'s delivered and dead rows with `seq` in `from..=to` pending again, due
    /// now, with their attempts forgotten; how many.
    async fn replay_events(
        &self,
        endpoint: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> MetadataResult<u64>;
    /// Deletes up to `limit` rows delivered before `delivered_before` or dead-lettered before
    /// `dead_before`; how many.
    async fn prune_events(
        &self,
        delivered_before: i64,
        dead_before: i64,
        limit: u32,
    ) -> MetadataResult<u64>;
}

/// Unix time in milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
