//! An HTTP/1.1 client's request as the pipeline sees it ([`Downstream`]): pier's own answers
//! written as HTTP/1.1, the canonical request for a backend, the body read from the
//! connection in its own framing, and the answer written back in the framing the client
//! takes (chunked for HTTP/1.1, close-delimited for HTTP/1.0), `1xx` answers included.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use pier_h1::framing::{is_hop_by_hop, BodyKind, RequestFraming, ResponseFraming};
use pier_h1::head::{HeaderList, RequestHead, ResponseHead, Version};
use pier_h1::rewrite::{
    append_field, client_framing, end_response_head, put_u64, write_interim, write_request_head,
    write_response_head, write_switching_head, ClientFraming, Forwarding,
};

use super::{send_local, Client};
use crate::config::Listener;
use crate::downstream::{
    Downstream, HeadSent, Request, RequestBody, ResponseSink, RouterTiming, Waited,
};
use crate::error::{Abort, ProxyError};
use crate::h2io::{relay_chunked, RecvBody, SendBody};
use crate::outcome::Outcome;
use crate::relay::{relay_body, write_all_timed, OutCoding, RelayError, RelayLimits};
use crate::respond::{error_body, LocalResponse};
use crate::shared::{Shared, Worker};
use crate::stream::{ClientRead, ClientWrite};
use crate::upstream::h2c::h2_request;

/// Bodies up to this size go out in the same write as their head.
const INLINE_BODY: u64 = 64 * 1024;

/// One request of an HTTP/1.x connection.
///
/// It owns the connection while the pipeline runs (and gives it back after): a front end's
/// type holds no borrowed lifetime, so that the generic request path's future is provably
/// `Send` where the connection task is spawned.
pub struct H1Request {
    pub(super) w: Arc<Worker>,
    pub(super) client: Box<Client>,
    pub(super) head: RequestHead,
    pub(super) framing: RequestFraming,
    pub(super) req: Request,
    /// Whether the client asked to keep the connection open (and pier is not draining).
    pub(super) keep_alive: bool,
    /// The `Upgrade` value of a WebSocket handshake (tunnelled once the backend says 101).
    pub(super) upgrade: Option<Bytes>,
}

impl H1Request {
    /// The connection back, and the head (its field list is reused for the next one).
    pub fn into_parts(self) -> (Box<Client>, RequestHead) {
        (self.client, self.head)
    }

    /// The forwarding facts of this request for its upstream head.
    fn forwarding<'a>(
        req: &'a Request,
        framing: &RequestFraming,
        upgrade: Option<&'a [u8]>,
        peer_ip: &'a [u8],
        listener: &Listener,
        shared: &'a Shared,
    ) -> Forwarding<'a> {
        let headers = &shared.config.headers;
        Forwarding {
            client_ip: peer_ip,
            listener_port: listener.addr.port(),
            trusted: listener.trusted,
            target: &req.target,
            host: &req.host,
            request_id: &req.request_id,
            body: framing.body,
            explicit_zero_length: framing.length == Some(0),
            request_start_ms: headers.request_start.then_some(req.start_ms),
            via: &headers.via,
            proto: if listener.tls { "https" } else { "http" },
            upgrade,
        }
    }

    async fn send(&mut self, resp: &LocalResponse<'_>, keep_alive: bool, version: Version) -> bool {
        send_local(
            &mut self.client,
            resp,
            keep_alive,
            version,
            self.req.head_request,
        )
        .await
    }
}

impl Downstream for H1Request {
    type Body<'a>
        = H1Body<'a>
    where
        Self: 'a;
    type Sink<'a>
        = H1Sink<'a>
    where
        Self: 'a;

    const PROTOCOL: &'static str = "http/1.1";
    const DUPLEX: bool = false;

    fn request(&self) -> &Request {
        &self.req
    }

    fn request_mut(&mut self) -> &mut Request {
        &mut self.req
    }

    fn method(&self) -> &[u8] {
        self.head.method()
    }

    fn forwarded_client(&self) -> Option<std::net::IpAddr> {
        crate::client_limits::last_forwarded(self.head.all(pier_h1::head::Known::XForwardedFor))
    }

    fn peer(&self) -> SocketAddr {
        self.client.peer
    }

