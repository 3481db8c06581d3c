//! Basic credentials from an `Authorization` header (`basic_credentials`): never panics; a
//! user and password decoded are a non-empty user without `:` whose `user:password`, encoded
//! again, is exactly the credentials sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use berth::auth::basic::basic_credentials;
use http::{HeaderMap, HeaderValue, header};

use crate::input;

pub fn run(data: &[u8]) {
    let (selector, rest) = input::selector(data);
    let mut headers = HeaderMap::new();
    let value = if selector & 1 == 0 {
        // The header value as sent.
        rest.to_vec()
    } else {
        // `Basic ` and the rest encoded, as clients write it: the decoded side gets explored.
        format!("Basic {}", STANDARD.encode(rest)).into_bytes()
    };
    let Ok(value) = HeaderValue::from_bytes(&value) else {
        assert!(basic_credentials(&headers).is_none());
        return;
    };
    headers.insert(header::AUTHORIZATION, value.clone());
    if selector & 2 != 0 {
        // A second Authorization header is not looked at.
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Og=="),
        );
    }
    let found = basic_credentials(&headers);
    let Ok(text) = value.to_str() else {
        assert!(found.is_none());
        return;
    };
    let scheme = text.split_once(' ').map(|(s, _)| s);
    assert_eq!(
        found.is_some(),
        scheme.is_some_and(|s| s.eq_ignore_ascii_case("basic")),
        "{text:?}"
    );
    if let Some(Ok((user, password))) = found {
        assert!(!user.is_empty() && !user.contains(':'));
        let sent = text.split_once(' ').unwrap().1.trim();
        assert_eq!(STANDARD.encode(format!("{user}:{password}")), sent);
        if selector & 1 == 1 {
            assert_eq!(format!("{user}:{password}").as_bytes(), rest);
        }
    }
}
