//! The io_uring receive path over real sockets: idle client connections
//! receive into the worker's provided-buffer ring (`[workers]
//! recv_buffers`), so they hold no buffer while they wait. Attacked with
//! more readable connections than buffers, connections closed or reset
//! while their receive is armed, a client flooding while its request is
//! served, and a shutdown with receives armed; the
//! epoll driver, which has no ring, serves the same way. Plain upstream
//! connections receive from a ring of their own (`[workers]
//! upstream_recv_buffers`), attacked with more responses arriving at once
//! than it holds, and with large responses one after another (the receive
//! cancelled mid-relay must not cost the connection its place in the pool).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ringgate::config::DriverChoice;

/// One io_uring worker with a ring of `buffers` (its admin API on).
fn gateway(origin: &Origin, driver: DriverChoice, buffers: u16) -> ringgate::Handle {
    let mut config = with_admin(config_for(origin.addr));
    config.workers.driver = driver;
    config.workers.recv_buffers = buffers;
    start(config)
}

/// A 200 whose body is the origin's `/bytes/{size}` pattern, whole and in order.
fn assert_whole_pattern(r: &Response, size: u64) {
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, size);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)),
        "a body came out of order or mixed"
    );
}

fn empties(gw: &ringgate::Handle) -> u64 {
    admin_stats(gw)["workers"][0]["recv_buffers_empty"]
        .as_u64()
        .expect("recv_buffers_empty in /stats")
}

/// `n` keep-alive connections that each had one request answered.
fn warm_connections(gw: &ringgate::Handle, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = Client::connect(gw.listen_addr());
            let r = c.request(format!("GET /echo/warm-{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(r.status, 200);
            c
        })
        .collect()
}

#[test]
fn more_readable_connections_than_buffers_are_all_answered_in_order() {
    let origin = Origin::start();
    let gw = gateway(&origin, DriverChoice::IoUring, 2);
    // Receives stay armed across requests (multishot, Linux 6.0 and later).
    // (and, Linux 6.17 and later, each arming ends after 4 buffers' worth).
    let ring = &gw.workers()[0].recv_ring;
    assert!(ring.starts_with("2 x 1024 B, multishot"), "{ring}");
    let conns = warm_connections(&gw, 24);
    // Every connection's next two requests arrive together (pipelined),
    // all connections at once: 24 receives armed on a ring of 2 buffers.
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                c.send(
                    format!(
                        "GET /echo/{i}-a HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/{i}-b HTTP/1.1\r\nHost: t\r\n\r\n"
                    )
                    .as_bytes(),
                );
                let a = c.read_response().unwrap();
                let b = c.read_response().unwrap();
                (i, a, b)
            })
        })
        .collect();
    for t in threads {
        let (i, a, b) = t.join().unwrap();
        assert_eq!(a.status, 200);
        assert!(
            a.text().starts_with(&format!("GET /echo/{i}-a ")),
            "{}",
            a.text()
        );
        assert!(
            b.text().starts_with(&format!("GET /echo/{i}-b ")),
            "{}",
            b.text()
        );
    }
    // Nothing lost with the ring: a new connection is served as usual.
    assert_eq!(get(gw.listen_addr(), "/after").status, 200);
}

