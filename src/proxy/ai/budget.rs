//! Tokens and requests per minute of AI routes, on the node's rate-limit
//! table, and the usage counters and access-log fields of each answer.

use std::time::{Duration, Instant};

use super::super::Client;
use crate::ai::sse;
use crate::config::ai::{AiRoute, Budget, Model};
use crate::route::rate_limit::{Fail, Key, Limiter, Metered, Outcome, RateLimit, Scope};
use crate::worker::context::WorkerCtx;
use crate::worker::stats::Counter;

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
/// model's, requests and tokens, on the node's rate-limit table or (with
/// `limit_scope = "cluster"`) the cluster's, whose answers come from Redis.
pub(super) struct Budgets<'a> {
    limits: Vec<Limit<'a>>,
}

/// One limit of a request, and who counted it.
struct Limit<'a> {
    /// Its name in the table.
    name: String,
    key: &'a [u8],
    limit: &'a RateLimit,
    /// Counted in tokens (else in requests).
    tokens: bool,
    counted: Counted,
}

/// Who took a limit's share of a request: whoever must be told of its
/// correction or its return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    Nobody,
    Node,
    Cluster,
}

/// Why a request was not admitted.
pub(super) enum Refusal {
    /// Over a limit: admitted again after this long.
    Over(Duration),
    /// A cluster limit with `limit_fail = "closed"` while Redis cannot answer.
    Unavailable,
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
            for (kind, limit, tokens) in [
                ("requests", &budget.requests, false),
                ("tokens", &budget.tokens, true),
            ] {
                if let Some(limit) = limit {
                    limits.push(Limit {
                        name: format!("{route}/ai-{kind}/{scope}"),
                        key: key.as_bytes(),
                        limit,
                        tokens,
                        counted: Counted::Nobody,
                    });
                }
            }
        };
        if let Some(c) = ai.consumers.iter().find(|c| c.name == consumer) {
            add("consumer", consumer, &c.limits);
        }
        add("model", &model.name, &model.limits);
        Budgets { limits }
    }

    fn cost(limit: &Limit<'_>, estimate: u64) -> u64 {
        if limit.tokens {
            estimate.max(1)
        } else {
            1
        }
    }

    /// Takes a request and `estimate` tokens from every limit, or none: the
    /// asks of cluster limits go to Redis together and are waited for, and
    /// a refusal by any limit gives back what the others took.
    pub(super) async fn take(&mut self, ctx: &WorkerCtx, estimate: u64) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut outcomes = Vec::with_capacity(self.limits.len());
        for l in &mut self.limits {
            let cost = Self::cost(l, estimate);
            let (outcome, counted) = match (l.limit.scope, &ctx.cluster) {
                (Scope::Cluster, Some(cluster)) => {
                    let table = &*cluster.limits;
                    let outcome = match l.tokens {
                        true => table.acquire_cost(&l.name, Key::Named(l.key), l.limit, cost, now),
                        false => table.acquire(&l.name, Key::Named(l.key), l.limit, now),
                    };
                    (outcome, Counted::Cluster)
                }
                _ => match ctx.limiter.metered() {
                    Some(table) => (
                        table.acquire_cost(&l.name, Key::Named(l.key), l.limit, cost, now),
                        Counted::Node,
                    ),
                    None => (Outcome::Admitted { remaining: 0 }, Counted::Nobody),
                },
            };
            l.counted = counted;
            outcomes.push(outcome);
        }
        let mut refused = None;
        for (l, outcome) in self.limits.iter_mut().zip(outcomes) {
            let outcome = match (outcome, &ctx.cluster) {
                (Outcome::Pending(asked), Some(cluster)) => {
                    monoio::time::timeout(cluster.timeout, asked.wait())
                        .await
                        .unwrap_or(Outcome::Unavailable)
                }
                (decided, _) => decided,
            };
            let outcome = match outcome {
                Outcome::Unavailable => {
                    ctx.stats.count(Counter::RateLimitUnavailable);
                    match l.limit.fail {
                        Fail::Local => match ctx.limiter.metered() {
                            Some(table) => {
                                l.counted = Counted::Node;
                                let cost = Self::cost(l, estimate);
                                table.acquire_cost(&l.name, Key::Named(l.key), l.limit, cost, now)
                            }
                            None => Outcome::Admitted { remaining: 0 },
                        },
                        Fail::Open => Outcome::Admitted { remaining: 0 },
                        Fail::Closed => {
                            refused.get_or_insert(Refusal::Unavailable);
                            Outcome::Unavailable
                        }
                    }
                }
                decided => decided,
            };
            match outcome {
                Outcome::Admitted { .. } => {}
                Outcome::TableFull => {
                    ctx.stats.count(Counter::RateLimitTableFull);
                    l.counted = Counted::Nobody;
                }
                Outcome::Refused { retry_after } => {
                    l.counted = Counted::Nobody;
                    if !matches!(refused, Some(Refusal::Unavailable)) {
                        refused = Some(Refusal::Over(retry_after));
                    }
                }
                Outcome::Unavailable | Outcome::Pending(_) => l.counted = Counted::Nobody,
            }
        }
        match refused {
            None => Ok(()),
            Some(refusal) => {
                // Give back what the others took.
                for l in &self.limits {
                    let cost = Self::cost(l, estimate);
                    self.charge(ctx, l, -(cost as i64));
                }
                Err(refusal)
            }
        }
    }

    /// Charges `delta` more units to the table that counted `l`.
    fn charge(&self, ctx: &WorkerCtx, l: &Limit<'_>, delta: i64) {
        let now = Instant::now();
        let key = Key::Named(l.key);
        match (l.counted, &ctx.cluster) {
            (Counted::Cluster, Some(cluster)) => {
                cluster.limits.adjust(&l.name, key, l.limit, delta, now)
            }
            (Counted::Node, _) => {
                if let Some(table) = ctx.limiter.metered() {
                    table.adjust(&l.name, key, l.limit, delta, now);
                }
            }
            _ => {}
        }
    }

    /// Corrects the token limits from the estimate to what was used
    /// (nothing known: the estimate stands).
    pub(super) fn settle(&self, ctx: &WorkerCtx, estimate: u64, used: Option<sse::Usage>) {
        let Some(used) = used else {
            return;
        };
        let delta = (used.prompt + used.completion) as i64 - estimate.max(1) as i64;
        if delta == 0 {
            return;
        }
        for l in self.limits.iter().filter(|l| l.tokens) {
            self.charge(ctx, l, delta);
        }
    }
}
