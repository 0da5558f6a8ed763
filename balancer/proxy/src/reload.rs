//! Loading the routes file into a table, and swapping it in on SIGHUP or when the file changes;
//! reloading the default TLS certificate on SIGHUP.
//!
//! A reload builds a complete new snapshot off to the side and installs it with one store into
//! the `ArcSwap`; requests already routed keep the `Arc<App>` they hold, so in-flight and
//! keep-alive connections are unaffected. An invalid file is refused with its reasons logged,
//! and the table in use keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pier_routes::RouteTable;

use crate::server::Shared;

/// Reads, validates and builds the routes file at `path`. Errors are full lines:
/// `<file>: <key>: <reason>`.
pub fn load_table(path: &Path, previous: Option<&RouteTable>) -> Result<RouteTable, Vec<String>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: (file): {e}")])?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let loader = move |f: &str| -> Result<Bytes, String> {
        std::fs::read(base.join(f))
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    };
    let spec = pier_routes::file::parse(&text, &loader).map_err(|errs| {
        errs.into_iter()
            .map(|e| format!("{shown}: {e}"))
            .collect::<Vec<_>>()
    })?;
    RouteTable::build(&spec, previous)
        .map_err(|errs| errs.into_iter().map(|e| format!("{shown}: {e}")).collect())
}

/// Rebuilds the table from the routes file and installs it; on failure the current table stays.
pub fn reload(shared: &Shared, why: &'static str) -> bool {
    let Some(path) = shared.config.routes_file.as_deref() else {
        return false;
    };
    let current = shared.routes.load_full();
    match load_table(path, Some(&current)) {
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
        crate::tls::certified_key(&cert, &key).map_err(|e| {
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

/// What identifies a version of a file without reading it.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Polls the routes file and reloads when it changes (polling survives editors that replace the
/// file by renaming, which inotify watches on the old inode would miss).
pub async fn watch_file(shared: Arc<Shared>, interval: Duration) {
    let Some(path) = shared.config.routes_file.clone() else {
        return;
    };
    let mut last = fingerprint(&path);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = fingerprint(&path);
        if now != last && now.is_some() {
            last = now;
            reload(&shared, "file-changed");
        }
    }
}
