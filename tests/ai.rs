//! AI routes over real sockets against a fake provider (`common::ai_provider`):
//! the model mapped to a provider's, the provider's key sent and the
//! client's never, events relayed as the provider sends them, fallback on
//! each failure kind and never after the first byte, `Retry-After`
//! benching a target, and Anthropic's API behind the OpenAI-compatible one.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::ai_provider::{event_json, read_events, streamed_text, Provider, PACE};
use common::*;

/// A gateway with one AI route under `/v1/`, its providers on `provider`
/// (and a dead one), with `models` (TOML) and consumer key `ck-1`.
fn gateway(provider: &Provider, models: &str) -> ringgate::Handle {
    gateway_with(
        provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        models,
        false,
    )
}

/// The same with these consumers, and the admin API on a free port if `admin`.
fn gateway_with(
    provider: &Provider,
    consumers: &str,
    models: &str,
    admin: bool,
) -> ringgate::Handle {
    gateway_workers(provider, consumers, models, admin, 1)
}

/// The same on `workers` workers.
fn gateway_workers(
    provider: &Provider,
    consumers: &str,
    models: &str,
    admin: bool,
    workers: usize,
) -> ringgate::Handle {
    let text = config_text(provider, consumers, models, admin, workers);
    start(ringgate::Config::parse(&text).unwrap())
}

fn config_text(
    provider: &Provider,
    consumers: &str,
    models: &str,
    admin: bool,
    workers: usize,
) -> String {
    let dead = dead_port();
    let admin = match admin {
        true => "listen = \"127.0.0.1:0\"",
        false => "enabled = false",
    };
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[workers]
count = {workers}
pin = false
[admin]
{admin}
[upstreams.fake]
servers = ["{addr}"]
[upstreams.dead]
servers = ["127.0.0.1:{dead}"]
[[routes]]
path_prefix = "/v1/"
[routes.ai]
{consumers}
first_byte_timeout = "2s"
idle_timeout = "400ms"
[routes.ai.providers.p1]
upstream = "fake"
keys = ["pk-secret"]
[routes.ai.providers.claude]
kind = "anthropic"
upstream = "fake"
keys = ["ak-secret"]
[routes.ai.providers.gone]
upstream = "dead"
{models}
"#,
        addr = provider.addr
    );
    text
}

fn chat(gw: &ringgate::Handle, key: &str, body: &str) -> Response {
    chat_on(&mut Client::connect(gw.listen_addr()), key, body)
}

/// On a connection of the caller's (one worker).
fn chat_on(c: &mut Client, key: &str, body: &str) -> Response {
    c.request(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn json_of(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

const HELLO: &str = r#"{"model":"fast","messages":[{"role":"user","content":"hello"}]}"#;

#[test]
fn a_chat_request_goes_to_the_mapped_model_with_the_providers_key_and_never_the_clients() {
    let provider = Provider::start();
    let gw = gateway(
        &provider,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]"#,
    );
    let r = chat(&gw, "ck-1", HELLO);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["choices"][0]["message"]["content"], "echo:hello");
    assert!(!r.text().contains("pk-secret"));
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["model"], "small-1");
    assert_eq!(seen[0].body["messages"][0]["content"], "hello");
    assert!(
        seen[0].head.contains("Authorization: Bearer pk-secret"),
        "{}",
        seen[0].head
    );
    assert!(!seen[0].head.contains("ck-1"), "{}", seen[0].head);

    // A wrong or missing consumer key: 401, the provider not asked.
    assert_eq!(chat(&gw, "ck-2", HELLO).status, 401);
    assert_eq!(chat(&gw, "", HELLO).status, 401);
    // An unknown model, a body that is not JSON, a model given twice.
    let unknown = chat(&gw, "ck-1", r#"{"model":"huge","messages":[]}"#);
    assert_eq!(unknown.status, 404);
    assert!(json_of(&unknown)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("huge"));
    assert_eq!(chat(&gw, "ck-1", "not json").status, 400);
    assert_eq!(
        chat(&gw, "ck-1", r#"{"model":"fast","model":"other"}"#).status,
        400
    );
    assert_eq!(provider.seen().len(), 1);

    // The models the route offers.
    let models = Client::connect(gw.listen_addr())
        .request(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ck-1\r\n\r\n");
    assert_eq!(models.status, 200);
    assert_eq!(json_of(&models)["data"][0]["id"], "fast");
}

fn stream_request(gw: &ringgate::Handle, body: &str) -> TcpStream {
    stream_request_as(gw, "ck-1", body)
}

fn stream_request_as(gw: &ringgate::Handle, key: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.listen_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[test]
fn a_stream_is_relayed_event_by_event_with_usage_only_when_asked() {
    let provider = Provider::start();
    let gw = gateway(
        &provider,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "paced" }]"#,
    );
    let body =
        r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}"#;
    let (status, events) = read_events(&mut stream_request(&gw, body));
    assert_eq!(status, 200);
    let data: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(*data.last().unwrap(), "data: [DONE]\n\n");
    assert_eq!(streamed_text(&events), "echo:abcdefgh");
    // Not buffered: each event came about one provider pace after the last.
    for pair in events.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= PACE / 2, "{gap:?} between events: buffered");
    }
    // The gateway asked for usage; the client did not, so it does not get it.
    assert_eq!(
        provider.seen()[0].body["stream_options"]["include_usage"],
        true
    );
    assert!(!data.iter().any(|e| e.contains("\"usage\":{")), "{data:?}");

    let asked = r#"{"model":"fast","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
    let (_, events) = read_events(&mut stream_request(&gw, asked));
    assert!(events
        .iter()
        .any(|(_, e)| e.contains("\"completion_tokens\":7")));
}

