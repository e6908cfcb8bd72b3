//! Per-worker load balancing within an upstream group.
//!
//! - `round_robin`: plain round-robin when all weights are equal, nginx's
//!   smooth weighted round-robin otherwise (weights 3 and 1 give a a b a).
//! - `random`: weighted random.
//! - `least_request`: power of two random choices on outstanding requests:
//!   pick two servers at random, send to the one with fewer in flight.
//! - `peak_ewma`: the same two choices, comparing latency (a peak-sensitive
//!   moving average of response times) times outstanding requests, so a
//!   server that turns slow is avoided at once and recovers gradually.
//! - `hash`: consistent hashing (ketama) on a key of the request; adding or
//!   removing one of N servers moves only about 1/N of the keys.
//!
//! Everything here is per worker: outstanding counts and latencies are this
//! worker's view, which is what each core's own choices need.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::{BalancePolicy, HashKey};

/// A worker's view of one server's load.
#[derive(Debug)]
pub struct ServerLoad {
    /// Requests this worker has in flight to the server.
    pub outstanding: Cell<u32>,
    /// Peak-EWMA of response-head latency, in nanoseconds (0 until measured).
    ewma_ns: Cell<f64>,
    last_sample: Cell<Option<Instant>>,
    /// Passive health: failures in a row, and the ejection in force, if any.
    pub consecutive_failures: Cell<u32>,
    pub ejected_until: Cell<Option<Instant>>,
    /// Ejections so far (each doubles the next one's length).
    pub ejections: Cell<u32>,
}

/// How fast a latency peak decays.
const EWMA_DECAY: Duration = Duration::from_secs(10);

impl Default for ServerLoad {
    fn default() -> Self {
        ServerLoad {
            outstanding: Cell::new(0),
            ewma_ns: Cell::new(0.0),
            last_sample: Cell::new(None),
            consecutive_failures: Cell::new(0),
            ejected_until: Cell::new(None),
            ejections: Cell::new(0),
        }
    }
}

impl ServerLoad {
    /// Records one response's latency: a peak replaces the average at once,
    /// lower samples pull it down with a decay over `EWMA_DECAY`.
    pub fn record_latency(&self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        let current = self.ewma_ns.get();
        let updated = if sample > current {
            sample
        } else {
            let elapsed = self
                .last_sample
                .get()
                .map_or(EWMA_DECAY, |t| now.saturating_duration_since(t));
            let w = (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
            current * w + sample * (1.0 - w)
        };
        self.ewma_ns.set(updated);
        self.last_sample.set(Some(now));
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.get().is_some_and(|until| now < until)
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.get() as u64)
    }

    fn cost(&self) -> f64 {
        // Unmeasured servers look cheap so they get tried; outstanding work multiplies latency.
        let latency = self.ewma_ns.get().max(1.0);
        latency * (f64::from(self.outstanding.get()) + 1.0)
    }
}

/// What a balancer may look at in a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestKey {
    /// Hash of the request's key for `hash` groups (`None`: the key is absent).
    pub hash: Option<u64>,
}

/// Balancer state for one group on one worker.
#[derive(Debug)]
pub struct Balancer {
    /// Server indices (into the worker's server list).
    servers: Vec<usize>,
    weights: Vec<u32>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        next: usize,
    },
    SmoothWeighted {
        current: Vec<i64>,
    },
    Random,
    LeastRequest,
    PeakEwma,
    /// Sorted `(point, position in servers)`.
    Hash {
        ring: Vec<(u64, usize)>,
    },
}

/// Points per unit of weight on the ketama ring.
const RING_POINTS: u32 = 160;

impl Balancer {
    /// `members` are `(server index, weight, stable name)`. Workers start round-robin
    /// at different offsets so their first requests do not all hit the same server.
    pub fn new(
        members: &[(usize, u32, String)],
        policy: &BalancePolicy,
        worker_index: usize,
    ) -> Balancer {
        let servers: Vec<usize> = members.iter().map(|m| m.0).collect();
        let weights: Vec<u32> = members.iter().map(|m| m.1).collect();
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let kind = match policy {
            BalancePolicy::RoundRobin if equal => Kind::RoundRobin {
                next: worker_index % servers.len().max(1),
            },
            BalancePolicy::RoundRobin => Kind::SmoothWeighted {
                current: vec![0; servers.len()],
            },
            BalancePolicy::Random => Kind::Random,
            BalancePolicy::LeastRequest => Kind::LeastRequest,
            BalancePolicy::PeakEwma => Kind::PeakEwma,
            BalancePolicy::Hash(_) => Kind::Hash {
                ring: ketama_ring(
                    &members
                        .iter()
                        .map(|m| (m.2.as_str(), m.1))
                        .collect::<Vec<_>>(),
                ),
            },
        };
        Balancer {
            servers,
            weights,
            kind,
        }
    }

