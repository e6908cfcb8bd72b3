//! The response body from the upstream to the client, as it arrives:
//! `Content-Length` bodies keep their length, chunked ones are decoded and
//! re-chunked, close-delimited ones become chunked (or stay close-delimited
//! for HTTP/1.0 clients). A storable body is captured on the way and stored
//! before its last bytes go out. Bodies that did not come whole with their
//! head and are stored go through `super::fill` instead.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};

use super::head::ClientFraming;
use super::io::{Read, Stream};
use super::upstream::ResponsePlan;
use super::{cache, Client, Coalescing, Forward, Next};
use crate::error::{ErrorKind, ProxyError, Stage};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::headers::push_hex;
use crate::http::BodyFraming;
use crate::upstream::h1::{into_io, read_body_piece};
use crate::worker::context::WorkerCtx;

/// Relays the body after the head in `out` (already serialised), then
/// returns the upstream connection to the pool when it ended cleanly.
#[allow(clippy::too_many_arguments)]
pub(super) async fn body(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    mut upstream: Stream,
    addr: SocketAddr,
    plan: &mut ResponsePlan,
    coalescing: &mut Coalescing,
) -> Result<Next, ProxyError> {
    let timeouts = &ctx.config.timeouts;
    let broken = |source: Option<std::io::Error>| {
        ProxyError::upstream(ErrorKind::UpstreamBroken, addr, Stage::ResponseBody, source)
    };
    let client_gone =
        |source: Option<std::io::Error>| ProxyError::downstream(ErrorKind::ClientIo, source);
    let read_size = ctx.per_core.upstream_buffer_size;
    let mut upstream_clean = plan.reusable;

    match plan.framing {
        BodyFraming::None => {
            // A 204 (or a 200 to a body-less exchange) is whole with its head.
            store_captured(ctx, forward, plan, coalescing);
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
                store_captured(ctx, forward, plan, coalescing);
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
                    store_captured(ctx, forward, plan, coalescing);
                }
                if let Err((e, _)) = client.stream.write_all(chunk, timeouts.client_send).await {
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
                    store_captured(ctx, forward, plan, coalescing);
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
                match upstream
                    .read_some(ubuf, read_size, forward.timeouts.read)
                    .await
                {
                    Read::Data(_) => {}
                    Read::Eof => break,
                    Read::TimedOut => return Err(broken(None)),
                    Read::Failed(e) => return Err(broken(Some(e))),
                }
            }
            store_captured(ctx, forward, plan, coalescing);
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
            .give_back(forward.server, upstream);
    }
    Ok(if plan.keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Stores a completely captured body, before its last bytes go to the
/// client (once the client has the whole response, every worker can answer
/// from the cache), and releases the requests waiting for it.
fn store_captured(
    ctx: &WorkerCtx,
    forward: &Forward,
    plan: &mut ResponsePlan,
    coalescing: &mut Coalescing,
) {
    if let (Some(capture), Some(work)) = (plan.capture.take(), forward.cache.as_deref()) {
        cache::store(ctx, work, capture);
    }
    coalescing.release();
}

/// Writes `out` to the client and clears it, keeping its allocation.
pub(super) async fn send_to_client(
    ctx: &WorkerCtx,
    client: &mut Client,
    out: &mut Vec<u8>,
) -> Result<(), Option<std::io::Error>> {
    let buf = std::mem::take(out);
    match client
        .stream
        .write_all(buf, ctx.config.timeouts.client_send)
        .await
    {
        Ok(mut buf) => {
            buf.clear();
            *out = buf;
            Ok(())
        }
        Err((e, _)) => Err(into_io(e)),
    }
}
