//! Every framing rule and limit, one test each, over a real socket: the
//! gateway answers with the right status, closes where framing is in doubt,
//! never forwards the request, and keeps serving other connections.

mod common;

use common::*;
use std::time::Duration;

struct Setup {
    origin: Origin,
    gw: ringgate::Handle,
}

fn setup() -> Setup {
    setup_with(|_| {})
}

fn setup_with(tune: impl FnOnce(&mut ringgate::Config)) -> Setup {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    tune(&mut config);
    let gw = start(config);
    Setup { origin, gw }
}

/// Sends `raw`, expects `status` and a closed connection, that nothing
/// reached the origin, and that the gateway still serves a fresh connection.
fn refused(s: &Setup, raw: &[u8], status: u16) {
    let origin_requests = s.origin.requests();
    let mut c = Client::connect(s.gw.listen_addr());
    c.send(raw);
    let r = c.read_response().expect("an error response");
    assert_eq!(r.status, status, "for {:?}", String::from_utf8_lossy(raw));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.is_closed_by_peer(),
        "connection closed after a framing error"
    );
    assert_eq!(
        s.origin.requests(),
        origin_requests,
        "the refused request never reached the origin"
    );
    assert_eq!(
        get(s.gw.listen_addr(), "/after").status,
        200,
        "the worker still serves"
    );
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    refused(
        &setup(),
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn duplicate_content_length_is_400() {
    refused(
        &setup(),
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        400,
    );
}

#[test]
fn malformed_content_length_is_400() {
    let s = setup();
    for value in ["+1", "1,1", "-1", "0x1", "1 1", "99999999999999999999"] {
        refused(
            &s,
            format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\n\r\nx").as_bytes(),
            400,
        );
    }
}

#[test]
fn unknown_transfer_coding_is_501() {
    refused(
        &setup(),
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n",
        501,
    );
}

#[test]
fn transfer_encoding_other_than_final_chunked_is_400() {
    let s = setup();
    refused(
        &s,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    );
    refused(
        &s,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
    );
    refused(&s, b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

#[test]
fn transfer_encoding_on_http10_is_400() {
    refused(
        &setup(),
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn bad_chunk_size_is_400_and_not_forwarded_further() {
    let s = setup();
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "\r\nhello\r\n0\r\n\r\n",
        "1ffffffffffffffff\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let mut c = Client::connect(s.gw.listen_addr());
        c.send(
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
        );
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 400, "{body:?}");
        assert!(c.is_closed_by_peer());
        // The origin got the head but never a complete request it could act on.
        assert!(
            s.origin.log.body_lengths.lock().unwrap().is_empty(),
            "{body:?}"
        );
    }
    assert_eq!(get(s.gw.listen_addr(), "/after").status, 200);
}

#[test]
fn obs_fold_is_400() {
    refused(
        &setup(),
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    );
}

#[test]
fn bare_lf_is_400() {
    refused(&setup(), b"GET / HTTP/1.1\nHost: t\n\n", 400);
}

#[test]
fn bare_cr_is_400() {
    refused(
        &setup(),
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\rX-B: 2\r\n\r\n",
        400,
    );
}

#[test]
fn nul_in_header_is_400() {
    refused(
        &setup(),
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        400,
    );
}

#[test]
fn invalid_header_name_is_400() {
    let s = setup();
    refused(&s, b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400);
    refused(&s, b"GET / HTTP/1.1\r\nHost: t\r\nX-A : x\r\n\r\n", 400);
    refused(&s, b"GET / HTTP/1.1\r\nHost: t\r\n: x\r\n\r\n", 400);
}

#[test]
fn missing_host_is_400() {
    refused(&setup(), b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400);
}

#[test]
fn duplicate_host_is_400() {
    refused(
        &setup(),
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    );
}

#[test]
fn malformed_request_line_is_400() {
    let s = setup();
    refused(&s, b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    refused(&s, b"GET /../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n", 400);
}

#[test]
fn unsupported_version_is_505() {
    // HTTP/1.2 is HTTP/1.1 to the gateway; another major version is not.
    refused(&setup(), b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505);
}

#[test]
fn connect_method_is_501() {
    refused(
        &setup(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
    );
}

#[test]
fn oversized_head_is_431() {
    let s = setup_with(|c| c.limits.max_request_head = 4096);
    let big = "a".repeat(5000);
    refused(
        &s,
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        431,
    );
}

#[test]
fn too_many_headers_is_431() {
    let s = setup_with(|c| c.limits.max_headers = 10);
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..12 {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    refused(&s, raw.as_bytes(), 431);
}

#[test]
fn content_length_over_body_limit_is_413() {
    let s = setup_with(|c| c.limits.max_request_body = Some(1000));
    refused(
        &s,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n",
        413,
    );
}

#[test]
fn chunked_body_over_limit_is_413() {
    let s = setup_with(|c| c.limits.max_request_body = Some(1000));
    let mut c = Client::connect(s.gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    let _ = c.try_send(chunk.as_bytes());
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert!(c.is_closed_by_peer());
    assert_eq!(get(s.gw.listen_addr(), "/after").status, 200);
}

#[test]
fn slow_head_gets_408_at_the_deadline() {
    let s = setup_with(|c| c.timeouts.client_header = Duration::from_millis(300));
    let mut c = Client::connect(s.gw.listen_addr());
    // Slowloris: a head that never ends. The deadline covers the whole head.
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    c.send(b"X-A: 1\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(c.is_closed_by_peer());
    assert_eq!(s.origin.requests(), 0);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_timeout() {
    let s = setup_with(|c| c.timeouts.keepalive = Duration::from_millis(200));
    let mut c = Client::connect(s.gw.listen_addr());
    assert_eq!(c.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    let started = std::time::Instant::now();
    assert!(
        c.is_closed_by_peer(),
        "the gateway closes an idle keep-alive connection"
    );
    // Not before its time, and at most an eighth of it late (the worker's
    // idle sweep), with room for a slow machine.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(180), "{waited:?}");
    assert!(waited < IO_TIMEOUT);
}

#[test]
fn a_connection_that_never_sends_is_closed_after_the_header_timeout() {
    let s = setup_with(|c| c.timeouts.client_header = Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut silent = Client::connect(s.gw.listen_addr());
    assert!(silent.is_closed_by_peer());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(280), "{waited:?}");
    assert!(waited < IO_TIMEOUT);
    assert_eq!(get(s.gw.listen_addr(), "/after").status, 200);
}

#[test]
fn slow_body_gets_408() {
    let s = setup_with(|c| c.timeouts.client_body = Duration::from_millis(300));
    let mut c = Client::connect(s.gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(c.is_closed_by_peer());
}

#[test]
fn connections_over_the_worker_cap_wait_for_a_free_slot() {
    let s = setup_with(|c| c.workers.per_core.max_connections = 2);
    let addr = s.gw.listen_addr();
    // Both slots busy (their requests held by the origin): none is idle to give way.
    let mut first = Client::connect(addr);
    let mut second = Client::connect(addr);
    let held = b"POST /gate HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    first.send(held);
    second.send(held);
    wait_until(
        Duration::from_secs(5),
        "both requests are in flight",
        || s.origin.requests() == 2,
    );
    // The third connection sits in the kernel's backlog: not served while the cap is reached.
    let mut third = Client::connect(addr);
    third.send(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n");
    third
        .reader
        .inner
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let waiting = third.read_response();
    assert!(
        waiting.is_err(),
        "served beyond max_connections: {waiting:?}"
    );
    assert_eq!(s.origin.requests(), 2);
    // A slot frees up: the waiting connection is accepted and served.
    s.origin.open_gate();
    assert_eq!(first.read_response().unwrap().status, 200);
    assert_eq!(second.read_response().unwrap().status, 200);
    third
        .reader
        .inner
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap();
    assert_eq!(third.read_response().unwrap().status, 200);
}

#[test]
fn error_does_not_leak_into_the_next_pipelined_request() {
    let s = setup();
    let mut c = Client::connect(s.gw.listen_addr());
    // A smuggling attempt: the second "request" hides inside an invalid first one.
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().unwrap().status, 400);
    assert!(c.is_closed_by_peer());
    assert_eq!(
        s.origin.requests(),
        0,
        "nothing after the bad request was read as a request"
    );
}

#[test]
fn no_route_is_404_and_keeps_the_connection() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].path_prefix = "/api".into();
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(
        c.request(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
}
