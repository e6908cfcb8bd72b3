//! Load-balancing policies over real origins: each policy's distribution,
//! least-outstanding and peak-EWMA steering away from a slow server, and
//! consistent hashing keeping a client on one server across connections
//! (and so across workers).

mod common;

use common::*;
use ringgate::config::{BalancePolicy, Config, HashKey, ServerConfig, UpstreamGroup};
use std::time::Duration;

fn gateway(origins: &[&Origin], balance: BalancePolicy, workers: usize) -> ringgate::Handle {
    gateway_with(origins, balance, workers, |_| {})
}

fn gateway_with(
    origins: &[&Origin],
    balance: BalancePolicy,
    workers: usize,
    tune: impl FnOnce(&mut UpstreamGroup),
) -> ringgate::Handle {
    let mut config: Config = config_for(origins[0].addr);
    config.workers.count = Some(workers);
    config.routes[0].cache = None;
    config.upstreams = vec![UpstreamGroup {
        name: "app".into(),
        servers: origins
            .iter()
            .map(|o| ServerConfig {
                address: o.addr,
                weight: 1,
            })
            .collect(),
        balance,
        max_pending: 0,
        max_pending_per_server: 0,
        outlier: None,
        health: None,
        sticky: None,
        discovery: None,
        tls: None,
        protocol: Default::default(),
    }];
    tune(&mut config.upstreams[0]);
    start(config)
}

#[test]
fn random_spreads_requests_over_all_servers() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = gateway(&[&a, &b], BalancePolicy::Random, 1);
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..400 {
        assert_eq!(c.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    }
    assert!(
        (140..260).contains(&a.requests()),
        "a {} b {}",
        a.requests(),
        b.requests()
    );
    assert_eq!(a.requests() + b.requests(), 400);
}

