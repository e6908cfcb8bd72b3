//! Shared test support: a real HTTP/1.1 origin on port 0 whose behaviour is
//! chosen by the request path, a raw-socket HTTP client, and gateway start-up
//! helpers. Waiting is always for a condition or a socket event with a
//! deadline, never a fixed sleep.
#![allow(dead_code)]

pub mod ai_provider;
pub mod http2;
pub mod redis_server;
pub mod slow_readers;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringgate::config::Config;
use ringgate::{Gateway, Handle};

/// Longest any single test read waits for the gateway.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ origin

/// What the origin saw, for assertions.
#[derive(Default)]
pub struct OriginLog {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Raw request heads, in arrival order.
    pub heads: Mutex<Vec<String>>,
    /// Body byte counts of each request.
    pub body_lengths: Mutex<Vec<u64>>,
    /// The FNV-1a digest ([`fnv1a`]) of each request's body, in order.
    pub body_digests: Mutex<Vec<u64>>,
    /// Requests per target (path and query).
    pub per_target: Mutex<HashMap<String, usize>>,
    /// Milliseconds every response is delayed by (a slow server).
    pub delay_ms: AtomicU64,
    /// When not 0, every request is answered with this status (a failing server).
    pub fail_status: AtomicU64,
    /// When set, every request is read and its connection closed unanswered.
    pub drop_requests: AtomicBool,
}

