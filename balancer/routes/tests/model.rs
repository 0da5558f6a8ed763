//! Property test: the table answers every lookup exactly as a naive model of the documented
//! precedence does (exact, then the most specific wildcard, then `{app}.{base}`, then `*`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pier_routes::{AppSettings, AppSpec, BackendSpec, DomainPattern, RouteSpec, RouteTable};
use proptest::prelude::*;

/// The naive model: scan every pattern, keep the best by precedence.
fn model(spec: &RouteSpec, host: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None; // (rank, app); lower rank wins
    for app in &spec.apps {
        for d in &app.domains {
            let rank = match d {
                DomainPattern::Exact(n) if &**n == host => Some(0),
                // A longer suffix is more specific: rank by how many bytes are left before it.
                DomainPattern::Wildcard(n) if host.ends_with(&format!(".{n}")) => {
                    Some(1 + host.len() - n.len())
                }
                DomainPattern::CatchAll => Some(usize::MAX),
                _ => None,
            };
            if let Some(r) = rank {
                if best.as_ref().is_none_or(|(b, _)| r < *b) {
                    best = Some((r, app.name.to_string()));
                }
            }
        }
    }
    if best.as_ref().is_some_and(|(r, _)| *r != usize::MAX) {
        return best.map(|(_, a)| a);
    }
    for base in &spec.app_domains {
        if let Some(label) = host.strip_suffix(&format!(".{base}")) {
            if !label.contains('.') && spec.apps.iter().any(|a| &*a.name == label) {
                return Some(label.to_string());
            }
        }
    }
    best.map(|(_, a)| a)
}

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "ab", "app0", "app1", "x"]).prop_map(str::to_string)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        3 => name().prop_map(|n| format!("*.{n}")),
        1 => Just("*".to_string()),
    ]
}

fn spec_strategy() -> impl Strategy<Value = RouteSpec> {
    prop::collection::vec(prop::collection::vec(pattern(), 0..5), 1..6).prop_map(|apps| {
        let mut claimed = std::collections::HashSet::new();
        RouteSpec {
            certs: Vec::new(),
            app_domains: vec!["x".into(), "a.b".into()],
            apps: apps
                .into_iter()
                .enumerate()
                .map(|(i, pats)| AppSpec {
                    name: format!("app{i}").into(),
                    domains: pats
                        .iter()
                        .map(|p| DomainPattern::parse(p).unwrap())
                        .filter(|p| claimed.insert(p.clone()))
                        .collect(),
                    backends: vec![BackendSpec {
                        id: Some("b".into()),
                        addr: "127.0.0.1:1".parse().unwrap(),
                        tls: None,
                        expires_at_ms: 0,
                        weight: 1,
                    }],
                    settings: Arc::new(AppSettings::default()),
                })
                .collect(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn table_matches_naive_model(spec in spec_strategy(), hosts in prop::collection::vec(name(), 1..20)) {
        let table = RouteTable::build(&spec, None).unwrap();
        for host in &hosts {
            let got = table.lookup(host).map(|m| m.app.name.to_string());
            prop_assert_eq!(got, model(&spec, host), "host {}", host);
        }
    }
}
