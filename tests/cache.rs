//! The HTTP cache over real sockets, against an origin that counts its
//! requests: hits, storage rules, revalidation, stale serving, coalescing,
//! HEAD, Vary, invalidation on writes, and Cache-Status.

mod common;

use common::*;
use std::time::Duration;

fn status_of(r: &Response) -> String {
    r.header("cache-status").unwrap_or("").to_string()
}

#[test]
fn a_hit_does_not_reach_the_origin() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60";
    let first = fetch(&mut c, t, "");
    assert_eq!(first.text(), "v1");
    assert_eq!(
        status_of(&first),
        "ringgate; fwd=uri-miss; fwd-status=200; stored"
    );
    for _ in 0..5 {
        let r = fetch(&mut c, t, "");
        assert_eq!(r.text(), "v1");
        assert!(
            status_of(&r).starts_with("ringgate; hit; ttl="),
            "{}",
            status_of(&r)
        );
        assert!(r.header("age").is_some());
    }
    // New connections hit too.
    assert_eq!(
        Client::connect(gw.listen_addr())
            .request(format!("GET {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
            .text(),
        "v1"
    );
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn age_includes_the_age_the_origin_reported() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D600&age=100";
    fetch(&mut c, t, "");
    let hit = fetch(&mut c, t, "");
    assert_eq!(hit.header_count("age"), 1, "the cache writes the only Age");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((100..110).contains(&age), "{age}");
}

#[test]
fn host_is_part_of_the_key() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60";
    c.request(format!("GET {t} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
    let other = c.request(format!("GET {t} HTTP/1.1\r\nHost: b.test\r\n\r\n").as_bytes());
    assert_eq!(
        other.text(),
        "v2",
        "a response for one host is never served to another"
    );
}

#[test]
fn no_store_responses_are_never_stored() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60%2C%20no-store";
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
    assert_eq!(fetch(&mut c, t, "").text(), "v2");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn private_responses_are_not_stored() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=private%2C%20max-age%3D60";
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn responses_without_freshness_are_not_stored_by_default() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?body=x";
    fetch(&mut c, t, "");
    let r = fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 2);
    assert_eq!(status_of(&r), "ringgate; fwd=uri-miss; fwd-status=200");
}

#[test]
fn default_ttl_stores_responses_without_freshness() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| {
        p.default_ttl = Some(Duration::from_secs(60))
    });
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?body=x";
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn set_cookie_responses_are_not_stored_unless_allowed() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&cookie=1";
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 2);

    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| p.store_set_cookie = true);
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn authorization_requests_are_stored_only_when_the_response_allows() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let plain = "/c?cc=max-age%3D60";
    fetch(&mut c, plain, "Authorization: Bearer x\r\n");
    fetch(&mut c, plain, "Authorization: Bearer x\r\n");
    assert_eq!(
        origin.hits_on(plain),
        2,
        "max-age alone does not allow a shared cache to store"
    );
    let public = "/c?cc=public%2C%20max-age%3D60";
    fetch(&mut c, public, "Authorization: Bearer x\r\n");
    fetch(&mut c, public, "Authorization: Bearer x\r\n");
    assert_eq!(origin.hits_on(public), 1);
}

#[test]
fn stale_entry_is_revalidated_with_the_stored_validator() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D0&etag=%22v1%22&body=hello";
    assert_eq!(fetch(&mut c, t, "").text(), "hello");
    let r = fetch(&mut c, t, "");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(status_of(&r), "ringgate; fwd=stale; fwd-status=304; ttl=0");
    let heads = origin.heads_for(t);
    assert_eq!(heads.len(), 2);
    assert!(heads[1].contains("If-None-Match: \"v1\""), "{}", heads[1]);
}

