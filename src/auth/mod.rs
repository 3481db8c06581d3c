//! Access control: who a request comes from, and what it may do.
//!
//! Every operation of the API needs an [`Access`] (pull, push or delete on its repository, or
//! the catalog). An [`Authorizer`] looks at the request's credentials and either lets it
//! through with a [`Grant`] (what the caller may do, asked again later for the catalog's
//! repositories and for the source of a cross-repository mount) or refuses it with a
//! [`Denial`]: `401` with a challenge when credentials are missing or wrong, `403` when valid
//! credentials do not allow the access.
//!
//! Berth's own authorizers (with the `auth` feature): [`basic::BasicAuthorizer`] (an htpasswd
//! file and an [`acl::Acl`]) and [`bearer::BearerAuthorizer`] (Docker token authentication: JWTs
//! from Berth's own [`issuer::TokenIssuer`] or an external token service). Embedders can
//! implement [`Authorizer`] themselves and set it with
//! [`Api::authorizer`](crate::http::Api::authorizer).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue};

use crate::oci::RepositoryName;

#[cfg(feature = "auth")]
pub mod acl;
#[cfg(feature = "auth")]
pub mod basic;
#[cfg(feature = "auth")]
pub mod bearer;
#[cfg(feature = "auth")]
mod cache;
#[cfg(feature = "auth")]
pub mod htpasswd;
#[cfg(feature = "auth")]
pub mod issuer;
#[cfg(feature = "auth")]
pub mod keys;
#[cfg(feature = "auth")]
pub mod limiter;
pub mod scope;

pub use scope::{Access, Action, Resource};

/// What an authorizer sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The request headers (`Authorization` among them).
    pub headers: &'a HeaderMap,
    /// The client's address, for rate limits on failed logins.
    pub client: Option<IpAddr>,
    /// What the operation needs; empty for the API version check, which only needs a caller
    /// the registry accepts.
    pub needs: &'a [Access],
}

/// What a caller may do, as the authorizer established it.
pub trait Grant: Send + Sync + std::fmt::Debug {
    /// Who the caller is; `None` for an anonymous caller.
    fn subject(&self) -> Option<&str>;
    /// Whether the caller may do `access`.
    fn allows(&self, access: &Access) -> bool;
    /// Whether the catalog may show `repository` to the caller (it may pull from it).
    fn may_list(&self, repository: &RepositoryName) -> bool {
        self.allows(&Access::repository(repository.as_str(), Action::Pull))
    }
}

/// Why a request is refused.
#[derive(Clone, Debug)]
pub enum Denial {
    /// No credentials, or credentials that are not valid: `401` with this `WWW-Authenticate`
    /// challenge.
    Unauthenticated {
        /// The `WWW-Authenticate` header value.
        challenge: HeaderValue,
        /// What was wrong, for the client.
        message: String,
    },
    /// Valid credentials that do not allow the access: `403 DENIED`, with an optional
    /// challenge (RFC 6750 `error="insufficient_scope"`).
    Forbidden {
        /// The `WWW-Authenticate` header value, if any.
        challenge: Option<HeaderValue>,
        /// What was refused, for the client.
        message: String,
    },
    /// Too many failed logins from this client: `429` with `Retry-After`.
    TooManyAttempts {
        /// Seconds until the client may try again.
        retry_after_secs: u64,
    },
    /// The authorizer could not decide (a dependency failed): `503`.
    Unavailable(String),
}

/// Decides whether requests may go ahead.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Lets the request through with what its caller may do, or refuses it.
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<Arc<dyn Grant>, Denial>;
}

/// Why a sign-in (to the web UI) is refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SignInError {
    /// The user is unknown or the password wrong (which of the two is not said).
    #[error("the user name or password is wrong")]
    WrongCredentials,
    /// Too many failed sign-ins from this client.
    #[error("too many failed sign-ins from this address: try again in {retry_after_secs} s")]
    TooManyAttempts {
        /// Seconds until the client may try again.
        retry_after_secs: u64,
    },
    /// This registry's users cannot sign in here (their credentials live in an external
    /// token service).
    #[error("{0}")]
    Unsupported(String),
}

/// The users of the web UI: the same as the API's, with the same permissions.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Checks `user`'s `password`, counting failures against `client`'s limit.
    async fn sign_in(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(), SignInError>;
    /// What `user` (`None`: an anonymous visitor) may do.
    fn grant(&self, user: Option<&str>) -> Arc<dyn Grant>;
    /// A short value that changes when `user`'s credentials do, kept in their session: a
    /// session whose fingerprint no longer matches is over. `None` when the user is gone.
    fn fingerprint(&self, user: &str) -> Option<String>;
}

/// The accounts of a registry without access control: nobody signs in, everyone may do
/// everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

#[async_trait]
impl Accounts for Open {
    async fn sign_in(
        &self,
        _user: &str,
        _password: &str,
        _client: Option<IpAddr>,
    ) -> Result<(), SignInError> {
        Err(SignInError::Unsupported(
            "this registry has no access control: there is nothing to sign in to".to_owned(),
        ))
    }

    fn grant(&self, _user: Option<&str>) -> Arc<dyn Grant> {
        Arc::new(Everything)
    }

    fn fingerprint(&self, _user: &str) -> Option<String> {
        None
    }
}

/// The grant of nobody: nothing is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nothing;

impl Grant for Nothing {
    fn subject(&self) -> Option<&str> {
        None
    }

    fn allows(&self, _access: &Access) -> bool {
        false
    }
}

/// The grant of a registry without access control: everything is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Everything;

impl Grant for Everything {
    fn subject(&self) -> Option<&str> {
        None
    }

    fn allows(&self, _access: &Access) -> bool {
        true
    }
}

/// The message of a refusal: what the request needs that the caller does not have.
pub fn describe_needs(needs: &[Access]) -> String {
    let wanted: Vec<String> = needs.iter().map(Access::to_string).collect();
    if wanted.is_empty() {
        "authentication required".to_owned()
    } else {
        format!("access to {} is required", wanted.join(", "))
    }
}

/// Decides a request whose caller is known: through if `grant` allows all it `needs`;
/// otherwise a caller who has not signed in is asked to (401 with `challenge`), and one who has
/// is refused (403, with the challenge too if `challenge_when_forbidden`), `lacking` saying why.
pub fn decide(
    grant: Arc<dyn Grant>,
    needs: &[Access],
    challenge: HeaderValue,
    challenge_when_forbidden: bool,
    lacking: &str,
) -> Result<Arc<dyn Grant>, Denial> {
    let missing: Vec<Access> = needs.iter().filter(|a| !grant.allows(a)).cloned().collect();
    if missing.is_empty() {
        Ok(grant)
    } else if grant.subject().is_none() {
        Err(Denial::Unauthenticated {
            challenge,
            message: describe_needs(&missing),
        })
    } else {
        Err(Denial::Forbidden {
            challenge: challenge_when_forbidden.then_some(challenge),
            message: format!("{}; {lacking}", describe_needs(&missing)),
        })
    }
}

/// Unix time in seconds (token claims).
#[cfg(feature = "auth")]
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
