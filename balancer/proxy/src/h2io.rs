//! Message bodies of h2 streams as byte streams, so the HTTP/1.1 relay code moves them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Abort;
use crate::relay::{relay_body, write_last_chunk, OutCoding, RelayError, RelayLimits};
use pier_h1::framing::BodyKind;

/// Largest piece of a response body handed to `h2` at once.
const MAX_PIECE: usize = 64 * 1024;

/// A request body received on an h2 stream. Flow-control window is given back as bytes are
/// taken, so the client can send at most a window ahead of the backend.
pub struct RecvBody {
    inner: h2::RecvStream,
    pending: Bytes,
}

impl RecvBody {
    pub fn new(inner: h2::RecvStream, first: Bytes) -> Self {
        RecvBody {
            inner,
            pending: first,
        }
    }

    /// The stream underneath (read from directly before any byte was taken through this).
    pub fn inner(&mut self) -> &mut h2::RecvStream {
        &mut self.inner
    }

    /// Whether the client ended the stream (no more DATA will come).
    pub fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    /// The trailers that ended the body, once it has been read to its end (`None`: there were
    /// none, or the stream broke).
    pub async fn trailers(&mut self) -> Option<http::HeaderMap> {
        trailers(&mut self.inner).await.ok().flatten()
    }

    /// Reads up to `limit` bytes of body while they come; returns them and whether the body
    /// ended. Used to send small bodies with the head in one write and a `Content-Length`.
    pub async fn read_upto(inner: &mut h2::RecvStream, limit: usize) -> io::Result<(Bytes, bool)> {
        let mut got = bytes::BytesMut::new();
        loop {
            if inner.is_end_stream() {
                return Ok((got.freeze(), true));
            }
            if got.len() >= limit {
                return Ok((got.freeze(), false));
            }
            match std::future::poll_fn(|cx| inner.poll_data(cx)).await {
                None => return Ok((got.freeze(), true)),
                Some(Ok(data)) => {
                    let _ = inner.flow_control().release_capacity(data.len());
                    if got.is_empty() && data.len() >= limit {
                        return Ok((data, inner.is_end_stream()));
                    }
                    got.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }
}

impl AsyncRead for RecvBody {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(this.inner.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = this.inner.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

/// A response body sent on an h2 stream, written as bytes; shutting it down ends the stream.
pub struct SendBody {
    inner: h2::SendStream<Bytes>,
    ended: bool,
}

impl SendBody {
    pub fn new(inner: h2::SendStream<Bytes>) -> Self {
        SendBody {
            inner,
            ended: false,
        }
    }

    /// Sends a whole (small) body in one frame that ends the stream. `h2` buffers what the
    /// client's window does not take yet.
    pub fn send_last(&mut self, body: Bytes) -> Result<(), h2::Error> {
        self.ended = true;
        self.inner.send_data(body, true)
    }

    /// Ends the stream (once): with a trailers frame made of HTTP/1.1 trailer lines (see
    /// [`trailers_from_lines`]), or with an empty DATA frame when there are none.
    pub fn end(&mut self, trailer_lines: &[u8]) -> Result<(), h2::Error> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let trailers = trailers_from_lines(trailer_lines);
        if trailers.is_empty() {
            self.inner.send_data(Bytes::new(), true)
        } else {
            self.inner.send_trailers(trailers)
        }
    }
}

/// The trailers that ended a stream's body, once the body has been read to its end.
pub async fn trailers(stream: &mut h2::RecvStream) -> Result<Option<http::HeaderMap>, h2::Error> {
    std::future::poll_fn(|cx| stream.poll_trailers(cx)).await
}

/// Relays an HTTP/2 body, to its end, to an HTTP/1.1 peer as chunks, and ends it with the
/// stream's trailers in the last chunk.
pub async fn relay_chunked<W: AsyncWrite + Unpin>(
    src: &mut RecvBody,
    buf: &mut BytesMut,
    dst: &mut W,
    limits: RelayLimits,
    scratch: &mut Vec<u8>,
) -> Result<u64, RelayError> {
    let kind = BodyKind::UntilClose;
    let n = relay_body(src, buf, dst, kind, OutCoding::ChunkedOpen, limits, scratch).await?;
    let trailers = tokio::time::timeout(limits.read_idle, src.trailers())
        .await
        .map_err(|_| RelayError::SrcTimeout)?;
    write_last_chunk(dst, trailers.as_ref(), limits.write_idle, scratch).await?;
    Ok(n)
}

/// HTTP/1.1 trailer lines (`name: value` CRLF, already checked and filtered by the chunked
/// decoder and the relay) as HTTP/2 trailers: names lower-cased (RFC 9113 §8.2.2), values
/// without surrounding whitespace; a line `http` refuses is left out.
pub fn trailers_from_lines(lines: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, line) in pier_h1::framing::trailer_fields(lines) {
        let value = line[name.len()..]
            .strip_prefix(b":")
            .unwrap_or_default()
            .trim_ascii();
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncWrite for SendBody {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut cap = this.inner.capacity();
        if cap == 0 {
            this.inner.reserve_capacity(buf.len().min(MAX_PIECE));
            cap = loop {
                match ready!(this.inner.poll_capacity(cx)) {
                    None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                    Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                    Some(Ok(0)) => continue,
                    Some(Ok(n)) => break n,
                }
            };
        }
        let n = cap.min(buf.len());
        this.inner
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().end(&[]).map_err(h2_io))
    }
}

/// Moves one HTTP/2 message body from a stream that receives to one that sends, trailers
/// included, at the pace the receiving end allows (capacity is reserved before each piece and
/// window given back once it is sent). Returns the body bytes moved, or why it stopped.
pub async fn pump(
    src: &mut h2::RecvStream,
    dst: &mut h2::SendStream<Bytes>,
    idle: std::time::Duration,
) -> Result<u64, Abort> {
    use std::future::poll_fn;
    use tokio::time::timeout;
    let mut total = 0u64;
    loop {
        let next = match timeout(idle, poll_fn(|cx| src.poll_data(cx))).await {
            Err(_) => return Err(Abort::IdleTimeout),
            Ok(n) => n,
        };
        let Some(data) = next else { break };
        let mut data = data.map_err(|_| Abort::ReadReset)?;
        let n = data.len();
        while !data.is_empty() {
            dst.reserve_capacity(data.len().min(MAX_PIECE));
            let cap = match timeout(idle, poll_fn(|cx| dst.poll_capacity(cx))).await {
                Err(_) => return Err(Abort::IdleTimeout),
                Ok(None) | Ok(Some(Err(_))) => return Err(Abort::WriteReset),
                Ok(Some(Ok(c))) => c,
            };
            if cap == 0 {
                continue;
            }
            let piece = data.split_to(cap.min(data.len()));
            dst.send_data(piece, false).map_err(|_| Abort::WriteReset)?;
        }
        let _ = src.flow_control().release_capacity(n);
        total += n as u64;
    }
    let trailers = match timeout(idle, poll_fn(|cx| src.poll_trailers(cx))).await {
        Err(_) => return Err(Abort::IdleTimeout),
        Ok(t) => t.map_err(|_| Abort::ReadReset)?,
    };
    match trailers {
        Some(t) => dst.send_trailers(t).map_err(|_| Abort::WriteReset)?,
        None => dst
            .send_data(Bytes::new(), true)
            .map_err(|_| Abort::WriteReset)?,
    }
    Ok(total)
}
