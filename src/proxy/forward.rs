//! A forwarded request, once the phases chose its server
//! (`super::phases::answer` hands it `Plan::Forward`): coalesced with
//! concurrent misses for its key (on this worker, then across workers and
//! the shared tier), exchanged with the upstream, and answered from the
//! response head: from the cache (a 304 freshened the entry, or
//! stale-if-error), from a fill, by relaying the body, or as a tunnel.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::answer::{answer_failure, answer_from_cache, send_cached};
use super::cache;
use super::{
    fill, log_failure, relay, tunnel, upstream, Client, Coalescing, Forward, Next, Progress,
};
use crate::error::Side;
use crate::worker::context::WorkerCtx;
use crate::worker::signal::boxed;

/// Coalesces a miss with others for its key, then forwards it and responds.
pub(super) async fn proxy_request(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    mut forward: Forward,
    mut out: Vec<u8>,
) -> Next {
    // Concurrent misses for one key: the first fetches, the others wait for it.
    let mut coalescing = Coalescing::default();
    if let (Some(work), Some(worker_cache)) = (forward.cache.as_deref(), &ctx.cache) {
        if matches!(work.kind, cache::WorkKind::Fill { .. }) {
            match worker_cache.coalescer.join(&work.key) {
                crate::cache::coalesce::Join::Leader(guard) => {
                    coalescing.leader = Some(guard);
                    let found = match cache::claim(ctx, work) {
                        cache::CrossCore::Fetch(claim) => {
                            // Won across workers: an offer queued for it was
                            // just applied (`claim_key`), so look once more.
                            let offered = claim
                                .as_ref()
                                .and_then(|_| cache::lookup_after_wait(ctx, work));
                            coalescing.claim = claim;
                            match offered {
                                Some(hit) => Some(hit),
                                // A peer node may have stored it (boxed: rare,
                                // and only with a shared tier).
                                None if ctx
                                    .cluster
                                    .as_ref()
                                    .is_some_and(|c| c.shared.is_some()) =>
                                {
                                    Box::pin(super::shared_tier::lookup(ctx, work)).await
                                }
                                None => None,
                            }
                        }
                        cache::CrossCore::Wait => {
                            cache::wait_for_other_worker(ctx, work).await;
                            cache::lookup_after_wait(ctx, work)
                        }
                    };
                    if let Some(hit) = found {
                        return answer_from_cache(ctx, client, &forward.answered(), &hit, out)
                            .await;
                    }
                }
                crate::cache::coalesce::Join::Follower(flight) => {
                    worker_cache.count(crate::cache::CacheEvent::Coalesced);
                    let limit = cache::coalesce_timeout(ctx, work);
                    if let Ok(Some(fill)) =
                        monoio::time::timeout(limit, flight.fill_or_finished()).await
                    {
                        // Read-while-fill: answered from the response as it arrives.
                        if let Some(reader) = cache::fill_serves(work, &fill)
                            .then(|| fill.reader())
                            .flatten()
                        {
                            drop(flight);
                            return fill::serve_waiter(
                                ctx,
                                client,
                                &forward.answered(),
                                reader,
                                out,
                            )
                            .await;
                        }
                        // Another variant, or preconditions: wait for the entry.
                        drop(fill);
                        let _ = monoio::time::timeout(limit, flight.finished()).await;
                    }
                    if let Some(hit) = cache::lookup_after_wait(ctx, work) {
                        return answer_from_cache(ctx, client, &forward.answered(), &hit, out)
                            .await;
                    }
                }
            }
        }
    }
    let mut ubuf = ctx.take_read_buffer();
    let mut progress = Progress::default();
    let mut body = upstream::take_request(client, &forward, &mut out, &mut progress);
    let head = upstream::exchange(
        ctx,
        client,
        &mut forward,
        &mut out,
        &mut ubuf,
        &mut progress,
        &mut body,
    )
    .await;
    match head {
        // Boxed: the relay's state (about 4.7 KiB) is allocated only once a
        // response head is in, so a request waiting on a coalesced fetch
        // or on the upstream holds its exchange's (about 5 KiB), not both.
        Ok(head) => {
            boxed(|| {
                respond(
                    ctx, client, &forward, out, ubuf, head, &progress, coalescing,
                )
            })
            .await
        }
        Err(error) => {
            ctx.give_read_buffer(ubuf);
            answer_failure(ctx, client, &forward, out, error, &progress).await
        }
    }
}

/// Answers the client once the upstream's response head is in: from the
/// cache (a 304 freshened the entry, or stale-if-error), from a fill
/// (a storable body still to come), or by relaying the body.
#[allow(clippy::too_many_arguments)]
async fn respond(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    forward: &Forward,
    out: Vec<u8>,
    mut ubuf: BytesMut,
    head: upstream::UpstreamHead,
    progress: &Progress,
    mut coalescing: Coalescing,
) -> Next {
    let upstream::UpstreamHead {
        stream,
        addr,
        answer,
        in_flight,
    } = head;
    let mut plan = match answer {
        upstream::Answer::Relay(plan) => plan,
        upstream::Answer::Tunnel => {
            let idle = forward.timeouts.tunnel_idle;
            return tunnel::run(ctx, client, out, ubuf, stream, idle, in_flight).await;
        }
        upstream::Answer::Serve(hit, reusable_now) => {
            if reusable_now && ubuf.is_empty() {
                ctx.upstreams.borrow_mut().give_back(forward.server, stream);
            }
            ctx.give_read_buffer(ubuf);
            coalescing.release();
            let keep = progress.request_consumed && forward.keep_alive;
            return send_cached(ctx, client, &hit, keep, out).await;
        }
    };
    // A write's invalidation reaches every worker before its response reaches
    // the client, so the client's next read misses whichever core it lands on.
    if let Some(urls) = plan.invalidate.take() {
        let what = crate::bus::Invalidation::Urls(std::sync::Arc::new(urls));
        if let Err(e) = ctx
            .invalidate(what, crate::cache::shard::Removal::Hard)
            .await
        {
            tracing::warn!(worker = ctx.index, error = %e, "invalidation after a write did not reach every worker");
        }
    }
    // A fill holds its body in memory until stored: the fills under way are
    // capped at the shard's size; past it the body streams at the client's pace.
    let reservation = plan.fill.then(|| fill::reserve(ctx, &plan)).flatten();
    if let Some(reservation) = reservation {
        let first = ubuf.split();
        ctx.give_read_buffer(ubuf);
        let length = plan.length.clone();
        let connection = (stream, addr, in_flight);
        let fill = fill::start(
            ctx,
            forward,
            &mut plan,
            connection,
            first,
            coalescing,
            reservation,
        );
        let reader = fill.reader().expect("a new fill has its first byte");
        return fill::serve(ctx, client, reader, out, length, forward.keep_alive).await;
    }
    if plan.capture.is_none() {
        // Nothing will be stored: requests waiting on the key need not wait
        // for this client to take its body.
        coalescing.release();
    }
    let relayed = relay::body(
        ctx,
        client,
        forward,
        forward.keep_alive,
        out,
        &mut ubuf,
        stream,
        addr,
        &mut plan,
        &mut coalescing,
    )
    .await;
    drop(in_flight);
    ctx.give_read_buffer(ubuf);
    match relayed {
        Ok(next) => next,
        Err(error) => {
            client.abandon_reply(ctx);
            if error.side == Side::Upstream {
                ctx.upstreams.borrow().record_outcome(
                    forward.group,
                    forward.server,
                    true,
                    Instant::now(),
                );
            }
            log_failure(ctx, &error);
            Next::Close
        }
    }
}
