//! `WWW-Authenticate` challenges from upstream registries (`upstream::challenge::parse`): never
//! panics; Basic is recognised by its scheme alone, a Bearer challenge always has a realm, and
//! a Bearer challenge written from parameters (quoted, with escapes) parses back to them.

use berth::upstream::challenge::{Challenge, parse};

use crate::input;

/// `value` as a quoted string: backslash before `"` and `\`.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub fn run(data: &[u8]) {
    let (selector, rest) = input::selector(data);
    if selector & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let scheme = text.trim().split(char::is_whitespace).next().unwrap_or("");
        match parse(text) {
            Some(Challenge::Basic) => assert!(scheme.eq_ignore_ascii_case("basic"), "{text:?}"),
            Some(Challenge::Bearer { realm, .. }) => {
                assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
                assert!(!realm.is_empty());
            }
            None => assert!(!scheme.eq_ignore_ascii_case("basic"), "{text:?}"),
        }
        return;
    }
    // Parameters written as a registry writes them, in any order, must come back.
    let parts = input::split(rest, 3);
    let (Some(realm), Some(service), Some(scope)) = (
        input::text(&parts, 0),
        input::text(&parts, 1),
        input::text(&parts, 2),
    ) else {
        return;
    };
    if realm.is_empty() {
        return;
    }
    let mut params = vec![format!("realm={}", quoted(realm))];
    if selector & 2 != 0 {
        params.push(format!("service={}", quoted(service)));
    }
    if selector & 4 != 0 {
        params.push(format!("scope={}", quoted(scope)));
    }
    if selector & 8 != 0 {
        params.reverse();
    }
    let separator = if selector & 16 != 0 { ", " } else { "," };
    let scheme = if selector & 32 != 0 { "bearer" } else { "Bearer" };
    let text = format!("{scheme} {}", params.join(separator));
    assert_eq!(
        parse(&text),
        Some(Challenge::Bearer {
            realm: realm.to_owned(),
            service: (selector & 2 != 0).then(|| service.to_owned()),
            scope: (selector & 4 != 0).then(|| scope.to_owned()),
        }),
        "{text:?}"
    );
}
