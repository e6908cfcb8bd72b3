//! Answers from a stored response: why it answers ([`HitKind`]), what the
//! client asked of it besides the response itself ([`Ask`]: its own
//! conditionals and range), and the writes of a hit (whole, a 206 part, a
//! 416) and of a 304.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use httparse::Header;

use crate::cache::conditional::Preconditions;
use crate::cache::control::{RequestDirectives, DELTA_MAX};
use crate::cache::entry::Stored;
use crate::cache::freshness::{usability, StaleReason, Use};
use crate::cache::hit::HitBuf;
use crate::cache::key::partial_key;
use crate::cache::range::{Part, RangeRequest};
use crate::cache::shard::Lookup;
use crate::http::headers::push_decimal;
use crate::http::Method;

/// Why a stored response answers the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Fresh,
    /// Stale, accepted by the client's `max-stale`.
    StaleAllowed,
    /// Stale, refreshed in the background.
    StaleWhileRevalidate,
    /// Stored by a concurrent request this one waited for.
    Collapsed,
    /// Read from the cluster's shared tier (stored by another node).
    Shared,
    /// Revalidated just now with a 304.
    Revalidated,
    /// Stale, standing in for an upstream error: the origin's status, or
    /// the one the gateway would have answered when it could not reach it.
    StaleOnError(u16, StaleReason),
}

pub struct HitPlan {
    pub stored: Arc<Stored>,
    pub kind: HitKind,
    /// The client's preconditions hold: answer 304.
    pub not_modified: bool,
    /// The whole response, a byte range of it (206), or a 416.
    pub part: Part,
    pub refresh: Option<super::refresh::Refresh>,
}

/// What a client asks of a stored response besides the response itself.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub preconditions: Preconditions,
    /// A single byte range of a GET (with its `If-Range`).
    pub range: Option<RangeRequest>,
}

impl Ask {
    pub(super) fn from_headers(method: Method, headers: &[Header<'_>]) -> Ask {
        Ask {
            preconditions: Preconditions::from_headers(headers),
            // Range is defined for GET only (RFC 9110 section 14.2).
            range: (method == Method::Get)
                .then(|| RangeRequest::from_headers(headers))
                .flatten(),
        }
    }
}

impl HitPlan {
    /// The answer `stored` gives to a client asking `ask`.
    pub(super) fn new(
        stored: Arc<Stored>,
        kind: HitKind,
        ask: &Ask,
        refresh: Option<super::refresh::Refresh>,
    ) -> HitPlan {
        let part = ask.range.as_ref().map_or(Part::Whole, |r| {
            r.resolve(
                stored.status,
                stored.complete_length(),
                stored.etag.as_deref(),
                stored.last_modified,
            )
        });
        HitPlan {
            not_modified: answers_not_modified(&ask.preconditions, &stored),
            part,
            stored,
            kind,
            refresh,
        }
    }
}

/// A fresh stored part (a 206 of a known whole) that holds the requested
/// range, or that shows it starts past the end (416).
pub(super) fn partial_hit(
    cache: &crate::cache::WorkerCache,
    key: &[u8],
    headers: &[Header<'_>],
    now: Instant,
    range: &RangeRequest,
    ask: &Ask,
    cc: &RequestDirectives,
) -> Option<HitPlan> {
    let Lookup::Found(stored) = cache
        .shard
        .borrow_mut()
        .lookup(&partial_key(key), headers, now)
    else {
        return None;
    };
    let kind = match usability(&stored.freshness, stored.age(now), cc) {
        Use::Fresh => HitKind::Fresh,
        Use::StaleAllowed => HitKind::StaleAllowed,
        _ => return None,
    };
    let part = range.resolve(
        200,
        stored.complete_length(),
        stored.etag.as_deref(),
        stored.last_modified,
    );
    match part {
        Part::Bytes { first, last } if stored.part(first, last).is_some() => {}
        Part::Unsatisfiable => {}
        _ => return None,
    }
    Some(HitPlan {
        not_modified: answers_not_modified(&ask.preconditions, &stored),
        part,
        stored,
        kind,
        refresh: None,
    })
}

/// Whether the client's own conditionals make a stored response a 304
/// (RFC 9111 section 4.3.2: only for a 2xx).
pub(super) fn answers_not_modified(preconditions: &Preconditions, stored: &Stored) -> bool {
    stored.status / 100 == 2
        && !preconditions.is_empty()
        && preconditions.not_modified(stored.etag.as_deref(), stored.last_modified, stored.date)
}

/// The per-response lines of a hit: Age and Cache-Status. Written piece by
/// piece: `write!` cost a hit about 5% of its instructions.
fn hit_lines(out: &mut Vec<u8>, plan: &HitPlan, now: Instant) {
    let stored = &plan.stored;
    out.extend_from_slice(b"Age: ");
    push_decimal(out, stored.age(now).as_secs().min(DELTA_MAX));
    out.extend_from_slice(b"\r\nCache-Status: ringgate; ");
    let ttl = stored.ttl(now);
    let (before, after): (&[u8], &[u8]) = match plan.kind {
        HitKind::Fresh | HitKind::StaleAllowed => (b"hit; ttl=", b""),
        HitKind::StaleWhileRevalidate => (b"hit; ttl=", b"; detail=stale-while-revalidate"),
        HitKind::Collapsed => (b"fwd=uri-miss; collapsed; ttl=", b""),
        HitKind::Shared => (b"fwd=uri-miss; ttl=", b"; detail=shared"),
        HitKind::Revalidated => (b"fwd=stale; fwd-status=304; ttl=", b""),
        HitKind::StaleOnError(status, reason) => {
            out.extend_from_slice(b"fwd=stale; fwd-status=");
            push_decimal(out, u64::from(status));
            let detail: &[u8] = match reason {
                StaleReason::StaleIfError => b"; detail=stale-if-error",
                StaleReason::Grace => b"; detail=stale",
            };
            (b"; ttl=", detail)
        }
    };
    out.extend_from_slice(before);
    if ttl < 0 {
        out.push(b'-');
    }
    push_decimal(out, ttl.unsigned_abs());
    out.extend_from_slice(after);
    out.extend_from_slice(b"\r\n");
}

/// Prepares `buf` for a full hit (`head_only` for HEAD); the session adds
/// its `Connection` line and the blank line to the suffix.
pub fn write_hit(buf: &mut HitBuf, plan: &HitPlan, head_only: bool) {
    let stored = &plan.stored;
    match plan.part {
        Part::Whole if head_only => buf.set(stored.head.clone(), Bytes::new()),
        Part::Whole => buf.set(stored.head.clone(), stored.body.clone()),
        Part::Bytes { first, last } => buf.set(
            stored.partial_head(first, last),
            // The part was checked to be held when it was planned.
            stored.part(first, last).unwrap_or_default(),
        ),
        Part::Unsatisfiable => buf.set(stored.unsatisfiable_head(), Bytes::new()),
    }
    hit_lines(buf.suffix(), plan, monoio::time::recent());
}

/// Writes the head of a 304 answered from the stored response into `out`
/// (status line and fields; the session ends it).
pub fn write_not_modified(out: &mut Vec<u8>, plan: &HitPlan, via: Option<&[u8]>) {
    out.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\n");
    for (name, value) in plan.stored.not_modified_fields() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    hit_lines(out, plan, monoio::time::recent());
    if let Some(via) = via {
        out.extend_from_slice(via);
    }
}
