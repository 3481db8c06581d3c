//! htpasswd files (`htpasswd::parse`, what `Htpasswd::load` reads): never panics; accepts
//! exactly files whose entries are `user:hash` with a non-empty user and a bcrypt hash, each
//! user getting the hash of its last line, and a refusal names a line that is wrong.

use std::collections::HashMap;
use std::path::Path;

use berth::auth::htpasswd::{HtpasswdError, parse};

/// A line's entry: none (blank, comment), a user and hash, or a wrong line.
type Entry<'a> = Option<Result<(&'a str, &'a str), ()>>;

fn entry(line: &str) -> Entry<'_> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    Some(match line.split_once(':') {
        Some((user, hash))
            if !user.is_empty() && ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) =>
        {
            Ok((user, hash))
        }
        _ => Err(()),
    })
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(Path::new("users"), text);
    let entries: Vec<(usize, Entry)> = text.lines().map(entry).enumerate().collect();
    match parsed {
        Ok(users) => {
            let mut expected = HashMap::new();
            for (_, e) in &entries {
                match e {
                    Some(Ok((user, hash))) => {
                        expected.insert(user.to_string(), hash.to_string());
                    }
                    Some(Err(())) => panic!("accepted a file with a wrong line: {text:?}"),
                    None => {}
                }
            }
            assert_eq!(users, expected);
            for user in users.keys() {
                assert!(!user.is_empty() && !user.contains(':'));
            }
        }
        Err(HtpasswdError::Invalid { line, message, .. }) => {
            assert!(!message.is_empty());
            // The first wrong line is the one named.
            let first_wrong = entries
                .iter()
                .find(|(_, e)| matches!(e, Some(Err(()))))
                .map(|(i, _)| i + 1);
            assert_eq!(Some(line), first_wrong, "{text:?}");
        }
        Err(e @ HtpasswdError::Read { .. }) => panic!("parsing text cannot fail to read: {e}"),
    }
}
