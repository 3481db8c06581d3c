//! `WWW-Authenticate` challenges an upstream registry answers with (RFC 7235 with the Docker
//! token spec's parameters): which scheme it wants, and for Bearer where to get a token.

/// What an upstream asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic credentials on every request.
    Basic,
    /// A token from `realm`, for `service` and `scope` (Docker token authentication).
    Bearer {
        /// The token endpoint's URL.
        realm: String,
        /// The `service` parameter to send to it.
        service: Option<String>,
        /// The scope the refused request needs, when the upstream named it.
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` value that Berth can answer; `None`
/// when it names no usable scheme (or a Bearer challenge without a realm).
pub fn parse(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parameters(rest);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm").filter(|r| !r.is_empty())?;
    Some(Challenge::Bearer {
        realm,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_owned();
        if key.is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_as_registries_send_them() {
        // Docker Hub's answer to an anonymous manifest GET.
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        assert_eq!(
            parse(hub),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        // Scopes with several actions hold commas inside the quotes.
        let push = r#"bearer realm="https://r/token", scope="repository:a/b:pull,push""#;
        let Some(Challenge::Bearer { scope, service, .. }) = parse(push) else {
            panic!("a bearer challenge");
        };
        assert_eq!(scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(service, None);
        assert_eq!(
            parse(r#"Bearer realm=https://r/token,service=reg"#),
            Some(Challenge::Bearer {
                realm: "https://r/token".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn basic_and_unusable_challenges() {
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse("basic"), Some(Challenge::Basic));
        assert_eq!(parse(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(parse(r#"Negotiate abc"#), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(r#"Bearer realm=""#), None);
    }
}
