//! HTTP/2 to clients over real sockets: prior knowledge on an `h2c`
//! listener and ALPN `h2` on a TLS listener, into the same pipeline as
//! HTTP/1 (routing, cache, bodies both ways), and the floods and stalls a
//! hostile client tries, each ending as it should while another client
//! keeps being served.

mod common;

use std::time::{Duration, Instant};

use common::http2::*;
use common::*;
use ringgate::config::Config;

fn h2c_config(origin: &Origin) -> Config {
    let mut config = config_for(origin.addr);
    config.listeners[0].h2c = true;
    config
}

fn one(addr: std::net::SocketAddr, request: H2Request) -> H2Response {
    send_all(addr, Via::Cleartext, vec![request])
        .remove(0)
        .expect("an answer")
}

#[test]
fn many_streams_on_one_connection_are_answered_each_with_its_own_response() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let requests = (0..50).map(|i| h2_get(format!("/echo/{i}"))).collect();
    let responses = send_all(gw.listen_addr(), Via::Cleartext, requests);
    for (i, r) in responses.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        // The origin saw an HTTP/1.1 request with Host from :authority.
        let text = r.text();
        assert!(
            text.starts_with(&format!("GET /echo/{i} HTTP/1.1\r\n")),
            "{text}"
        );
        assert!(text.contains("Host: test\r\n"), "{text}");
        // RFC 9110 section 7.6.3: Via names the protocol it was received with.
        assert!(text.contains("Via: 2 ringgate"), "{text}");
    }
    assert_eq!(origin.requests(), 50);
}

#[test]
fn request_bodies_arrive_whole_with_or_without_a_length() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut with_length = h2_get("/echo/len");
    with_length.method = "POST";
    with_length.headers = vec![("content-length".into(), body.len().to_string())];
    with_length.body = Some(body.clone());
    let mut chunked = h2_get("/echo/chunked");
    chunked.method = "POST";
    chunked.body = Some(body.clone());
    let r = one(gw.listen_addr(), with_length);
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with(&format!("body={}", body.len())),
        "{}",
        r.text()
    );
    let r = one(gw.listen_addr(), chunked);
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("Transfer-Encoding: chunked"),
        "{}",
        r.text()
    );
    assert_eq!(
        *origin.log.body_digests.lock().unwrap(),
        vec![fnv1a(&body), fnv1a(&body)]
    );
}

#[test]
fn a_large_response_streams_within_flow_control() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let r = one(gw.listen_addr(), h2_get("/bytes/3000000"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    assert_eq!(r.header("content-length"), Some("3000000"));
    let r = one(gw.listen_addr(), h2_get("/chunked/200000"));
    assert_eq!(r.body.len(), 200_000);
}

#[test]
fn cache_hits_conditionals_and_ranges_answer_over_http2_as_over_http1() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let target = "/c?cc=max-age=60&etag=%22v1%22&ranges=1&body=hello-world";
    let first = one(gw.listen_addr(), h2_get(target));
    assert_eq!(first.status, 200);
    let hit = one(gw.listen_addr(), h2_get(target));
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), first.text());
    assert!(
        hit.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        hit.headers
    );
    assert!(hit.header("age").is_some());
    let mut conditional = h2_get(target);
    conditional.headers = vec![("if-none-match".into(), "\"v1\"".into())];
    assert_eq!(one(gw.listen_addr(), conditional).status, 304);
    let mut range = h2_get(target);
    range.headers = vec![("range".into(), "bytes=0-4".into())];
    let part = one(gw.listen_addr(), range);
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "hello");
    assert_eq!(
        origin.hits_on(target),
        1,
        "every answer after the first came from the cache"
    );
}

#[test]
fn trailers_reach_an_http2_client() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let mut request = h2_get("/trailers");
    request.headers = vec![("te".into(), "trailers".into())];
    let r = one(gw.listen_addr(), request);
    assert_eq!(r.text(), "hello");
    let trailers = r.trailers.expect("trailers");
    assert_eq!(trailers["x-checksum"], "5d41");
    assert!(trailers.get("set-cookie").is_none());
    assert!(origin.log.heads.lock().unwrap()[0].contains("TE: trailers"));
}

