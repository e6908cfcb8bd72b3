//! The HTTP/2 downstream session: one connection task per client
//! connection (ALPN `h2` on a TLS listener, or prior knowledge on a plain
//! listener with `h2c`), on the worker that accepted it, driving hyperium's
//! `h2` codec over monoio's poll-mode socket. Each stream is a request of
//! the same pipeline as HTTP/1's: its header block is put in the gateway's
//! one request form (`convert`), parsed by the same parser, and runs the
//! same phases (`super::session::exchange`) in a task of its own, so the
//! streams of one connection run concurrently; its answer goes out through
//! the same session calls (`super::reply`), which send HEADERS and DATA
//! here (`stream`).
//!
//! Limits: `[http2]` (concurrent streams, windows, requests per connection,
//! client resets per window), the head and body limits of `[limits]`, the
//! idle, head and send timeouts of `[timeouts]`; the codec's own defences
//! (CONTINUATION and header-list size, pending-accept resets, locally
//! reset streams) stay on.

mod convert;
pub(crate) mod stream;
pub(crate) mod turn;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::Reason;
use http::{Request, Response, StatusCode};
use monoio::io::poll_io::{AsyncRead, AsyncWrite};

use super::session::exchange;
use super::Client;
use crate::worker::context::{Counter, WorkerCtx};
use crate::worker::signal::{race, CatchUnwind, Either, Notify};
use stream::{reset_by_client, H2Stream, Parts};
use turn::{drive, SharedIo, TurnIo};

/// What one connection knows of its streams, shared with their tasks.
struct Shared {
    /// Streams whose task has not finished (a stream the client reset
    /// counts until its task stops: this, not the codec's count, bounds
    /// the work a client can start).
    open: Cell<u32>,
    /// When the client reset streams lately, oldest first.
    resets: RefCell<VecDeque<Instant>>,
    /// Too many resets: the connection ends with `ENHANCE_YOUR_CALM`.
    calm: Cell<bool>,
    /// Wakes the connection task when `open` or `calm` changed.
    notify: Notify,
}

impl Shared {
    /// Counts a stream reset by the client; true once the connection is
    /// over `max_client_resets` within `reset_window`.
    fn client_reset(&self, ctx: &WorkerCtx, now: Instant) -> bool {
        let limits = &ctx.config.http2;
        let mut resets = self.resets.borrow_mut();
        while resets
            .front()
            .is_some_and(|t| now.duration_since(*t) > limits.reset_window)
        {
            resets.pop_front();
        }
        resets.push_back(now);
        resets.len() > limits.max_client_resets as usize
    }
}

/// Counts a stream's task as open for as long as it runs.
struct OpenStream(Rc<Shared>);

