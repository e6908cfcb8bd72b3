//! Request head parsing with the framing rules a trusted proxy enforces
//! (RFC 9112, and `http-hardening` defences): strict Content-Length and
//! Transfer-Encoding, exactly one valid Host, no bare CR/LF, no obs-fold,
//! bounded head size and header count. Anything doubtful is refused, because
//! a proxy and its upstream disagreeing about where a request ends is how
//! requests get smuggled.

use std::mem::MaybeUninit;

use httparse::Header;

use super::headers::{check_head, list_items, name_is, parse_content_length, trim};
use super::{BodyFraming, HttpError, Method, Version};

/// A parsed and validated request head, borrowing the connection's buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: Method,
    pub method_name: &'b str,
    pub version: Version,
    /// Path and query as forwarded upstream (origin-form), or `*`;
    /// canonical after [`RequestHead::normalize`].
    pub path_and_query: &'b str,
    /// The path alone, used for routing; `*` becomes `/`.
    pub path: &'b str,
    /// `host[:port]` from an absolute-form target, else from the Host header;
    /// canonical (lower case, no default port) after [`RequestHead::normalize`].
    pub authority: &'b str,
    /// The authority without its port.
    pub host: &'b str,
    /// True when the target was absolute-form: its authority replaces Host upstream.
    pub absolute_form: bool,
    pub headers: &'b [Header<'b>],
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    pub body: BodyFraming,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// At least one `Connection` header is present (it may name more hop-by-hop headers).
    pub has_connection_header: bool,
    /// Registered transfer codings before the final chunked (`gzip` of
    /// `gzip, chunked`): the body still carries them once unchunked, so they
    /// are sent on, under the gateway's own chunking.
    pub transfer_codings: Option<&'b [u8]>,
}

impl<'b> RequestHead<'b> {
    /// Values of the `Connection` headers, for hop-by-hop stripping.
    pub fn connection_values(&self) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.headers
            .iter()
            .filter(|h| name_is(h.name, "connection"))
            .map(|h| h.value)
    }

    /// Brings the authority, host and path to the one canonical form that
    /// routing, the cache key and the forwarded request use
    /// ([`super::target`]); rewritten forms live in the two scratch strings.
    pub fn normalize(
        &mut self,
        rules: super::target::PathRules,
        host_scratch: &'b mut String,
        path_scratch: &'b mut String,
    ) -> Result<(), HttpError> {
        let (authority, host) = super::target::normalize_authority(self.authority, host_scratch)?;
        let (path, path_and_query) =
            super::target::normalize_target(self.path_and_query, rules, path_scratch)?;
        self.authority = authority;
        self.host = host;
        self.path = path;
        self.path_and_query = path_and_query;
        Ok(())
    }

    /// The first value of header `lower_name`.
    pub fn header(&self, lower_name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| name_is(h.name, lower_name))
            .map(|h| h.value)
    }
}

