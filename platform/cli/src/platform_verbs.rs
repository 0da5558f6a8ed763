//! The platform's client verbs: deploy, releases, rollback, config, scale, ps, restart,
//! runners. Each calls the API and prints short text (or the API's JSON with `--json`).

use std::io::Write;
use std::time::{Duration, Instant};

use http::Method;
use pier_model::api::{
    AddonList, AddonView, AppView, BalancerList, DeployEvent, InstanceList, LogList, ReleaseList,
    RunnerList,
};
use pier_model::client::{encode_segment, ApiClient};
use pier_model::platform::{InstanceStatus, LogLine, Release, ReleaseStatus};
use serde_json::{json, Value};

use crate::cli::{check, parse, Cli, CliError, Command};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AddonsArgs {
    /// List APP's add-ons.
    pub app: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<AddonsCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AddonsCmd {
    /// Make an add-on: postgres (a database of the app's own) or redis (a user limited to the
    /// app's key prefix); sets DATABASE_URL, or REDIS_URL and REDIS_PREFIX, as a new release.
    Create {
        app: String,
        kind: String,
        #[arg(long)]
        plan: Option<String>,
    },
    /// Drop an add-on and its data (the app's name must be repeated with --confirm).
    Destroy {
        app: String,
        kind: String,
        #[arg(long)]
        confirm: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConfigArgs {
    /// Show APP's config vars.
    pub app: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<ConfigCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Set config vars: pier config set APP KEY=VALUE ...
    Set {
        app: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        vars: Vec<String>,
    },
    /// Unset config vars: pier config unset APP KEY ...
    Unset {
        app: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

/// One API call whose answer must be a success.
pub(crate) async fn call(
    client: &ApiClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CliError> {
    check(client.call(method, path, body).await?)
}

/// With `--json`, prints the API's answer and says so (the verb prints nothing else).
pub(crate) fn printed_json(cli: &Cli, v: &Value, out: &mut dyn Write) -> Result<bool, CliError> {
    if cli.json {
        writeln!(out, "{v:#}")?;
    }
    Ok(cli.json)
}

pub(crate) fn app_path(app: &str) -> String {
    format!("/v1/apps/{}", encode_segment(app))
}

fn ago(ms: u64) -> String {
    let now = pier_api::api::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn release_line(r: &Release, current: Option<u64>) -> String {
    let mark = if Some(r.version) == current { "*" } else { " " };
    let status = match r.status {
        ReleaseStatus::Pending => "pending",
        ReleaseStatus::Running => "running",
        ReleaseStatus::Failed => "failed",
    };
    let mut line = format!(
        "{mark}v{}\t{status}\t{}\t{} ago",
        r.version,
        r.description,
        ago(r.created_ms)
    );
    if let Some(why) = &r.reason {
        line.push_str(&format!("\t{why}"));
    }
    line
}

/// `2026-12-04T18:00:00.123Z app[web.1]: text`, with control characters shown escaped so a
/// line cannot move the cursor, change colours or ring the terminal.
fn log_line(l: &LogLine) -> String {
    let at = pier_registry::cert::rfc3339(i64::try_from(l.at_ms).unwrap_or(0));
    let text = escape_controls(&l.line);
    format!("{at} {}[{}]: {text}", l.source, l.process)
}

/// `s` with control characters but tab shown escaped (`\u{1b}`): text from apps and owners
/// cannot drive the terminal it is printed on.
pub(crate) fn escape_controls(s: &str) -> String {
    let mut text = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

fn instance_line(i: &InstanceStatus) -> String {
    let state = match i.state {
        pier_model::platform::InstanceState::Preparing => "preparing".to_string(),
        pier_model::platform::InstanceState::Starting => "starting".to_string(),
        pier_model::platform::InstanceState::Up => format!("up {}", ago(i.started_ms)),
        pier_model::platform::InstanceState::Crashed => {
            let next = i
                .next_try_ms
                .map(|t| {
                    let left = t.saturating_sub(pier_api::api::now_ms()) / 1000;
                    format!(", next try in {left}s")
                })
                .unwrap_or_default();
            format!(
                "crashed ({}{next})",
                i.last_exit.clone().unwrap_or_default()
            )
        }
        pier_model::platform::InstanceState::Failed => {
            format!("failed ({})", i.last_exit.clone().unwrap_or_default())
        }
        pier_model::platform::InstanceState::Stopping => "stopping".to_string(),
    };
    format!(
        "{}.{}\t{state}\t{}\t{}\tv{}\trestarts={}\tcpu={:.2}s\trss={}KiB",
        i.ptype,
        i.index,
        i.runner,
        i.address.clone().unwrap_or_else(|| "-".into()),
        i.release,
        i.restarts,
        i.cpu_s,
        i.rss_kib
    )
}

/// Runs one platform verb.
pub async fn run(cli: &Cli, client: &ApiClient, out: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Deploy { app, dir, wait } => deploy(client, app, dir, *wait, out).await,
        Command::Releases { app } => {
            let v = call(
                client,
                Method::GET,
                &format!("{}/releases", app_path(app)),
                None,
            )
            .await?;
            if printed_json(cli, &v, out)? {
                return Ok(());
            }
            let list: ReleaseList = parse(&v)?;
            for r in &list.releases {
                writeln!(out, "{}", release_line(r, list.current))?;
            }
            Ok(())
        }
        Command::Rollback { app, version } => {
            let body = match version {
                Some(raw) => {
                    let n: u64 = raw.trim_start_matches('v').parse().map_err(|_| {
                        CliError::Usage(format!("{raw:?} is not a release number like 3 or v3"))
                    })?;
                    json!({ "version": n })
                }
                None => json!({}),
            };
            let v = call(
                client,
                Method::POST,
                &format!("{}/rollback", app_path(app)),
                Some(&body),
            )
            .await?;
            if !printed_json(cli, &v, out)? {
                let r: Release = parse(&v)?;
                writeln!(out, "{}: released v{} ({})", app, r.version, r.description)?;
            }
            Ok(())
        }
        Command::Config(args) => config(cli, client, args, out).await,
        Command::Scale { app, changes } => {
            let mut body = serde_json::Map::new();
            for c in changes {
                let (t, n) = c
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("{c:?} is not TYPE=N (e.g. web=3)")))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| CliError::Usage(format!("{c:?}: {n:?} is not a number")))?;
                body.insert(t.to_string(), json!(n));
            }
            let v = call(
                client,
                Method::PATCH,
                &format!("{}/formation", app_path(app)),
                Some(&Value::Object(body)),
            )
            .await?;
            print_formation(cli, &v, out)
        }
        Command::Ps { app } => {
            let v = call(
                client,
                Method::GET,
                &format!("{}/instances", app_path(app)),
                None,
            )
            .await?;
            if printed_json(cli, &v, out)? {
                return Ok(());
            }
            let list: InstanceList = parse(&v)?;
            if list.instances.is_empty() {
                writeln!(out, "{app} has no instances")?;
            }
            for i in &list.instances {
                writeln!(out, "{}", instance_line(i))?;
            }
            Ok(())
        }
        Command::Restart { app, instance } => {
            let body = match instance {
                Some(i) => json!({ "instance": i }),
                None => json!({}),
            };
            let v = call(
                client,
                Method::POST,
                &format!("{}/restart", app_path(app)),
                Some(&body),
            )
            .await?;
            if !printed_json(cli, &v, out)? {
                let what = instance.clone().unwrap_or_else(|| "every instance".into());
                writeln!(
                    out,
                    "restarting {what} of {app}: each new instance is up before the old one stops"
                )?;
            }
            Ok(())
        }
        Command::Runners => {
            let v = call(client, Method::GET, "/v1/runners", None).await?;
            if printed_json(cli, &v, out)? {
                return Ok(());
            }
            for r in parse::<RunnerList>(&v)?.runners {
                let live = if r.live { "live" } else { "dead" };
                writeln!(
                    out,
                    "{}\t{}\t{live}\theartbeat {}ms ago\t{}/{} instances\t{}\tlog lines dropped: {}",
                    r.runner.id,
                    r.runner.address,
                    r.heartbeat_age_ms,
                    r.instances,
                    r.runner.capacity,
                    r.runner.limits,
                    r.runner.log_lines_dropped
                )?;
            }
            Ok(())
        }
        Command::Balancers => {
            let v = call(client, Method::GET, "/v1/balancers", None).await?;
            if printed_json(cli, &v, out)? {
                return Ok(());
            }
            let list = parse::<BalancerList>(&v)?;
            writeln!(out, "registry at v{}", list.registry_version)?;
            for b in list.balancers {
                let s = &b.status;
                let live = if b.live { "live" } else { "silent" };
                let behind = match b.versions_behind {
                    0 => "current".to_string(),
                    n => format!("{n} behind"),
                };
                let mut flags = String::new();
                if !s.connected {
                    flags.push_str("\tregistry unreachable");
                }
                if s.held {
                    flags.push_str("\tresync held (mass drop)");
                }
                writeln!(
                    out,
                    "{}\t{live}\treported {}ms ago\ttable v{} ({behind})\t{} domains\t{} certificates\tlag {}ms\tbad entries {}\tpier {}{flags}",
                    s.id,
                    b.report_age_ms,
                    s.table_version,
                    s.domains,
                    s.certificates,
                    s.lag_ms,
                    s.bad_entries,
                    s.software,
                )?;
            }
            Ok(())
        }
        Command::Addons(args) => addons(cli, client, args, out).await,
        Command::Logs {
            app,
            num,
            tail,
            ps,
            source,
        } => {
            let mut query = format!("n={num}");
            if let Some(p) = ps {
                query.push_str(&format!("&ps={}", encode_segment(p)));
            }
            if let Some(s) = source {
                query.push_str(&format!("&source={}", encode_segment(s)));
            }
            let path = format!("{}/logs?{query}", app_path(app));
            if !tail {
                let v = call(client, Method::GET, &path, None).await?;
                if !printed_json(cli, &v, out)? {
                    for l in parse::<LogList>(&v)?.lines {
                        writeln!(out, "{}", log_line(&l))?;
                    }
                }
                return Ok(());
            }
            let mut write_err = None;
            let resp = client
                .stream_lines(
                    Method::GET,
                    &format!("{path}&tail=1"),
                    "application/json",
                    Vec::new().into(),
                    // A quiet app sends nothing for as long as it is quiet.
                    Duration::from_secs(365 * 24 * 3600),
                    &mut |line| {
                        let text = if cli.json {
                            line.to_string()
                        } else {
                            match serde_json::from_str::<LogLine>(line) {
                                Ok(l) => log_line(&l),
                                Err(_) => return,
                            }
                        };
                        if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
                            write_err.get_or_insert(e);
                        }
                    },
                )
                .await?;
            if let Some(e) = write_err {
                return Err(e.into());
            }
            check(resp).map(|_| ())
        }
        _ => Err(CliError::Usage("not a platform verb".into())),
    }
}

fn print_formation(cli: &Cli, v: &Value, out: &mut dyn Write) -> Result<(), CliError> {
    if printed_json(cli, v, out)? {
        return Ok(());
    }
    if let Some(f) = v.get("formation").and_then(Value::as_object) {
        let parts: Vec<String> = f.iter().map(|(k, n)| format!("{k}={n}")).collect();
        writeln!(out, "{}", parts.join(" "))?;
    }
    Ok(())
}

async fn addons(
    cli: &Cli,
    client: &ApiClient,
    args: &AddonsArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let print = |a: &AddonView, out: &mut dyn Write| -> Result<(), CliError> {
        let state = match a.state {
            pier_model::platform::AddonState::Ready => "ready",
            pier_model::platform::AddonState::Provisioning => "provisioning",
        };
        let vars: Vec<&str> = a.config.keys().map(String::as_str).collect();
        writeln!(
            out,
            "{}\t{}\t{state}\t{}\t{}",
            a.kind,
            a.plan,
            a.resource,
            vars.join(",")
        )?;
        Ok(())
    };
    match (&args.cmd, &args.app) {
        (Some(AddonsCmd::Create { app, kind, plan }), _) => {
            let mut body = json!({ "kind": kind });
            if let Some(p) = plan {
                body["plan"] = json!(p);
            }
            let v = call(
                client,
                Method::POST,
                &format!("{}/addons", app_path(app)),
                Some(&body),
            )
            .await?;
            if !printed_json(cli, &v, out)? {
                let a: AddonView = parse(&v)?;
                print(&a, out)?;
                let vars: Vec<&str> = a.config.keys().map(String::as_str).collect();
                writeln!(
                    out,
                    "{app}: {} set (a new release); `pier config {app}` shows the values",
                    vars.join(", ")
                )?;
            }
        }
        (Some(AddonsCmd::Destroy { app, kind, confirm }), _) => {
            let body = json!({ "confirm": confirm });
            let path = format!("{}/addons/{}", app_path(app), encode_segment(kind));
            call(client, Method::DELETE, &path, Some(&body)).await?;
            if !cli.json {
                writeln!(out, "{app}: {kind} add-on destroyed, its data dropped")?;
            }
        }
        (None, Some(app)) => {
            let v = call(
                client,
                Method::GET,
                &format!("{}/addons", app_path(app)),
                None,
            )
            .await?;
            if !printed_json(cli, &v, out)? {
                let list: AddonList = parse(&v)?;
                if list.addons.is_empty() {
                    writeln!(out, "{app} has no add-ons")?;
                }
                for a in &list.addons {
                    print(a, out)?;
                }
            }
        }
        (None, None) => {
            return Err(CliError::Usage(
                "pier addons APP | create APP postgres|redis | destroy APP KIND --confirm APP"
                    .into(),
            ))
        }
    }
    Ok(())
}

async fn config(
    cli: &Cli,
    client: &ApiClient,
    args: &ConfigArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (app, body) = match (&args.cmd, &args.app) {
        (Some(ConfigCmd::Set { app, vars }), _) => {
            let mut m = serde_json::Map::new();
            for kv in vars {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("{kv:?} is not KEY=VALUE")))?;
                m.insert(k.to_string(), json!(v));
            }
            (app, Some(Value::Object(m)))
        }
        (Some(ConfigCmd::Unset { app, keys }), _) => {
            let m = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
            (app, Some(Value::Object(m)))
        }
        (None, Some(app)) => (app, None),
        (None, None) => {
            return Err(CliError::Usage(
                "pier config APP | set APP K=V... | unset APP K...".into(),
            ))
        }
    };
    let path = format!("{}/config", app_path(app));
    let v = match &body {
        Some(b) => call(client, Method::PATCH, &path, Some(b)).await?,
        None => call(client, Method::GET, &path, None).await?,
    };
    if printed_json(cli, &v, out)? {
        return Ok(());
    }
    if let Some(r) = v.get("release").and_then(Value::as_u64) {
        writeln!(out, "{app}: released v{r}")?;
    }
    if body.is_none() {
        if let Some(c) = v.get("config").and_then(Value::as_object) {
            for (k, val) in c {
                writeln!(out, "{k}={}", val.as_str().unwrap_or_default())?;
            }
        }
    }
    Ok(())
}

/// Packs `dir`, uploads it, prints the build's output, then waits up to `wait` seconds for the
/// release to run (shared with `pier up`'s demo).
pub async fn deploy(
    client: &ApiClient,
    app: &str,
    dir: &std::path::Path,
    wait: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if !dir.join("Procfile").is_file() {
        return Err(CliError::Usage(format!(
            "{} has no Procfile: add one naming the app's processes, e.g. `web: python3 app.py`",
            dir.display()
        )));
    }
    // Packed to a temporary file and streamed from it: never whole in memory.
    let archive = tempfile::Builder::new()
        .prefix("pier-deploy-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| CliError::Failed(format!("cannot make a temporary file: {e}")))?;
    let entries =
        pier_slug::archive::pack_dir(dir, std::io::BufWriter::new(archive.as_file()), true)
            .map_err(|e| CliError::Usage(format!("cannot pack {}: {e}", dir.display())))?;
    let size = archive
        .as_file()
        .metadata()
        .map_err(|e| CliError::Failed(format!("cannot read the packed archive: {e}")))?
        .len();
    writeln!(
        out,
        "-----> Uploading {} ({entries} entries, {} KiB)",
        dir.display(),
        size.div_ceil(1024)
    )?;
    match deploy_archive(client, app, archive.path(), wait, out).await? {
        Rollout::Running | Rollout::NotWaited => Ok(()),
        Rollout::Pending { version } => Err(CliError::Failed(format!(
            "v{version} is not running after {wait}s: see `pier ps {app}`"
        ))),
    }
}

/// How a deploy's rollout stood when [`deploy_archive`] stopped watching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// The release runs.
    Running,
    /// Not waited for (a wait of 0 seconds).
    NotWaited,
    /// Still starting when the wait ended.
    Pending { version: u64 },
}

/// Uploads a packed app (a gzipped tar at `archive`), prints the build's output, then waits up
/// to `wait` seconds for the release to run: `pier deploy` and `git push` (its hook). A failed
/// build or a failed rollout is an error.
pub async fn deploy_archive(
    client: &ApiClient,
    app: &str,
    archive: &std::path::Path,
    wait: u64,
    out: &mut dyn Write,
) -> Result<Rollout, CliError> {
    // Progress on a terminal only (stderr, redrawn in place).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut shown = 0u64;
    let body = pier_model::UploadBody::file(
        archive,
        Box::new(move |sent, total| {
            let pct = (sent * 100).checked_div(total).unwrap_or(100);
            if tty && (pct != shown || sent == total) {
                shown = pct;
                eprint!("\r       {pct:>3}% of {} KiB sent", total.div_ceil(1024));
                if sent == total {
                    eprintln!();
                }
            }
        }),
    )
    .await
    .map_err(|e| CliError::Failed(format!("cannot read the packed archive: {e}")))?;
    let mut release: Option<Release> = None;
    let mut url: Option<String> = None;
    let mut failure: Option<String> = None;
    let mut write_err: Option<std::io::Error> = None;
    let resp = client
        .stream_lines(
            Method::POST,
            &format!("{}/deploys", app_path(app)),
            "application/gzip",
            body,
            Duration::from_secs(900),
            &mut |line| {
                match serde_json::from_str::<DeployEvent>(line) {
                    Ok(DeployEvent::Log { log }) => {
                        if let Err(e) = writeln!(out, "{log}").and_then(|()| out.flush()) {
                            write_err.get_or_insert(e);
                        }
                    }
                    Ok(DeployEvent::Release { release: r, url: u }) => {
                        release = Some(*r);
                        url = u;
                    }
                    Ok(DeployEvent::Error { error }) => failure = Some(error),
                    Err(_) => {} // a line a newer API added: not ours to read
                }
            },
        )
        .await?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if !resp.status.is_success() {
        check(resp)?;
    }
    if let Some(why) = failure {
        return Err(CliError::Failed(format!("build failed: {why}")));
    }
    let rel = release
        .ok_or_else(|| CliError::Failed("the API ended the deploy without a release".into()))?;
    if wait == 0 {
        writeln!(
            out,
            "{app}: released v{} (not waiting for it to run)",
            rel.version
        )?;
        return Ok(Rollout::NotWaited);
    }
    writeln!(out, "-----> Starting v{}", rel.version)?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    let path = format!("{}/releases/{}", app_path(app), rel.version);
    loop {
        let v = call(client, Method::GET, &path, None).await?;
        let r: Release = parse(&v)?;
        match r.status {
            ReleaseStatus::Running => break,
            ReleaseStatus::Failed => {
                return Err(CliError::Failed(format!(
                    "v{} failed: {}",
                    r.version,
                    r.reason.unwrap_or_default()
                )))
            }
            ReleaseStatus::Pending => {}
        }
        if Instant::now() >= deadline {
            return Ok(Rollout::Pending {
                version: rel.version,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let v = call(client, Method::GET, &app_path(app), None).await?;
    writeln!(out, "-----> v{} is running", rel.version)?;
    if !rel.processes.contains_key("web") {
        writeln!(out, "       no web process: nothing is routed")?;
    }
    let shown: AppView = parse(&v)?;
    for d in shown.domains.iter().flatten().filter(|d| d.verified) {
        writeln!(out, "       http://{}/", d.domain)?;
    }
    if let Some(url) = url.filter(|_| rel.processes.contains_key("web")) {
        writeln!(out, "       {url}")?;
    }
    Ok(Rollout::Running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_drive_the_terminal() {
        let l = LogLine {
            id: "1-0".into(),
            at_ms: 1_764_892_800_000,
            source: "app".into(),
            process: "web.1".into(),
            line: "red \u{1b}[31mtext\u{7}\rback\ttab \u{fffd}".into(),
        };
        let shown = log_line(&l);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\t'),
            "{shown:?}"
        );
        assert!(
            shown.ends_with("app[web.1]: red \\u{1b}[31mtext\\u{7}\\rback\ttab \u{fffd}"),
            "{shown}"
        );
        assert!(shown.starts_with("2025-12-05T00:00:00Z "), "{shown}");
    }
}
