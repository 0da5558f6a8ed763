//! A minimal, incremental HTTP/1.1 response parser: status line, the three headers that
//! frame a body (`Content-Length`, `Transfer-Encoding`, `Connection`), an optional header
//! checked for routing, and body skipping without copying. It never panics on what a server
//! sends: anything it cannot frame is a [`ParseError`].

use memchr::memchr;

/// Largest response head accepted; a larger one is a protocol error, not a reason to grow.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4096;

/// A response that could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed status line")]
    StatusLine,
    #[error("malformed header line")]
    HeaderLine,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("response head larger than 64 KiB")]
    HeadTooLarge,
}

/// What one call to [`ResponseParser::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing can be consumed until more bytes arrive.
    NeedMore,
    /// Bytes were consumed; the response is not complete yet.
    Consumed(usize),
    /// A response completed after consuming this many bytes.
    Done { consumed: usize, response: Response },
}

/// The facts about one completed response that the statistics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
    /// With a routing check: whether the checked header carried the expected value.
    pub matched: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
}

/// Parser state for one connection; responses are parsed one after the other.
#[derive(Debug, Clone)]
pub struct ResponseParser {
    state: State,
    current: Response,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    pub fn new() -> Self {
        ResponseParser {
            state: State::Head,
            current: Response {
                status: 0,
                close: false,
                matched: None,
            },
        }
    }

    /// Whether the parser is between responses (no partial response consumed).
    pub fn is_idle(&self) -> bool {
        self.state == State::Head
    }

    /// Called on end of stream: a close-delimited body completes here, anything else that
    /// was partially received is lost.
    pub fn finish_on_eof(&mut self) -> Option<Response> {
        if self.state == State::UntilClose {
            self.state = State::Head;
            Some(self.current)
        } else {
            None
        }
    }

    /// Consumes what it can of `buf`, the unconsumed bytes received so far.
    ///
    /// `head_request` says the request being answered was HEAD (no body follows);
    /// `expect` is the routing check: header name and the value it must have.
    #[inline]
    pub fn advance(
        &mut self,
        buf: &[u8],
        head_request: bool,
        expect: Option<(&[u8], &[u8])>,
    ) -> Result<Step, ParseError> {
        match self.state {
            State::Head => self.head(buf, head_request, expect),
            State::Fixed(rem) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = rem.min(buf.len() as u64);
                if take == rem {
                    self.state = State::Head;
                    Ok(Step::Done {
                        consumed: take as usize,
                        response: self.current,
                    })
                } else {
                    self.state = State::Fixed(rem - take);
                    Ok(Step::Consumed(take as usize))
                }
            }
            State::UntilClose => {
                if buf.is_empty() {
                    Ok(Step::NeedMore)
                } else {
                    Ok(Step::Consumed(buf.len()))
                }
            }
            State::ChunkSize => {
                let Some(nl) = memchr(b'\n', buf) else {
                    return need_more(buf, MAX_CHUNK_LINE, ParseError::ChunkSize);
                };
                let size = parse_chunk_size(&buf[..nl])?;
                self.state = if size == 0 {
                    State::Trailer
                } else {
                    State::ChunkData(size)
                };
                Ok(Step::Consumed(nl + 1))
            }
            State::ChunkData(rem) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = rem.min(buf.len() as u64);
                self.state = if take == rem {
                    State::ChunkDataEnd
                } else {
                    State::ChunkData(rem - take)
                };
                Ok(Step::Consumed(take as usize))
            }
            State::ChunkDataEnd => {
                let Some(nl) = memchr(b'\n', buf) else {
                    return need_more(buf, 2, ParseError::ChunkSize);
                };
                if !trim_cr(&buf[..nl]).is_empty() {
                    return Err(ParseError::ChunkSize);
                }
                self.state = State::ChunkSize;
                Ok(Step::Consumed(nl + 1))
            }
            State::Trailer => {
                let Some(nl) = memchr(b'\n', buf) else {
                    return need_more(buf, MAX_HEAD, ParseError::HeadTooLarge);
                };
                if trim_cr(&buf[..nl]).is_empty() {
                    self.state = State::Head;
                    Ok(Step::Done {
                        consumed: nl + 1,
                        response: self.current,
                    })
                } else {
                    Ok(Step::Consumed(nl + 1))
                }
            }
        }
    }

    fn head(
        &mut self,
        buf: &[u8],
        head_request: bool,
        expect: Option<(&[u8], &[u8])>,
    ) -> Result<Step, ParseError> {
        // One vectorised scan finds the line ends, lazily: `buf` may hold many pipelined
        // responses, and only this head's lines are visited.
        let mut ends = memchr::memchr_iter(b'\n', buf);
        let Some(nl) = ends.next() else {
            return need_more(buf, MAX_HEAD, ParseError::HeadTooLarge);
        };
        let line = trim_cr(&buf[..nl]);
        // "HTTP/1.x NNN" is the least a status line must contain.
        if line.len() < 12 || &line[..7] != b"HTTP/1." || line[8] != b' ' {
            return Err(ParseError::StatusLine);
        }
        let d = &line[9..12];
        if !d.iter().all(u8::is_ascii_digit) || (line.len() > 12 && line[12] != b' ') {
            return Err(ParseError::StatusLine);
        }
        let status =
            u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
        let mut close = line[7] == b'0';
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut matched = expect.map(|_| false);
        let mut pos = nl + 1;
        loop {
            let Some(nl) = ends.next() else {
                return need_more(buf, MAX_HEAD, ParseError::HeadTooLarge);
            };
            let line = trim_cr(&buf[pos..nl]);
            pos = nl + 1;
            if line.is_empty() {
                break;
            }
            // Field names are short: a plain loop beats a vectorised search set up per line.
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(ParseError::HeaderLine)?;
            let name = &line[..colon];
            let value = || trim(&line[colon + 1..]);
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let v = parse_decimal(value()).ok_or(ParseError::ContentLength)?;
                    // Two different lengths make the framing ambiguous (RFC 9112 §6.3).
                    if length.is_some_and(|l| l != v) {
                        return Err(ParseError::ContentLength);
                    }
                    length = Some(v);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    let value = value();
                    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
                    chunked = trim(last).eq_ignore_ascii_case(b"chunked");
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in value().split(|&b| b == b',') {
                        let token = trim(token);
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            close = false;
                        }
                    }
                }
                _ => {}
            }
            if let Some((want_name, want_value)) = expect {
                if name.eq_ignore_ascii_case(want_name) {
                    matched = Some(value() == want_value);
                }
            }
        }
        if (100..200).contains(&status) && status != 101 {
            // Interim response (100 Continue, 103 Early Hints): the real one follows.
            return Ok(Step::Consumed(pos));
        }
        self.current = Response {
            status,
            close,
            matched,
        };
        if head_request || status == 204 || status == 304 || status == 101 {
            return Ok(Step::Done {
                consumed: pos,
                response: self.current,
            });
        }
        if chunked {
            self.state = State::ChunkSize;
            return Ok(Step::Consumed(pos));
        }
        match length {
            Some(0) => Ok(Step::Done {
                consumed: pos,
                response: self.current,
            }),
            Some(n) => {
                self.state = State::Fixed(n);
                Ok(Step::Consumed(pos))
            }
            None => {
                self.current.close = true;
                self.state = State::UntilClose;
                Ok(Step::Consumed(pos))
            }
        }
    }
}

