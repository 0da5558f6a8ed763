//! The long-running services of the `pier` binary: `pier api`, `pier runner`,
//! `pier coordinator` (`pier drainer` is in [`crate::drainer`]). Each parses its flags, sets up logging and runs until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pier_api::api::ApiState;
use pier_api::auth::Authenticator;
use pier_api::platform::PlatformState;
use pier_api::verify::DnsVerifier;

/// Certificates issued by the platform for verified domains (ACME, docs/platform.md).
#[derive(Debug, Clone, clap::Args)]
pub struct AcmeArgs {
    /// The ACME directory URL of the CA that issues certificates for verified domains (e.g.
    /// Let's Encrypt's https://acme-v02.api.letsencrypt.org/directory). Without it, owners
    /// upload their certificates.
    #[arg(long, env = "PIER_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact address given to the CA (expiry and policy notices).
    #[arg(long, env = "PIER_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// PEM file of extra roots for the CA's own HTTPS (a private CA).
    #[arg(long, env = "PIER_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// External Account Binding key id, for CAs that need one.
    #[arg(long, env = "PIER_ACME_EAB_KID", requires = "acme_eab_hmac")]
    pub acme_eab_kid: Option<String>,
    /// External Account Binding HMAC key (base64url, as the CA gives it).
    #[arg(
        long,
        env = "PIER_ACME_EAB_HMAC",
        hide_env_values = true,
        requires = "acme_eab_kid"
    )]
    pub acme_eab_hmac: Option<String>,
    /// Orders running at once.
    #[arg(long, default_value_t = 4)]
    pub acme_concurrency: usize,
    /// New orders started per clock hour across the platform (keep it under the CA's limits).
    #[arg(long, default_value_t = 100)]
    pub acme_orders_per_hour: u64,
    /// How often the orderer looks for names to order or renew, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub acme_interval_ms: u64,
}

