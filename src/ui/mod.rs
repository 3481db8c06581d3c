//! The web UI under `/ui/`: the catalog with search, a repository's tags by push time, a
//! manifest or index with its config, layers, platforms and referrers, and deleting tags and
//! manifests, under the same users and permissions as the API ([`Accounts`]).
//!
//! Pages are rendered on the server (`pages.rs`, compile-time templates that escape every
//! value); the stylesheet and a small script (theme, copy buttons) are compiled into the
//! binary. Sessions are signed cookies (`session.rs`) every replica can read; forms that change
//! something carry a CSRF token of the session. What the pages show of a manifest is read from
//! its bytes (`view.rs`). The UI reads the metadata store and the registry, and changes only
//! through the registry's own delete, so immutable tags and events hold as for the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::Markup;

use crate::auth::{Access, Accounts, Action, Grant, Open, SignInError};
use crate::client::{ClientAddress, TrustedProxies};
use crate::error::{ErrorCode, RegistryError};
use crate::http::error::ApiError;
use crate::http::observe::Routed;
use crate::http::{event_origin, observed};
use crate::metadata::{ListedManifest, Page, PushedBefore};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::registry::Registry;

pub mod pages;
pub mod session;
pub mod view;

use pages::{Chrome, ConfigFacts, ManifestPage, ReferrerNode, RepositoryPage, TagRow};
use session::{Session, SessionKey};
use view::{ManifestView, index_size, platform_name};

/// Repositories on a catalog page.
const CATALOG_PAGE: usize = 100;
/// Most repository names one catalog page reads to fill itself with names the visitor may
/// see; past it, the page ends early with a link to go on, so a page stays fast at any size.
const CATALOG_SCAN: usize = 5000;
/// Tags on a repository page.
const TAG_PAGE: u32 = 50;
/// Untagged manifests shown.
const UNTAGGED_PAGE: u32 = 100;
/// Largest config shown; bigger ones are named, not read.
const CONFIG_SHOWN: u64 = 1024 * 1024;
/// Most referrers shown under one manifest, in the whole tree, and how deep it goes.
const REFERRERS_SHOWN: usize = 100;
const REFERRER_DEPTH: usize = 3;
/// Most tags of one manifest read for its page (one more than it shows, to say there are more).
const TAGS_SHOWN: u32 = pages::TAGS_SHOWN as u32;
/// Largest form accepted (sign-in, delete).
const FORM_LIMIT: usize = 16 * 1024;
/// How long a session lasts.
const SESSION_SECS: i64 = 12 * 3600;

/// The web UI over a registry.
#[derive(Clone)]
pub struct Ui {
    registry: Registry,
    accounts: Arc<dyn Accounts>,
    can_sign_in: bool,
    key: SessionKey,
    secure_cookies: bool,
    trusted_proxies: TrustedProxies,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("can_sign_in", &self.can_sign_in)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

impl Ui {
    /// The UI of a registry without access control, with a random session key.
    pub fn new(registry: Registry) -> Ui {
        Ui {
            registry,
            accounts: Arc::new(Open),
            can_sign_in: false,
            key: SessionKey::random(),
            secure_cookies: false,
            trusted_proxies: TrustedProxies::default(),
        }
    }

    /// Users sign in as `accounts` say and see what their grant allows; `can_sign_in` shows
    /// the sign-in link (a registry whose users live elsewhere has none).
    pub fn accounts(mut self, accounts: Arc<dyn Accounts>, can_sign_in: bool) -> Ui {
        self.accounts = accounts;
        self.can_sign_in = can_sign_in;
        self
    }

    /// Signs sessions with `key`: the same on every replica, so that each reads the others'.
    pub fn session_key(mut self, key: SessionKey) -> Ui {
        self.key = key;
        self
    }

    /// Marks the session cookie `Secure` (always when Berth serves TLS itself; behind a
    /// TLS-terminating proxy, requests it marks `X-Forwarded-Proto: https` get it anyway).
    pub fn secure_cookies(mut self, secure: bool) -> Ui {
        self.secure_cookies = secure;
        self
    }

    /// Proxies whose `X-Forwarded-For` names the client (the sign-in limit counts per client).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Ui {
        self.trusted_proxies = proxies;
        self
    }

