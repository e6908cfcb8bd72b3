//! The connection task: one per client connection, running on the worker
//! that accepted it. It reads a request head, routes it, relays the request
//! to an upstream over a pooled keep-alive connection, relays the response
//! back, and loops for the next request (keep-alive and pipelining: requests
//! are handled one after another, so responses leave in request order).
//!
//! ```text
//! wait for bytes (keep-alive timeout, drain)
//!   -> read + parse head (head deadline, size limits)   -> 400/408/413/431/501 + close
//!   -> route                                            -> 404
//!   -> pick server, pooled or new connection            -> 502/504
//!   -> send head (+ body: buffered, or streamed)        -> retry once if a pooled
//!   -> read response head (response timeout)               connection was dead
//!   -> send head + stream body to the client
//!   -> return the upstream connection to the pool
//! ```

pub mod cache;
pub mod fetch;
pub mod head;
pub mod io;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;

use crate::config::MAX_HEADERS_CAP;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::headers::push_hex;
use crate::http::request::{header_slots, parse_request};
use crate::http::response::parse_response;
use crate::http::{BodyFraming, HttpError, Method, Version};
use crate::route::Found;
use crate::worker::context::{Stats, WorkerCtx};
use crate::worker::signal::{race, Either};
use head::{ClientFraming, ConnectionField, UpstreamRequest};
use io::{read_some, write_all, Read};

/// Response heads from upstreams may carry at most this many fields.
const MAX_RESPONSE_HEADERS: usize = 256;

struct Client {
    stream: TcpStream,
    /// Its key in the worker's connection table (idle tracking, caps).
    conn: usize,
    /// Bytes read from the client and not consumed yet (may hold pipelined requests).
    buf: BytesMut,
    peer_ip: String,
    peer: std::net::IpAddr,
    /// Requests read on this connection.
    served: u64,
    /// The vectored-write buffer for cache hits, reused across requests.
    hit_buf: Option<crate::cache::hit::HitBuf>,
    /// `100 Continue` was already sent for the current request.
    sent_continue: bool,
}

enum Next {
    KeepAlive,
    Close,
}

/// Serves one client connection until it closes, fails, times out, the
/// worker drains or it is closed while idle to make room at a cap.
pub async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr, conn: usize) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        conn,
        stream,
        buf: BytesMut::with_capacity(ctx.per_core.client_buffer_size),
        peer_ip: peer.ip().to_string(),
        peer: peer.ip(),
        served: 0,
        hit_buf: None,
        sent_continue: false,
    };
    // Boxed so the connection task holds this state once, not once more inside `race`.
    let work = Box::pin(async {
        while let Next::KeepAlive = exchange(&ctx, &mut client).await {
            // Give back memory a large head or body made the buffer grow to.
            if client.buf.is_empty() && client.buf.capacity() > 4 * ctx.per_core.client_buffer_size
            {
                client.buf = BytesMut::with_capacity(ctx.per_core.client_buffer_size);
            }
        }
    });
    // After the shutdown grace period the work is dropped mid-flight: its
    // sockets close and its pending I/O is cancelled.
    race(work, ctx.forced_closed()).await;
}

/// What to do with a parsed request.
enum Plan {
    Forward(Forward),
    /// Answer locally with this status (no route, body too large).
    Refuse {
        status: u16,
        request: Answered,
    },
    /// Answer from the cache.
    Hit {
        request: Answered,
        hit: cache::HitPlan,
    },
    /// `PURGE` of a URL (the URL parts it may be stored under) from an
    /// allowed client (`allowed: false`: refuse).
    Purge {
        request: Answered,
        urls: Vec<Box<[u8]>>,
        allowed: bool,
    },
    /// A route's prefix without its trailing slash: redirect to add it.
    Redirect {
        request: Answered,
        status: u16,
        location: String,
    },
    /// Read more of the body before planning again (request buffering).
    ReadBody(BodyWait),
}

/// A request answered without the upstream: what is needed to finish it.
struct Answered {
    head_len: usize,
    body: BodyFraming,
    keep_alive: bool,
    head_only: bool,
    version: Version,
}

struct Forward {
    head_len: usize,
    method: Method,
    version: Version,
    body: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    server: usize,
    /// The route and group, and what the balancer hashed, for retries elsewhere.
    route: usize,
    group: usize,
    balance_key: crate::upstream::balancer::RequestKey,
    /// This attempt may turn a configured status into a retry.
    may_retry_status: bool,
    /// `Set-Cookie` line pinning the client to the server (sticky groups).
    pin_cookie: Option<Vec<u8>>,
    /// The route's upstream timeouts.
    timeouts: crate::config::UpstreamTimeouts,
    /// What the cache does with the response, on caching routes.
    cache: Option<Box<cache::CacheWork>>,
}

