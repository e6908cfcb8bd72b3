//! The built-in demo origin behind `ringgate demo`: a small product
//! catalogue over HTTP/1.1 on loopback, with ETags and Cache-Control, so the
//! gateway can be tried on a fresh machine with nothing else installed.
//!
//! - `GET /products`: every product, as a JSON array
//! - `GET /products/{id}`: one product, with `ETag` and `Cache-Control`;
//!   `If-None-Match` gets a 304
//! - `PUT /products/{id}`: replace (or create) a product with the JSON body
//! - `POST /v1/chat/completions`, `GET /v1/models`: a fake LLM provider
//!   ([`llm`]) for the shipped config's AI route
//!
//! It is a plain thread-per-connection server: it is the thing behind the
//! gateway, not part of it.

mod llm;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Product {
    json: String,
    version: u64,
}

type Catalogue = Arc<Mutex<BTreeMap<u64, Product>>>;

/// A running demo origin.
pub struct DemoOrigin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DemoOrigin {
    /// Starts serving on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> io::Result<DemoOrigin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let catalogue: Catalogue = Arc::new(Mutex::new(initial_catalogue()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("demo-origin".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let catalogue = catalogue.clone();
                        let _ =
                            std::thread::Builder::new()
                                .name("demo-conn".into())
                                .spawn(move || {
                                    let _ = serve_connection(stream, &catalogue);
                                });
                    }
                })?
        };
        Ok(DemoOrigin {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn initial_catalogue() -> BTreeMap<u64, Product> {
    let items = [
        (1, "Espresso cup", 1200, 14),
        (2, "Pour-over kettle", 4500, 3),
        (3, "Burr grinder", 8900, 7),
        (4, "Paper filters (100)", 600, 120),
    ];
    items
        .into_iter()
        .map(|(id, name, price, stock)| {
            let json =
                format!(r#"{{"id":{id},"name":"{name}","price_cents":{price},"stock":{stock}}}"#);
            (id, Product { json, version: 1 })
        })
        .collect()
}

struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn json(status: u16, reason: &'static str, body: String) -> Response {
        Response {
            status,
            reason,
            headers: vec![("Content-Type", "application/json".into())],
            body,
        }
    }
}

fn serve_connection(mut stream: TcpStream, catalogue: &Catalogue) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(75)))?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Read one head.
        let (method, path, if_none_match, content_length, close, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let find = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                    };
                    if find("transfer-encoding").is_some() {
                        write_response(
                            &mut stream,
                            &Response::json(
                                411,
                                "Length Required",
                                r#"{"error":"send a Content-Length"}"#.into(),
                            ),
                            true,
                            false,
                        )?;
                        return Ok(());
                    }
                    let content_length: usize = find("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        || req.version == Some(0);
                    break (
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        find("if-none-match"),
                        content_length,
                        close,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > 64 * 1024 {
                        return Ok(());
                    }
                    let mut chunk = [0u8; 8192];
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(_) => {
                    write_response(
                        &mut stream,
                        &Response::json(400, "Bad Request", r#"{"error":"bad request"}"#.into()),
                        true,
                        false,
                    )?;
                    return Ok(());
                }
            }
        };
        if content_length > 1 << 20 {
            write_response(
                &mut stream,
                &Response::json(
                    413,
                    "Content Too Large",
                    r#"{"error":"body over 1MiB"}"#.into(),
                ),
                true,
                false,
            )?;
            return Ok(());
        }
        while buf.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_len..head_len + content_length]).to_string();
        buf.drain(..head_len + content_length);
        if llm::handles(&method, &path) {
            return llm::answer(&mut stream, &path, &body);
        }

        let response = handle(&method, &path, if_none_match.as_deref(), &body, catalogue);
        write_response(&mut stream, &response, close, method == "HEAD")?;
        if close {
            return Ok(());
        }
    }
}

fn handle(
    method: &str,
    path: &str,
    if_none_match: Option<&str>,
    body: &str,
    catalogue: &Catalogue,
) -> Response {
    let path = path.split('?').next().unwrap_or("");
    let mut catalogue = catalogue.lock().unwrap_or_else(|e| e.into_inner());
    match (method, path) {
        ("GET" | "HEAD", "/products") => {
            let items: Vec<&str> = catalogue.values().map(|p| p.json.as_str()).collect();
            let version: u64 = catalogue.values().map(|p| p.version).sum();
            let etag = format!("\"list-{}-{version}\"", catalogue.len());
            cacheable(format!("[{}]", items.join(",")), etag, 10, if_none_match)
        }
        (_, "/products") => method_not_allowed("GET, HEAD"),
        (_, p) if p.starts_with("/products/") => {
            let Ok(id) = p["/products/".len()..].parse::<u64>() else {
                return Response::json(404, "Not Found", r#"{"error":"no such product"}"#.into());
            };
            match method {
                "GET" | "HEAD" => match catalogue.get(&id) {
                    Some(product) => {
                        let etag = format!("\"{id}-{}\"", product.version);
                        cacheable(product.json.clone(), etag, 30, if_none_match)
                    }
                    None => {
                        Response::json(404, "Not Found", r#"{"error":"no such product"}"#.into())
                    }
                },
                "PUT" => {
                    let trimmed = body.trim();
                    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
                        return Response::json(
                            400,
                            "Bad Request",
                            r#"{"error":"body must be a JSON object"}"#.into(),
                        );
                    }
                    let created = !catalogue.contains_key(&id);
                    let version = catalogue.get(&id).map_or(1, |p| p.version + 1);
                    catalogue.insert(
                        id,
                        Product {
                            json: trimmed.to_string(),
                            version,
                        },
                    );
                    let mut r = Response::json(
                        if created { 201 } else { 200 },
                        if created { "Created" } else { "OK" },
                        trimmed.to_string(),
                    );
                    r.headers.push(("ETag", format!("\"{id}-{version}\"")));
                    r
                }
                _ => method_not_allowed("GET, HEAD, PUT"),
            }
        }
        _ => Response::json(404, "Not Found", r#"{"error":"try GET /products"}"#.into()),
    }
}

fn cacheable(body: String, etag: String, max_age: u32, if_none_match: Option<&str>) -> Response {
    let matches = if_none_match.is_some_and(|v| {
        v == "*"
            || v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
    });
    let mut r = if matches {
        Response {
            status: 304,
            reason: "Not Modified",
            headers: vec![],
            body: String::new(),
        }
    } else {
        Response::json(200, "OK", body)
    };
    r.headers.push(("ETag", etag));
    r.headers
        .push(("Cache-Control", format!("public, max-age={max_age}")));
    r
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = Response::json(
        405,
        "Method Not Allowed",
        r#"{"error":"method not allowed"}"#.into(),
    );
    r.headers.push(("Allow", allow.to_string()));
    r
}

fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: ringgate-demo-origin\r\n",
        r.status, r.reason
    );
    for (name, value) in &r.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if r.status != 304 {
        out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only && r.status != 304 {
        out.push_str(&r.body);
    }
    stream.write_all(out.as_bytes())
}
