//! Strict decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 section 7.1).
//!
//! The decoder works on whatever bytes the connection buffer holds and says
//! how many it consumed; an incomplete size line or chunk terminator is left
//! in the buffer until more arrives, so no internal line buffer is needed.
//! Decoded data is handed to the caller either re-chunked (the gateway
//! writes its own framing, never the sender's) or raw.
//!
//! Refused: non-hex or empty sizes, sizes over 16 hex digits or overflowing
//! u64, a missing CRLF after chunk data, bare LF or CR, and chunk extensions
//! or trailer sections over their caps. Trailers are read and dropped, or
//! kept as raw field lines for the caller to filter and pass on
//! ([`ChunkedDecoder::keeping_trailers`]).

use super::headers::push_hex;
use super::HttpError;

/// Longest size line, chunk extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
    Done,
}

/// How decoded data is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// As chunked framing of our own.
    Rechunk,
    /// As plain bytes (the receiver gets a close-delimited or length-delimited body).
    Raw,
    /// Nowhere: only find where the body ends (and check it).
    Discard,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    /// Data bytes decoded so far (for body size limits).
    pub decoded: u64,
    /// The trailer section's field lines (CRLF-terminated), when kept.
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            trailer_bytes: 0,
            decoded: 0,
            trailers: None,
        }
    }

    /// A decoder that keeps the trailer section's field lines, as received
    /// (within the trailer cap), for [`ChunkedDecoder::take_trailers`].
    pub fn keeping_trailers() -> Self {
        ChunkedDecoder {
            trailers: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// The trailer field lines kept so far (empty when there were none or
    /// they were not kept); unchecked beyond the framing rules: the caller
    /// filters them ([`super::headers::forwardable_trailers`]).
    pub fn take_trailers(&mut self) -> Vec<u8> {
        self.trailers
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending to `out`. Returns the bytes consumed;
    /// stops early when it needs more input or the body ended.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        mode: Output,
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size => {
                    let Some(line_end) = find_line(rest, MAX_SIZE_LINE)? else {
                        return Ok(pos);
                    };
                    let size = parse_size_line(&rest[..line_end])?;
                    pos += line_end + 2;
                    self.state = if size == 0 {
                        if mode == Output::Rechunk {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = remaining.min(rest.len() as u64) as usize;
                    match mode {
                        Output::Rechunk => {
                            push_hex(out, take as u64);
                            out.extend_from_slice(b"\r\n");
                            out.extend_from_slice(&rest[..take]);
                            out.extend_from_slice(b"\r\n");
                        }
                        Output::Raw => out.extend_from_slice(&rest[..take]),
                        Output::Discard => {}
                    }
                    self.decoded += take as u64;
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(HttpError::BadChunk);
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadChunk);
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line_end) = find_line(rest, MAX_TRAILERS - self.trailer_bytes)? else {
                        return Ok(pos);
                    };
                    self.trailer_bytes += line_end + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(HttpError::BadChunk);
                    }
                    pos += line_end + 2;
                    if line_end == 0 {
                        self.state = State::Done;
                    } else if rest[..line_end].contains(&0) {
                        return Err(HttpError::BadChunk);
                    } else if let Some(kept) = self.trailers.as_mut() {
                        kept.extend_from_slice(&rest[..line_end + 2]);
                    }
                }
            }
        }
    }
}

/// Scans a chunked body that starts `body`: where it ends (its raw length,
/// `None` while more must arrive) and how many data bytes it holds so far.
pub fn scan_body(body: &[u8]) -> Result<(Option<usize>, u64), HttpError> {
    let mut decoder = ChunkedDecoder::new();
    let used = decoder.decode(body, &mut Vec::new(), Output::Discard)?;
    Ok((decoder.is_done().then_some(used), decoder.decoded))
}

