//! The handlers: what each route does with the registry, and the JSON it takes and returns.
//!
//! Every handler authenticates first (401), then checks the caller's right on the app (403),
//! then that the app exists (404): an owner learns nothing about apps that are not theirs.
//! Values are validated before anything is written (422 with the reason).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use pier_model::api::{
    AppList, AppView, BackendList, BackendView, Health, HeartbeatRequest, NewApp, NewBackend,
    NewToken, TokenView,
};
use pier_registry::model::{AppRecord, BackendRecord, TokenRecord};
use pier_registry::Registry;
use serde::Serialize;
use serde_json::Value;

use crate::auth::{self, Authenticator, Caller};
use crate::error::ApiError;
use crate::netpolicy::BackendPolicy;
use crate::platform::PlatformState;
use crate::verify::Verifier;

/// Longest backend TTL a runner may ask for: a year. A longer one is a mistake (use no TTL).
pub const MAX_TTL_S: u64 = 365 * 24 * 3600;

/// Least time between two attempts to reconnect to Redis.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// What every handler shares.
pub struct ApiState {
    /// The registry connection in use. A multiplexed Redis connection does not come back by
    /// itself once Redis has gone away, so [`ApiState::registry_failed`] swaps in a new one.
    registry: RwLock<Registry>,
    redis_url: String,
    prefix: String,
    last_reconnect: Mutex<Option<Instant>>,
    pub auth: Authenticator,
    pub verifier: Arc<dyn Verifier>,
    /// How long a pending domain claim may be proven before it lapses (`None`: for good).
    pub claim_ttl: Option<Duration>,
    /// Most pending domain claims an app may hold (`pier api --max-pending-domains`).
    pub max_pending_claims: u64,
    /// The name custom domains should point at (`pier api --dns-target`), shown to owners.
    pub dns_target: Option<String>,
    /// A request body must arrive whole within this (`pier api --body-timeout`).
    pub body_timeout: Duration,
    /// Failed token attempts per client address (`pier api --auth-failures`).
    pub auth_failures: crate::throttle::FailureLimiter,
    /// Which addresses owners may register as backends.
    pub backend_policy: BackendPolicy,
    /// Which addresses log drains may reach.
    pub drain_policy: pier_model::drain::DrainPolicy,
    /// Deploys, releases, formation and instances (`None`: this API serves the registry only).
    pub platform: Option<PlatformState>,
    /// The apps' git repositories (`None`: no `/git/` routes).
    pub git: Option<crate::git::GitState>,
    /// PostgreSQL backups (`None`: their routes answer 503).
    pub backups: Option<Arc<crate::backups::Backups>>,
    /// Usage and costs (`None`: no platform database; their routes answer 503).
    pub usage: Option<Arc<crate::usage::Usage>>,
    /// Certificates issued by the platform over ACME (`None`: off, `pier api --acme-directory`).
    pub acme: Option<Arc<crate::acme::Acme>>,
}

/// Default of [`ApiState::claim_ttl`]: three days to publish the proof.
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(72 * 3600);
/// Default of [`ApiState::max_pending_claims`].
pub const DEFAULT_MAX_PENDING_CLAIMS: u64 = 50;

impl ApiState {
    /// `registry` is connected to `redis_url` with key prefix `prefix` (reconnections use them).
    pub fn new(
        registry: Registry,
        redis_url: &str,
        prefix: &str,
        auth: Authenticator,
        verifier: Arc<dyn Verifier>,
    ) -> Self {
        ApiState {
            registry: RwLock::new(registry),
            redis_url: redis_url.to_string(),
            prefix: prefix.to_string(),
            last_reconnect: Mutex::new(None),
            auth,
            verifier,
            claim_ttl: Some(DEFAULT_CLAIM_TTL),
            max_pending_claims: DEFAULT_MAX_PENDING_CLAIMS,
            dns_target: None,
            body_timeout: crate::body::DEFAULT_BODY_TIMEOUT,
            auth_failures: crate::throttle::FailureLimiter::new(crate::throttle::DEFAULT_FAILURES),
            backend_policy: BackendPolicy::default(),
            drain_policy: Default::default(),
            platform: None,
            git: None,
            backups: None,
            usage: None,
            acme: None,
        }
    }

