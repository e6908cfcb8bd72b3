//! A stored response and how it is built, refreshed and written out.
//!
//! The head is serialised once, when the response is stored: status line,
//! stored header fields, `Via` and `Content-Length`. A hit then only adds
//! `Age`, `Cache-Status` and `Connection` (see [`super::hit`]).

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use httparse::Header;

use super::control::{parse_targeted, FieldScope, ResponseDirectives};
use super::freshness::{corrected_initial_age, freshness_lifetime, ResponseFacts, StoredFreshness};
use super::policy::CachePolicy;
use super::vary::{parse_vary, VarySpec};
use crate::http::headers::{is_hop_by_hop, listed_in_connection, name_is, trim};

/// Fixed cost counted per entry beyond its bytes (struct, key, bookkeeping).
const ENTRY_OVERHEAD: u64 = 256;

/// The directives that govern a response in this cache: those of the
/// first targeted field (RFC 9213) that is present and valid, else those of
/// `Cache-Control`. The flag says a targeted field won, which also means
/// `Expires` is ignored.
pub fn response_directives<'a>(
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    targeted: &[String],
) -> (ResponseDirectives, bool) {
    for name in targeted {
        if !fields.clone().any(|(n, _)| name_is(n, name)) {
            continue;
        }
        let lines = fields
            .clone()
            .filter(|(n, _)| name_is(n, name))
            .map(|(_, v)| v);
        if let Some(cc) = parse_targeted(lines) {
            return (cc, true);
        }
    }
    let lines = fields
        .filter(|(n, _)| name_is(n, "cache-control"))
        .map(|(_, v)| v);
    (ResponseDirectives::parse(lines), false)
}

/// Derives the cache-relevant facts from a response's header fields;
/// `targeted` lists the route's targeted cache-control fields.
pub fn response_facts<'a>(
    status: u16,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    targeted: &[String],
) -> ResponseFacts {
    let values = |name: &'static str| {
        fields
            .clone()
            .filter(move |(n, _)| name_is(n, name))
            .map(|(_, v)| v)
    };
    let date_of = crate::http::date::parse;
    let (cc, targeted) = response_directives(fields.clone(), targeted);
    ResponseFacts {
        status,
        cc,
        date: values("date").next().and_then(date_of),
        // An invalid Expires (such as "0") means "already expired" (RFC 9111
        // section 5.3); a targeted field overrides it (RFC 9213 section 2.2).
        expires: values("expires").next().filter(|_| !targeted).map(date_of),
        last_modified: values("last-modified").next().and_then(date_of),
        // A list (`Age: 7200, 0`) is read as repeated fields: the first counts.
        age: values("age").next().and_then(|v| {
            let v = trim(v.split(|&b| b == b',').next().unwrap_or(v));
            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .flatten()
                .map(|a| a.min(super::control::DELTA_MAX))
        }),
        etag: values("etag")
            .next()
            .map(|v| String::from_utf8_lossy(trim(v)).to_string()),
        set_cookie: values("set-cookie").next().is_some(),
        vary_star: parse_vary(values("vary")) == VarySpec::Star,
    }
}

/// The targeted fields a route keeps from its clients (stored, for the
/// freshness of later revalidations, but never written out).
pub fn withheld_targeted(policy: &CachePolicy) -> &[String] {
    if policy.forward_targeted_fields {
        &[]
    } else {
        &policy.targeted_fields
    }
}

/// Header fields that are about the connection, the framing or the one
/// exchange (`X-Request-Id`: one client's id must not reach another): never
/// stored, never taken from a 304. (`Age` is read for the age calculation,
/// then dropped by [`Stored::build`]: the cache writes its own.)
fn managed_field(name: &str) -> bool {
    is_hop_by_hop(name) || name_is(name, "content-length") || name_is(name, "x-request-id")
}

/// Fields a response must not hand to later requests (RFC 9111 sections
/// 5.2.2.4 and 5.2.2.7: `no-cache="f"`, `private="f"`).
fn withheld(name: &str, cc: &ResponseDirectives) -> bool {
    let listed = |scope: &FieldScope| matches!(scope, FieldScope::Fields(f) if f.iter().any(|x| name_is(name, x)));
    listed(&cc.no_cache) || listed(&cc.private)
}

