//! The consistent-hash policy: requests with the same key (a header, a cookie, the client's
//! address) go to the same backend while it is healthy, and adding or removing a backend moves
//! only the keys that belonged to it. Bounded loads (Mirrokni, Thorup and Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", 2016, as in HAProxy's `hash-balance-factor` and
//! Envoy's `hash_balance_factor`): a backend already holding more than `balance`% of its fair
//! share of the requests in flight passes the key on to the next backend on the ring, so one
//! hot key cannot bury one backend.
//!
//! The ring is built from the backends' identities (their instance id, else their address) with
//! a fixed hash, so every balancer process, and every restart, sends a key to the same backend.

use crate::app::App;

/// What a consistent-hash app hashes to choose a backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// The client's address (on a trusted listener, the last `X-Forwarded-For` address).
    #[default]
    ClientIp,
    /// The first value of a request header (its name in lower case).
    Header(Box<str>),
    /// The value of a cookie.
    Cookie(Box<str>),
}

impl HashOn {
    /// `client-ip`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<HashOn, String> {
        let bad_name = |name: &str| name.is_empty() || !name.bytes().all(is_tchar);
        if text == "client-ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            if bad_name(name) {
                return Err(format!("hash_on {text:?}: {name:?} is not a header name"));
            }
            return Ok(HashOn::Header(name.to_ascii_lowercase().into()));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            if bad_name(name) {
                return Err(format!("hash_on {text:?}: {name:?} is not a cookie name"));
            }
            return Ok(HashOn::Cookie(name.into()));
        }
        Err(format!(
            "hash_on {text:?}: use \"client-ip\", \"header:NAME\" or \"cookie:NAME\""
        ))
    }

    /// The text [`HashOn::parse`] reads.
    pub fn to_text(&self) -> String {
        match self {
            HashOn::ClientIp => "client-ip".into(),
            HashOn::Header(n) => format!("header:{n}"),
            HashOn::Cookie(n) => format!("cookie:{n}"),
        }
    }
}

/// An RFC 9110 token character (header and cookie names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A consistent-hash app's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HashPolicy {
    pub on: HashOn,
    /// The bound on a backend's load, in percent of its fair share of the requests in flight
    /// (100 to 1000); 0: unbounded (a key always goes to its backend while it is healthy).
    pub balance: u16,
}

/// The bound unless set: Google's 1.25.
pub const DEFAULT_HASH_BALANCE: u16 = 125;

/// Requests in flight a backend always takes for its keys, whatever the bound: at light load
/// the bound would be one or two requests, and a user's few parallel requests (a page and its
/// assets) would be scattered; a hot key is what the bound is for.
pub const BOUND_FLOOR: u64 = 8;

/// Checks a `hash_balance`: 0 (unbounded) or 100 to 1000 (percent).
pub fn check_hash_balance(n: u64) -> Result<u16, String> {
    match n {
        0 => Ok(0),
        100..=1000 => Ok(n as u16),
        _ => Err(format!(
            "hash_balance {n} must be 0 (unbounded) or a percentage from 100 to 1000"
        )),
    }
}

/// Reads an app's `hash_on` and `hash_balance`. A `consistent-hash` app always has a hash
/// policy (its key is the client's address unless `hash_on` says otherwise, its bound
/// [`DEFAULT_HASH_BALANCE`] unless `hash_balance` does); another app has one only when either
/// is given (kept for when its policy changes; unused till then). `Err` names the field at
/// fault.
pub fn hash_policy(
    policy: crate::app::Policy,
    on: Option<&str>,
    balance: Option<u64>,
) -> Result<Option<HashPolicy>, (&'static str, String)> {
    if policy != crate::app::Policy::ConsistentHash && on.is_none() && balance.is_none() {
        return Ok(None);
    }
    let on = on
        .map(HashOn::parse)
        .transpose()
        .map_err(|e| ("hash_on", e))?
        .unwrap_or_default();
    let balance = balance
        .map(check_hash_balance)
        .transpose()
        .map_err(|e| ("hash_balance", e))?
        .unwrap_or(DEFAULT_HASH_BALANCE);
    Ok(Some(HashPolicy { on, balance }))
}

