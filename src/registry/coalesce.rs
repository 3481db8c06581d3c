//! Request coalescing that never serves stale data.
//!
//! Many clients asking for the same manifest at once share one database query, but only a
//! query that *started after* a request arrived may answer it. A request joins the batch
//! waiting for the next query; the runner takes the whole batch, queries once, and answers
//! every request in it. So a read that arrives after a write was acknowledged, on any
//! replica, is answered by a query that sees the write.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

struct Slot<V> {
    running: bool,
    waiting: Vec<oneshot::Sender<V>>,
}

/// Coalesces concurrent lookups of equal keys into one fetch per round.
pub(crate) struct Coalescer<K, V> {
    slots: Arc<Mutex<HashMap<K, Slot<V>>>>,
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    pub(crate) fn new() -> Self {
        Coalescer {
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Fetches `key` with `fetch`, sharing the query with requests that arrived meanwhile.
    /// Returns `None` only if the runner died (the caller should fetch by itself).
    pub(crate) async fn get<F, Fut>(&self, key: K, fetch: F) -> Option<V>
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_runner = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                running: false,
                waiting: Vec::new(),
            });
            slot.waiting.push(tx);
            !std::mem::replace(&mut slot.running, true)
        };
        if start_runner {
            let slots = Arc::clone(&self.slots);
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut guard = slots.lock().unwrap_or_else(|p| p.into_inner());
                        let Some(slot) = guard.get_mut(&key) else {
                            return;
                        };
                        if slot.waiting.is_empty() {
                            guard.remove(&key);
                            return;
                        }
                        std::mem::take(&mut slot.waiting)
                    };
                    let value = fetch(key.clone()).await;
                    for waiter in batch {
                        let _ = waiter.send(value.clone());
                    }
                }
            });
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_requests_share_queries_but_never_see_older_writes() {
        let coalescer = Arc::new(Coalescer::<u8, u64>::new());
        let version = Arc::new(AtomicU64::new(0));
        let queries = Arc::new(AtomicU64::new(0));
        let fetch = {
            let (version, queries) = (version.clone(), queries.clone());
            move |_key: u8| {
                let (version, queries) = (version.clone(), queries.clone());
                async move {
                    queries.fetch_add(1, Ordering::SeqCst);
                    let seen = version.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen
                }
            }
        };
        let fetch = Arc::new(fetch);
        let mut handles = Vec::new();
        for i in 0..200u64 {
            if i == 100 {
                version.store(1, Ordering::SeqCst);
            }
            let written = version.load(Ordering::SeqCst);
            let (c, f) = (coalescer.clone(), fetch.clone());
            handles.push(tokio::spawn(async move {
                let seen = c.get(7, move |k| f(k)).await.unwrap();
                assert!(
                    seen >= written,
                    "a read never sees data older than what was written before it"
                );
            }));
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for h in handles {
            h.await.unwrap();
        }
        let q = queries.load(Ordering::SeqCst);
        assert!(q < 100, "200 requests shared {q} queries");
    }
}
