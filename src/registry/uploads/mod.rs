//! The upload engine: blob uploads streamed into the blob store, resumable by any process.
//!
//! A request's body is cut into pieces of the store's part size, hashed as it arrives and
//! written piece by piece. Whenever the store reports pieces durable, the session row is
//! updated, conditionally on the offset the request started from, with the new offset and
//! the hash state at that offset. Any process can therefore continue the upload and verify the
//! digest at the end without reading a byte back, and a request that loses a race on a session
//! (the update finds another offset) gets 416 while nothing it wrote becomes part of the blob.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::Registry;
use crate::error::{Condition, ErrorCode, RegistryError, RegistryResult};
use crate::metadata::{BlobCommit, BlobRecord, SessionUpdate, UploadSession};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepositoryName};
use crate::storage::{ByteRange, ByteStream, StorageError};

mod appender;

use appender::{Appender, Publication};

/// The id of an upload session as the registry hands it out (a UUID); anything else names
/// no upload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UploadId(String);

/// Why a string is not an upload id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an upload id")]
pub struct UploadIdError(String);

impl UploadId {
    /// Validates an id a client sent.
    pub fn parse(id: &str) -> Result<UploadId, UploadIdError> {
        match uuid::Uuid::parse_str(id) {
            Ok(_) => Ok(UploadId(id.to_owned())),
            Err(_) => Err(UploadIdError(id.to_owned())),
        }
    }

    fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as the metadata store keys sessions by it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request body as the upload engine reads it.
pub type BodyStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What a request declares about the bytes it carries (`Content-Range`, `Content-Length`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Offset of the first byte, when the request states it.
    pub start: Option<u64>,
    /// Number of bytes, when the request states it.
    pub length: Option<u64>,
}

/// A refusal with the session's current offset, for a request that does not continue the upload
/// where it stands.
pub(crate) fn out_of_order(offset: u64, message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUploadInvalid, message)
        .with_condition(Condition::OutOfOrder)
        .with_detail(serde_json::json!({ "offset": offset }))
        .with_upload_offset(offset)
}

fn upload_unknown(id: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        format!(
            "upload {id} is not in progress (it may have completed, been cancelled or expired)"
        ),
    )
}

fn unsupported_algorithm(digest: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::DigestInvalid,
        format!(
            "digest algorithm {:?} is not supported for uploads; use sha256 or sha512",
            digest.algorithm_name()
        ),
    )
}

impl Registry {
    /// Opens an upload session for `repository`, hashing with `algorithm` until told otherwise.
    pub async fn start_upload(
        &self,
        repository: &RepositoryName,
        algorithm: DigestAlgorithm,
    ) -> RegistryResult<UploadSession> {
        self.check_space(0).await?;
        let id = UploadId::new();
        let store_state = self.inner.blobs.begin_upload(id.as_str()).await?;
        let now = self.now();
        let session = UploadSession {
            id: id.0,
            repository: repository.clone(),
            offset: 0,
            algorithm,
            hash_state: Hasher::new(algorithm).save(),
            store_state,
            committing: false,
            staged_len: 0,
            created_at: now,
            updated_at: now,
        };
        // `begin_upload` wrote nothing: whatever the outcome of this insert, no bytes are
        // left without a row to own them.
        self.inner.metadata.create_upload(&session).await?;
        Ok(session)
    }

    /// An upload session of `repository`.
    pub async fn upload_session(
        &self,
        repository: &RepositoryName,
        id: &UploadId,
    ) -> RegistryResult<UploadSession> {
        match self.inner.metadata.upload(id.as_str()).await? {
            Some(s) if &s.repository == repository => Ok(s),
            _ => Err(upload_unknown(id.as_str())),
        }
    }

    /// Appends a chunk (`PATCH`). Returns the session as it stands afterwards.
    pub async fn append_upload(
        &self,
        repository: &RepositoryName,
        id: &UploadId,
        chunk: ChunkSpec,
        body: &mut BodyStream,
    ) -> RegistryResult<UploadSession> {
        self.check_space(0).await?;
        let mut appender = Appender::open(self, repository, id, chunk.start, false).await?;
        if let Err(e) = appender.append(body, chunk.length, None).await {
            return Err(e.with_upload_offset(appender.session.offset));
        }
        Ok(appender.session)
    }

