//! The metadata store on SQLite or Postgres.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the SQL is common
//! except for a handful of statements chosen by [`Dialect`]. Each backend has its own
//! migrations (`migrations/sqlite`, `migrations/postgres`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Row};

use super::{
    BlobCommit, BlobRecord, Census, Collected, DanglingKind, DanglingReference, Garbage,
    ManifestDeletion, ManifestRecord, MetadataError, MetadataResult, MetadataStore, NewManifest,
    Page, PoolUsage, PutManifestOutcome, ReferrerRecord, SessionUpdate, TagGuard, UploadCheckpoint,
    UploadSession,
};
use crate::oci::{Digest, DigestAlgorithm, Reference, RepositoryName, Tag};
use crate::storage::PartRecord;

/// Which SQL database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// Postgres.
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL, if Berth supports it.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// A subquery of the strings of the JSON array bound to `$n`, as column `value`.
    fn strings(self, n: u8) -> String {
        match self {
            Dialect::Sqlite => format!("(SELECT j.value AS value FROM json_each(${n}) AS j)"),
            Dialect::Postgres => {
                format!("(SELECT j.value FROM jsonb_array_elements_text(${n}::jsonb) AS j(value))")
            }
        }
    }

    /// A subquery of the (repository id, digest) pairs of [`json_pairs`] bound to `$n`.
    fn pairs(self, n: u8) -> String {
        match self {
            Dialect::Sqlite => format!(
                "(SELECT json_extract(j.value, '$.r') AS r, json_extract(j.value, '$.d') AS d \
                 FROM json_each(${n}) AS j)"
            ),
            Dialect::Postgres => {
                format!(
                    "(SELECT x.r, x.d FROM jsonb_to_recordset(${n}::jsonb) AS x(r BIGINT, d TEXT))"
                )
            }
        }
    }

    /// Row locks for the rest of the transaction. SQLite needs none: `BEGIN IMMEDIATE` makes
    /// each write transaction the only one. On Postgres they order a statement after every
    /// transaction that changed the rows it reads, because each statement of a `READ
    /// COMMITTED` transaction sees what committed before it started.
    fn lock(self, clause: &'static str) -> &'static str {
        self.pick("", clause)
    }
}

/// The manifests the collector may delete as untagged (`m`, created at or before `$1`): no
/// tag names them, no index of their repository lists them, and their subject, if they have
/// one, is not in their repository.
const UNTAGGED: &str = "m.created_at <= $1 \
    AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) \
    AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.repository_id = m.repository_id AND c.child_digest = m.digest) \
    AND (m.subject IS NULL OR NOT EXISTS \
         (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject))";

/// Connection settings.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long a query waits for a connection before the database counts as unavailable.
    pub acquire_timeout: Duration,
    /// How long a statement waits for a lock another process holds (a backup, a migration,
    /// an exclusive transaction) before the database counts as unavailable.
    pub lock_timeout: Duration,
    /// How long a statement may run before it is cancelled (Postgres; SQLite statements are
    /// bounded by the lock timeout).
    pub statement_timeout: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// A metadata store in SQLite or Postgres.
#[derive(Clone, Debug)]
pub struct SqlMetadataStore {
    pool: AnyPool,
    dialect: Dialect,
    /// The database file, for SQLite.
    file: Option<std::path::PathBuf>,
}

/// The file of a `sqlite:` URL, unless it is an in-memory database.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = path.split('?').next()?;
    (!path.is_empty() && !path.contains(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// What a database error code means for Berth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorClass {
    /// Out of disk space or quota.
    Full,
    /// Transient: locked, busy, shutting down, overloaded, or a lost serialization race;
    /// the same request can succeed if retried.
    Transient,
    /// Anything else.
    Other,
}

/// Classifies a database error code: Postgres SQLSTATEs (always five characters, often all
/// digits) and SQLite result codes (at most four digits; the primary code is the low byte).
fn classify(code: &str) -> ErrorClass {
    if code.len() < 5
        && let Ok(sqlite) = code.parse::<u32>()
    {
        return match sqlite & 0xff {
            // SQLITE_FULL.
            13 => ErrorClass::Full,
            // SQLITE_BUSY, SQLITE_LOCKED.
            5 | 6 => ErrorClass::Transient,
            _ => ErrorClass::Other,
        };
    }
    match code {
        // disk_full.
        "53100" => ErrorClass::Full,
        // out_of_memory, too_many_connections, configuration_limit_exceeded;
        // admin_shutdown, crash_shutdown, cannot_connect_now;
        // serialization_failure, deadlock_detected; lock_not_available; query_canceled
        // (statement or lock timeout); connection failures (class 08).
        "53200" | "53300" | "53400" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03"
        | "57014" => ErrorClass::Transient,
        c if c.starts_with("08") => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

fn db_err(e: sqlx::Error) -> MetadataError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            MetadataError::Unavailable(e.to_string())
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            MetadataError::Interrupted(e.to_string())
        }
        sqlx::Error::Database(ref db) => match db.code().as_deref().map(classify) {
            Some(ErrorClass::Full) => MetadataError::Full(e.to_string()),
            Some(ErrorClass::Transient) => MetadataError::Interrupted(e.to_string()),
            _ => MetadataError::Database(e.to_string()),
        },
        other => MetadataError::Database(other.to_string()),
    }
}

/// Runs a read (an expression that awaits it), and once more after a moment if the database
/// was interrupted (a connection lost to a restart, an administrator's shutdown): reads are safe
/// to repeat, and the pool hands out a fresh connection.
macro_rules! retrying {
    ($read:expr) => {{
        match $read {
            Err(MetadataError::Interrupted(first)) => {
                tracing::debug!(error = %first, "database read interrupted; trying once more");
                tokio::time::sleep(Duration::from_millis(100)).await;
                $read
            }
            other => other,
        }
    }};
}