/// The header fields of a response worth storing, in order.
pub fn storable_fields(headers: &[Header<'_>], cc: &ResponseDirectives) -> Vec<(String, Vec<u8>)> {
    let connection: Vec<&[u8]> = headers
        .iter()
        .filter(|h| name_is(h.name, "connection"))
        .map(|h| h.value)
        .collect();
    headers
        .iter()
        .filter(|h| !managed_field(h.name) && !withheld(h.name, cc))
        .filter(|h| {
            connection.is_empty() || !listed_in_connection(connection.iter().copied(), h.name)
        })
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect()
}

/// Where the body of a stored 206 sits in the whole representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// Offset of the body's first byte.
    pub start: u64,
    /// Length of the whole representation.
    pub complete: u64,
}

/// A response in the cache.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    pub reason: String,
    pub fields: Vec<(String, Vec<u8>)>,
    /// Status line, fields, Via and Content-Length, each line CRLF-terminated,
    /// without the blank line that ends the head.
    pub head: Bytes,
    pub body: Bytes,
    pub freshness: StoredFreshness,
    pub initial_age: Duration,
    /// When the response arrived (the start of its resident time).
    pub received: Instant,
    /// After this the entry is of no use any more and is dropped when met.
    pub discard_at: Instant,
    pub etag: Option<Vec<u8>>,
    pub last_modified: Option<SystemTime>,
    pub date: Option<SystemTime>,
    pub vary: VarySpec,
    /// Tags from the configured tag headers (`Surrogate-Key`, `Cache-Tag`), for purge by tag.
    pub tags: Vec<String>,
    /// A background refresh (stale-while-revalidate) is under way, on any core.
    pub refreshing: AtomicBool,
    /// A 206 kept as a part of its representation (under the partial key).
    pub partial: Option<Partial>,
    /// `head`'s fields as HTTP/2 fields, made by the first HTTP/2 hit
    /// (`proxy::http2`), so later ones clone a map instead of parsing lines.
    pub http2_fields: std::sync::OnceLock<http::HeaderMap>,
}

/// Times of the exchange that produced a response (RFC 9111 section 4.2.3).
#[derive(Debug, Clone, Copy)]
pub struct ExchangeTimes {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub received: Instant,
}

impl ExchangeTimes {
    pub fn now(request_time: SystemTime) -> ExchangeTimes {
        ExchangeTimes {
            request_time,
            response_time: SystemTime::now(),
            received: Instant::now(),
        }
    }
}

/// Everything about a response to be stored but its body: known when its
/// head arrives, so clients can be answered from a response still being
/// received (see `super::fill`).
#[derive(Debug, Clone)]
pub struct StoredHead {
    pub status: u16,
    pub reason: String,
    pub fields: Vec<(String, Vec<u8>)>,
    /// Status line, fields and Via, each line CRLF-terminated; no framing field.
    pub lines: Bytes,
    pub freshness: StoredFreshness,
    pub initial_age: Duration,
    pub received: Instant,
    /// How long the entry is of use, counted from its age zero.
    keep: Duration,
    pub etag: Option<Vec<u8>>,
    pub last_modified: Option<SystemTime>,
    pub date: Option<SystemTime>,
    pub vary: VarySpec,
    /// Set for a 206 stored as a part of its representation.
    pub partial: Option<Partial>,
}

impl StoredHead {
    /// The head of an entry from a response's storable fields (an `Age`
    /// among them counts towards the entry's age, then is dropped).
    pub fn build(
        status: u16,
        reason: &str,
        mut fields: Vec<(String, Vec<u8>)>,
        times: ExchangeTimes,
        policy: &CachePolicy,
        via_line: Option<&[u8]>,
    ) -> StoredHead {
        let facts = response_facts(
            status,
            fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &policy.targeted_fields,
        );
        let lifetime = freshness_lifetime(&facts, times.response_time, policy);
        let freshness = StoredFreshness::from_directives(&facts.cc, lifetime);
        let initial_age = corrected_initial_age(&facts, times.request_time, times.response_time);
        let etag = facts.etag.clone().map(String::into_bytes);
        let keep = freshness.keep_for(
            etag.is_some() || facts.last_modified.is_some(),
            policy.stale_on_error,
        );
        let vary = parse_vary(
            fields
                .iter()
                .filter(|(n, _)| name_is(n, "vary"))
                .map(|(_, v)| v.as_slice()),
        );
        fields.retain(|(name, _)| !name_is(name, "age"));

        let mut lines = Vec::with_capacity(256);
        let _ = write!(lines, "HTTP/1.1 {status} {reason}\r\n");
        let withheld = withheld_targeted(policy);
        for (name, value) in &fields {
            if withheld.iter().any(|t| name_is(name, t)) {
                continue;
            }
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value);
            lines.extend_from_slice(b"\r\n");
        }
        if let Some(via) = via_line {
            lines.extend_from_slice(via);
        }
        StoredHead {
            status,
            reason: reason.to_string(),
            fields,
            lines: Bytes::from(lines),
            freshness,
            initial_age,
            received: times.received,
            keep,
            etag,
            last_modified: facts.last_modified,
            date: facts.date,
            vary,
            partial: None,
        }
    }

    /// RFC 9111 section 4.2.3: `current_age = corrected_initial_age + resident_time`.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received)
    }
}