/// What the routes file says of `hash_on` or `hash_balance` on an app of another policy.
pub const NEEDS_HASH_POLICY: &str = "only an app with policy \"consistent-hash\" hashes";

/// Points on the ring per backend when weights are equal: enough that each backend's share
/// stays within a few percent of its weight's.
const POINTS_PER_BACKEND: usize = 160;

/// The ring: points sorted by hash, each naming a backend (by index).
#[derive(Debug, Default)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// A backend of weight `w` gets a share of the `160 × n` points in proportion to its weight
    /// (at least one), each the hash of its identity and the point's number.
    pub fn build(app: &App) -> Ring {
        let n = app.backends.len();
        let total: u64 = app.backends.iter().map(|b| u64::from(b.weight)).sum();
        let target = (POINTS_PER_BACKEND * n) as u64;
        let mut points = Vec::with_capacity(target as usize + n);
        for (i, b) in app.backends.iter().enumerate() {
            let share = (target * u64::from(b.weight))
                .checked_div(total)
                .unwrap_or(0)
                .max(1);
            let id = b.id();
            for k in 0..share {
                let mut h = Fnv::new();
                h.write(id.as_bytes());
                h.write(b"#");
                h.write(&k.to_le_bytes());
                points.push((h.finish(), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The hash of a key (the same on every process and platform).
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(key);
    h.finish()
}

/// FNV-1a, 64 bits, with a final mix (FNV alone spreads nearby keys poorly around a ring).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// splitmix64's finalizer.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl App {
    /// Chooses a backend for a request whose key hashes to `key`: the first backend clockwise
    /// from the key on the ring that is live, not in `tried`, not ejected or failing its
    /// health check and (with a bound) under its bound of load; failing that, the first
    /// healthy one whatever its load; failing that, the first live one (as [`App::pick`] does
    /// when every backend is ejected).
    pub fn pick_hashed(
        &self,
        now_ms: u64,
        tried: &[usize],
        key: u64,
        balance: u16,
    ) -> Option<usize> {
        let ring = self.ring();
        if ring.is_empty() {
            return None;
        }
        let live = |i: usize| !tried.contains(&i) && self.backends[i].is_live(now_ms);
        let healthy = |i: usize| {
            let s = &self.backends[i].state;
            live(i) && !s.is_ejected(now_ms) && !s.is_check_down()
        };
        // The requests in flight and the weight of the healthy backends.
        let (mut load, mut weight) = (0u64, 0u64);
        if balance != 0 {
            for (i, b) in self.backends.iter().enumerate() {
                if healthy(i) {
                    load += u64::from(b.state.outstanding());
                    weight += u64::from(b.weight);
                }
            }
        }
        // Under its bound: outstanding < balance% × (load + 1) × weight_i / weight, or fewer
        // than BOUND_FLOOR in flight.
        let fits = |i: usize| {
            let b = &self.backends[i];
            let out = u64::from(b.state.outstanding());
            balance == 0
                || out < BOUND_FLOOR
                || out * 100 * weight < u64::from(balance) * (load + 1) * u64::from(b.weight)
        };
        let start = ring.points.partition_point(|p| p.0 < key);
        let walk = || {
            (0..ring.points.len())
                .map(move |k| ring.points[(start + k) % ring.points.len()].1 as usize)
        };
        walk()
            .find(|&i| healthy(i) && fits(i))
            .or_else(|| walk().find(|&i| healthy(i)))
            .or_else(|| walk().find(|&i| live(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Policy;
    use std::sync::Arc;

    fn app(weights: &[u32]) -> App {
        crate::app::tests::weighted(Policy::ConsistentHash, weights)
    }

    fn shares(a: &App, keys: u32) -> Vec<f64> {
        let mut counts = vec![0u32; a.backends.len()];
        for k in 0..keys {
            let i = a.pick_hashed(0, &[], hash_key(format!("user-{k}").as_bytes()), 0);
            counts[i.unwrap()] += 1;
        }
        counts
            .iter()
            .map(|&c| f64::from(c) / f64::from(keys))
            .collect()
    }

    #[test]
    fn keys_spread_by_weight() {
        for s in shares(&app(&[1, 1, 1, 1]), 40_000) {
            assert!((s - 0.25).abs() < 0.05, "{s}");
        }
        let s = shares(&app(&[1, 3]), 40_000);
        assert!((s[0] - 0.25).abs() < 0.05, "{s:?}");
    }

    #[test]
    fn a_key_stays_and_only_a_removed_backends_keys_move() {
        let four = app(&[1, 1, 1, 1]);
        let three = app(&[1, 1, 1]);
        let (mut moved, mut kept) = (0, 0);
        for k in 0..10_000 {
            let key = hash_key(format!("session-{k}").as_bytes());
            let before = four.pick_hashed(0, &[], key, 0).unwrap();
            assert_eq!(four.pick_hashed(0, &[], key, 0), Some(before));
            let after = three.pick_hashed(0, &[], key, 0).unwrap();
            if before == 3 {
                moved += 1;
            } else {
                // Backends 0..3 keep their identities: their keys do not move.
                assert_eq!(after, before, "key {k}");
                kept += 1;
            }
        }
        assert!(moved > 1_500 && kept > 6_500, "{moved} {kept}");
    }

    #[test]
    fn a_hot_key_overflows_past_its_bound() {
        let a = Arc::new(app(&[1, 1, 1, 1]));
        let key = hash_key(b"hot");
        let home = a.pick_hashed(0, &[], key, 0).unwrap();
        // Unbounded: every request of the key goes home.
        let mut guards = Vec::new();
        for _ in 0..40 {
            let i = a.pick_hashed(0, &[], key, 0).unwrap();
            assert_eq!(i, home);
            guards.push(a.begin(i));
        }
        drop(guards);
        // Bounded at 125%: no backend holds more than ceil(1.25 × (in flight + 1) / 4), or the
        // floor.
        let mut guards = Vec::new();
        for n in 0..40u64 {
            let i = a.pick_hashed(0, &[], key, 125).unwrap();
            let cap = (125 * (n + 1)).div_ceil(400).max(BOUND_FLOOR);
            assert!(u64::from(a.backends[i].state.outstanding()) < cap, "{n}");
            guards.push(a.begin(i));
        }
        let held: Vec<u32> = a.backends.iter().map(|b| b.state.outstanding()).collect();
        assert!(held.iter().all(|&h| h <= 13), "{held:?}");
        assert!(held[home] >= 10, "{held:?}");
    }

    #[test]
    fn an_ejected_backend_passes_its_keys_on_and_gets_them_back() {
        let a = app(&[1, 1, 1]);
        let key = hash_key(b"k");
        let home = a.pick_hashed(0, &[], key, 125).unwrap();
        a.backends[home]
            .state
            .record_failure(1_000, 1, std::time::Duration::from_secs(10));
        let other = a.pick_hashed(2_000, &[], key, 125).unwrap();
        assert_ne!(other, home);
        assert_eq!(a.pick_hashed(20_000, &[], key, 125), Some(home));
        // Tried already: the next one.
        assert_ne!(a.pick_hashed(20_000, &[home], key, 125), Some(home));
    }

    #[test]
    fn hash_on_parses() {
        assert_eq!(HashOn::parse("client-ip"), Ok(HashOn::ClientIp));
        assert_eq!(
            HashOn::parse("header:X-User"),
            Ok(HashOn::Header("x-user".into()))
        );
        assert_eq!(
            HashOn::parse("cookie:sid"),
            Ok(HashOn::Cookie("sid".into()))
        );
        for bad in ["", "header:", "cookie:a b", "ip", "header:x:y"] {
            assert!(HashOn::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            HashOn::parse("header:x-user").unwrap().to_text(),
            "header:x-user"
        );
        assert!(check_hash_balance(99).is_err() && check_hash_balance(1001).is_err());
        assert_eq!(check_hash_balance(0), Ok(0));
    }
}
