//! Log drains: where an app's log lines are forwarded (a syslog server, an HTTPS endpoint).
//! The URL rules ([`DrainUrl`]), which addresses a drain may reach ([`DrainPolicy`]), and the
//! record the API makes and the drainer (`pier drainer`) keeps up to date ([`DrainRecord`]).
//! The API checks a drain when it is added; the drainer checks its addresses again each time
//! it connects.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::net::{canonical, special, Cidr};

/// Most drains one app may have.
pub const MAX_DRAINS_PER_APP: usize = 5;
/// Longest drain URL, bytes.
pub const MAX_DRAIN_URL: usize = 2048;

/// How a drain delivers, from its URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum DrainKind {
    /// `syslog://host:port`: RFC 5424 messages over TCP, octet-counted (RFC 6587).
    #[serde(rename = "syslog")]
    Syslog,
    /// `syslog+tls://host:port`: the same over TLS.
    #[serde(rename = "syslog+tls")]
    SyslogTls,
    /// `https://host[:port]/path`: batches POSTed in the logplex format.
    #[serde(rename = "https")]
    Https,
    /// `http://host[:port]/path`: the same without TLS.
    #[serde(rename = "http")]
    Http,
}

impl DrainKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            DrainKind::Syslog => "syslog",
            DrainKind::SyslogTls => "syslog+tls",
            DrainKind::Https => "https",
            DrainKind::Http => "http",
        }
    }

    /// Whether the connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, DrainKind::SyslogTls | DrainKind::Https)
    }

    /// Whether it speaks HTTP (logplex batches) rather than syslog.
    pub fn http(self) -> bool {
        matches!(self, DrainKind::Https | DrainKind::Http)
    }

    fn default_port(self) -> Option<u16> {
        match self {
            DrainKind::Https => Some(443),
            DrainKind::Http => Some(80),
            DrainKind::Syslog | DrainKind::SyslogTls => None,
        }
    }

    fn from_scheme(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "syslog" => DrainKind::Syslog,
            "syslog+tls" => DrainKind::SyslogTls,
            "https" => DrainKind::Https,
            "http" => DrainKind::Http,
            _ => return None,
        })
    }
}

/// A drain URL, checked and normalised (scheme and host in lower case, the default port left
/// out): `syslog://logs.example.com:514`, `https://user:pw@logs.example.com/pier?x=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainUrl {
    pub kind: DrainKind,
    /// A hostname, or an IP address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// HTTP only: the request target, path and query (`/` at least).
    pub target: String,
    /// HTTP only: `user:password` (sent as Basic authorization), as written.
    pub userinfo: Option<String>,
}

