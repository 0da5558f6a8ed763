//! The drainer service (`pier drainer`): one instance forwards at a time, holding a lease in
//! Redis (`drainer:lease`, with its own fencing token `drainer:fence`); the others stand by and
//! take over within the lease's time when the leader goes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_model::drain::DrainPolicy;
use pier_model::net::Cidr;
use pier_store::{Lease, Store};

use crate::connect::{Connector, TlsSetupError};
use crate::forwarder::Forwarder;

#[derive(Debug, Clone)]
pub struct DrainerConfig {
    /// This drainer's name in the lease (unique per process).
    pub id: String,
    pub redis_url: String,
    pub prefix: String,
    /// Networks drains may reach although internal (the API's `--drain-allow`).
    pub allow: Vec<Cidr>,
    /// Extra CA certificates (PEM) trusted for TLS drains, beside the webpki roots.
    pub extra_ca: Option<PathBuf>,
    /// Between two lease renewals.
    pub tick: Duration,
    /// How long the lease lasts without renewal: a dead leader is replaced within it.
    pub lease_ttl: Duration,
    /// Between two reads of the drains.
    pub rescan: Duration,
    /// Longest wait between two tries of a failing drain.
    pub max_backoff: Duration,
}

impl DrainerConfig {
    pub fn new(id: &str, redis_url: &str) -> Self {
        DrainerConfig {
            id: id.to_string(),
            redis_url: redis_url.to_string(),
            prefix: "pier:".into(),
            allow: Vec::new(),
            extra_ca: None,
            tick: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            rescan: Duration::from_secs(3),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why the drainer cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DrainerError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Runs until `shutdown` completes; then stops forwarding (each drain finishes its batch) and
/// gives the lease up.
pub async fn run(
    cfg: DrainerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DrainerError> {
    let connector = Arc::new(Connector::new(
        DrainPolicy {
            allow: cfg.allow.clone(),
        },
        cfg.extra_ca.as_deref(),
    )?);
    tokio::pin!(shutdown);
    let Some(store) = Store::connect_until(&cfg.redis_url, &cfg.prefix, shutdown.as_mut()).await
    else {
        return Ok(());
    };
    let keys = store.keys().clone();
    let lease = Lease::on_keys(
        store.clone(),
        &cfg.id,
        cfg.lease_ttl,
        &keys.drainer_lease,
        &keys.drainer_fence,
    );
    let mut forwarder: Option<Forwarder> = None;
    let mut last_scan: Option<Instant> = None;
    tracing::info!(id = %cfg.id, "drainer started");
    loop {
        match lease.acquire_or_renew().await {
            Ok(Some(token)) => {
                if forwarder.as_ref().map(Forwarder::token) != Some(token) {
                    if let Some(old) = forwarder.take() {
                        old.stop().await;
                    }
                    tracing::info!(id = %cfg.id, token, "leading: forwarding the drains");
                    forwarder = Some(Forwarder::start(
                        store.clone(),
                        token,
                        connector.clone(),
                        cfg.max_backoff,
                    ));
                    last_scan = None;
                }
                if let Some(f) = forwarder.as_mut() {
                    if last_scan.is_none_or(|t| t.elapsed() >= cfg.rescan) {
                        let before = f.forwarding();
                        match f.rescan().await {
                            Ok(()) => {
                                last_scan = Some(Instant::now());
                                if f.forwarding() != before {
                                    tracing::info!(drains = f.forwarding(), "forwarding");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read the drains"),
                        }
                    }
                }
            }
            Ok(None) => {
                if let Some(f) = forwarder.take() {
                    tracing::info!(id = %cfg.id, "another drainer leads: standing by");
                    f.stop().await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease check failed (Redis unreachable?)"),
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(cfg.tick) => {}
        }
    }
    if let Some(f) = forwarder.take() {
        f.stop().await;
        let _ = lease.release().await;
    }
    tracing::info!(id = %cfg.id, "drainer stopped");
    Ok(())
}
