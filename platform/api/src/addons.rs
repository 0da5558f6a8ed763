//! Add-ons: a PostgreSQL database and a Redis of the app's own, made on the operator's servers
//! by `pier-addons`, recorded in the platform state, and given to the app as config vars (a new
//! release).

use std::collections::BTreeMap;

use http::StatusCode;
use pier_addons::postgres::Postgres;
use pier_addons::redis::SharedRedis;
use pier_addons::AddonError;
use pier_model::api::{AddonList, AddonView, DestroyAddon, NewAddon};
use pier_model::platform::{AddonRecord, AddonState};

use crate::api::{existing_app, json, now_ms, parse_body, ApiState, Reply};
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::platform::{release_with_config, PlatformState};

/// The operator's servers add-ons are made on (none: that kind is refused with the reason).
#[derive(Debug, Clone, Default)]
pub struct AddonServers {
    pub postgres: Option<Postgres>,
    pub redis: Option<SharedRedis>,
}

fn platform(state: &ApiState) -> Result<&PlatformState, ApiError> {
    state.platform.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "this API runs without the platform (no slug store configured)".into(),
        )
    })
}

fn failed(e: AddonError) -> ApiError {
    match e {
        AddonError::BadUrl(m) => ApiError::Internal(format!("add-on server configuration: {m}")),
        e => ApiError::AddonServer(e.to_string()),
    }
}

pub async fn list(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let addons = p
        .store
        .addons(app)
        .await?
        .iter()
        .map(AddonView::from)
        .collect();
    json(StatusCode::OK, &AddonList { addons })
}

/// Makes the app's add-on of a kind, or finishes making it (a create repeated after a timeout
/// finds the first one's record and credentials: never a second database). 201 when made now,
/// 200 when it was there.
pub async fn create(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    let reply = create_addon(state, caller, app, body).await;
    if let Ok((status, _)) = &reply {
        tracing::info!(app, by = %caller, status = status.as_u16(), "add-on create answered");
    }
    reply
}

async fn create_addon(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: NewAddon = parse_body(body)?;
    let plan = match (req.kind.as_str(), req.plan.as_deref()) {
        ("postgres", None | Some("standard")) => "standard",
        ("redis", None | Some("shared")) => "shared",
        ("redis", Some("dedicated")) => "dedicated",
        ("postgres" | "redis", Some(other)) => {
            return Err(ApiError::Unprocessable(format!(
                "{} has no plan {other:?}",
                req.kind
            )))
        }
        (other, _) => {
            return Err(ApiError::Unprocessable(format!(
                "no add-on kind {other:?}: postgres or redis"
            )))
        }
    };
    match req.kind.as_str() {
        "postgres" if p.addon_servers.postgres.is_none() => {
            return Err(ApiError::Unprocessable(
                "no PostgreSQL server for add-ons: the operator starts pier api with --addon-postgres URL".into(),
            ))
        }
        "redis" if plan == "shared" && p.addon_servers.redis.is_none() => {
            return Err(ApiError::Unprocessable(
                "no Redis server for add-ons: the operator starts pier api with --addon-redis URL".into(),
            ))
        }
        _ => {}
    }
    existing_app(state, app).await?;
    let fresh = AddonRecord {
        app: app.to_string(),
        kind: req.kind.clone(),
        plan: plan.to_string(),
        state: AddonState::Provisioning,
        password: auth::random_hex(24)?,
        resource: String::new(),
        config: BTreeMap::new(),
        created_ms: now_ms(),
        runner: String::new(),
    };
    let (mut rec, mine) = p.store.claim_addon(&fresh).await?;
    if rec.plan != plan {
        return Err(ApiError::Conflict(format!(
            "app {app:?} has a {} add-on on plan {:?} already: destroy it first",
            rec.kind, rec.plan
        )));
    }
    if rec.state == AddonState::Ready {
        return json(StatusCode::OK, &AddonView::from(&rec));
    }
    if rec.plan == "dedicated" {
        // Placed on a runner: nothing to undo on failure but the record (a retry finds the
        // process placed, if it got that far).
        match crate::dedicated::create(&p.store, app, &rec.password).await {
            Ok((resource, config, runner)) => {
                rec.runner = runner;
                return finish(p, app, rec, resource, config).await;
            }
            Err(e) => {
                if mine {
                    let _ = p.store.delete_addon(app, &rec.kind).await;
                }
                return Err(e);
            }
        }
    }
    let made = match rec.kind.as_str() {
        "postgres" => match &p.addon_servers.postgres {
            Some(pg) => pg.create(app, &rec.password).await.map(|a| {
                (
                    a.database,
                    BTreeMap::from([("DATABASE_URL".to_string(), a.url)]),
                )
            }),
            None => Err(AddonError::BadUrl("no PostgreSQL server".into())),
        },
        _ => match &p.addon_servers.redis {
            Some(r) => r.create(app, &rec.password).await.map(|a| {
                (
                    a.user,
                    BTreeMap::from([
                        ("REDIS_URL".to_string(), a.url),
                        ("REDIS_PREFIX".to_string(), a.prefix),
                    ]),
                )
            }),
            None => Err(AddonError::BadUrl("no Redis server".into())),
        },
    };
    let (resource, config) = match made {
        Ok(m) => m,
        Err(e) => {
            // Nothing half-made stays: the record goes (the server's side is made
            // idempotently, so a later create finishes or redoes it).
            if mine {
                let _ = p.store.delete_addon(app, &rec.kind).await;
            }
            tracing::warn!(app, kind = %rec.kind, error = %e, "add-on not made");
            return Err(failed(e));
        }
    };
    finish(p, app, rec, resource, config).await
}