#[test]
fn tls_listeners_offer_http2_by_alpn_and_http1_still_works_there() {
    let origin = Origin::start();
    let dir = temp_root().join(format!("ringgate-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ringgate::tls::certs::self_signed(&["localhost"]).unwrap();
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("k.pem"), key).unwrap();
    let mut config = config_for(origin.addr);
    config.listeners[0].tls = Some(ringgate::config::ListenerTls {
        certificates: vec![ringgate::config::CertificateFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            ocsp: None,
        }],
    });
    let gw = start(config);
    let requests = (0..10).map(|i| h2_get(format!("/echo/tls{i}"))).collect();
    for r in send_all(gw.listen_addr(), Via::Tls(tls_h2_config()), requests) {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        // Over TLS the upstream is told the scheme was https.
        assert!(
            r.text().contains("X-Forwarded-Proto: https"),
            "{}",
            r.text()
        );
    }
}

#[test]
fn a_request_that_http1_would_refuse_is_refused_over_http2_too() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    // A path the canonical form refuses (an encoded NUL), and a dot segment.
    assert_eq!(one(gw.listen_addr(), h2_get("/a%00b")).status, 400);
    assert_eq!(one(gw.listen_addr(), h2_get("/a/../b")).status, 400);
    assert_eq!(origin.requests(), 0);
}

// ----------------------------------------------------------------- attacks

#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let origin = Origin::start();
    let mut config = with_admin(h2c_config(&origin));
    config.http2.max_client_resets = 20;
    let gw = start(config);
    let mut raw = RawH2::connect(gw.listen_addr());
    // Each stream asks for a response that never comes, then is cancelled.
    let mut id = 1;
    let mut attack = Vec::new();
    for _ in 0..200 {
        attack.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/hang"),
        ));
        attack.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        id += 2;
    }
    let _ = raw.send(&attack);
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));
    // Another client is served all along.
    assert_eq!(one(gw.listen_addr(), h2_get("/echo/other")).status, 200);
    assert!(
        origin.requests() < 200,
        "the attack stopped early: {}",
        origin.requests()
    );
    assert_eq!(admin_stats(&gw)["totals"]["h2_enhance_your_calm"], 1);
}

#[test]
fn a_client_reset_is_counted_by_reason_and_not_as_the_gateways() {
    let origin = Origin::start();
    let gw = start(with_admin(h2c_config(&origin)));
    let mut raw = RawH2::connect(gw.listen_addr());
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/hang"),
    ));
    // The stream is being served: its request reached the origin.
    wait_until(
        Duration::from_secs(5),
        "the request reaches the origin",
        || origin.requests() == 1,
    );
    raw.send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()));
    wait_until(Duration::from_secs(5), "the reset is counted", || {
        admin_stats(&gw)["totals"]["h2_resets"]["client"]["cancel"].as_u64() == Some(1)
    });
    let totals = &admin_stats(&gw)["totals"];
    assert_eq!(totals["h2_client_resets"], 1);
    assert_eq!(totals["h2_resets"]["gateway"]["cancel"], 0);
    let metrics = Client::connect(gw.admin_addr().unwrap())
        .request(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .text();
    assert!(
        metrics
            .contains("ringgate_h2_resets_total{worker=\"0\",by=\"client\",reason=\"cancel\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn expect_100_continue_gets_an_interim_100_before_the_body_is_sent() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let mut raw = RawH2::connect(gw.listen_addr());
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    literal(&mut block, 4, b"/echo/continue"); // :path
    literal(&mut block, 1, b"test"); // :authority
    literal_named(&mut block, b"content-length", b"5");
    literal_named(&mut block, b"expect", b"100-continue");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &block));
    // No body is sent until the 100 arrives.
    let mut statuses = Vec::new();
    while let Some((kind, _, stream, payload)) = raw.next_frame() {
        if kind == HEADERS && stream == 1 {
            // `:status` (name index 8) with the value 100, plain or Huffman-coded.
            let plain: &[u8] = &[0x48, 0x03, b'1', b'0', b'0'];
            let huffman: &[u8] = &[0x48, 0x82, 0x08, 0x01];
            assert!(
                payload.starts_with(plain) || payload.starts_with(huffman),
                "not a 100: {payload:x?}"
            );
            statuses.push(100);
            break;
        }
        assert_ne!(kind, RST_STREAM, "the stream was reset");
    }
    assert_eq!(statuses, [100]);
    raw.send(&frame(DATA, END_STREAM, 1, b"hello"));
    let mut done = false;
    while let Some((kind, flags, stream, payload)) = raw.next_frame() {
        if stream != 1 {
            continue;
        }
        if kind == HEADERS {
            assert_eq!(payload[0], 0x88, ":status 200");
        }
        if flags & END_STREAM != 0 {
            done = true;
            break;
        }
    }
    assert!(done, "the response ended");
    assert_eq!(origin.requests(), 1);
    // The upstream got the body, and no `expect` to answer again.
    assert_eq!(*origin.log.body_digests.lock().unwrap(), [fnv1a(b"hello")]);
    let head = origin.log.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(!head.contains("expect:"), "{head}");
}

