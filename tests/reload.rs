//! Live config reload: the admin API's `POST /config/reload` (and
//! `Handle::reload`, what SIGHUP calls) re-read the file; a valid one is
//! applied by every worker and acknowledged, an invalid one is refused
//! naming file, key and reason while the running config stays; requests in
//! flight finish on the generation they started with.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use ringgate::config::Config;
use ringgate::Handle;

/// A two-worker config: `routes` (TOML) over groups `a` and `b`.
fn text(listen: &str, admin: &str, a: SocketAddr, b: SocketAddr, rest: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"{listen}\"\n\
         [workers]\ncount = 2\npin = false\ncache_size = \"4MiB\"\n\
         [timeouts]\nshutdown_grace = \"10s\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [upstreams.a]\nservers = [\"{a}\"]\n\
         [upstreams.b]\nservers = [\"{b}\"]\n{rest}"
    )
}

const TO_A: &str = "[[routes]]\nname = \"main\"\nupstream = \"a\"\n";
const TO_B: &str = "[[routes]]\nname = \"main\"\nupstream = \"b\"\n";

struct Setup {
    gw: Handle,
    path: PathBuf,
    a: Origin,
    b: Origin,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn start(name: &str, routes: &str) -> Setup {
        let (a, b) = (Origin::start(), Origin::start());
        let path = write_config(
            name,
            &text("127.0.0.1:0", "127.0.0.1:0", a.addr, b.addr, routes),
        );
        let gw = start(Config::load(&path).unwrap());
        let (listen, admin) = (gw.listen_addr(), gw.admin_addr().unwrap());
        Setup {
            gw,
            path,
            a,
            b,
            listen,
            admin,
        }
    }

    /// The config with `routes`, listeners and admin at their bound addresses.
    fn text(&self, routes: &str) -> String {
        text(
            &self.listen.to_string(),
            &self.admin.to_string(),
            self.a.addr,
            self.b.addr,
            routes,
        )
    }

    /// Rewrites the file with `routes`.
    fn write(&self, routes: &str) {
        self.write_raw(&self.text(routes));
    }

    fn write_raw(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    fn reload(&self) -> Response {
        Client::connect(self.admin).request(
            b"POST /config/reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    }

    fn stats(&self) -> serde_json::Value {
        let r = get(self.admin, "/stats");
        serde_json::from_str(&r.text()).unwrap()
    }

    fn generations(&self) -> Vec<u64> {
        self.stats()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["generation"].as_u64().unwrap())
            .collect()
    }
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.text()).unwrap()
}

#[test]
fn a_reload_moves_new_requests_and_every_worker_reports_the_generation() {
    let s = Setup::start("reload-routes.toml", TO_A);
    for i in 0..6 {
        assert_eq!(get(s.listen, &format!("/x{i}")).status, 200);
    }
    assert_eq!((s.a.requests(), s.b.requests()), (6, 0));
    assert_eq!(s.generations(), vec![1, 1]);

    s.write(TO_B);
    let r = s.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["workers"], 2);
    assert_eq!(v["timed_out"], serde_json::json!([]));
    // Acknowledged means applied: every worker runs generation 2 now.
    assert_eq!(s.generations(), vec![2, 2]);
    for i in 0..6 {
        assert_eq!(get(s.listen, &format!("/y{i}")).status, 200);
    }
    assert_eq!((s.a.requests(), s.b.requests()), (6, 6));

    // The blocking path SIGHUP takes.
    s.write(TO_A);
    let done = s.gw.reload().unwrap();
    assert_eq!((done.generation, done.timed_out.len()), (3, 0));
    assert_eq!(get(s.listen, "/z").status, 200);
    assert_eq!(s.a.requests(), 7);
}

