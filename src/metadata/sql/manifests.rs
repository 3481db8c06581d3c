//! Manifests with their references (`manifest_blobs`, `manifest_children`, the `subject`
//! column the referrers are read from) and tags: a push, reads, deletes (of a manifest with
//! everything that hangs on it, by a client or the collector), and the references scrub finds
//! dangling.
//!
//! A manifest, its blob and child references, its referrer entry and its tags commit
//! together, and the references it needs are checked inside that transaction, after the rows
//! they rest on are held (see `dialect.rs`): a push never commits a reference to a link the
//! collector is deleting. Immutable tags are enforced in the same transactions: a set-once tag
//! is inserted with `ON CONFLICT DO NOTHING` and read back, and a manifest delete locks the
//! manifest before reading its tags.

use std::collections::BTreeMap;

use bytes::Bytes;
use sqlx::Row;

use super::SqlMetadataStore;
use super::dialect::{RowLocks, built, json_list, json_pairs};
use super::rows::{digest_of, limit_of, u64_of};
use super::transactions::{WriteTx, retrying};
use crate::metadata::events::{EventAction, EventOrigin, NewEvent};
use crate::metadata::{
    DanglingKind, DanglingReference, ManifestDeletion, ManifestRecord, MetadataError,
    MetadataResult, NewManifest, Page, PutManifestOutcome, ReferrerRecord, TagGuard,
};
use crate::oci::{Digest, Reference, RepositoryName, Tag};

impl SqlMetadataStore {
    /// Stores a manifest in one transaction: holds what it references, checks that it is
    /// there, inserts the manifest (and, if this push made it, its references), points its
    /// tags at it.
    pub(super) async fn put_manifest(
        &self,
        m: NewManifest<'_>,
    ) -> MetadataResult<PutManifestOutcome> {
        let mut tx = self.write_tx().await?;
        let repository_id = self
            .ensure_repository(&mut tx, m.repository, m.now, m.announce)
            .await?;
        // What this manifest will reference is kept from the collector until it commits;
        // whatever the collector deleted first is missing below.
        let referenced = RowLocks::Referenced {
            repository_id,
            linked: m.require_references,
            blobs: &m.parsed.blobs,
            children: &m.parsed.children,
            manifest: m.digest,
        };
        self.dialect.lock_rows(&mut tx, referenced).await?;
        if let Some(missing) = self.missing_references(&mut tx, repository_id, m).await? {
            tx.rollback().await?;
            return Ok(missing);
        }
        if self.insert_manifest(&mut tx, repository_id, m).await? {
            self.insert_references(&mut tx, repository_id, m).await?;
        }
        if let Some(refused) = Self::tag_manifest(&mut tx, repository_id, m).await? {
            tx.rollback().await?;
            return Ok(refused);
        }
        // Written last, once every lock this push takes is held: of two pushes that conflict
        // (one tag), the one that commits first also has the earlier outbox rows.
        self.record_events(&mut tx, &pushed(m)).await?;
        tx.commit().await?;
        Ok(PutManifestOutcome::Stored)
    }

    /// The blobs not linked to the repository and the child manifests not in it, if the push
    /// requires its references and any is missing.
    async fn missing_references(
        &self,
        tx: &mut WriteTx,
        repository_id: i64,
        m: NewManifest<'_>,
    ) -> MetadataResult<Option<PutManifestOutcome>> {
        if !m.require_references {
            return Ok(None);
        }
        let blobs = missing(
            tx,
            self.dialect.unlinked_blobs(),
            repository_id,
            &m.parsed.blobs,
        )
        .await?;
        let manifests = missing(
            tx,
            self.dialect.absent_manifests(),
            repository_id,
            &m.parsed.children,
        )
        .await?;
        if blobs.is_empty() && manifests.is_empty() {
            return Ok(None);
        }
        Ok(Some(PutManifestOutcome::MissingReferences {
            blobs,
            manifests,
        }))
    }

    /// Inserts the manifest row unless it is there; whether this push made it. If another push
    /// is inserting it, the row is held like the manifest's references.
    async fn insert_manifest(
        &self,
        tx: &mut WriteTx,
        repository_id: i64,
        m: NewManifest<'_>,
    ) -> MetadataResult<bool> {
        let annotations = m
            .parsed
            .annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default());
        let hold_sql = format!(
            "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 {}",
            self.dialect.lock("FOR SHARE")
        );
        Self::insert_or_hold(
            tx,
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
        .await
    }

