//! The response body from the upstream to the client, as it arrives: read
//! as the upstream frames it (a length, chunked, to the close), decoded, and
//! handed to the downstream session in pieces, which frames them for its
//! client (`super::reply`), trailer fields of a chunked body included
//! (filtered). A storable body is captured on the way and
//! stored before its last bytes go out. Bodies that did not come whole with their
//! head and are stored go through `super::fill` instead.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};

use super::io::{Read, Stream};
use super::reply::Gone;
use super::upstream::ResponsePlan;
use super::{cache, Client, Coalescing, Forward, Next};
use crate::error::{ErrorKind, ProxyError, Stage};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::headers::forwardable_trailers;
use crate::http::BodyFraming;
use crate::upstream::h1::read_body_piece;
use crate::worker::context::WorkerCtx;

/// Relays the body after the head in `out` (the client's response head,
/// handed to the session here), then returns the upstream connection to the
/// pool when it ended cleanly.
#[allow(clippy::too_many_arguments)]
pub(super) async fn body(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    keep: bool,
    out: Vec<u8>,
    ubuf: &mut BytesMut,
    mut upstream: Stream,
    addr: SocketAddr,
    plan: &mut ResponsePlan,
    coalescing: &mut Coalescing,
) -> Result<Next, ProxyError> {
    let broken = |source: Option<std::io::Error>| {
        ProxyError::upstream(ErrorKind::UpstreamBroken, addr, Stage::ResponseBody, source)
    };
    let client_gone = |_: Gone| ProxyError::downstream(ErrorKind::ClientIo, None);
    let read_size = ctx.per_core.upstream_buffer_size;
    let mut upstream_clean = plan.reusable;
    // Trailer fields of a chunked body, passed on where the client's framing carries them.
    let mut trailers = Vec::new();
    client.start_reply(ctx, out, plan.length.clone(), keep);

    match plan.framing {
        BodyFraming::None => {
            // A 204 (or a 200 to a body-less exchange) is whole with its head.
            store_captured(ctx, forward, plan, coalescing);
        }
        BodyFraming::Length(total) => {
            let mut remaining = total;
            loop {
                let take = (ubuf.len() as u64).min(remaining) as usize;
                let chunk = ubuf.split_to(take);
                if let Some(c) = plan.capture.as_mut() {
                    c.push(&chunk);
                }
                remaining -= take as u64;
                if remaining == 0 {
                    store_captured(ctx, forward, plan, coalescing);
                }
                client
                    .send_body_owned(ctx, chunk.freeze())
                    .await
                    .map_err(client_gone)?;
                if remaining == 0 {
                    break;
                }
                read_body_piece(ctx, &mut upstream, ubuf, addr, forward.timeouts.read).await?;
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::keeping_trailers();
            let mut raw = Vec::new();
            loop {
                // Decoded once: the plain data goes to the cache and to the session.
                raw.clear();
                let used = decoder
                    .decode(ubuf, &mut raw, Output::Raw)
                    .map_err(|_| broken(None))?;
                if let Some(capture) = plan.capture.as_mut() {
                    capture.push(&raw);
                }
                ubuf.advance(used);
                if decoder.is_done() {
                    store_captured(ctx, forward, plan, coalescing);
                }
                client.send_body(ctx, &raw).await.map_err(client_gone)?;
                if decoder.is_done() {
                    forwardable_trailers(&decoder.take_trailers(), &mut trailers);
                    break;
                }
                read_body_piece(ctx, &mut upstream, ubuf, addr, forward.timeouts.read).await?;
            }
        }
        BodyFraming::UntilClose => {
            upstream_clean = false;
            loop {
                if let Some(c) = plan.capture.as_mut() {
                    c.push(ubuf);
                }
                if !ubuf.is_empty() {
                    let piece = ubuf.split().freeze();
                    client
                        .send_body_owned(ctx, piece)
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
        }
    }
    let next = client.end_reply_with_trailers(ctx, &trailers).await;

    // Bytes beyond the response mean the upstream and the gateway disagree
    // about framing: never reuse such a connection.
    if upstream_clean && ubuf.is_empty() {
        ctx.upstreams
            .borrow_mut()
            .give_back(forward.server, upstream);
    }
    Ok(next)
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
