//! HTTP Basic authentication at the registry: users from an htpasswd file, permissions from
//! an ACL. Requests without credentials are anonymous (and may do what the ACL gives
//! `anonymous`); wrong credentials get `401`, and failed logins are rate-limited per client.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;

use super::acl::Acl;
use super::bearer::credentials;
use super::htpasswd::Htpasswd;
use super::limiter::LoginLimiter;
use std::net::IpAddr;

use sha2::{Digest as _, Sha256};

use super::{
    Access, AccessRequest, Accounts, Authorizer, Denial, Grant, Nothing, Resource, SignInError,
    describe_needs,
};

/// What the ACL gives a user (or an anonymous caller).
#[derive(Debug)]
pub struct AclGrant {
    user: Option<String>,
    acl: Arc<Acl>,
}

impl AclGrant {
    /// The grant of `user` (`None`: anonymous) under `acl`.
    pub fn new(user: Option<String>, acl: Arc<Acl>) -> AclGrant {
        AclGrant { user, acl }
    }
}

impl Grant for AclGrant {
    fn subject(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn allows(&self, access: &Access) -> bool {
        match (&access.resource, access.action) {
            (Resource::Catalog, _) => self.acl.catalog(self.user.as_deref()),
            (Resource::Repository(name), Some(action)) => self
                .acl
                .actions(self.user.as_deref(), name)
                .contains(action),
            (Resource::Repository(_), None) => false,
        }
    }
}

/// The web UI's users: an htpasswd file (when the registry has one) and an ACL, the same as
/// the API's, with the same failed-login limit.
#[derive(Debug)]
pub struct PasswordAccounts {
    htpasswd: Option<Arc<Htpasswd>>,
    acl: Arc<Acl>,
    limiter: Arc<LoginLimiter>,
}

impl PasswordAccounts {
    /// Users from `htpasswd` (`None`: nobody signs in here; anonymous visitors still get what
    /// `acl` gives `anonymous`), permissions from `acl`.
    pub fn new(
        htpasswd: Option<Arc<Htpasswd>>,
        acl: Arc<Acl>,
        limiter: Arc<LoginLimiter>,
    ) -> PasswordAccounts {
        PasswordAccounts {
            htpasswd,
            acl,
            limiter,
        }
    }
}

#[async_trait]
impl Accounts for PasswordAccounts {
    async fn sign_in(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(), SignInError> {
        let Some(htpasswd) = &self.htpasswd else {
            return Err(SignInError::Unsupported(
                "this registry's users sign in with an external token service, not here".to_owned(),
            ));
        };
        if let Err(retry_after_secs) = self.limiter.check(client) {
            return Err(SignInError::TooManyAttempts { retry_after_secs });
        }
        if htpasswd.verify(user, password).await {
            Ok(())
        } else {
            self.limiter.failed(client);
            tracing::warn!(user, ?client, "failed sign-in to the web UI");
            Err(SignInError::WrongCredentials)
        }
    }

    fn grant(&self, user: Option<&str>) -> Arc<dyn Grant> {
        // With an external token service the API ignores the ACL file for everyone but the
        // catalog, so a visitor who cannot sign in here may see nothing.
        if self.htpasswd.is_none() {
            return Arc::new(Nothing);
        }
        Arc::new(AclGrant::new(
            user.map(str::to_owned),
            Arc::clone(&self.acl),
        ))
    }

    fn fingerprint(&self, user: &str) -> Option<String> {
        let hash = self.htpasswd.as_ref()?.hash_of(user)?;
        Some(hex::encode(&Sha256::digest(hash.as_bytes())[..8]))
    }
}

/// Decodes `Basic` credentials into user and password.
#[doc(hidden)] // Public for the fuzz targets (fuzz/).
pub fn basic_credentials(headers: &http::HeaderMap) -> Option<Result<(String, String), ()>> {
    let encoded = credentials(headers, "Basic")?;
    let decoded = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Some(match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((user, password)) if !user.is_empty() => Ok((user.to_owned(), password.to_owned())),
        _ => Err(()),
    })
}

/// Checks Basic credentials against an htpasswd file, with the failed-login limit: the user,
/// or the denial to answer.
pub(crate) async fn check_password(
    htpasswd: &Htpasswd,
    limiter: &LoginLimiter,
    request: &AccessRequest<'_>,
    user: &str,
    password: &str,
    challenge: impl Fn() -> HeaderValue,
) -> Result<(), Denial> {
    if let Err(retry_after_secs) = limiter.check(request.client) {
        return Err(Denial::TooManyAttempts { retry_after_secs });
    }
    if htpasswd.verify(user, password).await {
        Ok(())
    } else {
        limiter.failed(request.client);
        tracing::warn!(user, client = ?request.client, "failed login");
        Err(Denial::Unauthenticated {
            challenge: challenge(),
            message: "the user name or password is wrong".to_owned(),
        })
    }
}

/// Basic authentication with an htpasswd file and an ACL.
#[derive(Debug)]
pub struct BasicAuthorizer {
    htpasswd: Arc<Htpasswd>,
    acl: Arc<Acl>,
    realm: String,
    limiter: Arc<LoginLimiter>,
}

impl BasicAuthorizer {
    /// Users from `htpasswd`, permissions from `acl`, challenges naming `realm`.
    pub fn new(
        htpasswd: Arc<Htpasswd>,
        acl: Arc<Acl>,
        realm: impl Into<String>,
        limiter: Arc<LoginLimiter>,
    ) -> BasicAuthorizer {
        BasicAuthorizer {
            htpasswd,
            acl,
            realm: realm.into(),
            limiter,
        }
    }

    fn challenge(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"berth\""))
    }
}

#[async_trait]
impl Authorizer for BasicAuthorizer {
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<Arc<dyn Grant>, Denial> {
        let user = match basic_credentials(request.headers) {
            Some(Ok((user, password))) => {
                check_password(
                    &self.htpasswd,
                    &self.limiter,
                    request,
                    &user,
                    &password,
                    || self.challenge(),
                )
                .await?;
                Some(user)
            }
            Some(Err(())) => {
                return Err(Denial::Unauthenticated {
                    challenge: self.challenge(),
                    message: "the Authorization header is not valid Basic credentials".to_owned(),
                });
            }
            None => None,
        };
        let grant = AclGrant::new(user, Arc::clone(&self.acl));
        // `GET /v2/` tells clients whether to sign in: without credentials it is refused.
        if request.needs.is_empty() && grant.user.is_none() {
            return Err(Denial::Unauthenticated {
                challenge: self.challenge(),
                message: describe_needs(request.needs),
            });
        }
        let lacking = format!(
            "user {:?} does not have it",
            grant.user.as_deref().unwrap_or("")
        );
        super::decide(
            Arc::new(grant),
            request.needs,
            self.challenge(),
            false,
            &lacking,
        )
    }
}
