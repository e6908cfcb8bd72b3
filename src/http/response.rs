//! Upstream response head parsing. The same strictness as requests: an
//! upstream that frames its response ambiguously gets a 502, never a guess,
//! because the bytes after an ambiguous body would be read as the next
//! response on a pooled connection.

use std::mem::MaybeUninit;

use httparse::Header;

use super::headers::{check_head, list_items, name_is, parse_content_length, trim};
use super::{BodyFraming, HttpError, Method, Version};

#[derive(Debug)]
pub struct ResponseHead<'b> {
    pub version: Version,
    pub status: u16,
    pub reason: &'b str,
    pub headers: &'b [Header<'b>],
    pub head_len: usize,
    /// How the body that follows is delimited, given the request method.
    pub framing: BodyFraming,
    /// The upstream connection can carry another request after this body.
    pub reusable: bool,
    pub has_connection_header: bool,
    /// Transfer codings other than chunked (`gzip` of `gzip, chunked`),
    /// which the body still carries once any chunked framing is removed:
    /// passed on to the client as they are, and never stored.
    pub transfer_codings: Option<&'b [u8]>,
}

impl<'b> ResponseHead<'b> {
    pub fn connection_values(&self) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.headers
            .iter()
            .filter(|h| name_is(h.name, "connection"))
            .map(|h| h.value)
    }

    /// 1xx responses are interim: the final response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)` means incomplete.
pub fn parse_response<'b>(
    buf: &'b [u8],
    slots: &'b mut [MaybeUninit<Header<'b>>],
    max_head: usize,
    request_method: Method,
) -> Result<Option<ResponseHead<'b>>, HttpError> {
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(_) => return Err(HttpError::Malformed),
    };
    let version = check_head(&buf[..head_len], max_head, resp.version)?;
    let status = resp.code.ok_or(HttpError::Malformed)?;
    if !(100..=599).contains(&status) {
        return Err(HttpError::Malformed);
    }
    let reason = resp.reason.unwrap_or("");
    let headers: &'b [Header<'b>] = resp.headers;

    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut te_lines = 0;
    let mut te_value: &[u8] = b"";
    let mut chunked_last = false;
    let mut chunked_count = 0;
    let mut other_codings = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut has_connection_header = false;
    for h in headers {
        if name_is(h.name, "content-length") {
            let n = parse_content_length(h.value).ok_or(HttpError::BadContentLength)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::DuplicateContentLength);
            }
            content_length = Some(n);
        } else if name_is(h.name, "transfer-encoding") {
            transfer_encoding = true;
            te_lines += 1;
            te_value = trim(h.value);
            for coding in h.value.split(|&b| b == b',').map(trim) {
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if chunked_last {
                    chunked_count += 1;
                } else {
                    other_codings = true;
                }
            }
        } else if name_is(h.name, "connection") {
            has_connection_header = true;
            for token in list_items(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        }
    }

    let no_body = request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let mut transfer_codings = None;
    let framing = if no_body {
        BodyFraming::None
    } else if transfer_encoding {
        // TE with CL is the classic smuggling vector, chunked applied twice
        // is malformed (RFC 9112 section 6.1), and HTTP/1.0 has no transfer
        // codings: refuse them all. Codings spread over several lines are
        // refused too, rather than re-joined.
        if version == Version::Http10
            || content_length.is_some()
            || chunked_count > 1
            || (other_codings && te_lines > 1)
        {
            return Err(HttpError::BadTransferEncoding);
        }
        if other_codings {
            // What is left once a final chunked is taken off, for the client.
            let end = if chunked_last {
                te_value.iter().rposition(|&b| b == b',').unwrap_or(0)
            } else {
                te_value.len()
            };
            transfer_codings = Some(trim(&te_value[..end]));
        }
        if chunked_last {
            BodyFraming::Chunked
        } else {
            // RFC 9112 section 6.3: chunked is not the final coding, so the
            // body runs to the close of the connection.
            BodyFraming::UntilClose
        }
    } else {
        match content_length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    let persistent = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(Some(ResponseHead {
        version,
        status,
        reason,
        headers,
        head_len,
        framing,
        reusable: persistent && framing != BodyFraming::UntilClose,
        has_connection_header,
        transfer_codings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::header_slots;

    fn parse(raw: &[u8], method: Method) -> Result<(u16, BodyFraming, bool), HttpError> {
        let mut slots = header_slots::<64>();
        parse_response(raw, &mut slots, 8192, method).map(|r| {
            let r = r.expect("complete");
            (r.status, r.framing, r.reusable)
        })
    }

    #[test]
    fn content_length_body() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::Get).unwrap(),
            (200, BodyFraming::Length(5), true)
        );
    }

    #[test]
    fn head_response_has_no_body() {
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::Head
            )
            .unwrap()
            .1,
            BodyFraming::None
        );
    }

    #[test]
    fn status_204_and_304_have_no_body() {
        for s in [204, 304, 100, 103] {
            let raw = format!("HTTP/1.1 {s} X\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(
                parse(raw.as_bytes(), Method::Get).unwrap().1,
                BodyFraming::None,
                "{s}"
            );
        }
    }

    #[test]
    fn no_length_means_until_close_and_not_reusable() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n", Method::Get).unwrap(),
            (200, BodyFraming::UntilClose, false)
        );
    }

    #[test]
    fn chunked_response() {
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Get
            )
            .unwrap()
            .1,
            BodyFraming::Chunked
        );
    }

    fn codings(raw: &[u8]) -> Result<(BodyFraming, bool, Option<Vec<u8>>), HttpError> {
        let mut slots = header_slots::<64>();
        parse_response(raw, &mut slots, 8192, Method::Get).map(|r| {
            r.map(|r| {
                (
                    r.framing,
                    r.reusable,
                    r.transfer_codings.map(<[u8]>::to_vec),
                )
            })
            .unwrap()
        })
    }

    #[test]
    fn a_transfer_coding_without_final_chunked_runs_to_close() {
        assert_eq!(
            codings(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap(),
            (BodyFraming::UntilClose, false, Some(b"gzip".to_vec()))
        );
        assert_eq!(
            codings(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap(),
            (
                BodyFraming::UntilClose,
                false,
                Some(b"chunked, gzip".to_vec())
            )
        );
    }

    #[test]
    fn codings_before_a_final_chunked_are_kept_for_the_client() {
        assert_eq!(
            codings(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap(),
            (BodyFraming::Chunked, true, Some(b"gzip".to_vec()))
        );
        assert_eq!(
            codings(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .2,
            None
        );
    }

    #[test]
    fn ambiguous_transfer_codings_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(codings(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chunked_with_length_is_refused() {
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Method::Get
        )
        .is_err());
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Method::Get
        )
        .is_err());
    }

    #[test]
    fn http10_without_keep_alive_is_not_reusable() {
        assert!(
            !parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::Get)
                .unwrap()
                .2
        );
    }

    #[test]
    fn connection_close_is_not_reusable() {
        assert!(
            !parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                Method::Get
            )
            .unwrap()
            .2
        );
    }
}
