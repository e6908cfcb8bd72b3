//! The HTTP/1 downstream session: one task per client connection, on the
//! worker that accepted it. It owns the wire: the TLS handshake of a TLS
//! listener, waiting for the next request (keep-alive, drain, eviction at a
//! cap), reading and parsing a head within its deadline and size limits,
//! `100 Continue`, reading a small body whole, and refusing what cannot be
//! parsed (with a close: framing is then uncertain). Each parsed request
//! goes to the protocol-free phases (`super::phases`), and the loop goes on
//! with the next one (pipelined requests are answered in order).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::answer::respond_error;
use super::io::{self, Read, Stream};
use super::reading::may_hold_head_end;
use super::{http2, phases, Client, Entry, Next, Plan};
use crate::config::MAX_HEADERS_CAP;
use crate::http::request::{header_slots, parse_request};
use crate::http::HttpError;
use crate::route::rate_limit::Outcome;
use crate::worker::context::{Counter, WorkerCtx};
use crate::worker::signal::{boxed, race, Either};

/// A client connection as accepted, before its task serves it.
pub struct Connection(Client);

impl Connection {
    /// The connection `stream` from `peer`, its key `conn` in the worker's
    /// connection table.
    pub fn new(
        ctx: &WorkerCtx,
        stream: TcpStream,
        peer: SocketAddr,
        conn: usize,
        entry: &Entry,
    ) -> Connection {
        let _ = stream.set_nodelay(true);
        // With a provided-buffer ring the first request comes through it
        // too: no buffer of the connection's own until bytes arrive.
        let buf = match ctx.recv_ring {
            Some(_) => BytesMut::new(),
            None => BytesMut::with_capacity(ctx.per_core.client_buffer_size),
        };
        Connection(Client {
            conn,
            stream: Stream::Plain(stream),
            redirect_https: entry.redirect_https,
            buf,
            peer_ip: peer.ip().to_string().into(),
            peer,
            served: 0,
            reply: Default::default(),
            sent_continue: false,
            limit_verdict: None,
            h2: None,
            request_id: Default::default(),
            tls: None,
            log: None,
            armed: Default::default(),
        })
    }
}

impl Connection {
    #[cfg(test)]
    pub(super) fn into_client(self) -> Client {
        self.0
    }
}

/// Serves a connection to its end: opens it (the TLS handshake, or HTTP/2
/// served to its end), then its requests. The task holds this future for
/// the connection's life, so what it holds while idle is kept small: the
/// client, the request loop, and a box only while a connection opens.
///
/// A plain `fn` returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments twice (as captured and as locals), and
/// the connection is the biggest of them.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    ctx: Rc<WorkerCtx>,
    mut connection: Connection,
    entry: Rc<Entry>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let client = &mut connection.0;
        if entry.tls.is_some() || entry.h2c {
            // Boxed: the TLS handshake and an HTTP/2 connection's task are not
            // carried by every HTTP/1 connection's future.
            let Stream::Plain(tcp) = std::mem::replace(&mut client.stream, Stream::Detached) else {
                return;
            };
            let opened = Box::pin(open(
                &ctx,
                tcp,
                client.peer,
                client.conn,
                &entry,
                &mut client.buf,
            ));
            match opened.await {
                Some(stream) => {
                    if let Stream::Tls(s) = &stream {
                        client.tls = Some(Rc::new(crate::tls::Negotiated::of(s).info()));
                    }
                    client.stream = stream;
                }
                None => return,
            }
        }
        // After the shutdown grace period the work is dropped mid-flight: its
        // sockets close and its pending I/O is cancelled.
        race(requests(&ctx, client), ctx.forced_closed()).await;
    }
}

/// The connection's requests, one after another, each on the config
/// generation current when its first bytes come. What an idle keep-alive
/// connection holds is this loop's state while it waits: a request's
/// exchange (some KiB of state) is boxed for as long as it runs, so it is
/// not carried by every idle connection.
pub(super) async fn requests(ctx: &Rc<WorkerCtx>, client: &mut Client) {
    loop {
        if client.buf.is_empty() && !await_request(ctx, client).await {
            break;
        }
        let current = ctx.current();
        if let Next::Close = boxed(|| exchange(&current, client)).await {
            break;
        }
        // Give back memory a large head or body made the buffer grow to;
        // with a provided-buffer ring, all of it: the wait for the next
        // request needs none.
        if client.buf.is_empty()
            && (ctx.recv_ring.is_some()
                || client.buf.capacity() > 4 * ctx.per_core.client_buffer_size)
        {
            client.buf = match ctx.recv_ring {
                Some(_) => BytesMut::new(),
                None => BytesMut::with_capacity(ctx.per_core.client_buffer_size),
            };
        }
    }
}

