//! Server-Sent Events (the HTML standard's `text/event-stream`) as a
//! provider streams them: bytes in, whole events out as soon as each is
//! complete, so each can be relayed at once; and the token usage a stream
//! reports (OpenAI-compatible: a last chunk with `usage`; Anthropic:
//! `message_start` and `message_delta`).

/// Splits a stream of bytes into events.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

/// One event, with the bytes it came as (its blank line included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub raw: Vec<u8>,
    /// Its `event:` field, if any.
    pub name: Option<String>,
    /// Its `data:` lines, joined by `\n`.
    pub data: String,
}

/// Largest event held while it is incomplete; a provider that sends more
/// without a blank line is broken.
pub const MAX_EVENT: usize = 1 << 20;

impl Framer {
    /// The events `bytes` completes; `Err` when one outgrows [`MAX_EVENT`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, usize> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(end) = event_end(&self.buf[start..]) {
            events.push(parse(&self.buf[start..start + end]));
            start += end;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_EVENT {
            return Err(self.buf.len());
        }
        Ok(events)
    }

    /// Bytes of an event not complete yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The length of the first whole event in `buf` (through its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            // A lone CR ends a line too, unless the LF may still come.
            b'\r' if i + 1 < buf.len() => 1,
            b'\r' => return None,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start && line_start > 0 {
            return Some(i + eol);
        }
        // A blank first line (stray line ending) ends nothing.
        if i == line_start {
            i += eol;
            line_start = i;
            continue;
        }
        i += eol;
        line_start = i;
    }
    None
}

fn parse(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    Event {
        raw: raw.to_vec(),
        name,
        data: data.join("\n"),
    }
}

/// Tokens a response used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// The usage an OpenAI-compatible event or response body reports.
pub fn usage(data: &str) -> Option<Usage> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    let u = v.get("usage")?;
    Some(Usage {
        prompt: u.get("prompt_tokens")?.as_u64()?,
        completion: u
            .get("completion_tokens")
            .and_then(|c| c.as_u64())
            .unwrap_or(0),
    })
}

/// The usage chunk the gateway asked for and the client did not: no
/// choices, only `usage`. It is not passed on.
pub fn is_usage_only(data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| {
        v.get("usage").is_some_and(|u| !u.is_null())
            && v.get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let stream = b"data: {\"a\":1}\n\nevent: ping\ndata: x\r\n\r\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut f = Framer::default();
            let mut events = f.push(&stream[..cut]).unwrap();
            events.extend(f.push(&stream[cut..]).unwrap());
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(
                data,
                ["{\"a\":1}", "x", "line1\nline2", "[DONE]"],
                "cut at {cut}"
            );
            assert_eq!(events[1].name.as_deref(), Some("ping"));
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
            assert_eq!(raw, stream, "relayed byte for byte");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn an_event_that_never_ends_is_refused() {
        let mut f = Framer::default();
        assert!(f.push(&vec![b'x'; MAX_EVENT]).is_ok());
        assert!(f.push(b"xx").is_err());
    }

    #[test]
    fn usage_is_read_and_the_usage_only_chunk_recognised() {
        let last = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
        assert_eq!(
            usage(last),
            Some(Usage {
                prompt: 9,
                completion: 12
            })
        );
        assert!(is_usage_only(last));
        let delta = r#"{"id":"c","choices":[{"delta":{"content":"hi"}}],"usage":null}"#;
        assert!(!is_usage_only(delta));
        assert_eq!(usage(delta), None);
        assert!(!is_usage_only("[DONE]"));
    }
}
