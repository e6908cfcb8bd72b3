//! The per-worker HTTP cache (RFC 9111, shared cache).
//!
//! - [`control`]: `Cache-Control` / `Pragma` parsing
//! - [`freshness`]: storage rules, freshness lifetime, age, stale use
//! - [`policy`]: a route's cache policy
//! - [`key`]: cache keys; [`vary`]: variants
//! - [`conditional`]: client preconditions answered from the cache
//! - [`range`]: byte ranges answered from the cache
//! - [`entry`]: stored responses; [`shard`]: the worker's store
//! - [`coalesce`]: one origin fetch for concurrent misses
//! - [`fill`]: read-while-fill, a response being stored served to every waiter
//! - [`hit`]: the vectored hit write
//! - [`wire`]: a stored response as bytes (the cluster's shared tier)
//!
//! Each worker owns one [`WorkerCache`]; nothing here is shared across cores.

pub mod claims;
pub mod coalesce;
pub mod conditional;
pub mod control;
pub mod entry;
pub mod fill;
pub mod freshness;
pub mod hit;
pub mod key;
pub mod policy;
pub mod range;
pub mod shard;
pub mod vary;
pub mod wire;

use std::cell::{Cell, RefCell};

use coalesce::Coalescer;
use shard::Shard;

/// What the cache counts, by its key in `/stats` (`cache.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    Hit,
    Miss,
    StaleServed,
    Revalidation,
    Coalesced,
    RemoteWait,
    Store,
    /// An entry taken from another worker's offer.
    OfferTaken,
    /// An invalidation message applied.
    Purge,
    /// A response removed or made stale by an invalidation.
    Invalidated,
    /// A miss answered from the cluster's shared tier.
    SharedFill,
}

impl CacheEvent {
    /// Every event with its key in `/stats`, in index order.
    pub const ALL: [(CacheEvent, &'static str); 11] = [
        (CacheEvent::Hit, "hits"),
        (CacheEvent::Miss, "misses"),
        (CacheEvent::StaleServed, "stale"),
        (CacheEvent::Revalidation, "revalidations"),
        (CacheEvent::Coalesced, "coalesced"),
        (CacheEvent::RemoteWait, "remote_waits"),
        (CacheEvent::Store, "stores"),
        (CacheEvent::OfferTaken, "offers_taken"),
        (CacheEvent::Purge, "purges"),
        (CacheEvent::Invalidated, "invalidated"),
        (CacheEvent::SharedFill, "shared_fills"),
    ];
}

/// A worker's cache: its shard, its in-flight fetches and its counters.
pub struct WorkerCache {
    pub shard: RefCell<Shard>,
    pub coalescer: Coalescer,
    /// Counted through [`WorkerCache::count`]; read by [`WorkerCache::counts`].
    counts: [Cell<u64>; CacheEvent::ALL.len()],
    /// Largest body stored, unless a route sets its own.
    pub max_object: u64,
    /// Bytes reserved by fills under way (`fill`): they hold their body in
    /// memory until it is stored, so their total is capped at the shard's
    /// capacity; past it, responses stream at their client's pace instead.
    filling: std::rc::Rc<Cell<u64>>,
    fill_budget: u64,
}

impl WorkerCache {
    pub fn new(capacity: u64, max_object: u64) -> WorkerCache {
        WorkerCache {
            shard: RefCell::new(Shard::new(capacity)),
            coalescer: Coalescer::default(),
            counts: Default::default(),
            max_object,
            filling: Default::default(),
            fill_budget: capacity,
        }
    }

    /// Reserves room for a fill of up to `bytes`; `None` when fills under
    /// way already hold the budget.
    pub fn reserve_fill(&self, bytes: u64) -> Option<FillReservation> {
        let after = self.filling.get().checked_add(bytes)?;
        (after <= self.fill_budget).then(|| {
            self.filling.set(after);
            FillReservation {
                filling: self.filling.clone(),
                bytes,
            }
        })
    }

    pub fn evictions(&self) -> u64 {
        self.shard.borrow().evictions()
    }

    pub fn bytes(&self) -> u64 {
        self.shard.borrow().weight()
    }
}

impl WorkerCache {
    /// One more `event`.
    pub fn count(&self, event: CacheEvent) {
        self.add(event, 1);
    }

    pub fn add(&self, event: CacheEvent, n: u64) {
        let cell = &self.counts[event as usize];
        cell.set(cell.get() + n);
    }

    /// Every counter with its `/stats` key.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CacheEvent::ALL
            .iter()
            .map(|(event, name)| (*name, self.counts[*event as usize].get()))
    }
}

/// Room held by one fill under way; given back when dropped.
pub struct FillReservation {
    filling: std::rc::Rc<Cell<u64>>,
    bytes: u64,
}

impl Drop for FillReservation {
    fn drop(&mut self) {
        self.filling
            .set(self.filling.get().saturating_sub(self.bytes));
    }
}
