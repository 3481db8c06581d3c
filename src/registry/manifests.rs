//! Manifests, tags, referrers and listings.

use std::sync::Arc;

use super::Registry;
use super::coalesce::Coalescer;
use super::gc::ImmutableTags;
use crate::error::{Condition, ErrorCode, RegistryError, RegistryResult};
use crate::metadata::events::{EventAction, NewEvent};
use crate::metadata::{
    ManifestDeletion, ManifestRecord, MetadataError, MetadataStore, NewManifest, Page,
    PutManifestOutcome, ReferrerRecord,
};
use crate::oci::{Digest, DigestAlgorithm, ParsedManifest, Reference, RepositoryName, Tag};

type ManifestKey = (RepositoryName, Reference);
type ManifestLookup = Result<Option<ManifestRecord>, MetadataError>;

/// Concurrent reads of one manifest share a query (see `coalesce`).
pub(crate) struct ManifestReads(Coalescer<ManifestKey, ManifestLookup>);

impl ManifestReads {
    pub(crate) fn new() -> Self {
        ManifestReads(Coalescer::new())
    }
}

/// A manifest accepted by [`Registry::put_manifest`].
#[derive(Clone, Debug, PartialEq)]
pub struct PushedManifest {
    /// Digest of the bytes received.
    pub digest: Digest,
    /// What validation found in it.
    pub parsed: ParsedManifest,
    /// Tags now pointing at it.
    pub tags: Vec<Tag>,
}

/// Where a stored manifest comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ManifestOrigin {
    /// A client's push: its blobs and children must be in the repository (unless
    /// `sparse_manifests`), and in a mirrored name it becomes the registry's own.
    Client,
    /// A mirror keeping what it fetched.
    #[cfg_attr(not(feature = "mirror"), allow(dead_code))]
    Mirror,
}

