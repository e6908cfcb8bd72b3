//! What a cache hit touches in memory other cores share: the reference
//! counts of the stored object (its `Arc`, taken by the shard lookup) and
//! of its head and body `Bytes` (taken into the hit's write buffer), each
//! incremented and decremented once per hit. This measures those six
//! atomic operations alone: on one core, and while another core does the
//! same to the same object (two cores hitting one hot object) or to an
//! object of its own. Run with `cargo bench --bench hit_refcounts`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};

/// Stands for a stored response: the counts are what matter, not the contents.
struct Object {
    _meta: [u8; 256],
}

fn object() -> (Arc<Object>, Bytes, Bytes) {
    let head = Bytes::from(vec![b'h'; 200]);
    let body = Bytes::from(vec![b'b'; 1024]);
    // A clone turns a freshly built `Bytes` into its shared form, as the cache holds it.
    let _ = (head.clone(), body.clone());
    (Arc::new(Object { _meta: [0; 256] }), head, body)
}

/// The reference counting of one hit.
#[inline(always)]
fn hit(object: &(Arc<Object>, Bytes, Bytes)) {
    let stored = black_box(object.0.clone());
    let head = black_box(object.1.clone());
    let body = black_box(object.2.clone());
    drop((stored, head, body));
}

/// Runs hits on `object` on another core until dropped.
struct Neighbour {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Neighbour {
    fn start(object: (Arc<Object>, Bytes, Bytes)) -> Neighbour {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
                core_affinity::set_for_current(core);
            }
            while !flag.load(Ordering::Relaxed) {
                hit(&object);
            }
        });
        Neighbour {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refcounts(c: &mut Criterion) {
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.first().copied()) {
        core_affinity::set_for_current(core);
    }
    let mut group = c.benchmark_group("hit_refcounts");
    let shared = object();
    group.bench_function("one_core", |b| b.iter(|| hit(&shared)));
    {
        let _other = Neighbour::start(object());
        group.bench_function("two_cores_own_objects", |b| b.iter(|| hit(&shared)));
    }
    {
        let _other = Neighbour::start((shared.0.clone(), shared.1.clone(), shared.2.clone()));
        group.bench_function("two_cores_one_object", |b| b.iter(|| hit(&shared)));
    }
    group.finish();
}

criterion_group!(benches, refcounts);
criterion_main!(benches);
