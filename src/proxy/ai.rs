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

use super::io::{Read, Stream};
use super::{Answered, Client, Next};
use crate::ai::{anthropic, openai, sse};
use crate::config::ai::{AiRoute, Provider, ProviderKind, Target};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, Method};
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
            .map(|(name, _)| serde_json::json!({"id": name, "object": "model", "owned_by": "ringgate"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        return json(ctx, client, out, 200, body.as_bytes(), keep).await;
    }
    let fields = match openai::read(&call.body) {
        Ok(f) => f,
        Err(e) => return error(ctx, client, out, 400, &e.to_string(), keep).await,
    };
    let Some(targets) = ai.model(&fields.model) else {
        let message = format!("no model named `{}` on this route", fields.model);
        return error(ctx, client, out, 404, &message, keep).await;
    };
    let route_name = &config.routes[call.route].name;
    // What the client is told if no target answers.
    let mut failed: (u16, String) = (502, "no provider could be reached".into());
    for target in targets {
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
        let (head, body) = match provider_request(ctx, &ai, provider, target, &call, &fields) {
            Ok(request) => request,
            Err(e) => return error(ctx, client, out, 400, &e.to_string(), keep).await,
        };
        let attempt = first_bytes(ctx, provider, head, body, ai.first_byte_timeout).await;
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
        tracing::debug!(worker = ctx.index, consumer = call.consumer.as_deref().unwrap_or("-"), model = %fields.model, provider = %provider.name, status = head.status, "AI request answered");
        let stream_out = fields.stream && head.status == 200;
        if stream_out {
            return relay_stream(
                ctx, client, out, keep, provider, &fields, &ai, stream, buf, &head,
            )
            .await;
        }
        let body = match read_whole(ctx, stream, buf, head.framing, &ai).await {
            Ok(body) => body,
            Err(reason) => {
                // Nothing reached the client yet: the next target may answer.
                failed = (502, format!("{}: {reason}", provider.name));
                continue;
            }
        };
        let body = match (provider.kind, head.status) {
            (ProviderKind::Anthropic, 200) => match anthropic::from_message(&body, unix_now()) {
                Ok((body, _usage)) => body,
                Err(e) => {
                    failed = (502, format!("{}: {e}", provider.name));
                    continue;
                }
            },
            _ => body,
        };
        return json(ctx, client, out, head.status, &body, keep).await;
    }
    let (status, message) = failed;
    error(ctx, client, out, status, &message, keep).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The provider's request: its head (the gateway's own) and body.
fn provider_request(
    ctx: &WorkerCtx,
    ai: &AiRoute,
    provider: &Provider,
    target: &Target,
    call: &AiCall,
    fields: &openai::Fields,
) -> Result<(Vec<u8>, Vec<u8>), crate::ai::AiError> {
    let (path, body) = match provider.kind {
        ProviderKind::OpenAi => {
            let body = openai::with_model(&call.body, fields, &target.model);
            let body = match openai::read(&body) {
                Ok(f) => openai::with_usage(&body, &f),
                Err(_) => body,
            };
            (call.endpoint.path(), body)
        }
        ProviderKind::Anthropic => (
            "/messages",
            anthropic::to_messages(&call.body, &target.model, ai.default_max_tokens)?,
        ),
    };
    let server_host = {
        let upstreams = ctx.upstreams.borrow();
        let group = &upstreams.members(provider.upstream);
        group
            .first()
            .map(|&s| upstreams.host_of(s).to_string())
            .unwrap_or_default()
    };
    let mut head = format!(
        "POST {}{path} HTTP/1.1\r\nHost: {server_host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        provider.base_path,
        body.len()
    );
    if let Some(key) = pick_key(provider) {
        match provider.kind {
            ProviderKind::OpenAi => head.push_str(&format!("Authorization: Bearer {key}\r\n")),
            ProviderKind::Anthropic => head.push_str(&format!(
                "x-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"
            )),
        }
    }
    head.push_str("\r\n");
    Ok((head.into_bytes(), body))
}

/// One of the provider's keys, in turn.
fn pick_key(provider: &Provider) -> Option<&str> {
    thread_local! {
        static TURN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    if provider.keys.is_empty() {
        return None;
    }
    let turn = TURN.with(|t| {
        let n = t.get();
        t.set(n.wrapping_add(1));
        n
    });
    Some(provider.keys[turn % provider.keys.len()].0.as_str())
}

/// What the gateway keeps of a provider's response head.
struct Head {
    status: u16,
    head_len: usize,
    framing: BodyFraming,
    retry_after: Option<Duration>,
}

/// Connects to one of the provider's servers, sends the request and reads
/// the response head, all within `limit`.
async fn first_bytes(
    ctx: &WorkerCtx,
    provider: &Provider,
    head: Vec<u8>,
    body: Vec<u8>,
    limit: Duration,
) -> Result<(Stream, BytesMut, Head), String> {
    let deadline = Instant::now() + limit;
    let server = ctx
        .upstreams
        .borrow_mut()
        .pick_healthy(
            provider.upstream,
            crate::upstream::balancer::RequestKey { hash: None },
            Instant::now(),
        )
        .ok_or("no healthy server")?;
    let mut stream = crate::upstream::h1::connect(ctx, server, limit)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = head;
    request.extend_from_slice(&body);
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .write_all(request, left)
        .await
        .map_err(|_| "the request could not be sent".to_string())?;
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
                    };
                    return Ok((stream, buf, head));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad response: {e}")),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match stream
            .read_some(&mut buf, ctx.per_core.upstream_buffer_size, left)
            .await
        {
            Read::Data(_) => {}
            Read::TimedOut => return Err("no response in time".into()),
            Read::Eof | Read::Failed(_) => return Err("closed before a response".into()),
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
    framing: BodyFraming,
    ai: &AiRoute,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut decoder = ChunkedDecoder::new();
    let mut got = 0;
    loop {
        if take_body(&mut buf, framing, &mut decoder, &mut got, &mut body)? {
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
    mut out: Vec<u8>,
    keep: bool,
    provider: &Provider,
    fields: &openai::Fields,
    ai: &AiRoute,
    mut stream: Stream,
    mut buf: BytesMut,
    head: &Head,
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
        let done = match take_body(&mut buf, head.framing, &mut decoder, &mut got, &mut plain) {
            Ok(done) => done,
            Err(_) => return client.abandon_reply(ctx),
        };
        let events = match framer.push(&plain) {
            Ok(events) => events,
            Err(_) => return client.abandon_reply(ctx),
        };
        for event in events {
            let pieces = match provider.kind {
                ProviderKind::OpenAi => {
                    if !fields.include_usage && sse::is_usage_only(&event.data) {
                        continue;
                    }
                    vec![event.raw]
                }
                ProviderKind::Anthropic => {
                    match translator.event(event.name.as_deref(), &event.data) {
                        Ok(pieces) => pieces,
                        Err(_) => continue,
                    }
                }
            };
            for piece in pieces {
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
            .read_some(&mut buf, ctx.per_core.upstream_buffer_size, ai.idle_timeout)
            .await
        {
            Read::Data(_) => {}
            Read::Eof if head.framing == BodyFraming::UntilClose => {
                return client.end_reply(ctx).await
            }
            // Cut short or stalled: only closing tells the client.
            _ => return client.abandon_reply(ctx),
        }
    }
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
