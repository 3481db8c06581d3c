//! The metadata store on SQLite or Postgres.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the SQL is common
//! except for a handful of statements chosen by [`Dialect`]. Each backend has its own
//! migrations (`migrations/sqlite`, `migrations/postgres`).
//!
//! This file has the store itself (connecting, migrations) and its [`MetadataStore`] impl, one
//! line per method naming where it is written. The rest is cut by concern:
//!
//! - `dialect.rs`: what differs between the databases, and the locking invariant with both
//!   databases' ways of keeping it side by side;
//! - `errors.rs`: sqlx errors classified into [`MetadataError`] in one place (`?` converts);
//! - `transactions.rs`: write transactions on a connection of their own, guarded before
//!   `BEGIN`; reads repeated once after an interruption; the insert that holds what it found;
//! - `rows.rs`: values in and out of rows;
//! - `repositories.rs`, `uploads.rs` (sessions, checkpoints, staged bytes, parts), `blobs.rs`
//!   (blob rows, links, mounts, an upload's commit), `manifests.rs` (manifests, their
//!   references, tags, referrers), `gc.rs` (reviews, collection passes, the storage garbage
//!   queue, the census), `mirror.rs` (a mirror's tag checks and fetch claims), `browse.rs`
//!   (the web UI's reads: search, tags by push time, untagged manifests);
//! - `options.rs`: [`SqlOptions`], built with or without a SQL backend.
//!
//! Every method of the trait is one transaction.

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::events::{
    DeliveryOutcome, EndpointBacklog, EndpointClaim, EventAction, EventOrigin, NewEvent,
    OutboxEvent, OutboxQuery, Subscriptions,
};
use super::{
    BlobCommit, BlobRecord, Census, Collected, DanglingReference, Garbage, ListedManifest,
    ManifestDeletion, ManifestRecord, MetadataError, MetadataResult, MetadataStore,
    MirrorFetchClaim, MirrorPull, NewManifest, Page, PoolUsage, PushedBefore, PutManifestOutcome,
    ReferrerRecord, SessionUpdate, TagGuard, UploadCheckpoint, UploadSession,
};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::storage::PartRecord;

mod blobs;
mod browse;
mod dialect;
mod errors;
mod events;
mod gc;
mod manifests;
mod mirror;
mod options;
mod repositories;
mod rows;
mod transactions;
mod uploads;

pub use dialect::Dialect;
pub use options::SqlOptions;

/// A metadata store in SQLite or Postgres.
#[derive(Clone, Debug)]
pub struct SqlMetadataStore {
    pool: AnyPool,
    dialect: Dialect,
    /// The database file, for SQLite.
    file: Option<std::path::PathBuf>,
    /// Which changes make outbox rows, for which endpoints.
    subscriptions: std::sync::Arc<Subscriptions>,
}

/// The file of a `sqlite:` URL, unless it is an in-memory database.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = path.split('?').next()?;
    (!path.is_empty() && !path.contains(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// Hides the password of a database URL for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl SqlMetadataStore {
    /// Connects to `url` (`sqlite:…` or `postgres://…`). SQLite databases are created if
    /// missing and run in WAL mode with full fsync.
    pub async fn connect(url: &str, options: &SqlOptions) -> MetadataResult<SqlMetadataStore> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            MetadataError::Database(format!(
                "unsupported database URL {:?}: use sqlite:PATH or postgres://…",
                redact_url(url)
            ))
        })?;
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let mut pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout);
        // Every statement is bounded: a hung database becomes a 503, never a hung request.
        let lock_ms = options.lock_timeout.as_millis().max(1);
        let setup = match dialect {
            Dialect::Sqlite => format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {lock_ms};"
            ),
            Dialect::Postgres => format!(
                "SET lock_timeout = {lock_ms}; SET statement_timeout = {}",
                options.statement_timeout.as_millis().max(1)
            ),
        };
        pool = pool.after_connect(move |conn, _| {
            let setup = setup.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        });
        let pool = pool.connect_lazy(&url)?;
        let file = match dialect {
            Dialect::Sqlite => sqlite_file(&url),
            Dialect::Postgres => None,
        };
        Ok(SqlMetadataStore {
            pool,
            dialect,
            file,
            subscriptions: Default::default(),
        })
    }

    /// The same store, writing outbox rows for `subscriptions` from now on.
    pub fn with_subscriptions(mut self, subscriptions: Subscriptions) -> SqlMetadataStore {
        self.subscriptions = std::sync::Arc::new(subscriptions);
        self
    }

    /// The database this store talks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> MetadataResult<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(errors::migration_failed)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn ping(&self) -> MetadataResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn free_space(&self) -> MetadataResult<Option<u64>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| std::path::PathBuf::from("."), |d| d.to_owned());
        tokio::task::spawn_blocking(move || crate::storage::fs::free_bytes(&dir))
            .await
            .map_err(|e| MetadataError::Database(e.to_string()))?
            .map(Some)
            .map_err(|e| {
                MetadataError::Unavailable(format!("free space of {}: {e}", file.display()))
            })
    }

    fn pool_usage(&self) -> PoolUsage {
        let open = self.pool.size();
        PoolUsage {
            open,
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(open),
            max: self.pool.options().get_max_connections(),
        }
    }
}

