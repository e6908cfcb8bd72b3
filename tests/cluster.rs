//! Several gateway nodes as one cache through a real `redis-server`
//! (started per test on a free port, no persistence, stopped by PID): an
//! invalidation on one node reaches the others, and a node that may have
//! missed some while Redis was away marks its cache stale.

mod common;

use std::time::Duration;

use common::redis_server::Redis;
use common::*;

/// A caching node of the cluster, with its admin API.
fn node(origin: &Origin, redis: &str, name: &str) -> ringgate::Handle {
    node_with(origin, redis, name, false)
}

/// A caching node, with the shared cache tier on or off.
fn node_with(origin: &Origin, redis: &str, name: &str, shared: bool) -> ringgate::Handle {
    cluster_node(
        origin,
        ringgate::config::ClusterConfig {
            shared_cache: shared,
            ..test_cluster(redis, name)
        },
    )
}

/// The tests' cluster settings: their own stream, kept short.
fn test_cluster(redis: &str, name: &str) -> ringgate::config::ClusterConfig {
    ringgate::config::ClusterConfig {
        stream: "ringgate:test".to_string(),
        stream_max: 1000,
        ..ringgate::config::ClusterConfig::defaults(redis, name)
    }
}

/// A caching node with its admin API, in `cluster`.
fn cluster_node(origin: &Origin, cluster: ringgate::config::ClusterConfig) -> ringgate::Handle {
    cached_gateway_with(origin, |_, config| {
        config.admin = Some(ringgate::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
        });
        config.cluster = Some(cluster);
    })
}

fn cluster_stats(gw: &ringgate::Handle) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr().unwrap(), "/stats").text()).unwrap();
    v["cluster"].clone()
}

fn connected(gw: &ringgate::Handle) -> bool {
    cluster_stats(gw)["redis_connected"] == true
}

const T: &str = "/c?cc=max-age%3D600";

/// Nodes a, b and c, each connected to `redis`.
fn three_nodes(origin: &Origin, redis: &Redis) -> Vec<ringgate::Handle> {
    nodes_named(origin, redis, &["a", "b", "c"], false)
}

/// Nodes, the shared tier on or off, each connected to `redis`.
fn nodes_named(
    origin: &Origin,
    redis: &Redis,
    names: &[&str],
    shared: bool,
) -> Vec<ringgate::Handle> {
    let nodes: Vec<_> = names
        .iter()
        .map(|n| node_with(origin, &redis.url(), n, shared))
        .collect();
    for n in &nodes {
        wait_until(Duration::from_secs(10), "connected to Redis", || {
            connected(n)
        });
    }
    nodes
}

