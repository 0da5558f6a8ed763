//! Custom domains and their certificates: claims, the DNS proof, the operator's grant.
//!
//! An owner adds a name: it becomes a pending claim with a token, answered with the TXT
//! record that proves it (see [`crate::verify`]). A claim reserves nothing: several apps may
//! claim one name and the first to prove it gets it (the others' claims are dropped in the
//! same write). An app holds at most [`ApiState::max_pending_claims`] claims. The operator may
//! add a name as verified, or verify a claim without its proof (`force`). Certificates are
//! stored only for the app's verified names.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pier_model::api::{
    CertSummary, CertView, ChallengeView, DomainList, DomainView, NewCert, NewDomain, VerifyRequest,
};
use pier_registry::cert::{self, ParsedCert};
use pier_registry::model::{CertRecord, CertSource, ClaimRecord};
use pier_registry::{ClaimAdded, RegistryError};
use pier_routes::DomainPattern;

use crate::acme;
use crate::api::{existing_app, json, now_ms, parse_body, ApiState, Reply};
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::names;
use crate::verify::{self, Challenge, VerifyError};

/// Longest the DNS-target column of a domain list may take: it is information, not a gate.
const DNS_CHECK_BUDGET: Duration = Duration::from_secs(4);
/// Most names whose DNS a list looks up.
const DNS_CHECK_MAX: usize = 100;

// ------------------------------------------------------------------- views

fn verified_view(state: &ApiState, domain: &str, app: &str) -> DomainView {
    DomainView {
        domain: domain.to_string(),
        app: app.to_string(),
        verified: true,
        challenge: None,
        claim_expires_at: None,
        certificate: None,
        dns_target: state.dns_target.clone(),
        dns: None,
        cert_state: None,
    }
}

fn claim_view(state: &ApiState, domain: &str, app: &str, claim: &ClaimRecord) -> DomainView {
    let challenge = DomainPattern::parse(domain)
        .ok()
        .and_then(|p| verify::challenge_name(&p))
        .map(|name| ChallengeView {
            kind: "TXT".into(),
            name,
            value: claim.token.clone(),
        });
    DomainView {
        domain: domain.to_string(),
        app: app.to_string(),
        verified: false,
        challenge,
        claim_expires_at: state
            .claim_deadline_ms(claim.claimed_ms)
            .and_then(|ms| i64::try_from(ms).ok())
            .map(cert::rfc3339),
        certificate: None,
        dns_target: state.dns_target.clone(),
        dns: None,
        cert_state: None,
    }
}

/// A domain's certificate (`served`: the one served and who provided it) with the state of
/// the platform's issued certificate for the name.
async fn cert_view(
    state: &ApiState,
    domain: &str,
    served: Option<(&ParsedCert, CertSource)>,
) -> CertView {
    let (acme_state, error, next) = acme::view(state, domain, true).await;
    let c = served.map(|(c, _)| c);
    CertView {
        domain: domain.to_string(),
        names: c.map(|c| c.names.clone()).unwrap_or_default(),
        not_before: c.map(|c| cert::rfc3339(c.not_before_ms)),
        not_after: c.map(|c| cert::rfc3339(c.not_after_ms)),
        fingerprint_sha256: c.map(|c| c.fingerprint_sha256.clone()),
        issuer: c.map(|c| c.issuer.clone()),
        subject: c.map(|c| c.subject.clone()),
        source: served.map(|(_, s)| s.as_str().to_string()),
        state: acme_state,
        error,
        next_attempt: next
            .and_then(|ms| i64::try_from(ms).ok())
            .map(cert::rfc3339),
    }
}

