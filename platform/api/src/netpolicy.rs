//! Which addresses app owners may register as backends.
//!
//! A backend address is where every balancer will send the app's traffic: letting an owner
//! name any address would let them point the platform at its own insides (a cloud's instance
//! metadata at `169.254.169.254`, the API, its Redis, a database). So, for owners (the operator
//! may register anything):
//! - addresses that are never an app instance are refused: unspecified, link-local (cloud
//!   metadata lives there), multicast, broadcast and reserved;
//! - loopback is refused unless `pier api --backend-allow CIDR` covers it (`pier up`, one
//!   machine, allows it);
//! - with `--backend-allow` (repeatable), the address must be inside one of the listed
//!   networks (the runners', say);
//! - the platform's own endpoints (the API's listen address, the registry's Redis, the add-on
//!   servers it knows) are refused even inside allowed networks.
//!
//! Every IPv6 spelling of an IPv4 address is judged as that address (mapped, compatible,
//! NAT64, 6to4, Teredo, ISATAP: [`pier_model::net::embedded_v4`]), so `[::169.254.169.254]`
//! is refused like `169.254.169.254`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub use pier_model::net::Cidr;
use pier_model::net::{canonical, embedded_v4, special, special_own, Special};

/// The rule for owners' backend addresses.
#[derive(Debug, Clone, Default)]
pub struct BackendPolicy {
    /// Empty: any address that is not refused outright (loopback included only when listed).
    pub allow: Vec<Cidr>,
    /// The platform's own endpoints, never an owner's backend.
    pub endpoints: Vec<SocketAddr>,
}

impl BackendPolicy {
    /// Why an owner may not register `addr`, if they may not.
    pub fn refusal(&self, addr: SocketAddr) -> Option<String> {
        let ip = canonical(addr.ip());
        // The address itself and every IPv4 address it stands for.
        let mut judged = vec![ip];
        if let IpAddr::V6(v6) = ip {
            judged.extend(embedded_v4(v6).into_iter().map(IpAddr::V4));
        }
        for &j in &judged {
            match special_own(j) {
                Some(
                    kind @ (Special::Unspecified
                    | Special::LinkLocal
                    | Special::Multicast
                    | Special::Reserved),
                ) => {
                    return Some(format!(
                        "backend address {addr} is {}{}: not an app instance",
                        kind.describe(),
                        stands_for(ip, j)
                    ))
                }
                Some(Special::Loopback) if !self.allows(j) => {
                    return Some(format!(
                        "backend address {addr} is loopback{}: owners may use it only where the operator allows it (pier api --backend-allow 127.0.0.0/8)",
                        stands_for(ip, j)
                    ))
                }
                _ => {}
            }
            if let Some(e) = self
                .endpoints
                .iter()
                .find(|e| same_endpoint(e, j, addr.port()))
            {
                return Some(format!(
                    "backend address {addr} is the platform's own endpoint {e}: not an app instance"
                ));
            }
        }
        if !self.allow.is_empty() && !judged.iter().all(|&j| self.allows(j)) {
            let nets: Vec<String> = self.allow.iter().map(Cidr::to_string).collect();
            return Some(format!(
                "backend address {addr} is outside the networks allowed for backends ({})",
                nets.join(", ")
            ));
        }
        None
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }
}

fn stands_for(ip: IpAddr, judged: IpAddr) -> String {
    if ip == judged {
        String::new()
    } else {
        format!(" (it stands for {judged})")
    }
}

/// Whether `ip:port` reaches endpoint `e`. An endpoint listening on every address (`0.0.0.0`,
/// `::`) is reached on that port at any loopback or private address (the machine's own
/// addresses cannot be listed without asking the kernel).
fn same_endpoint(e: &SocketAddr, ip: IpAddr, port: u16) -> bool {
    if e.port() != port {
        return false;
    }
    let eip = canonical(e.ip());
    if eip.is_unspecified() {
        return matches!(special(ip), Some(Special::Loopback | Special::Private));
    }
    eip == ip
}

/// The addresses `host:port` names (a name is resolved once, now); unresolvable names give
/// none. For the endpoints of [`BackendPolicy::endpoints`].
pub fn endpoint_addresses(host: &str, port: u16) -> Vec<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default()
}

