//! A worker taking on a new config generation (`reload`), between two of
//! its tasks' steps, so no request sees half of it.
//!
//! The worker builds the generation from the snapshot, carries over what
//! its upstreams learnt, makes it current (new requests and connections
//! start on it; requests in flight finish on theirs), opens the listeners
//! the snapshot adds (those it removes stop accepting), restarts the
//! health probes, and drops stored responses that no caching route would
//! serve any more.

use std::rc::Rc;

use super::context::WorkerCtx;
use crate::reload::Snapshot;

/// Applies `snapshot` to the worker whose current generation is `ctx`;
/// returns how many stored responses it dropped.
pub fn apply(ctx: &Rc<WorkerCtx>, snapshot: &Snapshot) -> u64 {
    if snapshot.generation <= ctx.generation {
        return 0;
    }
    // Listeners the snapshot adds: this worker's own socket on each.
    for l in &snapshot.listeners {
        if ctx.listens_on(l.address) {
            continue;
        }
        match super::listen(l) {
            Ok(listener) => {
                use std::os::fd::AsRawFd;
                ctx.sockets
                    .register(l.address, ctx.index, false, listener.as_raw_fd());
                monoio::spawn(super::accept_loop(ctx.clone(), listener, l.address));
            }
            Err(e) => tracing::error!(
                worker = ctx.index,
                address = %l.address,
                error = %e,
                "reload: cannot listen on an added listener"
            ),
        }
    }
    let entries = snapshot
        .listeners
        .iter()
        .zip(&snapshot.terminators)
        .map(|(l, tls)| super::entry(l, tls.as_ref()))
        .collect();
    let next = ctx.next_generation(snapshot.generation, snapshot.config.clone(), entries);
    next.upstreams.borrow_mut().set_tls(&snapshot.connectors);
    let next = Rc::new(next);
    WorkerCtx::make_current(&next);
    // Connections that requests of the old generation give back are closed,
    // not pooled: the old generation ends with its last request.
    ctx.upstreams.borrow_mut().close_pool();
    crate::upstream::health::start(&next);
    let removed = drop_unrouted(&next);
    tracing::info!(
        worker = next.index,
        generation = next.generation,
        dropped = removed,
        "config generation applied"
    );
    removed
}

/// Drops stored responses that no caching route of the new generation
/// would answer from: a removed route's, or one that stopped caching.
/// Method and header conditions are left out: an entry any caching
/// route's host and prefix cover is kept.
fn drop_unrouted(ctx: &WorkerCtx) -> u64 {
    let Some(cache) = &ctx.cache else {
        return 0;
    };
    let mut shard = cache.shard.borrow_mut();
    let removed = shard.ban(
        |key| {
            let Some((host, path)) = crate::cache::key::url_of(key) else {
                return false;
            };
            let path = path.split('?').next().unwrap_or(path);
            !ctx.router.may_cache(host, path)
        },
        crate::cache::shard::Removal::Hard,
    );
    removed as u64
}
