//! Every metric Berth records: its name, labels and help text, in one place.
//!
//! Recording goes through the `metrics` facade, so an embedding application picks the
//! exporter (or none: then recording costs next to nothing). The `berth` binary installs a
//! Prometheus recorder and serves `/metrics` on the admin listener; gauges that are cheaper to
//! read than to track (free space, part buffers, database pool, upload sessions) are read
//! when scraped, by [`crate::registry::Registry::refresh_gauges`].

/// Requests answered, by `operation` and `status`.
pub const HTTP_REQUESTS: &str = "berth_http_requests_total";
/// Time from a request's arrival to the last byte of its answer, by `operation`.
pub const HTTP_REQUEST_DURATION: &str = "berth_http_request_duration_seconds";
/// Request body bytes received, by `operation`.
pub const HTTP_RECEIVED_BYTES: &str = "berth_http_received_bytes_total";
/// Response body bytes sent, by `operation`.
pub const HTTP_SENT_BYTES: &str = "berth_http_sent_bytes_total";
/// Requests being served.
pub const HTTP_IN_FLIGHT: &str = "berth_http_requests_in_flight";

/// TLS connections refused during the handshake, by `reason` (`timeout`, `handshake`).
pub const TLS_HANDSHAKE_FAILURES: &str = "berth_tls_handshake_failures_total";
/// Certificate reloads, by `outcome` (`loaded`, `failed`).
pub const TLS_RELOADS: &str = "berth_tls_reloads_total";

/// Upload sessions started and neither finished, cancelled nor expired (all replicas).
pub const UPLOAD_SESSIONS: &str = "berth_upload_sessions";
/// Part buffers in the pool.
pub const PART_BUFFERS: &str = "berth_part_buffers";
/// Part buffers held by uploads.
pub const PART_BUFFERS_IN_USE: &str = "berth_part_buffers_in_use";
/// Uploads waiting for a part buffer.
pub const PART_BUFFER_WAITERS: &str = "berth_part_buffer_waiters";

/// Metadata store calls, by `operation` (one call is one transaction).
pub const METADATA_DURATION: &str = "berth_metadata_operation_duration_seconds";
/// Failed metadata store calls, by `operation` and `kind`.
pub const METADATA_ERRORS: &str = "berth_metadata_operation_errors_total";
/// Database connections, by `state` (`idle`, `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "berth_db_pool_connections";
/// The most connections the pool opens.
pub const DB_POOL_MAX: &str = "berth_db_pool_max_connections";

/// S3 API calls including their retries, by `operation` (`PutObject`, `UploadPart`, …).
pub const S3_DURATION: &str = "berth_s3_request_duration_seconds";
/// Failed S3 API calls, by `operation` and `status` (the HTTP status, or `timeout`,
/// `connection`, `other` when there was no answer).
pub const S3_ERRORS: &str = "berth_s3_request_errors_total";

/// Maintenance passes, by `outcome` (`ok`, `error`).
pub const MAINTENANCE_RUNS: &str = "berth_maintenance_runs_total";
/// What maintenance removed, by `what` (`expired_uploads`, `garbage`).
pub const MAINTENANCE_REMOVED: &str = "berth_maintenance_removed_total";
/// Garbage entries maintenance could not remove yet (retried on the next pass).
pub const MAINTENANCE_FAILED: &str = "berth_maintenance_failures_total";

/// Garbage collection passes, by `outcome` (`ok`, `error`).
pub const GC_RUNS: &str = "berth_gc_runs_total";
/// What garbage collection deleted, by `what` (`manifests` untagged, `mirrored_manifests`
/// nobody pulled, `links`, `blobs`).
pub const GC_REMOVED: &str = "berth_gc_removed_total";
/// Bytes of the blobs garbage collection deleted.
pub const GC_FREED_BYTES: &str = "berth_gc_freed_bytes_total";

