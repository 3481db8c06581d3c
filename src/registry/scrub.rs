//! Scrubbing: reading stored blobs back to find bytes that rotted or vanished, and checking
//! that every manifest's references resolve. Safe while the registry serves: it only reads,
//! and a repair is one transaction per blob.

use futures::StreamExt;

use super::Registry;
use crate::error::RegistryResult;
use crate::metadata::{BlobRecord, DanglingReference};
use crate::oci::{Digest, Hasher, RepositoryName};
use crate::storage::StorageError;

/// Blobs read at once.
const CONCURRENCY: usize = 4;
/// Most dangling references reported.
const MAX_DANGLING: u32 = 10_000;

/// What to scrub.
#[derive(Clone, Debug, Default)]
pub struct ScrubOptions {
    /// Only the blobs linked to this repository, and only its manifests.
    pub repository: Option<RepositoryName>,
    /// Read only this percentage of the blobs, picked at random (0 < p ≤ 100).
    pub sample_percent: Option<f64>,
    /// Forget blobs whose bytes are damaged or gone, so that clients push them again.
    pub repair: bool,
    /// Also check that manifests' references resolve.
    pub check_references: bool,
    /// The registry accepts sparse manifests, whose references need not resolve: those that
    /// do not are reported (a blob collected while a sparse manifest naming it was pushed
    /// looks the same as one never pushed) but are not problems.
    pub sparse_manifests: bool,
}

/// What is wrong with a blob's stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobProblem {
    /// They hash to another digest.
    Corrupt {
        /// What they hash to.
        computed: Digest,
    },
    /// There are more or fewer of them than recorded.
    WrongSize {
        /// How many there are.
        stored: u64,
    },
    /// They are gone.
    Missing,
    /// They cannot be read (an I/O error; not repaired, it may pass).
    Unreadable(String),
}

/// A blob found damaged.
#[derive(Clone, Debug)]
pub struct DamagedBlob {
    /// The blob as recorded.
    pub blob: BlobRecord,
    /// What is wrong.
    pub problem: BlobProblem,
    /// Whether it was forgotten (with `repair`).
    pub forgotten: bool,
}

/// What a scrub found.
#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    /// Blobs read.
    pub blobs_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Blobs found damaged.
    pub damaged: Vec<DamagedBlob>,
    /// Manifest references that do not resolve (at most 10,000).
    pub dangling: Vec<DanglingReference>,
    /// Whether `dangling` lists references of sparse manifests, which may dangle.
    pub dangling_allowed: bool,
}

impl ScrubReport {
    /// Whether anything was wrong.
    pub fn found_problems(&self) -> bool {
        !self.damaged.is_empty() || (!self.dangling.is_empty() && !self.dangling_allowed)
    }
}

/// Progress of a scrub, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum ScrubProgress {
    /// About to read this many blobs of this many bytes (before sampling).
    Planned {
        /// Blobs.
        blobs: u64,
        /// Bytes.
        bytes: u64,
    },
    /// One blob of this many bytes was read (or skipped by sampling).
    Blob {
        /// Its size.
        bytes: u64,
    },
}

