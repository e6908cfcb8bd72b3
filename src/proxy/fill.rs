//! Read-while-fill on the request path (`cache::fill` holds the bytes).
//!
//! [`start`] hands a storable response whose body did not come with its head
//! to a task of its own ([`run`]), which reads the body from the origin at
//! the origin's speed, stores it, and only then releases the requests that
//! coalesced on the key. The client that caused the fetch, and every client
//! that missed on the same key meanwhile, is answered by [`serve`] from the
//! fill at its own speed: a slow client slows nobody else, and the origin is
//! asked once.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::io::{Read, Stream};
use super::reply::BodyLength;
use super::upstream::{InFlight, ResponsePlan};
use super::{cache, Answered, Client, Coalescing, Forward, Next};
use crate::cache::fill::{Fill, Piece, Reader};
use crate::cache::FillReservation;
use crate::config::UpstreamTimeouts;
use crate::error::{ErrorKind, ProxyError, Stage};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::BodyFraming;
use crate::worker::context::{Counter, WorkerCtx};
use crate::worker::signal::race;

/// The body-reading half of an upstream exchange, moved into the fill task.
struct Job {
    upstream: Stream,
    addr: SocketAddr,
    server: usize,
    group: usize,
    framing: BodyFraming,
    reusable: bool,
    timeouts: UpstreamTimeouts,
    /// Body bytes that came with the head.
    first: BytesMut,
    /// Largest body that will be stored.
    limit: u64,
    store: cache::FillStore,
    coalescing: Coalescing,
    _in_flight: InFlight,
    _reservation: FillReservation,
}

/// Room for the fill of the response in `plan` (its length, or the most
/// that may be stored), when the fills under way leave it.
pub(super) fn reserve(ctx: &WorkerCtx, plan: &ResponsePlan) -> Option<FillReservation> {
    let bytes = match plan.framing {
        BodyFraming::Length(n) => n,
        _ => plan.capture.as_ref().map_or(0, |c| c.limit),
    };
    ctx.cache.as_ref()?.reserve_fill(bytes)
}

/// Starts the fill of the response in `plan` (storable, body still to
/// come) and returns it; the caller then serves its own client from it.
/// Requests waiting on the key can read it as soon as this returns.
pub(super) fn start(
    ctx: &Rc<WorkerCtx>,
    forward: &Forward,
    plan: &mut ResponsePlan,
    (upstream, addr, in_flight): (Stream, SocketAddr, InFlight),
    first: BytesMut,
    coalescing: Coalescing,
    reservation: FillReservation,
) -> Rc<Fill> {
    let work = forward.cache.as_deref().expect("a fill has cache work");
    let capture = plan.capture.take().expect("a fill has a capture");
    let limit = capture.limit;
    let length = match plan.framing {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    let (fill, store) = cache::start_fill(ctx, work, capture, length);
    let fill = Rc::new(fill);
    if let Some(leader) = &coalescing.leader {
        leader.attach(fill.clone());
    }
    let job = Job {
        upstream,
        addr,
        server: forward.server,
        group: forward.group,
        framing: plan.framing,
        reusable: plan.reusable,
        timeouts: forward.timeouts,
        first,
        limit,
        store,
        coalescing,
        _in_flight: in_flight,
        _reservation: reservation,
    };
    let task = run(ctx.clone(), fill.clone(), job);
    let ctx = ctx.clone();
    monoio::spawn(async move {
        // A hard stop ends the fill with the connections.
        let work = crate::worker::signal::CatchUnwind::new(task);
        if let crate::worker::signal::Either::Left(Err(_)) = race(work, ctx.forced_closed()).await {
            ctx.stats.count(Counter::Panics);
            tracing::error!(worker = ctx.index, "a cache fill panicked");
        }
    });
    fill
}

/// Reads the body into the fill, stores it, returns the connection to the
/// pool, then releases the requests waiting for the key.
async fn run(ctx: Rc<WorkerCtx>, fill: Rc<Fill>, mut job: Job) {
    match read_body(&ctx, &fill, &mut job).await {
        Ok(Ending::Abandoned) => fill.fail(),
        Ok(ending) => {
            let body = fill.complete();
            if fill.storing() {
                let stored = cache::store_fill(&ctx, &job.store, fill.head.clone(), body);
                fill.stored_as(stored);
            }
            if ending == Ending::Clean && job.reusable {
                ctx.upstreams
                    .borrow_mut()
                    .give_back(job.server, job.upstream);
            }
        }
        Err(e) => {
            fill.fail();
            ctx.stats.count(Counter::UpstreamErrors);
            ctx.upstreams
                .borrow()
                .record_outcome(job.group, job.server, true, Instant::now());
            tracing::warn!(worker = ctx.index, error = %e, "upstream failed while filling the cache");
        }
    }
    job.coalescing.release();
}

/// How a body read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Where its framing said, with no byte beyond: the connection may be reused.
    Clean,
    /// Complete, but the connection may not be reused (closed, or extra bytes).
    Unclean,
    /// Stopped: nothing was being stored and no reader was left.
    Abandoned,
}

