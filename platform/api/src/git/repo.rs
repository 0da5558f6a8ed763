//! The apps' repositories: one bare repository per app, `<root>/<app>.git`, made on first use
//! with the platform's config and hooks, and the lock that makes pushes to one app run one
//! after the other.
//!
//! The hooks are the platform's: they are written by the API (again on every use, so they
//! follow the binary) and run the `pier` binary the API names in `PIER_GIT_HOOK`. A push cannot
//! change them: git never takes hooks from a pushed tree.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// How often a waiting push tries the app's lock again.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// The repositories' config: force pushes and branch deletions are allowed (the hook refuses
/// deleting the deployed branch), objects are checked as they arrive, and every ref update is
/// logged, so a commit a force push replaced can still be found.
const CONFIG: &[(&str, &str)] = &[
    ("receive.denyNonFastForwards", "false"),
    ("receive.denyDeletes", "false"),
    ("receive.fsckObjects", "true"),
    ("core.logAllRefUpdates", "always"),
    ("http.receivepack", "true"),
];

/// `pre-receive`: builds and deploys the pushed commit; a failure declines the push.
const PRE_RECEIVE: &str = r#"#!/bin/sh
# pier's hook, written by the API: the pushed commit of main (or master) is built and deployed
# before any ref moves, and a failed build or rollout declines the push.
if [ -z "$PIER_GIT_HOOK" ]; then
  echo "pushes to this repository go through the pier API (git push to /git/APP.git)" >&2
  exit 1
fi
exec "$PIER_GIT_HOOK" git-hook pre-receive
"#;

/// `post-receive`: points `HEAD` at the branch deployed, so a clone checks out what runs.
const POST_RECEIVE: &str = r#"#!/bin/sh
# pier's hook, written by the API: HEAD follows the deployed branch.
[ -n "$PIER_GIT_HOOK" ] || exit 0
exec "$PIER_GIT_HOOK" git-hook post-receive
"#;

const HOOKS: &[(&str, &str)] = &[("pre-receive", PRE_RECEIVE), ("post-receive", POST_RECEIVE)];

/// The lock file in each repository.
const LOCK_FILE: &str = "pier-push.lock";

/// The directory of the repositories.
#[derive(Debug, Clone)]
pub struct Repos {
    root: PathBuf,
}

