//! Attacks on what the cache keys and varies on: one user's page must never
//! answer another, a client must not plant its page as someone else's
//! variant, and a purge must reach every entry stored for its URL.

mod common;

use common::*;
use ringgate::config::Config;

/// A caching route that verifies tokens and forwards the subject as `X-User`.
fn authenticated_cache(origin: &Origin) -> Config {
    let mut config = config_for(origin.addr);
    config.routes[0].auth = Some(test_auth_policy());
    config
}

fn get_as(gw: &ringgate::Handle, target: &str, user: &str, extra: &str) -> Response {
    Client::connect(gw.listen_addr()).request(
        format!(
            "GET {target} HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer {}\r\n{extra}Connection: close\r\n\r\n",
            token_for(user)
        )
        .as_bytes(),
    )
}

const ACCOUNT: &str = "/c?cc=public,%20max-age%3D600&vary=X-User&echo=X-User";

#[test]
fn a_verified_users_cached_page_is_never_served_to_another_user() {
    let origin = Origin::start();
    let gw = start(authenticated_cache(&origin));
    let a = get_as(&gw, ACCOUNT, "alice", "");
    assert_eq!(a.text(), "x-user=alice");
    assert!(a.header("cache-status").unwrap().contains("stored"));
    let b = get_as(&gw, ACCOUNT, "bob", "");
    assert_eq!(b.text(), "x-user=bob", "bob got {}", b.text());
    assert!(!b.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits_on(ACCOUNT), 2);
    // Each user's own page is a hit from now on.
    assert_eq!(get_as(&gw, ACCOUNT, "alice", "").text(), "x-user=alice");
    assert_eq!(get_as(&gw, ACCOUNT, "bob", "").text(), "x-user=bob");
    assert_eq!(origin.hits_on(ACCOUNT), 2);
}

#[test]
fn a_client_cannot_store_its_page_as_another_users_variant() {
    let origin = Origin::start();
    let gw = start(authenticated_cache(&origin));
    // Bob claims to be alice in the header the gateway owns: the forwarded
    // request says bob, so the entry is bob's.
    let b = get_as(&gw, ACCOUNT, "bob", "X-User: alice\r\n");
    assert_eq!(b.text(), "x-user=bob");
    // Alice's own client sends the same header (an SDK that names its user):
    // she must get her page, never the one bob planted.
    let a = get_as(&gw, ACCOUNT, "alice", "X-User: alice\r\n");
    assert_eq!(a.text(), "x-user=alice", "alice got {}", a.text());
    assert_eq!(get_as(&gw, ACCOUNT, "alice", "").text(), "x-user=alice");
    assert_eq!(origin.hits_on(ACCOUNT), 2);
}

#[test]
fn key_headers_are_read_from_the_forwarded_request() {
    let origin = Origin::start();
    let mut config = authenticated_cache(&origin);
    config.routes[0].cache.as_mut().unwrap().key_headers = vec!["x-user".into()];
    let gw = start(config);
    let target = "/c?cc=public,%20max-age%3D600&echo=X-User";
    assert_eq!(get_as(&gw, target, "alice", "").text(), "x-user=alice");
    assert_eq!(
        get_as(&gw, target, "bob", "X-User: alice\r\n").text(),
        "x-user=bob"
    );
    assert_eq!(get_as(&gw, target, "alice", "").text(), "x-user=alice");
    assert_eq!(get_as(&gw, target, "bob", "").text(), "x-user=bob");
    assert_eq!(origin.hits_on(target), 2);
}