#[test]
fn a_target_that_fails_before_answering_gives_way_to_the_next_and_a_429_benches_it() {
    let provider = Provider::start();
    let gw = gateway_workers(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "gone", model = "x" }, { provider = "p1", model = "fail-429" },
           { provider = "p1", model = "fail-500" }, { provider = "p1", model = "stall-head" },
           { provider = "p1", model = "good" }]"#,
        false,
        2,
    );
    let r = chat(&gw, "ck-1", HELLO);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["model"], "good");
    assert_eq!(
        provider.models(),
        ["fail-429", "fail-500", "stall-head", "good"]
    );
    // The 429 said `Retry-After: 30`: that target is passed over now, by
    // both workers (eight new connections: the chance that all of them land
    // on the worker that saw the 429 is 1 in 256).
    let cheap = r#"{"model":"fast","messages":[{"role":"user","content":"again"}]}"#;
    let before = provider.models().len();
    let addr = gw.listen_addr();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                chat_on(&mut c, "ck-1", cheap).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let asked = &provider.models()[before..];
    assert_eq!(asked.len(), 8 * 3, "{asked:?}");
    assert!(
        !asked.iter().any(|m| m == "fail-429"),
        "the benched target was not asked: {asked:?}"
    );
}

#[test]
fn when_every_target_fails_the_client_is_told_and_a_429_stays_a_429() {
    let provider = Provider::start();
    let gw = gateway(
        &provider,
        r#"[routes.ai.models.busy]
targets = [{ provider = "p1", model = "fail-429" }]
[routes.ai.models.broken]
targets = [{ provider = "gone", model = "x" }, { provider = "p1", model = "fail-500" }]"#,
    );
    let busy = chat(&gw, "ck-1", r#"{"model":"busy","messages":[]}"#);
    assert_eq!(busy.status, 429);
    let broken = chat(&gw, "ck-1", r#"{"model":"broken","messages":[]}"#);
    assert_eq!(broken.status, 502);
    assert_eq!(json_of(&broken)["error"]["type"], "api_error");
}

#[test]
fn a_stream_that_stalls_after_its_first_event_is_cut_not_retried_elsewhere() {
    let provider = Provider::start();
    let gw = gateway(
        &provider,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "stall-mid" }, { provider = "p1", model = "good" }]"#,
    );
    let body = r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let (status, events) = read_events(&mut stream_request(&gw, body));
    assert_eq!(status, 200);
    assert_eq!(
        events.len(),
        1,
        "the first event, then the close: {events:?}"
    );
    assert_eq!(
        provider.models(),
        ["stall-mid"],
        "never a second target after the first byte"
    );
}

