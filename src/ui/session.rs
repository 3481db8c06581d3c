//! The web UI's sessions: a cookie holding who signed in and until when, signed with a key
//! every replica shares, so any replica can read it and nothing is stored server-side. Forms
//! that change something carry a CSRF token derived from the session, which another site
//! cannot read and so cannot forge.

use crate::hmac::{hmac_sha256, verify_hmac_sha256};

/// The cookie's name.
pub const COOKIE: &str = "berth_session";

/// Fewest bytes of a session key.
pub const MIN_KEY_BYTES: usize = 32;

/// The key sessions are signed with.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A session key that is too short to sign with.
#[derive(Debug, thiserror::Error)]
#[error("a UI session key needs at least {MIN_KEY_BYTES} bytes; this one has {0}")]
pub struct ShortKey(pub usize);

impl SessionKey {
    /// A key of the given bytes (a file's contents: surrounding whitespace is not part of it).
    pub fn new(bytes: &[u8]) -> Result<SessionKey, ShortKey> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(ShortKey(trimmed.len()));
        }
        Ok(SessionKey(trimmed.to_vec()))
    }

    /// A random key, good for this process only: its sessions end when it stops, and other
    /// replicas cannot read them.
    pub fn random() -> SessionKey {
        let bytes: Vec<u8> = (0..4)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        SessionKey(bytes)
    }

    fn mac(&self, what: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, what)
    }
}

/// One visitor's session: signed in as `user`, or anonymous (`None`) with an id of its own
/// for the CSRF token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Who signed in.
    pub user: Option<String>,
    /// What the accounts said of the user's credentials at sign-in
    /// ([`crate::auth::Accounts::fingerprint`]): a session outlives neither the user nor a
    /// change of their password. Empty for anonymous sessions.
    pub fingerprint: String,
    /// Unix seconds after which the cookie is no longer accepted.
    pub expires: i64,
    /// Random, per session: what the CSRF token is derived from.
    pub id: String,
}

impl Session {
    /// A new session for `user` (whose credentials have `fingerprint`), valid for
    /// `lifetime_secs` from `now`.
    pub fn start(
        user: Option<String>,
        fingerprint: String,
        now: i64,
        lifetime_secs: i64,
    ) -> Session {
        Session {
            user,
            fingerprint,
            expires: now.saturating_add(lifetime_secs),
            id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The cookie value: the hex of `expires:id:fingerprint:user` and of its MAC.
    pub fn encode(&self, key: &SessionKey) -> String {
        let payload = format!(
            "{}:{}:{}:{}",
            self.expires,
            self.id,
            self.fingerprint,
            self.user.as_deref().unwrap_or("")
        );
        format!(
            "{}.{}",
            hex::encode(payload.as_bytes()),
            hex::encode(key.mac(payload.as_bytes()))
        )
    }

    /// The session a cookie value holds, if `key` signed it and it has not expired at `now`.
    pub fn decode(value: &str, key: &SessionKey, now: i64) -> Option<Session> {
        let (payload, mac) = value.split_once('.')?;
        let payload = hex::decode(payload).ok()?;
        let mac = hex::decode(mac).ok()?;
        if !verify_hmac_sha256(&key.0, &payload, &mac) {
            return None;
        }
        let payload = String::from_utf8(payload).ok()?;
        let mut fields = payload.splitn(4, ':');
        let expires: i64 = fields.next()?.parse().ok()?;
        let id = fields.next()?.to_owned();
        let fingerprint = fields.next()?.to_owned();
        let user = fields.next()?;
        if expires <= now || id.is_empty() {
            return None;
        }
        Some(Session {
            user: (!user.is_empty()).then(|| user.to_owned()),
            fingerprint,
            expires,
            id,
        })
    }

    /// The token forms of this session carry.
    pub fn csrf_token(&self, key: &SessionKey) -> String {
        hex::encode(key.mac(format!("csrf:{}", self.id).as_bytes()))
    }

    /// Whether `token` is this session's CSRF token.
    pub fn csrf_matches(&self, key: &SessionKey, token: &str) -> bool {
        hex::decode(token).is_ok_and(|mac| {
            verify_hmac_sha256(&key.0, format!("csrf:{}", self.id).as_bytes(), &mac)
        })
    }

    /// The `Set-Cookie` value that keeps this session: `HttpOnly` (no script reads it),
    /// `SameSite=Lax` (other sites' forms do not send it), `Secure` when served over TLS.
    pub fn set_cookie(&self, key: &SessionKey, now: i64, secure: bool) -> String {
        format!(
            "{COOKIE}={}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Lax{}",
            self.encode(key),
            (self.expires - now).max(0),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'a>(cookies: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    cookies
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::new(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_session_reads_back_only_with_its_key_and_before_it_expires() {
        let session = Session::start(
            Some("alice:with:colons".to_owned()),
            "f1".to_owned(),
            1000,
            60,
        );
        let cookie = session.encode(&key(1));
        assert_eq!(
            Session::decode(&cookie, &key(1), 1059),
            Some(session.clone())
        );
        assert_eq!(Session::decode(&cookie, &key(2), 1059), None);
        assert_eq!(Session::decode(&cookie, &key(1), 1060), None);
        let anonymous = Session::start(None, String::new(), 1000, 60);
        assert_eq!(
            Session::decode(&anonymous.encode(&key(1)), &key(1), 1001).map(|s| s.user),
            Some(None)
        );
    }

    #[test]
    fn a_changed_cookie_is_refused() {
        let session = Session::start(Some("bob".to_owned()), "f2".to_owned(), 1000, 60);
        let cookie = session.encode(&key(1));
        let (payload, mac) = cookie.split_once('.').unwrap();
        let forged_payload = hex::encode(format!("999999:{}:f2:alice", session.id));
        assert_eq!(
            Session::decode(&format!("{forged_payload}.{mac}"), &key(1), 1001),
            None
        );
        assert_eq!(Session::decode(payload, &key(1), 1001), None);
        assert_eq!(Session::decode("zz.zz", &key(1), 1001), None);
        assert_eq!(Session::decode("", &key(1), 1001), None);
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let one = Session::start(None, String::new(), 0, 60);
        let two = Session::start(None, String::new(), 0, 60);
        assert!(one.csrf_matches(&key(1), &one.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(1), &two.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(2), &one.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(1), "not hex"));
    }

    #[test]
    fn short_keys_are_refused_and_cookies_found() {
        assert!(SessionKey::new(b"  short  ").is_err());
        assert!(SessionKey::new(&[b'k'; 40]).is_ok());
        assert_eq!(
            cookie_value(["a=1; berth_session=xyz.abc", "c=2"].into_iter()),
            Some("xyz.abc")
        );
        assert_eq!(cookie_value(["berth_sessionx=1"].into_iter()), None);
        let set = Session::start(None, String::new(), 0, 60).set_cookie(&key(1), 0, true);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.ends_with("Secure")
        );
    }
}
