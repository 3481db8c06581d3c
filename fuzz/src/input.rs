//! Cutting one fuzz input into the several values a target needs.

/// Splits `data` into at most `n` parts at NUL bytes (the last part keeps any further NULs).
/// Text formats rarely contain NUL, so seeds stay readable: `part1\0part2\0part3`.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0).collect()
}

/// The part `i` of `parts` as UTF-8 text (empty when missing), or `None` if not UTF-8.
pub fn text<'a>(parts: &[&'a [u8]], i: usize) -> Option<&'a str> {
    std::str::from_utf8(parts.get(i).copied().unwrap_or(b"")).ok()
}

/// The first byte of `data` as a selector, and the rest.
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, data),
    }
}
