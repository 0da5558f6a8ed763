//! `pier up`: the whole platform on one machine, for trying it and for development.
//!
//! It starts a private `redis-server` (its data under the data directory) unless `--redis` is
//! given, then the API, a coordinator, a runner and a drainer (log drains may reach this
//! machine: `--drain-allow 127.0.0.0/8,::1/128`) in this process, and `pier-balancer` as a
//! child process; writes the operator token where the CLI finds it by itself
//! (`<data>/credentials.json`, looked up from the current directory upward); deploys the demo
//! app from `platform/examples/hello-stdlib`; prints its URL. Ctrl-C stops everything it started
//! (instances drained first).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::drainer::{self, DrainerArgs};
use crate::services::{self, ApiArgs, CoordinatorArgs, RunnerArgs};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the platform keeps its data (Redis, slugs, runner, balancer config, credentials).
    #[arg(long, default_value = ".pier")]
    pub data: PathBuf,
    /// Use this Redis instead of starting a private one.
    #[arg(long)]
    pub redis: Option<String>,
    /// The API's address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// The balancer's HTTP listener: apps answer at http://APP.<apps-domain>:PORT/.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The balancer's admin listener (metrics, routes).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Apps are served at APP.<this domain>.
    #[arg(long, default_value = "localhost")]
    pub apps_domain: String,
    /// The runner's address (its instances listen there).
    #[arg(long, default_value = "127.0.0.1")]
    pub runner_address: IpAddr,
    /// Do not deploy the demo app.
    #[arg(long)]
    pub no_demo: bool,
    /// Certificates for verified domains issued over ACME (as `pier api` takes them).
    #[command(flatten)]
    pub acme: crate::services::AcmeArgs,
}

/// Where the CLI finds the API and the operator token `pier up` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub api: String,
    pub token: String,
}

