//! Front end `h2`: HTTP/2 from clients (over TLS by ALPN, or cleartext with prior knowledge).
//!
//! The `h2` crate speaks the protocol; [`guard`] bounds control-frame floods it does not. This
//! module runs the connection (accepting streams, idle and drain deadlines, GOAWAY on abuse);
//! each request stream runs as its own task ([`stream`]): it is checked (RFC 9113 §8.1.1,
//! §8.2, §8.3 — what `h2` leaves to the application) and handed to the same pipeline as an
//! HTTP/1.1 request, so it reaches HTTP/1.1 and h2c backends through the same backend choice,
//! pool, retries and ejection.

pub mod guard;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use tokio::time::timeout;

use crate::config::Listener;
use crate::shared::Worker;
use crate::stream::ClientStream;
use guard::{Alarm, FrameCounter, FrameGuard};

/// How often an idle connection checks its keep-alive deadline.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long an idle connection told to go away (GOAWAY) may take to close.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every stream of one connection shares.
pub(super) struct ConnInfo {
    pub peer: SocketAddr,
    pub peer_ip: Vec<u8>,
    pub listener: Listener,
    /// Over TLS: the name the client gave in SNI (`Some(None)` when it gave none).
    pub sni: Option<Option<Box<str>>>,
}

/// Serves one HTTP/2 connection until the client leaves, it idles out, it misbehaves, or the
/// balancer drains. `prefix` holds bytes already read (the h2c preface).
pub async fn serve(
    w: Arc<Worker>,
    stream: ClientStream,
    peer: SocketAddr,
    listener: Listener,
    prefix: BytesMut,
) {
    let shared = Arc::clone(&w.shared);
    let cfg = &shared.config;
    let h = &cfg.http2;
    shared.metrics.h2_connections.inc();
    let sni = match &stream {
        ClientStream::Tls(t) => Some(t.get_ref().1.server_name().map(Box::from)),
        ClientStream::Plain(_) => None,
    };
    let alarm = Arc::new(Alarm::default());
    let io = FrameGuard::new(
        stream,
        prefix,
        FrameCounter::new(h.control_frame_rate, h.max_header_frames),
        Arc::clone(&alarm),
    );
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(h.max_concurrent_streams)
        .max_header_list_size(h.max_header_list_size)
        .initial_window_size(h.initial_window_size)
        .initial_connection_window_size(h.connection_window_size)
        .max_frame_size(h.max_frame_size)
        .max_send_buffer_size(256 * 1024)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256));
    if h.websocket {
        builder.enable_connect_protocol();
    }
    let mut conn = match timeout(
        cfg.timeouts.client_header,
        builder.handshake::<_, Bytes>(io),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "h2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        peer,
        peer_ip: pier_h1::rewrite::client_ip_text(peer),
        listener,
        sni,
    });
    let mut shutdown = shared.shutdown_rx.clone();
    // While draining, the connection must be gone by this time: a graceful GOAWAY waits for
    // the client to answer a PING, which a dead or broken client never does.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let start_drain = |conn: &mut h2::server::Connection<_, Bytes>, within: Duration| {
        conn.graceful_shutdown();
        Some(tokio::time::Instant::now() + within)
    };
    if shared.is_shutting_down() {
        drain_deadline = start_drain(&mut conn, cfg.timeouts.shutdown);
    }
    let keepalive = cfg.timeouts.client_keepalive;
    let mut last_active = Instant::now();
    let mut cut = false;
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let draining = drain_deadline.is_some();
        let deadline = drain_deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            _ = alarm.notify.notified() => {
                if let Some(why) = alarm.raised() {
                    shared.metrics.h2_abuse.with_label_values(&[why.name()]).inc();
                    tracing::info!(client = %peer, abuse = why.name(), "h2 GOAWAY ENHANCE_YOUR_CALM");
                }
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                cut = true;
                break;
            }
            _ = shutdown.wait_for(|d| *d), if !draining => {
                drain_deadline = start_drain(&mut conn, cfg.timeouts.shutdown);
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    last_active = Instant::now();
                    shared.metrics.h2_streams.inc();
                    tokio::spawn(stream::handle(Arc::clone(&w), Arc::clone(&info), req, respond));
                }
                Some(Err(e)) => {
                    if let Some(why) = alarm.raised() {
                        shared.metrics.h2_abuse.with_label_values(&[why.name()]).inc();
                    }
                    tracing::debug!(client = %peer, error = %e, "h2 connection error");
                    break;
                }
                None => return,
            },
            _ = tick.tick(), if !draining => {
                if conn.has_streams() {
                    last_active = Instant::now();
                } else if last_active.elapsed() >= keepalive {
                    drain_deadline = start_drain(&mut conn, IDLE_CLOSE_GRACE);
                }
            }
            _ = tokio::time::sleep_until(deadline), if draining => {
                // Whatever is still open is cut: the final GOAWAY says so.
                conn.abrupt_shutdown(Reason::NO_ERROR);
                cut = true;
                break;
            }
        }
    }
    // Send what is queued (a GOAWAY above all) and let the connection close.
    let grace = if cut {
        Duration::from_secs(1)
    } else {
        cfg.timeouts.shutdown
    };
    let _ = timeout(grace, std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
}