/// A test origin. Paths:
/// - `/echo...`: 200, body is the request head as received, then `body=<bytes>`
/// - `/bytes/N`: 200 with N bytes (Content-Length), streamed
/// - `/chunked/N`: 200 with N bytes, chunked in 1000-byte chunks
/// - `/until-close/N`: 200 with N bytes, no length, then close
/// - `/status/CODE`: that status, body "status CODE" unless 1xx/204/304
/// - `/hang`: never answers
/// - `/gate`: answers once the test opens the gate
/// - `/then-close`: answers normally (keep-alive) then closes the socket
/// - `/bad-framing`: a response with both Content-Length and chunked
/// - `/te-gzip`: `Transfer-Encoding: gzip`, body to close; `/te-gzip-chunked`: `gzip, chunked`
/// - `/die-mid-body`: promises 1000 bytes, sends 10, closes
/// - `/trailers`: chunked "hello" with trailers `X-Checksum` (allowed) and
///   `Content-Length`, `Set-Cookie`, `Host` (never allowed in a trailer)
/// - `/interim`: a 103 Early Hints, then 200
/// - `/c?...`: a cacheable resource described by its query (see [`cacheable`])
/// - anything else: 200 "ok"
pub struct Origin {
    pub addr: SocketAddr,
    pub log: Arc<OriginLog>,
    stop: Arc<AtomicBool>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Origin {
    pub fn start() -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// An origin on `address` (e.g. another loopback address, same port).
    pub fn start_on(address: SocketAddr) -> Origin {
        let listener = TcpListener::bind(address).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(OriginLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        {
            let (log, stop, gate) = (log.clone(), stop.clone(), gate.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    log.connections.fetch_add(1, Ordering::SeqCst);
                    let (log, gate) = (log.clone(), gate.clone());
                    std::thread::spawn(move || {
                        let _ = origin_connection(stream, &log, &gate);
                    });
                }
            });
        }
        Origin {
            addr,
            log,
            stop,
            gate,
        }
    }

    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.log.requests.load(Ordering::SeqCst)
    }

    /// Answers every later request with `status` (a failing server); 0 heals it.
    pub fn fail_with(&self, status: u16) {
        self.log
            .fail_status
            .store(u64::from(status), Ordering::SeqCst);
    }

    /// Stops the origin: no new connection is accepted, and those already
    /// open close on their next request, unanswered. Returns once a connect
    /// is refused.
    pub fn stop(self) {
        let addr = self.addr;
        self.drop_requests();
        drop(self);
        wait_until(
            Duration::from_secs(10),
            "the origin refuses connections",
            || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        );
    }

    /// Closes every later request's connection without an answer.
    pub fn drop_requests(&self) {
        self.log.drop_requests.store(true, Ordering::SeqCst);
    }

    /// Makes every later response wait this long (a slow server).
    pub fn set_delay(&self, delay: Duration) {
        self.log
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests the origin received for exactly this target.
    pub fn hits_on(&self, target: &str) -> usize {
        self.log
            .per_target
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    /// The heads received for this target, oldest first.
    pub fn heads_for(&self, target: &str) -> Vec<String> {
        let prefix = format!(" {target} ");
        self.log
            .heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.split("\r\n").next().unwrap_or("").contains(&prefix))
            .cloned()
            .collect()
    }

    pub fn last_head(&self) -> String {
        self.log
            .heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Lets every `/gate` request answer.
    pub fn open_gate(&self) {
        let (lock, cv) = &*self.gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.open_gate();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn origin_connection(
    mut stream: TcpStream,
    log: &OriginLog,
    gate: &(Mutex<bool>, std::sync::Condvar),
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let Some(head) = reader.read_head()? else {
            return Ok(());
        };
        log.requests.fetch_add(1, Ordering::SeqCst);
        log.heads.lock().unwrap().push(head.clone());
        let (request_line, headers) = split_head(&head);
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("");
        let mut digest = Fnv1a::default();
        let body_len = if headers.get("transfer-encoding").is_some_and(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        }) {
            reader.read_chunked(|data| digest.write(data))?
        } else if let Some(n) = headers.get("content-length") {
            let n: u64 = n.parse().unwrap();
            reader.read_body(n, |data| digest.write(data))?;
            n
        } else {
            0
        };
        log.body_lengths.lock().unwrap().push(body_len);
        log.body_digests.lock().unwrap().push(digest.0);
        let seen = {
            let mut per_target = log.per_target.lock().unwrap();
            let n = per_target.entry(path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || version == "HTTP/1.0";
        let head_only = method == "HEAD";
        let conn_close = if close { "Connection: close\r\n" } else { "" };

        if log.drop_requests.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fail = log.fail_status.load(Ordering::SeqCst);
        if fail != 0 {
            stream.write_all(
                format!("HTTP/1.1 {fail} Failing\r\nContent-Length: 4\r\n{conn_close}\r\nfail")
                    .as_bytes(),
            )?;
            if close {
                return Ok(());
            }
            continue;
        }
        let delay = log.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            // A slow server on purpose (Origin::set_delay): the delay is the behaviour under test.
            std::thread::sleep(Duration::from_millis(delay));
        }
        if let Some(query) = path.strip_prefix("/c?") {
            cacheable(
                &mut stream,
                query,
                &headers,
                seen,
                head_only,
                conn_close,
                gate,
            )?;
        } else if path.starts_with("/echo") {
            let body = format!("{head}body={body_len}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn_close}\r\n",
                body.len()
            );
            stream.write_all(resp.as_bytes())?;
            if !head_only {
                stream.write_all(body.as_bytes())?;
            }
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: u64 = n.parse().unwrap();
            stream.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{conn_close}\r\n").as_bytes(),
            )?;
            if !head_only {
                write_pattern(&mut stream, n)?;
            }
        } else if let Some(n) = path.strip_prefix("/chunked/") {
            let n: u64 = n.parse().unwrap();
            stream.write_all(
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{conn_close}\r\n")
                    .as_bytes(),
            )?;
            let mut sent = 0u64;
            while sent < n {
                let len = (n - sent).min(1000);
                stream.write_all(format!("{len:x}\r\n").as_bytes())?;
                write_pattern_from(&mut stream, sent, len)?;
                stream.write_all(b"\r\n")?;
                sent += len;
            }
            stream.write_all(b"0\r\n\r\n")?;
        } else if let Some(n) = path.strip_prefix("/until-close/") {
            let n: u64 = n.parse().unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            write_pattern(&mut stream, n)?;
            return Ok(());
        } else if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap();
            if code == 204 || code == 304 {
                stream.write_all(format!("HTTP/1.1 {code} X\r\n{conn_close}\r\n").as_bytes())?;
            } else {
                let body = format!("status {code}");
                stream.write_all(
                    format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\n{conn_close}\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )?;
            }
        } else if path == "/hang" {
            // Hold the connection until the peer goes away.
            let mut sink = [0u8; 1024];
            while reader.inner.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
            return Ok(());
        } else if path == "/gate" {
            let (lock, cv) = gate;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            drop(open);
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ngated")?;
        } else if path == "/then-close" {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
            return Ok(());
        } else if path == "/te-gzip" {
            // A transfer coding without a final chunked: the body runs to close.
            stream.write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: gzip\r\n\r\nnot-really-gzip")?;
            return Ok(());
        } else if path == "/te-gzip-chunked" {
            stream.write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
        } else if path == "/bad-framing" {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
        } else if path == "/trailers" {
            // A chunked body with trailer fields, some a trailer must never carry.
            stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 5d41\r\nContent-Length: 99\r\nSet-Cookie: s=1\r\nHost: evil\r\n\r\n")?;
        } else if path == "/die-mid-body" {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")?;
            return Ok(());
        } else if path == "/interim" {
            stream.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")?;
        } else {
            stream.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{conn_close}\r\nok").as_bytes(),
            )?;
        }
        if close {
            return Ok(());
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A cacheable resource, described by the query of `/c?...`:
/// `cc` (Cache-Control), `etag`, `lm` (Last-Modified), `vary`, `age`,
/// `tag` (Surrogate-Key), `h.NAME=VALUE` (any field), `ranges=1` (206 for a `Range`), `cookie=1` (Set-Cookie), `status`, `body` (default: "v" plus the request
/// number), `echo=NAME` (body `name=<that request header's value>`), `size=N` (N pattern bytes), `chunked=1`, `after=K&after_status=S`
/// (requests beyond the K-th get status S), `gate_after=K` (requests beyond
/// the K-th wait for the gate), `stall_at=K` (the first K body bytes, then the
/// rest once the gate opens), `die_at=K` (the first K body bytes, then the
/// connection closes; only for requests beyond the `die_after`-th when given). `If-None-Match` matching `etag` gets a 304.
fn cacheable(
    stream: &mut TcpStream,
    query: &str,
    headers: &HashMap<String, String>,
    seen: usize,
    head_only: bool,
    conn_close: &str,
    gate: &(Mutex<bool>, std::sync::Condvar),
) -> io::Result<()> {
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let get = |k: &str| params.get(k).cloned();
    let num = |k: &str| get(k).and_then(|v| v.parse::<usize>().ok());
    if num("gate_after").is_some_and(|k| seen > k) {
        let (lock, cv) = gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    let mut status: u16 = get("status").and_then(|s| s.parse().ok()).unwrap_or(200);
    if num("after").is_some_and(|k| seen > k) {
        status = get("after_status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
    }
    let mut fields = String::new();
    for (param, header) in [
        ("cc", "Cache-Control"),
        ("etag", "ETag"),
        ("lm", "Last-Modified"),
        ("vary", "Vary"),
        ("age", "Age"),
        ("expires", "Expires"),
        ("tag", "Surrogate-Key"),
    ] {
        if let Some(v) = get(param) {
            fields.push_str(&format!("{header}: {v}\r\n"));
        }
    }
    // `h.NAME=VALUE`: any other response field.
    let mut extra: Vec<(&String, &String)> =
        params.iter().filter(|(k, _)| k.starts_with("h.")).collect();
    extra.sort();
    for (k, v) in extra {
        fields.push_str(&format!("{}: {v}\r\n", &k[2..]));
    }
    if get("cookie").is_some() {
        fields.push_str("Set-Cookie: session=abc\r\n");
    }
    fields.push_str(&format!("X-Origin-Request: {seen}\r\n"));
    if let (Some(etag), Some(inm)) = (get("etag"), headers.get("if-none-match")) {
        if status == 200 && inm.split(',').any(|t| t.trim() == etag) {
            return stream.write_all(
                format!("HTTP/1.1 304 Not Modified\r\n{fields}{conn_close}\r\n").as_bytes(),
            );
        }
    }
    let body: Vec<u8> = match (num("size"), get("echo")) {
        (Some(n), _) => (0..n as u64).map(pattern_byte).collect(),
        (None, Some(name)) => {
            let name = name.to_ascii_lowercase();
            let value = headers.get(&name).cloned().unwrap_or_default();
            format!("{name}={value}").into_bytes()
        }
        (None, None) => get("body")
            .unwrap_or_else(|| format!("v{seen}"))
            .into_bytes(),
    };
    if get("chunked").is_some() {
        stream.write_all(
            format!(
                "HTTP/1.1 {status} X\r\n{fields}Transfer-Encoding: chunked\r\n{conn_close}\r\n"
            )
            .as_bytes(),
        )?;
        if !head_only {
            for piece in body.chunks(700) {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                stream.write_all(piece)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
        }
        return Ok(());
    }
    // `ranges=1`: a single `bytes=first-[last]` range is answered 206.
    if let (Some(_), Some(range), 200) = (get("ranges"), headers.get("range"), status) {
        let spec = range.strip_prefix("bytes=").unwrap_or("");
        if let Some((first, last)) = spec.split_once('-') {
            let len = body.len();
            let first: usize = first.parse().unwrap_or(0);
            let last: usize = last.parse().unwrap_or(len - 1).min(len - 1);
            return stream.write_all(
                format!(
                    "HTTP/1.1 206 X\r\n{fields}Content-Range: bytes {first}-{last}/{len}\r\nContent-Length: {}\r\n{conn_close}\r\n{}",
                    last + 1 - first,
                    String::from_utf8_lossy(&body[first..=last])
                )
                .as_bytes(),
            );
        }
    }
    if status == 204 {
        return stream.write_all(format!("HTTP/1.1 204 X\r\n{fields}{conn_close}\r\n").as_bytes());
    }
    stream.write_all(
        format!(
            "HTTP/1.1 {status} X\r\n{fields}Content-Length: {}\r\n{conn_close}\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    if head_only {
        return Ok(());
    }
    let die_at = num("die_at").filter(|_| num("die_after").is_none_or(|k| seen > k));
    let split = num("stall_at")
        .or(die_at)
        .unwrap_or(body.len())
        .min(body.len());
    stream.write_all(&body[..split])?;
    if die_at.is_some() {
        // The origin fails mid-body: the connection closes short of the length.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Err(io::Error::other("died mid-body on purpose"));
    }
    if split < body.len() {
        let (lock, cv) = gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        stream.write_all(&body[split..])?;
    }
    Ok(())
}

/// Byte `i` of every generated body, so corruption anywhere is detectable.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn write_pattern(stream: &mut TcpStream, n: u64) -> io::Result<()> {
    write_pattern_from(stream, 0, n)
}

fn write_pattern_from(stream: &mut TcpStream, start: u64, n: u64) -> io::Result<()> {
    let mut block = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(block.len() as u64) as usize;
        for (j, b) in block[..len].iter_mut().enumerate() {
            *b = pattern_byte(start + sent + j as u64);
        }
        stream.write_all(&block[..len])?;
        sent += len as u64;
    }
    Ok(())
}

fn split_head(head: &str) -> (String, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    (first, headers)
}

/// FNV-1a, 64 bits: a digest of a body read piece by piece, so tests can
/// check that every byte arrived in order without holding the body.
#[derive(Clone, Copy)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The FNV-1a digest of `data`.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut d = Fnv1a::default();
    d.write(data);
    d.0
}

/// Minimal buffered reader for the origin and the client.
pub struct BufReader {
    pub inner: TcpStream,
    buf: Vec<u8>,
}

/// `Read::read` that retries when a signal interrupted it, as `read_exact`
/// does: an interrupted read says nothing about the peer.
fn read_retrying(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl BufReader {
    pub fn new(inner: TcpStream) -> Self {
        BufReader {
            inner,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = read_retrying(&mut self.inner, &mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next head, without its final blank line; `None` on a clean EOF.
    pub fn read_head(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "EOF inside a head",
                    ))
                };
            }
        }
    }

    /// Like `Read::read`: buffered bytes first, then the socket.
    pub fn read_into(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        read_retrying(&mut self.inner, out)
    }

    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a body",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads and drops `n` bytes without holding them.
    pub fn discard(&mut self, n: u64) -> io::Result<()> {
        self.read_body(n, |_| {})
    }

    /// Reads `n` bytes, handing each piece to `sink` without holding them.
    pub fn read_body(&mut self, mut n: u64, mut sink: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a body",
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Decodes a chunked body, returning its decoded length (data is checked, not kept).
    pub fn read_chunked_body(&mut self) -> io::Result<u64> {
        self.read_chunked(|_| {})
    }

    pub fn read_chunked(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let line = self.read_line()?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
            if size == 0 {
                // Trailers until the blank line.
                while !self.read_line()?.is_empty() {}
                return Ok(total);
            }
            let mut left = size;
            while left > 0 {
                if self.buf.is_empty() && self.fill()? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "EOF inside a chunk",
                    ));
                }
                let take = (self.buf.len() as u64).min(left) as usize;
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take as u64;
            }
            total += size;
            if !self.read_line()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk not followed by CRLF",
                ));
            }
        }
    }

    /// Reads until EOF.
    pub fn read_to_end(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0;
        loop {
            if !self.buf.is_empty() {
                sink(&self.buf);
                total += self.buf.len() as u64;
                self.buf.clear();
            }
            if self.fill()? == 0 {
                return Ok(total);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------ client

/// A response as a client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A raw client connection to the gateway.
pub struct Client {
    pub reader: BufReader,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::new_from(TcpStream::connect(addr).unwrap())
    }

    /// A client on a connection opened already.
    pub fn new_from(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.inner.write_all(bytes).unwrap();
    }

    /// Writes, tolerating a gateway that already closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.inner.write_all(bytes)
    }

    /// Reads one final response (interim 1xx responses are skipped); for a HEAD request pass `head_request`.
    pub fn read_response_for(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let head = self.reader.read_head()?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                )
            })?;
            let (status_line, _) = split_head(&head);
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {status_line:?}"),
                    )
                })?;
            let headers: Vec<(String, String)> = head
                .split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            if (100..200).contains(&status) {
                continue;
            }
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let mut body = Vec::new();
            if !(head_request || status == 204 || status == 304) {
                if get("transfer-encoding").is_some_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                }) {
                    self.reader.read_chunked(|d| body.extend_from_slice(d))?;
                } else if let Some(n) = get("content-length") {
                    body = self.reader.read_exact_vec(n.parse().unwrap())?;
                } else {
                    self.reader.read_to_end(|d| body.extend_from_slice(d))?;
                }
            }
            return Ok(Response {
                status,
                head,
                headers,
                body,
            });
        }
    }

    pub fn read_response(&mut self) -> io::Result<Response> {
        self.read_response_for(false)
    }

    /// Sends `raw` and reads the response.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_response().unwrap()
    }

    /// True when the gateway closed the connection (EOF or reset) before `IO_TIMEOUT`.
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match read_retrying(&mut self.reader.inner, &mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// One `GET path` on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
}

