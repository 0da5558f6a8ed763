//! The build: one upload becomes one slug. Run once per deploy, never on runners.
//!
//! Python apps (a `requirements.txt` at the root) get their requirements installed into
//! `.pier/python` inside the slug with the platform's Python, so the slug runs the same at any
//! path on any runner with that Python ([`runtime_env`] says how). Anything else is taken as
//! it is. Every app needs a `Procfile`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pier_model::platform::parse_procfile;

use crate::archive::{self, ArchiveError, Limits};

/// How builds run (the API's configuration).
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// The Python that installs requirements, and that runners run apps with.
    pub python: PathBuf,
    /// Extra arguments to `pip install` (an operator's wheel cache: `--find-links DIR`).
    pub pip_args: Vec<String>,
    /// Longest a build may take.
    pub timeout: Duration,
    /// Limits of the upload once unpacked.
    pub limits: Limits,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            python: default_python(),
            pip_args: Vec::new(),
            timeout: Duration::from_secs(600),
            limits: Limits::default(),
        }
    }
}

/// The system's Python (`/usr/bin/python3`) when there is one: it is readable by every app's
/// user, where one under a person's home directory may not be.
pub fn default_python() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        system
    } else {
        PathBuf::from("python3")
    }
}

/// Why a build failed; its output has been logged already.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("no Procfile at the root of the upload (it names the app's processes, e.g. `web: python3 app.py`)")]
    NoProcfile,
    #[error("bad Procfile: {0}")]
    BadProcfile(String),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("{0}")]
    Failed(String),
}

/// A successful build.
#[derive(Debug)]
pub struct Built {
    /// The Procfile: process type → command.
    pub processes: BTreeMap<String, String>,
    /// The slug archive (gzipped tar).
    pub slug: Vec<u8>,
}

