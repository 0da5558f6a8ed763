//! The stats buckets of [`pier_registry::telemetry`]: runners write their instances' usage
//! here; the API reads both kinds back for `pier stats`. (Balancers write their request stats
//! themselves, off their request path.)

use std::collections::BTreeMap;

use pier_registry::telemetry::{
    router_stats_key, usage_stats_key, RouterWindow, Tier, UsageWindow,
};

use crate::store::{timed, Store, StoreError};

/// What one tier's buckets hold for an app over a window.
#[derive(Debug, Clone, Default)]
pub struct WindowStats {
    /// Start of the oldest bucket read (seconds since the epoch).
    pub since_s: u64,
    /// The balancers' requests, merged.
    pub router: RouterWindow,
    /// Each instance's use (`web.1@runner`), merged over the buckets.
    pub usage: BTreeMap<String, UsageWindow>,
    /// Stored values that could not be read (skipped).
    pub bad: usize,
}

impl Store {
    /// Writes one instance's current buckets (its own field in each), each expiring on its own.
    pub async fn write_usage(
        &self,
        app: &str,
        field: &str,
        windows: &[(Tier, u64, UsageWindow)],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (tier, bucket, w) in windows {
            let key = usage_stats_key(self.keys.prefix(), app, *tier, *bucket);
            pipe.cmd("HSET")
                .arg(&key)
                .arg(field)
                .arg(w.encode())
                .ignore();
            pipe.cmd("EXPIREAT")
                .arg(&key)
                .arg(bucket + tier.ttl())
                .ignore();
        }
        timed(pipe.query_async::<()>(&mut self.c())).await
    }

    /// The app's stats in `tier`'s buckets that overlap the `window_s` seconds before `now_s`.
    pub async fn window_stats(
        &self,
        app: &str,
        tier: Tier,
        window_s: u64,
        now_s: u64,
    ) -> Result<WindowStats, StoreError> {
        let buckets = buckets(tier, window_s, now_s);
        let first = buckets.first().copied().unwrap_or(now_s);
        let mut pipe = redis::pipe();
        for b in &buckets {
            pipe.cmd("HGETALL")
                .arg(router_stats_key(self.keys.prefix(), app, tier, *b));
            pipe.cmd("HGETALL")
                .arg(usage_stats_key(self.keys.prefix(), app, tier, *b));
        }
        let maps: Vec<BTreeMap<String, String>> = timed(pipe.query_async(&mut self.c())).await?;
        let mut out = WindowStats {
            since_s: first,
            ..WindowStats::default()
        };
        for pair in maps.chunks(2) {
            if let Some(router) = pair.first() {
                for v in router.values() {
                    match RouterWindow::decode(v) {
                        Ok(w) => out.router.merge(&w),
                        Err(_) => out.bad += 1,
                    }
                }
            }
            if let Some(usage) = pair.get(1) {
                for (instance, v) in usage {
                    match UsageWindow::decode(v) {
                        Ok(w) => out.usage.entry(instance.clone()).or_default().merge(&w),
                        Err(_) => out.bad += 1,
                    }
                }
            }
        }
        Ok(out)
    }

    /// The app's requests bucket by bucket in `tier` over the `window_s` seconds before `now_s`,
    /// oldest first, each merged across balancers (a bucket nobody wrote is all zeros). Values
    /// that cannot be read are skipped and counted in the second member.
    pub async fn router_series(
        &self,
        app: &str,
        tier: Tier,
        window_s: u64,
        now_s: u64,
    ) -> Result<(Vec<(u64, RouterWindow)>, usize), StoreError> {
        let mut pipe = redis::pipe();
        let buckets = buckets(tier, window_s, now_s);
        for b in &buckets {
            pipe.cmd("HGETALL")
                .arg(router_stats_key(self.keys.prefix(), app, tier, *b));
        }
        let maps: Vec<BTreeMap<String, String>> = timed(pipe.query_async(&mut self.c())).await?;
        let mut bad = 0;
        let series = buckets
            .into_iter()
            .zip(maps)
            .map(|(start, fields)| {
                let mut w = RouterWindow::default();
                for v in fields.values() {
                    match RouterWindow::decode(v) {
                        Ok(one) => w.merge(&one),
                        Err(_) => bad += 1,
                    }
                }
                (start, w)
            })
            .collect();
        Ok((series, bad))
    }
}

/// The starts of `tier`'s buckets that overlap the `window_s` seconds before `now_s`, oldest
/// first (never empty: the current bucket is always one).
fn buckets(tier: Tier, window_s: u64, now_s: u64) -> Vec<u64> {
    let first = tier.bucket(now_s.saturating_sub(window_s));
    (first..=now_s).step_by(tier.seconds() as usize).collect()
}
