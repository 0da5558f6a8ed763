//! The `pier` command line: the arguments (clap) and the client verbs, which call the registry
//! API with [`ApiClient`] and print short text (or the API's JSON with `--json`).
//!
//! Exit codes: 0 on success, 1 when the API refused or could not be reached, 2 for usage
//! errors (clap's own, a missing token, a bad argument).

use std::io::Write;

use http::Method;
use serde_json::{json, Value};

use pier_model::api::{
    AppList, AppView, BackendList, BackendView, CertView, DomainList, DomainView, TokenView,
};
use pier_model::client::{encode_segment, ApiClient, ApiResponse, ClientError};

#[derive(Debug, clap::Parser)]
#[command(
    name = "pier",
    version,
    about = "pier: the registry API server and its command-line client"
)]
pub struct Cli {
    /// Registry API base URL (default: the one `pier up` wrote to .pier/credentials.json in
    /// this directory or a parent, else http://127.0.0.1:7070).
    #[arg(long, global = true, env = "PIER_API_URL")]
    pub api: Option<String>,
    /// API token (the operator's or an app owner's; default: the one `pier up` wrote).
    #[arg(long, global = true, env = "PIER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON answers instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the whole platform on this machine (Redis, API, coordinator, a runner, balancer).
    Up(crate::up::UpArgs),
    /// Run the registry API server.
    Api(Box<crate::services::ApiArgs>),
    /// Run a runner: the instances the coordinator assigns to this machine.
    Runner(crate::services::RunnerArgs),
    /// Run a coordinator (one leads at a time; start several for failover).
    Coordinator(crate::services::CoordinatorArgs),
    /// Run a drainer: forwards apps' log lines to their drains (one forwards at a time).
    Drainer(crate::drainer::DrainerArgs),
    /// Deploy a directory (with a Procfile at its root) as a new release of APP.
    Deploy {
        app: String,
        /// The app's directory.
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// Seconds to wait for the new release to run before giving up (0: do not wait).
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Deploy with `git push`: `pier git remote APP` points a `pier` remote of this repository
    /// at the app, with the token as git's credential.
    #[command(subcommand)]
    Git(crate::git::GitCmd),
    /// The hooks of the apps' git repositories (the API's git server runs them).
    #[command(subcommand, hide = true)]
    GitHook(crate::git::HookCmd),
    /// List an app's releases.
    Releases { app: String },
    /// Make a new release from an older one (default: the one before the current).
    Rollback {
        app: String,
        version: Option<String>,
    },
    /// Show, set or unset an app's config vars (each change is a new release).
    Config(crate::platform_verbs::ConfigArgs),
    /// Scale process types: pier scale APP web=3 worker=1.
    Scale {
        app: String,
        #[arg(required = true, value_name = "TYPE=N")]
        changes: Vec<String>,
    },
    /// An app's instances: type, state, runner, address, release, uptime, restarts, CPU, RSS.
    Ps { app: String },
    /// Restart an app's instances, or one of them (web.1): each new one starts and is healthy
    /// before the one it replaces stops.
    Restart {
        app: String,
        instance: Option<String>,
    },
    /// Run a command once in a new process of APP's current release, this terminal attached
    /// (`pier run blog -- python manage.py migrate`); its exit status is pier's.
    Run(crate::run::RunArgs),
    /// Stop a one-off process: `pier stop blog run.3`.
    Stop { app: String, process: String },
    /// An app's one-off processes: who ran what, and how each ended.
    Runs { app: String },
    /// The runners, with their heartbeat age and load (operator).
    Runners,
    /// The balancers: the route table version each serves, how far behind the registry it is,
    /// and the age of its last report (operator).
    Balancers,
    /// An app's add-ons (a PostgreSQL database, a Redis): list, create, destroy.
    Addons(crate::platform_verbs::AddonsArgs),
    /// An app's PostgreSQL database: `pier pg backups` captures, lists, downloads, restores
    /// and schedules its backups.
    #[command(subcommand)]
    Pg(crate::pg::PgCmd),
    /// An app's log drains (syslog or HTTPS endpoints its lines are forwarded to): list, add,
    /// remove.
    Drains(crate::drains::DrainsArgs),
    /// An app's log: its instances' output, in time order.
    Logs {
        app: String,
        /// Lines to show (1-10000).
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        tail: bool,
        /// Only this instance's lines (web.1).
        #[arg(long)]
        ps: Option<String>,
        /// Only `app` or `router` lines.
        #[arg(long)]
        source: Option<String>,
    },
    /// An app's requests/s, share of 5xx, p50/p95/p99 latency and its instances' CPU and
    /// memory, over the last minute, hour and day.
    Stats { app: String },
    /// An app's usage in a month (instance hours, CPU, memory, requests, bytes, add-on hours),
    /// its cost from the operator's price sheet, and gaps where reports are missing; `--all`:
    /// every app's (operator).
    Usage {
        /// The app (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        app: Option<String>,
        /// Every app (operator).
        #[arg(long)]
        all: bool,
        /// The month, YYYY-MM, UTC (default: this month).
        #[arg(long)]
        month: Option<String>,
    },
    /// Create, list, show, update and delete apps.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// An app's domains.
    #[command(subcommand)]
    Domains(DomainsCmd),
    /// TLS certificates of an app's domains.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// An app's backends (instances).
    #[command(subcommand)]
    Backends(BackendsCmd),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum AppsCmd {
    /// Create an app (operator).
    Create { name: String },
    /// List the apps the token may see.
    List,
    /// Show an app with its domains and backends.
    Show { name: String },
    /// Change settings: a JSON object of app settings, e.g. '{"spin": true}'.
    Update { name: String, settings: String },
    /// Delete an app with its domains and backends (operator).
    Delete { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DomainsCmd {
    /// Add a domain; it stays pending until verified, unless the operator passes --verified.
    Add {
        app: String,
        host: String,
        /// Skip the ownership check (operator only).
        #[arg(long)]
        verified: bool,
    },
    /// List an app's domains.
    List { app: String },
    /// Remove a domain.
    Remove { app: String, host: String },
    /// Run the ownership check of a pending domain.
    Verify {
        app: String,
        host: String,
        /// Mark verified without the check (operator only).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Set a verified domain's certificate (replacing any) from PEM files.
    Add {
        app: String,
        host: String,
        /// PEM file: the certificate, then its intermediates.
        #[arg(long, value_name = "FILE")]
        cert: std::path::PathBuf,
        /// PEM file: the private key.
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
    },
    /// Show a domain's certificate (names, validity, fingerprint, issuer, subject, who
    /// provided it) and where the platform's issued certificate stands (state, error, next
    /// attempt).
    Show { app: String, host: String },
    /// Remove a domain's uploaded certificate (the platform's issued one, if any, is served
    /// again).
    #[command(alias = "remove")]
    Rm { app: String, host: String },
    /// Renew the platform's certificate of a verified name now (ACME; once a minute per name).
    Renew { app: String, host: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum BackendsCmd {
    /// Register a backend instance at ADDR (IP:port, or https://IP:port for TLS).
    Add {
        app: String,
        addr: String,
        /// Instance id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// For an https:// ADDR: the name its certificate is checked for and sent as SNI
        /// (default: the IP).
        #[arg(long)]
        server_name: Option<String>,
        /// Seconds it lives without a heartbeat (default: forever).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Deregister a backend instance.
    Remove { app: String, id: String },
    /// List an app's backends.
    List { app: String },
    /// Extend a backend's deadline to now + TTL seconds.
    Heartbeat {
        app: String,
        id: String,
        #[arg(long)]
        ttl: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCmd {
    /// Create an owner token for an app (operator). The token is the last line printed.
    Create {
        #[arg(long)]
        app: String,
    },
}

/// Why a client verb failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{reason} (HTTP {status} {code})")]
    Api {
        status: u16,
        code: String,
        reason: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API accepted the request but what it started did not succeed (a build, a rollout).
    #[error("{0}")]
    Failed(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Exit with this status and say nothing more (`pier run` passes its command's on).
    #[error("exit status {0}")]
    Exit(i32),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Exit(code) => *code,
            _ => 1,
        }
    }
}

pub(crate) fn check(resp: ApiResponse) -> Result<Value, CliError> {
    if resp.status.is_success() {
        return Ok(resp.body);
    }
    Err(CliError::Api {
        status: resp.status.as_u16(),
        code: resp
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string(),
        reason: resp.reason(),
    })
}

/// `pier domains APP` is `pier domains list APP` (as `heroku domains` lists): the argument
/// list with `list` put in when `domains` is followed by something that is not one of its
/// subcommands or a flag.
pub fn shorthand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const SUBCOMMANDS: &[&str] = &["add", "list", "remove", "verify", "help"];
    // The command is the first word that is neither a flag nor a global flag's value.
    let mut i = 1;
    while let Some(a) = args.get(i).map(|a| a.to_string_lossy().into_owned()) {
        if a == "--api" || a == "--token" {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).is_some_and(|a| a == "domains") {
        if let Some(next) = args.get(i + 1).map(|a| a.to_string_lossy().into_owned()) {
            if !next.starts_with('-') && !SUBCOMMANDS.contains(&next.as_str()) {
                args.insert(i + 1, "list".into());
            }
        }
    }
    args
}

fn domain_line(d: &DomainView) -> String {
    let mut cols = vec![d.domain.clone()];
    if d.verified {
        cols.push("verified".into());
    } else {
        cols.push("pending".into());
        if let Some(c) = &d.challenge {
            cols.push(zone_line(c));
        }
        if let Some(until) = &d.claim_expires_at {
            cols.push(format!("lapses {until}"));
        }
    }
    if let Some(check) = &d.dns {
        cols.push(dns_column(check));
    }
    if let Some(state) = &d.cert_state {
        cols.push(format!("certificate: {state}"));
    }
    cols.join("\t")
}

/// The proof as a line to paste into a zone file.
fn zone_line(c: &pier_model::api::ChallengeView) -> String {
    format!("{}. 300 IN {} \"{}\"", c.name, c.kind, c.value)
}

/// Where a name points, next to the DNS target.
fn dns_column(c: &pier_model::api::DnsCheck) -> String {
    let found = if c.found.is_empty() {
        "nothing".to_string()
    } else {
        c.found.join(", ")
    };
    match (c.points_at_target, &c.error) {
        (Some(true), _) => format!("dns: points at {} ({found})", c.target),
        (Some(false), _) => format!("dns: not pointed at {} yet ({found})", c.target),
        (None, Some(e)) => format!("dns: unknown ({e})"),
        (None, None) => "dns: unknown".to_string(),
    }
}

fn backend_line(b: &BackendView) -> String {
    let live = if b.live { "live" } else { "expired" };
    let expires = if b.expires_at_ms == 0 {
        "no-deadline".to_string()
    } else {
        format!("expires_at_ms={}", b.expires_at_ms)
    };
    let address = match &b.server_name {
        Some(name) => format!("{} (server_name {name})", b.address),
        None => b.address.clone(),
    };
    format!("{}\t{address}\t{live}\t{expires}", b.id)
}

/// A certificate's facts, one `FIELD<TAB>VALUE` line each.
fn cert_lines(c: &CertView, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "domain\t{}", c.domain)?;
    if !c.names.is_empty() {
        writeln!(out, "names\t{}", c.names.join(", "))?;
    }
    for (field, value) in [
        ("not_before", &c.not_before),
        ("not_after", &c.not_after),
        ("fingerprint_sha256", &c.fingerprint_sha256),
        ("issuer", &c.issuer),
        ("subject", &c.subject),
        ("source", &c.source),
    ] {
        if let Some(v) = value {
            writeln!(out, "{field}\t{v}")?;
        }
    }
    writeln!(out, "state\t{}", c.state)?;
    for (field, value) in [("error", &c.error), ("next_attempt", &c.next_attempt)] {
        if let Some(v) = value {
            writeln!(out, "{field}\t{v}")?;
        }
    }
    Ok(())
}

/// The API's answer read as its wire type.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone())
        .map_err(|e| CliError::Failed(format!("unexpected answer from the API: {e}")))
}

/// Reads a PEM file named on the command line (a problem with it is a usage error).
fn read_pem(path: &std::path::Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

/// The API's URL and the token a client verb uses: `--api`/`PIER_API_URL` and
/// `--token`/`PIER_TOKEN`, else what `pier up` wrote to `.pier/credentials.json` here or in a
/// parent directory; the URL defaults to `http://127.0.0.1:7070`.
pub(crate) fn api_and_token(cli: &Cli) -> (String, Option<String>) {
    let saved = crate::up::Credentials::find();
    let token = cli
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| saved.as_ref().map(|c| c.token.clone()));
    let api = cli
        .api
        .clone()
        .or_else(|| saved.map(|c| c.api))
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    (api, token)
}

/// Runs one client verb (anything but `api`), writing its output to `out`.
pub async fn run_client(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Git(cmd) => return crate::git::run(cli, cmd, out).await,
        Command::GitHook(hook) => return crate::git::run_hook(cli, hook, out).await,
        _ => {}
    }
    let (api, token) = api_and_token(cli);
    let token = token.ok_or_else(|| {
        CliError::Usage(
            "no API token: set PIER_TOKEN, pass --token, or run in the directory of `pier up`"
                .into(),
        )
    })?;
    let client = ApiClient::new(&api, Some(token)).map_err(|e| CliError::Usage(e.to_string()))?;
    let app_path = |app: &str| format!("/v1/apps/{}", encode_segment(app));
    let (method, path, body) = match &cli.command {
        Command::Api(_)
        | Command::Runner(_)
        | Command::Coordinator(_)
        | Command::Drainer(_)
        | Command::Up(_)
        | Command::Git(_)
        | Command::GitHook(_) => return Err(CliError::Usage("not a client verb".into())),
        Command::Drains(args) => return crate::drains::run(cli, &client, args, out).await,
        Command::Pg(cmd) => return crate::pg::run(cli, &client, cmd, out).await,
        Command::Run(args) => return crate::run::run(&client, args, out).await,
        Command::Stop { app, process } => {
            return crate::run::stop(&client, app, process, out).await
        }
        Command::Runs { app } => return crate::run::list(&client, app, out).await,
        Command::Deploy { .. }
        | Command::Releases { .. }
        | Command::Rollback { .. }
        | Command::Config(_)
        | Command::Scale { .. }
        | Command::Ps { .. }
        | Command::Restart { .. }
        | Command::Runners
        | Command::Balancers
        | Command::Addons(_)
        | Command::Logs { .. } => return crate::platform_verbs::run(cli, &client, out).await,
        Command::Stats { app } => return crate::stats::run(cli, &client, app, out).await,
        Command::Usage { app, month, .. } => {
            return crate::usage::run(cli, &client, app.as_deref(), month.as_deref(), out).await
        }
        Command::Apps(AppsCmd::Create { name }) => (
            Method::POST,
            "/v1/apps".to_string(),
            Some(json!({ "name": name })),
        ),
        Command::Apps(AppsCmd::List) => (Method::GET, "/v1/apps".to_string(), None),
        Command::Apps(AppsCmd::Show { name }) => (Method::GET, app_path(name), None),
        Command::Apps(AppsCmd::Update { name, settings }) => {
            let v: Value = serde_json::from_str(settings)
                .map_err(|e| CliError::Usage(format!("settings are not JSON: {e}")))?;
            (Method::PATCH, app_path(name), Some(v))
        }
        Command::Apps(AppsCmd::Delete { name }) => (Method::DELETE, app_path(name), None),
        Command::Domains(DomainsCmd::Add {
            app,
            host,
            verified,
        }) => (
            Method::POST,
            format!("{}/domains", app_path(app)),
            Some(json!({ "domain": host, "verified": verified })),
        ),
        Command::Domains(DomainsCmd::List { app }) => {
            (Method::GET, format!("{}/domains", app_path(app)), None)
        }
        Command::Domains(DomainsCmd::Remove { app, host }) => (
            Method::DELETE,
            format!("{}/domains/{}", app_path(app), encode_segment(host)),
            None,
        ),
        Command::Domains(DomainsCmd::Verify { app, host, force }) => (
            Method::POST,
            format!("{}/domains/{}/verify", app_path(app), encode_segment(host)),
            Some(json!({ "force": force })),
        ),
        Command::Certs(CertsCmd::Add {
            app,
            host,
            cert,
            key,
        }) => (
            Method::PUT,
            format!("{}/domains/{}/cert", app_path(app), encode_segment(host)),
            Some(json!({
                "cert": read_pem(cert, "certificate")?,
                "key": read_pem(key, "key")?,
            })),
        ),
        Command::Certs(CertsCmd::Show { app, host }) => (
            Method::GET,
            format!("{}/domains/{}/cert", app_path(app), encode_segment(host)),
            None,
        ),
        Command::Certs(CertsCmd::Rm { app, host }) => (
            Method::DELETE,
            format!("{}/domains/{}/cert", app_path(app), encode_segment(host)),
            None,
        ),
        Command::Certs(CertsCmd::Renew { app, host }) => (
            Method::POST,
            format!(
                "{}/domains/{}/cert/renew",
                app_path(app),
                encode_segment(host)
            ),
            None,
        ),
        Command::Backends(BackendsCmd::Add {
            app,
            addr,
            id,
            server_name,
            ttl,
        }) => {
            let mut b = json!({ "address": addr });
            if let Some(id) = id {
                b["id"] = json!(id);
            }
            if let Some(name) = server_name {
                b["server_name"] = json!(name);
            }
            if let Some(ttl) = ttl {
                b["ttl_s"] = json!(ttl);
            }
            (Method::POST, format!("{}/backends", app_path(app)), Some(b))
        }
        Command::Backends(BackendsCmd::Remove { app, id }) => (
            Method::DELETE,
            format!("{}/backends/{}", app_path(app), encode_segment(id)),
            None,
        ),
        Command::Backends(BackendsCmd::List { app }) => {
            (Method::GET, format!("{}/backends", app_path(app)), None)
        }
        Command::Backends(BackendsCmd::Heartbeat { app, id, ttl }) => (
            Method::PUT,
            format!(
                "{}/backends/{}/heartbeat",
                app_path(app),
                encode_segment(id)
            ),
            Some(json!({ "ttl_s": ttl })),
        ),
        Command::Tokens(TokensCmd::Create { app }) => (
            Method::POST,
            "/v1/tokens".to_string(),
            Some(json!({ "app": app })),
        ),
    };
    let v = check(client.call(method, &path, body.as_ref()).await?)?;
    if cli.json {
        if !v.is_null() {
            writeln!(out, "{v:#}")?;
        }
        return Ok(());
    }
    match &cli.command {
        Command::Apps(AppsCmd::Create { name }) => writeln!(out, "created app {name}")?,
        Command::Apps(AppsCmd::List) => {
            for a in parse::<AppList>(&v)?.apps {
                writeln!(out, "{}", a.name)?;
            }
        }
        Command::Apps(AppsCmd::Show { .. }) => {
            let a: AppView = parse(&v)?;
            writeln!(out, "app {}", a.name)?;
            let settings = serde_json::to_string(&a.settings).unwrap_or_default();
            writeln!(out, "settings {settings}")?;
            for d in a.domains.iter().flatten() {
                writeln!(out, "domain\t{}", domain_line(d))?;
            }
            for b in a.backends.iter().flatten() {
                writeln!(out, "backend\t{}", backend_line(b))?;
            }
        }
        Command::Apps(AppsCmd::Update { name, .. }) => writeln!(out, "updated app {name}")?,
        Command::Apps(AppsCmd::Delete { name }) => writeln!(out, "deleted app {name}")?,
        Command::Domains(DomainsCmd::Add { app, .. }) => {
            let d: DomainView = parse(&v)?;
            let domain = &d.domain;
            if d.verified {
                writeln!(out, "{domain} routes to {app} (verified)")?;
            } else {
                writeln!(out, "{domain} added to {app}, pending its DNS proof")?;
                if let Some(c) = &d.challenge {
                    writeln!(out, "publish this record in the zone of {domain}:")?;
                    writeln!(out, "  {}", zone_line(c))?;
                }
                writeln!(out, "then run:")?;
                writeln!(out, "  pier domains verify {app} {domain}")?;
                if let Some(target) = &d.dns_target {
                    writeln!(
                        out,
                        "and point {domain} at {target} (a CNAME; at a zone apex, the same A/AAAA addresses)"
                    )?;
                }
                if let Some(until) = &d.claim_expires_at {
                    writeln!(
                        out,
                        "the claim lapses at {until}; it reserves nothing: the first app to prove the name gets it"
                    )?;
                }
            }
        }
        Command::Domains(DomainsCmd::List { .. }) => {
            let list = parse::<DomainList>(&v)?;
            if let Some(target) = list.domains.iter().find_map(|d| d.dns_target.as_ref()) {
                writeln!(out, "# point domains at {target}")?;
            }
            for d in list.domains {
                writeln!(out, "{}", domain_line(&d))?;
            }
        }
        Command::Domains(DomainsCmd::Remove { app, host }) => {
            writeln!(out, "removed {host} from {app}")?
        }
        Command::Domains(DomainsCmd::Verify { .. }) => {
            writeln!(out, "{} verified", parse::<DomainView>(&v)?.domain)?
        }
        Command::Certs(CertsCmd::Add { app, .. }) => {
            let c: CertView = parse(&v)?;
            writeln!(out, "certificate for {} of {app} stored", c.domain)?;
            cert_lines(&c, out)?;
        }
        Command::Certs(CertsCmd::Show { .. }) => cert_lines(&parse(&v)?, out)?,
        Command::Certs(CertsCmd::Rm { app, host }) => {
            writeln!(out, "removed the certificate of {host} from {app}")?
        }
        Command::Certs(CertsCmd::Renew { app, host }) => {
            writeln!(
                out,
                "renewal of the certificate of {host} ({app}) asked for"
            )?;
            cert_lines(&parse(&v)?, out)?;
        }
        Command::Backends(BackendsCmd::Add { .. } | BackendsCmd::Heartbeat { .. }) => {
            writeln!(out, "{}", backend_line(&parse(&v)?))?
        }
        Command::Backends(BackendsCmd::Remove { app, id }) => {
            writeln!(out, "removed backend {id} of {app}")?
        }
        Command::Backends(BackendsCmd::List { .. }) => {
            for b in parse::<BackendList>(&v)?.backends {
                writeln!(out, "{}", backend_line(&b))?;
            }
        }
        Command::Tokens(TokensCmd::Create { app }) => {
            writeln!(
                out,
                "owner token for app {app} (shown once, only its hash is stored):"
            )?;
            writeln!(out, "{}", parse::<TokenView>(&v)?.token)?;
        }
        _ => {}
    }
    Ok(())
}
