//! Bus round trip: a broadcast to every worker, applied, and acknowledged
//! back to the sender. Real worker threads, each on its own monoio runtime,
//! idle (woken by the message). Run with `cargo bench --bench bus`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::bus::{Bus, Invalidation, Mailbox, Message};
use ringgate::cache::shard::Removal;

/// Starts `workers` threads that apply (acknowledge) every message they get.
fn workers(workers: usize) -> (Arc<Bus>, Vec<std::thread::JoinHandle<()>>) {
    let (bus, receivers) = Bus::new(workers, 4096);
    let threads = receivers
        .into_iter()
        .map(|(receiver, index)| {
            let mailbox = Mailbox::new(bus.clone(), receiver, index);
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    loop {
                        let envelope = mailbox.next().await;
                        if let Message::FetchDone { .. } = envelope.message {
                            return;
                        }
                        if let Some(ack) = envelope.ack {
                            ack.done(mailbox.worker, 0);
                        }
                    }
                })
            })
        })
        .collect();
    (bus, threads)
}

fn round_trip(c: &mut Criterion) {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (bus, threads) = workers(n);
    let mut sender = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let message = Message::Invalidate {
        what: Invalidation::Urls(Arc::new(vec![b"http://bench/key".to_vec().into()])),
        removal: Removal::Hard,
    };
    c.bench_function(&format!("bus_broadcast_ack_{n}_workers"), |b| {
        b.iter_custom(|iters| {
            sender.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    bus.broadcast_and_wait(message.clone(), Duration::from_secs(1))
                        .await
                        .unwrap();
                }
                started.elapsed()
            })
        })
    });
    let stop = Message::FetchDone {
        from: 0,
        key: Arc::from(&b""[..]),
    };
    bus.broadcast(&stop, None).unwrap();
    for t in threads {
        t.join().unwrap();
    }
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
