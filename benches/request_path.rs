//! Micro-benchmarks of the request path's CPU-only steps: parsing and
//! validating a request head, and matching it against a route table.
//! Run with `cargo bench --bench request_path`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use ringgate::config::{HeaderMatch, HostMatch, RouteConfig};
use ringgate::http::request::{header_slots, parse_request};
use ringgate::route::Router;

const WRK_LIKE: &[u8] = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const BROWSER_LIKE: &[u8] = b"GET /api/v1/products/42?expand=stock HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://shop.example.com/products\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
Connection: keep-alive\r\n\
Sec-Fetch-Mode: cors\r\n\
X-Request-Id: 6f1c2a9e-3b7d-4f0a-9c8e-2d5b1a7f3e90\r\n\r\n";

fn route(
    host: HostMatch,
    prefix: &str,
    header: Option<(&str, &str)>,
    upstream: usize,
) -> RouteConfig {
    RouteConfig {
        host,
        path_prefix: prefix.to_string(),
        header: header.map(|(n, v)| HeaderMatch {
            name: n.to_string(),
            value: Some(v.to_string()),
        }),
        ..RouteConfig::to(&format!("r{upstream}"), upstream)
    }
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_request");
    for (name, raw) in [("wrk_like", WRK_LIKE), ("browser_like", BROWSER_LIKE)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut slots = header_slots::<100>();
                let head = parse_request(black_box(raw), &mut slots, 32 * 1024)
                    .unwrap()
                    .unwrap();
                black_box(head.head_len)
            })
        });
    }
    group.finish();
}

fn route_match(c: &mut Criterion) {
    // Ten routes; the request matches the ninth, after host, prefix and header checks.
    let mut routes = Vec::new();
    for i in 0..8 {
        routes.push(route(
            HostMatch::Exact(format!("svc{i}.example.com")),
            "/",
            None,
            i,
        ));
    }
    routes.push(route(
        HostMatch::Suffix(".example.com".into()),
        "/api/v1/",
        Some(("x-canary", "1")),
        8,
    ));
    routes.push(route(
        HostMatch::Suffix(".example.com".into()),
        "/api/v1/",
        None,
        9,
    ));
    let router = Router::new(&routes);
    let mut slots = header_slots::<100>();
    let head = parse_request(BROWSER_LIKE, &mut slots, 32 * 1024)
        .unwrap()
        .unwrap();
    c.bench_function("route_match_10_routes", |b| {
        b.iter(|| {
            black_box(router.find(
                black_box(head.host),
                head.path,
                head.method_name,
                head.headers,
            ))
        })
    });
}

criterion_group!(benches, parse, route_match);
criterion_main!(benches);
