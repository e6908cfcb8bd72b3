//! Relaying over real sockets: keep-alive, pipelining, bodies both ways,
//! header transparency, special framings, and upstream failures.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn get_is_relayed() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = get(gw.listen_addr(), "/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert_eq!(origin.requests(), 1);
}

#[test]
fn keep_alive_reuses_client_and_upstream_connections() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    for i in 0..50 {
        let r = c.request(format!("GET /echo/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with(&format!("GET /echo/{i} HTTP/1.1")));
    }
    // Several client connections, one after another, also share the pool.
    for _ in 0..10 {
        assert_eq!(get(gw.listen_addr(), "/x").status, 200);
    }
    assert_eq!(origin.requests(), 60);
    assert_eq!(
        origin.connections(),
        1,
        "the upstream connection is reused for every request"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let mut batch = Vec::new();
    for i in 0..20 {
        batch.extend(format!("GET /echo/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    // One with a body in the middle, and a HEAD.
    batch.extend(b"POST /echo/post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    batch.extend(b"HEAD /bytes/10 HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend(b"GET /echo/last HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&batch);
    for i in 0..20 {
        let r = c.read_response().unwrap();
        assert!(
            r.text().starts_with(&format!("GET /echo/{i} ")),
            "response {i}: {}",
            r.text()
        );
    }
    let post = c.read_response().unwrap();
    assert!(post.text().starts_with("POST /echo/post") && post.text().ends_with("body=5"));
    let head = c.read_response_for(true).unwrap();
    assert_eq!(head.header("content-length"), Some("10"));
    let last = c.read_response().unwrap();
    assert!(last.text().starts_with("GET /echo/last "));
}

#[test]
fn fixed_length_request_body_is_forwarded() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let body = vec![b'x'; 100_000];
    let mut raw = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend(&body);
    let r = c.request(&raw);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Content-Length: 100000"));
    assert!(r.text().ends_with("body=100000"));
}

#[test]
fn chunked_request_body_is_reframed() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(b"5;name=value\r\nhello\r\n");
    c.send(b"6\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
    assert!(text.ends_with("body=11"), "{text}");
    // The connection is still in sync for a next request.
    assert_eq!(
        c.request(b"GET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
}

#[test]
fn fixed_and_chunked_response_bodies_are_relayed() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /bytes/300000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
    let r = c.request(b"GET /chunked/25000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 25000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
}

#[test]
fn close_delimited_response_is_rechunked_for_http11() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /until-close/70000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 70000);
    // The client connection stays usable.
    assert_eq!(c.request(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
}

#[test]
fn close_delimited_response_to_http10_closes() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"GET /until-close/5000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.body.len(), 5000);
    assert!(r.header("transfer-encoding").is_none());
}

#[test]
fn http10_keep_alive_is_honoured() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = c.request(b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer());
}

#[test]
fn hop_by_hop_headers_are_stripped_and_end_to_end_kept() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(
        b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\nTrailer: X-T\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-End: kept\r\nContent-Length: 0\r\n\r\n",
    );
    let seen = r.text();
    for gone in [
        "Connection:",
        "X-Hop:",
        "Keep-Alive:",
        "TE:",
        "Trailer:",
        "Upgrade:",
        "Proxy-Connection:",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the origin:\n{seen}");
    }
    assert!(seen.contains("X-End: kept"));
    assert!(
        seen.contains("Content-Length: 0"),
        "Content-Length: 0 passes unchanged:\n{seen}"
    );
    assert!(seen.contains("Host: shop.example"));
}

#[test]
fn forwarded_headers_and_via_are_set() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /echo HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\nVia: 1.1 edge\r\n\r\n");
    let seen = r.text();
    assert!(
        seen.contains("X-Forwarded-For: 203.0.113.7, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("X-Forwarded-Proto: http"), "{seen}");
    assert!(seen.contains("X-Forwarded-Host: shop.example"), "{seen}");
    assert!(
        seen.contains("Via: 1.1 edge") && seen.contains("Via: 1.1 ringgate"),
        "{seen}"
    );
    assert_eq!(
        r.header("via"),
        Some("1.1 ringgate"),
        "responses carry Via too"
    );
}

#[test]
fn forwarded_headers_can_be_disabled() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.proxy.via = false;
    config.proxy.x_forwarded_for = ringgate::config::ForwardedFor::Off;
    config.proxy.x_forwarded_proto = false;
    config.proxy.x_forwarded_host = false;
    let gw = start(config);
    let r = get(gw.listen_addr(), "/echo");
    let seen = r.text();
    for absent in [
        "Via:",
        "X-Forwarded-For:",
        "X-Forwarded-Proto:",
        "X-Forwarded-Host:",
    ] {
        assert!(!seen.contains(absent), "{absent}:\n{seen}");
    }
    assert!(r.header("via").is_none());
}

#[test]
fn head_request_gets_headers_without_body() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"HEAD /bytes/1234 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response_for(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));
    // No body bytes follow: the next response starts right away.
    let next = c.request(b"GET /echo/after-head HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(next.text().starts_with("GET /echo/after-head"));
}

#[test]
fn status_204_and_304_have_no_body() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none() && r.header("transfer-encoding").is_none());
    let r = c.request(b"GET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 304);
    let next = c.request(b"GET /echo/n HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(next.status, 200);
}

#[test]
fn interim_103_is_passed_on_before_the_final_response() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"GET /interim HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = c.reader.read_head().unwrap().unwrap();
    assert!(first.starts_with("HTTP/1.1 103 "), "{first}");
    assert!(first.contains("Link: </style.css>"));
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "final"));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    // The body is held back until the gateway says to continue.
    let interim = c.reader.read_head().unwrap().unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    c.send(b"data");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("body=4"));
    assert!(
        !r.text().contains("Expect:"),
        "the gateway answered the expectation itself"
    );
}

#[test]
fn connect_failure_is_502() {
    // A port with nothing listening: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start(config_for(dead));
    let r = get(gw.listen_addr(), "/");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "502 Bad Gateway\n");
}

