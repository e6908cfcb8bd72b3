//! The admin status page in a real browser: Debian's `chromium`, headless,
//! driven over the DevTools protocol, loads `/` from a gateway that is
//! serving traffic (with the admin token in the page's fragment), and the
//! numbers it shows are checked against `/stats`; a screenshot is saved
//! (`target/tmp/status-page.png`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "status-page-token";

/// Headless Chromium with its DevTools endpoint; killed on drop.
struct Browser {
    child: Child,
    port: u16,
    _profile: std::path::PathBuf,
}

impl Browser {
    fn start() -> Browser {
        let program = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect(
                "chromium is missing: install Debian's `chromium` (the README's test command does)",
            );
        let profile = temp_root().join(format!("ringgate-chromium-{}", std::process::id()));
        let mut child = Command::new(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,860",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // It names its DevTools port on stderr.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromium exited before its DevTools port")
                .unwrap();
            if let Some(url) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                break url.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so chromium never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// The DevTools socket of the browser's page.
    fn page(&self) -> Page {
        // DevTools' HTTP server keeps the connection open: read by length.
        let mut http = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(http, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut reader = BufReader::new(http);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let targets: Value = serde_json::from_slice(&body).unwrap();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Page { socket, next: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

struct Page {
    socket: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Page {
    /// One DevTools command; its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(tungstenite::Message::text(message))
            .unwrap();
        loop {
            let reply = self.socket.read().expect("a DevTools reply");
            let Ok(text) = reply.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Every `data-k` number the page shows.
    fn shown(&mut self) -> Value {
        let script = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-k]')].map(e => [e.dataset.k, e.textContent])))";
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": script, "returnByValue": true }),
        );
        serde_json::from_str(r["result"]["value"].as_str().unwrap_or("{}")).unwrap()
    }
}

/// A number as the page writes it (`1,234`).
fn number(v: &Value) -> Option<u64> {
    v.as_str()?.replace(',', "").parse().ok()
}

#[test]
fn the_status_page_shows_what_stats_says_in_a_real_browser() {
    let origin = Origin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.admin.as_mut().unwrap().token = Some(TOKEN.into());
    config.workers.count = Some(2);
    config.routes[0].cache = Some(Default::default());
    let gw = start(config);
    let admin = gw.admin_addr().unwrap();

    // The page itself needs no token; /stats does.
    let mut c = Client::connect(admin);
    let page = c.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .status,
        401
    );

    // Traffic: cache hits and misses from a few clients.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|i| {
            let (stop, addr) = (stop.clone(), gw.listen_addr());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Client::connect(addr);
                    for _ in 0..50 {
                        n += 1;
                        let path = if n % 10 == 0 {
                            format!("/c?cc=max-age%3D60&k={i}-{n}")
                        } else {
                            "/c?cc=max-age%3D60".to_string()
                        };
                        let r =
                            c.request(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
                        assert_eq!(r.status, 200);
                    }
                }
            })
        })
        .collect();

    let browser = Browser::start();
    let mut page = browser.page();
    page.call("Page.enable", json!({}));
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/#token={TOKEN}") }),
    );
    // A few polls while traffic flows: the charts fill, the rate shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = page.shown();
        if number(&shown["total.rps"]).is_some_and(|r| r > 0)
            && Instant::now() > deadline - Duration::from_secs(14)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no request rate shown: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", path.display());

    // Traffic stops; the page's next polls must show exactly what /stats says.
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().unwrap();
    }
    let stats = {
        let mut c = Client::connect(admin);
        let r = c.request(
            format!("GET /stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        serde_json::from_str::<Value>(&r.text()).unwrap()
    };
    let totals = &stats["totals"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = page.shown();
        if number(&shown["total.requests"]) == totals["requests"].as_u64() {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page never caught up: {shown} vs {totals}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(totals["requests"].as_u64() > Some(100));
    assert_eq!(
        number(&shown["total.cache.hits"]),
        totals["cache"]["hits"].as_u64()
    );
    assert_eq!(number(&shown["total.rate_limited"]), Some(0));
    assert_eq!(number(&shown["total.tls.handshakes"]), Some(0));
    assert_eq!(
        number(&shown["total.generation"]),
        stats["process"]["generation"].as_u64()
    );
    assert_eq!(shown["cluster.redis"], "off", "no [cluster] in this test");
    for w in stats["workers"].as_array().unwrap() {
        let key = format!("worker.{}.requests", w["worker"]);
        assert_eq!(
            number(&shown[key.as_str()]),
            w["requests"].as_u64(),
            "{key}"
        );
    }
    let hits = totals["cache"]["hits"].as_f64().unwrap();
    let misses = totals["cache"]["misses"].as_f64().unwrap();
    let ratio = format!("{:.1} %", 100.0 * hits / (hits + misses));
    assert_eq!(shown["total.hit_ratio"], ratio.as_str());
}
