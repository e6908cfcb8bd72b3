//! What an upstream may not do to the gateway's clients: bytes sent on an
//! idle pooled connection are never read as the next request's response
//! (which would hand one client another's page, and cache it), and a pooled
//! connection the server closed never turns a request into a 502.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;

/// An origin that, after each response, waits for the test's word and then
/// writes a second, unsolicited response on the same connection (a late or
/// duplicated answer), while the connection sits idle in the gateway's pool.
struct StrayOrigin {
    addr: SocketAddr,
    /// Stray responses the test allowed so far.
    allowed: Arc<(Mutex<usize>, Condvar)>,
    /// Stray responses written.
    written: Arc<AtomicUsize>,
}

impl StrayOrigin {
    fn start() -> StrayOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let allowed = Arc::new((Mutex::new(0usize), Condvar::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let (a, w) = (allowed.clone(), written.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (a, w) = (a.clone(), w.clone());
                std::thread::spawn(move || stray_connection(stream, &a, &w));
            }
        });
        StrayOrigin {
            addr,
            allowed,
            written,
        }
    }

    /// Lets one stray response go out and waits until it was written.
    fn send_stray(&self) {
        let target = {
            let (lock, cv) = &*self.allowed;
            let mut n = lock.lock().unwrap();
            *n += 1;
            cv.notify_all();
            *n
        };
        wait_until(
            Duration::from_secs(5),
            "the stray response went out",
            || self.written.load(Ordering::SeqCst) >= target,
        );
    }
}

fn stray_connection(stream: TcpStream, allowed: &(Mutex<usize>, Condvar), written: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    while let Ok(Some(head)) = reader.read_head() {
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        let body = format!("answer for {target}");
        let reply = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        if stream.write_all(reply(&body).as_bytes()).is_err() {
            return;
        }
        // Wait for the test's word, then answer a request nobody sent.
        let (lock, cv) = allowed;
        let mut n = lock.lock().unwrap();
        let mine = written.load(Ordering::SeqCst) + 1;
        while *n < mine {
            let (guard, timeout) = cv.wait_timeout(n, Duration::from_secs(10)).unwrap();
            n = guard;
            if timeout.timed_out() {
                return;
            }
        }
        drop(n);
        let stray = format!("stray bytes, not an answer to anything after {target}");
        if stream.write_all(reply(&stray).as_bytes()).is_err() {
            return;
        }
        written.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn bytes_an_upstream_sends_on_an_idle_connection_are_never_a_response() {
    let origin = StrayOrigin::start();
    let gw = start(with_admin(config_for(origin.addr)));
    let victims = 20;
    for i in 0..victims {
        let target = format!("/victim/{i}");
        let r = get(gw.listen_addr(), &target);
        assert_eq!(
            r.text(),
            format!("answer for {target}"),
            "victim {i} got another exchange's bytes"
        );
        // The connection is back in the pool; now the origin writes on it.
        origin.send_stray();
    }
    // Nothing crossed into the cache either: every victim's entry is its own.
    for i in 0..victims {
        let target = format!("/victim/{i}");
        let r = get(gw.listen_addr(), &target);
        assert!(r.header("cache-status").unwrap().contains("hit"));
        assert_eq!(r.text(), format!("answer for {target}"));
    }
    let stats = admin_stats(&gw);
    assert!(
        stats["totals"]["upstream_pool_discarded"].as_u64().unwrap() >= victims - 1,
        "{stats}"
    );
}

/// An origin with a short keep-alive. `Mode::Close`: an idle connection is
/// closed after `idle`. `Mode::DropNext`: after `idle` the connection is
/// marked stale and the next request on it is read, then the connection
/// closed without an answer (the server's close crossing the request).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Close,
    DropNext,
}

struct KeepAliveOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections that went idle past the keep-alive.
    idled: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl KeepAliveOrigin {
    fn start(mode: Mode, idle: Duration) -> KeepAliveOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let o = KeepAliveOrigin {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            idled: Arc::default(),
            answered: Arc::default(),
            dropped: Arc::default(),
        };
        let (c, i, a, d) = (
            o.connections.clone(),
            o.idled.clone(),
            o.answered.clone(),
            o.dropped.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (i, a, d) = (i.clone(), a.clone(), d.clone());
                std::thread::spawn(move || {
                    let _ = keepalive_connection(stream, mode, idle, &i, &a, &d);
                });
            }
        });
        o
    }
}