/// Header slots for one parse; uninitialised so a parse does not pay for
/// zeroing hundreds of them.
pub fn header_slots<'b, const N: usize>() -> [MaybeUninit<Header<'b>>; N] {
    [const { MaybeUninit::uninit() }; N]
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` when the head is not complete yet (and still within
/// `max_head`), `Ok(Some(head))` when it is complete and valid.
pub fn parse_request<'b>(
    buf: &'b [u8],
    slots: &'b mut [MaybeUninit<Header<'b>>],
    max_head: usize,
) -> Result<Option<RequestHead<'b>>, HttpError> {
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, slots);
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => {
            if buf.len() > max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Err(HttpError::Malformed);
        }
    };
    let version = check_head(&buf[..head_len], max_head, req.version)?;
    let method_name = req.method.ok_or(HttpError::Malformed)?;
    let method = Method::from_bytes(method_name.as_bytes());
    if method == Method::Connect {
        return Err(HttpError::MethodNotSupported);
    }
    let target = req.path.ok_or(HttpError::Malformed)?;
    let headers: &'b [Header<'b>] = req.headers;

    let mut host_header: Option<&'b [u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_final = false;
    let mut chunked_count = 0usize;
    let mut unknown_coding = false;
    let mut other_coding = false;
    let mut te_lines = 0;
    let mut te_value: &[u8] = b"";
    let mut close = false;
    let mut keep_alive_token = false;
    let mut has_connection_header = false;
    let mut expect_continue = false;

    for h in headers {
        let name = h.name;
        match name.len() {
            4 if name_is(name, "host") => {
                if host_header.is_some() {
                    return Err(HttpError::DuplicateHost);
                }
                host_header = Some(h.value);
            }
            14 if name_is(name, "content-length") => {
                if content_length.is_some() {
                    return Err(HttpError::DuplicateContentLength);
                }
                content_length =
                    Some(parse_content_length(h.value).ok_or(HttpError::BadContentLength)?);
            }
            17 if name_is(name, "transfer-encoding") => {
                transfer_encoding = true;
                te_lines += 1;
                te_value = trim(h.value);
                let mut any = false;
                for coding in h.value.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        return Err(HttpError::BadTransferEncoding);
                    }
                    any = true;
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked_count += 1;
                        chunked_final = true;
                    } else {
                        chunked_final = false;
                        if is_registered_coding(coding) {
                            other_coding = true;
                        } else {
                            unknown_coding = true;
                        }
                    }
                }
                if !any {
                    return Err(HttpError::BadTransferEncoding);
                }
            }
            10 if name_is(name, "connection") => {
                has_connection_header = true;
                for token in list_items(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    }
                }
            }
            // RFC 9110 section 10.1.1: ignore 100-continue from an HTTP/1.0 client.
            6 if name_is(name, "expect") && version == Version::Http11 => {
                if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HttpError::BadExpect);
                }
            }
            _ => {}
        }
    }

    let body = if transfer_encoding {
        if version == Version::Http10 {
            return Err(HttpError::TransferEncodingOnHttp10);
        }
        if content_length.is_some() {
            return Err(HttpError::LengthAndChunked);
        }
        if chunked_count > 1 {
            return Err(HttpError::BadTransferEncoding);
        }
        if unknown_coding {
            return Err(HttpError::UnknownTransferCoding);
        }
        if !chunked_final {
            // RFC 9112 section 6.3: the length cannot be determined; 400 and close.
            return Err(HttpError::BadTransferEncoding);
        }
        if other_coding && te_lines > 1 {
            // Codings spread over several lines are refused rather than re-joined.
            return Err(HttpError::UnknownTransferCoding);
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::None,
        }
    };

    // `gzip, chunked`: framed by the final chunked; `gzip` goes on with the body.
    let transfer_codings = other_coding.then(|| {
        let end = te_value.iter().rposition(|&b| b == b',').unwrap_or(0);
        trim(&te_value[..end])
    });
    let (path_and_query, target_authority) = split_target(method, target)?;
    let absolute_form = target_authority.is_some();
    let authority: &'b str = match (target_authority, host_header) {
        (Some(a), _) => {
            if version == Version::Http11 && host_header.is_none() {
                return Err(HttpError::MissingHost);
            }
            a
        }
        (None, Some(h)) => std::str::from_utf8(h).map_err(|_| HttpError::BadHost)?,
        (None, None) => {
            if version == Version::Http11 {
                return Err(HttpError::MissingHost);
            }
            ""
        }
    };
    let host = validate_authority(authority, version)?;
    if let Some(h) = host_header {
        // The Host header must be well formed even when an absolute target overrides it.
        let h = std::str::from_utf8(h).map_err(|_| HttpError::BadHost)?;
        validate_authority(h, version)?;
    }

    let path = if path_and_query == "*" {
        "/"
    } else {
        match path_and_query.find('?') {
            Some(q) => &path_and_query[..q],
            None => path_and_query,
        }
    };

    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };

    Ok(Some(RequestHead {
        method,
        method_name,
        version,
        path_and_query,
        path,
        authority,
        host,
        absolute_form,
        headers,
        head_len,
        body,
        keep_alive,
        expect_continue,
        has_connection_header,
        transfer_codings,
    }))
}

/// Rewrites an `HTTP/1.N` request line with a minor version above 1 as
/// `HTTP/1.1`, in place, so it parses (a recipient treats a higher minor
/// version as the highest it implements, RFC 9110 section 2.5). Returns
/// whether it did; any other version is left to be refused.
pub fn downgrade_minor_version(buf: &mut [u8]) -> bool {
    let Some(line_end) = memchr::memchr(b'\r', buf) else {
        return false;
    };
    let line = &buf[..line_end];
    let Some(space) = memchr::memrchr(b' ', line) else {
        return false;
    };
    let version = &line[space + 1..];
    let minor_above_1 =
        version.len() == 8 && version.starts_with(b"HTTP/1.") && matches!(version[7], b'2'..=b'9');
    if minor_above_1 {
        buf[line_end - 1] = b'1';
    }
    minor_above_1
}

/// httparse reports any request line it cannot finish as a version error;
/// only a well-formed `HTTP/x.y` that is not 1.0 or 1.1 deserves a 505.
fn version_error(buf: &[u8]) -> HttpError {
    let line_end = memchr::memchr(b'\r', buf).unwrap_or(buf.len());
    let line = &buf[..line_end];
    let last = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    let well_formed = last.len() == 8
        && last.starts_with(b"HTTP/")
        && last[5].is_ascii_digit()
        && last[6] == b'.'
        && last[7].is_ascii_digit()
        && line.iter().filter(|&&b| b == b' ').count() == 2;
    if well_formed {
        HttpError::Version
    } else {
        HttpError::Malformed
    }
}

fn is_registered_coding(coding: &[u8]) -> bool {
    [
        "gzip",
        "x-gzip",
        "deflate",
        "compress",
        "x-compress",
        "identity",
        "br",
        "zstd",
    ]
    .iter()
    .any(|c| coding.eq_ignore_ascii_case(c.as_bytes()))
}

/// Splits a request target into the origin-form path-and-query and, for an
/// absolute-form target, its authority.
fn split_target(method: Method, target: &str) -> Result<(&str, Option<&str>), HttpError> {
    // Bytes above 0x7F are let through (they arrive as UTF-8; the
    // canonical target percent-encodes them); controls, spaces, DEL and a
    // fragment are not.
    if target.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'#') {
        return Err(HttpError::BadTarget);
    }
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if method == Method::Options {
            Ok((target, None))
        } else {
            Err(HttpError::BadTarget)
        };
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(HttpError::BadTarget)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadTarget);
    }
    let path = &rest[end..];
    let path = if path.is_empty() {
        "/"
    } else if path.starts_with('?') {
        // `http://host?q` has an empty path; there is no way to forward it without
        // inventing a `/`, so refuse rather than rewrite the target.
        return Err(HttpError::BadTarget);
    } else {
        path
    };
    Ok((path, Some(authority)))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Validates `host[:port]` (RFC 3986 reg-name, IPv4 or bracketed IPv6) and