    /// Keeps usage in the platform database and answers it (`pier api --platform-db`).
    pub fn with_usage(mut self, usage: crate::usage::Usage) -> Self {
        self.usage = Some(Arc::new(usage));
        self
    }

    /// Makes and restores PostgreSQL add-ons' backups (`pier api --backup-store`).
    pub fn with_backups(mut self, backups: crate::backups::Backups) -> Self {
        self.backups = Some(Arc::new(backups));
        self
    }

    /// Serves the platform's routes (deploys, releases, config, formation, instances).
    pub fn with_platform(mut self, platform: PlatformState) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Serves the apps' git repositories (`/git/APP.git`).
    pub fn with_git(mut self, git: crate::git::GitState) -> Self {
        self.git = Some(git);
        self
    }

    /// Sets which addresses owners may register as backends (`pier api --backend-allow`).
    pub fn with_backend_policy(mut self, policy: BackendPolicy) -> Self {
        self.backend_policy = policy;
        self
    }

    /// Sets which addresses log drains may reach (`pier api --drain-allow`).
    pub fn with_drain_policy(mut self, policy: pier_model::drain::DrainPolicy) -> Self {
        self.drain_policy = policy;
        self
    }

    /// Sets how long a pending domain claim may be proven (`pier api --claim-ttl-hours`).
    pub fn with_claim_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// Sets the most pending domain claims an app may hold (`pier api --max-pending-domains`).
    pub fn with_max_pending_claims(mut self, max: u64) -> Self {
        self.max_pending_claims = max;
        self
    }

    /// Sets the name custom domains should point at (`pier api --dns-target`).
    /// Turns on certificates issued over ACME.
    pub fn with_acme(mut self, acme: crate::acme::Acme) -> Self {
        self.acme = Some(Arc::new(acme));
        self
    }

    pub fn with_dns_target(mut self, target: Option<String>) -> Self {
        self.dns_target = target;
        self
    }

    /// Sets the deadline of request bodies (`pier api --body-timeout`).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets how failed token attempts are limited (`pier api --auth-failures`).
    pub fn with_auth_failures(mut self, limiter: crate::throttle::FailureLimiter) -> Self {
        self.auth_failures = limiter;
        self
    }

    /// When a claim made at `claimed_ms` lapses (`None`: never).
    pub fn claim_deadline_ms(&self, claimed_ms: u64) -> Option<u64> {
        self.claim_ttl
            .map(|ttl| claimed_ms.saturating_add(duration_ms(ttl)))
    }

    /// Whether a pending claim made at `claimed_ms` has lapsed.
    pub fn claim_lapsed(&self, claimed_ms: u64) -> bool {
        self.claim_deadline_ms(claimed_ms)
            .is_some_and(|deadline| now_ms() >= deadline)
    }

    /// Claims made before this time have lapsed (0: none has).
    pub fn lapsed_before_ms(&self) -> u64 {
        self.claim_ttl
            .map_or(0, |ttl| now_ms().saturating_sub(duration_ms(ttl)))
    }