/// The app's domains, verified (with their certificates when `with_certs`) and pending,
/// sorted by name.
pub(crate) async fn app_domain_views(
    state: &ApiState,
    app: &str,
    with_certs: bool,
) -> Result<Vec<DomainView>, ApiError> {
    let registry = state.registry();
    let mut views = Vec::new();
    for (d, r) in registry.app_domains(app).await?.iter() {
        if !r.verified {
            // Left by a version before claims; moved at start-up (`migrate_pending_domains`).
            continue;
        }
        let mut view = verified_view(state, d, app);
        if with_certs {
            // A stored record that no longer parses is shown as no certificate (the
            // certificate's own endpoint says why).
            view.certificate = registry
                .cert(d)
                .await?
                .and_then(|rec| cert::load_pair(&rec.cert, &rec.key).ok())
                .map(|p| CertSummary {
                    not_after: cert::rfc3339(p.not_after_ms),
                    fingerprint_sha256: p.fingerprint_sha256,
                });
        }
        views.push(view);
    }
    for (d, c) in registry.app_claims(app).await? {
        views.push(claim_view(state, &d, app, &c));
    }
    views.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(views)
}

// ------------------------------------------------------------------- checks

/// The pattern `raw` names, as anyone may refer to an existing domain by it.
fn parse_domain(raw: &str) -> Result<DomainPattern, ApiError> {
    DomainPattern::parse(raw).map_err(|e| ApiError::Unprocessable(format!("domain {raw:?}: {e}")))
}

/// The pattern a path names: one that cannot be a domain is no domain of the app (404).
fn path_domain(app: &str, raw: &str) -> Result<DomainPattern, ApiError> {
    DomainPattern::parse(raw)
        .map_err(|e| ApiError::NotFound(format!("app {app:?} has no domain {raw:?} ({e})")))
}

/// Where the app stands on `pattern`.
enum Held {
    Verified,
    Pending(ClaimRecord),
}

/// The app's hold on domain `raw`: 404 when it has none, whether the name is free or another
/// app's (the same answer, so an owner cannot tell which).
async fn own_domain(
    state: &ApiState,
    app: &str,
    raw: &str,
) -> Result<(DomainPattern, Held), ApiError> {
    let pattern = path_domain(app, raw)?;
    let key = pattern.to_string();
    let registry = state.registry();
    if let Some(rec) = registry.domain(&key).await? {
        if rec.app == app && rec.verified {
            return Ok((pattern, Held::Verified));
        }
    }
    match registry.claim(&key, app).await? {
        Some(c) => Ok((pattern, Held::Pending(c))),
        None => Err(ApiError::NotFound(format!(
            "app {app:?} has no domain {pattern}"
        ))),
    }
}

// ------------------------------------------------------------------- handlers

pub async fn list(state: &Arc<ApiState>, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    existing_app(state, app).await?;
    let mut domains = app_domain_views(state, app, false).await?;
    if let Some(target) = &state.dns_target {
        check_targets(state, target, &mut domains).await;
    }
    if state.acme.is_some() {
        for d in &mut domains {
            d.cert_state = Some(acme::view(state, &d.domain, d.verified).await.0);
        }
    }
    json(StatusCode::OK, &DomainList { domains })
}

/// Fills in where each name points (in parallel, within [`DNS_CHECK_BUDGET`]).
async fn check_targets(state: &Arc<ApiState>, target: &str, domains: &mut [DomainView]) {
    let mut set = tokio::task::JoinSet::new();
    for (i, d) in domains.iter().enumerate().take(DNS_CHECK_MAX) {
        let Some(name) = DomainPattern::parse(&d.domain)
            .ok()
            .and_then(|p| verify::probe_name(&p))
        else {
            continue;
        };
        let state = state.clone();
        let target = target.to_string();
        set.spawn(async move {
            let check = state.verifier.check_target(&name, &target).await;
            (i, check)
        });
    }
    let deadline = tokio::time::Instant::now() + DNS_CHECK_BUDGET;
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok((i, check)) = done {
            if let Some(d) = domains.get_mut(i) {
                d.dns = Some(check);
            }
        }
    }
    set.abort_all();
}

