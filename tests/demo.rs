//! The demo: the shipped default config in front of the built-in catalogue
//! origin serves the catalogue, conditional requests and updates.

mod common;

use common::*;
use ringgate::config::{self, Config};
use ringgate::demo::DemoOrigin;

#[test]
fn demo_catalogue_through_the_shipped_config() {
    let origin = DemoOrigin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = Config::parse(config::SHIPPED_CONFIG).unwrap();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    config.upstreams[0].servers[0].address = origin.addr();
    config.workers.count = Some(1);
    config.admin = None;
    let gw = start(config);
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
