//! Loading the routes file into a table, and swapping it in on SIGHUP or when the file (or a
//! file it names: certificates, static bodies, maintenance pages) changes; reloading the default
//! TLS certificate on SIGHUP or when its files change.
//!
//! A reload builds a complete new snapshot off to the side and installs it with one store into
//! the `ArcSwap`; requests already routed keep the `Arc<App>` they hold, so in-flight and
//! keep-alive connections are unaffected. An invalid file is refused with its reasons logged,
//! and the table in use keeps serving.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pier_routes::RouteTable;

use crate::shared::Shared;

/// A table built from a routes file, and the other files it read (certificates, bodies).
pub struct Loaded {
    pub table: RouteTable,
    pub files: Vec<PathBuf>,
}

/// Reads, validates and builds the routes file at `path`. Errors are full lines:
/// `<file>: <key>: <reason>`.
pub fn load_table(path: &Path, previous: Option<&RouteTable>) -> Result<Loaded, Vec<String>> {
    let (table, files) = load(path, previous);
    table.map(|table| Loaded { table, files })
}

/// [`load_table`], and the files the routes file named whether or not the table could be built
/// (a file named before it exists is watched, so that creating it is a change).
fn load(
    path: &Path,
    previous: Option<&RouteTable>,
) -> (Result<RouteTable, Vec<String>>, Vec<PathBuf>) {
    let shown = path.display().to_string();
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let files = RefCell::new(Vec::new());
    let loader = |f: &str| -> Result<Bytes, String> {
        let file = base.join(f);
        let read = std::fs::read(&file);
        files.borrow_mut().push(file);
        read.map(Bytes::from).map_err(|e| e.to_string())
    };
    fn lines<E: std::fmt::Display>(shown: &str, errs: Vec<E>) -> Vec<String> {
        errs.into_iter().map(|e| format!("{shown}: {e}")).collect()
    }
    let table = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{shown}: (file): {e}")])
        .and_then(|text| pier_routes::file::parse(&text, &loader).map_err(|e| lines(&shown, e)))
        .and_then(|spec| RouteTable::build(&spec, previous).map_err(|e| lines(&shown, e)));
    let mut files = files.into_inner();
    files.sort();
    files.dedup();
    (table, files)
}

/// Rebuilds the table from the routes file and installs it; on failure the current table stays.
pub fn reload(shared: &Shared, why: &'static str) -> bool {
    let Some(path) = shared.config.routes_file.as_deref() else {
        return false;
    };
    let current = shared.routes.load_full();
    let (loaded, files) = load(path, Some(&current));
    shared.set_routes_files(files);
    match loaded {
        Ok(table) => {
            tracing::info!(
                why,
                domains = table.len(),
                apps = table.app_count(),
                version = table.version(),
                "routes reloaded"
            );
            shared.swap_routes(table);
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
            true
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!(why, error = %e, "routes reload refused; the previous table keeps serving");
            }
            shared.metrics.reloads.with_label_values(&["error"]).inc();
            false
        }
    }
}

/// Reads the `[tls]` certificate and key files again and serves them from the next handshake
/// on (certbot and friends replace them in place). A pair that does not load is refused with
/// its reason logged and the certificate in use keeps serving. Without TLS, nothing to do.
pub fn reload_default_cert(shared: &Shared, why: &'static str) -> bool {
    let (Some(tls), Some(resolver)) = (&shared.config.tls, &shared.tls_resolver) else {
        return false;
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: (file): {e}", p.display()));
    let loaded = read(&tls.cert_file).and_then(|cert| {
        let key = read(&tls.key_file)?;
        crate::config::certified_key(&cert, &key).map_err(|e| {
            format!(
                "{} and {}: {e}",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })
    });
    match loaded {
        Ok(key) => {
            resolver.set_default(key);
            tracing::info!(why, cert = %tls.cert_file.display(), "default certificate reloaded");
            true
        }
        Err(e) => {
            tracing::error!(why, error = %e, "default certificate reload refused; the one in use keeps serving");
            shared.metrics.reloads.with_label_values(&["error"]).inc();
            false
        }
    }
}

/// What identifies a version of a file without reading it (through symbolic links, so a
/// certbot-style `live/` link moved to a new file counts as a change).
type Fingerprint = Option<(SystemTime, u64, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn fingerprints(paths: &[PathBuf]) -> Vec<(PathBuf, Fingerprint)> {
    paths.iter().map(|p| (p.clone(), fingerprint(p))).collect()
}

fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Polls the routes file and the files it names, and reloads when one changes (polling
/// survives editors that replace a file by renaming, which inotify watches on the old inode
/// would miss). While the routes file itself is missing (being replaced), nothing is done.
pub async fn watch_file(shared: Arc<Shared>, interval: Duration) {
    let Some(path) = shared.config.routes_file.clone() else {
        return;
    };
    let watched = || {
        let mut v = vec![path.clone()];
        v.extend(shared.routes_files());
        v
    };
    let mut last = fingerprints(&watched());
    let mut tick = ticker(interval);
    loop {
        tick.tick().await;
        let now = fingerprints(&watched());
        if now == last || now[0].1.is_none() {
            continue;
        }
        reload(&shared, "file-changed");
        // The files the table now depends on: those seen before the reload keep the
        // fingerprint taken before it was read, so a change made meanwhile is not missed.
        last = watched()
            .into_iter()
            .map(|p| match now.iter().find(|(q, _)| *q == p) {
                Some((_, f)) => (p, *f),
                None => {
                    let f = fingerprint(&p);
                    (p, f)
                }
            })
            .collect();
    }
}

/// Polls the default certificate's files and reloads the pair when either changes. While one
/// of them is missing (a renewal replacing it) nothing is done; a pair that does not match yet
/// (the certificate renewed, the key not yet) is refused and tried again at the next change.
pub async fn watch_default_cert(shared: Arc<Shared>, interval: Duration) {
    let Some(tls) = &shared.config.tls else {
        return;
    };
    let files = [tls.cert_file.clone(), tls.key_file.clone()];
    let mut last = fingerprints(&files);
    let mut tick = ticker(interval);
    loop {
        tick.tick().await;
        let now = fingerprints(&files);
        if now != last && now.iter().all(|(_, f)| f.is_some()) {
            last = now;
            reload_default_cert(&shared, "file-changed");
        }
    }
}
