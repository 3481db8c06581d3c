//! Parsing of the request headers and query parameters the API depends on.

use crate::error::ErrorCode;
use crate::http::error::ApiError;
use crate::storage::ByteRange;

/// A parsed `Content-Range` of an upload chunk: the first and last byte, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    /// First byte.
    pub first: u64,
    /// Last byte.
    pub last: u64,
}

impl ChunkRange {
    /// Number of bytes (never zero: both ends are inclusive).
    pub fn byte_count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Parses an upload `Content-Range`: `<first>-<last>` as the spec writes it, also accepting the
/// RFC 9110 forms `bytes <first>-<last>/<total>` and `bytes=<first>-<last>` that some clients send.
pub fn parse_content_range(value: &str) -> Result<ChunkRange, ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {value:?} is invalid: expected <first>-<last>, e.g. 0-1023"),
        )
    };
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split_once('/').map_or(v, |(range, _total)| range);
    let (first, last) = v.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| -> Result<u64, ApiError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 19 {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (first, last) = (number(first)?, number(last)?);
    if last < first {
        return Err(ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {value:?} ends before it starts"),
        ));
    }
    Ok(ChunkRange { first, last })
}

/// What a `Range` request header asks of a resource of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer the whole resource.
    Whole,
    /// One satisfiable range.
    Partial(ByteRange),
    /// Unsatisfiable or malformed byte range: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 §14): one byte range is honoured; other units and
/// multiple ranges get the whole resource; malformed or unsatisfiable byte ranges get 416.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(value) = value else {
        return RangeRequest::Whole;
    };
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return RangeRequest::Unsatisfiable;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Whole;
    }
    if set.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    // Positions past u64::MAX are past the end of anything: a last position that large means
    // "to the end" and a suffix that large "all of it" (RFC 9110 §14.1.1), not a malformed range.
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), last.is_empty()) {
        (false, true) => number(first).map(|f| (f, size.saturating_sub(1))),
        (false, false) => match (number(first), number(last)) {
            (Some(f), Some(l)) if l >= f => Some((f, l.min(size.saturating_sub(1)))),
            _ => None,
        },
        (true, false) => {
            number(last).map(|suffix| (size.saturating_sub(suffix), size.saturating_sub(1)))
        }
        (true, true) => None,
    };
    match range {
        Some((first, last)) if size > 0 && first < size && (last >= first) => {
            RangeRequest::Partial(ByteRange {
                start: first,
                end: last + 1,
            })
        }
        _ => RangeRequest::Unsatisfiable,
    }
}

/// Query parameters as `(key, value)` pairs, percent-decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The first value of a query parameter.
pub fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("0-99").unwrap(),
            ChunkRange { first: 0, last: 99 }
        );
        assert_eq!(parse_content_range("bytes 5-9/*").unwrap().byte_count(), 5);
        assert_eq!(parse_content_range("bytes=5-5").unwrap().byte_count(), 1);
        for bad in [
            "",
            "-",
            "5",
            "a-b",
            "5-",
            "-5",
            "9-5",
            "1-2-3",
            "0x1-2",
            "99999999999999999999-1",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges() {
        let p = |s: &str| parse_range(Some(s), 100);
        assert_eq!(
            p("bytes=0-9"),
            RangeRequest::Partial(ByteRange { start: 0, end: 10 })
        );
        assert_eq!(
            p("bytes=90-"),
            RangeRequest::Partial(ByteRange {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            p("bytes=-10"),
            RangeRequest::Partial(ByteRange {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            p("bytes=50-500"),
            RangeRequest::Partial(ByteRange {
                start: 50,
                end: 100
            })
        );
        assert_eq!(p("bytes=100-"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=9-0"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=x-1"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-"), RangeRequest::Unsatisfiable);
        assert_eq!(p("garbage"), RangeRequest::Unsatisfiable);
        assert_eq!(p("items=0-1"), RangeRequest::Whole);
        assert_eq!(p("bytes=0-1,5-6"), RangeRequest::Whole);
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        assert_eq!(
            parse_range(Some("bytes=0-0"), 0),
            RangeRequest::Unsatisfiable
        );
    }

    /// Found by the `range` fuzz target (fuzz/; input `corpus/range/regression-range-past-u64`):
    /// positions past u64::MAX made a valid range unsatisfiable (416) instead of meaning "to the
    /// end" or "all of it".
    #[test]
    fn range_positions_past_u64_mean_the_end() {
        let whole = RangeRequest::Partial(ByteRange { start: 0, end: 100 });
        let p = |s: &str| parse_range(Some(s), 100);
        assert_eq!(p("bytes=0-18446744073709551616"), whole);
        assert_eq!(p("bytes=0-99999999999999999999999999"), whole);
        assert_eq!(p("bytes=-99999999999999999999999999"), whole);
        assert_eq!(
            p("bytes=90-18446744073709555615"),
            RangeRequest::Partial(ByteRange {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            p("bytes=99999999999999999999-"),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            p("bytes=99999999999999999999-99999999999999999999"),
            RangeRequest::Unsatisfiable
        );
    }
}
