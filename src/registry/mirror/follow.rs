//! Following a blob fetch while it runs. The fetch writes every byte it reads from the
//! upstream to a spill file (created in the temporary directory and unlinked at once, so
//! nothing is left behind by a crash) besides streaming it into storage; every pull of the
//! blob on this process, the one that started the fetch included, reads the spill from its
//! start at its own pace and then follows the fetch as it grows. Pulls on other replicas read
//! it through this process (the relay route, [`Registry::relay_mirror_fetch`]).
//!
//! The last chunk read from the upstream is written to the spill only once the blob is
//! committed, so no reader ever receives a whole body whose digest did not verify: a fetch
//! that fails makes every reader's body fail short instead.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use crate::oci::{Digest, RepositoryName};
use crate::storage::{ByteStream, StorageError};

/// Bytes collected before they are written to the spill (and become readable) at once.
const SPILL_BATCH: usize = 256 << 10;
/// Most bytes a reader takes from the spill at once.
const READ_CHUNK: u64 = 256 << 10;

/// How far a fetch has come, as its readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Running: this many bytes can be read.
    Reading { readable: u64 },
    /// Committed to storage: the whole blob, this long, can be read.
    Stored { size: u64 },
    /// Failed (or its spill could not be written): why.
    Failed(String),
}

/// The bytes a running fetch has read so far, and how far it has come.
pub(super) struct Spill {
    /// The repository the blob is fetched into: only pulls of that name follow it (a pull
    /// through another name first needs its own upstream's word that it has the blob).
    pub(super) repository: RepositoryName,
    /// The fetch's claim owner, which a relay request must name.
    pub(super) owner: String,
    /// The size the upstream announced, if it did.
    pub(super) size: Option<u64>,
    file: Arc<File>,
    progress: watch::Sender<Progress>,
}

impl Spill {
    /// A spill in `dir`, unlinked as soon as it is created.
    pub(super) fn create(
        dir: &std::path::Path,
        repository: RepositoryName,
        owner: String,
        size: Option<u64>,
    ) -> std::io::Result<Spill> {
        // Readable by this user only for the instant it has a name, and named at random (not
        // by the owner id, which is what a relay request must know).
        let path = dir.join(format!("berth-mirror-fetch-{}", uuid::Uuid::new_v4()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Spill {
            repository,
            owner,
            size,
            file: Arc::new(file),
            progress: watch::Sender::new(Progress::Reading { readable: 0 }),
        })
    }

    /// The whole blob as the fetch reads it: what is in the spill now, then what follows,
    /// the last bytes once the blob is committed. Fails, rather than ends, if the fetch does.
    pub(super) fn follow(self: &Arc<Self>) -> ByteStream {
        let reader = Reader {
            spill: Arc::clone(self),
            progress: self.progress.subscribe(),
            position: 0,
        };
        futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    /// Whether the fetch failed (or its spill could not be written): nothing more to follow.
    fn failed(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Failed(_))
    }
}

fn failed(why: impl Into<String>) -> StorageError {
    StorageError::Io(std::io::Error::other(why.into()))
}

/// One pull reading a spill.
struct Reader {
    spill: Arc<Spill>,
    progress: watch::Receiver<Progress>,
    position: u64,
}

impl Reader {
    async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let end = match &progress {
                Progress::Reading { readable } => *readable,
                Progress::Stored { size } => *size,
                Progress::Failed(why) => return Err(failed(why.clone())),
            };
            if self.position < end {
                let length = (end - self.position).min(READ_CHUNK);
                let (file, at) = (Arc::clone(&self.spill.file), self.position);
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buffer = vec![0; length as usize];
                    file.read_exact_at(&mut buffer, at).map(|()| buffer)
                })
                .await
                .map_err(|e| failed(format!("reading a fetch's spill: {e}")))??;
                self.position += length;
                return Ok(Some(Bytes::from(chunk)));
            }
            if matches!(progress, Progress::Stored { .. }) {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                return Err(failed("the upstream fetch ended unfinished; pull again"));
            }
        }
    }
}

