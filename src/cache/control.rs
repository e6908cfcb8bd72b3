//! `Cache-Control` parsing (RFC 9111 section 5.2) for responses and
//! requests, plus `Pragma: no-cache` (section 5.4).
//!
//! Directive names are case-insensitive; arguments may be tokens or quoted
//! strings (recipients must accept both). Unknown directives are ignored.
//! Where a directive repeats, the first occurrence counts; a `delta-seconds`
//! that is not an integer is recorded as invalid, which makes the response
//! stale (section 4.2.1 encourages that). Values beyond 2^31 are clamped to
//! 2^31 (section 1.2.2).

use crate::http::headers::trim;

/// The largest delta-seconds a cache must represent (RFC 9111 section 1.2.2).
pub const DELTA_MAX: u64 = 1 << 31;

/// A parsed `delta-seconds` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    Seconds(u64),
    /// Present but not a non-negative integer.
    Invalid,
}

impl Delta {
    fn parse(arg: Option<&[u8]>) -> Delta {
        let Some(arg) = arg else {
            return Delta::Invalid;
        };
        if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
            return Delta::Invalid;
        }
        let mut n: u64 = 0;
        for &b in arg {
            n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
            if n > DELTA_MAX {
                return Delta::Seconds(DELTA_MAX);
            }
        }
        Delta::Seconds(n)
    }

    /// Seconds, with an invalid value counting as zero.
    pub fn or_zero(self) -> u64 {
        match self {
            Delta::Seconds(n) => n,
            Delta::Invalid => 0,
        }
    }
}

/// `no-cache` or `private`: absent, unqualified, or naming header fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FieldScope {
    #[default]
    Absent,
    /// Applies to the whole response.
    All,
    /// Applies only to these (lower-case) header fields.
    Fields(Vec<String>),
}

impl FieldScope {
    fn from_arg(arg: Option<&[u8]>) -> FieldScope {
        match arg {
            None => FieldScope::All,
            Some(list) => {
                let fields: Vec<String> = list
                    .split(|&b| b == b',')
                    .map(trim)
                    .filter(|f| !f.is_empty())
                    .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
                    .collect();
                if fields.is_empty() {
                    FieldScope::All
                } else {
                    FieldScope::Fields(fields)
                }
            }
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, FieldScope::Absent)
    }
}

/// Directives of a response's `Cache-Control`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<Delta>,
    pub s_maxage: Option<Delta>,
    pub no_store: bool,
    pub no_cache: FieldScope,
    pub private: FieldScope,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<Delta>,
    pub stale_if_error: Option<Delta>,
}

/// Directives of a request's `Cache-Control` (and `Pragma`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub max_age: Option<Delta>,
    /// `Some(None)`: any staleness is acceptable; `Some(Some(n))`: up to n seconds.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<Delta>,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub stale_if_error: Option<Delta>,
}

/// Splits the directives of one or more `Cache-Control` values into
/// `(lower-case name, unquoted argument)` pairs.
fn directives<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for value in values {
        let mut rest = value;
        while !rest.is_empty() {
            // One directive: up to a comma outside quotes.
            let mut i = 0;
            let mut in_quotes = false;
            while i < rest.len() {
                match rest[i] {
                    b'"' => in_quotes = !in_quotes,
                    b'\\' if in_quotes => i += 1,
                    b',' if !in_quotes => break,
                    _ => {}
                }
                i += 1;
            }
            let item = trim(&rest[..i.min(rest.len())]);
            rest = if i < rest.len() { &rest[i + 1..] } else { &[] };
            if item.is_empty() {
                continue;
            }
            let (name, arg) = match item.iter().position(|&b| b == b'=') {
                Some(eq) => (trim(&item[..eq]), Some(unquote(trim(&item[eq + 1..])))),
                None => (item, None),
            };
            out.push((String::from_utf8_lossy(name).to_ascii_lowercase(), arg));
        }
    }
    out
}

