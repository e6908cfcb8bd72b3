//! What one access-log line says about a request, gathered as the request
//! goes (`proxy`), and the two layouts it is written in: nginx's
//! `combined` and JSON.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::http::headers::push_decimal;

/// What the cache did for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// The route does not cache (or the request cannot be cached).
    #[default]
    None,
    Hit,
    Miss,
    /// A stored response was revalidated with the upstream.
    Revalidated,
    /// A stale response stood in (stale-if-error, a server down).
    Stale,
    /// The route caches but this request went past the cache.
    Bypass,
}

impl CacheStatus {
    fn name(self) -> &'static str {
        match self {
            CacheStatus::None => "-",
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// The TLS facts of a client connection, made once per connection.
#[derive(Debug)]
pub struct TlsInfo {
    pub version: &'static str,
    pub sni: Option<Box<str>>,
}

/// One request, as the access log writes it. Reused from request to
/// request on a connection: [`Record::begin`] resets it.
#[derive(Default)]
pub struct Record {
    /// This request is written (the log is on, the route logs, sampled in).
    pub active: bool,
    pub started: Option<Instant>,
    /// When the line is written (the response's end, as nginx's `$time_local`).
    pub wall: Option<SystemTime>,
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub protocol: &'static str,
    pub host: Vec<u8>,
    pub referer: Vec<u8>,
    pub user_agent: Vec<u8>,
    pub request_id: Vec<u8>,
    /// The route's name (empty: no route matched).
    pub route: Vec<u8>,
    pub status: u16,
    /// The request's head and declared body.
    pub bytes_in: u64,
    /// The response's head, and its body as framed for the client.
    pub head_out: u64,
    pub body_out: u64,
    /// The body's length was not known at the head: counted as it is sent.
    pub unframed: bool,
    pub upstream: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_connect: Option<Duration>,
    pub upstream_head: Option<Duration>,
    pub cache: CacheStatus,
    /// An AI route's request: who, which model, which provider, tokens.
    pub ai: Option<Box<AiLine>>,
}

/// What the access log says of an AI route's request (JSON format only).
#[derive(Debug, Default, Clone)]
pub struct AiLine {
    pub consumer: String,
    pub model: String,
    /// `cache` when the completion cache answered; `-` when no target did.
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Record {
    /// Starts the record of a new request.
    pub fn begin(&mut self) {
        self.active = false;
        self.started = Some(Instant::now());
        for v in [
            &mut self.method,
            &mut self.target,
            &mut self.host,
            &mut self.referer,
            &mut self.user_agent,
            &mut self.request_id,
            &mut self.route,
        ] {
            v.clear();
        }
        self.protocol = "HTTP/1.1";
        self.route.clear();
        self.status = 0;
        self.bytes_in = 0;
        self.head_out = 0;
        self.body_out = 0;
        self.unframed = false;
        self.upstream = None;
        self.upstream_status = None;
        self.upstream_connect = None;
        self.upstream_head = None;
        self.cache = CacheStatus::None;
        self.ai = None;
    }

    /// What the request's head says: method, target as sent, protocol,
    /// host, `Referer`, `User-Agent`, size.
    pub fn note_request(&mut self, req: &crate::http::request::RequestHead<'_>, http2: bool) {
        use crate::http::headers::name_is;
        self.method.extend_from_slice(req.method_name.as_bytes());
        self.target.extend_from_slice(req.path_and_query.as_bytes());
        self.protocol = match (http2, req.version) {
            (true, _) => "HTTP/2.0",
            (false, crate::http::Version::Http10) => "HTTP/1.0",
            (false, crate::http::Version::Http11) => "HTTP/1.1",
        };
        self.host.extend_from_slice(req.authority.as_bytes());
        for h in req.headers {
            if name_is(h.name, "referer") && self.referer.is_empty() {
                self.referer.extend_from_slice(h.value);
            } else if name_is(h.name, "user-agent") && self.user_agent.is_empty() {
                self.user_agent.extend_from_slice(h.value);
            }
        }
        self.bytes_in = req.head_len as u64
            + match req.body {
                crate::http::BodyFraming::Length(n) => n,
                _ => 0,
            };
    }

    /// nginx's `combined` format.
    pub fn write_combined(&self, out: &mut Vec<u8>, client: &str) {
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(b" - - [");
        let (date, time) = civil(self.wall.unwrap_or(SystemTime::UNIX_EPOCH));
        let (y, m, d) = date;
        let (hh, mm, ss, _) = time;
        pad2(out, d);
        out.push(b'/');
        out.extend_from_slice(MONTHS[m as usize - 1].as_bytes());
        out.push(b'/');
        push_decimal(out, y as u64);
        out.push(b':');
        push_clock(out, hh, mm, ss);
        out.extend_from_slice(b" +0000] \"");
        escape_combined(out, &self.method);
        out.push(b' ');
        escape_combined(out, &self.target);
        out.push(b' ');
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\" ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        push_decimal(out, self.body_out);
        for v in [&self.referer, &self.user_agent] {
            out.extend_from_slice(b" \"");
            if v.is_empty() {
                out.push(b'-');
            } else {
                escape_combined(out, v);
            }
            out.push(b'"');
        }
    }

    /// One JSON object.
    pub fn write_json(&self, out: &mut Vec<u8>, client: &str, tls: Option<&TlsInfo>) {
        let total = self.started.map(|s| s.elapsed());
        out.extend_from_slice(b"{\"time\":\"");
        let ((y, m, d), (hh, mm, ss, ms)) = civil(self.wall.unwrap_or(SystemTime::UNIX_EPOCH));
        push_decimal(out, y as u64);
        out.push(b'-');
        pad2(out, m);
        out.push(b'-');
        pad2(out, d);
        out.push(b'T');
        push_clock(out, hh, mm, ss);
        out.push(b'.');
        pad2(out, ms / 10);
        out.push(b'0' + (ms % 10) as u8);
        out.extend_from_slice(b"Z\"");
        string(out, "client", client.as_bytes());
        string(out, "method", &self.method);
        string(out, "target", &self.target);
        string(out, "protocol", self.protocol.as_bytes());
        string(out, "host", &self.host);
        number(out, "status", u64::from(self.status));
        number(out, "bytes_in", self.bytes_in);
        number(out, "bytes_out", self.head_out + self.body_out);
        match self.route.is_empty() {
            false => string(out, "route", &self.route),
            true => null(out, "route"),
        }
        match self.upstream {
            Some(a) => string(out, "upstream", a.to_string().as_bytes()),
            None => null(out, "upstream"),
        }
        match self.upstream_status {
            Some(s) => number(out, "upstream_status", u64::from(s)),
            None => null(out, "upstream_status"),
        }
        string(out, "cache", self.cache.name().as_bytes());
        millis(out, "duration_ms", total);
        millis(out, "upstream_connect_ms", self.upstream_connect);
        millis(out, "upstream_head_ms", self.upstream_head);
        match tls {
            Some(t) => {
                string(out, "tls", t.version.as_bytes());
                match &t.sni {
                    Some(s) => string(out, "sni", s.as_bytes()),
                    None => null(out, "sni"),
                }
            }
            None => {
                null(out, "tls");
                null(out, "sni");
            }
        }
        string(out, "request_id", &self.request_id);
        string(out, "user_agent", &self.user_agent);
        string(out, "referer", &self.referer);
        if let Some(ai) = &self.ai {
            out.extend_from_slice(b",\"ai\":{");
            // The first member written opens with a comma: drop it.
            let start = out.len();
            string(out, "consumer", ai.consumer.as_bytes());
            out.remove(start);
            string(out, "model", ai.model.as_bytes());
            string(out, "provider", ai.provider.as_bytes());
            number(out, "prompt_tokens", ai.prompt_tokens);
            number(out, "completion_tokens", ai.completion_tokens);
            out.push(b'}');
        }
        out.push(b'}');
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `hh:mm:ss`.
fn push_clock(out: &mut Vec<u8>, hh: u32, mm: u32, ss: u32) {
    pad2(out, hh);
    out.push(b':');
    pad2(out, mm);
    out.push(b':');
    pad2(out, ss);
}

fn pad2(out: &mut Vec<u8>, n: u32) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// Year, month, day.
type Date = (i64, u32, u32);
/// Hour, minute, second, millisecond.
type TimeOfDay = (u32, u32, u32, u32);

/// UTC calendar date and time of day (with milliseconds) of `t`.
fn civil(t: SystemTime) -> (Date, TimeOfDay) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        (y, m, d),
        (rem / 3600, rem / 60 % 60, rem % 60, since.subsec_millis()),
    )
}

/// nginx's escaping: `"`, `\`, controls and bytes past ASCII as `\xHH`.
fn escape_combined(out: &mut Vec<u8>, v: &[u8]) {
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(format!("\\x{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.reserve(name.len() + 4);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: bytes past ASCII are taken as Latin-1 (header values
/// may hold obs-text), so the line is always valid UTF-8 JSON.
fn string(out: &mut Vec<u8>, name: &str, v: &[u8]) {
    key(out, name);
    out.push(b'"');
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(v);
        out.push(b'"');
        return;
    }
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
    }
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, name: &str, v: u64) {
    key(out, name);
    push_decimal(out, v);
}

fn null(out: &mut Vec<u8>, name: &str) {
    key(out, name);
    out.extend_from_slice(b"null");
}

fn millis(out: &mut Vec<u8>, name: &str, d: Option<Duration>) {
    match d {
        None => null(out, name),
        Some(d) => {
            key(out, name);
            let us = d.as_micros() as u64;
            push_decimal(out, us / 1000);
            out.push(b'.');
            let frac = us % 1000;
            out.push(b'0' + (frac / 100) as u8);
            out.push(b'0' + (frac / 10 % 10) as u8);
            out.push(b'0' + (frac % 10) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::default();
        r.begin();
        r.wall = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_602_636_045));
        r.method.extend_from_slice(b"GET");
        r.target.extend_from_slice(b"/a?q=\"x\"");
        r.status = 200;
        r.body_out = 512;
        r.user_agent.extend_from_slice(b"curl/8 \xff");
        r.request_id.extend_from_slice(b"abc");
        r.route.extend_from_slice(b"main");
        r.cache = CacheStatus::Hit;
        r
    }

    #[test]
    fn combined_is_nginx_s_layout_with_its_escapes() {
        let mut out = Vec::new();
        sample().write_combined(&mut out, "10.0.0.1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [07/Dec/2026:00:17:16 +0000] \"GET /a?q=\\x22x\\x22 HTTP/1.1\" 200 512 \"-\" \"curl/8 \\xFF\""
        );
    }

    #[test]
    fn json_is_one_valid_object_whatever_the_bytes() {
        let mut out = Vec::new();
        let tls = TlsInfo {
            version: "TLSv1.3",
            sni: Some("shop.test".into()),
        };
        sample().write_json(&mut out, "::1", Some(&tls));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-07T00:17:16.045Z");
        assert_eq!(v["target"], "/a?q=\"x\"");
        assert_eq!(v["user_agent"], "curl/8 \u{ff}");
        assert_eq!(v["cache"], "HIT");
        assert_eq!(v["route"], "main");
        assert_eq!(v["tls"], "TLSv1.3");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["status"], 200);
    }
}
