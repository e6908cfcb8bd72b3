//! Validation tests: each rule names its key.

use super::*;

const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[upstreams.app]
servers = ["127.0.0.1:9000"]
[[routes]]
upstream = "app"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.workers.count, None);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.routes[0].host, HostMatch::Any);
    assert_eq!(c.routes[0].path_prefix, "/");
}

#[test]
fn shipped_config_is_valid() {
    Config::parse(SHIPPED_CONFIG).unwrap();
}

#[test]
fn unknown_key_is_named() {
    let text = MINIMAL.replace("[[routes]]", "[[routes]]\npath_prefx = \"/a\"");
    let e = Config::parse(&text).unwrap_err();
    assert!(e.key.starts_with("routes"), "{e}");
    assert!(e.reason.contains("path_prefx"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nbacklog = \"lots\"",
    );
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "listeners[0].backlog", "{e}");
}

#[test]
fn route_to_missing_upstream_is_refused() {
    let text = MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\"");
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "routes[0].upstream");
    assert!(e.reason.contains("nope") && e.reason.contains("app"), "{e}");
}

#[test]
fn bad_duration_names_the_key() {
    let text = format!("{MINIMAL}\n[timeouts]\nkeepalive = \"forever\"\n");
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "timeouts.keepalive", "{e}");
}

#[test]
fn wildcard_host_becomes_suffix() {
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nhost = \"*.Example.com\"",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
}

#[test]
fn per_core_override_inherits_defaults() {
    let text = format!(
        "{MINIMAL}\n[workers]\nmax_connections = 500\n[[workers.override]]\ncore = 1\nupstream_pool_size = 4\n"
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.workers.for_core(0).max_connections, 500);
    assert_eq!(c.workers.for_core(1).max_connections, 500);
    assert_eq!(c.workers.for_core(1).upstream_pool_size, 4);
}

#[test]
fn weighted_server_table() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.0.1:9000\"]",
        "servers = [{ address = \"127.0.0.1:9000\", weight = 3 }, \"127.0.0.1:9001\"]",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.upstreams[0].servers[0].weight, 3);
    assert_eq!(c.upstreams[0].servers[1].weight, 1);
}

#[test]
fn bad_server_weight_names_the_key() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.0.1:9000\"]",
        "servers = [{ address = \"127.0.0.1:9000\", weight = 0 }]",
    );
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "upstreams.app.servers[0].weight", "{e}");
}

#[test]
fn worker_count_word_must_be_auto() {
    let text = format!("{MINIMAL}\n[workers]\ncount = \"many\"\n");
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "workers.count", "{e}");
}

#[test]
fn route_cache_table_enables_caching() {
    let text = format!(
        "{MINIMAL}\n[routes.cache]\nkey_headers = [\"X-Tenant\"]\nignore_query_params = [\"utm_source\"]\ndefault_ttl = \"10s\"\n"
    );
    let c = Config::parse(&text).unwrap();
    let policy = c.routes[0].cache.as_ref().expect("cache on");
    assert_eq!(policy.key_headers, vec!["x-tenant"]);
    assert_eq!(policy.default_ttl, Some(Duration::from_secs(10)));
    assert!(
        Config::parse(MINIMAL).unwrap().routes[0].cache.is_none(),
        "off unless configured"
    );
}

#[test]
fn route_cache_targeted_fields_and_grace() {
    let c = Config::parse(&format!("{MINIMAL}\n[routes.cache]\n")).unwrap();
    let policy = c.routes[0].cache.as_ref().unwrap();
    assert_eq!(policy.targeted_fields, vec!["cdn-cache-control"]);
    assert!(policy.forward_targeted_fields);
    assert_eq!(policy.stale_on_error, Duration::from_secs(10));
    let text = format!(
        "{MINIMAL}\n[routes.cache]\ntargeted_fields = [\"Ringgate-Cache-Control\", \"CDN-Cache-Control\"]\nforward_targeted_fields = false\nstale_on_error = \"1m\"\n"
    );
    let c = Config::parse(&text).unwrap();
    let policy = c.routes[0].cache.as_ref().unwrap();
    assert_eq!(
        policy.targeted_fields,
        vec!["ringgate-cache-control", "cdn-cache-control"]
    );
    assert!(!policy.forward_targeted_fields);
    assert_eq!(policy.stale_on_error, Duration::from_secs(60));
    for bad in ["\"Cache-Control\"", "\"bad name\""] {
        let text = format!("{MINIMAL}\n[routes.cache]\ntargeted_fields = [{bad}]\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "routes[0].cache.targeted_fields", "{e}");
    }
}

#[test]
fn route_cache_bad_value_names_the_key() {
    let text = format!("{MINIMAL}\n[routes.cache]\nauthorization = \"sometimes\"\n");
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "routes[0].cache.authorization", "{e}");
}

