//! Usage an operator can bill: the collector that moves usage reports from their Redis stream
//! into the platform database ([`crate::usage_db`]), the API's own add-on reports, and the
//! month's quantities, costs ([`crate::prices`]) and gaps answered by `GET /v1/apps/{app}/usage`
//! and `GET /v1/usage`.
//!
//! One API collects at a time (a lease in Redis, like the drainer's). Storing is idempotent
//! (reports are kept once per reporter and sequence number, and the cursor moves in the same
//! transaction), so two collectors for a moment, or one that dies mid-batch, count nothing
//! twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pier_model::api::{AppUsageView, UsageGap, UsageItem, UsageView};
use pier_registry::usage::{next_boundary, AddonTime, Outbox, ReporterKind, UsageReport};
use pier_store::{Lease, Store};

use crate::api::{json, now_ms, ApiState, Reply};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::prices::Prices;
use crate::usage_db::{ReportRow, UsageDb};

/// The reporter id of the API's add-on reports.
pub const ADDONS_REPORTER: &str = "addons";
/// Reports read from the stream per transaction.
const BATCH: usize = 500;
/// How long the collector's lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// What usage needs beside the API's state.
pub struct Usage {
    pub db: UsageDb,
    pub prices: Option<Prices>,
    /// Between two add-on reports (and the collector's passes are a fraction of it).
    pub interval_ms: u64,
}

fn usage(state: &ApiState) -> Result<&Arc<Usage>, ApiError> {
    state.usage.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "this API keeps no usage: it has no platform database (pier api --platform-db)".into(),
        )
    })
}

// ------------------------------------------------------------------- months

/// Days from 1970-01-01 to the first of `month` (1-12) of `year` (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12` → its first and last millisecond + 1 (UTC).
pub fn month_range(month: &str) -> Option<(u64, u64)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let start = days_from_civil(y, m);
    let end = if m == 12 {
        days_from_civil(y + 1, 1)
    } else {
        days_from_civil(y, m + 1)
    };
    let ms = |d: i64| u64::try_from(d).ok().map(|d| d * 86_400_000);
    Some((ms(start)?, ms(end)?))
}

/// The month (`YYYY-MM`, UTC) a time falls in.
pub fn month_of(ms: u64) -> String {
    let (y, m, _) = crate::backup_schedule::civil(i64::try_from(ms / 86_400_000).unwrap_or(0));
    format!("{y:04}-{m:02}")
}

/// `month=2026-12` from a query string (default: this month).
fn month_query(query: &str) -> Result<(String, u64, u64), ApiError> {
    let mut month = month_of(now_ms());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "month" {
            month = crate::router::percent_decode(v)?;
        }
    }
    let (from, to) = month_range(&month).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "month must be YYYY-MM (e.g. 2026-12), not {month:?}"
        ))
    })?;
    Ok((month, from, to))
}

// ------------------------------------------------------------------- costs

/// An item's quantity in its billing unit, the price's unit, and its price.
fn billed(
    item: &str,
    raw: f64,
    prices: Option<&Prices>,
) -> (f64, &'static str, &'static str, Option<f64>) {
    let p = |f: fn(&Prices) -> f64| prices.map(f);
    match item.split(':').next().unwrap_or("") {
        "instance" => (
            raw / 3600.0,
            "hours",
            "instance hour",
            p(|p| p.instance_hour),
        ),
        "cpu" => (raw, "seconds", "CPU second", p(|p| p.cpu_second)),
        "memory" => (raw / 3600.0, "GB-hours", "GB-hour", p(|p| p.memory_gb_hour)),
        "requests" => (
            raw,
            "requests",
            "million requests",
            p(|p| p.requests_million),
        ),
        "bytes_in" => (raw / 1e9, "GB", "GB", p(|p| p.gb_in)),
        "bytes_out" => (raw / 1e9, "GB", "GB", p(|p| p.gb_out)),
        "addon" => {
            let kind = item.split(':').nth(1).unwrap_or("");
            let price = prices.map(|p| p.addon_hour.get(kind).copied().unwrap_or(0.0));
            (raw / 3600.0, "hours", "add-on hour", price)
        }
        _ => (raw, "units", "unit", prices.map(|_| 0.0)),
    }
}