/// Finds the CRLF ending a line; errors on a bare LF or CR, or a line over `max`.
fn find_line(rest: &[u8], max: usize) -> Result<Option<usize>, HttpError> {
    match memchr::memchr(b'\n', rest) {
        Some(lf) => {
            if lf == 0 || rest[lf - 1] != b'\r' || lf > max {
                return Err(HttpError::BadChunk);
            }
            if memchr::memchr(b'\r', &rest[..lf - 1]).is_some() {
                return Err(HttpError::BadChunk);
            }
            Ok(Some(lf - 1))
        }
        None => {
            if rest.len() > max {
                return Err(HttpError::BadChunk);
            }
            Ok(None)
        }
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then optional whitespace and `;ext`.
fn parse_size_line(line: &[u8]) -> Result<u64, HttpError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 || digits_end > 16 {
        return Err(HttpError::BadChunk);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits_end] {
        let digit = (b as char).to_digit(16).ok_or(HttpError::BadChunk)? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(HttpError::BadChunk)?;
    }
    let ext = &line[digits_end..];
    let ext_start = ext
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(ext.len());
    let ext = &ext[ext_start..];
    if !ext.is_empty() {
        if ext[0] != b';' {
            return Err(HttpError::BadChunk);
        }
        if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::BadChunk);
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_kept_only_when_asked_for() {
        let body = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nGrpc-Status: 0\r\n\r\n";
        let mut keeping = ChunkedDecoder::keeping_trailers();
        let mut out = Vec::new();
        // Fed a byte at a time: a trailer line split across reads is kept whole.
        let mut buf = Vec::new();
        for b in body {
            buf.push(*b);
            let used = keeping.decode(&buf, &mut out, Output::Raw).unwrap();
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        assert!(keeping.is_done());
        assert_eq!(out, b"abc");
        assert_eq!(keeping.take_trailers(), b"X-Sum: 1\r\nGrpc-Status: 0\r\n");
        let mut dropping = ChunkedDecoder::new();
        dropping.decode(body, &mut Vec::new(), Output::Raw).unwrap();
        assert!(dropping.take_trailers().is_empty());
    }

    fn decode_all(input: &[u8], mode: Output) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let used = d.decode(input, &mut out, mode)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn decodes_and_rechunks() {
        let (out, used, done) = decode_all(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT",
            Output::Rechunk,
        )
        .unwrap();
        assert_eq!(out, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        assert_eq!(used, 26, "stops at the end of the body, before NEXT");
        assert!(done);
    }

    #[test]
    fn decodes_raw() {
        let (out, _, done) = decode_all(b"5\r\nhello\r\n0\r\n\r\n", Output::Raw).unwrap();
        assert_eq!(out, b"hello");
        assert!(done);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let input = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut buffered = Vec::new();
        for &b in input.iter() {
            buffered.push(b);
            let used = d.decode(&buffered, &mut out, Output::Raw).unwrap();
            buffered.drain(..used);
        }
        assert!(d.is_done());
        assert_eq!(out, b"abc0123456789abcdef");
        assert_eq!(d.decoded, 19);
    }

    #[test]
    fn empty_size_is_refused() {
        assert_eq!(
            decode_all(b"\r\nhello\r\n", Output::Raw).unwrap_err(),
            HttpError::BadChunk
        );
    }

    #[test]
    fn non_hex_size_is_refused() {
        assert!(decode_all(b"5g\r\nhello\r\n", Output::Raw).is_err());
        assert!(decode_all(b"-5\r\nhello\r\n", Output::Raw).is_err());
        assert!(decode_all(b"0x5\r\nhello\r\n", Output::Raw).is_err());
    }

    #[test]
    fn oversized_chunk_size_is_refused() {
        assert!(decode_all(b"1ffffffffffffffff\r\n", Output::Raw).is_err());
        assert!(decode_all(b"00000000000000001\r\n", Output::Raw).is_err());
    }

    #[test]
    fn missing_crlf_after_data_is_refused() {
        assert!(decode_all(b"5\r\nhelloX\r\n0\r\n\r\n", Output::Raw).is_err());
    }

    #[test]
    fn bare_lf_in_size_line_is_refused() {
        assert!(decode_all(b"5\nhello\r\n0\r\n\r\n", Output::Raw).is_err());
    }

    #[test]
    fn huge_extension_is_refused() {
        let mut input = b"5;".to_vec();
        input.extend(std::iter::repeat_n(b'a', 5000));
        assert!(decode_all(&input, Output::Raw).is_err());
    }

    #[test]
    fn huge_trailers_are_refused() {
        let mut input = b"0\r\n".to_vec();
        for _ in 0..2000 {
            input.extend(b"X-Trailer: 0123456789\r\n");
        }
        input.extend(b"\r\n");
        assert!(decode_all(&input, Output::Raw).is_err());
    }
}