fn need_more(buf: &[u8], limit: usize, err: ParseError) -> Result<Step, ParseError> {
    if buf.len() > limit {
        Err(err)
    } else {
        Ok(Step::NeedMore)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let line = trim_cr(line);
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let hex = &line[..end];
    if hex.is_empty() || hex.len() > 15 {
        return Err(ParseError::ChunkSize);
    }
    hex.iter().try_fold(0u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(ParseError::ChunkSize),
        };
        Ok(acc * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, as a socket might deliver it.
    fn parse_all(input: &[u8], piece: usize, expect: Option<(&[u8], &[u8])>) -> Vec<Response> {
        let mut p = ResponseParser::new();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut start = 0;
        for chunk in input.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                match p.advance(&buf[start..], false, expect).unwrap() {
                    Step::NeedMore => break,
                    Step::Consumed(n) => start += n,
                    Step::Done { consumed, response } => {
                        start += consumed;
                        out.push(response);
                    }
                }
            }
        }
        if let Some(r) = p.finish_on_eof() {
            out.push(r);
        }
        out
    }

    const MIXED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Backend: b1\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 503 Busy\r\n\r\nuntil close";

    #[test]
    fn frames_every_body_kind_in_any_split() {
        for piece in [1, 2, 3, 7, 64, MIXED.len()] {
            let r = parse_all(MIXED, piece, None);
            let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
            assert_eq!(statuses, [200, 404, 204, 503], "piece {piece}");
            assert!(r[3].close);
            assert!(!r[0].close);
        }
    }

    #[test]
    fn checks_routing_header() {
        let input = b"HTTP/1.1 200 OK\r\nx-backend: b1\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let r = parse_all(input, 5, Some((b"X-Backend", b"b1")));
        assert_eq!(r[0].matched, Some(true));
        assert_eq!(r[1].matched, Some(false));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let cases: [&[u8]; 6] = [
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for c in cases {
            let mut p = ResponseParser::new();
            let mut start = 0;
            let res = loop {
                match p.advance(&c[start..], false, None) {
                    Ok(Step::Consumed(n)) => start += n,
                    other => break other,
                }
            };
            assert!(res.is_err(), "{:?}", String::from_utf8_lossy(c));
        }
        let mut p = ResponseParser::new();
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(p.advance(&huge, false, None), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn head_response_has_no_body() {
        let mut p = ResponseParser::new();
        let r = p
            .advance(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                true,
                None,
            )
            .unwrap();
        assert!(matches!(r, Step::Done { consumed: 40, .. }));
    }
}