/// Parses the head in the client buffer and runs the request's phases up
/// to the choice of a server, in order: normalise, route, admit (session
/// token), buffer the body, cache, pick a server. For a request to forward,
/// the upstream request head is written into `out`. Synchronous: the parsed
/// head borrows the buffer and never lives across an await.
fn plan_request(
    ctx: &WorkerCtx,
    client: &Client,
    out: &mut Vec<u8>,
) -> Result<Option<Plan>, HttpError> {
    let limits = &ctx.config.limits;
    let mut scratch = ctx.target_scratch.borrow_mut();
    let (host_scratch, path_scratch) = &mut *scratch;
    let mut slots = header_slots::<MAX_HEADERS_CAP>();
    let Some(mut req) = parse_request(
        &client.buf,
        &mut slots[..limits.max_headers],
        limits.max_request_head,
    )?
    else {
        return Ok(None);
    };
    // 1. Normalise: one canonical host and path for routing, the key and the upstream.
    req.normalize(ctx.config.paths, host_scratch, path_scratch)?;
    let answered = Answered {
        head_len: req.head_len,
        body: req.body,
        keep_alive: req.keep_alive,
        head_only: req.method == Method::Head,
        version: req.version,
    };
    let refuse = |status, request| Ok(Some(Plan::Refuse { status, request }));
    // PURGE /path (Varnish and nginx convention): handled here when this gateway caches.
    if req.method_name == "PURGE" && ctx.cache.is_some() {
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
            .any(|r| r.contains(client.peer));
        return Ok(Some(Plan::Purge {
            request: answered,
            urls,
            allowed,
        }));
    }
    // 2. Route.
    let route_index = match ctx
        .router
        .find(req.host, req.path, req.method_name, req.headers)
    {
        None => return refuse(404, answered),
        Some(Found::AddSlash(_)) => {
            let query = &req.path_and_query[req.path.len()..];
            return Ok(Some(Plan::Redirect {
                request: answered,
                // 308 keeps the method and body; browsers follow 301 for GET as nginx sends it.
                status: if matches!(req.method, Method::Get | Method::Head) {
                    301
                } else {
                    308
                },
                location: format!("{}/{query}", req.path),
            }));
        }
        Some(Found::Route(i)) => i,
    };
    if let (BodyFraming::Length(n), Some(max)) = (req.body, limits.max_request_body) {
        if n > max {
            return refuse(413, answered);
        }
    }
    let route = ctx.router.route(route_index);
    // 3. Admit: session tokens are checked before anything else may answer, the cache included.
    let identity = match &route.auth {
        None => None,
        Some(policy) => match crate::route::auth::verify_request(
            policy,
            req.headers,
            std::time::SystemTime::now(),
        ) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::debug!(worker = ctx.index, route = %route.name, error = %e, "session token refused");
                return refuse(401, answered);
            }
        },
    };
    // 4. Buffer a small body whole before a server is chosen: a slow sender
    //    then holds no upstream connection, and the request can be resent.
    if let Some(wait) = body_to_buffer(route, limits.max_request_body, &req, &client.buf)? {
        return Ok(Some(Plan::ReadBody(wait)));
    }
    let upstream_request = |fallback_host| UpstreamRequest {
        route,
        proxy: &ctx.config.proxy,
        client_ip: &client.peer_ip,
        fallback_host,
        strip_expect: req.expect_continue,
        via_line: &ctx.via_line,
        validators: None,
        method_override: None,
        identity: identity.as_deref().unwrap_or(&[]),
    };
    // 5. Cache: decided on the request as it will be forwarded. A request
    //    without a host has no key that could not mix sites: never cached.
    let caches = route.cache.is_some() && ctx.cache.is_some() && !req.authority.is_empty();
    let mut cache_work = None;
    if caches {
        let forwarded = upstream_request("");
        head::write_request_head(out, &req, &forwarded);
        match cache::decide(ctx, route_index, route, &req, &forwarded, out) {
            cache::Decision::NotCached => {}
            cache::Decision::Hit(hit) => {
                return Ok(Some(Plan::Hit {
                    request: answered,
                    hit,
                }))
            }
            cache::Decision::OnlyIfCachedMiss => return refuse(504, answered),
            cache::Decision::Forward(work, validators) => {
                if let Some(validators) = validators {
                    // A revalidation sends the stored validators instead of the client's.
                    out.clear();
                    head::write_request_head(
                        out,
                        &req,
                        &UpstreamRequest {
                            validators: Some(&validators),
                            ..forwarded
                        },
                    );
                }
                cache_work = Some(work);
            }
        }
    }
    // 6. Pick a server.
    let mut upstreams = ctx.upstreams.borrow_mut();
    let key = upstreams.request_key(route.upstream, &client.peer_ip, req.path, req.headers);
    let now = Instant::now();
    let (server, pin_cookie) = match upstreams.pinned_server(route.upstream, req.headers, now) {
        Some(server) => (server, None),
        None => {
            let Some(server) = upstreams.pick_healthy(route.upstream, key, now) else {
                // Every server is down and the group does not fail open.
                return refuse(503, answered);
            };
            // Sticky groups pin (or re-pin) the client to the server chosen.
            (server, upstreams.pin_cookie(route.upstream, server))
        }
    };
    if upstreams.over_capacity(route.upstream, server) {
        // Fail fast rather than pile more work on a saturated server or group.
        Stats::bump(&ctx.stats.breaker_trips);
        return refuse(503, answered);
    }
    if !caches {
        out.clear();
        head::write_request_head(
            out,
            &req,
            &upstream_request(&upstreams.server_hosts[server]),
        );
    }
    drop(upstreams);
    Ok(Some(Plan::Forward(Forward {
        head_len: req.head_len,
        method: req.method,
        version: req.version,
        body: req.body,
        keep_alive: req.keep_alive,
        expect_continue: req.expect_continue && !client.sent_continue,
        server,
        route: route_index,
        group: route.upstream,
        balance_key: key,
        may_retry_status: false,
        pin_cookie,
        timeouts: route.timeouts.resolve(&ctx.config.timeouts),
        cache: cache_work,
    })))
}

/// More of the request body to read before planning goes on.
#[derive(Debug, Clone, Copy)]
struct BodyWait {
    /// Answer `Expect: 100-continue` first (no body byte has come yet).
    send_continue: bool,
}

/// Whether the body must be read further before a server is picked: it is
/// no larger than the route's `request_buffering` and not all here yet.
/// A chunked body too large to buffer, or one whose end is not in sight
/// once the buffer holds that much, streams instead.
fn body_to_buffer(
    route: &crate::config::RouteConfig,
    max_body: Option<u64>,
    req: &crate::http::request::RequestHead<'_>,
    buf: &[u8],
) -> Result<Option<BodyWait>, HttpError> {
    let limit = route.request_buffering;
    let have = &buf[req.head_len..];
    let complete = match req.body {
        BodyFraming::None | BodyFraming::UntilClose => true,
        BodyFraming::Length(n) => n > limit || have.len() as u64 >= n,
        BodyFraming::Chunked if limit == 0 => true,
        BodyFraming::Chunked => {
            let (end, decoded) = crate::http::chunked::scan_body(have)?;
            if max_body.is_some_and(|max| decoded > max) {
                return Err(HttpError::BodyTooLarge);
            }
            end.is_some() || have.len() as u64 >= limit
        }
    };
    Ok((!complete).then_some(BodyWait {
        send_continue: req.expect_continue && have.is_empty(),
    }))
}