pub async fn add(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let req: NewDomain = parse_body(body)?;
    let pattern = parse_domain(&req.domain)?;
    if req.verified {
        caller.require_operator("add a domain as verified")?;
    }
    if pattern == DomainPattern::CatchAll {
        // `*` takes every unknown hostname: the operator's, and no one can prove it.
        caller.require_operator("add the catch-all domain \"*\"")?;
        if !req.verified {
            return Err(ApiError::Unprocessable(
                "the catch-all \"*\" cannot be proven by DNS: add it with \"verified\": true"
                    .into(),
            ));
        }
    } else {
        names::check_claimable(&pattern).map_err(ApiError::Unprocessable)?;
    }
    existing_app(state, app).await?;
    let key = pattern.to_string();
    let registry = state.registry();
    if req.verified {
        let granted = registry.grant_domain(&key, app, None).await?;
        let status = if granted.version.is_some() {
            tracing::info!(app, domain = %key, dropped_claims = ?granted.dropped, by = %caller, "domain added as verified");
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return json(status, &verified_view(state, &key, app));
    }
    let claim = ClaimRecord {
        token: auth::random_hex(16)?,
        claimed_ms: now_ms(),
    };
    let added = registry
        .put_claim(
            &key,
            app,
            &claim,
            state.max_pending_claims,
            state.lapsed_before_ms(),
        )
        .await
        .map_err(|e| match e {
            RegistryError::TooManyClaims { held, .. } => ApiError::Conflict(format!(
                "app {app:?} holds {held} pending domain claims, the most it may (pier api --max-pending-domains): verify or remove some first"
            )),
            e => e.into(),
        })?;
    match added {
        ClaimAdded::Added => {
            tracing::info!(app, domain = %key, by = %caller, "domain claimed, pending its DNS proof");
            json(StatusCode::CREATED, &claim_view(state, &key, app, &claim))
        }
        ClaimAdded::AlreadyVerified => json(StatusCode::OK, &verified_view(state, &key, app)),
        ClaimAdded::Existing(mut cur) => {
            if state.claim_lapsed(cur.claimed_ms) {
                // Renewed with the same token: a record already published still proves it.
                cur.claimed_ms = now_ms();
                registry.renew_claim(&key, app, &cur).await?;
                tracing::info!(app, domain = %key, by = %caller, "lapsed domain claim renewed");
            }
            json(StatusCode::OK, &claim_view(state, &key, app, &cur))
        }
    }
}

pub async fn remove(state: &ApiState, caller: &Caller, app: &str, raw: &str) -> Reply {
    caller.may_act_on(app)?;
    let (pattern, held) = own_domain(state, app, raw).await?;
    let key = pattern.to_string();
    let gone = match held {
        Held::Verified => state.registry().delete_domain(&key).await?.is_some(),
        Held::Pending(_) => state.registry().delete_claim(&key, app).await?,
    };
    if !gone {
        return Err(ApiError::NotFound(format!(
            "app {app:?} has no domain {key}"
        )));
    }
    tracing::info!(app, domain = %key, by = %caller, "domain removed");
    Ok((StatusCode::NO_CONTENT, None))
}

pub async fn verify(state: &ApiState, caller: &Caller, app: &str, raw: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let req: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        parse_body(body)?
    };
    existing_app(state, app).await?;
    let (pattern, held) = own_domain(state, app, raw).await?;
    let key = pattern.to_string();
    let claim = match held {
        Held::Verified => return json(StatusCode::OK, &verified_view(state, &key, app)),
        Held::Pending(c) => c,
    };
    let token = if req.force {
        caller.require_operator("verify a domain without its DNS proof")?;
        None
    } else {
        if state.claim_lapsed(claim.claimed_ms) {
            return Err(ApiError::VerificationFailed(format!(
                "the claim on {key} lapsed: add the domain again to renew it (the token stays {:?})",
                claim.token
            )));
        }
        let record = verify::challenge_name(&pattern).ok_or_else(|| {
            ApiError::VerificationFailed(format!("{key} cannot be proven by DNS"))
        })?;
        let challenge = Challenge {
            record,
            token: claim.token.clone(),
        };
        match state.verifier.verify(&challenge).await {
            Ok(()) => {}
            Err(VerifyError::NotProven(why)) => {
                tracing::info!(app, domain = %key, reason = %why, "domain proof not found");
                return Err(ApiError::VerificationFailed(why));
            }
            Err(VerifyError::Lookup(why)) => {
                tracing::warn!(app, domain = %key, reason = %why, "domain proof lookup failed");
                return Err(ApiError::DnsUnavailable(why));
            }
        }
        Some(claim.token.as_str())
    };
    let granted = state
        .registry()
        .grant_domain(&key, app, token)
        .await
        .map_err(|e| match e {
            RegistryError::NoClaim { .. } => ApiError::Conflict(format!(
                "the claim on {key} went away during the check (withdrawn, or another app proved the name first)"
            )),
            e => e.into(),
        })?;
    tracing::info!(
        app,
        domain = %key,
        forced = req.force,
        dropped_claims = ?granted.dropped,
        by = %caller,
        "domain verified"
    );
    json(StatusCode::OK, &verified_view(state, &key, app))
}

