//! Hostname normalisation, on both sides of the table.
//!
//! Requests carry a `Host` header (or an absolute-form target) straight off the network: it is
//! normalised into a stack buffer without allocating ([`RequestHost::parse`]). Configured domains
//! are normalised once at load, with IDNA for Unicode names ([`DomainPattern::parse`]). Both end up
//! lower-case ASCII with no port and no trailing dot, so a lookup is a plain byte comparison.

use std::fmt;
use std::sync::Arc;

/// Longest hostname accepted (RFC 1035: 253 characters without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a request's host could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host longer than 253 characters")]
    TooLong,
    #[error("invalid character in host")]
    InvalidChar,
    #[error("invalid port in host")]
    InvalidPort,
    #[error("malformed IPv6 literal")]
    InvalidIpLiteral,
}

/// A normalised request host, held inline (no heap allocation on the request path).
#[derive(Clone)]
pub struct RequestHost {
    buf: [u8; MAX_HOST_LEN + 2],
    len: u8,
    port: Option<u16>,
}

impl RequestHost {
    /// Normalises a `Host` field value or an absolute-form authority: lower-cases it, strips the
    /// port and one trailing dot, and refuses anything that is not a reg-name made of letters,
    /// digits, `-`, `_` and `.`, an IPv4 address or a bracketed IPv6 literal.
    pub fn parse(raw: &[u8]) -> Result<Self, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        let mut out = RequestHost {
            buf: [0; MAX_HOST_LEN + 2],
            len: 0,
            port: None,
        };
        let (host, port) = if raw[0] == b'[' {
            let close = raw
                .iter()
                .position(|&b| b == b']')
                .ok_or(HostError::InvalidIpLiteral)?;
            let inner = &raw[1..close];
            if inner.is_empty()
                || inner.len() > 45
                || !inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(HostError::InvalidIpLiteral);
            }
            let rest = &raw[close + 1..];
            let port = match rest {
                [] => None,
                [b':', digits @ ..] => Some(digits),
                _ => return Err(HostError::InvalidIpLiteral),
            };
            (&raw[..=close], port)
        } else {
            match raw.iter().position(|&b| b == b':') {
                Some(i) => (&raw[..i], Some(&raw[i + 1..])),
                None => (raw, None),
            }
        };
        if let Some(digits) = port {
            // RFC 3986 allows an empty port ("host:"); it means the default.
            if !digits.is_empty() {
                if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(HostError::InvalidPort);
                }
                let mut value: u32 = 0;
                for &d in digits {
                    value = value * 10 + u32::from(d - b'0');
                }
                out.port = Some(u16::try_from(value).map_err(|_| HostError::InvalidPort)?);
            }
        }
        let host = match host {
            [rest @ .., b'.'] if host[0] != b'[' => rest,
            _ => host,
        };
        if host.is_empty() {
            return Err(HostError::Empty);
        }
        if host.len() > MAX_HOST_LEN + 2 {
            return Err(HostError::TooLong);
        }
        let bracketed = host[0] == b'[';
        for (slot, &b) in out.buf.iter_mut().zip(host) {
            let ok = if bracketed {
                true
            } else {
                b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
            };
            if !ok {
                return Err(HostError::InvalidChar);
            }
            *slot = b.to_ascii_lowercase();
        }
        if !bracketed && (host.len() > MAX_HOST_LEN || host.starts_with(b".")) {
            return Err(if host.len() > MAX_HOST_LEN {
                HostError::TooLong
            } else {
                HostError::InvalidChar
            });
        }
        // An empty label: two dots in a row, or a dot left at the end once one was stripped
        // ("a.example.com.." is not "a.example.com.").
        if !bracketed && (host.ends_with(b".") || host.windows(2).any(|w| w == b"..")) {
            return Err(HostError::InvalidChar);
        }
        out.len = host.len() as u8;
        Ok(out)
    }

    /// The normalised name (lower-case, no port, no trailing dot).
    /// The normalised name's bytes (ASCII), without the check `as_str` makes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Every byte was checked to be ASCII above.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// The port given with the host, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Debug for RequestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestHost({:?}, port {:?})", self.as_str(), self.port)
    }
}

/// A configured domain: an exact name, a wildcard (`*.example.com`, matching any depth below it)
/// or the catch-all `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    Exact(Arc<str>),
    /// Holds the suffix without the leading `*.`.
    Wildcard(Arc<str>),
    CatchAll,
}

/// Why a configured domain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty domain")]
    Empty,
    #[error("not a valid internationalised domain name")]
    Idna,
    #[error("domain longer than 253 characters")]
    TooLong,
    #[error("label {0:?} is empty or longer than 63 characters")]
    BadLabel(String),
    #[error("invalid character {0:?} (allowed: letters, digits, '-', '_', '.')")]
    InvalidChar(char),
    #[error("a label may not start or end with '-': {0:?}")]
    Hyphen(String),
    #[error("'*' is only allowed as the whole first label ('*.example.com') or alone")]
    Wildcard,
}