/// Free bytes where blobs are written (local directory) or the database file lives.
pub const STORAGE_FREE: &str = "berth_storage_free_bytes";
/// The free space uploads leave untouched (`min_free_space`).
pub const STORAGE_RESERVE: &str = "berth_storage_reserve_bytes";
/// 1 while free space is at or below the reserve.
pub const STORAGE_LOW: &str = "berth_storage_low";
/// Uploads refused with 507 for want of space.
pub const UPLOADS_REFUSED_FOR_SPACE: &str = "berth_uploads_refused_for_space_total";
/// Manifest reads through a mirror, by upstream and outcome.
pub const MIRROR_MANIFESTS: &str = "berth_mirror_manifest_reads_total";
/// Blob pulls of mirrored names answered from what is kept, by upstream.
pub const MIRROR_BLOB_HITS: &str = "berth_mirror_blob_hits_total";
/// Blob fetches from upstreams, by upstream and outcome.
pub const MIRROR_BLOB_FETCHES: &str = "berth_mirror_blob_fetches_total";
/// Bytes fetched from upstreams into storage, by upstream.
pub const MIRROR_FETCHED_BYTES: &str = "berth_mirror_fetched_bytes_total";
/// Pulls that waited for another request's (or replica's) fetch instead of fetching.
pub const MIRROR_FETCH_WAITS: &str = "berth_mirror_fetch_waits_total";
/// Requests sent to upstreams (token requests included), by `upstream`, `method` and
/// `status` (`error` when no answer came).
pub const MIRROR_UPSTREAM_REQUESTS: &str = "berth_mirror_upstream_requests_total";
/// Writes of the pulls of kept manifests (for eviction), by `outcome` (`ok`, `error`).
pub const MIRROR_PULL_FLUSHES: &str = "berth_mirror_pull_flushes_total";

/// Events not yet delivered, by `endpoint` (all replicas; read by the delivering replicas).
pub const EVENTS_PENDING: &str = "berth_events_pending";
/// Dead-lettered events kept, by `endpoint`.
pub const EVENTS_DEAD: &str = "berth_events_dead_letters";
/// Events delivered, by `endpoint`.
pub const EVENTS_DELIVERED: &str = "berth_events_delivered_total";
/// Events delivered again after an attempt whose outcome was a failure or unknown (a
/// receiver may have seen them before), by `endpoint`.
pub const EVENTS_REDELIVERED: &str = "berth_events_redelivered_total";
/// Failed attempts that will be retried, by `endpoint`.
pub const EVENTS_RETRIED: &str = "berth_events_retried_total";
/// Events dead-lettered, by `endpoint`.
pub const EVENTS_DEAD_LETTERED: &str = "berth_events_dead_lettered_total";
/// Time from a change's commit to its event's delivery, by `endpoint`.
pub const EVENT_DELIVERY_LATENCY: &str = "berth_event_delivery_latency_seconds";
/// Time of a successful delivery request, by `endpoint`.
pub const EVENT_REQUEST_DURATION: &str = "berth_event_request_duration_seconds";