    /// Appends an optional last chunk and publishes the blob as `digest` (`PUT`).
    pub async fn finish_upload(
        &self,
        repository: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
        chunk: ChunkSpec,
        body: &mut BodyStream,
    ) -> RegistryResult<BlobRecord> {
        self.finish(
            repository,
            id,
            digest,
            chunk,
            body,
            &mut Publication::NotAsked,
        )
        .await
    }

    /// [`Registry::finish_upload`], telling through `publication` whether the blob's commit
    /// was asked of the metadata store: after that, an error does not say that the upload's
    /// bytes are not the blob.
    async fn finish(
        &self,
        repository: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
        chunk: ChunkSpec,
        body: &mut BodyStream,
        publication: &mut Publication,
    ) -> RegistryResult<BlobRecord> {
        let Some(algorithm) = digest.algorithm() else {
            return Err(unsupported_algorithm(digest));
        };
        // A PUT that only completes an upload needs no space; one with bytes does.
        if chunk.length.is_some_and(|l| l > 0) {
            self.check_space(0).await?;
        }
        let mut appender = Appender::open(self, repository, id, chunk.start, true).await?;
        if let Err(e) = appender.append(body, chunk.length, Some(digest)).await {
            return Err(e.with_upload_offset(appender.session.offset));
        }
        let session = appender.session.clone();
        let size = session.offset;
        let verified_in_stream = session.algorithm == algorithm;
        if verified_in_stream {
            let computed = Hasher::restore(session.algorithm, &session.hash_state)
                .map_err(RegistryError::internal)?
                .finish();
            if computed != *digest {
                return Err(digest_mismatch(digest, &computed, size));
            }
        }
        if !session.committing {
            // No piece claimed it (the blob's bytes all arrived before this request).
            appender.writer.drain().await?;
            match self
                .inner
                .metadata
                .begin_commit(id.as_str(), size, self.now())
                .await?
            {
                SessionUpdate::Saved => {}
                SessionUpdate::Conflict { offset } => {
                    return Err(out_of_order(
                        offset,
                        "another request moved the upload first",
                    ));
                }
                SessionUpdate::Gone => return Err(upload_unknown(id.as_str())),
            }
        }
        let parts = self.inner.metadata.upload_parts(id.as_str()).await?;
        let storage_key = appender.writer.complete(&parts, size).await?;
        drop(appender);
        if !verified_in_stream {
            // The bytes were hashed with another algorithm before the client named this one:
            // verify by reading the finished object once.
            let computed = self.hash_object(&storage_key, algorithm).await?;
            if computed != *digest {
                self.discard_session(id.as_str()).await;
                return Err(digest_mismatch(digest, &computed, size));
            }
        }
        let blob = BlobRecord {
            digest: digest.clone(),
            size,
            storage_key,
        };
        let lost = self.lost_bytes(digest).await?;
        *publication = Publication::Asked;
        match self
            .inner
            .metadata
            .commit_blob(
                id.as_str(),
                &blob,
                lost.as_deref(),
                self.announcing(),
                self.now(),
            )
            .await?
        {
            BlobCommit::Created => {
                if let Some(lost) = lost {
                    tracing::warn!(%digest, lost, key = %blob.storage_key, "a push replaced the missing bytes of a stored blob");
                }
                self.inner.blobs.published(&blob.storage_key, blob.size);
                Ok(blob)
            }
            BlobCommit::Deduplicated { garbage_id } => {
                self.collect_garbage_entry(garbage_id, id.as_str(), &session.store_state)
                    .await;
                Ok(self
                    .inner
                    .metadata
                    .blob(repository, digest)
                    .await?
                    .unwrap_or(blob))
            }
            BlobCommit::SessionGone => match self.inner.metadata.blob(repository, digest).await? {
                // A racing PUT of the same session published it first.
                Some(existing) => Ok(existing),
                None => Err(upload_unknown(id.as_str())),
            },
        }
    }

