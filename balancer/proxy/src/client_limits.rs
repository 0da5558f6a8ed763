//! Stage `pipeline`: the per-client request rate (`[limits] client_rate`), a token bucket per
//! client address, off by default.
//!
//! Each client address has a bucket of `client_burst` tokens refilled at `client_rate` per
//! second; a request takes one, and a request that finds none is answered `429` with
//! `X-Pier-Error: rate-limited` and `Retry-After: 1` before it is routed. The address is the
//! connection's peer (after the PROXY protocol header, on listeners that read one); on a
//! trusted listener, the last address of `X-Forwarded-For`, the one your own front proxy
//! added. IPv6 clients are counted by their /64 network, what one host or home is usually
//! given, so a client cannot dodge its limit by hopping addresses inside it.
//!
//! The buckets live in a sharded map shared by every worker; buckets that have refilled are
//! dropped every few seconds, so memory follows the number of recently active clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Shards of the bucket map: a request locks one, chosen by the address's hash.
const SHARDS: usize = 64;

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (ms since the Unix epoch).
    at_ms: u64,
}

/// Token buckets by client address.
pub struct ClientLimits {
    /// Tokens per millisecond.
    per_ms: f64,
    burst: f64,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket, foldhash::fast::FixedState>>]>,
    hasher: foldhash::fast::FixedState,
}

impl ClientLimits {
    /// `rate` requests per second (above zero), bursts of up to `burst` (at least 1).
    pub fn new(rate: u32, burst: u32) -> ClientLimits {
        ClientLimits {
            per_ms: f64::from(rate) / 1000.0,
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    /// Takes a token for a request from `client` at `now_ms`; `false`: none is left.
    pub fn allow(&self, client: IpAddr, now_ms: u64) -> bool {
        let key = bucket_key(client);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        let b = shard.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        b.tokens = (b.tokens + elapsed * self.per_ms).min(self.burst);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets that are full again by `now_ms` (their clients have been quiet):
    /// a fresh bucket would be the same.
    pub fn reap(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, b| {
                b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * self.per_ms < self.burst
            });
        }
    }

    /// Client addresses (or IPv6 /64 networks) with a bucket now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket, foldhash::fast::FixedState>> {
        use std::hash::BuildHasher;
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }
}

/// What a client is counted as: its IPv4 address, or its IPv6 /64 (an IPv4-mapped IPv6
/// address counts as the IPv4 one).
pub fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The last address of the `X-Forwarded-For` values given (several fields are one list): the
/// one the trusted proxy in front added. `None` when there is none or it is not an address.
pub fn last_forwarded<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<IpAddr> {
    let last = values.last()?;
    let item = last.rsplit(|&b| b == b',').next()?;
    let text = std::str::from_utf8(item).ok()?.trim();
    // An address with a port ("203.0.113.9:4711", "[2001:db8::1]:4711") is accepted too.
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = ClientLimits::new(10, 5);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let t = 1_000_000;
        assert!((0..5).all(|_| l.allow(ip, t)));
        assert!(!l.allow(ip, t));
        // 10 per second: one more every 100 ms.
        assert!(!l.allow(ip, t + 50));
        assert!(l.allow(ip, t + 100));
        assert!(!l.allow(ip, t + 150));
        // Another client has its own bucket.
        assert!(l.allow("203.0.113.10".parse().unwrap(), t));
        // Refilled to the burst, not past it, after a long quiet spell.
        let later = t + 60_000;
        assert!((0..5).all(|_| l.allow(ip, later)));
        assert!(!l.allow(ip, later));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let l = ClientLimits::new(1, 2);
        let t = 5_000;
        assert!(l.allow("2001:db8:1:2::1".parse().unwrap(), t));
        assert!(l.allow("2001:db8:1:2::ffff".parse().unwrap(), t));
        assert!(!l.allow("2001:db8:1:2:aaaa::1".parse().unwrap(), t));
        assert!(l.allow("2001:db8:1:3::1".parse().unwrap(), t));
        // A mapped IPv4 address is that IPv4 client.
        assert!(l.allow("192.0.2.1".parse().unwrap(), t));
        assert!(l.allow("::ffff:192.0.2.1".parse().unwrap(), t));
        assert!(!l.allow("192.0.2.1".parse().unwrap(), t));
    }

    #[test]
    fn quiet_clients_are_forgotten() {
        let l = ClientLimits::new(10, 10);
        let t = 1_000;
        l.allow("192.0.2.1".parse().unwrap(), t);
        l.allow("192.0.2.2".parse().unwrap(), t + 950);
        assert_eq!(l.tracked(), 2);
        l.reap(t + 1_000);
        assert_eq!(l.tracked(), 1);
        l.reap(t + 2_000);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_last_forwarded_address_is_the_proxys() {
        let v = |fields: &[&'static str]| last_forwarded(fields.iter().map(|f| f.as_bytes()));
        assert_eq!(v(&["1.1.1.1, 203.0.113.9"]), "203.0.113.9".parse().ok());
        assert_eq!(v(&["1.1.1.1", "203.0.113.9 "]), "203.0.113.9".parse().ok());
        assert_eq!(v(&["2001:db8::1"]), "2001:db8::1".parse().ok());
        assert_eq!(v(&["[2001:db8::1]:4711"]), "2001:db8::1".parse().ok());
        assert_eq!(v(&["203.0.113.9:4711"]), "203.0.113.9".parse().ok());
        assert_eq!(v(&["1.1.1.1, unknown"]), None);
        assert_eq!(v(&[]), None);
    }
}
