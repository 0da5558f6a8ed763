//! Prometheus metrics: process-wide counters kept by the `prometheus` crate, plus per-app
//! response counters that live in the route table's apps and are rendered at scrape time.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use pier_routes::RouteTable;

/// Every metric the balancer exports.
/// Most certificates listed one by one in `/metrics` (the soonest to expire).
const CERT_EXPIRY_LINES: usize = 10_000;

pub struct Metrics {
    registry: Registry,
    /// Responses sent, by status class (index 0 = 1xx … 4 = 5xx).
    responses: [IntCounter; 5],
    /// Answers pier produced itself because something failed, by `X-Pier-Error` reason.
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub upstream_connect_errors: IntCounter,
    pub upstream_retries: IntCounter,
    pub upstream_ejections: IntCounter,
    pub upstream_reused: IntCounter,
    pub upstream_connects: IntCounter,
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    pub route_domains: IntGauge,
    pub route_apps: IntGauge,
    pub route_version: IntGauge,
    pub reloads: IntCounterVec,
    pub registry_connected: IntGauge,
    pub registry_changes: IntCounter,
    pub registry_bad_entries: IntCounter,
    pub registry_resyncs: IntCounterVec,
    pub registry_resyncs_held: IntCounter,
    pub registry_held: IntGauge,
    pub registry_lag: Gauge,
    pub registry_contact_age: Gauge,
    pub spin_held: IntGauge,
    pub spin_released: IntCounter,
    pub spin_timeouts: IntCounter,
    /// TLS handshakes by result (`ok`, `failed`, `timeout`).
    pub tls_handshakes: IntCounterVec,
    /// Connections closed on a `proxy_protocol` listener for want of a valid header.
    pub proxy_protocol_refused: IntCounterVec,
    /// Each worker's smoothed timer lateness (`crate::overload`).
    pub worker_lag: prometheus::GaugeVec,
    /// Connections refused for their client's `[limits] client_max_connections`.
    pub client_connections_refused: IntCounter,
    /// Active health check probes, by result.
    pub health_checks: IntCounterVec,
    /// Backends out of rotation for failing their health check now.
    pub backends_check_down: IntGauge,
    pub tunnels_open: IntGauge,
    pub tunnels_total: IntCounter,
    pub h2_connections: IntCounter,
    pub h2_streams: IntCounter,
    /// h2 connections ended with GOAWAY for abuse, by kind.
    pub h2_abuse: IntCounterVec,
    pub router_lines: IntCounter,
    pub telemetry_dropped: IntCounter,
    pub stats_write_failures: IntCounter,
}

