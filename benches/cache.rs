//! Micro-benchmarks of the cache's CPU-only steps: shard lookup and insert,
//! and preparing a hit for its vectored write.
//! Run with `cargo bench --bench cache`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::cache::entry::{ExchangeTimes, Stored};
use ringgate::cache::hit::HitBuf;
use ringgate::cache::policy::CachePolicy;
use ringgate::cache::shard::{Lookup, Shard};
use ringgate::proxy::cache::{write_hit, HitKind, HitPlan};

fn stored(body: usize) -> Arc<Stored> {
    Arc::new(Stored::build(
        200,
        "OK",
        vec![
            ("Cache-Control".into(), b"public, max-age=3600".to_vec()),
            ("Content-Type".into(), b"application/octet-stream".to_vec()),
            ("ETag".into(), b"\"5f3e-1k\"".to_vec()),
        ],
        Bytes::from(vec![b'a'; body]),
        ExchangeTimes::now(SystemTime::now()),
        &CachePolicy::default(),
        Some(b"Via: 1.1 ringgate\r\n"),
    ))
}

fn shard(c: &mut Criterion) {
    let mut shard = Shard::new(64 << 20);
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("http://shop.example/products/{i}").into_bytes())
        .collect();
    let entry = stored(1024);
    for k in &keys {
        shard.insert(k, &[], entry.clone());
    }
    let now = Instant::now();
    let mut i = 0;
    c.bench_function("shard_get_hit_10k_entries", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            match shard.lookup(black_box(&keys[i]), &[], now) {
                Lookup::Found(s) => black_box(s.body.len()),
                _ => unreachable!(),
            }
        })
    });
    c.bench_function("shard_get_miss", |b| {
        b.iter(|| {
            matches!(
                shard.lookup(black_box(b"http://shop.example/absent"), &[], now),
                Lookup::UriMiss
            )
        })
    });
    let mut n = 0u64;
    c.bench_function("shard_insert_1k", |b| {
        b.iter(|| {
            n += 1;
            shard.insert(
                format!("http://shop.example/new/{n}").as_bytes(),
                &[],
                entry.clone(),
            );
        })
    });
}

fn hit_path(c: &mut Criterion) {
    for (name, size) in [("hit_prepare_1k", 1024), ("hit_prepare_16k", 16 * 1024)] {
        let plan = HitPlan {
            stored: stored(size),
            kind: HitKind::Fresh,
            not_modified: false,
            part: ringgate::cache::range::Part::Whole,
            refresh: None,
        };
        let mut buf = HitBuf::default();
        c.bench_function(name, |b| {
            b.iter(|| {
                write_hit(&mut buf, black_box(&plan), false);
                buf.prepare();
                black_box(buf.remaining())
            })
        });
    }
}

criterion_group!(benches, shard, hit_path);
criterion_main!(benches);
