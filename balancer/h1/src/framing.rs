//! Message framing (RFC 9112 §6-§7): how long a body is, and the chunked coding.
//!
//! Ambiguous framing is refused rather than guessed: Content-Length together with
//! Transfer-Encoding, several or malformed Content-Length values, a transfer coding other than
//! a single final `chunked`, malformed chunk sizes, and chunk data not followed by CRLF.

use super::head::{list_items, HeaderPos, Known, RequestHead, ResponseHead, Version};
use smallvec::SmallVec;

/// How a body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

/// A framing problem, with the status it earns when it is the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    BadContentLength,
    ContentLengthAndTransferEncoding,
    /// A coding we do not implement (501).
    UnsupportedTransferEncoding,
    /// Transfer-Encoding whose final coding is not chunked, or chunked twice.
    BadTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 message.
    TransferEncodingInHttp10,
    MissingHost,
    DuplicateHost,
    /// An expectation other than 100-continue (417).
    UnsupportedExpect,
    BadConnectionHeader,
}

impl FramingError {
    pub fn status(self) -> u16 {
        match self {
            FramingError::UnsupportedTransferEncoding => 501,
            FramingError::UnsupportedExpect => 417,
            _ => 400,
        }
    }
    pub fn reason(self) -> &'static str {
        match self {
            FramingError::BadContentLength => "bad-content-length",
            FramingError::ContentLengthAndTransferEncoding => {
                "content-length-and-transfer-encoding"
            }
            FramingError::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
            FramingError::BadTransferEncoding => "bad-transfer-encoding",
            FramingError::TransferEncodingInHttp10 => "transfer-encoding-in-http10",
            FramingError::MissingHost => "missing-host",
            FramingError::DuplicateHost => "duplicate-host",
            FramingError::UnsupportedExpect => "unsupported-expect",
            FramingError::BadConnectionHeader => "bad-connection-header",
        }
    }
}

/// Header names a proxy never forwards (RFC 9110 §7.6.1), plus the framing fields pier writes
/// itself. (Parsed HTTP/1 heads carry this as [`Known::is_hop_by_hop`] on each field.)
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Known::of(name).is_hop_by_hop()
}

/// What the framing headers of a message say, shared by requests and responses.
#[derive(Debug, Default)]
pub struct Connection {
    pub close: bool,
    pub keep_alive: bool,
    /// Other tokens: header names the sender marked hop-by-hop.
    pub listed: SmallVec<[HeaderPos; 4]>,
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

/// What a head's fields say about its framing, its connection, its host and an expectation.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    chunked: bool,
    conn: Connection,
    host: Option<HeaderPos>,
    duplicate_host: bool,
    /// An `Expect: 100-continue` was seen.
    expect_continue: bool,
    /// Some other expectation was seen.
    bad_expect: bool,
}

/// Reads Content-Length / Transfer-Encoding / Connection (and Host and Expect, which only
/// requests use) of a head, in one pass over its tagged fields.
fn framing(version: Version, headers: &[HeaderPos], buf: &[u8]) -> Result<Fields, FramingError> {
    let value = |h: &HeaderPos| h.value_in(buf);
    let mut f = Fields::default();
    let mut te_seen = false;
    for pos in headers {
        match pos.kind {
            Known::ContentLength => {
                if f.length.is_some() {
                    return Err(FramingError::BadContentLength);
                }
                let v = parse_content_length(value(pos)).ok_or(FramingError::BadContentLength)?;
                f.length = Some(v);
            }
            Known::TransferEncoding => {
                te_seen = true;
                for coding in list_items(value(pos)) {
                    if f.chunked {
                        // Anything after chunked (including a second chunked) is not a final
                        // chunked.
                        return Err(FramingError::BadTransferEncoding);
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        f.chunked = true;
                    } else if super::head::is_token(coding) {
                        return Err(FramingError::UnsupportedTransferEncoding);
                    } else {
                        return Err(FramingError::BadTransferEncoding);
                    }
                }
            }
            Known::Connection => {
                let v = value(pos);
                for token in list_items(v) {
                    if !super::head::is_token(token) {
                        return Err(FramingError::BadConnectionHeader);
                    }
                    if token.eq_ignore_ascii_case(b"close") {
                        f.conn.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn.keep_alive = true;
                    } else {
                        f.conn.listed.push(token_pos(v, token, pos));
                    }
                }
            }
            Known::Host => {
                f.duplicate_host |= f.host.is_some();
                f.host = Some(*pos);
            }
            Known::Expect => {
                if value(pos).eq_ignore_ascii_case(b"100-continue") {
                    f.expect_continue = true;
                } else {
                    f.bad_expect = true;
                }
            }
            _ => {}
        }
    }
    if te_seen {
        if version == Version::Http10 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if f.length.is_some() {
            return Err(FramingError::ContentLengthAndTransferEncoding);
        }
        if !f.chunked {
            return Err(FramingError::BadTransferEncoding);
        }
    }
    Ok(f)
}

