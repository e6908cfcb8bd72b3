//! Read-while-fill: a storable response whose body is still arriving is
//! stored by one origin fetch at the origin's speed, and every client that
//! wants it reads it as it arrives, at its own speed.

mod common;

use std::time::Duration;

use common::*;

/// Reads a response's head and the first `n` bytes of its body.
fn head_and_first(c: &mut Client, n: usize) -> (String, Vec<u8>) {
    let head = c.reader.read_head().unwrap().unwrap();
    (head, c.reader.read_exact_vec(n).unwrap())
}

fn pattern(range: std::ops::Range<usize>) -> Vec<u8> {
    range.map(|i| pattern_byte(i as u64)).collect()
}

fn request(c: &mut Client, target: &str, extra: &str) {
    c.send(format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\n{extra}\r\n").as_bytes());
}

#[test]
fn waiters_read_the_body_while_it_arrives_from_one_origin_fetch() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let size = 200_000;
    let target = format!("/c?cc=max-age%3D60&size={size}&stall_at=50000");
    let mut first = Client::connect(gw.listen_addr());
    request(&mut first, &target, "");
    // The origin sent the head and 50,000 bytes, and holds the rest.
    let (head, start) = head_and_first(&mut first, 50_000);
    assert!(head.contains("Content-Length: 200000"), "{head}");
    assert!(
        !head.contains("stored"),
        "not stored yet, so the head must not say so:\n{head}"
    );
    assert_eq!(start, pattern(0..50_000));
    // A second client for the same key gets what has arrived, before the rest exists.
    let mut second = Client::connect(gw.listen_addr());
    request(&mut second, &target, "");
    let (head, start) = head_and_first(&mut second, 50_000);
    assert!(head.contains("collapsed"), "{head}");
    assert_eq!(start, pattern(0..50_000));
    origin.open_gate();
    assert_eq!(
        first.reader.read_exact_vec(size - 50_000).unwrap(),
        pattern(50_000..size)
    );
    assert_eq!(
        second.reader.read_exact_vec(size - 50_000).unwrap(),
        pattern(50_000..size)
    );
    assert_eq!(origin.hits_on(&target), 1);
    // Both connections stay usable, and the entry is stored.
    request(&mut second, &target, "");
    let r = second.read_response().unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(r.body, pattern(0..size));
}

#[test]
fn a_client_that_reads_nothing_does_not_hold_up_the_fill() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let size = 3 << 20;
    let target = format!("/c?cc=max-age%3D60&size={size}");
    let mut idle_reader = Client::connect(gw.listen_addr());
    request(&mut idle_reader, &target, "");
    // Without a byte read by that client, the object is stored whole.
    wait_until(Duration::from_secs(10), "the object is stored", || {
        let r = Client::connect(gw.listen_addr()).request(
            format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nCache-Control: only-if-cached\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        r.status == 200 && r.body.len() == size
    });
    let r = idle_reader.read_response().unwrap();
    assert_eq!(r.body, pattern(0..size));
    assert_eq!(origin.hits_on(&target), 1);
}

#[test]
fn a_fill_that_fails_mid_body_closes_its_readers_and_stores_nothing() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let target = "/c?cc=max-age%3D60&size=100000&die_at=40000";
    let mut c = Client::connect(gw.listen_addr());
    request(&mut c, target, "");
    let (head, start) = head_and_first(&mut c, 40_000);
    assert!(!head.contains("stored"), "{head}");
    assert_eq!(start, pattern(0..40_000));
    assert!(
        c.reader.read_exact_vec(60_000).is_err(),
        "the truncated body ends with the connection"
    );
    // Nothing was stored: the next request goes to the origin again.
    let mut again = Client::connect(gw.listen_addr());
    request(&mut again, target, "");
    let head = again.reader.read_head().unwrap().unwrap();
    assert!(head.contains("fwd=uri-miss"), "{head}");
    assert_eq!(origin.hits_on(target), 2);
    assert_eq!(get(gw.listen_addr(), "/after").status, 200);
}

