//! The slow-readers scenario on the release build: slow clients with small
//! receive windows read one cold, cacheable object; prints the origin
//! fetches and the gateway's resident memory (start, peak, after).
//!
//! `cargo bench --bench slow_readers` (clients, object size and another
//! build to compare as arguments:
//! `cargo bench --bench slow_readers -- 1000 4194304 --bin /path/to/ringgate`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let clients = numbers.first().copied().unwrap_or(1000);
    let object = numbers.get(1).copied().unwrap_or(4 << 20);
    let binary = args
        .iter()
        .position(|a| a == "--bin")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_ringgate").to_string());
    println!("binary: {binary}");
    println!("| clients | object | workers | origin fetches | clients answered | slow for | RSS start | RSS peak | RSS after | hit after |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for workers in [1, 2] {
        let r = common::slow_readers::run_binary(
            &binary,
            clients,
            object,
            workers,
            Duration::from_secs(3),
        );
        println!(
            "| {} | {} KiB | {workers} | {} | {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |",
            r.clients,
            r.object / 1024,
            r.origin_fetches,
            r.answered,
            r.all_answered_after.as_secs_f64(),
            r.start_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            r.after_kib as f64 / 1024.0,
            r.hit_after
        );
    }
}
