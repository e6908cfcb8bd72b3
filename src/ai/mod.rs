//! The AI gateway's protocol pieces: what it reads of, and writes into, the
//! requests and responses of LLM provider APIs. Each owns one format:
//!
//! - [`openai`]: the OpenAI-compatible request body: the few fields the
//!   gateway needs (`model`, `stream`, `max_tokens`, usage on streams) read
//!   and rewritten in place, the rest passed through byte for byte; the
//!   canonical form of a request, for the completion cache's key
//! - [`sse`]: Server-Sent Events split into events as they arrive, and the
//!   usage a stream reports
//! - [`anthropic`]: Anthropic's Messages API, translated from and to the
//!   OpenAI-compatible one, streaming included
//! - [`keys`]: which provider key a request uses (node-wide least in
//!   flight)
//!
//! `crate::proxy::ai` runs AI routes with them.

pub mod anthropic;
pub mod keys;
pub mod openai;
pub mod sse;

/// What one worker counted for one consumer, model and provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    /// Requests no target answered, or whose stream broke.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Summed time from the request to the first byte of the answer sent
    /// to the client (time to first token, on streams).
    pub first_byte_us: u64,
    /// Summed time from that first byte to the end of the answer.
    pub generation_us: u64,
}

/// Per worker: counters by (consumer, model, provider).
pub type Usage = std::collections::BTreeMap<(String, String, String), Counters>;

/// Why a body could not be read or translated: answered as 400 (from a
/// client) or 502 (from a provider).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("`{0}` is missing or of the wrong type")]
    Field(&'static str),
}
