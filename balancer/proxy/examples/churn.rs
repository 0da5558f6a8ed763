//! Backend churn for benchmarks: `cargo run --release -p pier-balancer --example churn --
//! redis://127.0.0.1:6390/0 1000 10 1000 127.0.0.1:29101` registers and deregisters a second
//! backend (`churn`, same address) on random apps among `a0..a<apps>` at `rate` changes per
//! second for `seconds` seconds, through the registry's Lua writes. Prints what it achieved.

use std::time::{Duration, Instant};

use pier_registry::model::BackendRecord;
use pier_registry::Registry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let rate: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let apps: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let reg = Registry::connect(&url).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut done = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        // Each app gets its extra backend added, then removed on the next tick.
        if done.is_multiple_of(2) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        let app = format!("a{}", x % apps);
        if done.is_multiple_of(2) {
            let rec = BackendRecord {
                address: backend.clone(),
                expires_at_ms: 0,
            };
            reg.put_backend(&app, "churn", &rec).await?;
        } else {
            reg.delete_backend(&app, "churn").await?;
        }
        done += 1;
    }
    println!(
        "churn: {done} backend changes in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        done as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
