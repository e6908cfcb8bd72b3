//! The OpenAI-compatible request body (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`), and nothing more of it than the
//! gateway needs: the top-level members are located, not rebuilt, so a
//! rewrite (the provider's model name, usage asked for on a stream)
//! changes those bytes and passes every other byte through as the client
//! sent it.
//!
//! A body with a top-level member twice is refused: a provider might read
//! the copy the gateway did not (`{"model":"cheap","model":"dear"}`).

use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::AiError;

/// What the gateway reads of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// The model the client asked for.
    pub model: String,
    /// Where the `model` value sits in the body.
    model_span: Range<usize>,
    pub stream: bool,
    /// `max_tokens`, or `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// The client asked for usage in the stream's last chunk.
    pub include_usage: bool,
    stream_options: Option<Range<usize>>,
    /// Where the object's closing brace is.
    end: usize,
}

/// The top-level members, each with its value's bytes.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(String, &'de RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!("`{name}` twice")));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

/// Reads the fields the gateway needs; `model` is required.
pub fn read(body: &[u8]) -> Result<Fields, AiError> {
    let members: Members<'_> =
        serde_json::from_slice(body).map_err(|e| AiError::NotJson(e.to_string()))?;
    let find = |name: &str| members.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let model_raw = find("model").ok_or(AiError::Field("model"))?;
    let model: String =
        serde_json::from_str(model_raw.get()).map_err(|_| AiError::Field("model"))?;
    if model.is_empty() {
        return Err(AiError::Field("model"));
    }
    let typed = |name: &'static str| -> Result<Option<serde_json::Value>, AiError> {
        match find(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                .map(|v| (!v.is_null()).then_some(v))
                .map_err(|_| AiError::Field(name)),
        }
    };
    let stream = match typed("stream")? {
        None => false,
        Some(v) => v.as_bool().ok_or(AiError::Field("stream"))?,
    };
    let max_tokens = match typed("max_tokens")?.or(typed("max_completion_tokens")?) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(AiError::Field("max_tokens"))?),
    };
    let temperature = match typed("temperature")? {
        None => None,
        Some(v) => Some(v.as_f64().ok_or(AiError::Field("temperature"))?),
    };
    let options = typed("stream_options")?;
    let include_usage = match &options {
        None => false,
        Some(o) => o
            .as_object()
            .ok_or(AiError::Field("stream_options"))?
            .get("include_usage")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    };
    let end = body
        .iter()
        .rposition(|&b| b == b'}')
        .ok_or(AiError::NotJson("no closing brace".into()))?;
    Ok(Fields {
        model,
        model_span: span_of(body, model_raw),
        stream,
        max_tokens,
        temperature,
        include_usage,
        stream_options: find("stream_options").map(|raw| span_of(body, raw)),
        end,
    })
}

/// The body with `model` in place of the client's (the provider's name
/// for it); every other byte as it was.
pub fn with_model(body: &[u8], fields: &Fields, model: &str) -> Vec<u8> {
    splice(body, vec![model_edit(fields, model)])
}

/// What an OpenAI-compatible provider is sent: [`with_model`] and
/// [`with_usage`] in one pass over the body, from the one reading of it.
pub fn for_provider(body: &[u8], fields: &Fields, model: &str) -> Vec<u8> {
    let mut edits = vec![model_edit(fields, model)];
    edits.extend(usage_edit(body, fields));
    splice(body, edits)
}

fn model_edit(fields: &Fields, model: &str) -> (Range<usize>, Vec<u8>) {
    let value = serde_json::to_vec(model).expect("a string serialises");
    (fields.model_span.clone(), value)
}

/// For a streamed request: the body asking for usage in the last chunk
/// (`stream_options.include_usage`), so the gateway can count the tokens;
/// unchanged when not streamed or already asked. [`Fields::include_usage`]
/// says whether the client wants that chunk passed on.
pub fn with_usage(body: &[u8], fields: &Fields) -> Vec<u8> {
    splice(body, usage_edit(body, fields).into_iter().collect())
}

fn usage_edit(body: &[u8], fields: &Fields) -> Option<(Range<usize>, Vec<u8>)> {
    if !fields.stream || fields.include_usage {
        return None;
    }
    Some(match &fields.stream_options {
        Some(span) => {
            let mut options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&body[span.clone()]).unwrap_or_default();
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let value = serde_json::to_vec(&options).expect("a map serialises");
            (span.clone(), value)
        }
        None => (
            fields.end..fields.end,
            br#","stream_options":{"include_usage":true}"#.to_vec(),
        ),
    })
}

