//! The command line (wrk-compatible where wrk has the flag) and its translation into a
//! [`RunConfig`]. `-m` is h2load's "max concurrent streams"; the method is `-X/--method`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{HostMode, LoadModel, Protocol, RunConfig, TlsOptions};
use crate::hosts::{expand_pattern, load_host_file, HostEntry, HostsError};
use crate::target::{check_method, parse_header, Target, TargetError};
use crate::threshold::Threshold;
use crate::units::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "pier-load",
    version,
    about = "wrk-style HTTP load generator: closed or open (coordinated-omission-corrected) \
             load, HTTP/1.1 pipelining, h2, TLS, many hostnames",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every target of a TOML scenario in turn, interleaved over rounds, and print ratios.
    Scenario {
        /// Scenario file (see loadtest/scenarios/).
        file: PathBuf,
        /// Override the number of rounds.
        #[arg(long)]
        rounds: Option<usize>,
        /// Write every run's report and the comparison as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Merge the --json reports of generators that loaded one target together (see
    /// --start-at) into one report: counts added, percentiles from the merged histograms.
    Merge {
        /// The reports (JSON files written with --json).
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Print the detailed latency distribution.
        #[arg(long)]
        latency: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HostModeArg {
    Rotate,
    Pin,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Worker threads, each with its own event loop.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Connections kept open in total.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,
    /// Measured duration (10s, 1m, ...), after the warm-up.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open model: this many requests per second in total, latency from scheduled starts.
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Load the target this long before measuring.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Add a request header ("Name: value"); repeatable. "Host: x" sets the host.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Print the detailed latency distribution.
    #[arg(long)]
    pub latency: bool,
    /// Request method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Send the contents of FILE as the request body.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Per-request timeout ("0" disables).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Host file: one host per line, optional expected routing-header value after it.
    #[arg(long, value_name = "FILE", conflicts_with = "host_pattern")]
    pub hosts: Option<PathBuf>,
    /// Host pattern such as 'app{0..9999}.test'.
    #[arg(long, value_name = "PATTERN")]
    pub host_pattern: Option<String>,
    /// Rotate hosts per request, or pin each connection to one host.
    #[arg(long, value_enum, default_value = "rotate")]
    pub host_mode: HostModeArg,
    /// Connect to ADDR (host:port) instead of the URL's host.
    #[arg(long, value_name = "ADDR")]
    pub connect_to: Option<String>,
    /// Routing check: compare this response header with the host file's expected value.
    #[arg(long, value_name = "NAME")]
    pub expect_header: Option<String>,
    /// HTTP/1.1 pipelining: N requests written together, the next N once all are answered
    /// (in the open model, each sent when due, at most N outstanding).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Use HTTP/2 (ALPN over https, prior knowledge over http).
    #[arg(long)]
    pub h2: bool,
    /// h2: maximum concurrent streams per connection (as in h2load).
    #[arg(short = 'm', long = "max-streams", default_value_t = 1)]
    pub max_streams: usize,
    /// Accept any TLS certificate.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Under load, wait this long before sleeping so answers arrive in batches and the
    /// server is spared wake-ups. Default 20us in the closed model, 0 (off) with -R.
    #[arg(long, value_parser = parse_duration)]
    pub coalesce: Option<Duration>,
    /// Start loading at this wall-clock time (RFC 3339 in UTC, e.g. 2026-12-06T10:30:00Z, or
    /// Unix seconds), so generators on several machines start together; their --json reports then
    /// merge second by second (pier-load merge).
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    pub start_at: Option<std::time::SystemTime>,
    /// Target URL (http:// or https://).
    #[arg(required = true)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Write the report as JSON (schema pier-load/v1).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the per-second series as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write a self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Exit with code 3 if this holds, e.g. 'p99>20ms' or 'errors>0.1%'; repeatable.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<Threshold>,
    /// Never print the live progress line (it is only printed on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// A full-screen live view on the terminal (requests/s, latency, statuses, errors as they
    /// happen, hosts); without a terminal, ignored.
    #[arg(long)]
    pub tui: bool,
}

/// `--start-at`: RFC 3339 in UTC (`2026-12-06T10:30:00Z`, fractions of a second allowed) or
/// Unix seconds.
pub fn parse_start_at(s: &str) -> Result<std::time::SystemTime, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(std::time::UNIX_EPOCH + Duration::from_secs(secs));
    }
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("{s:?} is not an RFC 3339 time (2026-12-06T10:30:00Z) or Unix seconds: {e}")
    })
}

/// Command-line values that do not make a runnable configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("cannot read body file {path}: {source}")]
    Body {
        path: String,
        source: std::io::Error,
    },
    #[error("-H \"Host: ...\" cannot be combined with --hosts or --host-pattern")]
    HostTwice,
    #[error("--pipeline applies to HTTP/1.1 only; h2 uses -m streams")]
    PipelineWithH2,
}