    /// Records the blobs and child manifests a newly inserted manifest references.
    async fn insert_references(
        &self,
        tx: &mut WriteTx,
        repository_id: i64,
        m: NewManifest<'_>,
    ) -> MetadataResult<()> {
        for (sql, digests) in [
            (self.dialect.insert_blob_references(), &m.parsed.blobs),
            (self.dialect.insert_child_references(), &m.parsed.children),
        ] {
            if !digests.is_empty() {
                sqlx::query(sql)
                    .bind(repository_id)
                    .bind(m.digest.as_str())
                    .bind(json_list(digests))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Points the push's tags at the manifest. An immutable tag is set once: of two first pushes,
    /// the second waits for the first and then finds the tag taken. The refusal, if one names
    /// another manifest (the caller rolls back the tags set before it).
    async fn tag_manifest(
        tx: &mut WriteTx,
        repository_id: i64,
        m: NewManifest<'_>,
    ) -> MetadataResult<Option<PutManifestOutcome>> {
        for tag in m.tags {
            let immutable = m.immutable.contains(tag);
            sqlx::query(if immutable {
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
            .execute(&mut **tx)
            .await?;
            if immutable {
                let row = sqlx::query(
                    "SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2",
                )
                .bind(repository_id)
                .bind(tag.as_str())
                .fetch_one(&mut **tx)
                .await?;
                let current = digest_of(&row, "manifest_digest")?;
                if current != *m.digest {
                    return Ok(Some(PutManifestOutcome::ImmutableTag {
                        tag: tag.clone(),
                        current,
                    }));
                }
            }
        }
        Ok(None)
    }

    pub(super) async fn manifest(
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
            let row = query.fetch_optional(&self.pool).await?;
            row.map(|r| {
                let content: Vec<u8> = r.try_get("content")?;
                let subject: Option<String> = r.try_get("subject")?;
                Ok(ManifestRecord {
                    digest: digest_of(&r, "digest")?,
                    media_type: r.try_get("media_type")?,
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

    pub(super) async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        immutable: TagGuard<'_>,
        origin: &EventOrigin,
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
        .await?;
        let Some(found) = found else {
            tx.rollback().await?;
            return Ok(ManifestDeletion::NotFound);
        };
        let repository_id: i64 = found.try_get("repository_id")?;
        let tags = sqlx::query(
            "SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name",
        )
        .bind(repository_id)
        .bind(digest.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for row in &tags {
            let name: String = row.try_get("name")?;
            if immutable(&name) {
                tx.rollback().await?;
                let tag = Tag::parse(&name).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
                return Ok(ManifestDeletion::Protected { tag });
            }
        }
        let pair = json_pairs(&[(repository_id, digest.as_str().to_owned())]);
        self.forget_manifests(&mut tx, &pair, origin, now).await?;
        tx.commit().await?;
        Ok(ManifestDeletion::Deleted)
    }

    /// Deletes the manifests of the [`json_pairs`] list `pairs` with their tags and references,
    /// queueing the links of their blobs for review, and the blobs themselves where their
    /// repository holds no link (unlinked through the API while the manifest kept them: no
    /// link review will ever reach them). Returns how many were deleted.
    pub(super) async fn forget_manifests(
        &self,
        tx: &mut WriteTx,
        pairs: &str,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<u64> {
        let list = self.dialect.pairs(1);
        if self.subscriptions.any_wants(EventAction::Delete) {
            let rows = sqlx::query(built(format!(
                "SELECT r.name, m.digest, m.media_type, m.size FROM manifests m \
                 JOIN repositories r ON r.id = m.repository_id \
                 WHERE (m.repository_id, m.digest) IN {list} ORDER BY r.name, m.digest"
            )))
            .bind(pairs)
            .fetch_all(&mut **tx)
            .await?;
            let deleted = rows
                .iter()
                .map(|row| {
                    let name: String = row.try_get("name")?;
                    let repository = RepositoryName::parse(&name)
                        .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
                    let media_type: String = row.try_get("media_type")?;
                    Ok(NewEvent::new(EventAction::Delete, &repository, now)
                        .by(origin)
                        .with_digest(&digest_of(row, "digest")?)
                        .with_object(&media_type, u64_of(row, "size")?))
                })
                .collect::<MetadataResult<Vec<_>>>()?;
            self.record_events(tx, &deleted).await?;
        }
        sqlx::query(built(format!(
            "INSERT INTO gc_link_reviews (repository_id, digest, queued_at) \
             SELECT DISTINCT mb.repository_id, mb.blob_digest, $2 FROM manifest_blobs mb \
             WHERE (mb.repository_id, mb.manifest_digest) IN {list} \
             ON CONFLICT (repository_id, digest) DO UPDATE SET queued_at = excluded.queued_at"
        )))
        .bind(pairs)
        .bind(now)
        .execute(&mut **tx)
        .await?;
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
        .await?;
        // Explicit deletes of the dependent rows keep this independent of cascade settings.
        // A mirror's record of a kept manifest goes with it, however it is deleted, so that
        // the same digest pushed again later is the registry's own and never evicted.
        for sql in [
            format!(
                "DELETE FROM mirror_pulls WHERE EXISTS (SELECT 1 FROM repositories r \
                 WHERE r.name = mirror_pulls.repository AND (r.id, mirror_pulls.digest) IN {list})"
            ),
            format!("DELETE FROM tags WHERE (repository_id, manifest_digest) IN {list}"),
            format!("DELETE FROM manifest_blobs WHERE (repository_id, manifest_digest) IN {list}"),
            format!("DELETE FROM manifest_children WHERE (repository_id, parent_digest) IN {list}"),
        ] {
            sqlx::query(built(sql.clone()))
                .bind(pairs)
                .execute(&mut **tx)
                .await?;
        }
        let deleted = sqlx::query(built(format!(
            "DELETE FROM manifests WHERE (repository_id, digest) IN {list}"
        )))
        .bind(pairs)
        .execute(&mut **tx)
        .await?;
        Ok(deleted.rows_affected())
    }

    pub(super) async fn delete_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<bool> {
        const DELETE: &str = "DELETE FROM tags WHERE name = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)";
        if !self.subscriptions.any_wants(EventAction::TagDelete) {
            let deleted = sqlx::query(DELETE)
                .bind(repository.as_str())
                .bind(tag.as_str())
                .execute(&self.pool)
                .await?;
            return Ok(deleted.rows_affected() > 0);
        }
        let mut tx = self.write_tx().await?;
        let deleted = sqlx::query(built(format!("{DELETE} RETURNING manifest_digest")))
            .bind(repository.as_str())
            .bind(tag.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(deleted) = deleted else {
            tx.rollback().await?;
            return Ok(false);
        };
        let event = NewEvent::new(EventAction::TagDelete, repository, now)
            .by(origin)
            .with_digest(&digest_of(&deleted, "manifest_digest")?)
            .with_tag(tag);
        self.record_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> MetadataResult<Option<Vec<String>>> {
        retrying!(async {
            let Some(repo) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
                .bind(repository.as_str())
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            let repository_id: i64 = repo.try_get("id")?;
            let rows = sqlx::query(
                "SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            )
            .bind(repository_id)
            .bind(page.after.unwrap_or(""))
            .bind(limit_of(page))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok(r.try_get("name")?))
                .collect::<MetadataResult<Vec<String>>>()
                .map(Some)
        }
        .await)
    }

    pub(super) async fn referrers(
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
            .await?;
            rows.iter()
                .map(|r| {
                    let annotations: Option<String> = r.try_get("annotations")?;
                    let annotations = annotations
                        .map(|a| serde_json::from_str::<BTreeMap<String, String>>(&a))
                        .transpose()
                        .map_err(|e| MetadataError::Corrupt(format!("annotations: {e}")))?;
                    Ok(ReferrerRecord {
                        digest: digest_of(r, "digest")?,
                        media_type: r.try_get("media_type")?,
                        size: u64_of(r, "size")?,
                        artifact_type: r.try_get("artifact_type")?,
                        annotations,
                    })
                })
                .collect()
        }
        .await)
    }

    pub(super) async fn dangling_references(
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
        .await?;
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
        .await?;
        blobs
            .iter()
            .chain(children.iter())
            .take(limit as usize)
            .map(|r| {
                let repository: String = r.try_get("repository")?;
                let kind: String = r.try_get("kind")?;
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
}

/// The events of a push: one per tag it was pushed with (or one without a tag), after the
/// repository's creation if the push made it.
fn pushed(m: NewManifest<'_>) -> Vec<NewEvent> {
    let Some(origin) = m.announce else {
        return Vec::new();
    };
    let push = NewEvent::new(EventAction::Push, m.repository, m.now)
        .by(origin)
        .with_digest(m.digest)
        .with_object(m.parsed.media_type.as_str(), m.content.len() as u64);
    if m.tags.is_empty() {
        return vec![push];
    }
    m.tags
        .iter()
        .map(|tag| {
            let mut tagged = push.clone().with_tag(tag);
            tagged.id = uuid::Uuid::new_v4().to_string();
            tagged
        })
        .collect()
}

/// Those of `digests` the statement `sql` finds missing from repository `repository_id`
/// ([`super::Dialect::unlinked_blobs`], [`super::Dialect::absent_manifests`]).
async fn missing(
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
        .await?;
    rows.iter().map(|r| digest_of(r, "value")).collect()
}
