//! Deploys by `git push`, with the real `git` client against `pier api`'s git server (the real
//! `git http-backend`), on the whole platform: `pier git remote` sets a repository up, a push
//! deploys its commit and shows the build as `remote:` lines, a failed build declines the push
//! and keeps the old release serving, other owners are refused, pushes to one app run one
//! after the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Output, Platform};

/// Bounds for things that take milliseconds to a few seconds here: wide, because CI machines
/// are shared.
const SERVED_WITHIN: Duration = Duration::from_secs(30);

/// The app: it answers with its `message.txt`.
const APP_PY: &str = r#"import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
MESSAGE = open(os.path.join(HERE, "message.txt")).read().strip()


class Message(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (MESSAGE + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ["PIER_HOST"], int(os.environ["PORT"])), Message).serve_forever()
"#;

/// A git work tree of its own, with a home of its own (no user or system git config), whose
/// commands run against the test's API with `token`.
struct WorkTree {
    dir: tempfile::TempDir,
    home: PathBuf,
    api: String,
    token: String,
}

impl WorkTree {
    /// A new repository on `main` holding the app, its message `message`, committed.
    fn new(p: &Platform, home: &Path, token: &str, message: &str) -> WorkTree {
        let w = WorkTree {
            dir: tempfile::tempdir().unwrap(),
            home: home.to_path_buf(),
            api: p.api.url(),
            token: token.to_string(),
        };
        w.git(&["init", "--quiet", "--initial-branch=main"]).ok();
        w.write("Procfile", "web: python3 app.py\n");
        w.write("app.py", APP_PY);
        w.commit(message);
        w
    }

    /// A clone of the app's repository (through `pier git credential`, without a remote set
    /// up by `pier git remote`).
    fn clone_of(p: &Platform, home: &Path, token: &str, app: &str) -> WorkTree {
        let w = WorkTree {
            dir: tempfile::tempdir().unwrap(),
            home: home.to_path_buf(),
            api: p.api.url(),
            token: token.to_string(),
        };
        let url = format!("{}/git/{app}.git", w.api);
        let out = w.git(&[
            "-c",
            &format!(
                "credential.helper=!'{}' git credential",
                pier_bin().display()
            ),
            "clone",
            "--quiet",
            "--origin",
            "pier",
            &url,
            ".",
        ]);
        assert_eq!(out.code, 0, "clone failed: {out:?}");
        // From now on through the helper `pier git remote` sets up (the remote exists).
        w.pier(&["git", "remote", app]).ok();
        w
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).unwrap();
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap()
    }

    /// `message.txt` set to `message`, everything committed.
    fn commit(&self, message: &str) {
        self.write("message.txt", &format!("{message}\n"));
        self.git(&["add", "-A"]).ok();
        self.git(&["commit", "--quiet", "-m", message]).ok();
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.path())
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("PIER_API_URL", &self.api)
            .env("PIER_TOKEN", &self.token);
        cmd
    }

    fn git_command(&self, args: &[&str]) -> Command {
        self.command(Path::new("git"), args)
    }

    fn git(&self, args: &[&str]) -> Output {
        Output::of(self.git_command(args))
    }

    /// `git ARGS` with another token in PIER_TOKEN.
    fn git_as(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = self.git_command(args);
        cmd.env("PIER_TOKEN", token);
        Output::of(cmd)
    }

    fn pier(&self, args: &[&str]) -> Output {
        Output::of(self.command(&pier_bin(), args))
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// What the API's repository has for `main`, as `git ls-remote` shows it.
    fn remote_main(&self) -> String {
        let out = self.git(&["ls-remote", "pier", "refs/heads/main"]).ok();
        out.stdout.split('\t').next().unwrap_or("").to_string()
    }
}

fn pier_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pier"))
}

/// A home directory for git: who commits, nothing else.
fn git_home() -> tempfile::TempDir {
    let ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "git is not installed: apt-get install git (.ci/test does)"
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".gitconfig"),
        "[user]\n\tname = Test\n\temail = test@example.invalid\n",
    )
    .unwrap();
    home
}

async fn served(p: &Platform, app: &str, want: &str) {
    p.balancer
        .wait_served(&Platform::host(app), |b| b.trim() == want, SERVED_WITHIN)
        .await;
}