// ----------------------------------------------------------------- gateway

/// A one-worker config proxying everything to `origin`, with short timeouts
/// so timeout tests finish quickly.
pub fn config_for(origin: SocketAddr) -> Config {
    let mut config = Config::quick("127.0.0.1:0".parse().unwrap(), vec![origin]);
    config.workers.count = Some(1);
    // `RINGGATE_TEST_DRIVER=epoll` runs the suite on the epoll driver
    // (tests that name a driver keep theirs).
    match std::env::var("RINGGATE_TEST_DRIVER").as_deref() {
        Ok("epoll") => config.workers.driver = ringgate::config::DriverChoice::Epoll,
        Ok("io_uring") => config.workers.driver = ringgate::config::DriverChoice::IoUring,
        Ok(other) => panic!("RINGGATE_TEST_DRIVER={other}: use epoll or io_uring"),
        Err(_) => {}
    }
    config.timeouts.shutdown_grace = Duration::from_secs(10);
    config
}

pub fn start(config: Config) -> Handle {
    Gateway::start(config).expect("gateway starts")
}

/// Each worker's `servers` entries from the admin API's `/stats`.
pub fn servers_per_worker(gw: &Handle) -> Vec<Vec<serde_json::Value>> {
    let mut c = Client::connect(gw.admin_addr().expect("the admin API is on"));
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["servers"].as_array().unwrap().clone())
        .collect()
}