fn fgauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    register(r, Box::new(g.clone()));
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    register(r, Box::new(g.clone()));
    g
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are constants defined below; a clash is a programming error caught by the tests.
    r.register(c).expect("metric names are unique");
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let responses_vec = IntCounterVec::new(
            Opts::new(
                "pier_responses_total",
                "Responses sent to clients, by status class",
            ),
            &["class"],
        )
        .expect("valid metric");
        register(&r, Box::new(responses_vec.clone()));
        let responses =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| responses_vec.with_label_values(&[c]));
        let errors = IntCounterVec::new(
            Opts::new(
                "pier_errors_total",
                "Answers the balancer produced itself, by X-Pier-Error reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        register(&r, Box::new(errors.clone()));
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "pier_request_duration_seconds",
                "Time from the request head to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("valid metric");
        register(&r, Box::new(duration.clone()));
        let reloads = IntCounterVec::new(
            Opts::new("pier_route_reloads_total", "Route table reloads, by result"),
            &["result"],
        )
        .expect("valid metric");
        register(&r, Box::new(reloads.clone()));
        let registry_resyncs = IntCounterVec::new(
            Opts::new(
                "pier_registry_resyncs_total",
                "Full registry resyncs applied, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        register(&r, Box::new(registry_resyncs.clone()));
        let tls_handshakes = IntCounterVec::new(
            Opts::new("pier_tls_handshakes_total", "TLS handshakes, by result"),
            &["result"],
        )
        .expect("valid metric");
        register(&r, Box::new(tls_handshakes.clone()));
        let proxy_protocol_refused = IntCounterVec::new(
            Opts::new(
                "pier_proxy_protocol_refused_total",
                "Connections closed on a proxy_protocol listener without a valid PROXY header, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        register(&r, Box::new(proxy_protocol_refused.clone()));
        let client_connections_refused = IntCounter::new(
            "pier_client_connections_refused_total",
            "Connections answered 429 (or GOAWAY) and closed: their client held [limits] client_max_connections",
        )
        .expect("valid metric");
        register(&r, Box::new(client_connections_refused.clone()));
        let worker_lag = prometheus::GaugeVec::new(
            Opts::new(
                "pier_worker_lag_seconds",
                "How late each worker wakes its timers, smoothed: past [limits] overload_lag it is saturated and sheds heavy apps' requests",
            ),
            &["worker"],
        )
        .expect("valid metric");
        register(&r, Box::new(worker_lag.clone()));
        let health_checks = IntCounterVec::new(
            Opts::new(
                "pier_health_checks_total",
                "Active health check probes of backends, by result (pass, fail)",
            ),
            &["result"],
        )
        .expect("valid metric");
        register(&r, Box::new(health_checks.clone()));
        let h2_abuse = IntCounterVec::new(
            Opts::new(
                "pier_h2_abuse_total",
                "HTTP/2 connections closed with GOAWAY for abuse, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        register(&r, Box::new(h2_abuse.clone()));
        Metrics {
            worker_lag,
            client_connections_refused,
            tls_handshakes,
            proxy_protocol_refused,
            health_checks,
            backends_check_down: gauge(
                &r,
                "pier_backends_check_down",
                "Backends out of rotation now for failing their active health check",
            ),
            h2_abuse,
            tunnels_open: gauge(
                &r,
                "pier_tunnels_open",
                "Upgraded (WebSocket) tunnels open now",
            ),
            tunnels_total: counter(
                &r,
                "pier_tunnels_total",
                "Upgraded (WebSocket) tunnels opened",
            ),
            h2_connections: counter(&r, "pier_h2_connections_total", "HTTP/2 client connections"),
            h2_streams: counter(&r, "pier_h2_streams_total", "HTTP/2 request streams"),
            registry_connected: gauge(
                &r,
                "pier_registry_connected",
                "1 while connected to the registry",
            ),
            registry_changes: counter(
                &r,
                "pier_registry_changes_applied_total",
                "Registry changes applied from the feed",
            ),
            registry_bad_entries: counter(
                &r,
                "pier_registry_bad_entries_total",
                "Registry entries skipped as invalid",
            ),
            registry_resyncs,
            registry_resyncs_held: counter(
                &r,
                "pier_registry_resyncs_held_total",
                "Resyncs refused because they would drop too many routes",
            ),
            registry_held: gauge(
                &r,
                "pier_registry_resync_held",
                "1 while a resync is being held",
            ),
            registry_lag: fgauge(
                &r,
                "pier_registry_sync_lag_seconds",
                "Age of the last applied change when applied",
            ),
            registry_contact_age: fgauge(
                &r,
                "pier_registry_last_contact_seconds",
                "Seconds since the registry last answered",
            ),
            spin_held: gauge(
                &r,
                "pier_spin_held_requests",
                "Requests held waiting for a backend to register",
            ),
            spin_released: counter(
                &r,
                "pier_spin_released_total",
                "Held requests released to a backend",
            ),
            spin_timeouts: counter(
                &r,
                "pier_spin_timeouts_total",
                "Held requests answered 503 after the spin timeout",
            ),
            responses,
            errors,
            duration,
            upstream_connect_errors: counter(
                &r,
                "pier_upstream_connect_errors_total",
                "Failed connection attempts to backends",
            ),
            upstream_retries: counter(
                &r,
                "pier_upstream_retries_total",
                "Requests retried on another backend or connection",
            ),
            upstream_ejections: counter(
                &r,
                "pier_upstream_ejections_total",
                "Backends ejected after consecutive failures",
            ),
            upstream_reused: counter(
                &r,
                "pier_upstream_reused_total",
                "Requests sent on a pooled connection",
            ),
            upstream_connects: counter(
                &r,
                "pier_upstream_connects_total",
                "New connections opened to backends",
            ),
            connections_open: gauge(&r, "pier_connections_open", "Client connections open now"),
            connections_total: counter(&r, "pier_connections_total", "Client connections accepted"),
            route_domains: gauge(&r, "pier_route_table_domains", "Domains in the route table"),
            route_apps: gauge(&r, "pier_route_table_apps", "Apps in the route table"),
            route_version: gauge(
                &r,
                "pier_route_table_version",
                "Version of the route table in use",
            ),
            router_lines: counter(
                &r,
                "pier_router_lines_total",
                "Router lines written to the apps' log streams",
            ),
            telemetry_dropped: counter(
                &r,
                "pier_telemetry_dropped_total",
                "Router lines dropped because the queue was full or Redis unreachable",
            ),
            stats_write_failures: counter(
                &r,
                "pier_stats_write_failures_total",
                "Per-app stats writes that failed (retried with the next write)",
            ),
            reloads,
            registry: r,
        }
    }

    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }

    pub fn table(&self, t: &RouteTable) {
        self.route_domains.set(t.len() as i64);
        self.route_apps.set(t.app_count() as i64);
        self.route_version.set(t.version() as i64);
    }

    /// The Prometheus text exposition of every metric, per-app counters included.
    pub fn render(&self, table: &RouteTable) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        text.push_str(
            "# HELP pier_app_responses_total Responses sent for each app, by status class\n",
        );
        text.push_str("# TYPE pier_app_responses_total counter\n");
        use std::fmt::Write;
        // Apps that never answered have no counters yet and print nothing.
        for app in table.apps() {
            let Some(counters) = app.counters_if_used() else {
                continue;
            };
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let _ = writeln!(
                    text,
                    "pier_app_responses_total{{app=\"{}\",class=\"{class}\"}} {}",
                    app.name,
                    counters.get(i)
                );
            }
        }
        // Certificates: how many, and the soonest expiry (alert on it, e.g. under 14 days).
        let soonest = table
            .certs()
            .map(|(_, e)| e.not_after_ms)
            .filter(|&ms| ms != i64::MAX)
            .min();
        let _ = writeln!(
            text,
            "# HELP pier_tls_certificates Certificates in the route table (routes file and registry)\n\
             # TYPE pier_tls_certificates gauge\npier_tls_certificates {}",
            table.cert_count()
        );
        if let Some(ms) = soonest {
            let _ = writeln!(
                text,
                "# HELP pier_tls_cert_earliest_expiry_seconds notAfter of the certificate that expires first (Unix time)\n\
                 # TYPE pier_tls_cert_earliest_expiry_seconds gauge\npier_tls_cert_earliest_expiry_seconds {}",
                ms / 1000
            );
        }
        // Each certificate's expiry, soonest first (at most CERT_EXPIRY_LINES of them), with who
        // provided it: a stuck renewal shows as an `acme` line that stops moving.
        let mut certs: Vec<(i64, String, &'static str)> = table
            .certs()
            .filter(|(_, e)| e.not_after_ms != i64::MAX)
            .map(|(pattern, e)| {
                let source = match e.source.as_deref() {
                    None => "file",
                    Some(json) if json.contains("\"source\":\"acme\"") => "acme",
                    Some(_) => "uploaded",
                };
                (e.not_after_ms, pattern.to_string(), source)
            })
            .collect();
        certs.sort_unstable();
        if !certs.is_empty() {
            let _ = writeln!(
                text,
                "# HELP pier_tls_cert_expiry_seconds notAfter of each certificate served (Unix time), soonest first\n\
                 # TYPE pier_tls_cert_expiry_seconds gauge"
            );
        }
        for (ms, pattern, source) in certs.iter().take(CERT_EXPIRY_LINES) {
            let _ = writeln!(
                text,
                "pier_tls_cert_expiry_seconds{{domain=\"{pattern}\",source=\"{source}\"}} {}",
                ms / 1000
            );
        }
        text
    }
}
