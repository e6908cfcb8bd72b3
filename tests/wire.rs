//! The wire forms ringgate accepts and refuses (RFC 9110, 9112): request
//! versions, targets and codings that are safe to forward, the ambiguous
//! ones that stay refused, and response transfer codings.

mod common;

use common::*;

#[test]
fn a_response_transfer_coding_without_final_chunked_runs_to_close_and_is_relayed() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..2 {
        let r = fetch(&mut c, "/te-gzip", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), Some("gzip, chunked"));
        assert_eq!(r.text(), "not-really-gzip");
        assert!(!cache_status(&r).contains("stored"), "{}", cache_status(&r));
    }
    assert_eq!(origin.hits_on("/te-gzip"), 2, "never stored");
    assert_eq!(
        origin.connections(),
        2,
        "a close-delimited upstream connection is never reused"
    );
}

#[test]
fn codings_before_a_final_chunked_are_passed_on_and_never_stored() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..2 {
        let r = fetch(&mut c, "/te-gzip-chunked", "");
        assert_eq!(r.header("transfer-encoding"), Some("gzip, chunked"));
        assert_eq!(r.text(), "hello");
    }
    assert_eq!(origin.hits_on("/te-gzip-chunked"), 2);
}

#[test]
fn a_transfer_coded_response_to_an_http10_client_is_a_502() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /te-gzip HTTP/1.0\r\nHost: shop.test\r\n\r\n");
    assert_eq!(r.status, 502);
}

// ------------------------------------------------- requests safe to accept

/// Sends raw bytes on a fresh connection; the response.
fn raw(gw: &ringgate::Handle, bytes: &[u8]) -> Response {
    Client::connect(gw.listen_addr()).request(bytes)
}

#[test]
fn a_higher_http1_minor_version_is_forwarded_as_http11() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = raw(&gw, b"GET /echo HTTP/1.7\r\nHost: shop.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /echo HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    // A keep-alive connection goes on after it.
    let mut c = Client::connect(gw.listen_addr());
    c.request(b"GET /echo HTTP/1.2\r\nHost: shop.test\r\n\r\n");
    assert_eq!(
        c.request(b"GET /echo HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .status,
        200
    );
}

#[test]
fn another_major_version_is_still_505() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    assert_eq!(
        raw(&gw, b"GET /echo HTTP/2.1\r\nHost: shop.test\r\n\r\n").status,
        505
    );
    // Not an HTTP-version at all (one digit each side of the dot).
    assert_eq!(
        raw(&gw, b"GET /echo HTTP/1.10\r\nHost: shop.test\r\n\r\n").status,
        400
    );
}

#[test]
fn a_target_with_utf8_bytes_is_forwarded_percent_encoded() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = raw(
        &gw,
        "GET /echo/caf\u{e9}?q=\u{fc} HTTP/1.1\r\nHost: shop.test\r\n\r\n".as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .starts_with("GET /echo/caf%C3%A9?q=%C3%BC HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
}

#[test]
fn a_target_with_characters_a_uri_may_not_carry_raw_is_forwarded_percent_encoded() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = raw(
        &gw,
        b"GET /echo/\"<>^`{|} HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .starts_with("GET /echo/%22%3C%3E%5E%60%7B%7C%7D HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
}

#[test]
fn raw_and_encoded_spellings_are_one_cache_key() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| {
        p.default_ttl = Some(std::time::Duration::from_secs(60))
    });
    let mut c = Client::connect(gw.listen_addr());
    let first =
        c.request("GET /c/\u{e9}?cc=max-age%3D60 HTTP/1.1\r\nHost: shop.test\r\n\r\n".as_bytes());
    assert_eq!(first.status, 200);
    let second = c.request(b"GET /c/%c3%a9?cc=max-age%3D60 HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    assert!(
        cache_status(&second).contains("hit"),
        "{}",
        cache_status(&second)
    );
}

#[test]
fn ambiguous_requests_are_still_refused_and_the_connection_closed() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    for (what, bytes) in [
        ("CL and TE", &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..]),
        ("two lengths", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("obs-fold", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"),
        ("bare CR", b"GET /echo HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n"),
        ("space before colon", b"GET /echo HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("control character", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\x01\r\n\r\n"),
        ("control in target", b"GET /echo\x01 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("invalid UTF-8 in target", b"GET /echo\xff HTTP/1.1\r\nHost: a\r\n\r\n"),
    ] {
        let mut c = Client::connect(gw.listen_addr());
        let r = c.request(bytes);
        assert_eq!(r.status, 400, "{what}");
        assert!(c.is_closed_by_peer(), "{what}: the connection is closed");
    }
    assert_eq!(origin.requests(), 0, "nothing ambiguous reached the origin");
}

#[test]
fn a_registered_coding_before_a_final_chunked_is_forwarded_with_it() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = raw(
        &gw,
        b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("Transfer-Encoding: gzip, chunked"),
        "{}",
        r.text()
    );
    assert!(r.text().ends_with("body=3"), "{}", r.text());
    let unknown = raw(
        &gw,
        b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: zip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(unknown.status, 501);
}

#[test]
fn an_empty_port_means_the_default_and_an_empty_host_means_none() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let r = raw(&gw, b"GET /echo HTTP/1.1\r\nHost: shop.test:\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Host: shop.test\r\n"), "{}", r.text());
    let r = raw(&gw, b"GET /echo HTTP/1.1\r\nHost:\r\n\r\n");
    assert_eq!(r.status, 200, "RFC 9112 section 3.2 allows an empty Host");
}
