//! RFC 9111 (and the parts of RFC 9110 and 9213 a cache depends on) over
//! real sockets: each test is named after the rule it checks, against an
//! origin that counts its requests. Ranges are in `ranges.rs`, the wire
//! forms accepted and refused in `wire.rs`.

mod common;

use common::*;
use ringgate::cache::policy::CachePolicy;

#[test]
fn expires_in_rfc850_format_gives_freshness() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?expires={}", enc("Friday, 06-Nov-76 08:49:37 GMT"));
    assert!(
        second_is_hit(&gw, &t),
        "an RFC 850 Expires in 2076 is fresh"
    );
    assert_eq!(origin.hits_on(&t), 1);
}

#[test]
fn expires_in_asctime_format_gives_freshness() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?expires={}", enc("Sun Nov  6 08:49:37 2095"));
    assert!(second_is_hit(&gw, &t));
    assert_eq!(origin.hits_on(&t), 1);
}

#[test]
fn expires_with_lower_case_names_and_a_wrong_weekday_is_read() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    // 6 Nov 2095 is a Sunday; the field says Monday, in lower case.
    let t = format!("/c?expires={}", enc("mon, 06 nov 2095 08:49:37 gmt"));
    assert!(second_is_hit(&gw, &t));
}

#[test]
fn invalid_expires_means_stale() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?expires={}", enc("next tuesday"));
    assert!(!second_is_hit(&gw, &t));
    assert_eq!(origin.hits_on(&t), 2);
}

#[test]
fn age_with_a_list_value_uses_the_first_member() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    // 7200 seconds old already: a max-age of 3600 makes it stale on arrival.
    let t = format!("/c?cc={}&age={}", enc("max-age=3600"), enc("7200, 0"));
    assert!(!second_is_hit(&gw, &t), "Age: 7200, 0 is 7200 seconds old");
    let t = format!("/c?cc={}&age={}", enc("max-age=3600"), enc("100, 7200"));
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    let hit = fetch(&mut c, &t, "");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((100..200).contains(&age), "{age}");
}

#[test]
fn every_unsafe_method_invalidates_on_a_non_error_response() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?cc={}", enc("max-age=600"));
    let mut c = Client::connect(gw.listen_addr());
    for method in ["M-SEARCH", "PROPPATCH", "LOCK", "POST"] {
        fetch(&mut c, &t, "");
        assert!(cache_status(&fetch(&mut c, &t, "")).contains("hit"));
        let w = c.request(format!("{method} {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
        assert_eq!(w.status, 200, "{method}");
        assert!(
            !cache_status(&fetch(&mut c, &t, "")).contains("hit"),
            "a {method} that succeeded invalidates the stored GET"
        );
    }
}

#[test]
fn a_safe_method_does_not_invalidate() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?cc={}", enc("max-age=600"));
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    for method in ["OPTIONS", "TRACE"] {
        c.request(format!("{method} {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
        assert!(
            cache_status(&fetch(&mut c, &t, "")).contains("hit"),
            "{method}"
        );
    }
}

#[test]
fn a_204_is_stored_and_served_without_a_body() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?status=204&cc={}", enc("max-age=600"));
    let mut c = Client::connect(gw.listen_addr());
    let first = fetch(&mut c, &t, "");
    assert_eq!(first.status, 204);
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let mut c = Client::connect(gw.listen_addr());
    let hit = fetch(&mut c, &t, "");
    assert_eq!(hit.status, 204);
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert!(hit.body.is_empty());
    assert_eq!(
        hit.header("content-length"),
        None,
        "a 204 has no Content-Length"
    );
    // The connection stays in step: the next response is the next one.
    let again = fetch(&mut c, &t, "");
    assert_eq!(again.status, 204);
    assert_eq!(origin.hits_on(&t), 1);
}

#[test]
fn immutable_keeps_a_fresh_entry_from_a_reload_revalidation() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!("/c?cc={}&etag=%22i%22", enc("max-age=600, immutable"));
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    let reload = fetch(&mut c, &t, "Cache-Control: max-age=0\r\n");
    assert!(
        cache_status(&reload).contains("hit"),
        "{}",
        cache_status(&reload)
    );
    assert_eq!(origin.hits_on(&t), 1);
    let mutable = format!("/c?cc={}&etag=%22m%22", enc("max-age=600"));
    fetch(&mut c, &mutable, "");
    fetch(&mut c, &mutable, "Cache-Control: max-age=0\r\n");
    assert_eq!(
        origin.hits_on(&mutable),
        2,
        "without immutable a reload revalidates"
    );
}

