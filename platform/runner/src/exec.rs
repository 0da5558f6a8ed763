//! Where the API attaches clients to one-off processes (`pier run`): a WebSocket listener on the
//! runner's address. A connection names its run (`GET /runs/<instance id>`) and presents the
//! run's secret (`Authorization: Bearer ...`, from the run's record, which only the platform's
//! processes read); the run waiting for it takes it. A run attaches once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use pier_model::runproto;

/// A client's connection to a run.
pub type Ws = WebSocketStream<TcpStream>;

/// A client must finish its WebSocket handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The frame and message limits of both sides of `pier run`.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(runproto::MAX_MESSAGE + 16),
        max_frame_size: Some(runproto::MAX_MESSAGE + 16),
        max_write_buffer_size: 4 * runproto::MAX_MESSAGE,
        ..WebSocketConfig::default()
    }
}

/// Runs waiting for their client: instance id → (secret, where to hand the connection).
#[derive(Default)]
pub struct Attachments {
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Ws>)>>,
}

/// Takes a run off [`Attachments`] when dropped.
pub struct Expected {
    pub conn: oneshot::Receiver<Ws>,
    id: String,
    all: Arc<Attachments>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.all.forget(&self.id);
    }
}

impl Attachments {
    /// Expects a client for run instance `id` presenting `secret`.
    pub fn expect(self: &Arc<Self>, id: &str, secret: &str) -> Expected {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.to_string(), (secret.to_string(), tx));
        }
        Expected {
            conn: rx,
            id: id.to_string(),
            all: self.clone(),
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(id);
        }
    }

    /// Whether a run `id` waits for a client presenting `secret`.
    fn check(&self, id: &str, secret: &str) -> Result<(), StatusCode> {
        let w = self
            .waiting
            .lock()
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        let (want, _) = w.get(id).ok_or(StatusCode::NOT_FOUND)?;
        if constant_time_eq(want.as_bytes(), secret.as_bytes()) {
            Ok(())
        } else {
            Err(StatusCode::UNAUTHORIZED)
        }
    }

    fn deliver(&self, id: &str, ws: Ws) {
        let tx = self.waiting.lock().ok().and_then(|mut w| w.remove(id));
        if let Some((_, tx)) = tx {
            let _ = tx.send(ws);
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts clients' connections for as long as the runner runs.
pub async fn serve(listener: TcpListener, all: Arc<Attachments>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "attach listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let all = all.clone();
        tokio::spawn(async move {
            if let Err(e) = attach(stream, &all).await {
                // The API asks until the run is here: not yet is not worth a line.
                if e.contains("404") {
                    tracing::debug!(%peer, error = %e, "attach refused");
                } else {
                    tracing::info!(%peer, error = %e, "attach refused");
                }
            }
        });
    }
}

// tungstenite's handshake callback must return its `ErrorResponse` (an HTTP response) by value.
#[allow(clippy::result_large_err)]
async fn attach(stream: TcpStream, all: &Attachments) -> Result<(), String> {
    let mut run_id: Option<String> = None;
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |code: StatusCode| {
            let mut r = ErrorResponse::new(Some(code.to_string()));
            *r.status_mut() = code;
            r
        };
        let id = req
            .uri()
            .path()
            .strip_prefix("/runs/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| refuse(StatusCode::NOT_FOUND))?;
        let secret = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED))?;
        all.check(id, secret).map_err(refuse)?;
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(runproto::SUBPROTOCOL),
        );
        run_id = Some(id.to_string());
        Ok(resp)
    };
    let ws = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config())),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(id) = run_id {
        all.deliver(&id, ws);
    }
    Ok(())
}

/// Binds the attach listener: `addr`, or a free port on the runner's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