impl OpenStream {
    fn new(shared: &Rc<Shared>) -> Self {
        shared.open.set(shared.open.get() + 1);
        shared.notify.notify_all();
        OpenStream(shared.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.notify.notify_all();
    }
}

/// The connection's facts every stream of it needs.
#[derive(Clone)]
pub(super) struct Connection {
    /// TLS version and SNI (the access log's), on a TLS connection.
    pub tls_info: Option<Rc<crate::access_log::TlsInfo>>,
    pub peer: SocketAddr,
    /// Its key in the worker's connection table.
    pub conn: usize,
    pub tls: bool,
    pub redirect_https: Option<u16>,
}

enum Event {
    /// No stream open for the idle timeout, or closed to make room at a
    /// connection cap while no stream was open.
    Idle,
    Drain,
    Calm,
    /// Closing, no stream open, and the client took nothing for `client_send`:
    /// the connection is dropped without waiting for its GOAWAY to go out.
    Stuck,
}

/// Serves one HTTP/2 connection until the client or the gateway ends it.
pub(super) async fn serve<T>(ctx: Rc<WorkerCtx>, io: T, connection: Connection)
where
    T: TurnIo + 'static,
{
    let limits = &ctx.config.http2;
    let timeouts = &ctx.config.timeouts;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_window_size(limits.initial_window_size)
        .initial_connection_window_size(connection_window(limits.initial_window_size))
        .max_header_list_size(ctx.config.limits.max_request_head as u32)
        // What a stream may queue beyond the client's window: the reader of
        // the upstream waits instead (back-pressure reaches the upstream).
        .max_send_buffer_size(ctx.per_core.upstream_buffer_size.max(16 * 1024));
    let io = SharedIo::new(io);
    let handshake = monoio::time::timeout(
        timeouts.client_header,
        drive(&io, builder.handshake::<_, Bytes>(io.clone())),
    );
    let mut codec = match race(handshake, ctx.forced_closed()).await {
        Either::Left(Ok(Ok(Ok(codec)))) => codec,
        Either::Left(Ok(Ok(Err(e)))) => {
            tracing::debug!(worker = ctx.index, peer = %connection.peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
        _ => return,
    };
    ctx.stats.count(Counter::H2Connections);
    let shared = Rc::new(Shared {
        open: Cell::new(0),
        resets: RefCell::default(),
        calm: Cell::new(false),
        notify: Notify::default(),
    });
    let peer_ip: Rc<str> = connection.peer.ip().to_string().into();
    let mut served = 0u64;
    let mut closing = false;
    // What ends the wait for streams, made again only when its terms change
    // (the first stream, closing) or it fired: not once per stream.
    let watch = |served: u64, closing: bool| {
        let idle = if served == 0 {
            timeouts.client_header
        } else {
            timeouts.keepalive
        };
        let wait = if closing { timeouts.client_send } else { idle };
        race(
            next_event(&ctx, &shared, connection.conn, wait, closing),
            ctx.forced_closed(),
        )
    };
    let mut next = std::pin::pin!(watch(served, closing));
    loop {
        let turn = poll_fn(|cx| {
            if let Poll::Ready(accepted) = codec.poll_accept(cx) {
                return Poll::Ready(Either::Left(accepted));
            }
            next.as_mut().poll(cx).map(Either::Right)
        });
        let event = drive(&io, turn).await;
        let event = match event {
            Ok(Either::Left(accepted)) => Either::Left(accepted),
            Ok(Either::Right(Either::Left(event))) => Either::Right(event),
            // The shutdown grace is over, or the socket broke: the
            // connection is dropped.
            Ok(Either::Right(Either::Right(()))) | Err(_) => return,
        };
        let before = (served.min(1), closing);
        let mut fired = false;
        match event {
            Either::Left(Some(Ok((request, respond)))) => {
                served += 1;
                ctx.stats.count(Counter::H2Streams);
                // The stream's future goes to the heap once (`CatchUnwind`
                // boxes it): only a pointer moves into the task after that.
                let task = CatchUnwind::new(serve_stream(
                    ctx.current(),
                    shared.clone(),
                    request,
                    respond,
                    connection.clone(),
                    peer_ip.clone(),
                ));
                let worker = ctx.clone();
                monoio::spawn(async move {
                    if let Err(panic) = task.await {
                        worker.stats.count(Counter::Panics);
                        let message = crate::worker::signal::panic_message(&*panic);
                        tracing::error!(
                            worker = worker.index,
                            panic = message,
                            "HTTP/2 stream task panicked"
                        );
                    }
                });
                if served >= limits.max_requests && !closing {
                    closing = true;
                    ctx.stats.count(Counter::H2Goaways);
                    codec.graceful_shutdown();
                }
            }
            Either::Left(Some(Err(e))) => {
                if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                    ctx.stats.count(Counter::H2Calm);
                }
                tracing::debug!(worker = ctx.index, peer = %connection.peer, error = %e, "HTTP/2 connection error");
                break;
            }
            Either::Left(None) => break,
            Either::Right(Event::Idle | Event::Drain) => {
                fired = true;
                closing = true;
                ctx.stats.count(Counter::H2Goaways);
                codec.graceful_shutdown();
            }
            Either::Right(Event::Stuck) => return,
            Either::Right(Event::Calm) => {
                ctx.stats.count(Counter::H2Calm);
                tracing::debug!(worker = ctx.index, peer = %connection.peer, "HTTP/2 client resets too many streams, connection closed");
                codec.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                // The GOAWAY goes out, then the connection closes.
                let closed = drive(&io, poll_fn(|cx| codec.poll_closed(cx)));
                let _ = monoio::time::timeout(timeouts.client_send, closed).await;
                return;
            }
        }
        if fired || before != (served.min(1), closing) {
            next.set(watch(served, closing));
        }
    }
    // Frames still queued (the last responses, the GOAWAY) go out.
    let closed = drive(&io, poll_fn(|cx| codec.poll_closed(cx)));
    let _ = race(
        monoio::time::timeout(timeouts.client_send, closed),
        ctx.forced_closed(),
    )
    .await;
}

/// The connection window: room for a few streams' bodies at once.
fn connection_window(stream_window: u32) -> u32 {
    stream_window.saturating_mul(4).min((1 << 31) - 1)
}

/// What ends the wait for the next stream: the connection idle (no open
/// stream) for `idle`, a drain, or too many client resets. Once the
/// connection is closing: too many resets, or no stream open for `idle`
/// (the client is not taking the GOAWAY).
async fn next_event(
    ctx: &WorkerCtx,
    shared: &Shared,
    conn: usize,
    idle: Duration,
    closing: bool,
) -> Event {
    loop {
        if shared.calm.get() {
            return Event::Calm;
        }
        let quiet = shared.open.get() == 0;
        let changed = shared
            .notify
            .wait_until(|| shared.calm.get() || (shared.open.get() == 0) != quiet);
        if closing {
            if !quiet {
                changed.await;
            } else if let Either::Left(()) = race(monoio::time::sleep(idle), changed).await {
                return Event::Stuck;
            }
            continue;
        }
        let stop = race(ctx.drain_started(), changed);
        if !quiet {
            if let Either::Left(()) = stop.await {
                return Event::Drain;
            }
            continue;
        }
        // No stream open: the connection is idle, as an HTTP/1 one waiting
        // for its next request, and may be closed to make room at a cap.
        ctx.conns.set_idle(conn, None);
        if ctx.active.get() >= ctx.per_core.max_connections {
            ctx.slot_notify.notify_all();
        }
        let quiet_for = race(monoio::time::sleep(idle), ctx.conns.evicted(conn));
        let woke = race(quiet_for, stop).await;
        ctx.conns.set_busy(conn);
        match woke {
            Either::Left(_) => return Event::Idle,
            Either::Right(Either::Left(())) => return Event::Drain,
            Either::Right(Either::Right(())) => {}
        }
    }
}

/// One stream: its request through the pipeline, raced against the
/// client resetting it (the work is then dropped: its upstream request is
/// abandoned, and the reset is counted).
async fn serve_stream(
    ctx: Rc<WorkerCtx>,
    shared: Rc<Shared>,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    connection: Connection,
    peer_ip: Rc<str>,
) {
    let _open = OpenStream::new(&shared);
    let body_done = request.body().is_end_stream();
    let chunked = !body_done && !request.headers().contains_key(http::header::CONTENT_LENGTH);
    let mut buf = BytesMut::with_capacity(ctx.per_core.client_buffer_size);
    if let Err(refused) = convert::request_head(&request, chunked, &mut buf) {
        tracing::debug!(worker = ctx.index, ?refused, "HTTP/2 request refused");
        ctx.stats.count(Counter::ClientErrors);
        let mut answer = Response::new(());
        *answer.status_mut() = StatusCode::BAD_REQUEST;
        let _ = respond.send_response(answer, true);
        return;
    }
    let parts = Rc::new(RefCell::new(Parts {
        respond,
        send: None,
        recv: request.into_body(),
        answered: false,
        reset_here: None,
    }));
    let h2 = H2Stream::new(parts.clone(), connection.tls, chunked, body_done);
    let mut client = Client::for_h2(&connection, peer_ip, buf, h2);
    // Pinned in place (this task's future is on the heap already): `race`
    // then holds a pointer, not the large exchange.
    let mut work = std::pin::pin!(exchange(&ctx, &mut client));
    let watched = race(work.as_mut(), reset_by_client(&parts));
    match race(watched, ctx.forced_closed()).await {
        Either::Left(Either::Left(_)) => {
            if let Some(reason) = parts.borrow().reset_here {
                ctx.stats.h2_reset(false, reason.into());
            }
        }
        Either::Left(Either::Right(reason)) => {
            // ENHANCE_YOUR_CALM reaches a stream when the connection is
            // closed for a flood (by this session or the codec): the
            // gateway's reset, though it still counts toward the cap below.
            let by_client = reason != Reason::ENHANCE_YOUR_CALM;
            if by_client {
                ctx.stats.count(Counter::H2ClientResets);
            }
            ctx.stats.h2_reset(by_client, reason.into());
            tracing::debug!(
                worker = ctx.index,
                ?reason,
                "HTTP/2 stream reset by the client"
            );
            if shared.client_reset(&ctx, Instant::now()) && !shared.calm.replace(true) {
                shared.notify.notify_all();
            }
        }
        Either::Right(()) => {}
    }
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection on an `h2c` listener opened with.
pub(super) enum Preface {
    /// The HTTP/2 preface: the connection, its first bytes to be read again.
    Http2(turn::Buffered<Prefixed>),
    /// Anything else: HTTP/1, its first bytes in the buffer.
    Http1(monoio::net::TcpStream),
    /// Closed, or silent past `client_header`.
    Gone,
}

/// Reads a plain connection's first bytes into `buf` until they tell
/// HTTP/2's preface from an HTTP/1 request (the first byte that differs).
pub(super) async fn prior_knowledge(
    ctx: &WorkerCtx,
    stream: monoio::net::TcpStream,
    buf: &mut BytesMut,
) -> Preface {
    let deadline = super::io::deadline_in(ctx.config.timeouts.client_header);
    let mut stream = super::io::Stream::Plain(stream);
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] || n == PREFACE.len() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let size = ctx.per_core.client_buffer_size;
        if !matches!(
            stream.read_some(buf, size, left).await,
            super::io::Read::Data(_)
        ) {
            return Preface::Gone;
        }
    }
    let super::io::Stream::Plain(stream) = stream else {
        return Preface::Gone;
    };
    if !buf.starts_with(PREFACE) {
        return Preface::Http1(stream);
    }
    use monoio::io::IntoPollIo;
    match stream.into_poll_io() {
        Ok(io) => Preface::Http2(turn::Buffered::new(Prefixed {
            early: buf.split().freeze(),
            io,
        })),
        Err(_) => Preface::Gone,
    }
}

/// A poll-mode socket whose first bytes were already read: they are read
/// again first.
pub(super) struct Prefixed {
    early: Bytes,
    io: monoio::net::tcp::stream_poll::TcpStreamPoll,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut monoio::io::poll_io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
