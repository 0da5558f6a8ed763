//! Scenario files: a TOML description of one comparison (targets, hosts, load model,
//! duration) that `pier-load scenario FILE` runs target after target, interleaved over
//! rounds so that drift on a shared machine hits every target alike, then prints medians and
//! ratios against the first target.
//!
//! The pipeline is the house one: TOML → [`ScenarioFile`] (`deny_unknown_fields`) →
//! [`ScenarioFile::validate`] → [`Scenario`], with errors naming the bad key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{HostMode, LoadModel, Protocol, RunConfig, TlsOptions};
use crate::engine::{run, RunError};
use crate::hosts::{expand_pattern, load_host_file, HostsError};
use crate::report::Report;
use crate::target::{check_method, parse_header, Target, TargetError};
use crate::units::parse_duration;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub duration: String,
    #[serde(default)]
    pub warmup: Option<String>,
    #[serde(default)]
    pub rounds: Option<usize>,
    #[serde(default)]
    pub load: LoadSection,
    #[serde(default)]
    pub request: RequestSection,
    #[serde(default)]
    pub hosts: Option<HostsSection>,
    pub targets: Vec<TargetSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSection {
    pub threads: Option<usize>,
    pub connections: Option<usize>,
    /// Requests per second; absent means the closed model.
    pub rate: Option<f64>,
    pub pipeline: Option<usize>,
    pub h2: Option<bool>,
    pub max_streams: Option<usize>,
    pub timeout: Option<String>,
    /// Wake-up coalescing (`--coalesce`); default depends on the load model.
    pub coalesce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSection {
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsSection {
    /// Host file, relative to the scenario file.
    pub file: Option<PathBuf>,
    pub pattern: Option<String>,
    pub mode: Option<HostMode>,
    pub expect_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub name: String,
    pub url: String,
    pub connect_to: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
}

/// A validated scenario: one run configuration per target.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub rounds: usize,
    pub targets: Vec<(String, RunConfig)>,
}

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    #[error("scenario {path}: `{key}`: {reason}")]
    Invalid {
        path: String,
        key: String,
        reason: String,
    },
}

