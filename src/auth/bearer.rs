//! Docker token authentication at the registry: requests carry `Authorization: Bearer <JWT>`,
//! issued by Berth's own token issuer or an external token service; a request without one (or
//! with one that does not grant what it needs) gets `401` with a `WWW-Authenticate: Bearer`
//! challenge naming the realm, the service and the scope it needs.
//!
//! Tokens are verified once (signature with a trusted key of the algorithm's family, `iss`,
//! `aud`, `exp`, `nbf`) and the result is remembered until the token expires, for at most a
//! minute, so that verification costs nothing per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::acl::{Acl, Actions};
use super::cache::TtlCache;
use super::keys::VerifyingKey;
use super::scope::challenge_scope;
use super::{Access, AccessRequest, Action, Authorizer, Denial, Grant, Resource, describe_needs};
use crate::glob::glob_match;
use crate::oci::RepositoryName;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 10;
/// Longest a verified token is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// Resource type: `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// Actions granted.
    pub actions: Vec<String>,
}

/// `aud` may be one string or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// The claims of a registry token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user; empty for anonymous.
    #[serde(default)]
    pub sub: String,
    /// Audience: the registry's service name.
    pub aud: Audience,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// What the token grants.
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// Set on refresh tokens, which only the issuer accepts: a fingerprint of the user's
    /// password hash, so that changing the password revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub berth_refresh: Option<String>,
}

/// Why a token was refused.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

/// Verifies tokens against trusted keys, issuer and audience.
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
    issuer: String,
    service: String,
    /// Used to list repositories for tokens of Berth's own issuer.
    acl: Option<Arc<Acl>>,
    verified: TtlCache<TokenGrant>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Trusts tokens signed by `keys`, issued by `issuer` for `service`. `acl` decides which
    /// repositories the catalog shows to callers with tokens of Berth's own issuer (whose
    /// users it knows); other tokens show what their `access` claim grants.
    pub fn new(
        keys: Vec<VerifyingKey>,
        issuer: impl Into<String>,
        service: impl Into<String>,
        acl: Option<Arc<Acl>>,
    ) -> TokenVerifier {
        TokenVerifier {
            keys,
            issuer: issuer.into(),
            service: service.into(),
            acl,
            verified: TtlCache::new(REMEMBER, 50_000),
        }
    }

    /// The claims of a valid token, and whether Berth's own key signed it. Refresh tokens are
    /// refused unless `refresh` is set, access tokens if it is.
    pub fn claims(&self, token: &str, refresh: bool) -> Result<(Claims, bool), InvalidToken> {
        let header = decode_header(token)
            .map_err(|e| InvalidToken(format!("the token is malformed: {e}")))?;
        let candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| k.family.algorithms().contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(InvalidToken(format!(
                "no trusted key verifies {:?} tokens",
                header.alg
            )));
        }
        let mut last = None;
        for key in candidates {
            let mut validation = Validation::new(header.alg);
            validation.algorithms = key.family.algorithms();
            validation.leeway = LEEWAY_SECS;
            validation.validate_nbf = true;
            validation.set_audience(&[&self.service]);
            validation.set_issuer(&[&self.issuer]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.berth_refresh.is_some() != refresh {
                        return Err(InvalidToken(if refresh {
                            "not a refresh token".to_owned()
                        } else {
                            "a refresh token is not an access token".to_owned()
                        }));
                    }
                    return Ok((claims, key.own));
                }
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind;
        let message = match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "the token has expired".to_owned(),
            Some(ErrorKind::ImmatureSignature) => "the token is not valid yet (nbf)".to_owned(),
            Some(ErrorKind::InvalidAudience) => {
                format!(
                    "the token is not for this registry (aud must be {:?})",
                    self.service
                )
            }
            Some(ErrorKind::InvalidIssuer) => {
                format!(
                    "the token is not from a trusted issuer (iss must be {:?})",
                    self.issuer
                )
            }
            Some(ErrorKind::InvalidSignature) => "the token's signature is not valid".to_owned(),
            Some(ErrorKind::MissingRequiredClaim(c)) => format!("the token has no {c} claim"),
            Some(other) => format!("the token is not valid: {other:?}"),
            None => "the token is not valid".to_owned(),
        };
        Err(InvalidToken(message))
    }

    /// What an access token grants, remembered until it expires.
    pub fn grant(&self, token: &str) -> Result<Arc<TokenGrant>, InvalidToken> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(grant) = self.verified.get(&key) {
            return Ok(grant);
        }
        let (claims, own) = self.claims(token, false)?;
        let remaining = claims
            .exp
            .saturating_add(LEEWAY_SECS)
            .saturating_sub(super::unix_now());
        let grant = Arc::new(TokenGrant::new(
            &claims,
            own.then(|| self.acl.clone()).flatten(),
        ));
        // Bounded before it is added: an `exp` far enough away would overflow `Instant`.
        let remember = Duration::from_secs(remaining).min(REMEMBER);
        self.verified
            .insert(key, Arc::clone(&grant), Instant::now() + remember);
        Ok(grant)
    }
}

