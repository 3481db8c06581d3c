//! Blobs in S3 (AWS S3, MinIO, Garage and other S3-compatible stores).
//!
//! Each upload session streams into one multipart upload completed at `blobs/<upload-id>`;
//! completion is zero-copy (`CompleteMultipartUpload`, no server-side copy, no re-read). Part
//! numbers come from the session row, so every request uses numbers nobody used before: a
//! request that loses a race uploads parts nobody lists. S3 wants every part but the last to be
//! at least 5 MiB: bytes a request ends with that cannot form such a part are handed back to
//! the registry, which records them with the session in the same transaction as the new
//! offset, and gives them to the next writer to send at the head of its first part. A blob
//! whose bytes all arrive in one request and fit one buffer is written with one `PutObject`
//! (to `blobs/<upload-id>.<nonce>`, unique to its writer).
//!
//! A small request that brings the staged bytes to a part's worth does not wait for the part:
//! its new bytes are staged too, the request is answered once they are recorded, and the part
//! is uploaded meanwhile and recorded afterwards, in one transaction that drops the staged
//! bytes it holds, if they are still the first staged ones (a *promotion*). Until then the
//! staged bytes stay the durable copy, so a process killed in between loses nothing. The next
//! request on the same process carries only the bytes after the promotion, copied from memory
//! rather than read back; a request elsewhere carries them all, and whichever of the two parts
//! is recorded last replaces the other (parts record their start offset).
//!
//! Berth enforces S3's rules itself (part sizes, part count) rather than trusting the server
//! to: some S3-compatible stores accept what AWS refuses.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::instruments;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::local_uploads::LocalUploads;
use super::{
    BlobStore, ByteRange, ByteStream, PartNumbers, PartRecord, Staged, StorageError, StorageResult,
    UploadWriter,
};

mod writer;

use writer::S3Writer;

/// S3's smallest part size for every part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's largest part size.
pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
/// S3's highest part number.
pub const MAX_PARTS: u32 = 10_000;
/// Copies of staged bytes one process keeps in all, so that an upload's next small request on
/// the same process does not read them back from the metadata store.
const HELD_STAGED_BUDGET: usize = 64 * 1024 * 1024;

/// How to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Region; from the AWS environment when `None`.
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible stores; AWS when `None`.
    pub endpoint: Option<String>,
    /// Endpoint clients reach, used for presigned URLs when it differs from `endpoint`.
    pub public_endpoint: Option<String>,
    /// Path-style addressing (MinIO, Garage).
    pub force_path_style: bool,
    /// Prefix of every key Berth writes.
    pub prefix: String,
    /// Multipart part size (5 MiB to 5 GiB).
    pub part_size: usize,
    /// Parts one request uploads concurrently.
    pub upload_concurrency: usize,
    /// Lifetime of presigned URLs.
    pub presign_expiry: Duration,
    /// Longest wait to open a connection to S3.
    pub connect_timeout: Duration,
    /// Longest one request to S3 may take, body included (each retry has its own).
    pub timeout: Duration,
}

struct Shared {
    client: Client,
    presigner: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    concurrency: usize,
    presign_expiry: Duration,
    /// Sign request payloads (hash every byte once more for SigV4): needed for integrity over
    /// plain HTTP; over HTTPS, TLS protects the bytes and `UNSIGNED-PAYLOAD` saves the work.
    sign_payload: bool,
    local: LocalUploads,
}

/// A blob store in an S3 bucket.
#[derive(Clone)]
pub struct S3BlobStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.shared.bucket)
            .field("prefix", &self.shared.prefix)
            .field("part_size", &self.shared.part_size)
            .finish()
    }
}

/// What the session row remembers for this store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UploadState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<String>,
}

