//! `git push` deploys, the client's side and the hooks' side.
//!
//! - `pier git remote APP`: in the git repository here, a remote (`pier`) pointing at the app's
//!   repository on the API (`<api>/git/APP.git`), and this binary as git's credential helper
//!   for that URL; `--print` only prints the URL.
//! - `pier git credential get`: the helper git runs; it answers with the token the other
//!   verbs use (`--token`, `PIER_TOKEN`, else `.pier/credentials.json`).
//! - `pier git-hook pre-receive` and `post-receive`: run by the API's git server in an app's
//!   repository during a push (the API gives them the app, its own URL and the pusher's
//!   token). `pre-receive` packs the pushed commit of `main` (or `master`) with `git archive`
//!   and deploys it as `pier deploy` does ([`crate::platform_verbs::deploy_archive`]); its
//!   output becomes the push's `remote:` lines, and a failure declines the push, so no ref
//!   moves. `post-receive` points `HEAD` at the deployed branch.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use http::Method;
use pier_model::client::ApiClient;

use crate::cli::{api_and_token, check, Cli, CliError};
use crate::platform_verbs::{app_path, deploy_archive, Rollout};

/// The branches a push deploys, in the order one is chosen when a push updates both.
const DEPLOYED: &[&str] = &["refs/heads/main", "refs/heads/master"];
/// How long a push's release is waited for when the API does not say.
const DEFAULT_WAIT: u64 = 300;
/// Most ref updates a hook reads (git sends one line each).
const MAX_UPDATES: usize = 10_000;
/// Most bytes git's credential request is read up to.
const MAX_CREDENTIAL_REQUEST: u64 = 64 << 10;

#[derive(Debug, clap::Subcommand)]
pub enum GitCmd {
    /// Point a remote of the git repository here at APP's repository (made, or its URL
    /// updated), with this binary as git's credential helper for it: `git push pier main`
    /// then deploys.
    Remote {
        /// The app whose repository the remote points at.
        app: String,
        /// The remote's name.
        #[arg(long, default_value = "pier")]
        remote: String,
        /// Only print the repository's URL.
        #[arg(long)]
        print: bool,
    },
    /// git's credential helper (git runs it): answers `get` with the token.
    #[command(hide = true)]
    Credential {
        /// get, store or erase.
        action: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum HookCmd {
    /// Deploys the pushed commit of main or master; a failure declines the push.
    PreReceive,
    /// Points HEAD at the branch deployed.
    PostReceive,
}

/// The URL of `app`'s repository on the API at `api`.
pub fn repo_url(api: &str, app: &str) -> String {
    format!("{}/git/{app}.git", api.trim_end_matches('/'))
}

/// Runs `pier git ...`.
pub async fn run(cli: &Cli, cmd: &GitCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        GitCmd::Remote { app, remote, print } => add_remote(cli, app, remote, *print, out).await,
        GitCmd::Credential { action } => credential(cli, action, out),
    }
}

async fn add_remote(
    cli: &Cli,
    app: &str,
    remote: &str,
    print: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    pier_routes::file::check_app_name(app).map_err(CliError::Usage)?;
    let (api, token) = api_and_token(cli);
    let url = repo_url(&api, app);
    if print {
        writeln!(out, "{url}")?;
        return Ok(());
    }
    if git_output(&["rev-parse", "--is-inside-work-tree"]).is_err() {
        return Err(CliError::Usage(
            "not inside a git work tree: run `git init` first (or pass --print for the URL)".into(),
        ));
    }
    // The app exists and the token may push to it, when there is a token to ask with.
    if let Some(token) = token {
        if let Ok(client) = ApiClient::new(&api, Some(token)) {
            check(client.call(Method::GET, &app_path(app), None).await?)?;
        }
    }
    let verb = if git_output(&["remote", "get-url", remote]).is_ok() {
        git_output(&["remote", "set-url", remote, &url])?;
        "updated"
    } else {
        git_output(&["remote", "add", remote, &url])?;
        "added"
    };
    // Helpers set earlier (here or globally) are reset for this URL, so git asks this one.
    let key = format!("credential.{url}.helper");
    let _ = git_output(&["config", "--local", "--unset-all", &key]);
    git_output(&["config", "--local", "--add", &key, ""])?;
    git_output(&["config", "--local", "--add", &key, &helper_command()?])?;
    writeln!(out, "remote {remote} {verb}: {url}")?;
    writeln!(
        out,
        "git push {remote} main deploys {app} (master too); git asks `pier git credential` for the token: PIER_TOKEN, else .pier/credentials.json"
    )?;
    Ok(())
}

/// `!'/path/to/pier' git credential`: this binary, whatever directory git runs it from.
fn helper_command() -> Result<String, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("cannot find this binary: {e}")))?;
    Ok(format!("!{} git credential", shell_quote(&exe)))
}