impl AcmeArgs {
    /// The orderer's settings, or `None` when ACME is off. Bad values are refused with the
    /// flag's name.
    pub fn config(&self) -> anyhow::Result<Option<pier_api::acme::AcmeConfig>> {
        let Some(directory) = self.acme_directory.clone().filter(|d| !d.trim().is_empty()) else {
            return Ok(None);
        };
        if !directory.starts_with("https://") {
            anyhow::bail!("--acme-directory {directory:?}: an https:// URL");
        }
        if let Some(f) = &self.acme_ca_file {
            std::fs::metadata(f).with_context(|| format!("--acme-ca-file {}", f.display()))?;
        }
        let eab = match (&self.acme_eab_kid, &self.acme_eab_hmac) {
            (Some(kid), Some(hmac)) => {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(hmac.trim().trim_end_matches('='))
                    .map_err(|e| anyhow::anyhow!("--acme-eab-hmac: not base64url: {e}"))?;
                Some((kid.clone(), key))
            }
            _ => None,
        };
        let mut c = pier_api::acme::AcmeConfig::new(directory);
        c.email = self.acme_email.clone().filter(|e| !e.trim().is_empty());
        c.ca_file = self.acme_ca_file.clone();
        c.eab = eab;
        c.concurrency = self.acme_concurrency.max(1);
        c.orders_per_hour = self.acme_orders_per_hour;
        c.interval = Duration::from_millis(self.acme_interval_ms.max(100));
        Ok(Some(c))
    }
}

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The operator token (prefer the environment: arguments show in `ps`).
    #[arg(long, env = "PIER_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// The nameserver custom domains' TXT proofs are looked up at (IP:PORT); without it, the
    /// system's resolver (/etc/resolv.conf).
    #[arg(long, env = "PIER_DNS_RESOLVER")]
    pub dns_resolver: Option<SocketAddr>,
    /// The name custom domains should point at (a CNAME to it, or its addresses at an apex),
    /// shown to owners with each domain and whether it points there yet.
    #[arg(long, env = "PIER_DNS_TARGET")]
    pub dns_target: Option<String>,
    #[command(flatten)]
    pub acme: AcmeArgs,
    /// Hours a pending domain claim may be proven; after that it lapses (adding the domain
    /// again renews it, same token). 0: claims never lapse. A claim never reserves a name:
    /// the first app to prove it gets it.
    #[arg(long, default_value_t = 72)]
    pub claim_ttl_hours: u64,
    /// Seconds a request body may take to arrive whole (408 after); a deploy's upload gets at
    /// least 600.
    #[arg(long, default_value_t = 30)]
    pub body_timeout: u64,
    /// Failed token attempts allowed per client address and minute; past it, 429 with
    /// Retry-After until the minute ends. 0: no limit.
    #[arg(long, default_value_t = pier_api::throttle::DEFAULT_FAILURES)]
    pub auth_failures: u32,
    /// Most pending domain claims one app may hold.
    #[arg(long, default_value_t = pier_api::api::DEFAULT_MAX_PENDING_CLAIMS)]
    pub max_pending_domains: u64,
    /// A network owners' backends must be in (repeat, or comma-separate in the environment),
    /// e.g. the runners' `10.0.0.0/8`. Without any, every address is allowed except loopback
    /// and those that are never an app instance (link-local such as cloud metadata,
    /// unspecified, multicast, broadcast, reserved); IPv6 spellings of IPv4 addresses are
    /// judged as them. The platform's own endpoints (this API, its Redis, the add-on servers)
    /// are refused even inside these networks. The operator may register any address.
    #[arg(long, env = "PIER_BACKEND_ALLOW", value_delimiter = ',')]
    pub backend_allow: Vec<pier_api::netpolicy::Cidr>,
    /// A network log drains may reach although internal (loopback, private, link-local,
    /// unspecified, multicast are refused otherwise; repeat, or comma-separate in the
    /// environment). Give `pier drainer` the same list.
    #[arg(long, env = "PIER_DRAIN_ALLOW", value_delimiter = ',')]
    pub drain_allow: Vec<pier_model::net::Cidr>,
    /// The slug store shared with the runners (a directory, or file:///DIR).
    #[arg(long, env = "PIER_SLUG_STORE", default_value = ".pier/slugs")]
    pub slug_store: String,
    /// One-off processes (`pier run`) an app may have at once.
    #[arg(long, default_value_t = pier_api::runs::DEFAULT_MAX_RUNS)]
    pub max_runs: usize,
    /// Hours a one-off process may run before it is ended (SIGTERM, then SIGKILL).
    #[arg(long, default_value_t = 24.0)]
    pub run_lifetime_hours: f64,
    /// Largest deploy upload, MiB (larger ones get 413); a git push's pack too.
    #[arg(long, default_value_t = 200)]
    pub max_upload_mb: usize,
    /// Where the apps' git repositories are kept (`git push` deploys); default: `git` beside
    /// the slug store (.pier/git for .pier/slugs).
    #[arg(long, env = "PIER_GIT_DIR")]
    pub git_dir: Option<PathBuf>,
    /// The Python that installs apps' requirements.txt (runners run `python3` from
    /// /usr/local/bin:/usr/bin:/bin: keep them the same interpreter).
    #[arg(long, env = "PIER_PYTHON")]
    pub python: Option<std::path::PathBuf>,
    /// An extra argument to `pip install` in builds (repeat), e.g. `--find-links=/var/cache/wheels`.
    #[arg(
        long = "pip-arg",
        env = "PIER_PIP_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub pip_args: Vec<String>,
    /// Longest a build may take, seconds.
    #[arg(long, default_value_t = 600)]
    pub build_timeout: u64,
    /// Where apps answer, told to deploying users: `{app}` stands for the app's name, e.g.
    /// `http://{app}.apps.example.net/` for balancers with `app_domains = ["apps.example.net"]`.
    #[arg(long, env = "PIER_APPS_URL")]
    pub apps_url: Option<String>,
    /// The PostgreSQL server apps' databases are made on: an admin URL
    /// (postgres://USER:PASSWORD@HOST:PORT/DB, a superuser or a CREATEROLE CREATEDB role).
    #[arg(long, env = "PIER_ADDON_POSTGRES_URL", hide_env_values = true)]
    pub addon_postgres: Option<String>,
    /// Connections each app's database role may hold at once.
    #[arg(long, default_value_t = 20)]
    pub addon_postgres_connection_limit: u32,
    /// The shared Redis apps' users are made on (redis://[:PASSWORD@]HOST:PORT/DB, a user allowed
    /// ACL SETUSER). Never the registry's Redis unless named here.
    #[arg(long, env = "PIER_ADDON_REDIS_URL", hide_env_values = true)]
    pub addon_redis: Option<String>,
    /// Where PostgreSQL add-ons' backups are kept: a directory or file:///DIR (made mode 0700;
    /// refused when another user owns it or others may read it), or s3://BUCKET/PREFIX (built
    /// with the `aws` feature; credentials and region from the AWS_* variables). Default:
    /// `backups` beside the slug store (.pier/backups for .pier/slugs).
    #[arg(long, env = "PIER_BACKUP_STORE")]
    pub backup_store: Option<String>,
    /// Tests only: seconds added to the backups' clock (schedules, retention, records).
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub backup_clock_offset_s: i64,
    /// The platform's own PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB): usage
    /// for billing is kept there (its tables are made and migrated at start). Without it,
    /// usage is not collected and `pier usage` answers 503.
    #[arg(long, env = "PIER_PLATFORM_DB", hide_env_values = true)]
    pub platform_db: Option<String>,
    /// The operator's price sheet: a TOML file with a [prices] table (config/prices.toml);
    /// refused at start when a price is bad. Without it, usage has quantities and no costs.
    #[arg(long, env = "PIER_PRICES")]
    pub prices: Option<PathBuf>,
    /// Milliseconds between two add-on usage reports (tests shorten it; at least 100).
    #[arg(long, hide = true, default_value_t = pier_registry::usage::DEFAULT_INTERVAL_MS)]
    pub usage_interval_ms: u64,
}

