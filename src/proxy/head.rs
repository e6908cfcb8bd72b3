//! Serialising the heads the gateway sends: the request to the upstream,
//! the response to the client, and the gateway's own error responses.
//!
//! Heads are rebuilt field by field from the parsed head rather than
//! forwarded as raw bytes, so hop-by-hop fields are dropped, the gateway's
//! own framing is written, and nothing the parser did not accept can pass.

use std::io::Write;

use super::cache::Validators;
use super::reply::BodyLength;
use super::request_body::BodyOut;
use crate::config::{ForwardedFor, ProxyHeaders, RouteConfig};
use crate::http::headers::{is_hop_by_hop, listed_in_connection, name_is, push_decimal};
use crate::http::request::RequestHead;
use crate::http::response::ResponseHead;
use crate::http::{BodyFraming, Version};
use crate::route::rewrite_path;
use httparse::Header;

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field named in `Connection` is hop-by-hop too, except the framing
/// fields: a client must not be able to make the gateway drop them.
fn dropped_by_connection<'a>(
    name: &str,
    has_connection: bool,
    values: impl Iterator<Item = &'a [u8]>,
) -> bool {
    has_connection
        && !name_is(name, "content-length")
        && !name_is(name, "host")
        && listed_in_connection(values, name)
}

/// The request as sent upstream: always HTTP/1.1 on a persistent connection.
#[derive(Clone, Copy)]
pub struct UpstreamRequest<'a> {
    pub route: &'a RouteConfig,
    pub proxy: &'a ProxyHeaders,
    /// The client's IP as text, for X-Forwarded-For.
    pub client_ip: &'a str,
    /// The client came over TLS: `X-Forwarded-Proto: https`, and an `https` cache key.
    pub https: bool,
    /// Host to send when the client sent none (HTTP/1.0): the server's address.
    pub fallback_host: &'a str,
    /// Drop `Expect: 100-continue`: the gateway answers it itself.
    pub strip_expect: bool,
    /// The worker's pre-built `Via: 1.1 <name>\r\n` line.
    pub via_line: &'a [u8],
    /// The request came over HTTP/2 (its head is in the HTTP/1.1 form):
    /// `Via` says `2`.
    pub received_h2: bool,
    /// The cache revalidates: send these validators instead of the client's.
    pub validators: Option<&'a Validators>,
    /// Send this method instead of the client's (a background refresh is a GET).
    pub method_override: Option<&'a str>,
    /// Headers from a verified session token.
    pub identity: &'a [(String, String)],
    /// Ask the upstream to switch to this protocol (`super::tunnel`).
    pub upgrade: Option<&'a str>,
    /// `X-Request-Id` to send in place of the client's (`super::request_id`).
    pub request_id: Option<&'a [u8]>,
}

/// Header fields, most of them in place: a request's forwarded fields fit
/// the inline array in the common case, so listing them allocates nothing
/// (and, unlike an array of empty fields, starting a list writes nothing).
#[derive(Default)]
pub struct FieldList<'a>(smallvec::SmallVec<[Header<'a>; 24]>);

impl<'a> FieldList<'a> {
    pub fn new() -> Self {
        FieldList(smallvec::SmallVec::new())
    }

    fn push(&mut self, name: &'a str, value: &'a [u8]) {
        self.0.push(Header { name, value });
    }

    pub fn as_slice(&self) -> &[Header<'a>] {
        &self.0
    }
}

