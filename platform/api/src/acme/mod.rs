//! Certificates issued and renewed by the platform (ACME, RFC 8555) for verified custom
//! domains, with the HTTP-01 challenge answered by every balancer.
//!
//! `pier api --acme-directory URL` turns it on. One `pier api` process at a time runs the
//! orderer (a lease in Redis); every `interval` it looks at the verified names and orders, a
//! few at a time, a certificate for each that has none (or whose renewal is due, or was asked
//! for) — once the name resolves to the platform's DNS target, so that a CA's limits are not
//! spent on names that cannot validate. An order publishes its HTTP-01 challenge in the
//! registry (`acme:challenges`, a route-affecting change: every balancer answers it from its
//! table), waits for the balancers to have it, tells the CA, and stores the certificate
//! (`acme:certs`, served through `certs` unless an upload is there). A failure is kept word
//! for word and backs off (1 minute doubling to 24 hours); new orders per hour are capped.
//! Renewal follows the CA's renewal information (RFC 9773) when its directory offers it, else
//! two thirds of the lifetime, with jitter. Keys are ECDSA P-256.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use pier_registry::acme::AcmeStatus;
use pier_registry::cert;
use pier_registry::model::{CertRecord, CertSource, ChallengeRecord};
use pier_routes::DomainPattern;
use tokio::sync::Semaphore;

use crate::api::{now_ms, ApiState};

mod ca_client;

use ca_client::{with_retry_after, CaClient};

/// States an owner sees (`Cert.state`).
pub const OFF: &str = "off";
pub const WAITING_FOR_VERIFICATION: &str = "waiting for verification";
pub const WAITING_FOR_DNS: &str = "waiting for DNS";
pub const ORDERING: &str = "ordering";
pub const ISSUED: &str = "issued";
pub const FAILED: &str = "failed";

/// The first wait after a failure; it doubles with each failure in a row.
const BACKOFF_FIRST_MS: u64 = 60_000;
/// The longest wait after failures.
const BACKOFF_MAX_MS: u64 = 24 * 3_600_000;
/// How often a name waiting for its DNS is looked up again: every 5 s at first, backing off to
/// every 20 s in its first hour of waiting (so a name is issued within half a minute of being
/// pointed), then every 5 minutes (an owner's `pier certs renew` looks at once).
const DNS_RECHECK_FIRST_MS: u64 = 5_000;
const DNS_RECHECK_SOON_MS: u64 = 20_000;
const DNS_RECHECK_LATER_MS: u64 = 300_000;
const DNS_SOON_FOR_MS: u64 = 3_600_000;
/// How long the balancers are given to load a published challenge.
const PROPAGATION_WAIT: Duration = Duration::from_secs(5);
/// Most time one order may take, from the new order to the certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Renewals on demand: at most one per name in this time.
pub const RENEW_EVERY_MS: u64 = 60_000;

/// How the platform talks to its CA (`pier api --acme-*`).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// Extra roots for the CA's own HTTPS (a private CA, or pebble in tests).
    pub ca_file: Option<PathBuf>,
    /// External Account Binding: key id and the HMAC key (base64url), for CAs that need it.
    pub eab: Option<(String, Vec<u8>)>,
    /// Orders running at once.
    pub concurrency: usize,
    /// New orders started per clock hour, across the platform.
    pub orders_per_hour: u64,
    /// How often the orderer looks for work.
    pub interval: Duration,
}

impl AcmeConfig {
    pub fn new(directory: String) -> Self {
        AcmeConfig {
            directory,
            email: None,
            ca_file: None,
            eab: None,
            concurrency: 4,
            orders_per_hour: 100,
            interval: Duration::from_secs(5),
        }
    }
}

/// The orderer's state in one `pier api` process.
pub struct Acme {
    pub config: AcmeConfig,
    /// This process's name for the lease.
    holder: String,
    account: tokio::sync::Mutex<Option<Arc<Account>>>,
    /// Names being ordered now (by this process).
    in_flight: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
}

impl Acme {
    pub fn new(config: AcmeConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Acme {
            holder: format!(
                "{}-{}-{:x}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "api".into()),
                std::process::id(),
                now_ms()
            ),
            config,
            account: tokio::sync::Mutex::new(None),
            in_flight: Mutex::new(HashSet::new()),
            slots,
        }
    }