#[test]
fn a_client_conditional_is_answered_304_after_a_revalidation() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&etag=%22r%22";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "");
    // `no-cache` makes the cache revalidate with its own validator; the
    // client's matching If-None-Match then gets a 304, not the body.
    let r = fetch(
        &mut c,
        t,
        "Cache-Control: no-cache\r\nIf-None-Match: \"r\"\r\n",
    );
    assert_eq!(r.status, 304, "{}", cache_status(&r));
    assert!(cache_status(&r).contains("fwd-status=304"));
    assert!(r.body.is_empty());
    let r = fetch(
        &mut c,
        t,
        "Cache-Control: no-cache\r\nIf-None-Match: \"other\"\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "v1");
    assert_eq!(origin.hits_on(t), 3);
}

/// A soft purge through the admin API: the entry stays, stale, kept for revalidation.
fn soft_purge(gw: &ringgate::Handle, target: &str) {
    let body = format!(r#"{{"url":"http://shop.test{target}","soft":true}}"#);
    let mut admin = Client::connect(gw.admin_addr().unwrap());
    let r = admin.request(
        format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn cached_gateway_with_admin(origin: &Origin) -> ringgate::Handle {
    start(with_admin({
        let mut config = config_for(origin.addr);
        config.routes[0].cache = Some(CachePolicy::default());
        config
    }))
}

#[test]
fn a_head_response_with_matching_validators_updates_the_stored_get() {
    let origin = Origin::start();
    let gw = cached_gateway_with_admin(&origin);
    let t = "/c?cc=max-age%3D600&etag=%22h%22";
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, t, "").header("x-origin-request"), Some("1"));
    soft_purge(&gw, t);
    // The stale entry makes the HEAD go to the origin; its 200 matches the
    // stored ETag and length, so its fields (and freshness) replace the stored ones.
    c.send(format!("HEAD {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    let head = c.read_response_for(true).unwrap();
    assert_eq!(head.header("x-origin-request"), Some("2"));
    let get = fetch(&mut c, t, "");
    assert!(cache_status(&get).contains("hit"), "{}", cache_status(&get));
    assert_eq!(get.text(), "v1", "the stored body is kept");
    assert_eq!(
        get.header("x-origin-request"),
        Some("2"),
        "the HEAD's fields were stored"
    );
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn a_head_response_without_validators_does_not_update_the_stored_get() {
    let origin = Origin::start();
    let gw = cached_gateway_with_admin(&origin);
    let t = "/c?cc=max-age%3D600";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "");
    soft_purge(&gw, t);
    c.send(format!("HEAD {t} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
    c.read_response_for(true).unwrap();
    let get = fetch(&mut c, t, "");
    assert!(
        !cache_status(&get).contains("hit"),
        "{}",
        cache_status(&get)
    );
}

#[test]
fn a_request_waiting_on_a_revalidation_gets_no_304_it_did_not_ask_for() {
    let origin = Origin::start();
    let gw = cached_gateway_with_admin(&origin);
    // Requests after the first wait at the origin until the gate opens.
    let t = "/c?cc=max-age%3D600&etag=%22w%22&gate_after=1";
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, t, "").text(), "v1");
    soft_purge(&gw, t);
    let answers = concurrent_gets_through_gate(gw.listen_addr(), &origin, t, 3);
    for r in &answers {
        assert_eq!(
            r.status,
            200,
            "no conditional was sent: {}",
            cache_status(r)
        );
        assert_eq!(r.text(), "v1");
    }
}

/// A resource whose `CDN-Cache-Control` is `targeted` and `Cache-Control` is `cc`.
fn targeted_target(targeted: &str, cc: &str) -> String {
    format!("/c?h.CDN-Cache-Control={}&cc={}", enc(targeted), enc(cc))
}

#[test]
fn targeted_max_age_takes_precedence_over_cache_control_no_store() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    assert!(second_is_hit(
        &gw,
        &targeted_target("max-age=600", "no-store")
    ));
}

#[test]
fn targeted_no_store_takes_precedence_over_cache_control_max_age() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    assert!(!second_is_hit(
        &gw,
        &targeted_target("no-store", "max-age=600")
    ));
}

#[test]
fn targeted_max_age_zero_takes_precedence_over_cache_control_max_age() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    assert!(!second_is_hit(
        &gw,
        &targeted_target("max-age=0", "max-age=600")
    ));
}