#[test]
fn streams_over_the_concurrency_cap_are_refused_and_the_others_served() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.http2.max_concurrent_streams = 4;
    let gw = start(config);
    let mut raw = RawH2::connect(gw.listen_addr());
    // Six streams that each wait on the origin's gate.
    let mut opening = Vec::new();
    for i in 0..6u32 {
        opening.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &get_block("/gate"),
        ));
    }
    raw.send(&opening);
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.len() < 2 && Instant::now() < deadline {
        let (kind, _, stream, payload) = raw.next_frame().expect("frames");
        if kind == RST_STREAM {
            refused.push((stream, u32::from_be_bytes(payload[..4].try_into().unwrap())));
        }
    }
    // REFUSED_STREAM (0x7): the client may retry them elsewhere.
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|&(_, code)| code == 0x7), "{refused:?}");
    origin.open_gate();
    let mut answered = 0;
    while answered < 4 {
        let (kind, flags, _, _) = raw.next_frame().expect("the four answers");
        if kind == DATA && flags & END_STREAM != 0 {
            answered += 1;
        }
    }
}

#[test]
fn an_oversized_header_block_is_refused_and_the_connection_stays_usable_for_others() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.limits.max_request_head = 4096;
    let gw = start(config);
    let mut raw = RawH2::connect(gw.listen_addr());
    // One HEADERS without END_HEADERS, then CONTINUATION frames without end.
    let mut block = get_block("/x");
    literal_named(&mut block, b"x-a", &[b'a'; 100]);
    let mut flood = frame(HEADERS, END_STREAM, 1, &block);
    let mut filler = Vec::new();
    for _ in 0..60 {
        literal_named(&mut filler, b"x-b", &[b'b'; 100]);
    }
    for _ in 0..200 {
        flood.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let _ = raw.send(&flood);
    // The stream is refused (a 431 or a reset) or the connection ended:
    // never a request forwarded.
    let mut ended = false;
    while let Some((kind, _, stream, payload)) = raw.next_frame() {
        if kind == GOAWAY || (kind == RST_STREAM && stream == 1) {
            ended = true;
            break;
        }
        if kind == HEADERS && stream == 1 {
            ended = true;
            let _ = payload;
            break;
        }
    }
    assert!(ended);
    assert_eq!(origin.requests(), 0);
    assert_eq!(one(gw.listen_addr(), h2_get("/echo/after")).status, 200);
}

