//! Streaming a message body from one socket to another, whatever its framing on either side.
//!
//! Bodies are never held whole: at most one read buffer's worth is in memory at a time, so a
//! 1 GiB upload or download passes with flat memory. Chunked input is decoded and re-encoded
//! canonically (no extensions); trailers are passed on when the output is chunked, handed to
//! the caller for an HTTP/2 client ([`OutCoding::IdentityKeepTrailers`]), and dropped when the
//! output is an HTTP/1 body without chunks (RFC 9110 §6.5.1 lets a recipient discard them).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use pier_h1::framing::{trailer_fields, BodyKind, ChunkError, ChunkedDecoder, Decoded};

use crate::error::{Abort, Failure, ProxyError};

/// How the body is written to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutCoding {
    /// The bytes as they are (Content-Length or close-delimited output).
    Identity,
    /// Re-chunked.
    Chunked,
    /// The bytes as they are; a chunked source's trailer fields that may be passed on are left
    /// in `scratch` (`name: value` CRLF lines) for the caller, which sends them its own way (an
    /// HTTP/2 trailers frame).
    IdentityKeepTrailers,
    /// Re-chunked without the last chunk: the caller ends the body with [`write_last_chunk`],
    /// with the trailers of an HTTP/2 source.
    ChunkedOpen,
}

/// Where a relay failed.
#[derive(Debug)]
pub enum RelayError {
    SrcRead(io::Error),
    /// The source closed before the body was complete.
    SrcEof,
    SrcTimeout,
    SrcChunk(ChunkError),
    DstWrite(io::Error),
    DstTimeout,
    /// More than the allowed number of body bytes.
    TooLarge,
}

impl RelayError {
    /// The answer for a request body that could not be read whole (`None`: the client is
    /// gone and there is no one to answer).
    pub fn client_error(&self) -> Option<ProxyError> {
        match self {
            RelayError::SrcChunk(c) => Some(ProxyError::RequestChunk(*c)),
            RelayError::SrcTimeout => Some(ProxyError::BodyTimeout),
            RelayError::TooLarge => Some(ProxyError::BodyTooLarge),
            RelayError::SrcEof | RelayError::SrcRead(_) => None,
            RelayError::DstWrite(_) => Some(ProxyError::UpstreamIo),
            RelayError::DstTimeout => Some(ProxyError::UpstreamTimeout),
        }
    }

    /// A request body that could not be sent upstream: the client's fault or the backend's.
    pub fn request_failure(&self) -> Failure {
        match self {
            RelayError::DstWrite(_) => Failure::Upstream {
                err: ProxyError::UpstreamIo,
                in_sync: false,
            },
            RelayError::DstTimeout => Failure::Upstream {
                err: ProxyError::UpstreamTimeout,
                in_sync: false,
            },
            other => Failure::Client(other.client_error()),
        }
    }

    /// Why relaying a response body from a backend to the client stopped.
    pub fn response_abort(&self) -> Abort {
        match self {
            RelayError::DstWrite(_) | RelayError::DstTimeout => Abort::ClientWrite,
            RelayError::SrcTimeout => Abort::UpstreamIdleTimeout,
            RelayError::SrcChunk(_) => Abort::BadResponseChunk,
            RelayError::SrcEof | RelayError::SrcRead(_) | RelayError::TooLarge => {
                Abort::UpstreamClosedMidBody
            }
        }
    }
}

/// Idle limits and size cap of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub read_idle: Duration,
    pub write_idle: Duration,
    /// 0 = no limit.
    pub max_bytes: u64,
}

/// What a read asks the buffer to have room for. 16 KiB, the size of the buffer a backend
/// connection starts with: a body relayed through a drained buffer reuses that allocation in
/// place, so a download whose client stops reading holds 16 KiB here rather than the 64 KiB
/// (plus the first 16) a larger chunk made it grow to; docs/benchmarks/idle-connections.md has
/// the memory and bench/download.sh the throughput and CPU per GiB of each size.
const READ_CHUNK: usize = 16 * 1024;

async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<usize, RelayError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_CHUNK);
    }
    match timeout(idle, src.read_buf(buf)).await {
        Err(_) => Err(RelayError::SrcTimeout),
        Ok(Err(e)) => Err(RelayError::SrcRead(e)),
        Ok(Ok(n)) => Ok(n),
    }
}

