//! The completion cache of AI routes (`cache_ttl` on a model): a chat
//! completion stored under its request's canonical form
//! (`crate::ai::openai::canonical`: member order and spacing do not
//! matter, `stream` and `user` do not count), in the worker's HTTP cache
//! shard like any response (offered to the other workers, evicted, purged
//! by `purge all` or by the tag `ai-model-<model>`, kept `cache_ttl`).
//! Only requests with `temperature` 0 take part unless the model says
//! otherwise: another answer at a higher temperature is as right as the
//! stored one, but not the same.
//!
//! A stored completion is always a whole one; a streamed answer is
//! assembled from its chunks to be stored, and a streamed request answered
//! from the cache gets the completion replayed as chunks.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sha2::Digest;

use crate::ai::openai::{self, Fields};
use crate::ai::sse::Usage;
use crate::cache::entry::{ExchangeTimes, Stored};
use crate::cache::policy::CachePolicy;
use crate::cache::shard::Lookup;
use crate::config::ai::Model;
use crate::worker::context::WorkerCtx;

/// The cache key of a request to `model` on `route`, if it may be cached.
pub(super) fn key(route: &str, model: &Model, fields: &Fields, body: &[u8]) -> Option<Vec<u8>> {
    let cache = model.cache?;
    if !cache.any_temperature && fields.temperature != Some(0.0) {
        return None;
    }
    let canonical = openai::canonical(body).ok()?;
    let digest = crate::cluster::hex(&sha2::Sha256::digest(&canonical)[..16]);
    Some(format!("ai://{route}/{}/{digest}", model.name).into_bytes())
}

/// A stored completion still fresh.
pub(super) fn lookup(ctx: &WorkerCtx, key: &[u8]) -> Option<Arc<Stored>> {
    let cache = ctx.cache.as_ref()?;
    let now = Instant::now();
    match cache.shard.borrow_mut().lookup(key, &[], now) {
        Lookup::Found(stored) if stored.ttl(now) > 0 => Some(stored),
        _ => None,
    }
}

/// Stores a whole chat completion (a 200's JSON body) for `ttl`.
pub(super) fn store(ctx: &WorkerCtx, key: &[u8], model: &Model, completion: Vec<u8>) {
    let (Some(cache), Some(settings)) = (ctx.cache.as_ref(), model.cache) else {
        return;
    };
    if completion.len() as u64 > cache.max_object {
        return;
    }
    let mut fields = vec![
        ("Content-Type".to_string(), b"application/json".to_vec()),
        (
            "Cache-Control".to_string(),
            format!("max-age={}", settings.ttl.as_secs()).into_bytes(),
        ),
    ];
    // Tagged with its model, for a purge by tag.
    if let Some(tag_header) = ctx.config.cache.tag_headers.first() {
        fields.push((
            tag_header.clone(),
            format!("ai-model-{}", model.name).into_bytes(),
        ));
    }
    let stored = Stored::build(
        200,
        "OK",
        fields,
        completion.into(),
        ExchangeTimes::now(SystemTime::now()),
        &CachePolicy::default(),
        None,
    );
    super::super::cache::insert(
        ctx,
        key,
        b"GET / HTTP/1.1\r\nHost: ai\r\n\r\n",
        stored,
        None,
    );
}

/// A stored completion as the chunks of a stream: the role, the content,
/// the finish, the usage when asked, `[DONE]`.
pub(super) fn replay(completion: &[u8], include_usage: bool) -> Vec<Vec<u8>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(completion) else {
        return vec![b"data: [DONE]\n\n".to_vec()];
    };
    let choice = &v["choices"][0];
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({"id": v["id"], "object": "chat.completion.chunk", "created": v["created"],
            "model": v["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n").into_bytes()
    };
    let mut out = vec![
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": choice["message"]["content"]}),
            serde_json::Value::Null,
        ),
        chunk(serde_json::json!({}), choice["finish_reason"].clone()),
    ];
    if include_usage {
        let u = serde_json::json!({"id": v["id"], "object": "chat.completion.chunk", "created": v["created"],
            "model": v["model"], "choices": [], "usage": v["usage"]});
        out.push(format!("data: {u}\n\n").into_bytes());
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

/// A streamed answer assembled into the whole completion it stands for.
#[derive(Default)]
pub(super) struct Assembler {
    id: String,
    model: String,
    created: u64,
    content: String,
    finish: Option<String>,
    /// A chunk was not understood: nothing is stored.
    spoiled: bool,
}

impl Assembler {
    /// One chunk's data as relayed (OpenAI-compatible).
    pub fn push(&mut self, data: &str) {
        if data == "[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            self.spoiled = true;
            return;
        };
        if self.id.is_empty() {
            self.id = v["id"].as_str().unwrap_or("").to_string();
            self.model = v["model"].as_str().unwrap_or("").to_string();
            self.created = v["created"].as_u64().unwrap_or(0);
        }
        let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
            return;
        };
        if choice["index"].as_u64().unwrap_or(0) != 0 {
            self.spoiled = true;
        }
        if let Some(text) = choice["delta"]["content"].as_str() {
            self.content.push_str(text);
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.finish = Some(finish.to_string());
        }
    }

    /// The completion, if the stream finished and was understood.
    pub fn completion(&self, usage: Option<Usage>) -> Option<Vec<u8>> {
        let finish = self.finish.as_ref().filter(|_| !self.spoiled)?;
        let usage = usage.unwrap_or_default();
        let v = serde_json::json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion,
                "total_tokens": usage.prompt + usage.completion},
        });
        serde_json::to_vec(&v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_assembled_replays_as_the_same_text() {
        let mut a = Assembler::default();
        for data in [
            r#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ] {
            a.push(data);
        }
        let usage = Usage {
            prompt: 3,
            completion: 2,
        };
        let completion = a.completion(Some(usage)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&completion).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let events = replay(&completion, true);
        let text: String = events
            .iter()
            .filter_map(|e| std::str::from_utf8(e).ok()?.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "Hello");
        assert!(events.iter().any(|e| crate::ai::sse::is_usage_only(
            std::str::from_utf8(e)
                .unwrap()
                .trim_start_matches("data: ")
                .trim()
        )));
        // Unfinished: nothing to store.
        let mut b = Assembler::default();
        b.push(r#"{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]}"#);
        assert!(b.completion(None).is_none());
    }
}
