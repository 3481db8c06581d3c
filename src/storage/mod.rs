//! Blob stores: content bytes, streamed in through two-phase uploads and out by key.
//!
//! A store knows upload ids, storage keys and bytes; never repositories, tags or digests'
//! meaning. An upload is written in *pieces*; each piece a writer reports durable can be
//! recorded by the metadata store, and only recorded pieces ever become part of the blob, so a
//! request that loses a race on a session leaves nothing in it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::buffers::PartBuffer;

pub mod fs;
#[cfg(feature = "s3")]
mod local_uploads;
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another request is writing this upload right now.
    #[error("the upload is being written by another request")]
    Busy,
    /// No object under this key.
    #[error("no stored object {0:?}")]
    NotFound(String),
    /// The upload's bytes are gone (the store lost them, e.g. after a disk failure).
    #[error("the upload's stored bytes are missing or short: {0}")]
    UploadLost(String),
    /// A limit of the backend would be exceeded.
    #[error("{0}")]
    Limit(String),
    /// The backend cannot be reached.
    #[error("blob storage unavailable: {0}")]
    Unavailable(String),
    /// No space left: the disk, a quota, or the bucket's backend is full.
    #[error("blob storage is full: {0}")]
    Full(String),
    /// Local I/O failed.
    #[error("blob storage I/O error: {0}")]
    Io(std::io::Error),
    /// The backend refused or failed a request.
    #[error("blob storage {operation} failed: {message}")]
    Backend {
        /// What was attempted.
        operation: &'static str,
        /// What the backend said.
        message: String,
    },
    /// Saved upload state cannot be read back.
    #[error("upload storage state is invalid: {0}")]
    State(String),
}

impl From<std::io::Error> for StorageError {
    /// Out-of-space errors (`ENOSPC`, `EDQUOT`) become [`StorageError::Full`].
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::Full(e.to_string()),
            _ => StorageError::Io(e),
        }
    }
}

/// Result alias for the storage layer.
pub type StorageResult<T> = Result<T, StorageError>;

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, StorageResult<Bytes>>;

/// A half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A multipart part recorded with its session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Part number, unique within the session.
    pub number: u32,
    /// Bytes in the part.
    pub size: u64,
    /// The backend's tag for the part.
    pub etag: String,
    /// Upload offset of the part's first byte (`None` for parts recorded without it).
    #[serde(default)]
    pub start: Option<u64>,
}

/// Where a piece sits in its upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// A full buffer.
    Full,
    /// Fewer bytes than a full buffer, and the upload goes on: the end of a request, or a
    /// slow request giving its buffer back while it waits for more bytes. The writer may be
    /// handed further pieces afterwards; [`UploadWriter::carried`] says what they carry.
    Partial,
    /// The last bytes of the upload: the blob is completed next.
    Final,
}

/// Bytes handed to an [`UploadWriter`].
pub struct Piece {
    /// `carried` bytes reserved at the head for the writer to fill, then new bytes.
    pub buffer: PartBuffer,
    /// Bytes at the head that the writer fills with content it carried over (see
    /// [`UploadWriter::carried`]).
    pub carried: usize,
    /// Upload offset just after the piece's last byte.
    pub end_offset: u64,
    /// Where the piece sits.
    pub kind: PieceKind,
}

impl Piece {
    /// Upload offset of the first new byte.
    pub fn start_offset(&self) -> u64 {
        self.end_offset - (self.buffer.len() - self.carried) as u64
    }
}

/// Progress a writer made durable: once recorded, the upload holds every byte before
/// `end_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    /// Upload offset covered.
    pub end_offset: u64,
    /// Parts written for it.
    pub parts: Vec<PartRecord>,
    /// The store's state for the upload after it.
    pub store_state: String,
    /// Bytes the store did not keep (too few to form a part it may write yet): the registry
    /// records them with the session and hands them back, as `staged`, to the next writer.
    pub staged: Option<Bytes>,
    /// Whether this piece used the staged bytes the writer was opened with (they are no longer
    /// needed once it is recorded).
    pub consumed_staged: bool,
}

impl Durable {
    /// Progress with no parts and nothing staged.
    pub fn at(end_offset: u64, store_state: String) -> Durable {
        Durable {
            end_offset,
            parts: Vec::new(),
            store_state,
            staged: None,
            consumed_staged: false,
        }
    }
}

/// The bytes the registry holds staged for an upload (see [`Durable::staged`]).
#[async_trait]
pub trait StagedSource: Send + Sync {
    /// Every staged byte of the upload, in upload order, with the offset of the first one.
    async fn fetch(&self) -> StorageResult<(u64, Bytes)>;
    /// Records `part`, written from the staged bytes `[from, to)`, and drops those bytes, if
    /// they are still exactly the first staged bytes; whether it did.
    async fn promote(&self, from: u64, to: u64, part: &PartRecord) -> StorageResult<bool>;
}

/// Bytes writers left staged with the session (see [`Durable::staged`]), fetched only if a
/// piece needs them: most requests that stage bytes never read the earlier ones back.
pub struct Staged {
    len: usize,
    source: Option<Arc<dyn StagedSource>>,
}

impl Staged {
    /// Nothing staged.
    pub fn none() -> Staged {
        Staged {
            len: 0,
            source: None,
        }
    }

    /// `len` staged bytes that `source` reads.
    pub fn new(len: usize, source: Arc<dyn StagedSource>) -> Staged {
        Staged {
            len,
            source: Some(source),
        }
    }

    /// Number of staged bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the staged bytes are read and promoted.
    pub fn source(&self) -> Option<Arc<dyn StagedSource>> {
        self.source.clone()
    }
}

/// Source of part numbers never used before in a session, for stores that number parts.
#[async_trait]
pub trait PartNumbers: Send + Sync {
    /// The next unused part number.
    async fn next(&self) -> StorageResult<u32>;
}