    /// The storage key of `digest`'s row if the bytes it names are gone or not its size (lost
    /// to a disk or an operator): a push of the blob then replaces them instead of being
    /// thrown away as a duplicate. `None` when there is no row, its bytes are there, or the
    /// store cannot tell sizes cheaply. An error when the store cannot be asked now: the
    /// push is answered 503 rather than acknowledged over bytes that may be gone.
    async fn lost_bytes(&self, digest: &Digest) -> RegistryResult<Option<String>> {
        let Some(stored) = self.inner.metadata.stored_blob(digest).await? else {
            return Ok(None);
        };
        let lost = match self.inner.blobs.object_size(&stored.storage_key).await {
            Err(StorageError::NotFound(_)) => true,
            Ok(Some(size)) => size != stored.size,
            Ok(None) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(lost.then_some(stored.storage_key))
    }

    /// Uploads a whole blob in one request (`POST ?digest=`).
    pub async fn upload_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        chunk: ChunkSpec,
        body: &mut BodyStream,
    ) -> RegistryResult<BlobRecord> {
        let Some(algorithm) = digest.algorithm() else {
            return Err(unsupported_algorithm(digest));
        };
        let session = self.start_upload(repository, algorithm).await?;
        let mut publication = Publication::NotAsked;
        let result = self
            .finish(
                repository,
                &UploadId(session.id.clone()),
                digest,
                ChunkSpec {
                    start: None,
                    ..chunk
                },
                body,
                &mut publication,
            )
            .await;
        // The client never saw this session: where it stood means nothing to it.
        let result = result.map_err(RegistryError::without_upload_offset);
        if result.is_err() && !self.discard_session(&session.id).await {
            match publication {
                // Nobody knows this session's id and no blob row can name its bytes: they
                // must not linger until it expires, even when the database cannot record its
                // end (a full disk); the row expires later and finds nothing to remove.
                Publication::NotAsked => {
                    if let Err(e) = self
                        .inner
                        .blobs
                        .discard_upload(&session.id, &session.store_state)
                        .await
                    {
                        tracing::warn!(upload = %session.id, error = %e, "could not remove a failed upload's bytes");
                    }
                }
                // The commit may have landed with its reply lost: the bytes may be the blob.
                // If it did not, the session row is still there and its expiry removes them.
                Publication::Asked => {
                    tracing::warn!(upload = %session.id, "a failed upload's bytes are left to its expiry: its commit may have landed");
                }
            }
        }
        result
    }

    /// Cancels an upload (`DELETE`) and removes its bytes.
    pub async fn cancel_upload(
        &self,
        repository: &RepositoryName,
        id: &UploadId,
    ) -> RegistryResult<()> {
        self.upload_session(repository, id).await?;
        match self
            .inner
            .metadata
            .cancel_upload(id.as_str(), self.now())
            .await?
        {
            Some(garbage) => {
                self.collect_garbage_entry(garbage.id, id.as_str(), &garbage.store_state)
                    .await;
                Ok(())
            }
            None => Err(upload_unknown(id.as_str())),
        }
    }

    /// Ends a session and removes its storage, logging failures (the sweeper retries).
    /// Whether the session's end was recorded.
    pub(crate) async fn discard_session(&self, id: &str) -> bool {
        match self.inner.metadata.cancel_upload(id, self.now()).await {
            Ok(Some(garbage)) => {
                self.collect_garbage_entry(garbage.id, id, &garbage.store_state)
                    .await;
                true
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(upload = id, error = %e, "could not cancel upload session");
                false
            }
        }
    }

    pub(crate) async fn collect_garbage_entry(
        &self,
        garbage_id: i64,
        upload_id: &str,
        store_state: &str,
    ) {
        match self
            .inner
            .blobs
            .discard_upload(upload_id, store_state)
            .await
        {
            Ok(()) => {
                if let Err(e) = self.inner.metadata.forget_garbage(garbage_id).await {
                    tracing::warn!(upload = upload_id, error = %e, "could not forget garbage entry");
                }
            }
            Err(e) => {
                tracing::warn!(upload = upload_id, error = %e, "could not remove upload storage; will retry")
            }
        }
    }

