//! Request bodies the session streams to the upstream (routes with
//! `request_buffering = 0`, or bodies larger than it): every byte arrives
//! in order, in either framing, whatever the client's write boundaries;
//! the body limit, the body deadline and `100 Continue` hold while
//! streaming; and a broken chunked body forwards nothing after the break.

mod common;

use common::*;
use std::time::Duration;

fn streaming(
    origin: &Origin,
    tweak: impl FnOnce(&mut ringgate::config::Config),
) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.routes[0].request_buffering = 0;
    tweak(&mut config);
    start(config)
}

/// The echo says the whole body came, the origin's digest matches it byte
/// for byte, and the connection is in step for the next request.
fn arrived_whole(c: &mut Client, origin: &Origin, r: &Response, body: &[u8]) {
    assert!(
        r.text().ends_with(&format!("body={}", body.len())),
        "{}",
        r.text()
    );
    assert_eq!(*origin.log.body_digests.lock().unwrap(), vec![fnv1a(body)]);
    assert_eq!(
        c.request(b"GET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_streamed_length_body_arrives_whole_and_in_order() {
    let origin = Origin::start();
    let gw = streaming(&origin, |_| {});
    let body = pattern(1 << 20);
    let mut c = Client::connect(gw.listen_addr());
    c.send(
        format!(
            "PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for piece in body.chunks(7_777) {
        c.send(piece);
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    arrived_whole(&mut c, &origin, &r, &body);
}

/// A request head for `body` (to `/echo`) with its first `start` bytes
/// behind it, for one write.
fn head_and_start(method: &str, body: &[u8], start: usize) -> Vec<u8> {
    let mut first = format!(
        "{method} /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    first.extend_from_slice(&body[..start]);
    first
}

/// A large body is read from the socket directly, not through the
/// worker's ring of small buffers: the switch keeps what the ring had
/// already taken (the body's first bytes came with the head), and the
/// next request, pipelined behind the body's last bytes, is read as one.
#[test]
fn a_large_body_then_a_pipelined_request_arrive_whole_in_order() {
    let origin = Origin::start();
    let gw = streaming(&origin, |_| {});
    let body = pattern(1 << 20);
    let mut c = Client::connect(gw.listen_addr());
    c.send(&head_and_start("PUT", &body, 100));
    let (middle, last) = body[100..].split_at(body.len() - 100 - 5_000);
    for piece in middle.chunks(65_536) {
        c.send(piece);
    }
    let mut tail = last.to_vec();
    tail.extend_from_slice(b"GET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&tail);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with(&format!("body={}", body.len())),
        "{}",
        r.text()
    );
    let next = c.read_response().unwrap();
    assert_eq!(next.status, 200);
    assert!(next.text().contains("/echo/next"), "{}", next.text());
    // Logged before each answer: the body whole, then the next request's none.
    assert_eq!(
        *origin.log.body_digests.lock().unwrap(),
        vec![fnv1a(&body), fnv1a(b"")]
    );
}

/// The same when the body is read whole before the request is forwarded
/// (no larger than `request_buffering`) and most of it is still to come.
#[test]
fn a_buffered_body_mostly_still_to_come_arrives_whole() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let body = pattern(60_000);
    let mut c = Client::connect(gw.listen_addr());
    c.send(&head_and_start("POST", &body, 10));
    for piece in body[10..].chunks(5_000) {
        c.send(piece);
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    arrived_whole(&mut c, &origin, &r, &body);
}

#[test]
fn a_streamed_chunked_body_arrives_whole_whatever_its_chunk_boundaries() {
    let origin = Origin::start();
    let gw = streaming(&origin, |_| {});
    let body = pattern(300_000);
    // Chunks of many sizes, some with extensions, written with the size
    // lines and CRLFs split across writes, a byte at a time in places.
    let mut wire = Vec::new();
    let mut at = 0;
    let mut size = 1;
    while at < body.len() {
        let n = size.min(body.len() - at);
        wire.extend(format!("{n:x}").as_bytes());
        if n % 3 == 0 {
            wire.extend(b";ext=\"v\"");
        }
        wire.extend(b"\r\n");
        wire.extend(&body[at..at + n]);
        wire.extend(b"\r\n");
        at += n;
        size = size * 3 + 1;
    }
    wire.extend(b"0\r\nX-Trailer: dropped\r\n\r\n");
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let (head, rest) = wire.split_at(40);
    for byte in head.chunks(1) {
        c.send(byte);
    }
    for piece in rest.chunks(4_093) {
        c.send(piece);
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("Transfer-Encoding: chunked"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("X-Trailer"), "{}", r.text());
    arrived_whole(&mut c, &origin, &r, &body);
}

#[test]
fn a_streamed_chunked_body_over_the_limit_is_413_and_closed() {
    let origin = Origin::start();
    let gw = streaming(&origin, |c| c.limits.max_request_body = Some(1000));
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("320\r\n{}\r\n", "x".repeat(0x320));
    c.send(chunk.as_bytes());
    let _ = c.try_send(chunk.as_bytes());
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert!(c.is_closed_by_peer());
    // The origin never got a whole body, and the gateway goes on serving.
    assert_eq!(get(gw.listen_addr(), "/after").status, 200);
    assert!(
        !origin
            .log
            .body_lengths
            .lock()
            .unwrap()
            .iter()
            .any(|&n| n >= 1000),
        "{:?}",
        origin.log.body_lengths.lock().unwrap()
    );
}

#[test]
fn a_broken_chunk_mid_stream_is_400_and_nothing_after_it_is_forwarded() {
    let origin = Origin::start();
    let gw = streaming(&origin, |_| {});
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    // A size that is not hex, followed by what would be a second request
    // if anything after the break reached the upstream.
    let _ = c.try_send(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 400);
    assert!(c.is_closed_by_peer());
    assert_eq!(get(gw.listen_addr(), "/after").status, 200);
    let heads = origin.log.heads.lock().unwrap();
    assert!(heads.iter().all(|h| !h.contains("/smuggled")), "{heads:?}");
}

#[test]
fn expect_continue_is_sent_once_when_the_body_streams() {
    let origin = Origin::start();
    let gw = streaming(&origin, |_| {});
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.reader.read_head().unwrap().unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    c.send(b"hello");
    // The next thing on the wire is the final response: one 100, not two.
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("body=5"), "{}", r.text());
    assert!(!r.text().contains("Expect:"), "{}", r.text());
    assert_eq!(
        *origin.log.body_digests.lock().unwrap(),
        vec![fnv1a(b"hello")]
    );
}

#[test]
fn a_sender_that_stalls_mid_body_gets_408_and_the_upstream_connection_is_not_reused() {
    let origin = Origin::start();
    let gw = streaming(&origin, |c| {
        c.timeouts.client_body = Duration::from_millis(300)
    });
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(c.is_closed_by_peer());
    // The half-sent request is not finished on that upstream connection by
    // the next client's bytes: the next request gets a connection of its own.
    let r = get(gw.listen_addr(), "/echo/after");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /echo/after "), "{}", r.text());
    assert_eq!(origin.connections(), 2);
}