/// The body with each span replaced (spans do not overlap).
fn splice(body: &[u8], mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    edits.sort_by_key(|(span, _)| span.start);
    let extra: usize = edits.iter().map(|(_, with)| with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (span, with) in edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(&with);
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// Members that do not change what a provider answers: left out of the
/// completion cache's key.
const NOT_IN_KEY: [&str; 3] = ["stream", "stream_options", "user"];

/// The request in one spelling, for the completion cache's key: members
/// in key order at every depth, no whitespace, without those that do not
/// change the answer (`stream`, `stream_options`, `user`). Two requests
/// that differ only in member order or spacing have the same form.
pub fn canonical(body: &[u8]) -> Result<Vec<u8>, AiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AiError::NotJson(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or(AiError::NotJson("not an object".into()))?;
    for name in NOT_IN_KEY {
        object.remove(name);
    }
    // serde_json's maps keep their keys sorted.
    Ok(serde_json::to_vec(&value).expect("a value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_replaced_and_nothing_else_moves() {
        let body = br#"{ "messages": [{"role":"user","content":"hi \"model\": x"}],
            "model" : "gpt-4o",   "temperature": 0, "extra": {"model": "inner"} }"#;
        let f = read(body).unwrap();
        assert_eq!(f.model, "gpt-4o");
        assert_eq!(f.temperature, Some(0.0));
        assert!(!f.stream);
        let out = with_model(body, &f, "llama3");
        let expected = String::from_utf8_lossy(body).replace("\"gpt-4o\"", "\"llama3\"");
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn a_member_twice_or_a_bad_type_is_refused() {
        assert!(matches!(
            read(br#"{"model":"a","model":"b"}"#),
            Err(AiError::NotJson(_))
        ));
        assert_eq!(read(br#"{"stream":true}"#), Err(AiError::Field("model")));
        assert_eq!(read(br#"{"model":7}"#), Err(AiError::Field("model")));
        assert_eq!(
            read(br#"{"model":"m","stream":"yes"}"#),
            Err(AiError::Field("stream"))
        );
        assert_eq!(
            read(br#"{"model":"m","max_tokens":-1}"#),
            Err(AiError::Field("max_tokens"))
        );
        assert!(read(b"[1,2]").is_err());
        assert!(read(b"{\"model\":\"m\"").is_err());
    }

    #[test]
    fn usage_is_asked_for_on_streams() {
        let body = br#"{"model":"m","stream":true}"#;
        let f = read(body).unwrap();
        assert!(f.stream && !f.include_usage);
        let out = with_usage(body, &f);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert!(read(&out).unwrap().include_usage);
        // Other stream options are kept.
        let body = br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#;
        let out = with_usage(body, &read(body).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["x"], 1);
        assert_eq!(v["stream_options"]["include_usage"], true);
        // Not streamed, or already asked: unchanged.
        let body = br#"{"model":"m"}"#;
        assert_eq!(with_usage(body, &read(body).unwrap()), body);
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let f = read(body).unwrap();
        assert!(f.include_usage);
        assert_eq!(with_usage(body, &f), body);
    }

    #[test]
    fn one_pass_for_a_provider_is_both_rewrites() {
        for body in [
            &br#"{"model":"m","stream":true,"messages":[]}"#[..],
            br#"{"stream":true,"stream_options":{"x":1},"model":"m"}"#,
            br#"{"messages":[],"model":"m"}"#,
        ] {
            let f = read(body).unwrap();
            let two = with_model(body, &f, "provider-m");
            let two = with_usage(&two, &read(&two).unwrap());
            assert_eq!(for_provider(body, &f, "provider-m"), two);
        }
    }

    #[test]
    fn the_canonical_form_ignores_order_spacing_and_stream() {
        let a = canonical(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0,"stream":true}"#,
        )
        .unwrap();
        let b = canonical(
            br#"{ "temperature" : 0,
                  "messages":[{"content":"x","role":"user"}], "model":"m", "user": "u1" }"#,
        )
        .unwrap();
        assert_eq!(a, b);
        let c = canonical(
            br#"{"model":"m","messages":[{"role":"user","content":"y"}],"temperature":0}"#,
        )
        .unwrap();
        assert_ne!(a, c);
    }
}