/// Opens the connection: the TLS handshake of a TLS listener, then the
/// protocol: HTTP/2 (ALPN `h2`, or the prior-knowledge preface on an `h2c`
/// listener) is served here to its end (`None`); HTTP/1 goes on in this
/// session, with any bytes already read in `buf`.
async fn open(
    ctx: &Rc<WorkerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    conn: usize,
    entry: &Entry,
    buf: &mut BytesMut,
) -> Option<Stream> {
    let mut h2 = http2::Connection {
        tls_info: None,
        peer,
        conn,
        tls: entry.tls.is_some(),
        redirect_https: entry.redirect_https,
    };
    match &entry.tls {
        None if entry.h2c => match http2::prior_knowledge(ctx, stream, buf).await {
            http2::Preface::Http2(io) => {
                http2::serve(ctx.clone(), io, h2).await;
                None
            }
            http2::Preface::Http1(stream) => Some(Stream::Plain(stream)),
            http2::Preface::Gone => None,
        },
        None => Some(Stream::Plain(stream)),
        Some(tls) => {
            let stream = handshake(ctx, tls, stream, peer).await?;
            if !crate::tls::Negotiated::alpn_h2(&stream) {
                return Some(Stream::Tls(Box::new(stream)));
            }
            h2.tls_info = Some(Rc::new(crate::tls::Negotiated::of(&stream).info()));
            let io = crate::tls::poll::PollTls::new(stream).ok()?;
            http2::serve(ctx.clone(), io, h2).await;
            None
        }
    }
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
            ctx.stats.tls_handshake(&facts);
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
            ctx.stats.tls_failed(e.reason());
            tracing::debug!(worker = ctx.index, %peer, error = %e, "TLS handshake failed");
            None
        }
    }
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

/// Reads more of the request into the client's buffer, before `deadline`
/// (`bulk`: as [`Client::read_request_bytes`] says).
async fn read_more(
    ctx: &WorkerCtx,
    client: &mut Client,
    reserve: usize,
    deadline: Instant,
    bulk: bool,
) -> Result<(), More> {
    let left = deadline.saturating_duration_since(monoio::time::recent());
    match client.read_request_bytes(ctx, reserve, left, bulk).await {
        Read::Data(_) => Ok(()),
        Read::TimedOut => Err(More::Refuse(408)),
        Read::Eof | Read::Failed(_) => Err(More::Gone),
    }
}

/// Handles one request on the connection.
pub(super) async fn exchange(ctx: &Rc<WorkerCtx>, client: &mut Client) -> Next {
    let timeouts = &ctx.config.timeouts;
    client.sent_continue = false;
    // Until a request is parsed, an answer (400, 408) is HTTP/1.1 with a body.
    client.reply.begin(crate::http::Version::Http11, false);
    // The session waited for the request's first bytes (`await_request`);
    // an HTTP/2 stream comes with its head.
    // One deadline for the whole head, one for a buffered body.
    let head_deadline = io::deadline_in(timeouts.client_header);
    let mut body_deadline = None;
    let mut out = ctx.take_write_buffer();
    let plan = loop {
        let refused = |e: HttpError| {
            ctx.stats.count(Counter::ClientErrors);
            tracing::debug!(worker = ctx.index, error = %e, "refused request");
            e.status()
        };
        let more = match parse_and_plan(ctx, client, &mut out) {
            Ok(Some(Plan::ReadBody(mut wait))) => {
                if wait.send_continue && client.send_continue(ctx).await.is_err() {
                    return Next::Close;
                }
                // A small body has `client_body` to arrive whole, not per read:
                // a trickling sender cannot hold a connection for days.
                let deadline =
                    *body_deadline.get_or_insert_with(|| io::deadline_in(timeouts.client_body));
                loop {
                    let read = ctx.per_core.upstream_buffer_size;
                    let bulk = wait.until.bulk(client.buf.len(), super::BULK_FROM);
                    if let Err(more) = read_more(ctx, client, read, deadline, bulk).await {
                        break more;
                    }
                    match wait.until.reached(&client.buf) {
                        Ok(true) => break More::Ready,
                        Ok(false) => {}
                        Err(e) => break More::Refuse(refused(e)),
                    }
                }
            }
            Ok(Some(Plan::AwaitLimit(asked))) => {
                let wait = ctx
                    .cluster
                    .as_ref()
                    .map_or(timeouts.client_header, |c| c.timeout);
                let answer = monoio::time::timeout(wait, asked.wait()).await;
                client.limit_verdict = Some(answer.unwrap_or(Outcome::Unavailable));
                More::Ready
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
                if let Err(more) = read_more(ctx, client, read, head_deadline, false).await {
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
                    ctx.stats.count(Counter::ClientErrors);
                }
                // A request refused before its head was whole is logged too.
                if let (Some(_), true) = (&ctx.log, ctx.config.access_log.enabled) {
                    let record = client.log.get_or_insert_with(Default::default);
                    if record.started.is_none() || !record.active {
                        record.begin();
                    }
                    record.active = true;
                }
                respond_error(ctx, client, out, status, false).await;
                log_request(ctx, client);
                return Next::Close;
            }
        }
    };
    client.served += 1;
    ctx.stats.count(Counter::Requests);
    let (version, head_only) = plan.answers();
    client.reply.begin(version, head_only);

    let next = phases::answer(ctx, client, plan, out).await;
    log_request(ctx, client);
    next
}

