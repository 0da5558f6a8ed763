//! Byte streams the HTTP/1.1 engine drives: plain TCP with hand-managed readiness (the fast
//! path) and anything tokio can read and write (TLS).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection the HTTP/1.1 loop can poll for reads and writes in one `poll_fn`.
pub trait Transport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Plain TCP registered with the reactor directly, so that readiness can be cleared after a
/// short read.
///
/// Why: tokio's `TcpStream` keeps a socket marked readable until a read fails with
/// `WouldBlock`, so a request/response loop pays one wasted `read` per request. A read that
/// returns less than the buffer size has drained the socket, and the edge-triggered
/// registration reports any byte that arrives later, so clearing readiness there is safe
/// and saves that syscall: one `write` and one `read` per request remain.
pub struct PlainTcp {
    fd: AsyncFd<std::net::TcpStream>,
}

impl PlainTcp {
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<PlainTcp> {
        let std = stream.into_std()?;
        // SAFETY: `register` requires the descriptor to stay open and unchanged while it is
        // registered. The `TcpStream` is moved into the `AsyncFd`, which owns it; nothing else
        // can close it, and `AsyncFd`'s drop deregisters before the stream (and its
        // descriptor) is dropped. This is the one unsafe block of the crate.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(std) }.map_err(io::Error::from)?;
        Ok(PlainTcp { fd })
    }
}

impl Transport for PlainTcp {
    #[inline]
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let want = buf.len();
            match guard.try_io(|s| {
                let mut r: &std::net::TcpStream = s.get_ref();
                r.read(buf)
            }) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // `try_io` cleared readiness; polling again registers the waker.
                Err(_would_block) => continue,
            }
        }
    }

    #[inline]
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|s| {
                let mut w: &std::net::TcpStream = s.get_ref();
                w.write(buf)
            }) {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Any tokio stream (used for TLS).
pub struct TokioIo<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for TokioIo<S> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
}
