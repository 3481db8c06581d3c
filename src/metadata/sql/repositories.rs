//! Repositories: made on first use by the transaction that first links a blob or stores a
//! manifest in them, and listed in bytewise order (`COLLATE "C"` on Postgres).

use sqlx::Row;

use super::SqlMetadataStore;
use super::rows::limit_of;
use super::transactions::{WriteTx, retrying};
use crate::metadata::events::{EventAction, EventOrigin, NewEvent};
use crate::metadata::{MetadataResult, Page};
use crate::oci::RepositoryName;

impl SqlMetadataStore {
    pub(super) async fn repository_exists(
        &self,
        repository: &RepositoryName,
    ) -> MetadataResult<bool> {
        retrying!(
            async {
                Ok(sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
                    .bind(repository.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .is_some())
            }
            .await
        )
    }

    pub(super) async fn repositories(&self, page: Page<'_>) -> MetadataResult<Vec<String>> {
        retrying!(
            async {
                let rows = sqlx::query(
                    "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                )
                .bind(page.after.unwrap_or(""))
                .bind(limit_of(page))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
            }
            .await
        )
    }

    /// The id of `repository`, made in `tx` if it is new (which subscribed endpoints hear of
    /// in the same transaction, as asked for by `announce`'s origin, unless it is `None`).
    pub(super) async fn ensure_repository(
        &self,
        tx: &mut WriteTx,
        repository: &RepositoryName,
        now: i64,
        announce: Option<&EventOrigin>,
    ) -> MetadataResult<i64> {
        if let Some(row) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_optional(&mut **tx)
            .await?
        {
            return Ok(row.try_get("id")?);
        }
        let made = sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(repository.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if let Some(origin) = announce
            && made.rows_affected() > 0
        {
            let created = NewEvent::new(EventAction::RepositoryCreate, repository, now).by(origin);
            self.record_events(tx, &[created]).await?;
        }
        Ok(sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_one(&mut **tx)
            .await?
            .try_get("id")?)
    }
}
