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

use std::cell::{Cell, RefCell};

use coalesce::Coalescer;
use shard::Shard;

/// Per-worker cache counters.
#[derive(Default, Debug)]
pub struct CacheStats {
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
    pub stale_served: Cell<u64>,
    pub revalidations: Cell<u64>,
    pub coalesced: Cell<u64>,
    pub stores: Cell<u64>,
    /// Responses removed or made stale by invalidations.
    pub invalidations: Cell<u64>,
    /// Invalidation messages applied.
    pub purges: Cell<u64>,
    /// Entries taken from other workers' offers.
    pub offers_taken: Cell<u64>,
    /// Misses that waited for another worker's fetch.
    pub remote_waits: Cell<u64>,
}

/// A worker's cache: its shard, its in-flight fetches and its counters.
pub struct WorkerCache {
    pub shard: RefCell<Shard>,
    pub coalescer: Coalescer,
    pub stats: CacheStats,
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
            stats: CacheStats::default(),
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

pub fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
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
