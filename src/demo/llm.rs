//! The demo origin's fake LLM provider: an OpenAI-compatible
//! `POST /v1/chat/completions` (streaming or not) and `GET /v1/models`,
//! deterministic, so the AI route of the shipped config can be tried with
//! nothing else. Its answer repeats the last message back, word by word
//! when streamed.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The gap between two streamed words (so a stream can be watched).
const WORD_GAP: Duration = Duration::from_millis(40);

/// Whether this request is the fake provider's.
pub fn handles(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("POST", "/v1/chat/completions") | ("GET", "/v1/models")
    )
}

/// Answers one request; the connection closes after it.
pub fn answer(stream: &mut TcpStream, path: &str, body: &str) -> io::Result<()> {
    if path == "/v1/models" {
        let list = serde_json::json!({"object": "list", "data": [{"id": "ringgate-demo", "object": "model", "owned_by": "demo"}]});
        return whole(stream, 200, &list.to_string());
    }
    let Ok(request) = serde_json::from_str::<serde_json::Value>(body) else {
        return whole(
            stream,
            400,
            r#"{"error":{"message":"the body is not JSON","type":"invalid_request_error"}}"#,
        );
    };
    let model = request["model"].as_str().unwrap_or("ringgate-demo");
    let said = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let reply = format!("You said: {said}");
    let (prompt, completion) = (
        said.split_whitespace().count() as u64,
        reply.split_whitespace().count() as u64,
    );
    let usage = serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if request["stream"] != true {
        let answer = serde_json::json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return whole(stream, 200, &answer.to_string());
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nServer: ringgate-demo-origin\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for (i, word) in reply.split(' ').enumerate() {
        let piece = if i == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        };
        events.push(chunk(
            serde_json::json!({"content": piece}),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    if request["stream_options"]["include_usage"] == true {
        events.push(serde_json::json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage}));
    }
    for (i, event) in events.iter().enumerate() {
        if i > 1 {
            std::thread::sleep(WORD_GAP);
        }
        sse(stream, &format!("data: {event}\n\n"))?;
    }
    sse(stream, "data: [DONE]\n\n")?;
    stream.write_all(b"0\r\n\r\n")
}

fn sse(stream: &mut TcpStream, event: &str) -> io::Result<()> {
    write!(stream, "{:x}\r\n{event}\r\n", event.len())?;
    stream.flush()
}

fn whole(stream: &mut TcpStream, status: u16, body: &str) -> io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nServer: ringgate-demo-origin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
