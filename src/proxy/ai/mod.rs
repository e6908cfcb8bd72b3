//! AI routes on the request path (`[routes.ai]`): an OpenAI-compatible
//! request, read whole, is sent to the requested model's targets in order
//! until one answers, and its answer relayed (translated from a provider
//! of another API), a streamed one event by event.
//!
//! The provider request is the gateway's own: its head names the
//! provider's path, host and key, and nothing of the client's head goes
//! with it (so a client's key never reaches a provider); the body is the
//! client's with the provider's model name spliced in (and, on a stream,
//! usage asked for, `crate::ai::openai`). A target is passed over for the
//! next on a connect failure, no response head within
//! `first_byte_timeout`, a 429 or a 5xx (a 429 or 503 with `Retry-After`
//! benches it for that long); never once a byte of its response reached
//! the client.
//!
//! - [`provider`]: the provider request, its key, its response head and a
//!   whole body
//! - [`relay`]: a streamed answer relayed event by event
//! - [`budget`]: tokens and requests per minute, and the usage counters
//! - [`cache`]: the completion cache

mod budget;
mod cache;
mod provider;
mod relay;

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};

use super::{Answered, Client, Next};
use crate::ai::{anthropic, openai, sse};
use crate::config::ai::ProviderKind;
use crate::http::Method;
use crate::worker::context::WorkerCtx;

use budget::{record, Budgets, Refusal, Relayed};
use provider::{first_bytes, pick_key, provider_request, read_whole};
use relay::relay_stream;

/// The OpenAI-compatible operations an AI route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// The operation a request's method and path ask for.
    pub fn of(method: Method, path: &str) -> Option<Endpoint> {
        let post = method == Method::Post;
        if post && path.ends_with("/chat/completions") {
            Some(Endpoint::Chat)
        } else if post && path.ends_with("/completions") {
            Some(Endpoint::Completions)
        } else if post && path.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if method == Method::Get && path.ends_with("/models") {
            Some(Endpoint::Models)
        } else {
            None
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }
}

/// An AI request, planned: what `run` needs once the phases are done.
pub(super) struct AiCall {
    pub request: Answered,
    pub route: usize,
    pub endpoint: Endpoint,
    /// The request body, whole.
    pub body: Bytes,
    /// The consumer whose key the request carried, if the route has any.
    pub consumer: Option<String>,
}

/// Largest provider response read whole (a non-streamed one).
const MAX_RESPONSE: usize = 16 << 20;