#[test]
fn least_request_avoids_a_server_with_requests_stuck_in_flight() {
    let (slow, fast) = (Origin::start(), Origin::start());
    let gw = gateway(&[&slow, &fast], BalancePolicy::LeastRequest, 1);
    let addr = gw.listen_addr();
    // Requests held at the slow origin stay outstanding; the fast one answers at once.
    let stuck: Vec<_> = (0..3)
        .map(|_| {
            in_thread(move || {
                let mut c = Client::connect(addr);
                c.request(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
            })
        })
        .collect();
    wait_until(Duration::from_secs(5), "requests stuck in flight", || {
        slow.requests() + fast.requests() >= 3
    });
    // Wherever the gated requests landed, the server holding them now has the most outstanding.
    let busy_is_slow = slow.requests() >= fast.requests();
    let (busy, idle) = if busy_is_slow {
        (&slow, &fast)
    } else {
        (&fast, &slow)
    };
    let (busy_before, idle_before) = (busy.requests(), idle.requests());
    let mut c = Client::connect(addr);
    for _ in 0..50 {
        c.request(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    let to_busy = busy.requests() - busy_before;
    let to_idle = idle.requests() - idle_before;
    assert!(
        to_busy <= 5,
        "least_request sent {to_busy} of 50 to the busy server ({to_idle} to the idle one)"
    );
    slow.open_gate();
    fast.open_gate();
    for s in stuck {
        s.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}

#[test]
fn peak_ewma_avoids_a_slow_server() {
    let (slow, fast) = (Origin::start(), Origin::start());
    slow.set_delay(Duration::from_millis(30));
    let gw = gateway(&[&slow, &fast], BalancePolicy::PeakEwma, 1);
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..60 {
        assert_eq!(c.request(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    }
    // Each server is tried while unmeasured; once measured, the slow one is avoided.
    assert!(
        slow.requests() <= 4,
        "slow {} fast {}",
        slow.requests(),
        fast.requests()
    );
}

#[test]
fn hash_on_a_header_keeps_a_client_on_one_server_across_connections() {
    let origins = [Origin::start(), Origin::start(), Origin::start()];
    let gw = gateway(
        &origins.iter().collect::<Vec<_>>(),
        BalancePolicy::Hash(HashKey::Header("x-user".into())),
        2,
    );
    for user in ["alice", "bob", "carol", "dave"] {
        let before: Vec<usize> = origins.iter().map(Origin::requests).collect();
        for _ in 0..12 {
            // A new connection each time: the requests spread over both workers.
            let mut c = Client::connect(gw.listen_addr());
            let r = c.request(
                format!(
                    "GET /x HTTP/1.1\r\nHost: t\r\nX-User: {user}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            assert_eq!(r.status, 200);
        }
        let served: Vec<usize> = origins
            .iter()
            .zip(&before)
            .map(|(o, b)| o.requests() - b)
            .collect();
        assert_eq!(
            served.iter().filter(|&&n| n > 0).count(),
            1,
            "{user} spread over {served:?}"
        );
    }
}

#[test]
fn hash_on_a_cookie_is_sticky_and_spreads_different_sessions() {
    let origins = [Origin::start(), Origin::start(), Origin::start()];
    let gw = gateway(
        &origins.iter().collect::<Vec<_>>(),
        BalancePolicy::Hash(HashKey::Cookie("session".into())),
        2,
    );
    let mut owners = std::collections::HashSet::new();
    for session in 0..30 {
        let before: Vec<usize> = origins.iter().map(Origin::requests).collect();
        for _ in 0..4 {
            let mut c = Client::connect(gw.listen_addr());
            c.request(format!("GET /x HTTP/1.1\r\nHost: t\r\nCookie: theme=dark; session=s{session}\r\nConnection: close\r\n\r\n").as_bytes());
        }
        let served: Vec<usize> = origins
            .iter()
            .zip(&before)
            .map(|(o, b)| o.requests() - b)
            .collect();
        let owner: Vec<usize> = (0..3).filter(|&i| served[i] > 0).collect();
        assert_eq!(owner.len(), 1, "session {session} spread over {served:?}");
        owners.insert(owner[0]);
    }
    assert_eq!(owners.len(), 3, "30 sessions use every server");
}

#[test]
fn circuit_breaker_fails_fast_over_the_cap() {
    let origin = Origin::start();
    let gw = gateway_with(&[&origin], BalancePolicy::RoundRobin, 1, |g| {
        g.max_pending_per_server = 1
    });
    let addr = gw.listen_addr();
    let stuck =
        in_thread(move || Client::connect(addr).request(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n"));
    wait_until(Duration::from_secs(5), "one request in flight", || {
        origin.requests() == 1
    });
    // The server already has its one allowed request in flight: refused at once, not queued.
    let refused = get(addr, "/x");
    assert_eq!(refused.status, 503);
    assert_eq!(origin.requests(), 1);
    origin.open_gate();
    assert_eq!(
        stuck.recv_timeout(Duration::from_secs(10)).unwrap().status,
        200
    );
    // Below the cap again: served.
    assert_eq!(get(addr, "/x").status, 200);
}

#[test]
fn a_failing_server_is_ejected_after_consecutive_failures() {
    let (failing, good) = (Origin::start(), Origin::start());
    failing.fail_with(503);
    let gw = gateway_with(&[&failing, &good], BalancePolicy::RoundRobin, 1, |g| {
        g.outlier = Some(ringgate::config::OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        })
    });
    let mut c = Client::connect(gw.listen_addr());
    let statuses: Vec<u16> = (0..30)
        .map(|_| c.request(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").status)
        .collect();
    assert_eq!(
        failing.requests(),
        3,
        "ejected after its third failure: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 3);
    assert_eq!(good.requests(), 27);
}

fn server_health(gw: &ringgate::Handle) -> Vec<Vec<bool>> {
    servers_per_worker(gw)
        .iter()
        .map(|servers| {
            servers
                .iter()
                .map(|s| s["healthy"].as_bool().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn active_health_checks_take_a_failing_server_out_of_every_worker_and_back() {
    let (flaky, steady) = (Origin::start(), Origin::start());
    let mut config: Config = config_for(flaky.addr);
    config.workers.count = Some(2);
    config.routes[0].cache = None;
    config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    config.upstreams = vec![UpstreamGroup {
        name: "app".into(),
        servers: [&flaky, &steady]
            .iter()
            .map(|o| ServerConfig {
                address: o.addr,
                weight: 1,
            })
            .collect(),
        balance: BalancePolicy::RoundRobin,
        max_pending: 0,
        max_pending_per_server: 0,
        outlier: None,
        health: Some(ringgate::config::HealthCheck {
            method: "GET".into(),
            path: "/health".into(),
            host: None,
            expect_status: vec![200],
            expect_body: Some("ok".into()),
            interval: Duration::from_millis(50),
            jitter: Duration::ZERO,
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            worker: 0,
            fail_open: true,
        }),
        sticky: None,
        discovery: None,
        tls: None,
        protocol: Default::default(),
    }];
    let gw = start(config);
    let traffic = |origin: &Origin| origin.requests() - origin.hits_on("/health");

    flaky.fail_with(503);
    wait_until(
        Duration::from_secs(10),
        "every worker sees the failing server down",
        || server_health(&gw).iter().all(|w| w == &vec![false, true]),
    );
    let before = traffic(&flaky);
    for _ in 0..24 {
        assert_eq!(get(gw.listen_addr(), "/x").status, 200);
    }
    assert_eq!(
        traffic(&flaky),
        before,
        "no traffic to a server that is down, on any worker"
    );

    flaky.fail_with(0);
    wait_until(
        Duration::from_secs(10),
        "every worker sees it back up",
        || server_health(&gw).iter().all(|w| w == &vec![true, true]),
    );
    for _ in 0..24 {
        get(gw.listen_addr(), "/x");
    }
    assert!(
        traffic(&flaky) > before,
        "traffic returns once it is healthy again"
    );
}

fn sticky_gateway(origins: &[&Origin]) -> ringgate::Handle {
    gateway_with(origins, BalancePolicy::RoundRobin, 2, |g| {
        g.sticky = Some(ringgate::config::StickyCookie {
            cookie: "rg_sticky".into(),
            secret: "a secret of sixteen+".into(),
            ttl: Some(Duration::from_secs(3600)),
            path: "/".into(),
            http_only: true,
            secure: false,
            same_site: "Lax".into(),
        });
        g.outlier = Some(ringgate::config::OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(60),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        });
    })
}

/// A request on a new connection (so on either worker) with the cookie, if any.
fn with_cookie(addr: std::net::SocketAddr, cookie: Option<&str>) -> Response {
    let header = cookie
        .map(|c| format!("Cookie: theme=dark; {c}\r\n"))
        .unwrap_or_default();
    Client::connect(addr).request(
        format!("GET /echo HTTP/1.1\r\nHost: t\r\n{header}Connection: close\r\n\r\n").as_bytes(),
    )
}

fn cookie_of(r: &Response) -> String {
    let line = r.header("set-cookie").expect("Set-Cookie");
    assert!(
        line.contains("HttpOnly") && line.contains("Max-Age=3600") && line.contains("SameSite=Lax"),
        "{line}"
    );
    line.split(';').next().unwrap().to_string()
}

#[test]
fn sticky_cookie_keeps_a_client_on_one_server_across_connections_and_re_pins_on_failure() {
    let origins = [Origin::start(), Origin::start(), Origin::start()];
    let gw = sticky_gateway(&origins.iter().collect::<Vec<_>>());
    let addr = gw.listen_addr();
    let cookie = cookie_of(&with_cookie(addr, None));
    let before: Vec<usize> = origins.iter().map(Origin::requests).collect();
    for _ in 0..20 {
        let r = with_cookie(addr, Some(&cookie));
        assert_eq!(r.status, 200);
        assert!(
            r.header("set-cookie").is_none(),
            "a valid pin is not re-issued"
        );
    }
    let served: Vec<usize> = origins
        .iter()
        .zip(&before)
        .map(|(o, b)| o.requests() - b)
        .collect();
    let pinned = served
        .iter()
        .position(|&n| n == 20)
        .unwrap_or_else(|| panic!("spread over {served:?}"));

    // The pinned server fails: ejected, and the client is re-pinned elsewhere.
    origins[pinned].fail_with(503);
    assert_eq!(with_cookie(addr, Some(&cookie)).status, 503);
    // Both workers must have seen the failure to eject it; go through until a new pin comes.
    let mut new_cookie = None;
    for _ in 0..10 {
        let r = with_cookie(addr, Some(&cookie));
        if r.status == 200 {
            new_cookie = Some(cookie_of(&r));
            break;
        }
    }
    let new_cookie = new_cookie.expect("re-pinned to a healthy server");
    assert_ne!(new_cookie, cookie);
    let before: Vec<usize> = origins.iter().map(Origin::requests).collect();
    for _ in 0..10 {
        assert_eq!(with_cookie(addr, Some(&new_cookie)).status, 200);
    }
    let served: Vec<usize> = origins
        .iter()
        .zip(&before)
        .map(|(o, b)| o.requests() - b)
        .collect();
    assert_eq!(served.iter().filter(|&&n| n > 0).count(), 1, "{served:?}");
    assert_eq!(served[pinned], 0);
}

#[test]
fn a_forged_sticky_cookie_is_ignored() {
    let origins = [Origin::start(), Origin::start()];
    let gw = sticky_gateway(&origins.iter().collect::<Vec<_>>());
    let cookie = cookie_of(&with_cookie(gw.listen_addr(), None));
    // Change the last character of the tag; picking a fixed replacement
    // would leave the cookie genuine whenever it already ended with it.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    let r = with_cookie(gw.listen_addr(), Some(&forged));
    assert_eq!(r.status, 200);
    assert!(
        r.header("set-cookie").is_some(),
        "a forged pin is replaced by a genuine one"
    );
}

#[test]
fn a_stopped_server_is_probed_down_on_every_worker_and_back_when_it_restarts() {
    let (stopping, steady) = (Origin::start(), Origin::start());
    let stopped_addr = stopping.addr;
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[workers]
count = 2
pin = false
[admin]
listen = "127.0.0.1:0"
[upstreams.app]
servers = ["{stopped_addr}", "{}"]
[upstreams.app.health]
path = "/health"
interval = "50ms"
jitter = "0s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2
[[routes]]
upstream = "app"
"#,
        steady.addr
    );
    let gw = start(Config::parse(&text).unwrap());

    // Stopped: its port refuses connections, so probes fail to connect.
    drop(stopping);
    wait_until(
        Duration::from_secs(10),
        "every worker sees the stopped server down",
        || server_health(&gw).iter().all(|w| w == &vec![false, true]),
    );
    let traffic = |o: &Origin| o.requests() - o.hits_on("/health");
    let served = traffic(&steady);
    for _ in 0..20 {
        assert_eq!(get(gw.listen_addr(), "/x").status, 200);
    }
    assert_eq!(
        traffic(&steady),
        served + 20,
        "all traffic went to the server still running"
    );

    let restarted = Origin::start_on(stopped_addr);
    wait_until(
        Duration::from_secs(10),
        "every worker sees it back up",
        || server_health(&gw).iter().all(|w| w == &vec![true, true]),
    );
    wait_until(Duration::from_secs(5), "traffic reaches it again", || {
        get(gw.listen_addr(), "/x");
        traffic(&restarted) > 0
    });
}