/// Position of `token` (a sub-slice of `value`) as a header-name-sized range in the head buffer.
fn token_pos(value: &[u8], token: &[u8], field: &HeaderPos) -> HeaderPos {
    let offset = token.as_ptr() as usize - value.as_ptr() as usize;
    field.sub_value(offset, token.len())
}

/// What a request head says about its body, its connection and its host.
#[derive(Debug)]
pub struct RequestFraming {
    pub body: BodyKind,
    /// Content-Length as sent (so an explicit `Content-Length: 0` is forwarded as such).
    pub length: Option<u64>,
    pub conn: Connection,
    pub expect_continue: bool,
    /// The single Host field, if present.
    pub host: Option<HeaderPos>,
}

impl RequestFraming {
    pub fn of(head: &RequestHead) -> Result<Self, FramingError> {
        let f = framing(head.version, &head.headers, &head.buf)?;
        if f.duplicate_host {
            return Err(FramingError::DuplicateHost);
        }
        if f.bad_expect {
            return Err(FramingError::UnsupportedExpect);
        }
        if f.host.is_none() && head.version == Version::Http11 {
            return Err(FramingError::MissingHost);
        }
        // Expect is defined for HTTP/1.1 only (RFC 9110 §10.1.1).
        let expect_continue = f.expect_continue && head.version == Version::Http11;
        let body = if f.chunked {
            BodyKind::Chunked
        } else {
            match f.length {
                Some(0) | None => BodyKind::None,
                Some(n) => BodyKind::Length(n),
            }
        };
        Ok(RequestFraming {
            body,
            length: f.length,
            conn: f.conn,
            expect_continue,
            host: f.host,
        })
    }

    /// Whether the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.conn.close,
            Version::Http10 => self.conn.keep_alive && !self.conn.close,
        }
    }
}

/// What a response head says about its body (RFC 9112 §6.3), given the request method.
#[derive(Debug)]
pub struct ResponseFraming {
    pub body: BodyKind,
    pub conn: Connection,
    /// Content-Length as sent (kept for HEAD and 304 answers, which carry no body).
    pub length: Option<u64>,
}

impl ResponseFraming {
    pub fn of(head: &ResponseHead, head_request: bool) -> Result<Self, FramingError> {
        let Fields {
            length,
            chunked,
            conn,
            ..
        } = framing(head.version, &head.headers, &head.buf)?;
        let bodiless = head_request
            || (100..200).contains(&head.status)
            || head.status == 204
            || head.status == 304;
        let body = if bodiless {
            BodyKind::None
        } else if chunked {
            BodyKind::Chunked
        } else {
            match length {
                Some(0) => BodyKind::None,
                Some(n) => BodyKind::Length(n),
                None => BodyKind::UntilClose,
            }
        };
        Ok(ResponseFraming { body, conn, length })
    }

    /// Whether the upstream connection may be reused after this response.
    pub fn reusable(&self, version: Version) -> bool {
        let open = match version {
            Version::Http11 => !self.conn.close,
            Version::Http10 => self.conn.keep_alive && !self.conn.close,
        };
        open && self.body != BodyKind::UntilClose
    }
}