#[test]
fn a_client_that_never_opens_its_window_loses_the_stream_after_client_send() {
    let origin = Origin::start();
    let mut config = with_admin(h2c_config(&origin));
    config.timeouts.client_send = Duration::from_millis(300);
    let gw = start(config);
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no DATA may be sent until it opens.
    let mut raw = RawH2::connect_with_settings(gw.listen_addr(), &[(0x4, 0)]);
    let started = Instant::now();
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/bytes/100000"),
    ));
    let mut reset = None;
    while let Some((kind, _, stream, payload)) = raw.next_frame() {
        if kind == RST_STREAM && stream == 1 {
            reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            break;
        }
    }
    assert_eq!(reset, Some(CANCEL));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(one(gw.listen_addr(), h2_get("/echo/after")).status, 200);
    // The gateway's reset is counted as its own, with its reason.
    wait_until(
        Duration::from_secs(5),
        "the gateway's reset is counted",
        || admin_stats(&gw)["totals"]["h2_resets"]["gateway"]["cancel"].as_u64() == Some(1),
    );
    assert_eq!(
        admin_stats(&gw)["totals"]["h2_resets"]["client"]["cancel"],
        0
    );
}

#[test]
fn an_idle_connection_gets_a_graceful_goaway() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.timeouts.keepalive = Duration::from_millis(200);
    config.timeouts.client_header = Duration::from_millis(200);
    let gw = start(config);
    let mut raw = RawH2::connect(gw.listen_addr());
    let started = Instant::now();
    assert_eq!(raw.goaway(), Some(0), "NO_ERROR");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_connection_gets_a_goaway_after_max_requests_and_its_streams_finish() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.http2.max_requests = 3;
    let gw = start(config);
    let mut raw = RawH2::connect(gw.listen_addr());
    let mut streams = Vec::new();
    for i in 0..3u32 {
        streams.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &get_block("/echo/n"),
        ));
    }
    raw.send(&streams);
    let (mut goaway, mut finished) = (None, 0);
    while let Some((kind, flags, _, payload)) = raw.next_frame() {
        if kind == GOAWAY {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        if kind == DATA && flags & END_STREAM != 0 {
            finished += 1;
        }
        if goaway.is_some() && finished == 3 {
            break;
        }
    }
    assert_eq!((goaway, finished), (Some(0), 3));
}

#[test]
fn http2_is_counted_in_stats() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    let gw = start(config);
    send_all(
        gw.listen_addr(),
        Via::Cleartext,
        vec![h2_get("/a"), h2_get("/b")],
    );
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["totals"]["h2_connections"], 1, "{v}");
    assert_eq!(v["totals"]["h2_streams"], 2, "{v}");
}

#[test]
fn ping_and_settings_floods_from_a_client_that_never_reads_are_closed() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.timeouts.client_header = Duration::from_millis(300);
    config.timeouts.client_send = Duration::from_millis(300);
    let gw = start(config);
    for kind in [PING, SETTINGS] {
        let mut raw = RawH2::connect(gw.listen_addr());
        let payload: &[u8] = if kind == PING {
            &[0; 8]
        } else {
            &[0, 4, 0, 0, 1, 0]
        };
        let flood: Vec<u8> = (0..1000).flat_map(|_| frame(kind, 0, 0, payload)).collect();
        // Written without reading a single answer, until the gateway stops
        // taking bytes (it answers one frame at a time, so it buffers none).
        raw.stream
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) && raw.send(&flood) {}
        // Another client is served meanwhile.
        assert_eq!(one(gw.listen_addr(), h2_get("/echo/other")).status, 200);
        // The flooding connection is closed: it opened no stream in time,
        // and it takes none of what it is sent.
        raw.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut closed = false;
        while Instant::now() < deadline {
            let mut sink = [0u8; 64 * 1024];
            match std::io::Read::read(&mut raw.stream, &mut sink) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(closed, "the flooding connection was closed");
    }
}