/// `path` quoted for `sh`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// git's credential protocol (gitcredentials(7)): `get` is answered with `username=pier` and
/// the token as the password; nothing is stored or erased (the token lives elsewhere).
fn credential(cli: &Cli, action: &str, out: &mut dyn Write) -> Result<(), CliError> {
    // The request is read whole (git writes it, then waits for the answer), its content unused:
    // git asks only for the URL the helper was set up for.
    let mut request = Vec::new();
    std::io::stdin()
        .take(MAX_CREDENTIAL_REQUEST)
        .read_to_end(&mut request)?;
    if action != "get" {
        return Ok(());
    }
    if let (_, Some(token)) = api_and_token(cli) {
        writeln!(out, "username=pier")?;
        writeln!(out, "password={token}")?;
    }
    Ok(())
}

/// One line git gives a hook: a ref's old and new object ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    /// `old new refname`; `None` for anything else.
    pub fn parse(line: &str) -> Option<RefUpdate> {
        let mut parts = line.split(' ');
        let (old, new, name) = (parts.next()?, parts.next()?, parts.next()?);
        let oid =
            |s: &str| (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !oid(old) || !oid(new) || !name.starts_with("refs/") {
            return None;
        }
        Some(RefUpdate {
            old: old.to_string(),
            new: new.to_string(),
            name: name.to_string(),
        })
    }

    fn is_zero(oid: &str) -> bool {
        oid.bytes().all(|b| b == b'0')
    }

    pub fn deletes(&self) -> bool {
        Self::is_zero(&self.new)
    }

    /// The ref's value before the push (`None`: it did not exist).
    fn before(&self) -> Option<&str> {
        (!Self::is_zero(&self.old)).then_some(self.old.as_str())
    }

    fn short_name(&self) -> &str {
        self.name.strip_prefix("refs/heads/").unwrap_or(&self.name)
    }
}

/// The update a push deploys: of `main`, else of `master`; deletions deploy nothing.
pub fn deployed(updates: &[RefUpdate]) -> Option<&RefUpdate> {
    DEPLOYED
        .iter()
        .find_map(|branch| updates.iter().find(|u| u.name == *branch && !u.deletes()))
}

/// Runs `pier git-hook ...` (the API's git server does, in an app's repository).
pub async fn run_hook(cli: &Cli, hook: &HookCmd, out: &mut dyn Write) -> Result<(), CliError> {
    let updates = read_updates(std::io::stdin().lock())?;
    match hook {
        HookCmd::PreReceive => pre_receive(cli, &updates, out).await,
        HookCmd::PostReceive => post_receive(&updates),
    }
}

fn read_updates(input: impl BufRead) -> Result<Vec<RefUpdate>, CliError> {
    let mut updates = Vec::new();
    for line in input.take(MAX_UPDATES as u64 * 4096).lines() {
        let line = line?;
        if updates.len() >= MAX_UPDATES {
            return Err(CliError::Failed(format!(
                "more than {MAX_UPDATES} refs in one push: push fewer at a time"
            )));
        }
        let update = RefUpdate::parse(line.trim_end()).ok_or_else(|| {
            CliError::Failed(format!("git gave the hook an unexpected line {line:?}"))
        })?;
        updates.push(update);
    }
    Ok(updates)
}

