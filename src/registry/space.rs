//! The free-space reserve: uploads stop before local disks fill up, so that the metadata
//! database always has room for the writes that free space (deletions, expiries, garbage
//! collection) and the registry recovers by itself once space is freed.

use super::Registry;
use crate::error::{RegistryError, RegistryResult};
use crate::instruments;

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

impl Registry {
    /// Free bytes where the registry writes on local disk: the least of the blob store's and
    /// the metadata database's, or `None` if neither is on local disk.
    pub async fn free_space(&self) -> Option<u64> {
        let blobs = match self.inner.blobs.free_space().await {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the blob store's free space");
                None
            }
        };
        let metadata = match self.inner.metadata.free_space().await {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database's free space");
                None
            }
        };
        let free = match (blobs, metadata) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(free) = free {
            metrics::gauge!(instruments::STORAGE_FREE).set(free as f64);
            metrics::gauge!(instruments::STORAGE_RESERVE)
                .set(self.inner.options.min_free_space as f64);
            metrics::gauge!(instruments::STORAGE_LOW).set(if self.space_is_low(free) {
                1.0
            } else {
                0.0
            });
        }
        free
    }

    fn space_is_low(&self, free: u64) -> bool {
        free < self.inner.options.min_free_space
    }

    /// Why storage is under pressure, if it is: free space below the reserve.
    pub async fn storage_pressure(&self) -> Option<String> {
        let reserve = self.inner.options.min_free_space;
        let free = self.free_space().await?;
        self.space_is_low(free).then(|| {
            format!(
                "{} MiB free on local storage, below the {} MiB reserve: uploads are refused",
                mib(free),
                mib(reserve)
            )
        })
    }

    /// Refuses (507) an upload of `incoming` more bytes that would leave less than the reserve
    /// free on local disk.
    pub(crate) async fn check_space(&self, incoming: u64) -> RegistryResult<()> {
        let reserve = self.inner.options.min_free_space;
        if reserve == 0 {
            return Ok(());
        }
        let Some(free) = self.free_space().await else {
            return Ok(());
        };
        if free >= reserve.saturating_add(incoming) {
            return Ok(());
        }
        metrics::counter!(instruments::UPLOADS_REFUSED_FOR_SPACE).increment(1);
        tracing::warn!(
            free,
            reserve,
            incoming,
            "upload refused: local storage below its reserve"
        );
        Err(RegistryError::storage_full(&format!(
            "local storage ({} MiB free, {} MiB kept in reserve for the database)",
            mib(free),
            mib(reserve)
        )))
    }
}