    /// `/ui/**`, and `/` sending browsers there; every request logged and measured like the
    /// API's, and answered with its server time (`Server-Timing`).
    pub fn router(self) -> Router {
        let proxies = self.trusted_proxies.clone();
        let router = Router::new()
            .route("/", get(to_ui))
            .route("/ui", get(to_ui))
            .route("/ui/", get(catalog))
            .route("/ui/sign-in", get(sign_in_form).post(sign_in))
            .route("/ui/sign-out", axum::routing::post(sign_out))
            .route("/ui/assets/{file}", get(asset))
            .route("/ui/r/{*path}", get(repository_get).post(repository_post))
            .route("/ui/{*rest}", axum::routing::any(not_found))
            .with_state(Arc::new(self))
            .layer(axum::middleware::from_fn(timed));
        observed(router, proxies)
    }
}

/// Adds the server time, the content security policy and the access log's operation.
async fn timed(request: Request, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={millis:.2}")) {
        headers.insert("server-timing", value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if response.extensions().get::<Routed>().is_none() {
        response.extensions_mut().insert(Routed {
            operation: "ui",
            ..Routed::default()
        });
    }
    response
}

async fn to_ui() -> Response {
    redirect("/ui/")
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Who is asking: their session (a new anonymous one if they had none) and what they may do.
struct Visitor {
    session: Session,
    grant: Arc<dyn Grant>,
    /// A session that still has to be sent to the browser.
    new_session: bool,
    secure: bool,
}

impl Visitor {
    fn user(&self) -> Option<&str> {
        self.session.user.as_deref()
    }

    fn may(&self, repository: &RepositoryName, action: Action) -> bool {
        self.grant
            .allows(&Access::repository(repository.as_str(), action))
    }
}

/// A failure, as a page.
#[derive(Debug, thiserror::Error)]
enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// An anonymous visitor asked for something only some users may see.
    #[error("sign in to see this")]
    SignIn,
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<crate::metadata::MetadataError> for UiError {
    fn from(e: crate::metadata::MetadataError) -> UiError {
        UiError::Registry(e.into())
    }
}

type UiResult<T> = Result<T, UiError>;

impl Ui {
    /// Unix seconds now, by the registry's clock (which counts milliseconds).
    fn now(&self) -> i64 {
        self.registry.now() / 1000
    }

    fn visitor(&self, headers: &HeaderMap) -> Visitor {
        let now = self.now();
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let found =
            session::cookie_value(cookies).and_then(|value| Session::decode(value, &self.key, now));
        let secure = self.secure_cookies
            || headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        // A session outlives neither its user nor a change of their password.
        let found = found.filter(|session| match &session.user {
            Some(user) => self.accounts.fingerprint(user).as_ref() == Some(&session.fingerprint),
            None => true,
        });
        let (session, new_session) = match found {
            Some(session) => (session, false),
            None => (Session::start(None, String::new(), now, SESSION_SECS), true),
        };
        let grant = self.accounts.grant(session.user.as_deref());
        Visitor {
            session,
            grant,
            new_session,
            secure,
        }
    }

    /// `content` in the page chrome, with the visitor's new session cookie if they need one.
    fn page(
        &self,
        visitor: &Visitor,
        status: StatusCode,
        title: &str,
        repository: Option<&str>,
        content: Markup,
    ) -> Response {
        let csrf = visitor.session.csrf_token(&self.key);
        let chrome = Chrome {
            title,
            user: visitor.user(),
            can_sign_in: self.can_sign_in,
            csrf: &csrf,
            repository,
        };
        let body = pages::page(&chrome, content).into_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if visitor.new_session {
            self.set_session(&mut response, &visitor.session, visitor.secure);
        }
        response.extensions_mut().insert(Routed {
            operation: "ui",
            user: visitor.session.user.clone(),
            ..Routed::default()
        });
        response
    }

    fn set_session(&self, response: &mut Response, session: &Session, secure: bool) {
        if let Ok(value) = HeaderValue::from_str(&session.set_cookie(&self.key, self.now(), secure))
        {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }

    fn failure(&self, visitor: &Visitor, path: &str, error: UiError) -> Response {
        let (status, heading, message) = match error {
            UiError::SignIn if self.can_sign_in => {
                return redirect(&format!(
                    "/ui/sign-in?{}",
                    pages::query_string(&[("next", path)])
                ));
            }
            UiError::SignIn => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or you may not see it.".to_owned(),
            ),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            UiError::Registry(e) => {
                let status = ApiError::from(e.clone()).status();
                let message = e
                    .entries()
                    .first()
                    .map(|entry| entry.message.clone())
                    .unwrap_or_else(|| e.to_string());
                if status.is_server_error() {
                    tracing::warn!(error = %e, "a UI page failed");
                }
                let heading = match e.error_code() {
                    ErrorCode::NameUnknown
                    | ErrorCode::ManifestUnknown
                    | ErrorCode::BlobUnknown => "Not found",
                    ErrorCode::Denied => "Not allowed",
                    _ if status.is_server_error() => "The registry could not answer",
                    _ => "Refused",
                };
                (status, heading, message)
            }
        };
        self.page(
            visitor,
            status,
            heading,
            None,
            pages::problem(heading, &message),
        )
    }

    /// `repository` for a visitor who may pull from it: an anonymous visitor who may not is
    /// asked to sign in; a signed-in one is refused.
    fn pullable(&self, visitor: &Visitor, name: &str) -> UiResult<RepositoryName> {
        let repository = RepositoryName::parse(name)
            .map_err(|e| UiError::NotFound(format!("{name:?} is not a repository name: {e}")))?;
        if visitor.may(&repository, Action::Pull) {
            Ok(repository)
        } else if visitor.user().is_none() {
            Err(UiError::SignIn)
        } else {
            Err(UiError::Forbidden(format!(
                "{} may not pull from {repository}",
                visitor.user().unwrap_or("")
            )))
        }
    }
}

fn query_param(parts: &Parts, name: &str) -> Option<String> {
    parts.uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

/// How clients reach this registry, from the request (`Host`, or the HTTP/2 authority).
fn host_of(parts: &Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn not_found(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = ui.visitor(request.headers());
    let path = request.uri().path().to_owned();
    ui.failure(
        &visitor,
        &path,
        UiError::NotFound(format!("there is no page at {path}")),
    )
}

// The catalog.

async fn catalog(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let query = query_param(&parts, "q")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if let Some(name) = query_param(&parts, "open") {
        let name = name.trim().trim_matches('/').to_ascii_lowercase();
        return match RepositoryName::parse(&name) {
            Ok(name) => redirect(&format!("/ui/r/{name}")),
            Err(e) => ui.failure(
                &visitor,
                "/ui/",
                UiError::BadRequest(format!("{name:?} is not a repository name: {e}")),
            ),
        };
    }
    // Listing is the catalog permission, as for the API: without it, visitors open
    // repositories by name.
    if !visitor.grant.allows(&Access::catalog()) {
        let content = pages::open_by_name();
        return ui.page(&visitor, StatusCode::OK, "Repositories", None, content);
    }
    let last = query_param(&parts, "last");
    match ui.visible_repositories(&visitor, &query, last).await {
        Ok((names, next)) => {
            let title = if query.is_empty() {
                "Repositories".to_owned()
            } else {
                format!("Repositories matching {query}")
            };
            let content = pages::catalog(&query, &names, next.as_deref());
            ui.page(&visitor, StatusCode::OK, &title, None, content)
        }
        Err(e) => ui.failure(&visitor, "/ui/", e),
    }
}

impl Ui {
    /// A page of the repositories `visitor` may pull from, whose names contain `query`, after
    /// `last`; and where the next page starts, if there is one.
    async fn visible_repositories(
        &self,
        visitor: &Visitor,
        query: &str,
        last: Option<String>,
    ) -> UiResult<(Vec<String>, Option<String>)> {
        let metadata = self.registry.metadata_store();
        let mut visible = Vec::new();
        let mut after = last;
        let mut scanned = 0;
        loop {
            // The first read is the page itself; more are read only when names were hidden.
            let batch = if scanned == 0 { CATALOG_PAGE + 1 } else { 1000 } as u32;
            let page = Page {
                limit: Some(batch),
                after: after.as_deref(),
            };
            let names = if query.is_empty() {
                metadata.repositories(page).await?
            } else {
                metadata.search_repositories(query, page).await?
            };
            let exhausted = names.len() < batch as usize;
            scanned += names.len();
            for name in names {
                after = Some(name.clone());
                let listed = RepositoryName::parse(&name).is_ok_and(|n| visitor.grant.may_list(&n));
                if listed {
                    visible.push(name);
                    if visible.len() > CATALOG_PAGE {
                        visible.truncate(CATALOG_PAGE);
                        let next = visible.last().cloned();
                        return Ok((visible, next));
                    }
                }
            }
            if exhausted {
                return Ok((visible, None));
            }
            if scanned >= CATALOG_SCAN {
                // Go on from the last name read, not the last shown.
                return Ok((visible, after));
            }
        }
    }
}

// Signing in and out.

async fn sign_in_form(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let next = query_param(&parts, "next").unwrap_or_default();
    let csrf = visitor.session.csrf_token(&ui.key);
    let content = pages::sign_in(&csrf, &next, None, ui.can_sign_in);
    ui.page(&visitor, StatusCode::OK, "Sign in", None, content)
}

/// A form's fields, from a body of at most [`FORM_LIMIT`] bytes.
async fn form_fields(body: Body) -> UiResult<BTreeMap<String, String>> {
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| UiError::BadRequest(format!("a form is at most {FORM_LIMIT} bytes")))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// Whether a form may change something: its CSRF token is the session's, and a browser's
/// `Origin`, when it sends one, is this site.
fn form_allowed(
    ui: &Ui,
    visitor: &Visitor,
    parts: &Parts,
    fields: &BTreeMap<String, String>,
) -> bool {
    let token_ok = fields
        .get("csrf")
        .is_some_and(|token| !visitor.new_session && visitor.session.csrf_matches(&ui.key, token));
    let origin_ok = match parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        None => true,
        Some(origin) => {
            let host = host_of(parts);
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority == host)
        }
    };
    token_ok && origin_ok
}

/// Only paths of this UI are followed after signing in (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/ui/"
    }
}