/// Builds the run configuration the flags describe.
pub fn build_config(a: &LoadArgs) -> Result<RunConfig, CliError> {
    let url = a.url.as_deref().unwrap_or_default();
    let target = Target::parse(url)?;
    check_method(&a.method)?;
    let mut headers = Vec::new();
    let mut host_header = None;
    for raw in &a.headers {
        let (n, v) = parse_header(raw)?;
        if n.eq_ignore_ascii_case("host") {
            host_header = Some(v);
        } else {
            headers.push((n, v));
        }
    }
    let hosts: Vec<HostEntry> = match (&a.hosts, &a.host_pattern, host_header) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => return Err(CliError::HostTwice),
        (Some(file), _, None) => load_host_file(file)?,
        (None, Some(p), None) => expand_pattern(p)?,
        (None, None, Some(h)) => vec![HostEntry {
            name: h,
            expect: None,
        }],
        (None, None, None) => vec![target.default_host()],
    };
    let body = match &a.body {
        Some(p) => Some(std::fs::read(p).map_err(|source| CliError::Body {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    if a.h2 && a.pipeline != 1 {
        return Err(CliError::PipelineWithH2);
    }
    let mut cfg = RunConfig::new(target);
    cfg.connect_to = a.connect_to.clone();
    cfg.threads = a.threads;
    cfg.connections = a.connections;
    cfg.duration = a.duration;
    cfg.warmup = a.warmup;
    cfg.model = match a.rate {
        Some(rate) => LoadModel::Open { rate },
        None => LoadModel::Closed,
    };
    cfg.protocol = if a.h2 {
        Protocol::Http2 {
            max_streams: a.max_streams,
        }
    } else {
        Protocol::Http1 {
            pipeline: a.pipeline,
        }
    };
    cfg.method = a.method.clone();
    cfg.headers = headers;
    cfg.body = body;
    cfg.hosts = hosts;
    cfg.host_mode = match a.host_mode {
        HostModeArg::Rotate => HostMode::Rotate,
        HostModeArg::Pin => HostMode::Pin,
    };
    cfg.expect_header = a.expect_header.clone();
    cfg.timeout = (!a.timeout.is_zero()).then_some(a.timeout);
    cfg.coalesce = a
        .coalesce
        .unwrap_or_else(|| crate::coalesce::default_for(cfg.model));
    cfg.tls = TlsOptions {
        insecure: a.insecure,
        ca_file: a.cacert.clone(),
    };
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pier-load").chain(args.iter().copied()))
    }

    #[test]
    fn wrk_style_flags() {
        let cli = parse(&[
            "-t1",
            "-c50",
            "-d3s",
            "-R",
            "1000",
            "-H",
            "X-A: b",
            "--latency",
            "--coalesce",
            "0",
            "http://127.0.0.1:8080/",
        ])
        .unwrap();
        let cfg = build_config(&cli.load).unwrap();
        assert_eq!((cfg.threads, cfg.connections), (1, 50));
        assert_eq!(cfg.duration, Duration::from_secs(3));
        assert_eq!(cfg.model, LoadModel::Open { rate: 1000.0 });
        assert_eq!(cfg.headers, vec![("X-A".to_string(), "b".to_string())]);
        assert!(cli.load.latency);
        assert!(cfg.coalesce.is_zero());
        let cli = parse(&["http://h/"]).unwrap();
        assert_eq!(
            build_config(&cli.load).unwrap().coalesce,
            crate::coalesce::DEFAULT
        );
        let cli = parse(&["-R", "10", "http://h/"]).unwrap();
        assert!(build_config(&cli.load).unwrap().coalesce.is_zero());
    }

    #[test]
    fn h2_streams_method_and_hosts() {
        let cli = parse(&[
            "--h2",
            "-m",
            "8",
            "-X",
            "POST",
            "--host-pattern",
            "a{1..3}.test",
            "--host-mode",
            "pin",
            "--fail-if",
            "p99>20ms",
            "https://x.test/",
        ])
        .unwrap();
        let cfg = build_config(&cli.load).unwrap();
        assert_eq!(cfg.protocol, Protocol::Http2 { max_streams: 8 });
        assert_eq!(cfg.method, "POST");
        assert_eq!(cfg.hosts.len(), 3);
        assert_eq!(cfg.host_mode, HostMode::Pin);
        assert_eq!(cli.output.fail_if.len(), 1);
    }

    #[test]
    fn host_header_sets_the_host() {
        let cli = parse(&["-H", "Host: app.test", "http://127.0.0.1:1/"]).unwrap();
        let cfg = build_config(&cli.load).unwrap();
        assert_eq!(cfg.hosts[0].name, "app.test");
        assert!(cfg.headers.is_empty());
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--fail-if", "nonsense", "http://h/"]).is_err());
        let cli = parse(&["--h2", "--pipeline", "4", "http://h/"]).unwrap();
        assert!(build_config(&cli.load).is_err());
        assert!(parse(&["scenario", "x.toml"]).is_ok());
    }
}