/// The app's verified domain `raw` (404 when it is not the app's, 409 while pending).
async fn verified_domain(state: &ApiState, app: &str, raw: &str) -> Result<String, ApiError> {
    let (pattern, held) = own_domain(state, app, raw).await?;
    let key = pattern.to_string();
    match held {
        Held::Verified => Ok(key),
        Held::Pending(_) => Err(ApiError::Conflict(format!(
            "domain {key} is not verified yet: verify it before adding a certificate"
        ))),
    }
}

pub async fn put_cert(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    raw: &str,
    body: &[u8],
) -> Reply {
    caller.may_act_on(app)?;
    let req: NewCert = parse_body(body)?;
    let key = verified_domain(state, app, raw).await?;
    check_cert_bounds(&req)?;
    let parsed = cert::parse_pair(&req.cert, &req.key)
        .map_err(|e| ApiError::Unprocessable(format!("certificate: {e}")))?;
    if !cert::covers(&parsed, &key) {
        let names = if parsed.names.is_empty() {
            "none".to_string()
        } else {
            parsed.names.join(", ")
        };
        return Err(ApiError::Unprocessable(format!(
            "certificate: it does not cover {key} (its names: {names})"
        )));
    }
    let rec = CertRecord {
        app: app.to_string(),
        cert: req.cert,
        key: req.key,
        added_ms: now_ms(),
        source: Default::default(),
    };
    // The registry checks ownership and verification again in the write itself.
    state.registry().put_cert(&key, &rec).await?;
    tracing::info!(
        app,
        domain = %key,
        fingerprint = %parsed.fingerprint_sha256,
        not_after = %cert::rfc3339(parsed.not_after_ms),
        by = %caller,
        "certificate stored"
    );
    let view = cert_view(state, &key, Some((&parsed, CertSource::Uploaded))).await;
    json(StatusCode::OK, &view)
}

/// Most certificates in a chain, and bytes of PEM, accepted.
pub const MAX_CHAIN_CERTS: usize = 10;
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
pub const MAX_KEY_BYTES: usize = 16 * 1024;

fn check_cert_bounds(req: &NewCert) -> Result<(), ApiError> {
    if req.cert.len() > MAX_CHAIN_BYTES {
        return Err(ApiError::Unprocessable(format!(
            "certificate: the chain is {} bytes of PEM, over the limit of {MAX_CHAIN_BYTES}",
            req.cert.len()
        )));
    }
    let certs = req.cert.matches("-----BEGIN CERTIFICATE-----").count();
    if certs > MAX_CHAIN_CERTS {
        return Err(ApiError::Unprocessable(format!(
            "certificate: the chain holds {certs} certificates, over the limit of {MAX_CHAIN_CERTS}"
        )));
    }
    if req.key.len() > MAX_KEY_BYTES {
        return Err(ApiError::Unprocessable(format!(
            "key: {} bytes of PEM, over the limit of {MAX_KEY_BYTES}",
            req.key.len()
        )));
    }
    Ok(())
}

