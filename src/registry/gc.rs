//! Online garbage collection and immutable tags.
//!
//! Nothing is found by scanning: every change that may leave a blob link or a blob
//! unreferenced queues a review of it in the same transaction (see the metadata store's
//! `collect_*` methods and ARCHITECTURE.md for the argument that no push can lose a layer).
//! A pass takes due reviews in batches, deletes what is still unreferenced (rows first), and
//! then removes the bytes of the deleted blobs through the storage garbage queue. Every
//! replica runs passes; a review is claimed by one transaction at a time.

use std::future::Future;
use std::time::Duration;

use super::{Registry, millis};
use crate::error::{ErrorCode, RegistryError, RegistryResult};
use crate::glob::glob_match;
use crate::instruments;
use crate::metadata::Collected;
use crate::oci::Tag;

/// Reviews one transaction takes.
const BATCH: u32 = 500;

/// Tags that may not be moved or deleted once set: `repository-glob:tag-glob` patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImmutableTags {
    patterns: Vec<(String, String)>,
}

impl ImmutableTags {
    /// Parses patterns such as `release/**:v*` (the glob syntax of ACL rules: `*` within a
    /// path segment, `**` across segments, `?` one character).
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<ImmutableTags, String> {
        let mut parsed = Vec::new();
        for pattern in patterns {
            let pattern = pattern.trim();
            if pattern.is_empty() {
                continue;
            }
            let Some((repository, tag)) = pattern.split_once(':') else {
                return Err(format!(
                    "immutable tag pattern {pattern:?} has no ':' between the repository and the tag \
                     pattern (e.g. \"release/**:v*\")"
                ));
            };
            if repository.is_empty() || tag.is_empty() || tag.contains(':') {
                return Err(format!(
                    "immutable tag pattern {pattern:?} must be REPOSITORY-GLOB:TAG-GLOB, both non-empty"
                ));
            }
            parsed.push((repository.to_owned(), tag.to_owned()));
        }
        Ok(ImmutableTags { patterns: parsed })
    }

    /// Whether no tag is immutable.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `tag` of `repository` may not be moved or deleted once set.
    pub fn protects(&self, repository: &str, tag: &str) -> bool {
        self.patterns
            .iter()
            .any(|(r, t)| glob_match(r, repository) && glob_match(t, tag))
    }

    /// The refusal of a change to a protected tag.
    pub(crate) fn refusal(tag: &Tag, message: String) -> RegistryError {
        RegistryError::new(ErrorCode::Denied, message)
            .with_detail(serde_json::json!({ "tag": tag.as_str() }))
    }
}

/// What a garbage collection pass did (or, for a preview, would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Reviews looked at (a preview: reviews due).
    pub reviewed: u64,
    /// Untagged manifests deleted (with `gc_untagged_after`).
    pub manifests: u64,
    /// Manifests kept from upstreams that nobody pulled for their `evict_after` (a preview
    /// counts those due now, not the children they would free).
    pub evicted: u64,
    /// Blob links deleted from repositories.
    pub links: u64,
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Upload sessions expired.
    pub expired_uploads: u64,
    /// Stored objects and upload leftovers removed from the blob store.
    pub removed_objects: u64,
    /// Objects the blob store could not remove yet (tried again next pass).
    pub failed_objects: u64,
}

impl GcReport {
    fn add(&mut self, collected: Collected) {
        self.reviewed += collected.reviewed;
        self.manifests += collected.manifests;
        self.links += collected.links;
        self.blobs += collected.blobs;
        self.bytes += collected.bytes;
    }
}

/// Progress of a pass, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcProgress {
    /// Reviews due when the pass started.
    Planned {
        /// How many.
        reviews: u64,
    },
    /// A batch of reviews was done.
    Reviewed {
        /// How many.
        reviews: u64,
    },
}

impl Registry {
    fn gc_cutoffs(&self, now: i64) -> (i64, Option<i64>) {
        let options = &self.inner.options;
        (
            now.saturating_sub(millis(options.gc_grace_period)),
            options
                .gc_untagged_after
                .map(|after| now.saturating_sub(millis(after))),
        )
    }

    /// What a pass would remove now, changing nothing (`berth gc --dry-run`). Counts blobs of
    /// the reviews due now; untagged manifests it would delete free their blobs only one grace
    /// period later, and are counted as manifests.
    pub async fn gc_preview(&self) -> RegistryResult<GcReport> {
        let now = self.now();
        let (cutoff, untagged_cutoff) = self.gc_cutoffs(now);
        let collected = self
            .inner
            .metadata
            .collect_preview(cutoff, untagged_cutoff)
            .await?;
        let mut report = GcReport::default();
        report.add(collected);
        report.evicted = self.evict_unpulled(now, false).await?;
        let ttl = millis(self.inner.options.upload_ttl);
        report.expired_uploads = self
            .inner
            .metadata
            .expired_upload_count(now.saturating_sub(ttl))
            .await?;
        Ok(report)
    }