/// The fetch's side of a spill: chunks are collected into batches and written one chunk
/// behind, so that the last chunk waits for the commit. Dropped unfinished (the fetch
/// panicked or was dropped), it fails its readers.
pub(super) struct SpillWriter {
    spill: Arc<Spill>,
    held: Option<Bytes>,
    batch: Vec<Bytes>,
    batched: usize,
    written: u64,
    broken: bool,
    ended: bool,
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        if !self.ended {
            self.spill.progress.send_replace(Progress::Failed(
                "the upstream fetch ended unfinished; pull again".to_owned(),
            ));
        }
    }
}

impl SpillWriter {
    pub(super) fn new(spill: Arc<Spill>) -> SpillWriter {
        SpillWriter {
            spill,
            held: None,
            batch: Vec::new(),
            batched: 0,
            written: 0,
            broken: false,
            ended: false,
        }
    }

    /// One more chunk read from the upstream. Empty ones are skipped: what is held back must
    /// be bytes, or the hold-back would hold back nothing.
    pub(super) async fn pass(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if let Some(previous) = self.held.replace(chunk) {
            self.batched += previous.len();
            self.batch.push(previous);
            if self.batched >= SPILL_BATCH {
                self.write_batch().await;
            }
        }
    }

    /// The blob is committed: the rest becomes readable, and readers end.
    pub(super) async fn stored(mut self) {
        if let Some(last) = self.held.take() {
            self.batched += last.len();
            self.batch.push(last);
        }
        self.write_batch().await;
        if !self.broken {
            self.spill
                .progress
                .send_replace(Progress::Stored { size: self.written });
        }
        self.ended = true;
    }

    /// The fetch failed: every reader's body fails.
    pub(super) fn failed(mut self, why: String) {
        self.spill.progress.send_replace(Progress::Failed(why));
        self.ended = true;
    }

