//! Range requests answered from a stored response (RFC 9110 section 14):
//! one `bytes=` range of a complete stored 200 becomes a 206 with
//! `Content-Range`, a range that starts past the end a 416, and `If-Range`
//! decides whether the range applies at all. Several ranges get the whole
//! 200 (a server may ignore `Range`), as does anything malformed.
//!
//! Also the one reader of `Content-Range`, for a 206 from the origin that
//! covers the whole representation (stored as the 200 it equals).

use std::time::SystemTime;

use httparse::Header;

use super::conditional::strong_match;
use crate::http::headers::{name_is, trim};

/// One byte range as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `first-last` (inclusive) or `first-` (`last` is `None`).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// What the request's `If-Range` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfRange {
    Etag(Vec<u8>),
    Date(SystemTime),
    /// Present but neither: the range never applies.
    Invalid,
}

/// A request's single byte range and its `If-Range`, copied from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub spec: Spec,
    pub if_range: Option<IfRange>,
}

/// How a stored response answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Part {
    /// The whole response, with its own status.
    #[default]
    Whole,
    /// 206 with these bytes (inclusive) of `len`.
    Bytes { first: u64, last: u64 },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

impl RangeRequest {
    /// The single byte range a GET asks for, if any. Several ranges, other
    /// units or a malformed field are `None`: the whole response is sent.
    pub fn from_headers(headers: &[Header<'_>]) -> Option<RangeRequest> {
        let mut ranges = headers.iter().filter(|h| name_is(h.name, "range"));
        let range = ranges.next()?;
        if ranges.next().is_some() {
            return None;
        }
        let spec = parse_spec(range.value)?;
        let if_range = headers
            .iter()
            .find(|h| name_is(h.name, "if-range"))
            .map(|h| {
                let v = trim(h.value);
                if v.starts_with(b"\"") || v.starts_with(b"W/") {
                    IfRange::Etag(v.to_vec())
                } else {
                    crate::http::date::parse(v).map_or(IfRange::Invalid, IfRange::Date)
                }
            });
        Some(RangeRequest { spec, if_range })
    }

    /// The part of a stored response of `status` and `len` bytes this
    /// request gets, given the stored validators.
    pub fn resolve(
        &self,
        status: u16,
        len: u64,
        etag: Option<&[u8]>,
        last_modified: Option<SystemTime>,
    ) -> Part {
        if status != 200 {
            return Part::Whole;
        }
        // RFC 9110 section 13.1.5: a strong validator that matches, or the range is ignored.
        let applies = match &self.if_range {
            None => true,
            Some(IfRange::Etag(tag)) => etag.is_some_and(|e| strong_match(tag, e)),
            Some(IfRange::Date(date)) => last_modified == Some(*date),
            Some(IfRange::Invalid) => false,
        };
        if !applies {
            return Part::Whole;
        }
        match self.spec {
            Spec::From { first, .. } if first >= len => Part::Unsatisfiable,
            Spec::From { first, last } => Part::Bytes {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            },
            Spec::Suffix(0) => Part::Unsatisfiable,
            Spec::Suffix(_) if len == 0 => Part::Unsatisfiable,
            Spec::Suffix(n) => Part::Bytes {
                first: len - n.min(len),
                last: len - 1,
            },
        }
    }
}

/// `bytes=first-last`, `bytes=first-` or `bytes=-suffix`, exactly one.
fn parse_spec(value: &[u8]) -> Option<Spec> {
    let v = trim(value);
    let (unit, set) = v.split_at_checked(6)?;
    if !unit.eq_ignore_ascii_case(b"bytes=") {
        return None;
    }
    let set = trim(set);
    if set.contains(&b',') {
        return None;
    }
    let dash = set.iter().position(|&b| b == b'-')?;
    let (first, last) = (trim(&set[..dash]), trim(&set[dash + 1..]));
    match (number(first), number(last)) {
        (Some(first), Some(last)) if first <= last => Some(Spec::From {
            first,
            last: Some(last),
        }),
        (Some(first), None) if last.is_empty() => Some(Spec::From { first, last: None }),
        (None, Some(n)) if first.is_empty() => Some(Spec::Suffix(n)),
        _ => None,
    }
}

fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The one `Content-Range: bytes first-last/complete` of a 206 whose body
/// is `length` bytes, with a known complete length; `None` for anything
/// else (several fields, `*`, a span that does not match the body).
pub fn content_range(headers: &[Header<'_>], length: u64) -> Option<(u64, u64, u64)> {
    let mut ranges = headers.iter().filter(|h| name_is(h.name, "content-range"));
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return None;
    };
    let v = trim(range.value);
    let (unit, rest) = v.split_at_checked(6)?;
    if !unit.eq_ignore_ascii_case(b"bytes ") {
        return None;
    }
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (span, complete) = (&rest[..slash], &rest[slash + 1..]);
    let dash = span.iter().position(|&b| b == b'-')?;
    let (first, last, complete) = (
        number(&span[..dash])?,
        number(&span[dash + 1..])?,
        number(complete)?,
    );
    (first <= last && last < complete && last - first + 1 == length)
        .then_some((first, last, complete))
}

/// A `Content-Range: bytes 0-(N-1)/N` that covers a whole representation
/// of `length` bytes: such a 206 is the complete response.
pub fn covers_whole(headers: &[Header<'_>], length: u64) -> bool {
    content_range(headers, length)
        .is_some_and(|(first, _, complete)| first == 0 && complete == length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: &str, if_range: Option<&str>) -> Option<RangeRequest> {
        let mut hs = vec![Header {
            name: "Range",
            value: range.as_bytes(),
        }];
        if let Some(v) = if_range {
            hs.push(Header {
                name: "If-Range",
                value: v.as_bytes(),
            });
        }
        RangeRequest::from_headers(&hs)
    }

    fn part(range: &str, len: u64) -> Part {
        req(range, None).map_or(Part::Whole, |r| r.resolve(200, len, None, None))
    }

    #[test]
    fn a_single_range_is_resolved_against_the_length() {
        assert_eq!(part("bytes=0-4", 10), Part::Bytes { first: 0, last: 4 });
        assert_eq!(part("bytes=5-", 10), Part::Bytes { first: 5, last: 9 });
        assert_eq!(part("bytes=-3", 10), Part::Bytes { first: 7, last: 9 });
        assert_eq!(part("bytes=-30", 10), Part::Bytes { first: 0, last: 9 });
        assert_eq!(part("bytes=8-100", 10), Part::Bytes { first: 8, last: 9 });
        assert_eq!(
            part("BYTES = 1-2", 10),
            Part::Whole,
            "no space inside the unit"
        );
        assert_eq!(part("Bytes=1-2", 10), Part::Bytes { first: 1, last: 2 });
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable() {
        assert_eq!(part("bytes=10-", 10), Part::Unsatisfiable);
        assert_eq!(part("bytes=20-30", 10), Part::Unsatisfiable);
        assert_eq!(part("bytes=-0", 10), Part::Unsatisfiable);
        assert_eq!(part("bytes=-5", 0), Part::Unsatisfiable);
    }

    #[test]
    fn malformed_or_multiple_ranges_get_the_whole_response() {
        for r in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(part(r, 10), Part::Whole, "{r}");
        }
    }

    #[test]
    fn only_a_stored_200_is_ranged() {
        let r = req("bytes=0-1", None).unwrap();
        assert_eq!(r.resolve(404, 10, None, None), Part::Whole);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let lm = crate::http::date::parse(b"Sun, 06 Nov 1994 08:49:37 GMT");
        let etag = Some(&b"\"v1\""[..]);
        let applies = |if_range: &str| {
            req("bytes=0-1", Some(if_range))
                .unwrap()
                .resolve(200, 10, etag, lm)
                != Part::Whole
        };
        assert!(applies("\"v1\""));
        assert!(!applies("\"v2\""));
        assert!(!applies("W/\"v1\""), "a weak tag never matches");
        assert!(applies("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!applies("Sun, 06 Nov 1994 08:49:38 GMT"));
        assert!(!applies("yesterday"));
    }

    #[test]
    fn a_206_covering_everything_is_recognised() {
        let h = |v: &'static str| {
            [Header {
                name: "Content-Range",
                value: v.as_bytes(),
            }]
        };
        assert!(covers_whole(&h("bytes 0-9/10"), 10));
        assert!(!covers_whole(&h("bytes 0-4/10"), 5));
        assert!(!covers_whole(&h("bytes 0-9/*"), 10));
        assert!(!covers_whole(&h("bytes 1-9/10"), 9));
        assert!(!covers_whole(&[], 10));
        assert_eq!(content_range(&h("bytes 2-4/10"), 3), Some((2, 4, 10)));
        assert_eq!(
            content_range(&h("bytes 2-4/10"), 4),
            None,
            "the body is the span"
        );
        assert_eq!(content_range(&h("bytes 2-12/10"), 11), None);
        assert_eq!(content_range(&h("bytes 2-4/*"), 3), None);
    }
}