    /// The account, made (and stored in the registry) on first use.
    async fn account(&self, state: &ApiState) -> Result<Arc<Account>, String> {
        let mut cached = self.account.lock().await;
        if let Some(a) = &*cached {
            return Ok(Arc::clone(a));
        }
        let builder = || -> Result<_, String> {
            let client = CaClient::new(self.config.ca_file.as_deref())?;
            Ok(Account::builder_with_http(Box::new(client)))
        };
        let registry = state.registry();
        let account = match registry.acme_account().await.map_err(|e| e.to_string())? {
            Some(json) => {
                let creds: AccountCredentials =
                    serde_json::from_str(&json).map_err(|e| format!("stored ACME account: {e}"))?;
                builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("ACME account: {e}"))?
            }
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .config
                    .eab
                    .as_ref()
                    .map(|(kid, hmac)| ExternalAccountKey::new(kid.clone(), hmac));
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| format!("creating the ACME account: {e}"))?;
                let json = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
                let kept = registry
                    .put_acme_account(&json)
                    .await
                    .map_err(|e| e.to_string())?;
                if kept == json {
                    tracing::info!(directory = %self.config.directory, id = account.id(), "ACME account created");
                    account
                } else {
                    // Another orderer made one first: use it.
                    let creds: AccountCredentials =
                        serde_json::from_str(&kept).map_err(|e| e.to_string())?;
                    builder()?
                        .from_credentials(creds)
                        .await
                        .map_err(|e| format!("ACME account: {e}"))?
                }
            }
        };
        let account = Arc::new(account);
        *cached = Some(Arc::clone(&account));
        Ok(account)
    }
}

/// Runs the orderer until the process stops.
pub async fn run(state: Arc<ApiState>) {
    let Some(acme) = state.acme.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(acme.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lease_ms = (acme.config.interval.as_millis() as u64).saturating_mul(3) + 10_000;
        match state.registry().acme_lease(&acme.holder, lease_ms).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ACME lease: registry unreachable");
                state.registry_failed().await;
                continue;
            }
        }
        if let Err(e) = pass(&state, &acme).await {
            tracing::warn!(error = %e, "ACME pass failed");
        }
    }
}

/// One look at every verified name: starts the orders that are due.
async fn pass(state: &Arc<ApiState>, acme: &Arc<Acme>) -> Result<(), String> {
    let registry = state.registry();
    let names = registry.domain_records().await.map_err(|e| e.to_string())?;
    let statuses: HashMap<String, AcmeStatus> = registry
        .acme_statuses()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let now = now_ms();
    for (domain, rec) in names {
        if !rec.verified || !matches!(DomainPattern::parse(&domain), Ok(DomainPattern::Exact(_))) {
            continue;
        }
        let status = statuses.get(&domain).cloned().unwrap_or_default();
        if !due(&status, now) {
            continue;
        }
        {
            let mut in_flight = acme.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !in_flight.insert(domain.clone()) {
                continue;
            }
        }
        let Ok(permit) = Arc::clone(&acme.slots).acquire_owned().await else {
            return Ok(());
        };
        let (state, acme) = (Arc::clone(state), Arc::clone(acme));
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                ORDER_TIMEOUT,
                obtain(&state, &acme, &domain, &rec.app, status.clone()),
            )
            .await;
            if r.is_err() {
                let kind = if status.not_after_ms > 0 {
                    "renewal"
                } else {
                    "new"
                };
                if let Err(e) = state.registry().count_acme_result(kind, "failed").await {
                    tracing::warn!(domain, error = %e, "ACME result not counted");
                }
                let failed = failure(status, "the order took too long".into(), now_ms(), None);
                store_status(&state, &domain, &failed).await;
            }
            acme.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&domain);
            drop(permit);
        });
    }
    Ok(())
}

/// Whether a name should be ordered now.
fn due(s: &AcmeStatus, now: u64) -> bool {
    if s.renew_requested {
        return true;
    }
    if s.state == ORDERING
        && now
            < s.updated_ms
                .saturating_add(ORDER_TIMEOUT.as_millis() as u64)
    {
        // Another process's order, still running (a lease that moved).
        return false;
    }
    if s.state == ISSUED && (s.renew_at_ms == 0 || now < s.renew_at_ms) {
        return false;
    }
    // A renewal (or an order) waiting for its DNS or after a failure waits its turn.
    now >= s.next_attempt_ms
}

