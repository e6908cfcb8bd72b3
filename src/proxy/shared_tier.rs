//! The request path's side of the cluster's shared cache tier
//! (`crate::cluster::shared`): a cold miss this worker leads asks Redis
//! before the origin, and a response this worker stores is written there.
//!
//! A response read from Redis becomes an entry of this node built under
//! this route's policy (its age carried as an `Age` field), is stored and
//! offered to the other workers like any fetched response, and answers the
//! request only when it is fresh for it (its `Vary` variant, the client's
//! `max-age` and `no-cache`); anything else goes on to the origin.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{insert, parse_forwarded, policy, CacheWork, HitKind, HitPlan, WorkKind};
use crate::cache::entry::Stored;
use crate::cache::freshness::{usability, Use};
use crate::cache::key::url_part;
use crate::cache::vary::{variant_key, VarySpec};
use crate::cluster::shared::{self, name};
use crate::worker::context::WorkerCtx;

/// How a response a request stores goes to the shared tier: the request's
/// mark (`CacheWork::mark`) and its route's size limit.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub mark: u64,
    pub max: u64,
}

/// Whether responses stored for `work` go to the shared tier, and how.
pub fn share_for(ctx: &WorkerCtx, work: &CacheWork) -> Option<Share> {
    let tier = ctx.cluster.as_ref()?.shared.as_ref()?;
    let max = policy(ctx, work.route).shared_max_size.unwrap_or(tier.max);
    (max > 0).then_some(Share {
        mark: work.mark,
        max,
    })
}

/// The response a peer stored for this cold miss, now stored here too,
/// if Redis answers within `shared_cache_wait` and it is fresh for it.
pub async fn lookup(ctx: &Rc<WorkerCtx>, work: &CacheWork) -> Option<HitPlan> {
    let tier = ctx.cluster.as_ref()?.shared.as_ref()?;
    let cold = matches!(work.kind, WorkKind::Fill { stale: None, .. });
    if !cold || share_for(ctx, work).is_none() {
        return None;
    }
    tier.stats.lookups.fetch_add(1, Ordering::Relaxed);
    let deadline = Instant::now() + tier.wait;
    let url = name(url_part(&work.key));
    let primary = name(&work.key);
    let fields = vec![format!("v:{primary}"), format!("e:{primary}")];
    // The entry, and the key it was asked for under.
    let (now_ms, value, asked_key) = {
        let asked = tier.get(url.clone(), fields)?;
        let found = monoio::time::timeout(tier.wait, asked.wait())
            .await
            .ok()??;
        match &found.values[..] {
            [_, Some(entry)] => (found.now_ms, entry.clone(), work.key.to_vec()),
            // Its responses vary: ask for this request's variant.
            [Some(names), None] => {
                let names: Vec<String> = std::str::from_utf8(names)
                    .ok()?
                    .split(',')
                    .map(str::to_string)
                    .collect();
                let variant = variant_of(work, &names)?;
                let asked = tier.get(url, vec![format!("e:{}", name(&variant))])?;
                let left = deadline.saturating_duration_since(Instant::now());
                let found = monoio::time::timeout(left, asked.wait()).await.ok()??;
                (found.now_ms, found.values.first()?.clone()?, variant)
            }
            _ => return None,
        }
    };
    let (written_ms, record) = shared::split_entry(&value)?;
    let record = crate::cache::wire::decode(record)?;
    let since = Duration::from_millis(now_ms.saturating_sub(written_ms));
    let stored = record.into_stored(since, policy(ctx, work.route), ctx.via());
    // The entry's own `Vary` must put this request where it was found.
    let answers_this_request = match &stored.vary {
        VarySpec::None => asked_key == *work.key,
        VarySpec::Names(names) => variant_of(work, names).is_some_and(|v| v == asked_key),
        VarySpec::Star => false,
    };
    let now = Instant::now();
    if !answers_this_request
        || usability(&stored.freshness, stored.age(now), &work.facts.cc) != Use::Fresh
    {
        return None;
    }
    // Stored here (and offered to the other workers), not written back.
    let stored = insert(ctx, &work.key, &work.request_head, stored, None);
    tier.stats.found.fetch_add(1, Ordering::Relaxed);
    if let Some(cache) = &ctx.cache {
        cache.count(crate::cache::CacheEvent::SharedFill);
    }
    Some(HitPlan::new(stored, HitKind::Shared, &work.ask, None))
}

/// This request's variant key under `names`.
fn variant_of(work: &CacheWork, names: &[String]) -> Option<Vec<u8>> {
    parse_forwarded(&work.request_head, |headers| {
        let mut key = Vec::new();
        variant_key(&mut key, &work.key, names, headers);
        key
    })
}

/// Writes a response this worker just stored under `key` (and `variant`)
/// to the shared tier: a complete response (not a part, not `Vary: *`),
/// of use for at least another second, within the route's size.
pub fn put(
    ctx: &WorkerCtx,
    key: &[u8],
    variant: Option<&[u8]>,
    stored: &Arc<Stored>,
    share: Share,
) {
    let Some(cluster) = ctx.cluster.as_ref() else {
        return;
    };
    let size = (stored.head.len() + stored.body.len()) as u64;
    if size > share.max {
        return;
    }
    let vary = match &stored.vary {
        VarySpec::Star => return,
        VarySpec::None => String::new(),
        VarySpec::Names(names) => format!("v:{}={}", name(key), names.join(",")),
    };
    let now = Instant::now();
    let ttl = stored.discard_at.saturating_duration_since(now);
    if ttl < Duration::from_secs(1) {
        return;
    }
    let Some(record) = crate::cache::wire::encode(stored, now) else {
        return;
    };
    cluster.share(shared::Put {
        url: name(url_part(key)),
        field: format!("e:{}", name(variant.unwrap_or(key))),
        vary,
        record,
        ttl_ms: ttl.as_millis() as u64,
        mark: share.mark,
        tags: stored.tags.clone(),
        queued: now,
    });
}