/// A chunked-coding problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    BadExtension,
    MissingCrlf,
    BadTrailer,
    TrailersTooLarge,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::BadSize => "bad-chunk-size",
            ChunkError::BadExtension => "bad-chunk-extension",
            ChunkError::MissingCrlf => "bad-chunk-framing",
            ChunkError::BadTrailer => "bad-trailer",
            ChunkError::TrailersTooLarge => "trailers-too-large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerLine,
    TrailerLf,
    Done,
}

/// What one decoding step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes at `input[start..start + len]`.
    Data { start: usize, len: usize },
    /// All of the input was consumed; more is needed.
    NeedMore,
    /// The last chunk and the trailer section were read; trailers are in [`ChunkedDecoder::trailers`].
    Done,
}

const MAX_SIZE_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// An incremental decoder of the chunked coding (RFC 9112 §7.1).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line_len: usize,
    /// Raw trailer field lines (each ending in CRLF), validated.
    trailers: Vec<u8>,
    line_start: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            trailers: Vec::new(),
            line_start: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Trailer field lines, each ending in CRLF (empty when none were sent).
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Consumes from `input`; returns how many bytes were consumed and what they were.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Decoded), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => {
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' if self.digits > 0 => {
                            self.state = State::Ext;
                            i += 1;
                            continue;
                        }
                        b'\r' if self.digits > 0 => {
                            self.state = State::SizeLf;
                            i += 1;
                            continue;
                        }
                        _ => return Err(ChunkError::BadSize),
                    };
                    if self.digits >= 15 {
                        return Err(ChunkError::BadSize);
                    }
                    self.size = self.size * 16 + u64::from(d);
                    self.digits += 1;
                    i += 1;
                }
                State::Ext => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::BadExtension);
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkError::BadExtension),
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    i += 1;
                    self.digits = 0;
                    self.line_len = 0;
                    if self.size == 0 {
                        self.state = State::TrailerLine;
                        self.line_start = self.trailers.len();
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((
                        i + take,
                        Decoded::Data {
                            start: i,
                            len: take,
                        },
                    ));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Size;
                    i += 1;
                }
                State::TrailerLine => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else {
                        if self.trailers.len() >= MAX_TRAILERS {
                            return Err(ChunkError::TrailersTooLarge);
                        }
                        self.trailers.push(b);
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    i += 1;
                    let line = &self.trailers[self.line_start..];
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok((i, Decoded::Done));
                    }
                    check_trailer_line(line)?;
                    self.trailers.extend_from_slice(b"\r\n");
                    self.line_start = self.trailers.len();
                    self.state = State::TrailerLine;
                }
                State::Done => return Ok((i, Decoded::Done)),
            }
        }
        if self.state == State::Done {
            return Ok((i, Decoded::Done));
        }
        Ok((i, Decoded::NeedMore))
    }
}

/// A trailer line must be a well-formed field line (same rules as header fields).
fn check_trailer_line(line: &[u8]) -> Result<(), ChunkError> {
    let colon = line
        .iter()
        .position(|&b| !super::head::is_tchar(b))
        .ok_or(ChunkError::BadTrailer)?;
    if colon == 0 || line[colon] != b':' {
        return Err(ChunkError::BadTrailer);
    }
    if line[colon + 1..]
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        Ok(())
    } else {
        Err(ChunkError::BadTrailer)
    }
}

