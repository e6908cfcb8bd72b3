//! A streamed AI answer relayed to the client event by event.

use std::time::Instant;

use bytes::BytesMut;

use super::super::io::{Read, Stream};
use super::super::{Client, Next};
use crate::ai::{anthropic, openai, sse};
use crate::config::ai::{AiRoute, Provider, ProviderKind};
use crate::http::chunked::ChunkedDecoder;
use crate::http::BodyFraming;
use crate::worker::context::WorkerCtx;

use super::budget::Relayed;
use super::provider::{take_body, Head};
use super::{cache, unix_now};

/// Relays a streamed response event by event: each event is written to
/// the client as soon as it is whole (translated for Anthropic; the usage
/// chunk the gateway asked for dropped when the client did not ask).
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_stream(
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
    assembler: Option<&mut cache::Assembler>,
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
pub(super) async fn relay_events(
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
    mut assembler: Option<&mut cache::Assembler>,
) -> Next {
    out.clear();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n",
    );
    client.start_reply(
        ctx,
        out,
        super::super::reply::BodyLength::Unknown { codings: None },
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