impl UploadState {
    fn parse(s: &str) -> StorageResult<UploadState> {
        if s.is_empty() {
            return Ok(UploadState::default());
        }
        serde_json::from_str(s).map_err(|e| StorageError::State(format!("S3 upload state: {e}")))
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn s3_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            StorageError::Unavailable(format!(
                "S3 {operation}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            ))
        }
        _ => {
            let code = err.code().unwrap_or("unknown");
            let message = err.message().unwrap_or("");
            let status = err.raw_response().map(|r| r.status().as_u16());
            if status == Some(507) || STORAGE_FULL_CODES.contains(&code) {
                return StorageError::Full(format!("S3 {operation}: {code}: {message}"));
            }
            if status == Some(503) || TRANSIENT_CODES.contains(&code) {
                return StorageError::Unavailable(format!("S3 {operation}: {code}: {message}"));
            }
            StorageError::Backend {
                operation,
                message: format!("{code}: {message}"),
            }
        }
    }
}

/// Error codes S3-compatible stores answer when they are out of space or over a quota.
const STORAGE_FULL_CODES: &[&str] = &[
    "XMinioStorageFull",
    "XMinioAdminBucketQuotaExceeded",
    "QuotaExceeded",
    "InsufficientStorage",
    "StorageFull",
];

/// Error codes meaning "try again": throttling and temporary unavailability.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "XMinioServerNotInitialized",
];

fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.code()
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn build_client(config: &S3Config, endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(config.force_path_style)
        // Berth hashes every byte itself; SDK checksums would hash them again, and their
        // streaming trailers are not understood by every S3-compatible store.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // An S3 that hangs (frozen, overloaded, partitioned) must not hold requests for ever:
        // they fail as unavailable (503) and clients retry.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .operation_attempt_timeout(config.timeout)
                .build(),
        );
    if sdk.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    builder = builder.interceptor(Measured);
    Client::from_conf(builder.build())
}

/// Records every S3 call's duration (retries included) and failures
/// ([`instruments::S3_DURATION`], [`instruments::S3_ERRORS`]).
#[derive(Debug)]
struct Measured;

#[derive(Debug, Clone, Copy)]
struct CallStarted(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for CallStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_sdk_s3::config::Intercept for Measured {
    fn name(&self) -> &'static str {
        "berth-metrics"
    }

    fn read_before_execution(
        &self,
        _context: &aws_sdk_s3::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state()
            .store_put(CallStarted(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| s3_operation_label(m.name()))
            .unwrap_or("unknown");
        if let Some(started) = cfg.load::<CallStarted>() {
            metrics::histogram!(instruments::S3_DURATION, "operation" => operation)
                .record(started.0.elapsed());
        }
        if let Some(Err(error)) = context.output_or_error() {
            let status = match context.response() {
                Some(response) => status_label(response.status().as_u16()),
                None if error.is_timeout_error() => "timeout",
                None if error.is_connector_error() => "connection",
                None => "other",
            };
            metrics::counter!(instruments::S3_ERRORS, "operation" => operation, "status" => status)
                .increment(1);
        }
        Ok(())
    }
}

/// The operations Berth calls, as static labels (anything else is `other`).
fn s3_operation_label(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "PutObject",
        "GetObject",
        "HeadObject",
        "DeleteObject",
        "DeleteObjects",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListMultipartUploads",
        "HeadBucket",
    ];
    KNOWN
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("other")
}

fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        403 => "403",
        404 => "404",
        409 => "409",
        412 => "412",
        416 => "416",
        429 => "429",
        500 => "500",
        503 => "503",
        507 => "507",
        s if s >= 500 => "5xx",
        _ => "4xx",
    }
}

impl S3BlobStore {
    /// Configures a store; credentials come from the standard AWS chain (environment, shared
    /// files, web identity / IRSA, instance metadata).
    pub async fn connect(config: S3Config) -> StorageResult<S3BlobStore> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&config.part_size) {
            return Err(StorageError::Limit(format!(
                "S3 part size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {}",
                config.part_size
            )));
        }
        let client = build_client(&config, config.endpoint.as_deref()).await;
        let presigner = match &config.public_endpoint {
            Some(public) => build_client(&config, Some(public)).await,
            None => client.clone(),
        };
        Ok(S3BlobStore {
            shared: Arc::new(Shared {
                client,
                presigner,
                bucket: config.bucket,
                prefix: config.prefix,
                part_size: config.part_size,
                concurrency: config.upload_concurrency.max(1),
                presign_expiry: config.presign_expiry,
                sign_payload: config
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
                local: LocalUploads::new(HELD_STAGED_BUDGET),
            }),
        })
    }
}