/// What a verified token grants.
#[derive(Debug)]
pub struct TokenGrant {
    subject: Option<String>,
    repositories: Vec<(String, Actions)>,
    catalog: bool,
    /// For tokens of Berth's own issuer: the ACL, which decides what the catalog shows.
    acl: Option<Arc<Acl>>,
}

impl TokenGrant {
    fn new(claims: &Claims, acl: Option<Arc<Acl>>) -> TokenGrant {
        let mut repositories: Vec<(String, Actions)> = Vec::new();
        let mut catalog = false;
        for entry in &claims.access {
            match entry.kind.split('(').next().unwrap_or("") {
                "repository" => {
                    let mut actions = Actions::NONE;
                    for a in &entry.actions {
                        match a.as_str() {
                            "*" => actions = Actions::ALL,
                            other => {
                                if let Some(action) = Action::parse(other) {
                                    actions.insert(action);
                                }
                            }
                        }
                    }
                    repositories.push((entry.name.clone(), actions));
                }
                "registry" if entry.name == "catalog" => {
                    // The union of the entries: a later one does not take it back.
                    catalog |= entry.actions.iter().any(|a| a == "*");
                }
                _ => {}
            }
        }
        TokenGrant {
            subject: (!claims.sub.is_empty()).then(|| claims.sub.clone()),
            repositories,
            catalog,
            acl,
        }
    }
}

impl Grant for TokenGrant {
    fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    fn allows(&self, access: &Access) -> bool {
        match (&access.resource, access.action) {
            (Resource::Catalog, _) => self.catalog,
            (Resource::Repository(name), Some(action)) => {
                self.repositories.iter().any(|(pattern, actions)| {
                    actions.contains(action)
                        && (pattern == name || (pattern.contains('*') && glob_match(pattern, name)))
                })
            }
            (Resource::Repository(_), None) => false,
        }
    }

    fn may_list(&self, repository: &RepositoryName) -> bool {
        match &self.acl {
            Some(acl) => acl
                .actions(self.subject.as_deref(), repository.as_str())
                .contains(Action::Pull),
            None => self.allows(&Access::repository(repository.as_str(), Action::Pull)),
        }
    }
}

/// Where clients get tokens.
#[derive(Clone, Debug)]
pub enum Realm {
    /// A fixed URL.
    Url(String),
    /// Berth's own issuer at this path of the host the request was sent to.
    SameHost(String),
}

impl Realm {
    fn url(&self, headers: &HeaderMap) -> String {
        match self {
            Realm::Url(url) => url.clone(),
            Realm::SameHost(path) => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let scheme = headers
                    .get("x-forwarded-proto")
                    .and_then(|h| h.to_str().ok())
                    .filter(|p| *p == "https" || *p == "http")
                    .unwrap_or("http");
                format!("{scheme}://{host}{path}")
            }
        }
    }
}

/// The registry side of Docker token authentication.
#[derive(Debug)]
pub struct BearerAuthorizer {
    verifier: Arc<TokenVerifier>,
    realm: Realm,
    service: String,
}

