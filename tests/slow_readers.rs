//! Read-while-fill under the load that used to break coalescing: a
//! thousand slow readers of one cold, cacheable 4 MiB object. The origin
//! must be asked once, the gateway's memory must stay near one copy of the
//! object, and fall back once the readers are gone. The gateway runs as its
//! own process so that its memory is measured alone.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const OBJECT: usize = 4 << 20;
const CLIENTS: usize = 1000;
/// How long the readers stay slow: three coalescing timeouts, so a waiter
/// that gave up on the first fetch would have fetched on its own.
const SLOW_FOR: Duration = Duration::from_secs(3);

fn config(origin: SocketAddr, admin: u16) -> String {
    format!(
        r#"
[[listeners]]
address = "{{listen}}"
[workers]
count = 2
pin = false
[upstreams.app]
servers = ["{origin}"]
[[routes]]
upstream = "app"
[routes.cache]
coalesce_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
"#
    )
}

/// A client with a small receive window that reads a little at a time.
fn slow_client(addr: SocketAddr, target: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
        .unwrap();
    stream.set_nonblocking(true).unwrap();
    stream
}

fn connections(admin: SocketAddr) -> u64 {
    let r = Client::connect(admin)
        .request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    v["totals"]["connections"].as_u64().unwrap()
}

#[test]
fn a_thousand_slow_readers_of_a_cold_object_make_one_origin_fetch_in_bounded_memory() {
    let origin = Origin::start();
    let admin_port = free_port();
    let gw = GatewayProcess::start(&config(origin.addr, admin_port), |_| {});
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let target = format!("/c?cc=max-age%3D600&size={OBJECT}");
    let (base_kib, _) = gw.memory_kib();

    let mut clients: Vec<(TcpStream, Vec<u8>)> = (0..CLIENTS)
        .map(|_| (slow_client(gw.addr, &target), Vec::new()))
        .collect();
    // Every reader takes 2 KiB every 10 ms: a slow client is the behaviour
    // under test, so this pause is the load's pace, not a synchronisation.
    let slow_until = Instant::now() + SLOW_FOR;
    let mut chunk = [0u8; 2048];
    let mut peak_kib = 0;
    while Instant::now() < slow_until {
        for (index, (stream, seen)) in clients.iter_mut().enumerate() {
            if let Ok(n) = stream.read(&mut chunk) {
                // Keep the head of every response, and all of the first ten.
                if index < 10 || seen.len() < 4096 {
                    seen.extend_from_slice(&chunk[..n]);
                }
            }
        }
        peak_kib = peak_kib.max(gw.memory_kib().0);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        origin.hits_on(&target),
        1,
        "{CLIENTS} slow readers of one cold object make one origin fetch"
    );
    let answered = clients
        .iter()
        .filter(|(_, seen)| seen.starts_with(b"HTTP/1.1 200"))
        .count();
    assert_eq!(
        answered, CLIENTS,
        "every reader got its head while the others were slow"
    );

    // A few read the rest at full speed: the whole object, every byte right.
    for (index, (stream, seen)) in clients.iter_mut().take(10).enumerate() {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let head_end = loop {
            if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed inside the head");
            seen.extend_from_slice(&chunk[..n]);
        };
        let mut body = seen[head_end..].to_vec();
        let mut rest = vec![0u8; 64 * 1024];
        while body.len() < OBJECT {
            let n = stream.read(&mut rest).unwrap_or_else(|e| {
                panic!("reader {index}: {e} after {} of {OBJECT} bytes", body.len())
            });
            assert!(
                n > 0,
                "reader {index}: closed after {} of {OBJECT} bytes",
                body.len()
            );
            body.extend_from_slice(&rest[..n]);
        }
        assert_eq!(body.len(), OBJECT);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64)),
            "the body is the origin's"
        );
    }
    let (_, hwm_kib) = gw.memory_kib();
    peak_kib = peak_kib.max(hwm_kib);

    // The readers leave; the gateway keeps the object once.
    drop(clients);
    wait_until(
        Duration::from_secs(20),
        "every reader's connection closed",
        || connections(admin) == 0,
    );
    // Free buffers the burst left are given back by the workers' periodic sweep.
    let object_kib = (OBJECT / 1024) as u64;
    let settled = base_kib + object_kib + 12 * 1024;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.memory_kib().0 > settled && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after_kib, _) = gw.memory_kib();
    let r = Client::connect(gw.addr).request(
        format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(
        r.header("cache-status").is_some_and(|s| s.contains("hit")),
        "{}",
        r.head
    );
    assert_eq!(r.body.len(), OBJECT);
    assert_eq!(origin.hits_on(&target), 1);

    eprintln!(
        "slow readers: {CLIENTS} clients, origin fetches 1, RSS at start {base_kib} KiB, peak {peak_kib} KiB, after the readers left {after_kib} KiB (object {object_kib} KiB)"
    );
    assert!(
        peak_kib < 100 * 1024 + object_kib,
        "peak RSS {peak_kib} KiB is over 100 MiB plus the object"
    );
    assert!(
        after_kib <= settled,
        "RSS after the readers left: {after_kib} KiB, not back to {base_kib} KiB plus the object (within 12 MiB)"
    );
    assert!(gw.stop().success());
}