#[test]
fn admin_listens_on_the_default_address_unless_disabled() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(
        c.admin.unwrap().listen,
        DEFAULT_ADMIN_LISTEN.parse().unwrap()
    );
    let off = Config::parse(&format!("{MINIMAL}\n[admin]\nenabled = false\n")).unwrap();
    assert!(off.admin.is_none());
}

#[test]
fn purge_allow_takes_cidr_ranges() {
    let c = Config::parse(&format!(
        "{MINIMAL}\n[cache]\npurge_allow = [\"10.0.0.0/8\", \"::1\"]\n"
    ))
    .unwrap();
    assert!(c.cache.purge_allow[0].contains("10.1.2.3".parse().unwrap()));
    assert!(!c.cache.purge_allow[0].contains("11.0.0.1".parse().unwrap()));
    assert!(c.cache.purge_allow[1].contains("::1".parse().unwrap()));
    let e = Config::parse(&format!(
        "{MINIMAL}\n[cache]\npurge_allow = [\"10.0.0.0/33\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "cache.purge_allow");
}

#[test]
fn balance_policies_parse() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.0.1:9000\"]",
        "servers = [\"127.0.0.1:9000\"]\nbalance = \"hash\"\nhash_on = \"cookie:session\"",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(
        c.upstreams[0].balance,
        BalancePolicy::Hash(HashKey::Cookie("session".into()))
    );
    let bad = MINIMAL.replace(
        "servers = [\"127.0.0.1:9000\"]",
        "servers = [\"127.0.0.1:9000\"]\nbalance = \"fastest\"",
    );
    assert_eq!(
        Config::parse(&bad).unwrap_err().key,
        "upstreams.app.balance"
    );
    let missing = MINIMAL.replace(
        "servers = [\"127.0.0.1:9000\"]",
        "servers = [\"127.0.0.1:9000\"]\nbalance = \"hash\"",
    );
    assert_eq!(
        Config::parse(&missing).unwrap_err().key,
        "upstreams.app.hash_on"
    );
}

#[test]
fn syntax_error_is_reported() {
    let e = Config::parse("[[listeners]\naddress = 1").unwrap_err();
    assert!(e.reason.contains("TOML"), "{e}");
}

#[test]
fn managed_headers_cannot_be_set() {
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nset_request_headers = { \"Transfer-Encoding\" = \"gzip\" }",
    );
    let e = Config::parse(&text).unwrap_err();
    assert!(e.key.contains("set_request_headers"), "{e}");
}

#[test]
fn unbounded_durations_and_sizes_are_refused_naming_the_key() {
    let huge = "9223372036854775807";
    for (table, line, key) in [
        (
            "[timeouts]",
            format!("client_header = {huge}"),
            "timeouts.client_header",
        ),
        (
            "[timeouts]",
            "keepalive = \"400d\"".to_string(),
            "timeouts.keepalive",
        ),
        (
            "[limits]",
            format!("max_request_body = {huge}"),
            "limits.max_request_body",
        ),
        (
            "[workers]",
            format!("cache_size = {huge}"),
            "workers.cache_size",
        ),
        (
            "[workers]",
            format!("upstream_idle_timeout = {huge}"),
            "workers.upstream_idle_timeout",
        ),
        (
            "[workers]",
            "max_connections = 2000000".to_string(),
            "workers.max_connections",
        ),
        (
            "[workers]",
            "upstream_pool_size = 2000000".to_string(),
            "workers.upstream_pool_size",
        ),
        (
            "[cache]",
            format!("invalidation_timeout = {huge}"),
            "cache.invalidation_timeout",
        ),
    ] {
        let text = format!("{MINIMAL}{table}\n{line}\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, key, "{line}: {e}");
        assert!(
            e.reason.contains("range")
                || e.reason.contains("between")
                || e.reason.contains("at most"),
            "{line}: {e}"
        );
    }
    let route = MINIMAL.replace(
        "upstream = \"app\"",
        &format!("upstream = \"app\"\n[routes.cache]\nmax_ttl = {huge}"),
    );
    assert_eq!(
        Config::parse(&route).unwrap_err().key,
        "routes[0].cache.max_ttl"
    );
}

#[test]
fn a_public_admin_listener_needs_a_token() {
    let text = format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:9901\"\n");
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "admin.listen", "{e}");
    assert!(e.reason.contains("token"), "{e}");
    let with_token =
        format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef0123\"\n");
    assert!(Config::parse(&with_token).is_ok());
    let loopback = format!("{MINIMAL}[admin]\nlisten = \"[::1]:9901\"\n");
    assert!(Config::parse(&loopback).is_ok());
}

