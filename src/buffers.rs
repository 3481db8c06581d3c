//! The global budget of upload part buffers.
//!
//! Every byte an upload holds in memory sits in one of these buffers. When all are in use, a
//! request waits for one instead of allocating: its client is slowed by TCP backpressure and
//! the process's memory stays at `count × capacity`. Buffers are aligned to [`ALIGNMENT`] so
//! that stores can hand them to the kernel for direct I/O.

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use deadpool::unmanaged::{Object, Pool};

/// Alignment of buffer memory (the page size, enough for `O_DIRECT`).
pub const ALIGNMENT: usize = 4096;

/// Heap memory aligned to [`ALIGNMENT`]; bytes `[0, len)` are initialized.
struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read initialized bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    const fn empty() -> AlignedBuf {
        AlignedBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            len: 0,
        }
    }

    fn with_capacity(cap: usize) -> AlignedBuf {
        if cap == 0 {
            return AlignedBuf::empty();
        }
        let layout = Layout::from_size_align(cap, ALIGNMENT).expect("buffer size fits a layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: [0, len) is initialized and inside the allocation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: [0, len) is initialized, inside the allocation, and exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= self.cap - self.len, "part buffer overflow");
        // SAFETY: the destination range is inside the allocation and does not overlap `bytes`
        // (which the caller cannot borrow from this exclusively borrowed buffer).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    fn extend_zeroed(&mut self, n: usize) {
        assert!(n <= self.cap - self.len, "part buffer overflow");
        // SAFETY: the range is inside the allocation.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, n) };
        self.len += n;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            let layout = Layout::from_size_align(self.cap, ALIGNMENT)
                .expect("layout was valid at allocation");
            // SAFETY: allocated in `with_capacity` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// A fixed set of reusable buffers of one capacity.
#[derive(Clone)]
pub struct BufferPool {
    pool: Pool<AlignedBuf>,
    capacity: usize,
    count: usize,
    /// Requests waiting for a buffer (the pool itself does not count them).
    waiting: Arc<AtomicUsize>,
}

/// Counts a request as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("capacity", &self.capacity)
            .field("count", &self.count)
            .field("available", &self.available())
            .finish()
    }
}

impl BufferPool {
    /// `count` buffers of `capacity` bytes each (rounded up to [`ALIGNMENT`]), allocated on
    /// first use.
    pub fn new(count: usize, capacity: usize) -> BufferPool {
        let count = count.max(1);
        let capacity = capacity.div_ceil(ALIGNMENT).max(1) * ALIGNMENT;
        BufferPool {
            pool: Pool::from((0..count).map(|_| AlignedBuf::empty()).collect::<Vec<_>>()),
            capacity,
            count,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Capacity of each buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Buffers not in use right now.
    pub fn available(&self) -> usize {
        self.pool.status().available
    }

    /// Requests waiting for a buffer right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Buffers in use right now.
    pub fn in_use(&self) -> usize {
        self.count.saturating_sub(self.available())
    }

    /// Waits at most `wait` for a free buffer; `None` if none came free in time.
    pub async fn get_within(&self, wait: std::time::Duration) -> Option<PartBuffer> {
        tokio::time::timeout(wait, self.get()).await.ok()
    }

    /// Waits for a free buffer, emptied, with its full capacity.
    pub async fn get(&self) -> PartBuffer {
        let mut obj = match self.pool.try_get() {
            Ok(obj) => obj,
            Err(_) => self.wait().await,
        };
        if obj.cap < self.capacity {
            *obj = AlignedBuf::with_capacity(self.capacity);
        }
        obj.len = 0;
        PartBuffer { obj }
    }

    async fn wait(&self) -> Object<AlignedBuf> {
        let _waiting = Waiting::new(&self.waiting);
        // The pool is never closed and has no timeout configured, so `get` only returns once a
        // buffer is free.
        loop {
            match self.pool.get().await {
                Ok(obj) => return obj,
                Err(e) => {
                    tracing::error!(error = %e, "part buffer pool refused a request; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// One buffer from a [`BufferPool`]; returns to the pool when dropped (or, after
/// [`PartBuffer::freeze`], when the last `Bytes` view is dropped).
pub struct PartBuffer {
    obj: Object<AlignedBuf>,
}

impl PartBuffer {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.obj.len
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.obj.len == 0
    }

    /// Room left before the buffer is full.
    pub fn remaining(&self) -> usize {
        self.obj.cap - self.obj.len
    }

    /// Appends bytes; the caller keeps within [`PartBuffer::remaining`].
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.obj.extend_from_slice(bytes);
    }

    /// Appends `n` zero bytes (room for content a store fills in later).
    pub fn reserve_head(&mut self, n: usize) {
        self.obj.extend_zeroed(n);
    }

    /// Appends zeros up to the next multiple of [`ALIGNMENT`]; returns the padded length.
    pub fn pad_to_alignment(&mut self) -> usize {
        let len = self.obj.len;
        let padded = len.div_ceil(ALIGNMENT) * ALIGNMENT;
        self.obj.extend_zeroed(padded - len);
        padded
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        self.obj.as_slice()
    }

    /// The bytes held, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.obj.as_mut_slice()
    }

    /// Shares the buffer as `Bytes` without copying; it returns to the pool when every view is
    /// dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(FrozenBuffer(Arc::new(self)))
    }
}

struct FrozenBuffer(Arc<PartBuffer>);

impl AsRef<[u8]> for FrozenBuffer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_wait_for_a_free_buffer() {
        let pool = BufferPool::new(1, 16);
        let mut first = pool.get().await;
        first.extend_from_slice(b"hello");
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), pool.get()).await;
        assert!(
            waiting.is_err(),
            "second get must wait while the only buffer is out"
        );
        assert_eq!(
            pool.waiting(),
            0,
            "a waiter that gave up is no longer counted"
        );
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.len() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(pool.waiting(), 1, "a waiting request is counted");
        queued.abort();
        let _ = queued.await;
        assert_eq!(pool.waiting(), 0);
        let frozen = first.freeze();
        let view = frozen.slice(1..3);
        drop(frozen);
        assert_eq!(pool.available(), 0, "a live view keeps the buffer out");
        assert_eq!(&view[..], b"el");
        drop(view);
        let again = pool.get().await;
        assert!(again.is_empty(), "buffers come back empty");
        assert_eq!(
            again.remaining(),
            ALIGNMENT,
            "capacity rounds up to the alignment"
        );
    }

    #[tokio::test]
    async fn buffers_are_aligned_and_pad_with_zeros() {
        let pool = BufferPool::new(2, 3 * ALIGNMENT);
        let mut b = pool.get().await;
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGNMENT, 0);
        b.reserve_head(10);
        b.extend_from_slice(&[7u8; 100]);
        assert_eq!(b.pad_to_alignment(), ALIGNMENT);
        assert!(b.as_slice()[..10].iter().all(|&x| x == 0));
        assert!(b.as_slice()[10..110].iter().all(|&x| x == 7));
        assert!(b.as_slice()[110..].iter().all(|&x| x == 0));
    }
}
