//! The one canonical form of a request's host and path. Routing, the cache
//! key, purges and the request sent upstream all use it, so no encoding can
//! make a route see one path while the origin sees another.
//!
//! Host (`normalize_authority`): lower case, a trailing dot dropped, the
//! default port (80) dropped, any other port in plain decimal.
//!
//! Path (`normalize_target`), in one pass, as RFC 3986 section 6.2.2 and
//! nginx's location matching do:
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
//!   every other `%XX` stays encoded, with upper-case hex digits; a `%` not
//!   followed by two hex digits is refused;
//! - `%00` is refused; `%2F` and `%5C` (and a literal `\`) are refused, or
//!   with [`EscapedSlashes::Keep`] left encoded and never decoded, so they
//!   can never split a segment the route did not see;
//! - repeated slashes are merged (`merge_slashes`, on by default);
//! - a `.` or `..` segment, in any spelling (also with path parameters,
//!   `..;x`), is refused: the gateway never forwards a path whose meaning
//!   depends on how the origin resolves it.
//!
//! - a byte a URI may not carry raw (above 0x7F, or one of `"<>^`{|}`) is
//!   percent-encoded, so `/café` and `/caf%C3%A9` are one path, and what
//!   goes upstream is plain ASCII.
//!
//! The query is forwarded as received, except that the same raw bytes are
//! percent-encoded in it too.

use super::HttpError;

/// What to do with encoded slashes and backslashes in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400: an origin that decodes them would see segments routing did not.
    #[default]
    Reject,
    /// Leave `%2F` and `%5C` encoded (hex upper-cased), and never decode
    /// them: for origins that treat them as data, not as separators.
    Keep,
}

/// The path rules of `[paths]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// A byte the request line may carry (the parser let it through) but a
/// URI may not: it is percent-encoded in the canonical form.
fn needs_encoding(b: u8) -> bool {
    b >= 0x80 || matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `path` is already in canonical form (the common case: no
/// `%`, no backslash, no repeated slash, no dot segment), so no copy is
/// made. One pass over the bytes.
fn is_canonical(path: &[u8], rules: PathRules) -> bool {
    // Length of the current segment's name (up to a `;`), how many of its
    // bytes are dots, and whether its parameters began.
    let (mut length, mut dots, mut parameters) = (0usize, 0usize, false);
    let dot_segment = |length: usize, dots: usize| length > 0 && length == dots && length <= 2;
    let mut previous = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return false,
            _ if needs_encoding(b) => return false,
            b'/' => {
                if (previous == b'/' && rules.merge_slashes) || dot_segment(length, dots) {
                    return false;
                }
                (length, dots, parameters) = (0, 0, false);
            }
            _ if parameters => {}
            b';' => parameters = true,
            b'.' => {
                length += 1;
                dots += 1;
            }
            _ => length += 1,
        }
        previous = b;
    }
    !dot_segment(length, dots)
}

/// True when a segment of `path` is `.` or `..` (after decoding), also
/// with path parameters (`..;x`), which servers such as Tomcat resolve as
/// `..`.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|segment| {
        let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
        name == b"." || name == b".."
    })
}

/// Writes the canonical form of `path` (no query) into `out`.
fn canonical_path(path: &[u8], rules: PathRules, out: &mut String) -> Result<(), HttpError> {
    let mut bytes = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        let (byte, encoded) = match b {
            b'%' => {
                let decoded = path
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex_value(h[0])? << 4 | hex_value(h[1])?))
                    .ok_or(HttpError::BadTarget)?;
                i += 3;
                (decoded, true)
            }
            _ => {
                i += 1;
                (b, false)
            }
        };
        match (byte, encoded) {
            (0, _) => return Err(HttpError::BadTarget),
            (b'\\', false) if rules.escaped_slashes == EscapedSlashes::Reject => {
                return Err(HttpError::BadTarget)
            }
            (b'/' | b'\\', true) if rules.escaped_slashes == EscapedSlashes::Reject => {
                return Err(HttpError::BadTarget)
            }
            (b'/', false) => {
                if !(rules.merge_slashes && bytes.last() == Some(&b'/')) {
                    bytes.push(b'/');
                }
            }
            (c, true) if is_unreserved(c) => bytes.push(c),
            (c, true) => push_encoded(&mut bytes, c),
            (c, false) if needs_encoding(c) => push_encoded(&mut bytes, c),
            (c, false) => bytes.push(c),
        }
    }
    if has_dot_segment(&bytes) {
        return Err(HttpError::BadTarget);
    }
    out.clear();
    // Every byte pushed is visible ASCII: raw bytes that were not are
    // encoded, and decoding only produces unreserved characters.
    out.push_str(std::str::from_utf8(&bytes).map_err(|_| HttpError::BadTarget)?);
    Ok(())
}