/// The host and port of a `redis://` or `postgres://` URL (default port `default_port`).
pub fn url_host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.is_empty() {
        return None;
    }
    if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return Some((h.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), default_port)),
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
            "240.0.0.1:80",
            "192.0.0.192:80",
            "127.0.0.1:9000",
            "[::1]:8080",
        ] {
            assert!(open.refusal(sa(bad)).is_some(), "{bad}");
        }
        for good in [
            "10.0.0.5:8000",
            "[fd00::5]:80",
            "93.184.216.34:80",
            "[2606:2800:220:1::1]:80",
        ] {
            assert_eq!(open.refusal(sa(good)), None, "{good}");
        }
    }

    #[test]
    fn ipv6_spellings_of_an_ipv4_address_are_judged_as_it() {
        let open = BackendPolicy::default();
        for bad in [
            // IPv4-compatible, NAT64 (well-known and local-use /48 and /96), 6to4, Teredo
            // (client obfuscated: !169.254.169.254 = 0x5601:5601), ISATAP.
            "[::169.254.169.254]:80",
            "[64:ff9b::169.254.169.254]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b:1:a9fe:a9:fe00::]:80",
            "[64:ff9b:1::169.254.169.254]:80",
            "[2002:a9fe:a9fe::1]:80",
            "[2001:0:4136:e378:8000:63bf:5601:5601]:80",
            "[fd00::5efe:169.254.169.254]:80",
            "[2001:db8::5efe:169.254.169.254]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[2002:7f00:1::]:80",
        ] {
            let why = open.refusal(sa(bad));
            assert!(
                why.as_deref().is_some_and(|w| w.contains("stands for")
                    || w.contains("private")
                    || w.contains("link-local")),
                "{bad}: {why:?}"
            );
        }
        // Public IPv4 behind NAT64 or 6to4 is fine.
        assert_eq!(open.refusal(sa("[64:ff9b::5db8:d822]:80")), None);
        assert_eq!(open.refusal(sa("[2002:5db8:d822::1]:80")), None);
        // An allowed IPv4 network does not admit an IPv6 spelling outside the list.
        let runners = BackendPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            endpoints: vec![],
        };
        assert!(runners.refusal(sa("[64:ff9b::a00:5]:80")).is_some());
    }

    #[test]
    fn loopback_needs_the_operator_and_platform_endpoints_are_never_backends() {
        let one_machine = BackendPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            endpoints: vec![
                sa("127.0.0.1:7070"),
                sa("127.0.0.1:6379"),
                sa("0.0.0.0:5432"),
            ],
        };
        assert_eq!(one_machine.refusal(sa("127.0.0.1:9000")), None);
        assert_eq!(one_machine.refusal(sa("127.0.0.3:9000")), None);
        assert_eq!(one_machine.refusal(sa("[::1]:9000")), None);
        for bad in [
            "127.0.0.1:7070",
            "[::ffff:127.0.0.1]:6379",
            "127.0.0.1:5432",
            "127.0.0.2:5432",
        ] {
            let why = one_machine.refusal(sa(bad)).unwrap();
            assert!(why.contains("platform's own endpoint"), "{bad}: {why}");
        }
        // Outside the allowed networks.
        let why = one_machine.refusal(sa("10.0.0.5:8000")).unwrap();
        assert!(why.contains("127.0.0.0/8, ::1/128"), "{why}");
        let runners = BackendPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            endpoints: vec![sa("10.0.0.2:7070")],
        };
        assert_eq!(runners.refusal(sa("10.0.0.5:8000")), None);
        assert!(runners.refusal(sa("10.0.0.2:7070")).is_some());
        let why = runners.refusal(sa("127.0.0.1:9901")).unwrap();
        assert!(why.contains("--backend-allow"), "{why}");
    }

    #[test]
    fn endpoint_urls_are_read() {
        assert_eq!(
            url_host_port("redis://127.0.0.1:6380/0", 6379),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(
            url_host_port("postgres://u:p@db.internal/x", 5432),
            Some(("db.internal".into(), 5432))
        );
        assert_eq!(
            url_host_port("redis://:pw@[::1]:7000", 6379),
            Some(("::1".into(), 7000))
        );
        assert_eq!(url_host_port("nonsense", 1), None);
        assert_eq!(
            endpoint_addresses("127.0.0.1", 80),
            vec![sa("127.0.0.1:80")]
        );
    }
}
