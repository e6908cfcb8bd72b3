//! Several nodes and one `redis-server` (started here on a free port, no
//! persistence), in-process against the test origin:
//!
//! 1. cross-node purge latency: a `PURGE` answered by node A, until node B
//!    has applied it on every worker (B's applied counter, read in memory),
//!    p50 / p99 / max over 300 purges (target: p99 under 5 ms);
//! 2. origin requests saved by the shared cache tier: a Zipf workload over
//!    three nodes, each request to a random node, with the tier off and on;
//!    then a fourth node joins and serves the same workload alone.
//!
//! `cargo bench --bench cluster`. Redis, the nodes, the origin and this
//! client share the machine's cores: the figures are for loopback on this
//! machine, not a network.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::redis_server::Redis;
use common::*;
use ringgate::cache::policy::CachePolicy;
use ringgate::config::ClusterConfig;

fn node(origin: &Origin, redis: &Redis, name: &str, shared: bool) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.workers.count = Some(1);
    config.workers.per_core.cache_size = 256 << 20;
    config.routes[0].cache = Some(CachePolicy::default());
    config.cluster = Some(ClusterConfig {
        stream: format!("bench:{}", std::process::id()),
        shared_cache: shared,
        ..ClusterConfig::defaults(&redis.url(), name)
    });
    let gw = start(config);
    wait_until(Duration::from_secs(10), "connected to Redis", || {
        gw.cluster()
            .is_some_and(|c| c.stats.connected.load(Ordering::Relaxed))
    });
    gw
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn purge_latency(purges: usize) -> Vec<Duration> {
    let redis = Redis::start();
    let origin = Origin::start();
    let (a, b) = (
        node(&origin, &redis, "a", false),
        node(&origin, &redis, "b", false),
    );
    let applied = b.cluster().unwrap();
    let mut to_a = Client::connect(a.listen_addr());
    let mut to_b = Client::connect(b.listen_addr());
    let mut times = Vec::with_capacity(purges);
    for i in 0..purges {
        let t = format!("/c?cc=max-age%3D600&n={i}");
        to_b.request(format!("GET {t} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes());
        let before = applied.stats.applied.load(Ordering::Acquire);
        let started = Instant::now();
        let r = to_a.request(format!("PURGE {t} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes());
        assert_eq!(r.status, 404, "stored on B only");
        let deadline = started + Duration::from_secs(5);
        while applied.stats.applied.load(Ordering::Acquire) == before {
            assert!(Instant::now() < deadline, "B did not apply purge {i}");
            std::thread::yield_now();
        }
        times.push(started.elapsed());
    }
    times
}

/// A Zipf(1) sample over `keys` keys from a uniform `u` in [0, 1).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(keys: usize) -> Zipf {
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(keys);
        for k in 1..=keys {
            total += 1.0 / k as f64;
            cumulative.push(total);
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Zipf { cumulative }
    }

    fn sample(&self, u: f64) -> usize {
        self.cumulative.partition_point(|&c| c < u)
    }
}

/// A small deterministic generator (xorshift), so both runs see the same requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Origin requests for `requests` Zipf requests over three nodes, then the
/// same workload on a fourth node that joined afterwards.
fn zipf_origin_requests(shared: bool, keys: usize, requests: usize) -> (usize, usize) {
    let redis = Redis::start();
    let origin = Origin::start();
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| node(&origin, &redis, n, shared))
        .collect();
    let zipf = Zipf::new(keys);
    let mut clients: Vec<Client> = nodes
        .iter()
        .map(|n| Client::connect(n.listen_addr()))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let fetch = |c: &mut Client, key: usize| {
        let t = format!("/c?cc=max-age%3D600&k={key}&size=2048");
        let r = c.request(format!("GET {t} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
    };
    for _ in 0..requests {
        let key = zipf.sample(rng.unit());
        let n = (rng.next() % 3) as usize;
        fetch(&mut clients[n], key);
    }
    let three = origin.requests();
    // Let the last writes reach Redis before the new node starts.
    if shared {
        let stored = || {
            nodes
                .iter()
                .map(|n| {
                    let c = n.cluster().unwrap();
                    let s = c.shared.as_ref().unwrap();
                    s.stats.stored.load(Ordering::Relaxed) + s.stats.refused.load(Ordering::Relaxed)
                })
                .sum::<u64>()
        };
        wait_until(Duration::from_secs(30), "writes reached Redis", || {
            stored() as usize >= three
        });
    }
    let d = node(&origin, &redis, "d", shared);
    let mut to_d = Client::connect(d.listen_addr());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..requests / 3 {
        fetch(&mut to_d, zipf.sample(rng.unit()));
    }
    (three, origin.requests() - three)
}

fn main() {
    let purges = purge_latency(300);
    let mut sorted = purges.clone();
    sorted.sort();
    let (p50, p99, max) = (
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        *sorted.last().unwrap(),
    );
    println!(
        "## Cross-node purge latency (PURGE on A until applied on B, {} purges)\n",
        sorted.len()
    );
    println!("| p50 ms | p99 ms | max ms |\n|---|---|---|");
    println!("| {:.2} | {:.2} | {:.2} |\n", ms(p50), ms(p99), ms(max));

    let (keys, requests) = (2000, 9000);
    let off = zipf_origin_requests(false, keys, requests);
    let on = zipf_origin_requests(true, keys, requests);
    println!("## Origin requests, Zipf(1) over {keys} keys, {requests} requests over 3 nodes, then {} on a new node\n", requests / 3);
    println!("| shared tier | 3 nodes | new node |\n|---|---|---|");
    println!("| off | {} | {} |", off.0, off.1);
    println!("| on | {} | {} |", on.0, on.1);
    println!(
        "\nsaved: {:.0}% over 3 nodes, {:.0}% on the new node",
        100.0 * (1.0 - on.0 as f64 / off.0 as f64),
        100.0 * (1.0 - on.1 as f64 / off.1.max(1) as f64)
    );
    let json = serde_json::json!({
        "command": "cargo bench --bench cluster",
        "purge_latency_ms": { "p50": ms(p50), "p99": ms(p99), "max": ms(max), "purges": sorted.len() },
        "zipf": {
            "keys": keys, "requests": requests, "new_node_requests": requests / 3,
            "off": { "three_nodes": off.0, "new_node": off.1 },
            "on": { "three_nodes": on.0, "new_node": on.1 },
        },
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("cluster-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nresults: {}", path.display());
}