#[test]
fn connections_closed_or_reset_while_their_receive_is_armed_give_their_buffer_back() {
    let origin = Origin::start();
    let gw = gateway(&origin, DriverChoice::IoUring, 2);
    for round in 0..40 {
        let mut c = warm_connections(&gw, 1).remove(0);
        match round % 3 {
            // A FIN while the receive waits.
            0 => drop(c),
            // A reset (SO_LINGER 0) while it waits.
            1 => {
                socket2::SockRef::from(&c.reader.inner)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(c);
            }
            // Half a request, then gone.
            _ => {
                c.send(b"GET /echo/half HTTP/1.1\r\nHo");
                drop(c);
            }
        }
    }
    // Had any of those kept a ring buffer, a ring of two would be empty
    // by now: one request at a time never finds it so.
    for i in 0..10 {
        let mut c = Client::connect(gw.listen_addr());
        let r = c.request(format!("GET /echo/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
    }
    assert_eq!(empties(&gw), 0);
}

#[test]
fn a_shutdown_with_receives_armed_ends_cleanly() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.driver = DriverChoice::IoUring;
    config.workers.recv_buffers = 4;
    config.timeouts.shutdown_grace = Duration::from_secs(1);
    let gw = start(config);
    let mut conns = warm_connections(&gw, 16);
    // One connection is mid-head when the stop comes.
    conns[0].send(b"GET /echo/late HTTP/1.1\r\n");
    let stopped = in_thread(move || gw.shutdown());
    stopped
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway stops with receives armed");
    for c in &mut conns[1..] {
        assert!(c.is_closed_by_peer(), "idle connections are closed");
    }
}

#[test]
fn the_epoll_driver_has_no_ring_and_serves_the_same() {
    let origin = Origin::start();
    let gw = gateway(&origin, DriverChoice::Epoll, 256);
    assert_eq!(gw.workers()[0].recv_ring, "none");
    let mut conns = warm_connections(&gw, 8);
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.request(format!("GET /echo/again-{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
    }
    let mut raw = TcpStream::connect(gw.listen_addr()).unwrap();
    raw.write_all(b"GET /echo/raw HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut raw, &mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn no_ring_when_turned_off() {
    let origin = Origin::start();
    let gw = gateway(&origin, DriverChoice::IoUring, 0);
    assert_eq!(gw.workers()[0].recv_ring, "none");
    assert_eq!(get(gw.listen_addr(), "/x").status, 200);
}

/// A client that floods bytes while its own request is in flight (nobody
/// reads it meanwhile) must not take the ring from everybody else: its
/// armed receive is cancelled once it holds a few completions, and the
/// rest of the flood waits in its socket. (One burst can still fill up to
/// 32 buffers, the kernel's receives per wake-up, before the cancel lands:
/// the ring here holds 64, the flood is worth 96.)
#[test]
fn a_client_flooding_while_its_request_is_served_leaves_buffers_for_others() {
    let origin = Origin::start();
    let gw = gateway(&origin, DriverChoice::IoUring, 64);
    let ring = &gw.workers()[0].recv_ring;
    assert!(ring.contains(", multishot"), "{ring}");
    let others = warm_connections(&gw, 3);
    origin.set_delay(Duration::from_millis(700));
    let mut attacker = Client::connect(gw.listen_addr());
    attacker.reader.inner.set_nodelay(true).unwrap();
    attacker.send(b"GET /echo/first HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until(Duration::from_secs(10), "the request at the origin", || {
        origin.hits_on("/echo/first") == 1
    });
    // 96 KiB in 1 KiB writes: 96 ring buffers' worth, the ring holds 64.
    for _ in 0..96 {
        attacker.send(&[b'x'; 1024]);
    }
    // Three others, at once, while the attacker's request is still served.
    let threads: Vec<_> = others
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                c.request(format!("GET /echo/other-{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    let first = attacker
        .read_response()
        .expect("the attacker's own response");
    assert_eq!(first.status, 200);
    assert_eq!(empties(&gw), 0, "the flood left the ring empty for others");
    origin.set_delay(Duration::ZERO);
    // The gateway goes on serving.
    assert_eq!(get(gw.listen_addr(), "/echo/after").status, 200);
}

fn upstream_empties(gw: &ringgate::Handle) -> u64 {
    admin_stats(gw)["workers"][0]["upstream_recv_buffers_empty"]
        .as_u64()
        .expect("upstream_recv_buffers_empty in /stats")
}

/// Responses from many upstream connections arriving at once, faster than
/// the worker relays them (each connection's receive holds completions
/// while its last piece is written out), on an upstream ring of two 4 KiB
/// buffers:
/// reads that find it empty use buffers of their own, every body arrives
/// whole and in order, and the pooled connections serve again.
#[test]
fn more_upstream_responses_at_once_than_ring_buffers_lose_nothing() {
    const SIZE: u64 = 300_000;
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.workers.driver = DriverChoice::IoUring;
    config.workers.upstream_recv_buffers = 2;
    config.workers.upstream_recv_buffer_size = 4096;
    let gw = start(config);
    let ring = &gw.workers()[0].upstream_ring;
    assert!(ring.starts_with("2 x 4096 B, multishot"), "{ring}");
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let addr = gw.listen_addr();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.reader.inner.set_nodelay(true).unwrap();
                c.request(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            })
        })
        .collect();
    for t in threads {
        assert_whole_pattern(&t.join().unwrap(), SIZE);
    }
    assert!(
        upstream_empties(&gw) > 0,
        "twelve responses never found two buffers taken: the case was not met"
    );
    // The connections went back to the pool, armed: they serve again.
    let reused = admin_stats(&gw)["workers"][0]["upstream_reuses"]
        .as_u64()
        .unwrap();
    for i in 0..5 {
        let r = get(gw.listen_addr(), &format!("/echo/again-{i}"));
        assert_eq!(r.status, 200);
    }
    let now = admin_stats(&gw)["workers"][0]["upstream_reuses"]
        .as_u64()
        .unwrap();
    assert!(
        now >= reused + 5,
        "pooled connections were not reused: {reused} -> {now}"
    );
}

/// Responses one after another on one client connection, each taking many
/// ring buffers: while one is relayed its upstream receive piles up
/// completions and the driver cancels it, and the cancel's own last
/// completion can come after the exchange took its last bytes. That must
/// not make the pooled connection look written on: every request is served
/// over the first upstream connection.
#[test]
fn responses_taking_many_ring_buffers_leave_their_upstream_connection_pooled() {
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.workers.driver = DriverChoice::IoUring;
    config.workers.upstream_recv_buffer_size = 4096;
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    c.reader.inner.set_nodelay(true).unwrap();
    // 16 and 98 ring buffers' worth.
    for size in [64_000u64, 400_000] {
        for _ in 0..10 {
            let r = c.request(format!("GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_whole_pattern(&r, size);
        }
    }
    let stats = &admin_stats(&gw)["workers"][0];
    assert_eq!(
        (
            stats["upstream_connects"].as_u64(),
            stats["upstream_reuses"].as_u64(),
            stats["upstream_pool_discarded"].as_u64()
        ),
        (Some(1), Some(19), Some(0)),
        "twenty exchanges over one upstream connection, none discarded: {stats}"
    );
}

#[test]
fn the_upstream_ring_can_be_turned_off() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.driver = DriverChoice::IoUring;
    config.workers.upstream_recv_buffers = 0;
    let gw = start(config);
    assert_eq!(gw.workers()[0].upstream_ring, "none");
    for i in 0..3 {
        assert_eq!(get(gw.listen_addr(), &format!("/echo/{i}")).status, 200);
    }
}
