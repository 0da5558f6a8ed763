//! Measures how long a registry write takes to be served by a running balancer:
//! `cargo run --release -p pier-balancer --example propagation -- redis://127.0.0.1:6390/0
//! 127.0.0.1:18070 200 127.0.0.1:19001`
//!
//! Each round adds a new app with a new domain and a backend through the registry client (the
//! same Lua writes the API uses), then polls the balancer over HTTP until that host answers
//! 200; the time from the write's start to that answer is the propagation time. Rounds are
//! sequential, so each is measured alone. Prints p50, p90, p99 and max.

use std::time::{Duration, Instant};

use pier_registry::model::{AppRecord, BackendRecord, DomainRecord};
use pier_registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(balancer: &str, host: &str) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(balancer).await else {
        return 0;
    };
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).await.unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let balancer = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let rounds: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let reg = Registry::connect(&url).await?;
    let tag = std::process::id();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let app = format!("prop{tag}x{i}");
        let host = format!("{app}.prop.test");
        let t = Instant::now();
        reg.put_app(&app, &AppRecord::default()).await?;
        reg.put_backend(
            &app,
            "i1",
            &BackendRecord {
                address: backend.clone(),
                expires_at_ms: 0,
                weight: None,
                server_name: None,
            },
        )
        .await?;
        reg.put_domain(&host, &DomainRecord::verified(app.clone()))
            .await?;
        loop {
            if status(&balancer, &host).await == 200 {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{host} not served after 10 s").into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(t.elapsed());
    }
    times.sort();
    let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "propagation over {rounds} writes: p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        q(0.50).as_secs_f64() * 1e3,
        q(0.90).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
