//! What balancers and runners write about apps' traffic and use, next to the registry: the
//! apps' log streams (router lines beside the instances' output) and the stats buckets that
//! `pier stats` merges. Writers and readers live in different crates (the balancer, the
//! runner, the API), so the key names and the encodings are described once, here.
//!
//! Stats are kept in time buckets of three sizes ([`Tier`]). Each writer (a balancer, or a
//! runner's instance) owns one field of a bucket's hash and overwrites it with its running
//! total for that bucket, so a reader merges fields without double counting and a writer that
//! retries never adds twice. Buckets expire on their own.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Stream: the app's log lines (fields `t`, `src`, `ps`, `line`), capped at about
/// [`LOG_STREAM_LEN`] entries.
pub fn logs_key(prefix: &str, app: &str) -> String {
    format!("{prefix}logs:{app}")
}

/// Entries an app's log stream keeps (`XADD ... MAXLEN ~`).
pub const LOG_STREAM_LEN: u64 = 10_000;

/// The size of a stats bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// 10-second buckets: the last minute.
    TenSeconds,
    /// Minute buckets: the last hour.
    Minute,
    /// Hour buckets: the last day.
    Hour,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::TenSeconds, Tier::Minute, Tier::Hour];

    /// Bucket length, seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Tier::TenSeconds => 10,
            Tier::Minute => 60,
            Tier::Hour => 3600,
        }
    }

    /// How long a bucket is kept after it starts, seconds (a little over the window it serves).
    pub const fn ttl(self) -> u64 {
        match self {
            Tier::TenSeconds => 180,
            Tier::Minute => 2 * 3600,
            Tier::Hour => 26 * 3600,
        }
    }

    /// The window this tier answers for ("1m", "1h", "1d") and its length in seconds.
    pub const fn window(self) -> (&'static str, u64) {
        match self {
            Tier::TenSeconds => ("1m", 60),
            Tier::Minute => ("1h", 3600),
            Tier::Hour => ("1d", 86_400),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Tier::TenSeconds => "s10",
            Tier::Minute => "m",
            Tier::Hour => "h",
        }
    }

    /// The bucket a time falls in (its start, seconds since the epoch).
    pub const fn bucket(self, unix_secs: u64) -> u64 {
        unix_secs - unix_secs % self.seconds()
    }
}

/// Hash: balancer id → [`RouterWindow`] text, for one app and bucket.
pub fn router_stats_key(prefix: &str, app: &str, tier: Tier, bucket: u64) -> String {
    format!("{prefix}stats:router:{app}:{}:{bucket}", tier.tag())
}

/// Hash: `instance@runner` → [`UsageWindow`] text, for one app and bucket.
pub fn usage_stats_key(prefix: &str, app: &str, tier: Tier, bucket: u64) -> String {
    format!("{prefix}stats:usage:{app}:{}:{bucket}", tier.tag())
}

/// Why a stored stats value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad stats value: {0}")]
pub struct DecodeError(&'static str);

/// Values below this are counted exactly (microseconds).
const EXACT: u64 = 64;
/// Sub-buckets per power of two above [`EXACT`]: 32 keeps every bucket within 3.2 % of its
/// values.
const SUB_BITS: u32 = 5;
/// Latencies are capped here (about 19 hours).
const MAX_US: u64 = 1 << 36;

/// A latency histogram in microseconds with log-linear buckets (exact below 64 µs, then 32
/// buckets per doubling), stored sparsely: a few hundred bytes for a typical app, mergeable
/// by adding counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: BTreeMap<u16, u64>,
}

fn bucket_index(us: u64) -> u16 {
    let v = us.min(MAX_US);
    if v < EXACT {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros(); // ≥ 6
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (EXACT as u32 + (exp - 6) * (1 << SUB_BITS) + sub as u32) as u16
}

/// The values of bucket `i`: `[low, high]`.
fn bucket_range(i: u16) -> (u64, u64) {
    let i = u64::from(i);
    if i < EXACT {
        return (i, i);
    }
    let k = i - EXACT;
    let exp = k / (1 << SUB_BITS) + 6;
    let sub = k % (1 << SUB_BITS);
    let shift = exp - u64::from(SUB_BITS);
    let low = ((1 << SUB_BITS) + sub) << shift;
    (low, low + (1 << shift) - 1)
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        *self.counts.entry(bucket_index(us)).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (&i, &n) in &other.counts {
            *self.counts.entry(i).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The value at quantile `q` (0..=1), microseconds: the middle of the bucket holding it.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&i, &n) in &self.counts {
            seen += n;
            if seen >= rank {
                let (low, high) = bucket_range(i);
                return Some(low + (high - low) / 2);
            }
        }
        None
    }

    fn encode_into(&self, out: &mut String) {
        for (k, (i, n)) in self.counts.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let _ = write!(out, "{i}:{n}");
        }
    }

    fn decode(s: &str) -> Result<Self, DecodeError> {
        let mut counts = BTreeMap::new();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (i, n) = pair.split_once(':').ok_or(DecodeError("histogram pair"))?;
            let i: u16 = i.parse().map_err(|_| DecodeError("histogram bucket"))?;
            let n: u64 = n.parse().map_err(|_| DecodeError("histogram count"))?;
            if i > bucket_index(MAX_US) {
                return Err(DecodeError("histogram bucket out of range"));
            }
            *counts.entry(i).or_insert(0) += n;
        }
        Ok(LatencyHistogram { counts })
    }
}

