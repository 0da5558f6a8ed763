//! Stage `accept`: the per-client cap on open connections (`[limits] client_max_connections`),
//! off by default.
//!
//! Each client address (an IPv6 client by its /64, as the request rate counts it) may hold
//! that many connections at once across the process; one more is answered and closed at once,
//! before any request is read: `429` with `X-Pier-Error: too-many-connections` and
//! `Retry-After: 1` over HTTP/1.1 (after the TLS handshake on a TLS listener), or an HTTP/2
//! `GOAWAY` with `ENHANCE_YOUR_CALM` where ALPN chose h2. The address is the connection's peer
//! (the PROXY protocol's, on listeners that read one). Connections on `trusted` listeners are
//! not counted: there every connection comes from your own proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client_limits::bucket_key;

/// Shards of the count map: a connection locks one when it opens and when it closes.
const SHARDS: usize = 64;

/// Open connections by client.
pub struct ClientConns {
    max: u32,
    shards: Box<[Mutex<HashMap<IpAddr, u32, foldhash::fast::FixedState>>]>,
    hasher: foldhash::fast::FixedState,
}

/// One counted connection: uncounted when dropped.
pub struct ConnSlot {
    conns: Arc<ClientConns>,
    key: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut shard = self.conns.lock(&self.key);
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

impl ClientConns {
    /// At most `max` (at least 1) connections per client.
    pub fn new(max: u32) -> ClientConns {
        ClientConns {
            max: max.max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    /// Counts a connection of `client`; `None`: it already holds its `max`.
    pub fn enter(self: &Arc<Self>, client: IpAddr) -> Option<ConnSlot> {
        let key = bucket_key(client);
        let mut shard = self.lock(&key);
        let n = shard.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            conns: Arc::clone(self),
            key,
        })
    }

    /// Clients with a connection open now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn lock(
        &self,
        key: &IpAddr,
    ) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32, foldhash::fast::FixedState>> {
        use std::hash::BuildHasher;
        self.shards[self.hasher.hash_one(key) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The answer to a connection over its client's cap, on HTTP/1.x.
const REFUSAL_H1: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain; charset=utf-8\r\n\
x-pier-error: too-many-connections\r\n\
retry-after: 1\r\n\
content-length: 27\r\n\
connection: close\r\n\r\n\
too many open connections\r\n";

/// The answer on HTTP/2: the server's (empty) SETTINGS, then GOAWAY (last stream 0,
/// `ENHANCE_YOUR_CALM`, RFC 9113 §7), with a reason as debug data.
fn refusal_h2() -> Vec<u8> {
    let debug = b"too-many-connections";
    let mut out = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
    let len = 8 + debug.len();
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        7,
        0,
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x0b]);
    out.extend_from_slice(debug);
    out
}

/// Answers a refused connection (`h2`: it speaks HTTP/2) and closes it gracefully: the
/// answer, then the write side shut, then what the client sends is read and dropped for up to a
/// second (closing with unread bytes would reset the connection, and the answer with it).
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, h2: bool) {
    let answer = if h2 {
        refusal_h2()
    } else {
        REFUSAL_H1.to_vec()
    };
    let wrote = tokio::time::timeout(Duration::from_secs(1), async {
        s.write_all(&answer).await?;
        s.shutdown().await
    })
    .await;
    if !matches!(wrote, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_max_and_gets_them_back() {
        let c = Arc::new(ClientConns::new(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = c.enter(ip).unwrap();
        let _b = c.enter(ip).unwrap();
        assert!(c.enter(ip).is_none());
        // Another client is counted apart; an IPv6 /64 is one client.
        assert!(c.enter("192.0.2.2".parse().unwrap()).is_some());
        let _x = c.enter("2001:db8::1".parse().unwrap()).unwrap();
        let _y = c.enter("2001:db8::2".parse().unwrap()).unwrap();
        assert!(c.enter("2001:db8::3".parse().unwrap()).is_none());
        drop(a);
        assert!(c.enter(ip).is_some());
        // Clients with nothing open are forgotten.
        assert_eq!(c.tracked(), 2);
    }

    #[test]
    fn the_h2_refusal_is_settings_then_goaway() {
        let r = refusal_h2();
        assert_eq!(&r[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(r[12], 7);
        assert_eq!(usize::from(r[11]), r.len() - 18);
        assert_eq!(r[9 + 9 + 7], 0x0b);
    }

    #[test]
    fn the_h1_refusal_has_the_length_it_says() {
        let text = std::str::from_utf8(REFUSAL_H1).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 27);
    }
}
