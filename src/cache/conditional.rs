//! Conditional requests answered from a stored response (RFC 9110 section 13,
//! RFC 9111 section 4.3.2): `If-None-Match` (weak comparison, `*`) and, only
//! when it is absent, `If-Modified-Since`.

use std::time::SystemTime;

use httparse::Header;

use crate::http::headers::{list_items, name_is};

/// Weak comparison (RFC 9110 section 8.8.3.2): opaque tags equal, `W/` ignored.
pub fn weak_match(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    strip(a) == strip(b)
}

/// Strong comparison: both strong and byte-identical.
pub fn strong_match(a: &[u8], b: &[u8]) -> bool {
    !a.starts_with(b"W/") && a == b
}

/// The request's validators, copied out of its head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-None-Match` entity tags; `Some(vec![])` never happens, `*` is kept as `*`.
    pub if_none_match: Option<Vec<Vec<u8>>>,
    pub if_modified_since: Option<SystemTime>,
    /// `If-Match` or `If-Unmodified-Since`: the cache does not evaluate these
    /// (`If-Range` is part of a range request, see `super::range`).
    pub unsupported: bool,
}

impl Preconditions {
    pub fn from_headers(headers: &[Header<'_>]) -> Preconditions {
        let mut p = Preconditions::default();
        for h in headers {
            if name_is(h.name, "if-none-match") {
                let tags = p.if_none_match.get_or_insert_with(Vec::new);
                tags.extend(list_items(h.value).map(<[u8]>::to_vec));
            } else if name_is(h.name, "if-modified-since") {
                p.if_modified_since = crate::http::date::parse(h.value);
            } else if name_is(h.name, "if-match") || name_is(h.name, "if-unmodified-since") {
                p.unsupported = true;
            }
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }

    /// True when a GET/HEAD with these preconditions gets 304 from a stored
    /// response with these validators.
    pub fn not_modified(
        &self,
        etag: Option<&[u8]>,
        last_modified: Option<SystemTime>,
        date: Option<SystemTime>,
    ) -> bool {
        if let Some(tags) = &self.if_none_match {
            // If-None-Match takes precedence; If-Modified-Since is then ignored.
            return tags.iter().any(|t| t == b"*")
                || etag.is_some_and(|e| tags.iter().any(|t| weak_match(t, e)));
        }
        match (self.if_modified_since, last_modified.or(date)) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pre(headers: &[(&'static str, &'static [u8])]) -> Preconditions {
        let hs: Vec<Header<'_>> = headers
            .iter()
            .map(|&(name, value)| Header { name, value })
            .collect();
        Preconditions::from_headers(&hs)
    }

    #[test]
    fn weak_comparison_ignores_the_weak_prefix() {
        assert!(weak_match(b"W/\"a\"", b"\"a\""));
        assert!(!weak_match(b"\"a\"", b"\"b\""));
    }

    #[test]
    fn strong_comparison_needs_two_strong_tags() {
        assert!(strong_match(b"\"a\"", b"\"a\""));
        assert!(!strong_match(b"W/\"a\"", b"W/\"a\""));
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(pre(&[("If-None-Match", b"W/\"v1\", \"v2\"")]).not_modified(
            Some(b"\"v1\""),
            None,
            None
        ));
        assert!(!pre(&[("If-None-Match", b"\"v3\"")]).not_modified(Some(b"\"v1\""), None, None));
    }

    #[test]
    fn if_none_match_star_matches_any_stored_response() {
        assert!(pre(&[("If-None-Match", b"*")]).not_modified(None, None, None));
    }

    #[test]
    fn if_modified_since_compares_last_modified() {
        let lm = crate::http::date::parse(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let p = pre(&[("If-Modified-Since", b"Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(p.not_modified(None, Some(lm), None));
        assert!(!p.not_modified(None, Some(lm + Duration::from_secs(1)), None));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let lm = crate::http::date::parse(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let p = pre(&[
            ("If-None-Match", b"\"other\""),
            ("If-Modified-Since", b"Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!p.not_modified(Some(b"\"v1\""), Some(lm), None));
    }

    #[test]
    fn invalid_if_modified_since_is_ignored() {
        assert!(!pre(&[("If-Modified-Since", b"yesterday")]).not_modified(
            None,
            Some(SystemTime::UNIX_EPOCH),
            None
        ));
    }

    #[test]
    fn if_match_is_not_evaluated_by_the_cache() {
        assert!(pre(&[("If-Match", b"\"a\"")]).unsupported);
    }
}
