//! Retries to other servers: on connect failure (any method), on a reset
//! before any response byte and on configured statuses (idempotent requests
//! only), within the retry budget.

mod common;

use common::*;
use ringgate::config::{BalancePolicy, RetryPolicy, ServerConfig, UpstreamGroup};
use std::net::SocketAddr;

fn dead_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn gateway(servers: &[SocketAddr], retry: Option<RetryPolicy>) -> ringgate::Handle {
    let mut config = config_for(servers[0]);
    config.routes[0].cache = None;
    config.routes[0].retry = retry;
    config.upstreams = vec![UpstreamGroup {
        name: "app".into(),
        servers: servers
            .iter()
            .map(|&address| ServerConfig { address, weight: 1 })
            .collect(),
        balance: BalancePolicy::RoundRobin,
        max_pending: 0,
        max_pending_per_server: 0,
        outlier: None,
        health: None,
        sticky: None,
        discovery: None,
        tls: None,
        protocol: Default::default(),
    }];
    start(config)
}

fn policy(statuses: &[u16], budget: f64, min_per_second: u32) -> RetryPolicy {
    RetryPolicy {
        attempts: 1,
        on_connect_failure: true,
        on_reset: true,
        statuses: statuses.to_vec(),
        budget,
        min_per_second,
    }
}

fn send(c: &mut Client, method: &str) -> u16 {
    let body = if method == "POST" {
        "Content-Length: 2\r\n\r\nhi"
    } else {
        "\r\n"
    };
    c.request(format!("{method} /x HTTP/1.1\r\nHost: t\r\n{body}").as_bytes())
        .status
}

#[test]
fn connect_failures_are_retried_on_another_server_for_any_method() {
    let live = Origin::start();
    let gw = gateway(&[dead_address(), live.addr], Some(policy(&[], 1.0, 10)));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..10 {
        assert_eq!(send(&mut c, "GET"), 200);
        assert_eq!(
            send(&mut c, "POST"),
            200,
            "nothing was sent, so even a POST is retried"
        );
    }
    assert_eq!(live.requests(), 20);
}

#[test]
fn without_a_retry_policy_a_dead_server_is_a_502() {
    let live = Origin::start();
    let gw = gateway(&[dead_address(), live.addr], None);
    let mut c = Client::connect(gw.listen_addr());
    let statuses: Vec<u16> = (0..4).map(|_| send(&mut c, "GET")).collect();
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
}

#[test]
fn configured_statuses_are_retried_for_idempotent_requests_only() {
    let (failing, good) = (Origin::start(), Origin::start());
    failing.fail_with(503);
    let gw = gateway(&[failing.addr, good.addr], Some(policy(&[503], 1.0, 10)));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..6 {
        assert_eq!(send(&mut c, "GET"), 200);
    }
    assert!(failing.requests() > 0, "the failing server was tried");
    // A POST that reached a server is never sent again: its 503 is the answer.
    let failing_before = failing.requests();
    let posts: Vec<u16> = (0..6).map(|_| send(&mut c, "POST")).collect();
    let failed_posts = posts.iter().filter(|&&s| s == 503).count();
    assert!(failed_posts > 0, "{posts:?}");
    assert_eq!(
        failed_posts,
        failing.requests() - failing_before,
        "every POST the failing server saw got its 503: {posts:?}"
    );
}

#[test]
fn a_reset_before_any_response_byte_is_retried_for_get_not_post() {
    let (dropping, good) = (Origin::start(), Origin::start());
    dropping.drop_requests();
    let gw = gateway(&[dropping.addr, good.addr], Some(policy(&[], 1.0, 10)));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..4 {
        assert_eq!(send(&mut c, "GET"), 200);
    }
    let posts: Vec<u16> = (0..4).map(|_| send(&mut c, "POST")).collect();
    assert!(
        posts.contains(&502),
        "a POST the server may have seen is not replayed: {posts:?}"
    );
}

#[test]
fn the_budget_caps_retries() {
    let (failing, good) = (Origin::start(), Origin::start());
    failing.fail_with(503);
    let gw = gateway(&[failing.addr, good.addr], Some(policy(&[503], 0.0, 0)));
    let mut c = Client::connect(gw.listen_addr());
    let statuses: Vec<u16> = (0..6).map(|_| send(&mut c, "GET")).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        3,
        "no budget, no retries: {statuses:?}"
    );
    assert_eq!(good.requests() + failing.requests(), 6);
}