/// Registers units and help texts with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "Requests answered, by operation and status");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to the last byte of its answer, by operation"
    );
    describe_counter!(
        HTTP_RECEIVED_BYTES,
        Unit::Bytes,
        "Request body bytes received, by operation"
    );
    describe_counter!(
        HTTP_SENT_BYTES,
        Unit::Bytes,
        "Response body bytes sent, by operation"
    );
    describe_gauge!(HTTP_IN_FLIGHT, "Requests being served");
    describe_gauge!(EVENTS_PENDING, "Events not yet delivered, by endpoint");
    describe_gauge!(EVENTS_DEAD, "Dead-lettered events kept, by endpoint");
    describe_counter!(EVENTS_DELIVERED, "Events delivered, by endpoint");
    describe_counter!(
        EVENTS_REDELIVERED,
        "Events delivered after an earlier failed or unsettled attempt, by endpoint"
    );
    describe_counter!(
        EVENTS_RETRIED,
        "Failed event deliveries to be retried, by endpoint"
    );
    describe_counter!(EVENTS_DEAD_LETTERED, "Events dead-lettered, by endpoint");
    describe_histogram!(
        EVENT_DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from a change's commit to its event's delivery, by endpoint"
    );
    describe_histogram!(
        EVENT_REQUEST_DURATION,
        Unit::Seconds,
        "Time of a successful event delivery request, by endpoint"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS connections refused during the handshake, by reason (timeout, handshake)"
    );
    describe_counter!(
        MIRROR_MANIFESTS,
        "Manifest reads of mirrored names, by upstream and outcome (cached, revalidated, fetched, stale, missing, failed)"
    );
    describe_counter!(
        MIRROR_BLOB_HITS,
        "Blob pulls of mirrored names answered from what is kept, by upstream"
    );
    describe_counter!(
        MIRROR_BLOB_FETCHES,
        "Blob fetches from upstreams, by upstream and outcome (stored, failed)"
    );
    describe_counter!(
        MIRROR_FETCHED_BYTES,
        Unit::Bytes,
        "Bytes read from upstreams into storage, by upstream"
    );
    describe_counter!(
        MIRROR_FETCH_WAITS,
        "Blob pulls that waited for a fetch already running (on any replica), by upstream"
    );
    describe_counter!(
        MIRROR_UPSTREAM_REQUESTS,
        "Requests sent to upstreams, token requests included, by upstream, method and status"
    );
    describe_counter!(
        MIRROR_PULL_FLUSHES,
        "Batched writes of the pulls of mirrored manifests (for eviction), by outcome"
    );
    describe_counter!(
        TLS_RELOADS,
        "Reloads of changed TLS files, by outcome (loaded, failed)"
    );
    describe_gauge!(
        UPLOAD_SESSIONS,
        "Upload sessions in progress (all replicas: read from the metadata database)"
    );
    describe_gauge!(PART_BUFFERS, "Part buffers in the pool");
    describe_gauge!(PART_BUFFERS_IN_USE, "Part buffers held by uploads");
    describe_gauge!(PART_BUFFER_WAITERS, "Uploads waiting for a part buffer");
    describe_histogram!(
        METADATA_DURATION,
        Unit::Seconds,
        "Metadata store calls (one transaction each), by operation"
    );
    describe_counter!(
        METADATA_ERRORS,
        "Failed metadata store calls, by operation and kind"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database connections, by state");
    describe_gauge!(DB_POOL_MAX, "The most connections the pool opens");
    describe_histogram!(
        S3_DURATION,
        Unit::Seconds,
        "S3 API calls including retries, by operation"
    );
    describe_counter!(
        S3_ERRORS,
        "Failed S3 API calls, by operation and HTTP status (404 on HeadObject is how a missing object is found)"
    );
    describe_counter!(MAINTENANCE_RUNS, "Maintenance passes, by outcome");
    describe_counter!(
        MAINTENANCE_REMOVED,
        "Expired upload sessions and removed garbage entries"
    );
    describe_counter!(
        MAINTENANCE_FAILED,
        "Garbage entries maintenance could not remove yet"
    );
    describe_counter!(GC_RUNS, "Garbage collection passes, by outcome");
    describe_counter!(
        GC_REMOVED,
        "Untagged manifests, mirrored manifests nobody pulled, blob links and blobs garbage collection deleted"
    );
    describe_counter!(
        GC_FREED_BYTES,
        Unit::Bytes,
        "Bytes of the blobs garbage collection deleted"
    );
    describe_gauge!(
        STORAGE_FREE,
        Unit::Bytes,
        "Free bytes where blobs are written or the database file lives"
    );
    describe_gauge!(
        STORAGE_RESERVE,
        Unit::Bytes,
        "Free space that uploads leave untouched"
    );
    describe_gauge!(STORAGE_LOW, "1 while free space is at or below the reserve");
    describe_counter!(
        UPLOADS_REFUSED_FOR_SPACE,
        "Uploads refused with 507 for want of space"
    );
}

/// Histogram buckets, in seconds, for every `_seconds` metric: from a cached manifest read
/// (sub-millisecond) to a multi-gigabyte layer (minutes).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
