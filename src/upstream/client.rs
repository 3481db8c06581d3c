//! The HTTP client of one upstream registry: TLS checked against the system roots plus the
//! upstream's CA file, Basic credentials or Docker's token flow as the upstream's challenge
//! asks, tokens cached per scope until they expire, and every answer checked (digests
//! recomputed, sizes bounded) before anything is handed on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::challenge::{self, Challenge};
use super::{UpstreamError, UpstreamSettings};
use crate::oci::{Digest, DigestAlgorithm};

/// The largest manifest read from an upstream (the registry's own default limit).
const MAX_MANIFEST: usize = 4 << 20;
/// The largest tag list read from an upstream in one page.
const MAX_TAG_LIST: usize = 16 << 20;
/// The most pages of one tag list followed.
const MAX_TAG_PAGES: usize = 1000;
/// Tokens are renewed this long before the upstream says they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// A token's lifetime when the token endpoint does not say (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A manifest read, or a manifest GET's answer without its body.
pub enum ManifestRequest {
    /// `HEAD`: the digest, media type and size only.
    Head,
    /// `GET`: the bytes as well.
    Get,
}

/// A manifest an upstream answered with.
#[derive(Debug)]
pub struct UpstreamManifest {
    /// Its media type as the upstream served it.
    pub media_type: String,
    /// Its digest: recomputed from the bytes for a GET, the upstream's word for a HEAD.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The bytes (GET only).
    pub body: Option<Bytes>,
}

/// A blob being read from an upstream. The bytes are not checked here: whoever stores them
/// verifies the digest before committing.
pub struct UpstreamBlob {
    /// The size the upstream announced, if it did.
    pub size: Option<u64>,
    /// The bytes as they arrive.
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

/// How requests to the upstream are authorized, once a challenge said how.
#[derive(Clone)]
enum Authorization {
    Basic,
    Bearer { token: String, until: Instant },
}

/// A client of one upstream registry.
#[derive(Clone)]
pub struct UpstreamClient {
    settings: Arc<UpstreamSettings>,
    base: String,
    http: reqwest::Client,
    /// By scope (`repository:NAME:pull`).
    authorizations: Arc<Mutex<HashMap<String, Authorization>>>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client for `settings`, trusting the system's roots and the upstream's CA file.
    pub fn new(settings: UpstreamSettings) -> Result<UpstreamClient, UpstreamError> {
        let tls = tls_settings(&settings)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Settings(format!("upstream {}: {e}", settings.name)))?;
        let base = settings.url.trim_end_matches('/').to_owned();
        Ok(UpstreamClient {
            settings: Arc::new(settings),
            base,
            http,
            authorizations: Arc::default(),
        })
    }

