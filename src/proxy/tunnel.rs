//! Upgraded connections (RFC 9110 section 7.8): a WebSocket, or another
//! protocol a route allows, asked for with `Connection: upgrade` and
//! `Upgrade`. The request is forwarded with its upgrade; only once the
//! upstream answers `101 Switching Protocols` naming that protocol do the
//! two connections become a byte tunnel. Any other answer is an ordinary
//! response and both connections stay HTTP.
//!
//! The tunnel runs both directions at once, each moving one buffer at a
//! time (read, then write all of it, then read again), so a side that stops
//! reading stops the other side's sender: memory stays at two buffers per
//! tunnel whatever passes through. A side that closes has its close passed
//! on (a FIN, or `close_notify` over TLS); the other direction then has
//! [`FIN_WAIT`] to deliver what it has in flight (the other side's close
//! reply) before both are closed. No byte either way for `tunnel_idle`
//! closes both.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use super::io::{Read, Stream};
use super::upstream::InFlight;
use super::{Client, Next};
use crate::config::RouteConfig;
use crate::http::headers::{list_items, listed_in_connection};
use crate::http::request::RequestHead;
use crate::http::response::ResponseHead;
use crate::http::{BodyFraming, Method, Version};
use crate::worker::context::WorkerCtx;
use crate::worker::signal::{race, Either};

/// Once one side closed, how long the other direction may still run.
pub const FIN_WAIT: Duration = Duration::from_secs(1);

/// The protocol (an index into the route's `upgrade` list) this request
/// may switch to: a GET over HTTP/1.1 without a body, with `upgrade` in
/// `Connection` and an `Upgrade` naming a protocol the route allows. An
/// upgrade that does not qualify is ignored (the field is hop-by-hop and
/// is not forwarded), as RFC 9110 section 7.8 lets a server do; `h2c` is
/// never allowed (see `config::routes`).
pub(super) fn requested(req: &RequestHead<'_>, route: &RouteConfig) -> Option<usize> {
    if route.upgrade.is_empty()
        || req.method != Method::Get
        || req.version != Version::Http11
        || !matches!(req.body, BodyFraming::None | BodyFraming::Length(0))
        || !listed_in_connection(req.connection_values(), "upgrade")
    {
        return None;
    }
    offered(req.headers).find_map(|offer| {
        route
            .upgrade
            .iter()
            .position(|allowed| protocol_matches(offer, allowed))
    })
}

/// True when the upstream's 101 switches to `protocol`: its `Upgrade`
/// names it. A 101 that names nothing, or another protocol, is refused as
/// a bad response: the connection is never taken for a tunnel on a guess.
pub(super) fn switches(resp: &ResponseHead<'_>, protocol: &str) -> bool {
    resp.status == 101 && offered(resp.headers).any(|p| protocol_matches(p, protocol))
}

/// The protocols listed in every `Upgrade` field.
fn offered<'a>(headers: &'a [httparse::Header<'a>]) -> impl Iterator<Item = &'a [u8]> + 'a {
    super::cache::values(headers, "upgrade").flat_map(list_items)
}

/// `websocket` matches `WebSocket` and `websocket/13`; an allowed
/// `name/version` matches only that version.
fn protocol_matches(offer: &[u8], allowed: &str) -> bool {
    let name = match allowed.contains('/') {
        true => offer,
        false => offer.split(|&b| b == b'/').next().unwrap_or(offer),
    };
    name.eq_ignore_ascii_case(allowed.as_bytes())
}

/// Sends the 101 (in `head`) and whatever followed it from the upstream,
/// then tunnels until either side closes or the tunnel is idle.
pub(super) async fn run(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    head: Vec<u8>,
    mut from_upstream: BytesMut,
    mut upstream: Stream,
    idle: Duration,
    in_flight: InFlight,
) -> Next {
    // The upstream socket goes to the tunnel: its armed receive ends first,
    // and what it had received goes out after the 101.
    upstream.disarm(&mut from_upstream).await;
    let switched = client.switch_protocols(ctx, head, &mut from_upstream).await;
    ctx.give_read_buffer(from_upstream);
    let Some((client_stream, early)) = switched else {
        return Next::Close;
    };
    let stats = &ctx.stats;
    let _open = stats.tunnel_opened();
    let Some((client_read, client_write)) = split(client_stream) else {
        return Next::Close;
    };
    let Some((upstream_read, mut upstream_write)) = split(upstream) else {
        return Next::Close;
    };
    // What the client sent after its request already belongs to the new
    // protocol. Written before the watchdog starts, so within a limit of its own.
    let early_len = early.len();
    if !early.is_empty() {
        stats.tunnel_bytes(true, early.len());
        let limit = ctx.config.timeouts.upstream_send;
        match monoio::time::timeout(limit, upstream_write.write_all(early)).await {
            Ok(Ok(_)) => {}
            _ => return Next::Close,
        }
    }
    let size = ctx.per_core.upstream_buffer_size.max(4096);
    let activity = Cell::new(Instant::now());
    // Bytes each way, for the tunnel's access-log line.
    let (sent_up, sent_down) = (Cell::new(early_len as u64), Cell::new(0u64));
    let up = pump(
        client_read,
        upstream_write,
        size,
        |n| {
            stats.tunnel_bytes(true, n);
            sent_up.set(sent_up.get() + n as u64);
        },
        &activity,
    );
    let down = pump(
        upstream_read,
        client_write,
        size,
        |n| {
            stats.tunnel_bytes(false, n);
            sent_down.set(sent_down.get() + n as u64);
        },
        &activity,
    );
    let both = async {
        let mut up = std::pin::pin!(up);
        let mut down = std::pin::pin!(down);
        // One side closed cleanly: the other has `FIN_WAIT` to finish.
        let rest = match race(&mut up, &mut down).await {
            Either::Left(true) => Either::Left(&mut down),
            Either::Right(true) => Either::Right(&mut up),
            Either::Left(false) | Either::Right(false) => return,
        };
        let linger = monoio::time::sleep(FIN_WAIT.min(idle));
        match rest {
            Either::Left(down) => {
                race(down, linger).await;
            }
            Either::Right(up) => {
                race(up, linger).await;
            }
        }
    };
    if let Either::Right(()) = race(both, idle_for(&activity, idle)).await {
        tracing::debug!(worker = ctx.index, "tunnel idle, closed");
    }
    drop(in_flight);
    // The tunnel's line: the 101, and what went each way through it.
    if let Some(record) = client.log.as_deref_mut().filter(|r| r.active) {
        record.status = 101;
        record.bytes_in += sent_up.get();
        record.body_out = sent_down.get();
    }
    Next::Close
}

