//! Responses the gateway gives itself, without relaying an upstream's:
//! from the cache (a hit, a 304 from it, a stale stand-in for an error),
//! purge results, its own errors and redirects. Each first consumes what is
//! left of the request, so no byte of it is ever read as the next request.

use super::reply::BodyLength;
use super::{cache, head, log_failure, Answered, Client, Forward, Next, Progress};
use crate::error::{ProxyError, Side};
use crate::worker::context::WorkerCtx;

/// Answers a request from a stored response (a hit, a 304 from it, or a
/// stale stand-in for an error).
pub(super) async fn answer_from_cache(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    hit: &cache::HitPlan,
    out: Vec<u8>,
) -> Next {
    let keep = client.finish_unforwarded(request);
    send_cached(ctx, client, hit, keep, out).await
}

/// Sends a stored response (or a 304 from it) through the session.
pub(super) async fn send_cached(
    ctx: &WorkerCtx,
    client: &mut Client,
    hit: &cache::HitPlan,
    keep: bool,
    mut out: Vec<u8>,
) -> Next {
    if let Some(c) = &ctx.cache {
        match hit.kind {
            cache::HitKind::Fresh
            | cache::HitKind::Collapsed
            | cache::HitKind::Shared
            | cache::HitKind::Revalidated => c.count(crate::cache::CacheEvent::Hit),
            _ => c.count(crate::cache::CacheEvent::StaleServed),
        }
    }
    if hit.not_modified {
        out.clear();
        cache::write_not_modified(&mut out, hit, ctx.via());
        client.start_reply(ctx, out, BodyLength::None, keep);
        return client.end_reply(ctx).await;
    }
    ctx.give_write_buffer(out);
    client.send_stored(ctx, hit, keep).await
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
    let keep = client.finish_unforwarded(request);
    if !allowed {
        return respond_error(ctx, client, out, 403, keep).await;
    }
    let what = crate::bus::Invalidation::Urls(std::sync::Arc::new(urls));
    let (status, body) = match ctx
        .invalidate(what, crate::cache::shard::Removal::Hard)
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
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n",
        if status == 200 {
            "OK"
        } else {
            head::reason(status)
        },
    );
    client.reply_whole(ctx, out, body.as_bytes(), keep).await
}

/// Sends a gateway-generated error response; `keep`: the request was
/// consumed and the connection may go on.
pub(super) async fn respond_error(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    status: u16,
    keep: bool,
) -> Next {
    out.clear();
    head::write_error_head(&mut out, status);
    let body = head::error_body(status);
    client.reply_whole(ctx, out, body.as_bytes(), keep).await
}

/// A 429 for a request over its route's rate limit.
pub(super) async fn rate_limited(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    retry_after: std::time::Duration,
    (quota, window): (u64, u64),
    mut out: Vec<u8>,
) -> Next {
    let keep = client.finish_unforwarded(request);
    // Whole seconds, rounded up: a client that waits that long is admitted.
    let secs = retry_after.as_micros().div_ceil(1_000_000).max(1) as u64;
    out.clear();
    head::write_rate_limited_head(&mut out, secs, quota, window);
    let body = head::error_body(429);
    client.reply_whole(ctx, out, body.as_bytes(), keep).await
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
    let keep = progress.request_consumed && error.side == Side::Upstream && forward.keep_alive;
    // A stored response may stand in for an origin that could not be reached.
    let stale = match status {
        502 | 504 if error.side == Side::Upstream => forward
            .cache
            .as_deref()
            .and_then(|work| cache::stale_for_error(ctx, work, status)),
        _ => None,
    };
    match stale {
        Some(hit) => send_cached(ctx, client, &hit, keep, out).await,
        None => respond_error(ctx, client, out, status, keep).await,
    }
}

/// Sends a redirect (to HTTPS, or adding a route prefix's trailing slash).
pub(super) async fn redirect(
    ctx: &WorkerCtx,
    client: &mut Client,
    request: &Answered,
    status: u16,
    location: &str,
    mut out: Vec<u8>,
) -> Next {
    out.clear();
    let keep = client.finish_unforwarded(request);
    head::write_redirect(&mut out, status, location);
    client.reply_whole(ctx, out, b"", keep).await
}