async fn pre_receive(
    cli: &Cli,
    updates: &[RefUpdate],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Only from the API: never a token found in a file near the repository.
    let app = std::env::var("PIER_GIT_APP").unwrap_or_default();
    let (Some(api), Some(token)) = (cli.api.as_ref(), cli.token.as_ref()) else {
        return Err(CliError::Usage(
            "this hook is run by the pier API's git server (it sets PIER_API_URL and PIER_TOKEN)"
                .into(),
        ));
    };
    if app.is_empty() {
        return Err(CliError::Usage(
            "this hook is run by the pier API's git server (it sets PIER_GIT_APP)".into(),
        ));
    }
    let wait = std::env::var("PIER_GIT_WAIT")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(DEFAULT_WAIT);
    let head = git_output(&["symbolic-ref", "-q", "HEAD"]).ok();
    for u in updates {
        // Pushes to an app run one after the other: one that waited may have been planned
        // against refs another one has moved since. Its ref update would fail after its deploy.
        let now = git_output(&["rev-parse", "-q", "--verify", &u.name]).ok();
        if now.as_deref() != u.before() {
            return Err(CliError::Failed(format!(
                "{} moved while this push waited for another one: fetch, then push again",
                u.short_name()
            )));
        }
        if u.deletes() && head.as_deref() == Some(u.name.as_str()) {
            return Err(CliError::Failed(format!(
                "{} is the branch {app} runs from: it cannot be deleted",
                u.short_name()
            )));
        }
    }
    let chosen = deployed(updates);
    for u in updates.iter().filter(|u| !u.deletes()) {
        if chosen.is_some_and(|c| c.name == u.name) {
            continue;
        }
        let why = if DEPLOYED.contains(&u.name.as_str()) {
            "main was pushed too, and is deployed".to_string()
        } else {
            "only main or master deploy".to_string()
        };
        writeln!(out, "-----> {}: kept, not deployed ({why})", u.name)?;
    }
    let Some(u) = chosen else {
        return Ok(());
    };
    let short = u.new.get(..7).unwrap_or(&u.new);
    writeln!(
        out,
        "-----> Deploying {} ({short}) to {app}",
        u.short_name()
    )?;
    let archive = tempfile::Builder::new()
        .prefix("pier-push-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| CliError::Failed(format!("cannot make a temporary file: {e}")))?;
    let path = archive.path().display().to_string();
    git_output(&["archive", "--format=tar.gz", "-o", &path, &u.new])?;
    let client = ApiClient::new(api, Some(token.clone()))
        .map_err(|e| CliError::Failed(format!("the API's URL: {e}")))?;
    let declined = |e: CliError| {
        CliError::Failed(format!(
            "{e}; the push is declined: {} stays where it was, and what ran before keeps running",
            u.short_name()
        ))
    };
    match deploy_archive(&client, &app, archive.path(), wait, out)
        .await
        .map_err(declined)?
    {
        Rollout::Pending { version } => writeln!(
            out,
            "-----> v{version} is still starting after {wait}s; the push is kept: see `pier ps {app}`"
        )?,
        Rollout::Running | Rollout::NotWaited => {}
    }
    Ok(())
}

fn post_receive(updates: &[RefUpdate]) -> Result<(), CliError> {
    let Some(u) = deployed(updates) else {
        return Ok(());
    };
    if git_output(&["symbolic-ref", "-q", "HEAD"]).ok().as_deref() != Some(u.name.as_str()) {
        git_output(&["symbolic-ref", "HEAD", &u.name])?;
    }
    Ok(())
}

/// `git ARGS` in the current directory, its output trimmed; its error output as the error.
fn git_output(args: &[&str]) -> Result<String, CliError> {
    let out = Command::new("git")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::Failed(format!("cannot run git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Err(CliError::Failed(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(old: char, new: char, name: &str) -> RefUpdate {
        RefUpdate {
            old: old.to_string().repeat(40),
            new: new.to_string().repeat(40),
            name: name.into(),
        }
    }

    #[test]
    fn hook_lines() {
        let line = format!("{} {} refs/heads/main", "0".repeat(40), "a".repeat(40));
        let u = RefUpdate::parse(&line).expect("a line");
        assert_eq!(u, update('0', 'a', "refs/heads/main"));
        assert_eq!(u.before(), None);
        assert!(!u.deletes());
        for bad in [
            "",
            "x y refs/heads/main",
            &format!("{} {} main", "0".repeat(40), "a".repeat(40)),
            &format!("{} {} refs/heads/a b", "0".repeat(40), "a".repeat(40)),
        ] {
            assert_eq!(RefUpdate::parse(bad), None, "{bad}");
        }
        let sha256 = format!("{} {} refs/heads/main", "1".repeat(64), "0".repeat(64));
        assert!(RefUpdate::parse(&sha256).expect("sha-256").deletes());
    }

    #[test]
    fn main_then_master_deploy_and_deletions_do_not() {
        let both = [
            update('0', 'b', "refs/heads/master"),
            update('0', 'a', "refs/heads/main"),
        ];
        assert_eq!(
            deployed(&both).map(|u| u.name.as_str()),
            Some("refs/heads/main")
        );
        let master = [
            update('1', 'b', "refs/heads/master"),
            update('0', 'c', "refs/tags/v1"),
        ];
        assert_eq!(
            deployed(&master).map(|u| u.name.as_str()),
            Some("refs/heads/master")
        );
        assert_eq!(deployed(&[update('1', '0', "refs/heads/main")]), None);
        assert_eq!(deployed(&[update('0', '1', "refs/heads/feature")]), None);
    }

    #[test]
    fn urls_and_quoting() {
        assert_eq!(
            repo_url("http://127.0.0.1:7070/", "blog"),
            "http://127.0.0.1:7070/git/blog.git"
        );
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