impl DrainUrl {
    /// Parses and checks `raw`; the error names the problem.
    pub fn parse(raw: &str) -> Result<DrainUrl, String> {
        if raw.len() > MAX_DRAIN_URL {
            return Err(format!(
                "the drain URL is longer than {MAX_DRAIN_URL} bytes"
            ));
        }
        if raw.is_empty() {
            return Err("the drain URL is empty".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the drain URL may hold only printable ASCII without spaces (percent-encode the rest)"
                    .into(),
            );
        }
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            format!("{raw:?} is not a drain URL: syslog://HOST:PORT, syslog+tls://HOST:PORT or https://HOST/PATH")
        })?;
        let kind = DrainKind::from_scheme(scheme).ok_or_else(|| {
            format!("unknown drain scheme {scheme:?}: syslog, syslog+tls, https or http")
        })?;
        if rest.contains('#') {
            return Err("a drain URL has no fragment (#...)".into());
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if userinfo.is_some() && !kind.http() {
            return Err("a syslog drain URL takes no user or password".into());
        }
        let (host, port) = split_host_port(hostport)?;
        let host = check_host(host)?;
        let port = match (port, kind.default_port()) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "a {} drain URL needs a port ({}://{host}:514)",
                    kind.scheme(),
                    kind.scheme()
                ))
            }
        };
        let target = if kind.http() {
            match target {
                "" => "/".to_string(),
                t if t.starts_with('?') => format!("/{t}"),
                t => t.to_string(),
            }
        } else {
            if !matches!(target, "" | "/") {
                return Err("a syslog drain URL has no path or query".into());
            }
            String::new()
        };
        Ok(DrainUrl {
            kind,
            host,
            port,
            target,
            userinfo: userinfo.map(str::to_string),
        })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host[:port]` as an HTTP `Host` header has it (the default port left out).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if Some(self.port) == self.kind.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL without credentials, path or query: safe to log.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{}://{host}:{}", self.kind.scheme(), self.port)
    }
}

impl fmt::Display for DrainUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some(u) = &self.userinfo {
            write!(f, "{u}@")?;
        }
        let authority = match self.kind.default_port() {
            Some(_) => self.authority(),
            // A syslog URL always names its port.
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        };
        write!(f, "{authority}{}", self.target)
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) =
        if let Some(inner) = hostport.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("{hostport:?}: an IPv6 address needs its closing ']'"))?;
            if h.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{h:?} is not an IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("{hostport:?}: expected ':PORT' after the address")
                    })?),
                ),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
    if host.is_empty() {
        return Err("the drain URL has no host".into());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a port (1-65535)"))?,
        ),
    };
    Ok((host, port))
}

/// A hostname (lower-cased, without a trailing dot) or an IP address.
fn check_host(host: &str) -> Result<String, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let all_digits = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) || all_digits {
        return Err(format!("{host:?} is not a hostname or an IP address"));
    }
    Ok(name)
}

/// Which addresses drains may reach. Addresses inside the platform (loopback, private,
/// link-local where cloud metadata lives, unspecified, multicast, broadcast, reserved) are
/// refused unless the operator allows their network (`pier api --drain-allow CIDR`); public
/// addresses always may.
#[derive(Debug, Clone, Default)]
pub struct DrainPolicy {
    pub allow: Vec<Cidr>,
}

impl DrainPolicy {
    /// Why a drain may not reach `ip`, if it may not.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        let kind = special(ip)?;
        if self.allow.iter().any(|c| c.contains(ip)) {
            return None;
        }
        Some(format!(
            "address {ip} is {}: drains may not reach it unless the operator allows its network (pier api --drain-allow CIDR)",
            kind.describe()
        ))
    }
}

/// A drain as stored (`pier:drains:<app>`, id → JSON): made by the API, its delivery status
/// kept by the drainer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub id: String,
    pub app: String,
    /// The normalised URL.
    pub url: String,
    pub kind: DrainKind,
    pub created_at_ms: u64,
    /// Lines delivered so far.
    #[serde(default)]
    pub delivered: u64,
    /// Lines the log stream's cap removed before they were delivered.
    #[serde(default)]
    pub dropped: u64,
    /// The last delivery failure, kept once deliveries resume (its time tells).
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at_ms: Option<u64>,
    /// Entries added to the app's stream before the next one to deliver (delivered, dropped,
    /// or written before the drain was made): how the drainer counts the lines the stream's
    /// cap removed before it could deliver them.
    #[serde(default)]
    pub offset: u64,
}

/// A drain as the API shows it: where it delivers and how that goes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Drain)]
pub struct DrainView {
    /// The drain's id (also sent as `Logplex-Drain-Token` to HTTPS drains).
    pub id: String,
    /// The normalised URL.
    pub url: String,
    pub kind: DrainKind,
    pub created_at_ms: u64,
    /// Lines delivered so far.
    pub delivered: u64,
    /// Lines the app's log stream dropped (its cap) before the drain could deliver them.
    pub dropped: u64,
    /// The last delivery failure (kept once deliveries resume: its time tells).
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
}

impl From<&DrainRecord> for DrainView {
    fn from(r: &DrainRecord) -> Self {
        DrainView {
            id: r.id.clone(),
            url: r.url.clone(),
            kind: r.kind,
            created_at_ms: r.created_at_ms,
            delivered: r.delivered,
            dropped: r.dropped,
            last_error: r.last_error.clone(),
            last_error_at_ms: r.last_error_at_ms,
        }
    }
}

/// An app's drains.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainList {
    pub drains: Vec<DrainView>,
}

/// A drain to add: `syslog://HOST:PORT`, `syslog+tls://HOST:PORT`, `https://HOST[:PORT]/PATH`
/// or `http://...`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDrain {
    pub url: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_checked_and_normalised() {
        let u = DrainUrl::parse("SYSLOG://Logs.Example.com.:6514").unwrap();
        assert_eq!(u.kind, DrainKind::Syslog);
        assert_eq!(u.host, "logs.example.com");
        assert_eq!(u.to_string(), "syslog://logs.example.com:6514");
        let u = DrainUrl::parse("syslog+tls://[::1]:514/").unwrap();
        assert_eq!(u.kind, DrainKind::SyslogTls);
        assert_eq!(u.to_string(), "syslog+tls://[::1]:514");
        assert_eq!(u.ip(), Some("::1".parse().unwrap()));
        let u = DrainUrl::parse("https://u:p%40ss@logs.example.com/in?app=1").unwrap();
        assert_eq!(u.port, 443);
        assert_eq!(u.target, "/in?app=1");
        assert_eq!(u.userinfo.as_deref(), Some("u:p%40ss"));
        assert_eq!(u.authority(), "logs.example.com");
        assert_eq!(u.redacted(), "https://logs.example.com:443");
        assert_eq!(u.to_string(), "https://u:p%40ss@logs.example.com/in?app=1");
        let u = DrainUrl::parse("http://10.0.0.1:8080").unwrap();
        assert_eq!(u.target, "/");
        assert_eq!(u.authority(), "10.0.0.1:8080");
        assert_eq!(u.to_string(), "http://10.0.0.1:8080/");
        let u = DrainUrl::parse("https://h.example?x").unwrap();
        assert_eq!(u.target, "/?x");
    }

    #[test]
    fn bad_urls_name_their_problem() {
        for (raw, why) in [
            ("ftp://h:1", "unknown drain scheme"),
            ("logs.example.com:514", "not a drain URL"),
            ("syslog://:514", "no host"),
            ("syslog://h.example", "needs a port"),
            ("syslog://u@h.example:514", "no user or password"),
            ("syslog://h.example:514/x", "no path"),
            ("syslog://h.example:0", "not a port"),
            ("syslog://h.example:99999", "not a port"),
            ("https://h.example/a#b", "fragment"),
            ("https://h ex/", "printable ASCII"),
            ("https://h_x.example/", "not a hostname"),
            ("https://1.2.3/", "not a hostname"),
            ("https://[::1/", "closing"),
            ("https://[zz]/", "not an IPv6"),
            ("", "empty"),
        ] {
            let e = DrainUrl::parse(raw).unwrap_err();
            assert!(e.contains(why), "{raw}: {e}");
        }
        let long = format!("https://h.example/{}", "a".repeat(MAX_DRAIN_URL));
        assert!(DrainUrl::parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let closed = DrainPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let why = closed.refusal(ip.parse().unwrap());
            assert!(why.is_some_and(|w| w.contains("--drain-allow")), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822"] {
            assert_eq!(closed.refusal(ip.parse().unwrap()), None, "{ip}");
        }
        let dev = DrainPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(dev.refusal("127.0.0.1".parse().unwrap()), None);
        assert_eq!(dev.refusal("::ffff:127.0.0.2".parse().unwrap()), None);
        assert!(dev.refusal("10.0.0.1".parse().unwrap()).is_some());
        assert!(dev.refusal("::1".parse().unwrap()).is_some());
    }
}
