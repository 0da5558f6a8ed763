//! Small per-thread helpers for the request path: a cached `Date`, request ids, the clock.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant as TokioInstant, Sleep};

/// Milliseconds since the Unix epoch (what backend liveness deadlines are written in).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch at the monotonic instant `at`, without reading the wall
/// clock on every request: each thread keeps one pair of readings (monotonic, wall) and takes a
/// new pair when `at` is a second or more past it (or before it), so the answer follows the
/// wall clock to within a second of steps and drift.
pub fn wall_ms(at: Instant) -> u64 {
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|a| {
        // One subtraction of instants (each is a call of ~37 instructions), not three.
        let past = a
            .get()
            .and_then(|(mono, wall)| Some((at.checked_duration_since(mono)?, wall)));
        match past {
            Some((since, wall)) if since < Duration::from_secs(1) => {
                wall + since.as_millis() as u64
            }
            _ => {
                let wall = now_ms();
                a.set(Some((at, wall)));
                wall
            }
        }
    })
}

/// Runs `f` with the current `Date` value (RFC 9110 §5.6.7), formatted once per second per thread.
pub fn with_http_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        f(&c.1)
    })
}

/// A per-thread wyrand generator: request ids need uniqueness, not secrecy.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ms());
            h.finish()
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    })
}

/// The two lower-case hex digits of every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// A new request id: a random UUID (version 4 layout) as 36 characters.
pub fn new_request_id() -> [u8; 36] {
    let a = random_u64();
    let b = random_u64();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = [0u8; 32];
    for (pair, &byte) in hex.chunks_exact_mut(2).zip(&bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

/// A client-supplied request id is kept when it is 1-200 characters of letters, digits and
/// `-_.:+/=` (what tracing systems use), so it cannot inject anything into logs or headers.
pub fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=200).contains(&v.len())
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(&b))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1). The key is a nonce
/// against caches, not a secret: the thread's fast generator is enough.
pub fn websocket_key() -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 18];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..16].copy_from_slice(&random_u64().to_le_bytes());
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(B64[((n >> shift) & 63) as usize]));
        }
    }
    // 16 bytes are 22 characters and two of padding.
    out.truncate(22);
    out.push_str("==");
    out
}

/// The wait ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// One connection's timer, re-armed lazily. A keep-alive connection waits with a deadline for
/// every request (the next head, the backend's first byte), and almost every wait ends early;
/// a fresh `tokio::time::timeout` each time costs a timer registration and a removal per wait.
/// This timer is moved only when a wait needs it to fire *earlier* than it is set; when it
/// fires before the current wait's deadline it is re-armed to that deadline. So the timer is
/// touched about once per deadline period per connection, not once per request, and a wait
/// still ends no later than its deadline.
#[derive(Default)]
pub struct LazyTimer {
    /// Set on the first wait; its deadline is where the timer is armed.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    /// `Ready` once `deadline` has passed; otherwise arms the timer (as [`LazyTimer::run`]
    /// does) and registers `cx` to be woken. For waits written as a poll function, whose
    /// future is then only the few bytes it borrows.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: TokioInstant) -> Poll<TimedOut> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if TokioInstant::now() >= deadline {
                return Poll::Ready(TimedOut);
            }
            sleep.as_mut().reset(deadline);
        }
    }

    /// Runs `fut` until it finishes (`Ok`) or `deadline` passes (`Err(TimedOut)`).
    pub async fn run<F: Future>(
        &mut self,
        deadline: TokioInstant,
        fut: F,
    ) -> Result<F::Output, TimedOut> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                () = sleep.as_mut() => {
                    if TokioInstant::now() >= deadline {
                        return Err(TimedOut);
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lazy_timer_ends_each_wait_at_its_own_deadline() {
        let mut timer = LazyTimer::default();
        let t0 = TokioInstant::now();
        // A wait that finishes in time; the timer stays armed for t0 + 300 ms.
        let out = timer
            .run(t0 + Duration::from_millis(300), async { 7 })
            .await;
        assert_eq!(out, Ok(7));
        // A later deadline: the armed timer fires first (at 300 ms), is re-armed, and the
        // wait ends at its own deadline, not before.
        let t1 = TokioInstant::now();
        let out = timer
            .run(
                t1 + Duration::from_millis(500),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(out, Err(TimedOut));
        assert!(
            t1.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t1.elapsed()
        );
        // An earlier deadline than the one armed (none left here, but set one far away first).
        let far = timer
            .run(TokioInstant::now() + Duration::from_secs(60), async { 1 })
            .await;
        assert_eq!(far, Ok(1));
        let t2 = TokioInstant::now();
        let out = timer
            .run(t2 + Duration::from_millis(50), std::future::pending::<()>())
            .await;
        assert_eq!(out, Err(TimedOut));
        let took = t2.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(
            took < Duration::from_secs(5),
            "waited for the far deadline: {took:?}"
        );
        // A wait that finishes after a spurious wake-up still returns its output.
        let t3 = TokioInstant::now();
        let out = timer
            .run(t3 + Duration::from_secs(10), async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "late"
            })
            .await;
        assert_eq!(out, Ok("late"));
    }

    #[test]
    fn wall_ms_follows_the_wall_clock_from_one_reading_per_second() {
        let at = Instant::now();
        let wall = wall_ms(at);
        let direct = now_ms();
        assert!(
            wall <= direct + 1 && direct.saturating_sub(wall) < 1000,
            "{wall} vs {direct}"
        );
        // Within the second of the anchor, later instants are the anchor plus their distance.
        assert_eq!(wall_ms(at + Duration::from_millis(250)), wall + 250);
        assert_eq!(wall_ms(at + Duration::from_millis(999)), wall + 999);
        // An instant before the anchor takes a new pair of readings.
        let earlier = at
            .checked_sub(Duration::from_millis(10))
            .expect("clock far from zero");
        let re = wall_ms(earlier);
        assert!(re >= wall && re <= now_ms(), "{re}");
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a[14], b'4');
        assert!(matches!(a[19], b'8' | b'9' | b'a' | b'b'));
        for dash in [8, 13, 18, 23] {
            assert_eq!(a[dash], b'-');
        }
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit()));
        assert!(is_sane_request_id(&a));
    }

    #[test]
    fn request_id_sanity() {
        assert!(is_sane_request_id(b"abc-123"));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"a b"));
        assert!(!is_sane_request_id(b"a\"b"));
        assert!(!is_sane_request_id(&[b'a'; 201]));
    }

    #[test]
    fn date_is_imf_fixdate() {
        with_http_date(|d| {
            assert_eq!(d.len(), 29);
            assert!(d.ends_with(" GMT"));
        });
    }

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        let a = websocket_key();
        let b = websocket_key();
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("==") && !a[..22].contains('='));
        assert!(a[..22]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'));
        assert_ne!(a, b);
    }
}
