//! Custom-domain ownership proof, by DNS.
//!
//! A domain an owner adds starts as a pending claim with a random token. The owner proves the
//! name is theirs by publishing a TXT record `_pier-challenge.<name>` holding the token (for
//! `*.example.com`, `_pier-challenge.example.com`, as ACME's DNS-01 does; several tokens may sit
//! on one name, so several claims and renewals can be proven side by side). Only whoever
//! controls the zone can publish it, unlike anything served by the app: an app's own backend
//! answering a challenge proves nothing, since the owner writes that backend.
//!
//! [`DnsVerifier`] asks a resolver (the system's, or `pier api --dns-resolver IP:PORT`) with
//! hickory-resolver, past its cache so a record published a second ago counts. It also tells,
//! for information, whether a name already points at the platform's DNS target (a CNAME to it,
//! or addresses among the target's).
//!
//! [`Verifier`] is a trait so a test or a later check (ACME) can stand in; the API holds one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use pier_routes::DomainPattern;

use pier_model::api::DnsCheck;

/// The label under which a name's proof is published.
pub const CHALLENGE_LABEL: &str = "_pier-challenge";

/// The label probed to see where a wildcard's names point (any name under it would do).
const WILDCARD_PROBE_LABEL: &str = "pier-dns-check";

/// Most TXT values quoted back in a failure: enough to spot a typo, not a flood.
const MAX_SHOWN: usize = 5;

/// The TXT record name that proves `pattern` (`None` for the catch-all, which no one proves).
pub fn challenge_name(pattern: &DomainPattern) -> Option<String> {
    match pattern {
        DomainPattern::Exact(name) => Some(format!("{CHALLENGE_LABEL}.{name}")),
        DomainPattern::Wildcard(base) => Some(format!("{CHALLENGE_LABEL}.{base}")),
        DomainPattern::CatchAll => None,
    }
}

/// A name a check of `pattern`'s DNS can look up (a wildcard's: one name under it).
pub fn probe_name(pattern: &DomainPattern) -> Option<String> {
    match pattern {
        DomainPattern::Exact(name) => Some(name.to_string()),
        DomainPattern::Wildcard(base) => Some(format!("{WILDCARD_PROBE_LABEL}.{base}")),
        DomainPattern::CatchAll => None,
    }
}

/// One ownership check to run.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The TXT record name to look up (`_pier-challenge.<name>`).
    pub record: String,
    /// The value one of its TXT records must hold.
    pub token: String,
}

/// Why a domain could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The lookup answered, without the token.
    #[error("{0}")]
    NotProven(String),
    /// The resolver did not answer (timeout, refused, unreachable): trying later may work.
    #[error("{0}")]
    Lookup(String),
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifyError>> + Send + 'a>>;
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = DnsCheck> + Send + 'a>>;

/// An ownership check, and where a name points.
pub trait Verifier: Send + Sync {
    /// Whether `challenge.record` holds `challenge.token`.
    fn verify<'a>(&'a self, challenge: &'a Challenge) -> VerifyFuture<'a>;
    /// Where `name` points, compared with `target` (for information only).
    fn check_target<'a>(&'a self, name: &'a str, target: &'a str) -> CheckFuture<'a>;
}

/// The DNS check, through hickory-resolver.
pub struct DnsVerifier {
    resolver: TokioResolver,
    /// Which resolver is asked, for messages (`the system's resolver`, `10.0.0.2:53`).
    asked: String,
}

