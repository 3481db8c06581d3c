//! Garbage collection: the review queues (`gc_link_reviews`, `gc_blob_reviews`), the
//! collection passes (links, blobs, untagged manifests, one transaction per batch), their
//! preview, the queue of storage to remove (`storage_garbage`), and the census of every table.
//!
//! Nothing is found by scanning: every change that may leave something unreferenced queues a
//! review of it in its own transaction, and anything without a review is referenced. The
//! collector claims due reviews (`FOR UPDATE SKIP LOCKED`, so replicas share the work and
//! never the item), locks what it will judge and only then checks it in a new statement (see
//! `dialect.rs`), and deletes rows before bytes: an object is queued in `storage_garbage` in
//! the transaction that deletes the row naming it, and removed from the store afterwards.
//! Garbage ids are never reused (Postgres identities, SQLite `AUTOINCREMENT`), so that a late
//! forget never drops a newer entry.

use sqlx::Row;

use super::SqlMetadataStore;
use super::dialect::{RowLocks, built, json_pairs, json_strings};
use super::rows::{digests_of, pairs_of, u64_of};
use super::transactions::{WriteTx, retrying};
use crate::metadata::events::EventOrigin;
use crate::metadata::{Census, Collected, Garbage, MetadataResult};

/// The manifests the collector may delete as untagged (`m`, created at or before `$1`): no
/// tag names them, no index of their repository lists them, and their subject, if they have
/// one, is not in their repository.
const UNTAGGED: &str = "m.created_at <= $1 \
    AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) \
    AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.repository_id = m.repository_id AND c.child_digest = m.digest) \
    AND (m.subject IS NULL OR NOT EXISTS \
         (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject))";

/// Manifests a pass deletes: `from` is a `FROM … WHERE …` over `manifests m` whose
/// parameters are `params` ($1, $2, …), taken in `order`, at most `limit`, locked with `lock`.
pub(super) struct DueManifests<'a> {
    pub(super) from: &'a str,
    pub(super) params: &'a [Param<'a>],
    pub(super) order: &'a str,
    pub(super) lock: &'static str,
    pub(super) limit: u32,
}

/// A parameter of a [`DueManifests`] query.
#[derive(Clone, Copy)]
pub(super) enum Param<'a> {
    Int(i64),
    Text(&'a str),
}

fn bound<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    params: &[Param<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for param in params {
        query = match *param {
            Param::Int(value) => query.bind(value),
            Param::Text(value) => query.bind(value),
        };
    }
    query
}

impl SqlMetadataStore {
    /// Asks the collector to look at a link again (`queued_at` = `now`): made by an upload or
    /// a mount, it may never be referenced. Taken first in every transaction that makes a
    /// link, as the collector takes its claimed reviews first: both then wait on the same row.
    pub(super) async fn review_link(
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
        .await?;
        Ok(())
    }