    /// The server for the next request. `loads` is indexed by server index;
    /// `rng` is the worker's random state.
    pub fn pick(&mut self, key: RequestKey, loads: &[ServerLoad], rng: &mut Rng) -> usize {
        let n = self.servers.len();
        match &mut self.kind {
            Kind::RoundRobin { next } => {
                let i = *next;
                *next = if i + 1 == n { 0 } else { i + 1 };
                self.servers[i]
            }
            Kind::SmoothWeighted { current } => {
                let total: i64 = self.weights.iter().map(|&w| i64::from(w)).sum();
                let mut best = 0;
                for i in 0..n {
                    current[i] += i64::from(self.weights[i]);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                self.servers[best]
            }
            Kind::Random => self.servers[weighted_random(&self.weights, rng)],
            Kind::LeastRequest | Kind::PeakEwma => {
                if n == 1 {
                    return self.servers[0];
                }
                let a = weighted_random(&self.weights, rng);
                let mut b = weighted_random(&self.weights, rng);
                if b == a {
                    b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
                }
                let (la, lb) = (&loads[self.servers[a]], &loads[self.servers[b]]);
                let a_better = match self.kind {
                    Kind::LeastRequest => la.outstanding.get() <= lb.outstanding.get(),
                    _ => la.cost() <= lb.cost(),
                };
                self.servers[if a_better { a } else { b }]
            }
            Kind::Hash { ring } => match key.hash {
                Some(h) => self.servers[ring_lookup(ring, h)],
                // No key in the request: spread such requests evenly.
                None => self.servers[weighted_random(&self.weights, rng)],
            },
        }
    }
}

/// Builds a ketama ring: `RING_POINTS` points per unit of weight per server,
/// placed by hashing the server's stable name, so every worker and every
/// gateway node with the same servers builds the same ring.
fn ketama_ring(members: &[(&str, u32)]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (position, (name, weight)) in members.iter().enumerate() {
        for point in 0..RING_POINTS * weight {
            ring.push((stable_hash(format!("{name}-{point}").as_bytes()), position));
        }
    }
    ring.sort_unstable();
    ring
}

fn ring_lookup(ring: &[(u64, usize)], hash: u64) -> usize {
    let i = ring.partition_point(|&(point, _)| point < hash);
    ring[if i == ring.len() { 0 } else { i }].1
}

/// FNV-1a with a final avalanche: stable across processes, versions and nodes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV alone clusters similar inputs.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn weighted_random(weights: &[u32], rng: &mut Rng) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut x = rng.below(total);
    for (i, &w) in weights.iter().enumerate() {
        if x < u64::from(w) {
            return i;
        }
        x -= u64::from(w);
    }
    weights.len() - 1
}