impl DnsVerifier {
    /// Asks the system's resolver (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, String> {
        let b = TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system's resolver configuration: {e}"))?;
        Self::build(b, "the system's resolver".into())
    }

    /// Asks the nameserver at `addr` only (UDP, then TCP for long answers).
    pub fn with_nameserver(addr: SocketAddr) -> Result<Self, String> {
        let conn = |protocol| {
            let mut c = ConnectionConfig::new(protocol);
            c.port = addr.port();
            c
        };
        let ns = NameServerConfig::new(
            addr.ip(),
            true,
            vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
        );
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
        let b = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::build(b, addr.to_string())
    }

    fn build(
        mut b: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
        asked: String,
    ) -> Result<Self, String> {
        tune(b.options_mut());
        let resolver = b
            .build()
            .map_err(|e| format!("building the resolver: {e}"))?;
        Ok(DnsVerifier { resolver, asked })
    }

    /// Every TXT value at `name` (each record's strings joined, as RFC 7208 §3.3 reads them).
    /// `Ok(None)`: the name does not exist.
    async fn txt(&self, name: &str) -> Result<Option<Vec<String>>, VerifyError> {
        let fqdn = fqdn(name);
        // A proof published a moment ago must count: never answer from the cache.
        self.resolver
            .clear_lookup_cache(fqdn.as_str(), RecordType::TXT);
        match self.resolver.lookup(fqdn.as_str(), RecordType::TXT).await {
            Ok(lookup) => Ok(Some(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => Some(
                            t.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) if e.is_nx_domain() => Ok(None),
            Err(e) if e.is_no_records_found() => Ok(Some(Vec::new())),
            Err(e) => Err(VerifyError::Lookup(format!(
                "looking up TXT {name} at {} failed: {e}",
                self.asked
            ))),
        }
    }

    /// The CNAME targets and the addresses `name` resolves to.
    async fn points(&self, name: &str) -> Result<(Vec<String>, Vec<IpAddr>), String> {
        let fqdn = fqdn(name);
        let mut cnames = Vec::new();
        let mut ips = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.resolver.lookup(fqdn.as_str(), rtype).await {
                Ok(lookup) => {
                    for r in lookup.answers() {
                        match &r.data {
                            RData::CNAME(c) => {
                                let t = trim_dot(&c.0.to_ascii());
                                if !cnames.contains(&t) {
                                    cnames.push(t);
                                }
                            }
                            RData::A(a) => ips.push(IpAddr::V4(a.0)),
                            RData::AAAA(a) => ips.push(IpAddr::V6(a.0)),
                            _ => {}
                        }
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => {}
                Err(e) => return Err(format!("looking up {name} failed: {e}")),
            }
        }
        ips.sort();
        ips.dedup();
        Ok((cnames, ips))
    }
}

impl Verifier for DnsVerifier {
    fn verify<'a>(&'a self, c: &'a Challenge) -> VerifyFuture<'a> {
        Box::pin(async move {
            let found = self.txt(&c.record).await?;
            let values = match found {
                None => {
                    return Err(VerifyError::NotProven(format!(
                    "no TXT record {} (the name does not exist at {}): publish TXT \"{}\" there",
                    c.record, self.asked, c.token
                )))
                }
                Some(v) => v,
            };
            if values.iter().any(|v| v.trim() == c.token) {
                return Ok(());
            }
            if values.is_empty() {
                return Err(VerifyError::NotProven(format!(
                    "{} has no TXT record at {}: publish TXT \"{}\" there",
                    c.record, self.asked, c.token
                )));
            }
            let shown: Vec<String> = values
                .iter()
                .take(MAX_SHOWN)
                .map(|v| format!("{v:?}"))
                .collect();
            let more = values.len().saturating_sub(MAX_SHOWN);
            Err(VerifyError::NotProven(format!(
                "TXT {} at {} holds {}{}, not this claim's token {:?}",
                c.record,
                self.asked,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                c.token
            )))
        })
    }

    fn check_target<'a>(&'a self, name: &'a str, target: &'a str) -> CheckFuture<'a> {
        Box::pin(async move {
            let target = trim_dot(&target.to_ascii_lowercase());
            let mut check = DnsCheck {
                target: target.clone(),
                points_at_target: None,
                found: Vec::new(),
                error: None,
            };
            let (cnames, ips) = match self.points(name).await {
                Ok(p) => p,
                Err(e) => {
                    check.error = Some(e);
                    return check;
                }
            };
            check
                .found
                .extend(cnames.iter().map(|c| format!("CNAME {c}")));
            check.found.extend(ips.iter().map(|ip| match ip {
                IpAddr::V4(_) => format!("A {ip}"),
                IpAddr::V6(_) => format!("AAAA {ip}"),
            }));
            if cnames.iter().any(|c| c.eq_ignore_ascii_case(&target)) {
                check.points_at_target = Some(true);
                return check;
            }
            if ips.is_empty() {
                check.points_at_target = Some(false);
                return check;
            }
            // An apex cannot be a CNAME: addresses all among the target's count too.
            match self.points(&target).await {
                Ok((_, target_ips)) => {
                    check.points_at_target =
                        Some(!target_ips.is_empty() && ips.iter().all(|ip| target_ips.contains(ip)))
                }
                Err(e) => check.error = Some(format!("the DNS target: {e}")),
            }
            check
        })
    }
}

fn tune(opts: &mut hickory_resolver::config::ResolverOpts) {
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.cache_size = 1024;
    // Names are looked up as given, never under a search domain.
    opts.ndots = 0;
    opts.negative_max_ttl = Some(Duration::from_secs(30));
    opts.positive_max_ttl = Some(Duration::from_secs(60));
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn trim_dot(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn challenge_names_follow_dns01() {
        let p = |s: &str| DomainPattern::parse(s).unwrap();
        assert_eq!(
            challenge_name(&p("www.example.com")).unwrap(),
            "_pier-challenge.www.example.com"
        );
        assert_eq!(
            challenge_name(&p("*.example.com")).unwrap(),
            "_pier-challenge.example.com"
        );
        assert_eq!(challenge_name(&p("*")), None);
        assert_eq!(
            probe_name(&p("*.example.com")).unwrap(),
            "pier-dns-check.example.com"
        );
    }
}
