//! The upstream side of one request, up to the response head: the server's
//! connection (pooled and checked, or new), the request head and body sent
//! (buffered or streamed), the response head read and judged, and the
//! retries (a dead pooled connection once, other servers as the route's
//! retry policy and budget allow). What follows the head, the body, is
//! `super::relay` or `super::fill`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::head;
use super::io::{self, Read, Stream};
use super::reply::BodyLength;
use super::request_body::{Piece, RequestBody};
use super::{cache, Client, Forward, Progress, MAX_RESPONSE_HEADERS};
use crate::error::{ErrorKind, ProxyError, Side, Stage};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, HttpError, Version};
use crate::upstream::h1::{connect, into_io};
use crate::worker::context::{Counter, WorkerCtx};

/// Counts a request as outstanding to its server (for `least_request` and
/// `peak_ewma`) for as long as it is being relayed, by whoever holds it.
pub(super) struct InFlight {
    ctx: Rc<WorkerCtx>,
    server: usize,
}

impl InFlight {
    pub(super) fn new(ctx: &Rc<WorkerCtx>, server: usize) -> Self {
        ctx.upstreams.borrow().add_outstanding(server, 1);
        InFlight {
            ctx: ctx.clone(),
            server,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ctx.upstreams.borrow().add_outstanding(self.server, -1);
    }
}

/// What the parsed response head means for the rest of the exchange.
pub(super) struct ResponsePlan {
    /// How the upstream frames the body, and what the client is told of its length.
    pub framing: BodyFraming,
    pub length: BodyLength,
    pub reusable: bool,
    /// The body is being collected for the cache.
    pub capture: Option<crate::cache::entry::Capture>,
    /// The body did not come whole with the head: a fill task reads it.
    pub fill: bool,
    /// URLs every worker drops before this response goes out (a successful write).
    pub invalidate: Option<Vec<Box<[u8]>>>,
}

/// The outcome of the upstream's response head.
pub(super) enum Answer {
    Relay(ResponsePlan),
    /// Answer from this stored response (a 304 to a revalidation, or
    /// stale-if-error); the flag says whether the connection is reusable now.
    Serve(cache::HitPlan, bool),
    /// The upstream switched protocols (`101`) as asked: the connection is a
    /// tunnel now; the client's 101 head (status line and fields) is in `out`.
    Tunnel,
}

/// An upstream exchange that got its response head.
pub(super) struct UpstreamHead {
    pub stream: Stream,
    pub addr: SocketAddr,
    pub answer: Answer,
    /// The request counts as outstanding to the server until this drops.
    pub in_flight: InFlight,
}

/// Sends the request (in `out`, with the body when `body.in_out`) and reads
/// the response head, retrying as the route allows: another server after a
/// connect failure, a reset before any response byte or a status the route
/// retries on. On success the client's response head is in `out` and the
/// first body bytes are in `ubuf`.
pub(super) async fn exchange(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    forward: &mut Forward,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    progress: &mut Progress,
    body: &mut Body,
) -> Result<UpstreamHead, ProxyError> {
    let retry = ctx.config.routes[forward.route].retry.as_ref();
    ctx.retry_budgets[forward.route]
        .borrow_mut()
        .record_request(monoio::time::recent());
    let mut retries_left = retry.map_or(0, |r| r.attempts);
    let mut tried = vec![forward.server];
    loop {
        // The whole request is in `out`: it can be sent again elsewhere.
        let replayable = body.in_out && forward.method.is_idempotent() && !out.is_empty();
        forward.may_retry_status = replayable
            && retries_left > 0
            && retry.is_some_and(|r| {
                !r.statuses.is_empty()
                    && ctx.retry_budgets[forward.route]
                        .borrow_mut()
                        .allows(r, monoio::time::recent())
            });
        let in_flight = InFlight::new(ctx, forward.server);
        let attempt = attempt(ctx, client, forward, out, ubuf, progress, body).await;
        let error = match attempt {
            Ok((stream, addr, answer)) => {
                return Ok(UpstreamHead {
                    stream,
                    addr,
                    answer,
                    in_flight,
                })
            }
            Err(e) => e,
        };
        drop(in_flight);
        // Passive health: the server failed this request (statuses are counted at the head).
        if error.side == Side::Upstream && !matches!(error.kind, ErrorKind::RetryStatus(_)) {
            ctx.upstreams.borrow().record_outcome(
                forward.group,
                forward.server,
                true,
                Instant::now(),
            );
        }
        if retries_left == 0 || progress.response_started {
            return Err(error);
        }
        let policy = retry.expect("retries_left > 0 only with a retry policy");
        // `out` may have lost the request during the attempt (a write timed out,
        // an interim response was relayed): then it cannot be sent again.
        let resendable = replayable && !out.is_empty();
        let allowed = match error.kind {
            // Nothing reached a server: safe for any method.
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::UpstreamTls => {
                policy.on_connect_failure && !out.is_empty()
            }
            // Closed or reset before any response byte: only what may be repeated.
            ErrorKind::UpstreamClosedEarly => policy.on_reset && error.retry_safe() && resendable,
            ErrorKind::RetryStatus(_) => resendable,
            _ => false,
        };
        if !allowed
            || !ctx.retry_budgets[forward.route]
                .borrow_mut()
                .try_take(policy, Instant::now())
        {
            return Err(error);
        }
        retries_left -= 1;
        ctx.stats.count(Counter::UpstreamRetries);
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
    }
}

/// One server: a pooled connection (or a new one), the request, the
/// response head. A pooled connection the server closed while the request
/// was on its way fails before any response byte: the server never read the
/// request, so it goes once more on a fresh connection, whatever the
/// method, when all of it can be sent again (the whole request is in `out`,
/// or no byte of a streamed body was taken from the client yet).
async fn attempt(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    progress: &mut Progress,
    body: &mut Body,
) -> Result<(Stream, SocketAddr, Answer), ProxyError> {
    let addr = ctx.upstreams.borrow().addr(forward.server);
    let pooled = ctx.upstreams.borrow_mut().take_connection(forward.server);
    let logged = client.log.as_deref().is_some_and(|r| r.active);
    if logged {
        if let Some(record) = client.log.as_deref_mut() {
            record.upstream = Some(addr);
            record.upstream_connect = None;
        }
    }
    let (mut upstream, mut reused) = match pooled {
        Some(stream) => {
            ctx.stats.count(Counter::UpstreamReuses);
            (stream, true)
        }
        None => {
            let started = Instant::now();
            let stream = connect(ctx, forward.server, forward.timeouts.connect).await?;
            if let Some(record) = client.log.as_deref_mut().filter(|_| logged) {
                record.upstream_connect = Some(started.elapsed());
            }
            (stream, false)
        }
    };
    let sent_at = Instant::now();
    let (head_len, answer) = loop {
        let result = async {
            send_request(
                ctx,
                client,
                forward,
                body,
                out,
                &mut upstream,
                progress,
                addr,
            )
            .await?;
            read_response_head(ctx, client, forward, out, &mut upstream, ubuf, addr).await
        }
        .await;
        let resendable = !out.is_empty() && (body.in_out || !progress.body_streamed);
        match result {
            Ok(done) => break done,
            Err(e) if e.retry_safe() && reused && resendable => {
                tracing::debug!(worker = ctx.index, upstream = %addr, error = %e, "pooled connection was dead, retrying");
                ctx.stats.count(Counter::UpstreamRetries);
                ubuf.clear();
                upstream = connect(ctx, forward.server, forward.timeouts.connect).await?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(record) = client.log.as_deref_mut().filter(|_| logged) {
        record.upstream_head = Some(sent_at.elapsed());
        record.upstream_status = ubuf
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok());
    }
    ubuf.advance(head_len);
    progress.response_started = true;
    let now = Instant::now();
    ctx.upstreams
        .borrow()
        .record_latency(forward.server, now - sent_at, now);
    Ok((upstream, addr, answer))
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
    /// `101` to an upgrade request: the client's 101 head is in `out`.
    Switch(usize),
    /// A small body that may be stored is read whole first: it is then
    /// stored before the head goes out, and both leave in one write.
    NeedBody,
}

fn response_step(
    ctx: &WorkerCtx,
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
        // 101 switches protocols only where an upgrade was asked for and is
        // the one asked for: anything else is a protocol error, never a tunnel.
        if resp.status == 101 {
            let route = &ctx.config.routes[forward.route];
            let Some(protocol) = forward.upgrade.map(|i| route.upgrade[i].as_str()) else {
                return Err(HttpError::Malformed);
            };
            if !super::tunnel::switches(&resp, protocol) {
                return Err(HttpError::Malformed);
            }
            ctx.upstreams.borrow().record_outcome(
                forward.group,
                forward.server,
                false,
                Instant::now(),
            );
            out.clear();
            let mut extra = Vec::with_capacity(48);
            head::write_upgrade_fields(&mut extra, protocol.as_bytes());
            head::write_response_head(out, &resp, &BodyLength::None, via, &extra, &[]);
            return Ok(HeadStep::Switch(resp.head_len));
        }
        if resp.status == 100 || forward.version == Version::Http10 {
            return Ok(HeadStep::Skip(resp.head_len));
        }
        out.clear();
        head::write_response_head(out, &resp, &BodyLength::None, via, b"", &[]);
        return Ok(HeadStep::Interim(resp.head_len));
    }
    if resp.transfer_codings.is_some() && forward.version == Version::Http10 {
        // An HTTP/1.0 client cannot be sent a transfer-coded body.
        return Err(HttpError::BadTransferEncoding);
    }
    let rest = &ubuf[resp.head_len..];
    let body_complete = match resp.framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) => rest.len() as u64 >= n,
        BodyFraming::Chunked => matches!(crate::http::chunked::scan_body(rest), Ok((Some(_), _))),
        BodyFraming::UntilClose => false,
    };
    let small = ctx.per_core.upstream_buffer_size;
    let small_body = match resp.framing {
        BodyFraming::Length(n) => n <= small as u64,
        BodyFraming::Chunked => rest.len() < small,
        _ => false,
    };
    if !body_complete
        && small_body
        && forward
            .cache
            .as_deref()
            .is_some_and(|work| cache::will_store(ctx, work, &resp, forward.method))
    {
        return Ok(HeadStep::NeedBody);
    }
    ctx.upstreams.borrow().record_outcome(
        forward.group,
        forward.server,
        resp.status >= 500,
        monoio::time::recent(),
    );
    if forward.may_retry_status
        && ctx.config.routes[forward.route]
            .retry
            .as_ref()
            .is_some_and(|r| r.statuses.contains(&resp.status))
    {
        return Ok(HeadStep::Retry(resp.status));
    }
    // A body that came whole with the head is stored before the head goes
    // out, so only then may the head say `stored`; a longer one is filled
    // by a task of its own (read-while-fill).
    let (capture, cache_status, invalidate) = match forward.cache.as_deref() {
        None => (None, Vec::new(), None),
        Some(work) => {
            match cache::on_response_head(ctx, work, &resp, forward.method, body_complete) {
                cache::Action::Relay {
                    capture,
                    status_line,
                    invalidate,
                } => (capture, status_line, invalidate),
                cache::Action::Serve(hit) => {
                    let reusable_now = resp.reusable && resp.framing == BodyFraming::None;
                    return Ok(HeadStep::Serve(resp.head_len, hit, reusable_now));
                }
            }
        }
    };
    let length = match resp.framing {
        BodyFraming::None => BodyLength::None,
        BodyFraming::Length(n) => BodyLength::Known(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => BodyLength::Unknown {
            codings: resp.transfer_codings.map(Box::from),
        },
    };
    out.clear();
    let mut extra = cache_status;
    if let Some(line) = &forward.pin_cookie {
        extra.extend_from_slice(line);
    }
    let withheld = ctx.config.routes[forward.route]
        .cache
        .as_ref()
        .map_or(&[][..], crate::cache::entry::withheld_targeted);
    head::write_response_head(out, &resp, &length, via, &extra, withheld);
    Ok(HeadStep::Final(
        resp.head_len,
        ResponsePlan {
            framing: resp.framing,
            length,
            reusable: resp.reusable,
            fill: capture.is_some() && !body_complete,
            capture,
            invalidate,
        },
    ))
}

/// The request's body on its way to the upstream.
pub(super) struct Body {
    from_client: RequestBody,
    /// All of it is in `out`, after the head: the request can be sent again.
    in_out: bool,
}

/// Takes the request out of the session: the head (already rebuilt in
/// `out`) is consumed, and the body goes into `out` too when the session
/// holds all of it, so that head and body go out in one write and the
/// request can be sent again.
pub(super) fn take_request(
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    progress: &mut Progress,
) -> Body {
    let mut from_client = client.open_body(forward.head_len, forward.body, forward.expect_continue);
    let in_out = client.body_in_hand(&mut from_client, out, head::body_out(forward.body));
    progress.request_consumed = in_out;
    Body {
        from_client,
        in_out,
    }
}

/// Sends the request head (with the body when `body.in_out`), then streams
/// the body's pieces as the session hands them out. On success `out` still
/// holds exactly what was first written, so a retry can resend it.
#[allow(clippy::too_many_arguments)]
async fn send_request(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    body: &mut Body,
    out: &mut Vec<u8>,
    upstream: &mut Stream,
    progress: &mut Progress,
    addr: SocketAddr,
) -> Result<(), ProxyError> {
    let send = ctx.config.timeouts.upstream_send;
    let dead =
        |source| ProxyError::upstream(ErrorKind::UpstreamClosedEarly, addr, Stage::Request, source);
    let buf = std::mem::take(out);
    match upstream.write_all(buf, send).await {
        Ok(buf) => *out = buf,
        Err((e, buf)) => {
            if let Some(buf) = buf {
                *out = buf;
            }
            return Err(dead(into_io(e)));
        }
    }
    if body.in_out {
        return Ok(());
    }
    out.clear();
    let body = &mut body.from_client;
    progress.body_streamed |= body.has_more();
    // Mid-body, the upstream already has part of the request: never retry.
    let upstream_failed = |e| {
        ProxyError::upstream(
            ErrorKind::UpstreamClosedEarly,
            addr,
            Stage::RequestBody,
            into_io(e),
        )
    };
    let framing = head::body_out(forward.body);
    while let Some(piece) = client.next_body_piece(ctx, body, out, framing).await? {
        match piece {
            Piece::Bytes(bytes) => {
                upstream
                    .write_all(bytes, send)
                    .await
                    .map_err(|(e, _)| upstream_failed(e))?;
            }
            Piece::Written => {
                let buf = std::mem::take(out);
                let mut buf = upstream
                    .write_all(buf, send)
                    .await
                    .map_err(|(e, _)| upstream_failed(e))?;
                buf.clear();
                *out = buf;
            }
        }
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
    upstream: &mut Stream,
    ubuf: &mut BytesMut,
    addr: SocketAddr,
) -> Result<(usize, Answer), ProxyError> {
    let deadline = io::deadline_in(forward.timeouts.response);
    let mut received_any = false;
    loop {
        let step = response_step(ctx, forward, ubuf, out).map_err(|e| {
            ProxyError::upstream(ErrorKind::BadResponse(e), addr, Stage::ResponseHead, None)
        })?;
        match step {
            HeadStep::Final(head_len, plan) => return Ok((head_len, Answer::Relay(plan))),
            HeadStep::Switch(head_len) => return Ok((head_len, Answer::Tunnel)),
            HeadStep::Serve(head_len, hit, reusable_now) => {
                return Ok((head_len, Answer::Serve(hit, reusable_now)))
            }
            HeadStep::Retry(status) => {
                return Err(ProxyError::upstream(
                    ErrorKind::RetryStatus(status),
                    addr,
                    Stage::ResponseHead,
                    None,
                ))
            }
            HeadStep::Skip(n) => {
                ubuf.advance(n);
                continue;
            }
            HeadStep::Interim(n) => {
                ubuf.advance(n);
                *out = client
                    .send_interim(ctx, std::mem::take(out))
                    .await
                    .map_err(|_| ProxyError::downstream(ErrorKind::ClientIo, None))?;
                continue;
            }
            HeadStep::NeedMore => {}
            HeadStep::NeedBody => {
                match upstream
                    .read_some(
                        ubuf,
                        ctx.per_core.upstream_buffer_size,
                        forward.timeouts.read,
                    )
                    .await
                {
                    Read::Data(_) => continue,
                    Read::TimedOut => {
                        return Err(ProxyError::upstream(
                            ErrorKind::ResponseTimeout,
                            addr,
                            Stage::ResponseBody,
                            None,
                        ))
                    }
                    Read::Eof | Read::Failed(_) => {
                        return Err(ProxyError::upstream(
                            ErrorKind::BadResponse(HttpError::Malformed),
                            addr,
                            Stage::ResponseBody,
                            None,
                        ))
                    }
                }
            }
        }
        crate::upstream::h1::read_head_piece(ctx, upstream, ubuf, addr, deadline, received_any)
            .await?;
        received_any = true;
    }
}