    async fn hash_object(&self, key: &str, algorithm: DigestAlgorithm) -> RegistryResult<Digest> {
        let mut stream = self.inner.blobs.read(key, None).await?;
        let mut hasher = Hasher::new(algorithm);
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hasher.finish())
    }

    /// A blob linked to `repository`.
    pub async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> RegistryResult<BlobRecord> {
        match self.inner.metadata.blob(repository, digest).await? {
            Some(blob) => Ok(blob),
            None => Err(self
                .not_found(repository, ErrorCode::BlobUnknown, digest)
                .await?),
        }
    }

    /// Streams a blob's bytes (or a range of them). A blob whose stored object is gone or not
    /// its recorded size fails here, before any of it is answered; a stream that ends early
    /// fails instead of ending, so that no client takes a short body for the blob.
    pub async fn read_blob(
        &self,
        blob: &BlobRecord,
        range: Option<ByteRange>,
    ) -> RegistryResult<ByteStream> {
        let damaged = |what: String| {
            tracing::error!(digest = %blob.digest, key = %blob.storage_key, "{what}");
            RegistryError::new(
                ErrorCode::Unknown,
                format!(
                    "the stored bytes of blob {} are damaged; the registry's operator can find \
                     and forget damaged blobs with `berth scrub --repair`, after which it can be \
                     pushed again",
                    blob.digest
                ),
            )
        };
        match self.inner.blobs.object_size(&blob.storage_key).await {
            Ok(Some(size)) if size != blob.size => {
                return Err(damaged(format!(
                    "blob is damaged: {size} bytes stored, {} recorded",
                    blob.size
                )));
            }
            Err(StorageError::NotFound(_)) => {
                return Err(damaged("blob is missing from storage".to_owned()));
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let expected = range.map_or(blob.size, |r| r.len());
        let stream = self.inner.blobs.read(&blob.storage_key, range).await?;
        let digest = blob.digest.clone();
        Ok(exact_length(stream, expected, digest))
    }

    /// Unlinks a blob from `repository` (`DELETE`); its bytes stay while other links exist.
    pub async fn delete_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> RegistryResult<()> {
        if self
            .inner
            .metadata
            .unlink_blob(repository, digest, self.origin(), self.now())
            .await?
        {
            Ok(())
        } else {
            Err(self
                .not_found(repository, ErrorCode::BlobUnknown, digest)
                .await?)
        }
    }

    /// Links a blob already in the registry into `repository`: from `from` if given, else
    /// from any repository. `None` when it was not found.
    pub async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> RegistryResult<Option<BlobRecord>> {
        Ok(self
            .inner
            .metadata
            .mount_blob(repository, digest, from, self.announcing(), self.now())
            .await?)
    }

    /// The 404 for something missing in `repository`: `NAME_UNKNOWN` if the repository itself
    /// does not exist, else `code`.
    pub(crate) async fn not_found(
        &self,
        repository: &RepositoryName,
        code: ErrorCode,
        what: impl std::fmt::Display,
    ) -> RegistryResult<RegistryError> {
        if self.inner.metadata.repository_exists(repository).await? {
            let noun = match code {
                ErrorCode::BlobUnknown => "blob",
                _ => "manifest",
            };
            Ok(RegistryError::new(
                code,
                format!("{noun} {what} is not in repository {repository}"),
            ))
        } else {
            Ok(RegistryError::new(
                ErrorCode::NameUnknown,
                format!("repository {repository} does not exist"),
            ))
        }
    }
}

/// Passes `stream` on, failing it if it ends before (or runs past) `expected` bytes.
fn exact_length(stream: ByteStream, expected: u64, digest: Digest) -> ByteStream {
    let mut seen = 0u64;
    let mut stream = stream;
    futures::stream::poll_fn(
        move |cx| match futures::ready!(stream.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                seen += chunk.len() as u64;
                if seen > expected {
                    return std::task::Poll::Ready(Some(Err(StorageError::State(format!(
                        "blob {digest} holds more bytes than recorded"
                    )))));
                }
                std::task::Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(e)) => std::task::Poll::Ready(Some(Err(e))),
            None if seen < expected => {
                tracing::error!(%digest, seen, expected, "stored blob ended early");
                let error = StorageError::State(format!(
                    "blob {digest} ended after {seen} of {expected} bytes"
                ));
                seen = expected;
                std::task::Poll::Ready(Some(Err(error)))
            }
            None => std::task::Poll::Ready(None),
        },
    )
    .boxed()
}

fn digest_mismatch(expected: &Digest, computed: &Digest, size: u64) -> RegistryError {
    RegistryError::new(
        ErrorCode::DigestInvalid,
        format!("the {size} bytes uploaded have digest {computed}, not {expected}"),
    )
    .with_detail(serde_json::json!({ "expected": expected.as_str(), "computed": computed.as_str(), "size": size }))
}
