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

/// Stops the process an upgrade started (a child of the old process, not
/// of this test), by the PID the old one logged, however the test ends.
struct ReapUpgraded(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Drop for ReapUpgraded {
    fn drop(&mut self) {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for line in log.iter().filter(|l| l.contains("started the new binary")) {
            let pid = line
                .split("pid=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                // SAFETY: SIGTERM to the gateway process this test's upgrade
                // started, by the PID its parent logged.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

/// Requests on new connections, one after another, until `stop`; each
/// connect, reset or non-200 counts as a failure.
fn load_loop(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::mpsc::Receiver<(u64, Vec<String>)> {
    in_thread(move || {
        let (mut ok, mut failures) = (0u64, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let outcome = std::net::TcpStream::connect(addr)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    let mut c = Client::new_from(s);
                    c.try_send(b"GET /loop HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        .map_err(|e| e.to_string())?;
                    c.read_response().map_err(|e| e.to_string())
                });
            match outcome {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failures.push(format!("status {}", r.status)),
                Err(e) => failures.push(format!("{e} (after {ok} answered)")),
            }
        }
        (ok, failures)
    })
}

#[test]
fn sigusr2_upgrades_to_a_new_process_through_a_reload_without_a_failed_request() {
    let (origin, next) = (Origin::start(), Origin::start());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = |to: std::net::SocketAddr| {
        config(to, "")
            .replace("count = 1", "count = 2")
            .replace("[admin]\nenabled = false\n", "")
            + &format!("[admin]\nlisten = \"{admin}\"\n")
    };
    let gw = GatewayProcess::start(&text(origin.addr), |_| {});
    let reap = ReapUpgraded(gw.log.clone());
    let stats =
        || -> serde_json::Value { serde_json::from_str(&get(admin, "/stats").text()).unwrap() };
    assert_eq!(stats()["process"]["pid"], gw.pid());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..3).map(|_| load_loop(gw.addr, stop.clone())).collect();
    let served = || origin.requests() + next.requests();
    let flowing = |what: &str| {
        let before = served();
        wait_until(Duration::from_secs(10), what, || served() > before + 50);
    };
    flowing("requests flow");

    // A reload under load: the new file routes to `next`.
    gw.rewrite(&text(next.addr));
    gw.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the reload", || next.requests() > 0);
    flowing("requests flow after the reload");

    // The upgrade under load: the old process hands its sockets over,
    // drains and exits; the new one serves.
    let old = gw.pid();
    gw.signal(libc::SIGUSR2);
    let mut gw = gw;
    wait_until(Duration::from_secs(20), "the old process exited", || {
        gw.child.try_wait().unwrap().is_some()
    });
    assert_eq!(gw.child.try_wait().unwrap().unwrap().code(), Some(0));
    let new = stats()["process"]["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, old);
    flowing("requests flow after the upgrade");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for l in loops {
        let (o, f) = l.recv_timeout(Duration::from_secs(20)).unwrap();
        ok += o;
        failures.extend(f);
    }
    let log = gw.log_text();
    assert!(log.contains("listening sockets handed over"), "{log}");
    assert!(log.contains("took over the listening sockets"), "{log}");
    assert!(
        failures.is_empty(),
        "{} of {ok} failed: {:?}\n{log}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 150, "{ok}");
    // The new process runs the reloaded file.
    let before = next.requests();
    assert_eq!(get(gw.addr, "/new").status, 200);
    assert_eq!(next.requests(), before + 1);

    drop(reap);
    wait_until(Duration::from_secs(20), "the new process exited", || {
        !std::path::Path::new(&format!("/proc/{new}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{new}/status"))
                .is_ok_and(|s| s.contains("State:\tZ"))
    });
}

#[test]
fn a_closed_log_pipe_neither_kills_a_worker_nor_stops_a_clean_exit() {
    use std::io::BufRead;
    let origin = Origin::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let path = write_config(
        "closed-log.toml",
        &config(origin.addr, "").replace("{listen}", &listen),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("ringgate started")));
    drop(lines);
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    // Requests log at debug level, a refused one too: none may panic the worker.
    for i in 0..20 {
        assert_eq!(get(addr, &format!("/{i}")).status, 200);
        let mut c = Client::connect(addr);
        assert_eq!(c.request(b"GET / HTTP/1.1\r\n\r\n").status, 400);
    }
    // SAFETY: a signal to our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop it"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigusr1_reopens_the_access_log_after_logrotate_moved_it() {
    let origin = Origin::start();
    let path = fresh_path("rotate-access.log");
    let gw = GatewayProcess::start(
        &config(
            origin.addr,
            &format!(
                "[access_log]\npath = \"{}\"\nformat = \"json\"\nflush = \"10ms\"\n",
                path.display()
            ),
        ),
        |_| {},
    );
    let count = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(get(gw.addr, "/before").status, 200);
    wait_until(Duration::from_secs(10), "the first line", || {
        count(&path) == 1
    });
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal(libc::SIGUSR1);
    wait_until(Duration::from_secs(10), "the reopen", || {
        gw.log_text().contains("reopening the access log")
    });
    assert_eq!(get(gw.addr, "/after").status, 200);
    wait_until(Duration::from_secs(10), "a line in the new file", || {
        count(&path) == 1
    });
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"/after\""));
    assert_eq!(count(&rotated), 1);
    assert_eq!(gw.stop().code(), Some(0));
}
