//! The server loop: accepting connections within a cap, closing the ones that are slow to send
//! a request or idle too long, and shutting down gracefully.
//!
//! Idle sockets must not exhaust file descriptors or memory, so every connection is under a
//! deadline whenever no request of it is being served: a request head must arrive complete
//! within the header timeout (from the connection's start, or from its first byte after an
//! idle spell), and a keep-alive connection with nothing to do is closed after the idle
//! timeout. While a request is served, its body is under the minimum body rate instead
//! (see `body_rate`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

#[cfg(feature = "tls")]
use super::tls::ServerTls;

/// Most bytes an HTTP/1 connection reads ahead (and the longest request head it accepts).
/// Each body chunk a request holds shares the allocation it was read into, so this bounds
/// what a connection pins outside the part buffers. hyper's default (~400 KiB) let each upload
/// waiting for a part buffer hold about 1 MiB; 64 KiB cost a fifth of a directory push's
/// speed, 256 KiB nothing measurable.
const READ_BUFFER_MAX: usize = 256 * 1024;

/// Connection limits and shutdown behaviour of [`serve_with`].
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// After a stop signal, how long in-flight requests may run before the server returns.
    pub grace: Duration,
    /// A request head must arrive complete within this time of the connection's start, or of
    /// its first byte after an idle spell.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; further ones wait in the listen backlog (0: no cap).
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(90),
            max_connections: 4096,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for at most `options.grace` before returning.
///
/// Requests carry the peer's address as an [`axum::extract::ConnectInfo<SocketAddr>`]
/// extension.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    serve_on(listener, Transport::Plain, app, shutdown, options).await
}

/// [`serve_with`] over TLS: every connection is accepted with the settings `tls` holds at
/// that moment (see [`ServerTls::watch`] for reloading them). The TLS handshake must complete
/// within the header timeout. Requests carry `X-Forwarded-Proto: https`, so that URLs built
/// from them (the token realm) name the scheme the client used.
#[cfg(feature = "tls")]
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    serve_on(listener, Transport::Tls(tls), app, shutdown, options).await
}

/// How connections are spoken to.
#[derive(Clone)]
enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(Arc<ServerTls>),
}

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve_on(
    listener: TcpListener,
    transport: Transport,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Replaced by `Watched`, which also tells idle connections from slow heads.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER_MAX);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(match options.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    }));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let watched = Watched::new(stream, Arc::clone(&activity), &options);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let transport = transport.clone();
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            let (io, over_tls): (Box<dyn Io>, bool) = match transport {
                Transport::Plain => (Box::new(watched), false),
                #[cfg(feature = "tls")]
                Transport::Tls(tls) => match handshake(&tls, watched, header_timeout, peer).await {
                    Some(stream) => (Box::new(stream), true),
                    None => return,
                },
            };
            #[cfg(not(feature = "tls"))]
            let _ = header_timeout;
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    let serving = Serving::begin(Arc::clone(&activity));
                    request.extensions_mut().insert(ConnectInfo(peer));
                    adopt_authority_as_host(&mut request);
                    if over_tls {
                        request.headers_mut().insert(
                            http::header::HeaderName::from_static("x-forwarded-proto"),
                            http::HeaderValue::from_static("https"),
                        );
                    }
                    let app = app.clone();
                    async move {
                        let response = match app.oneshot(request.map(Body::new)).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        };
                        Ok::<_, Infallible>(response.map(|body| {
                            Body::new(Tracked {
                                body,
                                _serving: serving,
                            })
                        }))
                    }
                });
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        grace_secs = options.grace.as_secs_f64(),
        "shutting down; waiting for in-flight requests"
    );
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which arrives as the URI's
/// authority, not as a `Host` header; URLs built from the request (the token realm) read
/// `Host`, so it is filled in from the authority when absent.
fn adopt_authority_as_host<B>(request: &mut http::Request<B>) {
    if request.headers().contains_key(http::header::HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(http::header::HOST, host);
    }
}

