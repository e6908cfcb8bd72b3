//! Hit ratio of the cache's eviction policy (quick_cache, S3-FIFO) against a
//! plain LRU of the same capacity, on Zipf-distributed requests, with and
//! without a one-off scan mixed in. Prints a table; run with
//! `cargo bench --bench hit_ratio`.

use std::num::NonZeroUsize;

/// xorshift64*: deterministic, so every run replays the same workload.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples keys 0..n with P(k) proportional to 1 / (k + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u) as u64
    }
}

fn run(requests: &[u64], capacity: usize) -> (f64, f64) {
    let mut s3fifo = quick_cache::unsync::Cache::<u64, ()>::new(capacity);
    let mut lru = lru::LruCache::<u64, ()>::new(NonZeroUsize::new(capacity).unwrap());
    let (mut s3_hits, mut lru_hits) = (0u64, 0u64);
    for &k in requests {
        if s3fifo.get(&k).is_some() {
            s3_hits += 1;
        } else {
            s3fifo.insert(k, ());
        }
        if lru.get(&k).is_some() {
            lru_hits += 1;
        } else {
            lru.put(k, ());
        }
    }
    let n = requests.len() as f64;
    (s3_hits as f64 / n, lru_hits as f64 / n)
}

fn main() {
    const KEYS: usize = 100_000;
    const REQUESTS: usize = 1_000_000;
    println!("| workload | capacity | S3-FIFO (quick_cache) | LRU | difference |");
    println!("|---|---|---|---|---|");
    for s in [0.8, 1.0, 1.2] {
        let zipf = Zipf::new(KEYS, s);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let plain: Vec<u64> = (0..REQUESTS).map(|_| zipf.sample(&mut rng)).collect();
        // The same stream with a one-off scan of fresh keys through its middle third.
        let mut scanned = Vec::with_capacity(REQUESTS + KEYS);
        let mut scan_key = KEYS as u64 * 10;
        for (i, &k) in plain.iter().enumerate() {
            scanned.push(k);
            if (REQUESTS / 3..2 * REQUESTS / 3).contains(&i) && i % 3 == 0 {
                scanned.push(scan_key);
                scan_key += 1;
            }
        }
        for fraction in [0.01, 0.05, 0.10] {
            let capacity = (KEYS as f64 * fraction) as usize;
            for (name, stream) in [("zipf", &plain), ("zipf+scan", &scanned)] {
                let (s3, lru) = run(stream, capacity);
                println!(
                    "| {name} s={s} | {:.0}% of keys | {:.2}% | {:.2}% | {:+.2} points |",
                    fraction * 100.0,
                    s3 * 100.0,
                    lru * 100.0,
                    (s3 - lru) * 100.0
                );
            }
        }
    }
}
