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
    /// `TE` lists `trailers`: the client takes trailer fields, so the
    /// gateway may ask the upstream for them (`TE: trailers`).
    pub accepts_trailers: bool,
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
    let mut accepts_trailers = false;

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
            2 if name_is(name, "te") => {
                accepts_trailers |=
                    list_items(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
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
    if let (true, Some(h)) = (absolute_form, host_header) {
        // The Host header must be well formed even when an absolute target
        // overrides it (otherwise it is the authority, just checked).
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
        accepts_trailers,
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
mod tests;
