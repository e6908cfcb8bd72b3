//! Header classification and small byte helpers shared by requests and responses.

/// Case-insensitive comparison of a header name with a lower-case literal.
#[inline]
pub fn name_is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.as_bytes().eq_ignore_ascii_case(lower.as_bytes())
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1),
/// plus the framing headers the gateway writes itself.
#[inline]
pub fn is_hop_by_hop(name: &str) -> bool {
    // Dispatch on length first: most headers are rejected by one comparison.
    match name.len() {
        2 => name_is(name, "te"),
        7 => name_is(name, "trailer") || name_is(name, "upgrade"),
        10 => name_is(name, "connection") || name_is(name, "keep-alive"),
        16 => name_is(name, "proxy-connection"),
        17 => name_is(name, "transfer-encoding"),
        _ => false,
    }
}

/// Iterates the comma-separated elements of a list-valued field, trimmed,
/// skipping empty elements (RFC 9110 section 5.6.1).
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty())
}

/// Trims optional whitespace (SP / HTAB) from both ends.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// True when `name` appears as a token in any `Connection` header value.
pub fn listed_in_connection<'a>(
    connection_values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> bool {
    for value in connection_values {
        for token in list_items(value) {
            if token.eq_ignore_ascii_case(name.as_bytes()) {
                return true;
            }
        }
    }
    false
}

/// Parses a Content-Length value strictly: ASCII digits only, no sign, no
/// list, no overflow (RFC 9110 section 8.6).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The checks every parsed head gets, request or response, once httparse
/// found its end: the size limit, line endings, and HTTP/1.0 or 1.1 only.
pub fn check_head(
    head: &[u8],
    max_head: usize,
    minor_version: Option<u8>,
) -> Result<super::Version, super::HttpError> {
    use super::{HttpError, Version};
    if head.len() > max_head {
        return Err(HttpError::HeadTooLarge);
    }
    if has_bare_line_ending(head) {
        return Err(HttpError::BareLineEnding);
    }
    match minor_version {
        Some(1) => Ok(Version::Http11),
        Some(0) => Ok(Version::Http10),
        _ => Err(HttpError::Version),
    }
}

/// Checks that every LF in a head is preceded by CR and every CR is followed
/// by LF: httparse accepts bare LF line endings, which we refuse because
/// peers disagree about them (request smuggling).
pub fn has_bare_line_ending(head: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (head.first(), head.last()) else {
        return false;
    };
    // Over each pair of neighbouring bytes, an LF after something else or
    // a CR before something else; folded without stopping early so that
    // the compiler vectorises it (a search per line ending cost more).
    let lone = head[..head.len() - 1]
        .iter()
        .zip(&head[1..])
        .fold(false, |lone, (&a, &b)| {
            lone | ((b == b'\n') & (a != b'\r')) | ((a == b'\r') & (b != b'\n'))
        });
    lone || first == b'\n' || last == b'\r'
}

