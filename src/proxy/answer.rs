//! Responses the gateway writes itself, without relaying an upstream's:
//! from the cache (a hit, a 304 from it, a stale stand-in for an error),
//! purge results, its own errors and redirects. Each first consumes what is
//! left of the request, so no byte of it is ever read as the next request.

use bytes::Buf;

use super::{
    cache, client_may_continue, head, log_failure, Answered, Client, Forward, Next, Progress,
};
use crate::error::{ProxyError, Side};
use crate::http::{BodyFraming, Method, Version};
use crate::worker::context::WorkerCtx;

/// Consumes a request answered without the upstream. A body that already
/// sits in the buffer is skipped; any other would have to be read and thrown
/// away, so the connection is closed instead. Returns whether it may stay open.
pub(super) fn finish_unforwarded(ctx: &WorkerCtx, client: &mut Client, request: &Answered) -> bool {
    let available = client.buf.len() - request.head_len;
    let skip = match request.body {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) if available as u64 >= n => Some(n as usize),
        _ => None,
    };
    client
        .buf
        .advance(request.head_len + skip.unwrap_or(available));
    request.keep_alive && skip.is_some() && client_may_continue(ctx, client)
}

/// Answers a request from a stored response (a hit, a 304 from it, or a
/// stale stand-in for an error).
pub(super) async fn answer_from_cache(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    hit: &cache::HitPlan,
    out: Vec<u8>,
) -> Next {
    let keep = finish_unforwarded(ctx, client, request);
    if send_cached(
        ctx,
        client,
        hit,
        request.head_only,
        keep,
        request.version,
        out,
    )
    .await
        && keep
    {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Writes a stored response (or a 304 from it) to the client; false when the client is gone.
pub(super) async fn send_cached(
    ctx: &WorkerCtx,
    client: &mut Client,
    hit: &cache::HitPlan,
    head_only: bool,
    keep: bool,
    version: Version,
    mut out: Vec<u8>,
) -> bool {
    if let Some(c) = &ctx.cache {
        match hit.kind {
            cache::HitKind::Fresh | cache::HitKind::Collapsed | cache::HitKind::Revalidated => {
                c.count(crate::cache::CacheEvent::Hit)
            }
            _ => c.count(crate::cache::CacheEvent::StaleServed),
        }
    }
    let connection: &[u8] = match (keep, version) {
        (false, _) => b"Connection: close\r\n",
        (true, Version::Http10) => b"Connection: keep-alive\r\n",
        (true, Version::Http11) => b"",
    };
    let limit = ctx.config.timeouts.client_send;
    if hit.not_modified {
        out.clear();
        cache::write_not_modified(&mut out, hit, ctx.via(), connection);
        return match client.stream.write_all(out, limit).await {
            Ok(out) => {
                ctx.give_write_buffer(out);
                true
            }
            Err(_) => false,
        };
    }
    ctx.give_write_buffer(out);
    let mut buf = client.hit_buf.take().unwrap_or_default();
    cache::write_hit(&mut buf, hit, head_only, connection);
    match client.stream.write_hit(buf, limit).await {
        Ok(buf) => {
            client.hit_buf = Some(buf);
            true
        }
        Err(_) => false,
    }
}

/// `PURGE`: invalidates the URL on every worker, then answers 200 with how
/// many responses went, 404 when none, 403 for clients not allowed to purge.
pub(super) async fn purge(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    urls: Vec<Box<[u8]>>,
    allowed: bool,
    out: Vec<u8>,
) -> Next {
    let keep = finish_unforwarded(ctx, client, request);
    if !allowed {
        return if respond_error(ctx, client, out, 403, !keep, request.head_only).await && keep {
            Next::KeepAlive
        } else {
            Next::Close
        };
    }
    let message = crate::bus::Message::Invalidate {
        what: crate::bus::Invalidation::Urls(std::sync::Arc::new(urls)),
        removal: crate::cache::shard::Removal::Hard,
    };
    let (status, body) = match ctx
        .bus
        .broadcast_and_wait(message, ctx.config.cache.invalidation_timeout)
        .await
    {
        Ok(b) if b.removed > 0 => (
            200,
            format!("{{\"removed\":{},\"workers\":{}}}\n", b.removed, b.workers),
        ),
        Ok(b) => (
            404,
            format!("{{\"removed\":0,\"workers\":{}}}\n", b.workers),
        ),
        Err(e) => (503, format!("{{\"error\":\"{e}\"}}\n")),
    };
    let mut out = out;
    out.clear();
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        if status == 200 { "OK" } else { head::reason(status) },
        body.len(),
        if keep { "" } else { "Connection: close\r\n" }
    );
    match client
        .stream
        .write_all(out, ctx.config.timeouts.client_send)
        .await
    {
        Ok(out) if keep => {
            ctx.give_write_buffer(out);
            Next::KeepAlive
        }
        _ => Next::Close,
    }
}

/// Writes a gateway-generated error response; false when the client is gone.
pub(super) async fn respond_error(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    status: u16,
    close: bool,
    head_only: bool,
) -> bool {
    out.clear();
    head::write_error_response(&mut out, status, close, head_only);
    match client
        .stream
        .write_all(out, ctx.config.timeouts.client_send)
        .await
    {
        Ok(out) => {
            ctx.give_write_buffer(out);
            true
        }
        Err(_) => false,
    }
}

/// Answers a request whose upstream exchange failed before a response head:
/// its status (502, 504, 408...), or a stale entry (stale-if-error, or the
/// route's `stale_on_error` grace).
pub(super) async fn answer_failure(
    ctx: &WorkerCtx,
    client: &mut Client,
    forward: &Forward,
    out: Vec<u8>,
    error: ProxyError,
    progress: &Progress,
) -> Next {
    log_failure(ctx, &error);
    let Some(status) = error.status().filter(|_| !progress.response_started) else {
        return Next::Close;
    };
    let keep = progress.request_consumed
        && error.side == Side::Upstream
        && forward.keep_alive
        && client_may_continue(ctx, client);
    let head_only = forward.method == Method::Head;
    // A stored response may stand in for an origin that could not be reached.
    let stale = match status {
        502 | 504 if error.side == Side::Upstream => forward
            .cache
            .as_deref()
            .and_then(|work| cache::stale_for_error(ctx, work, status)),
        _ => None,
    };
    let sent = match stale {
        Some(hit) => send_cached(ctx, client, &hit, head_only, keep, forward.version, out).await,
        None => respond_error(ctx, client, out, status, !keep, head_only).await,
    };
    if sent && keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Writes a redirect that adds a route prefix's trailing slash.
pub(super) async fn redirect(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    status: u16,
    location: &str,
    mut out: Vec<u8>,
) -> Next {
    out.clear();
    let keep = finish_unforwarded(ctx, client, request);
    head::write_redirect(&mut out, status, location, !keep);
    match client
        .stream
        .write_all(out, ctx.config.timeouts.client_send)
        .await
    {
        Ok(out) if keep => {
            ctx.give_write_buffer(out);
            Next::KeepAlive
        }
        _ => Next::Close,
    }
}
