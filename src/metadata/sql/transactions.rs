//! Transactions: write transactions on a connection of their own ([`WriteTx`], guarded before
//! `BEGIN` is sent), reads repeated once when the database was interrupted (`retrying!`), and
//! the insert that holds the row it found ([`SqlMetadataStore::insert_or_hold`]).
//!
//! Each method of the store is one transaction: the statements of a write run in a [`WriteTx`]
//! ended by [`WriteTx::commit`] or [`WriteTx::rollback`], or, for a write of one statement
//! (a new session, a part number, a tag or garbage entry deleted), on the pool by themselves;
//! reads run on the pool, most of them repeated once after an interruption by `retrying!`.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection};

use super::SqlMetadataStore;
use crate::metadata::{MetadataError, MetadataResult};

/// Runs a read (an expression that awaits it), and once more after a moment if the database
/// was interrupted (a connection lost to a restart, an administrator's shutdown): reads are safe
/// to repeat, and the pool hands out a fresh connection.
macro_rules! retrying {
    ($read:expr) => {{
        match $read {
            Err($crate::metadata::MetadataError::Interrupted(first)) => {
                ::tracing::debug!(error = %first, "database read interrupted; trying once more");
                ::tokio::time::sleep(::std::time::Duration::from_millis(100)).await;
                $read
            }
            other => other,
        }
    }};
}
pub(super) use retrying;

impl SqlMetadataStore {
    /// Begins a write transaction on a connection of its own.
    pub(super) async fn write_tx(&self) -> MetadataResult<WriteTx> {
        let conn = self.pool.acquire().await?;
        // Guarded before `BEGIN` is sent: if this future is dropped while `BEGIN` is on its
        // way (a request cancelled, a deadline passed), the statement still runs, and the
        // connection must then be closed rather than pooled with a transaction open, in which
        // the next borrower's statements would never commit.
        let mut tx = WriteTx {
            conn,
            finished: false,
            sent_bytes: 0,
        };
        sqlx::raw_sql(self.dialect.begin())
            .execute(&mut *tx.conn)
            .await?;
        Ok(tx)
    }

    /// Inserts a row unless one with its key exists, and then holds the existing row
    /// (`FOR SHARE` on Postgres) until `tx` ends, so that nobody deletes it under what `tx`
    /// writes next. A conflicting insert by a concurrent transaction is waited for, and its row
    /// may be deleted (by the collector, by a client) between the conflict and the hold: the
    /// row is then inserted again. Whether this insert made the row.
    pub(super) async fn insert_or_hold<'q>(
        tx: &mut WriteTx,
        insert: impl Fn() -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
        hold: impl Fn() -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> MetadataResult<bool> {
        // Each retry needs another transaction to delete the row in that instant: a row that
        // keeps vanishing is contention to report, not to spin on.
        for _ in 0..4 {
            let inserted = insert().execute(&mut **tx).await?;
            if inserted.rows_affected() > 0 {
                return Ok(true);
            }
            if hold().fetch_optional(&mut **tx).await?.is_some() {
                return Ok(false);
            }
        }
        Err(MetadataError::Interrupted(
            "a row was deleted each time it was about to be reused; retry".to_owned(),
        ))
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
pub(super) fn shrink_after(conn: &mut AnyConnection, bytes: usize) {
    if bytes > SHRINK_AFTER_UPLOAD_BYTES {
        conn.shrink_buffers();
    }
}

impl WriteTx {
    pub(super) async fn commit(mut self) -> MetadataResult<()> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.finish();
        Ok(())
    }

    pub(super) async fn rollback(mut self) -> MetadataResult<()> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.finish();
        Ok(())
    }

    /// Counts upload bytes the transaction sends (staged bytes), so that its connection's
    /// buffers are shrunk when it ends.
    pub(super) fn sends_upload_bytes(&mut self, bytes: usize) {
        self.sent_bytes += bytes;
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

#[cfg(test)]
mod tests {
    use super::super::tests::{new_session, sqlite_store};
    use crate::metadata::MetadataStore;

    /// Found by the fault simulation (`tests/simulation`, a stalled call): a write whose
    /// future is dropped while its `BEGIN` is on the way (a cancelled request, a deadline)
    /// returned its connection to the pool, and the `BEGIN` then took effect in it: the next
    /// write failed ("cannot start a transaction within a transaction", a 500) or waited for
    /// the lock that transaction held, and a plain statement on it joined a transaction nobody
    /// would commit.
    #[tokio::test]
    async fn a_write_dropped_while_it_begins_leaves_no_transaction_open() {
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
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            MetadataStore::collect_blobs(&store, 1, 10, 1),
        )
        .await;
        assert!(dropped.is_err(), "the write waited for the lock");
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        for round in 0..4 {
            let id = format!("00000000-0000-4000-8000-{round:012}");
            MetadataStore::create_upload(&store, &new_session(&id, "cancel/safety"))
                .await
                .unwrap();
            MetadataStore::cancel_upload(&store, &id, 2)
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
}
