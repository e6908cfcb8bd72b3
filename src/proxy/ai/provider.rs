//! The provider side of an AI request: the request the gateway writes,
//! the key it carries, the response head (pooled connections first) and
//! a whole response body.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::super::io::{Read, Stream};
use crate::ai::keys::KeyInFlight;
use crate::ai::{anthropic, openai};
use crate::config::ai::{AiRoute, Provider, ProviderKind, Target};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::request::header_slots;
use crate::http::response::parse_response;
use crate::http::{BodyFraming, Method};
use crate::worker::context::WorkerCtx;

use super::{AiCall, MAX_RESPONSE};

/// The provider's request: its head (the gateway's own) and body.
pub(super) fn provider_request(
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

/// The provider key with the fewest requests in flight on this node
/// (`crate::ai::keys`), and what counts it in flight.
pub(super) fn pick_key<'a>(
    ctx: &'a WorkerCtx,
    route: &str,
    provider: &Provider,
) -> (Option<usize>, Option<KeyInFlight<'a>>) {
    let picked = ctx.ai_keys.pick(route, &provider.name, provider.keys.len());
    (picked.as_ref().map(|k| k.index), picked)
}

/// What the gateway keeps of a provider's response head.
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) head_len: usize,
    pub(super) framing: BodyFraming,
    pub(super) retry_after: Option<Duration>,
    /// The connection may carry another request after this response.
    pub(super) reusable: bool,
    /// The provider's server it came from.
    pub(super) server: usize,
}

/// Connects to one of the provider's servers, sends the request and reads
/// the response head, all within `limit`.
pub(super) async fn first_bytes(
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
pub(super) async fn exchange_head(
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
pub(super) fn take_body(
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
pub(super) async fn read_whole(
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