#[test]
fn an_invalid_file_is_refused_with_file_key_and_reason_and_the_running_config_stays() {
    let s = Setup::start("reload-invalid.toml", TO_A);
    s.write("[[routes]]\nname = \"main\"\nupstream = \"nowhere\"\n");
    let r = s.reload();
    assert_eq!(r.status, 422, "{}", r.text());
    let v = json(&r);
    assert!(
        v["file"].as_str().unwrap().ends_with("reload-invalid.toml"),
        "{v}"
    );
    assert!(v["key"].as_str().unwrap().starts_with("routes"), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("nowhere"), "{v}");

    s.write_raw("this is = = not toml");
    let r = s.reload();
    assert_eq!(r.status, 422, "{}", r.text());

    // A restart-only change is refused by name: the workers, and the
    // upstream ring (its buffers are registered with the kernel at start).
    for (key, from, to) in [
        ("workers.count", "count = 2", "count = 1"),
        (
            "workers.upstream_recv_buffers",
            "count = 2",
            "count = 2\nupstream_recv_buffers = 128",
        ),
        (
            "workers.upstream_recv_buffer_size",
            "count = 2",
            "count = 2\nupstream_recv_buffer_size = \"128KiB\"",
        ),
    ] {
        s.write_raw(
            &text(
                &s.listen.to_string(),
                &s.admin.to_string(),
                s.a.addr,
                s.b.addr,
                TO_B,
            )
            .replace(from, to),
        );
        let r = s.reload();
        assert_eq!(r.status, 422, "{}", r.text());
        let v = json(&r);
        assert_eq!(v["key"], key, "{v}");
        assert!(v["reason"].as_str().unwrap().contains("restart"), "{v}");
    }

    assert_eq!(s.generations(), vec![1, 1]);
    assert_eq!(get(s.listen, "/still").status, 200);
    assert_eq!((s.a.requests(), s.b.requests()), (1, 0));
    assert!(s.gw.reload().is_err());
}

