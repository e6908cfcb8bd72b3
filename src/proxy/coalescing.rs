//! One fetch of a cold key across workers: the claim one worker takes
//! while it fetches, the guard that tells the others when it is done, and
//! how long a waiter waits (the same worker's waiters use
//! `crate::cache::coalesce`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::cache::{policy, CacheWork};
use crate::worker::context::WorkerCtx;

/// While this worker fetches a cold key, other workers wait for it instead
/// of fetching it too; dropping the guard releases them.
pub struct ClaimGuard {
    ctx: Rc<WorkerCtx>,
    key: Arc<[u8]>,
    token: Option<crate::cache::claims::ClaimToken>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.ctx.claims.release(token);
            let message = crate::bus::Message::FetchDone {
                from: self.ctx.index,
                key: self.key.clone(),
            };
            if let Err(e) = self.ctx.bus.broadcast(&message, Some(self.ctx.index)) {
                tracing::warn!(worker = self.ctx.index, error = %e, "could not tell every worker a fetch ended");
            }
        }
    }
}

/// How a cold miss takes part in cross-core coalescing.
pub enum CrossCore {
    /// Fetch; the guard (if any) releases other workers when dropped.
    Fetch(Option<ClaimGuard>),
    /// Another worker is fetching this key: wait with [`wait_for_other_worker`].
    Wait,
}

/// Claims a cold key across workers.
pub fn claim(ctx: &Rc<WorkerCtx>, work: &CacheWork) -> CrossCore {
    claim_key(ctx, &work.key)
}

/// Claims any cache key across workers (an AI completion's too). A won
/// claim (`Fetch(Some(_))`) first applies what the worker's bus has
/// queued: the worker that fetched the key just before queued its offer
/// before releasing the claim, and this request may have run before the
/// bus task took it; the caller looks the key up once more before
/// fetching.
pub fn claim_key(ctx: &Rc<WorkerCtx>, key: &[u8]) -> CrossCore {
    if !ctx.config.cache.share || ctx.bus.workers() < 2 {
        return CrossCore::Fetch(None);
    }
    match ctx.claims.try_claim(key) {
        crate::cache::claims::Claim::Won(token) => {
            crate::worker::inbox::apply_queued(ctx);
            CrossCore::Fetch(Some(ClaimGuard {
                ctx: ctx.clone(),
                key: key.into(),
                token: Some(token),
            }))
        }
        crate::cache::claims::Claim::Taken => CrossCore::Wait,
        crate::cache::claims::Claim::Busy => CrossCore::Fetch(None),
    }
}

/// Waits (up to the coalescing timeout) for another worker's fetch of this key.
pub async fn wait_for_other_worker(ctx: &WorkerCtx, work: &CacheWork) {
    wait_for_key(ctx, &work.key, coalesce_timeout(ctx, work)).await
}

/// Waits up to `limit` for another worker's fetch of `key`.
pub async fn wait_for_key(ctx: &WorkerCtx, key: &[u8], limit: Duration) {
    let Some(cache) = &ctx.cache else { return };
    cache.count(crate::cache::CacheEvent::RemoteWait);
    let flight = cache.coalescer.wait_remote(key);
    let _ = monoio::time::timeout(limit, flight.finished()).await;
}

/// How long a waiter for a concurrent fetch of this route waits.
pub fn coalesce_timeout(ctx: &WorkerCtx, work: &CacheWork) -> Duration {
    policy(ctx, work.route).coalesce_timeout
}
