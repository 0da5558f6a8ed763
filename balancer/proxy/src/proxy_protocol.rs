//! Stage `accept`: the PROXY protocol (HAProxy's, versions 1 and 2) on listeners marked
//! `proxy_protocol = true`, for a balancer behind a TCP load balancer (AWS NLB, HAProxy in TCP
//! mode, another pier) that passes the client's address in front of the connection's bytes.
//!
//! On such a listener every connection must start with a valid header, read before TLS or HTTP;
//! the client address it gives replaces the peer's for everything after (`X-Forwarded-For`, the
//! access log, the router line). A missing, malformed or slow header closes the connection, as
//! the specification asks. Other listeners never look for one: a `PROXY …` line sent to them
//! is an HTTP request line like any other, refused with a `400`, so the address cannot be
//! spoofed there.
//!
//! Exactly the header's bytes are consumed (version 2 says its length; version 1 is read up to
//! its CRLF from what the socket already holds), so what follows — a TLS ClientHello, an
//! HTTP/2 preface, a request — reaches the next stage untouched.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12 bytes that open a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Largest version 2 address block accepted (addresses and TLVs): TCP over IPv6 needs 36
/// bytes; senders add a few TLVs (AWS: the VPC endpoint id). More is refused.
const V2_MAX_LEN: usize = 2048;

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The connection closed, failed or stayed silent before a whole header.
    Incomplete,
    /// Neither signature: the sender does not speak the PROXY protocol.
    Missing,
    Malformed(&'static str),
}

impl ProxyHeaderError {
    /// A short stable reason, for the log and `pier_proxy_protocol_refused_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyHeaderError::Incomplete => "incomplete",
            ProxyHeaderError::Missing => "missing",
            ProxyHeaderError::Malformed(_) => "malformed",
        }
    }
}

impl std::fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyHeaderError::Incomplete => f.write_str("no complete PROXY protocol header"),
            ProxyHeaderError::Missing => f.write_str("no PROXY protocol header"),
            ProxyHeaderError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
        }
    }
}

/// Reads the header at the start of `stream` (within `within`) and returns the client address
/// it gives: `peer` itself for a `LOCAL` (health check) or `UNKNOWN` header, or an address
/// family it does not carry.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    within: Duration,
) -> Result<SocketAddr, ProxyHeaderError> {
    match tokio::time::timeout(within, read(stream)).await {
        Err(_) => Err(ProxyHeaderError::Incomplete),
        Ok(r) => r.map(|client| client.unwrap_or(peer)),
    }
}

async fn read(s: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let io = |_| ProxyHeaderError::Incomplete;
    // 15 bytes: as long as the shortest version 1 header, shorter than any version 2 one.
    let mut start = [0u8; 16];
    s.read_exact(&mut start[..15]).await.map_err(io)?;
    if start[..12] == V2_SIGNATURE {
        s.read_exact(&mut start[15..]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([start[14], start[15]]));
        if len > V2_MAX_LEN {
            return Err(ProxyHeaderError::Malformed("version 2 header too long"));
        }
        let mut block = vec![0u8; len];
        s.read_exact(&mut block).await.map_err(io)?;
        return parse_v2(start[12], start[13], &block);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    // Version 1: up to the CRLF, taking only bytes that belong to the line (every valid line
    // is 15 bytes or more, so a CRLF inside the first 15 ends a malformed one).
    if start[..14].windows(2).any(|w| w == b"\r\n") {
        return Err(ProxyHeaderError::Malformed("version 1 line too short"));
    }
    let mut line = start[..15].to_vec();
    while !line.ends_with(b"\r\n") {
        let mut peeked = [0u8; V1_MAX];
        let room = V1_MAX - line.len();
        if room == 0 {
            return Err(ProxyHeaderError::Malformed(
                "version 1 line longer than 107 bytes",
            ));
        }
        let n = s.peek(&mut peeked[..room]).await.map_err(io)?;
        if n == 0 {
            return Err(ProxyHeaderError::Incomplete);
        }
        // A CR ending what was read before pairs with an LF at the start of this read.
        let joined = [&line[line.len() - 1..], &peeked[..n]].concat();
        let take = match joined.windows(2).position(|w| w == b"\r\n") {
            Some(i) => i + 1, // through the LF, counted from this read's start
            None => n,
        };
        let mut chunk = vec![0u8; take];
        s.read_exact(&mut chunk).await.map_err(io)?;
        line.extend_from_slice(&chunk);
    }
    parse_v1(&line)
}

/// A version 1 line, CRLF included: `PROXY TCP4|TCP6 SRC DST SPORT DPORT` or `PROXY UNKNOWN …`.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = line
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(bad("version 1 line is not ASCII ending in CRLF"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyHeaderError::Missing);
    }
    let family = fields.next().ok_or(bad("no protocol"))?;
    if family == "UNKNOWN" {
        // The rest may be anything (the sender could not tell the addresses).
        return Ok(None);
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => {
            return Err(bad(
                "version 1 needs exactly: protocol, two addresses, two ports",
            ))
        }
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip: IpAddr = text.parse().map_err(|_| bad("bad address"))?;
        match (family, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            ("TCP4" | "TCP6", _) => Err(bad("address of the other family")),
            _ => Err(bad("unknown protocol (TCP4, TCP6 or UNKNOWN)")),
        }
    };
    let port = |text: &str| -> Result<u16, ProxyHeaderError> {
        let digits =
            !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(bad("bad port"));
        }
        text.parse().map_err(|_| bad("bad port"))
    };
    ip(dst)?;
    port(dport)?;
    Ok(Some(SocketAddr::new(ip(src)?, port(sport)?)))
}

