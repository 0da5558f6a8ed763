//! Usage reports: what each runner and balancer measured of each app over one interval, for
//! billing. Reporters (balancers, runners, and the API for add-ons) write them to one Redis
//! stream; the API's collector moves them to PostgreSQL (`platform/api/src/usage_db.rs`).
//! Writers live in three crates, so the keys, the wire format and the outbox live here.
//!
//! Each report carries its reporter's sequence number, taken (`INCR`) before the report is first
//! written and kept with it: a report written again after a timeout has the same number and the
//! collector keeps it once; a report that never arrives leaves a hole in the numbers.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Stream: every reporter's usage reports (field `report`, the JSON of a [`UsageReport`]),
/// capped at about [`REPORT_STREAM_LEN`] entries.
pub fn reports_key(prefix: &str) -> String {
    format!("{prefix}usage_reports")
}

/// String (integer): the reporter's last sequence number.
pub fn seq_key(prefix: &str, reporter: &str) -> String {
    format!("{prefix}usage_seq:{reporter}")
}

/// Entries the report stream keeps (`XADD ... MAXLEN ~`): days of reports of a hundred
/// reporters at one a minute, so a collector down for hours loses none.
pub const REPORT_STREAM_LEN: u64 = 100_000;

/// Reports a reporter keeps while Redis does not take them (a day at one a minute); older
/// ones are dropped (counted) and show as a gap.
pub const OUTBOX_LEN: usize = 1440;

/// The default reporting interval.
pub const DEFAULT_INTERVAL_MS: u64 = 60_000;

/// What kind of process reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReporterKind {
    Runner,
    Balancer,
    /// The API's collector, for add-ons.
    Addons,
}

impl ReporterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReporterKind::Runner => "runner",
            ReporterKind::Balancer => "balancer",
            ReporterKind::Addons => "addons",
        }
    }
}

/// Time an app's instances of one process type and size ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceTime {
    pub ptype: String,
    /// The limits an instance ran under, e.g. `512MiB` or `512MiB-0.5cpu`.
    pub size: String,
    pub seconds: f64,
}

/// Time an add-on existed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddonTime {
    /// `postgres`, `redis`.
    pub kind: String,
    pub plan: String,
    pub seconds: f64,
}

/// One app's use in one report. Fields a reporter does not measure stay zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppUsage {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceTime>,
    pub cpu_seconds: f64,
    /// Resident memory × time, GB (10⁹ bytes) × seconds.
    pub memory_gb_seconds: f64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonTime>,
}

impl AppUsage {
    /// The quantities as billing items: `instance:<ptype>:<size>` (seconds), `cpu` (seconds),
    /// `memory` (GB-seconds), `requests`, `bytes_in`, `bytes_out`, `addon:<kind>:<plan>`
    /// (seconds). Zero quantities are left out.
    pub fn items(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for i in &self.instances {
            out.push((format!("instance:{}:{}", i.ptype, i.size), i.seconds));
        }
        out.push(("cpu".into(), self.cpu_seconds));
        out.push(("memory".into(), self.memory_gb_seconds));
        out.push(("requests".into(), self.requests as f64));
        out.push(("bytes_in".into(), self.bytes_in as f64));
        out.push(("bytes_out".into(), self.bytes_out as f64));
        for a in &self.addons {
            out.push((format!("addon:{}:{}", a.kind, a.plan), a.seconds));
        }
        out.retain(|(_, q)| *q > 0.0 && q.is_finite());
        out
    }

    /// Adds `seconds` of an instance of `ptype` and `size`.
    pub fn add_instance(&mut self, ptype: &str, size: &str, seconds: f64) {
        match self
            .instances
            .iter_mut()
            .find(|i| i.ptype == ptype && i.size == size)
        {
            Some(i) => i.seconds += seconds,
            None => self.instances.push(InstanceTime {
                ptype: ptype.to_string(),
                size: size.to_string(),
                seconds,
            }),
        }
    }
}

