//! The upstream HTTP/1.1 client: connecting (with the connect timeout,
//! which covers the TLS handshake of a TLS group),
//! reading a response body piece by piece, and a whole exchange with no
//! client attached: send a request head, read the whole response into
//! memory, bounded. The proxy's exchange, background cache refreshes and
//! active health probes all connect and read through it. For a group that
//! speaks HTTP/2, `connect` hands out a stream of the server's shared
//! connection (`super::h2`), read and written in the same HTTP/1.1 form.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use crate::error::{ErrorKind, ProxyError, Stage};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, HttpError, Method};
use crate::proxy::io::{self, Read, Stream};
use crate::worker::context::{Counter, WorkerCtx};

/// Opens a connection to `server` within `limit`, with the TLS handshake
/// of a TLS group in the same time. Nothing was sent yet, so a failure here
/// is always safe to retry elsewhere.
pub async fn connect(
    ctx: &WorkerCtx,
    server: usize,
    limit: std::time::Duration,
) -> Result<Stream, ProxyError> {
    let deadline = io::deadline_in(limit);
    let h2 = ctx.upstreams.borrow().speaks_h2(server);
    // HTTP/2: a stream on the connection already open, or on the one being
    // opened by another request (one connection per server and worker).
    let _opening = match h2 {
        true => match super::h2::stream_or_turn(ctx, server, deadline).await? {
            Ok(stream) => return Ok(stream),
            Err(turn) => Some(turn),
        },
        false => None,
    };
    let (addr, tls) = {
        let upstreams = ctx.upstreams.borrow();
        (upstreams.addr(server), upstreams.tls_for(server))
    };
    let tcp = match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            ctx.stats.count(Counter::UpstreamConnects);
            stream
        }
        Ok(Err(e)) => {
            return Err(ProxyError::upstream(
                ErrorKind::ConnectRefused,
                addr,
                Stage::Connect,
                Some(e),
            ))
        }
        Err(_) => {
            return Err(ProxyError::upstream(
                ErrorKind::ConnectTimeout,
                addr,
                Stage::Connect,
                None,
            ))
        }
    };
    let Some(tls) = tls else {
        if h2 {
            return super::h2::open(ctx, server, addr, tcp, false, limit).await;
        }
        return Ok(Stream::upstream(tcp, ctx.upstream_ring.as_ref()));
    };
    match Box::pin(tls.connect(tcp, addr, deadline)).await {
        Ok(stream) if h2 => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            Box::pin(super::h2::open(ctx, server, addr, stream, true, left)).await
        }
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
        Err(e) => {
            let kind = match e {
                crate::tls::HandshakeError::TimedOut => ErrorKind::ConnectTimeout,
                _ => ErrorKind::UpstreamTls,
            };
            tracing::warn!(worker = ctx.index, upstream = %addr, error = %e, "upstream TLS handshake failed");
            Err(ProxyError::upstream(
                kind,
                addr,
                Stage::Connect,
                Some(std::io::Error::other(e.to_string())),
            ))
        }
    }
}

/// Reads the next piece of a response body. The upstream closing, failing or
/// stalling before the body is complete is `UpstreamBroken`: the response is
/// already under way, so the client connection will be closed.
pub async fn read_body_piece(
    ctx: &WorkerCtx,
    upstream: &mut Stream,
    buf: &mut BytesMut,
    addr: SocketAddr,
    limit: std::time::Duration,
) -> Result<(), ProxyError> {
    let broken =
        |source| ProxyError::upstream(ErrorKind::UpstreamBroken, addr, Stage::ResponseBody, source);
    match upstream
        .read_some(buf, ctx.per_core.upstream_buffer_size, limit)
        .await
    {
        Read::Data(_) => Ok(()),
        Read::Failed(e) => Err(broken(Some(e))),
        Read::Eof | Read::TimedOut => Err(broken(None)),
    }
}

pub fn into_io(e: io::WriteError) -> Option<std::io::Error> {
    match e {
        io::WriteError::Failed(e) => Some(e),
        io::WriteError::TimedOut => None,
    }
}

/// Reads more of a response head, before `deadline`. A close or reset
/// before any byte of it (`received_any` false) may be retried: the server
/// never began to answer. One after some bytes is a broken response.
pub async fn read_head_piece(
    ctx: &WorkerCtx,
    stream: &mut Stream,
    buf: &mut BytesMut,
    addr: SocketAddr,
    deadline: std::time::Instant,
    received_any: bool,
) -> Result<(), ProxyError> {
    let left = deadline.saturating_duration_since(monoio::time::recent());
    // No byte of the response yet: the server never began to answer.
    let stage = if received_any {
        Stage::ResponseHead
    } else {
        Stage::AwaitingResponse
    };
    let error = |kind, source| Err(ProxyError::upstream(kind, addr, stage, source));
    match stream
        .read_some(buf, ctx.per_core.upstream_buffer_size, left)
        .await
    {
        Read::Data(_) => Ok(()),
        Read::TimedOut => error(ErrorKind::ResponseTimeout, None),
        Read::Eof if !received_any => error(ErrorKind::UpstreamClosedEarly, None),
        Read::Eof => error(ErrorKind::BadResponse(HttpError::Malformed), None),
        Read::Failed(e) => error(ErrorKind::UpstreamClosedEarly, Some(e)),
    }
}