#[test]
fn targeted_s_maxage_takes_precedence_over_cache_control_max_age() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    assert!(second_is_hit(
        &gw,
        &targeted_target("s-maxage=600", "max-age=0")
    ));
}

#[test]
fn targeted_private_takes_precedence_over_cache_control_public() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    assert!(!second_is_hit(
        &gw,
        &targeted_target("private", "public, max-age=600")
    ));
}

#[test]
fn targeted_no_cache_takes_precedence_over_cache_control_max_age() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!(
        "{}&etag=%22n%22",
        targeted_target("no-cache", "max-age=600")
    );
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    let r = fetch(&mut c, &t, "");
    assert!(
        cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(origin.hits_on(&t), 2, "revalidated on every use");
}

#[test]
fn targeted_stale_while_revalidate_takes_precedence_over_cache_control() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    // 700 s old on arrival: stale for both, but only the targeted field allows serving it stale.
    let t = format!(
        "{}&age=700",
        targeted_target("max-age=600, stale-while-revalidate=600", "max-age=600")
    );
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    let r = fetch(&mut c, &t, "");
    assert!(
        cache_status(&r).contains("stale-while-revalidate"),
        "{}",
        cache_status(&r)
    );
}

#[test]
fn targeted_must_revalidate_takes_precedence_over_cache_control_stale_if_error() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| p.stale_on_error = std::time::Duration::ZERO);
    let t = format!(
        "{}&age=700&after=1&after_status=500",
        targeted_target(
            "max-age=600, must-revalidate",
            "max-age=600, stale-if-error=600"
        )
    );
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, &t, "");
    let r = fetch(&mut c, &t, "");
    assert_eq!(r.status, 500, "{}", cache_status(&r));
}

#[test]
fn a_targeted_field_makes_expires_ignored() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = format!(
        "/c?h.CDN-Cache-Control={}&expires={}",
        enc("must-revalidate"),
        enc("Sun, 06 Nov 2095 08:49:37 GMT")
    );
    assert!(
        !second_is_hit(&gw, &t),
        "Expires does not count beside a targeted field"
    );
}

#[test]
fn an_invalid_targeted_field_falls_back_to_cache_control() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    // Upper case is not a Structured Fields key: the field is invalid.
    assert!(!second_is_hit(
        &gw,
        &targeted_target("Max-Age=600", "no-store")
    ));
    assert!(second_is_hit(
        &gw,
        &targeted_target("max-age=600,", "max-age=600")
    ));
}

#[test]
fn the_first_configured_targeted_field_wins() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |p, _| {
        p.targeted_fields = vec!["ringgate-cache-control".into(), "cdn-cache-control".into()];
    });
    let t = format!(
        "/c?h.Ringgate-Cache-Control={}&h.CDN-Cache-Control={}",
        enc("max-age=600"),
        enc("no-store")
    );
    assert!(second_is_hit(&gw, &t));
    let t = format!(
        "/c?h.Ringgate-Cache-Control={}&h.CDN-Cache-Control={}",
        enc("no-store"),
        enc("max-age=600")
    );
    assert!(!second_is_hit(&gw, &t));
}