/// Polls `condition` until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        // A poll interval, not a guess at timing: the loop ends on the condition.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `count` GETs for `target` at once, each on its own connection, while
/// the origin holds the first one (`gate_after=0` in the target) until every
/// client has sent; then opens the gate and returns all the responses.
pub fn concurrent_gets_through_gate(
    addr: SocketAddr,
    origin: &Origin,
    target: &'static str,
    count: usize,
) -> Vec<Response> {
    let (sent_tx, sent_rx) = mpsc::channel();
    let clients: Vec<_> = (0..count)
        .map(|_| {
            let sent_tx = sent_tx.clone();
            in_thread(move || {
                let mut c = Client::connect(addr);
                c.send(format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes());
                sent_tx.send(()).unwrap();
                c.read_response().unwrap()
            })
        })
        .collect();
    for _ in 0..count {
        sent_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    wait_until(
        Duration::from_secs(5),
        "the first fetch reached the origin",
        || origin.hits_on(target) >= 1,
    );
    origin.open_gate();
    clients
        .into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect()
}

/// A channel-based one-shot for handing a result from a helper thread.
pub fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// Name -> (addresses, TTL in seconds).
type DnsRecords = HashMap<String, (Vec<std::net::Ipv4Addr>, u32)>;

/// A DNS server for tests (UDP, A records only) whose answers the test
/// changes while the gateway runs.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<DnsRecords>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Lets the thread notice `stop` when no query comes.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<DnsRecords>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (records, queries, stop) = (records.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Acquire) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::SeqCst);
                    if let Some(reply) = dns_reply(&buf[..n], &records.lock().unwrap()) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            });
        }
        DnsServer {
            addr,
            records,
            queries,
            stop,
        }
    }

    /// From now on `name` answers `ips` with `ttl` seconds.
    pub fn set(&self, name: &str, ips: &[&str], ttl: u32) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), (ips, ttl));
    }

    /// From now on `name` gets NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The answer to one query: A records for a known name, an empty answer for