impl DomainPattern {
    /// Normalises a configured domain: Unicode names go through IDNA (UTS #46) to their ASCII
    /// form, then lower-case, one trailing dot stripped, labels checked.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(DomainPattern::CatchAll);
        }
        let (wild, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if rest.contains('*') {
            return Err(DomainError::Wildcard);
        }
        let name: Arc<str> = normalise_name(rest)?.into();
        Ok(if wild {
            DomainPattern::Wildcard(name)
        } else {
            DomainPattern::Exact(name)
        })
    }

    /// The key this pattern is stored under in the table: the name itself, or the suffix of a
    /// wildcard.
    pub fn key(&self) -> &str {
        match self {
            DomainPattern::Exact(n) | DomainPattern::Wildcard(n) => n,
            DomainPattern::CatchAll => "*",
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(n) => f.write_str(n),
            DomainPattern::Wildcard(n) => write!(f, "*.{n}"),
            DomainPattern::CatchAll => f.write_str("*"),
        }
    }
}

/// Normalises a plain hostname (no wildcard) to its lower-case ASCII form.
pub fn normalise_name(raw: &str) -> Result<Box<str>, DomainError> {
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return Err(DomainError::Empty);
    }
    let ascii: String = if raw.is_ascii() {
        raw.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(raw).map_err(|_| DomainError::Idna)?
    };
    if ascii.len() > MAX_HOST_LEN {
        return Err(DomainError::TooLong);
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(DomainError::BadLabel(label.to_owned()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(DomainError::InvalidChar(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::Hyphen(label.to_owned()));
        }
    }
    Ok(ascii.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> Result<String, HostError> {
        RequestHost::parse(raw.as_bytes()).map(|h| h.as_str().to_owned())
    }

    #[test]
    fn request_host_is_normalised() {
        assert_eq!(host("Blog.Example.COM").unwrap(), "blog.example.com");
        assert_eq!(host("blog.example.com.").unwrap(), "blog.example.com");
        assert_eq!(host("blog.example.com:8080").unwrap(), "blog.example.com");
        assert_eq!(host("blog.example.com.:8080").unwrap(), "blog.example.com");
        assert_eq!(host("blog.example.com:").unwrap(), "blog.example.com");
        assert_eq!(host("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(host("[FE80::1]").unwrap(), "[fe80::1]");
        let h = RequestHost::parse(b"a.test:81").unwrap();
        assert_eq!(h.port(), Some(81));
    }

    #[test]
    fn bad_request_hosts_are_refused() {
        assert_eq!(host(""), Err(HostError::Empty));
        assert_eq!(host(":80"), Err(HostError::Empty));
        assert_eq!(host("."), Err(HostError::Empty));
        assert_eq!(host("a b"), Err(HostError::InvalidChar));
        assert_eq!(host("a/b"), Err(HostError::InvalidChar));
        assert_eq!(host("a@b"), Err(HostError::InvalidChar));
        assert_eq!(host("a..b"), Err(HostError::InvalidChar));
        // One trailing dot is stripped; a second is an empty label (found by fuzzing).
        assert_eq!(host("x.1b.."), Err(HostError::InvalidChar));
        assert_eq!(host("a.test..:80"), Err(HostError::InvalidChar));
        assert_eq!(host(".a"), Err(HostError::InvalidChar));
        assert_eq!(host("a:8x"), Err(HostError::InvalidPort));
        assert_eq!(host("a:99999"), Err(HostError::InvalidPort));
        assert_eq!(host("a:1:2"), Err(HostError::InvalidPort));
        assert_eq!(host("[::1"), Err(HostError::InvalidIpLiteral));
        assert_eq!(host("[::1]x"), Err(HostError::InvalidIpLiteral));
        assert_eq!(host("bl\u{e9}g.test"), Err(HostError::InvalidChar));
        assert_eq!(host(&"a".repeat(254)), Err(HostError::TooLong));
        assert!(host(&"a".repeat(253)).is_ok());
    }

    #[test]
    fn domains_are_normalised() {
        assert_eq!(
            DomainPattern::parse("Blog.Example.com.").unwrap(),
            DomainPattern::Exact("blog.example.com".into())
        );
        assert_eq!(
            DomainPattern::parse("*.Example.com").unwrap(),
            DomainPattern::Wildcard("example.com".into())
        );
        assert_eq!(DomainPattern::parse("*").unwrap(), DomainPattern::CatchAll);
        assert_eq!(
            DomainPattern::parse("bücher.example").unwrap(),
            DomainPattern::Exact("xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn bad_domains_are_refused() {
        assert!(DomainPattern::parse("").is_err());
        assert!(DomainPattern::parse("a.*.com").is_err());
        assert!(DomainPattern::parse("*a.com").is_err());
        assert!(DomainPattern::parse("a..com").is_err());
        assert!(DomainPattern::parse("-a.com").is_err());
        assert!(DomainPattern::parse("a b.com").is_err());
        assert!(DomainPattern::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }
}