/// The status after a failure: the error kept, the next attempt backed off — and never before
/// the time the CA asked for (`Retry-After`, ms since the epoch), however long that is.
fn failure(mut s: AcmeStatus, error: String, now: u64, retry_after: Option<u64>) -> AcmeStatus {
    s.failures = s.failures.saturating_add(1);
    let wait = BACKOFF_FIRST_MS
        .saturating_mul(1u64 << (s.failures - 1).min(20))
        .min(BACKOFF_MAX_MS);
    s.next_attempt_ms = now.saturating_add(wait).max(retry_after.unwrap_or(0));
    s.error = Some(error);
    s.renew_requested = false;
    if s.not_after_ms == 0 || s.not_after_ms <= now {
        s.state = FAILED.into();
    } else {
        // A renewal failed: the issued certificate is still served; try again after the wait.
        s.state = ISSUED.into();
        s.renew_at_ms = s.next_attempt_ms;
    }
    s.updated_ms = now;
    s
}

async fn store_status(state: &ApiState, domain: &str, s: &AcmeStatus) {
    if let Err(e) = state.registry().put_acme_status(domain, s).await {
        tracing::warn!(domain, error = %e, "ACME status not stored");
    }
}

/// Checks the name's DNS, orders, and stores the outcome.
async fn obtain(state: &ApiState, acme: &Acme, domain: &str, app: &str, mut s: AcmeStatus) {
    let now = now_ms();
    if let Some(target) = &state.dns_target {
        let check = state.verifier.check_target(domain, target).await;
        if check.points_at_target != Some(true) {
            let found = if check.found.is_empty() {
                "nothing".to_string()
            } else {
                check.found.join(", ")
            };
            let why = match &check.error {
                Some(e) => format!("{domain} does not resolve yet: {e}"),
                None => format!("{domain} points at {found}, not at {target}"),
            };
            if s.waiting_since_ms == 0 {
                s.waiting_since_ms = now;
            }
            let previous = s.next_attempt_ms.saturating_sub(s.updated_ms);
            let wait = if now.saturating_sub(s.waiting_since_ms) < DNS_SOON_FOR_MS {
                previous
                    .saturating_mul(2)
                    .clamp(DNS_RECHECK_FIRST_MS, DNS_RECHECK_SOON_MS)
            } else {
                DNS_RECHECK_LATER_MS
            };
            s.renew_requested = false;
            if s.state != ISSUED {
                s.state = WAITING_FOR_DNS.into();
            }
            s.error = Some(why);
            s.next_attempt_ms = now.saturating_add(wait);
            s.updated_ms = now;
            store_status(state, domain, &s).await;
            return;
        }
    }
    match state
        .registry()
        .count_acme_order(now, acme.config.orders_per_hour)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            s.error = Some(format!(
                "{} new orders this hour already (--acme-orders-per-hour): waiting for the next hour",
                acme.config.orders_per_hour
            ));
            s.next_attempt_ms = (now / 3_600_000 + 1) * 3_600_000;
            if s.state != ISSUED {
                s.state = ORDERING.into();
            }
            s.updated_ms = now;
            store_status(state, domain, &s).await;
            return;
        }
        Err(e) => {
            tracing::warn!(domain, error = %e, "ACME order count: registry unreachable");
            return;
        }
    }
    s.waiting_since_ms = 0;
    if s.state != ISSUED {
        s.state = ORDERING.into();
    }
    s.updated_ms = now;
    store_status(state, domain, &s).await;
    let mut tokens = Vec::new();
    let (result, retry_after) = with_retry_after(order(state, acme, domain, &mut tokens)).await;
    for t in &tokens {
        if let Err(e) = state.registry().delete_challenge(t).await {
            tracing::warn!(domain, error = %e, "ACME challenge not withdrawn");
        }
    }
    let now = now_ms();
    let kind = if s.not_after_ms > 0 { "renewal" } else { "new" };
    let counted = match &result {
        Ok(_) => "issued",
        Err(e) if e.contains("urn:ietf:params:acme:error:rateLimited") => "rate-limited",
        Err(_) => "failed",
    };
    if let Err(e) = state.registry().count_acme_result(kind, counted).await {
        tracing::warn!(domain, error = %e, "ACME result not counted");
    }
    match result {
        Err(e) => {
            tracing::warn!(domain, app, error = %e, retry_after, "certificate order failed");
            let failed = failure(s, e, now, retry_after);
            store_status(state, domain, &failed).await;
        }
        Ok((chain, key)) => {
            let parsed = match cert::load_pair(&chain, &key) {
                Ok(p) => p,
                Err(e) => {
                    let failed = failure(s, format!("the CA's certificate: {e}"), now, None);
                    store_status(state, domain, &failed).await;
                    return;
                }
            };
            let rec = CertRecord {
                app: app.to_string(),
                cert: chain.clone(),
                key,
                added_ms: now,
                source: CertSource::Acme,
            };
            let served = match state.registry().put_issued_cert(domain, &rec).await {
                Ok(v) => v.is_some(),
                Err(e) => {
                    // The name was removed or moved while it was ordered: nothing to keep.
                    tracing::info!(domain, error = %e, "issued certificate not kept");
                    return;
                }
            };
            let not_after = u64::try_from(parsed.not_after_ms).unwrap_or(0);
            let not_before = u64::try_from(parsed.not_before_ms).unwrap_or(now);
            let renew_at = renewal_time(acme, &chain, not_before, not_after).await;
            tracing::info!(domain, app, served, not_after = %cert::rfc3339(parsed.not_after_ms), "certificate issued");
            let done = AcmeStatus {
                state: ISSUED.into(),
                error: None,
                failures: 0,
                next_attempt_ms: renew_at,
                renew_at_ms: renew_at,
                not_after_ms: not_after,
                issuer: Some(parsed.issuer.clone()),
                renew_requested: false,
                renew_requested_ms: s.renew_requested_ms,
                updated_ms: now,
                waiting_since_ms: 0,
            };
            store_status(state, domain, &done).await;
        }
    }
}

