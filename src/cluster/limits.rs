//! Rate limits counted by every node of the cluster (`scope = "cluster"`):
//! one GCRA per key in Redis, handed out to nodes as leases.
//!
//! A node asks Redis (one atomic script per key, run on a side thread) for
//! up to `lease / interval` requests of a key at once; Redis advances the
//! key's arrival time by what it grants, exactly as if those requests had
//! arrived then, and says how long until the next one is allowed when it
//! grants none. The node keeps what the request that asked did not use in
//! a lock-free cell for `lease`, so further requests of that key on this
//! node are admitted without Redis; a refusal is kept until its retry time
//! (at most a second), so a refused client does not cost a Redis call per
//! request either. Unused requests are dropped when their lease ends.
//!
//! The error bound: every admitted request was granted by the one GCRA in
//! Redis; a node may use a grant up to `lease` after Redis gave it, so over
//! any span the cluster admits at most what the limit allows over that span
//! plus `lease` (about `rate x lease` requests more, never more than one
//! lease per node). A limit slower than one request per `lease` asks Redis
//! for every request and is exact. Leases a node did not use are lost
//! (the limit then admits fewer, never more).
//!
//! A cost counted in other units (an AI route's tokens, `Metered`) is
//! asked of Redis every time, all or nothing and without a lease (a
//! refusal for one cost says nothing of a smaller one), and corrected
//! afterwards by a charge Redis applies to the key as it stands; a charge
//! is sent and not waited for.
//!
//! A request that has to ask waits for the answer (at most
//! `cluster.timeout`); when Redis cannot be reached the route's `fail`
//! mode decides (`route::rate_limit::Fail`). While Redis is down, requests
//! are not queued for it: for a second after a failure the limit answers
//! `Unavailable` at once.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sha2::Digest;

use crate::config::ClusterConfig;
use crate::route::rate_limit::{Asked, Key, Limiter, Metered, Outcome, RateLimit, MAX_WINDOW};

/// Cells in the node's lease table (8 bytes each).
const CELLS: usize = 1 << 16;
/// Requests waiting for Redis, node-wide; past it they are `Unavailable`
/// (the side thread takes them all at each round trip; the channel's slots
/// are allocated up front, so it is kept small).
const QUEUE: usize = 4096;
/// How long a refusal is kept on the node before Redis is asked again.
const MAX_REFUSAL: Duration = Duration::from_secs(1);
/// After Redis failed, how long asks are answered `Unavailable` at once.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// A cell: fingerprint (20 bits, never 0) | refused (1) | requests left
/// (19) | lease end or refusal end (24 bits of milliseconds since the
/// table was made, wrapping every 4.6 hours).
const FP_SHIFT: u32 = 44;
const REFUSED_BIT: u64 = 1 << 43;
const TOKENS_SHIFT: u32 = 24;
const TOKENS_MAX: u64 = (1 << 19) - 1;
const TIME_MASK: u64 = (1 << 24) - 1;
/// An end further ahead than this is an old, wrapped one.
const HORIZON_MS: u64 = 20_000;

/// GCRA on one key, in Redis' clock: grants up to ARGV[3] requests (none
/// unless at least ARGV[4] fit), the key's arrival time advanced by each;
/// answers the requests granted and the microseconds until ARGV[4] more
/// would be.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + window - tat) / interval)
local granted = 0
if room >= need then granted = math.min(want, room) end
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
local wait = tat + need * interval - window - now
if wait < 0 then wait = 0 end
return {granted, string.format('%.0f', wait)}
"#;

/// A charge after the fact: moves the key's arrival time by ARGV[1]
/// microseconds (back when negative), never before now nor more than
/// ARGV[2] ahead, never refusing.
const CHARGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1])
local most = now + tonumber(ARGV[2])
if tat > most then tat = most end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// Counters for `/stats`.
#[derive(Default)]
pub struct LimitStats {
    /// Calls to Redis (one per key per batch).
    pub asked: AtomicU64,
    /// Requests Redis granted.
    pub granted: AtomicU64,
    /// Asks answered `Unavailable` (Redis down or the queue full), and
    /// charges lost.
    pub unavailable: AtomicU64,
    /// Metered charges (token corrections) Redis applied.
    pub charged: AtomicU64,
}