impl Registry {
    /// Validates and stores a manifest pushed to `reference` (`PUT`).
    pub async fn put_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
    ) -> RegistryResult<PushedManifest> {
        self.put_manifest_tagged(repository, reference, &[], content_type, body)
            .await
    }

    /// Validates and stores a manifest pushed to `reference`, and points `tags` at it too
    /// (`PUT …/manifests/<digest>?tag=a&tag=b`), all in one transaction.
    pub async fn put_manifest_tagged(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        body: &[u8],
    ) -> RegistryResult<PushedManifest> {
        self.store_manifest(
            repository,
            reference,
            tags,
            content_type,
            body,
            ManifestOrigin::Client,
        )
        .await
    }

    /// [`Registry::put_manifest_tagged`] for a manifest from `origin`.
    pub(crate) async fn store_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        body: &[u8],
        origin: ManifestOrigin,
    ) -> RegistryResult<PushedManifest> {
        let max = self.inner.options.max_manifest_size;
        if body.len() > max {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("manifest is {} bytes; the limit is {max}", body.len()),
            )
            .with_condition(Condition::TooLarge));
        }
        let parsed = ParsedManifest::parse(content_type, body)?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let algorithm = expected
                    .algorithm()
                    .ok_or_else(|| super::unsupported_digest_algorithm(expected))?;
                let computed = algorithm.digest(body);
                if computed != *expected {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        format!("manifest digest is {computed}, not {expected} as in the URL"),
                    ));
                }
                computed
            }
            Reference::Tag(_) => DigestAlgorithm::Sha256.digest(body),
        };
        // A mirror stores manifests before anyone pulls their blobs.
        let sparse = match origin {
            ManifestOrigin::Client => {
                self.disown_pushed_manifest(repository, &digest).await?;
                self.inner.options.sparse_manifests
            }
            ManifestOrigin::Mirror => true,
        };
        let mut all_tags: Vec<Tag> = Vec::with_capacity(tags.len() + 1);
        if let Reference::Tag(tag) = reference {
            all_tags.push(tag.clone());
        }
        for tag in tags {
            if !all_tags.contains(tag) {
                all_tags.push(tag.clone());
            }
        }
        // The change counter moves before and after the commit: a cached read can be neither
        // older than the commit once it is acknowledged, nor left behind by a crash mid-way
        // for longer than the cache's maximum age.
        let immutable: Vec<Tag> = all_tags
            .iter()
            .filter(|t| {
                self.inner
                    .options
                    .immutable_tags
                    .protects(repository.as_str(), t.as_str())
            })
            .cloned()
            .collect();
        self.manifests_changing();
        let outcome = self
            .inner
            .metadata
            .put_manifest(NewManifest {
                repository,
                digest: &digest,
                parsed: &parsed,
                content: body,
                tags: &all_tags,
                immutable: &immutable,
                require_references: !sparse,
                announce: match origin {
                    ManifestOrigin::Client => self.announcing(),
                    ManifestOrigin::Mirror => None,
                },
                now: self.now(),
            })
            .await;
        self.manifests_changing();
        match outcome? {
            PutManifestOutcome::Stored => Ok(PushedManifest {
                digest,
                parsed,
                tags: all_tags,
            }),
            PutManifestOutcome::ImmutableTag { tag, current } => Err(ImmutableTags::refusal(
                &tag,
                format!(
                    "tag {tag} of {repository} is immutable and already names {current}: \
                         it cannot be moved (push under a new tag instead)"
                ),
            )),
            PutManifestOutcome::MissingReferences { blobs, manifests } => {
                let missing = blobs
                    .iter()
                    .map(|d| (d, "blob"))
                    .chain(manifests.iter().map(|d| (d, "manifest")));
                let mut error: Option<RegistryError> = None;
                for (digest, what) in missing {
                    let message =
                        format!("{what} {digest} is not in repository {repository}; push it first");
                    let detail = serde_json::json!({ "digest": digest.as_str() });
                    error = Some(match error {
                        None => RegistryError::new(ErrorCode::ManifestBlobUnknown, message)
                            .with_detail(detail),
                        Some(e) => e.and(ErrorCode::ManifestBlobUnknown, message, Some(detail)),
                    });
                }
                Err(error.unwrap_or_else(|| {
                    RegistryError::internal("manifest refused without missing references")
                }))
            }
        }
    }

    fn manifests_changing(&self) {
        if let Some(cache) = &self.inner.manifest_cache {
            cache.changed();
        }
    }

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> RegistryResult<ManifestRecord> {
        let metadata = Arc::clone(&self.inner.metadata);
        let fetch = move |(repository, reference): ManifestKey| {
            let metadata: Arc<dyn MetadataStore> = Arc::clone(&metadata);
            async move { metadata.manifest(&repository, &reference).await }
        };
        let key = (repository.clone(), reference.clone());
        let cache = self.inner.manifest_cache.as_ref();
        let counter = cache.map(|c| c.counter());
        let cached = cache.and_then(|c| c.get(&key));
        let found = match cached {
            Some(hit) => hit,
            None => {
                let found = match self.inner.manifest_reads.0.get(key.clone(), fetch).await {
                    Some(result) => result?,
                    None => self.inner.metadata.manifest(repository, reference).await?,
                };
                if let (Some(cache), Some(counter)) = (cache, counter) {
                    cache.put(key, counter, found.clone());
                }
                found
            }
        };
        match found {
            Some(m) => Ok(m),
            None => Err(self
                .not_found(repository, ErrorCode::ManifestUnknown, reference)
                .await?),
        }
    }

    /// Whether any endpoint may want events of `action` (a caller can skip preparing them).
    pub fn announces(&self, action: EventAction) -> bool {
        self.inner.metadata.announces(action)
    }

    /// Records a pull of `manifest` for the endpoints subscribed to pulls. None are by
    /// default, and then nothing is written. The pull is served whether or not this works.
    pub async fn announce_pull(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        manifest: &ManifestRecord,
    ) {
        let metadata = &self.inner.metadata;
        if !metadata.announces(EventAction::Pull) {
            return;
        }
        let mut pulled = NewEvent::new(EventAction::Pull, repository, self.now())
            .by(self.origin())
            .with_digest(&manifest.digest)
            .with_object(&manifest.media_type, manifest.content.len() as u64);
        if let Reference::Tag(tag) = reference {
            pulled = pulled.with_tag(tag);
        }
        if let Err(error) = metadata.announce(&[pulled]).await {
            tracing::warn!(%repository, digest = %manifest.digest, %error, "the pull's event was not recorded");
        }
    }

    /// Deletes a tag, or a manifest with all its tags (`DELETE`).
    pub async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> RegistryResult<()> {
        let immutable = &self.inner.options.immutable_tags;
        if let Reference::Tag(tag) = reference
            && immutable.protects(repository.as_str(), tag.as_str())
        {
            return Err(ImmutableTags::refusal(
                tag,
                format!("tag {tag} of {repository} is immutable: it cannot be deleted"),
            ));
        }
        let guard = |tag: &str| immutable.protects(repository.as_str(), tag);
        self.manifests_changing();
        let deleted = match reference {
            Reference::Tag(tag) => self
                .inner
                .metadata
                .delete_tag(repository, tag, self.origin(), self.now())
                .await
                .map(|found| {
                    if found {
                        ManifestDeletion::Deleted
                    } else {
                        ManifestDeletion::NotFound
                    }
                }),
            Reference::Digest(digest) => {
                self.inner
                    .metadata
                    .delete_manifest(repository, digest, &guard, self.origin(), self.now())
                    .await
            }
        };
        self.manifests_changing();
        match deleted? {
            ManifestDeletion::Deleted => Ok(()),
            ManifestDeletion::Protected { tag } => Err(ImmutableTags::refusal(
                &tag,
                format!(
                    "manifest is named by the immutable tag {tag} of {repository}: \
                         it cannot be deleted"
                ),
            )),
            ManifestDeletion::NotFound => Err(self
                .not_found(repository, ErrorCode::ManifestUnknown, reference)
                .await?),
        }
    }

    /// Tags of a repository, in lexical order.
    pub async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> RegistryResult<Vec<String>> {
        self.inner
            .metadata
            .tags(repository, page)
            .await?
            .ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!("repository {repository} does not exist"),
                )
            })
    }

    /// Repositories, in lexical order.
    pub async fn repositories(&self, page: Page<'_>) -> RegistryResult<Vec<String>> {
        Ok(self.inner.metadata.repositories(page).await?)
    }

    /// Manifests of `repository` whose subject is `subject`.
    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: Page<'_>,
    ) -> RegistryResult<Vec<ReferrerRecord>> {
        Ok(self
            .inner
            .metadata
            .referrers(repository, subject, artifact_type, page)
            .await?)
    }
}