#[test]
fn a_purge_or_a_write_on_one_node_reaches_the_others() {
    let redis = Redis::start();
    let origin = Origin::start();
    let nodes = three_nodes(&origin, &redis);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let fetch_on = |gw: &ringgate::Handle| fetch(&mut Client::connect(gw.listen_addr()), T, "");
    fetch_on(a);
    fetch_on(c);
    fetch_on(a);
    fetch_on(c);
    assert_eq!(origin.hits_on(T), 2, "A and C each stored it");

    // PURGE on B, which never stored it: A and C drop theirs.
    let purged = Client::connect(b.listen_addr()).request(
        format!("PURGE {T} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(purged.status, 404, "nothing stored on B itself");
    for n in [a, c] {
        wait_until(Duration::from_secs(5), "the purge applied", || {
            cluster_stats(n)["applied"].as_u64() >= Some(1)
        });
    }
    fetch_on(a);
    fetch_on(c);
    assert_eq!(origin.hits_on(T), 4, "both missed after B's purge");
    assert_eq!(cluster_stats(b)["published"], 1);
    wait_until(Duration::from_secs(5), "A read past B's entry", || {
        cluster_stats(a)["last_id"]
            .as_str()
            .is_some_and(|id| id != "0-0")
    });
    // Each node lists the live nodes, where each is in the stream and how
    // far behind its newest entry (none, once all applied B's purge).
    wait_until(
        Duration::from_secs(5),
        "A's view of the three nodes",
        || {
            let nodes = cluster_stats(a)["nodes"].clone();
            let mut named: Vec<&str> = nodes
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["lag_ms"] == 0 && n["last_id"] != "0-0")
                .map(|n| n["node"].as_str().unwrap())
                .collect();
            named.sort();
            named == ["a", "b", "c"]
        },
    );
    let metrics = get(a.admin_addr().unwrap(), "/metrics").text();
    assert!(
        metrics.contains("ringgate_cluster_peer_lag_ms{node=\"a\",peer=\"b\"} 0"),
        "{metrics}"
    );
    let metrics = get(b.admin_addr().unwrap(), "/metrics").text();
    assert!(
        metrics.contains("ringgate_cluster_published_total{node=\"b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringgate_cluster_redis_connected{node=\"b\"} 1"),
        "{metrics}"
    );

    // A write through C invalidates the URL on A and B too (RFC 9111 section 4.4).
    fetch_on(b);
    assert_eq!(origin.hits_on(T), 5);
    let before: Vec<u64> = [a, b]
        .iter()
        .map(|n| cluster_stats(n)["applied"].as_u64().unwrap())
        .collect();
    let wrote = Client::connect(c.listen_addr()).request(
        format!("POST {T} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(wrote.status < 400, "{}", wrote.status);
    for (n, before) in [a, b].into_iter().zip(before) {
        wait_until(
            Duration::from_secs(5),
            "the write's invalidation applied",
            || cluster_stats(n)["applied"].as_u64() > Some(before),
        );
    }
    let origin_before = origin.hits_on(T);
    fetch_on(a);
    fetch_on(b);
    assert_eq!(
        origin.hits_on(T),
        origin_before + 2,
        "A and B missed after C's write"
    );
}

#[test]
fn with_redis_away_nodes_serve_on_and_one_that_may_have_missed_entries_marks_its_cache_stale() {
    let redis = Redis::start();
    let origin = Origin::start();
    let a = node(&origin, &redis.url(), "a");
    let b = node(&origin, &redis.url(), "b");
    for n in [&a, &b] {
        wait_until(Duration::from_secs(10), "connected to Redis", || {
            connected(n)
        });
    }
    let fetch_on = |gw: &ringgate::Handle| fetch(&mut Client::connect(gw.listen_addr()), T, "");
    assert_eq!(fetch_on(&a).status, 200);
    // A has applied an entry: it knows where it is in the stream.
    let purged = Client::connect(b.listen_addr())
        .request(b"PURGE /elsewhere HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    assert_eq!(purged.status, 404);
    wait_until(Duration::from_secs(5), "A applied B's purge", || {
        cluster_stats(&a)["applied"].as_u64() >= Some(1)
    });
    // Redis goes away (and comes back empty, as one without persistence does).
    let port = redis.stop();
    wait_until(Duration::from_secs(10), "A sees Redis gone", || {
        !connected(&a)
    });
    assert_eq!(fetch_on(&a).status, 200, "A serves on, from its cache");
    assert_eq!(origin.hits_on(T), 1);
    // B purges while Redis is away: applied on B, published when Redis is back.
    let purged = Client::connect(b.listen_addr()).request(
        format!("PURGE {T} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(purged.status, 404);
    let _redis = Redis::start_on(port);
    wait_until(Duration::from_secs(10), "A noticed the gap", || {
        cluster_stats(&a)["gaps"].as_u64() >= Some(1)
    });
    // Marked stale, not dropped: the next request revalidates with the origin.
    let r = fetch_on(&a);
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.hits_on(T),
        2,
        "the stale entry went back to the origin"
    );
}

fn purge_cluster(gw: &ringgate::Handle, body: &str) -> (u16, serde_json::Value) {
    let r = Client::connect(gw.admin_addr().unwrap()).request(
        format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    (r.status, serde_json::from_str(&r.text()).unwrap())
}

#[test]
fn a_cluster_scope_purge_answers_once_every_live_node_applied_it_and_names_one_that_did_not() {
    let redis = Redis::start();
    let origin = Origin::start();
    let mut nodes = three_nodes(&origin, &redis);
    let fetch_on = |gw: &ringgate::Handle| fetch(&mut Client::connect(gw.listen_addr()), T, "");
    for n in &nodes {
        fetch_on(n);
    }
    assert_eq!(origin.hits_on(T), 3);
    let (status, v) = purge_cluster(&nodes[0], r#"{"tag":"x","scope":"cluster"}"#);
    assert_eq!(status, 200, "{v}");
    let mut named: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, ["a", "b", "c"], "{v}");
    assert!(
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["applied"] == true),
        "{v}"
    );

    // A node that is live (its heartbeat fresh) but does not apply entries,
    // as a node that just stopped looks until its heartbeat expires.
    drop(nodes.pop());
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg("ringgate:test:nodes")
        .arg(1_000_000_000_000_000u64)
        .arg("stuck")
        .ignore()
        .cmd("HSET")
        .arg("ringgate:test:applied")
        .arg("stuck")
        .arg("0-0")
        .ignore()
        .query(&mut r)
        .unwrap();
    let (status, v) = purge_cluster(&nodes[0], r#"{"all":true,"scope":"cluster"}"#);
    assert_eq!(status, 504, "{v}");
    // (C, stopped a moment ago, may still be live by its heartbeat too.)
    let missing: Vec<&str> = v["not_applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(missing.contains(&"stuck"), "{v}");
    assert!(missing.iter().all(|n| *n == "stuck" || *n == "c"), "{v}");
    // A and B did apply it: both miss.
    for n in &nodes {
        fetch_on(n);
    }
    assert_eq!(origin.hits_on(T), 5);

    // Without Redis: applied here, and the answer names Redis.
    drop(redis);
    wait_until(Duration::from_secs(10), "A sees Redis gone", || {
        !connected(&nodes[0])
    });
    let (status, v) = purge_cluster(&nodes[0], r#"{"all":true,"scope":"cluster"}"#);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Redis"), "{v}");
}

#[test]
fn a_cluster_scope_purge_without_a_cluster_is_refused() {
    let origin = Origin::start();
    let gw = cached_gateway_with(&origin, |_, config| {
        config.admin = Some(ringgate::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
        });
    });
    let (status, v) = purge_cluster(&gw, r#"{"all":true,"scope":"cluster"}"#);
    assert_eq!(status, 400, "{v}");
}

/// A node of the cluster whose only route is rate-limited by `limit`.
fn limited_node(
    origin: &Origin,
    redis: &str,
    name: &str,
    limit: &ringgate::route::rate_limit::RateLimit,
    lease: Duration,
) -> ringgate::Handle {
    let mut config = with_admin(config_for(origin.addr));
    config.routes[0].rate_limit = Some(limit.clone());
    config.cluster = Some(ringgate::config::ClusterConfig {
        lease,
        ..test_cluster(redis, name)
    });
    start(config)
}

fn cluster_limit(
    rate: f64,
    burst: u32,
    fail: ringgate::route::rate_limit::Fail,
) -> ringgate::route::rate_limit::RateLimit {
    use ringgate::route::rate_limit::{LimitKey, RateLimit, Scope};
    let mut limit = RateLimit::new(rate, burst, LimitKey::Header("x-key".into())).unwrap();
    limit.scope = Scope::Cluster;
    limit.fail = fail;
    limit
}

/// Sends `GET /x` with key `key` to each node in turn until `run` is over
/// (one thread per node); the admitted and refused counts, and the time
/// taken.
fn hammer(nodes: &[ringgate::Handle], key: &str, run: Duration) -> (usize, usize, f64) {
    let started = std::time::Instant::now();
    let counts: Vec<(usize, usize)> = nodes
        .iter()
        .map(|n| {
            let (addr, key) = (n.listen_addr(), key.to_string());
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0, 0);
                let mut c = Client::connect(addr);
                while started.elapsed() < run {
                    let r = c.request(
                        format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Key: {key}\r\n\r\n").as_bytes(),
                    );
                    match r.status {
                        200 => ok += 1,
                        429 => {
                            assert!(r.header("retry-after").is_some());
                            refused += 1
                        }
                        s => panic!("status {s}"),
                    }
                    // A connection ends after `max_keepalive_requests`.
                    if r.header("connection") == Some("close") {
                        c = Client::connect(addr);
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
    (
        counts.iter().map(|c| c.0).sum(),
        counts.iter().map(|c| c.1).sum(),
        elapsed,
    )
}

#[test]
fn a_cluster_rate_limit_holds_across_three_nodes_within_its_bound() {
    use ringgate::route::rate_limit::Fail;
    let redis = Redis::start();
    let origin = Origin::start();
    let lease = Duration::from_millis(100);
    // A slow limit: each request asks Redis (20 per second is one per 50 ms,
    // longer than the lease holds none), so it is exact.
    let slow = cluster_limit(20.0, 9, Fail::Closed);
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| limited_node(&origin, &redis.url(), n, &slow, lease))
        .collect();
    let (admitted, refused, elapsed) = hammer(&nodes, "k1", Duration::from_millis(600));
    let most = 10 + (20.0 * elapsed).ceil() as usize;
    assert!(admitted >= 10, "the burst: {admitted}");
    assert!(admitted <= most, "{admitted} admitted, at most {most}");
    assert!(refused > admitted, "three nodes asked far more: {refused}");
    // Another key has its own allowance.
    let (other, _, _) = hammer(&nodes[..1], "k2", Duration::from_millis(50));
    assert!(other >= 10, "{other}");

    // A fast limit: nodes lease requests (up to 100 ms worth, 50 at a time)
    // and admit them without Redis; the cluster still admits at most the
    // limit over the time taken plus one lease's worth.
    let fast = cluster_limit(500.0, 49, Fail::Closed);
    let nodes: Vec<_> = ["d", "e", "f"]
        .iter()
        .map(|n| limited_node(&origin, &redis.url(), n, &fast, lease))
        .collect();
    let (admitted, refused, elapsed) = hammer(&nodes, "k3", Duration::from_millis(800));
    let most = 50 + (500.0 * (elapsed + lease.as_secs_f64())).ceil() as usize;
    assert!(admitted <= most, "{admitted} admitted, at most {most}");
    assert!(admitted >= 50, "{admitted}");
    assert!(refused > 0, "{refused}");
    let calls: u64 = nodes
        .iter()
        .map(|n| {
            admin_stats(n)["cluster"]["rate_limits"]["redis_calls"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(
        (calls as usize) < (admitted + refused) / 2,
        "leases and kept refusals spare Redis a call per request: {calls} calls for {admitted} + {refused}"
    );
}

#[test]
fn with_redis_down_a_cluster_rate_limit_does_what_its_fail_mode_says() {
    use ringgate::route::rate_limit::Fail;
    let redis = Redis::start();
    let origin = Origin::start();
    let lease = Duration::from_millis(20);
    let node_with = |name: &str, fail| {
        limited_node(
            &origin,
            &redis.url(),
            name,
            &cluster_limit(1.0, 2, fail),
            lease,
        )
    };
    let (closed, open, local) = (
        node_with("closed", Fail::Closed),
        node_with("open", Fail::Open),
        node_with("local", Fail::Local),
    );
    // Connected: three requests of one key pass, the fourth is refused.
    for (i, n) in [&closed, &open, &local].into_iter().enumerate() {
        let mut c = Client::connect(n.listen_addr());
        let statuses: Vec<u16> = (0..4)
            .map(|_| {
                c.request(format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Key: up{i}\r\n\r\n").as_bytes())
                    .status
            })
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429]);
    }
    // The nodes share the count: a key used up on one is refused on another.
    let mut c = Client::connect(open.listen_addr());
    let r = c.request(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Key: up0\r\n\r\n");
    assert_eq!(r.status, 429);
    drop(redis);
    let statuses = |n: &ringgate::Handle, count: usize| -> Vec<u16> {
        let mut c = Client::connect(n.listen_addr());
        (0..count)
            .map(|_| {
                c.request(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Key: down\r\n\r\n")
                    .status
            })
            .collect()
    };
    let closed_said = statuses(&closed, 3);
    assert_eq!(closed_said, [503, 503, 503], "fail closed refuses");
    assert_eq!(statuses(&open, 5), [200; 5], "fail open admits");
    assert_eq!(
        statuses(&local, 4),
        [200, 200, 200, 429],
        "fail local counts on the node alone"
    );
    for n in [&closed, &open, &local] {
        let counted: u64 = admin_stats(n)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["rate_limit_unavailable"].as_u64().unwrap())
            .sum();
        assert!(counted >= 3, "{counted}");
    }
}

fn shared_stats(gw: &ringgate::Handle) -> serde_json::Value {
    cluster_stats(gw)["shared_cache"].clone()
}

/// Nodes with the shared tier, each connected to `redis`.
fn shared_nodes(origin: &Origin, redis: &Redis, names: &[&str]) -> Vec<ringgate::Handle> {
    nodes_named(origin, redis, names, true)
}

#[test]
fn the_shared_tier_fills_a_node_from_another_nodes_entry_without_the_origin() {
    let redis = Redis::start();
    let origin = Origin::start();
    let nodes = shared_nodes(&origin, &redis, &["a", "b", "c"]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let fetch_on = |gw: &ringgate::Handle, target: &str, extra: &str| {
        fetch(&mut Client::connect(gw.listen_addr()), target, extra)
    };
    let t = "/c?cc=max-age%3D600&tag=shop&etag=%22e1%22";
    let first = fetch_on(a, t, "");
    assert_eq!(first.status, 200);
    assert_eq!(origin.hits_on(t), 1);
    wait_until(Duration::from_secs(5), "A wrote it to Redis", || {
        shared_stats(a)["stored"].as_u64() >= Some(1)
    });
    // C has never seen it: filled from Redis, the origin not asked.
    let r = fetch_on(c, t, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    assert_eq!(r.header("etag"), Some("\"e1\""));
    assert!(
        cache_status(&r).contains("detail=shared"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(origin.hits_on(t), 1, "no origin request for C");
    // Then it is C's own: a plain hit.
    assert!(cache_status(&fetch_on(c, t, "")).contains("hit"));
    assert_eq!(shared_stats(c)["found"], 1);
    // A client that asks for a fresher copy than Redis holds goes to the origin.
    let fresh = fetch_on(b, t, "Cache-Control: max-age=0\r\n");
    assert_eq!(fresh.status, 200);
    assert_eq!(origin.hits_on(t), 2);

    // A purge on B removes the Redis copy too: a new node misses.
    let purged = Client::connect(b.listen_addr()).request(
        format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(purged.status, 200);
    let d = &shared_nodes(&origin, &redis, &["d"])[0];
    let before = origin.hits_on(t);
    assert_eq!(fetch_on(d, t, "").status, 200);
    assert_eq!(origin.hits_on(t), before + 1, "the purge reached Redis");

    // A tag purge too.
    let tagged = "/c?cc=max-age%3D600&tag=shelf";
    fetch_on(a, tagged, "");
    wait_until(Duration::from_secs(5), "A wrote it", || {
        shared_stats(a)["stored"].as_u64() >= Some(2)
    });
    let (status, v) = purge_cluster(a, r#"{"tag":"shelf","scope":"cluster"}"#);
    assert_eq!(status, 200, "{v}");
    let e = &shared_nodes(&origin, &redis, &["e"])[0];
    fetch_on(e, tagged, "");
    assert_eq!(origin.hits_on(tagged), 2, "the tag purge reached Redis");
}

#[test]
fn the_shared_tier_keeps_variants_apart() {
    let redis = Redis::start();
    let origin = Origin::start();
    let nodes = shared_nodes(&origin, &redis, &["a", "c"]);
    let (a, c) = (&nodes[0], &nodes[1]);
    let t = "/c?cc=max-age%3D600&vary=Accept-Language&echo=accept-language";
    let on = |gw: &ringgate::Handle, lang: &str| {
        fetch(
            &mut Client::connect(gw.listen_addr()),
            t,
            &format!("Accept-Language: {lang}\r\n"),
        )
    };
    assert_eq!(on(a, "en").text(), "accept-language=en");
    wait_until(Duration::from_secs(5), "A wrote it", || {
        shared_stats(a)["stored"].as_u64() >= Some(1)
    });
    let fr = on(c, "fr");
    assert_eq!(fr.text(), "accept-language=fr", "never another variant");
    assert_eq!(origin.hits_on(t), 2);
    let en = on(c, "en");
    assert_eq!(en.text(), "accept-language=en");
    assert!(
        cache_status(&en).contains("detail=shared"),
        "{}",
        cache_status(&en)
    );
    assert_eq!(origin.hits_on(t), 2);
}

#[test]
fn a_response_fetched_before_a_purge_is_not_written_to_the_shared_tier_after_it() {
    let redis = Redis::start();
    let origin = Origin::start();
    let nodes = shared_nodes(&origin, &redis, &["a", "b", "c"]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // A's fetch waits at the origin.
    let t = "/c?cc=max-age%3D600&gate_after=0";
    let addr = a.listen_addr();
    let slow = std::thread::spawn(move || fetch(&mut Client::connect(addr), t, "").status);
    wait_until(
        Duration::from_secs(5),
        "A's request reached the origin",
        || origin.hits_on(t) == 1,
    );
    // Meanwhile B purges the URL, and A applies it.
    let applied = cluster_stats(a)["applied"].as_u64().unwrap();
    let purged = Client::connect(b.listen_addr()).request(
        format!("PURGE {t} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(purged.status, 404);
    wait_until(Duration::from_secs(5), "A applied the purge", || {
        cluster_stats(a)["applied"].as_u64() > Some(applied)
    });
    origin.open_gate();
    assert_eq!(slow.join().unwrap(), 200);
    // A's copy predates the purge: Redis refuses it, and C goes to the origin.
    wait_until(Duration::from_secs(5), "Redis refused A's write", || {
        shared_stats(a)["refused"].as_u64() >= Some(1)
    });
    assert_eq!(shared_stats(a)["stored"], 0);
    assert_eq!(
        fetch(&mut Client::connect(c.listen_addr()), t, "").status,
        200
    );
    assert_eq!(origin.hits_on(t), 2);
}

/// A self-signed certificate for 127.0.0.1 in files of a fresh directory.
fn certificate(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = fresh_path(&format!("cluster-tls-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ringgate::tls::certs::self_signed(&["127.0.0.1"]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// A caching node reaching Redis over TLS with `tls`.
fn tls_node(
    origin: &Origin,
    url: &str,
    name: &str,
    tls: ringgate::config::ClusterTls,
) -> ringgate::Handle {
    cluster_node(
        origin,
        ringgate::config::ClusterConfig {
            tls,
            ..test_cluster(url, name)
        },
    )
}

#[test]
fn nodes_reach_redis_over_tls_and_one_that_does_not_trust_it_never_connects() {
    let (cert, key) = certificate("server");
    let redis = Redis::start_tls(&cert, &key);
    let origin = Origin::start();
    let trusted = ringgate::config::ClusterTls {
        ca: Some(cert.clone()),
        cert: Some(cert.clone()),
        key: Some(key.clone()),
    };
    let (a, b) = (
        tls_node(&origin, &redis.tls_url(), "a", trusted.clone()),
        tls_node(&origin, &redis.tls_url(), "b", trusted.clone()),
    );
    for n in [&a, &b] {
        wait_until(Duration::from_secs(10), "connected over TLS", || {
            connected(n)
        });
    }
    let fetch_on = |gw: &ringgate::Handle| fetch(&mut Client::connect(gw.listen_addr()), T, "");
    fetch_on(&a);
    fetch_on(&a);
    assert_eq!(origin.hits_on(T), 1);
    let purged = Client::connect(b.listen_addr()).request(
        format!("PURGE {T} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(purged.status, 404);
    wait_until(Duration::from_secs(5), "A applied B's purge", || {
        cluster_stats(&a)["applied"].as_u64() >= Some(1)
    });
    fetch_on(&a);
    assert_eq!(origin.hits_on(T), 2);

    // Another CA: Redis' certificate does not verify. Without a client
    // certificate: Redis refuses the node.
    let (other, _) = certificate("other");
    for (name, tls) in [
        (
            "c",
            ringgate::config::ClusterTls {
                ca: Some(other),
                ..trusted.clone()
            },
        ),
        (
            "d",
            ringgate::config::ClusterTls {
                cert: None,
                key: None,
                ..trusted.clone()
            },
        ),
    ] {
        let n = tls_node(&origin, &redis.tls_url(), name, tls);
        wait_until(Duration::from_secs(10), "a failed connection", || {
            cluster_stats(&n)["connect_failures"].as_u64() >= Some(2)
        });
        assert!(!connected(&n), "{name} connected");
    }
}
