//! A complete upstream exchange with no client attached: send a request head,
//! read the whole response into memory (bounded). Used by background cache
//! refreshes, which have nobody to stream to.

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use super::io::{read_some, write_all, Read};
use crate::error::{ErrorKind, ProxyError};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, HttpError, Method};
use crate::worker::context::{Stats, WorkerCtx};

pub struct Fetched {
    /// The response head, as received.
    pub head: Vec<u8>,
    pub body: Bytes,
}

/// Sends `request_head` (a GET, no body) to `server` and reads the response,
/// refusing bodies over `limit` bytes.
pub async fn fetch_whole(
    ctx: &WorkerCtx,
    server: usize,
    request_head: Vec<u8>,
    limit: u64,
) -> Result<Fetched, ProxyError> {
    let timeouts = &ctx.config.timeouts;
    let addr = ctx.upstreams.borrow().servers[server];
    let bad = |e| ProxyError::upstream(ErrorKind::BadResponse(e), addr, false, None);
    let broken = |source| ProxyError::upstream(ErrorKind::UpstreamBroken, addr, false, source);
    let pooled = ctx.upstreams.borrow_mut().pool.take(server);
    let mut stream = match pooled {
        Some(s) => s,
        None => super::upstream::connect(ctx, addr, timeouts.upstream_connect).await?,
    };
    write_all(&mut stream, request_head, timeouts.upstream_send)
        .await
        .map_err(|(e, _)| broken(super::relay::into_io(e)))?;

    let mut buf = BytesMut::with_capacity(ctx.per_core.upstream_buffer_size);
    let deadline = super::io::deadline_in(timeouts.upstream_response);
    let (head_len, framing, reusable) = loop {
        let parsed = {
            let mut slots = header_slots::<256>();
            match parse_response(
                &buf,
                &mut slots,
                ctx.config.limits.max_response_head,
                Method::Get,
            ) {
                Ok(Some(r)) if r.is_interim() => Some(Err(r.head_len)),
                Ok(Some(r)) => Some(Ok((r.head_len, r.framing, r.reusable))),
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
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match read_some(
            &mut stream,
            &mut buf,
            ctx.per_core.upstream_buffer_size,
            left,
        )
        .await
        {
            Read::Data(_) => {}
            Read::TimedOut => {
                return Err(ProxyError::upstream(
                    ErrorKind::ResponseTimeout,
                    addr,
                    false,
                    None,
                ))
            }
            Read::Eof => {
                return Err(ProxyError::upstream(
                    ErrorKind::UpstreamClosedEarly,
                    addr,
                    false,
                    None,
                ))
            }
            Read::Failed(e) => return Err(broken(Some(e))),
        }
    };
    let head = buf.split_to(head_len).to_vec();
    let mut body = Vec::new();
    let too_large = || bad(HttpError::BodyTooLarge);
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            if n > limit {
                return Err(too_large());
            }
            while (buf.len() as u64) < n {
                super::relay::read_body_piece(
                    ctx,
                    &mut stream,
                    &mut buf,
                    addr,
                    timeouts.upstream_read,
                )
                .await?;
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let used = decoder.decode(&buf, &mut body, Output::Raw).map_err(bad)?;
                buf.advance(used);
                if body.len() as u64 > limit {
                    return Err(too_large());
                }
                if decoder.is_done() {
                    break;
                }
                super::relay::read_body_piece(
                    ctx,
                    &mut stream,
                    &mut buf,
                    addr,
                    timeouts.upstream_read,
                )
                .await?;
            }
        }
        BodyFraming::UntilClose => loop {
            body.extend_from_slice(&buf);
            buf.clear();
            if body.len() as u64 > limit {
                return Err(too_large());
            }
            match read_some(
                &mut stream,
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
    if reusable && framing != BodyFraming::UntilClose && buf.is_empty() {
        ctx.upstreams.borrow_mut().pool.put(server, stream);
    } else {
        drop::<TcpStream>(stream);
    }
    Stats::bump(&ctx.stats.upstream_connects);
    Ok(Fetched {
        head,
        body: Bytes::from(body),
    })
}