/// A statement assembled from this module's constant fragments ([`Dialect`]'s subqueries and
/// lock clauses, [`UNTAGGED`]); every value in it is a bound parameter.
fn built(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(row: &AnyRow, column: &str) -> MetadataResult<u64> {
    let v: i64 = row.try_get(column).map_err(db_err)?;
    u64::try_from(v).map_err(|_| MetadataError::Corrupt(format!("negative {column}: {v}")))
}

fn digest_of(row: &AnyRow, column: &str) -> MetadataResult<Digest> {
    let s: String = row.try_get(column).map_err(db_err)?;
    Digest::parse(&s).map_err(|e| MetadataError::Corrupt(format!("{column}: {e}")))
}

/// A blob row (`size`, `storage_key`) of `digest`.
fn blob_record(row: &AnyRow, digest: Digest) -> MetadataResult<BlobRecord> {
    Ok(BlobRecord {
        digest,
        size: u64_of(row, "size")?,
        storage_key: row.try_get("storage_key").map_err(db_err)?,
    })
}

fn limit_of(page: Page<'_>) -> i64 {
    page.limit.map(i64::from).unwrap_or(i64::MAX)
}

/// `[{"r": repository id, "d": digest}, …]`, the form [`Dialect::pairs`] reads.
fn json_pairs(pairs: &[(i64, String)]) -> String {
    let list: Vec<_> = pairs
        .iter()
        .map(|(r, d)| serde_json::json!({ "r": r, "d": d }))
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The (`repository_id`, `digest`) of each row.
fn pairs_of(rows: &[AnyRow]) -> MetadataResult<Vec<(i64, String)>> {
    rows.iter()
        .map(|r| Ok((r.try_get("repository_id")?, r.try_get("digest")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err)
}

/// The `digest` of each row.
fn digests_of(rows: &[AnyRow]) -> MetadataResult<Vec<String>> {
    rows.iter()
        .map(|r| r.try_get("digest"))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err)
}

fn json_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn json_list(digests: &[Digest]) -> String {
    serde_json::to_string(&digests.iter().map(Digest::as_str).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned())
}

fn session_of(row: &AnyRow) -> MetadataResult<UploadSession> {
    let repository: String = row.try_get("repository").map_err(db_err)?;
    let algorithm: String = row.try_get("algorithm").map_err(db_err)?;
    Ok(UploadSession {
        id: row.try_get("id").map_err(db_err)?,
        repository: RepositoryName::parse(&repository)
            .map_err(|e| MetadataError::Corrupt(e.to_string()))?,
        offset: u64_of(row, "byte_offset")?,
        algorithm: DigestAlgorithm::from_name(&algorithm)
            .ok_or_else(|| MetadataError::Corrupt(format!("hash algorithm {algorithm:?}")))?,
        hash_state: row.try_get("hash_state").map_err(db_err)?,
        store_state: row.try_get("store_state").map_err(db_err)?,
        committing: row.try_get::<i64, _>("committing").map_err(db_err)? != 0,
        staged_len: u64_of(row, "staged_len")?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

const SELECT_SESSION: &str = "SELECT id, repository, byte_offset, algorithm, hash_state, store_state, \
     committing, created_at, updated_at, \
     (SELECT COALESCE(SUM(length(s.bytes)), 0) FROM upload_staged s WHERE s.upload_id = upload_sessions.id) \
     AS staged_len FROM upload_sessions WHERE id = $1";

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
        let pool = pool.connect_lazy(&url).map_err(db_err)?;
        let file = match dialect {
            Dialect::Sqlite => sqlite_file(&url),
            Dialect::Postgres => None,
        };
        Ok(SqlMetadataStore {
            pool,
            dialect,
            file,
        })
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
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_err(e),
            other => MetadataError::Database(format!("migration failed: {other}")),
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_tx(&self) -> MetadataResult<WriteTx> {
        let conn = self.pool.acquire().await.map_err(db_err)?;
        // Guarded before `BEGIN` is sent: if this future is dropped while `BEGIN` is on its
        // way (a request cancelled, a deadline passed), the statement still runs, and the
        // connection must then be closed rather than pooled with a transaction open, in which
        // the next borrower's statements would never commit.
        let mut tx = WriteTx {
            conn,
            finished: false,
            sent_bytes: 0,
        };
        let begin = match self.dialect {
            // Taking the write lock up front makes concurrent writers queue on the busy
            // timeout instead of failing when a read transaction tries to upgrade.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        sqlx::raw_sql(begin)
            .execute(&mut *tx.conn)
            .await
            .map_err(db_err)?;
        Ok(tx)
    }

    async fn insert_part(tx: &mut WriteTx, id: &str, part: &PartRecord) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO upload_parts (upload_id, part_number, size, etag, start_offset) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(i64::from(part.number))
        .bind(i64_of(part.size))
        .bind(part.etag.as_str())
        .bind(part.start.map(i64_of))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn ensure_repository(
        tx: &mut WriteTx,
        repository: &RepositoryName,
        now: i64,
    ) -> MetadataResult<i64> {
        if let Some(row) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?
        {
            return row.try_get("id").map_err(db_err);
        }
        sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(repository.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?
            .try_get("id")
            .map_err(db_err)
    }

    /// Inserts a row unless one with its key exists, and then holds the existing row
    /// (`FOR SHARE` on Postgres) until `tx` ends, so that nobody deletes it under what `tx`
    /// writes next. A conflicting insert by a concurrent transaction is waited for, and its row
    /// may be deleted (by the collector, by a client) between the conflict and the hold: the
    /// row is then inserted again. Whether this insert made the row.
    async fn insert_or_hold<'q>(
        tx: &mut WriteTx,
        insert: impl Fn() -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
        hold: impl Fn() -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> MetadataResult<bool> {
        // Each retry needs another transaction to delete the row in that instant: a row that
        // keeps vanishing is contention to report, not to spin on.
        for _ in 0..4 {
            let inserted = insert().execute(&mut **tx).await.map_err(db_err)?;
            if inserted.rows_affected() > 0 {
                return Ok(true);
            }
            if hold()
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_err)?
                .is_some()
            {
                return Ok(false);
            }
        }
        Err(MetadataError::Interrupted(
            "a row was deleted each time it was about to be reused; retry".to_owned(),
        ))
    }

    /// Queues storage for removal in `tx`: an upload's (`key` none) or one object's.
    async fn queue_garbage(
        tx: &mut WriteTx,
        upload_id: &str,
        store_state: &str,
        key: Option<&str>,
        now: i64,
    ) -> MetadataResult<i64> {
        sqlx::query(
            "INSERT INTO storage_garbage (upload_id, store_state, storage_key, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(upload_id)
        .bind(store_state)
        .bind(key)
        .bind(now)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?
        .try_get("id")
        .map_err(db_err)
    }

    async fn missing(
        &self,
        tx: &mut WriteTx,
        sql: &'static str,
        repository_id: i64,
        digests: &[Digest],
    ) -> MetadataResult<Vec<Digest>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql)
            .bind(repository_id)
            .bind(json_list(digests))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| digest_of(r, "value")).collect()
    }

    async fn insert_references(
        &self,
        tx: &mut WriteTx,
        sql: &'static str,
        repository_id: i64,
        manifest: &Digest,
        digests: &[Digest],
    ) -> MetadataResult<()> {
        if digests.is_empty() {
            return Ok(());
        }
        sqlx::query(sql)
            .bind(repository_id)
            .bind(manifest.as_str())
            .bind(json_list(digests))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl SqlMetadataStore {
    /// Asks the collector to look at a link again (`queued_at` = `now`): made by an upload or
    /// a mount, it may never be referenced. Taken first in every transaction that makes a
    /// link, as the collector takes its claimed reviews first: both then wait on the same row.
    async fn review_link(
        tx: &mut WriteTx,
        repository_id: i64,
        digest: &str,
        now: i64,
    ) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO gc_link_reviews (repository_id, digest, queued_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET queued_at = excluded.queued_at",
        )
        .bind(repository_id)
        .bind(digest)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Links a blob to a repository, or renews an existing link's time so that a collector
    /// reviewing it keeps it (and, on Postgres, waits for a collector deleting it, then makes
    /// it again: `ON CONFLICT DO UPDATE` always inserts or updates).
    async fn link_blob(
        tx: &mut WriteTx,
        repository_id: i64,
        digest: &str,
        now: i64,
    ) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(repository_id)
        .bind(digest)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Deletes the manifests of the [`json_pairs`] list `pairs` with their tags and references,
    /// queueing the links of their blobs for review, and the blobs themselves where their
    /// repository holds no link (unlinked through the API while the manifest kept them: no
    /// link review will ever reach them). Returns how many were deleted.
    async fn forget_manifests(
        &self,
        tx: &mut WriteTx,
        pairs: &str,
        now: i64,
    ) -> MetadataResult<u64> {
        let list = self.dialect.pairs(1);
        sqlx::query(built(format!(
            "INSERT INTO gc_link_reviews (repository_id, digest, queued_at) \
             SELECT DISTINCT mb.repository_id, mb.blob_digest, $2 FROM manifest_blobs mb \
             WHERE (mb.repository_id, mb.manifest_digest) IN {list} \
             ON CONFLICT (repository_id, digest) DO UPDATE SET queued_at = excluded.queued_at"
        )))
        .bind(pairs)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        sqlx::query(built(format!(
            "INSERT INTO gc_blob_reviews (digest, queued_at) \
             SELECT DISTINCT mb.blob_digest, $2 FROM manifest_blobs mb \
             WHERE (mb.repository_id, mb.manifest_digest) IN {list} \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb \
                 WHERE rb.repository_id = mb.repository_id AND rb.digest = mb.blob_digest) \
             ON CONFLICT (digest) DO UPDATE SET queued_at = excluded.queued_at"
        )))
        .bind(pairs)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        // Explicit deletes of the dependent rows keep this independent of cascade settings.
        for sql in [
            format!("DELETE FROM tags WHERE (repository_id, manifest_digest) IN {list}"),
            format!("DELETE FROM manifest_blobs WHERE (repository_id, manifest_digest) IN {list}"),
            format!("DELETE FROM manifest_children WHERE (repository_id, parent_digest) IN {list}"),
        ] {
            sqlx::query(built(sql.clone()))
                .bind(pairs)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
        let deleted = sqlx::query(built(format!(
            "DELETE FROM manifests WHERE (repository_id, digest) IN {list}"
        )))
        .bind(pairs)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(deleted.rows_affected())
    }

    /// Deletes those of `digests` whose blob no link and no manifest references, queueing
    /// their objects as storage garbage. The rows are locked first, so that the check sees
    /// every link made by a transaction that held them (uploads and mounts lock the blob row
    /// before linking it).
    async fn delete_unreferenced_blobs(
        &self,
        tx: &mut WriteTx,
        digests: &[String],
        now: i64,
    ) -> MetadataResult<Collected> {
        let mut collected = Collected::default();
        if digests.is_empty() {
            return Ok(collected);
        }
        let list = json_strings(digests);
        if self.dialect == Dialect::Postgres {
            sqlx::query(built(format!(
                "SELECT 1 FROM blobs WHERE digest IN {} ORDER BY digest FOR UPDATE",
                self.dialect.strings(1)
            )))
            .bind(&list)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        let rows = sqlx::query(built(format!(
            "DELETE FROM blobs WHERE digest IN {} \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest) \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest) \
             RETURNING storage_key, size",
            self.dialect.strings(1)
        )))
        .bind(&list)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.push(row.try_get::<String, _>("storage_key").map_err(db_err)?);
            collected.bytes += u64_of(row, "size")?;
        }
        collected.blobs = keys.len() as u64;
        if !keys.is_empty() {
            sqlx::query(built(format!(
                "INSERT INTO storage_garbage (upload_id, store_state, storage_key, created_at) \
                 SELECT '', '', k.value, $2 FROM {} AS k",
                self.dialect.strings(1)
            )))
            .bind(json_strings(&keys))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        Ok(collected)
    }
}

/// A write transaction on a pooled connection of its own. Whatever does not end in a
/// successful `COMMIT` or `ROLLBACK` (an error, a dropped request) closes the connection
/// instead of returning it to the pool: a `COMMIT` that fails (SQLite's "database or disk is
/// full") can leave a transaction half-open in the connection, and sqlx's own transactions
/// then hand the connection on in a state every later write fails in.
pub(crate) struct WriteTx {
    conn: PoolConnection<Any>,
    finished: bool,
    /// Upload bytes the transaction sends (see [`WriteTx::finish`]).
    sent_bytes: usize,
}

/// Upload bytes past which a connection's buffers are shrunk when it returns to the pool.
const SHRINK_AFTER_UPLOAD_BYTES: usize = 256 * 1024;

/// Shrinks the buffers of a connection that sent or received `bytes` of upload data: a pooled
/// connection keeps its buffers for its life, so staged bytes would otherwise pin up to a
/// part's worth in each connection, outside the part-buffer budget. Growing them again for
/// the next staged chunk costs far less than the commit that follows.
fn shrink_after(conn: &mut AnyConnection, bytes: usize) {
    if bytes > SHRINK_AFTER_UPLOAD_BYTES {
        conn.shrink_buffers();
    }
}

impl WriteTx {
    async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.finish();
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.finish();
        Ok(())
    }

    fn finish(&mut self) {
        shrink_after(&mut self.conn, self.sent_bytes);
        self.finished = true;
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
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

#[async_trait]
impl MetadataStore for SqlMetadataStore {
    async fn ping(&self) -> MetadataResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
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

    fn pool_usage(&self) -> Option<PoolUsage> {
        let open = self.pool.size();
        Some(PoolUsage {
            open,
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(open),
            max: self.pool.options().get_max_connections(),
        })
    }

    async fn upload_count(&self) -> MetadataResult<u64> {
        retrying!(
            async {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM upload_sessions")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(u64::try_from(count).unwrap_or(0))
            }
            .await
        )
    }

    async fn census(&self) -> MetadataResult<Census> {
        retrying!(
            async {
                let row = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM repositories) AS repositories, \
                     (SELECT COUNT(*) FROM blobs) AS blobs, \
                     (SELECT COUNT(*) FROM repository_blobs) AS links, \
                     (SELECT COUNT(*) FROM manifests) AS manifests, \
                     (SELECT COUNT(*) FROM tags) AS tags, \
                     (SELECT COUNT(*) FROM upload_sessions) AS sessions, \
                     (SELECT COUNT(*) FROM upload_staged) AS staged, \
                     (SELECT COUNT(*) FROM upload_parts) AS parts, \
                     (SELECT COUNT(*) FROM storage_garbage) AS garbage, \
                     (SELECT COUNT(*) FROM gc_link_reviews) AS link_reviews, \
                     (SELECT COUNT(*) FROM gc_blob_reviews) AS blob_reviews",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(Census {
                    repositories: u64_of(&row, "repositories")?,
                    blobs: u64_of(&row, "blobs")?,
                    links: u64_of(&row, "links")?,
                    manifests: u64_of(&row, "manifests")?,
                    tags: u64_of(&row, "tags")?,
                    sessions: u64_of(&row, "sessions")?,
                    staged: u64_of(&row, "staged")?,
                    parts: u64_of(&row, "parts")?,
                    garbage: u64_of(&row, "garbage")?,
                    link_reviews: u64_of(&row, "link_reviews")?,
                    blob_reviews: u64_of(&row, "blob_reviews")?,
                })
            }
            .await
        )
    }

    async fn repository_exists(&self, repository: &RepositoryName) -> MetadataResult<bool> {
        retrying!(
            async {
                Ok(sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
                    .bind(repository.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .is_some())
            }
            .await
        )
    }

    async fn repositories(&self, page: Page<'_>) -> MetadataResult<Vec<String>> {
        retrying!(
            async {
                let rows = sqlx::query(
                    "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                )
                .bind(page.after.unwrap_or(""))
                .bind(limit_of(page))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| r.try_get("name").map_err(db_err))
                    .collect()
            }
            .await
        )
    }

    async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<Option<BlobRecord>> {
        retrying!(
            async {
                let row = sqlx::query(
                    "SELECT b.size, b.storage_key FROM repository_blobs rb \
                 JOIN repositories r ON r.id = rb.repository_id \
                 JOIN blobs b ON b.digest = rb.digest \
                 WHERE r.name = $1 AND rb.digest = $2",
                )
                .bind(repository.as_str())
                .bind(digest.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.map(|r| blob_record(&r, digest.clone())).transpose()
            }
            .await
        )
    }

    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
        now: i64,
    ) -> MetadataResult<Option<BlobRecord>> {
        let mut tx = self.write_tx().await?;
        let repository_id = Self::ensure_repository(&mut tx, repository, now).await?;
        Self::review_link(&mut tx, repository_id, digest.as_str(), now).await?;
        // The blob row is locked so that the collector cannot delete it before the link
        // commits; a blob it deleted first is not found.
        let from_sql = format!(
            "SELECT b.size, b.storage_key FROM repository_blobs rb \
             JOIN repositories r ON r.id = rb.repository_id \
             JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = $1 AND rb.digest = $2 {}",
            self.dialect.lock("FOR SHARE OF b")
        );
        let any_sql = format!(
            "SELECT b.size, b.storage_key FROM blobs b WHERE b.digest = $1 \
             AND EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest) {}",
            self.dialect.lock("FOR SHARE")
        );
        let source = match from {
            Some(from) => sqlx::query(built(from_sql.clone()))
                .bind(from.as_str())
                .bind(digest.as_str()),
            None => sqlx::query(built(any_sql.clone())).bind(digest.as_str()),
        }
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(source) = source else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        };
        let record = blob_record(&source, digest.clone())?;
        Self::link_blob(&mut tx, repository_id, digest.as_str(), now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(record))
    }

    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        now: i64,
    ) -> MetadataResult<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO gc_blob_reviews (digest, queued_at) VALUES ($1, $2) \
             ON CONFLICT (digest) DO UPDATE SET queued_at = excluded.queued_at",
        )
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn create_upload(&self, s: &UploadSession) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO upload_sessions (id, repository, byte_offset, algorithm, hash_state, \
             store_state, committing, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(s.id.as_str())
        .bind(s.repository.as_str())
        .bind(i64_of(s.offset))
        .bind(s.algorithm.name())
        .bind(s.hash_state.as_slice())
        .bind(s.store_state.as_str())
        .bind(i64::from(s.committing))
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn upload(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        retrying!(
            async {
                sqlx::query(SELECT_SESSION)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .as_ref()
                    .map(session_of)
                    .transpose()
            }
            .await
        )
    }

    async fn upload_settled(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        // A write transaction: SQLite's takes the database's write lock, and on Postgres the
        // row lock waits for a transaction still holding the row (one whose `COMMIT` is in
        // flight) to end.
        let mut tx = self.write_tx().await?;
        let session = sqlx::query(built(format!(
            "{SELECT_SESSION} {}",
            self.dialect.lock("FOR UPDATE OF upload_sessions")
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(session_of)
        .transpose()?;
        tx.rollback().await.map_err(db_err)?;
        Ok(session)
    }

    async fn reserve_part_number(&self, id: &str) -> MetadataResult<u32> {
        let row = sqlx::query(
            "UPDATE upload_sessions SET next_part = next_part + 1 WHERE id = $1 RETURNING next_part - 1 AS part",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .ok_or_else(|| MetadataError::Database(format!("upload session {id} is gone")))?;
        let part: i64 = row.try_get("part").map_err(db_err)?;
        u32::try_from(part).map_err(|_| MetadataError::Corrupt(format!("part number {part}")))
    }

    async fn checkpoint_upload(
        &self,
        id: &str,
        expected_offset: u64,
        cp: UploadCheckpoint<'_>,
    ) -> MetadataResult<SessionUpdate> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE upload_sessions SET byte_offset = $1, algorithm = $2, hash_state = $3, \
             store_state = $4, updated_at = $5, committing = $8 \
             WHERE id = $6 AND byte_offset = $7 AND committing = 0",
        )
        .bind(i64_of(cp.offset))
        .bind(cp.algorithm.name())
        .bind(cp.hash_state)
        .bind(cp.store_state)
        .bind(cp.now)
        .bind(id)
        .bind(i64_of(expected_offset))
        .bind(i64::from(cp.claim))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if updated.rows_affected() == 0 {
            let current = sqlx::query("SELECT byte_offset FROM upload_sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            return match current {
                Some(row) => Ok(SessionUpdate::Conflict {
                    offset: u64_of(&row, "byte_offset")?,
                }),
                None => Ok(SessionUpdate::Gone),
            };
        }
        if cp.clear_staged {
            sqlx::query("DELETE FROM upload_staged WHERE upload_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        if let Some(bytes) = cp.staged {
            tx.sent_bytes += bytes.len();
            sqlx::query(
                "INSERT INTO upload_staged (upload_id, start_offset, bytes) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(i64_of(cp.offset - bytes.len() as u64))
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        if let Some(first) = cp.new_parts.iter().filter_map(|p| p.start).min() {
            sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1 AND start_offset >= $2")
                .bind(id)
                .bind(i64_of(first))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        for part in cp.new_parts {
            Self::insert_part(&mut tx, id, part).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(SessionUpdate::Saved)
    }

    async fn promote_staged(
        &self,
        id: &str,
        from: u64,
        to: u64,
        part: &PartRecord,
    ) -> MetadataResult<bool> {
        let mut tx = self.write_tx().await?;
        // Taking the session row first orders this against checkpoints of the same session.
        let lock = self.dialect.pick(
            "SELECT committing FROM upload_sessions WHERE id = $1",
            "SELECT committing FROM upload_sessions WHERE id = $1 FOR UPDATE",
        );
        let Some(session) = sqlx::query(lock)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            return Ok(false);
        };
        let committing: i64 = session.try_get("committing").map_err(db_err)?;
        let rows = sqlx::query(
            "SELECT start_offset, CAST(length(bytes) AS BIGINT) AS len FROM upload_staged \
             WHERE upload_id = $1 AND start_offset < $2 ORDER BY start_offset",
        )
        .bind(id)
        .bind(i64_of(to))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut end = from;
        for row in &rows {
            if u64_of(row, "start_offset")? != end {
                return Ok(false);
            }
            end += u64_of(row, "len")?;
        }
        if committing != 0 || rows.is_empty() || end != to {
            return Ok(false);
        }
        sqlx::query("DELETE FROM upload_staged WHERE upload_id = $1 AND start_offset < $2")
            .bind(id)
            .bind(i64_of(to))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Self::insert_part(&mut tx, id, part).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>> {
        retrying!(async {
            let rows = sqlx::query(
                "SELECT part_number, size, etag, start_offset FROM upload_parts WHERE upload_id = $1 ORDER BY part_number",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let number: i64 = r.try_get("part_number").map_err(db_err)?;
                    Ok(PartRecord {
                        number: u32::try_from(number)
                            .map_err(|_| MetadataError::Corrupt(format!("part number {number}")))?,
                        size: u64_of(r, "size")?,
                        etag: r.try_get("etag").map_err(db_err)?,
                        start: r
                            .try_get::<Option<i64>, _>("start_offset")
                            .map_err(db_err)?
                            .map(|s| s as u64),
                    })
                })
                .collect()
        }
        .await)
    }

    async fn upload_staged(&self, id: &str) -> MetadataResult<(u64, Vec<u8>)> {
        retrying!(
            async {
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                let rows = sqlx::query(
                    "SELECT start_offset, bytes FROM upload_staged WHERE upload_id = $1 ORDER BY start_offset",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
                let start = match rows.first() {
                    Some(row) => u64_of(row, "start_offset")?,
                    None => 0,
                };
                let mut staged = Vec::new();
                for row in &rows {
                    let bytes: Vec<u8> = row.try_get("bytes").map_err(db_err)?;
                    staged.extend_from_slice(&bytes);
                }
                shrink_after(&mut conn, staged.len());
                Ok((start, staged))
            }
            .await
        )
    }

    async fn begin_commit(
        &self,
        id: &str,
        expected_offset: u64,
        now: i64,
    ) -> MetadataResult<SessionUpdate> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE upload_sessions SET committing = 1, updated_at = $1 WHERE id = $2 AND byte_offset = $3",
        )
        .bind(now)
        .bind(id)
        .bind(i64_of(expected_offset))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let outcome = if updated.rows_affected() > 0 {
            SessionUpdate::Saved
        } else {
            match sqlx::query("SELECT byte_offset FROM upload_sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
            {
                Some(row) => SessionUpdate::Conflict {
                    offset: u64_of(&row, "byte_offset")?,
                },
                None => SessionUpdate::Gone,
            }
        };
        tx.commit().await.map_err(db_err)?;
        Ok(outcome)
    }

    async fn commit_blob(
        &self,
        id: &str,
        blob: &BlobRecord,
        replacing: Option<&str>,
        now: i64,
    ) -> MetadataResult<BlobCommit> {
        let mut tx = self.write_tx().await?;
        let Some(session) = sqlx::query(
            "DELETE FROM upload_sessions WHERE id = $1 AND committing = 1 RETURNING repository, store_state",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        else {
            return Ok(BlobCommit::SessionGone);
        };
        let repository: String = session.try_get("repository").map_err(db_err)?;
        let repository = RepositoryName::parse(&repository)
            .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
        let store_state: String = session.try_get("store_state").map_err(db_err)?;
        let repository_id = Self::ensure_repository(&mut tx, &repository, now).await?;
        Self::review_link(&mut tx, repository_id, blob.digest.as_str(), now).await?;
        // An existing row is kept from the collector until the link commits; one it is
        // deleting is waited for, and then this upload's bytes become the blob.
        let hold_sql = format!(
            "SELECT 1 FROM blobs WHERE digest = $1 {}",
            self.dialect.lock("FOR SHARE")
        );
        let inserted = Self::insert_or_hold(
            &mut tx,
            || {
                sqlx::query(
                    "INSERT INTO blobs (digest, size, storage_key, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING",
                )
                .bind(blob.digest.as_str())
                .bind(i64_of(blob.size))
                .bind(blob.storage_key.as_str())
                .bind(now)
            },
            || sqlx::query(built(hold_sql.clone())).bind(blob.digest.as_str()),
        )
        .await?;
        // A row whose bytes were found lost is pointed at this upload's (the row is held, so
        // the key compared is the one it names until the commit).
        let healed = match replacing.filter(|_| !inserted) {
            Some(lost) => {
                let moved = sqlx::query(
                    "UPDATE blobs SET storage_key = $1, size = $2 WHERE digest = $3 AND storage_key = $4",
                )
                .bind(blob.storage_key.as_str())
                .bind(i64_of(blob.size))
                .bind(blob.digest.as_str())
                .bind(lost)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if moved.rows_affected() > 0 {
                    Self::queue_garbage(&mut tx, "", "", Some(lost), now).await?;
                }
                moved.rows_affected() > 0
            }
            None => false,
        };
        let outcome = if inserted || healed {
            BlobCommit::Created
        } else {
            BlobCommit::Deduplicated {
                garbage_id: Self::queue_garbage(&mut tx, id, &store_state, None, now).await?,
            }
        };
        Self::link_blob(&mut tx, repository_id, blob.digest.as_str(), now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(outcome)
    }

    async fn cancel_upload(&self, id: &str, now: i64) -> MetadataResult<Option<Garbage>> {
        let mut tx = self.write_tx().await?;
        let Some(row) =
            sqlx::query("DELETE FROM upload_sessions WHERE id = $1 RETURNING store_state")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
        else {
            return Ok(None);
        };
        let store_state: String = row.try_get("store_state").map_err(db_err)?;
        let garbage_id = Self::queue_garbage(&mut tx, id, &store_state, None, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(Garbage {
            id: garbage_id,
            upload_id: id.to_owned(),
            store_state,
            storage_key: None,
        }))
    }

    async fn expire_uploads(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<u64> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "DELETE FROM upload_sessions WHERE id IN \
             (SELECT id FROM upload_sessions WHERE updated_at < $1 ORDER BY updated_at LIMIT $2) \
             AND updated_at < $1 RETURNING id, store_state",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for row in &rows {
            let id: String = row.try_get("id").map_err(db_err)?;
            let store_state: String = row.try_get("store_state").map_err(db_err)?;
            Self::queue_garbage(&mut tx, &id, &store_state, None, now).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(rows.len() as u64)
    }

    async fn expired_upload_count(&self, cutoff: i64) -> MetadataResult<u64> {
        retrying!(
            async {
                let row =
                    sqlx::query("SELECT COUNT(*) AS n FROM upload_sessions WHERE updated_at < $1")
                        .bind(cutoff)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                u64_of(&row, "n")
            }
            .await
        )
    }

    async fn garbage(&self, limit: u32) -> MetadataResult<Vec<Garbage>> {
        let rows = sqlx::query(
            "SELECT id, upload_id, store_state, storage_key FROM storage_garbage ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Garbage {
                    id: r.try_get("id").map_err(db_err)?,
                    upload_id: r.try_get("upload_id").map_err(db_err)?,
                    store_state: r.try_get("store_state").map_err(db_err)?,
                    storage_key: r.try_get("storage_key").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn stored_blob(&self, digest: &Digest) -> MetadataResult<Option<BlobRecord>> {
        retrying!(
            async {
                let row = sqlx::query("SELECT size, storage_key FROM blobs WHERE digest = $1")
                    .bind(digest.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.map(|r| blob_record(&r, digest.clone())).transpose()
            }
            .await
        )
    }

    async fn list_blobs(
        &self,
        repository: Option<&RepositoryName>,
        after: Option<&Digest>,
        limit: u32,
    ) -> MetadataResult<Vec<BlobRecord>> {
        let after = after.map_or("", Digest::as_str);
        let rows = match repository {
            None => sqlx::query(
                "SELECT digest, size, storage_key FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit)),
            Some(repository) => sqlx::query(
                "SELECT b.digest, b.size, b.storage_key FROM repository_blobs rb \
                 JOIN repositories r ON r.id = rb.repository_id \
                 JOIN blobs b ON b.digest = rb.digest \
                 WHERE r.name = $3 AND b.digest > $1 ORDER BY b.digest LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .bind(repository.as_str()),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| blob_record(r, digest_of(r, "digest")?))
            .collect()
    }

    async fn blob_totals(&self, repository: Option<&RepositoryName>) -> MetadataResult<(u64, u64)> {
        let row = match repository {
            None => sqlx::query(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM blobs",
            ),
            Some(repository) => sqlx::query(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes \
                 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
                 JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1",
            )
            .bind(repository.as_str()),
        }
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok((u64_of(&row, "n")?, u64_of(&row, "bytes")?))
    }

    async fn dangling_references(
        &self,
        repository: Option<&RepositoryName>,
        limit: u32,
    ) -> MetadataResult<Vec<DanglingReference>> {
        let name = repository.map_or("", RepositoryName::as_str);
        let blobs = sqlx::query(
            "SELECT r.name AS repository, mb.manifest_digest AS manifest, mb.blob_digest AS target, \
             CASE WHEN b.digest IS NULL THEN 'missing' ELSE 'unlinked' END AS kind \
             FROM manifest_blobs mb JOIN repositories r ON r.id = mb.repository_id \
             LEFT JOIN blobs b ON b.digest = mb.blob_digest \
             WHERE ($1 = '' OR r.name = $1) AND (b.digest IS NULL OR NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = mb.repository_id \
              AND rb.digest = mb.blob_digest)) \
             ORDER BY r.name, mb.manifest_digest, mb.blob_digest LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let children = sqlx::query(
            "SELECT r.name AS repository, mc.parent_digest AS manifest, mc.child_digest AS target, \
             'child' AS kind FROM manifest_children mc JOIN repositories r ON r.id = mc.repository_id \
             WHERE ($1 = '' OR r.name = $1) AND NOT EXISTS (SELECT 1 FROM manifests m \
             WHERE m.repository_id = mc.repository_id AND m.digest = mc.child_digest) \
             ORDER BY r.name, mc.parent_digest, mc.child_digest LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        blobs
            .iter()
            .chain(children.iter())
            .take(limit as usize)
            .map(|r| {
                let repository: String = r.try_get("repository").map_err(db_err)?;
                let kind: String = r.try_get("kind").map_err(db_err)?;
                Ok(DanglingReference {
                    repository: RepositoryName::parse(&repository)
                        .map_err(|e| MetadataError::Corrupt(e.to_string()))?,
                    manifest: digest_of(r, "manifest")?,
                    target: digest_of(r, "target")?,
                    kind: match kind.as_str() {
                        "missing" => DanglingKind::MissingBlob,
                        "unlinked" => DanglingKind::UnlinkedBlob,
                        _ => DanglingKind::MissingManifest,
                    },
                })
            })
            .collect()
    }

    async fn forget_blob(&self, digest: &Digest, now: i64) -> MetadataResult<Option<Garbage>> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = sqlx::query("DELETE FROM blobs WHERE digest = $1 RETURNING storage_key")
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        };
        let key: String = row.try_get("storage_key").map_err(db_err)?;
        let id = Self::queue_garbage(&mut tx, "", "", Some(&key), now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(Garbage {
            id,
            upload_id: String::new(),
            store_state: String::new(),
            storage_key: Some(key),
        }))
    }

    async fn forget_garbage(&self, id: i64) -> MetadataResult<()> {
        sqlx::query("DELETE FROM storage_garbage WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> MetadataResult<PutManifestOutcome> {
        let missing_blobs_sql = self.dialect.pick(
            "SELECT j.value AS value FROM json_each($2) AS j WHERE NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.digest = j.value)",
            "SELECT j.value AS value FROM jsonb_array_elements_text($2::jsonb) AS j(value) WHERE NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.digest = j.value)",
        );
        let missing_children_sql = self.dialect.pick(
            "SELECT j.value AS value FROM json_each($2) AS j WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.repository_id = $1 AND m.digest = j.value)",
            "SELECT j.value AS value FROM jsonb_array_elements_text($2::jsonb) AS j(value) WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.repository_id = $1 AND m.digest = j.value)",
        );
        let blob_refs_sql = self.dialect.pick(
            "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) \
             SELECT $1, $2, j.value FROM json_each($3) AS j WHERE true ON CONFLICT DO NOTHING",
            "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) \
             SELECT $1, $2, j.value FROM jsonb_array_elements_text($3::jsonb) AS j(value) ON CONFLICT DO NOTHING",
        );
        let child_refs_sql = self.dialect.pick(
            "INSERT INTO manifest_children (repository_id, parent_digest, child_digest) \
             SELECT $1, $2, j.value FROM json_each($3) AS j WHERE true ON CONFLICT DO NOTHING",
            "INSERT INTO manifest_children (repository_id, parent_digest, child_digest) \
             SELECT $1, $2, j.value FROM jsonb_array_elements_text($3::jsonb) AS j(value) ON CONFLICT DO NOTHING",
        );

        let mut tx = self.write_tx().await?;
        let repository_id = Self::ensure_repository(&mut tx, m.repository, m.now).await?;
        if self.dialect == Dialect::Postgres {
            // What this manifest will reference is kept from the collector until it commits:
            // the links (or, for sparse manifests, the blobs) and the child manifests, and the
            // manifest itself if it is already here; whatever the collector deleted first
            // is missing below.
            let blobs_lock = if m.require_references {
                format!(
                    "SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest IN {} \
                     ORDER BY digest FOR SHARE",
                    self.dialect.strings(2)
                )
            } else {
                format!(
                    "SELECT 1 FROM blobs WHERE digest IN {} AND $1 = $1 ORDER BY digest FOR SHARE",
                    self.dialect.strings(2)
                )
            };
            let manifests_lock = format!(
                "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest IN {} \
                 ORDER BY digest FOR SHARE",
                self.dialect.strings(2)
            );
            let mut itself = m.parsed.children.clone();
            itself.push(m.digest.clone());
            for (sql, digests) in [(&blobs_lock, &m.parsed.blobs), (&manifests_lock, &itself)] {
                if !digests.is_empty() {
                    sqlx::query(built(sql.clone()))
                        .bind(repository_id)
                        .bind(json_list(digests))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
            }
        }
        let (blobs, manifests) = if m.require_references {
            let blobs = self
                .missing(&mut tx, missing_blobs_sql, repository_id, &m.parsed.blobs)
                .await?;
            let manifests = self
                .missing(
                    &mut tx,
                    missing_children_sql,
                    repository_id,
                    &m.parsed.children,
                )
                .await?;
            (blobs, manifests)
        } else {
            (Vec::new(), Vec::new())
        };
        if !blobs.is_empty() || !manifests.is_empty() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(PutManifestOutcome::MissingReferences { blobs, manifests });
        }
        let annotations = m
            .parsed
            .annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default());
        // The manifest itself, if another push is inserting it, is held like its references.
        let hold_sql = format!(
            "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 {}",
            self.dialect.lock("FOR SHARE")
        );
        let inserted = Self::insert_or_hold(
            &mut tx,
            || {
                sqlx::query(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, content, \
                     subject, artifact_type, annotations, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (repository_id, digest) DO NOTHING",
                )
                .bind(repository_id)
                .bind(m.digest.as_str())
                .bind(m.parsed.media_type.as_str())
                .bind(m.content.len() as i64)
                .bind(m.content)
                .bind(m.parsed.subject.as_ref().map(Digest::as_str))
                .bind(m.parsed.artifact_type.as_deref())
                .bind(annotations.clone())
                .bind(m.now)
            },
            || {
                sqlx::query(built(hold_sql.clone()))
                    .bind(repository_id)
                    .bind(m.digest.as_str())
            },
        )
        .await?;
        if inserted {
            self.insert_references(
                &mut tx,
                blob_refs_sql,
                repository_id,
                m.digest,
                &m.parsed.blobs,
            )
            .await?;
            self.insert_references(
                &mut tx,
                child_refs_sql,
                repository_id,
                m.digest,
                &m.parsed.children,
            )
            .await?;
        }
        for tag in m.tags {
            let immutable = m.immutable.contains(tag);
            sqlx::query(if immutable {
                // Set once: of two first pushes, the second waits for the first and then
                // finds the tag taken.
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO NOTHING"
            } else {
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET \
                 manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at"
            })
            .bind(repository_id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(m.now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if immutable {
                let row = sqlx::query(
                    "SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2",
                )
                .bind(repository_id)
                .bind(tag.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
                let current = digest_of(&row, "manifest_digest")?;
                if current != *m.digest {
                    tx.rollback().await.map_err(db_err)?;
                    return Ok(PutManifestOutcome::ImmutableTag {
                        tag: tag.clone(),
                        current,
                    });
                }
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(PutManifestOutcome::Stored)
    }

    async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> MetadataResult<Option<ManifestRecord>> {
        retrying!(async {
            let query = match reference {
                Reference::Tag(tag) => sqlx::query(
                    "SELECT m.digest, m.media_type, m.content, m.subject FROM tags t \
                     JOIN repositories r ON r.id = t.repository_id \
                     JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
                     WHERE r.name = $1 AND t.name = $2",
                )
                .bind(repository.as_str())
                .bind(tag.as_str()),
                Reference::Digest(digest) => sqlx::query(
                    "SELECT m.digest, m.media_type, m.content, m.subject FROM manifests m \
                     JOIN repositories r ON r.id = m.repository_id \
                     WHERE r.name = $1 AND m.digest = $2",
                )
                .bind(repository.as_str())
                .bind(digest.as_str()),
            };
            let row = query.fetch_optional(&self.pool).await.map_err(db_err)?;
            row.map(|r| {
                let content: Vec<u8> = r.try_get("content").map_err(db_err)?;
                let subject: Option<String> = r.try_get("subject").map_err(db_err)?;
                Ok(ManifestRecord {
                    digest: digest_of(&r, "digest")?,
                    media_type: r.try_get("media_type").map_err(db_err)?,
                    content: Bytes::from(content),
                    subject: subject
                        .map(|s| Digest::parse(&s))
                        .transpose()
                        .map_err(|e| MetadataError::Corrupt(e.to_string()))?,
                })
            })
            .transpose()
        }
        .await)
    }

    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        immutable: TagGuard<'_>,
        now: i64,
    ) -> MetadataResult<ManifestDeletion> {
        let mut tx = self.write_tx().await?;
        // Locked first: a tag pushed to it meanwhile either committed before (and is seen
        // below) or waits, and then finds no manifest to name.
        let found = sqlx::query(built(format!(
            "SELECT m.repository_id FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.digest = $2 {}",
            self.dialect.lock("FOR UPDATE OF m")
        )))
        .bind(repository.as_str())
        .bind(digest.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(found) = found else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(ManifestDeletion::NotFound);
        };
        let repository_id: i64 = found.try_get("repository_id").map_err(db_err)?;
        let tags = sqlx::query(
            "SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name",
        )
        .bind(repository_id)
        .bind(digest.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for row in &tags {
            let name: String = row.try_get("name").map_err(db_err)?;
            if immutable(&name) {
                tx.rollback().await.map_err(db_err)?;
                let tag = Tag::parse(&name).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
                return Ok(ManifestDeletion::Protected { tag });
            }
        }
        let pair = json_pairs(&[(repository_id, digest.as_str().to_owned())]);
        self.forget_manifests(&mut tx, &pair, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(ManifestDeletion::Deleted)
    }

    async fn delete_tag(&self, repository: &RepositoryName, tag: &Tag) -> MetadataResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> MetadataResult<Option<Vec<String>>> {
        retrying!(async {
            let Some(repo) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
                .bind(repository.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let repository_id: i64 = repo.try_get("id").map_err(db_err)?;
            let rows = sqlx::query(
                "SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            )
            .bind(repository_id)
            .bind(page.after.unwrap_or(""))
            .bind(limit_of(page))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| r.try_get("name").map_err(db_err))
                .collect::<MetadataResult<Vec<String>>>()
                .map(Some)
        }
        .await)
    }

    async fn collect_links(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected> {
        let mut tx = self.write_tx().await?;
        let claimed = sqlx::query(built(format!(
            "DELETE FROM gc_link_reviews WHERE (repository_id, digest) IN \
             (SELECT repository_id, digest FROM gc_link_reviews WHERE queued_at <= $1 \
              ORDER BY queued_at LIMIT $2 {}) \
             RETURNING repository_id, digest",
            self.dialect.lock("FOR UPDATE SKIP LOCKED")
        )))
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut collected = Collected {
            reviewed: claimed.len() as u64,
            ..Collected::default()
        };
        if claimed.is_empty() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(collected);
        }
        let pairs = pairs_of(&claimed)?;
        let pairs = json_pairs(&pairs);
        let list = self.dialect.pairs(1);
        if self.dialect == Dialect::Postgres {
            // A manifest referencing one of these links holds it (`FOR SHARE`) until it
            // commits; the check below starts after that, and a manifest that comes later
            // finds the link gone and is refused.
            sqlx::query(built(format!(
                "SELECT 1 FROM repository_blobs WHERE (repository_id, digest) IN {list} \
                 ORDER BY repository_id, digest FOR UPDATE"
            )))
            .bind(&pairs)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        let unlinked = sqlx::query(built(format!(
            "DELETE FROM repository_blobs WHERE (repository_id, digest) IN {list} \
             AND created_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
                 WHERE mb.repository_id = repository_blobs.repository_id \
                 AND mb.blob_digest = repository_blobs.digest) \
             RETURNING digest"
        )))
        .bind(&pairs)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        collected.links = unlinked.len() as u64;
        let mut digests = digests_of(&unlinked)?;
        digests.sort();
        digests.dedup();
        let blobs = self
            .delete_unreferenced_blobs(&mut tx, &digests, now)
            .await?;
        collected.blobs = blobs.blobs;
        collected.bytes = blobs.bytes;
        tx.commit().await.map_err(db_err)?;
        Ok(collected)
    }

    async fn collect_blobs(&self, cutoff: i64, limit: u32, now: i64) -> MetadataResult<Collected> {
        let mut tx = self.write_tx().await?;
        let claimed = sqlx::query(built(format!(
            "DELETE FROM gc_blob_reviews WHERE digest IN \
             (SELECT digest FROM gc_blob_reviews WHERE queued_at <= $1 \
              ORDER BY queued_at LIMIT $2 {}) \
             RETURNING digest",
            self.dialect.lock("FOR UPDATE SKIP LOCKED")
        )))
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        if claimed.is_empty() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(Collected::default());
        }
        let mut digests = digests_of(&claimed)?;
        digests.sort();
        let mut collected = self
            .delete_unreferenced_blobs(&mut tx, &digests, now)
            .await?;
        collected.reviewed = digests.len() as u64;
        tx.commit().await.map_err(db_err)?;
        Ok(collected)
    }

    async fn collect_untagged_manifests(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
        let mut tx = self.write_tx().await?;
        let candidates = sqlx::query(built(format!(
            "SELECT m.repository_id, m.digest FROM manifests m WHERE {UNTAGGED} \
             ORDER BY m.created_at LIMIT $2 {}",
            self.dialect.lock("FOR UPDATE OF m SKIP LOCKED")
        )))
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut pairs = pairs_of(&candidates)?;
        if self.dialect == Dialect::Postgres && !pairs.is_empty() {
            // Checked again now that they are locked: a tag or an index that committed while
            // the candidates were chosen keeps its manifest.
            let still = sqlx::query(built(format!(
                "SELECT m.repository_id, m.digest FROM manifests m WHERE {UNTAGGED} \
                 AND (m.repository_id, m.digest) IN {}",
                self.dialect.pairs(2)
            )))
            .bind(cutoff)
            .bind(json_pairs(&pairs))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            pairs = pairs_of(&still)?;
        }
        if pairs.is_empty() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(Collected::default());
        }
        let manifests = self
            .forget_manifests(&mut tx, &json_pairs(&pairs), now)
            .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Collected {
            manifests,
            ..Collected::default()
        })
    }

    async fn collect_preview(
        &self,
        cutoff: i64,
        untagged_cutoff: Option<i64>,
    ) -> MetadataResult<Collected> {
        retrying!(
            async {
                let row = sqlx::query(
                    "WITH doomed AS ( \
                       SELECT rb.repository_id, rb.digest FROM gc_link_reviews r \
                       JOIN repository_blobs rb \
                         ON rb.repository_id = r.repository_id AND rb.digest = r.digest \
                       WHERE r.queued_at <= $1 AND rb.created_at <= $1 \
                       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
                           WHERE mb.repository_id = rb.repository_id AND mb.blob_digest = rb.digest)), \
                     candidates AS ( \
                       SELECT digest FROM doomed \
                       UNION SELECT digest FROM gc_blob_reviews WHERE queued_at <= $1), \
                     freed AS ( \
                       SELECT b.size FROM blobs b WHERE b.digest IN (SELECT digest FROM candidates) \
                       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest \
                           AND NOT EXISTS (SELECT 1 FROM doomed d \
                               WHERE d.repository_id = rb.repository_id AND d.digest = rb.digest)) \
                       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)) \
                     SELECT \
                       (SELECT COUNT(*) FROM gc_link_reviews WHERE queued_at <= $1) \
                         + (SELECT COUNT(*) FROM gc_blob_reviews WHERE queued_at <= $1) AS reviewed, \
                       (SELECT COUNT(*) FROM doomed) AS links, \
                       (SELECT COUNT(*) FROM freed) AS blobs, \
                       (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM freed) AS bytes",
                )
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
                let mut preview = Collected {
                    reviewed: u64_of(&row, "reviewed")?,
                    links: u64_of(&row, "links")?,
                    blobs: u64_of(&row, "blobs")?,
                    bytes: u64_of(&row, "bytes")?,
                    manifests: 0,
                };
                if let Some(untagged_cutoff) = untagged_cutoff {
                    let row = sqlx::query(built(format!(
                        "SELECT COUNT(*) AS n FROM manifests m WHERE {UNTAGGED}"
                    )))
                    .bind(untagged_cutoff)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                    preview.manifests = u64_of(&row, "n")?;
                }
                Ok(preview)
            }
            .await
        )
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: Page<'_>,
    ) -> MetadataResult<Vec<ReferrerRecord>> {
        retrying!(async {
            let rows = sqlx::query(
                "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m \
                 JOIN repositories r ON r.id = m.repository_id \
                 WHERE r.name = $1 AND m.subject = $2 AND ($3 = '' OR m.artifact_type = $3) AND m.digest > $4 \
                 ORDER BY m.digest LIMIT $5",
            )
            .bind(repository.as_str())
            .bind(subject.as_str())
            .bind(artifact_type.unwrap_or(""))
            .bind(page.after.unwrap_or(""))
            .bind(limit_of(page))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let annotations: Option<String> = r.try_get("annotations").map_err(db_err)?;
                    let annotations = annotations
                        .map(|a| serde_json::from_str::<BTreeMap<String, String>>(&a))
                        .transpose()
                        .map_err(|e| MetadataError::Corrupt(format!("annotations: {e}")))?;
                    Ok(ReferrerRecord {
                        digest: digest_of(r, "digest")?,
                        media_type: r.try_get("media_type").map_err(db_err)?,
                        size: u64_of(r, "size")?,
                        artifact_type: r.try_get("artifact_type").map_err(db_err)?,
                        annotations,
                    })
                })
                .collect()
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn error_codes_are_classified() {
        use super::{ErrorClass, classify};
        assert_eq!(classify("13"), ErrorClass::Full);
        assert_eq!(classify("5"), ErrorClass::Transient);
        assert_eq!(
            classify("517"),
            ErrorClass::Transient,
            "SQLITE_BUSY_SNAPSHOT"
        );
        assert_eq!(
            classify("262"),
            ErrorClass::Transient,
            "SQLITE_LOCKED_SHAREDCACHE"
        );
        assert_eq!(
            classify("2067"),
            ErrorClass::Other,
            "SQLITE_CONSTRAINT_UNIQUE"
        );
        assert_eq!(classify("53100"), ErrorClass::Full);
        assert_eq!(classify("57P01"), ErrorClass::Transient);
        assert_eq!(classify("08006"), ErrorClass::Transient);
        assert_eq!(classify("23505"), ErrorClass::Other);
        assert_eq!(classify("40001"), ErrorClass::Transient);
    }

    /// A migrated SQLite store in a directory of its own (kept while the directory lives).
    async fn sqlite_store() -> (tempfile::TempDir, super::SqlMetadataStore) {
        use super::{SqlMetadataStore, SqlOptions};
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
    fn new_session(id: &str, repository: &str) -> crate::metadata::UploadSession {
        crate::metadata::UploadSession {
            id: id.to_owned(),
            repository: crate::oci::RepositoryName::parse(repository).unwrap(),
            offset: 0,
            algorithm: crate::oci::DigestAlgorithm::Sha256,
            hash_state: Vec::new(),
            store_state: String::new(),
            staged_len: 0,
            committing: false,
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Found by the fault simulation (`tests/simulation`, a stalled call): a write whose
    /// future is dropped while its `BEGIN` is on the way (a cancelled request, a deadline)
    /// returned its connection to the pool, and the `BEGIN` then took effect in it: the next
    /// write failed ("cannot start a transaction within a transaction", a 500) or waited for
    /// the lock that transaction held, and a plain statement on it joined a transaction nobody
    /// would commit.
    #[tokio::test]
    async fn a_write_dropped_while_it_begins_leaves_no_transaction_open() {
        use super::MetadataStore;
        use sqlx::Connection as _;
        use std::time::Duration;

        let (dir, store) = sqlite_store().await;
        let url = format!("sqlite:{}", dir.path().join("berth.db").display());
        // Another process holds the write lock, so the store's `BEGIN IMMEDIATE` waits...
        let mut other = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        // ... until the request that sent it is dropped; then the lock comes free.
        let dropped =
            tokio::time::timeout(Duration::from_millis(200), store.collect_blobs(1, 10, 1)).await;
        assert!(dropped.is_err(), "the write waited for the lock");
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        for round in 0..4 {
            let id = format!("00000000-0000-4000-8000-{round:012}");
            store
                .create_upload(&new_session(&id, "cancel/safety"))
                .await
                .unwrap();
            store
                .cancel_upload(&id, 2)
                .await
                .unwrap_or_else(|e| panic!("round {round}: a write fails after a drop: {e}"));
        }
        // What was written is committed: another connection sees it.
        let counted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM storage_garbage")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(counted, 4);
    }

    /// An entry is forgotten by id, possibly late (by a process that read it just before
    /// another removed it): its id must never name a newer entry, whose bytes would then be
    /// left in storage with no record of them.
    #[tokio::test]
    async fn garbage_ids_are_never_reused() {
        use super::MetadataStore;

        let (_dir, store) = sqlite_store().await;
        let abandoned = async |id: &str| {
            store
                .create_upload(&new_session(id, "garbage/ids"))
                .await
                .unwrap();
            store.cancel_upload(id, 2).await.unwrap().unwrap()
        };
        let first = abandoned("first").await;
        store.forget_garbage(first.id).await.unwrap();
        let second = abandoned("second").await;
        assert_ne!(second.id, first.id, "the id of a forgotten entry came back");
        store.forget_garbage(first.id).await.unwrap();
        let left = store.garbage(10).await.unwrap();
        assert_eq!(left.len(), 1, "a late forget removed a newer entry");
        assert_eq!(left[0].upload_id, "second");
    }

    /// Staged bytes become a part only while they are still exactly the first staged bytes,
    /// and a part written from them by another request replaces the promoted one.
    async fn staged_bytes_are_promoted_only_while_they_lead(store: &dyn super::MetadataStore) {
        use crate::metadata::UploadCheckpoint;
        use crate::oci::DigestAlgorithm;
        use crate::storage::PartRecord;

        store
            .create_upload(&new_session("promoted", "staged/promotion"))
            .await
            .unwrap();
        let part = |number: u32, start: u64, size: u64| PartRecord {
            number,
            size,
            etag: format!("etag-{number}"),
            start: Some(start),
        };
        let checkpoint = |offset: u64,
                          staged: Option<&'static [u8]>,
                          parts: &'static [PartRecord],
                          clear: bool| UploadCheckpoint {
            offset,
            algorithm: DigestAlgorithm::Sha256,
            hash_state: b"",
            store_state: "",
            new_parts: parts,
            clear_staged: clear,
            staged,
            claim: false,
            now: 2,
        };
        for (at, bytes) in [(0u64, &b"aaa"[..]), (3, b"bb"), (5, b"c")] {
            let end = at + bytes.len() as u64;
            let saved = store
                .checkpoint_upload("promoted", at, checkpoint(end, Some(bytes), &[], false))
                .await
                .unwrap();
            assert_eq!(saved, super::SessionUpdate::Saved);
        }
        assert!(
            !store
                .promote_staged("promoted", 3, 5, &part(1, 3, 2))
                .await
                .unwrap(),
            "not the first"
        );
        assert!(
            !store
                .promote_staged("promoted", 0, 4, &part(1, 0, 4))
                .await
                .unwrap(),
            "splits a row"
        );
        assert!(
            store
                .promote_staged("promoted", 0, 5, &part(1, 0, 5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .promote_staged("promoted", 0, 5, &part(2, 0, 5))
                .await
                .unwrap(),
            "twice"
        );
        assert_eq!(
            store.upload_staged("promoted").await.unwrap(),
            (5, b"c".to_vec())
        );
        let session = store.upload("promoted").await.unwrap().unwrap();
        assert_eq!((session.offset, session.staged_len), (6, 1));

        // A request that read every staged byte before the promotion writes them all into a
        // part of its own: it replaces the promoted part.
        static WHOLE: [PartRecord; 1] = [PartRecord {
            number: 3,
            size: 7,
            etag: String::new(),
            start: Some(0),
        }];
        let saved = store
            .checkpoint_upload("promoted", 6, checkpoint(7, None, &WHOLE, true))
            .await
            .unwrap();
        assert_eq!(saved, super::SessionUpdate::Saved);
        let parts = store.upload_parts("promoted").await.unwrap();
        assert_eq!(parts.iter().map(|p| p.number).collect::<Vec<_>>(), [3]);
        assert_eq!(store.upload_staged("promoted").await.unwrap().1, b"");
        assert!(
            !store
                .promote_staged("promoted", 5, 6, &part(4, 5, 1))
                .await
                .unwrap(),
            "consumed"
        );
    }

    #[tokio::test]
    async fn staged_bytes_are_promoted_only_while_they_lead_in_sqlite_and_memory() {
        let (_dir, store) = sqlite_store().await;
        staged_bytes_are_promoted_only_while_they_lead(&store).await;
        staged_bytes_are_promoted_only_while_they_lead(
            &crate::metadata::memory::MemoryMetadataStore::new(),
        )
        .await;
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
