//! Starting and stopping: workers pinned to distinct cores, the epoll
//! fallback, a busy port refused at start, gateways started side by side on
//! port 0 each on a port of its own, and graceful shutdown that
//! finishes an in-flight request while refusing new connections and
//! closes idle ones before it returns; no socket inherited by a child process.

mod common;

use common::*;
use ringgate::{DriverKind, Gateway, StartError};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn two_workers_are_pinned_to_different_cores() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.count = Some(2);
    let gw = start(config);
    let workers = gw.workers();
    assert_eq!(workers.len(), 2);
    let cores: Vec<usize> = workers.iter().map(|w| w.core.expect("pinned")).collect();
    assert_ne!(cores[0], cores[1], "each worker has its own core");
    for w in workers {
        // Read back from the kernel: the thread may run on its core only.
        assert_eq!(
            w.affinity,
            vec![w.core.unwrap()],
            "worker {} affinity",
            w.index
        );
    }
    // Both serve: many short connections spread over the SO_REUSEPORT listeners.
    for _ in 0..20 {
        assert_eq!(get(gw.listen_addr(), "/").status, 200);
    }
}

#[test]
fn io_uring_is_used_when_available() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    // What `auto` picks (RINGGATE_TEST_DRIVER may have chosen for the suite).
    config.workers.driver = ringgate::config::DriverChoice::Auto;
    let gw = start(config);
    let expected = if monoio::utils::detect_uring() {
        DriverKind::IoUring
    } else {
        DriverKind::Epoll
    };
    assert_eq!(gw.workers()[0].driver, expected);
}

#[test]
fn epoll_driver_serves_the_same() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.driver = ringgate::config::DriverChoice::Epoll;
    let gw = start(config);
    assert_eq!(gw.workers()[0].driver, DriverKind::Epoll);
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..5 {
        assert_eq!(
            c.request(b"GET /bytes/50000 HTTP/1.1\r\nHost: t\r\n\r\n")
                .body
                .len(),
            50000
        );
    }
    let r = get(gw.listen_addr(), "/hang-not");
    assert_eq!(r.status, 200);
}

#[test]
fn busy_port_fails_at_start_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.listeners[0].address = addr;
    match Gateway::start(config) {
        Err(StartError::Bind { address, .. }) => assert_eq!(address, addr),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started on a busy port"),
    }
}

#[test]
fn gateways_started_at_once_on_port_zero_each_get_a_port_of_their_own() {
    // Each gateway resolves port 0 and then binds it again from its workers
    // with SO_REUSEPORT: had the port been let go in between, another
    // gateway starting at that moment could be given it and share this
    // one's connections (seen as a response from the wrong origin). Every
    // request names its gateway, and only that gateway's origin may see it.
    const N: usize = 12;
    let origins: Vec<Origin> = (0..N).map(|_| Origin::start()).collect();
    let gateways: Vec<_> = std::thread::scope(|s| {
        let started: Vec<_> = origins
            .iter()
            .map(|o| {
                let addr = o.addr;
                s.spawn(move || start(config_for(addr)))
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = gateways.iter().map(|g| g.listen_addr().port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), N, "two gateways on one port");
    for (i, gw) in gateways.iter().enumerate() {
        for _ in 0..4 {
            assert_eq!(get(gw.listen_addr(), &format!("/gateway-{i}")).status, 200);
        }
    }
    for (i, o) in origins.iter().enumerate() {
        let heads = o.log.heads.lock().unwrap();
        let mine = format!("GET /gateway-{i} ");
        assert_eq!(heads.iter().filter(|h| h.starts_with(&mine)).count(), 4);
        assert!(
            heads.iter().all(|h| h.starts_with(&mine)),
            "origin {i} saw another gateway's request: {heads:?}"
        );
    }
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let addr = gw.listen_addr();

    // An idle keep-alive connection and an in-flight request.
    let mut idle = Client::connect(addr);
    assert_eq!(
        idle.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    let mut busy = Client::connect(addr);
    busy.send(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until(
        Duration::from_secs(5),
        "the gated request reached the origin",
        || {
            origin
                .log
                .heads
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.starts_with("GET /gate"))
        },
    );

    gw.begin_shutdown();
    // The idle connection is closed, and new connections are refused.
    assert!(
        idle.is_closed_by_peer(),
        "idle keep-alive connection closed on shutdown"
    );
    wait_until(Duration::from_secs(5), "listener closed", || {
        TcpStream::connect(addr).is_err()
    });

    // The in-flight request still completes, with Connection: close.
    origin.open_gate();
    let r = busy.read_response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "gated"));
    assert_eq!(r.header("connection"), Some("close"));

    let done = in_thread(move || gw.shutdown());
    done.recv_timeout(Duration::from_secs(10))
        .expect("workers exit after draining");
}

#[test]
fn shutdown_grace_period_bounds_the_wait() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.timeouts.shutdown_grace = Duration::from_millis(200);
    let gw = start(config);
    let mut stuck = Client::connect(gw.listen_addr());
    stuck.send(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until(Duration::from_secs(5), "request reached the origin", || {
        origin.requests() == 1
    });
    let done = in_thread(move || gw.shutdown());
    done.recv_timeout(Duration::from_secs(10))
        .expect("shutdown returns after the grace period");
    assert!(stuck.is_closed_by_peer());
}

/// An idle keep-alive connection sees its close once `shutdown` returns:
/// on io_uring its socket stayed open (its close and the cancel of its
/// armed receive were never completed, the worker's loop having ended), so
/// a client of a gateway stopped in a running process (a test, an embedder)
/// waited for a close that never came.
#[test]
fn an_idle_connection_sees_its_close_once_shutdown_returns() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    gw.shutdown();
    assert!(c.is_closed_by_peer(), "the idle connection is still open");
}

/// A process started while the gateway serves (the new binary of an
/// upgrade, or any child of an embedding program) inherits none of its
/// sockets: not the listener, not a client's connection, not a pooled
/// upstream one. On io_uring accepted sockets were not close-on-exec, so
/// such a child held clients' connections open after the gateway closed
/// them.
#[test]
fn a_child_process_inherits_none_of_the_gateways_sockets() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "the connection is accepted and kept alive");
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep (coreutils) starts");
    // `spawn` returns once the child has executed `sleep`: its descriptors
    // are those it kept across the exec.
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .expect("the child's descriptors are readable")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect();
    child.kill().expect("the child is stopped");
    child.wait().expect("the child is reaped");
    assert!(
        sockets.is_empty(),
        "the child inherited sockets: {sockets:?}"
    );
    // The connection still serves.
    let r = c.request(b"GET /echo/b HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
}