/// One side's two halves.
fn split(stream: Stream) -> Option<(Reader, Writer)> {
    match stream {
        Stream::Plain(s) => {
            let (r, w) = s.into_split();
            Some((Reader::Plain(r), Writer::Plain(w)))
        }
        Stream::Tls(s) => {
            let (r, w) = s.into_split();
            Some((Reader::Tls(r), Writer::Tls(w)))
        }
        // Disarmed before (`Stream::disarm`), or refused: its receive
        // would take bytes the tunnel then never sees.
        Stream::Ringed(_) | Stream::H2(_) | Stream::Detached => None,
    }
}

/// Moves bytes one way until the source closes (true: cleanly, and the
/// close was passed on) or either side fails (false).
async fn pump(
    mut from: Reader,
    mut to: Writer,
    size: usize,
    count: impl Fn(usize),
    activity: &Cell<Instant>,
) -> bool {
    let mut buf = BytesMut::with_capacity(size);
    loop {
        buf.clear();
        match from.read_some(&mut buf, size).await {
            Read::Data(n) => {
                activity.set(Instant::now());
                count(n);
                match to.write_all(buf).await {
                    Ok(back) => buf = back,
                    Err(_) => return false,
                }
            }
            Read::Eof => {
                to.shutdown().await;
                return true;
            }
            Read::TimedOut | Read::Failed(_) => return false,
        }
    }
}

/// Returns once no byte has moved either way for `limit`.
async fn idle_for(activity: &Cell<Instant>, limit: Duration) {
    loop {
        let since = activity.get().elapsed();
        if since >= limit {
            return;
        }
        monoio::time::sleep(limit - since).await;
    }
}

/// The reading half of one side of a tunnel.
enum Reader {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(crate::tls::TlsReadHalf),
}

/// The writing half of one side of a tunnel.
enum Writer {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(crate::tls::TlsWriteHalf),
}

impl Reader {
    async fn read_some(&mut self, buf: &mut BytesMut, reserve: usize) -> Read {
        match self {
            Reader::Plain(half) => {
                buf.reserve(reserve);
                let (len, cap) = (buf.len(), buf.capacity());
                let owned = SliceMut::new(std::mem::take(buf), len, cap);
                let (result, owned) = half.read(owned).await;
                *buf = owned.into_inner();
                match result {
                    Ok(0) => Read::Eof,
                    Ok(n) => Read::Data(n),
                    Err(e) => Read::Failed(e),
                }
            }
            Reader::Tls(half) => Box::pin(half.read_some(buf, reserve)).await,
        }
    }
}

impl Writer {
    async fn write_all(&mut self, buf: BytesMut) -> io::Result<BytesMut> {
        match self {
            Writer::Plain(half) => {
                let (result, buf) = half.write_all(buf).await;
                result.map(|_| buf)
            }
            Writer::Tls(half) => {
                Box::pin(half.write_all(&buf)).await?;
                Ok(buf)
            }
        }
    }

    async fn shutdown(&mut self) {
        match self {
            Writer::Plain(half) => {
                let _ = half.shutdown().await;
            }
            Writer::Tls(half) => Box::pin(half.shutdown()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::protocol_matches;

    #[test]
    fn protocols_match_by_name_and_version() {
        assert!(protocol_matches(b"websocket", "websocket"));
        assert!(protocol_matches(b"WebSocket", "websocket"));
        assert!(protocol_matches(b"websocket/13", "websocket"));
        assert!(!protocol_matches(b"websockets", "websocket"));
        assert!(!protocol_matches(b"h2c", "websocket"));
        assert!(protocol_matches(b"foo/2", "foo/2"));
        assert!(!protocol_matches(b"foo/1", "foo/2"));
        assert!(!protocol_matches(b"foo", "foo/2"));
    }
}
