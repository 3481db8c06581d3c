//! What the HTTP layer adds to a registry: who decides access, and how answers are presented
//! on the wire. The registry below knows neither.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use http::HeaderValue;

use super::observe::observed;

use crate::auth::Authorizer;
use crate::client::TrustedProxies;
use crate::oci::{Descriptor, RepositoryName};
use crate::registry::Registry;

/// `Docker-Distribution-API-Version`, sent on every API response.
pub const API_VERSION: &str = "registry/2.0";

/// Maps a blob (repository and descriptor) to a location clients are redirected to, e.g. on a
/// CDN or a mirror. Returning `None` falls back to Berth's own behaviour.
pub type BlobLocationHook =
    Arc<dyn Fn(&RepositoryName, &Descriptor) -> Option<String> + Send + Sync>;

/// Computes the `Location` of an upload session from its repository and id.
pub type UploadLocationHook = Arc<dyn Fn(&RepositoryName, &str) -> String + Send + Sync>;

/// How the distribution API presents a registry.
#[derive(Clone)]
pub struct HttpOptions {
    /// Request bodies arriving slower than this many bytes per second over
    /// `body_rate_window` (of time spent waiting for the client) are ended; 0 turns it off.
    pub body_min_rate: u64,
    /// The window over which `body_min_rate` is measured.
    pub body_rate_window: Duration,
    /// `OCI-Chunk-Min-Length` advertised to clients.
    pub chunk_min_length: u64,
    /// Send `Docker-Content-Digest` when a manifest is fetched by tag.
    pub tag_digest_header: bool,
    /// Send `Link` headers for further pages.
    pub link_headers: bool,
    /// Answer blob GETs with a redirect when the store offers direct URLs.
    pub redirect_blobs: bool,
    /// Custom blob locations (CDN, mirrors).
    pub blob_location: Option<BlobLocationHook>,
    /// Custom upload locations.
    pub upload_location: Option<UploadLocationHook>,
    /// Proxies whose `X-Forwarded-For` names the client (access log, rate limits, ACLs by
    /// address) and whose `X-Request-Id` is kept.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            body_min_rate: 500,
            body_rate_window: Duration::from_secs(20),
            chunk_min_length: 5 * 1024 * 1024,
            tag_digest_header: true,
            link_headers: true,
            redirect_blobs: true,
            blob_location: None,
            upload_location: None,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("body_min_rate", &self.body_min_rate)
            .field("body_rate_window", &self.body_rate_window)
            .field("chunk_min_length", &self.chunk_min_length)
            .field("tag_digest_header", &self.tag_digest_header)
            .field("link_headers", &self.link_headers)
            .field("redirect_blobs", &self.redirect_blobs)
            .field("blob_location", &self.blob_location.is_some())
            .field("upload_location", &self.upload_location.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// The distribution API over a registry: `Api::new(registry).authorizer(..).router()`.
#[derive(Clone)]
pub struct Api {
    pub(super) registry: Registry,
    pub(super) authorizer: Option<Arc<dyn Authorizer>>,
    pub(super) options: HttpOptions,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("registry", &self.registry)
            .field("authorizer", &self.authorizer.is_some())
            .field("options", &self.options)
            .finish()
    }
}

impl Api {
    /// The API over `registry`, open to everyone, with default options.
    pub fn new(registry: Registry) -> Api {
        Api {
            registry,
            authorizer: None,
            options: HttpOptions::default(),
        }
    }

    /// Decides every request's access with `authorizer` (see [`crate::auth`]): each operation
    /// is asked for before it runs, refusals are answered (401 with a challenge, 403, 429), the
    /// catalog lists only repositories the caller may pull, and a blob is mounted from another
    /// repository only if the caller may pull from it. Without one, everything is allowed.
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Ends request bodies slower than `bytes_per_second` over `window` of waiting for the
    /// client (default 500 B/s over 20 s); a rate of 0 turns the check off.
    pub fn body_min_rate(mut self, bytes_per_second: u64, window: Duration) -> Self {
        self.options.body_min_rate = bytes_per_second;
        self.options.body_rate_window = window;
        self
    }

    /// `OCI-Chunk-Min-Length` advertised to clients.
    pub fn chunk_min_length(mut self, bytes: u64) -> Self {
        self.options.chunk_min_length = bytes;
        self
    }

    /// Send `Docker-Content-Digest` on manifest GETs by tag (on by default).
    pub fn tag_digest_header(mut self, enabled: bool) -> Self {
        self.options.tag_digest_header = enabled;
        self
    }

    /// Send `Link` headers on paginated lists (on by default).
    pub fn link_headers(mut self, enabled: bool) -> Self {
        self.options.link_headers = enabled;
        self
    }

    /// Redirect blob GETs to the store's direct URLs when it has them (on by default).
    pub fn redirect_blobs(mut self, enabled: bool) -> Self {
        self.options.redirect_blobs = enabled;
        self
    }

    /// Maps a blob to a custom location clients are redirected to.
    pub fn blob_location(
        mut self,
        hook: impl Fn(&RepositoryName, &Descriptor) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.options.blob_location = Some(Arc::new(hook));
        self
    }

    /// Maps an upload to the `Location` clients continue it at.
    pub fn upload_location(
        mut self,
        hook: impl Fn(&RepositoryName, &str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.options.upload_location = Some(Arc::new(hook));
        self
    }

    /// Believes `X-Forwarded-For` and `X-Request-Id` from these proxies.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.options.trusted_proxies = proxies;
        self
    }

    /// The registry served.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The options in force.
    pub fn http_options(&self) -> &HttpOptions {
        &self.options
    }

    /// The distribution API (`/v2/**`), every request logged and measured
    /// ([`observed`]).
    pub fn router(self) -> Router {
        let proxies = self.options.trusted_proxies.clone();
        let router = Router::new()
            .route("/v2", any(dispatch))
            .route("/v2/", any(dispatch))
            .route("/v2/{*rest}", any(dispatch))
            .with_state(Arc::new(self));
        observed(router, proxies)
    }
}

async fn dispatch(State(api): State<Arc<Api>>, request: Request) -> Response {
    let mut response = super::handlers::handle(api, request).await;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    response
}
