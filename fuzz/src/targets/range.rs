//! `Range` (`parse_range`) and upload `Content-Range` (`parse_content_range`): a range served
//! is never outside `[0, size)`, and `parse_range` agrees with RFC 9110's byte ranges as Berth
//! documents them (one range honoured; other units and several ranges get the whole
//! resource; malformed or unsatisfiable byte ranges get 416).

use berth::http::headers::{ChunkRange, RangeRequest, parse_content_range, parse_range};
use berth::storage::ByteRange;

use crate::{input, reference};

/// What RFC 9110 §14 says a single `Range` value asks of `size` bytes, with numbers of any
/// length (a last position past the end means "to the end", a suffix longer than the
/// resource means all of it).
fn expected(value: &str, size: u64) -> RangeRequest {
    use RangeRequest::{Partial, Unsatisfiable, Whole};
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return Unsatisfiable;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Whole;
    }
    if set.contains(',') {
        return Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = |start: u64, end: u64| Partial(ByteRange { start, end });
    match (
        reference::saturating_number(first),
        reference::saturating_number(last),
    ) {
        (Some(f), None) if last.is_empty() && f < size => range(f, size),
        (Some(f), Some(l)) if l >= f && f < size => range(f, l.min(size - 1) + 1),
        (None, Some(n)) if first.is_empty() && n > 0 && size > 0 => range(size - n.min(size), size),
        _ => Unsatisfiable,
    }
}

fn check_content_range(value: &str) {
    let Ok(range) = parse_content_range(value) else {
        return;
    };
    assert!(range.first <= range.last, "{value:?}: {range:?}");
    assert_eq!(range.byte_count(), range.last - range.first + 1);
    let ChunkRange { first, last } = range;
    for canonical in [
        format!("{first}-{last}"),
        format!("bytes {first}-{last}/*"),
        format!("bytes={first}-{last}"),
    ] {
        assert_eq!(
            parse_content_range(&canonical).ok(),
            Some(range),
            "{canonical:?}"
        );
    }
}

pub fn run(data: &[u8]) {
    let parts = input::split(data, 3);
    let size = input::text(&parts, 0)
        .and_then(reference::saturating_number)
        .unwrap_or(100);
    let Some(value) = input::text(&parts, 1) else {
        return;
    };
    let request = parse_range(Some(value), size);
    if let RangeRequest::Partial(r) = request {
        assert!(
            r.start < r.end && r.end <= size,
            "{value:?} of {size}: {r:?}"
        );
    }
    assert_eq!(request, expected(value, size), "{value:?} of {size} bytes");
    assert_eq!(parse_range(None, size), RangeRequest::Whole);

    check_content_range(value);
    if let Some(content_range) = input::text(&parts, 2) {
        check_content_range(content_range);
    }
}