/// returns the host part.
fn validate_authority(authority: &str, _version: Version) -> Result<&str, HttpError> {
    // An empty Host is what a client sends for a target without an
    // authority (RFC 9112 section 3.2): a request without a host, as an
    // HTTP/1.0 request without Host is.
    if authority.is_empty() {
        return Ok("");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']').ok_or(HttpError::BadHost)?;
        let inside = &rest[..close];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HttpError::BadHost);
        }
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(HttpError::BadHost),
        };
        (&authority[..close + 2], port)
    } else {
        match authority.rfind(':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        }
    };
    // An empty port (`host:`) is allowed by RFC 3986 and means the default.
    if let Some(port) = port {
        if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::BadHost);
        }
    }
    if !host.starts_with('[')
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')))
    {
        return Err(HttpError::BadHost);
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method, version, path-and-query, host, body framing, keep-alive.
    type Summary = (Method, Version, String, String, BodyFraming, bool);

    fn parse(raw: &[u8]) -> Result<Option<Summary>, HttpError> {
        let mut slots = header_slots::<100>();
        parse_request(raw, &mut slots, 8192).map(|o| {
            o.map(|h| {
                (
                    h.method,
                    h.version,
                    h.path_and_query.to_string(),
                    h.host.to_string(),
                    h.body,
                    h.keep_alive,
                )
            })
        })
    }

    fn err(raw: &[u8]) -> HttpError {
        parse(raw).expect_err("request should be refused")
    }

    #[test]
    fn simple_get_parses() {
        let (m, v, p, h, b, ka) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((m, v), (Method::Get, Version::Http11));
        assert_eq!(p, "/a?b=1");
        assert_eq!(h, "Example.com");
        assert_eq!(b, BodyFraming::None);
        assert!(ka);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn head_larger_than_limit_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(err(&raw), HttpError::HeadTooLarge);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..120 {
            raw.extend(format!("X-{i}: 1\r\n").as_bytes());
        }
        raw.extend(b"\r\n");
        assert_eq!(err(&raw), HttpError::TooManyHeaders);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e, HttpError::LengthAndChunked);
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn duplicate_content_length_is_refused() {
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            HttpError::DuplicateContentLength
        );
    }

    #[test]
    fn malformed_content_length_is_refused() {
        for v in ["+3", "3,3", "-1", "abc", "", "0x3", "99999999999999999999"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), HttpError::BadContentLength, "{v}");
        }
    }

    #[test]
    fn content_length_zero_is_a_body_of_zero() {
        let (.., b, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(b, BodyFraming::Length(0));
    }

    #[test]
    fn chunked_is_accepted_case_insensitively() {
        let (.., b, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(b, BodyFraming::Chunked);
    }

    #[test]
    fn unknown_transfer_coding_is_501() {
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n");
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn a_known_coding_before_chunked_is_kept_for_the_upstream() {
        let mut slots = header_slots::<16>();
        let raw =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, deflate, chunked\r\n\r\n";
        let req = parse_request(raw, &mut slots, 8192).unwrap().unwrap();
        assert_eq!(req.body, BodyFraming::Chunked);
        assert_eq!(req.transfer_codings, Some(&b"gzip, deflate"[..]));
        // Spread over two lines, or unknown: still 501.
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e, HttpError::UnknownTransferCoding);
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: zip, chunked\r\n\r\n");
        assert_eq!(e, HttpError::UnknownTransferCoding);
    }

    #[test]
    fn chunked_not_final_is_400() {
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            HttpError::BadTransferEncoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
            HttpError::BadTransferEncoding
        );
    }

    #[test]
    fn chunked_twice_is_400() {
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::BadTransferEncoding
        );
    }

    #[test]
    fn empty_transfer_encoding_is_400() {
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
            HttpError::BadTransferEncoding
        );
    }

    #[test]
    fn transfer_encoding_on_http10_is_400() {
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::TransferEncodingOnHttp10
        );
    }

    #[test]
    fn obs_fold_is_refused() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn bare_lf_is_refused() {
        assert_eq!(
            err(b"GET / HTTP/1.1\nHost: a\n\n"),
            HttpError::BareLineEnding
        );
    }

    #[test]
    fn bare_cr_is_refused() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn nul_in_header_value_is_refused() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
            HttpError::Malformed
        );
    }

    #[test]
    fn invalid_header_name_is_refused() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n"),
            HttpError::Malformed
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
            HttpError::Malformed
        );
    }

    #[test]
    fn missing_host_on_http11_is_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
            HttpError::MissingHost
        );
    }

    #[test]
    fn missing_host_on_http10_is_allowed() {
        let (.., ka) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!ka, "HTTP/1.0 closes by default");
    }

    #[test]
    fn duplicate_host_is_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HttpError::DuplicateHost
        );
    }

    #[test]
    fn malformed_host_is_400() {
        for h in ["a b", "a/b", "user@a", "a:port", "[zz]", "a:123456", ":80"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            assert_eq!(err(raw.as_bytes()).status(), 400, "{h}");
        }
    }

    #[test]
    fn an_empty_host_or_port_is_accepted() {
        let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h, "a");
        let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").unwrap().unwrap();
        assert_eq!(h, "");
    }

    #[test]
    fn ipv6_host_is_accepted() {
        let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h, "[::1]");
    }

    #[test]
    fn absolute_form_overrides_host() {
        let (.., p, h, _, _) = parse(b"GET http://Other.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((p.as_str(), h.as_str()), ("/x?y", "Other.example"));
    }

    #[test]
    fn asterisk_form_only_for_options() {
        assert!(parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .is_some());
        assert_eq!(
            err(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            HttpError::BadTarget
        );
    }

    #[test]
    fn connect_is_501() {
        assert_eq!(
            err(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").status(),
            501
        );
    }

    #[test]
    fn space_in_target_is_400_not_505() {
        assert_eq!(
            err(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            HttpError::Malformed
        );
        assert_eq!(
            err(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
            HttpError::Version
        );
    }

    #[test]
    fn a_higher_http1_minor_version_is_rewritten_as_1_1() {
        let mut head = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec();
        assert!(downgrade_minor_version(&mut head));
        assert!(head.starts_with(b"GET / HTTP/1.1\r\n"));
        assert!(parse(&head).unwrap().is_some());
        for other in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/1.10\r\n\r\n",
            b"GET / HTTP/1.x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2",
        ] {
            let mut copy = other.to_vec();
            assert!(
                !downgrade_minor_version(&mut copy),
                "{}",
                String::from_utf8_lossy(other)
            );
            assert_eq!(copy, other);
        }
    }

    #[test]
    fn targets_with_bytes_above_0x7f_parse() {
        assert!(
            parse("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes())
                .unwrap()
                .is_some()
        );
        assert!(
            parse(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n").is_err(),
            "DEL is a control"
        );
    }

    #[test]
    fn http2_preface_is_refused() {
        assert!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
    }

    #[test]
    fn connection_close_and_keep_alive() {
        let (.., ka) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!ka);
        let (.., ka) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(ka);
    }

    #[test]
    fn expect_other_than_100_continue_is_417() {
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: fancy\r\n\r\n").status(),
            417
        );
    }
}
