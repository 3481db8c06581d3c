//! A small HTTP client for the registry API ([`Client`], [`Answer`]), hand-written requests
//! for misbehaving clients ([`RawConnection`]) and Prometheus exposition readers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use super::*;

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first error code of an OCI error envelope.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Asserts status and, for errors, the OCI code.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if let Some(code) = code {
            assert_eq!(
                self.error_code(),
                code,
                "body: {}",
                String::from_utf8_lossy(&self.body)
            );
            let message = self.json()["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert!(!message.is_empty(), "errors carry a message");
        }
        self
    }
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A pushed image: its manifest's bytes and digest, and its blobs.
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request reaches berth");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn call(&self, method: Method, path: &str) -> Answer {
        self.send(self.request(method, path)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path).await
    }

    /// GET, following a redirect to storage if there is one.
    pub async fn get_following(&self, path: &str) -> Answer {
        let first = self.get(path).await;
        if first.status == StatusCode::TEMPORARY_REDIRECT {
            let location = first
                .header("location")
                .expect("redirects carry a Location")
                .to_owned();
            return self.send(self.http.get(self.url(&location))).await;
        }
        first
    }

    pub async fn start_upload(&self, repo: &str) -> String {
        self.start_upload_with(repo, "").await
    }

    /// Starts an upload with `query` (`?digest-algorithm=…`, or empty); its location.
    pub async fn start_upload_with(&self, repo: &str, query: &str) -> String {
        let a = self
            .call(Method::POST, &format!("/v2/{repo}/blobs/uploads/{query}"))
            .await;
        a.expect(202, None);
        a.header("location").unwrap().to_owned()
    }

    /// PATCHes `data[range]` into the upload at `location`, as the bytes at `range`.
    pub async fn patch_chunk(
        &self,
        location: &str,
        data: &[u8],
        range: std::ops::Range<usize>,
    ) -> Answer {
        self.send(
            self.request(Method::PATCH, location)
                .header(
                    "content-range",
                    format!("{}-{}", range.start, range.end - 1),
                )
                .body(data[range].to_vec()),
        )
        .await
    }

    /// Closes the upload at `location` under `digest`, with no more bytes.
    pub async fn close_upload(&self, location: &str, digest: &str) -> Answer {
        self.send(
            self.request(Method::PUT, location)
                .query(&[("digest", digest)]),
        )
        .await
    }

    /// Closes the upload at `location` under `digest` with `body` as its last bytes.
    pub async fn finish_upload(&self, location: &str, digest: &str, body: &[u8]) -> Answer {
        self.send(
            self.request(Method::PUT, location)
                .query(&[("digest", digest)])
                .body(body.to_vec()),
        )
        .await
    }

    /// Bytes an upload session holds, read from its status `Range` (`0-<last>`). An empty
    /// session also answers `0-0`, so this is for sessions known to hold bytes.
    pub async fn upload_offset(&self, location: &str) -> usize {
        let status = self.get(location).await;
        status.expect(204, None);
        let range = status
            .header("range")
            .expect("an upload status has a Range");
        let last: usize = range
            .strip_prefix("0-")
            .and_then(|end| end.parse().ok())
            .unwrap_or_else(|| panic!("malformed upload Range {range:?}"));
        last + 1
    }

    /// Sends `data[from..]` as the last chunk, commits the upload under the digest of `data`
    /// and checks that the blob reads back byte-identical.
    pub async fn complete_upload(&self, repo: &str, location: &str, data: &[u8], from: usize) {
        self.send(
            self.request(Method::PATCH, location)
                .header("content-range", format!("{from}-{}", data.len() - 1))
                .body(data[from..].to_vec()),
        )
        .await
        .expect(202, None);
        self.commit_upload(repo, location, data).await;
    }

    /// Commits an upload holding all of `data` under its digest and checks that the blob reads
    /// back byte-identical.
    pub async fn commit_upload(&self, repo: &str, location: &str, data: &[u8]) {
        let digest = sha256(data);
        self.send(
            self.request(Method::PUT, location)
                .query(&[("digest", &digest)]),
        )
        .await
        .expect(201, None);
        let got = self
            .get_following(&format!("/v2/{repo}/blobs/{digest}"))
            .await;
        assert!(
            got.body[..] == data[..],
            "{repo}: the blob reads back as sent"
        );
    }

    /// Pushes a blob with POST then PUT; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let location = self.start_upload(repo).await;
        let a = self
            .send(
                self.request(Method::PUT, &location)
                    .query(&[("digest", &digest)])
                    .header("content-type", "application/octet-stream")
                    .body(data.to_vec()),
            )
            .await;
        a.expect(201, None);
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Answer {
        self.send(
            self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// Pushes a one-layer image and tags it.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: u64) -> Image {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        )
        .into_bytes();
        let layer = random_bytes(1000 + (seed % 1000) as usize, seed);
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            &config_digest,
            config.len(),
            &[(&layer_digest, layer.len())],
            None,
        );
        self.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .await
            .expect(201, None);
        Image {
            digest: sha256(&manifest),
            manifest,
            config,
            layer,
        }
    }
}

