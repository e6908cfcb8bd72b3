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

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};

use super::ai_cache;
use super::io::{Read, Stream};
use super::{Answered, Client, Next};
use crate::ai::{anthropic, openai, sse};
use crate::config::ai::{AiRoute, Budget, Model, Provider, ProviderKind, Target};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, Method};
use crate::route::rate_limit::{Key, Outcome, RateLimit};
use crate::worker::context::WorkerCtx;

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
    let cache_key = ai_cache::key(&route_name, model, &fields, &call.body);
    let mut coalescing = super::Coalescing::default();
    if let (Some(key), Some(cache)) = (&cache_key, &ctx.cache) {
        let wait = ai.first_byte_timeout + ai.idle_timeout;
        let hit = match ai_cache::lookup(ctx, key) {
            Some(hit) => Some(hit),
            None => match cache.coalescer.join(key) {
                crate::cache::coalesce::Join::Leader(guard) => {
                    coalescing.leader = Some(guard);
                    match super::coalescing::claim_key(ctx, key) {
                        super::coalescing::CrossCore::Fetch(claim) => {
                            coalescing.claim = claim;
                            None
                        }
                        super::coalescing::CrossCore::Wait => {
                            super::coalescing::wait_for_key(ctx, key, wait).await;
                            ai_cache::lookup(ctx, key)
                        }
                    }
                }
                crate::cache::coalesce::Join::Follower(flight) => {
                    let _ = monoio::time::timeout(wait, flight.finished()).await;
                    ai_cache::lookup(ctx, key)
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
    let budgets = Budgets::of(&ai, &route_name, consumer, model);
    // Tokens are not known before the answer: the prompt's bytes over four
    // and the most the answer may use stand in, corrected after.
    let estimate = (call.body.len() as u64).div_ceil(4) + fields.max_tokens.unwrap_or(0);
    if let Err(wait) = budgets.take(ctx, estimate) {
        let message = "over this consumer's or model's tokens or requests per minute";
        return limited(ctx, client, out, wait, message, keep).await;
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
                ctx.ai_bench
                    .borrow_mut()
                    .insert(bench_key, Instant::now() + wait);
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
            let mut assembler = cache_key.as_ref().map(|_| ai_cache::Assembler::default());
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
                    ai_cache::store(ctx, key, model, completion);
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
            ai_cache::store(ctx, key, model, body.clone());
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

/// How an answer went, for the usage counters.
struct Relayed {
    usage: Option<sse::Usage>,
    /// When its first byte went to the client.
    first_byte: Option<Instant>,
    ended: Instant,
    /// No target answered, or the stream broke.
    broken: bool,
}

fn record(
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
struct Budgets<'a> {
    /// (name in the table, key, limit, tokens or requests)
    limits: Vec<(String, &'a [u8], &'a RateLimit, bool)>,
}

impl<'a> Budgets<'a> {
    fn of(ai: &'a AiRoute, route: &str, consumer: &'a str, model: &'a Model) -> Budgets<'a> {
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
    fn take(&self, ctx: &WorkerCtx, estimate: u64) -> Result<(), Duration> {
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
    fn settle(&self, ctx: &WorkerCtx, estimate: u64, used: Option<sse::Usage>) {
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

/// The provider's request: its head (the gateway's own) and body.
fn provider_request(
    ai: &AiRoute,
    provider: &Provider,
    target: &Target,
    call: &AiCall,
    fields: &openai::Fields,
    key_index: Option<usize>,
    host: &str,
) -> Result<Vec<u8>, crate::ai::AiError> {
    let (path, body) = match provider.kind {
        ProviderKind::OpenAi => (
            call.endpoint.path(),
            openai::for_provider(&call.body, fields, &target.model),
        ),
        ProviderKind::Anthropic => (
            "/messages",
            anthropic::to_messages(&call.body, &target.model, ai.default_max_tokens)?,
        ),
    };
    let mut head = format!(
        "POST {}{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        provider.base_path,
        body.len()
    );
    if let Some(key) = key_index.map(|i| provider.keys[i].0.as_str()) {
        match provider.kind {
            ProviderKind::OpenAi => head.push_str(&format!("Authorization: Bearer {key}\r\n")),
            ProviderKind::Anthropic => head.push_str(&format!(
                "x-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"
            )),
        }
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    Ok(request)
}

/// The provider key with the fewest requests in flight on this worker
/// (among equals, the next in turn, so idle keys share the load and each
/// key's own quota at the provider), and what counts it in flight.
fn pick_key<'a>(
    ctx: &'a WorkerCtx,
    route: &str,
    provider: &Provider,
) -> (Option<usize>, Option<KeyInFlight<'a>>) {
    let n = provider.keys.len();
    if n == 0 {
        return (None, None);
    }
    let name = format!("{route}/{}", provider.name);
    let mut keys = ctx.ai_keys.borrow_mut();
    let state = keys.entry(name.clone()).or_insert_with(|| (0, vec![0; n]));
    if state.1.len() != n {
        *state = (0, vec![0; n]);
    }
    let (turn, in_flight) = state;
    let least = *in_flight.iter().min().unwrap_or(&0);
    let chosen = (0..n)
        .map(|i| (*turn + i) % n)
        .find(|&i| in_flight[i] == least)
        .unwrap_or(0);
    *turn = (chosen + 1) % n;
    in_flight[chosen] += 1;
    let guard = KeyInFlight {
        ctx,
        name,
        index: chosen,
    };
    (Some(chosen), Some(guard))
}

/// One request in flight on a provider key; counted down when dropped.
struct KeyInFlight<'a> {
    ctx: &'a WorkerCtx,
    name: String,
    index: usize,
}

impl Drop for KeyInFlight<'_> {
    fn drop(&mut self) {
        if let Some((_, in_flight)) = self.ctx.ai_keys.borrow_mut().get_mut(&self.name) {
            if let Some(n) = in_flight.get_mut(self.index) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// What the gateway keeps of a provider's response head.
struct Head {
    status: u16,
    head_len: usize,
    framing: BodyFraming,
    retry_after: Option<Duration>,
    /// The connection may carry another request after this response.
    reusable: bool,
    /// The provider's server it came from.
    server: usize,
}

/// Connects to one of the provider's servers, sends the request and reads
/// the response head, all within `limit`.
async fn first_bytes(
    ctx: &WorkerCtx,
    server: usize,
    mut request: Vec<u8>,
    limit: Duration,
) -> Result<(Stream, BytesMut, Head), String> {
    let deadline = Instant::now() + limit;
    // A pooled connection first; one the server had closed (nothing came
    // back) is replaced by a fresh one, once.
    let mut pooled = ctx.upstreams.borrow_mut().take_connection(server);
    loop {
        let reused = pooled.is_some();
        let stream = match pooled.take() {
            Some(stream) => stream,
            None => crate::upstream::h1::connect(ctx, server, limit)
                .await
                .map_err(|e| e.to_string())?,
        };
        // Kept for a second try only when this one may fail that way.
        let sent = match reused {
            true => request.clone(),
            false => std::mem::take(&mut request),
        };
        match exchange_head(ctx, stream, sent, deadline).await {
            Ok((stream, buf, head)) => return Ok((stream, buf, Head { server, ..head })),
            Err((reason, nothing_back)) if reused && nothing_back => {
                tracing::debug!(worker = ctx.index, %reason, "pooled provider connection was closed; a fresh one");
            }
            Err((reason, _)) => return Err(reason),
        }
    }
}

/// Sends the request and reads the response head; the error says whether
/// no byte came back (a pooled connection the server had closed).
async fn exchange_head(
    ctx: &WorkerCtx,
    mut stream: Stream,
    request: Vec<u8>,
    deadline: Instant,
) -> Result<(Stream, BytesMut, Head), (String, bool)> {
    let left = deadline.saturating_duration_since(Instant::now());
    if stream.write_all(request, left).await.is_err() {
        return Err(("the request could not be sent".into(), true));
    }
    let mut buf = BytesMut::with_capacity(ctx.per_core.upstream_buffer_size);
    loop {
        {
            let mut slots = header_slots::<128>();
            match parse_response(
                &buf,
                &mut slots,
                ctx.config.limits.max_response_head,
                Method::Post,
            ) {
                Ok(Some(r)) if r.is_interim() => {}
                Ok(Some(r)) => {
                    let retry_after = r
                        .headers
                        .iter()
                        .find(|h| crate::http::headers::name_is(h.name, "retry-after"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let head = Head {
                        status: r.status,
                        head_len: r.head_len,
                        framing: r.framing,
                        retry_after,
                        reusable: r.reusable,
                        server: 0,
                    };
                    return Ok((stream, buf, head));
                }
                Ok(None) => {}
                Err(e) => return Err((format!("bad response: {e}"), false)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match stream
            .read_some(&mut buf, ctx.per_core.upstream_buffer_size, left)
            .await
        {
            Read::Data(_) => {}
            Read::TimedOut => return Err(("no response in time".into(), false)),
            Read::Eof | Read::Failed(_) => {
                return Err(("closed before a response".into(), buf.is_empty()))
            }
        }
    }
}

/// The body bytes of a response in `buf`, de-chunked into `out`; true
/// when the body is complete.
fn take_body(
    buf: &mut BytesMut,
    framing: BodyFraming,
    decoder: &mut ChunkedDecoder,
    got: &mut u64,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    match framing {
        BodyFraming::None => Ok(true),
        BodyFraming::Length(n) => {
            let take = (n - *got).min(buf.len() as u64) as usize;
            out.extend_from_slice(&buf.split_to(take));
            *got += take as u64;
            Ok(*got == n)
        }
        BodyFraming::Chunked => {
            let used = decoder
                .decode(buf, out, Output::Raw)
                .map_err(|e| e.to_string())?;
            buf.advance(used);
            Ok(decoder.is_done())
        }
        BodyFraming::UntilClose => {
            out.extend_from_slice(buf);
            buf.clear();
            Ok(false)
        }
    }
}

/// A whole (non-streamed) response body.
async fn read_whole(
    ctx: &WorkerCtx,
    mut stream: Stream,
    mut buf: BytesMut,
    head: &Head,
    ai: &AiRoute,
) -> Result<Vec<u8>, String> {
    let framing = head.framing;
    let mut body = Vec::new();
    let mut decoder = ChunkedDecoder::new();
    let mut got = 0;
    loop {
        if take_body(&mut buf, framing, &mut decoder, &mut got, &mut body)? {
            // Read to its end with nothing after it: the next request may use it.
            if head.reusable && buf.is_empty() {
                ctx.upstreams.borrow_mut().give_back(head.server, stream);
            }
            return Ok(body);
        }
        if body.len() > MAX_RESPONSE {
            return Err("response too large".into());
        }
        match stream
            .read_some(&mut buf, ctx.per_core.upstream_buffer_size, ai.idle_timeout)
            .await
        {
            Read::Data(_) => {}
            Read::Eof if framing == BodyFraming::UntilClose => return Ok(body),
            Read::TimedOut => return Err("the response stalled".into()),
            Read::Eof | Read::Failed(_) => return Err("the response was cut short".into()),
        }
    }
}

/// Relays a streamed response event by event: each event is written to
/// the client as soon as it is whole (translated for Anthropic; the usage
/// chunk the gateway asked for dropped when the client did not ask).
#[allow(clippy::too_many_arguments)]
async fn relay_stream(
    ctx: &WorkerCtx,
    client: &mut Client,
    out: Vec<u8>,
    keep: bool,
    provider: &Provider,
    fields: &openai::Fields,
    ai: &AiRoute,
    mut stream: Stream,
    mut buf: BytesMut,
    head: &Head,
    assembler: Option<&mut ai_cache::Assembler>,
) -> (Next, Relayed) {
    let mut relayed = Relayed {
        usage: None,
        first_byte: None,
        ended: Instant::now(),
        broken: false,
    };
    let next = relay_events(
        ctx,
        client,
        out,
        keep,
        provider,
        fields,
        ai,
        &mut stream,
        &mut buf,
        head,
        &mut relayed,
        assembler,
    )
    .await;
    relayed.ended = Instant::now();
    if relayed.usage.is_none() && provider.kind == ProviderKind::Anthropic {
        relayed.broken = true;
    }
    (next, relayed)
}

#[allow(clippy::too_many_arguments)]
async fn relay_events(
    ctx: &WorkerCtx,
    client: &mut Client,
    mut out: Vec<u8>,
    keep: bool,
    provider: &Provider,
    fields: &openai::Fields,
    ai: &AiRoute,
    stream: &mut Stream,
    buf: &mut BytesMut,
    head: &Head,
    relayed: &mut Relayed,
    mut assembler: Option<&mut ai_cache::Assembler>,
) -> Next {
    out.clear();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n",
    );
    client.start_reply(
        ctx,
        out,
        super::reply::BodyLength::Unknown { codings: None },
        keep,
    );
    // The head goes out now: the client sees the stream begin.
    if client.send_body(ctx, b"").await.is_err() {
        return Next::Close;
    }
    let mut framer = sse::Framer::default();
    let mut translator = anthropic::StreamTranslator::new(unix_now(), fields.include_usage);
    let mut decoder = ChunkedDecoder::new();
    let mut got = 0;
    let mut plain = Vec::new();
    loop {
        plain.clear();
        let done = match take_body(buf, head.framing, &mut decoder, &mut got, &mut plain) {
            Ok(done) => done,
            Err(_) => {
                relayed.broken = true;
                return client.abandon_reply(ctx);
            }
        };
        let events = match framer.push(&plain) {
            Ok(events) => events,
            Err(_) => {
                relayed.broken = true;
                return client.abandon_reply(ctx);
            }
        };
        for event in events {
            let pieces = match provider.kind {
                ProviderKind::OpenAi => {
                    // Only an event naming usage is parsed: the others go
                    // on as they came.
                    if event.data.contains("\"usage\"") {
                        if let Some(usage) = sse::usage(&event.data) {
                            relayed.usage = Some(usage);
                        }
                        if !fields.include_usage && sse::is_usage_only(&event.data) {
                            continue;
                        }
                    }
                    vec![event.raw]
                }
                ProviderKind::Anthropic => {
                    let pieces = match translator.event(event.name.as_deref(), &event.data) {
                        Ok(pieces) => pieces,
                        Err(_) => continue,
                    };
                    if event.name.as_deref() == Some("message_stop") {
                        relayed.usage = Some(translator.usage);
                    }
                    pieces
                }
            };
            for piece in pieces {
                relayed.first_byte.get_or_insert_with(Instant::now);
                if let Some(assembler) = assembler.as_deref_mut() {
                    let data = std::str::from_utf8(&piece).unwrap_or("");
                    let data = data.trim().strip_prefix("data:").unwrap_or(data).trim();
                    assembler.push(data);
                }
                // The client left: dropping the provider's connection
                // cancels its work.
                if client.send_body(ctx, &piece).await.is_err() {
                    return Next::Close;
                }
            }
        }
        if done {
            return client.end_reply(ctx).await;
        }
        match stream
            .read_some(buf, ctx.per_core.upstream_buffer_size, ai.idle_timeout)
            .await
        {
            Read::Data(_) => {}
            Read::Eof if head.framing == BodyFraming::UntilClose => {
                return client.end_reply(ctx).await
            }
            // Cut short or stalled: only closing tells the client.
            _ => {
                relayed.broken = true;
                return client.abandon_reply(ctx);
            }
        }
    }
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
    for event in ai_cache::replay(completion, fields.include_usage) {
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
