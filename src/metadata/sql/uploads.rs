//! Upload sessions: their rows, checkpoints (offset, hash state, staged bytes and new parts
//! in one transaction), staged bytes and their promotion to parts, the claim for completion,
//! and the end of a session without a blob (cancel, expiry), which queues its storage as
//! garbage in the same transaction. Publishing the blob is `commit_blob` (`blobs.rs`).
//!
//! Session updates are conditional (`WHERE byte_offset = $expected AND committing = 0`): the
//! loser of a race learns the current offset and publishes nothing it wrote.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::SqlMetadataStore;
use super::dialect::built;
use super::rows::{i64_of, u64_of};
use super::transactions::{WriteTx, retrying, shrink_after};
use crate::metadata::{
    Garbage, MetadataError, MetadataResult, SessionUpdate, UploadCheckpoint, UploadSession,
};
use crate::oci::{DigestAlgorithm, RepositoryName};
use crate::storage::PartRecord;

const SELECT_SESSION: &str = "SELECT id, repository, byte_offset, algorithm, hash_state, store_state, \
     committing, created_at, updated_at, \
     (SELECT COALESCE(SUM(length(s.bytes)), 0) FROM upload_staged s WHERE s.upload_id = upload_sessions.id) \
     AS staged_len FROM upload_sessions WHERE id = $1";

