//! The request's phases up to the choice of a server, in order, one short
//! function each. They are protocol-free: a downstream session (HTTP/1
//! today) parses a request into a [`RequestHead`], says what it knows of
//! the connection ([`Downstream`]) and gets back a [`Plan`]; the session
//! then reads more, answers, or forwards. A phase either passes the request
//! on or stops it with the plan that answers it ([`Stop`]). [`answer`]
//! carries the plan out: the gateway's own answers and hits here, a
//! forwarded request in `super::forward`.
//!
//! ```text
//! normalise -> purge -> redirect_to_https -> route -> check_body_size
//!   -> admit -> buffer_body -> cache_decide -> pick_server -> Plan::Forward
//! ```

// A phase's `Err` is the plan that answers the request (a cache hit among
// them): boxing it would allocate on every hit, so it is returned by value.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::rc::Rc;

use super::answer::{self, answer_from_cache, respond_error};
use super::cache::{self, CacheWork};
use super::head::{self, UpstreamRequest};
use super::reading::body_to_buffer;
use super::{redirect_status, refresh, tunnel, Answered, Client, Forward, Next, Plan};
use crate::config::RouteConfig;
use crate::error::ErrorKind;
use crate::http::request::RequestHead;
use crate::http::{BodyFraming, HttpError, Method};
use crate::route::auth::Identity;
use crate::route::Found;
use crate::worker::context::{Counter, WorkerCtx};
use crate::worker::signal::boxed;

/// What the downstream session knows of the connection a request came on.
pub(super) struct Downstream<'a> {
    pub peer: IpAddr,
    pub peer_ip: &'a str,
    /// The request came over TLS.
    pub https: bool,
    /// The listener redirects every request to `https://` on this port.
    pub redirect_https: Option<u16>,
    /// What was read of the request so far: its head, maybe some body.
    pub buffered: &'a [u8],
    /// `100 Continue` was already sent for this request.
    pub sent_continue: bool,
    /// The request came on an HTTP/2 stream (for `Via`).
    pub http2: bool,
    /// The request's `X-Request-Id` (empty: request ids are off).
    pub request_id: &'a [u8],
    /// The rate limit's answer from an earlier pass over this request (its
    /// body was still arriving, or the cluster was asked): counted once.
    pub limit_verdict: Option<crate::route::rate_limit::Outcome>,
}

/// What the phases found out, for the access log.
#[derive(Default)]
pub(super) struct Facts {
    pub route: Option<usize>,
    pub cache: crate::access_log::CacheStatus,
    /// The rate limit's answer, kept for another pass over the request.
    pub limit_verdict: Option<crate::route::rate_limit::Outcome>,
}

/// Why a phase did not pass the request on.
pub(super) enum Stop {
    /// The plan that answers the request now.
    Answer(Plan),
    /// The request is malformed: refused, and the connection closed.
    Malformed(HttpError),
}

impl From<HttpError> for Stop {
    fn from(e: HttpError) -> Stop {
        Stop::Malformed(e)
    }
}

type Phase<T> = Result<T, Stop>;

fn refuse<T>(error: ErrorKind, request: &Answered) -> Phase<T> {
    Err(Stop::Answer(Plan::Refuse {
        error,
        request: request.clone(),
    }))
}

/// Runs the phases on a parsed request. For a request to forward, the
/// upstream request head is written into `out`. Synchronous: the head
/// borrows the session's buffer and never lives across an await.
pub(super) fn plan<'b>(
    ctx: &WorkerCtx,
    down: &Downstream<'_>,
    req: &mut RequestHead<'b>,
    scratch: &'b mut (String, String),
    out: &mut Vec<u8>,
    facts: &mut Facts,
) -> Result<Plan, HttpError> {
    match phases(ctx, down, req, scratch, out, facts) {
        Ok(plan) | Err(Stop::Answer(plan)) => Ok(plan),
        Err(Stop::Malformed(e)) => Err(e),
    }
}