/// Appends `n` as lower-case hex (chunk sizes).
pub fn push_hex(out: &mut impl bytes::BufMut, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 9110 `tchar`: a byte of a token (method, field name, directive).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a field may be passed on in a trailer section: not one that
/// frames, routes, authenticates, controls caching or conditions, or says
/// how to read the content (RFC 9110 section 6.5.1), and not hop-by-hop.
/// A recipient may otherwise merge a trailer into the head, so these must
/// never arrive late.
fn allowed_in_trailers(name: &str) -> bool {
    const FORBIDDEN: &[&str] = &[
        "host",
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "www-authenticate",
        "set-cookie",
        "cookie",
        "cache-control",
        "expires",
        "age",
        "date",
        "vary",
        "etag",
        "last-modified",
        "location",
        "retry-after",
        "expect",
        "max-forwards",
        "pragma",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "warning",
        "alt-svc",
        "strict-transport-security",
    ];
    let lower = name.to_ascii_lowercase();
    !is_hop_by_hop(name)
        && !name_is(name, "keep-alive")
        && !lower.starts_with("content-")
        && !FORBIDDEN.contains(&lower.as_str())
}

/// Trailer fields to pass on, from the raw field lines a chunked body ended
/// with: each line must be a well-formed field (else none is passed on:
/// the sender's framing is in doubt), and only fields a trailer may carry
/// are kept. Appends `name: value` lines (CRLF-terminated) to `out`.
pub fn forwardable_trailers(raw: &[u8], out: &mut Vec<u8>) {
    if raw.is_empty() {
        return;
    }
    let mut block = Vec::with_capacity(raw.len() + 2);
    block.extend_from_slice(raw);
    block.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&block, &mut slots)
    else {
        return;
    };
    for field in fields {
        if allowed_in_trailers(field.name) {
            out.extend_from_slice(field.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(field.value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(raw: &[u8]) -> String {
        let mut out = Vec::new();
        forwardable_trailers(raw, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn trailers_keep_what_a_trailer_may_carry() {
        assert_eq!(
            trailers(b"grpc-status: 0\r\nServer-Timing: db;dur=53\r\n"),
            "grpc-status: 0\r\nServer-Timing: db;dur=53\r\n"
        );
        assert_eq!(trailers(b""), "");
    }

    #[test]
    fn trailers_never_carry_framing_routing_auth_or_cache_fields() {
        let raw = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n\
Set-Cookie: a=b\r\nAuthorization: x\r\nCache-Control: max-age=9\r\nVary: *\r\n\
Content-Type: text/html\r\nConnection: close\r\nLocation: /x\r\nX-Ok: 1\r\n";
        assert_eq!(trailers(raw), "X-Ok: 1\r\n");
    }

    #[test]
    fn a_malformed_trailer_line_drops_the_whole_section() {
        assert_eq!(trailers(b"X-Ok: 1\r\nbad line\r\n"), "");
        assert_eq!(trailers(b"X-Ok: 1\r\nBad Name: 2\r\n"), "");
        assert_eq!(trailers(b"X-Ok: 1\r\n folded\r\n"), "");
    }

    #[test]
    fn hop_by_hop_names_match_case_insensitively() {
        for n in [
            "Connection",
            "KEEP-ALIVE",
            "te",
            "Trailer",
            "Transfer-Encoding",
            "upgrade",
            "Proxy-Connection",
        ] {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in ["Content-Length", "Host", "tea", "Via", "Cookie"] {
            assert!(!is_hop_by_hop(n), "{n}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b" 1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_are_found() {
        assert!(!has_bare_line_ending(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_line_ending(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_line_ending(
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"
        ));
    }

    /// The counting form against the definition (each LF after a CR, each
    /// CR before an LF), on every string of up to 8 bytes over CR, LF and
    /// a letter: lone ones at either end, CR CR LF, LF LF, empty.
    #[test]
    fn the_line_ending_count_agrees_with_the_definition() {
        fn by_definition(head: &[u8]) -> bool {
            head.iter().enumerate().any(|(i, &b)| match b {
                b'\n' => i == 0 || head[i - 1] != b'\r',
                b'\r' => head.get(i + 1) != Some(&b'\n'),
                _ => false,
            })
        }
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=8u32 {
            for mut code in 0..3usize.pow(len) {
                let mut head = Vec::new();
                for _ in 0..len {
                    head.push(alphabet[code % 3]);
                    code /= 3;
                }
                assert_eq!(
                    has_bare_line_ending(&head),
                    by_definition(&head),
                    "{:?}",
                    String::from_utf8_lossy(&head)
                );
            }
        }
    }

    #[test]
    fn list_items_trim_and_skip_empty() {
        let items: Vec<&[u8]> = list_items(b" close , ,X-Foo\t").collect();
        assert_eq!(items, vec![&b"close"[..], b"X-Foo"]);
    }

    #[test]
    fn numbers_format() {
        let mut v = Vec::new();
        push_hex(&mut v, 0);
        v.push(b' ');
        push_hex(&mut v, 0x1a2b);
        v.push(b' ');
        push_decimal(&mut v, 0);
        v.push(b' ');
        push_decimal(&mut v, 18446744073709551615);
        assert_eq!(v, b"0 1a2b 0 18446744073709551615");
    }
}
