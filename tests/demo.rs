//! The demo: the shipped default config in front of the built-in catalogue
//! origin serves the catalogue, conditional requests and updates.

mod common;

use common::*;
use ringgate::config::{self, Config};
use ringgate::demo::DemoOrigin;

/// The shipped config on a free port, in front of a demo origin of its own.
fn demo() -> (DemoOrigin, ringgate::Handle) {
    let origin = DemoOrigin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = Config::parse(config::SHIPPED_CONFIG).unwrap();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    config.upstreams[0].servers[0].address = origin.addr();
    config.workers.count = Some(1);
    config.admin = None;
    (origin, start(config))
}

#[test]
fn demo_catalogue_through_the_shipped_config() {
    let (_origin, gw) = demo();
    let mut c = Client::connect(gw.listen_addr());

    let list = c.request(b"GET /products HTTP/1.1\r\nHost: demo\r\n\r\n");
    assert_eq!(list.status, 200);
    assert!(
        list.text().starts_with('[') && list.text().contains("Espresso cup"),
        "{}",
        list.text()
    );

    let one = c.request(b"GET /products/1 HTTP/1.1\r\nHost: demo\r\n\r\n");
    assert_eq!(one.status, 200);
    let etag = one.header("etag").expect("ETag").to_string();
    assert!(one.header("cache-control").unwrap().contains("max-age"));

    let not_modified = c.request(
        format!("GET /products/1 HTTP/1.1\r\nHost: demo\r\nIf-None-Match: {etag}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(not_modified.status, 304);

    let body = r#"{"id":1,"name":"Espresso cup","price_cents":1100,"stock":9}"#;
    let put = c.request(format!("PUT /products/1 HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    assert_eq!(put.status, 200);
    assert_ne!(put.header("etag"), Some(etag.as_str()));

    let after = c.request(b"GET /products/1 HTTP/1.1\r\nHost: demo\r\n\r\n");
    assert_eq!(after.text(), body);
    assert_eq!(
        c.request(b"GET /nothing HTTP/1.1\r\nHost: demo\r\n\r\n")
            .status,
        404
    );
}

#[test]
fn the_demo_answers_an_openai_chat_request_through_the_ai_route() {
    let (_origin, gw) = demo();
    let chat = |body: &str| {
        Client::connect(gw.listen_addr()).request(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let r = chat(r#"{"model":"demo","messages":[{"role":"user","content":"Hello there"}]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "You said: Hello there"
    );
    assert_eq!(v["model"], "ringgate-demo");

    let mut s = std::net::TcpStream::connect(gw.listen_addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let body =
        r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"Hello there"}]}"#;
    std::io::Write::write_all(
        &mut s,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, events) = common::ai_provider::read_events(&mut s);
    assert_eq!(status, 200);
    assert_eq!(
        common::ai_provider::streamed_text(&events),
        "You said: Hello there"
    );
    assert_eq!(events.last().unwrap().1, "data: [DONE]\n\n");
}