/// What one reporter measured over `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub v: u32,
    pub reporter: String,
    pub kind: ReporterKind,
    /// 1, 2, 3... per reporter; 0 until it is taken.
    pub seq: u64,
    pub from_ms: u64,
    pub to_ms: u64,
    /// The reporter stopped on purpose after this one: no report is missing after it.
    #[serde(rename = "final", default)]
    pub last: bool,
    #[serde(default)]
    pub apps: BTreeMap<String, AppUsage>,
}

impl UsageReport {
    pub fn new(reporter: &str, kind: ReporterKind, from_ms: u64, to_ms: u64) -> Self {
        UsageReport {
            v: 1,
            reporter: reporter.to_string(),
            kind,
            seq: 0,
            from_ms,
            to_ms,
            last: false,
            apps: BTreeMap::new(),
        }
    }

    /// The report read back from the stream; what a reporter could not have written is refused.
    pub fn decode(text: &[u8]) -> Result<Self, String> {
        let r: UsageReport =
            serde_json::from_slice(text).map_err(|e| format!("not a usage report: {e}"))?;
        if r.v != 1 {
            return Err(format!("unknown report version {}", r.v));
        }
        if r.seq == 0 || r.reporter.is_empty() || r.reporter.len() > 200 {
            return Err("a report needs a reporter and a sequence number".into());
        }
        if r.to_ms < r.from_ms {
            return Err("a report ends before it starts".into());
        }
        Ok(r)
    }
}

/// The next interval boundary after `now_ms`: reports end on multiples of the interval, so
/// with an interval that divides an hour no report straddles two hours.
pub fn next_boundary(now_ms: u64, interval_ms: u64) -> u64 {
    let i = interval_ms.max(1);
    (now_ms / i + 1) * i
}

/// Reports waiting to be written, oldest first, each keeping its sequence number once it has
/// one. Bounded: when full the oldest is dropped (counted), leaving a gap the collector shows.
#[derive(Debug)]
pub struct Outbox {
    pending: VecDeque<UsageReport>,
    cap: usize,
    dropped: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(OUTBOX_LEN)
    }
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Outbox {
            pending: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    pub fn push(&mut self, r: UsageReport) {
        if self.pending.len() >= self.cap {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(r);
    }

    /// The oldest report not yet written.
    pub fn front_mut(&mut self) -> Option<&mut UsageReport> {
        self.pending.front_mut()
    }

    /// The oldest report was written.
    pub fn written(&mut self) {
        self.pending.pop_front();
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Reports dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reports_round_trip_and_bad_ones_are_refused() {
        let mut r = UsageReport::new("r-1", ReporterKind::Runner, 60_000, 120_000);
        r.seq = 7;
        r.last = true;
        let u = r.apps.entry("blog".into()).or_default();
        u.add_instance("web", "512MiB", 30.0);
        u.add_instance("web", "512MiB", 30.0);
        u.cpu_seconds = 1.5;
        let text = serde_json::to_vec(&r).unwrap();
        assert!(String::from_utf8_lossy(&text).contains("\"final\":true"));
        let back = UsageReport::decode(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.apps["blog"].items(),
            vec![
                ("instance:web:512MiB".to_string(), 60.0),
                ("cpu".to_string(), 1.5)
            ]
        );
        r.seq = 0;
        assert!(UsageReport::decode(&serde_json::to_vec(&r).unwrap()).is_err());
        assert!(UsageReport::decode(b"{\"v\":2}").is_err());
        assert!(UsageReport::decode(b"nope").is_err());
    }

    #[test]
    fn the_outbox_keeps_the_newest_and_counts_what_it_drops() {
        let mut o = Outbox::new(2);
        for i in 1..=3 {
            o.push(UsageReport::new("b", ReporterKind::Balancer, i, i + 1));
        }
        assert_eq!((o.len(), o.dropped()), (2, 1));
        assert_eq!(o.front_mut().unwrap().from_ms, 2);
        o.written();
        assert_eq!(o.front_mut().unwrap().from_ms, 3);
    }

    #[test]
    fn boundaries_are_multiples_of_the_interval() {
        assert_eq!(next_boundary(0, 60_000), 60_000);
        assert_eq!(next_boundary(59_999, 60_000), 60_000);
        assert_eq!(next_boundary(60_000, 60_000), 120_000);
        assert_eq!(next_boundary(5, 0), 6);
    }
}