pub async fn show_cert(state: &ApiState, caller: &Caller, app: &str, raw: &str) -> Reply {
    caller.may_act_on(app)?;
    let (pattern, held) = own_domain(state, app, raw).await?;
    let key = pattern.to_string();
    let rec = state.registry().cert(&key).await?.filter(|r| r.app == app);
    let Some(rec) = rec else {
        if state.acme.is_none() {
            return Err(ApiError::NotFound(format!(
                "domain {key} has no certificate"
            )));
        }
        // None served yet: where the platform's certificate stands.
        let verified = matches!(held, Held::Verified);
        let (acme_state, error, next) = acme::view(state, &key, verified).await;
        let view = CertView {
            domain: key,
            names: Vec::new(),
            not_before: None,
            not_after: None,
            fingerprint_sha256: None,
            issuer: None,
            subject: None,
            source: None,
            state: acme_state,
            error,
            next_attempt: next
                .and_then(|ms| i64::try_from(ms).ok())
                .map(cert::rfc3339),
        };
        return json(StatusCode::OK, &view);
    };
    // Stored certificates are shown as they are, expired or not.
    let parsed = cert::load_pair(&rec.cert, &rec.key)
        .map_err(|e| ApiError::Internal(format!("stored certificate of {key}: {e}")))?;
    let view = cert_view(state, &key, Some((&parsed, rec.source))).await;
    json(StatusCode::OK, &view)
}

/// Asks for the platform's certificate of a verified name to be renewed now (at most once a
/// minute per name).
pub async fn renew_cert(state: &ApiState, caller: &Caller, app: &str, raw: &str) -> Reply {
    caller.may_act_on(app)?;
    let key = verified_domain(state, app, raw).await?;
    if state.acme.is_none() {
        return Err(ApiError::Conflict(
            "certificates are not issued by this platform (pier api --acme-directory): upload one"
                .into(),
        ));
    }
    if !matches!(DomainPattern::parse(&key), Ok(DomainPattern::Exact(_))) {
        return Err(ApiError::Conflict(format!(
            "{key}: wildcard names are not issued over HTTP-01: upload a certificate"
        )));
    }
    match acme::request_renewal(state, &key).await {
        Ok(Ok(())) => {}
        Ok(Err(wait_ms)) => {
            return Err(ApiError::TooManyRequests(
                format!("a renewal of {key} was asked for less than a minute ago"),
                wait_ms.div_ceil(1000),
            ))
        }
        Err(e) => return Err(ApiError::Internal(format!("renewal of {key}: {e}"))),
    }
    tracing::info!(app, domain = %key, by = %caller, "certificate renewal asked for");
    let served = state.registry().cert(&key).await?.filter(|r| r.app == app);
    let parsed = served
        .as_ref()
        .and_then(|r| cert::load_pair(&r.cert, &r.key).ok().map(|p| (p, r.source)));
    let view = cert_view(state, &key, parsed.as_ref().map(|(p, s)| (p, *s))).await;
    json(StatusCode::ACCEPTED, &view)
}

pub async fn remove_cert(state: &ApiState, caller: &Caller, app: &str, raw: &str) -> Reply {
    caller.may_act_on(app)?;
    let (pattern, held) = own_domain(state, app, raw).await?;
    let key = pattern.to_string();
    if matches!(held, Held::Pending(_)) {
        return Err(ApiError::NotFound(format!(
            "domain {key} has no certificate"
        )));
    }
    let served = state.registry().cert(&key).await?;
    if served.is_some_and(|r| r.source == CertSource::Acme) {
        return Err(ApiError::NotFound(format!(
            "domain {key} has no uploaded certificate (the one served is issued and renewed by \
             the platform; removing the domain stops it)"
        )));
    }
    match state.registry().delete_cert(&key).await? {
        Some(_) => {
            tracing::info!(app, domain = %key, by = %caller, "certificate removed");
            Ok((StatusCode::NO_CONTENT, None))
        }
        None => Err(ApiError::NotFound(format!(
            "domain {key} has no certificate"
        ))),
    }
}