async fn sign_in(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let fields = match form_fields(body).await {
        Ok(fields) => fields,
        Err(e) => return ui.failure(&visitor, "/ui/sign-in", e),
    };
    let next = fields.get("next").map(String::as_str).unwrap_or("/ui/");
    let csrf = visitor.session.csrf_token(&ui.key);
    if !form_allowed(&ui, &visitor, &parts, &fields) {
        let content = pages::sign_in(
            &csrf,
            next,
            Some("The form expired; please sign in again."),
            ui.can_sign_in,
        );
        return ui.page(&visitor, StatusCode::FORBIDDEN, "Sign in", None, content);
    }
    let user = fields.get("user").map(String::as_str).unwrap_or("");
    let password = fields.get("password").map(String::as_str).unwrap_or("");
    let client = parts.extensions.get::<ClientAddress>().map(|c| c.0);
    match ui.accounts.sign_in(user, password, client).await {
        Ok(()) => {
            tracing::info!(user, ?client, "signed in to the web UI");
            let fingerprint = ui.accounts.fingerprint(user).unwrap_or_default();
            let session =
                Session::start(Some(user.to_owned()), fingerprint, ui.now(), SESSION_SECS);
            let mut response = redirect(safe_next(next));
            ui.set_session(&mut response, &session, visitor.secure);
            response
        }
        Err(refusal) => {
            let status = match refusal {
                SignInError::WrongCredentials => StatusCode::UNAUTHORIZED,
                SignInError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
                SignInError::Unsupported(_) => StatusCode::FORBIDDEN,
            };
            let content = pages::sign_in(&csrf, next, Some(&refusal.to_string()), ui.can_sign_in);
            ui.page(&visitor, status, "Sign in", None, content)
        }
    }
}