#[test]
fn anthropic_is_reached_through_the_openai_api_both_ways_streaming_included() {
    let provider = Provider::start();
    let gw = gateway(
        &provider,
        r#"[routes.ai.models.claude]
targets = [{ provider = "claude", model = "claude-3-5-haiku" }]"#,
    );
    let body = r#"{"model":"claude","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":50}"#;
    let r = chat(&gw, "ck-1", body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo:hi");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 12);
    let seen = &provider.seen()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert!(seen.head.contains("x-api-key: ak-secret"), "{}", seen.head);
    assert!(seen.head.contains("anthropic-version: 2023-06-01"));
    assert!(!seen.head.contains("ck-1"));
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(seen.body["max_tokens"], 50);
    assert_eq!(seen.body["messages"][0]["content"], "hi");

    let stream = r#"{"model":"claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"abcdefgh"}]}"#;
    let (status, events) = read_events(&mut stream_request(&gw, stream));
    assert_eq!(status, 200);
    let data = event_json(&events);
    assert_eq!(streamed_text(&events), "echo:abcdefgh");
    assert!(data.iter().any(|v| v["usage"]["completion_tokens"] == 7));
    assert_eq!(events.last().unwrap().1, "data: [DONE]\n\n");
}

#[test]
fn tokens_and_requests_per_minute_refuse_at_the_right_count_and_usage_is_counted() {
    let provider = Provider::start();
    let gw = gateway_with(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1", tokens_per_minute = 100 },
             { name = "team-b", key = "ck-2" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]
[routes.ai.models.few]
targets = [{ provider = "p1", model = "small-2" }]
requests_per_minute = 3"#,
        true,
    );
    // Each answer uses 12 tokens (the fake provider's usage); a request is
    // admitted while what was used plus its estimate (its body's bytes over
    // four) fits in the minute's 100.
    let estimate = HELLO.len().div_ceil(4);
    let expected = (100 - estimate) / 12 + 1;
    let statuses: Vec<u16> = (0..expected + 2)
        .map(|_| chat(&gw, "ck-1", HELLO).status)
        .collect();
    assert!(
        statuses[..expected].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert!(
        statuses[expected..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    let refused = chat(&gw, "ck-1", HELLO);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(json_of(&refused)["error"]["type"], "rate_limit_error");
    assert_eq!(
        provider.seen().len(),
        expected,
        "refused requests never reach a provider"
    );
    // Another consumer has its own budget (none here).
    assert_eq!(chat(&gw, "ck-2", HELLO).status, 200);

    // Requests per minute of a model, every consumer together.
    let few = r#"{"model":"few","messages":[{"role":"user","content":"x"}]}"#;
    let statuses: Vec<u16> = (0..4).map(|_| chat(&gw, "ck-2", few).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);

    // Usage as the provider reported it, streamed answers included.
    let stream = r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _) = read_events(&mut stream_request_as(&gw, "ck-2", stream));
    assert_eq!(status, 200);
    let metrics = get(gw.admin_addr().unwrap(), "/metrics").text();
    let line = |name: &str, consumer: &str, model: &str| {
        let prefix =
            format!("{name}{{consumer=\"{consumer}\",model=\"{model}\",provider=\"p1\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .to_string()
    };
    let n = expected.to_string();
    assert_eq!(line("ringgate_ai_requests_total", "team-a", "fast"), n);
    assert_eq!(
        line("ringgate_ai_completion_tokens_total", "team-a", "fast"),
        (7 * expected).to_string()
    );
    assert_eq!(
        line("ringgate_ai_prompt_tokens_total", "team-a", "fast"),
        (5 * expected).to_string()
    );
    // team-b: one whole answer and one streamed, 12 tokens each.
    assert_eq!(line("ringgate_ai_requests_total", "team-b", "fast"), "2");
    assert_eq!(
        line("ringgate_ai_completion_tokens_total", "team-b", "fast"),
        "14"
    );
    assert_eq!(line("ringgate_ai_errors_total", "team-b", "fast"), "0");
}

#[test]
fn the_completion_cache_answers_identical_requests_and_coalesces_concurrent_ones() {
    let provider = Provider::start();
    let gw = gateway_workers(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]
cache_ttl = "60s"
[routes.ai.models.slowly]
targets = [{ provider = "p1", model = "slow" }]
cache_ttl = "60s""#,
        false,
        2,
    );
    // One connection, one worker: what it stored is in its shard (the
    // other worker gets it offered).
    let mut c = Client::connect(gw.listen_addr());
    let first = chat_on(
        &mut c,
        "ck-1",
        r#"{"model":"fast","temperature":0,"messages":[{"role":"user","content":"same"}]}"#,
    );
    assert_eq!(first.status, 200);
    // The same request spelled otherwise: from the cache, no provider call.
    let again = chat_on(
        &mut c,
        "ck-1",
        r#"{ "messages" : [ {"content":"same", "role":"user"} ], "temperature": 0, "model": "fast" }"#,
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.header("cache-status"), Some("ringgate; hit"));
    assert_eq!(json_of(&again)["choices"], json_of(&first)["choices"]);
    assert_eq!(provider.seen().len(), 1);
    // Streamed: the stored completion replayed as chunks.
    let stream = r#"{"model":"fast","temperature":0,"stream":true,"messages":[{"role":"user","content":"same"}]}"#;
    let (status, events) = read_events(&mut stream_request(&gw, stream));
    assert_eq!(status, 200);
    assert_eq!(streamed_text(&events), "echo:same");
    assert_eq!(provider.seen().len(), 1);
    // Another temperature, or other messages: the provider again.
    let warm = chat(
        &gw,
        "ck-1",
        r#"{"model":"fast","temperature":0.7,"messages":[{"role":"user","content":"same"}]}"#,
    );
    assert_eq!(warm.status, 200);
    assert!(warm.header("cache-status").is_none());
    assert_eq!(provider.seen().len(), 2);

    // Twenty identical requests at once, over both workers: one provider call.
    let addr = gw.listen_addr();
    let body =
        r#"{"model":"slowly","temperature":0,"messages":[{"role":"user","content":"together"}]}"#;
    let answers: Vec<String> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let r = Client::connect(addr).request(
                    format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ck-1\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
                v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(answers.iter().all(|a| a == "echo:together"), "{answers:?}");
    assert_eq!(
        provider.models().iter().filter(|m| *m == "slow").count(),
        1,
        "coalesced into one call"
    );
}

#[test]
fn the_access_log_says_who_asked_which_model_which_provider_answered_and_the_tokens() {
    let provider = Provider::start();
    let path = fresh_path("ai.log");
    let text = config_text(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]"#,
        false,
        1,
    ) + &format!(
        "[access_log]\nenabled = true\npath = {:?}\nformat = \"json\"\nflush = \"10ms\"\n",
        path.to_str().unwrap()
    );
    let gw = start(ringgate::Config::parse(&text).unwrap());
    assert_eq!(chat(&gw, "ck-1", HELLO).status, 200);
    let mut line = String::new();
    wait_until(Duration::from_secs(10), "the access log line", || {
        line = std::fs::read_to_string(&path).unwrap_or_default();
        !line.is_empty()
    });
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["ai"]["consumer"], "team-a");
    assert_eq!(v["ai"]["model"], "fast");
    assert_eq!(v["ai"]["provider"], "p1");
    assert_eq!(v["ai"]["prompt_tokens"], 5);
    assert_eq!(v["ai"]["completion_tokens"], 7);
    assert!(
        !line.contains("ck-1") && !line.contains("pk-secret"),
        "{line}"
    );
}

#[test]
fn an_ai_route_answers_over_http2_whole_and_streamed() {
    use common::http2::{send_all, H2Request, Via};
    let provider = Provider::start();
    let text = config_text(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]"#,
        false,
        1,
    )
    .replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nh2c = true",
    );
    let gw = start(ringgate::Config::parse(&text).unwrap());
    let request = |body: &str| H2Request {
        method: "POST",
        path: "/v1/chat/completions".into(),
        headers: vec![
            ("authorization".into(), "Bearer ck-1".into()),
            ("content-type".into(), "application/json".into()),
        ],
        body: Some(body.as_bytes().to_vec()),
    };
    let stream =
        r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"over h2"}]}"#;
    let answers = send_all(
        gw.listen_addr(),
        Via::Cleartext,
        vec![request(HELLO), request(stream)],
    );
    let whole = answers[0].as_ref().unwrap();
    assert_eq!(whole.status, 200, "{}", whole.text());
    let v: serde_json::Value = serde_json::from_str(&whole.text()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo:hello");
    let streamed = answers[1].as_ref().unwrap();
    assert_eq!(streamed.status, 200);
    let events: Vec<(std::time::Instant, String)> = streamed
        .text()
        .split_inclusive("\n\n")
        .map(|e| (std::time::Instant::now(), e.to_string()))
        .collect();
    assert_eq!(streamed_text(&events), "echo:over h2");
    assert!(!provider.seen().iter().any(|s| s.head.contains("ck-1")));
}

