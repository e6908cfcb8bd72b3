//! Anthropic's Messages API (`POST /v1/messages`) behind the
//! OpenAI-compatible chat API: a chat request becomes a Messages request,
//! and a Messages response, whole or streamed, becomes a chat completion.
//!
//! Mapped: `system` messages (joined) to `system`; `user` and `assistant`
//! messages with text content (a string, or text parts); `max_tokens` (or
//! `max_completion_tokens`; Anthropic requires one, so the route's default
//! stands in), `temperature`, `top_p`, `stop` to `stop_sequences`,
//! `stream`; `stop_reason` to `finish_reason`; usage (`input_tokens`,
//! `output_tokens`) to `prompt_tokens`, `completion_tokens`. Refused (400):
//! other roles (tools) and non-text parts (images), which this translator
//! does not carry.

use serde_json::{json, Map, Value};

use super::sse::Usage;
use super::AiError;

/// The Messages request for an OpenAI-compatible chat request, for
/// `model` (the provider's name), with `default_max_tokens` when the client
/// set none.
pub fn to_messages(chat: &[u8], model: &str, default_max_tokens: u64) -> Result<Vec<u8>, AiError> {
    let chat: Map<String, Value> =
        serde_json::from_slice(chat).map_err(|e| AiError::NotJson(e.to_string()))?;
    let messages = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or(AiError::Field("messages"))?;
    let mut system = Vec::new();
    let mut turns = Vec::new();
    for m in messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(AiError::Field("messages"))?;
        let text = text_of(m.get("content").ok_or(AiError::Field("messages"))?)?;
        match role {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => turns.push(json!({ "role": role, "content": text })),
            _ => return Err(AiError::Field("messages")),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let max_tokens = chat
        .get("max_tokens")
        .or_else(|| chat.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(turns));
    for name in ["temperature", "top_p", "stream"] {
        if let Some(v) = chat.get(name).filter(|v| !v.is_null()) {
            out.insert(name.into(), v.clone());
        }
    }
    match chat.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    Ok(serde_json::to_vec(&Value::Object(out)).expect("a value serialises"))
}

/// A message's text: a string, or the text of its text parts.
fn text_of(content: &Value) -> Result<String, AiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(AiError::Field("messages")),
                _ => Err(AiError::Field("messages")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.concat()),
        _ => Err(AiError::Field("messages")),
    }
}

/// Anthropic's stop reason as OpenAI's finish reason.
fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        Some("end_turn") | Some("stop_sequence") => json!("stop"),
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
    })
}

/// A whole Messages response as a chat completion, and its usage.
pub fn from_message(message: &[u8], created: u64) -> Result<(Vec<u8>, Usage), AiError> {
    let m: Value = serde_json::from_slice(message).map_err(|e| AiError::NotJson(e.to_string()))?;
    let content = m
        .get("content")
        .and_then(Value::as_array)
        .ok_or(AiError::Field("content"))?;
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let usage = Usage {
        prompt: m["usage"]["input_tokens"].as_u64().unwrap_or(0),
        completion: m["usage"]["output_tokens"].as_u64().unwrap_or(0),
    };
    let out = json!({
        "id": m.get("id").cloned().unwrap_or(json!("")),
        "object": "chat.completion",
        "created": created,
        "model": m.get("model").cloned().unwrap_or(json!("")),
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": finish_reason(m.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage_json(usage),
    });
    Ok((serde_json::to_vec(&out).expect("a value serialises"), usage))
}

/// Turns a Messages event stream into chat completion chunks, event by
/// event.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    /// The client asked for the usage chunk.
    include_usage: bool,
    pub usage: Usage,
    done: bool,
}

