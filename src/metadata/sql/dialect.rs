//! What differs between SQLite and Postgres: how a write transaction begins and which rows it
//! locks (the locking invariant below), the JSON arrays bound as parameters, and the few
//! statements written once per database.
//!
//! Every statement is written with Postgres placeholders (`$1`), which SQLite accepts too; the
//! upserts (`ON CONFLICT … DO NOTHING`, `DO UPDATE SET … = excluded.…`) are common SQL.
//!
//! # Locking
//!
//! The invariant: a write transaction writes only on checks that still hold when it commits
//! (the links or blobs a manifest references exist; no manifest references a link the
//! collector deletes, and no link a blob it deletes; no tag names a manifest being deleted; a
//! session is still where its writer left it). Each database keeps it its own way, and the two
//! ways are written side by side below the [`Dialect`] type:
//!
//! - SQLite: `BEGIN IMMEDIATE` ([`Dialect::begin`]) takes the database's write lock before the
//!   first statement, so write transactions run one at a time and nothing changes between a
//!   check and the write that relies on it. Lock clauses are empty ([`Dialect::lock`]), row
//!   locks are not taken ([`Dialect::lock_rows`]), and nothing is checked twice
//!   ([`Dialect::concurrent_writes`]).
//! - Postgres (`READ COMMITTED`): write transactions run concurrently, and each statement sees
//!   what committed before it started. A transaction therefore locks the rows its check rests
//!   on — `FOR SHARE` for what a push or a mount will reference (the links, or for sparse
//!   manifests the blob rows; the child manifests; the manifest itself; the blob row an upload
//!   links), `FOR UPDATE` for what it will change or delete (the collector's claimed reviews
//!   with `SKIP LOCKED`, then the links, then the blob rows; a manifest being deleted; an
//!   upload session) — and only then checks, in a new statement, which sees every transaction
//!   that held the rows before it. Whichever locks first, the other waits and then sees its
//!   outcome: the collector keeps a link a committed manifest references, and a push finds a
//!   link the collector deleted gone and is refused. A row found by an `INSERT … ON CONFLICT
//!   DO NOTHING` that waited for its inserter is not locked by it: `insert_or_hold` locks it
//!   and inserts again if it vanished meanwhile.
//! - Against deadlocks: locks on several rows are taken in key order, and transactions that
//!   make links take their review row first (`review_link`), as the collector takes its
//!   claimed reviews first, so they do not wait on each other in opposite orders. A deadlock
//!   that still happens (with an untagged-manifest pass) is `Interrupted`, never half done.
//!
//! ARCHITECTURE.md (*metadata/*, the garbage-collection invariant) tells why no push can lose
//! a layer under these orders; `tests/simulation` holds it.

use super::transactions::WriteTx;
use crate::metadata::MetadataResult;
use crate::oci::Digest;

/// Which SQL database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// Postgres.
    Postgres,
}

impl Dialect {
    /// The statement that begins a write transaction. On SQLite it takes the write lock up
    /// front, so that concurrent writers queue on the busy timeout instead of failing when a
    /// read transaction tries to upgrade; on Postgres row locks order writers instead.
    pub(super) fn begin(self) -> &'static str {
        self.pick("BEGIN IMMEDIATE", "BEGIN")
    }

    /// Row locks for the rest of the transaction, as a clause ending a `SELECT` (`FOR SHARE`,
    /// `FOR UPDATE … SKIP LOCKED`). SQLite needs none: `BEGIN IMMEDIATE` makes each write
    /// transaction the only one. On Postgres they order a statement after every transaction
    /// that changed the rows it reads, because each statement of a `READ COMMITTED`
    /// transaction sees what committed before it started.
    pub(super) fn lock(self, clause: &'static str) -> &'static str {
        self.pick("", clause)
    }

    /// Whether other write transactions may commit while one runs (Postgres), so that rows a
    /// statement chose before they were locked must be checked again in a new statement.
    /// SQLite runs one write transaction at a time.
    pub(super) fn concurrent_writes(self) -> bool {
        match self {
            Dialect::Sqlite => false,
            Dialect::Postgres => true,
        }
    }

    /// Locks `rows` until `tx` ends, in key order, before the statements that check them.
    pub(super) async fn lock_rows(
        self,
        tx: &mut WriteTx,
        rows: RowLocks<'_>,
    ) -> MetadataResult<()> {
        match self {
            // `BEGIN IMMEDIATE` already holds the whole database.
            Dialect::Sqlite => Ok(()),
            Dialect::Postgres => rows.lock(self, tx).await,
        }
    }
}