impl Credentials {
    /// `.pier/credentials.json` in the current directory or the nearest parent that has one.
    pub fn find() -> Option<Credentials> {
        let cwd = std::env::current_dir().ok()?;
        cwd.ancestors().find_map(|d| {
            let text = std::fs::read_to_string(d.join(".pier/credentials.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
    }
}

/// A child process stopped when dropped: SIGTERM (Redis saves, the balancer drains), then
/// SIGKILL after 10 s.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    which(program).with_context(|| {
        format!("{program} is not installed: run `sudo apt-get install -y {package}` (Debian/Ubuntu), then `pier up` again")
    })
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// `pier-balancer` next to this binary (same build), else on PATH.
fn balancer_binary() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("pier-balancer")));
    if let Some(b) = beside.filter(|b| b.is_file()) {
        return Ok(b);
    }
    which("pier-balancer").context(
        "pier-balancer not found next to pier or on PATH: build both with \
         `cargo build --release -p pier-cli -p pier-balancer`",
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited at start ({status}); see its log under the data directory");
        }
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `platform/examples/hello-stdlib` from the current directory, or from the repository this
/// binary was built in.
fn demo_dir() -> Option<PathBuf> {
    let rel = Path::new("platform/examples/hello-stdlib");
    let mut candidates = vec![rel.to_path_buf()];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/pier → the repository
        if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(repo.join(rel));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.join("Procfile").is_file())
}

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    services::init_tracing();
    need("python3", "python3")?;
    let balancer_bin = balancer_binary()?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = std::fs::canonicalize(&args.data)?;
    // Per-app users must be able to walk down to the runner's directory.
    let isolate = pier_runner::reachable_by_others(&data).is_ok();
    if !isolate && pier_runner::is_root() {
        eprintln!(
            "pier up: {} is not reachable by other users: instances run as this user (no per-app users)",
            data.display()
        );
    }
    set_mode(&data, 0o711)?;

    // Redis: a private one with its data here, unless one is given.
    let mut guards = Vec::new();
    let redis_url = match &args.redis {
        Some(url) => url.clone(),
        None => {
            let redis_server = need("redis-server", "redis-server")?;
            let dir = data.join("redis");
            std::fs::create_dir_all(&dir)?;
            let port = free_port()?;
            let log = std::fs::File::create(data.join("redis.log"))?;
            let mut child = Command::new(redis_server)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--appendonly", "yes", "--save", ""])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("starting redis-server")?;
            wait_for_port(([127, 0, 0, 1], port).into(), "redis-server", &mut child)?;
            guards.push(Guard(child));
            format!("redis://127.0.0.1:{port}/0")
        }
    };

    // The operator token: made once, kept in the data directory, readable by this user only.
    let token_file = data.join("operator-token");
    let token = match std::fs::read_to_string(&token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = pier_api::auth::new_token().map_err(|e| anyhow::anyhow!("{e}"))?;
            write_private(&token_file, &t)?;
            t
        }
    };
    let api_url = format!("http://{}", args.api_listen);
    write_private(
        &data.join("credentials.json"),
        &serde_json::to_string_pretty(&Credentials {
            api: api_url.clone(),
            token: token.clone(),
        })?,
    )?;

    // The balancer, following the registry.
    let snapshot = data.join("routes.snapshot.json");
    let config = format!(
        "# Written by `pier up`.\n[listen]\nhttp = [\"{}\"]\n[admin]\nlisten = \"{}\"\n\
         [routes]\nredis = \"{redis_url}\"\nsnapshot_file = \"{}\"\napp_domains = [\"{}\"]\n",
        args.http,
        args.admin,
        snapshot.display(),
        args.apps_domain
    );
    let config_path = data.join("balancer.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(data.join("balancer.log"))?;
    let mut child = Command::new(&balancer_bin)
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", balancer_bin.display()))?;
    wait_for_port(args.http, "pier-balancer", &mut child)?;
    guards.push(Guard(child));

    let slugs = data.join("slugs").display().to_string();
    let apps_url = format!("http://{{app}}.{}:{}/", args.apps_domain, args.http.port());
    let mut api_args = ApiArgs::for_up(args.api_listen, &redis_url, &token, &slugs, &apps_url);
    api_args.acme = args.acme.clone();
    let runner_args = RunnerArgs::for_up(
        args.runner_address,
        &redis_url,
        &slugs,
        data.join("runner"),
        isolate,
    );
    let coordinator_args = CoordinatorArgs::for_up(&redis_url);
    let drainer_args = DrainerArgs::for_up(&redis_url);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let api = tokio::spawn({
            let rx = stop_rx.clone();
            async move { services::serve_api(&api_args, stopped(rx)).await }
        });
        let coordinator = tokio::spawn(pier_coordinator::run(
            services::coordinator_config(&coordinator_args),
            stopped(stop_rx.clone()),
        ));
        let runner = tokio::spawn(pier_runner::run(
            services::runner_config(&runner_args),
            stopped(stop_rx.clone()),
        ));
        let drains = tokio::spawn(pier_drain::run(
            drainer::drainer_config(&drainer_args),
            stopped(stop_rx.clone()),
        ));
        let client = pier_model::ApiClient::new(&api_url, Some(token.clone()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while client
            .call(http::Method::GET, "/healthz", None)
            .await
            .is_err()
        {
            if api.is_finished() || Instant::now() > deadline {
                let _ = stop_tx.send(true);
                return match api.await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow::anyhow!(
                        "the API did not start on {}",
                        args.api_listen
                    )),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("pier is up:");
        println!(
            "  API          {api_url}  (token in {})",
            token_file.display()
        );
        println!(
            "  balancer     http://{}  (admin http://{})",
            args.http, args.admin
        );
        println!("  data         {}", data.display());
        println!("  the pier CLI run in this directory uses this platform by itself");
        if !args.no_demo {
            if let Err(e) = demo(&client, args).await {
                eprintln!("pier up: the demo app was not deployed: {e}");
            }
        }
        println!("Ctrl-C stops everything.");
        services::shutdown_signal().await;
        println!("stopping: draining instances...");
        let _ = stop_tx.send(true);
        let _ = runner.await;
        let _ = drains.await;
        let _ = coordinator.await;
        let _ = api.await;
        Ok::<(), anyhow::Error>(())
    });
    drop(guards);
    result
}

async fn demo(client: &pier_model::ApiClient, args: &UpArgs) -> anyhow::Result<()> {
    let dir = demo_dir()
        .context("platform/examples/hello-stdlib not found (run pier up from the repository)")?;
    let r = client
        .call(
            http::Method::POST,
            "/v1/apps",
            Some(&serde_json::json!({"name": "hello"})),
        )
        .await?;
    if !r.status.is_success() && r.status.as_u16() != 409 {
        bail!("creating app hello: {}", r.reason());
    }
    let mut out = std::io::stdout();
    crate::platform_verbs::deploy(client, "hello", &dir, 120, &mut out)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let port = args.http.port();
    println!(
        "\nThe demo app answers at http://hello.{}:{port}/",
        args.apps_domain
    );
    println!("  curl http://hello.{}:{port}/", args.apps_domain);
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
