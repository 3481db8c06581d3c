//! One request's part of an upload: its body cut into pieces, hashed and written, and each
//! durable piece recorded in the session (see the module above).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BodyStream, UploadId, out_of_order, upload_unknown};
use crate::buffers::{BufferPool, PartBuffer};
use crate::error::{Condition, ErrorCode, RegistryError, RegistryResult};
use crate::metadata::{
    MetadataError, MetadataStore, SessionUpdate, UploadCheckpoint, UploadSession,
};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepositoryName};
use crate::registry::Registry;
use crate::registry::hashing::{HashPipe, SavedState};
use crate::storage::{
    Durable, PartNumbers, PartRecord, Piece, PieceKind, Staged, StagedSource, StorageError,
    StorageResult, UploadWriter,
};

pub(super) struct SessionPartNumbers {
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) id: String,
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
pub(super) fn storage_error(operation: &'static str, e: MetadataError) -> StorageError {
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
pub(super) struct SessionStaged {
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) id: String,
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
pub(super) enum Publication {
    NotAsked,
    Asked,
}

/// One request appending to one session.
pub(super) struct Appender {
    pub(super) registry: Registry,
    pub(super) session: UploadSession,
    pub(super) writer: Box<dyn UploadWriter>,
    /// Hash states at the end of pieces written but not yet recorded.
    pub(super) pending: VecDeque<(u64, DigestAlgorithm, SavedState)>,
    /// The offset of the blob's verified end: the checkpoint that records it also claims the
    /// session for completion, saving `begin_commit` its own transaction.
    pub(super) claim_at: Option<u64>,
}

pub(super) enum Next {
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
pub(super) const HOLD_CHECK: Duration = Duration::from_millis(10);

/// A part buffer a request is filling.
pub(super) struct Held {
    pub(super) buffer: PartBuffer,
    /// Bytes reserved at its head for the writer (see `UploadWriter::carried`).
    pub(super) carried: usize,
    pub(super) since: Instant,
}

pub(super) enum BodyEnd {
    Complete,
    Failed(std::io::Error),
    TooLong,
}

impl Appender {
    pub(super) async fn open(
        registry: &Registry,
        repository: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        finishing: bool,
    ) -> RegistryResult<Appender> {
        let upload = id;
        let session = registry.upload_session(repository, upload).await?;
        let id = upload.as_str();
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
        let current = registry.upload_session(repository, upload).await?;
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

    pub(super) fn check_position(
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

    pub(super) fn hasher(&self, algorithm: Option<DigestAlgorithm>) -> RegistryResult<Hasher> {
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
    pub(super) async fn append(
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
                .with_condition(Condition::TooSlow)
                .with_upload_offset(self.session.offset))
            }
            BodyEnd::Failed(e) => Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!(
                    "request body ended early ({e}); the upload holds {} bytes, resume from there",
                    self.session.offset
                ),
            )
            .with_upload_offset(self.session.offset)),
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
    pub(super) async fn take_buffer(
        &mut self,
        buffers: &BufferPool,
        wait: Duration,
    ) -> RegistryResult<Held> {
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
                .with_upload_offset(self.session.offset))
            }
        }
    }

    /// Writes a buffer that stopped filling as a partial piece, records it, and so gives the
    /// buffer back to the pool.
    pub(super) async fn release(
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

    pub(super) async fn write(
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
            return Err(refused.with_upload_offset(self.session.offset));
        }
        self.pending.push_back((piece.end_offset, algorithm, state));
        let durable = self.writer.write(piece).await?;
        self.record(durable).await
    }

    /// Saves durable progress in the session, conditionally on the offset it is at.
    pub(super) async fn record(&mut self, durable: Vec<Durable>) -> RegistryResult<()> {
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
pub(super) enum Settled {
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
pub(super) async fn settle(
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
