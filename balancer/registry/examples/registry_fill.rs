//! Fills a registry with N apps, each with one verified domain `h<i>.bench.test` and one
//! backend, for load benchmarks: `cargo run --release -p pier-registry --example registry_fill --
//! redis://127.0.0.1:6390/0 1000000 127.0.0.1:19001`.
//!
//! It writes the hashes directly with pipelined HSETs (the Lua write path is for single
//! changes; a million of them would only measure Redis), sets the version, and appends one
//! change-log entry so a balancer's feed position is consistent with the data.

use redis::AsyncCommands;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let client = redis::Client::open(url.as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let started = std::time::Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let mut pipe = redis::pipe();
        for k in i..end {
            pipe.hset("pier:apps", format!("a{k}"), "{}").ignore();
            pipe.hset(
                "pier:domains",
                format!("h{k}.bench.test"),
                format!("{{\"app\":\"a{k}\",\"verified\":true}}"),
            )
            .ignore();
            pipe.hset(
                "pier:backends",
                format!("a{k}/i1"),
                format!("{{\"address\":\"{backend}\"}}"),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut c).await?;
        i = end;
    }
    let version: u64 = c.incr("pier:version", (n * 3) as u64).await?;
    let _: String = redis::cmd("XADD")
        .arg("pier:changes")
        .arg("*")
        .arg("v")
        .arg(version)
        .arg("op")
        .arg("app")
        .arg("key")
        .arg("a0")
        .arg("value")
        .arg("{}")
        .query_async(&mut c)
        .await?;
    println!(
        "filled {n} apps/domains/backends in {:.1} s; registry version {version}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
