//! An instance's CPU and memory folded into the stats buckets `pier stats` reads
//! ([`pier_registry::telemetry`]): each sample adds the CPU time used since the last one and
//! the memory seen to the current bucket of every tier, and the buckets are written whole
//! (the runner owns its instance's field), so a repeated write never counts twice.

use pier_registry::telemetry::{Tier, UsageWindow};

/// One instance's running totals.
#[derive(Debug, Default)]
pub struct UsageMeter {
    /// CPU seconds of the instance at the last sample.
    last_cpu_s: Option<f64>,
    /// Per tier: the bucket being filled and its totals.
    tiers: [(u64, UsageWindow); 3],
}

impl UsageMeter {
    /// Adds a sample taken at `now_s` (seconds since the epoch): the instance's CPU seconds so
    /// far and its resident memory. Returns the buckets to write.
    pub fn sample(
        &mut self,
        now_s: u64,
        cpu_s: f64,
        rss_bytes: u64,
    ) -> Vec<(Tier, u64, UsageWindow)> {
        // The first sample only sets the base: CPU used before it is not in any bucket.
        let used_ms = match self.last_cpu_s.replace(cpu_s) {
            Some(last) if cpu_s >= last => ((cpu_s - last) * 1000.0).round() as u64,
            _ => 0,
        };
        let mut out = Vec::with_capacity(3);
        for ((bucket, w), tier) in self.tiers.iter_mut().zip(Tier::ALL) {
            let b = tier.bucket(now_s);
            if *bucket != b {
                *bucket = b;
                *w = UsageWindow::default();
            }
            w.cpu_ms += used_ms;
            w.mem_sum = w.mem_sum.saturating_add(rss_bytes);
            w.samples += 1;
            w.mem_max = w.mem_max.max(rss_bytes);
            out.push((tier, b, *w));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_counted_from_the_second_sample_into_each_bucket() {
        let mut m = UsageMeter::default();
        let first = m.sample(1000, 5.0, 100);
        assert_eq!(first[0].2.cpu_ms, 0);
        let second = m.sample(1005, 5.5, 300);
        assert_eq!(
            second[0].2,
            UsageWindow {
                cpu_ms: 500,
                mem_sum: 400,
                samples: 2,
                mem_max: 300
            }
        );
        // A new 10-second bucket starts from nothing; the hour bucket keeps adding.
        let third = m.sample(1010, 6.0, 200);
        assert_eq!(
            (third[0].1, third[0].2.cpu_ms, third[0].2.samples),
            (1010, 500, 1)
        );
        assert_eq!(
            (third[2].1, third[2].2.cpu_ms, third[2].2.samples),
            (0, 1000, 3)
        );
        // A restarted process (CPU going down) adds nothing instead of a huge number.
        assert_eq!(m.sample(1011, 0.1, 200)[0].2.cpu_ms, 500);
    }
}

/// Usage for billing: each running process of an instance (or a one-off process) is metered
/// from its start to its end, and every interval [`UsageLedger::cut`] turns the time,
/// CPU and memory since the last cut into one usage report ([`pier_registry::usage`]).
#[derive(Default)]
pub struct UsageLedger {
    inner: std::sync::Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    next_id: u64,
    running: std::collections::HashMap<u64, Metered>,
    /// Processes that ended since the last cut.
    ended: Vec<Metered>,
}

struct Metered {
    app: String,
    ptype: String,
    size: String,
    /// The process group.
    pid: u32,
    /// Counted up to here (ms since the epoch).
    counted_to_ms: u64,
    ended_ms: Option<u64>,
    /// CPU seconds of the group at the last cut (it starts at 0: a new process).
    last_cpu_s: f64,
    /// Resident bytes at the last cut (for the time after it when the process has ended).
    last_rss: u64,
}

/// A process being metered; its end is recorded when this is dropped.
pub struct Metering {
    ledger: std::sync::Arc<UsageLedger>,
    id: u64,
}

impl Drop for Metering {
    fn drop(&mut self) {
        let mut l = self.ledger.lock();
        if let Some(mut m) = l.running.remove(&self.id) {
            m.ended_ms = Some(pier_store::now_ms());
            l.ended.push(m);
        }
    }
}

/// The size label of an instance under `limits`: `512MiB`, `512MiB-0.5cpu`, `unlimited`.
pub fn size_label(limits: &crate::config::Limits) -> String {
    let mem = limits
        .memory_mib
        .map_or_else(|| "unlimited".to_string(), |m| format!("{m}MiB"));
    match limits.cpus {
        Some(c) => format!("{mem}-{c}cpu"),
        None => mem,
    }
}

impl UsageLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts metering the process group `pid` of an instance of `app`'s `ptype`.
    pub fn start(
        self: &std::sync::Arc<Self>,
        app: &str,
        ptype: &str,
        size: &str,
        pid: u32,
    ) -> Metering {
        let mut l = self.lock();
        l.next_id += 1;
        let id = l.next_id;
        l.running.insert(
            id,
            Metered {
                app: app.to_string(),
                ptype: ptype.to_string(),
                size: size.to_string(),
                pid,
                counted_to_ms: pier_store::now_ms(),
                ended_ms: None,
                last_cpu_s: 0.0,
                last_rss: 0,
            },
        );
        Metering {
            ledger: self.clone(),
            id,
        }
    }

    /// The process groups running now (to read their CPU and memory before [`Self::cut`]).
    pub fn pids(&self) -> Vec<u32> {
        self.lock().running.values().map(|m| m.pid).collect()
    }

    /// Adds to `report` every process's use since the last cut up to `to_ms`: its time (by
    /// app, process type and size), the CPU time it used, and memory × time (the resident
    /// size read now, over the whole span). `usage` maps a process group to its CPU seconds
    /// and resident KiB (read from /proc); a process that ended counts until its end, with
    /// the CPU it used after the last cut unknown (lost).
    pub fn cut(
        &self,
        to_ms: u64,
        usage: &std::collections::HashMap<u32, (f64, u64)>,
        report: &mut pier_registry::usage::UsageReport,
    ) {
        let mut l = self.lock();
        let ended = std::mem::take(&mut l.ended);
        for m in ended {
            let end = m.ended_ms.unwrap_or(to_ms).min(to_ms);
            let secs = end.saturating_sub(m.counted_to_ms) as f64 / 1000.0;
            let u = report.apps.entry(m.app.clone()).or_default();
            u.add_instance(&m.ptype, &m.size, secs);
            u.memory_gb_seconds += m.last_rss as f64 / 1e9 * secs;
        }
        for m in l.running.values_mut() {
            if to_ms <= m.counted_to_ms {
                continue;
            }
            let secs = (to_ms - m.counted_to_ms) as f64 / 1000.0;
            let (cpu_s, rss_kib) = usage.get(&m.pid).copied().unwrap_or((m.last_cpu_s, 0));
            let rss = if rss_kib > 0 {
                rss_kib * 1024
            } else {
                m.last_rss
            };
            let u = report.apps.entry(m.app.clone()).or_default();
            u.add_instance(&m.ptype, &m.size, secs);
            if cpu_s >= m.last_cpu_s {
                u.cpu_seconds += cpu_s - m.last_cpu_s;
                m.last_cpu_s = cpu_s;
            }
            u.memory_gb_seconds += rss as f64 / 1e9 * secs;
            m.last_rss = rss;
            m.counted_to_ms = to_ms;
        }
    }
}

#[cfg(test)]
mod ledger_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_registry::usage::{ReporterKind, UsageReport};
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn time_cpu_and_memory_are_counted_once_per_cut() {
        let ledger = Arc::new(UsageLedger::default());
        let m = ledger.start("blog", "web", "512MiB", 42);
        let t0 = pier_store::now_ms();
        let usage = HashMap::from([(42, (2.0, 1_000_000))]); // 2 CPU s, 1 GB resident
        let mut r = UsageReport::new("r", ReporterKind::Runner, t0, t0 + 10_000);
        ledger.cut(t0 + 10_000, &usage, &mut r);
        let u = &r.apps["blog"];
        assert!((u.instances[0].seconds - 10.0).abs() < 0.1, "{u:?}");
        assert_eq!(u.cpu_seconds, 2.0);
        assert!((u.memory_gb_seconds - 1.024 * 10.0).abs() < 0.2, "{u:?}");
        // The same span is not counted again.
        let mut again = UsageReport::new("r", ReporterKind::Runner, t0, t0 + 10_000);
        ledger.cut(t0 + 10_000, &usage, &mut again);
        assert!(again.apps.is_empty(), "{again:?}");
        drop(m);
        let mut after = UsageReport::new("r", ReporterKind::Runner, t0, t0 + 20_000);
        ledger.cut(t0 + 20_000, &usage, &mut after);
        // Ended now, a little after t0: nothing more than the time it really ran.
        assert!(
            after
                .apps
                .get("blog")
                .map_or(0.0, |u| u.instances[0].seconds)
                < 0.5
        );
        assert!(ledger.pids().is_empty());
    }
}