#[test]
fn targeted_fields_are_forwarded_unless_configured_not_to() {
    let origin = Origin::start();
    let t = targeted_target("max-age=600", "max-age=60");
    let gw = cached_gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    assert!(fetch(&mut c, &t, "").header("cdn-cache-control").is_some());
    assert!(fetch(&mut c, &t, "").header("cdn-cache-control").is_some());
    drop(gw);
    let gw = cached_gateway_with(&origin, |p, _| p.forward_targeted_fields = false);
    let mut c = Client::connect(gw.listen_addr());
    let t = format!("{t}&v=2");
    let miss = fetch(&mut c, &t, "");
    let hit = fetch(&mut c, &t, "");
    assert!(cache_status(&hit).contains("hit"));
    for r in [miss, hit] {
        assert_eq!(r.header("cdn-cache-control"), None);
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
    }
}

/// Stores `t` (already stale by its `age`), then lets `break_origin` make
/// the origin unreachable, and asks again.
fn after_origin_failure(
    t: &str,
    tune: impl FnOnce(&mut CachePolicy, &mut ringgate::Config),
    break_origin: impl FnOnce(Origin),
) -> Response {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, tune);
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, t, "").status, 200);
    break_origin(origin);
    fetch(&mut Client::connect(gw.listen_addr()), t, "")
}

/// 65 seconds old with a lifetime of 60: five seconds stale.
const STALE_5S: &str = "/c?cc=max-age%3D60&age=65";

#[test]
fn stale_is_served_when_the_origin_refuses_connections() {
    let r = after_origin_failure(STALE_5S, |_, _| {}, Origin::stop);
    assert_eq!(r.status, 200, "{}", cache_status(&r));
    assert_eq!(r.text(), "v1");
    assert!(
        cache_status(&r).contains("fwd=stale; fwd-status=502")
            && cache_status(&r).ends_with("detail=stale"),
        "{}",
        cache_status(&r)
    );
}

#[test]
fn stale_is_served_when_the_origin_closes_before_a_response() {
    let r = after_origin_failure(
        STALE_5S,
        |_, _| {},
        |origin| {
            origin.drop_requests();
            std::mem::forget(origin);
        },
    );
    assert_eq!(r.status, 200, "{}", cache_status(&r));
    assert!(
        cache_status(&r).contains("detail=stale"),
        "{}",
        cache_status(&r)
    );
}

#[test]
fn stale_is_served_when_the_origin_dies_before_the_body_is_complete() {
    let t = "/c?cc=max-age%3D60&age=65&die_after=1&die_at=1&body=hello";
    let r = after_origin_failure(t, |_, _| {}, std::mem::forget);
    assert_eq!(r.status, 200, "{}", cache_status(&r));
    assert_eq!(r.text(), "hello");
    assert!(
        cache_status(&r).contains("detail=stale"),
        "{}",
        cache_status(&r)
    );
}

#[test]
fn stale_is_served_when_the_origin_times_out() {
    // Requests after the first wait at the origin for a gate that never opens.
    let t = "/c?cc=max-age%3D60&age=65&gate_after=1";
    let r = after_origin_failure(
        t,
        |_, config| config.timeouts.upstream_response = std::time::Duration::from_millis(300),
        std::mem::forget,
    );
    assert_eq!(r.status, 200, "{}", cache_status(&r));
    assert!(
        cache_status(&r).contains("fwd-status=504"),
        "{}",
        cache_status(&r)
    );
}