impl BearerAuthorizer {
    /// Challenges clients to get tokens for `service` from `realm`, and verifies them with
    /// `verifier`.
    pub fn new(verifier: Arc<TokenVerifier>, realm: Realm, service: impl Into<String>) -> Self {
        BearerAuthorizer {
            verifier,
            realm,
            service: service.into(),
        }
    }

    fn challenge(&self, headers: &HeaderMap, needs: &[Access], error: Option<&str>) -> HeaderValue {
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm.url(headers),
            self.service
        );
        let scope = challenge_scope(needs);
        if !scope.is_empty() {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }
}

/// The credentials of an `Authorization` header with the given scheme.
pub(crate) fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

#[async_trait]
impl Authorizer for BearerAuthorizer {
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<Arc<dyn Grant>, Denial> {
        let Some(token) = credentials(request.headers, "Bearer") else {
            return Err(Denial::Unauthenticated {
                challenge: self.challenge(request.headers, request.needs, None),
                message: describe_needs(request.needs),
            });
        };
        let grant = match self.verifier.grant(token) {
            Ok(grant) => grant,
            Err(e) => {
                return Err(Denial::Unauthenticated {
                    challenge: self.challenge(
                        request.headers,
                        request.needs,
                        Some("invalid_token"),
                    ),
                    message: e.0,
                });
            }
        };
        let challenge = self.challenge(request.headers, request.needs, Some("insufficient_scope"));
        super::decide(
            grant,
            request.needs,
            challenge,
            true,
            "the token does not grant it",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::Ed25519KeyPair;

    use super::*;
    use crate::auth::keys::{SigningKey, b64};

    fn claims(exp: u64, access: Vec<AccessEntry>) -> Claims {
        Claims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: Audience::One("registry".into()),
            exp,
            nbf: None,
            iat: None,
            jti: None,
            access,
            berth_refresh: None,
        }
    }

    fn catalog(actions: &[&str]) -> AccessEntry {
        AccessEntry {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Found writing the `bearer` fuzz target (fuzz/; input
    /// `corpus/bearer/regression-bearer-exp-overflow`): a trusted token with an `exp` past
    /// ~9.2e18 made the deadline of its cache entry overflow `Instant`, and the request panicked.
    #[test]
    fn far_future_expiry_does_not_overflow_the_cache_deadline() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(
            pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())).as_bytes(),
        )
        .unwrap();
        let key = SigningKey::load(file.path()).unwrap();
        let verifier = TokenVerifier::new(
            vec![key.verifying_key().unwrap()],
            "berth",
            "registry",
            None,
        );
        for exp in [u64::MAX, u64::MAX - 10, i64::MAX as u64] {
            let header = serde_json::json!({"alg": "EdDSA", "kid": key.kid()});
            let input = format!(
                "{}.{}",
                b64(&serde_json::to_vec(&header).unwrap()),
                b64(&serde_json::to_vec(&claims(exp, Vec::new())).unwrap())
            );
            let token = format!("{input}.{}", b64(&key.sign(input.as_bytes()).unwrap()));
            let grant = verifier.grant(&token).unwrap();
            assert_eq!(grant.subject(), Some("alice"));
            // Remembered, within the cache's bound.
            assert!(verifier.grant(&token).is_ok());
        }
    }

    /// Found writing the `bearer` fuzz target (fuzz/; input
    /// `corpus/bearer/regression-bearer-catalog-union`): a later `registry:catalog` entry
    /// without `*` took back the catalog an earlier entry granted; a token grants the union of
    /// its entries.
    #[test]
    fn a_later_catalog_entry_does_not_take_back_an_earlier_one() {
        let both = claims(0, vec![catalog(&["*"]), catalog(&["pull"])]);
        assert!(TokenGrant::new(&both, None).allows(&Access::catalog()));
        let reversed = claims(0, vec![catalog(&["pull"]), catalog(&["*"])]);
        assert!(TokenGrant::new(&reversed, None).allows(&Access::catalog()));
        let none = claims(0, vec![catalog(&["pull"])]);
        assert!(!TokenGrant::new(&none, None).allows(&Access::catalog()));
    }
}
