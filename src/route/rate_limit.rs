//! Rate limits per route (`[routes.rate_limit]`), by GCRA (the generic
//! cell rate algorithm: a token bucket kept as one "theoretical arrival
//! time" per key).
//!
//! A client on one keep-alive connection lands on one core, so a limit
//! split per core would give it a fraction of its allowance. The node's
//! workers share one table of atomic cells instead ([`NodeTable`]): a key's
//! cell is found by its hash and updated by compare-and-swap, so the limit
//! holds for the whole node, exactly, whichever workers a client's
//! connections land on. No lock is taken; a request touches one cache line
//! of the table (two or three when its slot is taken by other keys).
//!
//! A cell is 64 bits: 24 bits of the key's fingerprint and 40 bits of its
//! arrival time in microseconds since the table was made (wrapping every
//! 12.7 days; a time further ahead than any limit allows is read as an old,
//! wrapped one, so a key idle for longer starts afresh). A key looks at
//! [`PROBES`] neighbouring cells: its own, else a free or expired one.
//! When all are held by other live keys the request is admitted (the table
//! never refuses a client for another's traffic) and counted as such.
//! Two workers seeing a new key at the same instant may each claim a cell
//! for it: that key briefly has twice its burst, an error bounded by the
//! first request of a key.
//!
//! [`Limiter`] is what the phases call: the node's table, or for a
//! `scope = "cluster"` limit the cluster's leases (`crate::cluster::limits`),
//! which may answer later ([`Outcome::Pending`]) or not at all
//! ([`Outcome::Unavailable`], then the limit's [`Fail`] mode decides).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// A route's limit, validated from `[routes.rate_limit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Microseconds between two requests at the steady rate.
    pub interval_us: u64,
    /// Requests admitted at once beyond the steady rate.
    pub burst: u32,
    pub key: LimitKey,
    /// Counted by this node alone, or by every node of the cluster.
    pub scope: Scope,
    /// What a cluster limit does while Redis cannot answer.
    pub fail: Fail,
}

/// Who counts a limit's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This node's workers together.
    Node,
    /// Every node of the `[cluster]`, through Redis.
    Cluster,
}

/// A cluster limit while Redis cannot answer (down, or slower than
/// `cluster.timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Each node counts the limit on its own (the cluster admits up to the
    /// number of nodes times the limit).
    Local,
    /// Admit every request.
    Open,
    /// Refuse every request (503).
    Closed,
}

/// What a limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address (the peer of the connection).
    ClientIp,
    /// A request header's value (lower-case name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The subject of the route's verified session token.
    Subject,
    /// Every request of the route together.
    Route,
}

/// Longest time a limit may look ahead (the burst's worth of intervals):
/// past it the 40-bit clock could not tell a live cell from a wrapped one.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Cells a key may look at, from its own.
pub const PROBES: usize = 4;

/// Cells in the node's table (8 bytes each: 512 KiB).
pub const TABLE_CELLS: usize = 1 << 16;

const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

impl RateLimit {
    /// The steady rate and burst as checked from the config.
    pub fn new(requests_per_second: f64, burst: u32, key: LimitKey) -> Result<RateLimit, String> {
        if !(requests_per_second.is_finite() && requests_per_second > 0.0) {
            return Err("must be a positive number".into());
        }
        let interval_us = (1e6 / requests_per_second).round();
        if interval_us < 1.0 {
            return Err("at most 1000000 requests per second".into());
        }
        let limit = RateLimit {
            interval_us: interval_us as u64,
            burst,
            key,
            scope: Scope::Node,
            fail: Fail::Local,
        };
        if limit.window_us() > MAX_WINDOW.as_micros() as u64 {
            return Err(format!(
                "burst + 1 requests at this rate span more than {} hours",
                MAX_WINDOW.as_secs() / 3600
            ));
        }
        Ok(limit)
    }

    /// How far ahead a key's arrival time may run: the burst plus one.
    pub fn window_us(&self) -> u64 {
        self.interval_us.saturating_mul(u64::from(self.burst) + 1)
    }

    /// The policy as the `RateLimit-Policy` field says it: `q` requests
    /// per `w` seconds (`w` the shortest whole number of seconds in which
    /// at least one request is allowed).
    pub fn policy(&self) -> (u64, u64) {
        let window = self.interval_us.div_ceil(1_000_000).max(1);
        let quota = (window * 1_000_000 / self.interval_us).max(1);
        (quota, window)
    }
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Admitted; requests that could still be made at once.
    Admitted { remaining: u64 },
    /// Over the limit: the next request is admitted after this long.
    Refused { retry_after: Duration },
    /// No cell was free for the key: admitted uncounted.
    TableFull,
    /// The answer comes from elsewhere (the cluster's Redis): wait for it,
    /// then plan the request again with it.
    Pending(Arc<Asked>),
    /// Whoever keeps the count cannot answer now: the limit's [`Fail`]
    /// mode decides.
    Unavailable,
}