#[test]
fn a_shutdown_sends_goaway_and_lets_the_streams_in_flight_finish() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let mut raw = RawH2::connect(gw.listen_addr());
    // A stream waiting on the origin when the shutdown starts.
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/gate"),
    ));
    wait_until(
        Duration::from_secs(5),
        "the request reached the origin",
        || origin.hits_on("/gate") == 1,
    );
    gw.begin_shutdown();
    let mut goaway = None;
    while goaway.is_none() {
        let (kind, _, _, payload) = raw.next_frame().expect("a GOAWAY");
        if kind == GOAWAY {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
    assert_eq!(goaway, Some(0), "NO_ERROR: a graceful GOAWAY");
    // The stream in flight still gets its whole answer; PINGs are
    // acknowledged as a client does, and then the gateway closes.
    origin.open_gate();
    let mut finished = false;
    while let Some((kind, flags, stream, payload)) = raw.next_frame() {
        if kind == PING && flags & 0x1 == 0 {
            raw.send(&frame(PING, 0x1, 0, &payload));
        }
        if stream == 1 && flags & END_STREAM != 0 && (kind == DATA || kind == HEADERS) {
            finished = true;
        }
    }
    assert!(finished, "the stream in flight finished");
    let started = Instant::now();
    gw.wait();
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ------------------------------------------- RFC 9113 rules, frame by frame

/// The RST_STREAM (or connection-ending GOAWAY) code the gateway answers a
/// stream with, or the status of its response.
fn answer_to(gw: &ringgate::Handle, block: Vec<u8>) -> Result<u16, u32> {
    let mut raw = RawH2::connect(gw.listen_addr());
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    while let Some((kind, _, stream, payload)) = raw.next_frame() {
        if kind == GOAWAY {
            // A connection error: its code.
            return Err(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        if stream != 1 {
            continue;
        }
        if kind == RST_STREAM {
            return Err(u32::from_be_bytes(payload[..4].try_into().unwrap()));
        }
        if kind == HEADERS {
            // The first field of a response is `:status`, a static-table index
            // (0x88 = 200 ...) or a literal with index 8.
            let status = match payload[0] {
                0x88 => 200,
                0x89 => 204,
                0x8a => 206,
                0x8b => 304,
                0x8c => 400,
                0x8d => 404,
                0x8e => 500,
                _ => {
                    let at = payload.iter().position(|&b| b == 3).unwrap();
                    std::str::from_utf8(&payload[at + 1..at + 4])
                        .unwrap()
                        .parse()
                        .unwrap()
                }
            };
            return Ok(status);
        }
    }
    panic!("no answer to stream 1");
}

const PROTOCOL_ERROR: u32 = 0x1;

#[test]
fn connection_specific_fields_make_a_request_malformed() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    // RFC 9113 section 8.2.2: connection-specific fields, and TE other than "trailers".
    for (name, value) in [
        (&b"connection"[..], &b"keep-alive"[..]),
        (b"keep-alive", b"5"),
        (b"proxy-connection", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
    ] {
        let mut block = get_block("/echo/x");
        literal_named(&mut block, name, value);
        assert_eq!(
            answer_to(&gw, block),
            Err(PROTOCOL_ERROR),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // Upper-case field names are malformed too (section 8.2.1).
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"X-Upper", b"1");
    assert_eq!(answer_to(&gw, block), Err(PROTOCOL_ERROR));
    assert_eq!(origin.requests(), 0);
    // TE: trailers is allowed.
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"te", b"trailers");
    assert_eq!(answer_to(&gw, block), Ok(200));
}

#[test]
fn authority_and_host_must_agree() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"host", b"other.example");
    assert_eq!(answer_to(&gw, block), Ok(400));
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"host", b"TEST");
    assert_eq!(answer_to(&gw, block), Ok(200));
    assert_eq!(origin.requests(), 1);
}

#[test]
fn cookie_crumbs_are_joined_into_one_field() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    let mut request = h2_get("/echo/cookies");
    request.headers = vec![
        ("cookie".into(), "a=1".into()),
        ("cookie".into(), "b=2".into()),
    ];
    let r = one(gw.listen_addr(), request);
    assert!(r.text().contains("cookie: a=1; b=2\r\n"), "{}", r.text());
}