async fn sign_out(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let fields = match form_fields(body).await {
        Ok(fields) => fields,
        Err(e) => return ui.failure(&visitor, "/ui/", e),
    };
    if !form_allowed(&ui, &visitor, &parts, &fields) {
        return ui.failure(
            &visitor,
            "/ui/",
            UiError::Forbidden("the form expired; reload the page and try again".to_owned()),
        );
    }
    let mut response = redirect("/ui/");
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(visitor.secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

// Assets.

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "berth.css" => (include_str!("assets/berth.css"), "text/css; charset=utf-8"),
        "berth.js" => (
            include_str!("assets/berth.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}

// A repository and what is under it: `/ui/r/<name>`, `/ui/r/<name>/-/manifest/<digest>`,
// `/ui/r/<name>/-/delete`. A repository name has no `-` component, so `/-/` ends it.

enum RepositoryPath<'a> {
    Repository(&'a str),
    Manifest(&'a str, &'a str),
    Delete(&'a str),
}

fn repository_path(path: &str) -> Option<RepositoryPath<'_>> {
    let path = path.trim_start_matches('/');
    match path.split_once("/-/") {
        None => Some(RepositoryPath::Repository(path.trim_end_matches('/'))),
        Some((name, "delete")) => Some(RepositoryPath::Delete(name)),
        Some((name, rest)) => rest
            .strip_prefix("manifest/")
            .map(|digest| RepositoryPath::Manifest(name, digest)),
    }
}

async fn repository_get(
    State(ui): State<Arc<Ui>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let result = match repository_path(&path) {
        Some(RepositoryPath::Repository(name)) => ui.repository_page(&visitor, &parts, name).await,
        Some(RepositoryPath::Manifest(name, digest)) => {
            ui.manifest_page(&visitor, &parts, name, digest).await
        }
        Some(RepositoryPath::Delete(name)) => ui.confirm_delete_page(&visitor, &parts, name),
        None => Err(UiError::NotFound(format!("there is no page at {here}"))),
    };
    match result {
        Ok(response) => response,
        Err(e) => ui.failure(&visitor, &here, e),
    }
}

async fn repository_post(
    State(ui): State<Arc<Ui>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let visitor = ui.visitor(&parts.headers);
    let here = parts.uri.path().to_owned();
    let result = match repository_path(&path) {
        Some(RepositoryPath::Delete(name)) => ui.delete(&visitor, &parts, body, name).await,
        _ => Err(UiError::NotFound(format!("nothing is sent to {here}"))),
    };
    match result {
        Ok(response) => response,
        Err(e) => ui.failure(&visitor, &here, e),
    }
}

/// A repository page's cursor: `<pushed_at>:<tag>`.
fn parse_before(value: &str) -> Option<(i64, &str)> {
    let (at, tag) = value.split_once(':')?;
    Some((at.parse().ok()?, tag))
}

impl Ui {
    async fn repository_page(
        &self,
        visitor: &Visitor,
        parts: &Parts,
        name: &str,
    ) -> UiResult<Response> {
        let repository = self.pullable(visitor, name)?;
        let metadata = self.registry.metadata_store();
        let before_value = query_param(parts, "before");
        let before = match before_value.as_deref() {
            Some(value) => Some(parse_before(value).ok_or_else(|| {
                UiError::BadRequest(format!("before={value:?} is not <time>:<tag>"))
            })?),
            None => None,
        };
        let mut listed = metadata
            .recent_tags(
                &repository,
                before.map(|(pushed_at, tag)| PushedBefore { pushed_at, tag }),
                TAG_PAGE + 1,
            )
            .await?
            .ok_or_else(|| UiError::NotFound(format!("repository {repository} does not exist")))?;
        let next = (listed.len() > TAG_PAGE as usize).then(|| {
            listed.truncate(TAG_PAGE as usize);
            listed
                .last()
                .map(|l| format!("{}:{}", l.pushed_at, l.tag.as_deref().unwrap_or("")))
                .unwrap_or_default()
        });
        let untagged = if query_param(parts, "untagged").is_some() {
            Some(
                metadata
                    .untagged_manifests(&repository, UNTAGGED_PAGE)
                    .await?,
            )
        } else {
            None
        };
        let rows = self.rows(&repository, listed).await?;
        let untagged = match untagged {
            Some(listed) => Some(self.rows(&repository, listed).await?),
            None => None,
        };
        let storage = metadata.blob_totals(Some(&repository)).await?;
        // Only a tag or digest is named as deleted: the notice says no other text.
        let deleted = query_param(parts, "deleted").filter(|d| parse_reference(d).is_ok());
        let host = host_of(parts);
        let page = RepositoryPage {
            name: repository.as_str(),
            host: &host,
            tags: rows,
            next,
            untagged,
            storage,
            may_delete: visitor.may(&repository, Action::Delete),
            deleted: deleted.as_deref(),
            now: self.now(),
        };
        Ok(self.page(
            visitor,
            StatusCode::OK,
            repository.as_str(),
            Some(repository.as_str()),
            pages::repository(&page),
        ))
    }

    /// Table rows for listed manifests: sizes of indexes from their children, read at once.
    async fn rows(
        &self,
        repository: &RepositoryName,
        listed: Vec<ListedManifest>,
    ) -> UiResult<Vec<TagRow>> {
        let views: Vec<ManifestView> = listed
            .iter()
            .map(|l| ManifestView::of(&l.manifest))
            .collect();
        let children: Vec<Digest> = views
            .iter()
            .filter(|v| v.is_index)
            .flat_map(|v| v.children.iter().map(|c| c.digest.clone()))
            .collect();
        let held = self
            .registry
            .metadata_store()
            .manifests_among(repository, &children)
            .await?;
        Ok(listed
            .into_iter()
            .zip(views)
            .map(|(l, view)| TagRow {
                size: if view.is_index {
                    index_size(&view, &held)
                } else {
                    view.image_size()
                },
                platforms: view.platforms(),
                is_index: view.is_index,
                artifact_type: view.artifact_type.clone(),
                tag: l.tag,
                pushed_at: l.pushed_at / 1000,
                digest: l.manifest.digest.to_string(),
            })
            .collect())
    }

    async fn manifest_page(
        &self,
        visitor: &Visitor,
        parts: &Parts,
        name: &str,
        digest: &str,
    ) -> UiResult<Response> {
        let repository = self.pullable(visitor, name)?;
        let digest = Digest::parse(digest)
            .map_err(|e| UiError::NotFound(format!("{digest:?} is not a digest: {e}")))?;
        let record = self
            .registry
            .manifest(&repository, &Reference::Digest(digest.clone()))
            .await?;
        let view = ManifestView::of(&record);
        let metadata = self.registry.metadata_store();
        let tags = metadata
            .tags_naming(&repository, &digest, TAGS_SHOWN + 1)
            .await?;
        let children = if view.is_index {
            let digests: Vec<Digest> = view.children.iter().map(|c| c.digest.clone()).collect();
            let held = metadata.manifests_among(&repository, &digests).await?;
            view.children
                .iter()
                .map(|c| {
                    let size = held
                        .iter()
                        .find(|m| m.digest == c.digest)
                        .map(|m| ManifestView::of(m).image_size());
                    (c.clone(), size)
                })
                .collect()
        } else {
            Vec::new()
        };
        let config = match (&view.config, view.is_index, &view.artifact_type) {
            (Some(config), false, None) => Some(self.config_facts(&repository, config).await),
            _ => None,
        };
        let referrers = self
            .referrer_tree(&repository, &digest, REFERRER_DEPTH)
            .await?;
        let host = host_of(parts);
        let digest_text = digest.to_string();
        let page = ManifestPage {
            name: repository.as_str(),
            host: &host,
            digest: &digest_text,
            media_type: &record.media_type,
            size: record.content.len() as u64,
            view: &view,
            tags: &tags,
            children,
            config,
            referrers,
            may_delete: visitor.may(&repository, Action::Delete),
        };
        let title = format!("{repository}@{digest_text}");
        Ok(self.page(
            visitor,
            StatusCode::OK,
            &title,
            Some(repository.as_str()),
            pages::manifest(&page),
        ))
    }

    /// What the page shows of an image's config blob, read from the blob store (at most
    /// [`CONFIG_SHOWN`] bytes).
    async fn config_facts(
        &self,
        repository: &RepositoryName,
        config: &crate::oci::Descriptor,
    ) -> ConfigFacts {
        if config.size > CONFIG_SHOWN {
            return ConfigFacts {
                missing: Some(format!(
                    "The config is {} bytes, too large to show here.",
                    config.size
                )),
                ..ConfigFacts::default()
            };
        }
        match self.read_config(repository, &config.digest).await {
            Ok(json) => config_facts(&json),
            Err(e) => ConfigFacts {
                missing: Some(format!("The config could not be read: {e}")),
                ..ConfigFacts::default()
            },
        }
    }

    async fn read_config(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<serde_json::Value, RegistryError> {
        let blob = self.registry.blob(repository, digest).await?;
        // The size the manifest gave is the pusher's word; the stored blob's is not.
        if blob.size > CONFIG_SHOWN {
            return Err(RegistryError::new(
                ErrorCode::Unknown,
                format!("the config is {} bytes, too large to show here", blob.size),
            ));
        }
        let mut stream = self.registry.read_blob(&blob, None).await?;
        let mut bytes = Vec::with_capacity(blob.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(RegistryError::from)?;
            if (bytes.len() + chunk.len()) as u64 > CONFIG_SHOWN {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::new(ErrorCode::Unknown, format!("the config is not JSON: {e}"))
        })
    }

    /// The referrers of `digest`, and theirs, `depth` levels down: at most
    /// [`REFERRERS_SHOWN`] in all, read one query per manifest that has a place in the tree.
    async fn referrer_tree(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        depth: usize,
    ) -> UiResult<Vec<ReferrerNode>> {
        let mut level: Vec<(Digest, Vec<usize>)> = vec![(digest.clone(), Vec::new())];
        let mut roots: Vec<ReferrerNode> = Vec::new();
        let mut shown = 0;
        for _ in 0..depth {
            let mut next_level = Vec::new();
            for (subject, path) in level {
                let room = REFERRERS_SHOWN.saturating_sub(shown);
                if room == 0 {
                    break;
                }
                let found = self
                    .registry
                    .referrers(
                        repository,
                        &subject,
                        None,
                        Page {
                            limit: Some(room as u32),
                            after: None,
                        },
                    )
                    .await?;
                shown += found.len();
                let siblings = node_at(&mut roots, &path);
                for record in found {
                    let created = record
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("org.opencontainers.image.created").cloned());
                    siblings.push(ReferrerNode {
                        digest: record.digest.to_string(),
                        artifact_type: record.artifact_type.clone(),
                        created,
                        referrers: Vec::new(),
                    });
                    let mut child_path = path.clone();
                    child_path.push(siblings.len() - 1);
                    next_level.push((record.digest, child_path));
                }
            }
            if next_level.is_empty() {
                break;
            }
            level = next_level;
        }
        Ok(roots)
    }

    fn confirm_delete_page(
        &self,
        visitor: &Visitor,
        parts: &Parts,
        name: &str,
    ) -> UiResult<Response> {
        let repository = self.deletable(visitor, name)?;
        let reference = query_param(parts, "reference").unwrap_or_default();
        let parsed = parse_reference(&reference)?;
        let csrf = visitor.session.csrf_token(&self.key);
        let content = pages::confirm_delete(
            repository.as_str(),
            &reference,
            matches!(parsed, Reference::Tag(_)),
            &csrf,
        );
        Ok(self.page(
            visitor,
            StatusCode::OK,
            "Delete",
            Some(repository.as_str()),
            content,
        ))
    }

    fn deletable(&self, visitor: &Visitor, name: &str) -> UiResult<RepositoryName> {
        let repository = self.pullable(visitor, name)?;
        if visitor.may(&repository, Action::Delete) {
            Ok(repository)
        } else {
            Err(UiError::Forbidden(format!(
                "{} may not delete from {repository}",
                visitor.user().unwrap_or("an anonymous visitor")
            )))
        }
    }

    async fn delete(
        &self,
        visitor: &Visitor,
        parts: &Parts,
        body: Body,
        name: &str,
    ) -> UiResult<Response> {
        let fields = form_fields(body).await?;
        if !form_allowed(self, visitor, parts, &fields) {
            return Err(UiError::Forbidden(
                "the form expired or came from another site; reload the page and try again"
                    .to_owned(),
            ));
        }
        let repository = self.deletable(visitor, name)?;
        let reference = fields.get("reference").map(String::as_str).unwrap_or("");
        let parsed = parse_reference(reference)?;
        self.registry
            .on_behalf_of(event_origin(parts, &*visitor.grant))
            .delete_manifest(&repository, &parsed)
            .await?;
        tracing::info!(user = ?visitor.user(), %repository, reference, "deleted through the web UI");
        Ok(redirect(&format!(
            "/ui/r/{repository}?{}",
            pages::query_string(&[("deleted", reference)])
        )))
    }
}

fn parse_reference(reference: &str) -> UiResult<Reference> {
    if reference.contains(':') {
        Digest::parse(reference)
            .map(Reference::Digest)
            .map_err(|e| UiError::BadRequest(format!("{reference:?} is not a digest: {e}")))
    } else {
        Tag::parse(reference)
            .map(Reference::Tag)
            .map_err(|e| UiError::BadRequest(format!("{reference:?} is not a tag: {e}")))
    }
}

/// The list of nodes at `path` (indexes from the roots down) of a referrer tree.
fn node_at<'a>(roots: &'a mut Vec<ReferrerNode>, path: &[usize]) -> &'a mut Vec<ReferrerNode> {
    let mut nodes = roots;
    for &i in path {
        nodes = &mut nodes[i].referrers;
    }
    nodes
}

/// What the page shows of an image config's JSON.
fn config_facts(json: &serde_json::Value) -> ConfigFacts {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let platform = match (
        json.get("os").and_then(text),
        json.get("architecture").and_then(text),
    ) {
        (Some(os), Some(architecture)) => Some(platform_name(&crate::oci::Platform {
            architecture,
            os,
            os_version: None,
            os_features: None,
            variant: json.get("variant").and_then(text),
            features: None,
        })),
        _ => None,
    };
    let labels = json
        .pointer("/config/Labels")
        .and_then(|l| l.as_object())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let history = json
        .get("history")
        .and_then(|h| h.as_array())
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    (
                        step.get("created_by")
                            .and_then(text)
                            .or_else(|| step.get("comment").and_then(text))
                            .unwrap_or_default(),
                        step.get("empty_layer").and_then(|e| e.as_bool()) == Some(true),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ConfigFacts {
        created: json.get("created").and_then(text),
        platform,
        labels,
        history,
        missing: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_end_at_the_dash_component() {
        assert!(matches!(
            repository_path("team/app"),
            Some(RepositoryPath::Repository("team/app"))
        ));
        assert!(matches!(
            repository_path("team/app/-/manifest/sha256:ab"),
            Some(RepositoryPath::Manifest("team/app", "sha256:ab"))
        ));
        assert!(matches!(
            repository_path("a-b/-/delete"),
            Some(RepositoryPath::Delete("a-b"))
        ));
        assert!(repository_path("a/-/elsewhere").is_none());
    }

    #[test]
    fn only_this_uis_paths_are_followed_after_signing_in() {
        assert_eq!(safe_next("/ui/r/app"), "/ui/r/app");
        assert_eq!(safe_next("https://evil.example/"), "/ui/");
        assert_eq!(safe_next("//evil.example/ui/"), "/ui/");
        assert_eq!(safe_next("/ui/\\evil"), "/ui/");
    }

    #[test]
    fn configs_show_platform_labels_and_history() {
        let facts = config_facts(&serde_json::json!({
            "created": "2026-01-02T03:04:05Z",
            "os": "linux", "architecture": "arm64", "variant": "v8",
            "config": {"Labels": {"org.opencontainers.image.source": "https://example.com/app"}},
            "history": [{"created_by": "ADD rootfs /"}, {"created_by": "ENV A=1", "empty_layer": true}]
        }));
        assert_eq!(facts.platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(facts.labels.len(), 1);
        assert_eq!(facts.history[1], ("ENV A=1".to_owned(), true));
        assert_eq!(
            parse_before("1700000000:v1.2"),
            Some((1_700_000_000, "v1.2"))
        );
        assert_eq!(parse_before("soon:v1"), None);
    }
}
