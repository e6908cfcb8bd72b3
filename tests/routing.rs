//! Routing by host (exact and wildcard), path prefix, method and header,
//! with prefix rewriting and request header edits, against two real origins.

mod common;

use common::*;
use ringgate::Config;

fn two_origin_config(a: &Origin, b: &Origin, routes: &str) -> Config {
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[workers]
count = 1
[upstreams.a]
servers = ["{}"]
[upstreams.b]
servers = ["{}"]
{routes}
"#,
        a.addr, b.addr
    );
    without_admin(Config::parse(&text).unwrap())
}

/// These tests run in parallel: none may take the admin API's fixed port.
fn without_admin(mut config: Config) -> Config {
    config.admin = None;
    config
}

fn request(addr: std::net::SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request(raw.as_bytes())
}

#[test]
fn routes_by_exact_and_wildcard_host() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
host = "api.example.com"
upstream = "a"
[[routes]]
host = "*.example.com"
upstream = "b"
"#,
    ));
    let addr = gw.listen_addr();
    assert_eq!(
        request(
            addr,
            "GET /echo HTTP/1.1\r\nHost: API.Example.com:8080\r\n\r\n"
        )
        .status,
        200
    );
    assert_eq!((a.requests(), b.requests()), (1, 0));
    assert_eq!(
        request(addr, "GET /echo HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").status,
        200
    );
    assert_eq!((a.requests(), b.requests()), (1, 1));
    assert_eq!(
        request(addr, "GET /echo HTTP/1.1\r\nHost: example.com\r\n\r\n").status,
        404
    );
    assert_eq!(
        request(addr, "GET /echo HTTP/1.1\r\nHost: other.org\r\n\r\n").status,
        404
    );
}

#[test]
fn absolute_form_target_routes_on_its_authority() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
host = "api.example.com"
upstream = "a"
[[routes]]
upstream = "b"
"#,
    ));
    let r = request(
        gw.listen_addr(),
        "GET http://api.example.com/echo HTTP/1.1\r\nHost: other\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(a.requests(), 1);
    assert!(
        r.text().contains("Host: api.example.com"),
        "the target's authority replaces Host:\n{}",
        r.text()
    );
}

#[test]
fn routes_by_path_prefix_and_rewrites_it() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
path_prefix = "/api/"
rewrite_prefix = "/"
upstream = "a"
[[routes]]
path_prefix = "/"
upstream = "b"
"#,
    ));
    let r = request(
        gw.listen_addr(),
        "GET /api/echo/users?page=2 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert!(
        r.text().starts_with("GET /echo/users?page=2 HTTP/1.1"),
        "{}",
        r.text()
    );
    let r = request(
        gw.listen_addr(),
        "GET /echo/static HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert!(r.text().starts_with("GET /echo/static HTTP/1.1"));
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[test]
fn routes_by_method() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
methods = ["POST", "PUT"]
upstream = "a"
[[routes]]
upstream = "b"
"#,
    ));
    let addr = gw.listen_addr();
    request(
        addr,
        "PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    request(addr, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[test]
fn routes_by_header_presence_and_value() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
header = { name = "X-Canary", value = "1" }
upstream = "a"
[[routes]]
upstream = "b"
"#,
    ));
    let addr = gw.listen_addr();
    request(addr, "GET /echo HTTP/1.1\r\nHost: t\r\nx-canary: 1\r\n\r\n");
    request(addr, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Canary: 2\r\n\r\n");
    request(addr, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((a.requests(), b.requests()), (1, 2));
}

#[test]
fn route_sets_and_removes_request_headers() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[[routes]]
upstream = "a"
set_request_headers = { "X-Gateway" = "ringgate", "X-Tenant" = "blue" }
remove_request_headers = ["X-Debug"]
"#,
    ));
    let r = request(
        gw.listen_addr(),
        "GET /echo HTTP/1.1\r\nHost: t\r\nX-Debug: on\r\nX-Tenant: forged\r\n\r\n",
    );
    let seen = r.text();
    assert!(
        seen.contains("X-Gateway: ringgate") && seen.contains("X-Tenant: blue"),
        "{seen}"
    );
    assert!(
        !seen.contains("X-Debug") && !seen.contains("forged"),
        "{seen}"
    );
}

#[test]
fn weighted_servers_share_requests_by_weight() {
    let (a, b) = (Origin::start(), Origin::start());
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[workers]
count = 1
[upstreams.app]
servers = [{{ address = "{}", weight = 3 }}, {{ address = "{}", weight = 1 }}]
[[routes]]
upstream = "app"
"#,
        a.addr, b.addr
    );
    let gw = start(without_admin(Config::parse(&text).unwrap()));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..40 {
        assert_eq!(c.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (30, 10));
}

#[test]
fn equal_servers_share_requests_round_robin() {
    let (a, b) = (Origin::start(), Origin::start());
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[workers]\ncount = 1\n[upstreams.app]\nservers = [\"{}\", \"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        a.addr, b.addr
    );
    let gw = start(without_admin(Config::parse(&text).unwrap()));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..10 {
        c.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

#[test]
fn route_timeouts_override_the_gateway_wide_ones() {
    let (a, b) = (Origin::start(), Origin::start());
    // Every answer of origin `a` takes 600 ms: longer than the gateway-wide
    // response timeout, shorter than the one of the `/slow/` route.
    a.log
        .delay_ms
        .store(600, std::sync::atomic::Ordering::Relaxed);
    let gw = start(two_origin_config(
        &a,
        &b,
        r#"
[timeouts]
upstream_response = "200ms"
[[routes]]
path_prefix = "/slow/"
upstream = "a"
[routes.timeouts]
upstream_response = "5s"
[[routes]]
path_prefix = "/"
upstream = "a"
"#,
    ));
    let addr = gw.listen_addr();
    let slow = request(addr, "GET /slow/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(slow.status, 200, "the route's longer timeout applies");
    let other = request(addr, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(other.status, 504, "other routes keep the gateway-wide one");
}

#[test]
fn a_zero_route_timeout_is_refused_with_its_key() {
    let text = r#"
[[listeners]]
address = "127.0.0.1:0"
[upstreams.a]
servers = ["127.0.0.1:1"]
[[routes]]
upstream = "a"
[routes.timeouts]
upstream_read = "0s"
"#;
    let err = Config::parse(text).unwrap_err().to_string();
    assert!(
        err.contains("routes[0].timeouts.upstream_read"),
        "error names the key: {err}"
    );
}