/// The TLS handshake of a new connection, within the header timeout; `None` when it failed
/// (counted and logged at debug: scanners and wrong-protocol clients are common).
#[cfg(feature = "tls")]
async fn handshake(
    tls: &ServerTls,
    watched: Watched,
    timeout: Duration,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Watched>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.settings());
    let reason = match tokio::time::timeout(timeout, acceptor.accept(watched)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            "handshake"
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            "timeout"
        }
    };
    metrics::counter!(crate::instruments::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    None
}

/// Serves `app` with the default [`ServeOptions`] and the given grace period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let options = ServeOptions {
        grace,
        ..ServeOptions::default()
    };
    serve_with(listener, app, shutdown, options).await
}

/// What a connection is doing: how many of its requests are being served, and since when it
/// has had none.
struct Activity {
    serving: AtomicUsize,
    epoch: Instant,
    /// Milliseconds after `epoch` at which the last request ended, plus one; 0 before any.
    last_end: AtomicU64,
    /// The connection's reader, parked while a request was served. The connection does not
    /// read again until the socket has data, so when its last request ends it is woken to
    /// start the idle deadline.
    parked_reader: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            serving: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_end: AtomicU64::new(0),
            parked_reader: Mutex::new(None),
        }
    }

    fn park_reader(&self, waker: &Waker) {
        let mut parked = self.parked_reader.lock().unwrap_or_else(|p| p.into_inner());
        match parked.as_mut() {
            Some(w) if w.will_wake(waker) => {}
            _ => *parked = Some(waker.clone()),
        }
    }

    fn wake_reader(&self) {
        let parked = self
            .parked_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(waker) = parked {
            waker.wake();
        }
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) > 0
    }

    /// When the last request ended, if one has.
    fn last_end(&self) -> Option<Instant> {
        match self.last_end.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        }
    }
}

/// One request being served; the connection is idle again when every one is dropped (its
/// response fully sent, or abandoned).
struct Serving(Arc<Activity>);

impl Serving {
    fn begin(activity: Arc<Activity>) -> Serving {
        activity.serving.fetch_add(1, Ordering::AcqRel);
        Serving(activity)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let ended = self.0.epoch.elapsed().as_millis() as u64 + 1;
        self.0.last_end.store(ended, Ordering::Release);
        if self.0.serving.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake_reader();
        }
    }
}

/// A response body that keeps its request counted as served until it is sent.
struct Tracked {
    body: Body,
    _serving: Serving,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket under the header and idle deadlines.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the request head being read started (the connection's start for the first).
    head_started: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>, options: &ServeOptions) -> Watched {
        let now = Instant::now();
        Watched {
            stream,
            activity,
            header_timeout: options.header_timeout,
            idle_timeout: options.idle_timeout,
            head_started: Some(now),
            timer: Box::pin(tokio::time::sleep_until(now + options.header_timeout)),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.activity.serving() {
                    this.head_started = None;
                } else if buf.filled().len() > before && this.head_started.is_none() {
                    this.head_started = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.activity.serving() {
                    // A request body: the minimum body rate governs it.
                    this.head_started = None;
                    this.activity.park_reader(cx.waker());
                    return Poll::Pending;
                }
                let last_end = this.activity.last_end();
                if let (Some(started), Some(ended)) = (this.head_started, last_end)
                    && started <= ended
                {
                    // The head that started then was served since.
                    this.head_started = None;
                }
                let (deadline, what) = match (this.head_started, last_end) {
                    (Some(started), _) => (started + this.header_timeout, "request head"),
                    (None, Some(ended)) => (
                        ended + this.idle_timeout,
                        "next request on an idle connection",
                    ),
                    // Served nothing yet, and its head has not started: from now on.
                    (None, None) => (Instant::now() + this.header_timeout, "request head"),
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("timed out waiting for the {what}"),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