/// The month's rows (app, item, raw quantity) as apps with their items and costs.
pub fn price_apps(rows: Vec<(String, String, f64)>, prices: Option<&Prices>) -> Vec<AppUsageView> {
    let mut apps: BTreeMap<String, AppUsageView> = BTreeMap::new();
    for (app, item, raw) in rows {
        let (quantity, unit, price_unit, price) = billed(&item, raw, prices);
        let per = if price_unit == "million requests" {
            1e6
        } else {
            1.0
        };
        let cost = price.map(|p| quantity / per * p);
        let view = apps.entry(app.clone()).or_insert_with(|| AppUsageView {
            app,
            items: Vec::new(),
            cost: prices.map(|_| 0.0),
        });
        if let (Some(total), Some(c)) = (view.cost.as_mut(), cost) {
            *total += c;
        }
        view.items.push(UsageItem {
            item,
            quantity,
            unit: unit.into(),
            price,
            price_unit: price_unit.into(),
            cost,
        });
    }
    apps.into_values().collect()
}

// ------------------------------------------------------------------- gaps

/// `2026-12-05T10:04:00Z`.
fn at(ms: u64) -> String {
    pier_routes::cert::rfc3339(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// What may be missing from `[from_ms, to_ms)` judged from the reports that overlap it (by
/// reporter and sequence number), at `now_ms`:
/// - numbers missing between two reports that arrived: those reports were lost;
/// - a report that follows one that was not final but starts later than it ended: the
///   reporter died and came back (its instances' time in between was never reported);
/// - a last report that is not final and is older than three of its intervals: the reporter
///   stopped reporting without saying so (killed, its machine gone, or cut off from Redis).
pub fn gaps(rows: &[ReportRow], from_ms: u64, to_ms: u64, now_ms: u64) -> Vec<UsageGap> {
    let mut out = Vec::new();
    let mut by_reporter: BTreeMap<&str, Vec<&ReportRow>> = BTreeMap::new();
    for r in rows {
        by_reporter.entry(&r.reporter).or_default().push(r);
    }
    for (reporter, mut rs) in by_reporter {
        rs.sort_by_key(|r| r.seq);
        let kind = rs[0].kind.clone();
        let interval = rs.iter().map(|r| r.to_ms - r.from_ms).max().unwrap_or(0);
        for w in rs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.seq > a.seq + 1 {
                let (s1, s2) = (a.seq + 1, b.seq - 1);
                let seqs = if s1 == s2 {
                    format!("seq {s1} missing")
                } else {
                    format!("seq {s1}–{s2} missing")
                };
                out.push(UsageGap {
                    reporter: reporter.into(),
                    kind: kind.clone(),
                    from_ms: a.to_ms,
                    to_ms: Some(b.from_ms),
                    seq_from: Some(s1),
                    seq_to: Some(s2),
                    text: format!(
                        "{reporter} sent no report for {}–{} ({seqs})",
                        at(a.to_ms),
                        at(b.from_ms)
                    ),
                });
            } else if !a.last && b.from_ms > a.to_ms + 1000 {
                out.push(UsageGap {
                    reporter: reporter.into(),
                    kind: kind.clone(),
                    from_ms: a.to_ms,
                    to_ms: Some(b.from_ms),
                    seq_from: None,
                    seq_to: None,
                    text: format!(
                        "{reporter} stopped reporting at {} without a final report and came back at {}",
                        at(a.to_ms),
                        at(b.from_ms)
                    ),
                });
            }
        }
        if let Some(last) = rs.last() {
            let overdue = last.to_ms + 3 * interval.max(1000);
            if !last.last && overdue < now_ms && last.to_ms < to_ms && last.to_ms >= from_ms {
                out.push(UsageGap {
                    reporter: reporter.into(),
                    kind,
                    from_ms: last.to_ms,
                    to_ms: None,
                    seq_from: None,
                    seq_to: None,
                    text: format!(
                        "{reporter} stopped reporting at {} without a final report",
                        at(last.to_ms)
                    ),
                });
            }
        }
    }
    out
}

// ------------------------------------------------------------------- handlers

async fn month_view(state: &ApiState, app: Option<&str>, query: &str) -> Reply {
    let (month, from, to) = month_query(query)?;
    let u = usage(state)?;
    let rows = u.db.totals(app, from, to).await.map_err(db_error)?;
    let reports = u.db.reports(from, to).await.map_err(db_error)?;
    let apps = price_apps(rows, u.prices.as_ref());
    let cost = u
        .prices
        .as_ref()
        .map(|_| apps.iter().filter_map(|a| a.cost).sum::<f64>());
    json(
        StatusCode::OK,
        &UsageView {
            month,
            from_ms: from,
            to_ms: to,
            apps,
            gaps: gaps(&reports, from, to, now_ms()),
            currency: u.prices.as_ref().map(|p| p.currency.clone()),
            cost,
        },
    )
}

fn db_error(e: crate::usage_db::UsageDbError) -> ApiError {
    ApiError::NoCapacity(e.to_string())
}

/// `GET /v1/apps/{app}/usage?month=YYYY-MM`: the app's owner or the operator. An app that was
/// deleted keeps its usage (the operator still bills it).
pub async fn show_app(state: &ApiState, caller: &Caller, app: &str, query: &str) -> Reply {
    caller.may_act_on(app)?;
    month_view(state, Some(app), query).await
}

/// `GET /v1/usage?month=YYYY-MM`: every app's (operator).
pub async fn show_all(state: &ApiState, caller: &Caller, query: &str) -> Reply {
    caller.require_operator("see every app's usage")?;
    month_view(state, None, query).await
}

// ------------------------------------------------------------------- the collector

/// The add-ons' time over `[from_ms, to_ms)`: every ready add-on of every app, from its
/// creation (or `from_ms`) to `to_ms`.
async fn addons_report(store: &Store, apps: &[String], from_ms: u64, to_ms: u64) -> UsageReport {
    let mut r = UsageReport::new(ADDONS_REPORTER, ReporterKind::Addons, from_ms, to_ms);
    for app in apps {
        let Ok(addons) = store.addons(app).await else {
            continue;
        };
        for a in addons
            .into_iter()
            .filter(|a| a.state == pier_model::platform::AddonState::Ready)
        {
            let start = a.created_ms.max(from_ms);
            if start >= to_ms {
                continue;
            }
            r.apps
                .entry(app.clone())
                .or_default()
                .addons
                .push(AddonTime {
                    kind: a.kind,
                    plan: a.plan,
                    seconds: (to_ms - start) as f64 / 1000.0,
                });
        }
    }
    r
}

/// The collector, until `shutdown`: while this API holds the lease, moves reports from the
/// stream into the database, writes the add-on reports every interval, and prunes once an
/// hour. On shutdown while leading, a final add-on report, then the lease is given up.
pub async fn collect(state: Arc<ApiState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let (Some(u), Some(p)) = (state.usage.clone(), state.platform.as_ref()) else {
        return;
    };
    let store = p.store.clone();
    let holder = format!(
        "{}-{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    );
    let keys = store.keys().clone();
    let lease = Lease::on_keys(
        store.clone(),
        &holder,
        LEASE_TTL,
        &keys.usage_lease,
        &keys.usage_fence,
    );
    let pass = Duration::from_millis((u.interval_ms / 4).clamp(100, 1000));
    let mut outbox = Outbox::default();
    // While leading: the start of the add-on interval being counted.
    let mut addons_from: Option<u64> = None;
    let mut pruned_at = 0u64;
    let mut leading = false;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(pass) => false,
            _ = shutdown.changed() => true,
        };
        match lease.acquire_or_renew().await {
            Ok(Some(_)) => {
                if !leading {
                    tracing::info!(holder = %holder, "usage collector: leading");
                }
                leading = true;
            }
            Ok(None) => {
                leading = false;
                addons_from = None;
            }
            Err(e) => tracing::warn!(error = %e, "usage collector: lease check failed"),
        }
        if leading {
            let now = now_ms();
            let from = *addons_from.get_or_insert(now);
            let due = next_boundary(from, u.interval_ms);
            if now >= due || stopping {
                let to = if stopping { now.max(from) } else { due };
                let apps = state.registry().app_names().await.unwrap_or_default();
                let mut r = addons_report(&store, &apps, from, to).await;
                r.last = stopping;
                outbox.push(r);
                addons_from = Some(to);
            }
            if let Err(e) = store.write_usage_reports(&mut outbox).await {
                tracing::debug!(error = %e, "add-on usage reports not written yet");
            }
            if let Err(e) = drain_stream(&store, &u.db).await {
                tracing::warn!(error = %e, "usage collector: reports not stored");
            }
            if now >= pruned_at + 3_600_000 {
                match u.db.prune(now).await {
                    Ok(()) => pruned_at = now,
                    Err(e) => tracing::warn!(error = %e, "usage collector: pruning failed"),
                }
            }
        }
        if stopping {
            if leading {
                let _ = lease.release().await;
            }
            return;
        }
    }
}

