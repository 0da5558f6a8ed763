//! `pier drainer`: the service that forwards apps' log lines to their drains (`pier-drain`).
//! Start one or two; one forwards at a time.

use std::path::PathBuf;
use std::time::Duration;

use crate::services::{init_tracing, shutdown_signal, RedisArgs};

#[derive(Debug, clap::Args)]
pub struct DrainerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// This drainer's name in the lease (default: host and process id).
    #[arg(long)]
    pub id: Option<String>,
    /// Extra CA certificates (a PEM file) trusted for TLS drains, beside the usual web roots.
    #[arg(long, value_name = "FILE")]
    pub drain_ca: Option<PathBuf>,
    /// A network drains may reach although internal (loopback, private, link-local...): give
    /// it the same list as `pier api --drain-allow` (repeat, or comma-separate in the
    /// environment).
    #[arg(long, env = "PIER_DRAIN_ALLOW", value_delimiter = ',')]
    pub drain_allow: Vec<pier_model::net::Cidr>,
    /// Seconds the lease lasts without renewal (a dead drainer is replaced within it).
    #[arg(long, default_value_t = 5.0)]
    pub lease_ttl: f64,
}

impl DrainerArgs {
    /// `pier up`'s drainer: drains may reach this machine.
    pub fn for_up(redis: &str) -> Self {
        crate::services::flags(&[
            "--redis",
            redis,
            "--id",
            "pier-up",
            "--drain-allow",
            "127.0.0.0/8",
            "--drain-allow",
            "::1/128",
        ])
    }
}

/// The drainer's configuration from its flags.
pub fn drainer_config(args: &DrainerArgs) -> pier_drain::DrainerConfig {
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut cfg = pier_drain::DrainerConfig::new(&id, &args.redis.url);
    cfg.prefix = args.redis.prefix.clone();
    cfg.allow = args.drain_allow.clone();
    cfg.extra_ca = args.drain_ca.clone();
    cfg.lease_ttl = Duration::from_secs_f64(args.lease_ttl.max(1.0));
    cfg
}

/// `pier drainer`.
pub fn run_drainer(args: &DrainerArgs) -> anyhow::Result<()> {
    init_tracing();
    let cfg = drainer_config(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(pier_drain::run(cfg, shutdown_signal()))?;
    Ok(())
}
