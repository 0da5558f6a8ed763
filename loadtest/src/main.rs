//! The `pier-load` binary: parse flags, run, print, write files, apply thresholds.
//!
//! Exit codes: 0 success, 1 the run could not be performed, 2 bad usage, 3 a `--fail-if`
//! threshold was crossed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use pier_load::cli::{build_config, Cli, Command};
use pier_load::report::{csv, html, human, json, SecondRow};
use pier_load::scenario;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pier-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::Merge {
        files,
        latency,
        output,
    }) = &cli.command
    {
        let mut reports = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", f.display()))?;
            let r = pier_load::report::load::from_value(&v)
                .with_context(|| format!("{} cannot be merged", f.display()))?;
            reports.push((f.display().to_string(), r));
        }
        let report = pier_load::report::merge::merge(reports)?;
        eprintln!("merged {} reports", report.merged_from.len());
        return finish(&report, *latency, output);
    }

    if let Some(Command::Scenario { file, rounds, json }) = cli.command {
        let mut s = scenario::load(&file)?;
        if let Some(r) = rounds {
            s.rounds = r.max(1);
        }
        eprintln!(
            "scenario {}: {} target(s), {} round(s)",
            s.name,
            s.targets.len(),
            s.rounds
        );
        let mut reports = Vec::new();
        let cmp = scenario::run_scenario(&s, &mut |round, name, r| {
            eprintln!(
                "  round {} {name}: {:.1} req/s, p99 {}, failed {}",
                round + 1,
                r.rps(),
                pier_load::units::fmt_micros(pier_load::Report::at(&r.latency, 99.0) as f64),
                r.failed()
            );
            reports.push(serde_json::json!({
                "round": round + 1,
                "target": name,
                "report": json::to_value(r),
            }));
        })?;
        print!("{}", cmp.table());
        if let Some(path) = json {
            let doc = serde_json::json!({
                "schema": "pier-load-scenario/v1",
                "comparison": cmp,
                "runs": reports,
            });
            std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut cfg = build_config(&cli.load)?;
    let on_terminal = std::io::stderr().is_terminal();
    if cli.output.tui && !on_terminal {
        eprintln!("pier-load: --tui ignored: stderr is not a terminal");
    }
    let tui = cli.output.tui && on_terminal;
    cfg.live_hosts = tui && cfg.hosts.len() > 1;
    if let Some(at) = cli.load.start_at {
        wait_until(at)?;
    }
    let progress = !tui && !cli.output.no_progress && on_terminal;
    let total = cfg.duration.as_secs();
    let mut view = if tui {
        let title = format!(
            "{}  {} threads, {} connections",
            cli.load.url.as_deref().unwrap_or_default(),
            cfg.threads,
            cfg.connections
        );
        let hosts = cfg.hosts.iter().map(|h| h.name.clone()).collect();
        Some(pier_load::live::LiveView::start(title, total, hosts)?)
    } else {
        None
    };
    let mut on_second = |row: &SecondRow| {
        if let Some(v) = view.as_mut() {
            // A terminal that cannot be written to must not stop the run.
            let _ = v.second(row);
        } else if progress {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K  {:>4}s/{}s  {:>10.0} req/s  failed {:>6}  p99 {}",
                row.second + 1,
                total,
                row.rps(),
                row.errors,
                pier_load::units::fmt_micros(row.p99_us as f64)
            );
            let _ = err.flush();
        }
    };
    let report = pier_load::run(&cfg, &mut on_second);
    drop(view);
    let report = report?;
    if progress {
        eprint!("\r\x1b[2K");
    }
    finish(&report, cli.load.latency, &cli.output)
}

/// Sleeps until `at` (`--start-at`), saying so; refuses a time already past or a day away.
fn wait_until(at: std::time::SystemTime) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    let when = humantime::format_rfc3339_millis(at);
    match at.duration_since(now) {
        Ok(wait) if wait > std::time::Duration::from_secs(24 * 3600) => {
            anyhow::bail!("--start-at {when} is more than a day away")
        }
        Ok(wait) => {
            eprintln!(
                "pier-load: starting at {when} (in {:.1} s)",
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
            Ok(())
        }
        Err(e) if e.duration() < std::time::Duration::from_millis(500) => Ok(()),
        Err(e) => anyhow::bail!(
            "--start-at {when} has passed ({:.1} s ago): the generators would not start together",
            e.duration().as_secs_f64()
        ),
    }
}

/// Prints `report` and writes the files `output` asks for; the exit code follows --fail-if.
fn finish(
    report: &pier_load::Report,
    latency: bool,
    output: &pier_load::cli::OutputArgs,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    human::write(report, latency, &mut out)?;
    if let Some(p) = &output.json {
        std::fs::write(p, json::to_string(report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &output.csv {
        std::fs::write(p, csv::to_string(report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &output.html {
        std::fs::write(p, html::to_string(report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut failed = false;
    for t in &output.fail_if {
        if let Some(msg) = t.violated(report) {
            writeln!(out, "{msg}")?;
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
