//! RFC 9111 (and the parts of RFC 9110 and 9213 a cache depends on) over
//! real sockets: each test is named after the rule it checks, against an
//! origin that counts its requests.

mod common;

use common::*;
use ringgate::cache::policy::CachePolicy;

fn cached_gateway_with(
    origin: &Origin,
    tune: impl FnOnce(&mut CachePolicy, &mut ringgate::Config),
) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    let mut policy = CachePolicy::default();
    tune(&mut policy, &mut config);
    config.routes[0].cache = Some(policy);
    start(config)
}

fn cached_gateway(origin: &Origin) -> ringgate::Handle {
    cached_gateway_with(origin, |_, _| {})
}

/// Percent-encodes a value for the origin's `/c?` query.
fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn fetch(c: &mut Client, target: &str, extra: &str) -> Response {
    c.request(format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\n{extra}\r\n").as_bytes())
}

fn cache_status(r: &Response) -> String {
    r.header("cache-status").unwrap_or("").to_string()
}

/// Fetches `target` twice; true when the second answer came from the cache.
fn second_is_hit(gw: &ringgate::Handle, target: &str) -> bool {
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, target, "");
    cache_status(&fetch(&mut c, target, "")).contains("hit")
}

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
