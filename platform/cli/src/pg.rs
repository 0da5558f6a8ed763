//! `pier pg backups`: an app's PostgreSQL backups through the API: listed, captured (waiting
//! for the capture unless `--no-wait`), downloaded (streamed, its SHA-256 checked), restored,
//! deleted, and scheduled.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Method;
use pier_model::api::{BackupList, BackupSchedule, BackupView};
use pier_model::client::{encode_segment, ApiClient};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cli::{check, parse, Cli, CliError};

#[derive(Debug, clap::Subcommand)]
pub enum PgCmd {
    /// An app's PostgreSQL backups: list, capture, download, restore, delete, schedule.
    Backups(BackupsArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupsArgs {
    /// List APP's backups: id, time, size, SHA-256, state, kind.
    pub app: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<BackupsCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupsCmd {
    /// Capture a backup of APP's database now (pg_dump; the app keeps running) and wait for it.
    Capture {
        app: String,
        /// Return once the capture has started; its id is the last line.
        #[arg(long)]
        no_wait: bool,
    },
    /// Write a backup's archive (pg_dump custom format) to stdout or FILE, checking its SHA-256.
    Download {
        app: String,
        id: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replace everything in APP's database with a backup (the app's name repeated with
    /// --confirm); its checksum is checked first.
    Restore {
        app: String,
        id: String,
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Delete a backup and its archive.
    #[command(alias = "rm")]
    Delete { app: String, id: String },
    /// Show APP's schedule, or with --at capture every day at HH:MM (UTC) and keep the newest
    /// scheduled backup of each of the last --daily days, --weekly weeks, --monthly months.
    Schedule {
        app: String,
        #[arg(long, value_name = "HH:MM")]
        at: Option<String>,
        /// Days kept (7 by default).
        #[arg(long)]
        daily: Option<u32>,
        /// Weeks kept (4 by default).
        #[arg(long)]
        weekly: Option<u32>,
        /// Months kept (12 by default).
        #[arg(long)]
        monthly: Option<u32>,
    },
    /// Stop APP's scheduled captures (its backups stay).
    Unschedule { app: String },
}

fn backups_path(app: &str) -> String {
    format!("/v1/apps/{}/backups", encode_segment(app))
}

fn schedule_path(app: &str) -> String {
    format!("/v1/apps/{}/backup-schedule", encode_segment(app))
}

/// `ID<TAB>CREATED<TAB>SIZE<TAB>SHA256<TAB>STATE<TAB>KIND[<TAB>REASON]`.
fn backup_line(b: &BackupView) -> String {
    let at = pier_registry::cert::rfc3339(i64::try_from(b.created_ms / 1000).unwrap_or(0));
    let size = b
        .size
        .map_or_else(|| "-".to_string(), |s| format!("{s} bytes"));
    let mut line = format!(
        "{}\t{at}\t{size}\t{}\t{}\t{}",
        b.id,
        b.sha256.as_deref().unwrap_or("-"),
        b.state,
        b.kind
    );
    if let Some(r) = &b.reason {
        line.push('\t');
        line.push_str(r);
    }
    line
}

fn print_json(out: &mut dyn Write, v: &Value) -> Result<(), CliError> {
    if !v.is_null() {
        writeln!(out, "{v:#}")?;
    }
    Ok(())
}

pub async fn run(
    cli: &Cli,
    client: &ApiClient,
    cmd: &PgCmd,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let PgCmd::Backups(args) = cmd;
    match (&args.cmd, &args.app) {
        (None, Some(app)) => {
            let v = check(client.call(Method::GET, &backups_path(app), None).await?)?;
            if cli.json {
                return print_json(out, &v);
            }
            let list: BackupList = parse(&v)?;
            if list.backups.is_empty() {
                writeln!(out, "{app} has no backups")?;
            }
            for b in &list.backups {
                writeln!(out, "{}", backup_line(b))?;
            }
        }
        (None, None) => {
            return Err(CliError::Usage(
                "pier pg backups APP | capture APP | download APP ID | restore APP ID --confirm APP | delete APP ID | schedule APP [--at HH:MM] | unschedule APP".into(),
            ))
        }
        (Some(BackupsCmd::Capture { app, no_wait }), _) => {
            let v = check(client.call(Method::POST, &backups_path(app), None).await?)?;
            let mut b: BackupView = parse(&v)?;
            if !no_wait {
                b = wait_for(client, app, b.id).await?;
            }
            if cli.json {
                return print_json(out, &serde_json::to_value(&b).unwrap_or_default());
            }
            match b.state.as_str() {
                "succeeded" => writeln!(
                    out,
                    "{app}: backup {} captured ({} bytes, sha256 {})",
                    b.id,
                    b.size.unwrap_or(0),
                    b.sha256.as_deref().unwrap_or("-")
                )?,
                "failed" => {
                    return Err(CliError::Failed(format!(
                        "{app}: backup {} failed: {}",
                        b.id,
                        b.reason.as_deref().unwrap_or("no reason given")
                    )))
                }
                _ => writeln!(out, "{app}: backup {} started", b.id)?,
            }
            writeln!(out, "{}", b.id)?;
        }
        (Some(BackupsCmd::Download { app, id, output }), _) => {
            download(client, app, id, output.as_deref(), out).await?;
        }
        (Some(BackupsCmd::Restore { app, id, confirm }), _) => {
            let mut body = json!({});
            if let Some(c) = confirm {
                body["confirm"] = json!(c);
            }
            // A large database takes a while: the answer comes when pg_restore is done.
            let slow = client.clone().with_timeout(Duration::from_secs(6 * 3600));
            let path = format!("{}/{}/restore", backups_path(app), encode_segment(id));
            let v = check(slow.call(Method::POST, &path, Some(&body)).await?)?;
            if cli.json {
                return print_json(out, &v);
            }
            let b: BackupView = parse(&v)?;
            writeln!(out, "{app}: backup {} restored into its database", b.id)?;
        }
        (Some(BackupsCmd::Delete { app, id }), _) => {
            let path = format!("{}/{}", backups_path(app), encode_segment(id));
            check(client.call(Method::DELETE, &path, None).await?)?;
            if !cli.json {
                writeln!(out, "{app}: backup {id} deleted")?;
            }
        }
        (
            Some(BackupsCmd::Schedule {
                app,
                at,
                daily,
                weekly,
                monthly,
            }),
            _,
        ) => {
            let v = match at {
                Some(at) => {
                    let mut body = json!({ "at": at });
                    for (k, v) in [("daily", daily), ("weekly", weekly), ("monthly", monthly)] {
                        if let Some(n) = v {
                            body[k] = json!(n);
                        }
                    }
                    check(client.call(Method::PUT, &schedule_path(app), Some(&body)).await?)?
                }
                None if daily.is_some() || weekly.is_some() || monthly.is_some() => {
                    return Err(CliError::Usage(
                        "--daily, --weekly and --monthly go with --at HH:MM".into(),
                    ))
                }
                None => check(client.call(Method::GET, &schedule_path(app), None).await?)?,
            };
            if cli.json {
                return print_json(out, &v);
            }
            let s: BackupSchedule = parse(&v)?;
            writeln!(
                out,
                "{app}: a backup every day at {} UTC; keeps {} daily, {} weekly, {} monthly",
                s.at, s.retention.daily, s.retention.weekly, s.retention.monthly
            )?;
        }
        (Some(BackupsCmd::Unschedule { app }), _) => {
            check(client.call(Method::DELETE, &schedule_path(app), None).await?)?;
            if !cli.json {
                writeln!(out, "{app}: no more scheduled backups (its backups stay)")?;
            }
        }
    }
    Ok(())
}

/// Polls the backup until its capture has ended.
async fn wait_for(client: &ApiClient, app: &str, id: u64) -> Result<BackupView, CliError> {
    let path = format!("{}/{id}", backups_path(app));
    let started = Instant::now();
    let mut every = Duration::from_millis(200);
    loop {
        let b: BackupView = parse(&check(client.call(Method::GET, &path, None).await?)?)?;
        if b.state != "running" {
            return Ok(b);
        }
        tokio::time::sleep(every).await;
        // Quick captures answer quickly; long ones are asked every 2 s.
        if started.elapsed() > Duration::from_secs(5) {
            every = Duration::from_secs(2);
        }
    }
}

/// Streams the archive to FILE (made mode 0600: it holds the app's data) or to `out`,
/// hashing it; a SHA-256 other than the one the API states is an error. FILE is opened only
/// once the API answered with the archive, and removed on failure only when it is a regular
/// file this command made.
async fn download(
    client: &ApiClient,
    app: &str,
    id: &str,
    output: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &std::path::Path| -> std::io::Result<(std::fs::File, bool)> {
        let existed = p.exists();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p)?;
        Ok((f, !existed))
    };
    let mut file: Option<(std::fs::File, bool)> = None;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let path = format!("{}/{}/download", backups_path(app), encode_segment(id));
    let result = {
        let mut sink = |chunk: &[u8]| -> std::io::Result<()> {
            hash.update(chunk);
            size += chunk.len() as u64;
            match output {
                Some(p) => {
                    if file.is_none() {
                        file = Some(open(p)?);
                    }
                    match file.as_mut() {
                        Some((f, _)) => f.write_all(chunk),
                        None => Ok(()),
                    }
                }
                None => out.write_all(chunk),
            }
        };
        client
            .download(&path, Duration::from_secs(120), &mut sink)
            .await
    };
    let made = file.as_ref().is_some_and(|(_, made)| *made);
    let remove = || {
        if let Some(p) = output.filter(|p| made && p.is_file()) {
            let _ = std::fs::remove_file(p);
        }
    };
    let (resp, headers) = match result {
        Ok(r) => r,
        Err(e) => {
            remove();
            return Err(e.into());
        }
    };
    check(resp)?;
    let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let want = headers
        .get("x-pier-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if got != want {
        remove();
        return Err(CliError::Failed(format!(
            "backup {id} of {app}: the {size} bytes received have SHA-256 {got}, not {want}"
        )));
    }
    match output {
        Some(p) => {
            let f = match file {
                Some((f, _)) => f,
                // An empty archive: nothing came to open it with.
                None => {
                    open(p)
                        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", p.display())))?
                        .0
                }
            };
            f.sync_all()?;
            eprintln!(
                "{app}: backup {id} written to {} ({size} bytes, sha256 {got})",
                p.display()
            );
        }
        None => out.flush()?,
    }
    Ok(())
}
