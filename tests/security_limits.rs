//! Limits that bound a slow or abusive client: one address cannot take every
//! connection slot, idle connections give way to new clients at the caps,
//! slow request bodies hold no upstream connection, and the config cannot
//! carry values that overflow.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// A client connection from a chosen loopback address (127.0.0.0/8 all
/// reach the gateway on 127.0.0.1).
fn connect_from(source: &str, to: SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    Client {
        reader: BufReader::new(stream),
    }
}

const GET: &[u8] = b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";

/// A keep-alive connection that was served once and now sits idle.
fn idle_connection(source: &str, to: SocketAddr) -> Client {
    let mut c = connect_from(source, to);
    assert_eq!(c.request(GET).status, 200);
    c
}

fn stat(gw: &ringgate::Handle, name: &str) -> u64 {
    admin_stats(gw)["totals"][name].as_u64().unwrap_or(0)
}

#[test]
fn one_address_cannot_take_every_connection_slot() {
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.workers.per_core.max_connections_per_ip = Some(4);
    let gw = start(config);
    let addr = gw.listen_addr();
    // Four idle connections from one address: the fifth closes the oldest.
    let mut idle: Vec<Client> = (0..4).map(|_| idle_connection("127.0.0.2", addr)).collect();
    let mut fifth = connect_from("127.0.0.2", addr);
    assert_eq!(fifth.request(GET).status, 200);
    assert!(
        idle[0].is_closed_by_peer(),
        "the oldest idle connection of that address gave way"
    );
    assert_eq!(idle[1].request(GET).status, 200, "the others are kept");
    // Four busy connections (heads half sent) from another address: a fifth gets 503.
    let mut busy: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = connect_from("127.0.0.3", addr);
            c.send(b"GET /echo HTTP/1.1\r\n");
            c
        })
        .collect();
    wait_until(
        Duration::from_secs(5),
        "the four busy connections are open",
        || admin_stats(&gw)["totals"]["connections"].as_u64() >= Some(8),
    );
    let mut refused = connect_from("127.0.0.3", addr);
    let r = refused.read_response().unwrap();
    assert_eq!(r.status, 503);
    assert!(refused.is_closed_by_peer());
    // Everyone else is served, and the busy ones finish normally.
    assert_eq!(connect_from("127.0.0.4", addr).request(GET).status, 200);
    for c in &mut busy {
        c.send(b"Host: t\r\n\r\n");
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    assert!(stat(&gw, "per_ip_refused") >= 1);
    assert!(stat(&gw, "idle_closed_for_room") >= 1);
    let metrics = Client::connect(gw.admin_addr().unwrap())
        .request(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .text();
    assert!(
        metrics.contains("ringgate_connections_refused_per_ip_total{worker=\"0\"} 1"),
        "{metrics}"
    );
    drop(idle);
}

#[test]
fn at_the_connection_cap_idle_connections_give_way_to_new_clients() {
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.workers.per_core.max_connections = 8;
    let gw = start(config);
    let addr = gw.listen_addr();
    let mut hoard: Vec<Client> = (0..8).map(|_| idle_connection("127.0.0.2", addr)).collect();
    // Another client is served at once; the oldest idle connection was closed for it.
    let mut newcomer = connect_from("127.0.0.3", addr);
    assert_eq!(newcomer.request(GET).status, 200);
    assert!(hoard[0].is_closed_by_peer());
    assert!(stat(&gw, "idle_closed_for_room") >= 1);
    // With every slot busy, a new client waits in the backlog (it is never reset)
    // and is served as soon as a slot frees.
    drop(hoard);
    drop(newcomer);
    wait_until(
        Duration::from_secs(5),
        "the idle connections closed",
        || admin_stats(&gw)["totals"]["connections"].as_u64() == Some(0),
    );
    let mut busy: Vec<Client> = (0..8)
        .map(|_| {
            let mut c = connect_from("127.0.0.2", addr);
            c.send(b"GET /echo HTTP/1.1\r\n");
            c
        })
        .collect();
    wait_until(Duration::from_secs(5), "every slot is busy", || {
        admin_stats(&gw)["totals"]["connections"].as_u64() == Some(8)
    });
    let waiting = in_thread(move || {
        let mut c = connect_from("127.0.0.3", addr);
        c.request(GET).status
    });
    wait_until(Duration::from_secs(5), "the cap is reported", || {
        stat(&gw, "connection_cap_reached") >= 1
    });
    busy[0].send(b"Host: t\r\nConnection: close\r\n\r\n");
    assert_eq!(busy[0].read_response().unwrap().status, 200);
    assert_eq!(waiting.recv_timeout(Duration::from_secs(10)).unwrap(), 200);
}

#[test]
fn slow_request_bodies_hold_no_upstream_connection() {
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.routes[0].cache = None;
    let gw = start(config);
    let addr = gw.listen_addr();
    let clients = 200;
    let pieces = 10;
    let body = "x".repeat(pieces * 10);
    let mut slow: Vec<Client> = (0..clients)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.send(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            c
        })
        .collect();
    // Every client trickles its body, a piece at a time, all at once.
    for piece in 0..pieces - 1 {
        for c in &mut slow {
            c.send(&body.as_bytes()[piece * 10..piece * 10 + 10]);
            c.reader.inner.flush().unwrap();
        }
    }
    // Every body is all but complete: the gateway holds them, the origin has seen nothing.
    let bytes_in = || admin_stats(&gw)["totals"]["connections"].as_u64();
    wait_until(Duration::from_secs(5), "every client is connected", || {
        bytes_in() == Some(clients as u64)
    });
    // The last pieces go out one client at a time: each request reaches the
    // origin only once its body is whole, and a pooled connection serves it.
    let last = &body.as_bytes()[(pieces - 1) * 10..];
    for c in &mut slow {
        c.send(last);
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.text().ends_with(&format!("body={}", body.len())));
    }
    let used = origin.connections();
    assert!(
        used <= 2,
        "{clients} slow bodies held {used} origin connections"
    );
}

#[test]
fn a_body_larger_than_the_buffer_still_streams() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    config.routes[0].request_buffering = 1024;
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let body = vec![b'y'; 300_000];
    c.send(
        format!(
            "PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(&body);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("body=300000"), "{}", r.text());
}

#[test]
fn a_buffered_chunked_body_is_forwarded_whole() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n");
    let interim = c.reader.read_head().unwrap().unwrap();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    c.send(b"5\r\nhello\r\n");
    c.reader.inner.flush().unwrap();
    c.send(b"6\r\n world\r\n0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("body=11"), "{}", r.text());
    assert_eq!(origin.connections(), 1);
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_served() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    for b in b"GET /echo/trickled HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n" {
        c.send(&[*b]);
        c.reader.inner.flush().unwrap();
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /echo/trickled HTTP/1.1"));
}

#[test]
fn a_buffered_body_has_one_deadline_for_all_of_it() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    config.timeouts.client_body = Duration::from_millis(500);
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n");
    // A byte every 100 ms: each arrives well within the 500 ms, but the body
    // as a whole does not. The pace is the attack, not a synchronisation.
    let sender = in_thread({
        let mut writer = c.reader.inner.try_clone().unwrap();
        move || {
            let mut sent = 0;
            for _ in 0..40 {
                if writer.write_all(b"x").is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        }
    });
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(c.is_closed_by_peer());
    assert!(sender.recv_timeout(Duration::from_secs(10)).unwrap() < 40);
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
}
