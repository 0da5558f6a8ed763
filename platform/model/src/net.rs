//! IP networks (`10.0.0.0/8`, `fd00::/8`): the operator's allow lists for backends and drains
//! are made of them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network, `10.0.0.0/8` or `fd00::/8` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a network (e.g. 10.0.0.0/8 or fd00::/8)"))?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address that is not an ordinary public unicast address, and what kind it is. Backends
/// and drains are judged by it; an IPv6 address that embeds an IPv4 address is judged as
/// that address too (see [`embedded_v4`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT; some clouds' metadata lives there).
    SharedNat,
    /// `169.254.0.0/16`, `fe80::/10`: where cloud instance metadata lives.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `240.0.0.0/4`, `255.255.255.255`, `192.0.0.0/24` (protocol assignments, one cloud's
    /// metadata at `192.0.0.192`).
    Reserved,
}

impl Special {
    pub fn describe(self) -> &'static str {
        match self {
            Special::Unspecified => "unspecified",
            Special::Loopback => "loopback",
            Special::Private => "private",
            Special::SharedNat => "shared (carrier-grade NAT)",
            Special::LinkLocal => "link-local (where cloud instance metadata lives)",
            Special::Multicast => "multicast",
            Special::Reserved => "reserved",
        }
    }
}

/// What kind of special address `ip` is, if it is one. An IPv6 address embedding IPv4
/// addresses is special when it is itself or when one of them is.
pub fn special(ip: IpAddr) -> Option<Special> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            special_own(IpAddr::V6(v6)).or_else(|| embedded_v4(v6).into_iter().find_map(special_v4))
        }
    }
}

/// [`special`] of the address itself, without the IPv4 addresses an IPv6 address embeds.
pub fn special_own(ip: IpAddr) -> Option<Special> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some(Special::Unspecified)
            } else if v6.is_loopback() {
                Some(Special::Loopback)
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some(Special::Private)
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some(Special::LinkLocal)
            } else if v6.is_multicast() {
                Some(Special::Multicast)
            } else {
                None
            }
        }
    }
}

fn special_v4(v4: Ipv4Addr) -> Option<Special> {
    let [a, b, c, _] = v4.octets();
    if a == 0 {
        Some(Special::Unspecified)
    } else if v4.is_loopback() {
        Some(Special::Loopback)
    } else if v4.is_private() {
        Some(Special::Private)
    } else if a == 100 && (64..128).contains(&b) {
        Some(Special::SharedNat)
    } else if v4.is_link_local() {
        Some(Special::LinkLocal)
    } else if v4.is_multicast() {
        Some(Special::Multicast)
    } else if a >= 240 || (a, b, c) == (192, 0, 0) {
        Some(Special::Reserved)
    } else {
        None
    }
}

/// The IPv4 addresses an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and local-use `64:ff9b:1::/48` (every
/// RFC 6052 layout that fits it), 6to4 `2002::/16`, Teredo `2001::/32` (server and client) and
/// ISATAP interface identifiers. A relay or translator sends traffic for these to the IPv4
/// address, so they are judged as it.
pub fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    let s = v6.segments();
    let mut out = Vec::new();
    if let Some(v4) = v6.to_ipv4_mapped() {
        out.push(v4);
    }
    if bits >> 32 == 0 && bits > 1 {
        out.push(at(0));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(at(0));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 §2.2: the u octet (bits 64-71) is skipped.
        let split = |hi_shift: u32, hi_bits: u32, lo_shift: u32| {
            let lo_bits = 32 - hi_bits;
            let hi = (bits >> hi_shift) as u32 & (u32::MAX >> (32 - hi_bits));
            let lo = (bits >> lo_shift) as u32 & (u32::MAX >> (32 - lo_bits));
            Ipv4Addr::from((hi << lo_bits) | lo)
        };
        out.push(split(64, 16, 40)); // /48: bits 48-63 and 72-87
        out.push(split(64, 8, 32)); // /56: bits 56-63 and 72-95
        out.push(at(24)); // /64: bits 72-103
        out.push(at(0)); // /96
    }
    if s[0] == 0x2002 {
        out.push(at(80));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(at(64));
        out.push(Ipv4Addr::from(!(bits as u32)));
    }
    if matches!((s[4] & 0xfdff, s[5]), (0, 0x5efe)) {
        out.push(at(0));
    }
    out
}