#[test]
fn the_admin_token_is_a_bearer_token() {
    let admin = AdminConfig {
        listen: "127.0.0.1:1".parse().unwrap(),
        token: Some("s3cret-token".into()),
    };
    assert!(admin.authorizes(Some("Bearer s3cret-token")));
    assert!(admin.authorizes(Some("bearer s3cret-token")));
    for wrong in [
        None,
        Some("Bearer s3cret"),
        Some("Bearer s3cret-token2"),
        Some("s3cret-token"),
        Some("Bearer "),
    ] {
        assert!(!admin.authorizes(wrong), "{wrong:?}");
    }
}

#[test]
fn configs_built_in_code_are_bounded_too() {
    let mut c = Config::quick(
        "127.0.0.1:0".parse().unwrap(),
        vec!["127.0.0.1:9".parse().unwrap()],
    );
    c.timeouts.client_header = Duration::from_secs(u64::MAX / 2);
    assert_eq!(c.check().unwrap_err().key, "timeouts.client_header");
}

#[test]
fn upgrades_default_to_websocket_and_h2c_is_refused() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.routes[0].upgrade, vec!["websocket".to_string()]);
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));
    let text = MINIMAL.replace("upstream = \"app\"", "upstream = \"app\"\nupgrade = []");
    assert!(Config::parse(&text).unwrap().routes[0].upgrade.is_empty());
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nupgrade = [\"WebSocket\", \"h2c\"]",
    );
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "routes[0].upgrade", "{e}");
    assert!(e.reason.contains("h2c"), "{e}");
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nupgrade = [\"web socket\"]",
    );
    assert_eq!(Config::parse(&text).unwrap_err().key, "routes[0].upgrade");
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\ntimeouts = { tunnel_idle = \"0s\" }",
    );
    assert_eq!(
        Config::parse(&text).unwrap_err().key,
        "routes[0].timeouts.tunnel_idle"
    );
}

#[test]
fn http2_settings_default_like_nginx_and_bad_values_name_their_key() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.http2, Http2Config::default());
    assert_eq!(c.http2.max_concurrent_streams, 128);
    assert!(c.listeners[0].http2 && !c.listeners[0].h2c);
    let text = format!("{MINIMAL}\n[http2]\nmax_concurrent_streams = 16\nreset_window = \"2s\"\n");
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.http2.max_concurrent_streams, 16);
    assert_eq!(c.http2.reset_window, Duration::from_secs(2));
    for (bad, key) in [
        ("max_concurrent_streams = 0", "http2.max_concurrent_streams"),
        (
            "initial_window_size = \"4GiB\"",
            "http2.initial_window_size",
        ),
        ("max_requests = 0", "http2.max_requests"),
        ("reset_window = \"0s\"", "http2.reset_window"),
    ] {
        let e = Config::parse(&format!("{MINIMAL}\n[http2]\n{bad}\n")).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn h2c_is_refused_on_a_tls_listener() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nh2c = true\ntls = { certificates = [] }",
    );
    let e = Config::parse(&text).unwrap_err();
    assert_eq!(e.key, "listeners[0].h2c", "{e}");
}

#[test]
fn upstream_protocols_are_checked_against_tls() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::Http1);
    let h2c = MINIMAL.replace("[[routes]]", "protocol = \"h2c\"\n[[routes]]");
    assert_eq!(
        Config::parse(&h2c).unwrap().upstreams[0].protocol,
        UpstreamProtocol::Http2
    );
    for bad in [
        "protocol = \"h2\"",
        "protocol = \"h3\"",
        "protocol = \"HTTP/2\"",
    ] {
        let text = MINIMAL.replace("[[routes]]", &format!("{bad}\n[[routes]]"));
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "upstreams.app.protocol", "{e}");
    }
}

