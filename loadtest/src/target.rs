//! The URL under test and the request bytes built from it once, before the run, for every
//! host: the HTTP/1.1 hot path only copies pre-built heads into a connection's write buffer.

use crate::hosts::HostEntry;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed target URL: where to connect (unless `--connect-to` says otherwise) and which
/// path to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// Host as written in the URL, IPv6 literals keep their brackets.
    pub host: String,
    pub port: u16,
    /// Whether the URL named a port that differs from the scheme's default; if so the port is
    /// repeated in `Host`, as browsers do.
    pub explicit_port: bool,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Why a URL, header or method was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("URL {0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("URL {0:?} has an invalid port")]
    Port(String),
    #[error("URL {0:?} contains characters that cannot go into a request line")]
    Chars(String),
    #[error("header {0:?} must look like `Name: value` without line breaks")]
    Header(String),
    #[error("method {0:?} must be an HTTP token such as GET or POST")]
    Method(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            return Err(TargetError::Scheme(url.to_string()));
        };
        if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(TargetError::Chars(url.to_string()));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        // An IPv6 literal's colons are not a port separator.
        let (host, port) = if authority.starts_with('[') {
            let close = authority
                .find(']')
                .ok_or_else(|| TargetError::NoHost(url.to_string()))?;
            let host = &authority[..=close];
            match &authority[close + 1..] {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| TargetError::Port(url.to_string()))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(TargetError::NoHost(url.to_string()));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| TargetError::Port(url.to_string()))?,
            None => default_port,
        };
        Ok(Target {
            scheme,
            host: host.to_string(),
            port,
            explicit_port: port != default_port,
            path,
        })
    }

    /// The host without IPv6 brackets, for DNS resolution.
    pub fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The value of `Host` / `:authority` for `host`.
    pub fn authority_for(&self, host: &str) -> String {
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host.to_string()
        }
    }

    pub fn default_host(&self) -> HostEntry {
        HostEntry {
            name: self.host.clone(),
            expect: None,
        }
    }
}

/// Splits and checks one `-H "Name: value"` argument.
pub fn parse_header(raw: &str) -> Result<(String, String), TargetError> {
    let bad = || TargetError::Header(raw.to_string());
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let name = name.trim();
    let value = value.trim();
    if name.is_empty()
        || !name.bytes().all(is_token_byte)
        || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
    {
        return Err(bad());
    }
    Ok((name.to_string(), value.to_string()))
}

/// Checks a method name (`GET`, `POST`, ...).
pub fn check_method(method: &str) -> Result<(), TargetError> {
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(TargetError::Method(method.to_string()));
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every host's HTTP/1.1 request head, built once and stored back to back in one buffer.
#[derive(Debug)]
pub struct RequestSet {
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
    body: Vec<u8>,
    /// A response to HEAD has no body whatever its headers say.
    pub is_head: bool,
}

impl RequestSet {
    pub fn build(
        method: &str,
        target: &Target,
        hosts: &[HostEntry],
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> RequestSet {
        let mut arena = Vec::new();
        let mut spans = Vec::with_capacity(hosts.len());
        let user_length = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        for h in hosts {
            let start = arena.len();
            arena.extend_from_slice(method.as_bytes());
            arena.push(b' ');
            arena.extend_from_slice(target.path.as_bytes());
            arena.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            arena.extend_from_slice(target.authority_for(&h.name).as_bytes());
            arena.extend_from_slice(b"\r\n");
            for (n, v) in headers {
                arena.extend_from_slice(n.as_bytes());
                arena.extend_from_slice(b": ");
                arena.extend_from_slice(v.as_bytes());
                arena.extend_from_slice(b"\r\n");
            }
            if let Some(b) = body {
                if !user_length {
                    arena.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
                }
            }
            arena.extend_from_slice(b"\r\n");
            spans.push((start, arena.len()));
        }
        RequestSet {
            arena,
            spans,
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
            is_head: method.eq_ignore_ascii_case("HEAD"),
        }
    }

    /// Appends the full request for host `i` to `out`.
    #[inline]
    pub fn write_request(&self, i: usize, out: &mut Vec<u8>) {
        if let Some(&(s, e)) = self.spans.get(i) {
            out.extend_from_slice(&self.arena[s..e]);
            out.extend_from_slice(&self.body);
        }
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/a?b=1")
        );
        assert!(t.explicit_port);
        let t = Target::parse("https://example.test").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.explicit_port),
            (443, "/", false)
        );
        let t = Target::parse("http://[::1]:9000?x").unwrap();
        assert_eq!(
            (t.connect_host(), t.port, t.path.as_str()),
            ("::1", 9000, "/?x")
        );
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://:80/").is_err());
        assert!(Target::parse("http://h:99999/").is_err());
        assert!(Target::parse("http://h/a b").is_err());
    }

    #[test]
    fn builds_requests_per_host() {
        let t = Target::parse("http://127.0.0.1:8080/p").unwrap();
        let hosts = crate::hosts::expand_pattern("a{1..2}.test").unwrap();
        let headers = vec![parse_header("X-Test: yes").unwrap()];
        let set = RequestSet::build("POST", &t, &hosts, &headers, Some(b"hi"));
        let mut out = Vec::new();
        set.write_request(1, &mut out);
        assert_eq!(
            out,
            b"POST /p HTTP/1.1\r\nHost: a2.test:8080\r\nX-Test: yes\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert!(parse_header("bad header").is_err());
        assert!(parse_header("X: a\r\nb").is_err());
        assert!(check_method("GE T").is_err());
    }
}
