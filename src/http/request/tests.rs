//! Unit tests of request head parsing: framing, versions, targets, hosts.

use super::*;

/// Method, version, path-and-query, host, body framing, keep-alive.
type Summary = (Method, Version, String, String, BodyFraming, bool);

fn parse(raw: &[u8]) -> Result<Option<Summary>, HttpError> {
    let mut slots = header_slots::<100>();
    parse_request(raw, &mut slots, 8192).map(|o| {
        o.map(|h| {
            (
                h.method,
                h.version,
                h.path_and_query.to_string(),
                h.host.to_string(),
                h.body,
                h.keep_alive,
            )
        })
    })
}

fn err(raw: &[u8]) -> HttpError {
    parse(raw).expect_err("request should be refused")
}

#[test]
fn simple_get_parses() {
    let (m, v, p, h, b, ka) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((m, v), (Method::Get, Version::Http11));
    assert_eq!(p, "/a?b=1");
    assert_eq!(h, "Example.com");
    assert_eq!(b, BodyFraming::None);
    assert!(ka);
}

#[test]
fn partial_head_asks_for_more() {
    assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
}

#[test]
fn head_larger_than_limit_is_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 9000));
    assert_eq!(err(&raw), HttpError::HeadTooLarge);
    assert_eq!(HttpError::HeadTooLarge.status(), 431);
}

#[test]
fn too_many_headers_is_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..120 {
        raw.extend(format!("X-{i}: 1\r\n").as_bytes());
    }
    raw.extend(b"\r\n");
    assert_eq!(err(&raw), HttpError::TooManyHeaders);
    assert_eq!(HttpError::TooManyHeaders.status(), 431);
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let e = err(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(e, HttpError::LengthAndChunked);
    assert_eq!(e.status(), 400);
}

#[test]
fn duplicate_content_length_is_refused() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
        HttpError::DuplicateContentLength
    );
}

#[test]
fn malformed_content_length_is_refused() {
    for v in ["+3", "3,3", "-1", "abc", "", "0x3", "99999999999999999999"] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
        assert_eq!(err(raw.as_bytes()), HttpError::BadContentLength, "{v}");
    }
}

#[test]
fn content_length_zero_is_a_body_of_zero() {
    let (.., b, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(b, BodyFraming::Length(0));
}

#[test]
fn chunked_is_accepted_case_insensitively() {
    let (.., b, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(b, BodyFraming::Chunked);
}

#[test]
fn unknown_transfer_coding_is_501() {
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n");
    assert_eq!(e.status(), 501);
}

#[test]
fn a_known_coding_before_chunked_is_kept_for_the_upstream() {
    let mut slots = header_slots::<16>();
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, deflate, chunked\r\n\r\n";
    let req = parse_request(raw, &mut slots, 8192).unwrap().unwrap();
    assert_eq!(req.body, BodyFraming::Chunked);
    assert_eq!(req.transfer_codings, Some(&b"gzip, deflate"[..]));
    // Spread over two lines, or unknown: still 501.
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(e, HttpError::UnknownTransferCoding);
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: zip, chunked\r\n\r\n");
    assert_eq!(e, HttpError::UnknownTransferCoding);
}

#[test]
fn chunked_not_final_is_400() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        HttpError::BadTransferEncoding
    );
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        HttpError::BadTransferEncoding
    );
}

#[test]
fn chunked_twice_is_400() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::BadTransferEncoding
    );
}

#[test]
fn empty_transfer_encoding_is_400() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
        HttpError::BadTransferEncoding
    );
}

#[test]
fn transfer_encoding_on_http10_is_400() {
    assert_eq!(
        err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::TransferEncodingOnHttp10
    );
}

#[test]
fn obs_fold_is_refused() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n").status(),
        400
    );
}

#[test]
fn bare_lf_is_refused() {
    assert_eq!(
        err(b"GET / HTTP/1.1\nHost: a\n\n"),
        HttpError::BareLineEnding
    );
}

#[test]
fn bare_cr_is_refused() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n").status(),
        400
    );
}

#[test]
fn nul_in_header_value_is_refused() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
        HttpError::Malformed
    );
}

#[test]
fn invalid_header_name_is_refused() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n"),
        HttpError::Malformed
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
        HttpError::Malformed
    );
}

#[test]
fn missing_host_on_http11_is_400() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
        HttpError::MissingHost
    );
}

#[test]
fn missing_host_on_http10_is_allowed() {
    let (.., ka) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!ka, "HTTP/1.0 closes by default");
}

#[test]
fn duplicate_host_is_400() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        HttpError::DuplicateHost
    );
}

#[test]
fn malformed_host_is_400() {
    for h in ["a b", "a/b", "user@a", "a:port", "[zz]", "a:123456", ":80"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
        assert_eq!(err(raw.as_bytes()).status(), 400, "{h}");
        // An absolute target overrides the Host header, which must still be
        // well formed (it is checked apart from the authority then).
        let raw = format!("GET http://ok.example/ HTTP/1.1\r\nHost: {h}\r\n\r\n");
        assert_eq!(err(raw.as_bytes()).status(), 400, "absolute form, Host {h}");
    }
}

#[test]
fn an_empty_host_or_port_is_accepted() {
    let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h, "a");
    let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").unwrap().unwrap();
    assert_eq!(h, "");
}

#[test]
fn ipv6_host_is_accepted() {
    let (.., h, _, _) = parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h, "[::1]");
}

#[test]
fn absolute_form_overrides_host() {
    let (.., p, h, _, _) = parse(b"GET http://Other.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((p.as_str(), h.as_str()), ("/x?y", "Other.example"));
}

#[test]
fn asterisk_form_only_for_options() {
    assert!(parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .is_some());
    assert_eq!(
        err(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        HttpError::BadTarget
    );
}

#[test]
fn connect_is_501() {
    assert_eq!(
        err(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").status(),
        501
    );
}

#[test]
fn space_in_target_is_400_not_505() {
    assert_eq!(
        err(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        HttpError::Malformed
    );
    assert_eq!(
        err(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        HttpError::Version
    );
}

#[test]
fn a_higher_http1_minor_version_is_rewritten_as_1_1() {
    let mut head = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec();
    assert!(downgrade_minor_version(&mut head));
    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"));
    assert!(parse(&head).unwrap().is_some());
    for other in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"GET / HTTP/1.10\r\n\r\n",
        b"GET / HTTP/1.x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.2",
    ] {
        let mut copy = other.to_vec();
        assert!(
            !downgrade_minor_version(&mut copy),
            "{}",
            String::from_utf8_lossy(other)
        );
        assert_eq!(copy, other);
    }
}

#[test]
fn targets_with_bytes_above_0x7f_parse() {
    assert!(
        parse("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes())
            .unwrap()
            .is_some()
    );
    assert!(
        parse(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n").is_err(),
        "DEL is a control"
    );
}

#[test]
fn http2_preface_is_refused() {
    assert!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
}

#[test]
fn connection_close_and_keep_alive() {
    let (.., ka) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!ka);
    let (.., ka) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(ka);
}

#[test]
fn expect_other_than_100_continue_is_417() {
    assert_eq!(
        err(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: fancy\r\n\r\n").status(),
        417
    );
}