#[test]
fn revalidation_uses_last_modified_without_an_etag() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D0&lm=Tue%2C%2015%20Nov%201994%2012%3A45%3A26%20GMT";
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    let heads = origin.heads_for(t);
    assert!(
        heads[1].contains("If-Modified-Since: Tue, 15 Nov 1994 12:45:26 GMT"),
        "{}",
        heads[1]
    );
}

#[test]
fn client_conditional_gets_304_from_a_fresh_entry() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&etag=%22v1%22";
    fetch(&mut c, t, "");
    let r = fetch(&mut c, t, "If-None-Match: W/\"v1\"\r\n");
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = fetch(&mut c, t, "If-None-Match: *\r\n");
    assert_eq!(r.status, 304);
    let r = fetch(&mut c, t, "If-None-Match: \"other\"\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_exactly_once() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    // Requests after the first wait at the origin until the gate opens.
    let t = "/c?cc=max-age%3D0%2C%20stale-while-revalidate%3D60&gate_after=1";
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
    for _ in 0..5 {
        let r = fetch(&mut c, t, "");
        assert_eq!(r.text(), "v1", "stale content served without waiting");
        assert!(
            status_of(&r).contains("detail=stale-while-revalidate"),
            "{}",
            status_of(&r)
        );
    }
    wait_until(
        Duration::from_secs(5),
        "the background refresh reached the origin",
        || origin.hits_on(t) == 2,
    );
    origin.open_gate();
    wait_until(
        Duration::from_secs(5),
        "the refreshed response is stored",
        || fetch(&mut c, t, "").text() == "v2",
    );
    // One refresh for the five stale hits, and one more only for the requests after it landed.
    assert!(origin.hits_on(t) <= 3, "{}", origin.hits_on(t));
}

#[test]
fn stale_if_error_serves_stale_on_a_5xx() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D0%2C%20stale-if-error%3D60&after=1&after_status=503";
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
    let r = fetch(&mut c, t, "");
    assert_eq!((r.status, r.text().as_str()), (200, "v1"));
    assert!(
        status_of(&r).contains("fwd-status=503") && status_of(&r).contains("stale-if-error"),
        "{}",
        status_of(&r)
    );
}

#[test]
fn must_revalidate_forbids_stale_if_error() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t =
        "/c?cc=max-age%3D0%2C%20stale-if-error%3D60%2C%20must-revalidate&after=1&after_status=503";
    fetch(&mut c, t, "");
    assert_eq!(fetch(&mut c, t, "").status, 503);
}

