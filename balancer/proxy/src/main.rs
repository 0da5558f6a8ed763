//! `pier-balancer --config FILE [--check]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pier_balancer::accept::start_workers;
use pier_balancer::config::Config;
use pier_balancer::shared::Shared;
use pier_balancer::{admin, logging, registry_sync, reload};

/// mimalloc rather than the system allocator: see docs/benchmarks/idle-connections.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc return the calling thread's free pages to the system now.
#[allow(unsafe_code)]
fn mimalloc_collect() {
    // SAFETY: mi_collect takes no pointer and may be called from any thread at any time; it
    // only frees and purges memory mimalloc itself holds free.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// pier's hostname-routing HTTP reverse proxy.
#[derive(Parser, Debug)]
#[command(name = "pier-balancer", version, about)]
struct Args {
    /// The balancer config file (TOML).
    #[arg(short, long, default_value = "config/balancer.toml")]
    config: PathBuf,
    /// Validate the config and its routes file, print a summary or every problem, and exit.
    #[arg(long, alias = "test", short = 't')]
    check: bool,
}

fn main() -> ExitCode {
    pier_balancer::memory::on_release(mimalloc_collect);
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!("{}: configuration is invalid", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    let (table, routes_files) = match config
        .routes_file
        .as_deref()
        .map(|p| reload::load_table(p, None))
    {
        Some(Ok(loaded)) => (loaded.table, loaded.files),
        Some(Err(errs)) => {
            for e in errs {
                eprintln!("{e}");
            }
            eprintln!("{}: configuration is invalid", args.config.display());
            return ExitCode::FAILURE;
        }
        // Routes from the registry: start empty (or from the local snapshot, loaded once
        // logging is up) and fill from Redis.
        None => (pier_routes::RouteTable::empty(), Vec::new()),
    };
    if args.check {
        match &config.registry {
            Some(r) => println!(
                "{}: configuration is valid: {} listener(s), routes from {} (prefix {:?})",
                args.config.display(),
                config.listeners.len(),
                r.url,
                r.prefix
            ),
            None => println!(
                "{}: configuration is valid: {} listener(s), {} app(s), {} domain(s)",
                args.config.display(),
                config.listeners.len(),
                table.app_count(),
                table.len()
            ),
        }
        return ExitCode::SUCCESS;
    }
    let _log_guard = logging::init(&config.log);
    let table = match config.registry.as_ref() {
        Some(r) => registry_sync::load_snapshot_file(r).unwrap_or(table),
        None => table,
    };
    match run(config, table, routes_files) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "pier-balancer failed");
            eprintln!("pier-balancer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Config,
    table: pier_routes::RouteTable,
    routes_files: Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let shared = Shared::new(config, table)?;
    shared.set_routes_files(routes_files);
    let cfg = &shared.config;
    // Two threads: registry loads parse one page while the next is fetched, and admin requests
    // are answered during a long load.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pier-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    // The admin listener is bound before the workers so a port clash stops start-up early.
    let admin_listener = match cfg.admin {
        Some(addr) => Some(
            control
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("binding admin listener {addr}"))?,
        ),
        None => None,
    };
    let workers = start_workers(&shared).context("binding listeners")?;
    tracing::info!(
        listeners = ?cfg.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
        admin = ?cfg.admin,
        workers = cfg.workers,
        mode = ?cfg.mode,
        apps = shared.routes.load().app_count(),
        domains = shared.routes.load().len(),
        "pier-balancer started"
    );
    control.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        if let Some(l) = admin_listener {
            tokio::spawn(admin::serve_admin(Arc::clone(&shared), l));
        }
        tokio::spawn(pier_balancer::health::run(Arc::clone(&shared)));
        if cfg.routes_watch && cfg.routes_file.is_some() {
            tokio::spawn(reload::watch_file(
                Arc::clone(&shared),
                cfg.routes_watch_interval,
            ));
        }
        if let Some(t) = cfg.tls.as_ref().filter(|t| t.watch) {
            tokio::spawn(reload::watch_default_cert(
                Arc::clone(&shared),
                t.watch_interval,
            ));
        }
        if let Some(r) = cfg.registry.clone() {
            let id = cfg
                .telemetry
                .as_ref()
                .map(|t| t.id.clone())
                .unwrap_or_else(|| "balancer".into());
            tokio::spawn(registry_sync::report(Arc::clone(&shared), r.clone(), id));
            tokio::spawn(registry_sync::run(Arc::clone(&shared), r));
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    reload::reload(&shared, "sighup");
                    reload::reload_default_cert(&shared, "sighup");
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        anyhow::Ok(())
    })?;
    let started = Instant::now();
    tracing::info!(
        open_connections = shared.open_connections(),
        deadline_s = cfg.timeouts.shutdown.as_secs(),
        "shutting down: draining connections"
    );
    shared.begin_shutdown();
    let deadline = started + cfg.timeouts.shutdown + Duration::from_millis(500);
    for w in workers {
        while !w.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(t) = &shared.telemetry {
        t.finish(Duration::from_secs(3));
    }
    tracing::info!(
        left = shared.open_connections(),
        drained_ms = started.elapsed().as_millis() as u64,
        "pier-balancer stopped"
    );
    Ok(())
}
