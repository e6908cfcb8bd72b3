//! A worker's bus task: applies what other workers and the admin API send
//! (invalidations, offered cache entries, fetch completions, health
//! verdicts, benched AI targets, new server lists, stats requests), in
//! order, between requests.

use std::rc::Rc;

use super::context::WorkerCtx;
use crate::bus::{Envelope, Invalidation, Mailbox, Message};
use crate::cache::shard::Shard;
use crate::cache::CacheEvent;

/// Runs until the worker stops.
pub async fn run(ctx: Rc<WorkerCtx>, mailbox: Rc<Mailbox>) {
    loop {
        let envelope = mailbox.next().await;
        apply(&ctx, envelope);
        // Drain what else is queued before yielding back to connections.
        while let Some(envelope) = mailbox.try_next() {
            apply(&ctx, envelope);
        }
    }
}

/// Applies what is queued now, from the request path: a cold miss that
/// won its claim across workers takes the offers queued for it first
/// (`proxy::coalescing::claim_key`). The worker that fetched the key last
/// queued its offer before releasing its claim, so an offer this worker's
/// bus task has not taken yet is here, and the miss is answered from it
/// instead of fetching again.
pub fn apply_queued(ctx: &Rc<WorkerCtx>) {
    if let Some(mailbox) = &ctx.mailbox {
        while let Some(envelope) = mailbox.try_next() {
            apply(ctx, envelope);
        }
    }
}

fn apply(ctx: &Rc<WorkerCtx>, envelope: Envelope) {
    // Messages apply to the generation new requests start on.
    let ctx = &ctx.current();
    let mut removed = 0u64;
    match envelope.message {
        Message::Invalidate { what, removal } => {
            if let Some(cache) = &ctx.cache {
                let mut shard = cache.shard.borrow_mut();
                removed = invalidate(&mut shard, &what, removal) as u64;
                cache.count(CacheEvent::Purge);
                cache.add(CacheEvent::Invalidated, removed);
            }
        }
        Message::Offer {
            from,
            primary,
            variant,
            stored,
        } => {
            if let Some(cache) = &ctx.cache {
                if from != ctx.index {
                    cache.shard.borrow_mut().insert_keyed(
                        &primary,
                        variant.as_deref(),
                        stored,
                        false,
                    );
                    cache.count(CacheEvent::OfferTaken);
                }
            }
        }
        Message::FetchDone { key, .. } => {
            if let Some(cache) = &ctx.cache {
                cache.coalescer.release_remote(&key);
            }
        }
        Message::Health {
            group,
            server,
            healthy,
        } => {
            let upstreams = ctx.upstreams.borrow();
            let found = ctx
                .config
                .upstreams
                .iter()
                .position(|g| *g.name == *group)
                .and_then(|g| upstreams.find_server(g, server));
            if let Some(index) = found {
                upstreams.set_health(index, healthy);
            }
        }
        Message::AiBench { target, until } => {
            let mut bench = ctx.ai_bench.borrow_mut();
            let entry = bench.entry(target.to_string()).or_insert(until);
            *entry = (*entry).max(until);
        }
        Message::Servers { group, servers } => {
            if let Some(g) = ctx.config.upstreams.iter().position(|g| *g.name == *group) {
                let joined = ctx.upstreams.borrow_mut().set_servers(g, &servers);
                crate::upstream::health::watch(ctx, g, &joined);
            }
        }
        Message::Reload(snapshot) => {
            removed = super::reconfigure::apply(ctx, &snapshot);
        }
        Message::Stats(request) => {
            let snapshot = ctx.snapshot();
            request
                .replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(snapshot);
        }
    }
    if let Some(ack) = envelope.ack {
        ack.done(ctx.index, removed);
    }
}

/// Applies one invalidation to a shard; returns the responses it touched.
pub fn invalidate(
    shard: &mut Shard,
    what: &Invalidation,
    removal: crate::cache::shard::Removal,
) -> usize {
    match what {
        Invalidation::Urls(urls) => urls.iter().map(|u| shard.purge_url(u, removal)).sum(),
        Invalidation::Prefix { host, prefix } => shard.ban(
            |key| {
                key_matches(key, host.as_deref(), |path| {
                    path.starts_with(prefix.as_ref())
                })
            },
            removal,
        ),
        Invalidation::Regex { host, regex } => shard.ban(
            |key| key_matches(key, host.as_deref(), |path| regex.is_match(path)),
            removal,
        ),
        Invalidation::Tag(tag) => shard.purge_tag(tag, removal),
        Invalidation::All => shard.purge_all(removal),
    }
}

/// Tests a key's host and path (read back by `cache::key`, which owns the format).
fn key_matches(key: &[u8], host: Option<&str>, path_matches: impl Fn(&str) -> bool) -> bool {
    crate::cache::key::url_of(key).is_some_and(|(key_host, path)| {
        host.is_none_or(|h| h.eq_ignore_ascii_case(key_host)) && path_matches(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_on_host_and_path() {
        assert!(key_matches(
            b"http://shop.test/api/x?y=1",
            Some("shop.test"),
            |p| p.starts_with("/api/")
        ));
        assert!(key_matches(
            b"http://shop.test:8080/api/x",
            Some("SHOP.test"),
            |p| p.starts_with("/api/")
        ));
        assert!(!key_matches(
            b"http://other.test/api/x",
            Some("shop.test"),
            |p| p.starts_with("/api/")
        ));
        assert!(key_matches(
            b"http://other.test/api/x\nh:x-tenant=a",
            None,
            |p| p == "/api/x"
        ));
        assert!(key_matches(b"http://h/p\0vary\0accept=x", None, |p| p == "/p"));
    }
}
