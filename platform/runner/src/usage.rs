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