/// An answer another thread gives a waiting request.
#[derive(Default)]
pub struct Asked {
    /// 0 pending, then one of `ADMITTED`, `REFUSED`, `UNAVAILABLE`.
    state: AtomicU8,
    retry_after_us: AtomicU64,
    waker: atomic_waker::AtomicWaker,
}

const ADMITTED: u8 = 1;
const REFUSED: u8 = 2;
const UNAVAILABLE: u8 = 3;

impl std::fmt::Debug for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asked")
            .field("answer", &self.answer())
            .finish()
    }
}

impl Asked {
    /// Answers the waiting request (the first answer counts).
    pub fn answer_with(&self, outcome: &Outcome) {
        let state = match outcome {
            Outcome::Admitted { .. } | Outcome::TableFull => ADMITTED,
            Outcome::Refused { retry_after } => {
                self.retry_after_us
                    .store(retry_after.as_micros() as u64, Ordering::Relaxed);
                REFUSED
            }
            Outcome::Pending(_) | Outcome::Unavailable => UNAVAILABLE,
        };
        if self
            .state
            .compare_exchange(0, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// The answer, once given.
    pub fn answer(&self) -> Option<Outcome> {
        match self.state.load(Ordering::Acquire) {
            ADMITTED => Some(Outcome::Admitted { remaining: 0 }),
            REFUSED => Some(Outcome::Refused {
                retry_after: Duration::from_micros(self.retry_after_us.load(Ordering::Relaxed)),
            }),
            UNAVAILABLE => Some(Outcome::Unavailable),
            _ => None,
        }
    }

    /// Resolves with the answer.
    pub async fn wait(&self) -> Outcome {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.answer() {
                Some(outcome) => Poll::Ready(outcome),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// The key of one request.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// The value the limit names (header, cookie, subject; empty for the route).
    Named(&'a [u8]),
    /// The client's address: the limit is by address, or the named key was absent.
    Client(&'a [u8]),
}

/// What the phases ask a limit.
pub trait Limiter: Send + Sync {
    /// One request of `key` on route `route` under `limit`.
    fn acquire(&self, route: &str, key: Key<'_>, limit: &RateLimit, now: Instant) -> Outcome;

    /// The same table counting costs (tokens), where it can.
    fn metered(&self) -> Option<&dyn Metered> {
        None
    }
}

/// A limit counted in units other than requests (tokens): a cost taken at
/// once, and corrected once the real cost is known. The node's table only.
pub trait Metered {
    /// `cost` units of `key` (at most the burst's worth counts).
    fn acquire_cost(
        &self,
        route: &str,
        key: Key<'_>,
        limit: &RateLimit,
        cost: u64,
        now: Instant,
    ) -> Outcome;

    /// Charges `delta` more units (fewer when negative) to `key` after the
    /// fact, never refusing: a key may end in debt, refused until it is paid.
    fn adjust(&self, route: &str, key: Key<'_>, limit: &RateLimit, delta: i64, now: Instant);
}

/// The node's shared table of GCRA cells.
pub struct NodeTable {
    cells: Box<[AtomicU64]>,
    epoch: Instant,
    hasher: RandomState,
}

impl Default for NodeTable {
    fn default() -> Self {
        NodeTable::new(TABLE_CELLS)
    }
}

impl std::fmt::Debug for NodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTable")
            .field("cells", &self.cells.len())
            .finish()
    }
}

/// A cell's parts: the key's fingerprint (never 0: 0 is a free cell) and
/// its arrival time.
fn pack(fingerprint: u64, tat: u64) -> u64 {
    (fingerprint << TIME_BITS) | (tat & TIME_MASK)
}

fn fingerprint_of(cell: u64) -> u64 {
    cell >> TIME_BITS
}

impl NodeTable {
    /// A table of `cells` cells (rounded up to a power of two).
    pub fn new(cells: usize) -> NodeTable {
        let n = cells.max(PROBES).next_power_of_two();
        NodeTable {
            cells: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            hasher: RandomState::new(),
        }
    }

    /// Microseconds since the table was made, on the 40-bit clock.
    fn clock(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64 & TIME_MASK
    }

    /// How far the cell's arrival time is ahead of `now` (0 when it is in
    /// the past, or so far ahead that it must be an old, wrapped one).
    fn ahead(cell: u64, now: u64) -> u64 {
        let ahead = cell.wrapping_sub(now) & TIME_MASK;
        if ahead > MAX_WINDOW.as_micros() as u64 {
            0
        } else {
            ahead
        }
    }
}

/// A key's hash under a node's seed: its cell and fingerprint in a table.
pub fn key_hash(seed: &RandomState, route: &str, key: Key<'_>) -> u64 {
    let mut hasher = seed.build_hasher();
    route.hash(&mut hasher);
    match key {
        Key::Named(value) => (0u8, value).hash(&mut hasher),
        Key::Client(address) => (1u8, address).hash(&mut hasher),
    }
    hasher.finish()
}

impl Limiter for NodeTable {
    fn acquire(&self, route: &str, key: Key<'_>, limit: &RateLimit, now: Instant) -> Outcome {
        self.acquire_cost(route, key, limit, 1, now)
    }

    fn metered(&self) -> Option<&dyn Metered> {
        Some(self)
    }
}

impl NodeTable {
    /// The cell `key` holds, or a free one it may take; its fingerprint.
    fn find(&self, route: &str, key: Key<'_>, now: u64) -> (Option<usize>, u64, bool) {
        let hash = key_hash(&self.hasher, route, key);
        // 24 bits, never 0.
        let fingerprint = (hash >> 40).max(1);
        let mask = self.cells.len() - 1;
        let start = hash as usize & mask;
        let mut free = None;
        for probe in 0..PROBES {
            let i = (start + probe) & mask;
            let cell = self.cells[i].load(Ordering::Acquire);
            if cell != 0 && fingerprint_of(cell) == fingerprint {
                return (Some(i), fingerprint, true);
            }
            if free.is_none() && (cell == 0 || Self::ahead(cell, now) == 0) {
                free = Some(i);
            }
        }
        (free, fingerprint, false)
    }
}

impl Metered for NodeTable {
    fn acquire_cost(
        &self,
        route: &str,
        key: Key<'_>,
        limit: &RateLimit,
        cost: u64,
        now: Instant,
    ) -> Outcome {
        let now = self.clock(now);
        match self.find(route, key, now) {
            (Some(i), fingerprint, _) => self.update(i, fingerprint, limit, now, cost),
            (None, ..) => Outcome::TableFull,
        }
    }

    fn adjust(&self, route: &str, key: Key<'_>, limit: &RateLimit, delta: i64, now: Instant) {
        let now = self.clock(now);
        let (Some(i), fingerprint, _) = self.find(route, key, now) else {
            return;
        };
        let cell = &self.cells[i];
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let ours = current != 0 && fingerprint_of(current) == fingerprint;
            let ahead = if ours { Self::ahead(current, now) } else { 0 };
            if !ours && current != 0 && Self::ahead(current, now) > 0 {
                return;
            }
            let moved = delta.saturating_mul(limit.interval_us as i64);
            let ahead = (ahead as i64)
                .saturating_add(moved)
                .clamp(0, MAX_WINDOW.as_micros() as i64) as u64;
            let new = pack(fingerprint, now + ahead);
            match cell.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

impl NodeTable {
    /// GCRA on cell `i` for the key `fingerprint`, which holds it or may
    /// take it over (free, or another key's that has expired), for `cost`
    /// units (at most the burst's worth).
    fn update(
        &self,
        i: usize,
        fingerprint: u64,
        limit: &RateLimit,
        now: u64,
        cost: u64,
    ) -> Outcome {
        let cost = cost.clamp(1, u64::from(limit.burst) + 1);
        let cell = &self.cells[i];
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let ours = current != 0 && fingerprint_of(current) == fingerprint;
            let ahead = Self::ahead(current, now);
            if !ours && current != 0 && ahead > 0 {
                // Another live key took the cell meanwhile.
                return Outcome::TableFull;
            }
            let ahead = if ours { ahead } else { 0 };
            // Admitted while the new arrival time stays within the window.
            let next = ahead + cost * limit.interval_us;
            if next > limit.window_us() {
                let wait = next - limit.window_us();
                return Outcome::Refused {
                    retry_after: Duration::from_micros(wait),
                };
            }
            let new = pack(fingerprint, now + next);
            match cell.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Outcome::Admitted {
                        remaining: (limit.window_us() - next) / limit.interval_us,
                    }
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit::new(rps, burst, LimitKey::ClientIp).unwrap()
    }

    fn admitted(o: Outcome) -> bool {
        matches!(o, Outcome::Admitted { .. })
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t = NodeTable::new(1024);
        let l = limit(10.0, 4);
        let t0 = Instant::now();
        // Burst + 1 at once, then refused.
        for _ in 0..5 {
            assert!(admitted(t.acquire("r", Key::Named(b"a"), &l, t0)));
        }
        match t.acquire("r", Key::Named(b"a"), &l, t0) {
            Outcome::Refused { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
            o => panic!("{o:?}"),
        }
        // One more per 100 ms.
        assert!(admitted(t.acquire(
            "r",
            Key::Named(b"a"),
            &l,
            t0 + Duration::from_millis(100)
        )));
        assert!(!admitted(t.acquire(
            "r",
            Key::Named(b"a"),
            &l,
            t0 + Duration::from_millis(150)
        )));
        // Other keys and other routes are counted apart.
        assert!(admitted(t.acquire("r", Key::Named(b"b"), &l, t0)));
        assert!(admitted(t.acquire("s", Key::Named(b"a"), &l, t0)));
        // Idle for the window: the whole burst again.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(admitted(t.acquire("r", Key::Named(b"a"), &l, later)));
        }
        assert!(!admitted(t.acquire("r", Key::Named(b"a"), &l, later)));
    }

    #[test]
    fn remaining_counts_down() {
        let t = NodeTable::new(64);
        let l = limit(1.0, 2);
        let t0 = Instant::now();
        let left: Vec<_> = (0..3)
            .map(|_| match t.acquire("r", Key::Named(b"k"), &l, t0) {
                Outcome::Admitted { remaining } => remaining,
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(left, [2, 1, 0]);
    }

    #[test]
    fn a_full_neighbourhood_admits_instead_of_refusing_someone_else() {
        // Four cells, every one held by a live key.
        let t = NodeTable::new(4);
        let l = limit(1.0, 0);
        let t0 = Instant::now();
        let mut n = 0;
        let mut full = 0;
        for k in 0..64u32 {
            match t.acquire("r", Key::Named(&k.to_be_bytes()), &l, t0) {
                Outcome::Admitted { .. } => n += 1,
                Outcome::TableFull => full += 1,
                o => panic!("a new key was answered {o:?}"),
            }
        }
        assert_eq!(n, 4);
        assert_eq!(full, 60);
    }

    #[test]
    fn threads_share_one_limit() {
        let t = std::sync::Arc::new(NodeTable::new(1024));
        let l = limit(1.0, 99);
        let t0 = Instant::now();
        let admitted: usize = (0..4)
            .map(|_| {
                let (t, l) = (t.clone(), l.clone());
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| {
                            matches!(
                                t.acquire("r", Key::Named(b"k"), &l, t0),
                                Outcome::Admitted { .. }
                            )
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_wrapped_clock_reads_as_expired() {
        let now = 5u64;
        // A cell written 13 days ago on the 40-bit clock looks "ahead".
        let old = pack(1, now.wrapping_sub(13 * 86_400 * 1_000_000) & TIME_MASK);
        assert_eq!(NodeTable::ahead(old, now), 0);
        assert_eq!(NodeTable::ahead(pack(1, now + 500), now), 500);
    }

    #[test]
    fn a_cost_is_taken_at_once_and_corrected_after() {
        let t = NodeTable::new(64);
        // 100 per minute, a minute's burst.
        let l = limit(100.0 / 60.0, 99);
        let t0 = Instant::now();
        let take = |cost| t.acquire_cost("r", Key::Named(b"k"), &l, cost, t0);
        assert!(admitted(take(60)));
        assert!(!admitted(take(41)), "60 + 41 is over 100");
        // Only 10 were used: 50 given back.
        t.adjust("r", Key::Named(b"k"), &l, -50, t0);
        assert!(admitted(take(90)));
        // 30 more used than taken: in debt, refused until it is paid.
        t.adjust("r", Key::Named(b"k"), &l, 30, t0);
        match take(1) {
            Outcome::Refused { retry_after } => {
                assert!(retry_after > Duration::from_secs(18), "{retry_after:?}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn config_limits() {
        assert!(RateLimit::new(0.0, 0, LimitKey::Route).is_err());
        assert!(RateLimit::new(f64::NAN, 0, LimitKey::Route).is_err());
        assert!(RateLimit::new(3e6, 0, LimitKey::Route).is_err());
        // 1 per hour with a burst of 30: 31 hours ahead.
        assert!(RateLimit::new(1.0 / 3600.0, 30, LimitKey::Route).is_err());
        assert_eq!(limit(10.0, 0).policy(), (10, 1));
        assert_eq!(limit(0.5, 0).policy(), (1, 2));
        assert_eq!(limit(1.0 / 60.0, 0).policy(), (1, 60));
    }
}
