//! Rate limits per route over real sockets: one limit for the whole node
//! whichever worker a connection lands on, the 429's fields, a client
//! under its own limit never refused for another's traffic, and a missing
//! key counted by address rather than let through.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringgate::config::Config;
use ringgate::route::rate_limit::{LimitKey, RateLimit};

fn limited(origin: &Origin, workers: usize, limit: RateLimit) -> Config {
    let mut config = with_admin(config_for(origin.addr));
    config.workers.count = Some(workers);
    config.routes[0].rate_limit = Some(limit);
    config
}

fn get(c: &mut Client, path: &str, extra: &str) -> Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
}

#[test]
fn the_limit_holds_for_the_node_across_workers_and_connections() {
    let origin = Origin::start();
    // 50 per second with a burst of 10, for every request of the route.
    let rate = 50.0;
    let burst = 10;
    let limit = RateLimit::new(rate, burst, LimitKey::Route).unwrap();
    let gw = start(limited(&origin, 2, limit));
    let run = Duration::from_secs(2);
    let started = Instant::now();
    // Eight clients, each opening a new connection every 20 requests, so
    // connections land on both workers.
    let counts: Vec<(usize, usize)> = (0..8)
        .map(|_| {
            let addr = gw.listen_addr();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0, 0);
                while started.elapsed() < run {
                    let mut c = Client::connect(addr);
                    for _ in 0..20 {
                        match get(&mut c, "/x", "").status {
                            200 => ok += 1,
                            429 => refused += 1,
                            s => panic!("status {s}"),
                        }
                    }
                }
                (ok, refused)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let admitted: usize = counts.iter().map(|c| c.0).sum();
    let refused: usize = counts.iter().map(|c| c.1).sum();
    // At most the rate over the time taken plus the burst (and the one
    // request GCRA admits at once); at least 80% of the rate for the time:
    // the limit is the node's, not split per worker.
    let most = (rate * elapsed) as usize + burst as usize + 1;
    let least = (rate * run.as_secs_f64() * 0.8) as usize;
    assert!(admitted <= most, "{admitted} admitted, at most {most}");
    assert!(admitted >= least, "{admitted} admitted, at least {least}");
    assert!(
        refused > admitted,
        "the clients asked for far more than the limit"
    );
    let stats = admin_stats(&gw);
    for w in stats["workers"].as_array().unwrap() {
        assert!(
            w["requests"].as_u64() > Some(0),
            "a worker took no connection"
        );
    }
    assert_eq!(
        stats["totals"]["rate_limited"].as_u64(),
        Some(refused as u64)
    );
    assert_eq!(origin.requests(), admitted);
}

#[test]
fn a_refusal_says_when_to_come_back_and_what_the_policy_is() {
    let origin = Origin::start();
    let limit = RateLimit::new(2.0, 1, LimitKey::ClientIp).unwrap();
    let gw = start(limited(&origin, 1, limit));
    let mut c = Client::connect(gw.listen_addr());
    assert_eq!(get(&mut c, "/x", "").status, 200);
    assert_eq!(get(&mut c, "/x", "").status, 200);
    let r = get(&mut c, "/x", "");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"route\";q=2;w=1"));
    assert_eq!(r.header("ratelimit"), Some("\"route\";r=0;t=1"));
    // The connection stays usable, and after the wait the client is admitted.
    std::thread::sleep(Duration::from_millis(550));
    assert_eq!(get(&mut c, "/x", "").status, 200);
    assert_eq!(origin.requests(), 3);
}

#[test]
fn a_client_under_its_own_limit_is_never_refused_for_anothers_traffic() {
    let origin = Origin::start();
    let limit = RateLimit::new(20.0, 5, LimitKey::Header("x-api-key".into())).unwrap();
    let gw = start(limited(&origin, 2, limit));
    let addr = gw.listen_addr();
    let run = Duration::from_millis(1500);
    let started = Instant::now();
    // A noisy client with its key, as fast as it can.
    let noisy = std::thread::spawn(move || {
        let mut refused = 0;
        while started.elapsed() < run {
            // A new connection now and then (connections have a request cap).
            let mut c = Client::connect(addr);
            for _ in 0..50 {
                if get(&mut c, "/x", "X-Api-Key: noisy\r\n").status == 429 {
                    refused += 1;
                }
            }
        }
        refused
    });
    // A quiet one with another key, at a quarter of its rate.
    let mut quiet = Client::connect(addr);
    let mut sent = 0;
    while started.elapsed() < run {
        assert_eq!(get(&mut quiet, "/x", "X-Api-Key: quiet\r\n").status, 200);
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        noisy.join().unwrap() > 0,
        "the noisy client was never limited"
    );
    assert!(sent >= 5);
}

#[test]
fn a_request_without_the_key_is_limited_by_its_address() {
    let origin = Origin::start();
    let limit = RateLimit::new(1.0, 2, LimitKey::Header("x-api-key".into())).unwrap();
    let gw = start(limited(&origin, 1, limit));
    let mut c = Client::connect(gw.listen_addr());
    // No key: three admitted (burst 2), then refused, not let through.
    let statuses: Vec<u16> = (0..5).map(|_| get(&mut c, "/x", "").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // A key of its own is another count.
    assert_eq!(get(&mut c, "/x", "X-Api-Key: k\r\n").status, 200);
}

#[test]
fn cache_hits_count_too() {
    let origin = Origin::start();
    let mut config = limited(
        &origin,
        1,
        RateLimit::new(1.0, 1, LimitKey::ClientIp).unwrap(),
    );
    config.routes[0].cache = Some(Default::default());
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let path = "/c?cc=max-age%3D60";
    assert_eq!(get(&mut c, path, "").status, 200);
    assert_eq!(get(&mut c, path, "").status, 200);
    assert_eq!(get(&mut c, path, "").status, 429);
    assert_eq!(origin.requests(), 1, "the second was a hit");
}

#[test]
fn a_config_names_the_key_it_refuses() {
    let dir = temp_root().join(format!("ringgate-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (key, expected) in [
        ("\"subject\"", "routes[0].rate_limit.key"),
        ("\"header:\"", "routes[0].rate_limit.key"),
        ("\"everyone\"", "routes[0].rate_limit.key"),
    ] {
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[upstreams.o]\nservers = [\"127.0.0.1:9\"]\n\n[[routes]]\nupstream = \"o\"\n\n[routes.rate_limit]\nrequests_per_second = 5\nkey = {key}\n"
            ),
        )
        .unwrap();
        let err = ringgate::config::Config::load(&file)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}: {err}");
    }
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[upstreams.o]\nservers = [\"127.0.0.1:9\"]\n\n[[routes]]\nupstream = \"o\"\n\n[routes.rate_limit]\nrequests_per_second = 0\n",
    )
    .unwrap();
    let err = ringgate::config::Config::load(&file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].rate_limit.requests_per_second"),
        "{err}"
    );
}

#[test]
fn a_request_whose_body_arrives_later_is_counted_once() {
    let origin = Origin::start();
    // Two requests at once, then one per minute.
    let limit = RateLimit::new(1.0 / 60.0, 1, LimitKey::Route).unwrap();
    let gw = start(limited(&origin, 1, limit));
    let mut c = Client::connect(gw.listen_addr());
    // The head first: the gateway plans it, answers 100 Continue and waits
    // for the body, then plans the request again with the body read.
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.reader.read_head().unwrap().unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    c.send(b"hello");
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(get(&mut c, "/x", "").status, 200, "the second of two");
    assert_eq!(get(&mut c, "/x", "").status, 429);
}