impl ScenarioFile {
    /// Checks every field and builds the run configurations; `base` resolves relative paths.
    pub fn validate(self, path: &str, base: &Path) -> Result<Scenario, ScenarioError> {
        let invalid = |key: &str, reason: String| ScenarioError::Invalid {
            path: path.to_string(),
            key: key.to_string(),
            reason,
        };
        let duration =
            parse_duration(&self.duration).map_err(|e| invalid("duration", e.to_string()))?;
        let warmup = match &self.warmup {
            Some(w) => parse_duration(w).map_err(|e| invalid("warmup", e.to_string()))?,
            None => std::time::Duration::ZERO,
        };
        let rounds = self.rounds.unwrap_or(1);
        if rounds == 0 {
            return Err(invalid("rounds", "must be at least 1".into()));
        }
        if self.targets.is_empty() {
            return Err(invalid("targets", "name at least one [[targets]]".into()));
        }
        let timeout = match &self.load.timeout {
            Some(t) => {
                let d = parse_duration(t).map_err(|e| invalid("load.timeout", e.to_string()))?;
                (!d.is_zero()).then_some(d)
            }
            None => Some(std::time::Duration::from_secs(2)),
        };
        let coalesce = match &self.load.coalesce {
            Some(c) => {
                Some(parse_duration(c).map_err(|e| invalid("load.coalesce", e.to_string()))?)
            }
            None => None,
        };
        let method = self.request.method.clone().unwrap_or_else(|| "GET".into());
        check_method(&method).map_err(|e| invalid("request.method", e.to_string()))?;
        let headers = self
            .request
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, TargetError>>()
            .map_err(|e| invalid("request.headers", e.to_string()))?;
        let (hosts, mode, expect) = match &self.hosts {
            None => (None, HostMode::Rotate, None),
            Some(h) => {
                let list = match (&h.file, &h.pattern) {
                    (Some(f), None) => load_host_file(&base.join(f)),
                    (None, Some(p)) => expand_pattern(p),
                    _ => {
                        return Err(invalid(
                            "hosts",
                            "give exactly one of `file` or `pattern`".into(),
                        ))
                    }
                }
                .map_err(|e: HostsError| invalid("hosts", e.to_string()))?;
                (
                    Some(list),
                    h.mode.unwrap_or(HostMode::Rotate),
                    h.expect_header.clone(),
                )
            }
        };
        let mut targets = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("targets[{i}]");
            let target =
                Target::parse(&t.url).map_err(|e| invalid(&format!("{key}.url"), e.to_string()))?;
            let mut cfg = RunConfig::new(target);
            cfg.connect_to = t.connect_to.clone();
            cfg.threads = self.load.threads.unwrap_or(1);
            cfg.connections = self.load.connections.unwrap_or(10);
            cfg.duration = duration;
            cfg.warmup = warmup;
            cfg.model = match self.load.rate {
                Some(rate) => LoadModel::Open { rate },
                None => LoadModel::Closed,
            };
            cfg.protocol = if self.load.h2.unwrap_or(false) {
                Protocol::Http2 {
                    max_streams: self.load.max_streams.unwrap_or(1),
                }
            } else {
                Protocol::Http1 {
                    pipeline: self.load.pipeline.unwrap_or(1),
                }
            };
            cfg.method = method.clone();
            cfg.headers = headers.clone();
            if let Some(h) = &hosts {
                cfg.hosts = h.clone();
            }
            cfg.host_mode = mode;
            cfg.expect_header = expect.clone();
            cfg.timeout = timeout;
            cfg.coalesce = coalesce.unwrap_or_else(|| crate::coalesce::default_for(cfg.model));
            cfg.tls = TlsOptions {
                insecure: t.insecure,
                ca_file: t.cacert.as_ref().map(|c| base.join(c)),
            };
            cfg.validate().map_err(|e| invalid("load", e.to_string()))?;
            targets.push((t.name.clone(), cfg));
        }
        Ok(Scenario {
            name: self.name,
            rounds,
            targets,
        })
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: shown.clone(),
        source,
    })?;
    let file: ScenarioFile = toml::from_str(&text).map_err(|source| ScenarioError::Toml {
        path: shown.clone(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.validate(&shown, base)
}

/// The headline numbers of one run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RunSummary {
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub failed: u64,
}

impl RunSummary {
    pub fn of(r: &Report) -> RunSummary {
        RunSummary {
            rps: r.rps(),
            p50_us: Report::at(&r.latency, 50.0),
            p99_us: Report::at(&r.latency, 99.0),
            p999_us: Report::at(&r.latency, 99.9),
            failed: r.failed(),
        }
    }
}

/// Every run of a scenario, per target in file order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub targets: Vec<TargetRuns>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetRuns {
    pub name: String,
    pub runs: Vec<RunSummary>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl TargetRuns {
    pub fn median_rps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rps).collect())
    }
    pub fn median_p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_us as f64).collect())
    }
    pub fn median_p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_us as f64).collect())
    }
    pub fn failed(&self) -> u64 {
        self.runs.iter().map(|r| r.failed).sum()
    }
}

/// Runs round after round, each target once per round. `on_run` sees every report.
pub fn run_scenario(
    s: &Scenario,
    on_run: &mut dyn FnMut(usize, &str, &Report),
) -> Result<Comparison, RunError> {
    let mut targets: Vec<TargetRuns> = s
        .targets
        .iter()
        .map(|(name, _)| TargetRuns {
            name: name.clone(),
            runs: Vec::new(),
        })
        .collect();
    for round in 0..s.rounds {
        for ((name, cfg), runs) in s.targets.iter().zip(targets.iter_mut()) {
            let report = run(cfg, &mut |_| {})?;
            on_run(round, name, &report);
            runs.runs.push(RunSummary::of(&report));
        }
    }
    Ok(Comparison {
        scenario: s.name.clone(),
        targets,
    })
}

impl Comparison {
    /// The side-by-side table: medians over rounds and ratios against the first target.
    pub fn table(&self) -> String {
        use crate::units::fmt_micros;
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:>12} {:>10} {:>10} {:>8} {:>9} {:>9}",
            "target", "req/s", "p50", "p99", "failed", "rps ratio", "p99 ratio"
        );
        let base = self.targets.first();
        for t in &self.targets {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let (rr, pr) = match base {
                Some(b) => (
                    ratio(t.median_rps(), b.median_rps()),
                    ratio(t.median_p99(), b.median_p99()),
                ),
                None => (1.0, 1.0),
            };
            let _ = writeln!(
                out,
                "{:<20} {:>12.1} {:>10} {:>10} {:>8} {:>8.3}x {:>8.3}x",
                t.name,
                t.median_rps(),
                fmt_micros(t.median_p50()),
                fmt_micros(t.median_p99()),
                t.failed(),
                rr,
                pr
            );
        }
        out
    }
}
