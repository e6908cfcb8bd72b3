//! A 1 GiB upload and a 1 GiB download through the gateway keep memory
//! flat: bodies stream with back-pressure and are never buffered whole.
//! This file holds one test so its process's peak RSS is its own.

mod common;

use common::*;
use std::io::Write;

const SIZE: u64 = 1 << 30;
/// Allowed growth of the whole test process's peak RSS (gateway, origin and client together).
const RSS_BUDGET: u64 = 64 << 20;

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn one_gib_each_way_streams_in_bounded_memory() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.limits.max_request_body = None;
    let gw = start(config);
    assert_eq!(get(gw.listen_addr(), "/warm-up").status, 200);
    let before = peak_rss();

    // Download: read and verify the body as it arrives, holding none of it.
    let mut c = Client::connect(gw.listen_addr());
    c.send(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let head = c.reader.read_head().unwrap().unwrap();
    assert!(head.contains(&format!("Content-Length: {SIZE}")), "{head}");
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    while received < SIZE {
        let want = ((SIZE - received) as usize).min(buf.len());
        let n = c.reader.read_into(&mut buf[..want]).unwrap();
        assert!(n > 0, "download cut short at {received}");
        for (j, &b) in buf[..n].iter().enumerate() {
            if b != pattern_byte(received + j as u64) {
                panic!("corrupt byte at {}", received + j as u64);
            }
        }
        received += n as u64;
    }

    // Upload: stream from a pattern generator; the origin counts what it gets.
    c.send(format!("PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes());
    let mut sent = 0u64;
    while sent < SIZE {
        let n = ((SIZE - sent) as usize).min(buf.len());
        for (j, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(sent + j as u64);
        }
        c.reader.inner.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with(&format!("body={SIZE}")), "{}", r.text());

    let growth = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth while moving 2 GiB: {} KiB", growth >> 10);
    assert!(
        growth < RSS_BUDGET,
        "peak RSS grew by {} MiB moving 2 GiB",
        growth >> 20
    );
}