#[test]
fn a_providers_keys_are_balanced_by_requests_in_flight() {
    let provider = Provider::start();
    let text = config_text(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.slowly]
targets = [{ provider = "multi", model = "held" }]
[routes.ai.models.fast]
targets = [{ provider = "multi", model = "small-1" }]
[routes.ai.providers.multi]
upstream = "fake"
keys = ["k0", "k1"]"#,
        false,
        2,
    )
    // The held request waits for the test, however slow the machine.
    .replace(
        "first_byte_timeout = \"2s\"",
        "first_byte_timeout = \"60s\"",
    );
    let gw = start(ringgate::Config::parse(&text).unwrap());
    let addr = gw.listen_addr();
    let slow = std::thread::spawn(move || {
        let body = r#"{"model":"slowly","messages":[{"role":"user","content":"x"}]}"#;
        chat_on(&mut Client::connect(addr), "ck-1", body).status
    });
    wait_until(
        Duration::from_secs(5),
        "the slow request at the provider",
        || provider.seen().len() == 1,
    );
    // While k0 carries the slow request, every other one goes to k1 (taken
    // in turn, they would alternate), on either worker: each on a new
    // connection (all six on the slow request's worker: 1 in 64).
    for _ in 0..6 {
        assert_eq!(chat(&gw, "ck-1", HELLO).status, 200);
    }
    provider.release();
    assert_eq!(slow.join().unwrap(), 200);
    let keys: Vec<bool> = provider
        .seen()
        .iter()
        .map(|s| s.head.contains("Bearer k1"))
        .collect();
    assert_eq!(
        keys,
        [false, true, true, true, true, true, true],
        "{:?}",
        provider.seen()
    );
}

