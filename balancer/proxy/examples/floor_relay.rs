//! The floor under any HTTP/1.1 reverse proxy on this machine: a relay that does nothing but
//! the four socket operations every proxy needs per request (read the client, write the
//! backend, read the backend, write the client), with no parsing, no routing and no headers.
//! Each client connection gets its own backend connection and bytes are copied blindly both
//! ways, on one single-threaded tokio runtime (the runtime pier-balancer's per-core mode uses).
//! Given a certificate and key it terminates TLS first (rustls, the same provider, versions and
//! session cache pier-balancer uses; ALPN `http/1.1` only).
//!
//! It is not a proxy (it routes nothing and answers every host); it exists to measure how
//! fast a proxy could possibly be in the side-by-side benchmarks:
//!
//! ```sh
//! cargo build --release -p pier-balancer --example floor_relay
//! NGINX_PORT=28080 HAPROXY_PORT=28090 BACKEND_PORT=29001 bash ../shared/bench/compare.sh \
//!   'target/release/examples/floor_relay 127.0.0.1:{port} {backend}' 28071
//! FLOOR=1 SCENARIOS=tls-h1 bash balancer/proxy/bench/tls-compare.sh
//! ```
//!
//! Results: docs/benchmarks/balancer-vs-nginx-haproxy.md and docs/benchmarks/tls-h2-vs-nginx.md.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

#[path = "floor/tls.rs"]
mod floor_tls;
use floor_tls::tls_acceptor;

const USAGE: &str = "usage: floor_relay LISTEN_ADDR BACKEND_ADDR [CERT_PEM KEY_PEM]";

async fn relay<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, backend: SocketAddr) {
    let Ok(mut upstream) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backend, tls) = match args.as_slice() {
        [l, b] => (l, b, None),
        [l, b, cert, key] => (l, b, Some(tls_acceptor(cert, key)?)),
        _ => return Err(USAGE.into()),
    };
    let listen: SocketAddr = listen.parse()?;
    let backend: SocketAddr = backend.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => relay(client, backend).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(client).await {
                            relay(stream, backend).await;
                        }
                    }
                }
            });
        }
    })
}
