//! Range requests over real sockets (RFC 9110 section 14, RFC 9111
//! section 3.4): 206 and 416 from stored responses, `If-Range`, and 206s
//! from the origin stored whole or as parts.

mod common;

use common::*;

/// A stored 26-byte body, `abc...z`, with a strong validator.
const ALPHABET: &str = "/c?cc=max-age%3D600&body=abcdefghijklmnopqrstuvwxyz&etag=%22az%22&lm=Sun%2C%2006%20Nov%201994%2008%3A49%3A37%20GMT";

fn warmed(origin: &Origin) -> (ringgate::Handle, Client) {
    let gw = cached_gateway(origin);
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, ALPHABET, "").status, 200);
    (gw, c)
}

#[test]
fn a_single_range_of_a_stored_response_is_answered_206() {
    let origin = Origin::start();
    let (_gw, mut c) = warmed(&origin);
    for (range, body, content_range) in [
        ("bytes=0-4", "abcde", "bytes 0-4/26"),
        ("bytes=20-", "uvwxyz", "bytes 20-25/26"),
        ("bytes=-3", "xyz", "bytes 23-25/26"),
        ("bytes=24-1000", "yz", "bytes 24-25/26"),
    ] {
        let r = fetch(&mut c, ALPHABET, &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.text(), body, "{range}");
        assert_eq!(r.header("content-range"), Some(content_range));
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(r.header("etag"), Some("\"az\""));
        assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    }
    // The connection stays in step after every partial answer.
    assert_eq!(fetch(&mut c, ALPHABET, "").text().len(), 26);
    assert_eq!(origin.hits_on(ALPHABET), 1);
}

#[test]
fn a_range_past_the_end_is_answered_416() {
    let origin = Origin::start();
    let (_gw, mut c) = warmed(&origin);
    let r = fetch(&mut c, ALPHABET, "Range: bytes=26-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */26"));
    assert!(r.body.is_empty());
    assert_eq!(fetch(&mut c, ALPHABET, "").status, 200);
}

#[test]
fn several_ranges_or_a_malformed_one_get_the_whole_response() {
    let origin = Origin::start();
    let (_gw, mut c) = warmed(&origin);
    for range in ["bytes=0-1,4-5", "bytes=9-2", "lines=1-2"] {
        let r = fetch(&mut c, ALPHABET, &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.text().len(), 26);
    }
}

#[test]
fn if_range_with_a_matching_strong_validator_gets_the_range_otherwise_the_whole() {
    let origin = Origin::start();
    let (_gw, mut c) = warmed(&origin);
    for (if_range, status) in [
        ("\"az\"", 206),
        ("\"old\"", 200),
        ("W/\"az\"", 200),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 206),
        ("Mon, 07 Nov 1994 08:49:37 GMT", 200),
    ] {
        let r = fetch(
            &mut c,
            ALPHABET,
            &format!("Range: bytes=0-1\r\nIf-Range: {if_range}\r\n"),
        );
        assert_eq!(r.status, status, "If-Range: {if_range}");
    }
    assert_eq!(
        origin.hits_on(ALPHABET),
        1,
        "If-Range is answered by the cache"
    );
}

#[test]
fn a_head_with_a_range_gets_the_whole_head() {
    let origin = Origin::start();
    let (_gw, mut c) = warmed(&origin);
    c.send(
        format!("HEAD {ALPHABET} HTTP/1.1\r\nHost: shop.test\r\nRange: bytes=0-1\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read_response_for(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("26"));
}

#[test]
fn a_206_covering_the_whole_representation_is_stored_and_serves_later_ranges() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1";
    let mut c = Client::connect(gw.listen_addr());
    let first = fetch(&mut c, t, "Range: bytes=0-\r\n");
    assert_eq!(first.status, 206);
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let whole = fetch(&mut c, t, "");
    assert_eq!((whole.status, whole.text().as_str()), (200, "0123456789"));
    assert_eq!(whole.header("content-range"), None);
    assert!(cache_status(&whole).contains("hit"));
    let part = fetch(&mut c, t, "Range: bytes=3-5\r\n");
    assert_eq!((part.status, part.text().as_str()), (206, "345"));
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn a_206_of_part_of_the_representation_is_not_stored_as_the_whole() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1";
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, t, "Range: bytes=0-3\r\n").text(), "0123");
    let whole = fetch(&mut c, t, "");
    assert_eq!((whole.status, whole.text().as_str()), (200, "0123456789"));
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn a_stored_206_part_serves_later_ranges_inside_it() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1&etag=%22p%22";
    let mut c = Client::connect(gw.listen_addr());
    let first = fetch(&mut c, t, "Range: bytes=2-6\r\n");
    assert_eq!((first.status, first.text().as_str()), (206, "23456"));
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    for (range, body, content_range) in [
        ("bytes=2-6", "23456", "bytes 2-6/10"),
        ("bytes=3-4", "34", "bytes 3-4/10"),
    ] {
        let r = fetch(&mut c, t, &format!("Range: {range}\r\n"));
        assert_eq!((r.status, r.text().as_str()), (206, body), "{range}");
        assert_eq!(r.header("content-range"), Some(content_range));
        assert!(
            cache_status(&r).contains("hit"),
            "{range}: {}",
            cache_status(&r)
        );
    }
    let unsatisfiable = fetch(&mut c, t, "Range: bytes=10-\r\n");
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), Some("bytes */10"));
    assert_eq!(origin.hits_on(t), 1);
    // Outside the part: the origin is asked.
    let outside = fetch(&mut c, t, "Range: bytes=5-8\r\n");
    assert_eq!((outside.status, outside.text().as_str()), (206, "5678"));
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn a_stored_part_never_answers_a_request_for_the_whole() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "Range: bytes=0-3\r\n");
    let whole = fetch(&mut c, t, "");
    assert_eq!((whole.status, whole.text().as_str()), (200, "0123456789"));
    // And If-Range that does not match the part cannot be answered from it.
    let r = fetch(&mut c, t, "Range: bytes=0-1\r\nIf-Range: \"other\"\r\n");
    assert_eq!(r.text(), "0123456789");
}

#[test]
fn a_purge_removes_stored_parts_too() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "Range: bytes=2-4\r\n");
    let purge = c.request(format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    assert_eq!(purge.status, 200, "{}", purge.text());
    fetch(&mut c, t, "Range: bytes=2-4\r\n");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn parts_and_ranges_are_answered_by_every_worker() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |_, config| config.workers.count = Some(2));
    let t = "/c?cc=max-age%3D600&body=0123456789&ranges=1";
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, t, "Range: bytes=2-6\r\n").status, 206);
    // New connections land on both workers: each answers from the one stored part.
    for _ in 0..16 {
        let mut c = Client::connect(gw.listen_addr());
        let r = fetch(&mut c, t, "Range: bytes=3-5\r\nConnection: close\r\n");
        assert_eq!((r.status, r.text().as_str()), (206, "345"));
    }
    assert_eq!(origin.hits_on(t), 1);
}