/// Handles one request on the connection.
async fn exchange(ctx: &Rc<WorkerCtx>, client: &mut Client) -> Next {
    let timeouts = &ctx.config.timeouts;
    client.sent_continue = false;
    if client.buf.is_empty() {
        if ctx.draining.get() {
            return Next::Close;
        }
        // Idle: wait for the first byte of the next request, but not past the
        // keep-alive timeout, and not once a graceful shutdown starts.
        let limit = if client.served == 0 {
            timeouts.client_header
        } else {
            timeouts.keepalive
        };
        let read = read_some(
            &mut client.stream,
            &mut client.buf,
            ctx.per_core.client_buffer_size,
            limit,
        );
        ctx.conns.set_idle(client.conn);
        if ctx.active.get() >= ctx.per_core.max_connections {
            // The accept loop may be waiting for an idle connection to close.
            ctx.slot_notify.notify_all();
        }
        let stop = race(ctx.drain_started(), ctx.conns.evicted(client.conn));
        let woke = race(read, stop).await;
        ctx.conns.set_busy(client.conn);
        match woke {
            Either::Left(Read::Data(_)) => {}
            _ => return Next::Close,
        }
    }

    let deadline = io::deadline_in(timeouts.client_header);
    let mut out = ctx.take_write_buffer();
    let plan = loop {
        let (reserve, limit) = match plan_request(ctx, client, &mut out) {
            Ok(Some(Plan::ReadBody(wait))) => {
                if wait.send_continue && !client.sent_continue {
                    client.sent_continue = true;
                    if write_all(
                        &mut client.stream,
                        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                        timeouts.client_send,
                    )
                    .await
                    .is_err()
                    {
                        return Next::Close;
                    }
                }
                (ctx.per_core.upstream_buffer_size, timeouts.client_body)
            }
            Ok(Some(plan)) => break plan,
            Ok(None) => (
                ctx.per_core.client_buffer_size,
                deadline.saturating_duration_since(Instant::now()),
            ),
            Err(e) => {
                Stats::bump(&ctx.stats.client_errors);
                tracing::debug!(worker = ctx.index, error = %e, "refused request");
                out.clear();
                respond_error(ctx, client, out, e.status(), true, false).await;
                return Next::Close;
            }
        };
        match read_some(&mut client.stream, &mut client.buf, reserve, limit).await {
            Read::Data(_) => continue,
            Read::TimedOut => {
                Stats::bump(&ctx.stats.client_errors);
                respond_error(ctx, client, out, 408, true, false).await;
                return Next::Close;
            }
            Read::Eof | Read::Failed(_) => return Next::Close,
        }
    };
    client.served += 1;
    Stats::bump(&ctx.stats.requests);

    match plan {
        Plan::Refuse { status, request } => {
            out.clear();
            let keep = finish_unforwarded(ctx, client, &request);
            if respond_error(ctx, client, out, status, !keep, request.head_only).await && keep {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Plan::Redirect {
            request,
            status,
            location,
        } => {
            out.clear();
            let keep = finish_unforwarded(ctx, client, &request);
            head::write_redirect(&mut out, status, &location, !keep);
            match write_all(&mut client.stream, out, timeouts.client_send).await {
                Ok(out) if keep => {
                    ctx.give_write_buffer(out);
                    Next::KeepAlive
                }
                _ => Next::Close,
            }
        }
        Plan::ReadBody(_) => unreachable!("read before the plan is final"),
        Plan::Purge {
            request,
            urls,
            allowed,
        } => purge(ctx, client, &request, urls, allowed, out).await,
        Plan::Hit { request, mut hit } => {
            if let Some(job) = hit.refresh.take() {
                monoio::spawn(cache::refresh(ctx.clone(), job));
            }
            answer_from_cache(ctx, client, &request, &hit, out).await
        }
        // Boxed: the forwarding state is large, and an idle or cache-hit
        // connection should not carry it (see connection_future_stays_small).
        Plan::Forward(forward) => Box::pin(proxy_request(ctx, client, forward, out)).await,
    }
}

/// Consumes a request answered without the upstream. A body that already
/// sits in the buffer is skipped; any other would have to be read and thrown
/// away, so the connection is closed instead. Returns whether it may stay open.
fn finish_unforwarded(ctx: &WorkerCtx, client: &mut Client, request: &Answered) -> bool {
    let available = client.buf.len() - request.head_len;
    let skip = match request.body {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) if available as u64 >= n => Some(n as usize),
        _ => None,
    };
    client
        .buf
        .advance(request.head_len + skip.unwrap_or(available));
    request.keep_alive && skip.is_some() && client_may_continue(ctx, client)
}

/// Answers a request from a stored response (a hit, a 304 from it, or a
/// stale stand-in for an error).
async fn answer_from_cache(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    hit: &cache::HitPlan,
    out: Vec<u8>,
) -> Next {
    let keep = finish_unforwarded(ctx, client, request);
    if send_cached(
        ctx,
        client,
        hit,
        request.head_only,
        keep,
        request.version,
        out,
    )
    .await
        && keep
    {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Writes a stored response (or a 304 from it) to the client; false when the client is gone.
async fn send_cached(
    ctx: &WorkerCtx,
    client: &mut Client,
    hit: &cache::HitPlan,
    head_only: bool,
    keep: bool,
    version: Version,
    mut out: Vec<u8>,
) -> bool {
    if let Some(c) = &ctx.cache {
        match hit.kind {
            cache::HitKind::Fresh | cache::HitKind::Collapsed | cache::HitKind::Revalidated => {
                crate::cache::bump(&c.stats.hits)
            }
            _ => crate::cache::bump(&c.stats.stale_served),
        }
    }
    let connection: &[u8] = match (keep, version) {
        (false, _) => b"Connection: close\r\n",
        (true, Version::Http10) => b"Connection: keep-alive\r\n",
        (true, Version::Http11) => b"",
    };
    let limit = ctx.config.timeouts.client_send;
    if hit.not_modified {
        out.clear();
        cache::write_not_modified(&mut out, hit, ctx.via(), connection);
        return match write_all(&mut client.stream, out, limit).await {
            Ok(out) => {
                ctx.give_write_buffer(out);
                true
            }
            Err(_) => false,
        };
    }
    ctx.give_write_buffer(out);
    let mut buf = client.hit_buf.take().unwrap_or_default();
    cache::write_hit(&mut buf, hit, head_only, connection);
    match io::write_hit(&mut client.stream, buf, limit).await {
        Ok(buf) => {
            client.hit_buf = Some(buf);
            true
        }
        Err(_) => false,
    }
}

/// `PURGE`: invalidates the URL on every worker, then answers 200 with how
/// many responses went, 404 when none, 403 for clients not allowed to purge.
async fn purge(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    urls: Vec<Box<[u8]>>,
    allowed: bool,
    out: Vec<u8>,
) -> Next {
    let keep = finish_unforwarded(ctx, client, request);
    if !allowed {
        return if respond_error(ctx, client, out, 403, !keep, request.head_only).await && keep {
            Next::KeepAlive
        } else {
            Next::Close
        };
    }
    let message = crate::bus::Message::Invalidate {
        what: crate::bus::Invalidation::Urls(std::sync::Arc::new(urls)),
        removal: crate::cache::shard::Removal::Hard,
    };
    let (status, body) = match ctx
        .bus
        .broadcast_and_wait(message, ctx.config.cache.invalidation_timeout)
        .await
    {
        Ok(b) if b.removed > 0 => (
            200,
            format!("{{\"removed\":{},\"workers\":{}}}\n", b.removed, b.workers),
        ),
        Ok(b) => (
            404,
            format!("{{\"removed\":0,\"workers\":{}}}\n", b.workers),
        ),
        Err(e) => (503, format!("{{\"error\":\"{e}\"}}\n")),
    };
    let mut out = out;
    out.clear();
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        if status == 200 { "OK" } else { head::reason(status) },
        body.len(),
        if keep { "" } else { "Connection: close\r\n" }
    );
    match write_all(&mut client.stream, out, ctx.config.timeouts.client_send).await {
        Ok(out) if keep => {
            ctx.give_write_buffer(out);
            Next::KeepAlive
        }
        _ => Next::Close,
    }
}

fn client_may_continue(ctx: &WorkerCtx, client: &Client) -> bool {
    !ctx.draining.get() && client.served < ctx.config.limits.max_keepalive_requests
}

/// Writes a gateway-generated error response; false when the client is gone.
async fn respond_error(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    status: u16,
    close: bool,
    head_only: bool,
) -> bool {
    out.clear();
    head::write_error_response(&mut out, status, close, head_only);
    match write_all(&mut client.stream, out, ctx.config.timeouts.client_send).await {
        Ok(out) => {
            ctx.give_write_buffer(out);
            true
        }
        Err(_) => false,
    }
}

/// How far an exchange got, to decide what a failure still allows.
#[derive(Default)]
struct Progress {
    /// The whole request body was read from the client.
    request_consumed: bool,
    /// Response bytes were sent to the client: no error status is possible any more.
    response_started: bool,
    /// Bytes of a streamed request body were taken from the client: the
    /// request cannot be sent again.
    body_streamed: bool,
}

async fn proxy_request(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    mut forward: Forward,
    mut out: Vec<u8>,
) -> Next {
    // Concurrent misses for one key: the first fetches, the others wait for it.
    let mut _leader = None;
    let mut _claim = None;
    if let (Some(work), Some(worker_cache)) = (forward.cache.as_deref(), &ctx.cache) {
        if matches!(work.kind, cache::WorkKind::Fill { .. }) {
            match worker_cache.coalescer.join(&work.key) {
                crate::cache::coalesce::Join::Leader(guard) => {
                    _leader = Some(guard);
                    match cache::claim(ctx, work) {
                        cache::CrossCore::Fetch(claim) => _claim = claim,
                        cache::CrossCore::Wait => {
                            cache::wait_for_other_worker(ctx, work).await;
                            if let Some(hit) = cache::lookup_after_wait(ctx, work) {
                                return answer_from_cache(
                                    ctx,
                                    client,
                                    &forward.answered(),
                                    &hit,
                                    out,
                                )
                                .await;
                            }
                        }
                    }
                }
                crate::cache::coalesce::Join::Follower(flight) => {
                    crate::cache::bump(&worker_cache.stats.coalesced);
                    let _ = monoio::time::timeout(
                        cache::coalesce_timeout(ctx, work),
                        flight.finished(),
                    )
                    .await;
                    if let Some(hit) = cache::lookup_after_wait(ctx, work) {
                        return answer_from_cache(ctx, client, &forward.answered(), &hit, out)
                            .await;
                    }
                }
            }
        }
    }
    let mut ubuf = ctx.take_read_buffer();
    let mut progress = Progress::default();
    let body_in_out = take_request_bytes(client, &forward, &mut out, &mut progress);
    let retry = ctx.config.routes[forward.route].retry.as_ref();
    ctx.retry_budgets[forward.route]
        .borrow_mut()
        .record_request(Instant::now());
    let mut retries_left = retry.map_or(0, |r| r.attempts);
    let mut tried = vec![forward.server];
    let result = loop {
        // The whole request is in `out`: it can be sent again elsewhere.
        let replayable = body_in_out && forward.method.is_idempotent() && !out.is_empty();
        forward.may_retry_status = replayable
            && retries_left > 0
            && retry.is_some_and(|r| {
                !r.statuses.is_empty()
                    && ctx.retry_budgets[forward.route]
                        .borrow_mut()
                        .allows(r, Instant::now())
            });
        let attempt = {
            let _in_flight = InFlight::new(ctx, forward.server);
            relay(
                ctx,
                client,
                &forward,
                &mut out,
                &mut ubuf,
                &mut progress,
                body_in_out,
            )
            .await
        };
        if let Err(e) = &attempt {
            // Passive health: the server failed this request (statuses are counted at the head).
            if e.side == Side::Upstream && !matches!(e.kind, ErrorKind::RetryStatus(_)) {
                ctx.upstreams.borrow().record_outcome(
                    forward.group,
                    forward.server,
                    true,
                    Instant::now(),
                );
            }
        }
        let error = match attempt {
            Err(e) if retries_left > 0 && !progress.response_started => e,
            other => break other,
        };
        let policy = retry.expect("retries_left > 0 only with a retry policy");
        // `out` may have lost the request during the attempt (a write timed out,
        // an interim response was relayed): then it cannot be sent again.
        let resendable = replayable && !out.is_empty();
        let allowed = match error.kind {
            // Nothing reached a server: safe for any method.
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout => {
                policy.on_connect_failure && !out.is_empty()
            }
            // Closed or reset before any response byte: only what may be repeated.
            ErrorKind::UpstreamClosedEarly => policy.on_reset && error.retry_safe && resendable,
            ErrorKind::RetryStatus(_) => resendable,
            _ => false,
        };
        if !allowed
            || !ctx.retry_budgets[forward.route]
                .borrow_mut()
                .try_take(policy, Instant::now())
        {
            break Err(error);
        }
        retries_left -= 1;
        Stats::bump(&ctx.stats.upstream_retries);
        let next =
            ctx.upstreams
                .borrow_mut()
                .pick_other(forward.group, forward.balance_key, &tried);
        tracing::debug!(worker = ctx.index, error = %error, "retrying on another server");
        tried.push(next);
        forward.server = next;
        // Sticky groups re-pin the client to the server that now answers.
        forward.pin_cookie = ctx.upstreams.borrow().pin_cookie(forward.group, next);
        ubuf.clear();
    };
    ctx.give_read_buffer(ubuf);
    let error = match result {
        Ok(next) => {
            ctx.give_write_buffer(out);
            return next;
        }
        Err(error) => error,
    };
    match error.side {
        Side::Upstream => {
            Stats::bump(&ctx.stats.upstream_errors);
            tracing::warn!(worker = ctx.index, error = %error, "upstream request failed");
        }
        _ => {
            Stats::bump(&ctx.stats.client_errors);
            tracing::debug!(worker = ctx.index, error = %error, "request failed");
        }
    }
    let Some(status) = error.status().filter(|_| !progress.response_started) else {
        return Next::Close;
    };
    let keep = progress.request_consumed
        && error.side == Side::Upstream
        && forward.keep_alive
        && client_may_continue(ctx, client);
    let head_only = forward.method == Method::Head;
    // stale-if-error: a stored response may stand in for the upstream's failure.
    let stale = match status {
        502 | 504 if error.side == Side::Upstream => {
            forward.cache.as_deref().and_then(cache::stale_for_error)
        }
        _ => None,
    };
    let sent = match stale {
        Some(hit) => send_cached(ctx, client, &hit, head_only, keep, forward.version, out).await,
        None => respond_error(ctx, client, out, status, !keep, head_only).await,
    };
    if sent && keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Counts a request as outstanding to its server (for `least_request` and
/// `peak_ewma`) for as long as it is being relayed.
struct InFlight<'a> {
    ctx: &'a WorkerCtx,
    server: usize,
}

impl<'a> InFlight<'a> {
    fn new(ctx: &'a WorkerCtx, server: usize) -> Self {
        let upstreams = ctx.upstreams.borrow();
        let load = &upstreams.loads[server].outstanding;
        load.set(load.get() + 1);
        InFlight { ctx, server }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let upstreams = self.ctx.upstreams.borrow();
        let load = &upstreams.loads[self.server].outstanding;
        load.set(load.get().saturating_sub(1));
    }
}

/// What the parsed response head means for the rest of the exchange.
struct ResponsePlan {
    framing: BodyFraming,
    client_framing: ClientFraming,
    reusable: bool,
    keep_client: bool,
    /// The body is being collected for the cache.
    capture: Option<crate::cache::entry::Capture>,
    /// Keys every worker drops before this response goes out (a successful write).
    invalidate: Option<Vec<Box<[u8]>>>,
}

impl Forward {
    fn answered(&self) -> Answered {
        Answered {
            head_len: self.head_len,
            body: self.body,
            keep_alive: self.keep_alive,
            head_only: self.method == Method::Head,
            version: self.version,
        }
    }
}

/// The outcome of the upstream's response head.
enum Answer {
    Relay(ResponsePlan),
    Serve(cache::HitPlan, bool),
}

enum HeadStep {
    NeedMore,
    /// An interim response to drop (100 Continue: the gateway already answered it).
    Skip(usize),
    /// An interim response serialised into `out`, to send on.
    Interim(usize),
    /// The final response head, serialised into `out`.
    Final(usize, ResponsePlan),
    /// Answer from the cache instead (304 to a revalidation, or stale-if-error);
    /// the flag says whether the upstream connection is reusable right away.
    Serve(usize, cache::HitPlan, bool),
    /// A status the route retries on: nothing relayed, try another server.
    Retry(u16),
}

fn response_step(
    ctx: &WorkerCtx,
    client: &Client,
    forward: &Forward,
    ubuf: &[u8],
    out: &mut Vec<u8>,
) -> Result<HeadStep, HttpError> {
    let mut slots = header_slots::<MAX_RESPONSE_HEADERS>();
    let Some(resp) = parse_response(
        ubuf,
        &mut slots,
        ctx.config.limits.max_response_head,
        forward.method,
    )?
    else {
        return Ok(HeadStep::NeedMore);
    };
    let via = ctx.config.proxy.via.then_some(ctx.via_line.as_slice());
    if resp.is_interim() {
        // 101 would switch protocols; the gateway never forwards Upgrade, so it is a protocol error.
        if resp.status == 101 {
            return Err(HttpError::Malformed);
        }
        if resp.status == 100 || forward.version == Version::Http10 {
            return Ok(HeadStep::Skip(resp.head_len));
        }
        out.clear();
        head::write_response_head(
            out,
            &resp,
            ClientFraming::NoBody,
            ConnectionField::Omit,
            via,
            b"",
        );
        return Ok(HeadStep::Interim(resp.head_len));
    }
    ctx.upstreams.borrow().record_outcome(
        forward.group,
        forward.server,
        resp.status >= 500,
        Instant::now(),
    );
    if forward.may_retry_status
        && ctx.config.routes[forward.route]
            .retry
            .as_ref()
            .is_some_and(|r| r.statuses.contains(&resp.status))
    {
        return Ok(HeadStep::Retry(resp.status));
    }
    let (capture, cache_status, invalidate) = match forward.cache.as_deref() {
        None => (None, Vec::new(), None),
        Some(work) => match cache::on_response_head(ctx, work, &resp, forward.method) {
            cache::Action::Relay {
                capture,
                status_line,
                invalidate,
            } => (capture, status_line, invalidate),
            cache::Action::Serve(hit) => {
                let reusable_now = resp.reusable && resp.framing == BodyFraming::None;
                return Ok(HeadStep::Serve(resp.head_len, hit, reusable_now));
            }
        },
    };
    let client_framing = match resp.framing {
        BodyFraming::None => ClientFraming::NoBody,
        BodyFraming::Length(n) => ClientFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => match forward.version {
            Version::Http11 => ClientFraming::Chunked,
            Version::Http10 => ClientFraming::Close,
        },
    };
    let keep_client = forward.keep_alive
        && client_framing != ClientFraming::Close
        && client_may_continue(ctx, client);
    let connection = match (keep_client, forward.version) {
        (false, _) => ConnectionField::Close,
        (true, Version::Http10) => ConnectionField::KeepAlive,
        (true, Version::Http11) => ConnectionField::Omit,
    };
    out.clear();
    let mut extra = cache_status;
    if let Some(line) = &forward.pin_cookie {
        extra.extend_from_slice(line);
    }
    head::write_response_head(out, &resp, client_framing, connection, via, &extra);
    Ok(HeadStep::Final(
        resp.head_len,
        ResponsePlan {
            framing: resp.framing,
            client_framing,
            reusable: resp.reusable,
            keep_client,
            capture,
            invalidate,
        },
    ))
}

async fn connect(
    ctx: &WorkerCtx,
    addr: SocketAddr,
    limit: std::time::Duration,
) -> Result<TcpStream, ProxyError> {
    match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Stats::bump(&ctx.stats.upstream_connects);
            Ok(stream)
        }
        Ok(Err(e)) => Err(ProxyError::upstream(
            ErrorKind::ConnectRefused,
            addr,
            true,
            Some(e),
        )),
        Err(_) => Err(ProxyError::upstream(
            ErrorKind::ConnectTimeout,
            addr,
            true,
            None,
        )),
    }
}

/// Moves the request out of the client buffer: the head (already rebuilt in
/// `out`), and the body too when it is all there, so that head and body go
/// out in one write and the request can be sent again. Returns whether the
/// body is in `out`.
fn take_request_bytes(
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    progress: &mut Progress,
) -> bool {
    let head_len = forward.head_len;
    let buffered = client.buf.len() - head_len;
    let whole_body = match forward.body {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) if buffered as u64 >= n => Some(n as usize),
        BodyFraming::Chunked => {
            // A chunked body buffered whole goes out re-chunked in the same write.
            let body = &client.buf[head_len..];
            if let Ok((Some(raw), _)) = crate::http::chunked::scan_body(body) {
                let start = out.len();
                let decoded = ChunkedDecoder::new().decode(&body[..raw], out, Output::Rechunk);
                if decoded.is_ok() {
                    client.buf.advance(head_len + raw);
                    progress.request_consumed = true;
                    return true;
                }
                out.truncate(start);
            }
            None
        }
        _ => None,
    };
    match whole_body {
        Some(n) => {
            out.extend_from_slice(&client.buf[head_len..head_len + n]);
            client.buf.advance(head_len + n);
            progress.request_consumed = true;
            true
        }
        None => {
            client.buf.advance(head_len);
            false
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    progress: &mut Progress,
    body_in_out: bool,
) -> Result<Next, ProxyError> {
    let timeouts = &ctx.config.timeouts;
    let addr = ctx.upstreams.borrow().servers[forward.server];

    let pooled = ctx.upstreams.borrow_mut().pool.take(forward.server);
    let (mut upstream, mut reused) = match pooled {
        Some(stream) => {
            Stats::bump(&ctx.stats.upstream_reuses);
            (stream, true)
        }
        None => (connect(ctx, addr, forward.timeouts.connect).await?, false),
    };

    let sent_at = Instant::now();
    let (head_len, answer) = loop {
        let attempt = async {
            send_request(
                ctx,
                client,
                forward,
                out,
                &mut upstream,
                progress,
                body_in_out,
                addr,
            )
            .await?;
            read_response_head(ctx, client, forward, out, &mut upstream, ubuf, addr).await
        };
        // A pooled connection the server closed while the request was on its
        // way fails before any response byte: the server never read the
        // request, so it goes once more on a fresh connection, whatever the
        // method, when all of it can be sent again (the whole request is in
        // `out`, or no byte of a streamed body was taken from the client yet).
        let result = attempt.await;
        let resendable = !out.is_empty() && (body_in_out || !progress.body_streamed);
        match result {
            Ok(done) => break done,
            Err(e) if e.retry_safe && reused && resendable => {
                tracing::debug!(worker = ctx.index, upstream = %addr, error = %e, "pooled connection was dead, retrying");
                Stats::bump(&ctx.stats.upstream_retries);
                ubuf.clear();
                upstream = connect(ctx, addr, forward.timeouts.connect).await?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    };
    ubuf.advance(head_len);
    progress.response_started = true;
    let now = Instant::now();
    ctx.upstreams.borrow().loads[forward.server].record_latency(now - sent_at, now);
    let mut plan = match answer {
        Answer::Relay(plan) => plan,
        Answer::Serve(hit, reusable_now) => {
            if reusable_now && ubuf.is_empty() {
                ctx.upstreams
                    .borrow_mut()
                    .pool
                    .put(forward.server, upstream);
            }
            let keep =
                progress.request_consumed && forward.keep_alive && client_may_continue(ctx, client);
            let sent = send_cached(
                ctx,
                client,
                &hit,
                forward.method == Method::Head,
                keep,
                forward.version,
                std::mem::take(out),
            )
            .await;
            return Ok(if sent && keep {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
    };
    // A write's invalidation reaches every worker before its response reaches
    // the client, so the client's next read misses whichever core it lands on.
    if let Some(keys) = plan.invalidate.take() {
        let message = crate::bus::Message::Invalidate {
            what: crate::bus::Invalidation::Urls(std::sync::Arc::new(keys)),
            removal: crate::cache::shard::Removal::Hard,
        };
        if let Err(e) = ctx
            .bus
            .broadcast_and_wait(message, ctx.config.cache.invalidation_timeout)
            .await
        {
            tracing::warn!(worker = ctx.index, error = %e, "invalidation after a write did not reach every worker");
        }
    }

    let broken = |source: Option<std::io::Error>| {
        ProxyError::upstream(ErrorKind::UpstreamBroken, addr, false, source)
    };
    let client_gone =
        |source: Option<std::io::Error>| ProxyError::downstream(ErrorKind::ClientIo, source);
    let read_size = ctx.per_core.upstream_buffer_size;
    let mut upstream_clean = plan.reusable;

    match plan.framing {
        BodyFraming::None => {
            send_to_client(ctx, client, out)
                .await
                .map_err(client_gone)?;
        }
        BodyFraming::Length(total) => {
            let take = (ubuf.len() as u64).min(total) as usize;
            out.extend_from_slice(&ubuf[..take]);
            if let Some(c) = plan.capture.as_mut() {
                c.push(&ubuf[..take]);
            }
            ubuf.advance(take);
            let mut remaining = total - take as u64;
            if remaining == 0 {
                store_captured(ctx, forward, &mut plan);
            }
            send_to_client(ctx, client, out)
                .await
                .map_err(client_gone)?;
            while remaining > 0 {
                if ubuf.is_empty() {
                    read_body_piece(ctx, &mut upstream, ubuf, addr, forward.timeouts.read).await?;
                }
                let take = (ubuf.len() as u64).min(remaining) as usize;
                let chunk = ubuf.split_to(take);
                if let Some(c) = plan.capture.as_mut() {
                    c.push(&chunk);
                }
                remaining -= take as u64;
                if remaining == 0 {
                    store_captured(ctx, forward, &mut plan);
                }
                if let Err((e, _)) =
                    write_all(&mut client.stream, chunk, timeouts.client_send).await
                {
                    return Err(client_gone(into_io(e)));
                }
            }
        }
        BodyFraming::Chunked => {
            let mode = if plan.client_framing == ClientFraming::Chunked {
                Output::Rechunk
            } else {
                Output::Raw
            };
            let mut decoder = ChunkedDecoder::new();
            let mut raw = Vec::new();
            loop {
                let used = match plan.capture.as_mut() {
                    None => decoder.decode(ubuf, out, mode).map_err(|_| broken(None))?,
                    Some(capture) => {
                        // Decode once; the plain data goes to the cache and, framed, to the client.
                        raw.clear();
                        let used = decoder
                            .decode(ubuf, &mut raw, Output::Raw)
                            .map_err(|_| broken(None))?;
                        capture.push(&raw);
                        if mode == Output::Rechunk {
                            if !raw.is_empty() {
                                push_hex(out, raw.len() as u64);
                                out.extend_from_slice(b"\r\n");
                                out.extend_from_slice(&raw);
                                out.extend_from_slice(b"\r\n");
                            }
                            if decoder.is_done() {
                                out.extend_from_slice(b"0\r\n\r\n");
                            }
                        } else {
                            out.extend_from_slice(&raw);
                        }
                        used
                    }
                };
                ubuf.advance(used);
                if decoder.is_done() {
                    store_captured(ctx, forward, &mut plan);
                }
                if !out.is_empty() {
                    send_to_client(ctx, client, out)
                        .await
                        .map_err(client_gone)?;
                }
                if decoder.is_done() {
                    break;
                }
                read_body_piece(ctx, &mut upstream, ubuf, addr, forward.timeouts.read).await?;
            }
        }
        BodyFraming::UntilClose => {
            let rechunk = plan.client_framing == ClientFraming::Chunked;
            upstream_clean = false;
            loop {
                if let Some(c) = plan.capture.as_mut() {
                    c.push(ubuf);
                }
                if !ubuf.is_empty() {
                    if rechunk {
                        push_hex(out, ubuf.len() as u64);
                        out.extend_from_slice(b"\r\n");
                        out.extend_from_slice(ubuf);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(ubuf);
                    }
                    ubuf.clear();
                }
                if !out.is_empty() {
                    send_to_client(ctx, client, out)
                        .await
                        .map_err(client_gone)?;
                }
                match read_some(&mut upstream, ubuf, read_size, forward.timeouts.read).await {
                    Read::Data(_) => {}
                    Read::Eof => break,
                    Read::TimedOut => return Err(broken(None)),
                    Read::Failed(e) => return Err(broken(Some(e))),
                }
            }
            store_captured(ctx, forward, &mut plan);
            if rechunk {
                out.extend_from_slice(b"0\r\n\r\n");
                send_to_client(ctx, client, out)
                    .await
                    .map_err(client_gone)?;
            }
        }
    }

    // Bytes beyond the response mean the upstream and the gateway disagree
    // about framing: never reuse such a connection.
    if upstream_clean && ubuf.is_empty() {
        ctx.upstreams
            .borrow_mut()
            .pool
            .put(forward.server, upstream);
    }
    Ok(if plan.keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Stores a completely captured body, before its last bytes go to the client:
/// once the client has the whole response, every worker can answer from the cache.
fn store_captured(ctx: &WorkerCtx, forward: &Forward, plan: &mut ResponsePlan) {
    if let (Some(capture), Some(work)) = (plan.capture.take(), forward.cache.as_deref()) {
        cache::store(ctx, work, capture);
    }
}

/// Reads the next piece of a response body. The upstream closing, failing or
/// stalling before the body is complete is `UpstreamBroken`: the response is
/// already under way, so the client connection will be closed.
async fn read_body_piece(
    ctx: &WorkerCtx,
    upstream: &mut TcpStream,
    buf: &mut BytesMut,
    addr: SocketAddr,
    limit: std::time::Duration,
) -> Result<(), ProxyError> {
    let broken = |source| ProxyError::upstream(ErrorKind::UpstreamBroken, addr, false, source);
    match read_some(upstream, buf, ctx.per_core.upstream_buffer_size, limit).await {
        Read::Data(_) => Ok(()),
        Read::Failed(e) => Err(broken(Some(e))),
        Read::Eof | Read::TimedOut => Err(broken(None)),
    }
}

fn into_io(e: io::WriteError) -> Option<std::io::Error> {
    match e {
        io::WriteError::Failed(e) => Some(e),
        io::WriteError::TimedOut => None,
    }
}

/// Writes `out` to the client and clears it, keeping its allocation.
async fn send_to_client(
    ctx: &WorkerCtx,
    client: &mut Client,
    out: &mut Vec<u8>,
) -> Result<(), Option<std::io::Error>> {
    let buf = std::mem::take(out);
    match write_all(&mut client.stream, buf, ctx.config.timeouts.client_send).await {
        Ok(mut buf) => {
            buf.clear();
            *out = buf;
            Ok(())
        }
        Err((e, _)) => Err(into_io(e)),
    }
}

/// Sends the request head (with the body when `body_in_out`), then streams
/// any body still to come from the client. On success `out` still holds
/// exactly what was first written, so a retry can resend it.
#[allow(clippy::too_many_arguments)]
async fn send_request(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    upstream: &mut TcpStream,
    progress: &mut Progress,
    body_in_out: bool,
    addr: SocketAddr,
) -> Result<(), ProxyError> {
    let timeouts = &ctx.config.timeouts;
    let dead = |source| ProxyError::upstream(ErrorKind::UpstreamClosedEarly, addr, true, source);
    let buf = std::mem::take(out);
    match write_all(upstream, buf, timeouts.upstream_send).await {
        Ok(buf) => *out = buf,
        Err((e, buf)) => {
            if let Some(buf) = buf {
                *out = buf;
            }
            return Err(dead(into_io(e)));
        }
    }
    if body_in_out {
        return Ok(());
    }
    out.clear();

    let has_body = match forward.body {
        BodyFraming::Length(n) => n > 0,
        BodyFraming::Chunked => true,
        BodyFraming::None | BodyFraming::UntilClose => false,
    };
    progress.body_streamed |= has_body;
    // The client holds its body back until told to continue.
    if forward.expect_continue && client.buf.is_empty() && !client.sent_continue {
        client.sent_continue = true;
        if let Err((e, _)) = write_all(
            &mut client.stream,
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            timeouts.client_send,
        )
        .await
        {
            return Err(ProxyError::downstream(ErrorKind::ClientIo, into_io(e)));
        }
    }

    let body_read_size = ctx.per_core.upstream_buffer_size;
    let client_failed = |read: Read| match read {
        Read::TimedOut => ProxyError::downstream(ErrorKind::ClientTimeout, None),
        Read::Failed(e) => ProxyError::downstream(ErrorKind::ClientIo, Some(e)),
        _ => ProxyError::downstream(ErrorKind::ClientIo, None),
    };
    // Mid-body, the upstream already has part of the request: never retry.
    let upstream_failed =
        |e| ProxyError::upstream(ErrorKind::UpstreamClosedEarly, addr, false, into_io(e));
    match forward.body {
        BodyFraming::Length(total) => {
            let mut remaining = total;
            while remaining > 0 {
                if client.buf.is_empty() {
                    match read_some(
                        &mut client.stream,
                        &mut client.buf,
                        body_read_size,
                        timeouts.client_body,
                    )
                    .await
                    {
                        Read::Data(_) => {}
                        other => return Err(client_failed(other)),
                    }
                }
                let take = (client.buf.len() as u64).min(remaining) as usize;
                let chunk = client.buf.split_to(take);
                write_all(upstream, chunk, timeouts.upstream_send)
                    .await
                    .map_err(|(e, _)| upstream_failed(e))?;
                remaining -= take as u64;
            }
        }
        BodyFraming::Chunked => {
            let max = ctx.config.limits.max_request_body;
            let mut decoder = ChunkedDecoder::new();
            loop {
                let used = decoder
                    .decode(&client.buf, out, Output::Rechunk)
                    .map_err(|e| ProxyError::downstream(ErrorKind::BadRequest(e), None))?;
                client.buf.advance(used);
                if max.is_some_and(|max| decoder.decoded > max) {
                    return Err(ProxyError::downstream(
                        ErrorKind::BadRequest(HttpError::BodyTooLarge),
                        None,
                    ));
                }
                if !out.is_empty() {
                    let buf = std::mem::take(out);
                    let mut buf = write_all(upstream, buf, timeouts.upstream_send)
                        .await
                        .map_err(|(e, _)| upstream_failed(e))?;
                    buf.clear();
                    *out = buf;
                }
                if decoder.is_done() {
                    break;
                }
                match read_some(
                    &mut client.stream,
                    &mut client.buf,
                    body_read_size,
                    timeouts.client_body,
                )
                .await
                {
                    Read::Data(_) => {}
                    other => return Err(client_failed(other)),
                }
            }
        }
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    progress.request_consumed = true;
    Ok(())
}

/// Reads the upstream's response head, passing interim 1xx responses on.
/// Returns the head's length in `ubuf` and the plan for the body; the
/// client's response head is then in `out`.
async fn read_response_head(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    upstream: &mut TcpStream,
    ubuf: &mut BytesMut,
    addr: SocketAddr,
) -> Result<(usize, Answer), ProxyError> {
    let deadline = io::deadline_in(forward.timeouts.response);
    let mut received_any = false;
    loop {
        let step = response_step(ctx, client, forward, ubuf, out)
            .map_err(|e| ProxyError::upstream(ErrorKind::BadResponse(e), addr, false, None))?;
        match step {
            HeadStep::Final(head_len, plan) => return Ok((head_len, Answer::Relay(plan))),
            HeadStep::Serve(head_len, hit, reusable_now) => {
                return Ok((head_len, Answer::Serve(hit, reusable_now)))
            }
            HeadStep::Retry(status) => {
                return Err(ProxyError::upstream(
                    ErrorKind::RetryStatus(status),
                    addr,
                    true,
                    None,
                ))
            }
            HeadStep::Skip(n) => {
                ubuf.advance(n);
                continue;
            }
            HeadStep::Interim(n) => {
                ubuf.advance(n);
                send_to_client(ctx, client, out)
                    .await
                    .map_err(|e| ProxyError::downstream(ErrorKind::ClientIo, e))?;
                continue;
            }
            HeadStep::NeedMore => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = read_some(upstream, ubuf, ctx.per_core.upstream_buffer_size, left).await;
        // Closed or reset before a single response byte: the request may be retried.
        let early = !received_any;
        match read {
            Read::Data(_) => received_any = true,
            Read::TimedOut => {
                return Err(ProxyError::upstream(
                    ErrorKind::ResponseTimeout,
                    addr,
                    false,
                    None,
                ))
            }
            Read::Eof if early => {
                return Err(ProxyError::upstream(
                    ErrorKind::UpstreamClosedEarly,
                    addr,
                    true,
                    None,
                ))
            }
            Read::Failed(e) if early => {
                return Err(ProxyError::upstream(
                    ErrorKind::UpstreamClosedEarly,
                    addr,
                    true,
                    Some(e),
                ))
            }
            Read::Eof => {
                return Err(ProxyError::upstream(
                    ErrorKind::BadResponse(HttpError::Malformed),
                    addr,
                    false,
                    None,
                ))
            }
            Read::Failed(e) => {
                return Err(ProxyError::upstream(
                    ErrorKind::UpstreamClosedEarly,
                    addr,
                    false,
                    Some(e),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// An idle keep-alive connection holds its task's future (`serve`) and
    /// the boxed exchange loop: together they must stay a few KiB, or 10,000
    /// idle connections stop fitting in 64 MiB.
    #[test]
    fn connection_future_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
            let config = std::sync::Arc::new(crate::config::Config::quick(addr, vec![addr]));
            let (bus, mut receivers) = crate::bus::Bus::new(1, 16);
            let _receiver = receivers.remove(0);
            let claims = std::sync::Arc::new(crate::cache::claims::Claims::new(1));
            let ctx = std::rc::Rc::new(crate::worker::context::WorkerCtx::new(
                0,
                config,
                Default::default(),
                bus,
                claims,
            ));
            let mut client = super::Client {
                conn: 0,
                stream: monoio::net::TcpStream::connect_addr(addr).await.unwrap(),
                buf: bytes::BytesMut::new(),
                peer_ip: String::new(),
                peer: addr.ip(),
                served: 0,
                hit_buf: None,
                sent_continue: false,
            };
            let exchange = size_of_future(&super::exchange(&ctx, &mut client));
            let serve = size_of_future(&super::serve(ctx.clone(), stream, addr, 0));
            assert!(
                serve + exchange <= 4 * 1024,
                "serve {serve} + exchange {exchange} bytes"
            );
        });
    }
}