    fn field_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.head.values(name.as_bytes())
    }

    fn listener(&self) -> &Listener {
        &self.client.listener
    }

    async fn answer(&mut self, resp: &LocalResponse<'_>) -> Outcome {
        // A request whose body was not read leaves the connection unusable.
        let keep_alive = self.keep_alive && !self.body_pending();
        let ok = self.send(resp, keep_alive, self.head.version).await;
        Outcome {
            bytes_out: if self.req.head_request {
                0
            } else {
                resp.body.len() as u64
            },
            ..Outcome::local(resp.status, None, keep_alive && ok)
        }
    }

    async fn answer_error(&mut self, err: ProxyError, in_sync: bool) -> Outcome {
        let body = error_body(err);
        let resp = LocalResponse::error(err, &body, &self.req.request_id);
        let keep_alive = self.keep_alive && in_sync && err.keeps_connection();
        let ok = send_local(
            &mut self.client,
            &resp,
            keep_alive,
            Version::Http11,
            self.req.head_request,
        )
        .await;
        Outcome::local(err.status(), Some(err), keep_alive && ok)
    }

    async fn client_failed(&mut self, err: Option<ProxyError>) -> Outcome {
        match err {
            Some(e) => self.answer_error(e, false).await,
            None => Outcome::cut(499, Abort::ClientClosed, false),
        }
    }

    fn cut(&mut self, status: u16, why: Abort) -> Outcome {
        Outcome::cut(status, why, false)
    }

    async fn prepare_body(&mut self) -> Result<(), Outcome> {
        Ok(())
    }

    fn body_pending(&self) -> bool {
        self.framing.body != BodyKind::None
    }

    fn body_replayable(&self) -> bool {
        self.framing.body == BodyKind::None
    }

    fn upgrading(&self) -> bool {
        self.upgrade.is_some()
    }

    #[inline]
    fn write_request(&mut self) -> (&[u8], bool) {
        let Client {
            out,
            buf,
            peer_ip,
            listener,
            ..
        } = &mut *self.client;
        out.clear();
        let f = Self::forwarding(
            &self.req,
            &self.framing,
            self.upgrade.as_deref(),
            peer_ip,
            listener,
            &self.w.shared,
        );
        write_request_head(out, &self.head, &self.framing.conn, &f);
        // A small Content-Length body already read goes out with the head in one write.
        let mut body_done = self.framing.body == BodyKind::None;
        if let BodyKind::Length(n) = self.framing.body {
            if buf.len() as u64 >= n && n <= INLINE_BODY {
                out.extend_from_slice(&buf[..n as usize]);
                buf.advance(n as usize);
                body_done = true;
            }
        }
        (out, body_done)
    }

    fn split(&mut self) -> (H1Body<'_>, H1Sink<'_>) {
        let Client {
            stream,
            buf,
            out,
            scratch,
            timer,
            response_fields,
            ..
        } = &mut *self.client;
        let (r, w) = stream.split();
        (
            H1Body {
                r,
                buf,
                kind: self.framing.body,
                scratch,
            },
            H1Sink {
                shared: &self.w.shared,
                w,
                out,
                timer,
                fields: response_fields,
                version: self.head.version,
                keep_alive: self.keep_alive,
                head_request: self.req.head_request,
                coding: OutCoding::Identity,
                timing: None,
            },
        )
    }

    async fn gone(&mut self) {
        let mut body = self.split().0;
        std::future::poll_fn(|cx| body.poll_closed(cx)).await
    }

    fn h2_request(&self) -> Result<(http::Request<()>, bool), ProxyError> {
        let head = &self.head;
        let framing = &self.framing;
        let fields = head.headers.iter().filter_map(|h| {
            let name = head.name(h);
            let listed = framing
                .conn
                .listed
                .iter()
                .any(|t| head.value(t).eq_ignore_ascii_case(name));
            let skip = is_hop_by_hop(name)
                || listed
                || name.eq_ignore_ascii_case(b"host")
                || name.eq_ignore_ascii_case(b"expect");
            (!skip).then(|| (name, head.value(h)))
        });
        let length = match framing.body {
            BodyKind::Length(n) => Some(n),
            _ if framing.length == Some(0) => Some(0),
            _ => None,
        };
        // Framing is the HTTP/2 layer's business: the head carries none.
        let forwarding = Forwarding {
            body: BodyKind::None,
            explicit_zero_length: false,
            upgrade: None,
            ..Self::forwarding(
                &self.req,
                framing,
                None,
                &self.client.peer_ip,
                &self.client.listener,
                &self.w.shared,
            )
        };
        let request = h2_request(head.method(), fields, &forwarding, length)?;
        Ok((request, framing.body != BodyKind::None))
    }
}

/// The rest of an HTTP/1.x request body, read from the connection.
pub struct H1Body<'a> {
    r: ClientRead<'a>,
    /// Bytes read and not yet used.
    buf: &'a mut BytesMut,
    kind: BodyKind,
    scratch: &'a mut Vec<u8>,
}

impl<'a> RequestBody for H1Body<'a> {
    type Reader = ClientRead<'a>;