#[test]
fn a_header_the_gateway_drops_does_not_select_a_variant() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let target = "/c?cc=max-age%3D600&vary=X-Flag&echo=X-Flag";
    let fetch = |headers: &str| {
        Client::connect(gw.listen_addr()).request(
            format!(
                "GET {target} HTTP/1.1\r\nHost: shop.test\r\n{headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    // Listed in Connection, X-Flag is hop-by-hop: the origin answers without it.
    let first = fetch("X-Flag: 1\r\nConnection: X-Flag, close\r\n");
    assert_eq!(first.text(), "x-flag=");
    // A client that does send X-Flag upstream must not get that variant.
    let second = fetch("X-Flag: 1\r\n");
    assert_eq!(
        second.text(),
        "x-flag=1",
        "{:?}",
        second.header("cache-status")
    );
    assert_eq!(fetch("").text(), "x-flag=", "the flagless variant is a hit");
    assert_eq!(origin.hits_on(target), 2);
}

#[test]
fn a_background_refresh_carries_the_triggering_requests_identity() {
    let origin = Origin::start();
    let gw = start(authenticated_cache(&origin));
    let target =
        "/c?cc=public,%20max-age%3D0,%20stale-while-revalidate%3D60&vary=X-User&echo=X-User";
    assert_eq!(get_as(&gw, target, "alice", "").text(), "x-user=alice");
    let stale = get_as(&gw, target, "alice", "");
    assert!(stale
        .header("cache-status")
        .unwrap()
        .contains("stale-while-revalidate"));
    wait_until(
        std::time::Duration::from_secs(5),
        "the background refresh",
        || origin.hits_on(target) == 2,
    );
    let refresh = origin.heads_for(target).pop().unwrap();
    assert!(refresh.contains("\r\nX-User: alice"), "{refresh}");
    // What the refresh stored is alice's again, never an anonymous page.
    wait_until(
        std::time::Duration::from_secs(5),
        "the refreshed entry",
        || get_as(&gw, target, "alice", "").header("x-origin-request") == Some("2"),
    );
    assert_eq!(get_as(&gw, target, "alice", "").text(), "x-user=alice");
}

/// A caching route whose key adds a header and a cookie, and drops a
/// tracking parameter from the query.
fn keyed_route(origin: &Origin) -> Config {
    let mut config = with_admin(config_for(origin.addr));
    let policy = config.routes[0].cache.as_mut().unwrap();
    policy.key_headers = vec!["x-tenant".into()];
    policy.key_cookies = vec!["lang".into()];
    policy.query = ringgate::cache::policy::QueryKey::IgnoreParams(vec!["utm".into()]);
    config
}

fn fetch_keyed(gw: &ringgate::Handle, target: &str, tenant: &str, lang: &str) -> Response {
    Client::connect(gw.listen_addr()).request(
        format!(
            "GET {target} HTTP/1.1\r\nHost: shop.test\r\nX-Tenant: {tenant}\r\nCookie: lang={lang}\r\nAccept-Encoding: {lang}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn store_variants(gw: &ringgate::Handle, target: &str) {
    for (tenant, lang) in [("blue", "de"), ("red", "fr"), ("red", "de")] {
        let r = fetch_keyed(gw, target, tenant, lang);
        assert!(
            r.header("cache-status").unwrap().contains("stored"),
            "{tenant} {lang}: {}",
            r.head
        );
        let r = fetch_keyed(gw, target, tenant, lang);
        assert!(
            r.header("cache-status").unwrap().contains("hit"),
            "{tenant} {lang}"
        );
    }
}

/// None of the entries [`store_variants`] made is left.
fn assert_none_left(gw: &ringgate::Handle, target: &str) {
    for (tenant, lang) in [("blue", "de"), ("red", "fr"), ("red", "de")] {
        let r = fetch_keyed(gw, target, tenant, lang);
        assert!(
            !r.header("cache-status").unwrap().contains("hit"),
            "{tenant} {lang} survived"
        );
    }
}

#[test]
fn purge_removes_every_entry_of_a_url_whatever_its_key_parts() {
    let origin = Origin::start();
    let gw = start(keyed_route(&origin));
    let target = "/c?cc=max-age%3D600&vary=Accept-Encoding&utm=x";
    store_variants(&gw, target);
    let r = Client::connect(gw.listen_addr()).request(
        format!("PURGE {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"removed\":3"), "{}", r.text());
    assert_none_left(&gw, target);
}

#[test]
fn admin_url_purge_removes_every_entry_of_a_url_whatever_its_key_parts() {
    let origin = Origin::start();
    let gw = start(keyed_route(&origin));
    let target = "/c?cc=max-age%3D600&vary=Accept-Encoding&utm=y";
    store_variants(&gw, target);
    // Another spelling of the same URL, and the tracking parameter that the key drops.
    let body =
        r#"{"url":"http://SHOP.test:80//%63?cc=max-age%3D600&vary=Accept-Encoding&utm=other"}"#;
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let r = c.request(
        format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"removed\":3"), "{}", r.text());
    assert_none_left(&gw, target);
}

#[test]
fn a_write_invalidates_every_entry_of_its_url() {
    let origin = Origin::start();
    let gw = start(keyed_route(&origin));
    let target = "/c?cc=max-age%3D600&vary=Accept-Encoding";
    store_variants(&gw, target);
    let r = Client::connect(gw.listen_addr()).request(
        format!("PUT {target} HTTP/1.1\r\nHost: shop.test\r\nX-Tenant: blue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_none_left(&gw, target);
}