/// A small per-worker random generator (xorshift64*): no shared state, no locks.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// What a `hash` group hashes, read from the request.
pub fn request_hash(
    on: &HashKey,
    client_ip: &str,
    path: &str,
    headers: &[httparse::Header<'_>],
) -> Option<u64> {
    use crate::http::headers::{name_is, trim};
    match on {
        HashKey::ClientIp => Some(stable_hash(client_ip.as_bytes())),
        HashKey::Path => Some(stable_hash(path.as_bytes())),
        HashKey::Header(name) => headers
            .iter()
            .find(|h| name_is(h.name, name))
            .map(|h| stable_hash(trim(h.value))),
        HashKey::Cookie(name) => crate::cache::key::cookie_value(headers, name).map(stable_hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, weight: u32) -> Vec<(usize, u32, String)> {
        (0..n)
            .map(|i| (i, weight, format!("10.0.0.{i}:80")))
            .collect()
    }

    fn loads(n: usize) -> Vec<ServerLoad> {
        (0..n).map(|_| ServerLoad::default()).collect()
    }

    #[test]
    fn round_robin_cycles() {
        let mut b = Balancer::new(&members(3, 1), &BalancePolicy::RoundRobin, 0);
        let (l, mut rng) = (loads(3), Rng::new(1));
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(RequestKey::default(), &l, &mut rng))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn workers_start_at_different_servers() {
        let mut b = Balancer::new(&members(2, 1), &BalancePolicy::RoundRobin, 1);
        assert_eq!(
            b.pick(RequestKey::default(), &loads(2), &mut Rng::new(1)),
            1
        );
    }

    #[test]
    fn smooth_weighted_spreads_the_heavy_server() {
        let m = vec![
            (0, 5, "a".to_string()),
            (1, 1, "b".to_string()),
            (2, 1, "c".to_string()),
        ];
        let mut b = Balancer::new(&m, &BalancePolicy::RoundRobin, 0);
        let (l, mut rng) = (loads(3), Rng::new(1));
        let picks: Vec<usize> = (0..7)
            .map(|_| b.pick(RequestKey::default(), &l, &mut rng))
            .collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_random_follows_weights() {
        let m = vec![(0, 3, "a".to_string()), (1, 1, "b".to_string())];
        let mut b = Balancer::new(&m, &BalancePolicy::Random, 0);
        let (l, mut rng) = (loads(2), Rng::new(7));
        let heavy = (0..40_000)
            .filter(|_| b.pick(RequestKey::default(), &l, &mut rng) == 0)
            .count();
        assert!((29_000..31_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn least_request_avoids_the_busy_server() {
        let mut b = Balancer::new(&members(2, 1), &BalancePolicy::LeastRequest, 0);
        let (l, mut rng) = (loads(2), Rng::new(3));
        l[0].outstanding.set(5);
        assert!((0..100).all(|_| b.pick(RequestKey::default(), &l, &mut rng) == 1));
    }

    #[test]
    fn peak_ewma_avoids_the_slow_server_and_forgives_it_slowly() {
        let mut b = Balancer::new(&members(2, 1), &BalancePolicy::PeakEwma, 0);
        let (l, mut rng) = (loads(2), Rng::new(5));
        let now = Instant::now();
        l[0].record_latency(Duration::from_millis(50), now);
        l[1].record_latency(Duration::from_millis(1), now);
        assert!((0..100).all(|_| b.pick(RequestKey::default(), &l, &mut rng) == 1));
        // A fast sample right after the peak barely moves it; after the decay it does.
        l[0].record_latency(Duration::from_millis(1), now + Duration::from_millis(10));
        assert!(l[0].ewma() > Duration::from_millis(45));
        l[0].record_latency(Duration::from_millis(1), now + Duration::from_secs(60));
        assert!(l[0].ewma() < Duration::from_millis(2));
    }

    #[test]
    fn peak_ewma_counts_outstanding_requests() {
        let mut b = Balancer::new(&members(2, 1), &BalancePolicy::PeakEwma, 0);
        let (l, mut rng) = (loads(2), Rng::new(5));
        let now = Instant::now();
        l[0].record_latency(Duration::from_millis(2), now);
        l[1].record_latency(Duration::from_millis(1), now);
        l[1].outstanding.set(9);
        assert!((0..100).all(|_| b.pick(RequestKey::default(), &l, &mut rng) == 0));
    }

    fn owners(ring_members: &[(usize, u32, String)], keys: u64) -> Vec<usize> {
        let policy = BalancePolicy::Hash(HashKey::Path);
        let mut b = Balancer::new(ring_members, &policy, 0);
        let (l, mut rng) = (loads(ring_members.len() + 1), Rng::new(1));
        (0..keys)
            .map(|k| {
                let key = RequestKey {
                    hash: Some(stable_hash(format!("/item/{k}").as_bytes())),
                };
                b.pick(key, &l, &mut rng)
            })
            .collect()
    }

    #[test]
    fn consistent_hash_sends_a_key_to_one_server() {
        let a = owners(&members(5, 1), 1000);
        let b = owners(&members(5, 1), 1000);
        assert_eq!(a, b, "every worker and node builds the same ring");
        for s in 0..5 {
            let share = a.iter().filter(|&&x| x == s).count();
            assert!(
                (120..300).contains(&share),
                "server {s} got {share} of 1000"
            );
        }
    }

    #[test]
    fn removing_one_of_n_servers_moves_only_its_keys() {
        let n = 10;
        let keys = 20_000;
        let before = owners(&members(n, 1), keys);
        let fewer: Vec<_> = members(n, 1).into_iter().filter(|m| m.0 != 3).collect();
        let after = owners(&fewer, keys);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            before.iter().zip(&after).all(|(a, b)| a == b || *a == 3),
            "only the removed server's keys move"
        );
        let share = moved as f64 / keys as f64;
        assert!(
            (0.06..0.14).contains(&share),
            "moved {share:.3}, expected about 1/{n}"
        );
    }

    #[test]
    fn adding_a_server_moves_about_one_in_n_plus_one() {
        let n = 10;
        let keys = 20_000;
        let before = owners(&members(n, 1), keys);
        let after = owners(&members(n + 1, 1), keys);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            before.iter().zip(&after).all(|(a, b)| a == b || *b == n),
            "keys move only to the new server"
        );
        let share = moved as f64 / keys as f64;
        assert!(
            (0.05..0.13).contains(&share),
            "moved {share:.3}, expected about 1/{}",
            n + 1
        );
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b"10.0.0.1"), stable_hash(b"10.0.0.1"));
        assert_ne!(stable_hash(b"10.0.0.1"), stable_hash(b"10.0.0.2"));
    }
}
