//! `GET /v1/apps/{app}/stats`: the buckets balancers and runners write
//! ([`pier_registry::telemetry`]), merged over the last minute, hour and day, and the last two
//! minutes bucket by bucket for a live chart.

use http::StatusCode;
use pier_model::api::{AppStats, InstanceStats, RequestStats, StatsPoint, UsageStats};
use pier_registry::telemetry::{RouterWindow, Tier};
use pier_store::stats::WindowStats;

use crate::api::{existing_app, json, now_ms, ApiState, Reply};
use crate::auth::Caller;

pub async fn show(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = crate::platform::platform(state)?;
    existing_app(state, app).await?;
    let at_ms = now_ms();
    let now_s = at_ms / 1000;
    let mut requests = Vec::new();
    let mut instances: Vec<InstanceStats> = Vec::new();
    for tier in Tier::ALL {
        let (name, length) = tier.window();
        let w = p.store.window_stats(app, tier, length, now_s).await?;
        if w.bad > 0 {
            tracing::warn!(app, bad = w.bad, "unreadable stats values skipped");
        }
        // The window covers whole buckets up to now (at least one second).
        let seconds = (now_s - w.since_s).max(1);
        requests.push(request_stats(name, seconds, &w));
        for (instance, u) in &w.usage {
            let usage = UsageStats {
                window: name.to_string(),
                cpu_percent: round2(u.cpu_ms as f64 / (seconds as f64 * 1000.0) * 100.0),
                memory_bytes: u.mem_sum.checked_div(u.samples).unwrap_or(0),
                memory_max_bytes: u.mem_max,
            };
            match instances.iter_mut().find(|i| &i.instance == instance) {
                Some(i) => i.windows.push(usage),
                None => instances.push(InstanceStats {
                    instance: instance.clone(),
                    windows: vec![usage],
                }),
            }
        }
    }
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    let (buckets, bad) = p
        .store
        .router_series(app, Tier::TenSeconds, SERIES_SECONDS, now_s)
        .await?;
    if bad > 0 {
        tracing::warn!(app, bad, "unreadable stats values skipped");
    }
    let series = buckets
        .iter()
        .map(|(start_s, w)| series_point(*start_s, now_s, w))
        .collect();
    json(
        StatusCode::OK,
        &AppStats {
            app: app.to_string(),
            at_ms,
            requests,
            instances,
            series,
        },
    )
}

/// How far back [`AppStats::series`] reaches, seconds.
const SERIES_SECONDS: u64 = 120;

fn series_point(start_s: u64, now_s: u64, w: &RouterWindow) -> StatsPoint {
    let bucket = Tier::TenSeconds.seconds();
    // The current bucket counts only the seconds that have passed (at least one).
    let seconds = now_s.saturating_sub(start_s).clamp(1, bucket);
    StatsPoint {
        start_s,
        seconds,
        requests: w.requests,
        requests_per_second: round2(w.requests as f64 / seconds as f64),
        errors_5xx: w.errors_5xx,
        p99_ms: w
            .latency
            .quantile(0.99)
            .map(|us| round2(us as f64 / 1000.0)),
    }
}

fn request_stats(window: &str, seconds: u64, w: &WindowStats) -> RequestStats {
    let r = &w.router;
    let ms = |q: f64| r.latency.quantile(q).map(|us| round2(us as f64 / 1000.0));
    RequestStats {
        window: window.to_string(),
        seconds,
        requests: r.requests,
        requests_per_second: round2(r.requests as f64 / seconds as f64),
        errors_5xx: r.errors_5xx,
        share_5xx: if r.requests == 0 {
            0.0
        } else {
            (r.errors_5xx as f64 / r.requests as f64 * 10_000.0).round() / 10_000.0
        },
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