/// The node's side of the cluster's rate limits.
pub struct ClusterLimits {
    cells: Box<[AtomicU64]>,
    epoch: Instant,
    hasher: RandomState,
    asks: Sender<Job>,
    /// Until when (ms on the table's clock + 1; 0: not down) asks fail at once.
    down_until: AtomicU64,
    pub stats: LimitStats,
}

/// What the side thread is asked to do.
enum Job {
    Ask(Ask),
    /// A key's charge corrected (`Metered::adjust`), not waited for.
    Charge {
        route: String,
        value: Vec<u8>,
        named: bool,
        /// Microseconds to move the key's arrival time by.
        moved_us: i64,
    },
}

/// One request waiting for Redis.
struct Ask {
    route: String,
    /// A named key (header, cookie, subject, route) or the client's address.
    named: bool,
    value: Vec<u8>,
    cell: usize,
    fingerprint: u64,
    interval_us: u64,
    window_us: u64,
    /// A metered cost: granted whole or not at all, no lease kept.
    cost: Option<u64>,
    answer: Arc<Asked>,
}

fn key_of(named: bool, value: &[u8]) -> Key<'_> {
    if named {
        Key::Named(value)
    } else {
        Key::Client(value)
    }
}

impl Ask {
    fn key(&self) -> Key<'_> {
        key_of(self.named, &self.value)
    }
}

impl ClusterLimits {
    /// The lease table and its side thread.
    pub fn start(config: &ClusterConfig, stop: Arc<AtomicBool>) -> std::io::Result<Arc<Self>> {
        let (asks, queue) = crossbeam_channel::bounded(QUEUE);
        let limits = Arc::new(ClusterLimits {
            cells: (0..CELLS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            asks,
            down_until: AtomicU64::new(0),
            stats: LimitStats::default(),
        });
        let side = Side {
            config: config.clone(),
            limits: Arc::downgrade(&limits),
            stop,
            lease_us: config.lease.as_micros() as u64,
        };
        std::thread::Builder::new()
            .name("ringgate-cluster-limit".to_string())
            .spawn(move || side.run(queue))?;
        Ok(limits)
    }

    fn clock_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Milliseconds from `now` to the cell's end (0: ended, or wrapped).
    fn left_ms(cell: u64, now_ms: u64) -> u64 {
        let left = cell.wrapping_sub(now_ms) & TIME_MASK;
        if left > HORIZON_MS {
            0
        } else {
            left
        }
    }

    fn pack(fingerprint: u64, refused: bool, tokens: u64, end_ms: u64) -> u64 {
        (fingerprint << FP_SHIFT)
            | if refused { REFUSED_BIT } else { 0 }
            | (tokens.min(TOKENS_MAX) << TOKENS_SHIFT)
            | (end_ms & TIME_MASK)
    }

    /// Keeps what Redis answered for the key in `cell`.
    fn keep(&self, cell: usize, fingerprint: u64, refused: bool, tokens: u64, end: Instant) {
        let end_ms = self.clock_ms(end).max(1);
        self.cells[cell].store(
            Self::pack(fingerprint, refused, tokens, end_ms),
            Ordering::Release,
        );
    }

    /// Takes one of the key's leased requests, or reads its refusal.
    fn local(&self, cell: usize, fingerprint: u64, now_ms: u64) -> Option<Outcome> {
        let slot = &self.cells[cell];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current >> FP_SHIFT != fingerprint {
                return None;
            }
            let left = Self::left_ms(current, now_ms);
            if left == 0 {
                return None;
            }
            if current & REFUSED_BIT != 0 {
                return Some(Outcome::Refused {
                    retry_after: Duration::from_millis(left),
                });
            }
            let tokens = (current >> TOKENS_SHIFT) & TOKENS_MAX;
            if tokens == 0 {
                return None;
            }
            let next = current - (1 << TOKENS_SHIFT);
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Some(Outcome::Admitted {
                        remaining: tokens - 1,
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// For `/stats`.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "redis_calls": self.stats.asked.load(Ordering::Relaxed),
            "granted": self.stats.granted.load(Ordering::Relaxed),
            "unavailable": self.stats.unavailable.load(Ordering::Relaxed),
            "charged": self.stats.charged.load(Ordering::Relaxed),
        })
    }
}

/// The key's name in Redis: the same on every node, and not the client's
/// value itself (an API key or a cookie stays out of Redis).
fn redis_key(prefix: &str, route: &str, key: Key<'_>) -> String {
    let mut digest = sha2::Sha256::new();
    digest.update(route.as_bytes());
    match key {
        Key::Named(value) => {
            digest.update([0u8]);
            digest.update(value);
        }
        Key::Client(address) => {
            digest.update([1u8]);
            digest.update(address);
        }
    }
    format!("{prefix}:rl:{}", super::hex(&digest.finalize()[..16]))
}

impl Limiter for ClusterLimits {
    fn acquire(&self, route: &str, key: Key<'_>, limit: &RateLimit, now: Instant) -> Outcome {
        let hash = crate::route::rate_limit::key_hash(&self.hasher, route, key);
        let fingerprint = (hash >> 44).max(1);
        let cell = hash as usize & (self.cells.len() - 1);
        if let Some(outcome) = self.local(cell, fingerprint, self.clock_ms(now)) {
            return outcome;
        }
        self.ask(route, key, limit, now, (cell, fingerprint), None)
    }