/// Where the registry and the platform state live (every service's first two flags).
#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    /// The Redis of the registry and the platform state.
    #[arg(
        long = "redis",
        env = "PIER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub url: String,
    /// Key prefix in Redis (must match the balancers' `[routes] prefix`).
    #[arg(long, default_value = "pier:")]
    pub prefix: String,
}

#[derive(Debug, clap::Args)]
pub struct RunnerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// This runner's id (unique among runners; default: runner-ADDRESS).
    #[arg(long)]
    pub id: Option<String>,
    /// The IP its instances listen on; balancers must reach it.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Most instances it runs.
    #[arg(long, default_value_t = 50)]
    pub capacity: u32,
    /// Where it unpacks slugs and keeps instances' home directories.
    #[arg(long, default_value = ".pier/runner")]
    pub workdir: PathBuf,
    /// The slug store shared with the API.
    #[arg(long, env = "PIER_SLUG_STORE", default_value = ".pier/slugs")]
    pub slug_store: String,
    /// Seconds a new instance has to accept connections on PORT.
    #[arg(long, default_value_t = 30.0)]
    pub boot_timeout: f64,
    /// Seconds between deregistering an instance and SIGTERM.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10.0)]
    pub grace: f64,
    /// On stop, seconds its instances keep serving while their replacements start on other
    /// runners (0: stop at once).
    #[arg(long, default_value_t = 30.0)]
    pub handover: f64,
    /// Seconds a backend stays routable without a heartbeat.
    #[arg(long, default_value_t = 10.0)]
    pub backend_ttl: f64,
    /// Memory per instance, MiB (cgroup; 0: none).
    #[arg(long, default_value_t = 512)]
    pub memory_mb: u64,
    /// CPU per instance in cores, e.g. 0.5 (cgroup; default: none).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Processes per instance (cgroup pids; 0: none).
    #[arg(long, default_value_t = 256)]
    pub pids: u64,
    /// Open files per process.
    #[arg(long, default_value_t = 4096)]
    pub nofile: u64,
    /// Run instances as the runner's own user even when root (no per-app users).
    #[arg(long)]
    pub no_isolation: bool,
    /// Where the API attaches clients to one-off processes (`pier run`), `IP:PORT`; default: a
    /// free port on --address.
    #[arg(long)]
    pub exec_listen: Option<SocketAddr>,
    /// Milliseconds between two usage reports (tests shorten it; at least 100).
    #[arg(long, hide = true, default_value_t = pier_registry::usage::DEFAULT_INTERVAL_MS)]
    pub usage_interval_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// This coordinator's name in the lease (default: host and process id).
    #[arg(long)]
    pub id: Option<String>,
    /// Seconds without a heartbeat after which a runner is dead.
    #[arg(long, default_value_t = 3.0)]
    pub dead_after: f64,
    /// Seconds the lease lasts without renewal (a dead leader is replaced within it).
    #[arg(long, default_value_t = 3.0)]
    pub lease_ttl: f64,
    /// Crashes of a new release's instance before its rollout fails.
    #[arg(long, default_value_t = 3)]
    pub max_crashes: u32,
}