#[async_trait]
impl MetadataStore for SqlMetadataStore {
    // The store and its pool (this file).
    async fn ping(&self) -> MetadataResult<()> {
        self.ping().await
    }

    async fn free_space(&self) -> MetadataResult<Option<u64>> {
        self.free_space().await
    }

    fn pool_usage(&self) -> Option<PoolUsage> {
        Some(self.pool_usage())
    }

    // gc.rs
    async fn census(&self) -> MetadataResult<Census> {
        self.census().await
    }

    // repositories.rs
    async fn repository_exists(&self, repository: &RepositoryName) -> MetadataResult<bool> {
        self.repository_exists(repository).await
    }

    async fn repositories(&self, page: Page<'_>) -> MetadataResult<Vec<String>> {
        self.repositories(page).await
    }

    // blobs.rs
    async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<Option<BlobRecord>> {
        self.blob(repository, digest).await
    }

    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<Option<BlobRecord>> {
        self.mount_blob(repository, digest, from, announce, now)
            .await
    }

    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<bool> {
        self.unlink_blob(repository, digest, origin, now).await
    }

    // uploads.rs
    async fn upload_count(&self) -> MetadataResult<u64> {
        self.upload_count().await
    }

    async fn create_upload(&self, session: &UploadSession) -> MetadataResult<()> {
        self.create_upload(session).await
    }

    async fn upload(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        self.upload(id).await
    }

    async fn upload_settled(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        self.upload_settled(id).await
    }

    async fn reserve_part_number(&self, id: &str) -> MetadataResult<u32> {
        self.reserve_part_number(id).await
    }

    async fn checkpoint_upload(
        &self,
        id: &str,
        expected_offset: u64,
        checkpoint: UploadCheckpoint<'_>,
    ) -> MetadataResult<SessionUpdate> {
        self.checkpoint_upload(id, expected_offset, checkpoint)
            .await
    }

    async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>> {
        self.upload_parts(id).await
    }

    async fn upload_staged(&self, id: &str) -> MetadataResult<(u64, Vec<u8>)> {
        self.upload_staged(id).await
    }

    async fn promote_staged(
        &self,
        id: &str,
        from: u64,
        to: u64,
        part: &PartRecord,
    ) -> MetadataResult<bool> {
        self.promote_staged(id, from, to, part).await
    }

    async fn begin_commit(
        &self,
        id: &str,
        expected_offset: u64,
        now: i64,
    ) -> MetadataResult<SessionUpdate> {
        self.begin_commit(id, expected_offset, now).await
    }

