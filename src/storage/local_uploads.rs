//! What one process knows about the staged bytes of uploads it wrote lately: copies of them,
//! so that the next request of the upload on this process need not read them back from the
//! metadata store, and the promotion in flight (staged bytes being written as a part in the
//! background). A cache only: the metadata store keeps the durable copy, and anything here may
//! be evicted at any time or be missing on another process.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

/// Uploads whose entries are kept at most; the least recently used go first.
const MAX_UPLOADS: usize = 4096;

/// Staged bytes `[from, to)` of an upload being written as a part in the background.
#[derive(Clone, Debug)]
pub struct Promotion {
    /// First staged byte the part holds.
    pub from: u64,
    /// One past its last byte.
    pub to: u64,
    landed: watch::Receiver<Option<bool>>,
}

/// The sending half of a [`Promotion`]: tells whoever waits whether the part was recorded.
pub struct PromotionOutcome(watch::Sender<Option<bool>>);

impl PromotionOutcome {
    /// The part was recorded and the staged bytes it holds dropped (`true`), or not.
    pub fn finish(self, landed: bool) {
        let _ = self.0.send(Some(landed));
    }
}

impl Promotion {
    /// A promotion of `[from, to)` and the handle its writer reports the outcome through.
    pub fn start(from: u64, to: u64) -> (Promotion, PromotionOutcome) {
        let (sender, landed) = watch::channel(None);
        (Promotion { from, to, landed }, PromotionOutcome(sender))
    }

    fn failed(&self) -> bool {
        *self.landed.borrow() == Some(false)
            || (self.landed.has_changed().is_err() && self.landed.borrow().is_none())
    }

    /// Waits until the part is recorded (`true`) or the promotion failed (`false`).
    pub async fn landed(&self) -> bool {
        let mut landed = self.landed.clone();
        match landed.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.unwrap_or(false),
            Err(_) => false,
        }
    }
}

#[derive(Default)]
struct Held {
    start: u64,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

#[derive(Default)]
struct Local {
    held: Option<Held>,
    promotion: Option<Promotion>,
    used: u64,
}

#[derive(Default)]
struct Inner {
    uploads: HashMap<String, Local>,
    held_bytes: usize,
    clock: u64,
}

impl Inner {
    fn entry(&mut self, id: &str) -> &mut Local {
        self.clock += 1;
        let clock = self.clock;
        if !self.uploads.contains_key(id) && self.uploads.len() >= MAX_UPLOADS {
            self.evict_upload();
        }
        let local = self.uploads.entry(id.to_owned()).or_default();
        local.used = clock;
        local
    }

    fn evict_upload(&mut self) {
        if let Some(oldest) = self
            .uploads
            .iter()
            .min_by_key(|(_, l)| l.used)
            .map(|(id, _)| id.clone())
        {
            self.forget(&oldest);
        }
    }

    fn drop_held(&mut self, id: &str) {
        if let Some(held) = self.uploads.get_mut(id).and_then(|l| l.held.take()) {
            self.held_bytes -= held.len;
        }
    }

    fn forget(&mut self, id: &str) {
        self.drop_held(id);
        self.uploads.remove(id);
    }

