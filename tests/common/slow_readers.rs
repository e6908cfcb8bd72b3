//! The slow-readers scenario, shared by `tests/slow_readers.rs` (which
//! asserts its bounds) and `benches/slow_readers.rs` (which reports it for
//! the release build): many clients with small receive windows read one
//! cold, cacheable object a little at a time, from the gateway run as its
//! own process so that its memory is measured alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub clients: usize,
    pub object: usize,
    pub origin_fetches: usize,
    /// Clients that had their response head while all of them were slow.
    pub answered: usize,
    /// How long until they all had it (or the 30 s the run waits at most).
    pub all_answered_after: Duration,
    /// Resident memory of the gateway: at start, its peak, and once the
    /// readers left and the workers' sweeps gave back what the burst used.
    pub start_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
    /// A request after the readers left was a hit.
    pub hit_after: bool,
}

fn config(origin: SocketAddr, admin: u16, workers: usize) -> String {
    format!(
        r#"
[[listeners]]
address = "{{listen}}"
[workers]
count = {workers}
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

/// A client with an 8 KiB receive window, its request sent.
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

/// Reads the rest of a response whose first bytes are in `seen`; returns the body.
fn read_rest(stream: &mut TcpStream, seen: &mut Vec<u8>, object: usize) -> Vec<u8> {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed inside the head");
        seen.extend_from_slice(&chunk[..n]);
    };
    let mut body = seen[head_end..].to_vec();
    while body.len() < object {
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("{e} after {} of {object} bytes", body.len()));
        assert!(n > 0, "closed after {} of {object} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    body
}

/// Runs the scenario: `clients` slow readers of one cold `object`-byte
/// response for `slow_for` (each takes 2 KiB every 10 ms), then ten of them
/// read the rest (checked byte by byte), then all leave.
pub fn run(clients: usize, object: usize, workers: usize, slow_for: Duration) -> Report {
    run_binary(
        env!("CARGO_BIN_EXE_ringgate"),
        clients,
        object,
        workers,
        slow_for,
    )
}

/// [`run`] against another build of the binary.
pub fn run_binary(
    binary: &str,
    clients: usize,
    object: usize,
    workers: usize,
    slow_for: Duration,
) -> Report {
    let origin = Origin::start();
    let admin_port = free_port();
    let gw =
        GatewayProcess::start_binary(binary, &config(origin.addr, admin_port, workers), |_| {});
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let target = format!("/c?cc=max-age%3D600&size={object}");
    let (start_kib, _) = gw.memory_kib();

    let mut readers: Vec<(TcpStream, Vec<u8>)> = (0..clients)
        .map(|_| (slow_client(gw.addr, &target), Vec::new()))
        .collect();
    // A slow client is the behaviour under test: this pause is the load's
    // pace, not a synchronisation.
    // They stay slow for `slow_for`, and on until every one has its head
    // (a loaded machine may take longer to accept a thousand), within 30 s.
    let started = Instant::now();
    let slow_until = started + slow_for;
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut chunk = [0u8; 2048];
    let mut peak_kib = 0;
    let has_head = |seen: &[u8]| seen.starts_with(b"HTTP/1.1 200");
    while Instant::now() < slow_until
        || (Instant::now() < give_up && !readers.iter().all(|(_, seen)| has_head(seen)))
    {
        for (index, (stream, seen)) in readers.iter_mut().enumerate() {
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
    let all_answered_after = started.elapsed();
    let origin_fetches = origin.hits_on(&target);
    let answered = readers.iter().filter(|(_, seen)| has_head(seen)).count();
    for (stream, seen) in readers.iter_mut().take(10) {
        let body = read_rest(stream, seen, object);
        assert_eq!(body.len(), object);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64)),
            "the body is the origin's"
        );
    }
    peak_kib = peak_kib.max(gw.memory_kib().1);

    drop(readers);
    wait_until(
        Duration::from_secs(30),
        "every reader's connection closed",
        || connections(admin) == 0,
    );
    // Free buffers the burst left are given back by the workers' periodic sweep.
    let settled = start_kib + (object / 1024) as u64 + 12 * 1024;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.memory_kib().0 > settled && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after_kib, _) = gw.memory_kib();
    let r = Client::connect(gw.addr).request(
        format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let hit_after =
        r.header("cache-status").is_some_and(|s| s.contains("hit")) && r.body.len() == object;
    assert!(gw.stop().success());
    Report {
        clients,
        object,
        origin_fetches,
        answered,
        all_answered_after,
        start_kib,
        peak_kib,
        after_kib,
        hit_after,
    }
}