fn keepalive_connection(
    stream: TcpStream,
    mode: Mode,
    idle: Duration,
    idled: &AtomicUsize,
    answered: &AtomicUsize,
    dropped: &AtomicUsize,
) -> std::io::Result<()> {
    let mut stream = stream;
    let mut buf = Vec::new();
    let mut stale = false;
    loop {
        // Wait for a request, at most `idle` while the connection is fresh.
        stream.set_read_timeout(if stale { None } else { Some(idle) })?;
        let mut chunk = [0u8; 4096];
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                idled.fetch_add(1, Ordering::SeqCst);
                match mode {
                    Mode::Close => return Ok(()),
                    Mode::DropNext => {
                        stale = true;
                        continue;
                    }
                }
            }
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        // Whole requests only: head plus Content-Length body.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            buf.drain(..end + 4 + length);
            if stale {
                dropped.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            // Counted before the answer goes out, so a client that has it sees the count.
            answered.fetch_add(1, Ordering::SeqCst);
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nupdated")?;
        }
    }
}

/// `count` requests at once, each on its own client connection, its head
/// and its body in two writes; returns their statuses.
fn concurrent_writes(addr: SocketAddr, method: &str, count: usize) -> Vec<u16> {
    let clients: Vec<_> = (0..count)
        .map(|i| {
            let method = method.to_string();
            in_thread(move || {
                let mut c = Client::connect(addr);
                let body = format!("{{\"n\":{i:03}}}");
                c.send(
                    format!(
                        "{method} /items/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                c.reader.inner.flush().unwrap();
                c.send(body.as_bytes());
                c.read_response().map(|r| r.status).unwrap_or(0)
            })
        })
        .collect();
    clients
        .into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect()
}

#[test]
fn a_pooled_connection_the_server_closed_never_fails_a_request() {
    let origin = KeepAliveOrigin::start(Mode::Close, Duration::from_secs(1));
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    let gw = start(config);
    let warm = concurrent_writes(gw.listen_addr(), "PUT", 50);
    assert!(warm.iter().all(|&s| s == 200), "{warm:?}");
    let pooled = origin.connections.load(Ordering::SeqCst);
    // Every pooled connection goes past the origin's 1 s keep-alive and is closed.
    wait_until(
        Duration::from_secs(10),
        "the origin closed its idle connections",
        || origin.idled.load(Ordering::SeqCst) >= pooled,
    );
    let statuses = concurrent_writes(gw.listen_addr(), "PUT", 50);
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(ok, 50, "{statuses:?}");
}

#[test]
fn pooled_connections_the_server_closed_leave_the_pool_without_waiting_for_a_request() {
    // The origin's keep-alive (300 ms) is far below the gateway's idle
    // timeout (60 s): each pooled connection it closes must leave the pool
    // at the worker's next sweep, not when a request meets it.
    let origin = KeepAliveOrigin::start(Mode::Close, Duration::from_millis(300));
    let mut config = with_admin(config_for(origin.addr));
    config.routes[0].cache = None;
    config.workers.per_core.upstream_idle_timeout = Duration::from_secs(60);
    let gw = start(config);
    let warm = concurrent_writes(gw.listen_addr(), "PUT", 20);
    assert!(warm.iter().all(|&s| s == 200), "{warm:?}");
    let pooled = origin.connections.load(Ordering::SeqCst);
    let idle = || {
        admin_stats(&gw)["totals"]["upstream_pool_idle"]
            .as_u64()
            .unwrap()
    };
    assert!(idle() > 0, "connections were pooled");
    wait_until(
        Duration::from_secs(10),
        "the origin closed its idle connections",
        || origin.idled.load(Ordering::SeqCst) >= pooled,
    );
    // The sweep runs at least once a second: well inside this deadline,
    // and far from the idle timeout.
    wait_until(
        Duration::from_secs(5),
        "the closed connections left the pool",
        || idle() == 0,
    );
    let stats = admin_stats(&gw);
    assert!(
        stats["totals"]["upstream_pool_discarded"].as_u64().unwrap() > 0,
        "{stats}"
    );
    // And the next requests are served on fresh connections.
    let statuses = concurrent_writes(gw.listen_addr(), "PUT", 20);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}

#[test]
fn a_request_crossing_the_servers_close_is_sent_again_whatever_the_method() {
    for method in ["PUT", "POST"] {
        let origin = KeepAliveOrigin::start(Mode::DropNext, Duration::from_millis(300));
        let mut config = config_for(origin.addr);
        config.routes[0].cache = None;
        let gw = start(config);
        let warm = concurrent_writes(gw.listen_addr(), method, 50);
        assert!(warm.iter().all(|&s| s == 200), "{warm:?}");
        let pooled = origin.connections.load(Ordering::SeqCst);
        wait_until(
            Duration::from_secs(10),
            "every pooled connection went stale",
            || origin.idled.load(Ordering::SeqCst) >= pooled,
        );
        let statuses = concurrent_writes(gw.listen_addr(), method, 50);
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        assert_eq!(ok, 50, "{method}: {statuses:?}");
        assert!(
            origin.dropped.load(Ordering::SeqCst) > 0,
            "{method}: the stale connections were used and failed before any response byte"
        );
        assert_eq!(
            origin.answered.load(Ordering::SeqCst),
            100,
            "{method}: each request answered once"
        );
    }
}