#[test]
fn cluster_settings_and_cluster_rate_limits_are_checked() {
    let limited =
        |extra: &str| format!("{MINIMAL}[routes.rate_limit]\nrequests_per_second = 10\n{extra}");
    let e = Config::parse(&limited("scope = \"cluster\"\n")).unwrap_err();
    assert_eq!(e.key, "routes[0].rate_limit.scope", "{e}");
    assert!(e.reason.contains("[cluster]"), "{e}");
    let e = Config::parse(&limited("fail = \"open\"\n")).unwrap_err();
    assert_eq!(e.key, "routes[0].rate_limit.fail", "{e}");
    let e = Config::parse(&limited("scope = \"galaxy\"\n")).unwrap_err();
    assert_eq!(e.key, "routes[0].rate_limit.scope", "{e}");

    let cluster = "[cluster]\nredis = \"redis://127.0.0.1:6379/\"\n";
    let c = Config::parse(&format!(
        "{}{cluster}",
        limited("scope = \"cluster\"\nfail = \"closed\"\n")
    ))
    .unwrap();
    let limit = c.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(limit.scope, crate::route::rate_limit::Scope::Cluster);
    assert_eq!(limit.fail, crate::route::rate_limit::Fail::Closed);
    let cluster_of = |extra: &str| Config::parse(&format!("{MINIMAL}{cluster}{extra}"));
    let c = cluster_of("").unwrap().cluster.unwrap();
    assert_eq!(c.prefix, "ringgate");
    assert_eq!(c.lease, std::time::Duration::from_millis(20));
    assert!(!c.shared_cache);
    assert_eq!(
        cluster_of("lease = \"11s\"\n").unwrap_err().key,
        "cluster.lease"
    );
    assert_eq!(
        cluster_of("shared_cache_max = \"1GiB\"\n").unwrap_err().key,
        "cluster.shared_cache_max"
    );
    assert_eq!(
        cluster_of("prefix = \"\"\n").unwrap_err().key,
        "cluster.prefix"
    );
    let e = Config::parse(&format!("{MINIMAL}[cluster]\nredis = \"http://x\"\n")).unwrap_err();
    assert_eq!(e.key, "cluster.redis");
}

