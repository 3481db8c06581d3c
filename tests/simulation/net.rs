//! Faults only a network makes: proxies in front of Postgres and S3 that forward a request,
//! let the server act on it, and cut the connection before the reply (a `COMMIT` that
//! committed; a `CompleteMultipartUpload` or `PutObject` that completed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which requests of a kind to cut: the `first`-th seen (from 1) and the `count - 1` after it.
#[derive(Default)]
pub struct Cuts {
    seen: AtomicU64,
    first: AtomicU64,
    count: AtomicU64,
    done: AtomicU64,
}

impl Cuts {
    /// Cuts the replies to the `first`-th request counted from now and `count - 1` after it.
    pub fn arm(&self, first: u64, count: u64) {
        self.seen.store(0, Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        self.count.store(count, Ordering::SeqCst);
        self.first.store(first, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.first.store(0, Ordering::SeqCst);
    }

    /// Requests counted since armed.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Replies cut since armed.
    pub fn cut(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Counts a request; whether its reply is to be cut.
    fn count_one(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let first = self.first.load(Ordering::SeqCst);
        let cut = first > 0 && n >= first && n < first + self.count.load(Ordering::SeqCst);
        if cut {
            self.done.fetch_add(1, Ordering::SeqCst);
        }
        cut
    }
}

/// A Postgres proxy that reads the protocol from the client: after a `COMMIT` it is told to
/// cut, it lets the server answer and closes both connections instead of passing the answer.
pub struct PgCutter {
    pub port: u16,
    pub commits: Arc<Cuts>,
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

impl PgCutter {
    pub async fn start(target: std::net::SocketAddr) -> PgCutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let commits = Arc::new(Cuts::default());
        let cuts = Arc::clone(&commits);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cuts = Arc::clone(&cuts);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = pg_session(client, server, cuts).await;
                    }
                });
            }
        });
        PgCutter { port, commits }
    }
}

async fn pg_session(client: TcpStream, server: TcpStream, cuts: Arc<Cuts>) -> std::io::Result<()> {
    // Messages go on whole and at once: small writes held back for acknowledgements (Nagle's
    // algorithm against delayed ACKs) would cost 40 ms each.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Untyped messages first: SSL or GSS encryption requests (answered with one byte each),
    // then the startup message.
    loop {
        let len = from_client.read_u32().await?;
        let mut message = len.to_be_bytes().to_vec();
        message.resize(len.max(4) as usize, 0);
        from_client.read_exact(&mut message[4..]).await?;
        to_server.write_all(&message).await?;
        let code = message[4..]
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            let answer = from_server.read_u8().await?;
            to_client.write_all(&[answer]).await?;
            if answer != b'N' {
                // Encryption accepted: nothing more can be read; pass bytes through.
                let upstream = tokio::io::copy(&mut from_client, &mut to_server);
                let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                let _ = tokio::join!(upstream, downstream);
                return Ok(());
            }
            continue;
        }
        break;
    }
    let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
    let upstream = async move {
        loop {
            let kind = from_client.read_u8().await?;
            let len = from_client.read_u32().await?;
            let mut message = vec![kind];
            message.extend_from_slice(&len.to_be_bytes());
            message.resize(1 + len.max(4) as usize, 0);
            from_client.read_exact(&mut message[5..]).await?;
            let body = &message[5..];
            let query = body.strip_suffix(b"\0").unwrap_or(body).trim_ascii();
            let commit = kind == b'Q'
                && query
                    .strip_suffix(b";")
                    .unwrap_or(query)
                    .eq_ignore_ascii_case(b"COMMIT");
            if commit && cuts.count_one() {
                let _ = cut_tx.send(true);
            }
            to_server.write_all(&message).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    let downstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if *cut_rx.borrow_and_update() {
                // The server answered the COMMIT (it is durable now): the client never hears.
                return Ok(());
            }
            to_client.write_all(&buffer[..n]).await?;
        }
    };
    // Whichever side ends first ends the session: both sockets close with it.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
    Ok(())
}

/// An HTTP proxy in front of S3 that passes a completion (`CompleteMultipartUpload`,
/// `PutObject`) to S3 and, when told to cut it, closes the connection instead of answering.
pub struct S3Cutter {
    pub endpoint: String,
    pub completions: Arc<Cuts>,
}

impl S3Cutter {
    pub async fn start(target: String) -> S3Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        let completions = Arc::new(Cuts::default());
        let cuts = Arc::clone(&completions);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, cuts, target) = (client.clone(), Arc::clone(&cuts), target.clone());
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, cuts, target) =
                            (client.clone(), Arc::clone(&cuts), target.clone());
                        async move { forward(request, client, cuts, target).await }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        S3Cutter {
            endpoint,
            completions,
        }
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    client: reqwest::Client,
    cuts: Arc<Cuts>,
    target: String,
) -> Result<hyper::Response<ProxyBody>, std::io::Error> {
    let query = request.uri().query().unwrap_or("");
    let completion = (request.method() == hyper::Method::POST && query.contains("uploadId="))
        || (request.method() == hyper::Method::PUT
            && !query.contains("partNumber=")
            && !request.headers().contains_key("x-amz-copy-source"));
    let (parts, body) = request.into_parts();
    let upstream = crate::proxy::upstream(&client, &parts, &target);
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let answered = upstream
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let status = answered.status();
    let headers = answered.headers().clone();
    let bytes = answered.bytes().await.map_err(std::io::Error::other)?;
    if completion && status.is_success() && cuts.count_one() {
        // S3 completed it; the connection drops before the answer.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "reply cut",
        ));
    }
    let mut response = hyper::Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        response = response.header(name.as_str(), value.as_bytes());
    }
    response
        .body(
            http_body_util::Full::new(bytes)
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(std::io::Error::other)
}