pub fn image_manifest(
    config: &str,
    config_size: usize,
    layers: &[(&str, usize)],
    extra: Option<&str>,
) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{}]{}}}"#,
        layers.join(","),
        extra.map(|e| format!(",{e}")).unwrap_or_default()
    )
    .into_bytes()
}

/// A request body of `len` pseudo-random bytes produced on the fly, and its digest.
pub fn generated_body(len: usize, seed: u64, chunk: usize) -> (reqwest::Body, String) {
    let mut hasher = Sha256::new();
    let mut at = 0;
    let mut n = 0u64;
    while at < len {
        let size = chunk.min(len - at);
        hasher.update(random_bytes(size, seed ^ n));
        at += size;
        n += 1;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let stream = futures::stream::iter((0..n).map(move |i| {
        let size = chunk.min(len - i as usize * chunk);
        Ok::<_, std::io::Error>(random_bytes(size, seed ^ i))
    }));
    (reqwest::Body::wrap_stream(stream), digest)
}

/// A request written by hand on its own TCP connection, for clients that misbehave: slow,
/// stalled, or never finishing their headers.
pub struct RawConnection {
    pub stream: tokio::net::TcpStream,
    /// Bytes of a response head read so far.
    head: Vec<u8>,
}

/// The status line and headers of a response read from a [`RawConnection`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        RawConnection {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            head: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends the head of a `method` request to `path` with a chunked body to follow.
    pub async fn start_chunked(&mut self, method: &str, path: &str) -> std::io::Result<()> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        self.send(head.as_bytes()).await
    }

    /// Sends one chunk of a chunked body.
    pub async fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
        framed.extend_from_slice(data);
        framed.extend_from_slice(b"\r\n");
        self.send(&framed).await
    }

    /// Reads a response head, waiting at most `timeout`; `None` if none came in time (what
    /// arrived of it is kept for the next call).
    pub async fn response(&mut self, timeout: Duration) -> Option<RawResponse> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut byte = [0u8; 1];
            while !self.head.ends_with(b"\r\n\r\n") {
                // Reading a byte is cancel-safe: a timeout loses nothing.
                match self.stream.read(&mut byte).await {
                    Ok(1) => self.head.push(byte[0]),
                    _ => return None,
                }
            }
            let head = std::mem::take(&mut self.head);
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            Some(RawResponse { status, headers })
        };
        tokio::time::timeout(timeout, read).await.ok().flatten()
    }

    /// Whether the server closed the connection within `timeout` (end of stream or reset).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut sink = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// The value of a metric (first sample of that name) in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of the samples of metric `name` whose labels include every pair in `labels`
/// (0 if there is none).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads `/metrics` from an admin listener.
pub async fn scrape(admin: &Client) -> String {
    let exposition = admin.get("/metrics").await;
    exposition.expect(200, None);
    String::from_utf8_lossy(&exposition.body).into_owned()
}