#[test]
fn fifty_concurrent_misses_cause_one_origin_request() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let addr = gw.listen_addr();
    // The first request is held at the origin until every client has sent.
    let t = "/c?cc=max-age%3D60&gate_after=0&body=shared";
    let responses = concurrent_gets_through_gate(addr, &origin, t, 50);
    let mut forwarded = 0;
    for r in responses {
        assert_eq!(r.text(), "shared");
        let status = status_of(&r);
        if status.contains("fwd-status") {
            forwarded += 1;
        } else {
            assert!(
                status.contains("collapsed") || status.starts_with("ringgate; hit"),
                "{status}"
            );
        }
    }
    assert_eq!(forwarded, 1);
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn head_is_served_from_a_stored_get() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&body=twelve-bytes";
    fetch(&mut c, t, "");
    c.send(format!("HEAD {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    let r = c.read_response_for(true).unwrap();
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(status_of(&r).starts_with("ringgate; hit"));
    assert_eq!(
        fetch(&mut c, t, "").text(),
        "twelve-bytes",
        "no stray body bytes after the HEAD"
    );
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn a_head_miss_does_not_store_a_bodyless_get() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&body=full";
    c.send(format!("HEAD {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    c.read_response_for(true).unwrap();
    assert_eq!(fetch(&mut c, t, "").text(), "full");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn vary_variants_coexist() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&vary=Accept-Encoding";
    let gzip = fetch(&mut c, t, "Accept-Encoding: gzip\r\n").text();
    let br = fetch(&mut c, t, "Accept-Encoding: br\r\n").text();
    assert_ne!(gzip, br);
    assert_eq!(fetch(&mut c, t, "Accept-Encoding: gzip\r\n").text(), gzip);
    assert_eq!(fetch(&mut c, t, "Accept-Encoding: br\r\n").text(), br);
    let none = fetch(&mut c, t, "");
    assert!(
        status_of(&none).contains("fwd=vary-miss"),
        "{}",
        status_of(&none)
    );
    assert_eq!(origin.hits_on(t), 3);
}

#[test]
fn vary_star_is_never_served_from_cache() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&vary=*";
    fetch(&mut c, t, "");
    fetch(&mut c, t, "");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn request_no_cache_forces_revalidation() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&etag=%22e%22";
    fetch(&mut c, t, "");
    let r = fetch(&mut c, t, "Cache-Control: no-cache\r\n");
    assert_eq!(r.status, 200);
    assert!(
        status_of(&r).contains("fwd-status=304"),
        "{}",
        status_of(&r)
    );
    let r = fetch(&mut c, t, "Pragma: no-cache\r\n");
    assert!(
        status_of(&r).contains("fwd-status=304"),
        "{}",
        status_of(&r)
    );
    assert_eq!(origin.hits_on(t), 3);
}

#[test]
fn only_if_cached_miss_is_504() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60";
    assert_eq!(
        fetch(&mut c, t, "Cache-Control: only-if-cached\r\n").status,
        504
    );
    assert_eq!(origin.hits_on(t), 0);
    fetch(&mut c, t, "");
    assert_eq!(
        fetch(&mut c, t, "Cache-Control: only-if-cached\r\n").status,
        200
    );
}

#[test]
fn request_max_age_zero_revalidates() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60";
    fetch(&mut c, t, "");
    assert_eq!(
        fetch(&mut c, t, "Cache-Control: max-age=0\r\n").text(),
        "v2"
    );
}

#[test]
fn a_write_invalidates_the_target_and_its_location() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60";
    fetch(&mut c, t, "");
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
    let put = c.request(
        format!("PUT {t} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\n\r\nx").as_bytes(),
    );
    assert!(put.status < 400);
    assert_eq!(
        fetch(&mut c, t, "").text(),
        "v3",
        "the next GET misses after a write"
    );
}

#[test]
fn a_failed_write_does_not_invalidate() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&after=1&after_status=500";
    fetch(&mut c, t, "");
    let post = c.request(
        format!("POST {t} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(post.status, 500);
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
}

#[test]
fn chunked_responses_are_stored() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&chunked=1&size=5000";
    let first = fetch(&mut c, t, "");
    let second = fetch(&mut c, t, "");
    assert_eq!(second.body.len(), 5000);
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("content-length"), Some("5000"));
    assert_eq!(origin.hits_on(t), 1);
}

#[test]
fn objects_over_the_size_limit_are_not_stored() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| p.max_object_size = Some(1000));
    let mut c = Client::connect(gw.listen_addr());
    let t = "/c?cc=max-age%3D60&size=2000";
    assert_eq!(fetch(&mut c, t, "").body.len(), 2000);
    assert_eq!(fetch(&mut c, t, "").body.len(), 2000);
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn hits_serve_many_clients_concurrently_and_correctly() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.workers.count = Some(2);
    let gw = start(config);
    let addr = gw.listen_addr();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            in_thread(move || {
                let mut c = Client::connect(addr);
                for j in 0..40 {
                    let t = format!("/c?cc=max-age%3D60&body=item{}", (i + j) % 5);
                    let r = fetch(&mut c, &t, "");
                    assert_eq!(r.text(), format!("item{}", (i + j) % 5));
                }
            })
        })
        .collect();
    for t in threads {
        t.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    // At most one fetch per item per worker.
    assert!(origin.requests() <= 10, "{}", origin.requests());
}