async fn body_of(p: &Platform, app: &str) -> String {
    let (status, body) = pier_testkit::http_get(p.balancer.addr(), &Platform::host(app), "/")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_push_deploys_and_a_failed_build_declines_the_push() {
    let home = git_home();
    let p = Platform::start(&["127.0.0.2"]).await;
    p.pier(&["apps", "create", "gitapp"]).ok();
    let token = p.owner_token("gitapp");
    let w = WorkTree::new(&p, home.path(), &token, "first push");

    // `pier git remote` adds the remote and the credential helper; --print only prints.
    let url = format!("{}/git/gitapp.git", p.api.url());
    let printed = w.pier(&["git", "remote", "gitapp", "--print"]).ok();
    assert_eq!(printed.stdout.trim(), url);
    assert_eq!(
        w.git(&["remote"]).ok().stdout.trim(),
        "",
        "--print changes nothing"
    );
    let added = w.pier(&["git", "remote", "gitapp"]).ok();
    assert!(added.stdout.contains(&url), "{added:?}");
    assert_eq!(
        w.git(&["remote", "get-url", "pier"]).ok().stdout.trim(),
        url
    );
    // Run again it updates the remote rather than failing.
    w.pier(&["git", "remote", "gitapp"]).ok();

    // The push deploys, the build shown as `remote:` lines.
    let push = w.git(&["push", "pier", "main"]);
    assert_eq!(push.code, 0, "push failed: {push:?}\n{}", p.logs());
    for line in [
        "remote: -----> Deploying main",
        "remote: -----> Procfile declares: web",
        "remote: -----> Released v1",
        "remote: -----> v1 is running",
        "remote:        http://gitapp.apps.test/",
    ] {
        assert!(push.stderr.contains(line), "no {line:?} in {push:?}");
    }
    served(&p, "gitapp", "first push").await;
    let first = w.head();
    assert_eq!(w.remote_main(), first);

    // Its owner clones it back, through the credential helper.
    let c = WorkTree::clone_of(&p, home.path(), &token, "gitapp");
    assert_eq!(c.read("message.txt"), "first push\n");
    assert_eq!(c.head(), first);

    // A broken requirements.txt fails the build: the push is declined, the ref stays, the
    // old release keeps serving and no release is made.
    w.write("requirements.txt", "this is not == a requirement ((\n");
    w.commit("second push");
    let push = w.git(&["push", "pier", "main"]);
    assert_ne!(push.code, 0, "a failed build was accepted: {push:?}");
    assert!(
        push.stderr
            .contains("remote: -----> Python app: installing requirements.txt"),
        "{push:?}"
    );
    assert!(push.stderr.contains("pip install failed"), "{push:?}");
    assert!(
        push.stderr.contains("pre-receive hook declined"),
        "{push:?}"
    );
    assert_eq!(w.remote_main(), first, "the ref moved");
    assert_eq!(body_of(&p, "gitapp").await, "first push");
    let releases = p.pier(&["releases", "gitapp"]).ok();
    assert!(!releases.stdout.contains("v2"), "{releases:?}");

    // A force push (the first commit amended) is allowed, and deploys.
    w.git(&["reset", "--quiet", "--hard", &first]).ok();
    w.write("message.txt", "amended push\n");
    w.git(&["commit", "--quiet", "--amend", "-am", "amended push"])
        .ok();
    let plain = w.git(&["push", "pier", "main"]);
    assert_ne!(
        plain.code, 0,
        "git itself refuses a non-fast-forward: {plain:?}"
    );
    let forced = w.git(&["push", "--force", "pier", "main"]);
    assert_eq!(
        forced.code,
        0,
        "force push refused: {forced:?}\n{}",
        p.logs()
    );
    assert!(
        forced.stderr.contains("remote: -----> v2 is running"),
        "{forced:?}"
    );
    served(&p, "gitapp", "amended push").await;
    assert_eq!(w.remote_main(), w.head());

    // Another branch is kept, not deployed.
    w.commit("feature work");
    let branch = w.git(&["push", "pier", "HEAD:refs/heads/feature"]);
    assert_eq!(branch.code, 0, "{branch:?}");
    assert!(
        branch
            .stderr
            .contains("remote: -----> refs/heads/feature: kept, not deployed"),
        "{branch:?}"
    );
    assert_eq!(body_of(&p, "gitapp").await, "amended push");
    let releases = p.pier(&["releases", "gitapp"]).ok();
    assert!(!releases.stdout.contains("v3"), "{releases:?}");
    // The clone fetches what was pushed since.
    c.git(&["fetch", "--quiet", "pier"]).ok();
    assert_eq!(
        c.git(&["rev-parse", "pier/feature"]).ok().stdout.trim(),
        w.head()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_pushes_are_refused_to_other_owners_and_run_one_after_the_other() {
    let home = git_home();
    let p = Platform::start(&["127.0.0.2"]).await;
    p.pier(&["apps", "create", "alpha"]).ok();
    p.pier(&["apps", "create", "beta"]).ok();
    let alpha = p.owner_token("alpha");
    let beta = p.owner_token("beta");
    let w = WorkTree::new(&p, home.path(), &alpha, "alpha one");
    w.pier(&["git", "remote", "alpha"]).ok();
    let push = w.git(&["push", "pier", "main"]);
    assert_eq!(push.code, 0, "push failed: {push:?}\n{}", p.logs());
    served(&p, "alpha", "alpha one").await;
    let first = w.head();

    // Another app's owner may neither push nor read; an unknown token is not let in.
    w.commit("pushed by beta's owner");
    let refused = w.git_as(&beta, &["push", "pier", "main"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("403"), "{refused:?}");
    assert!(
        refused.stderr.contains("may not act on app \"alpha\""),
        "git shows the reason: {refused:?}"
    );
    let read = w.git_as(&beta, &["ls-remote", "pier"]);
    assert_ne!(read.code, 0, "{read:?}");
    assert!(read.stderr.contains("403"), "{read:?}");
    let unknown = w.git_as("pier_not-a-token", &["ls-remote", "pier"]);
    assert_ne!(unknown.code, 0, "{unknown:?}");
    assert!(
        unknown.stderr.contains("Authentication failed"),
        "{unknown:?}"
    );
    assert_eq!(w.remote_main(), first);
    assert_eq!(body_of(&p, "alpha").await, "alpha one");

    // Two pushes at once run one after the other: the second waits, then finds main moved
    // by the first and is declined before building anything.
    let a = WorkTree::clone_of(&p, home.path(), &alpha, "alpha");
    let b = WorkTree::clone_of(&p, home.path(), &alpha, "alpha");
    a.commit("from a");
    b.commit("from b");
    let (ra, rb) = {
        let mut ca = a.git_command(&["push", "pier", "main"]);
        let mut cb = b.git_command(&["push", "pier", "main"]);
        let ta = std::thread::spawn(move || ca.output().unwrap());
        let tb = std::thread::spawn(move || cb.output().unwrap());
        (ta.join().unwrap(), tb.join().unwrap())
    };
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let (ea, eb) = (text(&ra), text(&rb));
    assert!(
        ra.status.success() != rb.status.success(),
        "exactly one push of two at once wins:\n--- a\n{ea}\n--- b\n{eb}\n{}",
        p.logs()
    );
    let (winner, loser_text, winner_message) = if ra.status.success() {
        (&a, &eb, "from a")
    } else {
        (&b, &ea, "from b")
    };
    assert!(
        loser_text.contains("remote: -----> Waiting for another push to alpha to finish"),
        "{loser_text}"
    );
    assert!(
        loser_text.contains("main moved while this push waited for another one"),
        "{loser_text}"
    );
    assert!(
        !loser_text.contains("Procfile declares"),
        "the loser built: {loser_text}"
    );
    served(&p, "alpha", winner_message).await;
    assert_eq!(w.remote_main(), winner.head());

    // Deleting the app deletes its repository.
    let repo = p.dir.path().join("git/alpha.git");
    assert!(repo.join("HEAD").is_file(), "{}", repo.display());
    p.pier(&["apps", "delete", "alpha"]).ok();
    assert!(
        !repo.exists(),
        "the deleted app's repository is still there"
    );
}