fn phases<'b>(
    ctx: &WorkerCtx,
    down: &Downstream<'_>,
    req: &mut RequestHead<'b>,
    scratch: &'b mut (String, String),
    out: &mut Vec<u8>,
    facts: &mut Facts,
) -> Phase<Plan> {
    normalise(ctx, req, scratch)?;
    let req = &*req;
    let answered = Answered::of(req);
    purge(ctx, down, req, &answered)?;
    redirect_to_https(down, req, &answered)?;
    let (index, route) = route(ctx, req, &answered)?;
    facts.route = Some(index);
    check_body_size(ctx, req, &answered)?;
    let identity = admit(ctx, route, req, &answered)?;
    limit_rate(ctx, route, req, down, identity.as_deref(), &answered, facts)?;
    ai_call(index, route, req, down, identity.as_deref(), &answered)?;
    buffer_body(ctx, route, req, down)?;
    let upgrade = tunnel::requested(req, route);
    let forwarded = UpstreamRequest {
        route,
        proxy: &ctx.config.proxy,
        client_ip: down.peer_ip,
        https: down.https,
        fallback_host: "",
        strip_expect: req.expect_continue,
        via_line: &ctx.via_line,
        received_h2: down.http2,
        validators: None,
        method_override: None,
        identity: identity.as_deref().unwrap_or(&[]),
        upgrade: upgrade.map(|i| route.upgrade[i].as_str()),
        request_id: (!down.request_id.is_empty()).then_some(down.request_id),
    };
    let decided = cache_decide(ctx, index, route, req, &forwarded, upgrade, &answered, out);
    facts.cache = match (&decided, route.cache.is_some()) {
        (Err(Stop::Answer(Plan::Hit { .. })), _) => crate::access_log::CacheStatus::Hit,
        (Ok((Some(work), _)), _) => match &work.kind {
            cache::WorkKind::Fill {
                conditional: true, ..
            } => crate::access_log::CacheStatus::Revalidated,
            cache::WorkKind::Fill { .. } => crate::access_log::CacheStatus::Miss,
            _ => crate::access_log::CacheStatus::Bypass,
        },
        (_, true) => crate::access_log::CacheStatus::Bypass,
        (_, false) => crate::access_log::CacheStatus::None,
    };
    let (cache, head_written) = decided?;
    let (server, balance_key, pin_cookie) =
        pick_server(ctx, route, req, down, cache.as_deref(), &answered, facts)?;
    if !head_written {
        let upstreams = ctx.upstreams.borrow();
        let forwarded = UpstreamRequest {
            fallback_host: upstreams.host_of(server),
            ..forwarded
        };
        out.clear();
        head::write_forwarded_head(out, req, &forwarded, &mut ctx.forward_scratch.borrow_mut());
    }
    Ok(Plan::Forward(Forward {
        head_len: req.head_len,
        method: req.method,
        version: req.version,
        body: req.body,
        keep_alive: req.keep_alive,
        expect_continue: req.expect_continue && !down.sent_continue,
        server,
        route: index,
        group: route.upstream,
        balance_key,
        may_retry_status: false,
        pin_cookie,
        timeouts: route.timeouts.resolve(&ctx.config.timeouts),
        cache,
        upgrade,
    }))
}

/// One canonical host and path for routing, the cache key and the upstream (400).
fn normalise<'b>(
    ctx: &WorkerCtx,
    req: &mut RequestHead<'b>,
    scratch: &'b mut (String, String),
) -> Phase<()> {
    let (host, path) = scratch;
    req.normalize(ctx.config.paths, host, path)?;
    Ok(())
}

/// `PURGE /path` (the Varnish and nginx convention), where this gateway
/// caches: every URL part it may be stored under, for an allowed client.
fn purge(
    ctx: &WorkerCtx,
    down: &Downstream<'_>,
    req: &RequestHead<'_>,
    answered: &Answered,
) -> Phase<()> {
    if req.method_name != "PURGE" || ctx.cache.is_none() {
        return Ok(());
    }
    let urls = crate::cache::key::url_keys(
        req.authority,
        req.path_and_query,
        ctx.config.routes.iter().filter_map(|r| r.cache.as_ref()),
    );
    let allowed = ctx
        .config
        .cache
        .purge_allow
        .iter()
        .any(|r| r.contains(down.peer));
    Err(Stop::Answer(Plan::Purge {
        request: answered.clone(),
        urls,
        allowed,
    }))
}

/// A plain listener that only redirects to HTTPS (301 for GET and HEAD, 308 otherwise).
fn redirect_to_https(
    down: &Downstream<'_>,
    req: &RequestHead<'_>,
    answered: &Answered,
) -> Phase<()> {
    let Some(port) = down.redirect_https else {
        return Ok(());
    };
    if req.host.is_empty() {
        return refuse(ErrorKind::BadRequest(HttpError::MissingHost), answered);
    }
    let host = if req.host.contains(':') {
        format!("[{}]", req.host)
    } else {
        req.host.to_string()
    };
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    Err(Stop::Answer(Plan::Redirect {
        status: redirect_status(req.method),
        request: answered.clone(),
        location: format!("https://{host}{port}{}", req.path_and_query),
    }))
}

