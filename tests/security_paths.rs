//! Attacks on what a route matches: re-encoded, doubled, dotted and
//! backslashed paths, and hosts spelt several ways. The origin here decodes
//! paths as lenient application servers do, so any spelling the gateway let
//! through to the unprotected catch-all would reach the protected page.

mod common;

use common::*;
use ringgate::config::{Config, RouteConfig};

/// `/admin/` needs a token, `/` does not; both go to a decoding origin.
fn protected_admin(origin: &DecodingOrigin, tweak: impl FnOnce(&mut Config)) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.admin = None;
    config.routes = vec![
        RouteConfig {
            path_prefix: "/admin/".into(),
            auth: Some(test_auth_policy()),
            ..RouteConfig::to("admin", 0)
        },
        RouteConfig::to("public", 0),
    ];
    tweak(&mut config);
    start(config)
}

fn send(gw: &ringgate::Handle, target: &str, extra: &str) -> Response {
    Client::connect(gw.listen_addr()).request(
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn no_spelling_of_a_protected_path_reaches_it_without_a_token() {
    let origin = DecodingOrigin::start();
    let gw = protected_admin(&origin, |_| {});
    for target in [
        "/%61dmin/secret",
        "//admin/secret",
        "/admin%2fsecret",
        "/admin%2Fsecret",
        "/x/..%2fadmin/secret",
        "/x/%2e%2e/admin/secret",
        "/x/.%2e/admin/secret",
        "/%2e/admin/secret",
        "/./admin/secret",
        "/admin/./secret",
        "/admin\\secret",
        "/admin%5csecret",
        "/x/..\\admin/secret",
        "/%2fadmin/secret",
        "///admin//secret",
        "/%61%64%6d%69%6e/%73ecret",
        "/admin%00/secret",
        "/%u0061dmin/secret",
        "/admin",
        "/x/..;/admin/secret",
        "/x/%2e%2e;jsessionid=1/admin/secret",
        "http://t//admin/secret",
        "http://t/%61dmin/secret",
    ] {
        let r = send(&gw, target, "");
        assert!(
            !r.text().contains("secret"),
            "{target} reached the protected page: {} {}",
            r.status,
            r.text()
        );
        assert!(
            matches!(r.status, 400 | 401 | 301),
            "{target}: {} {}",
            r.status,
            r.text()
        );
    }
    // The gateway still serves after every refusal.
    assert_eq!(send(&gw, "/index", "").text(), "public /index");
}

#[test]
fn the_canonical_path_is_what_the_origin_gets() {
    let origin = DecodingOrigin::start();
    let gw = protected_admin(&origin, |_| {});
    let token = format!("Authorization: Bearer {}\r\n", token_for("alice"));
    for target in ["/%61dmin/secret", "//admin//secret", "/admin/%73ecret"] {
        let r = send(&gw, target, &token);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.text(), "secret /admin/secret", "{target}");
        assert_eq!(
            r.header("x-raw-target"),
            Some("/admin/secret"),
            "{target} is forwarded in canonical form"
        );
    }
    // Escapes that are not unreserved stay encoded, hex in upper case; the query is untouched.
    let r = send(&gw, "/caf%c3%a9?q=%2f%41", "");
    assert_eq!(r.header("x-raw-target"), Some("/caf%C3%A9?q=%2f%41"));
}

#[test]
fn a_prefix_without_its_slash_redirects_to_the_protected_route() {
    let origin = DecodingOrigin::start();
    let gw = protected_admin(&origin, |_| {});
    let r = send(&gw, "/admin?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/admin/?x=1"));
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    let r = Client::connect(gw.listen_addr()).request(
        b"POST /%61dmin HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        r.status, 308,
        "a redirect for other methods keeps the method"
    );
}

#[test]
fn kept_escaped_slashes_are_forwarded_encoded_and_never_route_as_slashes() {
    let origin = DecodingOrigin::start();
    let gw = protected_admin(&origin, |c| {
        c.paths.escaped_slashes = ringgate::http::target::EscapedSlashes::Keep;
    });
    let r = send(&gw, "/files/a%2fb", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-raw-target"), Some("/files/a%2Fb"));
    // Still no way through: a dot segment or NUL is refused whatever the mode.
    assert_eq!(send(&gw, "/x/%2e%2e/admin/secret", "").status, 400);
    assert_eq!(send(&gw, "/a%00", "").status, 400);
}

#[test]
fn merge_slashes_can_be_turned_off() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.paths.merge_slashes = false;
    let gw = start(config);
    assert_eq!(get(gw.listen_addr(), "//x//y").status, 200);
    assert!(
        origin.last_head().starts_with("GET //x//y HTTP/1.1"),
        "{}",
        origin.last_head()
    );
}

#[test]
fn a_rewrite_applies_to_the_canonical_path() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes = vec![RouteConfig {
        path_prefix: "/api/".into(),
        rewrite_prefix: Some("/echo/".into()),
        ..RouteConfig::to("api", 0)
    }];
    let gw = start(config);
    for target in ["/%61pi/items?x=1", "//api//items?x=1", "/api/%69tems?x=1"] {
        let r = get(gw.listen_addr(), target);
        assert!(
            r.text().starts_with("GET /echo/items?x=1 HTTP/1.1"),
            "{target}: {}",
            r.text()
        );
    }
}

#[test]
fn every_spelling_of_a_url_shares_one_cache_entry() {
    let origin = Origin::start();
    let gw = start(config_for(origin.addr));
    let target = "/c?cc=max-age%3D60";
    assert_eq!(get(gw.listen_addr(), target).status, 200);
    for spelling in [
        "/%63?cc=max-age%3D60",
        "//c?cc=max-age%3D60",
        "///%63?cc=max-age%3D60",
    ] {
        let r = get(gw.listen_addr(), spelling);
        assert!(
            r.header("cache-status").unwrap().contains("hit"),
            "{spelling}: {:?}",
            r.header("cache-status")
        );
    }
    assert_eq!(origin.hits_on(target), 1);
    // A PURGE in any spelling removes it.
    let r = Client::connect(gw.listen_addr()).request(
        b"PURGE //%63?cc=max-age%3D60 HTTP/1.1\r\nHost: TEST:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    get(gw.listen_addr(), target);
    assert_eq!(origin.hits_on(target), 2);
}

#[test]
fn host_spellings_share_one_form_for_routing_key_and_upstream() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.routes[0].host = ringgate::config::HostMatch::Exact("good".into());
    let gw = start(config);
    let fetch = |host: &str, target: &str| {
        Client::connect(gw.listen_addr()).request(
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let first = fetch("GOOD:80", "/c?cc=max-age%3D60&body=good");
    assert_eq!(first.status, 200);
    let head = origin
        .heads_for("/c?cc=max-age%3D60&body=good")
        .pop()
        .unwrap();
    assert!(
        head.contains("\r\nHost: good\r\n"),
        "the origin sees the canonical host:\n{head}"
    );
    for host in ["good", "Good.", "good.:80", "gOOd:0080"] {
        let r = fetch(host, "/c?cc=max-age%3D60&body=good");
        assert_eq!(r.status, 200, "{host}");
        assert!(r.header("cache-status").unwrap().contains("hit"), "{host}");
    }
    assert_eq!(origin.hits_on("/c?cc=max-age%3D60&body=good"), 1);
    // Another port is another origin: a miss, forwarded with its port.
    let r = fetch("good:8080", "/echo");
    assert!(r.text().contains("\r\nHost: good:8080\r\n"), "{}", r.text());
    assert_eq!(fetch("evil", "/echo").status, 404);
    assert_eq!(fetch("good:99999", "/echo").status, 400);
}
