//! Service discovery: a watched servers file and DNS names re-resolved
//! (through a hosts-style override file) change where new requests go,
//! on every worker, without dropping a request already in flight.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ringgate::Config;

fn temp_path(name: &str) -> PathBuf {
    temp_root().join(format!("ringgate-discovery-{}-{name}", std::process::id()))
}

/// Replaces `path` in one step, as deployment tools do, so that the watcher
/// never reads half a file.
fn replace_file(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn config(upstream: &str, extra: &str) -> Config {
    let text = format!(
        r#"
{extra}
[[listeners]]
address = "127.0.0.1:0"
[workers]
count = 2
pin = false
{upstream}
[[routes]]
upstream = "app"
"#
    );
    let mut config = Config::parse(&text).unwrap();
    config.admin = None;
    config
}

fn get_ok(addr: std::net::SocketAddr) {
    let r = get(addr, "/x");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_watched_servers_file_moves_new_requests_and_keeps_the_one_in_flight() {
    let (a, b) = (Origin::start(), Origin::start());
    let file = temp_path("servers");
    replace_file(&file, &format!("# the app servers\n{}\n", a.addr));
    let gw = start(config(
        &format!(
            "[upstreams.app]\nservers = []\n[upstreams.app.discovery]\nservers_file = \"{}\"\nwatch_every = \"50ms\"",
            file.display()
        ),
        "",
    ));
    let addr = gw.listen_addr();
    for _ in 0..4 {
        get_ok(addr);
    }
    assert_eq!(b.requests(), 0);

    // A request held by server a while the file moves the group to b.
    let mut in_flight = Client::connect(addr);
    in_flight.send(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until(Duration::from_secs(5), "the held request reached a", || {
        a.hits_on("/gate") == 1
    });

    replace_file(&file, &format!("{} 2\n", b.addr));
    wait_until(Duration::from_secs(5), "a request reached b", || {
        get_ok(addr);
        b.requests() > 0
    });
    // Every worker has the new list: many connections (spread over both
    // workers by the kernel) all land on b.
    let before = a.requests();
    for _ in 0..20 {
        get_ok(addr);
    }
    assert_eq!(
        a.requests(),
        before,
        "no new request went to the removed server"
    );

    a.open_gate();
    let held = in_flight.read_response().unwrap();
    assert_eq!(held.status, 200, "the request in flight to a completed");

    // A broken file is not applied: the last good list stays.
    replace_file(&file, "not-an-address\n");
    let seen = b.requests();
    for _ in 0..10 {
        get_ok(addr);
    }
    assert_eq!(b.requests(), seen + 10);
    std::fs::remove_file(&file).ok();
}

#[test]
fn names_are_re_resolved_and_new_addresses_take_the_traffic() {
    let a = Origin::start();
    let port = a.addr.port();
    // The same port on another loopback address: the name decides which origin.
    let b = Origin::start_on(std::net::SocketAddr::from(([127, 0, 0, 2], port)));
    let hosts = temp_path("hosts");
    replace_file(&hosts, "127.0.0.1 app.internal\n");
    let gw = start(config(
        &format!(
            "[upstreams.app]\nservers = [\"app.internal:{port}\"]\n[upstreams.app.discovery]\nresolve_every = \"50ms\""
        ),
        &format!("[resolver]\nhosts_file = \"{}\"", hosts.display()),
    ));
    let addr = gw.listen_addr();
    for _ in 0..4 {
        get_ok(addr);
    }
    assert_eq!((a.requests(), b.requests()), (4, 0));

    replace_file(&hosts, "# moved\n127.0.0.2 app.internal\n");
    wait_until(
        Duration::from_secs(5),
        "a request reached the new address",
        || {
            get_ok(addr);
            b.requests() > 0
        },
    );
    let before = a.requests();
    for _ in 0..20 {
        get_ok(addr);
    }
    assert_eq!(a.requests(), before);

    // Two addresses for the name: both serve.
    replace_file(&hosts, "127.0.0.1 app.internal\n127.0.0.2 app.internal\n");
    wait_until(Duration::from_secs(5), "the old address is back", || {
        get_ok(addr);
        a.requests() > before
    });
    std::fs::remove_file(&hosts).ok();
}

#[test]
fn bad_discovery_files_are_refused_at_start_with_key_and_reason() {
    let upstream = |file: &Path| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nservers = []\n[upstreams.app.discovery]\nservers_file = \"{}\"\n[[routes]]\nupstream = \"app\"\n",
            file.display()
        )
    };
    let servers = temp_path("servers-bad");
    replace_file(&servers, "127.0.0.1:80\n127.0.0.1:81 heavy\n");
    let e = Config::parse(&upstream(&servers)).unwrap_err().to_string();
    assert!(
        e.contains("upstreams.app.discovery.servers_file") && e.contains("line 2"),
        "{e}"
    );
    let e = Config::parse(&upstream(Path::new("/nonexistent/servers")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read /nonexistent/servers"), "{e}");

    let text = "[resolver]\nhosts_file = \"/nonexistent/hosts\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"app.internal:80\"]\n[upstreams.app.discovery]\nresolve_every = \"10s\"\n[[routes]]\nupstream = \"app\"\n";
    let e = Config::parse(text).unwrap_err().to_string();
    assert!(e.contains("resolver.hosts_file"), "{e}");

    let no_servers = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nservers = []\n[[routes]]\nupstream = \"app\"\n";
    let e = Config::parse(no_servers).unwrap_err().to_string();
    assert!(e.contains("upstreams.app.servers"), "{e}");
    std::fs::remove_file(&servers).ok();
}

#[test]
fn a_server_discovery_adds_is_health_checked_on_every_worker() {
    let (steady, flaky) = (Origin::start(), Origin::start());
    flaky.fail_with(503);
    let file = temp_path("servers-health");
    replace_file(&file, &format!("{}\n", steady.addr));
    let mut gw_config = config(
        &format!(
            "[upstreams.app]\nservers = []\n[upstreams.app.discovery]\nservers_file = \"{}\"\nwatch_every = \"50ms\"\n[upstreams.app.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\"\nunhealthy_threshold = 2",
            file.display()
        ),
        "",
    );
    gw_config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    let gw = start(gw_config);
    let flaky_name = flaky.addr.to_string();
    let flaky_health = |gw: &ringgate::Handle| -> Vec<Option<bool>> {
        servers_per_worker(gw)
            .iter()
            .map(|servers| {
                servers
                    .iter()
                    .find(|s| s["address"] == flaky_name.as_str())
                    .map(|s| s["healthy"].as_bool().unwrap())
            })
            .collect()
    };

    replace_file(&file, &format!("{}\n{}\n", steady.addr, flaky.addr));
    wait_until(
        Duration::from_secs(10),
        "every worker has the new server, probed down",
        || flaky_health(&gw) == vec![Some(false), Some(false)],
    );
    let traffic = |o: &Origin| o.requests() - o.hits_on("/health");
    let before = traffic(&flaky);
    for _ in 0..20 {
        get_ok(gw.listen_addr());
    }
    assert_eq!(
        traffic(&flaky),
        before,
        "no traffic to the new server while it fails its probes"
    );
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let metrics = c
        .request(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .text();
    for worker in 0..2 {
        let line = format!(
            "ringgate_upstream_server_healthy{{worker=\"{worker}\",server=\"{flaky_name}\"}} 0"
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    std::fs::remove_file(&file).ok();
}

#[test]
fn dns_answers_are_refreshed_when_their_ttl_runs_out() {
    let a = Origin::start();
    let port = a.addr.port();
    let b = Origin::start_on(std::net::SocketAddr::from(([127, 0, 0, 2], port)));
    let dns = DnsServer::start();
    dns.set("app.internal", &["127.0.0.1"], 1);
    // The interval is a minute: only the one-second TTL can explain a move
    // within the test's deadline.
    let gw = start(config(
        &format!(
            "[upstreams.app]\nservers = [\"app.internal:{port}\"]\n[upstreams.app.discovery]\nresolve_every = \"60s\""
        ),
        &format!("[resolver]\nnameservers = [\"{}\"]\ntimeout = \"1s\"", dns.addr),
    ));
    let addr = gw.listen_addr();
    for _ in 0..4 {
        get_ok(addr);
    }
    assert_eq!((a.requests(), b.requests()), (4, 0));

    dns.set("app.internal", &["127.0.0.2"], 1);
    wait_until(
        Duration::from_secs(10),
        "the TTL expired and b took over",
        || {
            get_ok(addr);
            b.requests() > 0
        },
    );

    // The name disappears: the last good answer keeps serving.
    dns.remove("app.internal");
    let asked = dns.queries();
    wait_until(Duration::from_secs(10), "a failed re-resolution", || {
        dns.queries() >= asked + 2
    });
    let (seen_a, seen_b) = (a.requests(), b.requests());
    for _ in 0..10 {
        get_ok(addr);
    }
    assert_eq!((a.requests(), b.requests()), (seen_a, seen_b + 10));
}
