//! Scheduled backups: when a day's capture is due, which scheduled backups retention keeps
//! (pure functions of the records and the time, tested over many dates), and the loop in
//! every `pier api` that captures at each schedule's time. Several APIs may run: a per-app,
//! per-day claim in Redis (`SET NX PX`) lets one of them capture.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pier_model::api::{BackupRetention, BackupSchedule, BackupView};

use crate::api::ApiState;

const DAY_MS: u64 = 86_400_000;
/// How often the loop looks at the schedules.
pub const TICK: Duration = Duration::from_secs(5);
/// How long a day's claim is kept: past the day's end, so no API captures it twice.
const DAY_CLAIM_MS: u64 = 2 * DAY_MS;

/// `HH:MM` (UTC) as minutes after midnight; `None` unless exactly two digits each, 00-23 and
/// 00-59.
pub fn parse_at(at: &str) -> Option<u32> {
    let (h, m) = at.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (H. Hinnant's algorithm).
pub fn civil(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn day_of(ms: u64) -> i64 {
    i64::try_from(ms / DAY_MS).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD` (UTC) of a time.
pub fn date(ms: u64) -> String {
    let (y, m, d) = civil(day_of(ms));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Weeks run Monday to Sunday: 1970-01-01 was a Thursday.
fn week_of(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// A day's period (the day, its week, its month) as a number that grows by one per period.
type Period = fn(i64) -> i64;

fn month_of(day: i64) -> i64 {
    let (y, m, _) = civil(day);
    y * 12 + i64::from(m) - 1
}

/// The day (`YYYY-MM-DD`) whose capture is due at `now_ms`: today's, once its time has come,
/// if that time is after the schedule was set (a schedule set at 15:00 for 09:00 first
/// captures tomorrow). An API down at the time captures when it is back, the same day.
pub fn due(schedule: &BackupSchedule, now_ms: u64) -> Option<String> {
    let minutes = parse_at(&schedule.at)?;
    let at_ms = now_ms - now_ms % DAY_MS + u64::from(minutes) * 60_000;
    (now_ms >= at_ms && at_ms >= schedule.since_ms).then(|| date(now_ms))
}

/// The scheduled backups retention removes at `now_ms`: of the succeeded ones, all but the
/// newest of each of the last `daily` days, `weekly` weeks and `monthly` months (UTC, the
/// current one included); failed ones once older than the daily window. Manual backups and
/// running captures are never removed.
pub fn expired(backups: &[BackupView], r: BackupRetention, now_ms: u64) -> Vec<u64> {
    let today = day_of(now_ms);
    let mut done: Vec<&BackupView> = backups
        .iter()
        .filter(|b| b.kind == "scheduled" && b.state == "succeeded")
        .collect();
    // Newest first: the first one seen in a period is the one kept for it.
    done.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    let mut keep = BTreeSet::new();
    let windows: [(Period, u32); 3] =
        [(|d| d, r.daily), (week_of, r.weekly), (month_of, r.monthly)];
    for (period, n) in windows {
        let now = period(today);
        let mut seen = BTreeSet::new();
        for b in &done {
            let p = period(day_of(b.created_ms));
            // One dated after now (the clock went back) is kept: nothing says it is old.
            if p > now || (now - p < i64::from(n) && seen.insert(p)) {
                keep.insert(b.id);
            }
        }
    }
    let mut out: Vec<u64> = done
        .iter()
        .map(|b| b.id)
        .filter(|id| !keep.contains(id))
        .collect();
    out.extend(
        backups
            .iter()
            .filter(|b| b.kind == "scheduled" && b.state == "failed")
            .filter(|b| today - day_of(b.created_ms) >= i64::from(r.daily.max(1)))
            .map(|b| b.id),
    );
    out.sort_unstable();
    out
}

/// The loop: every [`TICK`], each schedule whose capture is due is claimed for the day, and
/// the one API that claims it captures, then applies the schedule's retention. Runs until the
/// process ends.
pub async fn run(state: Arc<ApiState>) {
    let holder = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "api".into()),
        std::process::id()
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&state, &holder).await {
            tracing::warn!(error = %e, "backup schedules not read");
        }
    }
}

async fn pass(state: &Arc<ApiState>, holder: &str) -> Result<(), crate::ApiError> {
    let (Some(p), Some(b)) = (state.platform.as_ref(), state.backups.as_ref()) else {
        return Ok(());
    };
    let now = b.now_ms();
    for s in p.store.backup_schedules().await? {
        let Some(day) = due(&s, now) else { continue };
        if !p
            .store
            .claim_backup_day(&s.app, &day, holder, DAY_CLAIM_MS)
            .await?
        {
            continue;
        }
        let started =
            crate::backups::start_capture(state, &s.app, "scheduled", "schedule".into()).await;
        match started {
            Ok((backup, task)) => {
                tracing::info!(app = %s.app, id = backup.id, day, "scheduled backup started");
                let state = state.clone();
                let app = s.app.clone();
                tokio::spawn(async move {
                    let _ = task.await;
                    if let Err(e) = crate::backups::apply_retention(&state, &app).await {
                        tracing::warn!(app, error = %e, "backup retention not applied");
                    }
                });
            }
            Err(crate::ApiError::Conflict(reason)) => {
                // A capture or restore is running: the next pass tries again.
                tracing::info!(app = %s.app, reason, "scheduled backup waits");
                p.store.release_backup_day(&s.app, &day).await?;
            }
            Err(e) => tracing::warn!(app = %s.app, day, error = %e, "scheduled backup not made"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Milliseconds of `YYYY-MM-DD HH:MM` UTC.
    fn at(date: &str, hm: &str) -> u64 {
        let (y, rest) = date.split_once('-').unwrap();
        let (m, d) = rest.split_once('-').unwrap();
        let (y, m, d): (i64, u32, u32) =
            (y.parse().unwrap(), m.parse().unwrap(), d.parse().unwrap());
        // Search the day: simple and independent of `civil`'s arithmetic.
        let mut day = (y - 1970) * 365 + (y - 1969) / 4 - 2;
        while civil(day) != (y, m, d) {
            day += 1;
        }
        u64::try_from(day).unwrap() * DAY_MS + u64::from(parse_at(hm).unwrap()) * 60_000
    }

    fn backup(id: u64, kind: &str, state: &str, created_ms: u64) -> BackupView {
        BackupView {
            app: "blog".into(),
            id,
            state: state.into(),
            kind: kind.into(),
            by: "schedule".into(),
            created_ms,
            finished_ms: None,
            size: None,
            sha256: None,
            reason: None,
            restored_ms: None,
        }
    }

    #[test]
    fn times_parse_strictly() {
        assert_eq!(parse_at("00:00"), Some(0));
        assert_eq!(parse_at("23:59"), Some(23 * 60 + 59));
        assert_eq!(parse_at("03:30"), Some(210));
        for bad in [
            "24:00", "3:30", "03:3", "03:60", "0330", "", "ab:cd", "+3:30", "03:30 ",
        ] {
            assert_eq!(parse_at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dates_are_the_calendar() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_709_164_800_000), "2024-02-29");
        assert_eq!(date(1_735_689_599_999), "2024-12-31");
        assert_eq!(date(1_735_689_600_000), "2025-01-01");
        // Every day of 1999-2033 is one more than the day before, months and years rolling.
        let mut prev = civil(day_of(at("1999-01-01", "00:00")) - 1);
        for day in day_of(at("1999-01-01", "00:00"))..day_of(at("2033-12-31", "00:00")) {
            let c = civil(day);
            let next_day = c.2 == prev.2 + 1 && c.1 == prev.1 && c.0 == prev.0;
            let next_month = c.2 == 1 && (c.1 == prev.1 + 1 && c.0 == prev.0);
            let next_year = c == (prev.0 + 1, 1, 1) && prev.1 == 12 && prev.2 == 31;
            assert!(next_day || next_month || next_year, "{prev:?} -> {c:?}");
            prev = c;
        }
        // 1970-01-05 was a Monday: a new week.
        assert_eq!(week_of(3), 0);
        assert_eq!(week_of(4), 1);
        assert_eq!(week_of(10), 1);
        assert_eq!(week_of(11), 2);
    }

    #[test]
    fn a_days_capture_is_due_once_its_time_has_come_after_the_schedule_was_set() {
        let s = BackupSchedule {
            app: "blog".into(),
            at: "03:30".into(),
            retention: BackupRetention::default(),
            since_ms: at("2026-03-10", "12:00"),
            by: "operator".into(),
        };
        // Set at noon: 03:30 that day has passed, so the first is the next day's.
        assert_eq!(due(&s, at("2026-03-10", "12:00")), None);
        assert_eq!(due(&s, at("2026-03-10", "23:59")), None);
        assert_eq!(due(&s, at("2026-03-11", "03:29")), None);
        assert_eq!(due(&s, at("2026-03-11", "03:30")).unwrap(), "2026-03-11");
        assert_eq!(due(&s, at("2026-03-11", "17:00")).unwrap(), "2026-03-11");
        assert_eq!(due(&s, at("2026-12-31", "03:31")).unwrap(), "2026-12-31");
        let midnight = BackupSchedule {
            at: "00:00".into(),
            ..s.clone()
        };
        assert_eq!(
            due(&midnight, at("2026-03-11", "00:00")).unwrap(),
            "2026-03-11"
        );
    }

    #[test]
    fn retention_keeps_the_newest_of_each_day_week_and_month() {
        let now = at("2026-03-15", "04:00"); // a Sunday
        let r = BackupRetention::default();
        let mut all = Vec::new();
        let mut id = 0;
        // A scheduled capture every day at 03:30 for 500 days, two on some days.
        let first = day_of(now) - 499;
        let mut ids_by_day = std::collections::BTreeMap::new();
        for day in first..=day_of(now) {
            let ms = u64::try_from(day).unwrap() * DAY_MS + 210 * 60_000;
            id += 1;
            all.push(backup(id, "scheduled", "succeeded", ms));
            if day % 5 == 0 {
                id += 1;
                all.push(backup(id, "scheduled", "succeeded", ms + 60_000));
            }
            ids_by_day.insert(day, id);
        }
        // Manual ones, however old, and a running capture stay.
        id += 1;
        all.push(backup(id, "manual", "succeeded", at("2024-01-01", "00:00")));
        let manual = id;
        id += 1;
        all.push(backup(id, "scheduled", "running", now));
        let running = id;
        let gone: BTreeSet<u64> = expired(&all, r, now).into_iter().collect();
        let kept: BTreeSet<u64> = all
            .iter()
            .map(|b| b.id)
            .filter(|i| !gone.contains(i))
            .collect();
        assert!(kept.contains(&manual) && kept.contains(&running));
        // The last 7 days: 2026-03-09 .. 2026-03-15, the newest of each.
        for d in 0..7 {
            assert!(kept.contains(&ids_by_day[&(day_of(now) - d)]), "day -{d}");
        }
        // Weeks start on Mondays: this week (from 03-09) and the 3 before: their Sundays' are
        // the newest (03-08, 03-01, 02-22); this week's is today's.
        for d in ["2026-03-08", "2026-03-01", "2026-02-22"] {
            assert!(
                kept.contains(&ids_by_day[&day_of(at(d, "00:00"))]),
                "week ending {d}"
            );
        }
        assert!(!kept.contains(&ids_by_day[&day_of(at("2026-02-15", "00:00"))]));
        // 12 months, this one included: the last day of each of April 2025 .. February 2026.
        for d in [
            "2025-04-30",
            "2025-05-31",
            "2025-06-30",
            "2025-07-31",
            "2025-08-31",
            "2025-09-30",
            "2025-10-31",
            "2025-11-30",
            "2025-12-31",
            "2026-01-31",
            "2026-02-28",
        ] {
            assert!(
                kept.contains(&ids_by_day[&day_of(at(d, "00:00"))]),
                "month ending {d}"
            );
        }
        assert!(!kept.contains(&ids_by_day[&day_of(at("2025-03-31", "00:00"))]));
        // 7 days + 3 more weeks + 11 more months, and the two that are never removed.
        assert_eq!(kept.len(), 7 + 3 + 11 + 2, "{kept:?}");
        // The earlier of two captures on one day goes.
        let two = day_of(now) - day_of(now) % 5;
        assert!(gone.contains(&(ids_by_day[&two] - 1)));
    }

    #[test]
    fn retention_follows_its_settings_and_drops_old_failures() {
        let now = at("2026-07-01", "12:00");
        let day = |d: &str| at(d, "03:30");
        let all = vec![
            backup(1, "scheduled", "succeeded", day("2026-06-29")),
            backup(2, "scheduled", "succeeded", day("2026-06-30")),
            backup(3, "scheduled", "failed", day("2026-06-30")),
            backup(4, "scheduled", "failed", day("2026-07-01")),
            backup(5, "scheduled", "succeeded", day("2026-07-01")),
        ];
        let only_today = BackupRetention {
            daily: 1,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(expired(&all, only_today, now), vec![1, 2, 3]);
        let two_days = BackupRetention {
            daily: 2,
            ..only_today
        };
        assert_eq!(expired(&all, two_days, now), vec![1]);
        // This month's newest is today's; June's newest is 06-30.
        let months = BackupRetention {
            daily: 1,
            weekly: 0,
            monthly: 2,
        };
        assert_eq!(expired(&all, months, now), vec![1, 3]);
        // Nothing scheduled: nothing removed.
        assert!(expired(&[backup(9, "manual", "succeeded", 0)], only_today, now).is_empty());
        // A backup dated after now (the clock went back) is kept.
        let future = vec![backup(1, "scheduled", "succeeded", now + 3 * DAY_MS)];
        assert!(expired(&future, only_today, now).is_empty());
    }
}