#[test]
fn a_request_in_flight_finishes_on_its_generation_even_when_its_group_is_removed() {
    let s = Setup::start("reload-in-flight.toml", TO_A);
    let listen = s.listen;
    let in_flight = in_thread(move || {
        Client::connect(listen).request(
            b"POST /gate HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    });
    wait_until(Duration::from_secs(5), "the request reached a", || {
        s.a.requests() == 1
    });
    // Group `a` and its route are gone from the new generation.
    let only_b = s.text(TO_B).replace(
        &format!("[upstreams.a]\nservers = [\"{}\"]\n", s.a.addr),
        "",
    );
    s.write_raw(&only_b);
    assert_eq!(s.reload().status, 200);
    assert_eq!(get(s.listen, "/new").status, 200);
    assert_eq!(s.b.requests(), 1);
    s.a.open_gate();
    let r = in_flight.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "gated");
}

#[test]
fn listeners_are_added_and_removed_by_a_reload() {
    let s = Setup::start("reload-listeners.toml", TO_A);
    let extra: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let two = s.text(TO_A).replacen(
        "[workers]",
        &format!("[[listeners]]\naddress = \"{extra}\"\n[workers]"),
        1,
    );
    s.write_raw(&two);
    assert_eq!(s.reload().status, 200);
    for i in 0..4 {
        assert_eq!(get(extra, &format!("/on-the-new-one/{i}")).status, 200);
    }
    s.write(TO_A);
    assert_eq!(s.reload().status, 200);
    wait_until(
        Duration::from_secs(5),
        "the removed listener closed",
        || std::net::TcpStream::connect(extra).is_err(),
    );
    assert_eq!(get(s.listen, "/first").status, 200);
}

#[test]
fn stored_responses_of_kept_routes_stay_and_those_no_route_caches_are_dropped() {
    let cached = "[[routes]]\nname = \"kept\"\nhost = \"kept.test\"\nupstream = \"a\"\n[routes.cache]\n\
                  [[routes]]\nname = \"gone\"\nhost = \"gone.test\"\nupstream = \"a\"\n[routes.cache]\n";
    let s = Setup::start("reload-cache.toml", cached);
    // One keep-alive connection: one worker, whose shard holds what it fetched.
    let client = std::cell::RefCell::new(Client::connect(s.listen));
    let fetch = |host: &str| {
        client
            .borrow_mut()
            .request(format!("GET /c?cc=max-age%3D600 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    };
    for host in ["kept.test", "gone.test"] {
        assert_eq!(fetch(host).status, 200);
        assert_eq!(fetch(host).status, 200);
    }
    assert_eq!(s.a.requests(), 2, "the second fetch of each was a hit");
    let entries = || -> u64 {
        s.stats()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["cache"]["entries"].as_u64().unwrap())
            .sum()
    };
    // Each response in one shard, or in both (offered across cores).
    let before = entries();
    assert!(before == 2 || before == 4, "entries {before}");

    s.write(
        "[[routes]]\nname = \"kept\"\nhost = \"kept.test\"\nupstream = \"a\"\n[routes.cache]\n\
         [[routes]]\nname = \"gone\"\nhost = \"gone.test\"\nupstream = \"a\"\n",
    );
    assert_eq!(s.reload().status, 200);
    assert_eq!(fetch("kept.test").status, 200);
    assert_eq!(s.a.requests(), 2, "the kept route's entry still answers");
    assert_eq!(fetch("gone.test").status, 200);
    assert_eq!(s.a.requests(), 3, "the route that stopped caching fetches");
    assert_eq!(
        entries(),
        before / 2,
        "the gone route's copies were dropped"
    );
}

#[test]
fn keep_alive_clients_see_no_failure_through_reloads() {
    let s = Setup::start("reload-load.toml", TO_A);
    let listen = s.listen;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            in_thread(move || {
                let mut c = Client::connect(listen);
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.send(b"GET /loop HTTP/1.1\r\nHost: t\r\n\r\n");
                    match c.read_response() {
                        Ok(r) if r.status == 200 => ok += 1,
                        _ => {
                            failed += 1;
                            c = Client::connect(listen);
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for round in 0..6 {
        s.write(if round % 2 == 0 { TO_B } else { TO_A });
        let r = s.reload();
        assert_eq!(r.status, 200, "{}", r.text());
        let before = s.a.requests() + s.b.requests();
        wait_until(
            Duration::from_secs(5),
            "requests flow after the reload",
            || s.a.requests() + s.b.requests() > before + 20,
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in loops {
        let (o, f) = l.recv_timeout(Duration::from_secs(10)).unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{ok} answered");
    assert!(ok > 100, "{ok} answered");
    assert!(s.a.requests() > 0 && s.b.requests() > 0);
    assert_eq!(s.generations(), vec![7, 7]);
}

#[test]
fn a_kept_server_keeps_its_idle_connections_and_a_removed_one_loses_them() {
    let s = Setup::start("reload-pool.toml", TO_A);
    // One keep-alive client: one worker, one pooled connection to `a`.
    let mut c = Client::connect(s.listen);
    let ask = |c: &mut Client, path: &str| {
        c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .status
    };
    assert_eq!(ask(&mut c, "/one"), 200);
    assert_eq!(s.a.connections(), 1);
    let pooled = |s: &Setup| -> u64 {
        s.stats()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["upstream_pool_idle"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(pooled(&s), 1);

    // A reload that keeps `a` (and changes something else) keeps the connection.
    s.write(&format!(
        "{TO_A}[routes.timeouts]\nupstream_response = \"30s\"\n"
    ));
    assert_eq!(s.reload().status, 200);
    assert_eq!(pooled(&s), 1);
    assert_eq!(ask(&mut c, "/two"), 200);
    assert_eq!(s.a.connections(), 1, "the pooled connection was reused");

    // A reload that removes `a`: its idle connection is closed, not carried.
    s.write_raw(&s.text(TO_B).replace(
        &format!("[upstreams.a]\nservers = [\"{}\"]\n", s.a.addr),
        "",
    ));
    assert_eq!(s.reload().status, 200);
    assert_eq!(pooled(&s), 0);
    assert_eq!(ask(&mut c, "/three"), 200);
    assert_eq!((s.a.requests(), s.b.requests()), (2, 1));
}
