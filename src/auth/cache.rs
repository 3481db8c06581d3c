//! A small bounded cache of verification results, keyed by a 32-byte hash of the credential,
//! sharded so that many concurrent requests do not queue on one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

struct Entry<T> {
    value: Arc<T>,
    expires: Instant,
}

/// Entries expire at their own deadline, and at most `ttl` after insertion; a full shard drops
/// its expired entries, then everything if still full (results are cheap to compute again).
pub(crate) struct TtlCache<T> {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry<T>>>>,
    ttl: Duration,
    per_shard: usize,
}

impl<T> TtlCache<T> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> TtlCache<T> {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry<T>>> {
        self.shards[key[0] as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Arc<T>> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(entry) if entry.expires > Instant::now() => Some(Arc::clone(&entry.value)),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, key: [u8; 32], value: Arc<T>, expires: Instant) {
        let expires = expires.min(Instant::now() + self.ttl);
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard {
            let now = Instant::now();
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(key, Entry { value, expires });
    }

    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_shards_stay_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60), 32);
        cache.insert(
            [1; 32],
            Arc::new(1),
            Instant::now() + Duration::from_secs(60),
        );
        cache.insert(
            [2; 32],
            Arc::new(2),
            Instant::now() - Duration::from_secs(1),
        );
        assert_eq!(cache.get(&[1; 32]).as_deref(), Some(&1));
        assert!(cache.get(&[2; 32]).is_none(), "expired");
        for i in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, Arc::new(0), Instant::now() + Duration::from_secs(60));
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32 + SHARDS, "bounded: {total}");
    }
}