/// other types, NXDOMAIN for unknown names.
fn dns_reply(query: &[u8], records: &DnsRecords) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_string());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let mut reply = query.get(..question_end)?.to_vec();
    reply[2] = 0x81; // response, recursion desired
    reply[3] = 0x80; // recursion available, no error
    let answers: Vec<std::net::Ipv4Addr> = match records.get(&name) {
        None => {
            reply[3] |= 3; // NXDOMAIN
            Vec::new()
        }
        Some(_) if qtype != 1 => Vec::new(),
        Some((ips, _)) => ips.clone(),
    };
    let ttl = records.get(&name).map_or(0, |r| r.1);
    reply[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for ip in answers {
        reply.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&[0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

// ------------------------------------------------------------------ tokens

/// An HS256 JWT signed with `key`, naming `kid`.
pub fn sign_jwt(kid: &str, key: &str, claims: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A route policy verifying HS256 tokens signed with [`TEST_KEY`], the
/// subject forwarded as `X-User`.
pub fn test_auth_policy() -> ringgate::config::AuthPolicy {
    ringgate::config::AuthPolicy {
        keys: vec![("k1".into(), TEST_KEY.into())],
        source: ringgate::config::TokenSource::Bearer,
        required: true,
        subject_header: "X-User".into(),
        claims: Vec::new(),
        leeway: Duration::from_secs(5),
        require_exp: true,
    }
}

pub const TEST_KEY: &str = "a test key of some length";

/// A bearer token for `user`, valid for five minutes, for [`test_auth_policy`].
pub fn token_for(user: &str) -> String {
    sign_jwt(
        "k1",
        TEST_KEY,
        &format!(r#"{{"sub":"{user}","exp":{}}}"#, unix_now() + 300),
    )
}

// ------------------------------------------------------- a decoding origin

/// An origin that interprets paths loosely, as many application servers
/// do: it percent-decodes every escape (`%2F` included), takes `\` for `/`,
/// merges slashes and resolves dot segments. `/admin/...` answers
/// `secret <path>`, anything else `public <path>`; the raw request line is
/// echoed in `X-Raw-Target`.
pub struct DecodingOrigin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl DecodingOrigin {
    pub fn start() -> DecodingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    while let Ok(Some(head)) = reader.read_head() {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let target = head.split(' ').nth(1).unwrap_or("").to_string();
                        let path = loose_path(target.split('?').next().unwrap_or(""));
                        let body = if path.starts_with("/admin/") || path == "/admin" {
                            format!("secret {path}")
                        } else {
                            format!("public {path}")
                        };
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nX-Raw-Target: {target}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DecodingOrigin { addr, requests }
    }
}

/// How a lenient server reads a path: decode everything, `\` is `/`, merge
/// slashes, resolve `.` and `..`.
fn loose_path(raw: &str) -> String {
    let decoded = percent_decode(raw).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// `config` with the admin API on a free loopback port.
pub fn with_admin(mut config: Config) -> Config {
    config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    config
}

/// The admin API's `/stats`.
pub fn admin_stats(gw: &Handle) -> serde_json::Value {
    let mut c = Client::connect(gw.admin_addr().expect("the admin API is on"));
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    serde_json::from_str(&r.text()).unwrap()
}

// ------------------------------------------------ the gateway as a process

/// The `ringgate` binary run on a config file, for what only a process
/// shows: its memory, its signals, its start-up log.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Its config file.
    pub path: std::path::PathBuf,
    /// Every line it wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A free loopback port: bound, read, released.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port on 127.0.0.1 where nothing listens for as long as the test
/// process lives: a socket is bound there and never listens, so a
/// connection is refused, and neither the kernel (for port 0) nor another
/// bind gives the port to anyone else. A port found free and let go (as
/// [`free_port`]'s) may be another test's gateway or origin a moment later.
pub fn dead_port() -> u16 {
    static HELD: std::sync::OnceLock<socket2::Socket> = std::sync::OnceLock::new();
    let socket = HELD.get_or_init(|| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        socket
    });
    socket.local_addr().unwrap().as_socket().unwrap().port()
}

/// What `{listen}` becomes in a [`GatewayProcess`]'s config file.
const PROCESS_LISTEN: &str = "127.0.0.1:0";

/// The first address of the start line's `listen=[...]` field.
fn first_listen_address(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listen=[")? + "listen=[".len()..];
    let end = rest.find([',', ']'])?;
    rest[..end].trim().parse().ok()
}

impl GatewayProcess {
    /// Starts `ringgate run` on `config`, where `{listen}` stands for a free
    /// loopback address; returns once it logged that it started.
    pub fn start(config: &str, tweak: impl FnOnce(&mut std::process::Command)) -> GatewayProcess {
        GatewayProcess::start_binary(env!("CARGO_BIN_EXE_ringgate"), config, tweak)
    }

    /// [`GatewayProcess::start`] with another build of the binary (a bench
    /// comparing two builds).
    pub fn start_binary(
        binary: &str,
        config: &str,
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> GatewayProcess {
        use std::io::BufRead;
        // Port 0, read back from the start line: a port picked here and bound
        // there later could be given to another test's socket in between.
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = temp_root().join(format!(
            "ringgate-proc-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringgate.toml");
        std::fs::write(&path, config.replace("{listen}", PROCESS_LISTEN)).unwrap();
        let mut command = std::process::Command::new(binary);
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        tweak(&mut command);
        let mut child = command.spawn().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (started_tx, started_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("ringgate started") {
                    let _ = started_tx.send(first_listen_address(&line));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match started_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                let _ = child.kill();
                panic!(
                    "the start line names no listener address:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the gateway did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        GatewayProcess {
            child,
            addr,
            path,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the gateway (our own child, by its PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this test started.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// `(VmRSS, VmHWM)` in KiB: resident memory now, and its peak.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Rewrites its config file (`{listen}` standing for its bound address:
    /// a reload keeps the listener, and a process it upgrades to finds it).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(
            &self.path,
            config.replace("{listen}", &self.addr.to_string()),
        )
        .unwrap();
    }

    /// SIGTERM, then the exit status (within 20 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This test process's temporary directory: every file a test writes goes
/// under it, and it is removed when the process exits (the test harness
/// returns from `main` or calls `exit`, either of which runs `atexit`).
pub fn temp_root() -> &'static std::path::Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_root() {
        if let Some(root) = ROOT.get() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ringgate-tests-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        // SAFETY: registers a function of no arguments to run at exit.
        unsafe { libc::atexit(remove_root) };
        root
    })
}

/// A fresh path for a file a test's gateway writes (an access log): under
/// the temporary directory, nothing there yet. `name` must be unique among
/// the tests of one binary.
pub fn fresh_path(name: &str) -> std::path::PathBuf {
    let dir = temp_root().join(format!("ringgate-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Writes a config file for a test under the temporary directory; `name`
/// must be unique among the tests of one binary.
pub fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = temp_root().join(format!("ringgate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `ringgate check --config PATH`: its exit code, and what it printed.
pub fn ringgate_check(path: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

// ------------------------------------------------------------------ cache

/// A gateway whose only route caches, with `tune` applied to the policy and config.
pub fn cached_gateway_with(
    origin: &Origin,
    tune: impl FnOnce(&mut ringgate::cache::policy::CachePolicy, &mut ringgate::Config),
) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    let mut policy = ringgate::cache::policy::CachePolicy::default();
    tune(&mut policy, &mut config);
    config.routes[0].cache = Some(policy);
    start(config)
}

/// A gateway whose only route caches with the default policy.
pub fn cached_gateway(origin: &Origin) -> ringgate::Handle {
    cached_gateway_with(origin, |_, _| {})
}

/// Percent-encodes a value for the origin's `/c?` query.
pub fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET `target` from shop.test, with `extra` header lines.
pub fn fetch(c: &mut Client, target: &str, extra: &str) -> Response {
    c.request(format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\n{extra}\r\n").as_bytes())
}

/// The response's `Cache-Status`, or empty.
pub fn cache_status(r: &Response) -> String {
    r.header("cache-status").unwrap_or("").to_string()
}

/// Fetches `target` twice; true when the second answer came from the cache.
pub fn second_is_hit(gw: &ringgate::Handle, target: &str) -> bool {
    let mut c = Client::connect(gw.listen_addr());
    fetch(&mut c, target, "");
    cache_status(&fetch(&mut c, target, "")).contains("hit")
}
