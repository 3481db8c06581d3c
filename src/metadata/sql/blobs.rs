//! Blob rows (digest → storage key) and their links to repositories: reads and listings, an
//! upload's commit (which publishes the row and the link and ends the session), mounts,
//! unlinking, and scrub's forgetting of a blob whose bytes are damaged.
//!
//! The database never points at missing bytes: a `blobs` row is written only after the store
//! completed the object, and an object is removed only through `storage_garbage` after the row
//! naming it is gone. A transaction that links a blob holds its row (`FOR SHARE`, see
//! `dialect.rs`) and takes the link's review first, so the collector cannot delete the row
//! under a link about to commit.

use sqlx::Row;

use super::SqlMetadataStore;
use super::dialect::built;
use super::rows::{blob_record, digest_of, i64_of, u64_of};
use super::transactions::{WriteTx, retrying};
use crate::metadata::events::{EventAction, EventOrigin, NewEvent};
use crate::metadata::{BlobCommit, BlobRecord, Garbage, MetadataError, MetadataResult};
use crate::oci::{Digest, RepositoryName};

impl SqlMetadataStore {
    pub(super) async fn blob(
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
                .await?;
                row.map(|r| blob_record(&r, digest.clone())).transpose()
            }
            .await
        )
    }

    pub(super) async fn stored_blob(&self, digest: &Digest) -> MetadataResult<Option<BlobRecord>> {
        retrying!(
            async {
                let row = sqlx::query("SELECT size, storage_key FROM blobs WHERE digest = $1")
                    .bind(digest.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| blob_record(&r, digest.clone())).transpose()
            }
            .await
        )
    }

    pub(super) async fn list_blobs(
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
        .await?;
        rows.iter()
            .map(|r| blob_record(r, digest_of(r, "digest")?))
            .collect()
    }

    pub(super) async fn blob_totals(
        &self,
        repository: Option<&RepositoryName>,
    ) -> MetadataResult<(u64, u64)> {
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
        .await?;
        Ok((u64_of(&row, "n")?, u64_of(&row, "bytes")?))
    }

    pub(super) async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<Option<BlobRecord>> {
        let mut tx = self.write_tx().await?;
        let repository_id = self
            .ensure_repository(&mut tx, repository, now, announce)
            .await?;
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
        .await?;
        let Some(source) = source else {
            tx.rollback().await?;
            return Ok(None);
        };
        let record = blob_record(&source, digest.clone())?;
        link_blob(&mut tx, repository_id, digest.as_str(), now).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    pub(super) async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        origin: &EventOrigin,
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
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // The manifests of the repository may still reference the blob, so no link review
        // would reach it: the blob itself is reviewed.
        sqlx::query(
            "INSERT INTO gc_blob_reviews (digest, queued_at) VALUES ($1, $2) \
             ON CONFLICT (digest) DO UPDATE SET queued_at = excluded.queued_at",
        )
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(EventAction::BlobDelete, repository, now)
            .with_digest(digest)
            .by(origin);
        self.record_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn commit_blob(
        &self,
        id: &str,
        blob: &BlobRecord,
        replacing: Option<&str>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<BlobCommit> {
        let mut tx = self.write_tx().await?;
        let Some(session) = sqlx::query(
            "DELETE FROM upload_sessions WHERE id = $1 AND committing = 1 RETURNING repository, store_state",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(BlobCommit::SessionGone);
        };
        let repository: String = session.try_get("repository")?;
        let repository = RepositoryName::parse(&repository)
            .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
        let store_state: String = session.try_get("store_state")?;
        let repository_id = self
            .ensure_repository(&mut tx, &repository, now, announce)
            .await?;
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
                .await?;
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
        link_blob(&mut tx, repository_id, blob.digest.as_str(), now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn forget_blob(
        &self,
        digest: &Digest,
        now: i64,
    ) -> MetadataResult<Option<Garbage>> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        let Some(row) = sqlx::query("DELETE FROM blobs WHERE digest = $1 RETURNING storage_key")
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let key: String = row.try_get("storage_key")?;
        let id = Self::queue_garbage(&mut tx, "", "", Some(&key), now).await?;
        tx.commit().await?;
        Ok(Some(Garbage {
            id,
            upload_id: String::new(),
            store_state: String::new(),
            storage_key: Some(key),
        }))
    }
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
    .await?;
    Ok(())
}