#[test]
fn a_waiter_for_another_variant_does_not_read_the_fill() {
    let origin = Origin::start();
    let gw = start(with_admin(config_for(origin.addr)));
    let target = "/c?cc=max-age%3D60&vary=Accept-Encoding&size=100000&stall_at=50000";
    let mut gzip = Client::connect(gw.listen_addr());
    request(&mut gzip, target, "Accept-Encoding: gzip\r\n");
    let (head, start) = head_and_first(&mut gzip, 50_000);
    assert!(head.contains("X-Origin-Request: 1"), "{head}");
    assert_eq!(start, pattern(0..50_000));
    let mut br = Client::connect(gw.listen_addr());
    request(&mut br, target, "Accept-Encoding: br\r\n");
    wait_until(
        Duration::from_secs(5),
        "the br request waits on the key",
        || admin_stats(&gw)["totals"]["cache"]["coalesced"].as_u64() >= Some(1),
    );
    origin.open_gate();
    assert_eq!(
        gzip.reader.read_exact_vec(50_000).unwrap(),
        pattern(50_000..100_000)
    );
    // The br request was answered by its own fetch, never from the gzip variant.
    let r = br.read_response().unwrap();
    assert_eq!(r.header("x-origin-request"), Some("2"));
    assert_eq!(r.body, pattern(0..100_000));
    assert_eq!(origin.hits_on(target), 2);
}

#[test]
fn a_body_of_unknown_length_over_the_limit_streams_whole_and_is_not_stored() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache.as_mut().unwrap().max_object_size = Some(100_000);
    let gw = start(config);
    let size = 300_000;
    let target = format!("/c?cc=max-age%3D60&chunked=1&size={size}");
    let r = get(gw.listen_addr(), &target);
    assert_eq!(r.body, pattern(0..size));
    let r = get(gw.listen_addr(), &target);
    assert_eq!(r.body, pattern(0..size));
    assert_eq!(origin.hits_on(&target), 2, "too large to store");
}

#[test]
fn a_finished_fill_gives_its_room_back_while_its_client_still_reads_nothing() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    // Room for one fill of 600 KB at a time: fills hold their body in memory.
    config.workers.per_core.cache_size = 1 << 20;
    let gw = start(config);
    let size = 600_000;
    let first = format!("/c?cc=max-age%3D60&size={size}&body=first");
    let second = format!("/c?cc=max-age%3D60&size={size}&body=second");
    let mut a = Client::connect(gw.listen_addr());
    request(&mut a, &first, "");
    let stored = |target: &str| {
        Client::connect(gw.listen_addr())
            .request(
                format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nCache-Control: only-if-cached\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .status
            == 200
    };
    wait_until(
        Duration::from_secs(10),
        "the first object is stored",
        || stored(&first),
    );
    // While the first client still reads nothing, its fill is done: a second
    // fill gets the room back.
    let mut b = Client::connect(gw.listen_addr());
    request(&mut b, &second, "");
    wait_until(
        Duration::from_secs(10),
        "the second object is stored",
        || stored(&second),
    );
    assert_eq!(a.read_response().unwrap().body, pattern(0..size));
    assert_eq!(b.read_response().unwrap().body, pattern(0..size));
}

#[test]
fn past_the_fill_budget_a_response_streams_at_its_clients_pace() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.per_core.cache_size = 1 << 20;
    let gw = start(config);
    let size = 600_000;
    // The first fill stalls half-way, holding its room.
    let held = format!("/c?cc=max-age%3D60&size={size}&stall_at=300000&body=held");
    let mut a = Client::connect(gw.listen_addr());
    request(&mut a, &held, "");
    let (_, start) = head_and_first(&mut a, 300_000);
    assert_eq!(start, pattern(0..300_000));
    // No room for a second fill: it streams at its client's pace, and is
    // stored only once that client took it all.
    let second = format!("/c?cc=max-age%3D60&size={size}&body=second");
    let r = get(gw.listen_addr(), &second);
    assert_eq!(r.body, pattern(0..size));
    assert!(!r.header("cache-status").unwrap().contains("collapsed"));
    let again = get(gw.listen_addr(), &second);
    assert!(again.header("cache-status").unwrap().contains("hit"));
    origin.open_gate();
    assert_eq!(
        a.reader.read_exact_vec(300_000).unwrap(),
        pattern(300_000..size)
    );
}