async fn send<W: AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    idle: Duration,
) -> Result<(), RelayError> {
    let write = async {
        dst.write_all(data).await?;
        // TLS buffers records; plain sockets make this a no-op.
        dst.flush().await
    };
    let mut write = std::pin::pin!(write);
    // Most writes complete at once (the socket buffer has room): try before arming a timer.
    let first = std::future::poll_fn(|cx| match write.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    let result = match first {
        Some(r) => Ok(r),
        None => timeout(idle, write).await,
    };
    match result {
        Err(_) => Err(RelayError::DstTimeout),
        Ok(Err(e)) => Err(RelayError::DstWrite(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// Writes all of `data`, trying a non-blocking write first: on the fast path (a small head
/// into an empty socket buffer) no timer is armed at all.
pub async fn write_all_timed<W: TryWrite + AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    idle: Duration,
) -> Result<(), RelayError> {
    let rest = match dst.try_write_now(data) {
        Ok(n) if n == data.len() => return Ok(()),
        Ok(n) => &data[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => data,
        Err(e) => return Err(RelayError::DstWrite(e)),
    };
    send(dst, rest, idle).await
}

/// A destination that can take bytes without waiting when its buffer has room.
pub trait TryWrite {
    fn try_write_now(&self, data: &[u8]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::tcp::WriteHalf<'_> {
    fn try_write_now(&self, data: &[u8]) -> io::Result<usize> {
        self.try_write(data)
    }
}

impl TryWrite for crate::stream::UpstreamWrite<'_> {
    fn try_write_now(&self, data: &[u8]) -> io::Result<usize> {
        self.try_write(data)
    }
}

impl TryWrite for crate::stream::ClientWrite<'_> {
    fn try_write_now(&self, data: &[u8]) -> io::Result<usize> {
        self.try_write(data)
    }
}

/// Ends a body written with [`OutCoding::ChunkedOpen`]: the last chunk, the trailer fields
/// that may be passed on (HTTP/2 names are lower-case and values checked by `h2`), the blank
/// line.
pub async fn write_last_chunk<W: AsyncWrite + Unpin>(
    dst: &mut W,
    trailers: Option<&http::HeaderMap>,
    idle: Duration,
    scratch: &mut Vec<u8>,
) -> Result<(), RelayError> {
    scratch.clear();
    put_last_chunk(scratch, trailers);
    send(dst, scratch, idle).await
}

/// Appends the last chunk with `trailers` (see [`write_last_chunk`]).
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if !forbidden_trailer(name.as_str().as_bytes()) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Fields that must not be taken from a trailer section (RFC 9110 §6.5.1): framing, routing,
/// and hop-by-hop fields.
fn forbidden_trailer(name: &[u8]) -> bool {
    pier_h1::framing::is_hop_by_hop(name)
        || [
            &b"host"[..],
            b"trailer",
            b"content-type",
            b"content-encoding",
            b"content-range",
        ]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// Copies a body of kind `kind` from `src` (bytes already read are in `buf`) to `dst`.
/// Returns the number of body bytes relayed. `scratch` is reused for chunk framing.
pub async fn relay_body<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    kind: BodyKind,
    out: OutCoding,
    limits: RelayLimits,
    scratch: &mut Vec<u8>,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let over = |n: u64| limits.max_bytes != 0 && n > limits.max_bytes;
    let mut total: u64 = 0;
    match kind {
        BodyKind::None => {}
        BodyKind::Length(n) => {
            let mut left = n;
            while left > 0 {
                if buf.is_empty() && fill(src, buf, limits.read_idle).await? == 0 {
                    return Err(RelayError::SrcEof);
                }
                let take = (buf.len() as u64).min(left) as usize;
                write_data(dst, &buf[..take], out, limits.write_idle, scratch).await?;
                buf.advance(take);
                left -= take as u64;
                total += take as u64;
            }
            if out == OutCoding::Chunked {
                send(dst, b"0\r\n\r\n", limits.write_idle).await?;
            }
        }
        BodyKind::UntilClose => loop {
            if buf.is_empty() && fill(src, buf, limits.read_idle).await? == 0 {
                if out == OutCoding::Chunked {
                    send(dst, b"0\r\n\r\n", limits.write_idle).await?;
                }
                break;
            }
            let len = buf.len();
            total += len as u64;
            if over(total) {
                return Err(RelayError::TooLarge);
            }
            write_data(dst, &buf[..len], out, limits.write_idle, scratch).await?;
            buf.advance(len);
        },
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                if buf.is_empty() && fill(src, buf, limits.read_idle).await? == 0 {
                    return Err(RelayError::SrcEof);
                }
                let (used, ev) = dec.step(buf).map_err(RelayError::SrcChunk)?;
                match ev {
                    Decoded::Data { start, len } => {
                        total += len as u64;
                        if over(total) {
                            return Err(RelayError::TooLarge);
                        }
                        write_data(
                            dst,
                            &buf[start..start + len],
                            out,
                            limits.write_idle,
                            scratch,
                        )
                        .await?;
                        buf.advance(used);
                    }
                    Decoded::NeedMore => {
                        buf.advance(used);
                    }
                    Decoded::Done => {
                        buf.advance(used);
                        scratch.clear();
                        if out == OutCoding::Chunked {
                            scratch.extend_from_slice(b"0\r\n");
                        }
                        if out != OutCoding::Identity {
                            for (name, line) in trailer_fields(dec.trailers()) {
                                if !forbidden_trailer(name) {
                                    scratch.extend_from_slice(line);
                                    scratch.extend_from_slice(b"\r\n");
                                }
                            }
                        }
                        if out == OutCoding::Chunked {
                            scratch.extend_from_slice(b"\r\n");
                            send(dst, scratch, limits.write_idle).await?;
                        }
                        break;
                    }
                }
            }
        }
    }
    Ok(total)
}

fn put_hex(out: &mut Vec<u8>, mut n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

async fn write_data<W: AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    out: OutCoding,
    idle: Duration,
    scratch: &mut Vec<u8>,
) -> Result<(), RelayError> {
    if data.is_empty() {
        return Ok(());
    }
    match out {
        OutCoding::Identity | OutCoding::IdentityKeepTrailers => send(dst, data, idle).await,
        OutCoding::Chunked | OutCoding::ChunkedOpen => {
            scratch.clear();
            put_hex(scratch, data.len());
            scratch.extend_from_slice(b"\r\n");
            scratch.extend_from_slice(data);
            scratch.extend_from_slice(b"\r\n");
            send(dst, scratch, idle).await
        }
    }
}

/// Copies bytes both ways between a client and a backend after a protocol switch, starting
/// with what each side already sent (`cl_buf` goes up, `up_buf` goes down). When one side
/// closes its sending half the other side's writing half is shut down, and the other direction
/// runs on until it closes too; the whole tunnel ends after `idle` without a byte either way.
/// Returns the bytes sent to the client, and why the tunnel was cut (`None`: both sides closed).
pub async fn tunnel<CR, CW, UR, UW>(
    cl_r: &mut CR,
    cl_w: &mut CW,
    cl_buf: &mut BytesMut,
    up_r: &mut UR,
    up_w: &mut UW,
    up_buf: &mut BytesMut,
    idle: Duration,
) -> (u64, Option<Abort>)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    // Both directions run in this one task; atomics only because futures must be Send.
    let origin = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let up_dir = pump(cl_r, up_w, cl_buf, origin, &last, None);
    let down_dir = pump(up_r, cl_w, up_buf, origin, &last, Some(&down));
    let both = async {
        let (a, b) = tokio::join!(up_dir, down_dir);
        a.and(b)
    };
    let last_at = || origin + Duration::from_millis(last.load(Ordering::Relaxed));
    let watch = async {
        loop {
            tokio::time::sleep_until(last_at() + idle).await;
            if last_at() + idle <= tokio::time::Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        r = both => (down.load(Ordering::Relaxed), r.err()),
        _ = watch => (down.load(Ordering::Relaxed), Some(Abort::TunnelIdleTimeout)),
    }
}

/// One direction of a tunnel: copy until EOF, then shut down the destination's write half.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    buf: &mut BytesMut,
    origin: tokio::time::Instant,
    last: &AtomicU64,
    count: Option<&AtomicU64>,
) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !buf.is_empty() {
            let n = buf.len();
            let sent = async {
                dst.write_all(buf).await?;
                dst.flush().await
            };
            sent.await.map_err(|_| Abort::TunnelWrite)?;
            buf.advance(n);
            last.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Some(c) = count {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if buf.capacity() < 4096 {
            buf.reserve(16 * 1024);
        }
        match src.read_buf(buf).await {
            Ok(0) => {
                let _ = dst.shutdown().await;
                return Ok(());
            }
            Ok(_) => last.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed),
            Err(_) => {
                let _ = dst.shutdown().await;
                return Err(Abort::TunnelRead);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RelayLimits = RelayLimits {
        read_idle: Duration::from_secs(5),
        write_idle: Duration::from_secs(5),
        max_bytes: 0,
    };

    async fn run(
        input: &[u8],
        kind: BodyKind,
        out: OutCoding,
    ) -> Result<(Vec<u8>, u64), RelayError> {
        let mut src: &[u8] = input;
        let mut buf = BytesMut::new();
        let mut dst = Vec::new();
        let mut scratch = Vec::new();
        let n = relay_body(
            &mut src,
            &mut buf,
            &mut dst,
            kind,
            out,
            LIMITS,
            &mut scratch,
        )
        .await?;
        Ok((dst, n))
    }

    #[tokio::test]
    async fn chunked_to_chunked_keeps_trailers_and_drops_extensions() {
        let (out, n) = run(
            b"3;x=y\r\nabc\r\n0\r\nX-Sum: 1\r\nContent-Length: 9\r\n\r\n",
            BodyKind::Chunked,
            OutCoding::Chunked,
        )
        .await
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(out, b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n");
    }

    #[tokio::test]
    async fn chunked_to_identity_drops_trailers() {
        let (out, _) = run(
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX: 1\r\n\r\n",
            BodyKind::Chunked,
            OutCoding::Identity,
        )
        .await
        .unwrap();
        assert_eq!(out, b"abcde");
    }

    #[tokio::test]
    async fn chunked_to_identity_can_hand_its_trailers_back() {
        let mut src: &[u8] = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: evil\r\nX-B:  2 \r\n\r\n";
        let (mut buf, mut dst, mut scratch) = (BytesMut::new(), Vec::new(), Vec::new());
        relay_body(
            &mut src,
            &mut buf,
            &mut dst,
            BodyKind::Chunked,
            OutCoding::IdentityKeepTrailers,
            LIMITS,
            &mut scratch,
        )
        .await
        .unwrap();
        assert_eq!(dst, b"abc");
        // Host may not come from trailers; the others are handed back as lines.
        assert_eq!(scratch, b"X-Sum: 1\r\nX-B:  2 \r\n");
        let map = crate::h2io::trailers_from_lines(&scratch);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("x-sum").unwrap(), "1");
        assert_eq!(map.get("x-b").unwrap(), "2");
    }

    #[tokio::test]
    async fn length_and_close_delimited() {
        let (out, _) = run(b"hello world", BodyKind::Length(5), OutCoding::Identity)
            .await
            .unwrap();
        assert_eq!(out, b"hello");
        let (out, _) = run(b"hello", BodyKind::UntilClose, OutCoding::Chunked)
            .await
            .unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        assert!(matches!(
            run(b"hel", BodyKind::Length(5), OutCoding::Identity).await,
            Err(RelayError::SrcEof)
        ));
        assert!(matches!(
            run(b"3\r\nabc\r\n", BodyKind::Chunked, OutCoding::Identity).await,
            Err(RelayError::SrcEof)
        ));
    }

    #[tokio::test]
    async fn size_cap_applies_to_chunked_input() {
        let mut src: &[u8] = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut dst = Vec::new();
        let limits = RelayLimits {
            max_bytes: 7,
            ..LIMITS
        };
        let r = relay_body(
            &mut src,
            &mut buf,
            &mut dst,
            BodyKind::Chunked,
            OutCoding::Chunked,
            limits,
            &mut Vec::new(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::TooLarge)));
    }
}
