//! Hashing an upload alongside receiving it.
//!
//! Small bodies are hashed inline. Past [`THREAD_AFTER`] bytes the hash state moves to a
//! blocking thread fed through a short channel, so that one upload's hashing runs in parallel
//! with receiving and copying its next bytes. Marks taken between data keep the hash state at
//! piece boundaries, which checkpoints save.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{RegistryError, RegistryResult};
use crate::oci::{DigestAlgorithm, Hasher};

/// Bytes hashed inline before hashing moves to its own thread.
const THREAD_AFTER: u64 = 1024 * 1024;
/// Chunks in flight to the hashing thread: its backpressure, and the memory (a few hundred
/// KiB of received data) an upload holds outside its part buffers.
const CHANNEL: usize = 2;

enum Msg {
    Data(Bytes),
    Mark(oneshot::Sender<Vec<u8>>),
}

enum Mode {
    Inline(Box<Hasher>),
    Threaded(mpsc::Sender<Msg>),
}

/// The hash of an upload as its bytes go by.
pub(crate) struct HashPipe {
    algorithm: DigestAlgorithm,
    mode: Option<Mode>,
    inline_bytes: u64,
}

/// A hash state, ready or still being computed.
pub(crate) enum SavedState {
    Ready(Vec<u8>),
    Pending(oneshot::Receiver<Vec<u8>>),
}

impl SavedState {
    pub(crate) async fn get(self) -> RegistryResult<Vec<u8>> {
        match self {
            SavedState::Ready(state) => Ok(state),
            SavedState::Pending(rx) => rx
                .await
                .map_err(|_| RegistryError::internal("the hashing thread stopped")),
        }
    }
}

fn thread_gone() -> RegistryError {
    RegistryError::internal("the hashing thread stopped")
}

impl HashPipe {
    pub(crate) fn new(hasher: Hasher) -> HashPipe {
        HashPipe {
            algorithm: hasher.algorithm(),
            mode: Some(Mode::Inline(Box::new(hasher))),
            inline_bytes: 0,
        }
    }

    pub(crate) fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// Feeds the next bytes of the upload.
    pub(crate) async fn update(&mut self, data: Bytes) -> RegistryResult<()> {
        match self.mode.as_mut() {
            Some(Mode::Inline(hasher)) => {
                hasher.update(&data);
                self.inline_bytes += data.len() as u64;
                if self.inline_bytes >= THREAD_AFTER {
                    self.move_to_thread();
                }
                Ok(())
            }
            Some(Mode::Threaded(tx)) => tx.send(Msg::Data(data)).await.map_err(|_| thread_gone()),
            None => Err(thread_gone()),
        }
    }

    fn move_to_thread(&mut self) {
        let Some(Mode::Inline(mut hasher)) = self.mode.take() else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL);
        tokio::task::spawn_blocking(move || {
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Data(data) => hasher.update(&data),
                    Msg::Mark(reply) => {
                        let _ = reply.send(hasher.save());
                    }
                }
            }
        });
        self.mode = Some(Mode::Threaded(tx));
    }

    /// The state after every byte fed so far.
    pub(crate) async fn mark(&mut self) -> RegistryResult<SavedState> {
        match self.mode.as_mut() {
            Some(Mode::Inline(hasher)) => Ok(SavedState::Ready(hasher.save())),
            Some(Mode::Threaded(tx)) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Msg::Mark(reply)).await.map_err(|_| thread_gone())?;
                Ok(SavedState::Pending(rx))
            }
            None => Err(thread_gone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn threaded_hashing_matches_one_pass() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let whole = DigestAlgorithm::Sha256.digest(&data);
        let mut pipe = HashPipe::new(Hasher::new(DigestAlgorithm::Sha256));
        let mut marks = Vec::new();
        for (i, chunk) in data.chunks(300_001).enumerate() {
            pipe.update(Bytes::copy_from_slice(chunk)).await.unwrap();
            if i % 3 == 0 {
                marks.push(((i + 1) * 300_001, pipe.mark().await.unwrap()));
            }
        }
        let end = pipe.mark().await.unwrap().get().await.unwrap();
        let finished = Hasher::restore(DigestAlgorithm::Sha256, &end)
            .unwrap()
            .finish();
        assert_eq!(finished, whole);
        for (at, state) in marks {
            let state = state.get().await.unwrap();
            let at = at.min(data.len());
            let mut resumed = Hasher::restore(DigestAlgorithm::Sha256, &state).unwrap();
            resumed.update(&data[at..]);
            assert_eq!(resumed.finish(), whole, "state at {at}");
        }
    }
}