impl Repos {
    /// The repositories in `dir`, made if missing and private to the platform's user (apps'
    /// users must not read other apps' code).
    pub fn open(dir: &Path) -> std::io::Result<Repos> {
        fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        // http-backend is given it as GIT_PROJECT_ROOT from any working directory.
        let root = fs::canonicalize(dir)?;
        Ok(Repos { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `app`'s repository is (an app name is one DNS label: it cannot climb out).
    pub fn path(&self, app: &str) -> PathBuf {
        self.root.join(format!("{app}.git"))
    }

    /// `app`'s repository, made (empty, `HEAD` at `main`) if it does not exist yet, with the
    /// platform's hooks in place. Blocking.
    pub fn ensure(&self, git: &Path, app: &str) -> Result<PathBuf, String> {
        let path = self.path(app);
        if !path.join("HEAD").is_file() {
            self.create(git, app, &path)?;
        }
        install_hooks(&path).map_err(|e| format!("cannot write its hooks: {e}"))?;
        Ok(path)
    }

    /// Made beside the others under a temporary name, then renamed into place: two first
    /// pushes at once make one repository.
    fn create(&self, git: &Path, app: &str, path: &Path) -> Result<(), String> {
        let tmp = self.root.join(format!(".new-{app}-{}", unique()));
        let made = (|| {
            run_git(
                git,
                &[
                    "init".as_ref(),
                    "--quiet".as_ref(),
                    "--bare".as_ref(),
                    // No templates: no sample hooks, nothing of the machine's.
                    "--template=".as_ref(),
                    "--initial-branch=main".as_ref(),
                    tmp.as_os_str(),
                ],
            )?;
            for (key, value) in CONFIG {
                let args = ["--git-dir".as_ref(), tmp.as_os_str()];
                let rest = ["config", key, value].map(OsStr::new);
                run_git(git, &[&args[..], &rest[..]].concat())?;
            }
            fs::create_dir_all(tmp.join("hooks")).map_err(|e| e.to_string())?;
            install_hooks(&tmp).map_err(|e| e.to_string())
        })();
        let placed = made.and_then(|()| match fs::rename(&tmp, path) {
            Ok(()) => Ok(()),
            // Another request made it first.
            Err(_) if path.join("HEAD").is_file() => Ok(()),
            Err(e) => Err(format!("cannot move it into place: {e}")),
        });
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        placed?;
        tracing::info!(app, path = %path.display(), "git repository made");
        Ok(())
    }

    /// Removes `app`'s repository (`false`: it had none). Blocking.
    pub fn remove(&self, app: &str) -> std::io::Result<bool> {
        let path = self.path(app);
        if !path.exists() {
            return Ok(false);
        }
        // Out of the way at once, so a new app of that name starts empty even while the old
        // files are being deleted.
        let gone = self.root.join(format!(".deleted-{app}-{}", unique()));
        fs::rename(&path, &gone)?;
        fs::remove_dir_all(&gone)?;
        Ok(true)
    }

    /// The lock pushes to the repository at `repo` take.
    pub fn push_lock(&self, repo: &Path) -> PushLock {
        PushLock {
            path: repo.join(LOCK_FILE),
        }
    }
}

/// An exclusive `flock` on a file in the repository: held for the whole of a push (the hook's
/// build and the ref update after it), by whichever API process serves it.
#[derive(Debug)]
pub struct PushLock {
    path: PathBuf,
}

/// A held lock: released when dropped.
pub type Held = Flock<fs::File>;

impl PushLock {
    /// The lock if it is free now (`None`: another push holds it).
    pub fn try_acquire(&self) -> std::io::Result<Option<Held>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(held)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)),
        }
    }

    /// Waits for the lock (the caller bounds the wait).
    pub async fn acquire(&self) -> std::io::Result<Held> {
        loop {
            if let Some(held) = self.try_acquire()? {
                return Ok(held);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

/// Writes the platform's hooks where they differ from what is there.
fn install_hooks(repo: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = repo.join("hooks");
    fs::create_dir_all(&dir)?;
    for (name, text) in HOOKS {
        let path = dir.join(name);
        if fs::read_to_string(&path).is_ok_and(|t| t == *text) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}", unique()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(0o700))?;
        drop(f);
        fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// `git ARGS`, its error output as the error.
fn run_git(git: &Path, args: &[&OsStr]) -> Result<(), String> {
    let out = Command::new(git)
        .env_clear()
        .envs(super::base_env())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e} (is git installed?)", git.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    Err(format!(
        "git {} failed ({}): {}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A name part no other process or call uses at the same time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn git_available() -> bool {
        Command::new("git").arg("--version").output().is_ok()
    }

    #[test]
    fn repositories_are_made_once_with_the_platforms_hooks_and_removed() {
        if !git_available() {
            eprintln!("git is not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(&dir.path().join("git")).unwrap();
        let path = repos.ensure(Path::new("git"), "blog").unwrap();
        assert_eq!(path, repos.root().join("blog.git"));
        assert_eq!(
            fs::read_to_string(path.join("HEAD")).unwrap(),
            "ref: refs/heads/main\n"
        );
        let hook = path.join("hooks/pre-receive");
        assert_eq!(fs::read_to_string(&hook).unwrap(), PRE_RECEIVE);
        // A hook changed on disk is put back on the next use.
        fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
        repos.ensure(Path::new("git"), "blog").unwrap();
        assert_eq!(fs::read_to_string(&hook).unwrap(), PRE_RECEIVE);
        let config = fs::read_to_string(path.join("config")).unwrap();
        assert!(config.contains("denyNonFastForwards = false"), "{config}");
        assert!(!path.join("hooks/update.sample").exists());
        assert!(repos.remove("blog").unwrap());
        assert!(!path.exists());
        assert!(!repos.remove("blog").unwrap());
        // Nothing left behind.
        assert_eq!(fs::read_dir(repos.root()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_push_lock_is_held_by_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path()).unwrap();
        let lock = repos.push_lock(dir.path());
        let held = lock.try_acquire().unwrap().unwrap();
        assert!(lock.try_acquire().unwrap().is_none());
        let waiter = tokio::spawn(async move { lock.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
