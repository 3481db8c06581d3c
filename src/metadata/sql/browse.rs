//! What the web UI reads besides the API's listings: repositories by a part of their name,
//! tags by push time with their manifests, manifests no tag names. Read-only, one statement
//! each (two where the repository's id is looked up first).

use bytes::Bytes;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::SqlMetadataStore;
use super::dialect::built;
use super::rows::{digest_of, limit_of};
use super::transactions::retrying;
use crate::metadata::{
    ListedManifest, ManifestRecord, MetadataError, MetadataResult, Page, PushedBefore,
};
use crate::oci::{Digest, RepositoryName};

/// Most digests bound in one `IN (…)` list.
const DIGESTS_PER_STATEMENT: usize = 100;

/// `needle` as a `LIKE` pattern matching names that contain it, `\` escaping the wildcards.
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A manifest from the columns `digest`, `media_type`, `content` and `subject`.
fn manifest_of(row: &AnyRow) -> MetadataResult<ManifestRecord> {
    let content: Vec<u8> = row.try_get("content")?;
    let subject: Option<String> = row.try_get("subject")?;
    Ok(ManifestRecord {
        digest: digest_of(row, "digest")?,
        media_type: row.try_get("media_type")?,
        content: Bytes::from(content),
        subject: subject
            .map(|s| Digest::parse(&s))
            .transpose()
            .map_err(|e| MetadataError::Corrupt(format!("subject: {e}")))?,
    })
}

impl SqlMetadataStore {
    pub(super) async fn search_repositories(
        &self,
        needle: &str,
        page: Page<'_>,
    ) -> MetadataResult<Vec<String>> {
        let pattern = contains_pattern(needle);
        retrying!(
            async {
                let rows = sqlx::query(
                    "SELECT name FROM repositories WHERE name > $1 AND name LIKE $2 ESCAPE '\\' \
                     ORDER BY name LIMIT $3",
                )
                .bind(page.after.unwrap_or(""))
                .bind(pattern.as_str())
                .bind(limit_of(page))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
            }
            .await
        )
    }

    async fn repository_id(&self, repository: &RepositoryName) -> MetadataResult<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub(super) async fn recent_tags(
        &self,
        repository: &RepositoryName,
        before: Option<PushedBefore<'_>>,
        limit: u32,
    ) -> MetadataResult<Option<Vec<ListedManifest>>> {
        retrying!(
            async {
                let Some(repository_id) = self.repository_id(repository).await? else {
                    return Ok(None);
                };
                // Without a cursor, every tag is "before" a push at the end of time.
                let (pushed_at, tag) = before.map_or((i64::MAX, ""), |b| (b.pushed_at, b.tag));
                let rows = sqlx::query(
                "SELECT t.name AS tag, t.updated_at, m.digest, m.media_type, m.content, m.subject \
                 FROM tags t JOIN manifests m \
                   ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
                 WHERE t.repository_id = $1 \
                   AND (t.updated_at, t.name) < ($2, $3) \
                 ORDER BY t.updated_at DESC, t.name DESC LIMIT $4",
            )
            .bind(repository_id)
            .bind(pushed_at)
            .bind(tag)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
                rows.iter()
                    .map(|r| {
                        Ok(ListedManifest {
                            tag: Some(r.try_get("tag")?),
                            pushed_at: r.try_get("updated_at")?,
                            manifest: manifest_of(r)?,
                        })
                    })
                    .collect::<MetadataResult<Vec<_>>>()
                    .map(Some)
            }
            .await
        )
    }

    pub(super) async fn untagged_manifests(
        &self,
        repository: &RepositoryName,
        limit: u32,
    ) -> MetadataResult<Vec<ListedManifest>> {
        retrying!(async {
            let Some(repository_id) = self.repository_id(repository).await? else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(
                "SELECT m.digest, m.media_type, m.content, m.subject, m.created_at FROM manifests m \
                 WHERE m.repository_id = $1 AND NOT EXISTS ( \
                   SELECT 1 FROM tags t \
                   WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) \
                 ORDER BY m.created_at DESC, m.digest LIMIT $2",
            )
            .bind(repository_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ListedManifest {
                        tag: None,
                        pushed_at: r.try_get("created_at")?,
                        manifest: manifest_of(r)?,
                    })
                })
                .collect()
        }
        .await)
    }

    pub(super) async fn manifests_among(
        &self,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> MetadataResult<Vec<ManifestRecord>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        retrying!(
            async {
                let Some(repository_id) = self.repository_id(repository).await? else {
                    return Ok(Vec::new());
                };
                let mut found = Vec::with_capacity(digests.len());
                for chunk in digests.chunks(DIGESTS_PER_STATEMENT) {
                    let placeholders: Vec<String> =
                        (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                    let sql = format!(
                        "SELECT digest, media_type, content, subject FROM manifests \
                     WHERE repository_id = $1 AND digest IN ({})",
                        placeholders.join(", ")
                    );
                    let mut query = sqlx::query(built(sql)).bind(repository_id);
                    for digest in chunk {
                        query = query.bind(digest.as_str());
                    }
                    for row in query.fetch_all(&self.pool).await? {
                        found.push(manifest_of(&row)?);
                    }
                }
                Ok(found)
            }
            .await
        )
    }

    pub(super) async fn tags_naming(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        limit: u32,
    ) -> MetadataResult<Vec<String>> {
        retrying!(
            async {
                let rows = sqlx::query(
                    "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id \
                     WHERE r.name = $1 AND t.manifest_digest = $2 ORDER BY t.name LIMIT $3",
                )
                .bind(repository.as_str())
                .bind(digest.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
            }
            .await
        )
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn wildcards_in_a_needle_match_only_themselves() {
        assert_eq!(contains_pattern("team/app"), "%team/app%");
        assert_eq!(contains_pattern("my_app"), "%my\\_app%");
        assert_eq!(contains_pattern("100%"), "%100\\%%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
    }
}
