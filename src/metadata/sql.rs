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
use sqlx::{Any, AnyConnection, AnyPool, Row};

use super::{
    BlobCommit, BlobRecord, DanglingKind, DanglingReference, Garbage, ManifestRecord,
    MetadataError, MetadataResult, MetadataStore, NewManifest, Page, PoolUsage, PutManifestOutcome,
    ReferrerRecord, SessionUpdate, UploadCheckpoint, UploadSession,
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
}

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
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let begin = match self.dialect {
            // Taking the write lock up front makes concurrent writers queue on the busy
            // timeout instead of failing when a read transaction tries to upgrade.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        if let Err(e) = sqlx::raw_sql(begin).execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(db_err(e));
        }
        Ok(WriteTx {
            conn,
            finished: false,
        })
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

/// A write transaction on a pooled connection of its own. Whatever does not end in a
/// successful `COMMIT` or `ROLLBACK` (an error, a dropped request) closes the connection
/// instead of returning it to the pool: a `COMMIT` that fails (SQLite's "database or disk is
/// full") can leave a transaction half-open in the connection, and sqlx's own transactions
/// then hand the connection on in a state every later write fails in.
pub(crate) struct WriteTx {
    conn: PoolConnection<Any>,
    finished: bool,
}

impl WriteTx {
    async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.finished = true;
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.finished = true;
        Ok(())
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
        let source = match from {
            Some(from) => sqlx::query(
                "SELECT b.size, b.storage_key FROM repository_blobs rb \
                 JOIN repositories r ON r.id = rb.repository_id \
                 JOIN blobs b ON b.digest = rb.digest \
                 WHERE r.name = $1 AND rb.digest = $2",
            )
            .bind(from.as_str())
            .bind(digest.as_str()),
            None => sqlx::query(
                "SELECT b.size, b.storage_key FROM blobs b WHERE b.digest = $1 \
                 AND EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
            )
            .bind(digest.as_str()),
        }
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(source) = source else {
            return Ok(None);
        };
        let record = blob_record(&source, digest.clone())?;
        let repository_id = Self::ensure_repository(&mut tx, repository, now).await?;
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repository_id)
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(record))
    }

    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<bool> {
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
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
             store_state = $4, updated_at = $5 \
             WHERE id = $6 AND byte_offset = $7 AND committing = 0",
        )
        .bind(i64_of(cp.offset))
        .bind(cp.algorithm.name())
        .bind(cp.hash_state)
        .bind(cp.store_state)
        .bind(cp.now)
        .bind(id)
        .bind(i64_of(expected_offset))
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
        for part in cp.new_parts {
            sqlx::query(
                "INSERT INTO upload_parts (upload_id, part_number, size, etag) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(i64::from(part.number))
            .bind(i64_of(part.size))
            .bind(part.etag.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(SessionUpdate::Saved)
    }

    async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>> {
        retrying!(async {
            let rows = sqlx::query(
                "SELECT part_number, size, etag FROM upload_parts WHERE upload_id = $1 ORDER BY part_number",
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
                    })
                })
                .collect()
        }
        .await)
    }

    async fn upload_staged(&self, id: &str) -> MetadataResult<Vec<u8>> {
        retrying!(
            async {
                let rows = sqlx::query(
                    "SELECT bytes FROM upload_staged WHERE upload_id = $1 ORDER BY start_offset",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let mut staged = Vec::new();
                for row in &rows {
                    let bytes: Vec<u8> = row.try_get("bytes").map_err(db_err)?;
                    staged.extend_from_slice(&bytes);
                }
                Ok(staged)
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
        let inserted = sqlx::query(
            "INSERT INTO blobs (digest, size, storage_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(blob.digest.as_str())
        .bind(i64_of(blob.size))
        .bind(blob.storage_key.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let outcome = if inserted.rows_affected() > 0 {
            BlobCommit::Created
        } else {
            BlobCommit::Deduplicated {
                garbage_id: Self::queue_garbage(&mut tx, id, &store_state, None, now).await?,
            }
        };
        let repository_id = Self::ensure_repository(&mut tx, &repository, now).await?;
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repository_id)
        .bind(blob.digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
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
        let inserted = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, size, content, subject, \
             artifact_type, annotations, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (repository_id, digest) DO NOTHING",
        )
        .bind(repository_id)
        .bind(m.digest.as_str())
        .bind(m.parsed.media_type.as_str())
        .bind(m.content.len() as i64)
        .bind(m.content)
        .bind(m.parsed.subject.as_ref().map(Digest::as_str))
        .bind(m.parsed.artifact_type.as_deref())
        .bind(annotations)
        .bind(m.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if inserted.rows_affected() > 0 {
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
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET \
                 manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
            )
            .bind(repository_id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(m.now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
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
    ) -> MetadataResult<bool> {
        let mut tx = self.write_tx().await?;
        // Explicit deletes of the dependent rows keep this independent of cascade settings.
        for sql in [
            "DELETE FROM tags WHERE manifest_digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
            "DELETE FROM manifest_blobs WHERE manifest_digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
            "DELETE FROM manifest_children WHERE parent_digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        ] {
            sqlx::query(sql)
                .bind(repository.as_str())
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let deleted = sqlx::query(
            "DELETE FROM manifests WHERE digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(deleted.rows_affected() > 0)
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
