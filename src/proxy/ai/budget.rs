//! Tokens and requests per minute of AI routes, on the node's rate-limit
//! table, and the usage counters and access-log fields of each answer.

use std::time::{Duration, Instant};

use super::super::Client;
use crate::ai::sse;
use crate::config::ai::{AiRoute, Budget, Model};
use crate::route::rate_limit::{Key, Outcome, RateLimit};
use crate::worker::context::WorkerCtx;

/// How an answer went, for the usage counters.
pub(super) struct Relayed {
    pub(super) usage: Option<sse::Usage>,
    /// When its first byte went to the client.
    pub(super) first_byte: Option<Instant>,
    pub(super) ended: Instant,
    /// No target answered, or the stream broke.
    pub(super) broken: bool,
}

pub(super) fn record(
    ctx: &WorkerCtx,
    client: &mut Client,
    key: (String, String, String),
    started: Instant,
    relayed: &Relayed,
) {
    let used = relayed.usage.unwrap_or_default();
    if let Some(line) = client.log.as_deref_mut().filter(|r| r.active) {
        line.ai = Some(Box::new(crate::access_log::AiLine {
            consumer: key.0.clone(),
            model: key.1.clone(),
            provider: key.2.clone(),
            prompt_tokens: used.prompt,
            completion_tokens: used.completion,
        }));
    }
    let mut usage = ctx.ai_usage.borrow_mut();
    let c = usage.entry(key).or_default();
    c.requests += 1;
    c.errors += u64::from(relayed.broken);
    if let Some(u) = relayed.usage {
        c.prompt_tokens += u.prompt;
        c.completion_tokens += u.completion;
    }
    if let Some(first) = relayed.first_byte {
        c.first_byte_us += first.saturating_duration_since(started).as_micros() as u64;
        c.generation_us += relayed.ended.saturating_duration_since(first).as_micros() as u64;
    }
}

/// The per-minute limits a request counts against: its consumer's and its
/// model's, requests and tokens, on the node's rate-limit table.
pub(super) struct Budgets<'a> {
    /// (name in the table, key, limit, tokens or requests)
    limits: Vec<(String, &'a [u8], &'a RateLimit, bool)>,
}

impl<'a> Budgets<'a> {
    pub(super) fn of(
        ai: &'a AiRoute,
        route: &str,
        consumer: &'a str,
        model: &'a Model,
    ) -> Budgets<'a> {
        let mut limits = Vec::new();
        let mut add = |scope: &str, key: &'a str, budget: &'a Budget| {
            if let Some(l) = &budget.requests {
                limits.push((
                    format!("{route}/ai-requests/{scope}"),
                    key.as_bytes(),
                    l,
                    false,
                ));
            }
            if let Some(l) = &budget.tokens {
                limits.push((
                    format!("{route}/ai-tokens/{scope}"),
                    key.as_bytes(),
                    l,
                    true,
                ));
            }
        };
        if let Some(c) = ai.consumers.iter().find(|c| c.name == consumer) {
            add("consumer", consumer, &c.limits);
        }
        add("model", &model.name, &model.limits);
        Budgets { limits }
    }

    /// Takes a request and `estimate` tokens from every limit, or none
    /// (the time until the refusing one admits again).
    pub(super) fn take(&self, ctx: &WorkerCtx, estimate: u64) -> Result<(), Duration> {
        let Some(table) = ctx.limiter.metered() else {
            return Ok(());
        };
        let now = Instant::now();
        for (i, (name, key, limit, tokens)) in self.limits.iter().enumerate() {
            let cost = if *tokens { estimate.max(1) } else { 1 };
            if let Outcome::Refused { retry_after } =
                table.acquire_cost(name, Key::Named(key), limit, cost, now)
            {
                // Give back what the others took.
                for (name, key, limit, tokens) in &self.limits[..i] {
                    let cost = if *tokens { estimate.max(1) } else { 1 };
                    table.adjust(name, Key::Named(key), limit, -(cost as i64), now);
                }
                return Err(retry_after);
            }
        }
        Ok(())
    }

    /// Corrects the token limits from the estimate to what was used
    /// (nothing known: the estimate stands).
    pub(super) fn settle(&self, ctx: &WorkerCtx, estimate: u64, used: Option<sse::Usage>) {
        let (Some(table), Some(used)) = (ctx.limiter.metered(), used) else {
            return;
        };
        let delta = (used.prompt + used.completion) as i64 - estimate.max(1) as i64;
        let now = Instant::now();
        for (name, key, limit, tokens) in &self.limits {
            if *tokens {
                table.adjust(name, Key::Named(key), limit, delta, now);
            }
        }
    }
}
