//! A minimum rate for request bodies, in the spirit of Apache's `mod_reqtimeout`: a body that
//! delivers fewer than `rate × window` bytes during `window` of waiting for the client is
//! ended with a [`std::io::ErrorKind::TimedOut`] error.
//!
//! Only time spent waiting on the client counts: while the server is busy (writing, or waiting
//! for a part buffer) it does not poll the body, and that time is not held against the client.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

/// A body stream that fails when its client sends too slowly.
pub struct MinRate<S> {
    inner: S,
    rate: u64,
    window: Duration,
    /// Bytes received in the current window.
    bytes: u64,
    /// Waiting time of the current window, before `pending_since`.
    waited: Duration,
    /// When the body last answered `Pending`, if it has not produced anything since.
    pending_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<S> MinRate<S> {
    /// Wraps `inner`: fewer than `rate` bytes per second over `window` ends it.
    pub fn new(inner: S, rate: u64, window: Duration) -> MinRate<S> {
        MinRate {
            inner,
            rate,
            window: window.max(Duration::from_millis(1)),
            bytes: 0,
            waited: Duration::ZERO,
            pending_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    fn required(&self) -> u64 {
        (self.rate as f64 * self.window.as_secs_f64()) as u64
    }

    fn too_slow(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "request body arrived slower than {} bytes/s over {} s ({} bytes)",
                self.rate,
                self.window.as_secs_f64(),
                self.bytes
            ),
        )
    }

    /// Closes the window if its waiting time is used up: `Err` if too few bytes came.
    fn settle_window(&mut self, waited: Duration, now: Instant) -> Result<(), std::io::Error> {
        if waited < self.window {
            return Ok(());
        }
        if self.bytes < self.required() {
            return Err(self.too_slow());
        }
        self.bytes = 0;
        self.waited = Duration::ZERO;
        if self.pending_since.is_some() {
            self.pending_since = Some(now);
        }
        Ok(())
    }
}

impl<S> Stream for MinRate<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.rate == 0 {
            return Pin::new(&mut this.inner).poll_next(cx);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let now = Instant::now();
                    if let Some(since) = this.pending_since.take() {
                        this.waited += now - since;
                    }
                    this.bytes += chunk.len() as u64;
                    if this.waited >= this.window {
                        // The window closes with these bytes counted.
                        let waited = this.waited;
                        if let Err(e) = this.settle_window(waited, now) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(other) => return Poll::Ready(other),
                Poll::Pending => {
                    let now = Instant::now();
                    let since = *this.pending_since.get_or_insert(now);
                    let waited = this.waited + (now - since);
                    if let Err(e) = this.settle_window(waited, now) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    let waited = this.waited + (now - this.pending_since.unwrap_or(now));
                    let deadline = now + this.window.saturating_sub(waited);
                    this.timer.as_mut().reset(deadline);
                    if this.timer.as_mut().poll(cx).is_ready() {
                        // The deadline is already here: evaluate again.
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn trickle(
        every: Duration,
        chunk: usize,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        Box::pin(futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![0u8; chunk])), ()))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_rate_is_ended() {
        let mut body = MinRate::new(
            trickle(Duration::from_secs(2), 1),
            500,
            Duration::from_secs(20),
        );
        let started = Instant::now();
        let mut got = 0;
        let error = loop {
            match body.next().await {
                Some(Ok(c)) => got += c.len(),
                Some(Err(e)) => break e,
                None => panic!("the trickle does not end by itself"),
            }
        };
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            got >= 9,
            "bytes before the window closed are delivered: {got}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(20) && took <= Duration::from_secs(22),
            "ended when the window closed, after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_above_the_rate_is_not() {
        let mut body = MinRate::new(
            trickle(Duration::from_millis(100), 100),
            500,
            Duration::from_secs(2),
        )
        .take(500);
        let mut n = 0;
        while let Some(chunk) = body.next().await {
            chunk.expect("1000 bytes/s passes a 500 bytes/s minimum");
            n += 1;
        }
        assert_eq!(n, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_ended_after_one_window() {
        let stalled = Box::pin(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let mut body = MinRate::new(stalled, 1, Duration::from_secs(5));
        let started = Instant::now();
        let error = body.next().await.expect("an item").expect_err("an error");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_does_not_poll_is_not_counted() {
        let mut body = MinRate::new(
            trickle(Duration::from_millis(10), 100),
            500,
            Duration::from_secs(1),
        );
        for _ in 0..5 {
            body.next().await.unwrap().unwrap();
            // The server is busy elsewhere for a long time between reads.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    #[tokio::test]
    async fn zero_rate_turns_the_check_off() {
        let stalled = Box::pin(futures::stream::iter(vec![Ok(Bytes::from_static(b"x"))]));
        let mut body = MinRate::new(stalled, 0, Duration::from_millis(1));
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"x");
        assert!(body.next().await.is_none());
    }
}