    /// The registry client (a cheap clone of the connection in use).
    pub fn registry(&self) -> Registry {
        self.registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Called when a request found Redis unavailable: reconnects, at most once per
    /// [`RECONNECT_EVERY`], so the next requests use a fresh connection once Redis is back.
    pub async fn registry_failed(&self) {
        {
            let mut last = self
                .last_reconnect
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match Registry::connect_with_prefix(&self.redis_url, &self.prefix).await {
            Ok(fresh) => {
                *self
                    .registry
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = fresh;
                tracing::info!(redis = %self.redis_url, "reconnected to the registry");
            }
            Err(e) => {
                tracing::warn!(redis = %self.redis_url, error = %e, "registry reconnect failed")
            }
        }
    }
}

/// A handler's answer: a status and a JSON body (`None`: no body, for 204).
pub type Reply = Result<(StatusCode, Option<Value>), ApiError>;

pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Reply {
    let v = serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((status, Some(v)))
}

/// Parses a request body strictly ([`crate::body::parse`]). Text that is not JSON is a 400;
/// JSON of the wrong shape (not an object, repeated keys, missing or unknown fields, wrong
/// types) is a 422, like JSON with refused values.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::body::parse(body)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------- views

fn backend_view(id: &str, rec: &BackendRecord, now: u64) -> BackendView {
    BackendView {
        id: id.to_string(),
        address: rec.address.clone(),
        server_name: rec.server_name.clone(),
        weight: rec.weight.unwrap_or(1),
        expires_at_ms: rec.expires_at_ms,
        live: rec.expires_at_ms == 0 || rec.expires_at_ms > now,
    }
}

/// Whether a stored backend address asks for TLS.
fn is_https(address: &str) -> bool {
    pier_routes::spec::parse_backend_address(address).is_ok_and(|(_, tls)| tls)
}

// ------------------------------------------------------------------- checks

fn check_app_name(name: &str) -> Result<(), ApiError> {
    pier_routes::file::check_app_name(name).map_err(ApiError::Unprocessable)
}

/// A backend address `caller` may register: `IP:port` or `https://IP:port` (with an optional
/// `server_name` for the latter), not port 0, and for owners with the IP within the backend
/// policy, whichever the scheme. Returns the server name as it is stored (normalised).
fn check_address(
    state: &ApiState,
    caller: &Caller,
    raw: &str,
    server_name: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let (addr, tls) = pier_routes::spec::parse_backend(raw, server_name).map_err(|e| {
        ApiError::Unprocessable(if e.contains("server_name") {
            e
        } else {
            format!("address {e}")
        })
    })?;
    if let (Caller::Owner(_), Some(why)) = (caller, state.backend_policy.refusal(addr)) {
        return Err(ApiError::Forbidden(why));
    }
    Ok(tls.and_then(|t| t.server_name).map(|n| n.to_string()))
}

/// Instance ids end up in `app/id` keys and URLs: keep them short and plain.
fn check_backend_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "backend id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn check_ttl(ttl_s: u64) -> Result<u64, ApiError> {
    if ttl_s == 0 || ttl_s > MAX_TTL_S {
        return Err(ApiError::Unprocessable(format!(
            "ttl_s must be between 1 and {MAX_TTL_S}"
        )));
    }
    Ok(now_ms().saturating_add(ttl_s * 1000))
}

fn check_settings(rec: &AppRecord) -> Result<(), ApiError> {
    rec.to_settings()
        .map(|_| ())
        .map_err(|e| ApiError::Unprocessable(format!("settings: {e}")))
}

pub(crate) async fn existing_app(state: &ApiState, app: &str) -> Result<AppRecord, ApiError> {
    state
        .registry()
        .app(app)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app named {app:?}")))
}

// ------------------------------------------------------------------- handlers

pub async fn healthz(state: &ApiState) -> Reply {
    let v = state.registry().version().await?;
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            registry_version: v,
        },
    )
}

pub async fn list_apps(state: &ApiState, caller: &Caller) -> Reply {
    let names = match caller {
        Caller::Operator => state.registry().app_names().await?,
        Caller::Owner(app) => vec![app.clone()],
    };
    let mut apps = Vec::with_capacity(names.len());
    for name in names {
        // An owner's app may have been deleted: it is then simply not listed.
        if let Some(settings) = state.registry().app(&name).await? {
            apps.push(AppView {
                name,
                settings,
                domains: None,
                backends: None,
            });
        }
    }
    json(StatusCode::OK, &AppList { apps })
}