impl Shared {
    fn blob_key(&self, upload_id: &str) -> String {
        format!("{}blobs/{upload_id}", self.prefix)
    }

    async fn put_object(&self, key: &str, body: Bytes) -> StorageResult<()> {
        let len = body.len() as i64;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len)
            .body(S3Body::from(body));
        let sent = if self.sign_payload {
            request.send().await
        } else {
            request.customize().disable_payload_signing().send().await
        };
        sent.map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    /// Uploads part `number` of `multipart`; `start` is the upload offset of its first byte.
    async fn upload_part(
        &self,
        key: &str,
        multipart: &str,
        number: u32,
        bytes: Bytes,
        start: u64,
    ) -> StorageResult<PartRecord> {
        let size = bytes.len() as u64;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(multipart)
            .part_number(number as i32)
            .content_length(size as i64)
            .body(S3Body::from(bytes));
        let sent = if self.sign_payload {
            request.send().await
        } else {
            request.customize().disable_payload_signing().send().await
        };
        let out = sent.map_err(|e| s3_error("UploadPart", e))?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        tracing::debug!(key, part = number, size, start, "uploaded part");
        Ok(PartRecord {
            number,
            size,
            etag,
            start: Some(start),
        })
    }

    async fn keys_under(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| s3_error("ListObjectsV2", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(keys)
    }

    async fn delete_keys(&self, keys: Vec<String>) -> StorageResult<()> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::State(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::State(e.to_string()))?;
            // DeleteObjects requires a Content-MD5 or checksum; the SDK adds one when required.
            let result = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await;
            if let Err(e) = result {
                // Fall back to single deletes (some stores lack DeleteObjects).
                tracing::debug!(error = %s3_error("DeleteObjects", e), "falling back to DeleteObject");
                for key in batch {
                    self.delete_key(key).await?;
                }
            }
        }
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> StorageResult<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(s3_error("DeleteObject", e)),
        }
    }

    async fn abort_multipart(&self, key: &str, upload: &str) -> StorageResult<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(s3_error("AbortMultipartUpload", e)),
        }
    }

    /// Every multipart upload under `prefix`, as (key, upload id).
    async fn multiparts_under(&self, prefix: &str) -> StorageResult<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut key_marker = None;
        let mut id_marker = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send()
                .await
                .map_err(|e| s3_error("ListMultipartUploads", e))?;
            found.extend(
                page.uploads()
                    .iter()
                    .filter_map(|u| Some((u.key()?.to_owned(), u.upload_id()?.to_owned()))),
            );
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_owned);
                id_marker = page.next_upload_id_marker().map(str::to_owned);
                if key_marker.is_none() && id_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn part_size(&self) -> usize {
        self.shared.part_size
    }

    fn write_concurrency(&self) -> usize {
        self.shared.concurrency
    }

    async fn begin_upload(&self, _upload_id: &str) -> StorageResult<String> {
        // Nothing to create yet: the multipart upload starts with the first part, so a small
        // blob sent in one request costs one PutObject.
        Ok(UploadState::default().encode())
    }

    async fn open_upload(
        &self,
        upload_id: &str,
        offset: u64,
        store_state: &str,
        staged: Staged,
        part_numbers: Arc<dyn PartNumbers>,
    ) -> StorageResult<Box<dyn UploadWriter>> {
        let state = UploadState::parse(store_state)?;
        let staged_len = staged.len() as u64;
        let base = offset.checked_sub(staged_len).ok_or_else(|| {
            StorageError::State(format!(
                "upload {upload_id}: {staged_len} bytes staged but only {offset} received"
            ))
        })?;
        // Staged bytes this process is writing as a part already are not carried again.
        let after = (staged_len > 0)
            .then(|| self.shared.local.promotion_from(upload_id, base))
            .flatten()
            .filter(|p| p.to <= offset);
        let carried = after.as_ref().map_or(staged_len, |p| offset - p.to) as usize;
        let mut writer = S3Writer {
            staged: staged.source(),
            carried,
            after,
            shared: Arc::clone(&self.shared),
            upload_id: upload_id.to_owned(),
            key: self.shared.blob_key(upload_id),
            state,
            written: Vec::new(),
            part_numbers,
            in_flight: VecDeque::new(),
            unrecorded: Vec::new(),
        };
        if writer.carried >= MIN_PART_SIZE.max(self.shared.part_size / 2)
            && writer.state.multipart.is_some()
        {
            // So many staged bytes that they would crowd out a buffer (promotions failed, or
            // processes that started them stopped): they become a part before anything else
            // is written.
            writer.promote_carried(offset).await?;
        }
        Ok(Box::new(writer))
    }

    async fn discard_upload(&self, upload_id: &str, _store_state: &str) -> StorageResult<()> {
        let shared = &self.shared;
        shared.local.forget(upload_id);
        let key = shared.blob_key(upload_id);
        for (k, id) in shared.multiparts_under(&key).await? {
            shared.abort_multipart(&k, &id).await?;
        }
        let keys = shared.keys_under(&key).await?;
        shared.delete_keys(keys).await
    }

    async fn read(&self, key: &str, range: Option<ByteRange>) -> StorageResult<ByteStream> {
        let mut request = self
            .shared
            .client
            .get_object()
            .bucket(&self.shared.bucket)
            .key(key);
        if let Some(r) = range {
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = request.send().await.map_err(|e| {
            if error_code(&e) == Some("NoSuchKey") {
                StorageError::NotFound(key.to_owned())
            } else {
                s3_error("GetObject", e)
            }
        })?;
        let stream = futures::stream::unfold(out.body, |mut body| async move {
            body.next().await.map(|chunk| {
                (
                    chunk.map_err(|e| StorageError::Backend {
                        operation: "GetObject",
                        message: e.to_string(),
                    }),
                    body,
                )
            })
        });
        Ok(stream.boxed())
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        self.shared.delete_key(key).await
    }

    async fn object_size(&self, key: &str) -> StorageResult<Option<u64>> {
        let head = self
            .shared
            .client
            .head_object()
            .bucket(&self.shared.bucket)
            .key(key)
            .send()
            .await;
        match head {
            Ok(out) => Ok(out.content_length().and_then(|l| u64::try_from(l).ok())),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(e) => Err(s3_error("HeadObject", e)),
        }
    }

    async fn presigned_url(&self, key: &str) -> StorageResult<Option<String>> {
        let config = PresigningConfig::expires_in(self.shared.presign_expiry)
            .map_err(|e| StorageError::State(format!("presign expiry: {e}")))?;
        let request = self
            .shared
            .presigner
            .get_object()
            .bucket(&self.shared.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| s3_error("presign GetObject", e))?;
        Ok(Some(request.uri().to_owned()))
    }

    async fn stored_keys(&self) -> StorageResult<Vec<String>> {
        let prefix = format!("{}blobs/", self.shared.prefix);
        let mut keys = self.shared.keys_under(&prefix).await?;
        keys.extend(
            self.shared
                .multiparts_under(&prefix)
                .await?
                .into_iter()
                .map(|(key, _)| format!("{key}#upload")),
        );
        keys.sort();
        Ok(keys)
    }

    async fn check(&self) -> StorageResult<()> {
        self.shared
            .client
            .head_bucket()
            .bucket(&self.shared.bucket)
            .send()
            .await
            .map_err(|e| match s3_error("HeadBucket", e) {
                StorageError::Backend { message, .. } => {
                    StorageError::Unavailable(format!("bucket {}: {message}", self.shared.bucket))
                }
                other => other,
            })?;
        Ok(())
    }
}