#[test]
fn bytes_that_would_split_the_http1_head_never_reach_the_upstream() {
    let origin = Origin::start();
    let gw = start(h2c_config(&origin));
    // HTTP/2 carries field values as lengths, not lines: a CR or LF inside
    // one would become a second field (or request) once written as HTTP/1.1.
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"x-a", b"1\r\ntransfer-encoding: chunked");
    assert!(answer_to(&gw, block).is_err());
    let mut block = get_block("/echo/x");
    literal_named(&mut block, b"x-a", b"1\nx-injected: 1");
    assert!(answer_to(&gw, block).is_err());
    // A path with a space or a line break would rewrite the request line.
    let mut block = vec![0x82, 0x86];
    literal(&mut block, 4, b"/a HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /b");
    literal(&mut block, 1, b"test");
    assert!(matches!(answer_to(&gw, block), Err(_) | Ok(400)));
    let mut block = vec![0x82, 0x86];
    literal(&mut block, 4, b"/a");
    literal(&mut block, 1, b"test\r\nx-injected: 1");
    assert!(matches!(answer_to(&gw, block), Err(_) | Ok(400)));
    let heads = origin.log.heads.lock().unwrap();
    assert!(
        heads
            .iter()
            .all(|h| !h.contains("x-injected") && !h.contains("GET /b")),
        "{heads:?}"
    );
}

#[test]
fn sixty_four_mib_each_way_pass_in_flat_memory() {
    const TOTAL: usize = 64 << 20;
    let origin = Origin::start();
    let config = format!(
        "[[listeners]]\naddress = \"{{listen}}\"\nh2c = true\n[workers]\ncount = 1\npin = false\n[limits]\nmax_request_body = 0\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n[admin]\nenabled = false\n",
        origin.addr
    );
    let gw = GatewayProcess::start(&config, |_| {});
    // A first exchange: the worker's buffers and code pages are in before measuring.
    assert_eq!(one(gw.addr, h2_get("/bytes/100000")).status, 200);
    let (_, peak_before) = gw.memory_kib();
    let body: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let digest = fnv1a(&body);
    let mut upload = h2_get("/echo/up");
    upload.method = "POST";
    upload.body = Some(body);
    let download = h2_get(format!("/bytes/{TOTAL}"));
    // Both at once, on one connection: one body each way.
    let answers = send_all(gw.addr, Via::Cleartext, vec![upload, download]);
    let up = answers[0].as_ref().unwrap();
    assert!(
        up.text().ends_with(&format!("body={TOTAL}")),
        "{}",
        up.text()
    );
    assert_eq!(
        origin.log.body_digests.lock().unwrap().last(),
        Some(&digest)
    );
    assert_eq!(answers[1].as_ref().unwrap().body.len(), TOTAL);
    let (_, peak_after) = gw.memory_kib();
    let growth = peak_after.saturating_sub(peak_before);
    eprintln!("gateway peak RSS growth while passing 64 MiB each way over HTTP/2: {growth} KiB");
    assert!(
        growth < 8 * 1024,
        "peak RSS grew by {growth} KiB passing 64 MiB each way"
    );
    assert_eq!(gw.stop().code(), Some(0));
}

#[test]
fn an_idle_http2_connection_makes_room_at_the_connection_cap() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.workers.per_core.max_connections = 1;
    let gw = start(config);
    // An HTTP/2 connection that served a stream and now holds none.
    let mut raw = RawH2::connect(gw.listen_addr());
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/echo/a"),
    ));
    loop {
        let (kind, flags, stream, _) = raw.next_frame().expect("the answer");
        if stream == 1 && kind == DATA && flags & END_STREAM != 0 {
            break;
        }
    }
    // A newcomer at the cap: the idle HTTP/2 connection gives way.
    assert_eq!(get(gw.listen_addr(), "/echo/newcomer").status, 200);
    assert_eq!(raw.goaway(), Some(0));
}