#[test]
fn response_timeout_is_504_and_the_worker_keeps_serving() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.timeouts.upstream_response = Duration::from_millis(300);
    let gw = start(config);
    let r = get(gw.listen_addr(), "/hang");
    assert_eq!(r.status, 504);
    assert_eq!(get(gw.listen_addr(), "/x").status, 200);
}

#[test]
fn bad_upstream_framing_is_502() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    assert_eq!(get(gw.listen_addr(), "/bad-framing").status, 502);
    assert_eq!(get(gw.listen_addr(), "/x").status, 200);
}

#[test]
fn upstream_dying_mid_body_closes_the_client_connection() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"GET /die-mid-body HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.reader.read_head().unwrap().unwrap();
    assert!(head.contains("Content-Length: 1000"));
    // Ten bytes, then the gateway must close rather than leave the client hanging
    // or let it read the next response as body.
    let err = c.reader.read_exact_vec(1000).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(get(gw.listen_addr(), "/x").status, 200);
}

#[test]
fn dead_pooled_connection_is_retried_for_idempotent_requests() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    // The origin answers keep-alive style, then closes: the pooled connection is dead.
    assert_eq!(
        c.request(b"GET /then-close HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    wait_until(
        Duration::from_secs(5),
        "origin saw the first request",
        || origin.requests() == 1,
    );
    let r = c.request(b"GET /echo/retried HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.connections(), 2);
}

#[test]
fn a_post_never_goes_out_on_a_pooled_connection_the_server_closed() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(
        c.request(b"GET /then-close HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    wait_until(
        Duration::from_secs(5),
        "origin saw the first request",
        || origin.requests() == 1,
    );
    // The pool sees the close before reusing the connection: the POST goes
    // out once, on a fresh connection.
    let r = c.request(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.requests(), 2);
    assert_eq!(origin.connections(), 2);
}

#[test]
fn many_concurrent_connections_each_get_their_own_response() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.count = Some(2);
    let gw = start(config);
    let addr = gw.listen_addr();
    let handles: Vec<_> = (0..16)
        .map(|t| {
            in_thread(move || {
                let mut c = Client::connect(addr);
                for i in 0..25 {
                    let path = format!("/echo/{t}/{i}");
                    let r = c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                    assert!(
                        r.text().starts_with(&format!("GET {path} ")),
                        "wrong response for {path}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.recv_timeout(Duration::from_secs(60))
            .expect("client thread finished");
    }
    assert_eq!(origin.requests(), 400);
}

/// Everything the gateway sends on a connection it closes after one response.
fn raw_exchange(gw: &ringgate::Handle, request: &[u8]) -> String {
    let mut c = Client::connect(gw.listen_addr());
    c.send(request);
    let mut raw = Vec::new();
    c.reader.read_to_end(|d| raw.extend_from_slice(d)).unwrap();
    String::from_utf8(raw).unwrap()
}

#[test]
fn trailers_are_passed_on_filtered_to_a_client_that_takes_them() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let raw = raw_exchange(
        &gw,
        b"GET /trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    // The trailer section: what a trailer may carry, never framing, cookies or routing.
    assert!(body.ends_with("0\r\nX-Checksum: 5d41\r\n\r\n"), "{body:?}");
    assert!(body.contains("hello"), "{body:?}");
    // The gateway asked the upstream for trailers because the client takes them.
    assert!(origin.log.heads.lock().unwrap()[0].contains("TE: trailers"));
}

#[test]
fn trailers_are_not_asked_for_unless_the_client_takes_them_and_dropped_for_http10() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let raw = raw_exchange(
        &gw,
        b"GET /trailers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.ends_with("0\r\nX-Checksum: 5d41\r\n\r\n"), "{raw:?}");
    assert!(!origin.log.heads.lock().unwrap()[0].contains("TE:"));
    // An HTTP/1.0 client gets the body to the close: no trailer section.
    let raw = raw_exchange(&gw, b"GET /trailers HTTP/1.0\r\nHost: t\r\n\r\n");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("Transfer-Encoding"), "{head}");
    assert_eq!(body, "hello");
}

/// An origin that answers every request with one write of its head and a
/// `len`-byte pattern body, so the gateway reads the head and the start of
/// the body together: the head is then held back and goes out with that
/// first piece of body in one vectored write, the rest after it.
fn one_write_origin(len: usize) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    // Read a request head to its blank line.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let mut response =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
                    response.extend((0..len as u64).map(pattern_byte));
                    if stream.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_body_that_came_with_its_head_goes_out_whole_behind_it() {
    // Small (in one piece with the head), a little over one upstream read,
    // and large (many reads after the first).
    for len in [700usize, 40_000, 3_000_000] {
        let origin = one_write_origin(len);
        let gw = start(config_for(origin));
        let mut c = Client::connect(gw.listen_addr());
        for i in 0..3 {
            let r = c.request(format!("GET /b{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(r.status, 200, "{len} bytes, request {i}");
            assert_eq!(r.body.len(), len, "{len} bytes, request {i}");
            let wrong = r
                .body
                .iter()
                .enumerate()
                .position(|(j, &b)| b != pattern_byte(j as u64));
            assert_eq!(wrong, None, "{len} bytes, request {i}: first wrong byte");
        }
    }
}