/// The canonical `(path, path_and_query)` of an origin-form target, borrowed
/// from `target` when it is already canonical, else written into `scratch`.
/// `*` (OPTIONS) is left alone.
pub fn normalize_target<'a>(
    target: &'a str,
    rules: PathRules,
    scratch: &'a mut String,
) -> Result<(&'a str, &'a str), HttpError> {
    if target == "*" {
        return Ok(("/", target));
    }
    let (path, query) = match target.find('?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, ""),
    };
    if !path.starts_with('/') {
        return Err(HttpError::BadTarget);
    }
    let query_clean = !query.bytes().any(needs_encoding);
    if query_clean && is_canonical(path.as_bytes(), rules) {
        return Ok((path, target));
    }
    canonical_path(path.as_bytes(), rules, scratch)?;
    let path_len = scratch.len();
    if query_clean {
        scratch.push_str(query);
    } else {
        let mut encoded = Vec::with_capacity(query.len() + 16);
        for b in query.bytes() {
            if needs_encoding(b) {
                push_encoded(&mut encoded, b);
            } else {
                encoded.push(b);
            }
        }
        // Plain ASCII now.
        scratch.push_str(std::str::from_utf8(&encoded).map_err(|_| HttpError::BadTarget)?);
    }
    Ok((&scratch[..path_len], scratch.as_str()))
}

/// The canonical path of a route prefix or a purge URL, owned.
pub fn normalize_path(path: &str, rules: PathRules) -> Result<String, HttpError> {
    let mut scratch = String::new();
    let (path, _) = normalize_target(path, rules, &mut scratch)?;
    Ok(path.to_string())
}

/// The canonical `(authority, host)`: lower case, no trailing dot, no
/// default port. `authority` was validated by the parser (`host[:port]`).
pub fn normalize_authority<'a>(
    authority: &'a str,
    scratch: &'a mut String,
) -> Result<(&'a str, &'a str), HttpError> {
    let (host, port_text) = split_port(authority);
    // The common case, checked in one pass: lower case, no trailing dot, no port.
    if port_text.is_none() && !host.ends_with('.') && !host.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Ok((authority, host));
    }
    let port = match port_text {
        None => None,
        Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(80) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(HttpError::BadHost),
        },
    };
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() && !host.is_empty() {
        return Err(HttpError::BadHost);
    }
    let port_canonical = match (port_text, port) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(text), Some(_)) => !text.starts_with('0') || text == "0",
    };
    if trimmed.len() == host.len()
        && port_canonical
        && !host.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Ok((authority, host));
    }
    scratch.clear();
    scratch.extend(trimmed.chars().map(|c| c.to_ascii_lowercase()));
    let host_len = scratch.len();
    if let Some(n) = port {
        scratch.push(':');
        scratch.push_str(&n.to_string());
    }
    Ok((scratch.as_str(), &scratch[..host_len]))
}