/// A version 2 header after its signature: the version/command byte, the family/protocol
/// byte and the address block (addresses, then TLVs, which are skipped).
pub fn parse_v2(
    ver_cmd: u8,
    family: u8,
    block: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if ver_cmd >> 4 != 2 {
        return Err(bad("version 2 signature with another version"));
    }
    match ver_cmd & 0x0f {
        // LOCAL: the sender's own connection (a health check): the real peer stands.
        0x0 => return Ok(None),
        0x1 => {}
        _ => return Err(bad("unknown command")),
    }
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = block.get(..12).ok_or(bad("address block too short"))?;
            let ip = IpAddr::from([a[0], a[1], a[2], a[3]]);
            Ok(Some(SocketAddr::new(ip, u16::from_be_bytes([a[8], a[9]]))))
        }
        // TCP over IPv6.
        0x21 => {
            let a = block.get(..36).ok_or(bad("address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = IpAddr::from(octets);
            Ok(Some(SocketAddr::new(
                ip,
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // UNSPEC, UDP, unix sockets: nothing pier can use as a client address; the
        // specification lets the receiver keep the real endpoints.
        f if f >> 4 <= 3 && f & 0x0f <= 2 => Ok(None),
        _ => Err(bad("unknown address family or protocol")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(line: &str) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        parse_v1(line.as_bytes())
    }

    #[test]
    fn version_1_lines() {
        assert_eq!(
            v1("PROXY TCP4 203.0.113.9 10.0.0.1 56324 443\r\n").unwrap(),
            Some("203.0.113.9:56324".parse().unwrap())
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::9 2001:db8::1 4000 80\r\n").unwrap(),
            Some("[2001:db8::9]:4000".parse().unwrap())
        );
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap(), None);
        assert_eq!(v1("PROXY UNKNOWN ffff::1 ::1 1 2\r\n").unwrap(), None);
        for bad in [
            "PROXY TCP4 203.0.113.9 10.0.0.1 56324\r\n",
            "PROXY TCP4 203.0.113.9 10.0.0.1 56324 443 x\r\n",
            "PROXY TCP4 2001:db8::9 10.0.0.1 1 2\r\n",
            "PROXY TCP6 203.0.113.9 10.0.0.1 1 2\r\n",
            "PROXY TCP4 203.0.113.9 10.0.0.1 65536 443\r\n",
            "PROXY TCP4 203.0.113.9 10.0.0.1 0443 443\r\n",
            "PROXY TCP4 203.0.113.9 10.0.0.1 +1 443\r\n",
            "PROXY TCP4  203.0.113.9 10.0.0.1 1 443\r\n",
            "PROXY UDP4 203.0.113.9 10.0.0.1 1 443\r\n",
            "PROXY TCP4 203.0.113.9 10.0.0.1 1 443\n",
        ] {
            assert!(
                matches!(v1(bad), Err(ProxyHeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(v1("GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
    }

    #[test]
    fn version_2_blocks() {
        let mut v4 = vec![203, 0, 113, 9, 10, 0, 0, 1];
        v4.extend_from_slice(&56324u16.to_be_bytes());
        v4.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x11, &v4).unwrap(),
            Some("203.0.113.9:56324".parse().unwrap())
        );
        // TLVs after the addresses are skipped.
        let mut tlv = v4.clone();
        tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        assert_eq!(
            parse_v2(0x21, 0x11, &tlv).unwrap(),
            parse_v2(0x21, 0x11, &v4).unwrap()
        );
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend_from_slice(&[0; 11]);
        v6.push(9);
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&4000u16.to_be_bytes());
        v6.extend_from_slice(&80u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x21, &v6).unwrap(),
            Some("[2001:db8::9]:4000".parse().unwrap())
        );
        // LOCAL keeps the real peer; so do families pier cannot use.
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), None);
        assert_eq!(parse_v2(0x21, 0x00, &[]).unwrap(), None);
        assert_eq!(parse_v2(0x21, 0x31, &[0; 216]).unwrap(), None);
        for (vc, fam, block) in [
            (0x11, 0x11, &v4[..]),
            (0x22, 0x11, &v4[..]),
            (0x21, 0x11, &v4[..11]),
            (0x21, 0x21, &v4[..]),
            (0x21, 0x41, &v4[..]),
        ] {
            assert!(
                matches!(
                    parse_v2(vc, fam, block),
                    Err(ProxyHeaderError::Malformed(_))
                ),
                "{vc:#x} {fam:#x}"
            );
        }
    }
}
