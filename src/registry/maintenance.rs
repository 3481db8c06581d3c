//! Background upkeep: expiring abandoned upload sessions and removing storage that no row
//! references any more. Safe to run on every replica at once: each step is idempotent and
//! every session or garbage entry is claimed by one transaction.

use std::future::Future;
use std::time::Duration;

use super::Registry;
use crate::error::RegistryResult;
use crate::instruments;

use futures::StreamExt;

const BATCH: u32 = 100;
/// Stored objects removed at once.
const REMOVALS_IN_FLIGHT: usize = 16;

/// What one maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Upload sessions expired.
    pub expired_uploads: u64,
    /// Garbage entries whose storage was removed.
    pub collected: u64,
    /// Garbage entries that could not be removed yet.
    pub failed: u64,
}

impl Registry {
    /// Expires idle upload sessions and removes queued garbage, once.
    pub async fn run_maintenance_once(&self) -> RegistryResult<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let now = self.now();
        let cutoff = now - super::millis(self.inner.options.upload_ttl);
        loop {
            let expired = self
                .inner
                .metadata
                .expire_uploads(cutoff, BATCH, now)
                .await?;
            report.expired_uploads += expired;
            if expired < u64::from(BATCH) {
                break;
            }
        }
        let mut seen = std::collections::HashSet::new();
        loop {
            let batch = self.inner.metadata.garbage(BATCH).await?;
            let fresh: Vec<_> = batch.into_iter().filter(|g| seen.insert(g.id)).collect();
            if fresh.is_empty() {
                break;
            }
            // Object stores answer deletes one at a time; several in flight keep a large
            // collection from taking one round trip per object.
            let mut removals = futures::stream::iter(fresh)
                .map(|garbage| async move {
                    let removed = match &garbage.storage_key {
                        Some(key) => self.inner.blobs.delete(key).await,
                        None => {
                            self.inner
                                .blobs
                                .discard_upload(&garbage.upload_id, &garbage.store_state)
                                .await
                        }
                    };
                    match removed {
                        Ok(()) => self
                            .inner
                            .metadata
                            .forget_garbage(garbage.id)
                            .await
                            .map(|()| true),
                        Err(e) => {
                            tracing::warn!(upload = %garbage.upload_id, error = %e, "could not remove upload storage");
                            Ok(false)
                        }
                    }
                })
                .buffer_unordered(REMOVALS_IN_FLIGHT);
            while let Some(removed) = removals.next().await {
                if removed? {
                    report.collected += 1;
                } else {
                    report.failed += 1;
                }
            }
        }
        metrics::counter!(instruments::MAINTENANCE_REMOVED, "what" => "expired_uploads")
            .increment(report.expired_uploads);
        metrics::counter!(instruments::MAINTENANCE_REMOVED, "what" => "garbage")
            .increment(report.collected);
        metrics::counter!(instruments::MAINTENANCE_FAILED).increment(report.failed);
        if report != MaintenanceReport::default() {
            tracing::info!(
                expired_uploads = report.expired_uploads,
                collected = report.collected,
                failed = report.failed,
                "maintenance pass"
            );
        }
        Ok(report)
    }

    /// Runs maintenance every `maintenance_interval` until `shutdown` resolves.
    pub async fn run_maintenance(self, shutdown: impl Future<Output = ()>) {
        every(
            self.inner.options.maintenance_interval,
            Duration::ZERO,
            shutdown,
            "maintenance pass",
            instruments::MAINTENANCE_RUNS,
            || self.run_maintenance_once(),
        )
        .await;
    }
}

/// Runs `pass` every `period`, the first time after `delay`, until `shutdown` resolves;
/// counts each outcome (`ok`, `error`) in the counter `runs` and logs failures as `what`.
pub(super) async fn every<T, F: Future<Output = RegistryResult<T>>>(
    period: Duration,
    delay: Duration,
    shutdown: impl Future<Output = ()>,
    what: &'static str,
    runs: &'static str,
    mut pass: impl FnMut() -> F,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + delay, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {
                let outcome = match pass().await {
                    Ok(_) => "ok",
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} failed");
                        "error"
                    }
                };
                metrics::counter!(runs, "outcome" => outcome).increment(1);
            }
        }
    }
}