/// A request sent with no client attached (a background refresh, a health probe).
pub struct WholeRequest {
    pub server: usize,
    /// The whole request head; no body follows.
    pub head: Vec<u8>,
    /// Its method: the response to a HEAD has no body.
    pub method: Method,
    /// Largest body read.
    pub limit: u64,
    /// Past `limit`: keep the first `limit` bytes (a probe looking into the
    /// body) instead of failing (a refresh that would store it).
    pub truncate: bool,
    /// Use a pooled connection and return it after a clean exchange; a probe
    /// opens its own, since it tests connecting too.
    pub pooled: bool,
}

pub struct Fetched {
    /// The response head, as received.
    pub head: Vec<u8>,
    pub status: u16,
    /// The body, de-chunked (at most `limit` bytes of it when truncated).
    pub body: Bytes,
}

/// Sends `request.head` to its server and reads the whole response.
pub async fn fetch_whole(ctx: &WorkerCtx, request: WholeRequest) -> Result<Fetched, ProxyError> {
    let timeouts = &ctx.config.timeouts;
    let (server, limit) = (request.server, request.limit);
    let addr = ctx.upstreams.borrow().addr(server);
    let bad = |e| ProxyError::upstream(ErrorKind::BadResponse(e), addr, Stage::ResponseHead, None);
    let broken =
        |source| ProxyError::upstream(ErrorKind::UpstreamBroken, addr, Stage::ResponseBody, source);
    let pooled = if request.pooled {
        ctx.upstreams.borrow_mut().take_connection(server)
    } else {
        None
    };
    let mut stream = match pooled {
        Some(s) => s,
        None => connect(ctx, server, timeouts.upstream_connect).await?,
    };
    stream
        .write_all(request.head, timeouts.upstream_send)
        .await
        .map_err(|(e, _)| broken(into_io(e)))?;

    let mut buf = BytesMut::with_capacity(ctx.per_core.upstream_buffer_size);
    let deadline = io::deadline_in(timeouts.upstream_response);
    let (head_len, status, framing, reusable) = loop {
        let parsed = {
            let mut slots = header_slots::<256>();
            match parse_response(
                &buf,
                &mut slots,
                ctx.config.limits.max_response_head,
                request.method,
            ) {
                Ok(Some(r)) if r.is_interim() => Some(Err(r.head_len)),
                Ok(Some(r)) => Some(Ok((r.head_len, r.status, r.framing, r.reusable))),
                Ok(None) => None,
                Err(e) => return Err(bad(e)),
            }
        };
        match parsed {
            Some(Ok(done)) => break done,
            Some(Err(interim_len)) => {
                buf.advance(interim_len);
                continue;
            }
            None => {}
        }
        let received_any = !buf.is_empty();
        read_head_piece(ctx, &mut stream, &mut buf, addr, deadline, received_any).await?;
    };
    let head = buf.split_to(head_len).to_vec();
    let mut body = Vec::new();
    let too_large = || bad(HttpError::BodyTooLarge);
    // Past the limit: an error, or (truncating) the end of what is read.
    let mut cut = false;
    let mut over = |body: &mut Vec<u8>| {
        if body.len() as u64 <= limit {
            return Ok(false);
        }
        if !request.truncate {
            return Err(too_large());
        }
        body.truncate(limit as usize);
        cut = true;
        Ok(true)
    };
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            if n > limit && !request.truncate {
                return Err(too_large());
            }
            let n = n.min(limit);
            while (buf.len() as u64) < n {
                read_body_piece(ctx, &mut stream, &mut buf, addr, timeouts.upstream_read).await?;
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let used = decoder.decode(&buf, &mut body, Output::Raw).map_err(bad)?;
                buf.advance(used);
                if over(&mut body)? {
                    break;
                }
                if decoder.is_done() {
                    break;
                }
                read_body_piece(ctx, &mut stream, &mut buf, addr, timeouts.upstream_read).await?;
            }
        }
        BodyFraming::UntilClose => loop {
            body.extend_from_slice(&buf);
            buf.clear();
            if over(&mut body)? {
                break;
            }
            match stream
                .read_some(
                    &mut buf,
                    ctx.per_core.upstream_buffer_size,
                    timeouts.upstream_read,
                )
                .await
            {
                Read::Data(_) => {}
                Read::Eof => break,
                Read::Failed(e) => return Err(broken(Some(e))),
                Read::TimedOut => return Err(broken(None)),
            }
        },
    }
    let truncated = cut || matches!(framing, BodyFraming::Length(n) if n > limit);
    if request.pooled
        && reusable
        && !truncated
        && framing != BodyFraming::UntilClose
        && buf.is_empty()
    {
        ctx.upstreams.borrow_mut().give_back(server, stream);
    } else {
        drop::<Stream>(stream);
    }
    Ok(Fetched {
        head,
        status,
        body: Bytes::from(body),
    })
}