/// One order over HTTP-01: the certificate chain and its key (PEM). The tokens of the
/// challenges published are pushed into `tokens` (the caller withdraws them).
async fn order(
    state: &ApiState,
    acme: &Acme,
    domain: &str,
    tokens: &mut Vec<String>,
) -> Result<(String, String), String> {
    let account = acme.account(state).await?;
    let ids = [Identifier::Dns(domain.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(problem)?;
    let mut published = 0;
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(problem)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("the CA's authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| "the CA offers no http-01 challenge".to_string())?;
            let key_authorization = challenge.key_authorization().as_str().to_string();
            let token = challenge.token.clone();
            let v = state
                .registry()
                .put_challenge(
                    &token,
                    &ChallengeRecord {
                        domain: domain.to_string(),
                        key_authorization,
                    },
                )
                .await
                .map_err(|e| format!("publishing the challenge: {e}"))?;
            tokens.push(token);
            published = published.max(v);
            wait_for_balancers(state, published).await;
            challenge.set_ready().await.map_err(problem)?;
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await.map_err(problem)?;
    if status != OrderStatus::Ready {
        return Err(order_error(&mut order)
            .await
            .unwrap_or_else(|| format!("the order is {status:?}")));
    }
    let key = order.finalize().await.map_err(problem)?;
    let chain = order.poll_certificate(&retries).await.map_err(problem)?;
    Ok((chain, key))
}

/// What the CA said went wrong with an invalid order (the challenge's error, word for word).
async fn order_error(order: &mut instant_acme::Order) -> Option<String> {
    let mut authzs = order.authorizations();
    while let Some(Ok(authz)) = authzs.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                return Some(problem_text(p));
            }
        }
    }
    order.state().error.as_ref().map(problem_text)
}

fn problem_text(p: &instant_acme::Problem) -> String {
    match (&p.r#type, &p.detail) {
        (Some(t), Some(d)) => format!("{d} ({t})"),
        (None, Some(d)) => d.clone(),
        (Some(t), None) => t.clone(),
        (None, None) => "the CA gave no reason".into(),
    }
}

fn problem(e: instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem_text(&p),
        other => other.to_string(),
    }
}