/// Iterates over validated trailer lines as (name, whole line without CRLF).
pub fn trailer_fields(trailers: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    trailers
        .split(|&b| b == b'\n')
        .filter_map(|l| l.strip_suffix(b"\r"))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let colon = l.iter().position(|&b| b == b':').unwrap_or(l.len());
            (&l[..colon], l)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{parse_request, parse_response, HeadLimits};
    use bytes::Bytes;

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 1024,
        max_head: 4096,
        max_headers: 64,
    };

    fn req(raw: &str) -> Result<RequestFraming, FramingError> {
        let (n, p) = parse_request(raw.as_bytes(), &LIMITS).unwrap().unwrap();
        let head = p.into_head(Bytes::copy_from_slice(&raw.as_bytes()[..n]));
        RequestFraming::of(&head)
    }

    #[test]
    fn request_bodies() {
        let f = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyKind::Length(5));
        let f = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyKind::Chunked);
        let f = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyKind::None);
        assert!(f.keep_alive(Version::Http11));
        let f = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!f.keep_alive(Version::Http10));
        let f = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(f.keep_alive(Version::Http10));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use FramingError::*;
        let cases = [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                ContentLengthAndTransferEncoding,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                BadContentLength,
            ),
            ("Content-Length: 5, 5\r\n", BadContentLength),
            ("Content-Length: +5\r\n", BadContentLength),
            ("Content-Length: -1\r\n", BadContentLength),
            ("Content-Length: 0x5\r\n", BadContentLength),
            ("Content-Length: \r\n", BadContentLength),
            ("Content-Length: 99999999999999999999\r\n", BadContentLength),
            ("Transfer-Encoding: gzip\r\n", UnsupportedTransferEncoding),
            ("Transfer-Encoding: chunked, gzip\r\n", BadTransferEncoding),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                BadTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                BadTransferEncoding,
            ),
            ("Transfer-Encoding: \"chunked\"\r\n", BadTransferEncoding),
            ("Transfer-Encoding: \r\n", BadTransferEncoding),
            (
                "Transfer-Encoding: xchunked\r\n",
                UnsupportedTransferEncoding,
            ),
            ("Host: b\r\n", DuplicateHost),
            ("Expect: 200-ok\r\n", UnsupportedExpect),
            ("Connection: a b\r\n", BadConnectionHeader),
        ];
        for (extra, want) in cases {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
            assert_eq!(req(&raw).unwrap_err(), want, "{extra}");
        }
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n").unwrap_err(), MissingHost);
        assert_eq!(
            req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            TransferEncodingInHttp10
        );
    }

    #[test]
    fn connection_tokens_are_collected() {
        let raw =
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n";
        let (n, p) = parse_request(raw.as_bytes(), &LIMITS).unwrap().unwrap();
        let head = p.into_head(Bytes::copy_from_slice(&raw.as_bytes()[..n]));
        let f = RequestFraming::of(&head).unwrap();
        assert_eq!(f.conn.listed.len(), 1);
        assert_eq!(head.value(&f.conn.listed[0]), b"X-Secret");
    }

    #[test]
    fn response_bodies() {
        let parse = |raw: &str, head_req: bool| {
            let (n, p) = parse_response(raw.as_bytes(), &LIMITS).unwrap().unwrap();
            let head = p.into_head(Bytes::copy_from_slice(&raw.as_bytes()[..n]));
            ResponseFraming::of(&head, head_req).map(|f| (f.body, f.reusable(head.version)))
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap(),
            (BodyKind::Length(3), true)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap(),
            (BodyKind::None, true)
        );
        assert_eq!(
            parse(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::None, true)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap(),
            (BodyKind::UntilClose, false)
        );
        assert_eq!(
            parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap(),
            (BodyKind::Length(1), false)
        );
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            let mut pos = 0;
            while pos < piece.len() {
                let (n, ev) = d.step(&piece[pos..])?;
                if let Decoded::Data { start, len } = ev {
                    out.extend_from_slice(&piece[pos + start..pos + start + len]);
                }
                pos += n;
                if ev == Decoded::Done {
                    return Ok((out, d.trailers().to_vec(), true));
                }
            }
        }
        Ok((out, d.trailers().to_vec(), d.is_done()))
    }

    #[test]
    fn chunked_decodes_at_any_split() {
        let input = b"5\r\nhello\r\n1;ext=\"v\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..input.len() {
            let (body, trailers, done) = decode_all(input, split).unwrap();
            assert_eq!(body, b"hello 0123456789", "split {split}");
            assert_eq!(trailers, b"X-T: 1\r\n");
            assert!(done);
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"1;a\x00\r\nx\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailer_fields_iterate() {
        let t = b"X-A: 1\r\nX-B: 2\r\n";
        let names: Vec<&[u8]> = trailer_fields(t).map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"X-A"[..], b"X-B"]);
    }
}