/// `host[:port]`, with a bracketed IPv6 host kept whole.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let bytes = authority.as_bytes();
    let colon = if bytes.first() == Some(&b'[') {
        // `[v6]:port`: the port is after the closing bracket.
        let close = memchr::memchr(b']', bytes).unwrap_or(bytes.len());
        memchr::memchr(b':', &bytes[close..]).map(|i| close + i)
    } else {
        memchr::memrchr(b':', bytes)
    };
    match colon {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(target: &str) -> Result<String, HttpError> {
        let mut s = String::new();
        normalize_target(target, PathRules::default(), &mut s).map(|(_, pq)| pq.to_string())
    }

    fn keep(target: &str) -> Result<String, HttpError> {
        let rules = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        let mut s = String::new();
        normalize_target(target, rules, &mut s).map(|(_, pq)| pq.to_string())
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        let mut s = String::new();
        let target = "/api/v1/items?x=%2F";
        let (p, pq) = normalize_target(target, PathRules::default(), &mut s).unwrap();
        assert_eq!((p, pq), ("/api/v1/items", target));
        assert!(std::ptr::eq(pq, target), "no copy for a canonical path");
    }

    #[test]
    fn unreserved_characters_are_decoded() {
        assert_eq!(path("/%61dmin/secret").unwrap(), "/admin/secret");
        assert_eq!(path("/%41%7A%2d%2E%5f%7e%30").unwrap(), "/Az-._~0");
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(path("/caf%c3%a9?q=%c3").unwrap(), "/caf%C3%A9?q=%c3");
        assert_eq!(path("/a%20b%25").unwrap(), "/a%20b%25");
    }

    #[test]
    fn double_encoding_is_decoded_once_only() {
        assert_eq!(path("/%2561dmin").unwrap(), "/%2561dmin");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(path("//admin///secret").unwrap(), "/admin/secret");
        let rules = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        let mut s = String::new();
        assert_eq!(
            normalize_target("//admin", rules, &mut s).unwrap().0,
            "//admin"
        );
    }

    #[test]
    fn raw_bytes_a_uri_may_not_carry_are_percent_encoded() {
        let canon = |t: &str| {
            let mut scratch = String::new();
            normalize_target(t, PathRules::default(), &mut scratch)
                .map(|(p, pq)| (p.to_string(), pq.to_string()))
                .unwrap()
        };
        assert_eq!(canon("/caf\u{e9}").0, "/caf%C3%A9");
        assert_eq!(
            canon("/caf\u{e9}"),
            canon("/caf%c3%a9"),
            "one path, however spelled"
        );
        assert_eq!(
            canon("/a\"b<c>d^e`f{g|h}").0,
            "/a%22b%3Cc%3Ed%5Ee%60f%7Bg%7Ch%7D"
        );
        assert_eq!(canon("/s?q=\u{e9}&x=<1>").1, "/s?q=%C3%A9&x=%3C1%3E");
        assert_eq!(
            canon("/s?q=plain").1,
            "/s?q=plain",
            "a clean query is left alone"
        );
    }

    #[test]
    fn encoded_slashes_nul_and_backslashes_are_refused() {
        for p in [
            "/admin%2fsecret",
            "/admin%2Fsecret",
            "/admin%5csecret",
            "/admin\\secret",
            "/a%00b",
            "/x/..%2fadmin/secret",
        ] {
            assert_eq!(path(p), Err(HttpError::BadTarget), "{p}");
        }
    }

    #[test]
    fn kept_escaped_slashes_are_never_decoded() {
        assert_eq!(keep("/admin%2fsecret").unwrap(), "/admin%2Fsecret");
        assert_eq!(keep("/a%5cb").unwrap(), "/a%5Cb");
        assert_eq!(keep("/x/..%2fadmin").unwrap(), "/x/..%2Fadmin");
        assert_eq!(keep("/a%00b"), Err(HttpError::BadTarget));
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/%2e/b",
            "/a/%2E%2e",
            "//..//admin",
        ] {
            assert_eq!(path(p), Err(HttpError::BadTarget), "{p}");
        }
        assert_eq!(path("/a/.well-known/..x").unwrap(), "/a/.well-known/..x");
        for p in [
            "/public/..;/admin/secret",
            "/a/.;x/b",
            "/a/%2e%2e;jsessionid=1/b",
            "/a/..;",
        ] {
            assert_eq!(path(p), Err(HttpError::BadTarget), "{p}");
        }
        assert_eq!(
            path("/a;x=1/b").unwrap(),
            "/a;x=1/b",
            "parameters themselves pass"
        );
        assert_eq!(path("/a/b;..").unwrap(), "/a/b;..");
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for p in ["/a%", "/a%4", "/a%zz", "/%u0061dmin"] {
            assert_eq!(path(p), Err(HttpError::BadTarget), "{p}");
        }
    }

    #[test]
    fn hosts_are_lower_cased_without_default_port_or_trailing_dot() {
        let norm = |a: &str| {
            let mut s = String::new();
            normalize_authority(a, &mut s).map(|(a, h)| (a.to_string(), h.to_string()))
        };
        assert_eq!(norm("GOOD:80").unwrap(), ("good".into(), "good".into()));
        assert_eq!(norm("good.").unwrap(), ("good".into(), "good".into()));
        assert_eq!(
            norm("Good.:8080").unwrap(),
            ("good:8080".into(), "good".into())
        );
        assert_eq!(norm("good:0080").unwrap(), ("good".into(), "good".into()));
        assert_eq!(
            norm("good:08080").unwrap(),
            ("good:8080".into(), "good".into())
        );
        assert_eq!(norm("[::1]:80").unwrap(), ("[::1]".into(), "[::1]".into()));
        assert_eq!(
            norm("[::1]:81").unwrap(),
            ("[::1]:81".into(), "[::1]".into())
        );
        assert_eq!(norm("a:99999"), Err(HttpError::BadHost));
        let mut s = String::new();
        let canonical = "shop.test:8080";
        assert!(std::ptr::eq(
            normalize_authority(canonical, &mut s).unwrap().0,
            canonical
        ));
    }
}