    // blobs.rs (publishing an upload's blob ends its session)
    async fn commit_blob(
        &self,
        id: &str,
        blob: &BlobRecord,
        replacing: Option<&str>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<BlobCommit> {
        self.commit_blob(id, blob, replacing, announce, now).await
    }

    // uploads.rs
    async fn cancel_upload(&self, id: &str, now: i64) -> MetadataResult<Option<Garbage>> {
        self.cancel_upload(id, now).await
    }

    async fn expire_uploads(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<u64> {
        self.expire_uploads(cutoff, limit, now).await
    }

    async fn expired_upload_count(&self, cutoff: i64) -> MetadataResult<u64> {
        self.expired_upload_count(cutoff).await
    }

    // gc.rs
    async fn garbage(&self, limit: u32) -> MetadataResult<Vec<Garbage>> {
        self.garbage(limit).await
    }

    async fn forget_garbage(&self, id: i64) -> MetadataResult<()> {
        self.forget_garbage(id).await
    }

    // blobs.rs
    async fn stored_blob(&self, digest: &Digest) -> MetadataResult<Option<BlobRecord>> {
        self.stored_blob(digest).await
    }

    async fn list_blobs(
        &self,
        repository: Option<&RepositoryName>,
        after: Option<&Digest>,
        limit: u32,
    ) -> MetadataResult<Vec<BlobRecord>> {
        self.list_blobs(repository, after, limit).await
    }

    async fn blob_totals(&self, repository: Option<&RepositoryName>) -> MetadataResult<(u64, u64)> {
        self.blob_totals(repository).await
    }

    // manifests.rs
    async fn dangling_references(
        &self,
        repository: Option<&RepositoryName>,
        limit: u32,
    ) -> MetadataResult<Vec<DanglingReference>> {
        self.dangling_references(repository, limit).await
    }

    // blobs.rs
    async fn forget_blob(&self, digest: &Digest, now: i64) -> MetadataResult<Option<Garbage>> {
        self.forget_blob(digest, now).await
    }

    // manifests.rs
    async fn put_manifest(&self, manifest: NewManifest<'_>) -> MetadataResult<PutManifestOutcome> {
        self.put_manifest(manifest).await
    }

    async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> MetadataResult<Option<ManifestRecord>> {
        self.manifest(repository, reference).await
    }

    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        immutable: TagGuard<'_>,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<ManifestDeletion> {
        self.delete_manifest(repository, digest, immutable, origin, now)
            .await
    }

    async fn delete_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<bool> {
        self.delete_tag(repository, tag, origin, now).await
    }

    async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> MetadataResult<Option<Vec<String>>> {
        self.tags(repository, page).await
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: Page<'_>,
    ) -> MetadataResult<Vec<ReferrerRecord>> {
        self.referrers(repository, subject, artifact_type, page)
            .await
    }

    // browse.rs
    async fn search_repositories(
        &self,
        needle: &str,
        page: Page<'_>,
    ) -> MetadataResult<Vec<String>> {
        self.search_repositories(needle, page).await
    }

    async fn recent_tags(
        &self,
        repository: &RepositoryName,
        before: Option<PushedBefore<'_>>,
        limit: u32,
    ) -> MetadataResult<Option<Vec<ListedManifest>>> {
        self.recent_tags(repository, before, limit).await
    }

    async fn untagged_manifests(
        &self,
        repository: &RepositoryName,
        limit: u32,
    ) -> MetadataResult<Vec<ListedManifest>> {
        self.untagged_manifests(repository, limit).await
    }

    async fn manifests_among(
        &self,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> MetadataResult<Vec<ManifestRecord>> {
        self.manifests_among(repository, digests).await
    }

    async fn tags_naming(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        limit: u32,
    ) -> MetadataResult<Vec<String>> {
        self.tags_naming(repository, digest, limit).await
    }

    // gc.rs
    async fn collect_links(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected> {
        self.collect_links(cutoff, limit, now).await
    }

    async fn collect_blobs(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected> {
        self.collect_blobs(cutoff, limit, now).await
    }

    async fn collect_untagged_manifests(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
        self.collect_untagged_manifests(cutoff, limit, now).await
    }

    async fn collect_preview(
        &self,
        cutoff: i64,
        untagged_cutoff: Option<i64>,
    ) -> MetadataResult<Collected> {
        self.collect_preview(cutoff, untagged_cutoff).await
    }

    // mirror.rs
    async fn mirror_tag_checked(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> MetadataResult<Option<i64>> {
        self.mirror_tag_checked(repository, tag).await
    }

    async fn record_mirror_tag_check(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        at: i64,
    ) -> MetadataResult<()> {
        self.record_mirror_tag_check(repository, tag, at).await
    }

    async fn claim_mirror_fetch(
        &self,
        digest: &Digest,
        claim: &MirrorFetchClaim,
        now: i64,
    ) -> MetadataResult<bool> {
        self.claim_mirror_fetch(digest, claim, now).await
    }

    async fn mirror_fetch_claim(
        &self,
        digest: &Digest,
    ) -> MetadataResult<Option<MirrorFetchClaim>> {
        self.mirror_fetch_claim(digest).await
    }

    async fn release_mirror_fetch(&self, digest: &Digest, owner: &str) -> MetadataResult<()> {
        self.release_mirror_fetch(digest, owner).await
    }

    async fn keep_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        upstream: &str,
        at: i64,
    ) -> MetadataResult<()> {
        self.keep_mirrored_manifest(repository, digest, upstream, at)
            .await
    }

    async fn disown_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<()> {
        self.disown_mirrored_manifest(repository, digest).await
    }

    async fn record_mirror_pulls(&self, pulls: &[MirrorPull]) -> MetadataResult<()> {
        self.record_mirror_pulls(pulls).await
    }

    async fn evict_unpulled_manifests(
        &self,
        upstream: &str,
        cutoff: i64,
        limit: u32,
        now: i64,
        apply: bool,
    ) -> MetadataResult<u64> {
        self.evict_unpulled_manifests(upstream, cutoff, limit, now, apply)
            .await
    }

    // events.rs
    fn announces(&self, action: EventAction) -> bool {
        self.announces(action)
    }

    async fn announce(&self, events: &[NewEvent]) -> MetadataResult<()> {
        self.announce(events).await
    }

    async fn claim_event_endpoint(
        &self,
        endpoint: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> MetadataResult<EndpointClaim> {
        self.claim_event_endpoint(endpoint, owner, lease_until, now)
            .await
    }

    async fn due_events(
        &self,
        endpoint: &str,
        now: i64,
        limit: u32,
    ) -> MetadataResult<Vec<OutboxEvent>> {
        self.due_events(endpoint, now, limit).await
    }

    async fn start_event_attempts(&self, seqs: &[i64]) -> MetadataResult<()> {
        self.start_event_attempts(seqs).await
    }

    async fn settle_events(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        now: i64,
    ) -> MetadataResult<()> {
        self.settle_events(outcomes, now).await
    }

    async fn event_backlog(&self, with_delivered: bool) -> MetadataResult<Vec<EndpointBacklog>> {
        self.event_backlog(with_delivered).await
    }

    async fn outbox_events(&self, query: OutboxQuery<'_>) -> MetadataResult<Vec<OutboxEvent>> {
        self.outbox_events(query).await
    }

    async fn replay_events(
        &self,
        endpoint: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> MetadataResult<u64> {
        self.replay_events(endpoint, from, to, now).await
    }

    async fn prune_events(
        &self,
        delivered_before: i64,
        dead_before: i64,
        limit: u32,
    ) -> MetadataResult<u64> {
        self.prune_events(delivered_before, dead_before, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::{SqlMetadataStore, SqlOptions, redact_url};
    use crate::metadata::UploadSession;
    use crate::oci::{DigestAlgorithm, RepositoryName};

    /// A migrated SQLite store in a directory of its own (kept while the directory lives).
    pub(super) async fn sqlite_store() -> (tempfile::TempDir, SqlMetadataStore) {
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("berth.db").display());
        let options = SqlOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        };
        let store = SqlMetadataStore::connect(&url, &options).await.unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// A session nothing was written to yet.
    pub(super) fn new_session(id: &str, repository: &str) -> UploadSession {
        UploadSession {
            id: id.to_owned(),
            repository: RepositoryName::parse(repository).unwrap(),
            offset: 0,
            algorithm: DigestAlgorithm::Sha256,
            hash_state: Vec::new(),
            store_state: String::new(),
            staged_len: 0,
            committing: false,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://berth:s3cret@db:5432/berth"),
            "postgres://berth:***@db:5432/berth"
        );
        assert_eq!(redact_url("sqlite:berth.db"), "sqlite:berth.db");
        assert_eq!(redact_url("postgres://db/berth"), "postgres://db/berth");
    }
}