impl Stored {
    /// Builds an entry from a response's storable fields (an `Age` among
    /// them counts towards the entry's age, then is dropped) and its body.
    pub fn build(
        status: u16,
        reason: &str,
        fields: Vec<(String, Vec<u8>)>,
        body: Bytes,
        times: ExchangeTimes,
        policy: &CachePolicy,
        via_line: Option<&[u8]>,
    ) -> Stored {
        Stored::from_head(
            StoredHead::build(status, reason, fields, times, policy, via_line),
            body,
        )
    }

    /// The entry for a head and the whole body that came with it.
    pub fn from_head(head: StoredHead, body: Bytes) -> Stored {
        let mut lines = Vec::with_capacity(head.lines.len() + 32);
        lines.extend_from_slice(&head.lines);
        // RFC 9110 section 8.6: a 204 carries no Content-Length.
        if head.status != 204 {
            let _ = write!(lines, "Content-Length: {}\r\n", body.len());
        }
        Stored {
            status: head.status,
            reason: head.reason,
            head: Bytes::from(lines),
            body,
            freshness: head.freshness,
            initial_age: head.initial_age,
            received: head.received,
            discard_at: head.received + head.keep.saturating_sub(head.initial_age.min(head.keep)),
            etag: head.etag,
            last_modified: head.last_modified,
            date: head.date,
            vary: head.vary,
            tags: Vec::new(),
            fields: head.fields,
            refreshing: AtomicBool::new(false),
            partial: head.partial,
            http2_fields: Default::default(),
        }
    }

    /// Reads tags from the named header fields: space- or comma-separated.
    pub fn with_tags(mut self, tag_headers: &[String]) -> Stored {
        for (name, value) in &self.fields {
            if tag_headers.iter().any(|t| name_is(name, t)) {
                for tag in value
                    .split(|&b| b == b' ' || b == b',' || b == b'\t')
                    .filter(|t| !t.is_empty())
                {
                    self.tags.push(String::from_utf8_lossy(tag).to_string());
                }
            }
        }
        self
    }

    /// The same response, but stale from now on (soft purge): it can still be
    /// served under stale-while-revalidate / stale-if-error, and revalidated.
    pub fn made_stale(&self) -> Stored {
        let mut freshness = self.freshness;
        freshness.lifetime = Duration::ZERO;
        Stored {
            status: self.status,
            reason: self.reason.clone(),
            fields: self.fields.clone(),
            head: self.head.clone(),
            body: self.body.clone(),
            freshness,
            initial_age: self.initial_age,
            received: self.received,
            discard_at: self.discard_at,
            etag: self.etag.clone(),
            last_modified: self.last_modified,
            date: self.date,
            vary: self.vary.clone(),
            tags: self.tags.clone(),
            refreshing: AtomicBool::new(false),
            partial: self.partial,
            http2_fields: self.http2_fields.clone(),
        }
    }