/// The first matching route (404), or a redirect to add a prefix's trailing slash.
fn route<'c>(
    ctx: &'c WorkerCtx,
    req: &RequestHead<'_>,
    answered: &Answered,
) -> Phase<(usize, &'c RouteConfig)> {
    match ctx
        .router
        .find(req.host, req.path, req.method_name, req.headers)
    {
        None => refuse(ErrorKind::NoRoute, answered),
        Some(Found::AddSlash(_)) => {
            let query = &req.path_and_query[req.path.len()..];
            Err(Stop::Answer(Plan::Redirect {
                request: answered.clone(),
                status: redirect_status(req.method),
                location: format!("{}/{query}", req.path),
            }))
        }
        Some(Found::Route(i)) => Ok((i, ctx.router.route(i))),
    }
}

/// A declared body over `max_request_body` (413).
fn check_body_size(ctx: &WorkerCtx, req: &RequestHead<'_>, answered: &Answered) -> Phase<()> {
    match (req.body, ctx.config.limits.max_request_body) {
        (BodyFraming::Length(n), Some(max)) if n > max => {
            refuse(ErrorKind::BadRequest(HttpError::BodyTooLarge), answered)
        }
        _ => Ok(()),
    }
}

/// Session tokens, checked before anything else may answer, the cache included (401).
fn admit(
    ctx: &WorkerCtx,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    answered: &Answered,
) -> Phase<Option<Identity>> {
    let Some(policy) = &route.auth else {
        return Ok(None);
    };
    match crate::route::auth::verify_request(policy, req.headers, std::time::SystemTime::now()) {
        Ok(identity) => Ok(identity),
        Err(e) => {
            tracing::debug!(worker = ctx.index, route = %route.name, error = %e, "session token refused");
            refuse(ErrorKind::Unauthorized, answered)
        }
    }
}

/// The route's rate limit (429 past it), on hits too, under the route's
/// name (a reload that keeps the route keeps its clients' counts): counted
/// for the whole node, or with `scope = "cluster"` by every node through
/// Redis, whose answer may have to be waited for (`Plan::AwaitLimit`, then
/// this phase runs again with it). A request without the key the limit
/// names (its header or cookie) is counted by its client address instead,
/// so leaving the key out does not escape the limit. A request is counted
/// once however many passes it takes.
fn limit_rate(
    ctx: &WorkerCtx,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    down: &Downstream<'_>,
    identity: Option<&[(String, String)]>,
    answered: &Answered,
    facts: &mut Facts,
) -> Phase<()> {
    use crate::route::rate_limit::{Fail, LimitKey, Limiter, Outcome, Scope};
    let Some(limit) = &route.rate_limit else {
        return Ok(());
    };
    let named: Option<&[u8]> = match &limit.key {
        LimitKey::ClientIp => None,
        LimitKey::Route => Some(b""),
        LimitKey::Header(name) => req
            .headers
            .iter()
            .find(|h| crate::http::headers::name_is(h.name, name))
            .map(|h| crate::http::headers::trim(h.value))
            .filter(|v| !v.is_empty()),
        LimitKey::Cookie(name) => crate::cache::key::cookie_value(req.headers, name),
        LimitKey::Subject => route.auth.as_ref().and_then(|policy| {
            identity?
                .iter()
                .find(|(header, _)| *header == policy.subject_header)
                .map(|(_, subject)| subject.as_bytes())
        }),
    };
    let key = match named {
        Some(value) => crate::route::rate_limit::Key::Named(value),
        None => crate::route::rate_limit::Key::Client(down.peer_ip.as_bytes()),
    };
    let now = std::time::Instant::now();
    let outcome = match down.limit_verdict.clone() {
        Some(decided) => decided,
        None => {
            let limiter: &dyn Limiter = match (limit.scope, &ctx.cluster) {
                (Scope::Cluster, Some(cluster)) => &*cluster.limits,
                _ => &*ctx.limiter,
            };
            limiter.acquire(&route.name, key, limit, now)
        }
    };
    let outcome = match outcome {
        Outcome::Unavailable => {
            ctx.stats.count(Counter::RateLimitUnavailable);
            match limit.fail {
                Fail::Local => ctx.limiter.acquire(&route.name, key, limit, now),
                Fail::Open => Outcome::Admitted { remaining: 0 },
                Fail::Closed => return refuse(ErrorKind::LimiterUnavailable, answered),
            }
        }
        decided => decided,
    };
    match outcome {
        Outcome::Pending(asked) => Err(Stop::Answer(Plan::AwaitLimit(asked))),
        Outcome::Refused { retry_after } => {
            ctx.stats.count(Counter::RateLimited);
            Err(Stop::Answer(Plan::Limited {
                request: answered.clone(),
                retry_after,
                policy: limit.policy(),
            }))
        }
        admitted => {
            if let Outcome::TableFull = admitted {
                ctx.stats.count(Counter::RateLimitTableFull);
            }
            facts.limit_verdict = Some(Outcome::Admitted { remaining: 0 });
            Ok(())
        }
    }
}