fn unquote(arg: &[u8]) -> Vec<u8> {
    if arg.len() >= 2 && arg[0] == b'"' && arg[arg.len() - 1] == b'"' {
        let inner = &arg[1..arg.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            if escaped || b != b'\\' {
                out.push(b);
                escaped = false;
            } else {
                escaped = true;
            }
        }
        out
    } else {
        arg.to_vec()
    }
}

impl ResponseDirectives {
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> ResponseDirectives {
        let mut d = ResponseDirectives::default();
        for (name, arg) in directives(values) {
            let arg = arg.as_deref();
            match name.as_str() {
                "max-age" => {
                    d.max_age.get_or_insert(Delta::parse(arg));
                }
                "s-maxage" => {
                    d.s_maxage.get_or_insert(Delta::parse(arg));
                }
                "no-store" => d.no_store = true,
                "no-cache" => {
                    d.no_cache =
                        merge_scope(std::mem::take(&mut d.no_cache), FieldScope::from_arg(arg))
                }
                "private" => {
                    d.private =
                        merge_scope(std::mem::take(&mut d.private), FieldScope::from_arg(arg))
                }
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" => {
                    d.stale_while_revalidate.get_or_insert(Delta::parse(arg));
                }
                "stale-if-error" => {
                    d.stale_if_error.get_or_insert(Delta::parse(arg));
                }
                _ => {}
            }
        }
        d
    }
}

/// A targeted cache-control field (RFC 9213: `CDN-Cache-Control` and the
/// like), whose lines are joined as one Structured Fields dictionary
/// (RFC 8941 section 3.2). `None` when it is empty or not a valid
/// dictionary: the cache then falls back to the next targeted field, and
/// finally to `Cache-Control` and `Expires`.
pub fn parse_targeted<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<ResponseDirectives> {
    let mut joined = Vec::new();
    for v in values {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(v);
    }
    let members = sf_dictionary(&joined)?;
    // `directive=?0` is a false boolean: the directive is not there.
    let kept: Vec<&[u8]> = members
        .into_iter()
        .filter(|m| !m.ends_with(b"=?0"))
        .collect();
    Some(ResponseDirectives::parse(kept.into_iter()))
}

/// The members of a Structured Fields dictionary, each trimmed, or `None`
/// if the value is empty or not a dictionary.
fn sf_dictionary(v: &[u8]) -> Option<Vec<&[u8]>> {
    let mut members = Vec::new();
    let mut rest = v;
    loop {
        rest = trim(rest);
        if rest.is_empty() {
            // Empty, or a trailing comma.
            return None;
        }
        let end = sf_member(rest)?;
        members.push(&rest[..end]);
        rest = trim(&rest[end..]);
        match rest.first() {
            None => return Some(members),
            Some(b',') => rest = &rest[1..],
            Some(_) => return None,
        }
    }
}

/// Length of one dictionary member (`key[=item](;param)*`) at the start of `v`.
fn sf_member(v: &[u8]) -> Option<usize> {
    let mut i = sf_key(v)?;
    if v.get(i) == Some(&b'=') {
        i += 1 + sf_bare_item(&v[i + 1..])?;
    }
    // Parameters: `;key[=item]`, with optional spaces before the key.
    while v.get(i) == Some(&b';') {
        i += 1;
        while v.get(i) == Some(&b' ') {
            i += 1;
        }
        i += sf_key(&v[i..])?;
        if v.get(i) == Some(&b'=') {
            i += 1 + sf_bare_item(&v[i + 1..])?;
        }
    }
    Some(i)
}

/// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
fn sf_key(v: &[u8]) -> Option<usize> {
    let first = *v.first()?;
    if !(first.is_ascii_lowercase() || first == b'*') {
        return None;
    }
    Some(
        1 + v[1..]
            .iter()
            .take_while(|&&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
            .count(),
    )
}

/// An integer, decimal, string, token, byte sequence or boolean.
fn sf_bare_item(v: &[u8]) -> Option<usize> {
    let first = *v.first()?;
    match first {
        b'-' | b'0'..=b'9' => {
            let sign = usize::from(first == b'-');
            let int = v[sign..].iter().take_while(|b| b.is_ascii_digit()).count();
            if int == 0 || int > 15 {
                return None;
            }
            let mut i = sign + int;
            if v.get(i) == Some(&b'.') {
                let frac = v[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                if frac == 0 || frac > 3 || int > 12 {
                    return None;
                }
                i += 1 + frac;
            }
            Some(i)
        }
        b'"' => {
            let mut i = 1;
            loop {
                match *v.get(i)? {
                    b'\\' => {
                        if !matches!(v.get(i + 1), Some(b'"' | b'\\')) {
                            return None;
                        }
                        i += 2;
                    }
                    b'"' => return Some(i + 1),
                    0x20..=0x7e => i += 1,
                    _ => return None,
                }
            }
        }
        b'?' => matches!(v.get(1), Some(b'0' | b'1')).then_some(2),
        b':' => {
            let body = v[1..]
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                .count();
            (v.get(1 + body) == Some(&b':')).then_some(body + 2)
        }
        b if b.is_ascii_alphabetic() || b == b'*' => Some(
            1 + v[1..]
                .iter()
                .take_while(|&&b| crate::http::headers::is_tchar(b) || b == b':' || b == b'/')
                .count(),
        ),
        _ => None,
    }
}

/// The most restrictive of two occurrences of `no-cache` / `private`.
fn merge_scope(a: FieldScope, b: FieldScope) -> FieldScope {
    match (a, b) {
        (FieldScope::All, _) | (_, FieldScope::All) => FieldScope::All,
        (FieldScope::Absent, x) | (x, FieldScope::Absent) => x,
        (FieldScope::Fields(mut x), FieldScope::Fields(y)) => {
            x.extend(y);
            FieldScope::Fields(x)
        }
    }
}

impl RequestDirectives {
    /// `cache_control`: the request's Cache-Control values; `pragma`: its
    /// Pragma values, which count only when there is no Cache-Control.
    pub fn parse<'a>(
        cache_control: impl Iterator<Item = &'a [u8]>,
        pragma: impl Iterator<Item = &'a [u8]>,
    ) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        let mut any = false;
        for (name, arg) in directives(cache_control) {
            any = true;
            let arg = arg.as_deref();
            match name.as_str() {
                "max-age" => {
                    d.max_age.get_or_insert(Delta::parse(arg));
                }
                "max-stale" if d.max_stale.is_none() => {
                    d.max_stale = Some(match arg {
                        None => None,
                        Some(a) => match Delta::parse(Some(a)) {
                            Delta::Seconds(n) => Some(n),
                            // An unparseable max-stale grants nothing.
                            Delta::Invalid => Some(0),
                        },
                    });
                }
                "min-fresh" => {
                    d.min_fresh.get_or_insert(Delta::parse(arg));
                }
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" => {
                    d.stale_if_error.get_or_insert(Delta::parse(arg));
                }
                _ => {}
            }
        }
        if !any {
            for (name, _) in directives(pragma) {
                if name == "no-cache" {
                    d.no_cache = true;
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(v: &str) -> ResponseDirectives {
        ResponseDirectives::parse(std::iter::once(v.as_bytes()))
    }

    fn req(v: &str) -> RequestDirectives {
        RequestDirectives::parse(std::iter::once(v.as_bytes()), std::iter::empty())
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let d = resp("Max-Age=60, PUBLIC");
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert!(d.public);
    }

    #[test]
    fn quoted_arguments_are_accepted() {
        assert_eq!(resp("max-age=\"30\"").max_age, Some(Delta::Seconds(30)));
    }

    #[test]
    fn first_of_repeated_directives_wins() {
        assert_eq!(
            resp("max-age=10, max-age=20").max_age,
            Some(Delta::Seconds(10))
        );
    }

    #[test]
    fn directives_from_several_headers_combine() {
        let d = ResponseDirectives::parse([&b"max-age=5"[..], b"must-revalidate"].into_iter());
        assert_eq!(d.max_age, Some(Delta::Seconds(5)));
        assert!(d.must_revalidate);
    }

    #[test]
    fn non_integer_max_age_is_invalid() {
        assert_eq!(resp("max-age=abc").max_age, Some(Delta::Invalid));
        assert_eq!(resp("max-age=-1").max_age, Some(Delta::Invalid));
        assert_eq!(resp("max-age=1.5").max_age, Some(Delta::Invalid));
        assert_eq!(resp("max-age").max_age, Some(Delta::Invalid));
    }

    #[test]
    fn huge_delta_is_clamped_to_2_pow_31() {
        assert_eq!(
            resp("max-age=99999999999999999999").max_age,
            Some(Delta::Seconds(DELTA_MAX))
        );
    }

    #[test]
    fn unknown_directives_are_ignored() {
        let d = resp("foo, bar=\"x, y\", max-age=7");
        assert_eq!(d.max_age, Some(Delta::Seconds(7)));
    }

    #[test]
    fn no_cache_with_field_names() {
        let d = resp("no-cache=\"Set-Cookie, X-Private\"");
        assert_eq!(
            d.no_cache,
            FieldScope::Fields(vec!["set-cookie".into(), "x-private".into()])
        );
        assert_eq!(resp("no-cache").no_cache, FieldScope::All);
    }

    #[test]
    fn private_with_field_names() {
        assert_eq!(
            resp("private=\"x-user\"").private,
            FieldScope::Fields(vec!["x-user".into()])
        );
        assert_eq!(resp("private").private, FieldScope::All);
    }

    #[test]
    fn unqualified_beats_qualified() {
        assert_eq!(resp("no-cache=\"a\", no-cache").no_cache, FieldScope::All);
    }

    #[test]
    fn stale_extensions_parse() {
        let d = resp("max-age=1, stale-while-revalidate=30, stale-if-error=60");
        assert_eq!(d.stale_while_revalidate, Some(Delta::Seconds(30)));
        assert_eq!(d.stale_if_error, Some(Delta::Seconds(60)));
    }

    fn targeted(v: &str) -> Option<ResponseDirectives> {
        parse_targeted(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn a_targeted_field_is_a_structured_dictionary() {
        let d = targeted("max-age=60, stale-if-error=30").unwrap();
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert_eq!(d.stale_if_error, Some(Delta::Seconds(30)));
        assert!(targeted("no-store").unwrap().no_store);
        assert_eq!(
            targeted("private=\"x-user\"").unwrap().private,
            FieldScope::Fields(vec!["x-user".into()])
        );
        let several = parse_targeted([&b"max-age=5"[..], b"must-revalidate"].into_iter()).unwrap();
        assert!(several.must_revalidate && several.max_age == Some(Delta::Seconds(5)));
    }

    #[test]
    fn an_invalid_or_empty_targeted_field_is_ignored() {
        for bad in [
            "",
            "  ",
            "Max-Age=60",
            "max-age=60,",
            "max-age=\"60",
            "max-age=60 x",
            "=5",
        ] {
            assert_eq!(targeted(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_false_boolean_directive_is_absent() {
        let d = targeted("no-store=?0, max-age=9").unwrap();
        assert!(!d.no_store);
        assert_eq!(d.max_age, Some(Delta::Seconds(9)));
        assert!(targeted("no-store=?1").unwrap().no_store);
    }

    #[test]
    fn request_max_stale_without_value_means_any() {
        assert_eq!(req("max-stale").max_stale, Some(None));
        assert_eq!(req("max-stale=5").max_stale, Some(Some(5)));
    }

    #[test]
    fn request_directives_parse() {
        let d = req("max-age=0, min-fresh=10, no-store, only-if-cached, no-cache");
        assert_eq!(d.max_age, Some(Delta::Seconds(0)));
        assert_eq!(d.min_fresh, Some(Delta::Seconds(10)));
        assert!(d.no_store && d.only_if_cached && d.no_cache);
    }

    #[test]
    fn pragma_no_cache_counts_without_cache_control() {
        let d = RequestDirectives::parse(std::iter::empty(), std::iter::once(&b"no-cache"[..]));
        assert!(d.no_cache);
    }

    #[test]
    fn pragma_is_ignored_when_cache_control_is_present() {
        let d = RequestDirectives::parse(
            std::iter::once(&b"max-age=5"[..]),
            std::iter::once(&b"no-cache"[..]),
        );
        assert!(!d.no_cache);
    }
}