/// Whether sampling keeps a blob: a hash of its digest and the run's seed below the rate.
fn sampled(digest: &Digest, seed: u64, percent: f64) -> bool {
    use std::hash::{Hash, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    digest.as_str().hash(&mut h);
    (h.finish() % 1_000_000) as f64 / 10_000.0 < percent
}

impl Registry {
    /// Reads `blob`'s stored bytes and checks them against its digest and size.
    async fn check_blob(&self, blob: &BlobRecord) -> RegistryResult<Option<BlobProblem>> {
        let Some(algorithm) = blob.digest.algorithm() else {
            return Ok(None);
        };
        let mut stream = match self.inner.blobs.read(&blob.storage_key, None).await {
            Ok(s) => s,
            Err(StorageError::NotFound(_)) => return Ok(Some(BlobProblem::Missing)),
            Err(e @ StorageError::Unavailable(_)) => return Err(e.into()),
            Err(e) => return Ok(Some(BlobProblem::Unreadable(e.to_string()))),
        };
        let mut hasher = Hasher::new(algorithm);
        let mut stored = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    stored += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Err(e @ StorageError::Unavailable(_)) => return Err(e.into()),
                Err(e) => return Ok(Some(BlobProblem::Unreadable(e.to_string()))),
            }
        }
        if stored != blob.size {
            return Ok(Some(BlobProblem::WrongSize { stored }));
        }
        let computed = hasher.finish();
        Ok((computed != blob.digest).then_some(BlobProblem::Corrupt { computed }))
    }

    /// Reads every stored blob (or a sample, or one repository's) and verifies it, checks that
    /// manifests' references resolve, and with `repair` forgets the blobs whose bytes are
    /// damaged or gone. `progress` hears of each blob.
    pub async fn scrub(
        &self,
        options: &ScrubOptions,
        progress: &mut (dyn FnMut(ScrubProgress) + Send),
    ) -> RegistryResult<ScrubReport> {
        let metadata = &self.inner.metadata;
        let repository = options.repository.as_ref();
        let (blobs, bytes) = metadata.blob_totals(repository).await?;
        progress(ScrubProgress::Planned { blobs, bytes });
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let mut report = ScrubReport::default();
        let mut after: Option<Digest> = None;
        loop {
            let page = metadata.list_blobs(repository, after.as_ref(), 100).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.digest.clone());
            let checks = futures::stream::iter(page.into_iter().map(|blob| async move {
                let keep = options
                    .sample_percent
                    .is_none_or(|p| sampled(&blob.digest, seed, p));
                let problem = if keep {
                    self.check_blob(&blob).await
                } else {
                    Ok(None)
                };
                (blob, keep, problem)
            }))
            .buffered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            for (blob, checked, problem) in checks {
                progress(ScrubProgress::Blob { bytes: blob.size });
                if !checked {
                    continue;
                }
                report.blobs_checked += 1;
                report.bytes_checked += blob.size;
                let Some(problem) = problem? else {
                    continue;
                };
                // The blob may have been forgotten meanwhile, and its bytes with it.
                if problem == BlobProblem::Missing
                    && metadata
                        .stored_blob(&blob.digest)
                        .await?
                        .is_none_or(|b| b.storage_key != blob.storage_key)
                {
                    continue;
                }
                tracing::error!(digest = %blob.digest, key = %blob.storage_key, ?problem, "damaged blob");
                let repairable = !matches!(problem, BlobProblem::Unreadable(_));
                let forgotten =
                    options.repair && repairable && self.forget_blob(&blob.digest).await?;
                report.damaged.push(DamagedBlob {
                    blob,
                    problem,
                    forgotten,
                });
            }
        }
        if options.check_references {
            report.dangling_allowed = options.sparse_manifests;
            report.dangling = metadata
                .dangling_references(repository, MAX_DANGLING)
                .await?;
        }
        Ok(report)
    }

    /// Forgets a blob and removes its bytes: clients pull 404 and push it again. Whether it
    /// was there.
    pub async fn forget_blob(&self, digest: &Digest) -> RegistryResult<bool> {
        let Some(garbage) = self.inner.metadata.forget_blob(digest, self.now()).await? else {
            return Ok(false);
        };
        if let Some(key) = &garbage.storage_key {
            match self.inner.blobs.delete(key).await {
                Ok(()) => self.inner.metadata.forget_garbage(garbage.id).await?,
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not delete a forgotten blob's bytes; maintenance retries")
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metadata::memory::MemoryMetadataStore;
    use crate::oci::{DigestAlgorithm, Reference};
    use crate::storage::memory::MemoryBlobStore;

    /// With sparse manifests, the collector may take a blob while a manifest naming it is
    /// pushed (the push does not refuse missing blobs, so it cannot refuse a vanishing one):
    /// such a reference looks like one to a blob never pushed. Scrub reports both, as allowed.
    #[tokio::test]
    async fn scrub_reports_references_of_sparse_manifests_without_failing() {
        let registry = super::Registry::builder(
            Arc::new(MemoryBlobStore::new(1 << 20)),
            Arc::new(MemoryMetadataStore::new()),
        )
        .sparse_manifests(true)
        .build();
        let absent = DigestAlgorithm::Sha256.digest(b"a layer nobody pushed");
        let config = DigestAlgorithm::Sha256.digest(b"{}");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{absent}","size":21}}]}}"#
        );
        let repository = RepositoryName::parse("sparse/mirror").unwrap();
        registry
            .put_manifest(
                &repository,
                &Reference::parse("v1").unwrap(),
                Some("application/vnd.oci.image.manifest.v1+json"),
                manifest.as_bytes(),
            )
            .await
            .unwrap();
        let options = ScrubOptions {
            check_references: true,
            sparse_manifests: true,
            ..ScrubOptions::default()
        };
        let report = registry.scrub(&options, &mut |_| {}).await.unwrap();
        let targets: Vec<&Digest> = report.dangling.iter().map(|d| &d.target).collect();
        assert!(
            targets.contains(&&absent) && targets.contains(&&config),
            "{targets:?}"
        );
        assert!(report.dangling_allowed);
        assert!(!report.found_problems());

        let strict = ScrubOptions {
            sparse_manifests: false,
            ..options
        };
        let report = registry.scrub(&strict, &mut |_| {}).await.unwrap();
        assert!(
            report.found_problems(),
            "without sparse manifests they are problems"
        );
    }
}
