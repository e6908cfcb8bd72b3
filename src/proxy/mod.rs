//! The connection task: one per client connection, running on the worker
//! that accepted it. It reads a request head, runs the request's phases,
//! relays it to an upstream over a pooled keep-alive connection, relays the
//! response back, and loops for the next request (keep-alive and
//! pipelining: requests are handled one after another, so responses leave
//! in request order).
//!
//! ```text
//! wait for bytes (keep-alive timeout, drain, closed if idle at a cap)
//!   -> read + parse head (head deadline, size limits)   -> 400/408/413/431/501 + close
//!   -> plan_request, in order:
//!        1 normalise  canonical host and path           -> 400
//!        2 route      first matching route              -> 404, 301/308 (trailing slash)
//!        3 admit      session token                     -> 401
//!        4 buffer     a small body read whole           -> (read more, plan again)
//!        5 cache      key and variant of the request as forwarded -> hit: answer.rs
//!        6 upstream   pick a server, circuit breakers   -> 503
//!   -> proxy_request: coalesce (wait for, or read, another's fetch)
//!   -> upstream.rs: pooled (peeked) or new connection, send, read head, retries -> 502/504
//!   -> respond: 304/stale from the cache | fill.rs (store while serving) | relay.rs
//!   -> the upstream connection back to the pool when it ended cleanly
//! ```

mod answer;
pub mod cache;
mod coalescing;
mod fill;
pub mod head;
pub mod io;
mod reading;
mod refresh;
mod relay;
pub mod stored;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::config::MAX_HEADERS_CAP;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::request::{header_slots, parse_request};
use crate::http::{BodyFraming, HttpError, Method, Version};
use crate::route::Found;
use crate::worker::context::{Stats, WorkerCtx};
use crate::worker::signal::{race, Either};
use answer::{
    answer_failure, answer_from_cache, finish_unforwarded, purge, respond_error, send_cached,
};
use head::UpstreamRequest;
use io::{Read, Stream};
use reading::{body_to_buffer, may_hold_head_end, BodyWait};

/// Response heads from upstreams may carry at most this many fields.
const MAX_RESPONSE_HEADERS: usize = 256;

/// What a listener gives its connections before their requests: a TLS
/// handshake, or a redirect of every request to HTTPS.
pub struct Entry {
    pub tls: Option<crate::tls::Terminator>,
    pub redirect_https: Option<u16>,
}

