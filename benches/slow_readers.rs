//! The slow-readers scenario on the release build: slow clients with small
//! receive windows read one cold, cacheable object; prints the origin
//! fetches and the gateway's resident memory (start, peak, after).
//!
//! `cargo bench --bench slow_readers` (clients and object size as arguments:
//! `cargo bench --bench slow_readers -- 1000 4194304`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clients = args.first().copied().unwrap_or(1000);
    let object = args.get(1).copied().unwrap_or(4 << 20);
    println!("| clients | object | workers | origin fetches | RSS start | RSS peak | RSS after | hit after |");
    println!("|---|---|---|---|---|---|---|---|");
    for workers in [1, 2] {
        let r = common::slow_readers::run(clients, object, workers, Duration::from_secs(3));
        println!(
            "| {} | {} KiB | {workers} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |",
            r.clients,
            r.object / 1024,
            r.origin_fetches,
            r.start_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            r.after_kib as f64 / 1024.0,
            r.hit_after
        );
    }
}