#[test]
fn a_transfer_coded_upstream_body_is_a_502_for_an_http2_client() {
    let origin = Origin::start();
    let mut config = h2c_config(&origin);
    config.routes[0].cache = None;
    let gw = start(config);
    // `Transfer-Encoding: gzip, chunked`: HTTP/2 has no transfer codings, so
    // the gzip bytes would pass as the content itself.
    let r = one(gw.listen_addr(), h2_get("/te-gzip-chunked"));
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());
}

// ------------------------------------------------------- HTTP/2 upstreams

fn to_h2_origin(origin: &H2Origin) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.listeners[0].h2c = true;
    config.routes[0].cache = None;
    config.upstreams[0].protocol = ringgate::config::UpstreamProtocol::Http2;
    start(config)
}

#[test]
fn an_http2_upstream_serves_many_requests_on_one_connection() {
    let origin = H2Origin::start();
    let gw = to_h2_origin(&origin);
    let mut c = Client::connect(gw.listen_addr());
    for i in 0..20 {
        let r = c.request(format!("GET /plain/{i} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("h2 GET /plain/{i} host=shop.test body=0"));
    }
    // A chunked HTTP/1.1 body goes up as DATA.
    let r = c.request(b"POST /plain/up HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(r.text(), "h2 POST /plain/up host=shop.test body=11");
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn grpc_streams_are_multiplexed_upstream_and_their_trailers_reach_the_client() {
    let origin = H2Origin::start();
    let gw = to_h2_origin(&origin);
    let requests = (0..16)
        .map(|i| {
            let mut r = h2_get(format!("/grpc/echo.Echo/Say{i}"));
            r.method = "POST";
            r.headers = vec![
                ("content-type".into(), "application/grpc".into()),
                ("te".into(), "trailers".into()),
            ];
            r.body = Some(format!("message {i}").into_bytes());
            r
        })
        .collect();
    for (i, r) in send_all(gw.listen_addr(), Via::Cleartext, requests)
        .into_iter()
        .enumerate()
    {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("message {i}"));
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        let trailers = r.trailers.expect("grpc trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
    }
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(origin.streams.load(std::sync::atomic::Ordering::SeqCst), 16);
}

#[test]
fn an_http2_upstream_over_tls_is_reached_by_alpn_h2() {
    let origin = H2Origin::start_tls();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    config.upstreams[0].protocol = ringgate::config::UpstreamProtocol::Http2;
    config.upstreams[0].tls = Some(ringgate::config::UpstreamTls {
        sni: Some("localhost".into()),
        verify: false,
        ca: None,
        client_cert: None,
    });
    let gw = start(config);
    for i in 0..5 {
        let r = get(gw.listen_addr(), &format!("/tls/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("h2 GET /tls/{i} host=test body=0"));
    }
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn an_idle_http2_upstream_connection_is_let_go_and_a_new_one_opened_when_needed() {
    use std::sync::atomic::Ordering;
    let origin = H2Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    config.upstreams[0].protocol = ringgate::config::UpstreamProtocol::Http2;
    config.workers.per_core.upstream_idle_timeout = Duration::from_millis(200);
    let gw = start(config);
    assert_eq!(get(gw.listen_addr(), "/a").status, 200);
    wait_until(
        Duration::from_secs(10),
        "the idle connection closed",
        || origin.open.load(Ordering::SeqCst) == 0,
    );
    assert_eq!(get(gw.listen_addr(), "/b").status, 200);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn an_http2_upstream_that_is_down_is_a_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut config = config_for(addr);
    config.routes[0].cache = None;
    config.upstreams[0].protocol = ringgate::config::UpstreamProtocol::Http2;
    let gw = start(config);
    assert_eq!(get(gw.listen_addr(), "/x").status, 502);
}