struct Client {
    stream: Stream,
    /// Redirect every request to `https://` on this port.
    redirect_https: Option<u16>,
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
pub async fn serve(
    ctx: Rc<WorkerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    conn: usize,
    entry: Rc<Entry>,
) {
    let _ = stream.set_nodelay(true);
    let stream = match &entry.tls {
        None => Stream::Plain(stream),
        Some(tls) => match Box::pin(handshake(&ctx, tls, stream, peer)).await {
            Some(stream) => Stream::Tls(Box::new(stream)),
            None => return,
        },
    };
    let mut client = Client {
        conn,
        stream,
        redirect_https: entry.redirect_https,
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

/// The TLS handshake, within the head deadline (a client that opens a
/// connection and sends nothing is closed like one that sends half a head),
/// and raced against the forced close of a drain.
async fn handshake(
    ctx: &WorkerCtx,
    tls: &crate::tls::Terminator,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<crate::tls::TlsStream> {
    let deadline = io::deadline_in(ctx.config.timeouts.client_header);
    let result = match race(tls.accept(stream, deadline), ctx.forced_closed()).await {
        Either::Left(result) => result,
        Either::Right(()) => return None,
    };
    match result {
        Ok(stream) => {
            let facts = crate::tls::Negotiated::of(&stream);
            ctx.stats.tls.handshake(&facts);
            tracing::debug!(
                worker = ctx.index,
                %peer,
                version = if facts.tls13 { "TLSv1.3" } else { "TLSv1.2" },
                cipher = facts.cipher,
                sni = facts.sni.as_deref().unwrap_or(""),
                resumed = facts.resumed,
                "TLS handshake"
            );
            Some(stream)
        }
        Err(e) => {
            ctx.stats.tls.failed(e.reason());
            tracing::debug!(worker = ctx.index, %peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// What to do with a parsed request.
enum Plan {
    Forward(Forward),
    /// Answer locally with this status (no route, body too large).
    /// Answer the gateway's own error (its status from `ErrorKind::status`).
    Refuse {
        error: ErrorKind,
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
    /// The protocol (in the route's `upgrade` list) the request asks to switch to.
    upgrade: Option<usize>,
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
    let refuse = |error, request| Ok(Some(Plan::Refuse { error, request }));
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
    // A plain listener that only redirects to HTTPS.
    if let Some(port) = client.redirect_https {
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
        return Ok(Some(Plan::Redirect {
            status: redirect_status(req.method),
            request: answered,
            location: format!("https://{host}{port}{}", req.path_and_query),
        }));
    }
    // 2. Route.
    let route_index = match ctx
        .router
        .find(req.host, req.path, req.method_name, req.headers)
    {
        None => return refuse(ErrorKind::NoRoute, answered),
        Some(Found::AddSlash(_)) => {
            let query = &req.path_and_query[req.path.len()..];
            return Ok(Some(Plan::Redirect {
                request: answered,
                status: redirect_status(req.method),
                location: format!("{}/{query}", req.path),
            }));
        }
        Some(Found::Route(i)) => i,
    };
    if let (BodyFraming::Length(n), Some(max)) = (req.body, limits.max_request_body) {
        if n > max {
            return refuse(ErrorKind::BadRequest(HttpError::BodyTooLarge), answered);
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
                return refuse(ErrorKind::Unauthorized, answered);
            }
        },
    };
    let upgrade = tunnel::requested(&req, route);
    // 4. Buffer a small body whole before a server is chosen: a slow sender
    //    then holds no upstream connection, and the request can be resent.
    if let Some(wait) = body_to_buffer(route, limits.max_request_body, &req, &client.buf)? {
        return Ok(Some(Plan::ReadBody(wait)));
    }
    let upstream_request = |fallback_host| UpstreamRequest {
        route,
        proxy: &ctx.config.proxy,
        client_ip: &client.peer_ip,
        https: client.stream.is_tls(),
        fallback_host,
        strip_expect: req.expect_continue,
        via_line: &ctx.via_line,
        validators: None,
        method_override: None,
        identity: identity.as_deref().unwrap_or(&[]),
        upgrade: upgrade.map(|i| route.upgrade[i].as_str()),
    };
    // 5. Cache: decided on the request as it will be forwarded. A request
    //    without a host has no key that could not mix sites: never cached.
    //    An upgrade is a tunnel, never a cached exchange.
    let caches = route.cache.is_some()
        && ctx.cache.is_some()
        && !req.authority.is_empty()
        && upgrade.is_none();
    let mut cache_work = None;
    let mut composed = ctx.forward_scratch.borrow_mut();
    if caches {
        let forwarded = upstream_request("");
        let mut fields = head::FieldList::new();
        head::forwarded_fields(&req, &forwarded, &mut composed, &mut fields);
        match cache::decide(ctx, route_index, route, &req, &forwarded, fields.as_slice()) {
            cache::Decision::Hit(hit) => {
                return Ok(Some(Plan::Hit {
                    request: answered,
                    hit,
                }))
            }
            cache::Decision::OnlyIfCachedMiss => return refuse(ErrorKind::NotCached, answered),
            cache::Decision::NotCached => {
                head::write_request_head(out, &req, &forwarded, fields.as_slice())
            }
            cache::Decision::Forward(mut work, validators) => {
                // A revalidation sends the stored validators instead of the client's.
                let sent = UpstreamRequest {
                    validators: validators.as_ref(),
                    ..forwarded
                };
                head::write_request_head(out, &req, &sent, fields.as_slice());
                // Kept for the response: its `Vary` variant is the forwarded request's.
                work.request_head = bytes::Bytes::copy_from_slice(out);
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
                // Every server is down and the group does not fail open: a
                // stale entry may stand in (stale-if-error, `stale_on_error`).
                if let Some(hit) = cache_work
                    .as_deref()
                    .and_then(|work| cache::stale_for_error(ctx, work, 503))
                {
                    return Ok(Some(Plan::Hit {
                        request: answered,
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
        Stats::bump(&ctx.stats.breaker_trips);
        return refuse(ErrorKind::OverCapacity, answered);
    }
    if !caches {
        let forwarded = upstream_request(upstreams.host_of(server));
        out.clear();
        head::write_forwarded_head(out, &req, &forwarded, &mut composed);
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
        upgrade,
    })))
}

/// What waiting for more of a request came to.
enum More {
    /// Enough is in the buffer to plan again.
    Ready,
    /// Answer with this status and close (408: too slow; a refused request).
    Refuse(u16),
    /// The client went away.
    Gone,
}

/// Reads more of the request into the client's buffer, before `deadline`.
/// 308 keeps the method and body; browsers follow 301 for GET as nginx sends it.
fn redirect_status(method: Method) -> u16 {
    if matches!(method, Method::Get | Method::Head) {
        301
    } else {
        308
    }
}

async fn read_more(client: &mut Client, reserve: usize, deadline: Instant) -> Result<(), More> {
    let left = deadline.saturating_duration_since(Instant::now());
    match client
        .stream
        .read_some(&mut client.buf, reserve, left)
        .await
    {
        Read::Data(_) => Ok(()),
        Read::TimedOut => Err(More::Refuse(408)),
        Read::Eof | Read::Failed(_) => Err(More::Gone),
    }
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
        let read = client
            .stream
            .read_some(&mut client.buf, ctx.per_core.client_buffer_size, limit);
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

    // One deadline for the whole head, one for a buffered body.
    let head_deadline = io::deadline_in(timeouts.client_header);
    let mut body_deadline = None;
    let mut out = ctx.take_write_buffer();
    let plan = loop {
        let refused = |e: HttpError| {
            Stats::bump(&ctx.stats.client_errors);
            tracing::debug!(worker = ctx.index, error = %e, "refused request");
            e.status()
        };
        let more = match plan_request(ctx, client, &mut out) {
            Ok(Some(Plan::ReadBody(mut wait))) => {
                if wait.send_continue && !client.sent_continue {
                    client.sent_continue = true;
                    if client
                        .stream
                        .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..], timeouts.client_send)
                        .await
                        .is_err()
                    {
                        return Next::Close;
                    }
                }
                // A small body has `client_body` to arrive whole, not per read:
                // a trickling sender cannot hold a connection for days.
                let deadline =
                    *body_deadline.get_or_insert_with(|| io::deadline_in(timeouts.client_body));
                loop {
                    let read = ctx.per_core.upstream_buffer_size;
                    if let Err(more) = read_more(client, read, deadline).await {
                        break more;
                    }
                    match wait.until.reached(&client.buf) {
                        Ok(true) => break More::Ready,
                        Ok(false) => {}
                        Err(e) => break More::Refuse(refused(e)),
                    }
                }
            }
            Ok(Some(plan)) => break plan,
            // HTTP/1.2 and later minors are HTTP/1.1 to this gateway (RFC
            // 9110 section 2.5): the request line is rewritten once, in place.
            Err(HttpError::Version)
                if crate::http::request::downgrade_minor_version(&mut client.buf) =>
            {
                continue
            }
            // Parse again only once a head may be complete: a head sent a
            // byte at a time costs one parse, not one per byte.
            Ok(None) => loop {
                let scanned = client.buf.len();
                let read = ctx.per_core.client_buffer_size;
                if let Err(more) = read_more(client, read, head_deadline).await {
                    break more;
                }
                if may_hold_head_end(&client.buf, scanned)
                    || client.buf.len() >= ctx.config.limits.max_request_head
                {
                    break More::Ready;
                }
            },
            Err(e) => More::Refuse(refused(e)),
        };
        match more {
            More::Ready => {}
            More::Gone => return Next::Close,
            More::Refuse(status) => {
                if status == 408 {
                    Stats::bump(&ctx.stats.client_errors);
                }
                out.clear();
                respond_error(ctx, client, out, status, true, false).await;
                return Next::Close;
            }
        }
    };
    client.served += 1;
    Stats::bump(&ctx.stats.requests);

    match plan {
        Plan::Refuse { error, request } => {
            let status = error.status().unwrap_or(500);
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
        } => answer::redirect(ctx, client, &request, status, &location, out).await,
        Plan::ReadBody(_) => unreachable!("read before the plan is final"),
        Plan::Purge {
            request,
            urls,
            allowed,
        } => purge(ctx, client, &request, urls, allowed, out).await,
        Plan::Hit { request, mut hit } => {
            if let Some(job) = hit.refresh.take() {
                monoio::spawn(refresh::run(ctx.clone(), job));
            }
            answer_from_cache(ctx, client, &request, &hit, out).await
        }
        // Boxed: the forwarding state is large, and an idle or cache-hit
        // connection should not carry it (see connection_future_stays_small).
        Plan::Forward(forward) => Box::pin(proxy_request(ctx, client, forward, out)).await,
    }
}

fn client_may_continue(ctx: &WorkerCtx, client: &Client) -> bool {
    !ctx.draining.get() && client.served < ctx.config.limits.max_keepalive_requests
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

/// This request's part in coalescing: while it holds these, concurrent
/// misses for its key (on this worker, and on the others) wait for it.
#[derive(Default)]
struct Coalescing {
    leader: Option<crate::cache::coalesce::LeaderGuard>,
    claim: Option<cache::ClaimGuard>,
}

impl Coalescing {
    /// Lets the waiting requests go: the response is stored, or will not be.
    fn release(&mut self) {
        self.leader = None;
        self.claim = None;
    }
}

async fn proxy_request(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    mut forward: Forward,
    mut out: Vec<u8>,
) -> Next {
    // Concurrent misses for one key: the first fetches, the others wait for it.
    let mut coalescing = Coalescing::default();
    if let (Some(work), Some(worker_cache)) = (forward.cache.as_deref(), &ctx.cache) {
        if matches!(work.kind, cache::WorkKind::Fill { .. }) {
            match worker_cache.coalescer.join(&work.key) {
                crate::cache::coalesce::Join::Leader(guard) => {
                    coalescing.leader = Some(guard);
                    match cache::claim(ctx, work) {
                        cache::CrossCore::Fetch(claim) => coalescing.claim = claim,
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
                    let limit = cache::coalesce_timeout(ctx, work);
                    if let Ok(Some(fill)) =
                        monoio::time::timeout(limit, flight.fill_or_finished()).await
                    {
                        // Read-while-fill: answered from the response as it arrives.
                        if let Some(reader) = cache::fill_serves(work, &fill)
                            .then(|| fill.reader())
                            .flatten()
                        {
                            drop(flight);
                            return fill::serve_waiter(
                                ctx,
                                client,
                                &forward.answered(),
                                reader,
                                out,
                            )
                            .await;
                        }
                        // Another variant, or preconditions: wait for the entry.
                        drop(fill);
                        let _ = monoio::time::timeout(limit, flight.finished()).await;
                    }
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
    let body_in_out = upstream::take_request_bytes(client, &forward, &mut out, &mut progress);
    let head = upstream::exchange(
        ctx,
        client,
        &mut forward,
        &mut out,
        &mut ubuf,
        &mut progress,
        body_in_out,
    )
    .await;
    match head {
        Ok(head) => {
            respond(
                ctx, client, &forward, out, ubuf, head, &progress, coalescing,
            )
            .await
        }
        Err(error) => {
            ctx.give_read_buffer(ubuf);
            answer_failure(ctx, client, &forward, out, error, &progress).await
        }
    }
}

/// Answers the client once the upstream's response head is in: from the
/// cache (a 304 freshened the entry, or stale-if-error), from a fill
/// (a storable body still to come), or by relaying the body.
#[allow(clippy::too_many_arguments)]
async fn respond(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    forward: &Forward,
    mut out: Vec<u8>,
    mut ubuf: BytesMut,
    head: upstream::UpstreamHead,
    progress: &Progress,
    mut coalescing: Coalescing,
) -> Next {
    let upstream::UpstreamHead {
        stream,
        addr,
        answer,
        in_flight,
    } = head;
    let mut plan = match answer {
        upstream::Answer::Relay(plan) => plan,
        upstream::Answer::Tunnel => {
            let idle = forward.timeouts.tunnel_idle;
            return tunnel::run(ctx, client, out, ubuf, stream, idle, in_flight).await;
        }
        upstream::Answer::Serve(hit, reusable_now) => {
            if reusable_now && ubuf.is_empty() {
                ctx.upstreams.borrow_mut().give_back(forward.server, stream);
            }
            ctx.give_read_buffer(ubuf);
            coalescing.release();
            let keep =
                progress.request_consumed && forward.keep_alive && client_may_continue(ctx, client);
            let sent = send_cached(
                ctx,
                client,
                &hit,
                forward.method == Method::Head,
                keep,
                forward.version,
                out,
            )
            .await;
            return if sent && keep {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
    };
    // A write's invalidation reaches every worker before its response reaches
    // the client, so the client's next read misses whichever core it lands on.
    if let Some(urls) = plan.invalidate.take() {
        let message = crate::bus::Message::Invalidate {
            what: crate::bus::Invalidation::Urls(std::sync::Arc::new(urls)),
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
    // A fill holds its body in memory until stored: the fills under way are
    // capped at the shard's size; past it the body streams at the client's pace.
    let reservation = plan.fill.then(|| fill::reserve(ctx, &plan)).flatten();
    if let Some(reservation) = reservation {
        let first = ubuf.split();
        ctx.give_read_buffer(ubuf);
        let (framing, keep) = (plan.client_framing, plan.keep_client);
        let connection = (stream, addr, in_flight);
        let fill = fill::start(
            ctx,
            forward,
            &mut plan,
            connection,
            first,
            coalescing,
            reservation,
        );
        let reader = fill.reader().expect("a new fill has its first byte");
        return fill::serve(ctx, client, reader, out, framing, keep).await;
    }
    if plan.capture.is_none() {
        // Nothing will be stored: requests waiting on the key need not wait
        // for this client to take its body.
        coalescing.release();
    }
    let relayed = relay::body(
        ctx,
        client,
        forward,
        &mut out,
        &mut ubuf,
        stream,
        addr,
        &mut plan,
        &mut coalescing,
    )
    .await;
    drop(in_flight);
    ctx.give_read_buffer(ubuf);
    match relayed {
        Ok(next) => {
            ctx.give_write_buffer(out);
            next
        }
        Err(error) => {
            if error.side == Side::Upstream {
                ctx.upstreams.borrow().record_outcome(
                    forward.group,
                    forward.server,
                    true,
                    Instant::now(),
                );
            }
            log_failure(ctx, &error);
            Next::Close
        }
    }
}

fn log_failure(ctx: &WorkerCtx, error: &ProxyError) {
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

#[cfg(test)]
mod tests;
