//! The heads pier writes: the canonical HTTP/1.1 request sent upstream, and the response head
//! sent back to the client.
//!
//! Hop-by-hop fields and the fields a `Connection` header lists are dropped in both directions;
//! framing (`Content-Length` / `Transfer-Encoding`) is always written by pier from the framing it
//! parsed, never copied. Upstream requests get `X-Forwarded-*`, `X-Request-Id`,
//! `X-Request-Start` and `Via`; on a public listener the client's own `X-Forwarded-*` are
//! dropped first, on a trusted one they are kept and `X-Forwarded-For` is appended to.

use std::net::{IpAddr, SocketAddr};

use crate::framing::{BodyKind, Connection, ResponseFraming};
use crate::head::{HeaderPos, Known, RequestHead, ResponseHead, Version};

/// Per-request facts needed to write the upstream head.
pub struct Forwarding<'a> {
    /// The client's address as text (see [`client_ip_text`]).
    pub client_ip: &'a [u8],
    pub listener_port: u16,
    pub trusted: bool,
    /// The origin-form target (path and query).
    pub target: &'a [u8],
    /// The Host to send (from the Host field or the absolute-form target).
    pub host: &'a [u8],
    pub request_id: &'a [u8],
    pub body: BodyKind,
    pub explicit_zero_length: bool,
    pub request_start_ms: Option<u64>,
    pub via: &'a str,
    /// `https` on TLS listeners, else `http`.
    pub proto: &'static str,
    /// The protocol of a WebSocket upgrade, passed on with `Connection: upgrade`.
    pub upgrade: Option<&'a [u8]>,
}

fn listed(head_value: impl Fn(&HeaderPos) -> bool, conn: &Connection) -> bool {
    conn.listed.iter().any(head_value)
}

/// The text of a client address as sent in `X-Forwarded-For` (computed once per connection).
/// An IPv4-mapped IPv6 peer (dual-stack listener) is written as plain IPv4.
pub fn client_ip_text(addr: SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr.ip(), IpAddr::V4),
        v4 => v4,
    };
    ip.to_string().into_bytes()
}