    /// The upstream's settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// A manifest by tag or digest, in one of the `accept`ed media types.
    pub async fn manifest(
        &self,
        remote: &str,
        reference: &str,
        accept: &[&str],
        request: ManifestRequest,
    ) -> Result<UpstreamManifest, UpstreamError> {
        let url = format!("{}/v2/{remote}/manifests/{reference}", self.base);
        let accept = accept.join(", ");
        let head = matches!(request, ManifestRequest::Head);
        let response = self
            .send(remote, |http| {
                let request = if head {
                    http.head(&url)
                } else {
                    http.get(&url)
                };
                request.header(ACCEPT, accept.as_str())
            })
            .await?;
        let response = self.expect_ok(response, &format!("manifest {remote}:{reference}"))?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header(CONTENT_TYPE).unwrap_or_default();
        let announced = header(reqwest::header::HeaderName::from_static(
            "docker-content-digest",
        ))
        .map(|d| {
            Digest::parse(&d).map_err(|e| self.invalid(format!("Docker-Content-Digest {d:?}: {e}")))
        })
        .transpose()?;
        let asked = Digest::parse(reference).ok();
        if head {
            let digest = asked.or(announced).ok_or_else(|| {
                self.invalid(format!(
                    "HEAD of manifest {remote}:{reference} named no Docker-Content-Digest"
                ))
            })?;
            let size = header(CONTENT_LENGTH)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| self.invalid("HEAD of a manifest without Content-Length".into()))?;
            return Ok(UpstreamManifest {
                media_type,
                digest,
                size,
                body: None,
            });
        }
        let body = self.read_bounded(response, MAX_MANIFEST).await?;
        // The bytes must be what was asked for, and what the upstream says they are.
        for expected in [&asked, &announced].into_iter().flatten() {
            let algorithm = expected.algorithm().ok_or_else(|| {
                self.invalid(format!("digest algorithm of {expected} is not supported"))
            })?;
            let actual = algorithm.digest(&body);
            if &actual != expected {
                return Err(self.invalid(format!(
                    "manifest {remote}:{reference} has digest {actual}, not {expected}"
                )));
            }
        }
        let digest = asked
            .or(announced)
            .unwrap_or_else(|| DigestAlgorithm::Sha256.digest(&body));
        Ok(UpstreamManifest {
            media_type,
            digest,
            size: body.len() as u64,
            body: Some(body),
        })
    }

    /// Whether the upstream has a blob, and its size. Chained caches answer a `HEAD` for a
    /// blob they have not fetched yet with 404: ask with a GET before concluding it is missing.
    pub async fn blob_size(
        &self,
        remote: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let url = format!("{}/v2/{remote}/blobs/{digest}", self.base);
        let response = self.send(remote, |http| http.head(&url)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.expect_ok(response, &format!("blob {digest} of {remote}"))?;
        // The header, not `content_length()`: that is the body's length, none for a HEAD.
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        size.map(Some).ok_or_else(|| {
            self.invalid(format!(
                "HEAD of blob {digest} of {remote} named no Content-Length"
            ))
        })
    }

    /// A blob's bytes as they arrive (redirects to storage followed, credentials not sent
    /// there).
    pub async fn blob(&self, remote: &str, digest: &Digest) -> Result<UpstreamBlob, UpstreamError> {
        let url = format!("{}/v2/{remote}/blobs/{digest}", self.base);
        let response = self.send(remote, |http| http.get(&url)).await?;
        let response = self.expect_ok(response, &format!("blob {digest} of {remote}"))?;
        let size = response.content_length();
        let name = self.settings.name.clone();
        let body = response
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| UpstreamError::Unreachable {
                    upstream: name.clone(),
                    detail: format!("reading the blob: {}", chain(&e)),
                })
            })
            .boxed();
        Ok(UpstreamBlob { size, body })
    }

    /// A page of `remote`'s tags: at most `n` (the upstream's own limit if it has a smaller
    /// one), after `last`.
    pub async fn tags(
        &self,
        remote: &str,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError> {
        let url = format!("{}/v2/{remote}/tags/list", self.base);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(n) = n {
            query.push(("n", n.to_string()));
        }
        if let Some(last) = last {
            query.push(("last", last.to_owned()));
        }
        let mut response = self
            .send(remote, |http| http.get(&url).query(&query))
            .await?;
        let mut tags = Vec::new();
        let mut read = 0;
        let mut visited = std::collections::HashSet::new();
        loop {
            let page = self.expect_ok(response, &format!("tag list of {remote}"))?;
            // Asked for a page, the client pages on; asked for everything, it gets every page
            // the upstream has (registries that page by default say so in a Link header).
            let next = match n {
                Some(_) => None,
                None => self.next_page(&page),
            };
            // Every page together is bounded as one answer is.
            let body = self.read_bounded(page, MAX_TAG_LIST - read).await?;
            read += body.len();
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let list: TagList = serde_json::from_slice(&body)
                .map_err(|e| self.invalid(format!("tag list of {remote}: {e}")))?;
            tags.extend(list.tags.unwrap_or_default());
            let Some(next) = next else {
                return Ok(tags);
            };
            // A link back to a page already read, or pages without end, is the upstream's
            // mistake: what was read is the answer.
            if !visited.insert(next.clone()) || visited.len() > MAX_TAG_PAGES {
                tracing::warn!(upstream = %self.settings.name, %remote, pages = visited.len(), "a tag list's pages loop or do not end; listing what was read");
                return Ok(tags);
            }
            response = self.send(remote, |http| http.get(&next)).await?;
        }
    }

    /// The next page a tag list answer links to (`Link: <…>; rel="next"`), on this upstream
    /// only: credentials are never sent elsewhere.
    fn next_page(&self, response: &reqwest::Response) -> Option<String> {
        let link = response
            .headers()
            .get(reqwest::header::LINK)?
            .to_str()
            .ok()?;
        let next = link
            .split(',')
            .find(|l| l.contains("rel=\"next\"") || l.contains("rel=next"))?;
        let target = next.split_once('<')?.1.split_once('>')?.0.trim();
        // The upstream's origin: scheme and authority, without any path its URL has.
        let authority_at = self.base.find("://").map_or(0, |i| i + 3);
        let origin = match self.base[authority_at..].find('/') {
            Some(path_at) => &self.base[..authority_at + path_at],
            None => self.base.as_str(),
        };
        if target.starts_with('/') && !target.starts_with("//") {
            Some(format!("{origin}{target}"))
        } else if target.starts_with(&format!("{origin}/")) {
            Some(target.to_owned())
        } else {
            tracing::warn!(upstream = %self.settings.name, %target, "a tag list links to another origin; not followed");
            None
        }
    }

    /// Sends a request for `remote`'s content, answering the upstream's challenge once.
    async fn send(
        &self,
        remote: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{remote}:pull");
        let known = self.authorization(&scope);
        let response = self
            .counted_send(self.authorize(build(&self.http), known.as_ref()))
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(challenge::parse);
        let authorization = match challenge {
            Some(Challenge::Basic) if self.settings.credentials.is_some() => Authorization::Basic,
            Some(Challenge::Basic) => {
                return Err(self.unauthorized(
                    "it asks for a user name and password and none are configured".into(),
                ));
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                self.token(
                    &realm,
                    service.as_deref(),
                    asked.as_deref().unwrap_or(&scope),
                )
                .await?
            }
            None => {
                return Err(self.unauthorized(
                    "401 without a Basic or Bearer challenge Berth can answer".into(),
                ));
            }
        };
        if known.is_some() {
            // What worked before was refused: the token expired early or was revoked.
            self.forget(&scope);
        }
        let response = self
            .counted_send(self.authorize(build(&self.http), Some(&authorization)))
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(match authorization {
                Authorization::Basic => "the configured credentials were refused".into(),
                Authorization::Bearer { .. } => "the token it issued was refused".into(),
            }));
        }
        self.remember(&scope, authorization);
        Ok(response)
    }

    /// Sends `request`, counting it in `berth_mirror_upstream_requests_total` by method and
    /// status (`error` when no answer came).
    async fn counted_send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let request = request.build().map_err(|e| self.unreachable(&e))?;
        let method = request.method().as_str().to_owned();
        let response = self.http.execute(request).await;
        let status = match &response {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
        };
        metrics::counter!(
            crate::instruments::MIRROR_UPSTREAM_REQUESTS,
            "upstream" => self.settings.name.clone(),
            "method" => method,
            "status" => status
        )
        .increment(1);
        response.map_err(|e| self.unreachable(&e))
    }

    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        authorization: Option<&Authorization>,
    ) -> reqwest::RequestBuilder {
        match (authorization, &self.settings.credentials) {
            (Some(Authorization::Basic), Some(credentials)) => {
                request.basic_auth(&credentials.username, Some(&credentials.password))
            }
            (Some(Authorization::Bearer { token, .. }), _) => request.bearer_auth(token),
            _ => request,
        }
    }

    /// A token from the upstream's token endpoint, with the credentials if there are some
    /// (anonymous otherwise, as Docker Hub allows for public images).
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Authorization, UpstreamError> {
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(self.invalid(format!("token realm {realm:?} is not an http(s) URL")));
        }
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(credentials) = &self.settings.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let started = Instant::now();
        let response = self.counted_send(request).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized(format!(
                    "its token endpoint answered {} for {scope}",
                    response.status()
                )));
            }
            status => {
                return Err(self.invalid(format!("its token endpoint answered {status}")));
            }
        }
        let body = self.read_bounded(response, 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.invalid(format!("its token endpoint's answer is not JSON: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.invalid("its token endpoint answered no token".into()))?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(Authorization::Bearer {
            token,
            until: started + lifetime.saturating_sub(TOKEN_MARGIN),
        })
    }

    fn authorization(&self, scope: &str) -> Option<Authorization> {
        let known = self
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match known.get(scope) {
            Some(Authorization::Bearer { until, .. }) if *until <= Instant::now() => None,
            other => other.cloned(),
        }
    }

    fn remember(&self, scope: &str, authorization: Authorization) {
        let mut known = self
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Expired tokens of scopes no longer asked for would pile up.
        let now = Instant::now();
        known.retain(|_, a| !matches!(a, Authorization::Bearer { until, .. } if *until <= now));
        known.insert(scope.to_owned(), authorization);
    }

    fn forget(&self, scope: &str) {
        let mut known = self
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.remove(scope);
    }

    fn expect_ok(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(UpstreamError::NotFound {
                upstream: self.settings.name.clone(),
                what: what.to_owned(),
            }),
            StatusCode::FORBIDDEN => Err(self.unauthorized(format!("403 for {what}"))),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(UpstreamError::Unreachable {
                    upstream: self.settings.name.clone(),
                    detail: format!("{s} for {what}"),
                })
            }
            s => Err(self.invalid(format!("{s} for {what}"))),
        }
    }

    /// A body of at most `limit` bytes, refused if longer or shorter than announced.
    async fn read_bounded(
        &self,
        response: reqwest::Response,
        limit: usize,
    ) -> Result<Bytes, UpstreamError> {
        let announced = response.content_length();
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(self.invalid(format!("an answer of {announced:?} bytes, over {limit}")));
        }
        let mut body = Vec::with_capacity(announced.unwrap_or(0) as usize);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
            if body.len() + chunk.len() > limit {
                return Err(self.invalid(format!("an answer over {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if announced.is_some_and(|n| n != body.len() as u64) {
            return Err(self.invalid(format!(
                "{} bytes where Content-Length said {announced:?}",
                body.len()
            )));
        }
        Ok(Bytes::from(body))
    }

    fn unreachable(&self, error: &reqwest::Error) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.settings.name.clone(),
            detail: chain(error),
        }
    }

    fn unauthorized(&self, detail: String) -> UpstreamError {
        UpstreamError::Unauthorized {
            upstream: self.settings.name.clone(),
            detail,
        }
    }

    fn invalid(&self, detail: String) -> UpstreamError {
        UpstreamError::Invalid {
            upstream: self.settings.name.clone(),
            detail,
        }
    }
}

/// An error and its causes on one line: a certificate problem is only named deep down.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// TLS settings trusting the system's roots and the upstream's CA file.
fn tls_settings(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, UpstreamError> {
    let refuse =
        |detail: String| UpstreamError::Settings(format!("upstream {}: {detail}", settings.name));
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| refuse(format!("reading ca_file {}: {e}", path.display())))?;
        let mut added = 0;
        for ca in CertificateDer::pem_slice_iter(&pem) {
            let ca = ca.map_err(|e| refuse(format!("ca_file {}: {e}", path.display())))?;
            roots
                .add(ca)
                .map_err(|e| refuse(format!("ca_file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(refuse(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| refuse(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