#[test]
fn stale_is_served_when_no_server_is_healthy() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].cache = Some(CachePolicy::default());
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, STALE_5S, "");
    let admin_less = gw.listen_addr();
    origin.stop();
    // Each failed attempt marks the server down; once it is, the request
    // never reaches an upstream, and the stale entry still answers.
    for _ in 0..5 {
        let r = fetch(&mut Client::connect(admin_less), STALE_5S, "");
        assert_eq!(r.status, 200, "{}", cache_status(&r));
    }
}

#[test]
fn stale_beyond_the_grace_window_is_not_served() {
    let t = "/c?cc=max-age%3D60&age=75";
    let r = after_origin_failure(t, |_, _| {}, Origin::stop);
    assert_eq!(r.status, 502);
}

#[test]
fn the_grace_window_is_configurable_per_route() {
    let t = "/c?cc=max-age%3D60&age=75";
    let r = after_origin_failure(
        t,
        |p, _| p.stale_on_error = std::time::Duration::from_secs(60),
        Origin::stop,
    );
    assert_eq!(r.status, 200);
    let r = after_origin_failure(
        STALE_5S,
        |p, _| p.stale_on_error = std::time::Duration::ZERO,
        Origin::stop,
    );
    assert_eq!(r.status, 502, "a zero grace turns it off");
}

#[test]
fn stale_on_error_is_forbidden_by_must_revalidate_proxy_revalidate_s_maxage_and_no_cache() {
    for cc in [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, no-cache",
    ] {
        let t = format!("/c?cc={}&age=65&etag=%22f%22", enc(cc));
        let r = after_origin_failure(&t, |_, _| {}, Origin::stop);
        assert_eq!(r.status, 502, "{cc}: {}", cache_status(&r));
    }
}

#[test]
fn an_origin_error_status_is_not_covered_by_the_grace() {
    // The origin answered: that answer goes out unless stale-if-error allows otherwise.
    let t = "/c?cc=max-age%3D60&age=65&after=1&after_status=503";
    let r = after_origin_failure(t, |_, _| {}, std::mem::forget);
    assert_eq!(r.status, 503);
}

#[test]
fn vary_on_accept_encoding_ignores_order_case_and_q_value_spelling() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&vary=Accept-Encoding";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "Accept-Encoding: gzip, br;q=0.5\r\n");
    for same in ["br;q=0.50, GZIP", "gzip;q=1.0,br;q=0.5", "x-gzip, br;q=0.5"] {
        let r = fetch(&mut c, t, &format!("Accept-Encoding: {same}\r\n"));
        assert!(
            cache_status(&r).contains("hit"),
            "{same}: {}",
            cache_status(&r)
        );
    }
    let other = fetch(&mut c, t, "Accept-Encoding: br, gzip;q=0.5\r\n");
    assert!(
        !cache_status(&other).contains("hit"),
        "another preference is another variant"
    );
}

#[test]
fn vary_on_accept_language_ignores_case_and_q_spelling_but_keeps_order() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let t = "/c?cc=max-age%3D600&vary=Accept-Language";
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, t, "Accept-Language: en-US, fr;q=0.8\r\n");
    let same = fetch(&mut c, t, "Accept-Language: FR;q=0.800,en-us\r\n");
    assert!(
        cache_status(&same).contains("hit"),
        "{}",
        cache_status(&same)
    );
    let reordered = fetch(&mut c, t, "Accept-Language: fr, en-US\r\n");
    assert!(!cache_status(&reordered).contains("hit"));
}

#[test]
fn stale_on_error_is_served_by_every_worker() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |_, config| config.workers.count = Some(2));
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(fetch(&mut c, STALE_5S, "").status, 200);
    origin.stop();
    for _ in 0..16 {
        let mut c = Client::connect(gw.listen_addr());
        let r = fetch(&mut c, STALE_5S, "Connection: close\r\n");
        assert_eq!(r.status, 200, "{}", cache_status(&r));
        assert!(
            cache_status(&r).contains("detail=stale"),
            "{}",
            cache_status(&r)
        );
    }
}