/// Parses a service's flags from `args` (the rest at their defaults), for `pier up`.
pub(crate) fn flags<T: clap::Args>(args: &[&str]) -> T {
    #[derive(clap::Parser)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("pier").chain(args.iter().copied());
    match <Wrap<T> as clap::Parser>::try_parse_from(argv) {
        Ok(w) => w.inner,
        // The arguments are written here, not typed by a user: a failure is a bug.
        Err(e) => panic!("pier up built bad flags {args:?}: {e}"),
    }
}

impl ApiArgs {
    pub fn for_up(
        listen: SocketAddr,
        redis: &str,
        token: &str,
        slugs: &str,
        apps_url: &str,
    ) -> Self {
        flags(&[
            "--listen",
            &listen.to_string(),
            "--redis",
            redis,
            "--operator-token",
            token,
            "--slug-store",
            slugs,
            "--apps-url",
            apps_url,
            // One machine: drains may reach it, and owners' backends may live on it.
            "--drain-allow",
            "127.0.0.0/8",
            "--drain-allow",
            "::1/128",
            "--backend-allow",
            "127.0.0.0/8",
            "--backend-allow",
            "::1/128",
        ])
    }
}

impl RunnerArgs {
    pub fn for_up(
        address: IpAddr,
        redis: &str,
        slugs: &str,
        workdir: PathBuf,
        isolate: bool,
    ) -> Self {
        let workdir = workdir.display().to_string();
        let address = address.to_string();
        let mut a = vec![
            "--redis",
            redis,
            "--id",
            "local",
            "--address",
            &address,
            "--workdir",
            &workdir,
            "--slug-store",
            slugs,
            // `pier up` stops the whole platform: nobody takes the instances over.
            "--handover",
            "0",
        ];
        if !isolate {
            a.push("--no-isolation");
        }
        flags(&a)
    }
}