/// Appends to one upload for the duration of one request.
#[async_trait]
pub trait UploadWriter: Send {
    /// Bytes written before that this writer places at the head of the next piece (staged
    /// bytes, or the head of a block direct I/O must rewrite whole). The registry reserves
    /// them at the head of the next buffer; they change only after a [`PieceKind::Partial`]
    /// piece is durable and recorded.
    fn carried(&self) -> usize;
    /// Writes a piece, possibly in the background; returns what became durable meanwhile,
    /// in upload order.
    async fn write(&mut self, piece: Piece) -> StorageResult<Vec<Durable>>;
    /// Pieces written but not yet reported durable.
    fn in_flight(&self) -> usize;
    /// Waits for the oldest piece in flight and reports it durable (`None` if none is in
    /// flight). Cancel-safe: dropping the future loses nothing.
    async fn settle(&mut self) -> StorageResult<Option<Durable>>;
    /// Waits for every written piece; returns what became durable, in upload order.
    async fn flush(&mut self) -> StorageResult<Vec<Durable>> {
        let mut durable = Vec::new();
        while let Some(d) = self.settle().await? {
            durable.push(d);
        }
        Ok(durable)
    }
    /// Tells the writer that the registry recorded its progress up to `end_offset`.
    fn recorded(&mut self, _end_offset: u64) {}
    /// Waits for writes of this upload that go on beyond requests (and that completion needs)
    /// to land; called before the session is claimed for completion.
    async fn drain(&mut self) -> StorageResult<()> {
        Ok(())
    }
    /// Turns the recorded parts into the finished object of `size` bytes; returns its key.
    /// Safe to call again after a crash between completion and publication.
    async fn complete(&mut self, parts: &[PartRecord], size: u64) -> StorageResult<String>;
    /// Removes what this writer wrote that was never recorded. Only for a writer whose
    /// checkpoint is known not to have landed (another request moved the session, it ended,
    /// or a failed checkpoint was found not to have landed): while that is unknown, the
    /// writer is dropped without it, since what it wrote may be recorded.
    async fn abandon(&mut self);
}

/// Content-addressed bytes behind the registry.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Short name for logs (`filesystem`, `s3`, `memory`).
    fn kind(&self) -> &'static str;
    /// Size of the pieces uploads are cut into.
    fn part_size(&self) -> usize;
    /// Largest number of pieces one request keeps in flight.
    fn write_concurrency(&self) -> usize {
        2
    }
    /// Prepares for a new upload; returns the store's initial state for it. Called before the
    /// session row exists, so it must write nothing that would need removing (an object, a
    /// file): a crash before the row commits would leave it with no owner. The first writer
    /// creates what the upload needs, once the session's row exists.
    async fn begin_upload(&self, upload_id: &str) -> StorageResult<String>;
    /// Opens an upload at `offset` for one request. `staged` are bytes earlier writers left to
    /// the registry (see [`Durable::staged`]); they end at `offset` and lead the first piece.
    /// Stores that need one writer at a time answer [`StorageError::Busy`] while another
    /// request holds it.
    async fn open_upload(
        &self,
        upload_id: &str,
        offset: u64,
        store_state: &str,
        staged: Staged,
        part_numbers: Arc<dyn PartNumbers>,
    ) -> StorageResult<Box<dyn UploadWriter>>;
    /// Removes everything an upload may have written, its completed object included.
    /// Idempotent.
    async fn discard_upload(&self, upload_id: &str, store_state: &str) -> StorageResult<()>;
    /// Tells the store that the completed object `key` of `size` bytes is now a blob that
    /// clients may pull, after its row committed; a store may prepare for the pulls (the
    /// directory store reads it into the page cache). Nothing waits for it.
    fn published(&self, _key: &str, _size: u64) {}
    /// Streams an object, or a range of it.
    async fn read(&self, key: &str, range: Option<ByteRange>) -> StorageResult<ByteStream>;
    /// Deletes an object. Idempotent.
    async fn delete(&self, key: &str) -> StorageResult<()>;
    /// The size of a stored object, where the store can tell it cheaply; `None` otherwise.
    /// Errors with [`StorageError::NotFound`] when the object is gone.
    async fn object_size(&self, _key: &str) -> StorageResult<Option<u64>> {
        Ok(None)
    }
    /// A URL clients can fetch the object from directly, if the store offers one.
    async fn presigned_url(&self, _key: &str) -> StorageResult<Option<String>> {
        Ok(None)
    }
    /// Checks that the store is reachable and writable.
    async fn check(&self) -> StorageResult<()>;
    /// Every object and unfinished upload the store holds, by key (an upload not yet an
    /// object as `<key>#upload`): what a check that nothing leaked lists. It reads the whole
    /// store, so it is for tests and diagnostics, never a request's path.
    async fn stored_keys(&self) -> StorageResult<Vec<String>>;
    /// Free bytes where the store keeps data, for stores on a local filesystem; `None` for
    /// stores without such a limit (S3, memory).
    async fn free_space(&self) -> StorageResult<Option<u64>> {
        Ok(None)
    }
}

/// Waits for the oldest of a writer's in-flight writes and takes it off the queue: writes
/// become durable in the order they were started, so a writer reports them in that order.
pub(crate) async fn settle_oldest<T, E>(
    in_flight: &mut std::collections::VecDeque<tokio::task::JoinHandle<Result<T, E>>>,
) -> StorageResult<Option<T>>
where
    StorageError: From<E>,
{
    let Some(handle) = in_flight.front_mut() else {
        return Ok(None);
    };
    let written = handle.await;
    in_flight.pop_front();
    let written = written.map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
    Ok(Some(written?))
}
