//! Gauges read when metrics are scraped rather than tracked on every change.

use super::Registry;
use crate::instruments;

impl Registry {
    /// Sets the gauges that are read on demand: free space, part buffers, the database pool
    /// and the upload sessions in progress. A gauge whose source does not answer keeps its
    /// last value.
    pub async fn refresh_gauges(&self) {
        let _ = self.free_space().await;
        let buffers = &self.inner.buffers;
        metrics::gauge!(instruments::PART_BUFFERS).set(buffers.count() as f64);
        metrics::gauge!(instruments::PART_BUFFERS_IN_USE).set(buffers.in_use() as f64);
        metrics::gauge!(instruments::PART_BUFFER_WAITERS).set(buffers.waiting() as f64);
        if let Some(pool) = self.inner.metadata.pool_usage() {
            let idle = pool.idle.min(pool.open);
            metrics::gauge!(instruments::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
            metrics::gauge!(instruments::DB_POOL_CONNECTIONS, "state" => "in_use")
                .set(pool.open - idle);
            metrics::gauge!(instruments::DB_POOL_MAX).set(pool.max);
        }
        match self.inner.metadata.upload_count().await {
            Ok(count) => metrics::gauge!(instruments::UPLOAD_SESSIONS).set(count as f64),
            Err(e) => tracing::warn!(error = %e, "cannot count upload sessions for metrics"),
        }
    }
}
