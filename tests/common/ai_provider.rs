//! A fake LLM provider on a free port: OpenAI-compatible
//! (`/v1/chat/completions`, `/v1/embeddings`) and Anthropic-shaped
//! (`/v1/messages`), streaming or not, one request per connection. What it
//! does is chosen by the model name the gateway sends:
//!
//! - `fail-429`: 429 with `Retry-After: 30`; `fail-500`: 500;
//! - `stall-head`: reads the request, never answers;
//! - `stall-mid`: on a stream, sends the first event, then nothing;
//! - `paced`: on a stream, 150 ms between events;
//! - `slow`: answers after 300 ms; `held`: once the test calls
//!   [`Provider::release`] (at most 30 s);
//! - anything else: answers `echo:<the last message's text>`, usage 5 + 7.
//!
//! Every request is recorded (path, head, body) with when it came.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A request the provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub head: String,
    pub body: serde_json::Value,
}

pub struct Provider {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Opened by [`Provider::release`]: `held` requests answer then.
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

/// How long a `held` request waits for the test at most.
const HOLD_MAX: Duration = Duration::from_secs(30);

/// The gap between a `paced` stream's events.
pub const PACE: Duration = Duration::from_millis(150);

impl Provider {
    pub fn start() -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let gate: Arc<Gate> = Arc::default();
        let held = gate.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (log, held) = (log.clone(), held.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &log, &held);
                });
            }
        });
        Provider { addr, seen, gate }
    }

    /// Lets the `held` requests answer.
    pub fn release(&self) {
        *self.gate.open.lock().unwrap() = true;
        self.gate.opened.notify_all();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Models asked for, in order.
    pub fn models(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| s.body["model"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>, gate: &Gate) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        head: head.clone(),
        body: body.clone(),
    });
    let mut out = conn;
    let model = body["model"].as_str().unwrap_or("").to_string();
    match model.as_str() {
        "fail-429" => {
            return out.write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: application/json\r\nContent-Length: 29\r\nConnection: close\r\n\r\n{\"error\":{\"message\":\"slow\"}}")
        }
        "fail-500" => {
            return out.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        "stall-head" => {
            // Holds the connection until the gateway gives up on it.
            let mut byte = [0u8; 1];
            let _ = out.read(&mut byte);
            return Ok(());
        }
        _ => {}
    }
    if model == "slow" {
        // A slow provider on purpose: concurrent requests pile up behind it.
        std::thread::sleep(Duration::from_millis(300));
    }
    if model == "held" {
        // Busy until the test has sent what it sends meanwhile.
        let open = gate.open.lock().unwrap();
        let _open = gate
            .opened
            .wait_timeout_while(open, HOLD_MAX, |open| !*open)
            .unwrap();
    }
    let anthropic = path.ends_with("/messages");
    let text = format!("echo:{}", last_text(&body));
    if body["stream"] == true {
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
        let events = if anthropic {
            anthropic_events(&model, &text)
        } else {
            openai_events(
                &model,
                &text,
                body["stream_options"]["include_usage"] == true,
            )
        };
        for (i, event) in events.iter().enumerate() {
            if i > 0 && model == "paced" {
                std::thread::sleep(PACE);
            }
            write!(out, "{:x}\r\n{event}\r\n", event.len())?;
            out.flush()?;
            if i == 0 && model == "stall-mid" {
                let mut byte = [0u8; 1];
                let _ = out.read(&mut byte);
                return Ok(());
            }
        }
        return out.write_all(b"0\r\n\r\n");
    }
    let answer = if anthropic {
        serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 7},
        })
    } else if path.ends_with("/embeddings") {
        serde_json::json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": 5, "total_tokens": 5}})
    } else {
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        })
    };
    let answer = answer.to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

fn last_text(body: &serde_json::Value) -> String {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return body["prompt"].as_str().unwrap_or("").to_string();
    };
    match &last["content"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn openai_events(model: &str, text: &str, usage: bool) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for piece in text.as_bytes().chunks(4) {
        let piece = String::from_utf8_lossy(piece);
        events.push(chunk(
            serde_json::json!({"content": piece}),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    if usage {
        let u = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}});
        events.push(format!("data: {u}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn anthropic_events(model: &str, text: &str) -> Vec<String> {
    let event = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![event(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "model": model, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    )];
    for piece in text.as_bytes().chunks(4) {
        let piece = String::from_utf8_lossy(piece);
        events.push(event(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
    ));
    events.push(event(
        "message_stop",
        serde_json::json!({"type": "message_stop"}),
    ));
    events
}

/// Reads a chunked SSE response's events as they arrive, with when each
/// came (after the response head).
pub fn read_events(stream: &mut TcpStream) -> (u16, Vec<(Instant, String)>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line
            .to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
        if line == "\r\n" {
            break;
        }
    }
    assert!(chunked, "{status_line}");
    let mut events = Vec::new();
    let mut pending = String::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            break; // closed mid-stream
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        let mut data = vec![0; n + 2];
        if reader.read_exact(&mut data).is_err() {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&data[..n]));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            events.push((Instant::now(), event));
        }
    }
    (status, events)
}

/// The JSON of each `data:` event (`[DONE]` and the like left out).
pub fn event_json(events: &[(Instant, String)]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|(_, e)| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// The text a chat stream's chunks carry, joined.
pub fn streamed_text(events: &[(Instant, String)]) -> String {
    event_json(events)
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}
