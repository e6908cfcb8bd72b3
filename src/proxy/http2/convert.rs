//! HTTP/2 messages to and from the gateway's one head form. A request's
//! header block becomes an HTTP/1.1 request head (pseudo-headers to the
//! request line and `Host`, `cookie` fields joined, a body without
//! `content-length` framed as chunked), which the same parser as HTTP/1
//! then validates: an HTTP/2 request is held to every rule an HTTP/1 one
//! is, and keys the cache the same way. A response head the phases wrote
//! (status line and `Name: value` lines) becomes HEADERS.

use bytes::BytesMut;
use h2::RecvStream;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};

/// Why a request could not be put in the gateway's form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `:authority` and `Host` disagree (RFC 9113 section 8.3.1).
    HostMismatch,
    /// No `:path` (CONNECT is not proxied over HTTP/2).
    NoPath,
}

/// Writes the request's head, HTTP/1.1 form, into `buf`. `chunked`: the
/// body (which follows the head) is framed as chunked.
pub(crate) fn request_head(
    req: &Request<RecvStream>,
    chunked: bool,
    buf: &mut BytesMut,
) -> Result<(), Refused> {
    let uri = req.uri();
    let path = uri.path_and_query().ok_or(Refused::NoPath)?;
    let authority = uri.authority().map(|a| a.as_str());
    let host = req.headers().get(http::header::HOST).map(|h| h.as_bytes());
    if let (Some(a), Some(h)) = (authority, host) {
        if !a.as_bytes().eq_ignore_ascii_case(h) {
            return Err(Refused::HostMismatch);
        }
    }
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(path.as_str().as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = authority.map(str::as_bytes).or(host) {
        field(buf, b"host", host);
    }
    // Cookie crumbs are joined with "; " (RFC 9113 section 8.2.3).
    let mut cookies = req
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .peekable();
    if cookies.peek().is_some() {
        buf.extend_from_slice(b"cookie: ");
        for (i, crumb) in cookies.enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"; ");
            }
            buf.extend_from_slice(crumb.as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
    }
    for (name, value) in req.headers() {
        if name == http::header::HOST || name == http::header::COOKIE {
            continue;
        }
        field(buf, name.as_str().as_bytes(), value.as_bytes());
    }
    if chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

fn field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// Fields HTTP/2 forbids in a message (RFC 9113 section 8.2.2); the heads
/// the gateway writes carry none, but a stored head may carry framing.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te"
    )
}

/// The `Name: value` lines of a head (or a trailer section) as a field map;
/// lines that are not fields HTTP/2 can carry are left out.
fn fields(lines: &[u8], map: &mut HeaderMap) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(crate::http::headers::trim(&line[colon + 1..])),
        ) else {
            continue;
        };
        if !connection_specific(&name) {
            map.append(name, value);
        }
    }
}

/// A stored head's fields (status line first) as HTTP/2 fields, kept with
/// the stored response for its later HTTP/2 hits.
pub(crate) fn head_fields(head: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(line_end) = head.iter().position(|&b| b == b'\n') {
        fields(&head[line_end + 1..], &mut map);
    }
    map
}

/// A stored response's HEADERS: its fields (`head_fields`) and this
/// answer's own lines (`Age`, `Cache-Status`).
pub(crate) fn stored_response(status: u16, stored: &HeaderMap, own: &[u8]) -> Option<Response<()>> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    *response.headers_mut() = stored.clone();
    fields(own, response.headers_mut());
    Some(response)
}

/// A response head (status line, then fields) as HTTP/2 HEADERS, with
/// `content-length` set to the body's length when it is known (a HEAD's
/// answer keeps the head's own).
pub(crate) fn response(head: &[u8], content_length: Option<u64>) -> Option<Response<()>> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let status = head.get(9..12)?;
    let status = StatusCode::from_bytes(status).ok()?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    fields(&head[line_end + 1..], response.headers_mut());
    if let Some(n) = content_length {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Some(response)
}

/// Trailer lines as a field map; `None` when there are none.
pub(crate) fn trailers(lines: &[u8]) -> Option<HeaderMap> {
    if lines.is_empty() {
        return None;
    }
    let mut map = HeaderMap::new();
    fields(lines, &mut map);
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_keeps_status_and_fields_lower_cased_without_hop_by_hop() {
        let head = b"HTTP/1.1 404 Not Found\r\nX-App: 1\r\nConnection: close\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 9\r\n";
        let r = response(head, Some(3)).unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-app"], "1");
        assert!(r.headers().get("connection").is_none());
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(r.headers()["content-length"], "3");
    }

    #[test]
    fn trailers_become_a_field_map() {
        let t = trailers(b"grpc-status: 0\r\ngrpc-message: ok\r\n").unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(trailers(b"").is_none());
    }
}
