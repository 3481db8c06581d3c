//! A mirror's state shared by every replica: when each tag read through was last checked
//! against its upstream, and which process is fetching which blob. Each call is one statement,
//! so each is atomic on its own: a claim is an upsert whose `WHERE` lets it replace only an
//! expired lease or the caller's own.

use sqlx::Row;

use super::SqlMetadataStore;
use super::transactions::retrying;
use crate::metadata::MetadataResult;
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
        repository: &RepositoryName,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> MetadataResult<bool> {
        let claimed = sqlx::query(
            "INSERT INTO mirror_fetches (digest, repository, owner, lease_until) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET repository = excluded.repository, \
             owner = excluded.owner, lease_until = excluded.lease_until \
             WHERE mirror_fetches.owner = excluded.owner OR mirror_fetches.lease_until < $5",
        )
        .bind(digest.as_str())
        .bind(repository.as_str())
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
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
