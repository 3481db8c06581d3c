//! The upload engine: blob uploads streamed into the blob store, resumable by any process.
//!
//! A request's body is cut into pieces of the store's part size, hashed as it arrives and
//! written piece by piece. Whenever the store reports pieces durable, the session row is
//! updated, conditionally on the offset the request started from, with the new offset and
//! the hash state at that offset. Any process can therefore continue the upload and verify the
//! digest at the end without reading a byte back, and a request that loses a race on a session
//! (the update finds another offset) gets 416 while nothing it wrote becomes part of the blob.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderValue, StatusCode};

use super::Registry;
use super::hashing::{HashPipe, SavedState};
use crate::buffers::{BufferPool, PartBuffer};
use crate::error::{ErrorCode, RegistryError, RegistryResult};
use crate::metadata::{
    BlobCommit, BlobRecord, MetadataError, MetadataStore, SessionUpdate, UploadCheckpoint,
    UploadSession,
};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepositoryName};
use crate::storage::{
    ByteRange, ByteStream, Durable, PartNumbers, PartRecord, Piece, PieceKind, Staged,
    StagedSource, StorageError, StorageResult, UploadWriter,
};

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

/// The `Range` header value for an upload holding `offset` bytes (`0-<last byte>`; `0-0`
/// when empty, as Docker's registry has always answered).
pub fn upload_range(offset: u64) -> HeaderValue {
    let last = offset.saturating_sub(1);
    HeaderValue::from_str(&format!("0-{last}")).unwrap_or_else(|_| HeaderValue::from_static("0-0"))
}

/// 416 with the session's current `Range`, for a request that does not continue the upload
/// where it stands.
pub(crate) fn out_of_order(offset: u64, message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUploadInvalid, message)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_detail(serde_json::json!({ "offset": offset }))
        .with_header(http::header::RANGE, upload_range(offset))
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

struct SessionPartNumbers {
    metadata: Arc<dyn MetadataStore>,
    id: String,
}

#[async_trait]
impl PartNumbers for SessionPartNumbers {
    async fn next(&self) -> StorageResult<u32> {
        self.metadata
            .reserve_part_number(&self.id)
            .await
            .map_err(|e| storage_error("reserve part number", e))
    }
}

/// A metadata failure met by a store while it writes: an unavailable or full database stays
/// unavailable (503) or full (507) for the client.
fn storage_error(operation: &'static str, e: MetadataError) -> StorageError {
    match e {
        MetadataError::Unavailable(m) | MetadataError::Interrupted(m) => {
            StorageError::Unavailable(format!("{operation}: {m}"))
        }
        MetadataError::Full(m) => StorageError::Full(format!("{operation}: {m}")),
        other => StorageError::Backend {
            operation,
            message: other.to_string(),
        },
    }
}

/// The staged bytes of a session, as the metadata store holds them.
struct SessionStaged {
    metadata: Arc<dyn MetadataStore>,
    id: String,
}

#[async_trait]
impl StagedSource for SessionStaged {
    async fn fetch(&self) -> StorageResult<(u64, Bytes)> {
        self.metadata
            .upload_staged(&self.id)
            .await
            .map(|(start, bytes)| (start, Bytes::from(bytes)))
            .map_err(|e| storage_error("read staged bytes", e))
    }

    async fn promote(&self, from: u64, to: u64, part: &PartRecord) -> StorageResult<bool> {
        self.metadata
            .promote_staged(&self.id, from, to, part)
            .await
            .map_err(|e| storage_error("record a part of staged bytes", e))
    }
}

/// Whether a blob's commit was asked of the metadata store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Publication {
    NotAsked,
    Asked,
}

/// One request appending to one session.
struct Appender {
    registry: Registry,
    session: UploadSession,
    writer: Box<dyn UploadWriter>,
    /// Hash states at the end of pieces written but not yet recorded.
    pending: VecDeque<(u64, DigestAlgorithm, SavedState)>,
    /// The offset of the blob's verified end: the checkpoint that records it also claims the
    /// session for completion, saving `begin_commit` its own transaction.
    claim_at: Option<u64>,
}