    async fn send_h1<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut W,
        limits: RelayLimits,
    ) -> Result<u64, RelayError> {
        let coding = match self.kind {
            BodyKind::Chunked => OutCoding::Chunked,
            _ => OutCoding::Identity,
        };
        relay_body(
            &mut self.r,
            self.buf,
            up,
            self.kind,
            coding,
            limits,
            self.scratch,
        )
        .await
    }

    async fn send_h2(
        &mut self,
        up: h2::SendStream<Bytes>,
        limits: RelayLimits,
    ) -> Result<u64, RelayError> {
        let mut body = SendBody::new(up);
        // A chunked upload's trailers come back in `scratch` and end the stream.
        self.scratch.clear();
        let n = relay_body(
            &mut self.r,
            self.buf,
            &mut body,
            self.kind,
            OutCoding::IdentityKeepTrailers,
            limits,
            self.scratch,
        )
        .await?;
        body.end(self.scratch)
            .map_err(|e| RelayError::DstWrite(io::Error::other(e)))?;
        Ok(n)
    }

    fn tunnel(&mut self) -> Option<(&mut ClientRead<'a>, &mut BytesMut)> {
        Some((&mut self.r, self.buf))
    }

    /// Reads on while the answer is awaited: an end of stream (a close, or a half-close, as
    /// nginx takes it too: an HTTP/1.x client does not half-close and still wait) or an error
    /// means the client is gone; bytes (a pipelined request) are kept in the buffer, up to
    /// [`WATCH_LIMIT`], past which the watch stops reading.
    fn poll_closed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        while self.buf.len() < WATCH_LIMIT {
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
            let mut rb = tokio::io::ReadBuf::uninit(&mut space);
            match std::pin::Pin::new(&mut self.r).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => self.buf.extend_from_slice(rb.filled()),
            }
        }
        Poll::Pending
    }
}

/// Most bytes read ahead from a client while its request waits for an answer.
const WATCH_LIMIT: usize = 64 * 1024;

/// The client's side of an answer on an HTTP/1.x connection.
pub struct H1Sink<'a> {
    shared: &'a Shared,
    w: ClientWrite<'a>,
    /// Heads are written here; it is also the chunk scratch of the response body.
    out: &'a mut Vec<u8>,
    timer: &'a mut crate::util::LazyTimer,
    fields: &'a mut HeaderList,
    version: Version,
    keep_alive: bool,
    head_request: bool,
    /// How the response body is written (set with its head).
    coding: OutCoding,
    /// `Server-Timing` for the next head.
    timing: Option<RouterTiming>,
}

impl<'a> ResponseSink for H1Sink<'a> {
    type Writer = ClientWrite<'a>;

    fn take_fields(&mut self) -> HeaderList {
        std::mem::take(self.fields)
    }

    fn put_fields(&mut self, fields: HeaderList) {
        *self.fields = fields;
    }

    async fn wait<F: Future + Send>(
        &mut self,
        deadline: Instant,
        f: F,
    ) -> Result<F::Output, Waited> {
        self.timer
            .run(deadline.into(), f)
            .await
            .map_err(|_| Waited::TimedOut)
    }

    fn timing(&mut self, timing: RouterTiming) {
        self.timing = Some(timing);
    }

    async fn interim(&mut self, head: &ResponseHead) -> io::Result<()> {
        if self.version != Version::Http11 {
            return Ok(());
        }
        self.out.clear();
        write_interim(self.out, head);
        self.w.write_all(self.out).await?;
        self.w.flush().await
    }

    async fn head(
        &mut self,
        head: &ResponseHead,
        framing: &ResponseFraming,
        up_buf: &mut BytesMut,
        early: bool,
        hsts: Option<&str>,
    ) -> Result<HeadSent, Abort> {
        let cfg = &self.shared.config;
        let out_framing = client_framing(framing.body, self.version);
        let keep_alive = self.keep_alive
            && !early
            && out_framing != ClientFraming::Close
            && !self.shared.is_shutting_down();
        self.coding = match out_framing {
            ClientFraming::Chunked => OutCoding::Chunked,
            _ => OutCoding::Identity,
        };
        self.out.clear();
        write_response_head(
            self.out,
            head,
            framing,
            out_framing,
            self.version,
            keep_alive,
            self.head_request,
            &cfg.headers.via,
            hsts,
        );
        if let Some(t) = self.timing.take() {
            append_field(self.out, b"Server-Timing", t.value().as_bytes());
        }
        // A body that is already here in full goes out with the head in one write.
        let mut body_sent = None;
        if let BodyKind::Length(n) = framing.body {
            if up_buf.len() as u64 >= n && n <= INLINE_BODY {
                self.out.extend_from_slice(&up_buf[..n as usize]);
                up_buf.advance(n as usize);
                body_sent = Some(n);
            }
        }
        write_all_timed(&mut self.w, self.out, cfg.timeouts.client_body)
            .await
            .map_err(|_| Abort::ClientWrite)?;
        Ok(HeadSent {
            body_sent,
            keep_alive,
        })
    }

