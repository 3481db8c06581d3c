//! Blobs in a local directory.
//!
//! Each upload writes one file in place (`blobs/<xx>/<upload-id>`) and that file becomes the
//! blob: nothing is copied or renamed. One writer at a time holds an exclusive `flock` on the
//! file, so racing requests, even from two processes sharing the directory, cannot interleave
//! their bytes; bytes past the recorded offset (a killed writer's) are overwritten by the next
//! writer and cut off at completion. Every piece is `fdatasync`ed before it is reported
//! durable; the first piece of an upload also syncs the directory entry of its file (created
//! unsynced when the upload starts), and the blob's last piece sets the file's final length
//! under the same sync, so that completing a small blob costs no sync of its own.
//!
//! Where the filesystem supports it, pieces are written with `O_DIRECT` from the aligned part
//! buffers, skipping the page cache copy. Direct I/O needs block-aligned offsets and lengths:
//! a request that starts mid-block re-reads the block's head from the file (the writer's
//! *carried* bytes), and a piece ending mid-block is padded with zeros that the next piece
//! overwrites and completion truncates.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::buffers::ALIGNMENT;

use super::Staged;
use super::{
    BlobStore, ByteRange, ByteStream, Durable, PartNumbers, PartRecord, Piece, PieceKind,
    StorageError, StorageResult, UploadWriter,
};

const READ_CHUNK: usize = 1024 * 1024;

/// A blob store in a local directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    part_size: usize,
    direct_io: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
        .map_err(StorageError::Io)
}

/// Pieces of a file being read in flight at once, besides the one being sent.
const READ_AHEAD: usize = 2;

/// Gives the kernel `advice` on how `len` bytes of `file` from `at` (0: to its end) will be
/// read.
fn advise(file: &File, at: u64, len: u64, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (libc::off_t::try_from(at), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a valid descriptor; the advice is a hint whose failure changes nothing.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), at, len, advice) };
}

/// Starts reading the first `size` bytes of `file` into the page cache in the background.
/// One `WILLNEED` covers one readahead window (8 MiB here), so the file is advised a window
/// at a time.
fn warm(file: &File, size: u64) {
    const WINDOW: u64 = 8 << 20;
    for at in (0..size).step_by(WINDOW as usize) {
        advise(file, at, WINDOW.min(size - at), libc::POSIX_FADV_WILLNEED);
    }
}

/// `file` from `start` to `end` (or its end, if it is shorter) in `READ_CHUNK` pieces: each a
/// positioned read on the blocking pool straight into the buffer that is sent, `READ_AHEAD`
/// pieces ahead of the connection. One copy per byte and one thread hop per piece, and no
/// thread waits on a slow client.
fn read_pieces(file: Arc<File>, start: u64, end: u64) -> ByteStream {
    futures::stream::iter((start..end).step_by(READ_CHUNK))
        .map(move |at| {
            let file = Arc::clone(&file);
            let len = (end - at).min(READ_CHUNK as u64) as usize;
            tokio::task::spawn_blocking(move || read_piece(&file, at, len))
        })
        .buffered(READ_AHEAD + 1)
        .map(|joined| match joined {
            Ok(Ok(piece)) => Ok(piece),
            Ok(Err(e)) => Err(StorageError::Io(e)),
            Err(e) => Err(StorageError::Io(std::io::Error::other(e))),
        })
        // A file cut short ends the stream early; the reader's length check reports it.
        .take_while(|piece| std::future::ready(!matches!(piece, Ok(p) if p.is_empty())))
        .boxed()
}