/// An AI route's request (`[routes.ai]`): its consumer known (401), by
/// its API key, or on a route with `[routes.auth]` by the verified token's
/// subject; its operation known (404), its body read whole up to the
/// route's `max_body` (413), then answered by `ai::run` instead of
/// forwarded.
fn ai_call(
    index: usize,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    down: &Downstream<'_>,
    identity: Option<&[(String, String)]>,
    answered: &Answered,
) -> Phase<()> {
    let Some(ai) = &route.ai else {
        return Ok(());
    };
    let consumer = match &route.auth {
        Some(policy) => identity.and_then(|identity| {
            identity
                .iter()
                .find(|(header, _)| *header == policy.subject_header)
                .map(|(_, subject)| subject.clone())
        }),
        None if ai.consumers.is_empty() => None,
        None => {
            let presented = req
                .headers
                .iter()
                .find(|h| crate::http::headers::name_is(h.name, "authorization"))
                .map_or(&b""[..], |h| h.value);
            let known = ai.consumers.iter().find(|c| {
                c.key
                    .as_ref()
                    .is_some_and(|k| crate::route::auth::bearer_is(presented, k.0.as_bytes()))
            });
            match known {
                Some(c) => Some(c.name.clone()),
                None => return refuse(ErrorKind::Unauthorized, answered),
            }
        }
    };
    let Some(endpoint) = super::ai::Endpoint::of(req.method, req.path) else {
        return refuse(ErrorKind::NoRoute, answered);
    };
    let body = match super::reading::whole_body(req, down.buffered, ai.max_body)? {
        super::reading::Whole::Body(body) => body,
        super::reading::Whole::Wait(wait) => return Err(Stop::Answer(Plan::ReadBody(wait))),
    };
    Err(Stop::Answer(Plan::Ai(Box::new(super::ai::AiCall {
        request: answered.clone(),
        route: index,
        endpoint,
        body,
        consumer,
    }))))
}

/// A small body is read whole before a server is chosen: a slow sender then
/// holds no upstream connection, and the request can be sent again.
fn buffer_body(
    ctx: &WorkerCtx,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    down: &Downstream<'_>,
) -> Phase<()> {
    let max = ctx.config.limits.max_request_body;
    match body_to_buffer(route, max, req, down.buffered)? {
        Some(wait) => Err(Stop::Answer(Plan::ReadBody(wait))),
        None => Ok(()),
    }
}

/// The cache's decision, on the request as it will be forwarded: a hit
/// answers; a miss or revalidation goes on with what to store (and the
/// upstream head written into `out`, the second value). A request without
/// a host has no key that could not mix sites, and an upgrade is a tunnel:
/// neither is cached.
#[allow(clippy::too_many_arguments)]
fn cache_decide(
    ctx: &WorkerCtx,
    index: usize,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    forwarded: &UpstreamRequest<'_>,
    upgrade: Option<usize>,
    answered: &Answered,
    out: &mut Vec<u8>,
) -> Phase<(Option<Box<CacheWork>>, bool)> {
    let caches = route.cache.is_some()
        && ctx.cache.is_some()
        && !req.authority.is_empty()
        && upgrade.is_none();
    if !caches {
        return Ok((None, false));
    }
    let mut composed = ctx.forward_scratch.borrow_mut();
    let mut fields = head::FieldList::new();
    head::forwarded_fields(req, forwarded, &mut composed, &mut fields);
    match cache::decide(ctx, index, route, req, forwarded, fields.as_slice()) {
        cache::Decision::Hit(hit) => Err(Stop::Answer(Plan::Hit {
            request: answered.clone(),
            hit,
        })),
        cache::Decision::OnlyIfCachedMiss => refuse(ErrorKind::NotCached, answered),
        cache::Decision::NotCached => {
            head::write_request_head(out, req, forwarded, fields.as_slice());
            Ok((None, true))
        }
        cache::Decision::Forward(mut work, validators) => {
            // A revalidation sends the stored validators instead of the client's.
            let sent = UpstreamRequest {
                validators: validators.as_ref(),
                ..*forwarded
            };
            head::write_request_head(out, req, &sent, fields.as_slice());
            // Kept for the response: its `Vary` variant is the forwarded request's.
            work.request_head = bytes::Bytes::copy_from_slice(out);
            Ok((Some(work), true))
        }
    }
}