    /// RFC 9111 section 4.2.3: `current_age = corrected_initial_age + resident_time`.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received)
    }

    /// Length of the whole representation (more than the body for a part).
    pub fn complete_length(&self) -> u64 {
        self.partial.map_or(self.body.len() as u64, |p| p.complete)
    }

    /// Bytes `first..=last` of the representation, when this entry holds them.
    pub fn part(&self, first: u64, last: u64) -> Option<Bytes> {
        let start = self.partial.map_or(0, |p| p.start);
        let end = start + self.body.len() as u64;
        (first >= start && first <= last && last < end).then(|| {
            self.body
                .slice((first - start) as usize..=(last - start) as usize)
        })
    }

    /// The head of a 206 carrying bytes `first..=last` of the
    /// representation: the stored fields and Via under a 206 status line,
    /// with `Content-Range` and the part's `Content-Length` in place of the
    /// stored one.
    pub fn partial_head(&self, first: u64, last: u64) -> Bytes {
        let head = &self.head[..];
        let status_end = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let length_line = format!("Content-Length: {}\r\n", self.body.len());
        let fields_end = head.len()
            - if head.ends_with(length_line.as_bytes()) {
                length_line.len()
            } else {
                0
            };
        let mut out = Vec::with_capacity(head.len() + 64);
        out.extend_from_slice(b"HTTP/1.1 206 Partial Content\r\n");
        out.extend_from_slice(&head[status_end..fields_end]);
        let _ = write!(
            out,
            "Content-Range: bytes {first}-{last}/{}\r\nContent-Length: {}\r\n",
            self.complete_length(),
            last - first + 1
        );
        Bytes::from(out)
    }

    /// The head of a 416 for a range past the end of the body.
    pub fn unsatisfiable_head(&self) -> Bytes {
        Bytes::from(format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n",
            self.complete_length()
        ))
    }

    /// Seconds of freshness left (negative once stale), for `Cache-Status: ttl`.
    pub fn ttl(&self, now: Instant) -> i64 {
        self.freshness.lifetime.as_secs() as i64 - self.age(now).as_secs() as i64
    }

    pub fn weight(&self) -> u64 {
        self.head.len() as u64 + self.body.len() as u64 + ENTRY_OVERHEAD
    }

    /// Section 3.2 and 4.3.4: the entry refreshed by a 304, with the 304's
    /// header fields replacing the stored ones (framing fields excepted).
    pub fn freshen(
        &self,
        not_modified: &[Header<'_>],
        times: ExchangeTimes,
        policy: &CachePolicy,
        via_line: Option<&[u8]>,
    ) -> Stored {
        let cc = self.directives(policy);
        let mut fields: Vec<(String, Vec<u8>)> = self
            .fields
            .iter()
            .filter(|(name, _)| {
                !not_modified
                    .iter()
                    .any(|h| name_is(h.name, name) && !managed_field(h.name))
            })
            .cloned()
            .collect();
        fields.extend(storable_fields(not_modified, &cc));
        let mut fresh = Stored::build(
            self.status,
            &self.reason,
            fields,
            self.body.clone(),
            times,
            policy,
            via_line,
        );
        fresh.partial = self.partial;
        fresh
    }

    fn directives(&self, policy: &CachePolicy) -> ResponseDirectives {
        let fields = self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        response_directives(fields, &policy.targeted_fields).0
    }

    /// The fields a 304 from the cache carries (RFC 9110 section 15.4.5).
    pub fn not_modified_fields(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        let has_etag = self.etag.is_some();
        self.fields.iter().filter(move |(name, _)| {
            [
                "cache-control",
                "content-location",
                "date",
                "etag",
                "expires",
                "vary",
            ]
            .iter()
            .any(|n| name_is(name, n))
                || (!has_etag && name_is(name, "last-modified"))
        })
    }

    /// The `Vary` names, when the response varies.
    pub fn vary_names(&self) -> Option<&[String]> {
        match &self.vary {
            VarySpec::Names(names) => Some(names),
            _ => None,
        }
    }
}

/// A response being received for storage: its fields, and its body as it streams past.
#[derive(Debug)]
pub struct Capture {
    pub status: u16,
    pub reason: String,
    pub fields: Vec<(String, Vec<u8>)>,
    pub body: BytesMut,
    /// Largest body that will be stored.
    pub limit: u64,
    /// The body outgrew the limit: stop collecting, do not store.
    pub abandoned: bool,
    pub request_time: SystemTime,
    /// A 206 being stored as a part of its representation.
    pub partial: Option<Partial>,
}

