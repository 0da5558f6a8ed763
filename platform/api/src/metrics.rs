//! `GET /metrics` (the operator's token): the platform's own figures in Prometheus's text
//! format (0.0.4), read from the registry, so every `pier api` process answers the same
//! platform-wide numbers whichever of them runs the orderer. A balancer's own metrics (traffic,
//! each served certificate's expiry) are on its admin listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt as _, Full};

use crate::acme;
use crate::api::{now_ms, ApiState};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::Body;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn render(state: &ApiState, caller: &Caller) -> Result<Response<Body>, ApiError> {
    caller.require_operator("read the metrics")?;
    let registry = state.registry();
    let results = registry.acme_results().await?;
    let statuses = registry.acme_statuses().await?;
    let mut out = String::new();

    family(
        &mut out,
        "pier_acme_enabled",
        "gauge",
        "1 when this process orders certificates over ACME (pier api --acme-directory)",
    );
    let _ = writeln!(out, "pier_acme_enabled {}", u8::from(state.acme.is_some()));

    family(
        &mut out,
        "pier_acme_orders_total",
        "counter",
        "Finished ACME orders, platform-wide, by kind (new, renewal) and result (issued, failed, rate-limited)",
    );
    for r in &results {
        let _ = writeln!(
            out,
            "pier_acme_orders_total{{kind=\"{}\",result=\"{}\"}} {}",
            escape(&r.kind),
            escape(&r.result),
            r.count
        );
    }

    let mut by_state: BTreeMap<&str, u64> = [
        acme::WAITING_FOR_DNS,
        acme::ORDERING,
        acme::ISSUED,
        acme::FAILED,
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    let now = now_ms();
    let (mut renewals_failing, mut renewals_overdue) = (0u64, 0u64);
    for (_, s) in &statuses {
        *by_state.entry(s.state.as_str()).or_default() += 1;
        if s.state == acme::ISSUED && s.failures > 0 {
            renewals_failing += 1;
        }
        // Past two thirds of the way from the renewal time to the expiry (or past expiry):
        // what an operator should be paged for.
        if s.state == acme::ISSUED
            && s.not_after_ms > 0
            && s.renew_at_ms > 0
            && now > s.renew_at_ms + (s.not_after_ms.saturating_sub(s.renew_at_ms)) * 2 / 3
        {
            renewals_overdue += 1;
        }
    }
    family(
        &mut out,
        "pier_acme_names",
        "gauge",
        "Names the orderer looks after, by state",
    );
    for (s, n) in &by_state {
        let _ = writeln!(out, "pier_acme_names{{state=\"{}\"}} {n}", escape(s));
    }
    family(
        &mut out,
        "pier_acme_renewals_failing",
        "gauge",
        "Names with an issued certificate whose last renewal attempt failed",
    );
    let _ = writeln!(out, "pier_acme_renewals_failing {renewals_failing}");
    family(
        &mut out,
        "pier_acme_renewals_overdue",
        "gauge",
        "Names whose issued certificate is less than a third of its renewal window from expiry",
    );
    let _ = writeln!(out, "pier_acme_renewals_overdue {renewals_overdue}");

    let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(r)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
