//! The typed description of one run, built from the command line or a scenario file and
//! checked once by [`RunConfig::validate`] before any socket is opened.

use std::path::PathBuf;
use std::time::Duration;

use crate::hosts::HostEntry;
use crate::target::Target;

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadModel {
    /// wrk's model: each connection (or h2 stream slot) sends as soon as the previous answer
    /// arrived. A slow server slows the generator down, which hides stalls.
    Closed,
    /// wrk2's model: `rate` requests per second in total on a fixed schedule, latency measured
    /// from each request's scheduled start (coordinated omission corrected).
    Open { rate: f64 },
}

/// Wire protocol and per-connection concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with up to `pipeline` requests outstanding on each connection.
    Http1 { pipeline: usize },
    /// HTTP/2 (ALPN over TLS, prior knowledge over plain TCP) with up to `max_streams`
    /// concurrent streams on each connection.
    Http2 { max_streams: usize },
}

/// How hosts are spread over requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// Every request takes the next host, so keep-alive connections carry many hosts.
    Rotate,
    /// Connection `i` always uses host `i mod hosts` (and sends it in SNI).
    Pin,
}

/// Certificate checks for `https://` targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept any server certificate (test setups with self-signed certificates).
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: Target,
    /// Connect here instead of the URL's host (`host:port`), e.g. one balancer for all hosts.
    pub connect_to: Option<String>,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    /// Run this long before measuring; nothing started during warm-up is counted.
    pub warmup: Duration,
    pub model: LoadModel,
    pub protocol: Protocol,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub hosts: Vec<HostEntry>,
    pub host_mode: HostMode,
    /// Routing check: this response header must equal the host's expected value.
    pub expect_header: Option<String>,
    /// A request unanswered this long after it was sent is counted as a timeout and its
    /// connection is closed.
    pub timeout: Option<Duration>,
    pub tls: TlsOptions,
    /// Under load, wait this long before sleeping in epoll so answers are collected in
    /// batches (see `coalesce`); zero disables.
    pub coalesce: Duration,
    /// Count each second's responses and errors per host too (for the live view; at most
    /// [`LIVE_HOSTS_MAX`] hosts).
    pub live_hosts: bool,
}

/// Most hosts counted second by second for the live view.
pub const LIVE_HOSTS_MAX: usize = 1000;

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("threads must be at least 1")]
    Threads,
    #[error("connections ({connections}) must be at least the number of threads ({threads})")]
    Connections { connections: usize, threads: usize },
    #[error("duration must be positive")]
    Duration,
    #[error("rate must be a positive number of requests per second")]
    Rate,
    #[error("pipeline depth must be between 1 and 1024")]
    Pipeline,
    #[error("h2 concurrent streams (-m) must be between 1 and 10000")]
    Streams,
    #[error("no host to send requests to")]
    NoHosts,
    #[error("timeout must be positive")]
    Timeout,
}

impl RunConfig {
    /// A closed-model HTTP/1.1 GET of `target`'s own host: the starting point callers adjust.
    pub fn new(target: Target) -> RunConfig {
        let hosts = vec![target.default_host()];
        RunConfig {
            target,
            connect_to: None,
            threads: 1,
            connections: 10,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            model: LoadModel::Closed,
            protocol: Protocol::Http1 { pipeline: 1 },
            method: "GET".to_string(),
            headers: Vec::new(),
            body: None,
            hosts,
            host_mode: HostMode::Rotate,
            expect_header: None,
            timeout: Some(Duration::from_secs(2)),
            tls: TlsOptions::default(),
            coalesce: crate::coalesce::DEFAULT,
            live_hosts: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threads == 0 {
            return Err(ConfigError::Threads);
        }
        if self.connections < self.threads {
            return Err(ConfigError::Connections {
                connections: self.connections,
                threads: self.threads,
            });
        }
        if self.duration.is_zero() {
            return Err(ConfigError::Duration);
        }
        if let LoadModel::Open { rate } = self.model {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Rate);
            }
        }
        match self.protocol {
            Protocol::Http1 { pipeline } if !(1..=1024).contains(&pipeline) => {
                return Err(ConfigError::Pipeline)
            }
            Protocol::Http2 { max_streams } if !(1..=10_000).contains(&max_streams) => {
                return Err(ConfigError::Streams)
            }
            _ => {}
        }
        if self.hosts.is_empty() {
            return Err(ConfigError::NoHosts);
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Timeout);
        }
        Ok(())
    }
}
