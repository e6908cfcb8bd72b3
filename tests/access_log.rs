//! The access log and `X-Request-Id` over real sockets: what a line says
//! (JSON and nginx's combined), that the id ties the client, the log and
//! the upstream together without ever crossing from one client to another
//! (a cached response included), sampling and the per-route switch, and
//! that a writer that cannot keep up drops and counts lines instead of
//! slowing a request.

mod common;

use std::time::Duration;

use common::*;
use ringgate::config::{AccessLogConfig, LogFormat, LogTarget};

fn logging(config: &mut ringgate::Config, path: &std::path::Path, format: LogFormat) {
    config.access_log = AccessLogConfig {
        enabled: true,
        target: LogTarget::File(path.to_path_buf()),
        format,
        flush: Duration::from_millis(10),
        ..AccessLogConfig::default()
    };
}

/// The log's lines once it holds at least `n`.
fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    wait_until(Duration::from_secs(10), "the access log lines", || {
        got = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        got.len() >= n
    });
    got
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_json_line_per_request_ties_client_log_and_upstream_by_request_id() {
    let origin = Origin::start();
    let path = fresh_path("json.log");
    let gw = cached_gateway_with(&origin, |_, config| logging(config, &path, LogFormat::Json));
    let addr = gw.listen_addr();
    let mut c = Client::connect(addr);
    let miss = fetch(&mut c, "/c?cc=max-age%3D60", "User-Agent: probe/1\r\n");
    let hit = fetch(&mut c, "/c?cc=max-age%3D60", "");
    let mine = fetch(&mut c, "/echo", "X-Request-Id: 5f0c7e2a-1b7d-4c39\r\n");
    let forged = fetch(&mut c, "/echo", "X-Request-Id: a b\"c\r\n");
    assert_eq!((miss.status, hit.status, mine.status), (200, 200, 200));

    let ids: Vec<String> = [&miss, &hit, &mine, &forged]
        .iter()
        .map(|r| {
            r.header("x-request-id")
                .expect("every response carries its id")
                .to_string()
        })
        .collect();
    assert_eq!(ids[0].len(), 32, "{ids:?}");
    assert_ne!(ids[0], ids[1], "a hit gets its own id, not the stored one");
    assert_eq!(
        ids[2], "5f0c7e2a-1b7d-4c39",
        "a well-formed client id is kept"
    );
    assert_ne!(ids[3], "a b\"c");
    // The upstream saw each forwarded request's id, once.
    let heads = origin.log.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    assert!(
        heads[0].contains(&format!("X-Request-Id: {}\r\n", ids[0])),
        "{}",
        heads[0]
    );
    assert!(heads[1].contains("X-Request-Id: 5f0c7e2a-1b7d-4c39\r\n"));
    assert_eq!(heads[2].matches("X-Request-Id").count(), 1, "{}", heads[2]);
    assert!(!heads[2].contains("a b"), "{}", heads[2]);

    let got = lines(&path, 4);
    let (m, h, e) = (json(&got[0]), json(&got[1]), json(&got[2]));
    assert_eq!(m["method"], "GET");
    assert_eq!(m["target"], "/c?cc=max-age%3D60");
    assert_eq!(m["protocol"], "HTTP/1.1");
    assert_eq!(m["status"], 200);
    assert_eq!(m["cache"], "MISS");
    assert_eq!(m["upstream"], origin.addr.to_string());
    assert_eq!(m["upstream_status"], 200);
    assert!(m["upstream_head_ms"].as_f64().is_some());
    assert!(m["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(m["user_agent"], "probe/1");
    assert_eq!(m["client"], "127.0.0.1");
    assert_eq!(m["request_id"], ids[0].as_str());
    assert_eq!(m["tls"], serde_json::Value::Null);
    assert!(m["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(h["cache"], "HIT");
    assert_eq!(h["upstream"], serde_json::Value::Null);
    assert_eq!(h["request_id"], ids[1].as_str());
    assert_eq!(e["request_id"], "5f0c7e2a-1b7d-4c39");
    assert_eq!(e["route"], m["route"]);
}

#[test]
fn an_upstream_s_own_request_id_is_never_stored_or_handed_to_another_client() {
    let origin = Origin::start();
    let gw = cached_gateway(&origin);
    let addr = gw.listen_addr();
    // The origin answers with an X-Request-Id of its own choosing.
    let target = "/c?cc=max-age%3D60&h.X-Request-Id=first-client-s";
    let first = fetch(
        &mut Client::connect(addr),
        target,
        "X-Request-Id: alice-1\r\n",
    );
    let second = fetch(
        &mut Client::connect(addr),
        target,
        "X-Request-Id: bob-2\r\n",
    );
    assert_eq!(origin.requests(), 1, "the second was a hit");
    assert_eq!(first.header_count("x-request-id"), 1);
    assert_eq!(first.header("x-request-id"), Some("alice-1"));
    assert_eq!(second.header_count("x-request-id"), 1);
    assert_eq!(second.header("x-request-id"), Some("bob-2"));
}

#[test]
fn request_ids_can_be_turned_off() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.proxy.request_id = false;
    let gw = start(config);
    let r = fetch(
        &mut Client::connect(gw.listen_addr()),
        "/echo",
        "X-Request-Id: mine\r\n",
    );
    assert_eq!(r.header("x-request-id"), None);
    // The client's own field is an ordinary field then: passed on as sent.
    assert!(origin.last_head().contains("X-Request-Id: mine\r\n"));
}

#[test]
fn combined_lines_sampling_and_the_per_route_switch() {
    let origin = Origin::start();
    let path = fresh_path("combined.log");
    let mut config = config_for(origin.addr);
    logging(&mut config, &path, LogFormat::Combined);
    let mut quiet = config.routes[0].clone();
    quiet.name = "quiet".into();
    quiet.path_prefix = "/health/".into();
    quiet.access_log = false;
    config.routes.insert(0, quiet);
    let gw = start(config);
    let addr = gw.listen_addr();
    let mut c = Client::connect(addr);
    for _ in 0..5 {
        assert_eq!(fetch(&mut c, "/health/live", "").status, 200);
    }
    assert_eq!(
        fetch(
            &mut c,
            "/a?b=1",
            "Referer: http://x.test/\r\nUser-Agent: ua \"q\"\r\n"
        )
        .status,
        200
    );
    let mut refused = Client::connect(addr);
    assert_eq!(refused.request(b"GET /x HTTP/1.1\r\n\r\n").status, 400);
    let got = lines(&path, 2);
    assert_eq!(got.len(), 2, "the quiet route wrote nothing: {got:?}");
    let first = &got[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.ends_with(
            "+0000] \"GET /a?b=1 HTTP/1.1\" 200 2 \"http://x.test/\" \"ua \\x22q\\x22\""
        ),
        "{first}"
    );
    assert!(got[1].contains("\" 400 "), "{}", got[1]);

    // Sampling: about the share asked for.
    let sampled = fresh_path("sampled.log");
    let mut config = config_for(origin.addr);
    logging(&mut config, &sampled, LogFormat::Combined);
    config.access_log.sample_ppm = 250_000;
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    for i in 0..400 {
        assert_eq!(fetch(&mut c, &format!("/s{i}"), "").status, 200);
    }
    drop(gw);
    let n = std::fs::read_to_string(&sampled)
        .unwrap_or_default()
        .lines()
        .count();
    assert!((50..=150).contains(&n), "{n} of 400 logged at 25%");
}

#[test]
fn a_writer_that_cannot_keep_up_drops_and_counts_lines_and_never_slows_a_request() {
    let origin = Origin::start();
    // A FIFO nobody reads: the writer thread blocks opening it, forever.
    let path = fresh_path("stalled.fifo");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path of our own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let mut config = config_for(origin.addr);
    logging(&mut config, &path, LogFormat::Json);
    config.access_log.queue = 2;
    config.access_log.buffer = 4096;
    config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let started = std::time::Instant::now();
    for i in 0..2000 {
        assert_eq!(fetch(&mut c, &format!("/r{i}"), "").status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let stats: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr().unwrap(), "/stats").text()).unwrap();
    let w = &stats["workers"][0];
    let (written, dropped) = (
        w["access_log_lines"].as_u64().unwrap(),
        w["access_log_dropped"].as_u64().unwrap(),
    );
    assert!(dropped > 0, "{w}");
    // Nothing is lost unaccounted: every line is written, dropped or still buffered.
    assert!(
        written + dropped <= 2000 && written + dropped > 1900,
        "{written} + {dropped}"
    );
    // Let the writer go: open the FIFO for reading, and drain it.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&path).unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut f, &mut sink);
    });
    drop(gw);
    reader.join().unwrap();
}