enum Next {
    Chunk(Option<Result<Bytes, std::io::Error>>),
    Settled(StorageResult<Option<Durable>>),
    Check,
}

/// How long a request keeps a partly filled part buffer while no bytes arrive.
pub const IDLE_HOLD: Duration = Duration::from_secs(1);
/// How long a request keeps a partly filled part buffer while no bytes arrive and other
/// requests wait for one.
pub const CONTENDED_IDLE_HOLD: Duration = Duration::from_millis(20);
/// How long a request may keep a part buffer that has not filled while others wait for one,
/// even if bytes keep arriving (slowly).
pub const CONTENDED_HOLD: Duration = Duration::from_millis(250);
/// How often a request holding a partly filled buffer checks the limits above.
const HOLD_CHECK: Duration = Duration::from_millis(10);

/// A part buffer a request is filling.
struct Held {
    buffer: PartBuffer,
    /// Bytes reserved at its head for the writer (see `UploadWriter::carried`).
    carried: usize,
    since: Instant,
}

enum BodyEnd {
    Complete,
    Failed(std::io::Error),
    TooLong,
}

impl Appender {
    async fn open(
        registry: &Registry,
        repository: &RepositoryName,
        id: &str,
        start: Option<u64>,
        finishing: bool,
    ) -> RegistryResult<Appender> {
        let session = registry.upload_session(repository, id).await?;
        Self::check_position(&session, start, finishing)?;
        let numbers = Arc::new(SessionPartNumbers {
            metadata: Arc::clone(&registry.inner.metadata),
            id: id.to_owned(),
        });
        // Even an upload with nothing staged yet gets the source: a slow request may stage
        // bytes and need them back for its next piece.
        let staged = Staged::new(
            session.staged_len as usize,
            Arc::new(SessionStaged {
                metadata: Arc::clone(&registry.inner.metadata),
                id: id.to_owned(),
            }),
        );
        let writer = match registry
            .inner
            .blobs
            .open_upload(id, session.offset, &session.store_state, staged, numbers)
            .await
        {
            Ok(w) => w,
            Err(StorageError::Busy) => {
                return Err(out_of_order(
                    session.offset,
                    "another request is writing this upload; retry from the reported range",
                ));
            }
            Err(StorageError::UploadLost(why)) => {
                tracing::error!(upload = id, %why, "upload data lost; cancelling the session");
                registry.discard_session(id).await;
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    format!("upload {id} lost its stored data; start a new upload"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let mut appender = Appender {
            registry: registry.clone(),
            session,
            writer,
            pending: VecDeque::new(),
            claim_at: None,
        };
        // The writer may have waited on another: the session is read again now that this
        // request holds it.
        let current = registry.upload_session(repository, id).await?;
        if current.offset != appender.session.offset
            || current.committing != appender.session.committing
        {
            appender.writer.abandon().await;
            Self::check_position(&current, start, finishing)?;
            return Err(out_of_order(
                current.offset,
                "the upload moved on meanwhile",
            ));
        }
        appender.session = current;
        Ok(appender)
    }

    fn check_position(
        session: &UploadSession,
        start: Option<u64>,
        finishing: bool,
    ) -> RegistryResult<()> {
        if session.committing && !finishing {
            return Err(out_of_order(
                session.offset,
                "the upload is being completed",
            ));
        }
        match start {
            Some(start) if start != session.offset => Err(out_of_order(
                session.offset,
                format!(
                    "chunk starts at byte {start} but the upload holds {} bytes; continue at {}",
                    session.offset, session.offset
                ),
            )),
            _ => Ok(()),
        }
    }

    fn hasher(&self, algorithm: Option<DigestAlgorithm>) -> RegistryResult<Hasher> {
        match algorithm {
            // Nothing hashed yet: hash with the algorithm the client will verify against.
            Some(alg) if self.session.offset == 0 => Ok(Hasher::new(alg)),
            _ => Hasher::restore(self.session.algorithm, &self.session.hash_state)
                .map_err(RegistryError::internal),
        }
    }

    /// Streams `body` into the upload. With `finishing`, the last piece is written as the
    /// blob's end when the digest matches, so that completion follows directly.
    ///
    /// A buffer that stops filling goes back to the pool: after [`IDLE_HOLD`] without bytes,
    /// and, while other requests wait for one, after [`CONTENDED_IDLE_HOLD`] without bytes or
    /// [`CONTENDED_HOLD`] in all, its bytes are written as a partial piece and recorded, the
    /// way a request's tail is. Waiting for a buffer is bounded by the `upload_buffer_wait`
    /// option.
    async fn append(
        &mut self,
        body: &mut BodyStream,
        length: Option<u64>,
        finishing: Option<&Digest>,
    ) -> RegistryResult<()> {
        let buffers = self.registry.inner.buffers.clone();
        let buffer_wait = self.registry.inner.options.upload_buffer_wait;
        let mut hasher = HashPipe::new(self.hasher(finishing.and_then(Digest::algorithm))?);
        let start = self.session.offset;
        let mut received = start;
        let mut held: Option<Held> = None;
        let mut last_bytes = Instant::now();
        let check = tokio::time::sleep(HOLD_CHECK);
        tokio::pin!(check);
        let end = loop {
            // Pieces finishing in the background are recorded as soon as they are durable,
            // even while the client is slow to send more.
            let in_flight = self.writer.in_flight() > 0;
            let holding = held.is_some();
            let next = tokio::select! {
                biased;
                settled = self.writer.settle(), if in_flight => Next::Settled(settled),
                chunk = body.next() => Next::Chunk(chunk),
                () = check.as_mut(), if holding => Next::Check,
            };
            let chunk = match next {
                Next::Settled(settled) => {
                    if let Some(durable) = settled? {
                        self.record(vec![durable]).await?;
                    }
                    continue;
                }
                Next::Check => {
                    check.as_mut().reset(Instant::now() + HOLD_CHECK);
                    let release = held.as_ref().is_some_and(|h| {
                        let idle = last_bytes.elapsed();
                        idle >= IDLE_HOLD
                            || (buffers.waiting() > 0
                                && (idle >= CONTENDED_IDLE_HOLD
                                    || h.since.elapsed() >= CONTENDED_HOLD))
                    });
                    if release && let Some(h) = held.take() {
                        self.release(h, received, &mut hasher).await?;
                    }
                    continue;
                }
                Next::Chunk(None) => break BodyEnd::Complete,
                Next::Chunk(Some(Ok(chunk))) => chunk,
                Next::Chunk(Some(Err(e))) => break BodyEnd::Failed(e),
            };
            last_bytes = Instant::now();
            let allowed = length.map_or(usize::MAX, |l| (start + l - received) as usize);
            let mut rest = chunk.slice(..chunk.len().min(allowed));
            while !rest.is_empty() {
                let h = match held.as_mut() {
                    Some(h) => h,
                    None => {
                        let fresh = self.take_buffer(&buffers, buffer_wait).await?;
                        check.as_mut().reset(Instant::now() + HOLD_CHECK);
                        held.insert(fresh)
                    }
                };
                let n = h.buffer.remaining().min(rest.len());
                h.buffer.extend_from_slice(&rest[..n]);
                hasher.update(rest.split_to(n)).await?;
                received += n as u64;
                if h.buffer.remaining() == 0
                    && let Some(full) = held.take()
                {
                    let piece = Piece {
                        buffer: full.buffer,
                        carried: full.carried,
                        end_offset: received,
                        kind: PieceKind::Full,
                    };
                    let state = hasher.mark().await?;
                    self.write(piece, hasher.algorithm(), state).await?;
                }
            }
            if chunk.len() > allowed {
                break BodyEnd::TooLong;
            }
        };

        let algorithm = hasher.algorithm();
        let final_state = hasher.mark().await?.get().await?;
        drop(hasher);
        let ends_blob = matches!(end, BodyEnd::Complete)
            && length.is_none_or(|l| received - start == l)
            && match finishing {
                None => false,
                // A mismatching digest leaves the upload open for more bytes, so its last
                // piece must not be written as the blob's end.
                Some(digest) => {
                    algorithm != digest.algorithm().unwrap_or(algorithm)
                        || Hasher::restore(algorithm, &final_state)
                            .map_err(RegistryError::internal)?
                            .finish()
                            == *digest
                }
            };
        let kind = if ends_blob {
            self.claim_at = Some(received);
            PieceKind::Final
        } else {
            PieceKind::Partial
        };
        let last = match held.take() {
            Some(h) => Some(h),
            // The blob's end must still be written when bytes written before are carried.
            None if kind == PieceKind::Final && self.writer.carried() > 0 => {
                Some(self.take_buffer(&buffers, buffer_wait).await?)
            }
            None => None,
        };
        if let Some(last) = last {
            let piece = Piece {
                buffer: last.buffer,
                carried: last.carried,
                end_offset: received,
                kind,
            };
            self.write(piece, algorithm, SavedState::Ready(final_state))
                .await?;
        }
        let durable = self.writer.flush().await?;
        self.record(durable).await?;

        match end {
            BodyEnd::Failed(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!(
                        "{e}; the upload holds {} bytes, resume from there",
                        self.session.offset
                    ),
                )
                .with_status(StatusCode::REQUEST_TIMEOUT)
                .with_header(http::header::RANGE, upload_range(self.session.offset)))
            }
            BodyEnd::Failed(e) => Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!(
                    "request body ended early ({e}); the upload holds {} bytes, resume from there",
                    self.session.offset
                ),
            )
            .with_header(http::header::RANGE, upload_range(self.session.offset))),
            BodyEnd::TooLong => Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "request body is longer than the {} bytes its Content-Range declares",
                    length.unwrap_or(0)
                ),
            )),
            BodyEnd::Complete => match length {
                Some(l) if received - start != l => Err(RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!(
                        "request body has {} bytes but its Content-Range declares {l}",
                        received - start
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    /// A buffer for the next piece, with room reserved for the bytes the writer carries.
    /// When none comes free within `wait`, what the request wrote so far is recorded and it
    /// is refused with 503, resumable from its `Range`.
    async fn take_buffer(&mut self, buffers: &BufferPool, wait: Duration) -> RegistryResult<Held> {
        match buffers.get_within(wait).await {
            Some(mut buffer) => {
                let carried = self.writer.carried();
                buffer.reserve_head(carried);
                Ok(Held {
                    buffer,
                    carried,
                    since: Instant::now(),
                })
            }
            None => {
                let durable = self.writer.flush().await?;
                self.record(durable).await?;
                Err(RegistryError::unavailable(format!(
                    "every upload buffer of this registry stayed busy for {} s; the upload holds {} bytes, resume from there",
                    wait.as_secs_f64(),
                    self.session.offset
                ))
                .with_header(http::header::RANGE, upload_range(self.session.offset)))
            }
        }
    }

    /// Writes a buffer that stopped filling as a partial piece, records it, and so gives the
    /// buffer back to the pool.
    async fn release(
        &mut self,
        held: Held,
        received: u64,
        hasher: &mut HashPipe,
    ) -> RegistryResult<()> {
        let piece = Piece {
            buffer: held.buffer,
            carried: held.carried,
            end_offset: received,
            kind: PieceKind::Partial,
        };
        let state = hasher.mark().await?;
        self.write(piece, hasher.algorithm(), state).await?;
        let durable = self.writer.flush().await?;
        self.record(durable).await
    }

    async fn write(
        &mut self,
        piece: Piece,
        algorithm: DigestAlgorithm,
        state: SavedState,
    ) -> RegistryResult<()> {
        let incoming = (piece.buffer.len() - piece.carried) as u64;
        if let Err(refused) = self.registry.check_space(incoming).await {
            // What is durable is recorded first, so that the upload's Range stays truthful.
            let durable = self.writer.flush().await?;
            self.record(durable).await?;
            return Err(refused.with_header(http::header::RANGE, upload_range(self.session.offset)));
        }
        self.pending.push_back((piece.end_offset, algorithm, state));
        let durable = self.writer.write(piece).await?;
        self.record(durable).await
    }

    /// Saves durable progress in the session, conditionally on the offset it is at.
    async fn record(&mut self, durable: Vec<Durable>) -> RegistryResult<()> {
        let Some(last) = durable.last() else {
            return Ok(());
        };
        let mut state = None;
        while let Some((end, algorithm, saved)) = self.pending.pop_front() {
            if end == last.end_offset {
                state = Some((algorithm, saved.get().await?));
                break;
            }
        }
        let (hasher_algorithm, state) = state.ok_or_else(|| {
            RegistryError::internal(format!(
                "no hash state saved for offset {} of upload {}",
                last.end_offset, self.session.id
            ))
        })?;
        let parts: Vec<_> = durable
            .iter()
            .flat_map(|d| d.parts.iter().cloned())
            .collect();
        let clear_staged = durable.iter().any(|d| d.consumed_staged);
        // Only a partial piece can be staged, and each is recorded before another piece is
        // written, so at most one is.
        let staged = durable.iter().find_map(|d| d.staged.clone());
        let checkpoint = UploadCheckpoint {
            offset: last.end_offset,
            algorithm: hasher_algorithm,
            hash_state: &state,
            store_state: &last.store_state,
            new_parts: &parts,
            clear_staged,
            staged: staged.as_deref(),
            claim: self.claim_at == Some(last.end_offset),
            now: self.registry.now(),
        };
        let outcome = self
            .registry
            .inner
            .metadata
            .checkpoint_upload(&self.session.id, self.session.offset, checkpoint)
            .await;
        let outcome = match outcome {
            Err(e) => {
                let metadata = Arc::clone(&self.registry.inner.metadata);
                match settle(metadata.as_ref(), &self.session, &checkpoint).await {
                    Settled::Landed => {
                        tracing::info!(upload = %self.session.id, error = %e, "a checkpoint whose reply was lost had landed");
                        Ok(SessionUpdate::Saved)
                    }
                    Settled::NotLanded => {
                        // Nothing it wrote is recorded: it goes, and the request fails as
                        // the database did (503, resumable where the session stands).
                        self.writer.abandon().await;
                        return Err(e.into());
                    }
                    Settled::Moved { offset } => Ok(SessionUpdate::Conflict { offset }),
                    Settled::Gone => Ok(SessionUpdate::Gone),
                    Settled::Unknown => Err(e),
                }
            }
            known => known,
        };
        match outcome {
            Ok(SessionUpdate::Saved) => {
                self.writer.recorded(last.end_offset);
                self.session.committing = checkpoint.claim;
                self.session.offset = last.end_offset;
                self.session.algorithm = hasher_algorithm;
                self.session.hash_state = state;
                self.session.store_state = last.store_state.clone();
                if clear_staged {
                    self.session.staged_len = 0;
                }
                self.session.staged_len += staged.as_ref().map_or(0, |b| b.len() as u64);
                Ok(())
            }
            Ok(SessionUpdate::Conflict { offset }) => {
                self.writer.abandon().await;
                Err(out_of_order(
                    offset,
                    "another request moved the upload first",
                ))
            }
            Ok(SessionUpdate::Gone) => {
                self.writer.abandon().await;
                Err(upload_unknown(&self.session.id))
            }
            // Whether the checkpoint landed is still unknown (the database could not be asked):
            // what the writer wrote may be recorded, so it is left alone. Its in-flight pieces
            // end with the writer.
            Err(e) => Err(e.into()),
        }
    }
}

/// What became of a checkpoint whose outcome was unknown (its reply lost).
enum Settled {
    /// It landed: the session holds exactly what it recorded.
    Landed,
    /// It did not, and the session is where the request found it.
    NotLanded,
    /// Another request moved the session.
    Moved { offset: u64 },
    /// The session ended.
    Gone,
    /// The database cannot tell now.
    Unknown,
}

/// Asks the database (under the session's lock, so no transaction on it is in flight) what
/// became of `checkpoint`, made from `session`.
async fn settle(
    metadata: &dyn MetadataStore,
    session: &UploadSession,
    checkpoint: &UploadCheckpoint<'_>,
) -> Settled {
    match metadata.upload_settled(&session.id).await {
        Ok(Some(s))
            if s.offset == checkpoint.offset
                && s.hash_state == checkpoint.hash_state
                && s.store_state == checkpoint.store_state
                && s.committing == checkpoint.claim =>
        {
            Settled::Landed
        }
        Ok(Some(s)) if s.offset == session.offset && s.committing == session.committing => {
            Settled::NotLanded
        }
        Ok(Some(s)) => Settled::Moved { offset: s.offset },
        Ok(None) => Settled::Gone,
        Err(_) => Settled::Unknown,
    }
}

impl Registry {
    /// Opens an upload session for `repository`, hashing with `algorithm` until told otherwise.
    pub async fn start_upload(
        &self,
        repository: &RepositoryName,
        algorithm: DigestAlgorithm,
    ) -> RegistryResult<UploadSession> {
        self.check_space(0).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let store_state = self.inner.blobs.begin_upload(&id).await?;
        let now = self.now();
        let session = UploadSession {
            id,
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
        id: &str,
    ) -> RegistryResult<UploadSession> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                format!("{id:?} is not an upload id"),
            ));
        }
        match self.inner.metadata.upload(id).await? {
            Some(s) if &s.repository == repository => Ok(s),
            _ => Err(upload_unknown(id)),
        }
    }

    /// Appends a chunk (`PATCH`). Returns the session as it stands afterwards.
    pub async fn append_upload(
        &self,
        repository: &RepositoryName,
        id: &str,
        chunk: ChunkSpec,
        mut body: BodyStream,
    ) -> RegistryResult<UploadSession> {
        if let Err(e) = self.check_space(0).await {
            return Err(discard_body(body, e).await);
        }
        let mut appender = match Appender::open(self, repository, id, chunk.start, false).await {
            Ok(a) => a,
            Err(e) => return Err(discard_body(body, e).await),
        };
        if let Err(e) = appender.append(&mut body, chunk.length, None).await {
            let e = with_range(e, appender.session.offset);
            return Err(discard_body(body, e).await);
        }
        Ok(appender.session)
    }

    /// Appends an optional last chunk and publishes the blob as `digest` (`PUT`).
    pub async fn finish_upload(
        &self,
        repository: &RepositoryName,
        id: &str,
        digest: &Digest,
        chunk: ChunkSpec,
        body: BodyStream,
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
        id: &str,
        digest: &Digest,
        chunk: ChunkSpec,
        mut body: BodyStream,
        publication: &mut Publication,
    ) -> RegistryResult<BlobRecord> {
        let Some(algorithm) = digest.algorithm() else {
            return Err(discard_body(body, unsupported_algorithm(digest)).await);
        };
        // A PUT that only completes an upload needs no space; one with bytes does.
        if chunk.length.is_some_and(|l| l > 0)
            && let Err(e) = self.check_space(0).await
        {
            return Err(discard_body(body, e).await);
        }
        let mut appender = match Appender::open(self, repository, id, chunk.start, true).await {
            Ok(a) => a,
            Err(e) => return Err(discard_body(body, e).await),
        };
        if let Err(e) = appender.append(&mut body, chunk.length, Some(digest)).await {
            let e = with_range(e, appender.session.offset);
            return Err(discard_body(body, e).await);
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
                .begin_commit(id, size, self.now())
                .await?
            {
                SessionUpdate::Saved => {}
                SessionUpdate::Conflict { offset } => {
                    return Err(out_of_order(
                        offset,
                        "another request moved the upload first",
                    ));
                }
                SessionUpdate::Gone => return Err(upload_unknown(id)),
            }
        }
        let parts = self.inner.metadata.upload_parts(id).await?;
        let storage_key = appender.writer.complete(&parts, size).await?;
        drop(appender);
        if !verified_in_stream {
            // The bytes were hashed with another algorithm before the client named this one:
            // verify by reading the finished object once.
            let computed = self.hash_object(&storage_key, algorithm).await?;
            if computed != *digest {
                self.discard_session(id).await;
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
            .commit_blob(id, &blob, lost.as_deref(), self.now())
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
                self.collect_garbage_entry(garbage_id, id, &session.store_state)
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
                None => Err(upload_unknown(id)),
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
        body: BodyStream,
    ) -> RegistryResult<BlobRecord> {
        let Some(algorithm) = digest.algorithm() else {
            return Err(discard_body(body, unsupported_algorithm(digest)).await);
        };
        let session = match self.start_upload(repository, algorithm).await {
            Ok(s) => s,
            Err(e) => return Err(discard_body(body, e).await),
        };
        let mut publication = Publication::NotAsked;
        let result = self
            .finish(
                repository,
                &session.id,
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
        let result = result.map_err(|e| e.without_header(&http::header::RANGE));
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
    pub async fn cancel_upload(&self, repository: &RepositoryName, id: &str) -> RegistryResult<()> {
        self.upload_session(repository, id).await?;
        match self.inner.metadata.cancel_upload(id, self.now()).await? {
            Some(garbage) => {
                self.collect_garbage_entry(garbage.id, id, &garbage.store_state)
                    .await;
                Ok(())
            }
            None => Err(upload_unknown(id)),
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
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
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
            .unlink_blob(repository, digest, self.now())
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
            .mount_blob(repository, digest, from, self.now())
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

/// Adds the upload's `Range` (what it holds) to an error that has none, so that the client
/// knows where to resume.
fn with_range(error: RegistryError, offset: u64) -> RegistryError {
    if error.has_header(&http::header::RANGE) {
        error
    } else {
        error.with_header(http::header::RANGE, upload_range(offset))
    }
}

/// Most bytes read and thrown away to answer a refused upload request, and for how long.
const DISCARD_LIMIT: u64 = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads (a bounded part of) a body nobody will use before the error is answered: a client
/// still sending then reads the answer instead of hitting a reset connection.
pub async fn discard_body(body: BodyStream, error: RegistryError) -> RegistryError {
    discard_body_within(body, error, (DISCARD_LIMIT, DISCARD_TIME)).await
}

/// [`discard_body`] with its own limit of bytes and time.
pub async fn discard_body_within(
    mut body: BodyStream,
    error: RegistryError,
    (limit, time): (u64, std::time::Duration),
) -> RegistryError {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len() as u64;
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(time, drain).await;
    error
}

fn digest_mismatch(expected: &Digest, computed: &Digest, size: u64) -> RegistryError {
    RegistryError::new(
        ErrorCode::DigestInvalid,
        format!("the {size} bytes uploaded have digest {computed}, not {expected}"),
    )
    .with_detail(serde_json::json!({ "expected": expected.as_str(), "computed": computed.as_str(), "size": size }))
}