/// Stores every report in the stream after the database's cursor, batch by batch. A report
/// that cannot be read is logged and skipped (the cursor moves past it).
async fn drain_stream(store: &Store, db: &UsageDb) -> Result<(), String> {
    loop {
        let cursor = db.cursor().await.map_err(|e| e.to_string())?;
        let batch = store
            .usage_reports_after(&cursor, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = batch.last().map(|(id, _)| id.clone()) else {
            return Ok(());
        };
        let n = batch.len();
        let mut good = Vec::with_capacity(n);
        for (id, r) in batch {
            match r {
                Ok(r) => good.push((id, r)),
                Err(why) => tracing::warn!(stream_id = %id, reason = %why, "usage report skipped"),
            }
        }
        let new = db
            .ingest(&good, &last, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(read = n, new, "usage reports stored");
        if n < BATCH {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(reporter: &str, seq: u64, from: u64, to: u64, last: bool) -> ReportRow {
        ReportRow {
            reporter: reporter.into(),
            kind: "runner".into(),
            seq,
            from_ms: from,
            to_ms: to,
            last,
        }
    }

    #[test]
    fn months_are_calendar_months() {
        assert_eq!(month_range("1970-01"), Some((0, 31 * 86_400_000)));
        let (from, to) = month_range("2024-02").unwrap();
        assert_eq!((to - from) / 86_400_000, 29);
        let (from, to) = month_range("2026-12").unwrap();
        assert_eq!(month_of(from), "2026-12");
        assert_eq!(month_of(to - 1), "2026-12");
        assert_eq!(month_of(to), "2027-01");
        assert!(month_range("9999-12").is_some());
        for bad in [
            "2026-13", "2026-00", "26-12", "2026-1", "2026/12", "", "abcd-ef", "1969-12",
        ] {
            assert_eq!(month_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_numbers_a_restart_and_a_silent_stop_are_gaps() {
        let m = 60_000;
        let rows = vec![
            // r1: seq 7 and 8 lost.
            row("r1", 5, 0, m, false),
            row("r1", 6, m, 2 * m, false),
            row("r1", 9, 4 * m, 5 * m, true),
            // r2: killed after seq 2, back at 10 minutes, then silent.
            row("r2", 1, 0, m, false),
            row("r2", 2, m, 2 * m, false),
            row("r2", 3, 10 * m + 1234, 11 * m, false),
            // r3: stopped on purpose, started again later: no gap.
            row("r3", 1, 0, m, true),
            row("r3", 2, 5 * m, 6 * m, true),
        ];
        let g = gaps(&rows, 0, 100 * m, 20 * m);
        let texts: Vec<&str> = g.iter().map(|g| g.text.as_str()).collect();
        assert_eq!(g.len(), 3, "{texts:#?}");
        assert_eq!((g[0].seq_from, g[0].seq_to), (Some(7), Some(8)));
        assert_eq!(
            g[0].text,
            "r1 sent no report for 1970-01-01T00:02:00Z–1970-01-01T00:04:00Z (seq 7–8 missing)"
        );
        assert_eq!((g[1].from_ms, g[1].to_ms), (2 * m, Some(10 * m + 1234)));
        assert!(g[1].text.contains("came back"), "{}", g[1].text);
        assert_eq!((g[2].from_ms, g[2].to_ms), (11 * m, None));
        assert_eq!(
            g[2].text,
            "r2 stopped reporting at 1970-01-01T00:11:00Z without a final report"
        );
        // A reporter still within its intervals is not overdue.
        assert!(gaps(&rows[3..6], 0, 100 * m, 12 * m).len() == 1);
    }

    #[test]
    fn costs_follow_the_price_sheet() {
        let prices = Prices::parse(
            "p",
            "[prices]\ninstance_hour = 0.5\nrequests_million = 2\ngb_out = 0.1\n[prices.addon_hour]\npostgres = 1\n",
        )
        .unwrap();
        let rows = vec![
            (
                "blog".to_string(),
                "addon:postgres:standard".to_string(),
                7200.0,
            ),
            ("blog".to_string(), "bytes_out".to_string(), 3e9),
            (
                "blog".to_string(),
                "instance:web:512MiB".to_string(),
                36_000.0,
            ),
            ("blog".to_string(), "requests".to_string(), 500_000.0),
        ];
        let apps = price_apps(rows.clone(), Some(&prices));
        let costs: Vec<f64> = apps[0].items.iter().map(|i| i.cost.unwrap()).collect();
        for (got, want) in costs.iter().zip([2.0, 0.3, 5.0, 1.0]) {
            assert!((got - want).abs() < 1e-9, "{costs:?}");
        }
        assert!((apps[0].cost.unwrap() - 8.3).abs() < 1e-9);
        assert_eq!(apps[0].items[2].quantity, 10.0);
        assert_eq!(apps[0].items[2].unit, "hours");
        let unpriced = price_apps(rows, None);
        assert!(unpriced[0].cost.is_none() && unpriced[0].items[0].price.is_none());
    }
}