    fn metered(&self) -> Option<&dyn Metered> {
        Some(self)
    }
}

impl Metered for ClusterLimits {
    fn acquire_cost(
        &self,
        route: &str,
        key: Key<'_>,
        limit: &RateLimit,
        cost: u64,
        now: Instant,
    ) -> Outcome {
        let cost = cost.clamp(1, u64::from(limit.burst) + 1);
        self.ask(route, key, limit, now, (0, 0), Some(cost))
    }

    fn adjust(&self, route: &str, key: Key<'_>, limit: &RateLimit, delta: i64, _now: Instant) {
        let (named, value) = parts(key);
        let job = Job::Charge {
            route: route.to_string(),
            value: value.to_vec(),
            named,
            moved_us: delta.saturating_mul(limit.interval_us as i64),
        };
        if self.asks.try_send(job).is_err() {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn parts(key: Key<'_>) -> (bool, &[u8]) {
    match key {
        Key::Named(v) => (true, v),
        Key::Client(v) => (false, v),
    }
}

impl ClusterLimits {
    /// Queues an ask for the side thread: `Pending` on its answer, or
    /// `Unavailable` while Redis is down or the queue is full.
    fn ask(
        &self,
        route: &str,
        key: Key<'_>,
        limit: &RateLimit,
        now: Instant,
        (cell, fingerprint): (usize, u64),
        cost: Option<u64>,
    ) -> Outcome {
        if self.down_until.load(Ordering::Relaxed) > self.clock_ms(now) {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return Outcome::Unavailable;
        }
        let answer = Arc::new(Asked::default());
        // The Redis key is named (hashed) on the side thread's time.
        let (named, value) = parts(key);
        let ask = Ask {
            route: route.to_string(),
            named,
            value: value.to_vec(),
            cell,
            fingerprint,
            interval_us: limit.interval_us,
            window_us: limit.window_us(),
            cost,
            answer: answer.clone(),
        };
        match self.asks.try_send(Job::Ask(ask)) {
            Ok(()) => Outcome::Pending(answer),
            Err(_) => {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                Outcome::Unavailable
            }
        }
    }
}

/// The side thread: asks Redis for the keys requests wait on, a batch at a
/// time, one script call per key, pipelined.
struct Side {
    config: ClusterConfig,
    limits: std::sync::Weak<ClusterLimits>,
    stop: Arc<AtomicBool>,
    lease_us: u64,
}

/// A connection to Redis and the hashes of the two scripts loaded in it.
struct Loaded {
    conn: redis::Connection,
    gcra: String,
    charge: String,
}

impl Side {
    fn run(self, queue: Receiver<Job>) {
        let mut loaded: Option<Loaded> = None;
        while !self.stop.load(Ordering::Acquire) {
            let first = match queue.recv_timeout(Duration::from_millis(500)) {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let Some(limits) = self.limits.upgrade() else {
                return;
            };
            let mut batch = Vec::new();
            let mut charges = Vec::new();
            for job in std::iter::once(first).chain(queue.try_iter().take(QUEUE - 1)) {
                match job {
                    Job::Ask(ask) => batch.push(ask),
                    Job::Charge {
                        route,
                        value,
                        named,
                        moved_us,
                    } => {
                        let name = redis_key(&self.config.prefix, &route, key_of(named, &value));
                        charges.push((name, moved_us));
                    }
                }
            }
            if loaded.is_none() {
                loaded = self.connect().ok();
            }
            let answered = match loaded.as_mut() {
                Some(l) => self.ask(l, &limits, &batch, &charges),
                None => Err(()),
            };
            if answered.is_err() {
                loaded = None;
                let until = limits.clock_ms(Instant::now() + DOWN_FOR) + 1;
                limits.down_until.store(until, Ordering::Relaxed);
                limits
                    .stats
                    .unavailable
                    .fetch_add((batch.len() + charges.len()) as u64, Ordering::Relaxed);
                for ask in &batch {
                    ask.answer.answer_with(&Outcome::Unavailable);
                }
            }
        }
    }

    /// A connection with the scripts loaded (Redis forgets scripts when it
    /// restarts, and a restart breaks the connection).
    fn connect(&self) -> redis::RedisResult<Loaded> {
        let mut conn = super::connect(&self.config)?;
        conn.set_read_timeout(Some(self.config.timeout))?;
        let gcra: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut conn)?;
        let charge: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CHARGE)
            .query(&mut conn)?;
        Ok(Loaded { conn, gcra, charge })
    }

    /// One pipelined round trip for the batch: each key's request waiters
    /// share one call asking for all of them plus a lease, each metered
    /// cost is a call of its own, and the charges follow.
    fn ask(
        &self,
        loaded: &mut Loaded,
        limits: &ClusterLimits,
        batch: &[Ask],
        charges: &[(String, i64)],
    ) -> Result<(), ()> {
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        let mut metered = Vec::new();
        for (i, ask) in batch.iter().enumerate() {
            let name = redis_key(&self.config.prefix, &ask.route, ask.key());
            match ask.cost {
                Some(_) => metered.push((name, i)),
                None => by_key.entry(name).or_default().push(i),
            }
        }
        let keys: Vec<(String, Vec<usize>)> = by_key.into_iter().collect();
        let mut pipe = redis::pipe();
        for (name, waiters) in &keys {
            let first = &batch[waiters[0]];
            let lease = (self.lease_us / first.interval_us.max(1)).saturating_sub(1);
            let want = waiters.len() as u64 + lease;
            pipe.cmd("EVALSHA")
                .arg(&loaded.gcra)
                .arg(1)
                .arg(name)
                .arg(first.interval_us)
                .arg(first.window_us)
                .arg(want)
                .arg(1);
        }
        for (name, i) in &metered {
            let ask = &batch[*i];
            let cost = ask.cost.unwrap_or(1);
            pipe.cmd("EVALSHA")
                .arg(&loaded.gcra)
                .arg(1)
                .arg(name)
                .arg(ask.interval_us)
                .arg(ask.window_us)
                .arg(cost)
                .arg(cost);
        }
        let most = MAX_WINDOW.as_micros() as u64;
        for (name, moved) in charges {
            pipe.cmd("EVALSHA")
                .arg(&loaded.charge)
                .arg(1)
                .arg(name)
                .arg(*moved)
                .arg(most)
                .ignore();
        }
        let answers: Vec<(u64, String)> = pipe.query(&mut loaded.conn).map_err(|e| {
            tracing::warn!(error = %e, "cluster rate limits: Redis did not answer");
        })?;
        limits
            .stats
            .asked
            .fetch_add((keys.len() + metered.len()) as u64, Ordering::Relaxed);
        limits
            .stats
            .charged
            .fetch_add(charges.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let (leased, costs) = answers.split_at(keys.len().min(answers.len()));
        for ((_, waiters), (granted, wait_us)) in keys.iter().zip(leased) {
            let granted = *granted;
            limits.stats.granted.fetch_add(granted, Ordering::Relaxed);
            let wait = Duration::from_micros(wait_us.parse().unwrap_or(0));
            let first = &batch[waiters[0]];
            let admitted = (granted as usize).min(waiters.len());
            for (n, &i) in waiters.iter().enumerate() {
                let outcome = if n < admitted {
                    Outcome::Admitted { remaining: 0 }
                } else {
                    Outcome::Refused {
                        retry_after: wait.max(Duration::from_millis(1)),
                    }
                };
                batch[i].answer.answer_with(&outcome);
            }
            let left = granted.saturating_sub(waiters.len() as u64);
            if left > 0 {
                let lease = Duration::from_micros(self.lease_us.max(1000));
                limits.keep(first.cell, first.fingerprint, false, left, now + lease);
            } else if admitted < waiters.len() || granted == 0 {
                limits.keep(
                    first.cell,
                    first.fingerprint,
                    true,
                    0,
                    now + wait.min(MAX_REFUSAL),
                );
            } else {
                // All used: the next request asks again.
                limits.keep(first.cell, first.fingerprint, false, 0, now);
            }
        }
        for ((_, i), (granted, wait_us)) in metered.iter().zip(costs) {
            let ask = &batch[*i];
            let outcome = if *granted >= ask.cost.unwrap_or(1) {
                limits.stats.granted.fetch_add(1, Ordering::Relaxed);
                Outcome::Admitted { remaining: 0 }
            } else {
                let wait = Duration::from_micros(wait_us.parse().unwrap_or(0));
                Outcome::Refused {
                    retry_after: wait.max(Duration::from_millis(1)),
                }
            };
            ask.answer.answer_with(&outcome);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_are_the_same_on_every_node_and_hide_the_value() {
        let a = redis_key("rg", "api", Key::Named(b"secret-key"));
        assert_eq!(a, redis_key("rg", "api", Key::Named(b"secret-key")));
        assert!(!a.contains("secret"));
        assert_ne!(a, redis_key("rg", "api", Key::Client(b"secret-key")));
        assert_ne!(a, redis_key("rg", "web", Key::Named(b"secret-key")));
    }

    #[test]
    fn cells_keep_leases_and_refusals_until_they_end() {
        let stop = Arc::new(AtomicBool::new(true));
        let config = ClusterConfig::defaults("redis://127.0.0.1:1/", "n");
        let limits = ClusterLimits::start(&config, stop).unwrap();
        let now = Instant::now();
        let ms = limits.clock_ms(now);
        limits.keep(7, 3, false, 2, now + Duration::from_millis(20));
        assert!(matches!(
            limits.local(7, 3, ms),
            Some(Outcome::Admitted { remaining: 1 })
        ));
        assert!(matches!(
            limits.local(7, 3, ms),
            Some(Outcome::Admitted { remaining: 0 })
        ));
        assert!(limits.local(7, 3, ms).is_none(), "used up");
        assert!(limits.local(7, 4, ms).is_none(), "another key");
        limits.keep(9, 3, false, 5, now + Duration::from_millis(20));
        assert!(limits.local(9, 3, ms + 25).is_none(), "the lease ended");
        limits.keep(11, 3, true, 0, now + Duration::from_millis(300));
        match limits.local(11, 3, ms + 100) {
            Some(Outcome::Refused { retry_after }) => {
                assert!(retry_after <= Duration::from_millis(201), "{retry_after:?}")
            }
            o => panic!("{o:?}"),
        }
    }
}