#[test]
fn a_body_too_large_or_cut_into_tiny_chunks_is_refused_not_read_forever() {
    let provider = Provider::start();
    let text = config_text(
        &provider,
        r#"consumers = [{ name = "team-a", key = "ck-1" }]"#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]"#,
        false,
        1,
    )
    .replace(
        "idle_timeout = \"400ms\"",
        "idle_timeout = \"400ms\"\nmax_body = \"1KiB\"",
    );
    let gw = start(ringgate::Config::parse(&text).unwrap());
    let big = format!(
        r#"{{"model":"fast","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    assert_eq!(chat(&gw, "ck-1", &big).status, 413);
    // 600 one-byte chunks: 600 bytes of body, far more on the wire.
    let mut c = Client::connect(gw.listen_addr());
    let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ck-1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..600 {
        raw.extend_from_slice(b"1\r\n \r\n");
    }
    c.send(&raw);
    assert_eq!(c.read_response().unwrap().status, 413);
    assert!(provider.seen().is_empty());
    // A small chunked body is read whole and answered.
    let mut c = Client::connect(gw.listen_addr());
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ck-1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{HELLO}\r\n0\r\n\r\n",
        HELLO.len()
    );
    c.send(chunked.as_bytes());
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn on_a_route_with_auth_the_verified_token_subject_is_the_consumer() {
    let provider = Provider::start();
    let auth =
        format!("[routes.auth]\nkeys = {{ k1 = \"{TEST_KEY}\" }}\nsubject_header = \"X-User\"\n");
    let gw = gateway_with(
        &provider,
        r#"consumers = [{ name = "alice", requests_per_minute = 1 }]"#,
        &format!(
            "[routes.ai.models.fast]\ntargets = [{{ provider = \"p1\", model = \"small-1\" }}]\n{auth}"
        ),
        true,
    );
    let alice = token_for("alice");
    assert_eq!(chat(&gw, &alice, HELLO).status, 200);
    // Alice's own limit, whichever token of hers she sends.
    assert_eq!(chat(&gw, &token_for("alice"), HELLO).status, 429);
    // Bob has no entry: no limit of his own.
    let bob = token_for("bob");
    assert_eq!(chat(&gw, &bob, HELLO).status, 200);
    assert_eq!(chat(&gw, &bob, HELLO).status, 200);
    // No token, a forged one: 401 before anything else.
    assert_eq!(chat(&gw, "", HELLO).status, 401);
    let forged = sign_jwt("k1", "another key", r#"{"sub":"alice"}"#);
    assert_eq!(chat(&gw, &forged, HELLO).status, 401);
    let seen = provider.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| !s.head.contains(&alice) && !s.head.contains(&bob)),
        "a client's token reached a provider"
    );
    let metrics = get(gw.admin_addr().unwrap(), "/metrics").text();
    for (consumer, n) in [("alice", 1), ("bob", 2)] {
        let line = format!(
            "ringgate_ai_requests_total{{consumer=\"{consumer}\",model=\"fast\",provider=\"p1\"}} {n}"
        );
        assert!(metrics.contains(&line), "no {line} in {metrics}");
    }
}