/// Answers an AI request.
pub(super) async fn run(
    ctx: &Rc<WorkerCtx>,
    client: &mut Client,
    call: Box<AiCall>,
    out: Vec<u8>,
) -> Next {
    let keep = client.finish_unforwarded(&call.request);
    let config = ctx.config.clone();
    let Some(ai) = config.routes[call.route].ai.clone() else {
        return error(ctx, client, out, 500, "not an AI route", keep).await;
    };
    if call.endpoint == Endpoint::Models {
        let data: Vec<serde_json::Value> = ai
            .models
            .iter()
            .map(|m| serde_json::json!({"id": m.name, "object": "model", "owned_by": "ringgate"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        return json(ctx, client, out, 200, body.as_bytes(), keep).await;
    }
    let started = Instant::now();
    let fields = match openai::read(&call.body) {
        Ok(f) => f,
        Err(e) => return error(ctx, client, out, 400, &e.to_string(), keep).await,
    };
    let Some(model) = ai.model(&fields.model) else {
        let message = format!("no model named `{}` on this route", fields.model);
        return error(ctx, client, out, 404, &message, keep).await;
    };
    let route_name = config.routes[call.route].name.clone();
    let consumer = call.consumer.as_deref().unwrap_or("-");
    // The completion cache: a stored answer, or the one fetch of it that
    // identical requests in flight (on every worker) wait for.
    let cache_key = cache::key(&route_name, model, &fields, &call.body);
    let mut coalescing = super::Coalescing::default();
    if let (Some(key), Some(cache)) = (&cache_key, &ctx.cache) {
        let wait = ai.first_byte_timeout + ai.idle_timeout;
        let hit = match cache::lookup(ctx, key) {
            Some(hit) => Some(hit),
            None => match cache.coalescer.join(key) {
                crate::cache::coalesce::Join::Leader(guard) => {
                    coalescing.leader = Some(guard);
                    match super::coalescing::claim_key(ctx, key) {
                        super::coalescing::CrossCore::Fetch(claim) => {
                            // Won across workers: an offer queued for it was
                            // just applied (`claim_key`), so look once more.
                            let offered = claim.as_ref().and_then(|_| cache::lookup(ctx, key));
                            coalescing.claim = claim;
                            offered
                        }
                        super::coalescing::CrossCore::Wait => {
                            super::coalescing::wait_for_key(ctx, key, wait).await;
                            cache::lookup(ctx, key)
                        }
                    }
                }
                crate::cache::coalesce::Join::Follower(flight) => {
                    let _ = monoio::time::timeout(wait, flight.finished()).await;
                    cache::lookup(ctx, key)
                }
            },
        };
        if let Some(hit) = hit {
            let key = (
                consumer.to_string(),
                model.name.clone(),
                "cache".to_string(),
            );
            let relayed = Relayed {
                usage: None,
                first_byte: Some(Instant::now()),
                ended: Instant::now(),
                broken: false,
            };
            record(ctx, client, key, started, &relayed);
            return cached(ctx, client, out, &hit.body, &fields, keep).await;
        }
    }
    let mut budgets = Budgets::of(&ai, &route_name, consumer, model);
    // Tokens are not known before the answer: the prompt's bytes over four
    // and the most the answer may use stand in, corrected after.
    let estimate = (call.body.len() as u64).div_ceil(4) + fields.max_tokens.unwrap_or(0);
    match budgets.take(ctx, estimate).await {
        Ok(()) => {}
        Err(Refusal::Over(wait)) => {
            let message = "over this consumer's or model's tokens or requests per minute";
            return limited(ctx, client, out, wait, message, keep).await;
        }
        Err(Refusal::Unavailable) => {
            let message = "the cluster's limits cannot be checked now";
            return error(ctx, client, out, 503, message, keep).await;
        }
    }
    // What the client is told if no target answers.
    let mut failed: (u16, String) = (502, "no provider could be reached".into());
    for target in &model.targets {
        let provider = &ai.providers[target.provider];
        // Anthropic's API is a chat API only.
        if provider.kind == ProviderKind::Anthropic && call.endpoint != Endpoint::Chat {
            continue;
        }
        let bench_key = format!("{route_name}/{}/{}", provider.name, target.model);
        if ctx
            .ai_bench
            .borrow()
            .get(&bench_key)
            .is_some_and(|until| *until > Instant::now())
        {
            continue;
        }
        let server = ctx.upstreams.borrow_mut().pick_healthy(
            provider.upstream,
            crate::upstream::balancer::RequestKey { hash: None },
            Instant::now(),
        );
        let Some(server) = server else {
            failed = (502, format!("{}: no healthy server", provider.name));
            continue;
        };
        // The key this attempt uses counts as in flight until it ends.
        let (key_index, _in_flight) = pick_key(ctx, &route_name, provider);
        let host = ctx.upstreams.borrow().host_of(server).to_string();
        let request = provider_request(&ai, provider, target, &call, &fields, key_index, &host);
        let request = match request {
            Ok(request) => request,
            Err(e) => return error(ctx, client, out, 400, &e.to_string(), keep).await,
        };
        let attempt = first_bytes(ctx, server, request, ai.first_byte_timeout).await;
        let (stream, mut buf, head) = match attempt {
            Ok(answered) => answered,
            Err(reason) => {
                tracing::warn!(worker = ctx.index, provider = %provider.name, model = %target.model, %reason, "AI target failed; trying the next");
                failed = (502, format!("{}: {reason}", provider.name));
                continue;
            }
        };
        if head.status == 429 || head.status >= 500 {
            if let Some(wait) = head.retry_after {
                bench(ctx, bench_key, Instant::now() + wait);
            }
            tracing::warn!(worker = ctx.index, provider = %provider.name, model = %target.model, status = head.status, "AI target refused; trying the next");
            failed = match head.status {
                429 => (429, format!("{} is over its limits", provider.name)),
                s => (502, format!("{} answered {s}", provider.name)),
            };
            continue;
        }
        buf.advance(head.head_len);
        let key = (
            consumer.to_string(),
            model.name.clone(),
            provider.name.clone(),
        );
        if fields.stream && head.status == 200 {
            let mut assembler = cache_key.as_ref().map(|_| cache::Assembler::default());
            let (next, relayed) = relay_stream(
                ctx,
                client,
                out,
                keep,
                provider,
                &fields,
                &ai,
                stream,
                buf,
                &head,
                assembler.as_mut(),
            )
            .await;
            budgets.settle(ctx, estimate, relayed.usage);
            if let (Some(key), Some(assembled), false) = (&cache_key, &assembler, relayed.broken) {
                if let Some(completion) = assembled.completion(relayed.usage) {
                    cache::store(ctx, key, model, completion);
                }
            }
            record(ctx, client, key, started, &relayed);
            drop(coalescing);
            return next;
        }
        let body = match read_whole(ctx, stream, buf, &head, &ai).await {
            Ok(body) => body,
            Err(reason) => {
                // Nothing reached the client yet: the next target may answer.
                failed = (502, format!("{}: {reason}", provider.name));
                continue;
            }
        };
        let (body, usage) = match (provider.kind, head.status) {
            (ProviderKind::Anthropic, 200) => match anthropic::from_message(&body, unix_now()) {
                Ok((body, usage)) => (body, Some(usage)),
                Err(e) => {
                    failed = (502, format!("{}: {e}", provider.name));
                    continue;
                }
            },
            _ => {
                let usage = std::str::from_utf8(&body).ok().and_then(sse::usage);
                (body, usage)
            }
        };
        tracing::debug!(worker = ctx.index, consumer, model = %model.name, provider = %provider.name, status = head.status, "AI request answered");
        budgets.settle(ctx, estimate, usage);
        if let (Some(key), 200) = (&cache_key, head.status) {
            cache::store(ctx, key, model, body.clone());
        }
        drop(coalescing);
        let relayed = Relayed {
            usage,
            first_byte: Some(Instant::now()),
            ended: Instant::now(),
            broken: head.status >= 400,
        };
        record(ctx, client, key, started, &relayed);
        return json(ctx, client, out, head.status, &body, keep).await;
    }
    budgets.settle(ctx, estimate, Some(sse::Usage::default()));
    let key = (consumer.to_string(), model.name.clone(), "-".to_string());
    let relayed = Relayed {
        usage: None,
        first_byte: None,
        ended: Instant::now(),
        broken: true,
    };
    record(ctx, client, key, started, &relayed);
    let (status, message) = failed;
    error(ctx, client, out, status, &message, keep).await
}

/// A 429 of the gateway's, with `Retry-After`.
async fn limited(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    wait: Duration,
    message: &str,
    keep: bool,
) -> Next {
    out.clear();
    let secs = wait.as_micros().div_ceil(1_000_000).max(1);
    out.extend_from_slice(
        format!("HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: {secs}\r\n").as_bytes(),
    );
    let body =
        serde_json::json!({"error": {"message": message, "type": "rate_limit_error"}}).to_string();
    client.reply_whole(ctx, out, body.as_bytes(), keep).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stored completion: whole, or replayed as a stream.
async fn cached(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    completion: &[u8],
    fields: &openai::Fields,
    keep: bool,
) -> Next {
    out.clear();
    if !fields.stream {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Status: ringgate; hit\r\n",
        );
        return client.reply_whole(ctx, out, completion, keep).await;
    }
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nCache-Status: ringgate; hit\r\n",
    );
    client.start_reply(
        ctx,
        out,
        super::reply::BodyLength::Unknown { codings: None },
        keep,
    );
    for event in cache::replay(completion, fields.include_usage) {
        if client.send_body(ctx, &event).await.is_err() {
            return Next::Close;
        }
    }
    client.end_reply(ctx).await
}

/// A JSON answer of the gateway's.
async fn json(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    status: u16,
    body: &[u8],
    keep: bool,
) -> Next {
    out.clear();
    let reason = super::head::reason(status);
    out.extend_from_slice(
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n").as_bytes(),
    );
    client.reply_whole(ctx, out, body, keep).await
}

/// An error in the OpenAI API's shape.
async fn error(
    ctx: &WorkerCtx,
    client: &mut Client,
    out: Vec<u8>,
    status: u16,
    message: &str,
    keep: bool,
) -> Next {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind}}).to_string();
    json(ctx, client, out, status, body.as_bytes(), keep).await
}

/// Passes a target over until `until`, on this worker at once and on the
/// others through the bus (a provider's `Retry-After` holds for the node).
fn bench(ctx: &WorkerCtx, target: String, until: Instant) {
    let message = crate::bus::Message::AiBench {
        target: target.as_str().into(),
        until,
    };
    ctx.ai_bench.borrow_mut().insert(target, until);
    if let Err(e) = ctx.bus.broadcast(&message, Some(ctx.index)) {
        tracing::warn!(worker = ctx.index, error = %e, "could not tell every worker about a benched AI target");
    }
}