/// A server of the route's group: the pinned one (sticky groups), else the
/// balancer's healthy pick, within the circuit breakers (503). With every
/// server down a stale entry may stand in (stale-if-error, `stale_on_error`).
fn pick_server(
    ctx: &WorkerCtx,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    down: &Downstream<'_>,
    cache: Option<&CacheWork>,
    answered: &Answered,
    facts: &mut Facts,
) -> Phase<(
    usize,
    crate::upstream::balancer::RequestKey,
    Option<Vec<u8>>,
)> {
    let mut upstreams = ctx.upstreams.borrow_mut();
    let key = upstreams.request_key(route.upstream, down.peer_ip, req.path, req.headers);
    let now = monoio::time::recent();
    let (server, pin_cookie) = match upstreams.pinned_server(route.upstream, req.headers, now) {
        Some(server) => (server, None),
        None => {
            let Some(server) = upstreams.pick_healthy(route.upstream, key, now) else {
                if let Some(hit) = cache.and_then(|work| cache::stale_for_error(ctx, work, 503)) {
                    facts.cache = crate::access_log::CacheStatus::Stale;
                    return Err(Stop::Answer(Plan::Hit {
                        request: answered.clone(),
                        hit,
                    }));
                }
                return refuse(ErrorKind::NoHealthyServer, answered);
            };
            // Sticky groups pin (or re-pin) the client to the server chosen.
            (server, upstreams.pin_cookie(route.upstream, server))
        }
    };
    if upstreams.over_capacity(route.upstream, server) {
        // Fail fast rather than pile more work on a saturated server or group.
        ctx.stats.count(Counter::BreakerTrips);
        return refuse(ErrorKind::OverCapacity, answered);
    }
    Ok((server, key, pin_cookie))
}

impl Answered {
    fn of(req: &RequestHead<'_>) -> Answered {
        Answered {
            head_len: req.head_len,
            body: req.body,
            keep_alive: req.keep_alive,
            head_only: req.method == Method::Head,
            version: req.version,
        }
    }
}

// ---------------------------------------------------------- after the plan

/// Carries out the plan: an answer of the gateway's own, a cache hit, or
/// the request forwarded.
pub(super) async fn answer(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    plan: Plan,
    out: Vec<u8>,
) -> Next {
    match plan {
        Plan::Refuse { error, request } => {
            let status = error.status().unwrap_or(500);
            let keep = client.finish_unforwarded(&request);
            respond_error(ctx, client, out, status, keep).await
        }
        Plan::Limited {
            request,
            retry_after,
            policy,
        } => answer::rate_limited(ctx, client, &request, retry_after, policy, out).await,
        Plan::Redirect {
            request,
            status,
            location,
        } => answer::redirect(ctx, client, &request, status, &location, out).await,
        Plan::ReadBody(_) | Plan::AwaitLimit(_) => {
            unreachable!("waited on before the plan is final")
        }
        // Boxed: only AI routes carry its state.
        Plan::Ai(call) => Box::pin(super::ai::run(ctx, client, call, out)).await,
        // Boxed: rare, and waiting on every worker takes room an idle
        // connection's future should not carry.
        Plan::Purge {
            request,
            urls,
            allowed,
        } => Box::pin(answer::purge(ctx, client, &request, urls, allowed, out)).await,
        Plan::Hit { request, mut hit } => {
            if let Some(job) = hit.refresh.take() {
                monoio::spawn(refresh::run(ctx.clone(), job));
            }
            answer_from_cache(ctx, client, &request, &hit, out).await
        }
        // Boxed: the forwarding state is large, and an idle or cache-hit
        // connection should not carry it (see connection_future_stays_small).
        Plan::Forward(forward) => {
            boxed(|| super::forward::proxy_request(ctx, client, forward, out)).await
        }
    }
}
