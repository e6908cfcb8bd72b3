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
//!
//! Routes do not use them yet (the `[routes.ai]` route, its providers,
//! fallback, token limits and the completion cache are still to come).

pub mod anthropic;
pub mod openai;
pub mod sse;

/// Why a body could not be read or translated: answered as 400 (from a
/// client) or 502 (from a provider).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("`{0}` is missing or of the wrong type")]
    Field(&'static str),
}
