//! The cache on the request path.
//!
//! - [`decide`] runs while the request head is parsed: a usable stored
//!   response makes the request a hit; otherwise the request is forwarded
//!   with a [`CacheWork`] saying what to do with the answer (store it,
//!   revalidate a stale entry, invalidate on a write, or only label it).
//! - [`on_response_head`] runs when the upstream's head arrives: a 304 to a
//!   revalidation freshens the entry, a 5xx may be replaced by a stale
//!   entry (stale-if-error), a storable response starts a [`Capture`].
//! - [`store`] inserts a captured response; answers from a stored one are
//!   `super::stored`; the background revalidation of stale-while-revalidate
//!   is `super::refresh`.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use httparse::Header;

use crate::cache::control::RequestDirectives;
use crate::cache::entry::{
    response_facts, storable_fields, Capture, ExchangeTimes, Partial, Stored, StoredHead,
};
use crate::cache::fill::Fill;
use crate::cache::freshness::{may_serve_stale_on_error, may_store, usability, RequestFacts, Use};
use crate::cache::key::{partial_key, primary_key, url_key, url_part};
use crate::cache::policy::CachePolicy;
use crate::cache::shard::Lookup;
use crate::cache::vary::{variant_key, VarySpec};
use crate::config::RouteConfig;
use crate::http::headers::{name_is, trim};
use crate::http::request::{header_slots, RequestHead};
use crate::http::response::ResponseHead;
use crate::http::target::{normalize_authority, normalize_target};
use crate::http::Method;
use crate::worker::context::WorkerCtx;

pub use super::coalescing::{
    claim, coalesce_timeout, wait_for_other_worker, ClaimGuard, CrossCore,
};
use super::stored::partial_hit;
pub use super::stored::{write_hit, write_not_modified, Ask, HitKind, HitPlan};

/// What the cache does with a forwarded request's response.
pub enum WorkKind {
    /// A GET that missed, or whose stored response must be revalidated:
    /// store the response if allowed. `stale` is the stored response, kept
    /// for a 304 (when `conditional`) and for stale-if-error.
    Fill {
        stale: Option<Arc<Stored>>,
        conditional: bool,
    },
    /// An unsafe method: on a non-error response, invalidate the target URI
    /// and same-origin `Location` / `Content-Location` (RFC 9111 section 4.4).
    Invalidate,
    /// A HEAD for a stale stored GET: a 200 whose validators match
    /// refreshes the stored headers (RFC 9111 section 4.3.5).
    HeadUpdate { stored: Arc<Stored> },
    /// Only label the response with `Cache-Status`.
    Observe,
}

pub struct CacheWork {
    pub route: usize,
    pub key: Box<[u8]>,
    /// A copy of the client's request head, for `Vary` and the key of `Location`.
    pub request_head: Bytes,
    pub authority: String,
    /// The request came over TLS (the key's scheme).
    pub https: bool,
    pub kind: WorkKind,
    pub facts: RequestFacts,
    /// The client's own conditionals and range (the head sent upstream may
    /// carry the cache's validators instead): what a stored answer follows.
    pub ask: Ask,
    /// The `fwd` parameter of `Cache-Status`.
    pub fwd: &'static str,
    pub request_time: SystemTime,
    /// How far this node had applied the cluster's invalidations when the
    /// request came (`crate::cluster::shared`; 0 without a shared tier).
    pub mark: u64,
}

/// Validators the cache sends when it revalidates.
pub struct Validators {
    pub etag: Option<Vec<u8>>,
    pub last_modified: Option<Vec<u8>>,
}

pub enum Decision {
    /// The route does not cache.
    NotCached,
    Hit(HitPlan),
    /// Forward, then handle the response as `CacheWork` says; send
    /// `validators` instead of the client's conditionals when present.
    Forward(Box<CacheWork>, Option<Validators>),
    /// `only-if-cached` and nothing usable stored: 504.
    OnlyIfCachedMiss,
}