impl Capture {
    pub fn push(&mut self, data: &[u8]) {
        if self.abandoned {
            return;
        }
        if self.body.len() as u64 + data.len() as u64 > self.limit {
            self.abandoned = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times() -> ExchangeTimes {
        let now = SystemTime::now();
        ExchangeTimes {
            request_time: now,
            response_time: now,
            received: Instant::now(),
        }
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn stored_head_has_via_and_length_but_no_age() {
        let s = Stored::build(
            200,
            "OK",
            fields(&[
                ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/plain"),
            ]),
            Bytes::from_static(b"hello"),
            times(),
            &CachePolicy::default(),
            Some(b"Via: 1.1 ringgate\r\n"),
        );
        let head = String::from_utf8(s.head.to_vec()).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\nVia: 1.1 ringgate\r\nContent-Length: 5\r\n"
        );
        assert_eq!(s.freshness.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn framing_hop_by_hop_and_age_fields_are_not_stored() {
        let hs = [
            Header {
                name: "Connection",
                value: b"X-Conn",
            },
            Header {
                name: "X-Conn",
                value: b"1",
            },
            Header {
                name: "Transfer-Encoding",
                value: b"chunked",
            },
            Header {
                name: "Content-Length",
                value: b"5",
            },
            Header {
                name: "Age",
                value: b"10",
            },
            Header {
                name: "Keep-Alive",
                value: b"timeout=5",
            },
            Header {
                name: "ETag",
                value: b"\"a\"",
            },
        ];
        let stored = storable_fields(&hs, &ResponseDirectives::default());
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec!["Age", "ETag"],
            "Age is kept for the age calculation"
        );
    }

    #[test]
    fn no_cache_and_private_named_fields_are_withheld() {
        let cc = ResponseDirectives::parse(std::iter::once(
            &b"no-cache=\"set-cookie\", private=\"x-user\", max-age=5"[..],
        ));
        let hs = [
            Header {
                name: "Set-Cookie",
                value: b"a=1",
            },
            Header {
                name: "X-User",
                value: b"bob",
            },
            Header {
                name: "X-Ok",
                value: b"1",
            },
        ];
        let names: Vec<String> = storable_fields(&hs, &cc)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["X-Ok"]);
    }

    #[test]
    fn a_304_replaces_stored_fields_except_framing() {
        let old = Stored::build(
            200,
            "OK",
            fields(&[
                ("Cache-Control", "max-age=1"),
                ("ETag", "\"v1\""),
                ("X-Version", "old"),
            ]),
            Bytes::from_static(b"body"),
            times(),
            &CachePolicy::default(),
            None,
        );
        let update = [
            Header {
                name: "Cache-Control",
                value: b"max-age=100",
            },
            Header {
                name: "X-Version",
                value: b"new",
            },
            Header {
                name: "Content-Length",
                value: b"0",
            },
        ];
        let fresh = old.freshen(&update, times(), &CachePolicy::default(), None);
        assert_eq!(fresh.freshness.lifetime, Duration::from_secs(100));
        assert_eq!(fresh.body, old.body);
        let head = String::from_utf8(fresh.head.to_vec()).unwrap();
        assert!(
            head.contains("X-Version: new") && !head.contains("old"),
            "{head}"
        );
        assert!(head.contains("Content-Length: 4"), "{head}");
        assert!(head.contains("ETag: \"v1\""), "{head}");
    }

    #[test]
    fn age_grows_with_resident_time() {
        let mut t = times();
        t.received = Instant::now() - Duration::from_secs(30);
        let s = Stored::build(
            200,
            "OK",
            fields(&[("Cache-Control", "max-age=60"), ("Age", "5")]),
            Bytes::new(),
            t,
            &CachePolicy::default(),
            None,
        );
        let age = s.age(Instant::now()).as_secs();
        assert!((35..=36).contains(&age), "{age}");
        assert!(s.ttl(Instant::now()) <= 25);
    }

    fn facts_of(list: &[(&str, &str)]) -> ResponseFacts {
        response_facts(
            200,
            list.iter().map(|(n, v)| (*n, v.as_bytes())),
            &CachePolicy::default().targeted_fields,
        )
    }

    #[test]
    fn age_with_a_list_value_uses_the_first_member() {
        assert_eq!(facts_of(&[("Age", "7200, 0")]).age, Some(7200));
        assert_eq!(facts_of(&[("Age", "5"), ("Age", "900")]).age, Some(5));
        assert_eq!(facts_of(&[("Age", "x, 5")]).age, None);
    }

    #[test]
    fn dates_in_every_http_date_format_are_read() {
        let imf = facts_of(&[("Expires", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let rfc850 = facts_of(&[("Expires", "Sunday, 06-Nov-94 08:49:37 GMT")]);
        let asctime = facts_of(&[("Expires", "Sun Nov  6 08:49:37 1994")]);
        assert!(imf.expires.unwrap().is_some());
        assert_eq!(imf.expires, rfc850.expires);
        assert_eq!(imf.expires, asctime.expires);
        let invalid = facts_of(&[("Expires", "0")]);
        assert_eq!(
            invalid.expires,
            Some(None),
            "an invalid Expires is present but expired"
        );
    }

    #[test]
    fn capture_gives_up_beyond_the_limit() {
        let mut c = Capture {
            status: 200,
            reason: "OK".into(),
            fields: vec![],
            body: BytesMut::new(),
            limit: 10,
            abandoned: false,
            request_time: SystemTime::now(),
            partial: None,
        };
        c.push(b"12345");
        c.push(b"123456");
        assert!(c.abandoned);
        assert!(c.body.is_empty());
    }
}