pub async fn create_app(state: &ApiState, caller: &Caller, body: &[u8]) -> Reply {
    caller.require_operator("create apps")?;
    let req: NewApp = parse_body(body)?;
    check_app_name(&req.name)?;
    let settings = req.settings.unwrap_or_default();
    check_settings(&settings)?;
    // Check-then-write is not atomic: two concurrent creates of one name both succeed, the
    // last settings winning. Only the operator creates apps, so this is accepted.
    if state.registry().app(&req.name).await?.is_some() {
        return Err(ApiError::Conflict(format!("app {:?} exists", req.name)));
    }
    state.registry().put_app(&req.name, &settings).await?;
    tracing::info!(app = %req.name, by = %caller, "app created");
    json(
        StatusCode::CREATED,
        &AppView {
            name: req.name,
            settings,
            domains: None,
            backends: None,
        },
    )
}

pub async fn show_app(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let settings = existing_app(state, app).await?;
    let now = now_ms();
    let domains = crate::domains::app_domain_views(state, app, true).await?;
    let backends = state
        .registry()
        .app_backends(app)
        .await?
        .iter()
        .map(|(id, r)| backend_view(id, r, now))
        .collect();
    json(
        StatusCode::OK,
        &AppView {
            name: app.to_string(),
            settings,
            domains: Some(domains),
            backends: Some(backends),
        },
    )
}

/// PATCH: each top-level field in the body replaces the app's; `null` resets it to the default.
pub async fn update_app(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let patch: Value = parse_body(body)?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::Unprocessable(
            "body must be a JSON object of app settings".into(),
        ));
    };
    let current = existing_app(state, app).await?;
    let mut merged = match serde_json::to_value(&current) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::Internal("app record is not an object".into())),
    };
    let changed: Vec<String> = patch.keys().cloned().collect();
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    let settings: AppRecord = serde_json::from_value(Value::Object(merged))
        .map_err(|e| ApiError::Unprocessable(format!("settings: {e}")))?;
    check_settings(&settings)?;
    if settings.backend_protocol.as_deref() == Some("h2c") {
        let backends = state.registry().app_backends(app).await?;
        if let Some((id, rec)) = backends.iter().find(|(_, r)| is_https(&r.address)) {
            // The patch is valid; it conflicts with the app's backends as they are now.
            return Err(ApiError::Conflict(format!(
                "backend_protocol \"h2c\" is cleartext HTTP/2, but backend {id} is {}: remove it first",
                rec.address
            )));
        }
    }
    state.registry().put_app(app, &settings).await?;
    // What changed: the fields the patch named (their values are the app's settings, shown).
    tracing::info!(app, by = %caller, fields = ?changed, "app settings changed");
    json(
        StatusCode::OK,
        &AppView {
            name: app.to_string(),
            settings,
            domains: None,
            backends: None,
        },
    )
}

pub async fn delete_app(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    // Deleting is the operator's, like creating. The app's owner tokens go with it, so an app
    // re-created under the same name does not fall to the old owner.
    caller.require_operator("delete apps")?;
    // An add-on holds the app's data: it is destroyed on purpose, with its own confirmation.
    if let Some(p) = &state.platform {
        let addons = p.store.addons(app).await?;
        if !addons.is_empty() {
            let kinds: Vec<&str> = addons.iter().map(|a| a.kind.as_str()).collect();
            return Err(ApiError::Conflict(format!(
                "app {app:?} has add-ons ({}): destroy them first",
                kinds.join(", ")
            )));
        }
    }
    // Tokens first: if this fails the app is still there and the DELETE can be retried; the
    // other way round a retry would answer 404 and leave the old owner's tokens behind.
    let revoked = state.registry().delete_app_tokens(app).await?;
    if revoked > 0 {
        tracing::info!(app, by = %caller, revoked, "owner tokens revoked");
    }
    let deleted = state.registry().delete_app(app).await?;
    // Its releases and formation go too: the coordinator then stops its instances.
    if let Some(p) = &state.platform {
        p.store.delete_app(app).await?;
    }
    // Its repository too: an app made later under this name must not get this one's code.
    if let Some(git) = &state.git {
        git.forget(app).await;
    }
    match deleted {
        Some(_) => {
            tracing::info!(app, by = %caller, "app deleted");
            Ok((StatusCode::NO_CONTENT, None))
        }
        None => Err(ApiError::NotFound(format!("no app named {app:?}"))),
    }
}