pub(super) fn values<'a>(
    headers: &'a [Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| name_is(h.name, name))
        .map(|h| h.value)
}

pub(super) fn field<'a>(stored: &'a Stored, name: &str) -> Option<&'a [u8]> {
    stored
        .fields
        .iter()
        .find(|(n, _)| name_is(n, name))
        .map(|(_, v)| v.as_slice())
}

/// Decides, while the head is borrowed, how the cache takes part in a request.
///
/// Everything here reads the request **as forwarded** (`forwarded_head`:
/// the head the upstream will get, after the route's header edits and the
/// verified identity replaced what the client sent), never the client's own
/// fields: that is the request the origin answers, so it is what the key,
/// the `Vary` variant and the request directives are taken from (RFC 9111
/// section 4.1). `req` gives the canonical target and method.
pub fn decide(
    ctx: &WorkerCtx,
    route_index: usize,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    upstream: &super::head::UpstreamRequest<'_>,
    headers: &[Header<'_>],
) -> Decision {
    let (Some(cache), Some(policy)) = (&ctx.cache, &route.cache) else {
        return Decision::NotCached;
    };
    {
        let facts = RequestFacts {
            authorization: headers.iter().any(|h| name_is(h.name, "authorization")),
            cc: RequestDirectives::parse(
                values(headers, "cache-control"),
                values(headers, "pragma"),
            ),
        };
        let ask = Ask::from_headers(req.method, headers);
        let mut key = ctx.key_buf.borrow_mut();
        primary_key(
            &mut key,
            upstream.https,
            req.authority,
            req.path_and_query,
            policy,
            headers,
        );
        let work = |kind, fwd, facts| {
            Box::new(CacheWork {
                route: route_index,
                key: key.as_slice().into(),
                // The caller keeps the head it writes from these fields.
                request_head: Bytes::new(),
                authority: req.authority.to_string(),
                https: upstream.https,
                kind,
                facts,
                ask: ask.clone(),
                fwd,
                request_time: SystemTime::now(),
                mark: ctx.cluster.as_ref().map_or(0, |c| c.mark()),
            })
        };
        match req.method {
            Method::Get | Method::Head => {}
            // RFC 9111 section 4.4: any method not known to be safe.
            m if !m.is_safe() && policy.invalidate_on_write => {
                return Decision::Forward(work(WorkKind::Invalidate, "method", facts), None);
            }
            _ => return Decision::Forward(work(WorkKind::Observe, "method", facts), None),
        }
        if ask.preconditions.unsupported {
            // If-Match, If-Unmodified-Since, If-Range: the origin decides.
            return Decision::Forward(work(WorkKind::Observe, "request", facts), None);
        }
        // The loop turn's time, as for timers: an entry's age is kept in
        // seconds, and one stored later in this turn has age 0 (saturating).
        let now = monoio::time::recent();
        let found = cache.shard.borrow_mut().lookup(&key, headers, now);
        let (fwd, stale) = match found {
            Lookup::Found(stored) => {
                let age = stored.age(now);
                let kind = match usability(&stored.freshness, age, &facts.cc) {
                    Use::Fresh => Some(HitKind::Fresh),
                    Use::StaleAllowed => Some(HitKind::StaleAllowed),
                    Use::StaleWhileRevalidate => Some(HitKind::StaleWhileRevalidate),
                    Use::Revalidate => None,
                };
                if let Some(kind) = kind {
                    let refresh = (kind == HitKind::StaleWhileRevalidate
                        && !stored.refreshing.load(Ordering::Acquire))
                    .then(|| {
                        super::refresh::plan(
                            ctx,
                            route_index,
                            route,
                            req,
                            upstream,
                            &key,
                            headers,
                            &stored,
                        )
                    });
                    return Decision::Hit(HitPlan::new(stored, kind, &ask, refresh));
                }
                (
                    if facts.cc.no_cache {
                        "request"
                    } else {
                        "stale"
                    },
                    Some(stored),
                )
            }
            Lookup::UriMiss => ("uri-miss", None),
            Lookup::VaryMiss => ("vary-miss", None),
        };
        // No usable whole: a stored part of it may hold the range asked for.
        if let Some(hit) = ask
            .range
            .as_ref()
            .and_then(|range| partial_hit(cache, &key, headers, now, range, &ask, &facts.cc))
        {
            return Decision::Hit(hit);
        }
        if facts.cc.only_if_cached {
            return Decision::OnlyIfCachedMiss;
        }
        if req.method == Method::Head {
            // A HEAD never fills the cache (its response has no body to store
            // as the GET), but it may bring a stale GET's headers up to date.
            let kind = match stale {
                Some(stored) => WorkKind::HeadUpdate { stored },
                None => WorkKind::Observe,
            };
            return Decision::Forward(work(kind, fwd, facts), None);
        }
        let validators = stale.as_ref().and_then(|s| {
            let v = Validators {
                etag: s.etag.clone(),
                last_modified: field(s, "last-modified").map(<[u8]>::to_vec),
            };
            (v.etag.is_some() || v.last_modified.is_some()).then_some(v)
        });
        let conditional = validators.is_some();
        Decision::Forward(
            work(WorkKind::Fill { stale, conditional }, fwd, facts),
            validators,
        )
    }
}

/// What to do with the upstream's response.
pub enum Action {
    /// Relay it; capture the body for storage when `capture` is set.
    /// `status_line` is the `Cache-Status` field to add; `invalidate` lists
    /// keys every worker must drop before the response goes out (a write).
    Relay {
        capture: Option<Capture>,
        status_line: Vec<u8>,
        invalidate: Option<Vec<Box<[u8]>>>,
    },
    /// Answer from this stored response instead (304 freshened it, or stale-if-error).
    Serve(HitPlan),
}

fn status_line(fwd: &str, upstream_status: u16, stored: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(80);
    let _ = write!(
        line,
        "Cache-Status: ringgate; fwd={fwd}; fwd-status={upstream_status}"
    );
    if stored {
        line.extend_from_slice(b"; stored");
    }
    line.extend_from_slice(b"\r\n");
    line
}

pub(super) fn policy(ctx: &WorkerCtx, route: usize) -> &CachePolicy {
    ctx.config.routes[route]
        .cache
        .as_ref()
        .expect("cache work only exists for caching routes")
}

/// Fields a forwarded head may carry: the client's (at most
/// `MAX_HEADERS_CAP`), the route's and the identity's (bounded by the
/// config), and the few the gateway adds.
const FORWARDED_FIELDS: usize = 2 * crate::config::MAX_HEADERS_CAP;

/// Runs a forwarded request head (written by the gateway) through httparse
/// again, for its fields; `None` if it does not parse whole, which the
/// cache then treats as uncacheable rather than as a request without fields.
pub(super) fn parse_forwarded<T>(head: &[u8], f: impl FnOnce(&[Header<'_>]) -> T) -> Option<T> {
    let mut slots = header_slots::<FORWARDED_FIELDS>();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut slots) {
        Ok(httparse::Status::Complete(_)) => Some(f(req.headers)),
        _ => None,
    }
}

/// Decides, while the upstream's head is borrowed, what happens to the response.
///
/// `body_complete` says whether the whole body came with the head: only
/// then is it stored before the head goes out, and only then may the head
/// say `stored` (a longer body is still filling, and may yet fail).
pub fn on_response_head(
    ctx: &WorkerCtx,
    work: &CacheWork,
    resp: &ResponseHead<'_>,
    method: Method,
    body_complete: bool,
) -> Action {
    let cache = ctx.cache.as_ref().expect("cache work implies a cache");
    let policy = policy(ctx, work.route);
    match &work.kind {
        WorkKind::Observe => Action::Relay {
            capture: None,
            status_line: status_line(work.fwd, resp.status, false),
            invalidate: None,
        },
        WorkKind::HeadUpdate { stored } => {
            if resp.status == 200 && head_matches(stored, resp) {
                cache.count(crate::cache::CacheEvent::Revalidation);
                refreshed(ctx, work, stored, resp);
            }
            Action::Relay {
                capture: None,
                status_line: status_line(work.fwd, resp.status, false),
                invalidate: None,
            }
        }
        WorkKind::Invalidate => Action::Relay {
            capture: None,
            status_line: status_line(work.fwd, resp.status, false),
            invalidate: (resp.status < 400).then(|| keys_written(ctx, work, policy, resp)),
        },
        WorkKind::Fill { stale, conditional } => {
            if let Some(stale) = stale {
                if *conditional && resp.status == 304 {
                    cache.count(crate::cache::CacheEvent::Revalidation);
                    let fresh = refreshed(ctx, work, stale, resp);
                    return Action::Serve(HitPlan::new(
                        fresh,
                        HitKind::Revalidated,
                        &work.ask,
                        None,
                    ));
                }
                let servable = (resp.status >= 500)
                    .then(|| {
                        let age = stale.age(Instant::now());
                        // The origin answered: only stale-if-error, not the grace.
                        may_serve_stale_on_error(
                            &stale.freshness,
                            age,
                            &work.facts.cc,
                            Duration::ZERO,
                        )
                    })
                    .flatten();
                if let Some(reason) = servable {
                    return Action::Serve(HitPlan::new(
                        stale.clone(),
                        HitKind::StaleOnError(resp.status, reason),
                        &work.ask,
                        None,
                    ));
                }
            }
            cache.count(crate::cache::CacheEvent::Miss);
            let (status, partial) = stored_status(policy, resp);
            let facts = response_facts(
                status,
                resp.headers.iter().map(|h| (h.name, h.value)),
                &policy.targeted_fields,
            );
            let limit = store_limit(ctx, policy);
            let storable = storable(ctx, work, resp, method, &facts);
            if !storable && stale.is_some() && resp.status != 304 {
                // The origin's newer answer is not storable: the old one must not outlive it.
                cache.shard.borrow_mut().remove_uri(&work.key);
            }
            let capture = storable.then(|| Capture {
                status,
                reason: if status == resp.status {
                    resp.reason.to_string()
                } else {
                    "OK".to_string()
                },
                fields: storable_fields(resp.headers, &facts.cc)
                    .into_iter()
                    // The cache writes its own Content-Range for every part it serves.
                    .filter(|(name, _)| resp.status != 206 || !name_is(name, "content-range"))
                    .collect(),
                body: BytesMut::new(),
                limit,
                abandoned: false,
                request_time: work.request_time,
                partial,
            });
            Action::Relay {
                status_line: status_line(work.fwd, resp.status, capture.is_some() && body_complete),
                capture,
                invalidate: None,
            }
        }
    }
}

/// `stored` with the header fields of `resp` (a 304, or a HEAD's 200),
/// put back in this worker's shard and offered to the others.
fn refreshed(
    ctx: &WorkerCtx,
    work: &CacheWork,
    stored: &Stored,
    resp: &ResponseHead<'_>,
) -> Arc<Stored> {
    let cache = ctx.cache.as_ref().expect("cache work implies a cache");
    let times = ExchangeTimes::now(work.request_time);
    let policy = policy(ctx, work.route);
    let fresh = Arc::new(stored.freshen(resp.headers, times, policy, ctx.via()));
    if let Some(variant) = parse_forwarded(&work.request_head, |headers| {
        cache
            .shard
            .borrow_mut()
            .insert(&work.key, headers, fresh.clone())
    }) {
        offer(ctx, &work.key, variant, &fresh);
    }
    fresh
}

/// The status a response is stored under, and where a stored part sits: a
/// 206 whose `Content-Range` covers the whole representation is the 200 it
/// equals (RFC 9111 section 3.4); one of a part of a known whole is kept
/// as that part. Either only when the route allows it; any other 206 is
/// not stored (see [`storable`]).
fn stored_status(policy: &CachePolicy, resp: &ResponseHead<'_>) -> (u16, Option<Partial>) {
    let crate::http::BodyFraming::Length(n) = resp.framing else {
        return (resp.status, None);
    };
    if resp.status != 206 || !policy.store_206 {
        return (resp.status, None);
    }
    match crate::cache::range::content_range(resp.headers, n) {
        Some((0, _, complete)) if complete == n => (200, None),
        Some((start, _, complete)) => (206, Some(Partial { start, complete })),
        None => (206, None),
    }
}

/// RFC 9111 section 4.3.5: a HEAD response describes the stored GET when
/// every validator it carries (at least one) matches the stored one, and
/// its `Content-Length`, if any, is the stored body's.
fn head_matches(stored: &Stored, resp: &ResponseHead<'_>) -> bool {
    let mut validators = 0;
    for h in resp.headers {
        let v = trim(h.value);
        let matches = if name_is(h.name, "etag") {
            stored.etag.as_deref() == Some(v)
        } else if name_is(h.name, "last-modified") {
            stored.last_modified.is_some() && crate::http::date::parse(v) == stored.last_modified
        } else if name_is(h.name, "content-length") {
            if std::str::from_utf8(v)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                != Some(stored.body.len() as u64)
            {
                return false;
            }
            continue;
        } else {
            continue;
        };
        if !matches {
            return false;
        }
        validators += 1;
    }
    validators > 0
}

/// The largest body stored for a route.
pub(super) fn store_limit(ctx: &WorkerCtx, policy: &CachePolicy) -> u64 {
    let max = ctx.cache.as_ref().map_or(0, |c| c.max_object);
    policy.max_object_size.unwrap_or(max).min(max)
}

/// Whether this response to a fill will be stored (RFC 9111 section 3 and the route's policy).
fn storable(
    ctx: &WorkerCtx,
    work: &CacheWork,
    resp: &ResponseHead<'_>,
    method: Method,
    facts: &crate::cache::freshness::ResponseFacts,
) -> bool {
    let policy = policy(ctx, work.route);
    let too_large =
        matches!(resp.framing, crate::http::BodyFraming::Length(n) if n > store_limit(ctx, policy));
    // A transfer-coded body is not the representation: never stored.
    let (status, partial) = stored_status(policy, resp);
    method == Method::Get
        && resp.transfer_codings.is_none()
        && !(status == 206 && partial.is_none())
        && matches!(work.kind, WorkKind::Fill { .. })
        && !too_large
        && may_store(&work.facts, facts, policy).is_ok()
}

/// Whether a fill's response will be stored, asked before anything else is
/// decided about it (to read a small body whole before answering).
pub fn will_store(
    ctx: &WorkerCtx,
    work: &CacheWork,
    resp: &ResponseHead<'_>,
    method: Method,
) -> bool {
    let policy = policy(ctx, work.route);
    let facts = response_facts(
        stored_status(policy, resp).0,
        resp.headers.iter().map(|h| (h.name, h.value)),
        &policy.targeted_fields,
    );
    storable(ctx, work, resp, method, &facts)
}

/// The stored head of a captured response.
fn captured_head(ctx: &WorkerCtx, work: &CacheWork, capture: &mut Capture) -> StoredHead {
    let mut head = StoredHead::build(
        capture.status,
        &capture.reason,
        std::mem::take(&mut capture.fields),
        ExchangeTimes::now(capture.request_time),
        policy(ctx, work.route),
        ctx.via(),
    );
    head.partial = capture.partial;
    head
}

/// Stores a captured response that arrived whole.
pub fn store(ctx: &WorkerCtx, work: &CacheWork, mut capture: Capture) {
    if capture.abandoned {
        return;
    }
    let head = captured_head(ctx, work, &mut capture);
    insert(
        ctx,
        &store_key(work, &head),
        &work.request_head,
        Stored::from_head(head, capture.body.freeze()),
        super::shared_tier::share_for(ctx, work),
    );
}

/// Where an entry goes: a part of a representation under the partial key.
fn store_key(work: &CacheWork, head: &StoredHead) -> Box<[u8]> {
    match head.partial {
        Some(_) => partial_key(&work.key),
        None => work.key.clone(),
    }
}

/// What a fill needs to store its response once the body is in.
pub struct FillStore {
    pub key: Box<[u8]>,
    /// The request as forwarded, for the `Vary` variant.
    pub request_head: Bytes,
    /// Whether the response goes to the cluster's shared tier.
    pub share: Option<super::shared_tier::Share>,
}

/// Starts a fill for a storable response whose body is still to come:
/// its stored head, and the variant it will be stored under.
pub fn start_fill(
    ctx: &WorkerCtx,
    work: &CacheWork,
    mut capture: Capture,
    length: Option<u64>,
) -> (Fill, FillStore) {
    let head = captured_head(ctx, work, &mut capture);
    let key = store_key(work, &head);
    let variant = match &head.vary {
        VarySpec::Names(names) => parse_forwarded(&work.request_head, |headers| {
            let mut key = Vec::new();
            variant_key(&mut key, &work.key, names, headers);
            key.into_boxed_slice()
        }),
        _ => None,
    };
    (
        Fill::new(head, length, variant),
        FillStore {
            key,
            request_head: work.request_head.clone(),
            share: super::shared_tier::share_for(ctx, work),
        },
    )
}

/// Stores the body a fill completed.
pub fn store_fill(ctx: &WorkerCtx, job: &FillStore, head: StoredHead, body: Bytes) -> Arc<Stored> {
    insert(
        ctx,
        &job.key,
        &job.request_head,
        Stored::from_head(head, body),
        job.share,
    )
}

/// Whether a request waiting for `fill` may be answered from it: it must
/// ask for what is being stored (its variant, its freshness demands) and
/// have no preconditions (those are answered from the entry once stored).
pub fn fill_serves(work: &CacheWork, fill: &Fill) -> bool {
    // Preconditions and ranges are answered from the entry once stored;
    // a part of a representation never answers for the whole.
    if !work.ask.preconditions.is_empty() || work.ask.range.is_some() || fill.head.partial.is_some()
    {
        return false;
    }
    parse_forwarded(&work.request_head, |headers| {
        let same_variant = match (&fill.head.vary, &fill.variant) {
            (VarySpec::None, _) => true,
            (VarySpec::Names(names), Some(leader)) => {
                let mut key = Vec::new();
                variant_key(&mut key, &work.key, names, headers);
                key == **leader
            }
            _ => false,
        };
        same_variant
            && usability(
                &fill.head.freshness,
                fill.head.age(Instant::now()),
                &work.facts.cc,
            ) == Use::Fresh
    })
    .unwrap_or(false)
}

/// Inserts an entry into this worker's shard and offers it to the others;
/// with `share`, also to the cluster's shared tier.
pub(super) fn insert(
    ctx: &WorkerCtx,
    key: &[u8],
    request_head: &[u8],
    stored: Stored,
    share: Option<super::shared_tier::Share>,
) -> Arc<Stored> {
    let cache = ctx.cache.as_ref().expect("cache work implies a cache");
    let stored = Arc::new(stored.with_tags(&ctx.config.cache.tag_headers));
    let Some(variant) = parse_forwarded(request_head, |headers| {
        cache
            .shard
            .borrow_mut()
            .insert(key, headers, stored.clone())
    }) else {
        return stored;
    };
    cache.count(crate::cache::CacheEvent::Store);
    if let Some(share) = share {
        super::shared_tier::put(ctx, key, variant.as_deref(), &stored, share);
    }
    offer(ctx, key, variant, &stored);
    stored
}

/// Offers a stored response to the other workers (one logical cache): they
/// keep the same `Arc`, so the body exists once.
fn offer(ctx: &WorkerCtx, primary: &[u8], variant: Option<Box<[u8]>>, stored: &Arc<Stored>) {
    if !ctx.config.cache.share || ctx.bus.workers() < 2 {
        return;
    }
    let message = crate::bus::Message::Offer {
        from: ctx.index,
        primary: primary.into(),
        variant: variant.map(Into::into),
        stored: stored.clone(),
    };
    if let Err(e) = ctx.bus.broadcast(&message, Some(ctx.index)) {
        tracing::warn!(worker = ctx.index, error = %e, "could not offer a stored response to every worker");
    }
}

/// The URLs a successful write invalidates (as URL parts of keys): its
/// target, and a same-origin `Location` or `Content-Location` (RFC 9111
/// section 4.4). Every entry stored for them goes, whatever its key
/// headers, cookies or variants.
fn keys_written(
    ctx: &WorkerCtx,
    work: &CacheWork,
    policy: &CachePolicy,
    resp: &ResponseHead<'_>,
) -> Vec<Box<[u8]>> {
    let mut keys = vec![Box::<[u8]>::from(url_part(&work.key))];
    let mut key = ctx.key_buf.borrow_mut();
    for h in resp
        .headers
        .iter()
        .filter(|h| name_is(h.name, "location") || name_is(h.name, "content-location"))
    {
        let Ok(target) = std::str::from_utf8(trim(h.value)) else {
            continue;
        };
        let path = if target.starts_with('/') {
            Some(target)
        } else {
            target
                .strip_prefix("http://")
                .and_then(|rest| rest.find('/').map(|i| (&rest[..i], &rest[i..])))
                .filter(|(authority, _)| {
                    let mut scratch = String::new();
                    normalize_authority(authority, &mut scratch)
                        .is_ok_and(|(a, _)| a == work.authority)
                })
                .map(|(_, path)| path)
        };
        let mut scratch = String::new();
        let Some(Ok((_, path))) = path.map(|p| normalize_target(p, ctx.config.paths, &mut scratch))
        else {
            continue;
        };
        url_key(&mut key, work.https, &work.authority, path, &policy.query);
        keys.push(key.as_slice().into());
    }
    keys
}

/// After waiting for a concurrent fetch: the response it stored, if usable.
pub fn lookup_after_wait(ctx: &WorkerCtx, work: &CacheWork) -> Option<HitPlan> {
    let cache = ctx.cache.as_ref()?;
    let now = Instant::now();
    let found = parse_forwarded(&work.request_head, |headers| {
        cache.shard.borrow_mut().lookup(&work.key, headers, now)
    })?;
    match found {
        Lookup::Found(stored)
            if usability(&stored.freshness, stored.age(now), &work.facts.cc) == Use::Fresh =>
        {
            Some(HitPlan::new(stored, HitKind::Collapsed, &work.ask, None))
        }
        _ => None,
    }
}

/// A stale entry that may answer in place of an origin that could not be
/// reached (refused, reset, timed out, closed before a response, or no
/// healthy server): under stale-if-error or the route's `stale_on_error`
/// grace. `status` is what the gateway would answer otherwise.
pub fn stale_for_error(ctx: &WorkerCtx, work: &CacheWork, status: u16) -> Option<HitPlan> {
    let WorkKind::Fill {
        stale: Some(stale), ..
    } = &work.kind
    else {
        return None;
    };
    let grace = policy(ctx, work.route).stale_on_error;
    let reason = may_serve_stale_on_error(
        &stale.freshness,
        stale.age(Instant::now()),
        &work.facts.cc,
        grace,
    )?;
    Some(HitPlan::new(
        stale.clone(),
        HitKind::StaleOnError(status, reason),
        &work.ask,
        None,
    ))
}
