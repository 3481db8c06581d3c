//! What every request leaves behind: one access log line, request metrics, and a request id
//! returned in `X-Request-Id`.
//!
//! The line and the metrics are recorded when the answer's last byte is handed to the
//! connection (a blob streamed for minutes is logged when it ends, with the bytes it sent), or
//! when the client goes away first: then the status is `499` (nginx's convention for "client
//! closed the request"). Behind a load balancer the client address is taken from
//! `X-Forwarded-For`, but only from peers in [`TrustedProxies`]: anyone else could write any
//! address there.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Instrument;

use crate::client::{ClientAddress, TrustedProxies, peer_address};
use crate::instruments;

/// `X-Request-Id`: the request's id, in every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;
/// The status logged for requests whose client went away before the answer.
pub const CLIENT_CLOSED: u16 = 499;

/// The request id [`observed`] assigned, in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// What a handler knew of a request, put in its response's extensions for the access log.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routed {
    /// [`super::Operation::name`], or another low-cardinality name (`token`).
    pub(crate) operation: &'static str,
    pub(crate) repository: String,
    /// The tag, digest or upload id the path ends with.
    pub(crate) reference: String,
    /// Who the caller authenticated as.
    pub(crate) user: Option<String>,
}

/// The client's `User-Agent`, at most 256 characters of it (it is logged, and kept with
/// events): empty without one.
pub(crate) fn user_agent(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

/// `router`, with every request logged, measured and given an id (see the module).
pub fn observed(router: Router, proxies: TrustedProxies) -> Router {
    router.layer(axum::middleware::from_fn(move |request, next| {
        observe(proxies.clone(), request, next)
    }))
}

async fn observe(proxies: TrustedProxies, mut request: Request, next: Next) -> Response {
    let peer = peer_address(&request).map(|a| a.ip());
    let client = proxies.client(peer, request.headers());
    let from_trusted_proxy = peer.is_some_and(|p| proxies.trusts(p));
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|_| from_trusted_proxy)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let received = Arc::new(AtomicU64::new(0));
    let mut exchange = Exchange {
        started: Instant::now(),
        id: id.clone(),
        client,
        method: request.method().clone(),
        user_agent: user_agent(request.headers()),
        received: Arc::clone(&received),
        sent: 0,
        expected: None,
        answer: None,
        routed: Routed::default(),
        finished: false,
    };
    metrics::gauge!(instruments::HTTP_IN_FLIGHT).increment(1);
    if let Some(client) = client {
        request.extensions_mut().insert(ClientAddress(client));
    }
    request.extensions_mut().insert(RequestId(id.clone()));
    let request = request.map(|body| {
        Body::new(Receiving {
            inner: body,
            received,
        })
    });
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    exchange.answer = Some(response.status());
    exchange.expected = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(routed) = response.extensions_mut().remove::<Routed>() {
        exchange.routed = routed;
    }
    response.map(|body| {
        Body::new(Sending {
            inner: body,
            exchange,
        })
    })
}

fn dash_if_empty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Visible ASCII, no spaces or quotes: safe in a header and a log line.
fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// One request, from its arrival until its answer's last byte.
struct Exchange {
    started: Instant,
    id: String,
    client: Option<IpAddr>,
    method: Method,
    user_agent: String,
    received: Arc<AtomicU64>,
    sent: u64,
    /// The answer's Content-Length: connections stop reading a body once they have it all.
    expected: Option<u64>,
    /// The status, once the handler answered.
    answer: Option<StatusCode>,
    routed: Routed,
    finished: bool,
}

impl Exchange {
    fn all_sent(&self) -> bool {
        self.expected == Some(self.sent)
    }

    /// Logs and measures the request, once: `complete` if the whole answer was handed over.
    fn finish(&mut self, complete: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let status = self.answer.map(|s| s.as_u16()).unwrap_or(CLIENT_CLOSED);
        let received = self.received.load(Ordering::Relaxed);
        let operation = if self.routed.operation.is_empty() {
            "unrouted"
        } else {
            self.routed.operation
        };
        metrics::gauge!(instruments::HTTP_IN_FLIGHT).decrement(1);
        metrics::counter!(instruments::HTTP_REQUESTS, "operation" => operation, "status" => status.to_string())
            .increment(1);
        metrics::histogram!(instruments::HTTP_REQUEST_DURATION, "operation" => operation)
            .record(elapsed);
        metrics::counter!(instruments::HTTP_RECEIVED_BYTES, "operation" => operation)
            .increment(received);
        metrics::counter!(instruments::HTTP_SENT_BYTES, "operation" => operation)
            .increment(self.sent);
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        tracing::info!(
            target: "berth::access",
            parent: None,
            request_id = %self.id,
            client = %client,
            method = %self.method,
            operation,
            repository = %dash_if_empty(&self.routed.repository),
            reference = %dash_if_empty(&self.routed.reference),
            user = self.routed.user.as_deref().unwrap_or("-"),
            status,
            bytes_in = received,
            bytes_out = self.sent,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            complete,
            user_agent = %self.user_agent,
            "request"
        );
    }
}

impl Drop for Exchange {
    /// A request dropped before it was answered: the client went away.
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// A request body that counts the bytes read from it.
struct Receiving {
    inner: Body,
    received: Arc<AtomicU64>,
}

impl HttpBody for Receiving {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes handed to the connection and finishes the exchange
/// at its end.
struct Sending {
    inner: Body,
    exchange: Exchange,
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() || self.exchange.all_sent() {
                    self.exchange.finish(true);
                }
            }
            Poll::Ready(None) => self.exchange.finish(true),
            Poll::Ready(Some(Err(_))) => self.exchange.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Sending {
    /// An answer dropped before its end was cut short (the client went away, the connection
    /// failed), unless there was nothing (more) to send: an empty body, or a HEAD answer,
    /// whose body the connection discards.
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream()
            || self.exchange.all_sent()
            || self.exchange.method == Method::HEAD;
        self.exchange.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_proxies_are_checked() {
        assert!(is_valid_request_id("abc-123_XYZ.7"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id("quote\""));
        assert!(!is_valid_request_id(&"x".repeat(MAX_REQUEST_ID + 1)));
    }
}