/// Appends a decimal number.
pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends one field line, `name: value` CRLF. (Always inlined: it runs for most fields of
/// every head, and a call costs more than the copies.)
#[inline(always)]
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `Via: 1.1 <via>` unless `via` is empty (`[headers] via = ""` turns Via off).
#[inline(always)]
fn put_via(out: &mut Vec<u8>, via: &str) {
    if !via.is_empty() {
        out.extend_from_slice(b"Via: 1.1 ");
        out.extend_from_slice(via.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Copies the fields of a parsed head that are passed on: runs of neighbouring lines already in
/// canonical form (`name: value` CRLF) go out in one copy each; any other field is rewritten
/// as `name: value`.
struct FieldCopier<'b> {
    buf: &'b [u8],
    run: std::ops::Range<usize>,
}

impl<'b> FieldCopier<'b> {
    fn new(buf: &'b [u8]) -> Self {
        FieldCopier { buf, run: 0..0 }
    }

    fn push(&mut self, out: &mut Vec<u8>, h: &HeaderPos, name: &[u8], value: &[u8]) {
        match h.line() {
            Some(line) if line.start == self.run.end && !self.run.is_empty() => {
                self.run.end = line.end;
            }
            Some(line) => {
                self.flush(out);
                self.run = line;
            }
            None => {
                self.flush(out);
                put_field(out, name, value);
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.run.is_empty() {
            out.extend_from_slice(&self.buf[self.run.clone()]);
            self.run = 0..0;
        }
    }
}

/// Writes the canonical request head for the backend into `out`.
pub fn write_request_head(
    out: &mut Vec<u8>,
    req: &RequestHead,
    conn: &Connection,
    f: &Forwarding<'_>,
) {
    let mut fwd = UpstreamFields::start(out, req.method(), f);
    let mut copier = FieldCopier::new(&req.buf);
    for h in &req.headers {
        let name = req.name(h);
        let value = req.value(h);
        let skip = h.kind.is_hop_by_hop()
            || h.kind == Known::Host
            || listed(|t| req.value(t).eq_ignore_ascii_case(name), conn)
            || !fwd.keep(h.kind, value);
        if !skip {
            copier.push(out, h, name, value);
        }
    }
    copier.flush(out);
    fwd.finish(out);
}

/// Writes an upstream HTTP/1.1 request head from end-to-end fields (hop-by-hop ones and
/// `Host` already left out by the caller), adding framing and the forwarding fields.
pub fn write_upstream_head<'a>(
    out: &mut Vec<u8>,
    method: &[u8],
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    f: &Forwarding<'_>,
) {
    let mut fwd = UpstreamFields::start(out, method, f);
    for (name, value) in fields {
        if fwd.keep(Known::of(name), value) {
            put_field(out, name, value);
        }
    }
    fwd.finish(out);
}

/// The forwarding fields of an upstream request head: what the client sent of them, and what
/// pier adds after the client's fields.
struct UpstreamFields<'a, 'f> {
    f: &'f Forwarding<'f>,
    prior_xff: smallvec::SmallVec<[&'a [u8]; 2]>,
    keep_xf_proto: bool,
    keep_xf_host: bool,
    keep_xf_port: bool,
    keep_start: bool,
}

impl<'a, 'f> UpstreamFields<'a, 'f> {
    /// Writes the request line and `Host`.
    fn start(out: &mut Vec<u8>, method: &[u8], f: &'f Forwarding<'f>) -> Self {
        out.extend_from_slice(method);
        out.push(b' ');
        out.extend_from_slice(f.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(f.host);
        out.extend_from_slice(b"\r\n");
        UpstreamFields {
            f,
            prior_xff: smallvec::SmallVec::new(),
            keep_xf_proto: false,
            keep_xf_host: false,
            keep_xf_port: false,
            keep_start: false,
        }
    }

    /// Whether a client's end-to-end field is passed on as it is (`false`: dropped, or taken
    /// into a field pier writes itself).
    fn keep(&mut self, kind: Known, value: &'a [u8]) -> bool {
        match kind {
            Known::Other => true,
            // On a public listener a client's own X-Forwarded-* are not believed.
            k if k.is_forwarded() && !self.f.trusted => false,
            Known::XForwardedFor => {
                // Several X-Forwarded-For fields are one list, joined in `finish`.
                self.prior_xff.push(value);
                false
            }
            Known::XForwardedProto => {
                self.keep_xf_proto = true;
                true
            }
            Known::XForwardedHost => {
                self.keep_xf_host = true;
                true
            }
            Known::XForwardedPort => {
                self.keep_xf_port = true;
                true
            }
            // The id pier settled on is written in `finish`, once.
            Known::XRequestId => false,
            Known::XRequestStart => {
                self.keep_start = self.f.trusted;
                self.f.trusted
            }
            _ => true,
        }
    }

    /// Writes framing and the forwarding fields, and ends the head.
    fn finish(self, out: &mut Vec<u8>) {
        let f = self.f;
        match f.body {
            BodyKind::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                put_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
            BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            BodyKind::None | BodyKind::UntilClose => {
                if f.explicit_zero_length {
                    out.extend_from_slice(b"Content-Length: 0\r\n");
                }
            }
        }
        if let Some(proto) = f.upgrade {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(proto);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        for prior in self.prior_xff {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(f.client_ip);
        out.extend_from_slice(b"\r\n");
        if !self.keep_xf_proto {
            put_field(out, b"X-Forwarded-Proto", f.proto.as_bytes());
        }
        if !self.keep_xf_port {
            out.extend_from_slice(b"X-Forwarded-Port: ");
            put_u64(out, u64::from(f.listener_port));
            out.extend_from_slice(b"\r\n");
        }
        if !self.keep_xf_host {
            put_field(out, b"X-Forwarded-Host", f.host);
        }
        if !f.request_id.is_empty() {
            put_field(out, b"X-Request-Id", f.request_id);
        }
        if let (Some(ms), false) = (f.request_start_ms, self.keep_start) {
            out.extend_from_slice(b"X-Request-Start: t=");
            put_u64(out, ms);
            out.extend_from_slice(b"\r\n");
        }
        put_via(out, f.via);
        out.extend_from_slice(b"\r\n");
    }
}

/// How the response body will be written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body follows (HEAD, 204, 304, 1xx, or an empty body).
    NoBody,
    Length(u64),
    Chunked,
    /// Body delimited by closing the connection (HTTP/1.0 clients, unknown length).
    Close,
}

/// Decides how to frame a response for this client.
pub fn client_framing(body: BodyKind, client: Version) -> ClientFraming {
    match (body, client) {
        (BodyKind::None, _) => ClientFraming::NoBody,
        (BodyKind::Length(n), _) => ClientFraming::Length(n),
        (BodyKind::Chunked | BodyKind::UntilClose, Version::Http11) => ClientFraming::Chunked,
        (BodyKind::Chunked | BodyKind::UntilClose, Version::Http10) => ClientFraming::Close,
    }
}

/// Writes the response head for the client into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    framing: &ResponseFraming,
    out_framing: ClientFraming,
    client: Version,
    keep_alive: bool,
    head_request: bool,
    via: &str,
    hsts: Option<&str>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let mut has_hsts = false;
    let mut copier = FieldCopier::new(&resp.buf);
    for h in &resp.headers {
        let name = resp.name(h);
        if h.kind.is_hop_by_hop()
            || listed(|t| resp.value(t).eq_ignore_ascii_case(name), &framing.conn)
        {
            continue;
        }
        has_hsts |= h.kind == Known::StrictTransportSecurity;
        copier.push(out, h, name, resp.value(h));
    }
    copier.flush(out);
    let status = resp.status;
    match out_framing {
        ClientFraming::NoBody => {
            // HEAD and 304 answers describe the body they do not carry: keep its length.
            if (head_request || status == 304) && status != 204 {
                if let Some(n) = framing.length {
                    out.extend_from_slice(b"Content-Length: ");
                    put_u64(out, n);
                    out.extend_from_slice(b"\r\n");
                }
            } else if status != 204 && status >= 200 {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::Close => {}
    }
    end_response_head(out, via, hsts.filter(|_| !has_hsts), keep_alive, client);
}

/// The end of every response head pier writes for a backend's answer: `Via`, HSTS (when the
/// app wants it and the backend did not send its own), the connection's fate, the blank line.
pub fn end_response_head(
    out: &mut Vec<u8>,
    via: &str,
    hsts: Option<&str>,
    keep_alive: bool,
    client: Version,
) {
    put_via(out, via);
    if let Some(v) = hsts {
        put_field(out, b"Strict-Transport-Security", v.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Adds a field to the head at the end of `out`, already ended by its blank line.
pub fn append_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
        put_field(out, name, value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a backend's `101 Switching Protocols` for the client: its end-to-end fields, then
/// `Connection: upgrade` and the `Upgrade` it chose.
pub fn write_switching_head(out: &mut Vec<u8>, resp: &ResponseHead, via: &str) {
    write_status_and_fields(out, resp);
    put_via(out, via);
    out.extend_from_slice(b"Connection: upgrade\r\n");
    if let Some(u) = resp.first(Known::Upgrade) {
        put_field(out, b"Upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes an interim (1xx) response for an HTTP/1.1 client.
pub fn write_interim(out: &mut Vec<u8>, resp: &ResponseHead) {
    write_status_and_fields(out, resp);
    out.extend_from_slice(b"\r\n");
}

/// The status line of a backend's answer and its end-to-end fields (hop-by-hop ones left out).
fn write_status_and_fields(out: &mut Vec<u8>, resp: &ResponseHead) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let mut copier = FieldCopier::new(&resp.buf);
    for h in &resp.headers {
        if !h.kind.is_hop_by_hop() {
            copier.push(out, h, resp.name(h), resp.value(h));
        }
    }
    copier.flush(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::RequestFraming;
    use crate::head::{parse_request, HeadLimits};
    use bytes::Bytes;

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 1024,
        max_head: 8192,
        max_headers: 64,
    };

    fn forward(raw: &str, trusted: bool) -> String {
        let (n, p) = parse_request(raw.as_bytes(), &LIMITS).unwrap().unwrap();
        let head = p.into_head(Bytes::copy_from_slice(&raw.as_bytes()[..n]));
        let fr = RequestFraming::of(&head).unwrap();
        let mut out = Vec::new();
        let host = head.value(&fr.host.unwrap()).to_vec();
        write_request_head(
            &mut out,
            &head,
            &fr.conn,
            &Forwarding {
                client_ip: b"10.1.2.3",
                listener_port: 8080,
                trusted,
                target: head.target(),
                host: &host,
                request_id: b"rid",
                body: fr.body,
                explicit_zero_length: fr.length == Some(0),
                request_start_ms: Some(1000),
                via: "pier",
                proto: "http",
                upgrade: None,
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_listed_fields_are_dropped() {
        let out = forward(
            "GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
             Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nAccept: */*\r\n\r\n",
            false,
        );
        assert!(
            out.starts_with("GET /p HTTP/1.1\r\nHost: a.test\r\n"),
            "{out}"
        );
        for gone in [
            "X-Secret",
            "Keep-Alive",
            "TE:",
            "Upgrade",
            "Proxy-Connection",
            "Connection",
        ] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(out.contains("Accept: */*\r\n"));
        assert!(out.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(out.contains("X-Forwarded-Proto: http\r\n"));
        assert!(out.contains("X-Forwarded-Port: 8080\r\n"));
        assert!(out.contains("X-Forwarded-Host: a.test\r\n"));
        assert!(out.contains("X-Request-Id: rid\r\n"));
        assert!(out.contains("X-Request-Start: t=1000\r\n"));
        assert!(out.ends_with("Via: 1.1 pier\r\n\r\n"));
    }

    #[test]
    fn kept_fields_come_out_in_order_and_canonical() {
        // Canonical lines are copied in runs; the others are rewritten as `name: value`; the
        // runs break around the dropped fields.
        let out = forward(
            "GET / HTTP/1.1\r\nA: 1\r\nB:2\r\nHost: a\r\nC: \t 3 \r\nConnection: x-drop\r\n\
             D: 4\r\nE: 5\r\nX-Drop: y\r\nF: \r\nG:\r\nH: 8\r\nX-Request-Id: theirs\r\nI: 9\r\n\r\n",
            false,
        );
        let fields = out
            .split("\r\n")
            .skip(2)
            .take_while(|l| !l.starts_with("X-Forwarded-For"))
            .collect::<Vec<_>>();
        assert_eq!(
            fields,
            ["A: 1", "B: 2", "C: 3", "D: 4", "E: 5", "F: ", "G: ", "H: 8", "I: 9"],
            "{out}"
        );
    }

    #[test]
    fn response_fields_are_copied_in_order_without_hop_by_hop() {
        let raw = "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Hop\r\nX-Hop: h\r\n\
                   Content-Length: 2\r\nDate:  today\r\nX-A: a\r\nX-B: b\r\n\r\n";
        let (n, p) = crate::head::parse_response(raw.as_bytes(), &LIMITS)
            .unwrap()
            .unwrap();
        let head = p.into_head(Bytes::copy_from_slice(&raw.as_bytes()[..n]));
        let fr = ResponseFraming::of(&head, false).unwrap();
        let mut out = Vec::new();
        let framing = client_framing(fr.body, Version::Http11);
        write_response_head(
            &mut out,
            &head,
            &fr,
            framing,
            Version::Http11,
            true,
            false,
            "pier",
            None,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: s\r\nDate: today\r\nX-A: a\r\nX-B: b\r\n\
             Content-Length: 2\r\nVia: 1.1 pier\r\n\r\n"
        );
    }

    #[test]
    fn public_listener_strips_client_forwarded_fields() {
        let out = forward(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil\r\nX-Request-Id: theirs\r\n\r\n",
            false,
        );
        assert!(!out.contains("1.1.1.1"));
        assert!(!out.contains("https"));
        assert!(!out.contains("evil"));
        assert!(!out.contains("theirs"));
        assert_eq!(out.matches("X-Forwarded-For").count(), 1);
    }

    #[test]
    fn trusted_listener_appends_to_client_forwarded_for() {
        let out = forward(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
            true,
        );
        assert!(
            out.contains("X-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Forwarded-Proto: https\r\n"));
        assert!(!out.contains("X-Forwarded-Proto: http\r\n"));
    }

    #[test]
    fn framing_is_rewritten() {
        let out = forward(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let out = forward(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(out.contains("Content-Length: 0\r\n"));
        let out = forward(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n",
            false,
        );
        assert!(out.contains("Content-Length: 7\r\n"));
    }
}