/// The header fields of the request as the gateway forwards it, in the
/// order they are sent: `Host` (the canonical authority, which an
/// absolute-form target's replaces), the client's fields that pass (not
/// hop-by-hop, not named in `Connection`, not owned by the route's session
/// tokens, not removed or set by the route, not the `Expect` the gateway
/// answers), the route's and the verified identity's fields, then the
/// gateway's `X-Forwarded-*` and `Via`. The one place that decides what the
/// upstream gets: [`write_request_head`] serialises it, and the cache keys
/// and varies on it ([`forwarded_fields`]). `scratch` holds the values the
/// gateway composes.
pub fn for_each_forwarded<'a>(
    req: &RequestHead<'a>,
    up: &UpstreamRequest<'a>,
    scratch: &'a mut Vec<u8>,
    mut field: impl FnMut(&'a str, &'a [u8]),
) {
    let proxy = up.proxy;
    scratch.clear();
    // Composed values first, then borrowed: X-Forwarded-For, and Via for
    // HTTP/1.0 and HTTP/2.
    if proxy.x_forwarded_for == ForwardedFor::Append {
        for h in req
            .headers
            .iter()
            .filter(|h| name_is(h.name, "x-forwarded-for"))
        {
            scratch.extend_from_slice(h.value);
            scratch.extend_from_slice(b", ");
        }
        scratch.extend_from_slice(up.client_ip.as_bytes());
    }
    let xff_end = scratch.len();
    // Forwarded (RFC 7239): this hop's element, after the client's list.
    if proxy.forwarded == ForwardedFor::Append {
        for h in req.headers.iter().filter(|h| name_is(h.name, "forwarded")) {
            scratch.extend_from_slice(h.value);
            scratch.extend_from_slice(b", ");
        }
    }
    if proxy.forwarded != ForwardedFor::Off {
        forwarded_element(scratch, req, up);
    }
    let forwarded_end = scratch.len();
    let via_line = &up.via_line[..up.via_line.len().saturating_sub(2)];
    let via_value = via_line.strip_prefix(b"Via: ").unwrap_or(via_line);
    let received: &[u8] = match (up.received_h2, req.version) {
        (true, _) => b"2",
        (false, Version::Http10) => b"1.0",
        (false, Version::Http11) => b"",
    };
    if proxy.via && !received.is_empty() {
        scratch.extend_from_slice(received);
        scratch.extend_from_slice(via_value.get(3..).unwrap_or(b""));
    }
    let scratch: &'a [u8] = scratch;

    let host = if req.authority.is_empty() {
        up.fallback_host
    } else {
        req.authority
    };
    field("Host", host.as_bytes());
    for h in req.headers {
        let name = h.name;
        if is_hop_by_hop(name)
            || name_is(name, "host")
            || dropped_by_connection(name, req.has_connection_header, req.connection_values())
            || (up.strip_expect && name_is(name, "expect"))
            || (up.request_id.is_some() && name_is(name, "x-request-id"))
            || (name_is(name, "x-forwarded-for") && proxy.x_forwarded_for != ForwardedFor::Off)
            || (name_is(name, "forwarded") && proxy.forwarded != ForwardedFor::Off)
            || (proxy.x_forwarded_proto && name_is(name, "x-forwarded-proto"))
            || (proxy.x_forwarded_host && name_is(name, "x-forwarded-host"))
            || up.route.auth.as_ref().is_some_and(|a| a.owns_header(name))
            || up
                .route
                .remove_request_headers
                .iter()
                .any(|r| name_is(name, r))
            || up
                .route
                .set_request_headers
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        field(name, h.value);
    }
    for (name, value) in up.route.set_request_headers.iter().chain(up.identity) {
        field(name, value.as_bytes());
    }
    if let Some(id) = up.request_id {
        field("X-Request-Id", id);
    }
    match proxy.x_forwarded_for {
        ForwardedFor::Off => {}
        ForwardedFor::Replace => field("X-Forwarded-For", up.client_ip.as_bytes()),
        ForwardedFor::Append => field("X-Forwarded-For", &scratch[..xff_end]),
    }
    if proxy.forwarded != ForwardedFor::Off {
        field("Forwarded", &scratch[xff_end..forwarded_end]);
    }
    if proxy.x_forwarded_proto {
        field(
            "X-Forwarded-Proto",
            if up.https {
                &b"https"[..]
            } else {
                &b"http"[..]
            },
        );
    }
    if proxy.x_forwarded_host && !req.authority.is_empty() {
        field("X-Forwarded-Host", req.authority.as_bytes());
    }
    if proxy.via {
        let value = match received.is_empty() {
            true => via_value,
            false => &scratch[forwarded_end..],
        };
        field("Via", value);
    }
}

/// The forwarded fields ([`for_each_forwarded`]) as a list, for the cache.
pub fn forwarded_fields<'a>(
    req: &RequestHead<'a>,
    up: &UpstreamRequest<'a>,
    scratch: &'a mut Vec<u8>,
    fields: &mut FieldList<'a>,
) {
    for_each_forwarded(req, up, scratch, |name, value| fields.push(name, value));
}

/// Writes the upstream request straight from [`for_each_forwarded`], for
/// requests the cache takes no part in.
pub fn write_forwarded_head(
    out: &mut Vec<u8>,
    req: &RequestHead<'_>,
    up: &UpstreamRequest<'_>,
    scratch: &mut Vec<u8>,
) {
    write_request_line(out, req, up);
    for_each_forwarded(req, up, scratch, |name, value| {
        push_header(out, name.as_bytes(), value)
    });
    finish_request_head(out, req, up);
}