/// Records the add-on as made and sets its config vars on the app as a new release.
async fn finish(
    p: &PlatformState,
    app: &str,
    mut rec: AddonRecord,
    resource: String,
    config: BTreeMap<String, String>,
) -> Reply {
    rec.resource = resource;
    rec.config = config;
    rec.state = AddonState::Ready;
    p.store.put_addon(&rec).await?;
    let names: Vec<&str> = rec.config.keys().map(String::as_str).collect();
    let set = rec
        .config
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let description = format!("Add {} ({})", rec.kind, names.join(", "));
    release_with_config(p, app, &set, &description).await?;
    tracing::info!(app, kind = %rec.kind, resource = %rec.resource, "add-on made");
    json(StatusCode::CREATED, &AddonView::from(&rec))
}

/// Drops the add-on and its data. Without `{"confirm": APP}` nothing happens.
pub async fn destroy(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    kind: &str,
    body: &[u8],
) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: DestroyAddon = if body.iter().all(u8::is_ascii_whitespace) {
        DestroyAddon::default()
    } else {
        parse_body(body)?
    };
    existing_app(state, app).await?;
    let rec = p
        .store
        .addon(app, kind)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app:?} has no {kind} add-on")))?;
    if req.confirm.as_deref() != Some(app) {
        return Err(ApiError::Unprocessable(format!(
            "destroying the {kind} add-on drops its data: confirm with the app's name ({{\"confirm\": \"{app}\"}}, pier addons destroy {app} {kind} --confirm {app})"
        )));
    }
    let dropped = match kind {
        _ if rec.plan == "dedicated" => {
            crate::dedicated::destroy(&p.store, app, &rec.runner).await?;
            Ok(())
        }
        "postgres" => match &p.addon_servers.postgres {
            Some(pg) => pg.destroy(app).await,
            None => Err(AddonError::BadUrl("no PostgreSQL server".into())),
        },
        _ => match &p.addon_servers.redis {
            Some(r) => r.destroy(app).await,
            None => Err(AddonError::BadUrl("no Redis server".into())),
        },
    };
    dropped.map_err(failed)?;
    p.store.delete_addon(app, kind).await?;
    let unset = rec.config.keys().map(|k| (k.clone(), None)).collect();
    release_with_config(p, app, &unset, &format!("Remove {kind}")).await?;
    tracing::info!(app, by = %caller, kind, "add-on destroyed");
    Ok((StatusCode::NO_CONTENT, None))
}