pub async fn list_backends(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    existing_app(state, app).await?;
    let now = now_ms();
    let backends: Vec<BackendView> = state
        .registry()
        .app_backends(app)
        .await?
        .iter()
        .map(|(id, r)| backend_view(id, r, now))
        .collect();
    json(StatusCode::OK, &BackendList { backends })
}

pub async fn add_backend(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let req: NewBackend = parse_body(body)?;
    let server_name = check_address(state, caller, &req.address, req.server_name.as_deref())?;
    if is_https(&req.address) {
        // An h2c app's backends are spoken to in cleartext HTTP/2: TLS would not be used.
        let settings = existing_app(state, app).await?;
        if settings.backend_protocol.as_deref() == Some("h2c") {
            return Err(ApiError::Conflict(format!(
                "app {app:?} has backend_protocol \"h2c\" (cleartext HTTP/2): an https:// backend is not spoken to over TLS there"
            )));
        }
    }
    let id = match req.id {
        Some(id) => {
            check_backend_id(&id)?;
            id
        }
        None => auth::random_hex(6)?,
    };
    let expires_at_ms = req.ttl_s.map(check_ttl).transpose()?.unwrap_or(0);
    let weight = req
        .weight
        .map(pier_routes::spec::check_weight)
        .transpose()
        .map_err(ApiError::Unprocessable)?;
    let rec = BackendRecord {
        address: req.address,
        expires_at_ms,
        server_name,
        weight,
    };
    // The registry refuses a backend of a missing app (NoSuchApp → 404) atomically.
    state.registry().put_backend(app, &id, &rec).await?;
    tracing::info!(app, by = %caller, id, address = %rec.address, "backend registered");
    json(StatusCode::CREATED, &backend_view(&id, &rec, now_ms()))
}

pub async fn heartbeat(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
    body: &[u8],
) -> Reply {
    caller.may_act_on(app)?;
    check_backend_id(id)?;
    let req: HeartbeatRequest = parse_body(body)?;
    let expires_at_ms = check_ttl(req.ttl_s)?;
    // A heartbeat refreshes a registered backend; one that was removed must register again
    // (with its address), so a late heartbeat cannot bring back a deregistered instance.
    let Some(rec) = state
        .registry()
        .refresh_backend(app, id, expires_at_ms)
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "app {app:?} has no backend {id:?}"
        )));
    };
    json(StatusCode::OK, &backend_view(id, &rec, now_ms()))
}

pub async fn remove_backend(state: &ApiState, caller: &Caller, app: &str, id: &str) -> Reply {
    caller.may_act_on(app)?;
    match state.registry().delete_backend(app, id).await? {
        Some(_) => {
            tracing::info!(app, by = %caller, id, "backend removed");
            Ok((StatusCode::NO_CONTENT, None))
        }
        None => Err(ApiError::NotFound(format!(
            "app {app:?} has no backend {id:?}"
        ))),
    }
}

pub async fn create_token(state: &ApiState, caller: &Caller, body: &[u8]) -> Reply {
    caller.require_operator("create tokens")?;
    let req: NewToken = parse_body(body)?;
    check_app_name(&req.app)?;
    existing_app(state, &req.app).await?;
    let token = auth::new_token()?;
    let rec = TokenRecord {
        role: "owner".into(),
        app: Some(req.app.clone()),
        created_ms: now_ms(),
    };
    state
        .registry()
        .put_token(&auth::hash_token(&token), &rec)
        .await?;
    tracing::info!(app = %req.app, by = %caller, "owner token created");
    json(
        StatusCode::CREATED,
        &TokenView {
            token,
            role: rec.role,
            app: req.app,
        },
    )
}
