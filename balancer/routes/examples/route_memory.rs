//! Measures what a route table costs in memory and build time at a given size:
//! `cargo run --release -p pier-routes --example route_memory -- 1000000`
//!
//! The spec is built first (it is the input, not the table), then RSS is read before and after
//! building the table from it; the difference divided by the number of hostnames is the cost per
//! hostname. Results are kept in docs/benchmarks/route-table.md.

use std::sync::Arc;
use std::time::Instant;

use pier_routes::{AppSettings, AppSpec, BackendSpec, DomainPattern, RouteSpec, RouteTable};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_app: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let settings = Arc::new(AppSettings::default());
    let spec = RouteSpec {
        certs: Vec::new(),
        app_domains: vec![],
        apps: (0..n.div_ceil(per_app))
            .map(|a| AppSpec {
                name: format!("app{a}").into(),
                domains: (a * per_app..((a + 1) * per_app).min(n))
                    .map(|i| {
                        if i % 2 == 0 {
                            DomainPattern::Exact(format!("h{i}.bench.test").into())
                        } else {
                            DomainPattern::Wildcard(format!("w{i}.bench.test").into())
                        }
                    })
                    .collect(),
                backends: vec![BackendSpec {
                    id: Some("b".into()),
                    addr: "127.0.0.1:9000".parse().expect("literal address"),
                    tls: None,
                    expires_at_ms: 0,
                    weight: 1,
                }],
                settings: Arc::clone(&settings),
            })
            .collect(),
    };
    let before = rss_kib();
    let t = Instant::now();
    let table = RouteTable::build(&spec, None).expect("valid spec");
    let build = t.elapsed();
    let after = rss_kib();
    // The table shares the domain names (Arc<str>) with the spec; drop the spec to count the
    // names against the table, as they are once the spec is gone.
    drop(spec);
    let alone = rss_kib();
    let bytes = (after.saturating_sub(before)) * 1024;
    println!(
        "hostnames={n} apps={} hostnames_per_app={per_app} build_ms={} rss_delta_kib={} bytes_per_hostname={:.0} rss_after_spec_dropped_kib={alone} total_rss_kib={after}",
        table.app_count(),
        build.as_millis(),
        after.saturating_sub(before),
        bytes as f64 / n as f64,
    );
    assert_eq!(table.len(), n);
}