    async fn body<R: AsyncRead + Unpin + Send>(
        &mut self,
        up: &mut R,
        up_buf: &mut BytesMut,
        kind: BodyKind,
        read_idle: Duration,
    ) -> Result<u64, Abort> {
        let limits = RelayLimits {
            read_idle,
            write_idle: self.shared.config.timeouts.client_body,
            max_bytes: 0,
        };
        relay_body(up, up_buf, &mut self.w, kind, self.coding, limits, self.out)
            .await
            .map_err(|e| e.response_abort())
    }

    async fn h2_answer(
        &mut self,
        resp: http::Response<h2::RecvStream>,
        read_idle: Duration,
        hsts: Option<&str>,
    ) -> Result<(u16, u64, bool), (u16, Abort)> {
        let cfg = &self.shared.config;
        let (parts, body) = resp.into_parts();
        let keep_alive = self.keep_alive && !self.shared.is_shutting_down();
        self.out.clear();
        let (kind, coding, keep) = write_h1_head(
            self.out,
            &parts,
            self.version,
            keep_alive,
            self.head_request,
            &cfg.headers.via,
            hsts,
        );
        if let Some(t) = self.timing.take() {
            append_field(self.out, b"Server-Timing", t.value().as_bytes());
        }
        let status = parts.status.as_u16();
        write_all_timed(&mut self.w, self.out, cfg.timeouts.client_body)
            .await
            .map_err(|_| (status, Abort::ClientWrite))?;
        if kind == BodyKind::None {
            return Ok((status, 0, keep));
        }
        let mut src = RecvBody::new(body, Bytes::new());
        let limits = RelayLimits {
            read_idle,
            write_idle: cfg.timeouts.client_body,
            max_bytes: 0,
        };
        let mut buf = BytesMut::new();
        // A chunked answer ends with the backend's trailers, once they are in.
        let relayed = if coding == OutCoding::Chunked {
            relay_chunked(&mut src, &mut buf, &mut self.w, limits, self.out).await
        } else {
            relay_body(
                &mut src,
                &mut buf,
                &mut self.w,
                kind,
                coding,
                limits,
                self.out,
            )
            .await
        };
        match relayed {
            Ok(n) => Ok((status, n, keep)),
            Err(e) => Err((status, e.response_abort())),
        }
    }

    async fn switch(&mut self, head: &ResponseHead) -> Result<&mut ClientWrite<'a>, Abort> {
        self.out.clear();
        write_switching_head(self.out, head, &self.shared.config.headers.via);
        write_all_timed(
            &mut self.w,
            self.out,
            self.shared.config.timeouts.client_body,
        )
        .await
        .map_err(|_| Abort::ClientWrite)?;
        Ok(&mut self.w)
    }
}

/// Writes an HTTP/1.1 response head for an h2c backend's answer; returns the framing used.
fn write_h1_head(
    out: &mut Vec<u8>,
    resp: &http::response::Parts,
    client: Version,
    keep_alive: bool,
    no_body: bool,
    via: &str,
    hsts: Option<&str>,
) -> (BodyKind, OutCoding, bool) {
    let status = resp.status.as_u16();
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut has_hsts = false;
    for (n, v) in &resp.headers {
        let name = n.as_str().as_bytes();
        if name == b"content-length" {
            length = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            continue;
        }
        if is_hop_by_hop(name) {
            continue;
        }
        has_hsts |= name == b"strict-transport-security";
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = no_body || status == 204 || status == 304 || status < 200;
    let (kind, coding, keep) = if bodiless {
        if let Some(n) = length.filter(|_| status != 204) {
            out.extend_from_slice(b"Content-Length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (BodyKind::None, OutCoding::Identity, keep_alive)
    } else if let Some(n) = length {
        out.extend_from_slice(b"Content-Length: ");
        put_u64(out, n);
        out.extend_from_slice(b"\r\n");
        (BodyKind::Length(n), OutCoding::Identity, keep_alive)
    } else if client == Version::Http11 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        (BodyKind::UntilClose, OutCoding::Chunked, keep_alive)
    } else {
        (BodyKind::UntilClose, OutCoding::Identity, false)
    };
    end_response_head(out, via, hsts.filter(|_| !has_hsts), keep, client);
    (kind, coding, keep)
}