fn session_of(row: &AnyRow) -> MetadataResult<UploadSession> {
    let repository: String = row.try_get("repository")?;
    let algorithm: String = row.try_get("algorithm")?;
    Ok(UploadSession {
        id: row.try_get("id")?,
        repository: RepositoryName::parse(&repository)
            .map_err(|e| MetadataError::Corrupt(e.to_string()))?,
        offset: u64_of(row, "byte_offset")?,
        algorithm: DigestAlgorithm::from_name(&algorithm)
            .ok_or_else(|| MetadataError::Corrupt(format!("hash algorithm {algorithm:?}")))?,
        hash_state: row.try_get("hash_state")?,
        store_state: row.try_get("store_state")?,
        committing: row.try_get::<i64, _>("committing")? != 0,
        staged_len: u64_of(row, "staged_len")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The session's offset now, after a conditional update changed nothing.
async fn conflict_or_gone(tx: &mut WriteTx, id: &str) -> MetadataResult<SessionUpdate> {
    match sqlx::query("SELECT byte_offset FROM upload_sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
    {
        Some(row) => Ok(SessionUpdate::Conflict {
            offset: u64_of(&row, "byte_offset")?,
        }),
        None => Ok(SessionUpdate::Gone),
    }
}

impl SqlMetadataStore {
    pub(super) async fn upload_count(&self) -> MetadataResult<u64> {
        retrying!(
            async {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM upload_sessions")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u64::try_from(count).unwrap_or(0))
            }
            .await
        )
    }

    pub(super) async fn create_upload(&self, s: &UploadSession) -> MetadataResult<()> {
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
        .await?;
        Ok(())
    }

    pub(super) async fn upload(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        retrying!(
            async {
                sqlx::query(SELECT_SESSION)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(session_of)
                    .transpose()
            }
            .await
        )
    }

    pub(super) async fn upload_settled(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
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
        .await?
        .as_ref()
        .map(session_of)
        .transpose()?;
        tx.rollback().await?;
        Ok(session)
    }

    pub(super) async fn reserve_part_number(&self, id: &str) -> MetadataResult<u32> {
        let row = sqlx::query(
            "UPDATE upload_sessions SET next_part = next_part + 1 WHERE id = $1 RETURNING next_part - 1 AS part",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| MetadataError::Database(format!("upload session {id} is gone")))?;
        let part: i64 = row.try_get("part")?;
        u32::try_from(part).map_err(|_| MetadataError::Corrupt(format!("part number {part}")))
    }

    pub(super) async fn checkpoint_upload(
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
        .await?;
        if updated.rows_affected() == 0 {
            // Ended by dropping the transaction, which closes its connection.
            return conflict_or_gone(&mut tx, id).await;
        }
        if cp.clear_staged {
            sqlx::query("DELETE FROM upload_staged WHERE upload_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(bytes) = cp.staged {
            tx.sends_upload_bytes(bytes.len());
            sqlx::query(
                "INSERT INTO upload_staged (upload_id, start_offset, bytes) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(i64_of(cp.offset - bytes.len() as u64))
            .bind(bytes)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(first) = cp.new_parts.iter().filter_map(|p| p.start).min() {
            sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1 AND start_offset >= $2")
                .bind(id)
                .bind(i64_of(first))
                .execute(&mut *tx)
                .await?;
        }
        for part in cp.new_parts {
            insert_part(&mut tx, id, part).await?;
        }
        tx.commit().await?;
        Ok(SessionUpdate::Saved)
    }

    pub(super) async fn promote_staged(
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
        let Some(session) = sqlx::query(lock).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let committing: i64 = session.try_get("committing")?;
        let rows = sqlx::query(
            "SELECT start_offset, CAST(length(bytes) AS BIGINT) AS len FROM upload_staged \
             WHERE upload_id = $1 AND start_offset < $2 ORDER BY start_offset",
        )
        .bind(id)
        .bind(i64_of(to))
        .fetch_all(&mut *tx)
        .await?;
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
            .await?;
        insert_part(&mut tx, id, part).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>> {
        retrying!(async {
            let rows = sqlx::query(
                "SELECT part_number, size, etag, start_offset FROM upload_parts WHERE upload_id = $1 ORDER BY part_number",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let number: i64 = r.try_get("part_number")?;
                    Ok(PartRecord {
                        number: u32::try_from(number)
                            .map_err(|_| MetadataError::Corrupt(format!("part number {number}")))?,
                        size: u64_of(r, "size")?,
                        etag: r.try_get("etag")?,
                        start: r
                            .try_get::<Option<i64>, _>("start_offset")?
                            .map(|s| s as u64),
                    })
                })
                .collect()
        }
        .await)
    }

    pub(super) async fn upload_staged(&self, id: &str) -> MetadataResult<(u64, Vec<u8>)> {
        retrying!(
            async {
                let mut conn = self.pool.acquire().await?;
                let rows = sqlx::query(
                    "SELECT start_offset, bytes FROM upload_staged WHERE upload_id = $1 ORDER BY start_offset",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                let start = match rows.first() {
                    Some(row) => u64_of(row, "start_offset")?,
                    None => 0,
                };
                let mut staged = Vec::new();
                for row in &rows {
                    let bytes: Vec<u8> = row.try_get("bytes")?;
                    staged.extend_from_slice(&bytes);
                }
                shrink_after(&mut conn, staged.len());
                Ok((start, staged))
            }
            .await
        )
    }

    pub(super) async fn begin_commit(
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
        .await?;
        let outcome = if updated.rows_affected() > 0 {
            SessionUpdate::Saved
        } else {
            conflict_or_gone(&mut tx, id).await?
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn cancel_upload(
        &self,
        id: &str,
        now: i64,
    ) -> MetadataResult<Option<Garbage>> {
        let mut tx = self.write_tx().await?;
        let Some(row) =
            sqlx::query("DELETE FROM upload_sessions WHERE id = $1 RETURNING store_state")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let store_state: String = row.try_get("store_state")?;
        let garbage_id = Self::queue_garbage(&mut tx, id, &store_state, None, now).await?;
        tx.commit().await?;
        Ok(Some(Garbage {
            id: garbage_id,
            upload_id: id.to_owned(),
            store_state,
            storage_key: None,
        }))
    }

    pub(super) async fn expire_uploads(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<u64> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "DELETE FROM upload_sessions WHERE id IN \
             (SELECT id FROM upload_sessions WHERE updated_at < $1 ORDER BY updated_at LIMIT $2) \
             AND updated_at < $1 RETURNING id, store_state",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let store_state: String = row.try_get("store_state")?;
            Self::queue_garbage(&mut tx, &id, &store_state, None, now).await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    pub(super) async fn expired_upload_count(&self, cutoff: i64) -> MetadataResult<u64> {
        retrying!(
            async {
                let row =
                    sqlx::query("SELECT COUNT(*) AS n FROM upload_sessions WHERE updated_at < $1")
                        .bind(cutoff)
                        .fetch_one(&self.pool)
                        .await?;
                u64_of(&row, "n")
            }
            .await
        )
    }
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
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_session, sqlite_store};
    use crate::metadata::{MetadataStore, SessionUpdate};

    /// Staged bytes become a part only while they are still exactly the first staged bytes,
    /// and a part written from them by another request replaces the promoted one.
    async fn staged_bytes_are_promoted_only_while_they_lead(store: &dyn MetadataStore) {
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
            assert_eq!(saved, SessionUpdate::Saved);
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
        assert_eq!(saved, SessionUpdate::Saved);
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
}