/// A node of a cluster on `redis` (its own admin API) whose AI route
/// counts its budgets with every node's, refusing while Redis is away.
fn cluster_node(
    provider: &Provider,
    redis: &common::redis_server::Redis,
    name: &str,
) -> ringgate::Handle {
    let mut text = config_text(
        provider,
        r#"consumers = [{ name = "team-a", key = "ck-1", tokens_per_minute = 100 },
             { name = "team-b", key = "ck-2" }]
limit_scope = "cluster"
limit_fail = "closed""#,
        r#"[routes.ai.models.fast]
targets = [{ provider = "p1", model = "small-1" }]
[routes.ai.models.few]
targets = [{ provider = "p1", model = "small-2" }]
requests_per_minute = 3"#,
        true,
        1,
    );
    text.push_str(&format!(
        "[cluster]\nredis = \"{}\"\nnode_id = \"{name}\"\nstream = \"ringgate:ai-test\"\n",
        redis.url()
    ));
    start(ringgate::Config::parse(&text).unwrap())
}

fn cluster_stats(gw: &ringgate::Handle) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr().unwrap(), "/stats").text()).unwrap();
    v["cluster"].clone()
}

#[test]
fn with_limit_scope_cluster_budgets_hold_across_nodes_and_fail_closed_without_redis() {
    let redis = common::redis_server::Redis::start();
    let provider = Provider::start();
    let nodes = [
        cluster_node(&provider, &redis, "a"),
        cluster_node(&provider, &redis, "b"),
    ];
    for n in &nodes {
        wait_until(Duration::from_secs(10), "connected to Redis", || {
            cluster_stats(n)["redis_connected"] == true
        });
    }
    // The same count as on one node (tokens_and_requests_per_minute_...),
    // the requests alternating between the nodes. Each admitted request's
    // correction (its estimate to the 12 tokens used) is applied in Redis
    // before the next request is sent, so the count is exact.
    let estimate = HELLO.len().div_ceil(4);
    let expected = (100 - estimate) / 12 + 1;
    let mut admitted = [0u64; 2];
    let mut statuses = Vec::new();
    for i in 0..expected + 2 {
        let node = &nodes[i % 2];
        let status = chat(node, "ck-1", HELLO).status;
        statuses.push(status);
        if status == 200 {
            admitted[i % 2] += 1;
            let want = admitted[i % 2];
            wait_until(Duration::from_secs(5), "the correction applied", || {
                cluster_stats(node)["rate_limits"]["charged"].as_u64() == Some(want)
            });
        }
    }
    assert!(
        statuses[..expected].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert!(
        statuses[expected..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    assert_eq!(provider.seen().len(), expected);

    // A model's requests per minute, every consumer on every node together.
    let few = r#"{"model":"few","messages":[{"role":"user","content":"x"}]}"#;
    let statuses: Vec<u16> = (0..4)
        .map(|i| chat(&nodes[i % 2], "ck-2", few).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let refused = chat(&nodes[1], "ck-2", few);
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Redis away: a limit that cannot be counted refuses (`limit_fail =
    // "closed"`), a request no limit counts goes on.
    redis.stop();
    let r = chat(&nodes[0], "ck-2", few);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(chat(&nodes[0], "ck-2", HELLO).status, 200);
}