    /// Drops the least recently used copies until `budget` is kept.
    fn keep_within(&mut self, budget: usize) {
        while self.held_bytes > budget {
            let Some(oldest) = self
                .uploads
                .iter()
                .filter(|(_, l)| l.held.is_some())
                .min_by_key(|(_, l)| l.used)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.drop_held(&oldest);
        }
    }
}

/// Staged bytes and promotions of this process's uploads (see the module docs).
pub struct LocalUploads {
    inner: Mutex<Inner>,
    budget: usize,
}

impl LocalUploads {
    /// Keeps copies of at most `budget` staged bytes in all.
    pub fn new(budget: usize) -> LocalUploads {
        LocalUploads {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The promotion of this process that covers the staged bytes from `base`, unless it failed.
    pub fn promotion_from(&self, id: &str, base: u64) -> Option<Promotion> {
        let inner = self.lock();
        inner
            .uploads
            .get(id)
            .and_then(|l| l.promotion.clone())
            .filter(|p| p.from == base && !p.failed())
    }

    /// Notes a promotion whose last staged bytes are recorded; copies of bytes it holds are
    /// no longer needed.
    pub fn promoting(&self, id: &str, promotion: Promotion) {
        let mut inner = self.lock();
        inner.drop_held(id);
        inner.entry(id).promotion = Some(promotion);
    }

    /// Keeps a copy of staged bytes that start at `start` (recorded with the session).
    pub fn hold(&self, id: &str, start: u64, bytes: &[u8]) {
        if bytes.len() > self.budget {
            return;
        }
        let copy = Bytes::copy_from_slice(bytes);
        let mut inner = self.lock();
        let contiguous = inner
            .uploads
            .get(id)
            .and_then(|l| l.held.as_ref())
            .is_some_and(|h| h.end() == start);
        if !contiguous {
            inner.drop_held(id);
        }
        let local = inner.entry(id);
        let held = local.held.get_or_insert_with(|| Held {
            start,
            ..Held::default()
        });
        held.chunks.push(copy);
        held.len += bytes.len();
        inner.held_bytes += bytes.len();
        inner.keep_within(self.budget);
    }

    /// Copies the held bytes `[start, start + into.len())` into `into`, if this process holds
    /// them and they are the last it holds (staged bytes end where the next piece starts).
    pub fn copy_held(&self, id: &str, start: u64, into: &mut [u8]) -> bool {
        let mut inner = self.lock();
        let Some(held) = inner.uploads.get(id).and_then(|l| l.held.as_ref()) else {
            return false;
        };
        if held.start > start || held.end() != start + into.len() as u64 {
            return false;
        }
        let mut skip = (start - held.start) as usize;
        let mut at = 0;
        for chunk in &held.chunks {
            if skip >= chunk.len() {
                skip -= chunk.len();
                continue;
            }
            let piece = &chunk[skip..];
            into[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
            skip = 0;
        }
        inner.drop_held(id);
        true
    }

    /// Forgets an upload (completed, cancelled, or its bytes now in a part).
    pub fn forget(&self, id: &str) {
        self.lock().forget(id);
    }

    /// Bytes held in all.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.lock().held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_are_copied_only_when_they_end_where_the_piece_starts() {
        let local = LocalUploads::new(1 << 20);
        local.hold("u", 10, b"abc");
        local.hold("u", 13, b"def");
        let mut into = [0u8; 6];
        assert!(
            !local.copy_held("u", 10, &mut into[..5]),
            "ends before the piece"
        );
        assert!(
            !local.copy_held("u", 9, &mut [0u8; 7]),
            "starts before the copies"
        );
        assert!(local.copy_held("u", 10, &mut into));
        assert_eq!(&into, b"abcdef");
        assert!(!local.copy_held("u", 10, &mut into), "a copy is used once");
        assert_eq!(local.held_bytes(), 0);

        local.hold("v", 0, b"abc");
        local.hold("v", 5, b"xy");
        let mut tail = [0u8; 2];
        assert!(
            local.copy_held("v", 5, &mut tail),
            "a gap starts the copies again"
        );
        assert_eq!(&tail, b"xy");
        local.hold("w", 0, b"abcdef");
        let mut part = [0u8; 4];
        assert!(local.copy_held("w", 2, &mut part));
        assert_eq!(&part, b"cdef");
    }

    #[test]
    fn copies_stay_within_the_budget_least_recently_used_first() {
        let local = LocalUploads::new(8);
        local.hold("old", 0, b"12345");
        local.hold("new", 0, b"12345");
        assert_eq!(local.held_bytes(), 5);
        assert!(!local.copy_held("old", 0, &mut [0u8; 5]));
        assert!(local.copy_held("new", 0, &mut [0u8; 5]));
        local.hold("big", 0, &[0u8; 9]);
        assert_eq!(local.held_bytes(), 0, "more than the budget is never held");
    }

    #[tokio::test]
    async fn a_failed_promotion_is_not_counted_on() {
        let local = LocalUploads::new(1 << 20);
        let (promotion, outcome) = Promotion::start(100, 200);
        local.hold("u", 100, b"staged");
        local.promoting("u", promotion.clone());
        assert!(
            !local.copy_held("u", 100, &mut [0u8; 6]),
            "copies it holds are dropped"
        );
        assert!(local.promotion_from("u", 100).is_some());
        assert!(local.promotion_from("u", 150).is_none(), "another base");
        outcome.finish(false);
        assert!(!promotion.landed().await);
        assert!(local.promotion_from("u", 100).is_none());

        let (promotion, outcome) = Promotion::start(200, 300);
        local.promoting("u", promotion.clone());
        drop(outcome);
        assert!(
            !promotion.landed().await,
            "a writer that went away did not land it"
        );
        assert!(local.promotion_from("u", 200).is_none());

        let (promotion, outcome) = Promotion::start(300, 400);
        local.promoting("u", promotion.clone());
        outcome.finish(true);
        assert!(promotion.landed().await);
        assert!(local.promotion_from("u", 300).is_some());
        local.forget("u");
        assert!(local.promotion_from("u", 300).is_none());
    }
}