/// Rows a write transaction locks (Postgres) before it checks them.
pub(super) enum RowLocks<'a> {
    /// What a manifest push will reference, `FOR SHARE`: the links to `blobs` in its
    /// repository (with `linked`; for a sparse manifest, the blob rows anywhere), the child
    /// manifests and the manifest itself if it is already there. Whatever the collector
    /// deleted first is then missing from the checks that follow.
    Referenced {
        repository_id: i64,
        linked: bool,
        blobs: &'a [Digest],
        children: &'a [Digest],
        manifest: &'a Digest,
    },
    /// Links the collector will judge, `FOR UPDATE` (a [`json_pairs`] list). A manifest
    /// referencing one holds it until it commits; the check after this starts after that,
    /// and a manifest that comes later finds the link gone and is refused.
    Links { pairs: &'a str },
    /// Blob rows the collector will judge, `FOR UPDATE` (a [`json_strings`] list), so that
    /// its check sees every link made by a transaction that held them (uploads and mounts
    /// hold the blob row before linking it).
    Blobs { digests: &'a str },
}

impl RowLocks<'_> {
    async fn lock(self, dialect: Dialect, tx: &mut WriteTx) -> MetadataResult<()> {
        match self {
            RowLocks::Referenced {
                repository_id,
                linked,
                blobs,
                children,
                manifest,
            } => {
                let blobs_lock = if linked {
                    format!(
                        "SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest IN {} \
                         ORDER BY digest FOR SHARE",
                        dialect.strings(2)
                    )
                } else {
                    format!(
                        "SELECT 1 FROM blobs WHERE digest IN {} AND $1 = $1 ORDER BY digest FOR SHARE",
                        dialect.strings(2)
                    )
                };
                let manifests_lock = format!(
                    "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest IN {} \
                     ORDER BY digest FOR SHARE",
                    dialect.strings(2)
                );
                let mut itself = children.to_vec();
                itself.push(manifest.clone());
                for (sql, digests) in [(&blobs_lock, blobs), (&manifests_lock, &itself[..])] {
                    if !digests.is_empty() {
                        sqlx::query(built(sql.clone()))
                            .bind(repository_id)
                            .bind(json_list(digests))
                            .fetch_all(&mut **tx)
                            .await?;
                    }
                }
            }
            RowLocks::Links { pairs } => {
                sqlx::query(built(format!(
                    "SELECT 1 FROM repository_blobs WHERE (repository_id, digest) IN {} \
                     ORDER BY repository_id, digest FOR UPDATE",
                    dialect.pairs(1)
                )))
                .bind(pairs)
                .fetch_all(&mut **tx)
                .await?;
            }
            RowLocks::Blobs { digests } => {
                sqlx::query(built(format!(
                    "SELECT 1 FROM blobs WHERE digest IN {} ORDER BY digest FOR UPDATE",
                    dialect.strings(1)
                )))
                .bind(digests)
                .fetch_all(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }
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

    pub(super) fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// A subquery of the strings of the JSON array bound to `$n`, as column `value`.
    pub(super) fn strings(self, n: u8) -> String {
        match self {
            Dialect::Sqlite => format!("(SELECT j.value AS value FROM json_each(${n}) AS j)"),
            Dialect::Postgres => {
                format!("(SELECT j.value FROM jsonb_array_elements_text(${n}::jsonb) AS j(value))")
            }
        }
    }

    /// A subquery of the integers of the JSON array bound to `$n` ([`json_integers`]), as
    /// column `value`.
    pub(super) fn integers(self, n: u8) -> String {
        match self {
            Dialect::Sqlite => format!("(SELECT j.value AS value FROM json_each(${n}) AS j)"),
            Dialect::Postgres => format!(
                "(SELECT j.value::bigint AS value FROM jsonb_array_elements_text(${n}::jsonb) AS j(value))"
            ),
        }
    }

    /// A subquery of the (repository id, digest) pairs of [`json_pairs`] bound to `$n`.
    pub(super) fn pairs(self, n: u8) -> String {
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
}

// The statements of a manifest push written once per database: SQLite reads a JSON array
// with `json_each`, Postgres with `jsonb_array_elements_text`, and SQLite needs `WHERE true`
// before the `ON CONFLICT` of an `INSERT … SELECT` (or it parses `ON` as a join constraint).
impl Dialect {
    /// Those of the digests of the JSON array `$2` not linked to repository `$1`, as `value`.
    pub(super) fn unlinked_blobs(self) -> &'static str {
        self.pick(
            "SELECT j.value AS value FROM json_each($2) AS j WHERE NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.digest = j.value)",
            "SELECT j.value AS value FROM jsonb_array_elements_text($2::jsonb) AS j(value) WHERE NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.digest = j.value)",
        )
    }

    /// Those of the digests of the JSON array `$2` with no manifest in repository `$1`, as
    /// `value`.
    pub(super) fn absent_manifests(self) -> &'static str {
        self.pick(
            "SELECT j.value AS value FROM json_each($2) AS j WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.repository_id = $1 AND m.digest = j.value)",
            "SELECT j.value AS value FROM jsonb_array_elements_text($2::jsonb) AS j(value) WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.repository_id = $1 AND m.digest = j.value)",
        )
    }

    /// Records that manifest `$2` of repository `$1` references the blobs of the JSON array `$3`.
    pub(super) fn insert_blob_references(self) -> &'static str {
        self.pick(
            "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) \
             SELECT $1, $2, j.value FROM json_each($3) AS j WHERE true ON CONFLICT DO NOTHING",
            "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) \
             SELECT $1, $2, j.value FROM jsonb_array_elements_text($3::jsonb) AS j(value) ON CONFLICT DO NOTHING",
        )
    }

    /// Records that index `$2` of repository `$1` lists the manifests of the JSON array `$3`.
    pub(super) fn insert_child_references(self) -> &'static str {
        self.pick(
            "INSERT INTO manifest_children (repository_id, parent_digest, child_digest) \
             SELECT $1, $2, j.value FROM json_each($3) AS j WHERE true ON CONFLICT DO NOTHING",
            "INSERT INTO manifest_children (repository_id, parent_digest, child_digest) \
             SELECT $1, $2, j.value FROM jsonb_array_elements_text($3::jsonb) AS j(value) ON CONFLICT DO NOTHING",
        )
    }
}

/// A statement assembled from constant fragments ([`Dialect`]'s subqueries and lock clauses,
/// the collector's `UNTAGGED`); every value in it is a bound parameter.
pub(super) fn built(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// `[{"r": repository id, "d": digest}, …]`, the form [`Dialect::pairs`] reads.
pub(super) fn json_pairs(pairs: &[(i64, String)]) -> String {
    let list: Vec<_> = pairs
        .iter()
        .map(|(r, d)| serde_json::json!({ "r": r, "d": d }))
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// A JSON array of integers, the form [`Dialect::integers`] reads.
pub(super) fn json_integers(items: &[i64]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// A JSON array of strings, the form [`Dialect::strings`] reads.
pub(super) fn json_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// A JSON array of digests, the form [`Dialect::strings`] reads.
pub(super) fn json_list(digests: &[Digest]) -> String {
    serde_json::to_string(&digests.iter().map(Digest::as_str).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned())
}
