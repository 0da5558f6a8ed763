//! Either side of a proxied exchange — the client's connection ([`ClientStream`]) and a
//! backend's ([`UpstreamStream`]) — plain TCP or TLS over TCP, each behind one type.
//!
//! The request path is written once against these types. Splitting a plain stream borrows its
//! two halves (no lock, as fast as a bare `TcpStream`); splitting a TLS stream goes through
//! `tokio::io::split` because the TLS session is one state machine for both directions.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

type UpstreamTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A client connection: plain or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a split [`ClientStream`].
pub enum ClientRead<'a> {
    Plain(ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

/// The write half of a split [`ClientStream`].
pub enum ClientWrite<'a> {
    Plain(WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            // Inlined: the cleartext branch is one call on, and the plain request path should
            // pay nothing for the TLS one (callgrind counts ~36 instructions per request
            // when this dispatch is an out-of-line call).
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(ClientStream);
delegate_read!(ClientRead<'_>);
delegate_write!(ClientStream);
delegate_write!(ClientWrite<'_>);
delegate_read!(UpstreamStream);
delegate_read!(UpstreamRead<'_>);
delegate_write!(UpstreamStream);
delegate_write!(UpstreamWrite<'_>);

impl ClientWrite<'_> {
    /// A write that does not wait: plain sockets write what fits now; TLS reports
    /// `WouldBlock` (its records are written through the async path, which flushes).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            ClientWrite::Plain(w) => w.try_write(data),
            ClientWrite::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A connection to a backend: plain, or TLS (an `https://` backend). The TLS session is boxed
/// so that a plain connection stays the size of a socket.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<UpstreamTls>),
}

/// The read half of a split [`UpstreamStream`].
pub enum UpstreamRead<'a> {
    Plain(ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut UpstreamTls>),
}

/// The write half of a split [`UpstreamStream`].
pub enum UpstreamWrite<'a> {
    Plain(WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut UpstreamTls>),
}

impl UpstreamStream {
    pub fn split(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            UpstreamStream::Plain(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }

    /// True when an idle connection has neither been closed by the backend nor sent anything
    /// (a pooled connection is checked before reuse). tokio answers from its readiness state
    /// without a system call unless the socket became readable, so this is nearly free for a
    /// healthy connection.
    #[inline]
    pub fn is_quiet(&mut self) -> bool {
        match self {
            UpstreamStream::Plain(s) => {
                let mut probe = [0u8; 1];
                would_block(s.try_read(&mut probe))
            }
            UpstreamStream::Tls(s) => tls_is_quiet(s),
        }
    }
}

fn would_block(r: io::Result<usize>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// [`UpstreamStream::is_quiet`] for TLS, kept out of line so that the cleartext check inlines.
#[inline(never)]
fn tls_is_quiet(s: &mut UpstreamTls) -> bool {
    let (tcp, session) = s.get_mut();
    // Reading would feed records into the session; peeking leaves them. Anything waiting on an
    // idle TLS connection (a close_notify, a stray record) makes it unfit for reuse, and so does
    // plaintext the session still holds.
    let sock = socket2::SockRef::from(&*tcp);
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let socket_quiet = would_block(tcp.try_io(Interest::READABLE, || sock.peek(&mut probe)));
    socket_quiet
        && session
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed())
}

impl UpstreamWrite<'_> {
    /// As [`ClientWrite::try_write`].
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            UpstreamWrite::Plain(w) => w.try_write(data),
            UpstreamWrite::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
