//! Which addresses app owners may register as backends.
//!
//! A backend address is where every balancer will send the app's traffic, and where the domain
//! verifier sends its challenge: letting an owner name any address would let them point the
//! platform at its own insides (a cloud's instance metadata at `169.254.169.254`, a balancer's
//! admin listener, a database). So, for owners (the operator may register anything):
//! - addresses that are never an app instance are refused: unspecified (`0.0.0.0`, `::`),
//!   link-local (`169.254.0.0/16`, `fe80::/10`: cloud metadata lives there), multicast and
//!   broadcast, also when written as IPv4-mapped IPv6;
//! - with `pier api --backend-allow CIDR` (repeatable), the address must also be inside one of
//!   the listed networks (the runners' network, say).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pier_model::net::canonical;
pub use pier_model::net::Cidr;

/// The rule for owners' backend addresses.
#[derive(Debug, Clone, Default)]
pub struct BackendPolicy {
    /// Empty: any address that is not refused outright.
    pub allow: Vec<Cidr>,
}

impl BackendPolicy {
    /// Why an owner may not register `addr`, if they may not.
    pub fn refusal(&self, addr: SocketAddr) -> Option<String> {
        let ip = canonical(addr.ip());
        if let Some(kind) = never_an_instance(ip) {
            return Some(format!(
                "backend address {addr} is {kind}: not an app instance"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            let nets: Vec<String> = self.allow.iter().map(Cidr::to_string).collect();
            return Some(format!(
                "backend address {addr} is outside the networks allowed for backends ({})",
                nets.join(", ")
            ));
        }
        None
    }
}

fn never_an_instance(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local (where cloud instance metadata lives)")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.3.4".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let host: Cidr = "192.168.1.5".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.1.5/32");
        assert!(host.contains("192.168.1.5".parse().unwrap()));
        assert!(!host.contains("192.168.1.6".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn owners_never_get_metadata_or_non_instance_addresses() {
        let open = BackendPolicy::default();
        for bad in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "0.0.0.0:80",
            "[::]:80",
            "[fe80::1]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
        ] {
            assert!(open.refusal(sa(bad)).is_some(), "{bad}");
        }
        for good in [
            "127.0.0.1:9000",
            "10.0.0.5:8000",
            "[::1]:8080",
            "[fd00::5]:80",
        ] {
            assert_eq!(open.refusal(sa(good)), None, "{good}");
        }
        let runners = BackendPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        assert_eq!(runners.refusal(sa("10.0.0.5:8000")), None);
        assert_eq!(runners.refusal(sa("[fd00::5]:80")), None);
        let why = runners.refusal(sa("127.0.0.1:9901")).unwrap();
        assert!(why.contains("10.0.0.0/8, fd00::/8"), "{why}");
        assert!(runners.refusal(sa("169.254.169.254:80")).is_some());
    }
}
