//! `pier stats APP`: the app's requests (merged across balancers) and its instances' CPU and
//! memory over the last minute, hour and day.

use std::io::Write;

use http::Method;
use pier_model::api::AppStats;
use pier_model::client::ApiClient;

use crate::cli::{parse, Cli, CliError};
use crate::platform_verbs::{app_path, call, printed_json};

pub async fn run(
    cli: &Cli,
    client: &ApiClient,
    app: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let v = call(
        client,
        Method::GET,
        &format!("{}/stats", app_path(app)),
        None,
    )
    .await?;
    if printed_json(cli, &v, out)? {
        return Ok(());
    }
    let s: AppStats = parse(&v)?;
    writeln!(out, "=== {} requests", s.app)?;
    writeln!(
        out,
        "{:<7}{:>10}{:>10}{:>8}{:>11}{:>11}{:>11}",
        "window", "requests", "req/s", "5xx", "p50", "p95", "p99"
    )?;
    for r in &s.requests {
        writeln!(
            out,
            "{:<7}{:>10}{:>10.2}{:>7.2}%{:>11}{:>11}{:>11}",
            r.window,
            r.requests,
            r.requests_per_second,
            r.share_5xx * 100.0,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms)
        )?;
    }
    writeln!(out, "=== {} instances", s.app)?;
    if s.instances.is_empty() {
        writeln!(out, "(no usage reported yet)")?;
    }
    writeln!(
        out,
        "{:<24}{:<7}{:>8}{:>12}{:>12}",
        "instance", "window", "cpu", "memory", "memory max"
    )?;
    for i in &s.instances {
        for w in &i.windows {
            writeln!(
                out,
                "{:<24}{:<7}{:>7.2}%{:>12}{:>12}",
                i.instance,
                w.window,
                w.cpu_percent,
                mib(w.memory_bytes),
                mib(w.memory_max_bytes)
            )?;
        }
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}ms"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1024.0 * 1024.0))
}
