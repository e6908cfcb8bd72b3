//! Cross-core cache measurements, run in-process against the test origin:
//!
//! 1. origin requests caused by 1,000 concurrent requests for one cold key
//!    spread over every worker (target: 1);
//! 2. resident memory added by one large object cached and hit on every
//!    worker, shared (the default) and with isolated shards (target: one copy);
//! 3. purge latency to all workers (the admin call returns once every worker
//!    applied it) while the workers serve cache hits.
//!
//! `cargo bench --bench invalidation` (RINGGATE_BENCH_WORKERS sets the
//! worker count; default: every CPU).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringgate::cache::policy::CachePolicy;
use ringgate::config::AdminConfig;

fn workers() -> usize {
    std::env::var("RINGGATE_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn gateway(origin: &Origin, share: bool) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.workers.count = Some(workers());
    config.workers.per_core.cache_size = 512 << 20;
    config.workers.per_core.cache_max_object = 128 << 20;
    config.cache.share = share;
    config.routes[0].cache = Some(CachePolicy::default());
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    start(config)
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn cold_key(concurrent: usize) -> usize {
    let origin = Origin::start();
    let gw = gateway(&origin, true);
    let t = "/c?cc=max-age%3D60&gate_after=0&body=cold";
    let mut clients: Vec<Client> = (0..concurrent)
        .map(|_| Client::connect(gw.listen_addr()))
        .collect();
    for c in &mut clients {
        c.send(format!("GET {t} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes());
    }
    wait_until(Duration::from_secs(10), "first fetch", || {
        origin.hits_on(t) >= 1
    });
    origin.open_gate();
    for c in &mut clients {
        assert_eq!(c.read_response().unwrap().text(), "cold");
    }
    origin.hits_on(t)
}

fn large_object(share: bool, size: usize) -> f64 {
    let origin = Origin::start();
    let gw = gateway(&origin, share);
    let t = format!("/c?cc=max-age%3D600&size={size}");
    let before = rss_bytes();
    for _ in 0..64 {
        let mut c = Client::connect(gw.listen_addr());
        c.send(format!("GET {t} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes());
        let r = c.read_response().unwrap();
        assert_eq!(r.body.len(), size);
    }
    let after = rss_bytes();
    (after.saturating_sub(before)) as f64 / size as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn purge_latency(purges: usize) -> (Duration, Duration, Duration, u64) {
    let origin = Origin::start();
    let gw = gateway(&origin, true);
    let addr = gw.listen_addr();
    let hot = "/c?cc=max-age%3D600&body=hot";
    get(addr, hot);
    // Load: keep-alive clients hitting a cached URL for the whole measurement.
    let running = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (running, served) = (running.clone(), served.clone());
            in_thread(move || {
                let mut c = Client::connect(addr);
                while running.load(Ordering::Relaxed) {
                    c.request(format!("GET {hot} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes());
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let admin: SocketAddr = gw.admin_addr().unwrap();
    let mut c = Client::connect(admin);
    let mut times = Vec::with_capacity(purges);
    for i in 0..purges {
        let body = format!(r#"{{"url":"http://bench/other/{i}"}}"#);
        let request = format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let started = Instant::now();
        c.reader.inner.write_all(request.as_bytes()).unwrap();
        let r = c.read_response().unwrap();
        times.push(started.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    running.store(false, Ordering::Relaxed);
    for l in load {
        l.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        *times.last().unwrap(),
        served.load(Ordering::Relaxed),
    )
}

fn main() {
    raise_fd_limit();
    let n = workers();
    println!("workers: {n}\n");
    let origin_requests = cold_key(1000);
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!("| origin requests for 1,000 concurrent requests for one cold key | {origin_requests} | 1 |");
    let size = 64 << 20;
    let shared = large_object(true, size);
    let isolated = large_object(false, size);
    println!("| RSS added by one 64 MiB object hit on every worker, shared | {shared:.2} copies | about 1 |");
    println!(
        "| the same with isolated shards (`share = \"isolated\"`) | {isolated:.2} copies | - |"
    );
    let (p50, p99, max, served) = purge_latency(1000);
    println!(
        "| purge to all workers, admin call round trip, 1,000 purges under load ({served} hits served meanwhile) | p50 {:.0} us, p99 {:.0} us, max {:.0} us | p99 < 1 ms |",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
}