/// Builds `upload` (a gzipped tar of the app, `upload_size` bytes) in `work` (an empty
/// directory), sending each line of output to `log`.
pub fn build(
    upload: impl std::io::Read,
    upload_size: u64,
    work: &Path,
    cfg: &BuildConfig,
    log: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    let src = work.join("app");
    std::fs::create_dir_all(&src).map_err(|source| ArchiveError::Io {
        path: src.display().to_string(),
        source,
    })?;
    let entries = archive::unpack(upload, &src, cfg.limits)?;
    log(&format!(
        "-----> Unpacked {entries} entries ({upload_size} bytes uploaded)"
    ));
    let procfile = match std::fs::read_to_string(src.join("Procfile")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BuildError::NoProcfile),
        Err(e) => return Err(BuildError::BadProcfile(e.to_string())),
    };
    let processes = parse_procfile(&procfile).map_err(BuildError::BadProcfile)?;
    log(&format!(
        "-----> Procfile declares: {}",
        processes.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    if !processes.contains_key("web") {
        log("       No web process: this app has no routed process (it serves no HTTP).");
    }
    if let Some(manifest) = crate::manifest::Manifest::read(&src)? {
        for m in &manifest.statics {
            let cc = if m.cache_control.is_empty() {
                "none".to_string()
            } else {
                m.cache_control.clone()
            };
            log(&format!(
                "-----> pier.toml: static {} -> {}/ (Cache-Control: {cc})",
                m.prefix,
                m.dir.display()
            ));
        }
        if !manifest.statics.is_empty() && !processes.contains_key("web") {
            log("       Static files are served beside web instances only: none here.");
        }
    }
    if src.join("requirements.txt").is_file() {
        log(&format!(
            "-----> Python app: installing requirements.txt with {}",
            cfg.python.display()
        ));
        let mut cmd = Command::new(&cfg.python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--no-warn-script-location", "--root-user-action=ignore"])
        .arg("--target")
        .arg(src.join(".pier/python"))
        .args(["-r", "requirements.txt"])
        .args(&cfg.pip_args)
        .current_dir(&src)
        .env("PIP_NO_CACHE_DIR", "1");
        run_logged(cmd, cfg.timeout, log)?;
    } else {
        log("-----> No requirements.txt: the app's files are used as they are");
    }
    let mut slug = Vec::new();
    archive::pack_dir(&src, &mut slug, false)?;
    log(&format!("-----> Slug packed: {} bytes", slug.len()));
    Ok(Built { processes, slug })
}

/// Runs `cmd`, logging its stdout and stderr line by line; fails on a non-zero exit or after
/// `timeout` (the process is killed).
fn run_logged(
    mut cmd: Command,
    timeout: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Failed(format!("cannot run {program}: {e}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => log(&format!("       {line}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BuildError::Failed(format!(
                    "build timed out after {timeout:?}"
                )));
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::Failed(format!("waiting for {program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(format!("pip install failed ({status})")))
    }
}

/// The environment an unpacked slug at `dir` runs with, beside `PORT` and the config vars.
pub fn runtime_env(dir: &Path) -> Vec<(String, String)> {
    let mut path = String::from("/usr/local/bin:/usr/bin:/bin");
    let mut env = vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())];
    let py = dir.join(".pier/python");
    if py.is_dir() {
        env.push(("PYTHONPATH".into(), py.display().to_string()));
        path = format!("{}:{path}", py.join("bin").display());
    }
    // The slug is read-only to the app: no .pyc files next to the sources.
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    env.push(("PATH".into(), path));
    env
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn build_bytes(
        upload: &[u8],
        work: &Path,
        cfg: &BuildConfig,
        log: &mut dyn FnMut(&str),
    ) -> Result<Built, BuildError> {
        build(upload, upload.len() as u64, work, cfg, log)
    }

    fn upload(files: &[(&str, &str)]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let mut out = Vec::new();
        archive::pack_dir(dir.path(), &mut out, true).unwrap();
        out
    }

    #[test]
    fn plain_app_builds_and_missing_or_bad_procfiles_fail() {
        let work = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let b = build_bytes(
            &upload(&[
                ("Procfile", "web: python3 app.py\n"),
                ("app.py", "print(1)"),
            ]),
            work.path(),
            &BuildConfig::default(),
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert_eq!(b.processes["web"], "python3 app.py");
        assert!(
            lines.iter().any(|l| l.contains("No requirements.txt")),
            "{lines:?}"
        );

        let work = tempfile::tempdir().unwrap();
        let r = build_bytes(
            &upload(&[("app.py", "")]),
            work.path(),
            &BuildConfig::default(),
            &mut |_| {},
        );
        assert!(matches!(r, Err(BuildError::NoProcfile)), "{r:?}");
        let work = tempfile::tempdir().unwrap();
        let r = build_bytes(
            &upload(&[("Procfile", "web python3")]),
            work.path(),
            &BuildConfig::default(),
            &mut |_| {},
        );
        assert!(matches!(r, Err(BuildError::BadProcfile(_))), "{r:?}");
    }

    #[test]
    fn pier_toml_is_checked_and_its_mounts_printed() {
        let work = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        build_bytes(
            &upload(&[
                ("Procfile", "web: python3 app.py\n"),
                ("pier.toml", "[static]\n\"/static\" = \"public/css\"\n"),
                ("public/css/site.css", "body{}"),
            ]),
            work.path(),
            &BuildConfig::default(),
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert!(
            lines.contains(
                &"-----> pier.toml: static /static -> public/css/ (Cache-Control: public, max-age=3600)"
                    .to_string()
            ),
            "{lines:?}"
        );
        for (toml, why) in [
            (
                "[static]\n\"/static\" = \"missing\"\n",
                "static.\"/static\": the directory missing/ is not in the app",
            ),
            (
                "[static]\n\"/static\" = \"../x\"\n",
                "climbs out of the app",
            ),
            ("[static\n", "pier.toml: line 1: "),
        ] {
            let work = tempfile::tempdir().unwrap();
            let r = build_bytes(
                &upload(&[("Procfile", "web: x\n"), ("pier.toml", toml)]),
                work.path(),
                &BuildConfig::default(),
                &mut |_| {},
            );
            assert!(
                matches!(r, Err(BuildError::Manifest(ref e)) if e.to_string().contains(why)),
                "{toml}: {r:?}"
            );
        }
    }

    #[test]
    fn failing_pip_fails_the_build_with_its_output() {
        let work = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let cfg = BuildConfig {
            // Offline: the package cannot be found, as a typo'd requirement cannot.
            pip_args: vec!["--no-index".into()],
            ..BuildConfig::default()
        };
        let r = build_bytes(
            &upload(&[
                ("Procfile", "web: x"),
                ("requirements.txt", "no-such-package-pier==1.0\n"),
            ]),
            work.path(),
            &cfg,
            &mut |l| lines.push(l.to_string()),
        );
        assert!(
            matches!(r, Err(BuildError::Failed(ref m)) if m.contains("pip install failed")),
            "{r:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("no-such-package-pier")),
            "{lines:?}"
        );
    }
}
