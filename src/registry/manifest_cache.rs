//! A manifest cache for registries whose processes share one machine (SQLite deployments).
//!
//! Cached entries are tagged with a *change counter* kept in a small memory-mapped file next
//! to the database: every process that changes manifests or tags bumps it (before and after
//! committing), and an entry is only served while the counter still has the value it had
//! before the entry's query ran. Reading the counter is one atomic load, so hot manifests
//! cost no database round trip, and a write acknowledged by any process is seen by the next
//! read in every process. Entries also expire after `MAX_AGE` (one second), which bounds
//! staleness if a process dies between committing a change and bumping the counter.

use std::collections::HashMap;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metadata::ManifestRecord;
use crate::oci::{Reference, RepositoryName};

const MAX_AGE: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 16_384;
const MAPPED: usize = 4096;

/// A counter in a file mapped by every process using it.
pub struct ChangeCounter {
    ptr: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only accessed through the atomic, which is Sync.
unsafe impl Send for ChangeCounter {}
// SAFETY: as above.
unsafe impl Sync for ChangeCounter {}

impl ChangeCounter {
    /// Maps (creating if needed) the counter file at `path`.
    pub fn open(path: &Path) -> std::io::Result<ChangeCounter> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < MAPPED as u64 {
            file.set_len(MAPPED as u64)?;
        }
        // SAFETY: mapping a file we hold open, of at least MAPPED bytes; the mapping outlives
        // the descriptor by design (POSIX keeps it valid).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAPPED,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(ChangeCounter { ptr })
    }

    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: page-aligned mapping of MAPPED bytes, valid until drop.
        unsafe { self.ptr.as_ref() }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.atomic().load(Ordering::SeqCst)
    }

    /// Records a change.
    pub fn bump(&self) {
        self.atomic().fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for ChangeCounter {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `open`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), MAPPED);
        }
    }
}

type Key = (RepositoryName, Reference);

struct Entry {
    counter: u64,
    filled: Instant,
    manifest: Option<ManifestRecord>,
}

/// Manifests (and misses) by repository and reference, valid while the counter is unchanged.
pub struct ManifestCache {
    counter: ChangeCounter,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl ManifestCache {
    /// A cache coordinated through the counter file at `path`.
    pub fn open(path: &Path) -> std::io::Result<ManifestCache> {
        Ok(ManifestCache {
            counter: ChangeCounter::open(path)?,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn counter(&self) -> u64 {
        self.counter.get()
    }

    pub(crate) fn changed(&self) {
        self.counter.bump();
    }

    /// A cached answer, if still valid.
    pub(crate) fn get(&self, key: &Key) -> Option<Option<ManifestRecord>> {
        let now = self.counter.get();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.counter == now && e.filled.elapsed() < MAX_AGE)
            .map(|e| e.manifest.clone())
    }

    /// Remembers an answer found by a query that started when the counter read `counter`.
    pub(crate) fn put(&self, key: Key, counter: u64, manifest: Option<ManifestRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                counter,
                filled: Instant::now(),
                manifest,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        let a = ChangeCounter::open(&path).unwrap();
        let b = ChangeCounter::open(&path).unwrap();
        let start = a.get();
        b.bump();
        assert_eq!(
            a.get(),
            start + 1,
            "a bump through one mapping is seen through another"
        );
    }

    #[test]
    fn entries_are_invalidated_by_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ManifestCache::open(&dir.path().join("generation")).unwrap();
        let key = (
            RepositoryName::parse("a").unwrap(),
            Reference::parse("t").unwrap(),
        );
        let counter = cache.counter();
        cache.put(key.clone(), counter, None);
        assert_eq!(cache.get(&key), Some(None));
        cache.changed();
        assert_eq!(cache.get(&key), None);
    }
}