fn write_request_line(out: &mut Vec<u8>, req: &RequestHead<'_>, up: &UpstreamRequest<'_>) {
    out.extend_from_slice(up.method_override.unwrap_or(req.method_name).as_bytes());
    out.push(b' ');
    match &up.route.rewrite_prefix {
        Some(replacement) if req.path_and_query != "*" => {
            rewrite_path(out, req.path_and_query, &up.route.path_prefix, replacement)
        }
        _ => out.extend_from_slice(req.path_and_query.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// How the upstream request frames the body: a `Content-Length` body is
/// sent as it is (the field is forwarded), a chunked one in chunks of the
/// gateway's own (the client's chunk boundaries and extensions are not kept).
pub(super) fn body_out(body: BodyFraming) -> BodyOut {
    match body {
        BodyFraming::Chunked => BodyOut::Chunked,
        _ => BodyOut::AsIs,
    }
}

/// The cache's validators, the gateway's framing, the blank line.
fn finish_request_head(out: &mut Vec<u8>, req: &RequestHead<'_>, up: &UpstreamRequest<'_>) {
    if let Some(v) = up.validators {
        if let Some(etag) = &v.etag {
            push_header(out, b"If-None-Match", etag);
        }
        if let Some(date) = &v.last_modified {
            push_header(out, b"If-Modified-Since", date);
        }
    }
    if let Some(protocol) = up.upgrade {
        write_upgrade_fields(out, protocol.as_bytes());
    }
    // `TE` is hop-by-hop: asked for again only where the client takes
    // trailers, which the gateway then passes on (`relay.rs`).
    if req.accepts_trailers {
        out.extend_from_slice(b"TE: trailers\r\n");
    }
    if body_out(req.body) == BodyOut::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: ");
        if let Some(codings) = req.transfer_codings {
            out.extend_from_slice(codings);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the upstream request: the request line (path rewritten as the
/// route says, method replaced for a background refresh), the `fields`
/// ([`forwarded_fields`]), the cache's validators in place of the client's
/// conditionals when it revalidates, and the gateway's own framing. Always
/// HTTP/1.1 on a persistent connection.
pub fn write_request_head(
    out: &mut Vec<u8>,
    req: &RequestHead<'_>,
    up: &UpstreamRequest<'_>,
    fields: &[Header<'_>],
) {
    write_request_line(out, req, up);
    for h in fields {
        if up.validators.is_some()
            && (name_is(h.name, "if-none-match") || name_is(h.name, "if-modified-since"))
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    finish_request_head(out, req, up);
}

/// `for=<client>;proto=<scheme>;host="<authority>"`: an IPv6 client is
/// bracketed and quoted, the authority always quoted (it may hold `:`).
fn forwarded_element(out: &mut Vec<u8>, req: &RequestHead<'_>, up: &UpstreamRequest<'_>) {
    out.extend_from_slice(b"for=");
    if up.client_ip.contains(':') {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(up.client_ip.as_bytes());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(up.client_ip.as_bytes());
    }
    out.extend_from_slice(if up.https {
        b";proto=https"
    } else {
        b";proto=http"
    });
    if !req.authority.is_empty() {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(req.authority.as_bytes());
        out.push(b'"');
    }
}

/// The `Upgrade` and `Connection` fields of an upgrade request or its 101.
pub fn write_upgrade_fields(out: &mut Vec<u8>, protocol: &[u8]) {
    out.extend_from_slice(b"Upgrade: ");
    out.extend_from_slice(protocol);
    out.extend_from_slice(b"\r\nConnection: upgrade\r\n");
}

/// `Via` names the protocol version the message was received with (RFC 9110
/// section 7.6.3); the common HTTP/1.1 case uses the pre-built line.
fn write_via(out: &mut Vec<u8>, received: Version, via_line: &[u8]) {
    match received {
        Version::Http11 => out.extend_from_slice(via_line),
        Version::Http10 => {
            out.extend_from_slice(b"Via: 1.0");
            out.extend_from_slice(&via_line[b"Via: 1.1".len()..]);
        }
    }
}

/// Writes the client's response head from the upstream's: status line and
/// end-to-end fields (hop-by-hop ones, and those `Connection` names, are
/// dropped), `Via` and `extra`; framing and `Connection` are the session's.
/// `length` is what the session will frame: the upstream's `Content-Length`
/// stays only where no body follows (HEAD and 304 keep it: it describes
/// the representation), and transfer codings move to `length`.
pub(super) fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead<'_>,
    length: &BodyLength,
    via_line: Option<&[u8]>,
    extra: &[u8],
    withheld: &[String],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // 1xx and 204 must not carry Content-Length (RFC 9110 section 8.6).
    let keep_length = *length == BodyLength::None && resp.status >= 200 && resp.status != 204;
    for h in resp.headers {
        let name = h.name;
        if is_hop_by_hop(name)
            || dropped_by_connection(name, resp.has_connection_header, resp.connection_values())
            || withheld.iter().any(|w| name_is(name, w))
            || name_is(name, "x-request-id")
        {
            continue;
        }
        if name_is(name, "content-length") && !keep_length {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    if let Some(line) = via_line {
        write_via(out, resp.version, line);
    }
    out.extend_from_slice(extra);
}

/// Standard reason phrase of the statuses the gateway itself sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The head of a redirect to `location` (a canonical path: visible ASCII only); no body.
pub fn write_redirect(out: &mut Vec<u8>, status: u16, location: &str) {
    let reason = if status == 301 {
        "Moved Permanently"
    } else {
        "Permanent Redirect"
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\n"
    );
}

/// The head of a short plain-text response generated by the gateway; its
/// body is [`error_body`].
pub fn write_error_head(out: &mut Vec<u8>, status: u16) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\n",
        reason(status)
    );
    if status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
    }
}

/// The head of a 429 for a request over its route's rate limit: when to
/// retry (`Retry-After`, RFC 9110 section 10.2.3) and the policy and its
/// state in the IETF httpapi `RateLimit-Policy` and `RateLimit` fields
/// (`q` requests per `w` seconds; `r` left, full again in `t` seconds).
pub fn write_rate_limited_head(out: &mut Vec<u8>, retry_after_secs: u64, quota: u64, window: u64) {
    write_error_head(out, 429);
    let _ = write!(
        out,
        "Retry-After: {retry_after_secs}\r\nRateLimit-Policy: \"route\";q={quota};w={window}\r\nRateLimit: \"route\";r=0;t={retry_after_secs}\r\n"
    );
}

/// The body of a gateway-generated error: `"<status> <reason>\n"`.
pub fn error_body(status: u16) -> String {
    format!("{status} {}\n", reason(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{header_slots, parse_request};
    use crate::http::response::parse_response;
    use crate::http::Method;

    fn route() -> RouteConfig {
        RouteConfig {
            path_prefix: "/api".into(),
            rewrite_prefix: Some("/".into()),
            set_request_headers: vec![("X-Gateway".into(), "1".into())],
            remove_request_headers: vec!["x-debug".into()],
            ..RouteConfig::to("r", 0)
        }
    }

    fn forward(raw: &[u8], proxy: &ProxyHeaders) -> String {
        let mut slots = header_slots::<64>();
        let req = parse_request(raw, &mut slots, 8192).unwrap().unwrap();
        let mut out = Vec::new();
        let r = route();
        let up = UpstreamRequest {
            route: &r,
            proxy,
            client_ip: "10.0.0.9",
            https: false,
            fallback_host: "127.0.0.1:9000",
            strip_expect: true,
            via_line: b"Via: 1.1 ringgate\r\n",
            received_h2: false,
            validators: None,
            method_override: None,
            upgrade: None,
            identity: &[],
            request_id: None,
        };
        let mut scratch = Vec::new();
        let mut fields = FieldList::new();
        forwarded_fields(&req, &up, &mut scratch, &mut fields);
        write_request_head(&mut out, &req, &up, fields.as_slice());
        let mut direct = Vec::new();
        write_forwarded_head(&mut direct, &req, &up, &mut Vec::new());
        assert_eq!(direct, out, "both writers write the same head");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_are_dropped() {
        let head = forward(
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Content-Length\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: gzip\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nContent-Length: 0\r\n\r\n",
            &ProxyHeaders::default(),
        );
        for gone in [
            "Connection",
            "X-Secret",
            "Keep-Alive",
            "TE:",
            "Upgrade",
            "Proxy-Connection",
        ] {
            assert!(!head.contains(gone), "{gone} still in {head}");
        }
        assert!(head.contains("Content-Length: 0\r\n"), "{head}");
    }

    #[test]
    fn trailers_are_asked_for_only_where_the_client_takes_them() {
        let asked = forward(
            b"GET /x HTTP/1.1\r\nHost: a\r\nTE: gzip, Trailers\r\n\r\n",
            &ProxyHeaders::default(),
        );
        assert_eq!(asked.matches("TE:").count(), 1, "{asked}");
        assert!(asked.contains("TE: trailers\r\n"), "{asked}");
        let not_asked = forward(
            b"GET /x HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n",
            &ProxyHeaders::default(),
        );
        assert!(!not_asked.contains("TE:"), "{not_asked}");
    }

    #[test]
    fn path_is_rewritten_and_route_headers_applied() {
        let head = forward(
            b"GET /api/users?q=1 HTTP/1.1\r\nHost: a\r\nX-Debug: 1\r\nX-Gateway: forged\r\n\r\n",
            &ProxyHeaders::default(),
        );
        assert!(head.starts_with("GET /users?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            !head.contains("X-Debug") && !head.contains("forged"),
            "{head}"
        );
        assert!(head.contains("X-Gateway: 1\r\n"), "{head}");
    }

    #[test]
    fn forwarded_headers_are_set() {
        let head = forward(
            b"GET /api HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n",
            &ProxyHeaders::default(),
        );
        assert!(
            head.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n"),
            "{head}"
        );
        assert!(
            head.contains("X-Forwarded-Proto: http\r\n") && !head.contains("https"),
            "{head}"
        );
        assert!(
            head.contains("X-Forwarded-Host: shop.example\r\n"),
            "{head}"
        );
        assert!(head.contains("Via: 1.1 ringgate\r\n"), "{head}");
        assert!(
            head.contains("Forwarded: for=10.0.0.9;proto=http;host=\"shop.example\"\r\n"),
            "{head}"
        );
    }

    #[test]
    fn forwarded_appends_to_the_clients_list_or_replaces_it() {
        let raw = b"GET /api HTTP/1.1\r\nHost: shop.example:8080\r\nForwarded: for=192.0.2.1\r\nForwarded: for=\"[2001:db8::1]\"\r\n\r\n";
        let head = forward(raw, &ProxyHeaders::default());
        assert!(
            head.contains("Forwarded: for=192.0.2.1, for=\"[2001:db8::1]\", for=10.0.0.9;proto=http;host=\"shop.example:8080\"\r\n"),
            "{head}"
        );
        assert_eq!(head.matches("Forwarded:").count(), 1, "{head}");
        let replace = ProxyHeaders {
            forwarded: ForwardedFor::Replace,
            ..ProxyHeaders::default()
        };
        let head = forward(raw, &replace);
        assert!(
            head.contains("\r\nForwarded: for=10.0.0.9;proto=http;host=\"shop.example:8080\"\r\n"),
            "{head}"
        );
        assert!(!head.contains("192.0.2.1"), "{head}");
    }

    #[test]
    fn forwarded_headers_can_be_turned_off() {
        let proxy = ProxyHeaders {
            request_id: false,
            via: false,
            via_name: "x".into(),
            x_forwarded_for: ForwardedFor::Off,
            x_forwarded_proto: false,
            x_forwarded_host: false,
            forwarded: ForwardedFor::Off,
        };
        let head = forward(
            b"GET /api HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n\r\n",
            &proxy,
        );
        assert!(head.contains("X-Forwarded-For: 1.2.3.4\r\n"), "{head}");
        assert!(head.contains("Forwarded: for=1.2.3.4\r\n"), "{head}");
        assert!(
            !head.contains("Via") && !head.contains("X-Forwarded-Host"),
            "{head}"
        );
    }

    #[test]
    fn http10_request_without_host_gets_one() {
        let head = forward(b"GET /api HTTP/1.0\r\n\r\n", &ProxyHeaders::default());
        assert!(head.contains("Host: 127.0.0.1:9000\r\n"), "{head}");
        assert!(head.contains("Via: 1.0 ringgate\r\n"), "{head}");
    }

    #[test]
    fn chunked_request_is_reframed_as_chunked() {
        let head = forward(
            b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            &ProxyHeaders::default(),
        );
        assert_eq!(head.matches("Transfer-Encoding").count(), 1, "{head}");
    }

    #[test]
    fn response_head_reframes_and_strips() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-App: 1\r\n\r\n";
        let mut slots = header_slots::<64>();
        let resp = parse_response(raw, &mut slots, 8192, Method::Get)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            &resp,
            &BodyLength::Known(5),
            Some(b"Via: 1.1 ringgate\r\n"),
            b"",
            &[],
        );
        let head = String::from_utf8(out).unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\nX-App: 1\r\nVia: 1.1 ringgate\r\n");
    }

    #[test]
    fn head_response_keeps_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        let mut slots = header_slots::<64>();
        let resp = parse_response(raw, &mut slots, 8192, Method::Head)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, &resp, &BodyLength::None, None, b"", &[]);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Content-Length: 1234\r\n"));
    }

    #[test]
    fn error_head_and_body_agree() {
        let mut out = Vec::new();
        write_error_head(&mut out, 401);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer"), "{text}");
        assert!(
            !text.contains("\r\n\r\n"),
            "the session ends the head: {text}"
        );
        assert_eq!(error_body(502), "502 Bad Gateway\n");
    }
}