/// One balancer's requests for one app in one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterWindow {
    pub requests: u64,
    /// Answers with a 5xx status (the app's or pier's own).
    pub errors_5xx: u64,
    /// Time from the request head to the end of the response.
    pub latency: LatencyHistogram,
}

impl RouterWindow {
    pub fn record(&mut self, status: u16, total_us: u64) {
        self.requests += 1;
        if (500..600).contains(&status) {
            self.errors_5xx += 1;
        }
        self.latency.record(total_us);
    }

    pub fn merge(&mut self, other: &RouterWindow) {
        self.requests += other.requests;
        self.errors_5xx += other.errors_5xx;
        self.latency.merge(&other.latency);
    }

    /// `v1 n=REQUESTS e=ERRORS h=BUCKET:COUNT,...`
    pub fn encode(&self) -> String {
        let mut s = format!("v1 n={} e={} h=", self.requests, self.errors_5xx);
        self.latency.encode_into(&mut s);
        s
    }

    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        let mut w = RouterWindow::default();
        let mut parts = s.split(' ');
        if parts.next() != Some("v1") {
            return Err(DecodeError("unknown version"));
        }
        for part in parts {
            match part.split_once('=') {
                Some(("n", v)) => w.requests = v.parse().map_err(|_| DecodeError("n"))?,
                Some(("e", v)) => w.errors_5xx = v.parse().map_err(|_| DecodeError("e"))?,
                Some(("h", v)) => w.latency = LatencyHistogram::decode(v)?,
                _ => {} // a later writer's field: ignored
            }
        }
        Ok(w)
    }
}

/// One instance's use of CPU and memory in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageWindow {
    /// CPU time used in the bucket, milliseconds.
    pub cpu_ms: u64,
    /// Memory samples summed (bytes), and how many: their mean is the typical memory.
    pub mem_sum: u64,
    pub samples: u64,
    /// Highest memory sample, bytes.
    pub mem_max: u64,
}

impl UsageWindow {
    pub fn merge(&mut self, other: &UsageWindow) {
        self.cpu_ms += other.cpu_ms;
        self.mem_sum = self.mem_sum.saturating_add(other.mem_sum);
        self.samples += other.samples;
        self.mem_max = self.mem_max.max(other.mem_max);
    }

    /// `v1 cpu=MS sum=BYTES n=SAMPLES max=BYTES`
    pub fn encode(&self) -> String {
        format!(
            "v1 cpu={} sum={} n={} max={}",
            self.cpu_ms, self.mem_sum, self.samples, self.mem_max
        )
    }

    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        let mut w = UsageWindow::default();
        let mut parts = s.split(' ');
        if parts.next() != Some("v1") {
            return Err(DecodeError("unknown version"));
        }
        for part in parts {
            let (k, v) = part.split_once('=').ok_or(DecodeError("field"))?;
            let v: u64 = v.parse().map_err(|_| DecodeError("number"))?;
            match k {
                "cpu" => w.cpu_ms = v,
                "sum" => w.mem_sum = v,
                "n" => w.samples = v,
                "max" => w.mem_max = v,
                _ => {}
            }
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_their_precision() {
        let mut last = 0;
        for v in (0..5000)
            .chain((5000..MAX_US).step_by(9_999_991))
            .chain([MAX_US])
        {
            let i = bucket_index(v);
            assert!(i >= last, "index goes down at {v}");
            last = i;
            let (low, high) = bucket_range(i);
            assert!(
                low <= v && v <= high,
                "{v} outside bucket {i} [{low}, {high}]"
            );
            assert!(
                (high - low) as f64 <= low as f64 * 0.032,
                "bucket {i} too wide"
            );
        }
        assert_eq!(bucket_index(u64::MAX), bucket_index(MAX_US));
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = LatencyHistogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 100); // 100 µs .. 1 s, uniform
        }
        for (q, want) in [(0.5, 500_000.0), (0.95, 950_000.0), (0.99, 990_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.032, "q{q}: {got} vs {want}");
        }
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn windows_round_trip_and_merge() {
        let mut a = RouterWindow::default();
        a.record(200, 1500);
        a.record(503, 90_000);
        let mut b = RouterWindow::default();
        b.record(200, 1500);
        let decoded = RouterWindow::decode(&a.encode()).unwrap();
        assert_eq!(decoded, a);
        let mut m = decoded;
        m.merge(&b);
        assert_eq!((m.requests, m.errors_5xx, m.latency.count()), (3, 1, 3));
        assert!(RouterWindow::decode("v2 n=1").is_err());
        assert!(RouterWindow::decode("v1 n=x").is_err());
        assert!(RouterWindow::decode("v1 h=99999:1").is_err());

        let u = UsageWindow {
            cpu_ms: 120,
            mem_sum: 3 << 20,
            samples: 3,
            mem_max: 2 << 20,
        };
        assert_eq!(UsageWindow::decode(&u.encode()).unwrap(), u);
        assert!(UsageWindow::decode("v1 cpu").is_err());
    }

    #[test]
    fn buckets_start_on_their_boundaries() {
        assert_eq!(Tier::TenSeconds.bucket(1_000_009), 1_000_000);
        assert_eq!(Tier::Minute.bucket(125), 120);
        assert_eq!(Tier::Hour.bucket(7_199), 3600);
        assert_eq!(
            router_stats_key("pier:", "shop", Tier::Minute, 120),
            "pier:stats:router:shop:m:120"
        );
    }
}