impl StreamTranslator {
    pub fn new(created: u64, include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            created,
            include_usage,
            ..Default::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> Vec<u8> {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        sse_data(&chunk)
    }

    /// The chat chunks (each a whole SSE event) for one Messages event.
    pub fn event(&mut self, name: Option<&str>, data: &str) -> Result<Vec<Vec<u8>>, AiError> {
        if self.done {
            return Ok(Vec::new());
        }
        let v: Value = match name {
            Some("ping") => return Ok(Vec::new()),
            _ => serde_json::from_str(data).map_err(|e| AiError::NotJson(e.to_string()))?,
        };
        let kind = name.or_else(|| v.get("type").and_then(Value::as_str));
        Ok(match kind {
            Some("message_start") => {
                let m = &v["message"];
                self.id = m["id"].as_str().unwrap_or("").to_string();
                self.model = m["model"].as_str().unwrap_or("").to_string();
                self.usage.prompt = m["usage"]["input_tokens"].as_u64().unwrap_or(0);
                vec![self.chunk(json!({ "role": "assistant", "content": "" }), Value::Null)]
            }
            Some("content_block_delta") => match v["delta"]["type"].as_str() {
                Some("text_delta") => {
                    let text = v["delta"]["text"].as_str().unwrap_or("");
                    vec![self.chunk(json!({ "content": text }), Value::Null)]
                }
                _ => Vec::new(),
            },
            Some("message_delta") => {
                if let Some(out) = v["usage"]["output_tokens"].as_u64() {
                    self.usage.completion = out;
                }
                let stop = v["delta"]["stop_reason"].as_str();
                vec![self.chunk(json!({}), finish_reason(stop.or(Some("end_turn"))))]
            }
            Some("message_stop") => {
                self.done = true;
                let mut out = Vec::new();
                if self.include_usage {
                    out.push(sse_data(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_json(self.usage),
                    })));
                }
                out.push(b"data: [DONE]\n\n".to_vec());
                out
            }
            Some("error") => {
                self.done = true;
                vec![sse_data(
                    &json!({ "error": v.get("error").cloned().unwrap_or(v.clone()) }),
                )]
            }
            _ => Vec::new(),
        })
    }
}

fn sse_data(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(v).expect("a value serialises"));
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::sse::Framer;

    #[test]
    fn a_chat_request_becomes_a_messages_request() {
        let chat = br#"{"model":"claude","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]},
            {"role":"assistant","content":"Hello"},
            {"role":"user","content":"Bye"}],
            "temperature":0,"stop":"END","stream":true,"user":"u1"}"#;
        let out: Value =
            serde_json::from_slice(&to_messages(chat, "claude-3-5-haiku", 1024).unwrap()).unwrap();
        assert_eq!(out["model"], "claude-3-5-haiku");
        assert_eq!(out["max_tokens"], 1024);
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(
            out["messages"][0],
            json!({"role":"user","content":"Hi there"})
        );
        assert_eq!(out["messages"].as_array().unwrap().len(), 3);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["stream"], true);
        assert_eq!(out["temperature"], 0);
        assert!(out.get("user").is_none());
        // What it cannot carry is refused, not dropped.
        let tool = br#"{"model":"c","messages":[{"role":"tool","content":"x"}]}"#;
        assert_eq!(to_messages(tool, "c", 1), Err(AiError::Field("messages")));
        let image = br#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(to_messages(image, "c", 1), Err(AiError::Field("messages")));
    }

    #[test]
    fn a_messages_response_becomes_a_chat_completion() {
        let m = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku",
            "content":[{"type":"text","text":"Hello!"}],"stop_reason":"max_tokens",
            "usage":{"input_tokens":12,"output_tokens":5}}"#;
        let (out, usage) = from_message(m, 1700000000).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["choices"][0]["message"]["content"], "Hello!");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(out["usage"]["total_tokens"], 17);
        assert_eq!(
            usage,
            Usage {
                prompt: 12,
                completion: 5
            }
        );
    }

    #[test]
    fn a_messages_stream_becomes_chat_chunks() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        for include_usage in [false, true] {
            let mut t = StreamTranslator::new(1, include_usage);
            let mut framer = Framer::default();
            let mut out = Vec::new();
            for e in framer.push(stream.as_bytes()).unwrap() {
                out.extend(t.event(e.name.as_deref(), &e.data).unwrap());
            }
            let chat: Vec<u8> = out.concat();
            let events = Framer::default().push(&chat).unwrap();
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(*data.last().unwrap(), "[DONE]");
            let text: String = data
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert_eq!(text, "Hello");
            assert!(data
                .iter()
                .any(|d| d.contains("\"finish_reason\":\"stop\"")));
            assert_eq!(
                t.usage,
                Usage {
                    prompt: 7,
                    completion: 2
                }
            );
            let usage_chunk = data.iter().any(|d| crate::ai::sse::is_usage_only(d));
            assert_eq!(usage_chunk, include_usage);
        }
    }
}