    /// One garbage collection pass: expires idle uploads, deletes untagged manifests (when
    /// configured), then links and blobs whose reviews are due and that nothing references,
    /// and removes the bytes of everything deleted. With `on_progress`, the reviews due are
    /// counted first (a query as costly as the pass's own), to plan a progress bar.
    pub async fn collect_garbage(
        &self,
        mut on_progress: Option<&mut (dyn FnMut(GcProgress) + Send)>,
    ) -> RegistryResult<GcReport> {
        let now = self.now();
        let (cutoff, untagged_cutoff) = self.gc_cutoffs(now);
        let metadata = &self.inner.metadata;
        // Eviction failing (a deadlock, a lost connection) must not hold up the rest of the
        // pass: it is logged and tried again next pass.
        let evicted = match self.evict_unpulled(now, true).await {
            Ok(evicted) => evicted,
            Err(e) => {
                tracing::warn!(error = %e, "evicting mirrored manifests nobody pulled failed");
                0
            }
        };
        let mut report = GcReport {
            evicted,
            ..GcReport::default()
        };
        if let Some(untagged_cutoff) = untagged_cutoff {
            loop {
                let done = metadata
                    .collect_untagged_manifests(untagged_cutoff, BATCH, now)
                    .await?;
                report.add(done);
                if done.manifests < u64::from(BATCH) {
                    break;
                }
            }
        }
        if let Some(on_progress) = on_progress.as_mut() {
            let planned = metadata.collect_preview(cutoff, None).await?;
            on_progress(GcProgress::Planned {
                reviews: planned.reviewed,
            });
        }
        for queue in [ReviewQueue::Links, ReviewQueue::Blobs] {
            loop {
                let done = match queue {
                    ReviewQueue::Links => metadata.collect_links(cutoff, BATCH, now).await?,
                    ReviewQueue::Blobs => metadata.collect_blobs(cutoff, BATCH, now).await?,
                };
                report.add(done);
                if let Some(on_progress) = on_progress.as_mut() {
                    on_progress(GcProgress::Reviewed {
                        reviews: done.reviewed,
                    });
                }
                if done.reviewed < u64::from(BATCH) {
                    break;
                }
            }
        }
        let upkeep = self.run_maintenance_once().await?;
        report.expired_uploads = upkeep.expired_uploads;
        report.removed_objects = upkeep.collected;
        report.failed_objects = upkeep.failed;

        for (what, count) in [
            ("manifests", report.manifests),
            ("mirrored_manifests", report.evicted),
            ("links", report.links),
            ("blobs", report.blobs),
        ] {
            metrics::counter!(instruments::GC_REMOVED, "what" => what).increment(count);
        }
        metrics::counter!(instruments::GC_FREED_BYTES).increment(report.bytes);
        if report.manifests + report.evicted + report.links + report.blobs > 0 {
            tracing::info!(
                reviewed = report.reviewed,
                manifests = report.manifests,
                evicted = report.evicted,
                links = report.links,
                blobs = report.blobs,
                bytes = report.bytes,
                "garbage collection pass"
            );
        }
        Ok(report)
    }

    /// Runs a garbage collection pass every `gc_interval` until `shutdown` resolves.
    pub async fn run_gc(self, shutdown: impl Future<Output = ()>) {
        let period = self.inner.options.gc_interval;
        if period.is_zero() {
            return;
        }
        // Replicas started together need not collide on every pass.
        let spread = u64::try_from(period.as_millis() / 10)
            .unwrap_or(u64::MAX)
            .max(1);
        let jitter = Duration::from_millis(uuid::Uuid::new_v4().as_u64_pair().0 % spread);
        super::maintenance::every(
            period,
            jitter,
            shutdown,
            "garbage collection pass",
            instruments::GC_RUNS,
            || self.collect_garbage(None),
        )
        .await;
    }
}

/// The two queues a pass empties, links first: deleting a link can free its blob at once.
#[derive(Clone, Copy)]
enum ReviewQueue {
    Links,
    Blobs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_tag_patterns_match_repository_and_tag() {
        let tags = ImmutableTags::parse(["release/**:v*", "base:latest"]).unwrap();
        assert!(tags.protects("release/app", "v1.2"));
        assert!(tags.protects("release/a/b", "v1"));
        assert!(!tags.protects("release/app", "latest"));
        assert!(tags.protects("base", "latest"));
        assert!(!tags.protects("base/x", "latest"));
        assert!(!tags.protects("dev/app", "v1"));
        assert!(ImmutableTags::parse(["", " "]).unwrap().is_empty());
    }

    #[test]
    fn malformed_immutable_tag_patterns_are_refused() {
        for bad in ["release", ":v1", "release:", "a:b:c"] {
            let error = ImmutableTags::parse([bad]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
