//! A mirror's state shared by every replica: when each tag read through was last checked
//! against its upstream, which process is fetching which blob, and when each manifest kept
//! from an upstream was last pulled. A fetch claim is one upsert whose `WHERE` lets it replace
//! only an expired lease or the caller's own; an eviction is one transaction that locks what it
//! evicts and deletes it as the collector deletes untagged manifests.

use sqlx::Row;

use super::SqlMetadataStore;
use super::dialect::built;
use super::gc::{DueManifests, Param};
use super::rows::u64_of;
use super::transactions::retrying;
use crate::metadata::{MetadataError, MetadataResult, MirrorFetchClaim, MirrorPull};
use crate::oci::{Digest, RepositoryName, Tag};

impl SqlMetadataStore {
    pub(super) async fn mirror_tag_checked(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> MetadataResult<Option<i64>> {
        retrying!(
            async {
                let row = sqlx::query(
                    "SELECT checked_at FROM mirror_tag_checks WHERE repository = $1 AND tag = $2",
                )
                .bind(repository.as_str())
                .bind(tag.as_str())
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    Some(row) => Some(row.try_get::<i64, _>("checked_at")?),
                    None => None,
                })
            }
            .await
        )
    }

    pub(super) async fn record_mirror_tag_check(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        at: i64,
    ) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO mirror_tag_checks (repository, tag, checked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repository, tag) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn claim_mirror_fetch(
        &self,
        digest: &Digest,
        claim: &MirrorFetchClaim,
        now: i64,
    ) -> MetadataResult<bool> {
        let claimed = sqlx::query(
            "INSERT INTO mirror_fetches (digest, repository, owner, lease_until, relay) \
             VALUES ($1, $2, $3, $4, $6) \
             ON CONFLICT (digest) DO UPDATE SET repository = excluded.repository, \
             owner = excluded.owner, lease_until = excluded.lease_until, relay = excluded.relay \
             WHERE mirror_fetches.owner = excluded.owner OR mirror_fetches.lease_until < $5",
        )
        .bind(digest.as_str())
        .bind(claim.repository.as_str())
        .bind(&claim.owner)
        .bind(claim.lease_until)
        .bind(now)
        .bind(claim.relay.as_deref())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    pub(super) async fn mirror_fetch_claim(
        &self,
        digest: &Digest,
    ) -> MetadataResult<Option<MirrorFetchClaim>> {
        let row: Option<(String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT repository, owner, relay, lease_until FROM mirror_fetches WHERE digest = $1",
        )
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(repository, owner, relay, lease_until)| {
            Ok(MirrorFetchClaim {
                repository: RepositoryName::parse(&repository)
                    .map_err(|e| MetadataError::Corrupt(e.to_string()))?,
                owner,
                relay,
                lease_until,
            })
        })
        .transpose()
    }

    pub(super) async fn release_mirror_fetch(
        &self,
        digest: &Digest,
        owner: &str,
    ) -> MetadataResult<()> {
        sqlx::query("DELETE FROM mirror_fetches WHERE digest = $1 AND owner = $2")
            .bind(digest.as_str())
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The manifests kept from upstream `$1` that nothing pulled since `$2` and that no index of
/// their repository lists (an index goes first; its children may follow in the next batch).
const UNPULLED: &str = "FROM mirror_pulls p \
    JOIN repositories r ON r.name = p.repository \
    JOIN manifests m ON m.repository_id = r.id AND m.digest = p.digest \
    WHERE p.upstream = $1 AND p.pulled_at <= $2 \
    AND NOT EXISTS (SELECT 1 FROM manifest_children c \
        WHERE c.repository_id = m.repository_id AND c.child_digest = m.digest)";

impl SqlMetadataStore {
    pub(super) async fn keep_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        upstream: &str,
        at: i64,
    ) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO mirror_pulls (repository, digest, upstream, pulled_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repository, digest) DO UPDATE SET upstream = excluded.upstream, \
             pulled_at = excluded.pulled_at WHERE mirror_pulls.pulled_at < excluded.pulled_at",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .bind(upstream)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn disown_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<()> {
        sqlx::query("DELETE FROM mirror_pulls WHERE repository = $1 AND digest = $2")
            .bind(repository.as_str())
            .bind(digest.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn record_mirror_pulls(&self, pulls: &[MirrorPull]) -> MetadataResult<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for pull in pulls {
            // Only rows a keep made: the registry's own manifests are never evicted.
            sqlx::query(
                "UPDATE mirror_pulls SET pulled_at = $3 \
                 WHERE repository = $1 AND digest = $2 AND pulled_at < $3",
            )
            .bind(pull.repository.as_str())
            .bind(pull.digest.as_str())
            .bind(pull.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn evict_unpulled_manifests(
        &self,
        upstream: &str,
        cutoff: i64,
        limit: u32,
        now: i64,
        apply: bool,
    ) -> MetadataResult<u64> {
        if !apply {
            return retrying!(
                async {
                    let row = sqlx::query(built(format!(
                        "SELECT COUNT(*) AS due FROM (SELECT m.digest {UNPULLED} LIMIT $3) d"
                    )))
                    .bind(upstream)
                    .bind(cutoff)
                    .bind(i64::from(limit))
                    .fetch_one(&self.pool)
                    .await?;
                    u64_of(&row, "due")
                }
                .await
            );
        }
        let mut tx = self.write_tx().await?;
        let evicted = self
            .forget_due_manifests(
                &mut tx,
                DueManifests {
                    from: UNPULLED,
                    params: &[Param::Text(upstream), Param::Int(cutoff)],
                    order: "p.pulled_at",
                    lock: "FOR UPDATE OF m, p SKIP LOCKED",
                    limit,
                },
                now,
            )
            .await?;
        // The evicted ones' rows, and those of manifests deleted some other way.
        sqlx::query(
            "DELETE FROM mirror_pulls WHERE upstream = $1 AND pulled_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM repositories r JOIN manifests m ON m.repository_id = r.id \
                 WHERE r.name = mirror_pulls.repository AND m.digest = mirror_pulls.digest)",
        )
        .bind(upstream)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(evicted)
    }
}