    async fn write_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        if self.broken || batch.is_empty() {
            return;
        }
        let (file, at) = (Arc::clone(&self.spill.file), self.written);
        let written = tokio::task::spawn_blocking(move || {
            let mut at = at;
            for chunk in &batch {
                file.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok::<u64, std::io::Error>(at)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|written| written);
        match written {
            Ok(written) => {
                self.written = written;
                self.spill
                    .progress
                    .send_replace(Progress::Reading { readable: written });
            }
            // The fetch goes on into storage; only its readers lose it (they can pull the
            // stored blob again).
            Err(e) => {
                tracing::warn!(error = %e, "a mirror fetch's spill could not be written; its readers fail");
                self.broken = true;
                self.spill.progress.send_replace(Progress::Failed(format!(
                    "the fetch's bytes could not be kept for readers ({e}); pull again"
                )));
            }
        }
    }
}

/// The spills of the fetches running in this process, by digest.
#[derive(Default)]
pub(super) struct RunningFetches {
    spills: Mutex<HashMap<Digest, Arc<Spill>>>,
}

impl RunningFetches {
    fn spills(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Spill>>> {
        self.spills.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, digest: &Digest, spill: Arc<Spill>) {
        self.spills().insert(digest.clone(), spill);
    }

    /// Forgets `digest`'s spill if it is still `owner`'s (readers that have it keep it).
    pub(super) fn remove(&self, digest: &Digest, owner: &str) {
        let mut spills = self.spills();
        if spills.get(digest).is_some_and(|s| s.owner == owner) {
            spills.remove(digest);
        }
    }

    /// The running fetch of `digest` into `repository`, if this process runs one that has
    /// not failed.
    pub(super) fn fetching_into(
        &self,
        digest: &Digest,
        repository: &RepositoryName,
    ) -> Option<Arc<Spill>> {
        self.spills()
            .get(digest)
            .filter(|s| &s.repository == repository && !s.failed())
            .cloned()
    }

    /// The running fetch of `digest` claimed by `owner`, if this process runs it and it has
    /// not failed.
    pub(super) fn owned_by(&self, digest: &Digest, owner: &str) -> Option<Arc<Spill>> {
        self.spills()
            .get(digest)
            .filter(|s| s.owner == owner && !s.failed())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill() -> Arc<Spill> {
        let name = RepositoryName::parse("a/b").expect("name");
        Arc::new(
            Spill::create(
                &std::env::temp_dir(),
                name,
                uuid::Uuid::new_v4().to_string(),
                None,
            )
            .expect("spill"),
        )
    }

    async fn read_all(mut body: ByteStream) -> Result<Vec<u8>, String> {
        let mut all = Vec::new();
        while let Some(chunk) = body.next().await {
            all.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_late_reader_gets_what_was_written_then_follows() {
        let spill = spill();
        let mut writer = SpillWriter::new(Arc::clone(&spill));
        let chunk = Bytes::from(vec![7u8; 100 << 10]);
        for _ in 0..5 {
            writer.pass(chunk.clone()).await;
        }
        // 400 KiB passed the held chunk; one batch of 256 KiB or more is readable.
        let readable = match spill.progress.borrow().clone() {
            Progress::Reading { readable } => readable,
            other => panic!("{other:?}"),
        };
        assert_eq!(readable, 300 << 10);
        let late = tokio::spawn(read_all(spill.follow()));
        for _ in 0..5 {
            writer.pass(chunk.clone()).await;
        }
        writer.stored().await;
        let bytes = late.await.expect("joined").expect("whole");
        assert_eq!(bytes.len(), 10 * (100 << 10));
        assert_eq!(
            *spill.progress.borrow(),
            Progress::Stored {
                size: 10 * (100 << 10)
            }
        );
        // A reader arriving after the commit reads it all from the spill.
        assert_eq!(
            read_all(spill.follow()).await.expect("whole").len(),
            bytes.len()
        );
    }

    #[tokio::test]
    async fn the_last_chunk_waits_for_the_commit_and_a_failure_fails_readers() {
        let spill = spill();
        let mut writer = SpillWriter::new(Arc::clone(&spill));
        writer.pass(Bytes::from(vec![1u8; SPILL_BATCH])).await;
        writer.pass(Bytes::from_static(b"last")).await;
        assert_eq!(
            *spill.progress.borrow(),
            Progress::Reading {
                readable: SPILL_BATCH as u64
            }
        );
        let reader = tokio::spawn(read_all(spill.follow()));
        writer.failed("digest mismatch".into());
        let outcome = reader.await.expect("joined");
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.contains("digest mismatch")),
            "{outcome:?}"
        );
        assert_eq!(
            *spill.progress.borrow(),
            Progress::Failed("digest mismatch".to_owned())
        );
    }

    #[tokio::test]
    async fn an_empty_last_chunk_holds_back_nothing_and_a_dropped_writer_fails_readers() {
        let spill = spill();
        let mut writer = SpillWriter::new(Arc::clone(&spill));
        writer.pass(Bytes::from(vec![1u8; SPILL_BATCH])).await;
        writer.pass(Bytes::from(vec![2u8; SPILL_BATCH])).await;
        writer.pass(Bytes::new()).await;
        // The second batch is still held back: an empty chunk did not push it out.
        assert_eq!(
            *spill.progress.borrow(),
            Progress::Reading {
                readable: SPILL_BATCH as u64
            }
        );
        let reader = tokio::spawn(read_all(spill.follow()));
        drop(writer);
        assert!(reader.await.expect("joined").is_err());
        assert!(spill.failed());
    }

    #[test]
    fn a_spill_leaves_no_file_behind() {
        let dir = std::env::temp_dir().join(format!("berth-spill-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("dir");
        let name = RepositoryName::parse("a").expect("name");
        let spill = Spill::create(&dir, name, "owner".into(), Some(1)).expect("spill");
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
        drop(spill);
        std::fs::remove_dir(&dir).expect("empty");
    }
}