impl CoordinatorArgs {
    pub fn for_up(redis: &str) -> Self {
        flags(&["--redis", redis, "--id", "pier-up"])
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Logs to stderr at `info` unless RUST_LOG says otherwise.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// `pier api`: the registry API server, with the platform's routes.
pub fn run_api(args: &ApiArgs) -> anyhow::Result<()> {
    init_tracing();
    runtime()?.block_on(serve_api(args, shutdown_signal()))
}

/// The API until `shutdown` completes (also used by `pier up`).
pub async fn serve_api(
    args: &ApiArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let operator_token = args
        .operator_token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .context("set PIER_OPERATOR_TOKEN (the operator's API token)")?;
    // Checked first: a bad price sheet is refused before anything else is started.
    let prices = args
        .prices
        .as_deref()
        .map(pier_api::prices::Prices::load)
        .transpose()
        .context("the price sheet (--prices) is refused")?;
    let registry =
        pier_registry::Registry::connect_with_prefix(&args.redis.url, &args.redis.prefix)
            .await
            .with_context(|| format!("connecting to the registry at {}", args.redis.url))?;
    let store = pier_store::Store::connect(&args.redis.url, &args.redis.prefix)
        .await
        .with_context(|| format!("connecting to the platform state at {}", args.redis.url))?;
    let verifier = match args.dns_resolver {
        Some(addr) => DnsVerifier::with_nameserver(addr),
        None => DnsVerifier::system(),
    }
    .map_err(anyhow::Error::msg)
    .context("setting up the DNS resolver of custom domains' proofs (--dns-resolver)")?;
    let dns_target = args
        .dns_target
        .as_deref()
        .map(|t| {
            pier_routes::host::normalise_name(t)
                .map(String::from)
                .map_err(|e| anyhow::anyhow!("--dns-target {t:?}: {e}"))
        })
        .transpose()?;
    // Checked early: bad ACME settings are refused before anything is started.
    let acme = args.acme.config()?;
    match registry.migrate_pending_domains().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            moved = n,
            "pending domains of an earlier version moved to claims"
        ),
        Err(e) => tracing::warn!(error = %e, "moving pending domains to claims failed"),
    }
    let slugs = pier_slug::SlugStore::open(&args.slug_store)
        .with_context(|| format!("opening the slug store {}", args.slug_store))?;
    let mut build = pier_slug::build::BuildConfig {
        pip_args: args
            .pip_args
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
        timeout: Duration::from_secs(args.build_timeout.max(1)),
        ..Default::default()
    };
    if let Some(p) = &args.python {
        build.python = p.clone();
    }
    let addon_servers = pier_api::addons::AddonServers {
        postgres: args
            .addon_postgres
            .as_deref()
            .map(|url| {
                pier_addons::postgres::Postgres::new(url, args.addon_postgres_connection_limit)
            })
            .transpose()
            .context("--addon-postgres")?,
        redis: args
            .addon_redis
            .as_deref()
            .map(pier_addons::redis::SharedRedis::new)
            .transpose()
            .context("--addon-redis")?,
    };
    // Bound before the state is made: the git hooks are told where to reach this API.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr: SocketAddr = listener.local_addr().context("local address")?;
    let git = git_state(args, &slugs, addr)?;
    let backup_store = args.backup_store.clone().unwrap_or_else(|| {
        slugs
            .dir()
            .parent()
            .map_or_else(|| PathBuf::from("backups"), |p| p.join("backups"))
            .display()
            .to_string()
    });
    let mut backups = pier_api::backups::Backups::new(
        pier_api::backup_store::BackupStore::open(&backup_store)
            .with_context(|| format!("opening the backup store (--backup-store {backup_store})"))?,
    );
    backups.clock_offset_ms = args.backup_clock_offset_s.saturating_mul(1000);
    let backup_store = backups.store.describe.clone();
    let usage = match &args.platform_db {
        Some(url) => Some(pier_api::usage::Usage {
            db: pier_api::usage_db::UsageDb::connect(url)
                .await
                .context("connecting to the platform database (--platform-db)")?,
            prices,
            interval_ms: args.usage_interval_ms.max(100),
        }),
        None => {
            if prices.is_some() {
                tracing::warn!(
                    "--prices without --platform-db: usage is not kept, so nothing is priced"
                );
            }
            None
        }
    };
    let mut state = ApiState::new(
        registry,
        &args.redis.url,
        &args.redis.prefix,
        Authenticator::new(operator_token.trim()),
        Arc::new(verifier),
    )
    .with_dns_target(dns_target)
    .with_max_pending_claims(args.max_pending_domains)
    .with_body_timeout(Duration::from_secs(args.body_timeout.max(1)))
    .with_auth_failures(pier_api::throttle::FailureLimiter::new(args.auth_failures))
    .with_claim_ttl(
        (args.claim_ttl_hours != 0)
            .then(|| Duration::from_secs(args.claim_ttl_hours.saturating_mul(3600))),
    )
    .with_backend_policy(pier_api::netpolicy::BackendPolicy {
        allow: args.backend_allow.clone(),
        endpoints: platform_endpoints(args),
    })
    .with_drain_policy(pier_model::drain::DrainPolicy {
        allow: args.drain_allow.clone(),
    })
    .with_platform(PlatformState {
        store,
        slugs,
        build,
        max_upload: args.max_upload_mb.saturating_mul(1 << 20),
        builds: Arc::new(tokio::sync::Semaphore::new(2)),
        apps_url: args.apps_url.clone(),
        addon_servers,
        runs: pier_api::runs::RunLimits {
            max_active: args.max_runs.max(1),
            lifetime: Duration::from_secs_f64(
                args.run_lifetime_hours.clamp(0.001, 8760.0) * 3600.0,
            ),
        },
    })
    .with_git(git)
    .with_backups(backups);
    if let Some(u) = usage {
        state = state.with_usage(u);
    }
    if let Some(c) = acme {
        tracing::info!(directory = %c.directory, "certificates for verified domains issued over ACME");
        state = state.with_acme(pier_api::acme::Acme::new(c));
    }
    let state = Arc::new(state);
    let scheduler = tokio::spawn(pier_api::backup_schedule::run(state.clone()));
    let orderer = tokio::spawn(pier_api::acme::run(state.clone()));
    let (collector_stop, collector_stopped) = tokio::sync::watch::channel(false);
    let collector = tokio::spawn(pier_api::usage::collect(state.clone(), collector_stopped));
    tracing::info!(%addr, redis = %args.redis.url, prefix = %args.redis.prefix, slug_store = %args.slug_store, backup_store, usage = state.usage.is_some(), "pier api listening");
    let served = pier_api::server::serve(listener, state, shutdown).await;
    scheduler.abort();
    orderer.abort();
    // The collector's last pass: a final add-on report, then the lease given up.
    let _ = collector_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), collector).await;
    served.context("serving")?;
    tracing::info!("pier api stopped");
    Ok(())
}

