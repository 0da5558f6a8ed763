//! The memory floor of an idle HTTP/1.1 connection in a tokio server: one task per connection
//! that waits for the socket to become readable, holds no buffer of its own, reads what arrived
//! into a buffer on the stack (in a synchronous step, so the buffer is never part of the task),
//! answers each request head with one fixed `200` from a static buffer, and goes back to
//! waiting. One single-threaded runtime, the one pier-balancer's per-core mode uses.
//!
//! Given a certificate and key it terminates TLS first (rustls with pier-balancer's settings:
//! the same provider and versions, a 64Ki-entry session cache, a ticketer and two TLS 1.3
//! tickets per handshake; ALPN `http/1.1` only): then the floor is what tokio-rustls keeps per
//! connection, the TLS stream boxed as pier-balancer boxes it. A TLS connection waits in a poll
//! of the stream instead (rustls may hold plaintext the socket no longer shows), reading into a
//! stack buffer each time it is polled.
//!
//! It is not an HTTP server: it only counts request heads (`\r\n\r\n`) and answers each, so
//! GET requests without bodies are all it serves correctly. It exists for
//! balancer/proxy/bench/conn-memory.sh and conn-100k.sh:
//!
//! ```sh
//! cargo build --release -p pier-balancer --example idle_floor
//! target/release/examples/idle_floor 127.0.0.1:29380 [CERT_PEM KEY_PEM]
//! ```

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

#[path = "floor/tls.rs"]
mod floor_tls;
use floor_tls::tls_acceptor;

const USAGE: &str = "usage: idle_floor LISTEN_ADDR [CERT_PEM KEY_PEM]";

/// The one answer, shared by every connection.
static RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nok\n";

/// Bytes of the stack buffer a read goes into.
const READ_BUF: usize = 4096;

/// How far into `\r\n\r\n` the bytes seen so far are, and how many request heads ended.
fn heads_ended(data: &[u8], matched: &mut u8) -> usize {
    let mut heads = 0;
    for &b in data {
        *matched = match (*matched, b) {
            (0 | 2, b'\r') => *matched + 1,
            (1 | 3, b'\n') => *matched + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        if *matched == 4 {
            heads += 1;
            *matched = 0;
        }
    }
    heads
}

/// What one read gave: request heads ended, or the connection is over.
enum Read {
    Heads(usize),
    WouldBlock,
    Closed,
}

async fn answer<W: AsyncWrite + Unpin>(w: &mut W, heads: usize) -> std::io::Result<()> {
    for _ in 0..heads {
        w.write_all(RESPONSE).await?;
    }
    w.flush().await
}

async fn serve_plain(stream: TcpStream) {
    let mut stream = stream;
    let mut matched = 0u8;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        // The buffer lives in this synchronous step only, never across an await.
        let read = {
            let mut buf = [0u8; READ_BUF];
            match stream.try_read(&mut buf) {
                Ok(0) => Read::Closed,
                Ok(n) => Read::Heads(heads_ended(&buf[..n], &mut matched)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::WouldBlock,
                Err(_) => Read::Closed,
            }
        };
        match read {
            Read::Closed => return,
            Read::WouldBlock | Read::Heads(0) => {}
            Read::Heads(n) => {
                if answer(&mut stream, n).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_tls(stream: Box<TlsStream<TcpStream>>) {
    let mut stream = stream;
    let mut matched = 0u8;
    loop {
        // Each poll reads into a buffer on this closure's stack, so no buffer is part of the
        // task; a pending read has registered the task (for the socket's readiness, or for
        // plaintext rustls holds already, as when a request came with the end of the handshake).
        let read = poll_fn(|cx| {
            let mut buf = [0u8; READ_BUF];
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(Read::Closed),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Read::Closed),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Read::Heads(heads_ended(rb.filled(), &mut matched)))
                }
            }
        })
        .await;
        match read {
            Read::Closed => return,
            Read::WouldBlock | Read::Heads(0) => {}
            Read::Heads(n) => {
                if answer(&mut *stream, n).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, tls) = match args.as_slice() {
        [l] => (l, None),
        [l, cert, key] => (l, Some(tls_acceptor(cert, key)?)),
        _ => return Err(USAGE.into()),
    };
    let listen: SocketAddr = listen.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        // SO_REUSEPORT (pier-balancer's own bind): several floor processes can share the
        // address, as conn-100k.sh runs them.
        let listener = TcpListener::from_std(pier_balancer::accept::bind(listen, true)?)?;
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            match &tls {
                None => {
                    tokio::spawn(serve_plain(client));
                }
                Some(acceptor) => {
                    // The handshake's state is boxed too, so the task keeps only what
                    // serving needs once it is over.
                    let accept = Box::pin(acceptor.accept(client));
                    tokio::spawn(async move {
                        let Ok(stream) = accept.await else {
                            return;
                        };
                        serve_tls(Box::new(stream)).await;
                    });
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::heads_ended;

    #[test]
    fn counts_heads_across_reads() {
        let mut m = 0;
        assert_eq!(
            heads_ended(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /", &mut m),
            1
        );
        assert_eq!(heads_ended(b" HTTP/1.1\r\n\r", &mut m), 0);
        assert_eq!(heads_ended(b"\n", &mut m), 1);
        assert_eq!(heads_ended(b"\r\r\n\r\n", &mut m), 1);
    }
}