    /// Queues storage for removal in `tx`: an upload's (`key` none) or one object's.
    pub(super) async fn queue_garbage(
        tx: &mut WriteTx,
        upload_id: &str,
        store_state: &str,
        key: Option<&str>,
        now: i64,
    ) -> MetadataResult<i64> {
        Ok(sqlx::query(
            "INSERT INTO storage_garbage (upload_id, store_state, storage_key, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(upload_id)
        .bind(store_state)
        .bind(key)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?
        .try_get("id")?)
    }

    pub(super) async fn garbage(&self, limit: u32) -> MetadataResult<Vec<Garbage>> {
        let rows = sqlx::query(
            "SELECT id, upload_id, store_state, storage_key FROM storage_garbage ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Garbage {
                    id: r.try_get("id")?,
                    upload_id: r.try_get("upload_id")?,
                    store_state: r.try_get("store_state")?,
                    storage_key: r.try_get("storage_key")?,
                })
            })
            .collect()
    }

    pub(super) async fn forget_garbage(&self, id: i64) -> MetadataResult<()> {
        sqlx::query("DELETE FROM storage_garbage WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn collect_links(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
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
        .await?;
        let mut collected = Collected {
            reviewed: claimed.len() as u64,
            ..Collected::default()
        };
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(collected);
        }
        let pairs = pairs_of(&claimed)?;
        let pairs = json_pairs(&pairs);
        self.dialect
            .lock_rows(&mut tx, RowLocks::Links { pairs: &pairs })
            .await?;
        let unlinked = sqlx::query(built(format!(
            "DELETE FROM repository_blobs WHERE (repository_id, digest) IN {} \
             AND created_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
                 WHERE mb.repository_id = repository_blobs.repository_id \
                 AND mb.blob_digest = repository_blobs.digest) \
             RETURNING digest",
            self.dialect.pairs(1)
        )))
        .bind(&pairs)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        collected.links = unlinked.len() as u64;
        let mut digests = digests_of(&unlinked)?;
        digests.sort();
        digests.dedup();
        let blobs = self
            .delete_unreferenced_blobs(&mut tx, &digests, now)
            .await?;
        collected.blobs = blobs.blobs;
        collected.bytes = blobs.bytes;
        tx.commit().await?;
        Ok(collected)
    }

    pub(super) async fn collect_blobs(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
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
        .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Collected::default());
        }
        let mut digests = digests_of(&claimed)?;
        digests.sort();
        let mut collected = self
            .delete_unreferenced_blobs(&mut tx, &digests, now)
            .await?;
        collected.reviewed = digests.len() as u64;
        tx.commit().await?;
        Ok(collected)
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
        self.dialect
            .lock_rows(tx, RowLocks::Blobs { digests: &list })
            .await?;
        let rows = sqlx::query(built(format!(
            "DELETE FROM blobs WHERE digest IN {} \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest) \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest) \
             RETURNING storage_key, size",
            self.dialect.strings(1)
        )))
        .bind(&list)
        .fetch_all(&mut **tx)
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.push(row.try_get::<String, _>("storage_key")?);
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
            .await?;
        }
        Ok(collected)
    }

    pub(super) async fn collect_untagged_manifests(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
        let mut tx = self.write_tx().await?;
        let manifests = self
            .forget_due_manifests(
                &mut tx,
                DueManifests {
                    from: &format!("FROM manifests m WHERE {UNTAGGED}"),
                    params: &[Param::Int(cutoff)],
                    order: "m.created_at",
                    lock: "FOR UPDATE OF m SKIP LOCKED",
                    limit,
                },
                now,
            )
            .await?;
        if manifests == 0 {
            tx.rollback().await?;
            return Ok(Collected::default());
        }
        tx.commit().await?;
        Ok(Collected {
            manifests,
            ..Collected::default()
        })
    }

    /// Deletes, in `tx`, the manifests `due` selects: chosen and locked (skipping those
    /// another pass holds), then, where writers run concurrently, checked again now that they
    /// are locked — a tag, an index or a pull that committed while they were chosen keeps its
    /// manifest — and forgotten. Returns how many.
    pub(super) async fn forget_due_manifests(
        &self,
        tx: &mut WriteTx,
        due: DueManifests<'_>,
        now: i64,
    ) -> MetadataResult<u64> {
        // The parameter after `params` (a handful).
        let next = due.params.len() as u8 + 1;
        let choose = format!(
            "SELECT m.repository_id, m.digest {} ORDER BY {} LIMIT ${next} {}",
            due.from,
            due.order,
            self.dialect.lock(due.lock)
        );
        let candidates = bound(sqlx::query(built(choose)), due.params)
            .bind(i64::from(due.limit))
            .fetch_all(&mut **tx)
            .await?;
        let mut pairs = pairs_of(&candidates)?;
        if self.dialect.concurrent_writes() && !pairs.is_empty() {
            let recheck = format!(
                "SELECT m.repository_id, m.digest {} AND (m.repository_id, m.digest) IN {}",
                due.from,
                self.dialect.pairs(next)
            );
            let still = bound(sqlx::query(built(recheck)), due.params)
                .bind(json_pairs(&pairs))
                .fetch_all(&mut **tx)
                .await?;
            pairs = pairs_of(&still)?;
        }
        if pairs.is_empty() {
            return Ok(0);
        }
        self.forget_manifests(tx, &json_pairs(&pairs), &EventOrigin::default(), now)
            .await
    }

    pub(super) async fn collect_preview(
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
                .await?;
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
                    .await?;
                    preview.manifests = u64_of(&row, "n")?;
                }
                Ok(preview)
            }
            .await
        )
    }

    pub(super) async fn census(&self) -> MetadataResult<Census> {
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
                .await?;
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_session, sqlite_store};
    use crate::metadata::MetadataStore;

    /// An entry is forgotten by id, possibly late (by a process that read it just before
    /// another removed it): its id must never name a newer entry, whose bytes would then be
    /// left in storage with no record of them.
    #[tokio::test]
    async fn garbage_ids_are_never_reused() {
        let (_dir, store) = sqlite_store().await;
        let store: &dyn MetadataStore = &store;
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
}
