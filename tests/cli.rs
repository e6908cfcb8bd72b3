//! The `ringgate` binary: `check` names the file, key and reason of a bad
//! config; `run` refuses a bad config before starting; `proxy` quick mode
//! serves and exits 0 on SIGTERM after draining.

mod common;

use common::*;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

fn check(path: &std::path::Path) -> (i32, String) {
    ringgate_check(path)
}

#[test]
fn check_accepts_the_shipped_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ringgate.toml");
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok"));
}

#[test]
fn check_names_file_key_and_reason_for_an_unknown_key() {
    let path = write_config(
        "unknown-key.toml",
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n[timeouts]\nkeepalve = \"5s\"\n",
    );
    let (code, text) = check(&path);
    assert_eq!(code, 2);
    assert!(text.contains("unknown-key.toml"), "{text}");
    assert!(text.contains("timeouts"), "{text}");
    assert!(text.contains("keepalve"), "{text}");
}

#[test]
fn check_names_the_route_with_a_missing_upstream() {
    let path = write_config(
        "missing-upstream.toml",
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n[[routes]]\nupstream = \"ap\"\n",
    );
    let (code, text) = check(&path);
    assert_eq!(code, 2);
    assert!(
        text.contains("missing-upstream.toml")
            && text.contains("routes[1].upstream")
            && text.contains("`ap`"),
        "{text}"
    );
}

#[test]
fn check_names_a_bad_value() {
    let path = write_config(
        "bad-value.toml",
        "[[listeners]]\naddress = \"localhost\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n",
    );
    let (code, text) = check(&path);
    assert_eq!(code, 2);
    assert!(
        text.contains("listeners[0].address") && text.contains("port"),
        "{text}"
    );
}

#[test]
fn run_refuses_a_bad_config_before_starting() {
    let path = write_config("bad-run.toml", "[[listeners]]\naddress = 5\n");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bad-run.toml") && text.contains("listeners[0].address"),
        "{text}"
    );
}

#[test]
fn quick_mode_proxies_and_stops_on_sigterm() {
    let origin = Origin::start();
    // Let the OS pick a port: bind to learn a free one, release it, and pass it on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "proxy",
            "--listen",
            &listen,
            "--to",
            &origin.addr.to_string(),
            "--workers",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the start line rather than guessing how long start-up takes.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("ringgate started"));
    assert!(started, "gateway logged its start");
    let r = get(listen.parse().unwrap(), "/echo/quick");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /echo/quick"));
    // SAFETY: sending a signal to our own child process by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = in_thread(move || child.wait().unwrap())
        .recv_timeout(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}