#[test]
fn tls_to_redis_is_checked() {
    let cluster = |extra: &str| {
        Config::parse(&format!(
            "{MINIMAL}[cluster]\nredis = \"rediss://127.0.0.1:6380/\"\n{extra}"
        ))
    };
    assert!(cluster("").unwrap().cluster.unwrap().tls.ca.is_none());
    let e = cluster("ca = \"/nonexistent/ca.pem\"\n").unwrap_err();
    assert_eq!(e.key, "cluster.ca");
    assert!(e.reason.contains("/nonexistent/ca.pem"), "{e}");
    let not_pem = std::env::temp_dir().join(format!("rg-not-pem-{}", std::process::id()));
    std::fs::write(&not_pem, "hello").unwrap();
    let e = cluster(&format!("ca = {:?}\n", not_pem.to_str().unwrap())).unwrap_err();
    assert_eq!(e.key, "cluster.ca");
    let (cert, _) = crate::tls::certs::self_signed(&["127.0.0.1"]).unwrap();
    let pem = std::env::temp_dir().join(format!("rg-ca-{}.pem", std::process::id()));
    std::fs::write(&pem, cert).unwrap();
    let path = pem.to_str().unwrap();
    let e = cluster(&format!("cert = {path:?}\n")).unwrap_err();
    assert_eq!(e.key, "cluster.cert", "a key goes with it");
    let c = cluster(&format!("ca = {path:?}\n"))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.tls.ca.as_deref(), Some(pem.as_path()));
    // Certificates only over TLS; checks cannot be turned off.
    let e = Config::parse(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://127.0.0.1:6379/\"\nca = {path:?}\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "cluster.ca");
    let e = Config::parse(&format!(
        "{MINIMAL}[cluster]\nredis = \"rediss://127.0.0.1:6380/#insecure\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "cluster.redis");
    let _ = std::fs::remove_file(&pem);
    let _ = std::fs::remove_file(&not_pem);
}

#[test]
fn ai_routes_are_checked_naming_the_key() {
    let ai = |consumers: &str, extra: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:8080"
[upstreams.llm]
servers = ["127.0.0.1:9000"]
[[routes]]
path_prefix = "/v1/"
[routes.ai]
{consumers}
[routes.ai.providers.p]
upstream = "llm"
keys = ["pk"]
[routes.ai.models.m]
targets = [{{ provider = "p", model = "x" }}]
tokens_per_minute = 1000
{extra}"#
        )
    };
    let refused = |text: String| Config::parse(&text).unwrap_err();
    let c = Config::parse(&ai(r#"consumers = [{ name = "a", key = "ck" }]"#, "")).unwrap();
    let route = c.routes[0].ai.as_ref().unwrap();
    assert_eq!(route.limit_scope, crate::route::rate_limit::Scope::Node);
    assert!(format!("{route:?}").contains("Secret(..)"));
    assert!(
        !format!("{route:?}").contains("\"ck\""),
        "keys never printed"
    );

    let e = refused(ai(r#"consumers = [{ name = "a" }]"#, ""));
    assert_eq!(e.key, "routes[0].ai.consumers[0].key", "{e}");
    let auth = "[routes.auth]\nkeys = { k1 = \"a long enough key\" }\n";
    let e = refused(ai(r#"consumers = [{ name = "a", key = "ck" }]"#, auth));
    assert_eq!(e.key, "routes[0].ai.consumers[0].key", "{e}");
    assert!(e.reason.contains("subject"), "{e}");
    let c = Config::parse(&ai(r#"consumers = [{ name = "a" }]"#, auth)).unwrap();
    assert_eq!(c.routes[0].ai.as_ref().unwrap().consumers[0].key, None);
    let e = refused(ai(
        r#"consumers = [{ name = "a", key = "1" }, { name = "a", key = "2" }]"#,
        "",
    ));
    assert_eq!(e.key, "routes[0].ai.consumers[1].name", "{e}");
    let e = refused(ai(
        r#"consumers = [{ name = "a", key = "env:RINGGATE_TEST_UNSET_KEY" }]"#,
        "",
    ));
    assert!(e.reason.contains("RINGGATE_TEST_UNSET_KEY"), "{e}");

    let e = refused(ai("limit_scope = \"cluster\"", ""));
    assert_eq!(e.key, "routes[0].ai.limit_scope", "{e}");
    assert!(e.reason.contains("[cluster]"), "{e}");
    let e = refused(ai("limit_fail = \"open\"", ""));
    assert_eq!(e.key, "routes[0].ai.limit_fail", "{e}");
    let cluster = "[cluster]\nredis = \"redis://127.0.0.1:6379/\"\n";
    let c = Config::parse(&ai(
        "limit_scope = \"cluster\"\nlimit_fail = \"closed\"",
        cluster,
    ))
    .unwrap();
    let route = c.routes[0].ai.as_ref().unwrap();
    let tokens = route.models[0].limits.tokens.as_ref().unwrap();
    assert_eq!(tokens.scope, crate::route::rate_limit::Scope::Cluster);
    assert_eq!(tokens.fail, crate::route::rate_limit::Fail::Closed);

    let e = refused(ai("", "").replace("provider = \"p\"", "provider = \"q\""));
    assert_eq!(e.key, "routes[0].ai.models.m.targets[0].provider", "{e}");
    let e = refused(ai("", "").replace(
        "upstream = \"llm\"",
        "upstream = \"llm\"\nkind = \"gemini\"",
    ));
    assert_eq!(e.key, "routes[0].ai.providers.p.kind", "{e}");
    let e = refused(ai("", "").replace("tokens_per_minute = 1000", "tokens_per_minute = 0"));
    assert_eq!(e.key, "routes[0].ai.models.m.tokens_per_minute", "{e}");
    let e = refused(ai("", "cache_any_temperature = true"));
    assert_eq!(e.key, "routes[0].ai.models.m.cache_any_temperature", "{e}");
}

#[test]
fn the_upstream_ring_buffer_size_is_bounded_naming_the_key() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.workers.upstream_recv_buffer_size, 64 * 1024);
    let text = format!("{MINIMAL}\n[workers]\nupstream_recv_buffer_size = \"128KiB\"\n");
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.workers.upstream_recv_buffer_size, 128 * 1024);
    for bad in ["\"2KiB\"", "\"2MiB\"", "0"] {
        let text = format!("{MINIMAL}\n[workers]\nupstream_recv_buffer_size = {bad}\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "workers.upstream_recv_buffer_size", "{bad}: {e}");
        assert!(e.reason.contains("between 4KiB and 1MiB"), "{bad}: {e}");
    }
}