/// Waits (bounded) until every balancer that reported lately serves registry version `v`.
async fn wait_for_balancers(state: &ApiState, v: u64) {
    let deadline = tokio::time::Instant::now() + PROPAGATION_WAIT;
    loop {
        let lagging = match state.registry().balancers().await {
            Ok((balancers, _)) => {
                let recent = now_ms().saturating_sub(60_000);
                balancers
                    .iter()
                    .filter(|b| b.at_ms >= recent && b.connected)
                    .any(|b| b.table_version < v)
            }
            Err(_) => false,
        };
        if !lagging || tokio::time::Instant::now() >= deadline {
            // With no balancer reporting, the feed's usual lag (well under a second).
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When to renew a certificate valid `not_before`..`not_after` (ms): in the CA's renewal
/// window when its directory offers renewal information (RFC 9773), else at two thirds of its
/// lifetime; a random point either way, so renewals spread out.
async fn renewal_time(acme: &Acme, chain: &str, not_before: u64, not_after: u64) -> u64 {
    if let Some(at) = ari_window(acme, chain).await {
        return at;
    }
    let life = not_after.saturating_sub(not_before);
    let at = not_before.saturating_add(life / 3 * 2);
    // Up to 1/20 of the lifetime earlier.
    let jitter = if life >= 20 {
        random_below(life / 20)
    } else {
        0
    };
    at.saturating_sub(jitter)
}

/// A random point in the CA's suggested renewal window, when it gives one.
async fn ari_window(acme: &Acme, chain: &str) -> Option<u64> {
    let account = acme.account.lock().await.clone()?;
    let der = leaf_der(chain)?;
    let der = rustls::pki_types::CertificateDer::from(der);
    let id = CertificateIdentifier::try_from(&der).ok()?;
    let (info, _) = account.renewal_info(&id).await.ok()?;
    let ms = |t: i128| u64::try_from(t / 1_000_000).ok();
    let start = ms(info.suggested_window.start.unix_timestamp_nanos())?;
    let end = ms(info.suggested_window.end.unix_timestamp_nanos())?;
    Some(start.saturating_add(random_below(end.saturating_sub(start).max(1))))
}

/// The first certificate of a PEM chain, as DER.
fn leaf_der(chain: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = chain.find("-----BEGIN CERTIFICATE-----")?;
    let rest = &chain[begin + "-----BEGIN CERTIFICATE-----".len()..];
    let end = rest.find("-----END CERTIFICATE-----")?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % n
}

/// What an owner sees of a name's issued certificate: the state, the error, the next attempt.
pub async fn view(
    state: &ApiState,
    domain: &str,
    verified: bool,
) -> (String, Option<String>, Option<u64>) {
    if state.acme.is_none() {
        return (OFF.into(), None, None);
    }
    if !matches!(DomainPattern::parse(domain), Ok(DomainPattern::Exact(_))) {
        return (
            OFF.into(),
            Some("wildcard names are not issued over HTTP-01: upload a certificate".into()),
            None,
        );
    }
    if !verified {
        return (WAITING_FOR_VERIFICATION.into(), None, None);
    }
    match state.registry().acme_status(domain).await {
        Ok(Some(s)) => {
            let next = (s.next_attempt_ms != 0).then_some(s.next_attempt_ms);
            let state = if s.renew_requested && s.state == ISSUED {
                ORDERING.to_string()
            } else {
                s.state
            };
            (state, s.error, next)
        }
        // Not looked at yet: the orderer's next pass does (within its interval).
        Ok(None) if state.dns_target.is_some() => (WAITING_FOR_DNS.into(), None, None),
        Ok(None) => (ORDERING.into(), None, None),
        Err(e) => (ORDERING.into(), Some(e.to_string()), None),
    }
}

/// Asks for a renewal of `domain` now; `Err(ms)`: one was asked for lately, try after `ms`.
pub async fn request_renewal(state: &ApiState, domain: &str) -> Result<Result<(), u64>, String> {
    let now = now_ms();
    let mut s = state
        .registry()
        .acme_status(domain)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let since = now.saturating_sub(s.renew_requested_ms);
    if s.renew_requested_ms != 0 && since < RENEW_EVERY_MS {
        return Ok(Err(RENEW_EVERY_MS - since));
    }
    s.renew_requested = true;
    s.renew_requested_ms = now;
    s.next_attempt_ms = now;
    if s.state.is_empty() {
        s.state = ORDERING.into();
    }
    state
        .registry()
        .put_acme_status(domain, &s)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Ok(()))
}
