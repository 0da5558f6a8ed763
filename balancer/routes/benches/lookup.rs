//! Route lookup and build cost at 1k, 100k and 1M hostnames (exact and wildcard matches).
//!
//! `cargo bench -p pier-routes --bench lookup`; results and the command are kept in
//! docs/benchmarks/route-table.md. Memory per hostname is measured separately by
//! `cargo run --release -p pier-routes --example route_memory`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pier_routes::{
    AppSettings, AppSpec, BackendSpec, DomainPattern, RequestHost, RouteSpec, RouteTable,
};

/// `n` hostnames spread over `n / 10` apps: half exact names `h<i>.bench.test`, half wildcards
/// `*.w<i>.bench.test`.
pub fn spec(n: usize) -> RouteSpec {
    let settings = Arc::new(AppSettings::default());
    let apps = n.div_ceil(10);
    RouteSpec {
        certs: Vec::new(),
        app_domains: vec![],
        apps: (0..apps)
            .map(|a| AppSpec {
                name: format!("app{a}").into(),
                domains: (a * 10..((a + 1) * 10).min(n))
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
    }
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3));
    for n in [1_000usize, 100_000, 1_000_000] {
        let table = RouteTable::build(&spec(n), None).expect("valid spec");
        // Hosts spread over the whole table, so caches see a realistic mix.
        let exact: Vec<String> = (0..1024)
            .map(|k| format!("h{}.bench.test", (k * 7919 * 2) % n / 2 * 2))
            .collect();
        let wild: Vec<String> = (0..1024)
            .map(|k| {
                format!(
                    "app.x.w{}.bench.test",
                    ((k * 7919 * 2) % n / 2 * 2 + 1).min(n - 1)
                )
            })
            .collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("exact", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(table.lookup(black_box(&exact[i])).is_some())
            })
        });
        g.bench_with_input(BenchmarkId::new("wildcard", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(table.lookup(black_box(&wild[i])).is_some())
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| black_box(table.lookup(black_box("nope.unknown.test")).is_none()))
        });
    }
    g.bench_function("normalise_host", |b| {
        b.iter(|| black_box(RequestHost::parse(black_box(b"H123.Bench.Test:8080")).is_ok()))
    });
    g.finish();
}

fn builds(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for n in [1_000usize, 100_000, 1_000_000] {
        let s = spec(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(RouteTable::build(&s, None).expect("valid spec").len()))
        });
    }
    g.finish();
}

criterion_group!(benches, lookups, builds);
criterion_main!(benches);
