//! The set of hostnames a run sends in `Host` (HTTP/1.1), `:authority` (h2) and SNI (TLS):
//! read from a host file or expanded from a pattern such as `app{0..9999}.test`.

use std::path::Path;

/// Upper bound on the number of hosts, so a typo in a pattern cannot exhaust memory.
pub const MAX_HOSTS: usize = 10_000_000;

/// One hostname and, optionally, the value a routing check expects in the response header
/// named by `--expect-header` (when absent, the hostname itself is expected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub name: String,
    pub expect: Option<String>,
}

impl HostEntry {
    /// What `--expect-header` must carry for a request to this host.
    pub fn expected_value(&self) -> &str {
        self.expect.as_deref().unwrap_or(&self.name)
    }
}

/// Why a host file or pattern was rejected.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read host file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("host file {path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("host file {0} names no host")]
    Empty(String),
    #[error("host pattern {pattern:?}: {reason}")]
    Pattern {
        pattern: String,
        reason: &'static str,
    },
}

/// Reads a host file: one host per line, an optional second column with the expected
/// routing-header value, `#` comments and blank lines ignored.
pub fn load_host_file(path: &Path) -> Result<Vec<HostEntry>, HostsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
        path: shown.clone(),
        source,
    })?;
    let hosts = parse_host_lines(&text, &shown)?;
    if hosts.is_empty() {
        return Err(HostsError::Empty(shown));
    }
    Ok(hosts)
}

/// Parses the text of a host file; `path` is only used in error messages.
pub fn parse_host_lines(text: &str, path: &str) -> Result<Vec<HostEntry>, HostsError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut cols = line.split_whitespace();
        let name = cols.next().unwrap_or_default();
        let expect = cols.next().map(str::to_string);
        let bad = |reason| HostsError::Line {
            path: path.to_string(),
            line: i + 1,
            reason,
        };
        if cols.next().is_some() {
            return Err(bad("expected `host [expected-header-value]`"));
        }
        if !valid_host(name) {
            return Err(bad(
                "not a valid hostname (letters, digits, '-', '.', ':', '[', ']')",
            ));
        }
        if hosts.len() >= MAX_HOSTS {
            return Err(bad("too many hosts"));
        }
        hosts.push(HostEntry {
            name: name.to_string(),
            expect,
        });
    }
    Ok(hosts)
}

/// Hostnames go verbatim into request heads, so anything that could break the head is refused.
fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

/// Expands `app{0..9999}.test` (several ranges multiply; `{000..999}` keeps the zero padding).
pub fn expand_pattern(pattern: &str) -> Result<Vec<HostEntry>, HostsError> {
    let bad = |reason| HostsError::Pattern {
        pattern: pattern.to_string(),
        reason,
    };
    // Split into literal parts and ranges first, so the size can be checked before expanding.
    enum Part<'a> {
        Lit(&'a str),
        Range { lo: u64, hi: u64, width: usize },
    }
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        parts.push(Part::Lit(&rest[..open]));
        let close = rest[open..].find('}').ok_or_else(|| bad("unclosed '{'"))? + open;
        let inner = &rest[open + 1..close];
        let (a, b) = inner
            .split_once("..")
            .ok_or_else(|| bad("a range must look like {0..99}"))?;
        let lo: u64 = a
            .parse()
            .map_err(|_| bad("range bounds must be integers"))?;
        let hi: u64 = b
            .parse()
            .map_err(|_| bad("range bounds must be integers"))?;
        if hi < lo {
            return Err(bad("range end is below its start"));
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        parts.push(Part::Range { lo, hi, width });
        rest = &rest[close + 1..];
    }
    parts.push(Part::Lit(rest));

    let mut total: u64 = 1;
    for p in &parts {
        if let Part::Range { lo, hi, .. } = p {
            total = total.saturating_mul(hi - lo + 1);
        }
    }
    if total > MAX_HOSTS as u64 {
        return Err(bad("expands to more than 10 million hosts"));
    }
    let mut names = vec![String::new()];
    for p in &parts {
        match p {
            Part::Lit(s) => names.iter_mut().for_each(|n| n.push_str(s)),
            Part::Range { lo, hi, width } => {
                let mut next = Vec::with_capacity(names.len() * (hi - lo + 1) as usize);
                for n in &names {
                    for v in *lo..=*hi {
                        next.push(format!("{n}{v:0width$}", width = *width));
                    }
                }
                names = next;
            }
        }
    }
    if names.iter().any(|n| !valid_host(n)) {
        return Err(bad("expands to an invalid hostname"));
    }
    Ok(names
        .into_iter()
        .map(|name| HostEntry { name, expect: None })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_ranges() {
        let h = expand_pattern("app{0..2}.test").unwrap();
        let names: Vec<_> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["app0.test", "app1.test", "app2.test"]);
        let h = expand_pattern("a{08..10}-{1..2}.x").unwrap();
        let names: Vec<_> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            ["a08-1.x", "a08-2.x", "a09-1.x", "a09-2.x", "a10-1.x", "a10-2.x"]
        );
        assert_eq!(expand_pattern("app{0..9999}.test").unwrap().len(), 10_000);
        assert_eq!(expand_pattern("plain.test").unwrap().len(), 1);
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(expand_pattern("app{0..").is_err());
        assert!(expand_pattern("app{5..1}").is_err());
        assert!(expand_pattern("app{a..b}").is_err());
        assert!(expand_pattern("x{0..99999}{0..99999}").is_err());
        assert!(expand_pattern("bad host{0..1}").is_err());
    }

    #[test]
    fn parses_host_file() {
        let h = parse_host_lines("# comment\na.test backend-1\n\nb.test\n", "f").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].expected_value(), "backend-1");
        assert_eq!(h[1].expected_value(), "b.test");
        assert!(parse_host_lines("a b c\n", "f").is_err());
        assert!(parse_host_lines("a\r\nb/c\n", "f").is_err());
    }
}
