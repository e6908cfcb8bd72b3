//! The gateway as a process: signals, the open-file limit, what it refuses
//! to start with, and what its log says.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

fn config(origin: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"{{listen}}\"\n[workers]\ncount = 1\npin = false\n[upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nupstream = \"app\"\n[admin]\nenabled = false\n{extra}"
    )
}

/// `ringgate check` on `text`, written to a file of its own.
fn check(text: &str) -> (i32, String) {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ringgate_check(&write_config(&format!("process-{n}.toml"), text))
}

#[test]
fn sighup_reloads_the_config_and_cuts_nothing_in_flight() {
    let (origin, next) = (Origin::start(), Origin::start());
    let gw = GatewayProcess::start(&config(origin.addr, ""), |_| {});
    let addr = gw.addr;
    let in_flight = in_thread(move || {
        Client::connect(addr).request(
            b"POST /gate HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    });
    wait_until(
        Duration::from_secs(5),
        "the request reached the origin",
        || origin.requests() == 1,
    );
    // A file that does not validate: logged, and the running config stays.
    gw.rewrite(&config(next.addr, "[[routes]]\nupstream = \"nowhere\"\n"));
    gw.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the refusal was logged", || {
        gw.log_text().contains("config not reloaded")
    });
    assert!(gw.log_text().contains("nowhere"), "{}", gw.log_text());
    assert_eq!(get(addr, "/old").status, 200);
    assert_eq!(origin.requests(), 2);

    gw.rewrite(&config(next.addr, ""));
    gw.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the reload was logged", || {
        gw.log_text().contains("config reloaded on every worker")
    });
    assert_eq!(get(addr, "/new").status, 200);
    assert_eq!(
        next.requests(),
        1,
        "new requests go to the new config's server"
    );
    origin.open_gate();
    let r = in_flight.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "gated");
    assert_eq!(gw.stop().code(), Some(0));
}

#[test]
fn ringgate_reload_asks_the_admin_api_the_file_names() {
    let (origin, next) = (Origin::start(), Origin::start());
    let admin = format!("127.0.0.1:{}", free_port());
    let with_admin = |to| {
        config(to, "").replace("[admin]\nenabled = false\n", "")
            + &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"reload-secret\"\n")
    };
    let gw = GatewayProcess::start(&with_admin(origin.addr), |_| {});
    gw.rewrite(&with_admin(next.addr));
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(&gw.path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("\"generation\":2"), "{said}");
    assert_eq!(get(gw.addr, "/after").status, 200);
    assert_eq!((origin.requests(), next.requests()), (0, 1));

    // A refused file: a failing exit status and the reason.
    gw.rewrite(&with_admin(next.addr).replace("count = 1", "count = 2"));
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(&gw.path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("422") && said.contains("workers.count"),
        "{said}"
    );
    assert_eq!(gw.stop().code(), Some(0));
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_with_a_warning_naming_numbers() {
    let origin = Origin::start();
    let gw = GatewayProcess::start(&config(origin.addr, ""), |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit in the child between fork and exec; it only lowers our own limits.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 4096,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.parse::<u64>().is_ok())
        .collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    let log = gw.log_text();
    // 10,000 client connections and 128 pooled per server need more than 4,096.
    assert!(
        log.contains("open-file limit (4096)") && log.contains("needed=10129"),
        "{log}"
    );
    assert_eq!(get(gw.addr, "/x").status, 200);
}

#[test]
fn a_public_admin_listener_without_a_token_is_refused_saying_how_to_set_one() {
    let base = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n";
    let (code, text) = check(&format!("{base}[admin]\nlisten = \"0.0.0.0:9901\"\n"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("admin.listen") && text.contains("token ="),
        "{text}"
    );
    let (code, text) = check(&format!(
        "{base}[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"a-long-random-secret\"\n"
    ));
    assert_eq!(code, 0, "{text}");
    // Quick mode: refused without a token, accepted with one from the environment.
    let port = free_port();
    let out = Command::new(BIN)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--admin",
            &format!("0.0.0.0:{port}"),
        ])
        .env_remove("RINGGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin-token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = Origin::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "proxy",
            "--listen",
            &listen,
            "--to",
            &origin.addr.to_string(),
            "--workers",
            "1",
            "--admin",
            &format!("0.0.0.0:{port}"),
        ])
        .env("RINGGATE_ADMIN_TOKEN", "token-from-the-environment")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(10), "the admin API listens", || {
        std::net::TcpStream::connect(admin).is_ok()
    });
    let ask = |auth: &str| {
        Client::connect(admin)
            .request(
                format!("GET /health HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .status
    };
    assert_eq!(ask(""), 401);
    assert_eq!(
        ask("Authorization: Bearer token-from-the-environment\r\n"),
        200
    );
    // SAFETY: a signal to our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_unbounded_value_is_refused_naming_the_key() {
    let base = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"app\"\n[admin]\nenabled = false\n";
    for (table, line, key) in [
        (
            "timeouts",
            "client_header = 9223372036854775807",
            "timeouts.client_header",
        ),
        (
            "timeouts",
            "upstream_read = \"400d\"",
            "timeouts.upstream_read",
        ),
        (
            "limits",
            "max_request_body = 9223372036854775807",
            "limits.max_request_body",
        ),
        (
            "workers",
            "max_connections = 99999999",
            "workers.max_connections",
        ),
    ] {
        let (code, text) = check(&format!("{base}[{table}]\n{line}\n"));
        assert_eq!(code, 2, "{line}: {text}");
        assert!(text.contains(key), "{line}: {text}");
    }
    let route = base.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrequest_buffering = \"1GiB\"\n",
    );
    let (code, text) = check(&route);
    assert_eq!(code, 2);
    assert!(text.contains("routes[0].request_buffering"), "{text}");
}

#[test]
fn the_log_has_no_colour_codes_and_names_upstream_faults_as_upstream() {
    let origin = Origin::start();
    let gw = GatewayProcess::start(&config(origin.addr, ""), |_| {});
    assert_eq!(get(gw.addr, "/bad-framing").status, 502);
    wait_until(Duration::from_secs(5), "the fault is logged", || {
        gw.log_text().contains("bad upstream response")
    });
    let log = gw.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("bad upstream response"))
        .unwrap();
    assert!(line.contains(&origin.addr.to_string()), "{line}");
    assert!(
        !line.contains("request head")
            && !line.contains("request line")
            && !line.contains("bad request"),
        "an upstream fault must not read as the client's: {line}"
    );
}