/// Reads the body at the origin's speed (or, once it no longer stores, no
/// further ahead of the slowest reader than the window).
async fn read_body(ctx: &WorkerCtx, fill: &Fill, job: &mut Job) -> Result<Ending, ProxyError> {
    let addr = job.addr;
    let broken =
        |source| ProxyError::upstream(ErrorKind::UpstreamBroken, addr, Stage::ResponseBody, source);
    let mut buf = std::mem::take(&mut job.first);
    let read_size = ctx.per_core.upstream_buffer_size;
    let mut decoder = ChunkedDecoder::new();
    let mut remaining = match job.framing {
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // Take what the buffer holds.
        let (piece, done) = match job.framing {
            BodyFraming::Length(_) => {
                let take = (buf.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                (buf.split_to(take).freeze(), remaining == 0)
            }
            BodyFraming::Chunked => {
                let mut data = Vec::new();
                let used = decoder
                    .decode(&buf, &mut data, Output::Raw)
                    .map_err(|_| broken(None))?;
                buf.advance(used);
                (Bytes::from(data), decoder.is_done())
            }
            BodyFraming::UntilClose => (buf.split().freeze(), false),
            BodyFraming::None => (Bytes::new(), true),
        };
        add(fill, piece, job);
        if done {
            return Ok(if buf.is_empty() {
                Ending::Clean
            } else {
                Ending::Unclean
            });
        }
        fill.room().await;
        if !fill.storing() && fill.reader_count() == 0 {
            // Nobody reads and nothing is stored: the rest is of no use.
            return Ok(Ending::Abandoned);
        }
        let want = match job.framing {
            BodyFraming::Length(_) => remaining.clamp(read_size as u64, 256 * 1024) as usize,
            _ => read_size,
        };
        match job
            .upstream
            .read_some(&mut buf, want, job.timeouts.read)
            .await
        {
            Read::Data(_) => {}
            Read::Eof if job.framing == BodyFraming::UntilClose => return Ok(Ending::Unclean),
            Read::Eof | Read::TimedOut => return Err(broken(None)),
            Read::Failed(e) => return Err(broken(Some(e))),
        }
    }
}

/// Adds a piece to the fill; a body that outgrows the limit stops being
/// stored, and the requests waiting for it go and fetch on their own.
fn add(fill: &Fill, piece: Bytes, job: &mut Job) {
    if fill.storing() && fill.received() + piece.len() as u64 > job.limit {
        fill.stop_storing();
        job.coalescing.release();
    }
    fill.push(piece);
}

/// Starts the response with `head` (status line and fields) and `length`,
/// then writes the body from the fill as it arrives. Returns what becomes
/// of the client connection.
pub(super) async fn serve(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut reader: Reader,
    head: Vec<u8>,
    length: BodyLength,
    keep: bool,
) -> Next {
    client.start_reply(ctx, head, length, keep);
    // The head goes now: the body may be slow to come.
    if client.send_body(ctx, &[]).await.is_err() {
        return client.abandon_reply(ctx);
    }
    loop {
        match reader.next().await {
            Piece::Data(data) => {
                if client.send_body_owned(ctx, data).await.is_err() {
                    return client.abandon_reply(ctx);
                }
            }
            Piece::End => return client.end_reply(ctx).await,
            // The origin failed mid-body: the client can only learn it from the close.
            Piece::Failed | Piece::Wait => return client.abandon_reply(ctx),
        }
    }
}

/// Answers a request that waited on the key from the fill under way, with
/// the head a hit would have (stored fields, `Age`, `Cache-Status`).
pub(super) async fn serve_waiter(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    reader: Reader,
    mut out: Vec<u8>,
) -> Next {
    let keep = client.finish_unforwarded(request);
    let fill = reader.fill();
    let length = match fill.length {
        Some(n) => BodyLength::Known(n),
        None => BodyLength::Unknown { codings: None },
    };
    out.clear();
    out.extend_from_slice(&fill.head.lines);
    let age = fill.head.age(Instant::now()).as_secs();
    let ttl = fill.head.freshness.lifetime.as_secs() as i64 - age as i64;
    out.extend_from_slice(
        format!("Age: {age}\r\nCache-Status: ringgate; fwd=uri-miss; collapsed; ttl={ttl}\r\n")
            .as_bytes(),
    );
    if let Some(c) = &ctx.cache {
        c.count(crate::cache::CacheEvent::Hit);
    }
    serve(ctx, client, reader, out, length, keep).await
}
