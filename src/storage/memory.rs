//! Blobs in memory, for tests and throwaway registries. Nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::Staged;
use super::{
    BlobStore, ByteRange, ByteStream, Durable, PartNumbers, PartRecord, Piece, StorageError,
    StorageResult, UploadWriter,
};

const READ_CHUNK: usize = 256 * 1024;

type UploadBytes = Arc<AsyncMutex<Vec<u8>>>;

/// A blob store in process memory.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    objects: Arc<Mutex<HashMap<String, Bytes>>>,
    uploads: Arc<Mutex<HashMap<String, UploadBytes>>>,
    part_size: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_for(upload_id: &str) -> String {
    format!("blobs/{upload_id}")
}

impl MemoryBlobStore {
    /// An empty store cutting uploads into pieces of `part_size` bytes.
    pub fn new(part_size: usize) -> MemoryBlobStore {
        MemoryBlobStore {
            part_size,
            ..Default::default()
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        lock(&self.objects)
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, UploadBytes>> {
        lock(&self.uploads)
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn part_size(&self) -> usize {
        self.part_size
    }

    async fn begin_upload(&self, _upload_id: &str) -> StorageResult<String> {
        // The first writer creates the upload's bytes, once its session's row exists.
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
                "the memory store never stages bytes".into(),
            ));
        }
        let bytes = {
            let mut uploads = self.uploads();
            match uploads.get(upload_id) {
                Some(bytes) => Arc::clone(bytes),
                None if offset == 0 => {
                    let fresh: UploadBytes = Arc::new(AsyncMutex::new(Vec::new()));
                    uploads.insert(upload_id.to_owned(), Arc::clone(&fresh));
                    fresh
                }
                None => {
                    return Err(StorageError::UploadLost(format!(
                        "upload {upload_id} is not in memory"
                    )));
                }
            }
        };
        let mut guard = bytes.try_lock_owned().map_err(|_| StorageError::Busy)?;
        if (guard.len() as u64) < offset {
            return Err(StorageError::UploadLost(format!(
                "upload {upload_id} holds {} bytes, the session records {offset}",
                guard.len()
            )));
        }
        guard.truncate(offset as usize);
        Ok(Box::new(MemoryWriter {
            key: key_for(upload_id),
            bytes: guard,
            objects: Arc::clone(&self.objects),
            uploads: Arc::clone(&self.uploads),
            upload_id: upload_id.to_owned(),
        }))
    }

    async fn discard_upload(&self, upload_id: &str, _store_state: &str) -> StorageResult<()> {
        self.uploads().remove(upload_id);
        self.objects().remove(&key_for(upload_id));
        Ok(())
    }

    async fn read(&self, key: &str, range: Option<ByteRange>) -> StorageResult<ByteStream> {
        let object = self
            .objects()
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(key.to_owned()))?;
        let object = match range {
            Some(r) => object.slice(r.start as usize..r.end as usize),
            None => object,
        };
        let chunks: Vec<StorageResult<Bytes>> = (0..object.len())
            .step_by(READ_CHUNK)
            .map(|at| Ok(object.slice(at..(at + READ_CHUNK).min(object.len()))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        self.objects().remove(key);
        Ok(())
    }

    async fn object_size(&self, key: &str) -> StorageResult<Option<u64>> {
        match self.objects().get(key) {
            Some(object) => Ok(Some(object.len() as u64)),
            None => Err(StorageError::NotFound(key.to_owned())),
        }
    }

    async fn check(&self) -> StorageResult<()> {
        Ok(())
    }

    async fn stored_keys(&self) -> StorageResult<Vec<String>> {
        let mut keys: Vec<String> = self.objects().keys().cloned().collect();
        keys.extend(
            self.uploads()
                .keys()
                .map(|id| format!("{}#upload", key_for(id))),
        );
        keys.sort();
        Ok(keys)
    }
}

struct MemoryWriter {
    key: String,
    bytes: OwnedMutexGuard<Vec<u8>>,
    objects: Arc<Mutex<HashMap<String, Bytes>>>,
    uploads: Arc<Mutex<HashMap<String, UploadBytes>>>,
    upload_id: String,
}

#[async_trait]
impl UploadWriter for MemoryWriter {
    fn carried(&self) -> usize {
        0
    }

    async fn write(&mut self, piece: Piece) -> StorageResult<Vec<Durable>> {
        let start = piece.start_offset() as usize;
        self.bytes.truncate(start);
        self.bytes.extend_from_slice(piece.buffer.as_slice());
        Ok(vec![Durable::at(piece.end_offset, String::new())])
    }

    fn in_flight(&self) -> usize {
        0
    }

    async fn settle(&mut self) -> StorageResult<Option<Durable>> {
        Ok(None)
    }

    async fn complete(&mut self, _parts: &[PartRecord], size: u64) -> StorageResult<String> {
        let size = size as usize;
        let mut objects = lock(&self.objects);
        if objects.contains_key(&self.key) {
            return Ok(self.key.clone());
        }
        if self.bytes.len() < size {
            return Err(StorageError::UploadLost(format!(
                "upload {} holds {} bytes, expected {size}",
                self.upload_id,
                self.bytes.len()
            )));
        }
        self.bytes.truncate(size);
        objects.insert(
            self.key.clone(),
            Bytes::from(std::mem::take(&mut *self.bytes)),
        );
        lock(&self.uploads).remove(&self.upload_id);
        Ok(self.key.clone())
    }

    async fn abandon(&mut self) {}
}