/// The git server's repositories (`--git-dir`, else `git` beside the slug store), its hooks
/// running this binary against the API at `addr`.
fn git_state(
    args: &ApiArgs,
    slugs: &pier_slug::SlugStore,
    addr: SocketAddr,
) -> anyhow::Result<pier_api::git::GitState> {
    let dir = args.git_dir.clone().unwrap_or_else(|| {
        slugs
            .dir()
            .parent()
            .map_or_else(|| PathBuf::from("git"), |p| p.join("git"))
    });
    let repos = pier_api::git::repo::Repos::open(&dir)
        .with_context(|| format!("opening the git repositories' directory {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding this binary (the git hooks run it)")?;
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        tracing::warn!(
            "git is not installed: `git push` deploys fail until it is (apt-get install git)"
        );
    }
    tracing::info!(dir = %repos.root().display(), "git repositories");
    Ok(pier_api::git::GitState::new(
        repos,
        exe,
        pier_api::git::hook_api_url(addr),
        Duration::from_secs(args.build_timeout.max(1)),
        args.max_upload_mb.saturating_mul(1 << 20) as u64,
    ))
}

/// The platform's own endpoints, which owners may never register as backends: the API's
/// listen address, the registry's Redis and the add-on servers.
fn platform_endpoints(args: &ApiArgs) -> Vec<SocketAddr> {
    use pier_api::netpolicy::{endpoint_addresses, url_host_port};
    let mut out = vec![args.listen];
    let urls = [
        Some((args.redis.url.as_str(), 6379)),
        args.addon_postgres.as_deref().map(|u| (u, 5432)),
        args.addon_redis.as_deref().map(|u| (u, 6379)),
        args.platform_db.as_deref().map(|u| (u, 5432)),
    ];
    for (url, default_port) in urls.into_iter().flatten() {
        if let Some((host, port)) = url_host_port(url, default_port) {
            out.extend(endpoint_addresses(&host, port));
        }
    }
    out
}

/// The runner's configuration from its flags.
pub fn runner_config(args: &RunnerArgs) -> pier_runner::RunnerConfig {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("runner-{}", args.address));
    let mut cfg = pier_runner::RunnerConfig::new(
        &id,
        args.address,
        &args.redis.url,
        &args.slug_store,
        args.workdir.clone(),
    );
    cfg.prefix = args.redis.prefix.clone();
    cfg.capacity = args.capacity.max(1);
    cfg.boot_timeout = secs(args.boot_timeout);
    cfg.drain = secs(args.drain);
    cfg.grace = secs(args.grace);
    cfg.handover = secs(args.handover);
    cfg.backend_ttl = secs(args.backend_ttl.max(1.0));
    cfg.isolate = !args.no_isolation;
    cfg.exec_listen = args.exec_listen;
    cfg.usage_interval = Duration::from_millis(args.usage_interval_ms.max(100));
    cfg.limits = pier_runner::config::Limits {
        memory_mib: (args.memory_mb > 0).then_some(args.memory_mb),
        cpus: args.cpus.filter(|c| *c > 0.0),
        pids: (args.pids > 0).then_some(args.pids),
        nofile: args.nofile.max(64),
    };
    cfg
}

/// `pier runner`.
pub fn run_runner(args: &RunnerArgs) -> anyhow::Result<()> {
    init_tracing();
    let cfg = runner_config(args);
    runtime()?
        .block_on(pier_runner::run(cfg, shutdown_signal()))
        .map_err(anyhow::Error::msg)
}

/// The coordinator's configuration from its flags.
pub fn coordinator_config(args: &CoordinatorArgs) -> pier_coordinator::CoordinatorConfig {
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut cfg = pier_coordinator::CoordinatorConfig::new(&id, &args.redis.url);
    cfg.prefix = args.redis.prefix.clone();
    cfg.dead_after = secs(args.dead_after.max(0.5));
    cfg.lease_ttl = secs(args.lease_ttl.max(0.5));
    cfg.max_crashes = args.max_crashes.max(1);
    cfg
}

/// `pier coordinator`.
pub fn run_coordinator(args: &CoordinatorArgs) -> anyhow::Result<()> {
    init_tracing();
    let cfg = coordinator_config(args);
    runtime()?
        .block_on(pier_coordinator::run(cfg, shutdown_signal()))
        .map_err(anyhow::Error::msg)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
