//! Independent reference implementations the targets compare Berth's parsers against.
//! Written from the documented grammar, deliberately in another style than Berth's code
//! (regular expressions, backtracking), so that a shared mistake is unlikely.

use std::sync::OnceLock;

use regex_lite::Regex;

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("reference regex"))
}

/// The OCI descriptor digest grammar (image spec, descriptor.md), anchored.
pub fn digest_grammar(s: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$").is_match(s)
}

/// The distribution spec's repository name grammar, anchored (length checked separately).
pub fn name_grammar(s: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(
        &RE,
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .is_match(s)
}

/// The distribution spec's tag grammar, anchored.
pub fn tag_grammar(s: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").is_match(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    /// `?`: one byte but `/`.
    One,
    /// `*`: any bytes but `/`.
    Segment,
    /// `**`: any bytes.
    Anything,
}

fn tokens(pattern: &str, user: Option<&str>) -> Vec<Tok> {
    let p = pattern.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        if let Some(user) = user
            && p[i..].starts_with(b"${user}")
        {
            // The caller's name, literally: its `*` and `?` are plain characters.
            out.extend(user.bytes().map(Tok::Byte));
            i += "${user}".len();
        } else if p[i..].starts_with(b"**") {
            out.push(Tok::Anything);
            i += 2;
        } else {
            out.push(match p[i] {
                b'*' => Tok::Segment,
                b'?' => Tok::One,
                b => Tok::Byte(b),
            });
            i += 1;
        }
    }
    out
}

fn backtrack(toks: &[Tok], name: &[u8], memo: &mut Vec<Option<bool>>, width: usize) -> bool {
    let key = toks.len() * width + name.len();
    if let Some(known) = memo[key] {
        return known;
    }
    let result = match toks.split_first() {
        None => name.is_empty(),
        Some((Tok::Byte(b), rest)) => {
            name.first() == Some(b) && backtrack(rest, &name[1..], memo, width)
        }
        Some((Tok::One, rest)) => {
            name.first().is_some_and(|&c| c != b'/') && backtrack(rest, &name[1..], memo, width)
        }
        // A star matches nothing more, or one more byte and is tried again: O(1) per state,
        // so thousands of stars against a long name stay fast.
        Some((Tok::Segment, rest)) => {
            backtrack(rest, name, memo, width)
                || (name.first().is_some_and(|&c| c != b'/')
                    && backtrack(toks, &name[1..], memo, width))
        }
        Some((Tok::Anything, rest)) => {
            backtrack(rest, name, memo, width)
                || (!name.is_empty() && backtrack(toks, &name[1..], memo, width))
        }
    };
    memo[key] = Some(result);
    result
}

/// Whether `name` matches the glob `pattern` (`**` anything, `*` anything but `/`, `?` one
/// byte but `/`), with `${user}` standing for `user` literally when `user` is given.
pub fn glob(pattern: &str, user: Option<&str>, name: &str) -> bool {
    let toks = tokens(pattern, user);
    let width = name.len() + 1;
    let mut memo = vec![None; (toks.len() + 1) * width];
    backtrack(&toks, name.as_bytes(), &mut memo, width)
}

/// A decimal number of any length, saturated to `u64::MAX`; `None` unless all ASCII digits.
pub fn saturating_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}
