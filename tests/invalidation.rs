//! One logical cache across workers, and everything that invalidates it:
//! PURGE, the admin API's purge kinds (url, prefix, regex, tag, all, soft),
//! writes, plus admin errors, /stats, /health and /metrics. Every test runs
//! two workers and many connections, so requests land on both.

mod common;

use common::*;
use ringgate::cache::policy::CachePolicy;
use ringgate::config::{AdminConfig, IpRange};
use serde_json::Value;
use std::net::SocketAddr;

const CONNECTIONS: usize = 24;

fn two_workers(origin: &Origin, tune: impl FnOnce(&mut ringgate::Config)) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.workers.count = Some(2);
    config.routes[0].cache = Some(CachePolicy::default());
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    tune(&mut config);
    start(config)
}

/// GET on a fresh connection each time (so requests spread over the workers).
fn get_fresh(addr: SocketAddr, target: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request(
        format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn admin(gw: &ringgate::Handle, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let r = c.request(
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    );
    (r.status, r.text())
}

fn stats(gw: &ringgate::Handle) -> Value {
    let (status, body) = admin(gw, "GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Requests the target on many connections; returns the bodies seen.
fn warm(gw: &ringgate::Handle, target: &str) -> Vec<String> {
    (0..CONNECTIONS)
        .map(|_| get_fresh(gw.listen_addr(), target).text())
        .collect()
}

fn hits_per_worker(gw: &ringgate::Handle) -> Vec<u64> {
    stats(gw)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["cache"]["hits"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_response_fetched_by_one_worker_is_a_hit_on_the_others() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60&body=shared";
    assert!(warm(&gw, t).iter().all(|b| b == "shared"));
    assert_eq!(
        origin.hits_on(t),
        1,
        "one origin request for all connections on all workers"
    );
    let hits = hits_per_worker(&gw);
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter().all(|&h| h > 0),
        "both workers served hits: {hits:?}"
    );
}

#[test]
fn a_large_object_is_counted_once_across_workers() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60&size=1000000";
    warm(&gw, t);
    let s = stats(&gw);
    let bytes: Vec<u64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["cache"]["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(
        bytes.iter().filter(|&&b| b >= 1_000_000).count(),
        1,
        "{bytes:?}"
    );
    assert!(bytes.iter().all(|&b| b < 1_000_000 * 11 / 10), "{bytes:?}");
}

#[test]
fn concurrent_cold_misses_across_workers_make_one_origin_request() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let addr = gw.listen_addr();
    let t = "/c?cc=max-age%3D60&gate_after=0&body=cold";
    for r in concurrent_gets_through_gate(addr, &origin, t, 40) {
        assert_eq!(r.text(), "cold");
    }
    assert_eq!(origin.hits_on(t), 1);
}

fn purge_then_miss(purge: impl FnOnce(&ringgate::Handle, &str) -> (u16, String)) {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60&etag=%22e%22";
    warm(&gw, "/c?cc=max-age%3D60&etag=%22e%22");
    assert_eq!(origin.hits_on(t), 1);
    let (status, body) = purge(&gw, t);
    assert_eq!(status, 200, "{body}");
    // Every connection, on either worker, now misses; the first refetches.
    let after = warm(&gw, t);
    assert!(after.iter().all(|b| b == "v2"), "{after:?}");
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn purge_method_invalidates_on_every_worker() {
    purge_then_miss(|gw, t| {
        let mut c = Client::connect(gw.listen_addr());
        let r = c.request(format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
        let again = c.request(format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
        assert_eq!(again.status, 404, "nothing left to purge");
        (r.status, r.text())
    });
}

#[test]
fn admin_purge_by_url() {
    purge_then_miss(|gw, t| {
        let (status, body) = admin(
            gw,
            "POST",
            "/cache/purge",
            &format!(r#"{{"url":"http://shop.test{t}"}}"#),
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["workers"].as_u64(), v["acked"].as_u64()),
            (Some(2), Some(2)),
            "{body}"
        );
        assert!(v["removed"].as_u64().unwrap() >= 1, "{body}");
        (status, body)
    });
}

#[test]
fn admin_purge_by_prefix() {
    purge_then_miss(|gw, _| {
        admin(
            gw,
            "POST",
            "/cache/purge",
            r#"{"prefix":"/c","host":"shop.test"}"#,
        )
    });
}

#[test]
fn admin_purge_by_regex() {
    purge_then_miss(|gw, _| {
        admin(
            gw,
            "POST",
            "/cache/purge",
            r#"{"regex":"^/c\\?cc=max-age"}"#,
        )
    });
}

#[test]
fn admin_purge_all() {
    purge_then_miss(|gw, _| admin(gw, "POST", "/cache/purge", r#"{"all":true}"#));
}

#[test]
fn admin_purge_by_tag() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let one = "/c?cc=max-age%3D60&tag=product-1%20list&body=one";
    let two = "/c?cc=max-age%3D60&tag=list%2Cproduct-2&body=two";
    let other = "/c?cc=max-age%3D60&tag=product-3&body=three";
    for t in [one, two, other] {
        warm(&gw, t);
    }
    let (status, body) = admin(&gw, "POST", "/cache/purge", r#"{"tag":"list"}"#);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["removed"].as_u64().unwrap() >= 2, "{body}");
    for t in [one, two, other] {
        warm(&gw, t);
    }
    assert_eq!(
        (
            origin.hits_on(one),
            origin.hits_on(two),
            origin.hits_on(other)
        ),
        (2, 2, 1)
    );
}

#[test]
fn soft_purge_keeps_entries_for_revalidation() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60&etag=%22e%22";
    warm(&gw, t);
    let (status, body) = admin(
        &gw,
        "POST",
        "/cache/purge",
        &format!(r#"{{"url":"http://shop.test{t}","soft":true}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let r = get_fresh(gw.listen_addr(), t);
    assert_eq!(
        r.text(),
        "v1",
        "the stale entry is revalidated, not refetched"
    );
    assert!(
        r.header("cache-status").unwrap().contains("fwd-status=304"),
        "{:?}",
        r.header("cache-status")
    );
    assert!(origin
        .heads_for(t)
        .last()
        .unwrap()
        .contains("If-None-Match: \"e\""));
}

#[test]
fn a_write_makes_the_next_get_miss_on_every_worker() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60";
    warm(&gw, t);
    let mut c = Client::connect(gw.listen_addr());
    let put = c.request(
        format!("PUT {t} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2\r\n\r\nhi").as_bytes(),
    );
    assert_eq!(put.status, 200);
    // Read-your-writes: whichever worker the next connections land on.
    let after = warm(&gw, t);
    assert!(after.iter().all(|b| b == "v3"), "{after:?}");
}

#[test]
fn purge_from_a_source_not_allowed_is_403() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |c| {
        c.cache.purge_allow = vec![IpRange::parse("10.0.0.0/8").unwrap()]
    });
    let t = "/c?cc=max-age%3D60";
    warm(&gw, t);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    assert_eq!(r.status, 403);
    assert_eq!(get_fresh(gw.listen_addr(), t).text(), "v1", "still cached");
}

#[test]
fn admin_errors_name_the_problem() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    for (body, expect) in [
        ("{not json", "not JSON"),
        (r#"{"colour":"red"}"#, "unknown field `colour`"),
        (r#"{"regex":"("}"#, "bad regex"),
        (r#"{"url":"http://a/","all":true}"#, "exactly one"),
    ] {
        let (status, text) = admin(&gw, "POST", "/cache/purge", body);
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].as_str().unwrap().contains(expect), "{text}");
    }
    assert_eq!(admin(&gw, "GET", "/nowhere", "").0, 404);
    assert_eq!(admin(&gw, "GET", "/cache/purge", "").0, 405);
}

#[test]
fn admin_token_is_required_when_set() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |c| {
        c.admin.as_mut().unwrap().token = Some("s3cret".into());
    });
    assert_eq!(admin(&gw, "GET", "/stats", "").0, 401);
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn health_reports_ready_when_every_worker_answers() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let (status, body) = admin(&gw, "GET", "/health", "");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"ready\"") && body.contains("\"workers\":2"),
        "{body}"
    );
}

#[test]
fn metrics_are_prometheus_text_counting_what_happened() {
    let origin = Origin::start();
    let gw = two_workers(&origin, |_| {});
    let t = "/c?cc=max-age%3D60";
    warm(&gw, t);
    let (status, text) = admin(&gw, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let mut hits = 0;
    let mut requests = 0;
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        // name{worker="N"} value
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: u64 = value.parse().expect("integer value");
        assert!(series.contains("{worker=\""), "{line}");
        if series.starts_with("ringgate_cache_hits_total{") {
            hits += value;
        }
        if series.starts_with("ringgate_requests_total{") {
            requests += value;
        }
    }
    assert_eq!(requests, CONNECTIONS as u64);
    assert_eq!(
        hits,
        CONNECTIONS as u64 - 1,
        "every request but the first was a hit"
    );
}