/// Waits, idle, for the first bytes of the client's next request; false
/// when the connection is to close instead (keep-alive timeout, the client
/// left, a drain, closed to make room at a cap). Apart from the request
/// itself so that the request runs on the config generation current when it
/// comes, not when the wait began.
async fn await_request(ctx: &Rc<WorkerCtx>, client: &mut Client) -> bool {
    let ctx = &ctx.current();
    let timeouts = &ctx.config.timeouts;
    // Draining: an idle keep-alive connection closes; one accepted in
    // the last moment still gets its first request answered.
    let fresh = client.served == 0;
    if ctx.draining.get() && !fresh {
        return false;
    }
    // Idle: wait for the first byte of the next request, but not past the
    // keep-alive timeout (the worker's idle sweep tells the connection to
    // close then: the wait holds no timer), and not once a graceful
    // shutdown starts.
    let limit = if client.served == 0 {
        timeouts.client_header
    } else {
        timeouts.keepalive
    };
    ctx.conns
        .set_idle(client.conn, Some(io::deadline_in(limit)));
    if ctx.active.get() >= ctx.per_core.max_connections {
        // The accept loop may be waiting for an idle connection to close.
        ctx.slot_notify.notify_all();
    }
    let reserve = ctx.per_core.client_buffer_size;
    let ring = ctx.recv_ring.as_ref().map(|ring| (ring, &mut client.armed));
    let empty = || ctx.stats.count(Counter::RecvBuffersEmpty);
    // Built in place, not in named locals: a future moved out of a local
    // still takes room in this one's state, which every idle connection
    // carries.
    let woke = race(
        client
            .stream
            .read_idle(&mut client.buf, reserve, ring, empty),
        race(
            ctx.drain_notify
                .wait_until(move || !fresh && ctx.draining.get()),
            ctx.conns.evicted(client.conn),
        ),
    )
    .await;
    ctx.conns.set_busy(client.conn);
    matches!(woke, Either::Left(Read::Data(_)))
}

/// Parses the head in the client buffer and runs the request's phases on
/// it (`phases::plan`); `None` while the head is incomplete.
fn parse_and_plan(
    ctx: &WorkerCtx,
    client: &mut Client,
    out: &mut Vec<u8>,
) -> Result<Option<Plan>, HttpError> {
    let limits = &ctx.config.limits;
    let mut scratch = ctx.target_scratch.borrow_mut();
    let mut slots = header_slots::<MAX_HEADERS_CAP>();
    let Some(mut req) = parse_request(
        &client.buf,
        &mut slots[..limits.max_headers],
        limits.max_request_head,
    )?
    else {
        return Ok(None);
    };
    if ctx.config.proxy.request_id {
        client.request_id.choose(req.headers, ctx);
    } else {
        client.request_id.clear();
    }
    let logging = ctx.log.is_some() && ctx.config.access_log.enabled;
    if logging {
        let record = client.log.get_or_insert_with(Default::default);
        record.begin();
        record.note_request(&req, client.h2.is_some());
    }
    let down = phases::Downstream {
        peer: client.peer.ip(),
        peer_ip: &client.peer_ip,
        https: client.is_https(),
        redirect_https: client.redirect_https,
        buffered: &client.buf,
        sent_continue: client.sent_continue,
        http2: client.h2.is_some(),
        request_id: client.request_id.as_bytes(),
        limit_verdict: client.limit_verdict.take(),
    };
    let mut facts = phases::Facts::default();
    let plan = phases::plan(ctx, &down, &mut req, &mut scratch, out, &mut facts)?;
    if let Plan::ReadBody(_) = plan {
        // Counted once: the next pass over this request reuses the answer.
        client.limit_verdict = facts.limit_verdict.take();
    }
    if let (true, Some(record)) = (logging, client.log.as_deref_mut()) {
        let route = facts.route.map(|i| &ctx.config.routes[i]);
        record.active = route.is_none_or(|r| r.access_log)
            && ctx
                .log
                .as_ref()
                .is_some_and(|l| l.sampled(ctx.config.access_log.sample_ppm));
        if let Some(r) = route {
            record.route.extend_from_slice(r.name.as_bytes());
        }
        record.cache = facts.cache;
        record
            .request_id
            .extend_from_slice(client.request_id.as_bytes());
    }
    Ok(Some(plan))
}

/// Writes the finished request's access-log line into the worker's buffer.
pub(super) fn log_request(ctx: &WorkerCtx, client: &mut Client) {
    let (Some(record), Some(log)) = (client.log.as_deref_mut(), &ctx.log) else {
        return;
    };
    if !std::mem::replace(&mut record.active, false) {
        return;
    }
    record.wall = Some(std::time::SystemTime::now());
    let settings = &ctx.config.access_log;
    let (peer, tls) = (&*client.peer_ip, client.tls.as_deref());
    log.push(settings.buffer, |out| match settings.format {
        crate::config::LogFormat::Combined => record.write_combined(out, peer),
        crate::config::LogFormat::Json => record.write_json(out, peer, tls),
    });
}
