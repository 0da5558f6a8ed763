//! `pier`: `pier api` runs the registry API server; every other verb is a client of it.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{ApiArgs, Cli, Command};
use anyhow::Context as _;
use clap::Parser as _;
use pier_api::api::ApiState;
use pier_api::auth::Authenticator;
use pier_api::verify::HttpVerifier;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Api(args) => match run_api(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pier api: error: {e:#}");
                ExitCode::from(1)
            }
        },
        _ => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("pier: error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut stdout = std::io::stdout().lock();
            match rt.block_on(cli::run_client(&cli, &mut stdout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pier: error: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            }
        }
    }
}

fn run_api(args: &ApiArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let operator_token = args
        .operator_token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .context("set PIER_OPERATOR_TOKEN (the operator's API token)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let registry = pier_registry::Registry::connect_with_prefix(&args.redis, &args.prefix)
            .await
            .with_context(|| format!("connecting to the registry at {}", args.redis))?;
        let state = Arc::new(
            ApiState::new(
                registry,
                &args.redis,
                &args.prefix,
                Authenticator::new(operator_token.trim()),
                Arc::new(HttpVerifier {
                    via: args.challenge_via,
                    timeout: Duration::from_secs(args.challenge_timeout.max(1)),
                }),
            )
            .with_claim_ttl(
                (args.claim_ttl_hours != 0)
                    .then(|| Duration::from_secs(args.claim_ttl_hours.saturating_mul(3600))),
            )
            .with_backend_policy(pier_api::netpolicy::BackendPolicy {
                allow: args.backend_allow.clone(),
            }),
        );
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().context("local address")?;
        tracing::info!(%addr, redis = %args.redis, prefix = %args.prefix, "pier api listening");
        pier_api::server::serve(listener, state, shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("pier api stopped");
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
