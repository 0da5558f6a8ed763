//! Backend churn for benchmarks: `cargo run --release -p pier-balancer --example churn --
//! redis://127.0.0.1:6390/0 1000 10 1000 127.0.0.1:29101` registers and deregisters a second
//! backend (`churn`, same address) on random apps among `a0..a<apps>` at `rate` changes per
//! second for `seconds` seconds, through the registry's Lua writes, sent in small concurrent
//! batches every 10 ms. Prints what it achieved.

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
    // Ten changes every 10 ms, sent concurrently (the multiplexed connection pipelines them):
    // the generator itself then costs little CPU on a machine where it shares a core.
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut done = 0u64;
    // Ticks alternate: add an extra backend to `per_tick` random apps, then remove them.
    let mut added: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let mut set = tokio::task::JoinSet::new();
        if added.is_empty() {
            for _ in 0..per_tick {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let app = format!("a{}", x % apps);
                if added.contains(&app) {
                    continue;
                }
                added.push(app.clone());
                let (reg, backend) = (reg.clone(), backend.clone());
                set.spawn(async move {
                    let rec = BackendRecord {
                        address: backend,
                        expires_at_ms: 0,
                        weight: None,
                        server_name: None,
                    };
                    reg.put_backend(&app, "churn", &rec).await.map(|_| ())
                });
            }
        } else {
            for app in added.drain(..) {
                let reg = reg.clone();
                set.spawn(async move { reg.delete_backend(&app, "churn").await.map(|_| ()) });
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
            done += 1;
        }
    }
    println!(
        "churn: {done} backend changes in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        done as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