/// `len` bytes of `file` from `at`, fewer at its end.
fn read_piece(file: &File, at: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    let mut piece = bytes::BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut piece[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    piece.truncate(filled);
    Ok(piece.freeze())
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

fn open_direct(path: &Path) -> std::io::Result<File> {
    File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Whether files in `dir` accept aligned `O_DIRECT` writes (tmpfs and some others do not).
fn supports_direct_io(dir: &Path) -> bool {
    let probe = dir.join(format!(".direct-io-probe-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        File::create(&probe)?;
        let file = open_direct(&probe)?;
        let layout = std::alloc::Layout::from_size_align(ALIGNMENT, ALIGNMENT)
            .map_err(std::io::Error::other)?;
        // SAFETY: non-zero size; zeroed so the slice below is initialized.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(std::io::Error::other("allocation failed"));
        }
        // SAFETY: `ptr` is valid for `ALIGNMENT` initialized bytes until deallocated below.
        let block = unsafe { std::slice::from_raw_parts(ptr, ALIGNMENT) };
        let written = file.write_at(block, 0);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr, layout) };
        written.map(|_| ())
    })();
    let _ = std::fs::remove_file(&probe);
    result.is_ok()
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value for the call to overwrite.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

fn key_for(upload_id: &str) -> String {
    let shard = upload_id.get(..2).unwrap_or("00");
    format!("blobs/{shard}/{upload_id}")
}

fn checked_key(key: &str) -> StorageResult<&str> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if ok {
        Ok(key)
    } else {
        Err(StorageError::State(format!("invalid storage key {key:?}")))
    }
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`, writing pieces of `part_size`
    /// bytes, with direct I/O if `direct_io` is asked for and the filesystem supports it.
    pub async fn open(
        root: impl Into<PathBuf>,
        part_size: usize,
        direct_io: bool,
    ) -> StorageResult<FsBlobStore> {
        let root = root.into();
        let blobs = root.join("blobs");
        let direct_io = blocking(move || {
            std::fs::create_dir_all(&blobs)?;
            Ok(direct_io && supports_direct_io(&blobs))
        })
        .await?;
        // Direct I/O writes whole blocks: pieces are a whole number of them.
        let part_size = part_size.div_ceil(ALIGNMENT).max(1) * ALIGNMENT;
        tracing::debug!(root = %root.display(), direct_io, "filesystem blob store");
        Ok(FsBlobStore {
            root,
            part_size,
            direct_io,
        })
    }

    /// Whether pieces are written with `O_DIRECT`.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> StorageResult<PathBuf> {
        Ok(self.root.join(checked_key(key)?))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    fn part_size(&self) -> usize {
        self.part_size
    }

    async fn begin_upload(&self, upload_id: &str) -> StorageResult<String> {
        // Only the shard directory: the file is created by the first writer, once the
        // session's row exists (a file made now would have no owner after a crash).
        let path = self.path(&key_for(upload_id))?;
        blocking(move || {
            let dir = path.parent().expect("upload keys have a directory");
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                sync_dir(dir.parent().expect("shard directories have a parent"))?;
            }
            Ok(())
        })
        .await?;
        Ok(String::new())
    }

    async fn open_upload(
        &self,
        upload_id: &str,
        offset: u64,
        _store_state: &str,
        staged: Staged,
        _part_numbers: Arc<dyn PartNumbers>,
    ) -> StorageResult<Box<dyn UploadWriter>> {
        if !staged.is_empty() {
            return Err(StorageError::State(
                "the filesystem store never stages bytes".into(),
            ));
        }
        let key = key_for(upload_id);
        let path = self.path(&key)?;
        let shown = key.clone();
        let direct_io = self.direct_io;
        let (file, direct) =
            tokio::task::spawn_blocking(move || -> StorageResult<(File, Option<File>)> {
                let file = match File::options()
                    .read(true)
                    .write(true)
                    .create(offset == 0)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StorageError::UploadLost(format!("{shown} does not exist")));
                    }
                    Err(e) => return Err(e.into()),
                };
                match file.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::Busy),
                    Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
                }
                let len = file.metadata()?.len();
                if len < offset {
                    return Err(StorageError::UploadLost(format!(
                        "{shown} holds {len} bytes, the session records {offset}"
                    )));
                }
                let direct = if direct_io {
                    Some(open_direct(&path)?)
                } else {
                    None
                };
                Ok((file, direct))
            })
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        let carried = if direct.is_some() {
            (offset % ALIGNMENT as u64) as usize
        } else {
            0
        };
        let dir = self
            .path(&key)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| StorageError::State(format!("{key} has no directory")))?;
        Ok(Box::new(FsWriter {
            file: Arc::new(file),
            direct: direct.map(Arc::new),
            carried,
            key,
            dir,
            // Bytes were recorded, so a writer before this one synced the entry.
            entry_synced: offset > 0,
            in_flight: VecDeque::new(),
        }))
    }

    async fn discard_upload(&self, upload_id: &str, _store_state: &str) -> StorageResult<()> {
        self.delete(&key_for(upload_id)).await
    }

    fn published(&self, key: &str, size: u64) {
        // Direct writes left nothing in the page cache, and a blob is often pulled soon after
        // its push (a CI job pushes, a deploy pulls): the kernel reads it back while the push
        // is answered, so that such a pull is served from memory. Not before the blob's row
        // committed: the commit's sync would queue behind these reads.
        if !self.direct_io {
            return;
        }
        let Ok(path) = self.path(key) else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            if let Ok(file) = File::open(&path) {
                warm(&file, size);
            }
        });
    }

    async fn read(&self, key: &str, range: Option<ByteRange>) -> StorageResult<ByteStream> {
        let path = self.path(key)?;
        let shown = key.to_owned();
        let (file, len) = blocking(move || {
            let file = File::open(&path)?;
            let len = file.metadata()?.len();
            advise(&file, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            Ok((file, len))
        })
        .await
        .map_err(|e| match e {
            StorageError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                StorageError::NotFound(shown)
            }
            other => other,
        })?;
        let (start, end) = match range {
            Some(r) => (r.start.min(len), r.end.min(len)),
            None => (0, len),
        };
        Ok(read_pieces(Arc::new(file), start, end))
    }

    async fn object_size(&self, key: &str) -> StorageResult<Option<u64>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn free_space(&self) -> StorageResult<Option<u64>> {
        let root = self.root.clone();
        blocking(move || free_bytes(&root)).await.map(Some)
    }

    async fn stored_keys(&self) -> StorageResult<Vec<String>> {
        let root = self.root.clone();
        blocking(move || {
            // An upload's file is its blob once completed: every file is listed by its key.
            let mut keys = Vec::new();
            let mut dirs = vec![root.join("blobs")];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        dirs.push(path);
                    } else if let Ok(key) = path.strip_prefix(&root) {
                        keys.push(key.to_string_lossy().into_owned());
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn check(&self) -> StorageResult<()> {
        let blobs = self.root.join("blobs");
        let meta = tokio::fs::metadata(&blobs).await?;
        if meta.is_dir() && !meta.permissions().readonly() {
            Ok(())
        } else {
            Err(StorageError::Unavailable(format!(
                "{} is not a writable directory",
                blobs.display()
            )))
        }
    }
}

struct FsWriter {
    /// Holds the lock; reads block heads, truncates.
    file: Arc<File>,
    /// Opened with `O_DIRECT` for writing pieces, when the filesystem allows it.
    direct: Option<Arc<File>>,
    carried: usize,
    key: String,
    /// The directory holding the upload's file.
    dir: PathBuf,
    /// Whether the file's directory entry is known to be durable (else the next piece syncs
    /// the directory after its bytes).
    entry_synced: bool,
    in_flight: VecDeque<JoinHandle<std::io::Result<u64>>>,
}

#[async_trait]
impl UploadWriter for FsWriter {
    fn carried(&self) -> usize {
        self.carried
    }

    async fn write(&mut self, piece: Piece) -> StorageResult<Vec<Durable>> {
        let mut durable = Vec::new();
        if piece.carried > 0 {
            // The carried head is read back from the file: the piece that wrote it must have
            // landed first.
            durable.extend(self.flush().await?);
        }
        let file = Arc::clone(&self.file);
        let direct = self.direct.clone();
        let carried = piece.carried;
        let at = piece.start_offset() - carried as u64;
        let end = piece.end_offset;
        // The blob's last piece also sets its final length, under the same sync.
        let final_len = (piece.kind == PieceKind::Final).then_some(end);
        let sync_entry = (!self.entry_synced).then(|| self.dir.clone());
        self.entry_synced = true;
        let mut buffer = piece.buffer;
        // Direct I/O rewrites the block a piece ends in: the next piece starts with its head.
        self.carried = if direct.is_some() {
            (end % ALIGNMENT as u64) as usize
        } else {
            0
        };
        self.in_flight
            .push_back(tokio::task::spawn_blocking(move || {
                if carried > 0 {
                    file.read_exact_at(&mut buffer.as_mut_slice()[..carried], at)?;
                }
                match &direct {
                    Some(direct) => {
                        let len = buffer.pad_to_alignment();
                        direct.write_all_at(&buffer.as_slice()[..len], at)?;
                    }
                    None => file.write_all_at(buffer.as_slice(), at)?,
                }
                if let Some(len) = final_len {
                    file.set_len(len)?;
                }
                // fdatasync covers a changed length too.
                file.sync_data()?;
                if let Some(dir) = sync_entry {
                    sync_dir(&dir)?;
                }
                Ok(end)
            }));
        while self.in_flight.len() > 1 {
            durable.extend(self.settle().await?);
        }
        Ok(durable)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    async fn settle(&mut self) -> StorageResult<Option<Durable>> {
        let end_offset = super::settle_oldest(&mut self.in_flight).await?;
        Ok(end_offset.map(|end| Durable::at(end, String::new())))
    }

    async fn complete(&mut self, _parts: &[PartRecord], size: u64) -> StorageResult<String> {
        self.flush().await?;
        let file = Arc::clone(&self.file);
        let sync_entry = (!self.entry_synced).then(|| self.dir.clone());
        self.entry_synced = true;
        blocking(move || {
            // Every recorded piece was synced with its length: only a blob whose last piece
            // left padding (or no piece, an empty blob) needs a sync here.
            if file.metadata()?.len() != size {
                file.set_len(size)?;
                file.sync_data()?;
            }
            if let Some(dir) = sync_entry {
                sync_dir(&dir)?;
            }
            Ok(())
        })
        .await?;
        Ok(self.key.clone())
    }

    async fn abandon(&mut self) {
        // Unrecorded bytes lie past the session's offset: the next writer overwrites them and
        // completion cuts them off.
        let _ = self.flush().await;
    }
}
