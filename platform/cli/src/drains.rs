//! `pier drains`: an app's log drains, listed, added and removed through the API.

use std::io::Write;

use http::Method;
use pier_model::client::{encode_segment, ApiClient};
use pier_model::drain::{DrainList, DrainView};
use serde_json::{json, Value};

use crate::cli::{check, parse, Cli, CliError};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrainsArgs {
    /// List APP's drains: id, URL, lines delivered and dropped, last error.
    pub app: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<DrainsCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DrainsCmd {
    /// Forward APP's log lines to URL: syslog://HOST:PORT, syslog+tls://HOST:PORT (RFC 5424)
    /// or https://HOST[:PORT]/PATH (logplex batches). Adding a URL again changes nothing.
    Add { app: String, url: String },
    /// Stop forwarding to a drain (its id, from `pier drains APP`).
    #[command(alias = "rm")]
    Remove { app: String, id: String },
}

fn drains_path(app: &str) -> String {
    format!("/v1/apps/{}/drains", encode_segment(app))
}

/// `ID<TAB>URL<TAB>delivered=N<TAB>dropped=N<TAB>LAST ERROR (at TIME)` or `-`.
fn drain_line(d: &DrainView) -> String {
    let last = match (&d.last_error, d.last_error_at_ms) {
        (Some(e), Some(at)) => format!(
            "{e} (at {})",
            pier_registry::cert::rfc3339(i64::try_from(at).unwrap_or(0))
        ),
        (Some(e), None) => e.clone(),
        (None, _) => "-".into(),
    };
    format!(
        "{}\t{}\tdelivered={}\tdropped={}\t{last}",
        d.id, d.url, d.delivered, d.dropped
    )
}

pub async fn run(
    cli: &Cli,
    client: &ApiClient,
    args: &DrainsArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (method, path, body) = match (&args.cmd, &args.app) {
        (Some(DrainsCmd::Add { app, url }), _) => {
            (Method::POST, drains_path(app), Some(json!({ "url": url })))
        }
        (Some(DrainsCmd::Remove { app, id }), _) => (
            Method::DELETE,
            format!("{}/{}", drains_path(app), encode_segment(id)),
            None,
        ),
        (None, Some(app)) => (Method::GET, drains_path(app), None),
        (None, None) => {
            return Err(CliError::Usage(
                "pier drains APP | add APP URL | remove APP ID".into(),
            ))
        }
    };
    let resp = client.call(method, &path, body.as_ref()).await?;
    let created = resp.status.as_u16() == 201;
    let v: Value = check(resp)?;
    if cli.json {
        if !v.is_null() {
            writeln!(out, "{v:#}")?;
        }
        return Ok(());
    }
    match (&args.cmd, &args.app) {
        (Some(DrainsCmd::Add { app, .. }), _) => {
            let d: DrainView = parse(&v)?;
            let what = if created { "added" } else { "already there" };
            writeln!(out, "{app}: drain {} to {} {what}", d.id, d.url)?;
            // The id last, alone on its line, for scripts.
            writeln!(out, "{}", d.id)?;
        }
        (Some(DrainsCmd::Remove { app, id }), _) => writeln!(out, "{app}: drain {id} removed")?,
        (None, Some(app)) => {
            let list: DrainList = parse(&v)?;
            if list.drains.is_empty() {
                writeln!(out, "{app} has no drains")?;
            }
            for d in &list.drains {
                writeln!(out, "{}", drain_line(d))?;
            }
        }
        (None, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_lines() {
        let mut d = DrainView {
            id: "ab12".into(),
            url: "syslog://logs.example.com:514".into(),
            kind: pier_model::drain::DrainKind::Syslog,
            created_at_ms: 1,
            delivered: 7,
            dropped: 2,
            last_error: None,
            last_error_at_ms: None,
        };
        assert_eq!(
            drain_line(&d),
            "ab12\tsyslog://logs.example.com:514\tdelivered=7\tdropped=2\t-"
        );
        d.last_error = Some("cannot connect".into());
        d.last_error_at_ms = Some(1_764_892_800_000);
        assert!(drain_line(&d).ends_with("\tcannot connect (at 2025-12-05T00:00:00Z)"));
    }
}
