//! Log drains: an app's lines forwarded to a syslog server or an HTTPS endpoint by the
//! drainer (`pier drainer`, crate `pier-drain`). The API checks the URL and the addresses it
//! reaches, and records the drain; the drainer delivers and writes the drain's status back.

use std::net::IpAddr;
use std::time::Duration;

use http::StatusCode;
use pier_model::drain::{
    DrainList, DrainPolicy, DrainRecord, DrainUrl, DrainView, NewDrain, MAX_DRAINS_PER_APP,
};
use pier_store::DrainCreated;

use crate::api::{existing_app, json, now_ms, parse_body, ApiState, Reply};
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::platform::platform;

/// Longest a drain's hostname may take to resolve when it is added.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn list(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let drains = p
        .store
        .drains(app)
        .await?
        .iter()
        .map(DrainView::from)
        .collect();
    json(StatusCode::OK, &DrainList { drains })
}

/// Adds a drain (201), or answers the app's drain to the same URL (200): never a second one.
pub async fn add(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: NewDrain = parse_body(body)?;
    let url = DrainUrl::parse(req.url.trim()).map_err(ApiError::Unprocessable)?;
    existing_app(state, app).await?;
    check_addresses(&state.drain_policy, &url).await?;
    let rec = DrainRecord {
        id: auth::random_hex(8)?,
        app: app.to_string(),
        url: url.to_string(),
        kind: url.kind,
        created_at_ms: now_ms(),
        delivered: 0,
        dropped: 0,
        last_error: None,
        last_error_at_ms: None,
        offset: 0,
    };
    match p.store.create_drain(rec, MAX_DRAINS_PER_APP).await? {
        DrainCreated::Made(rec) => {
            tracing::info!(app, by = %caller, id = %rec.id, to = %url.redacted(), "drain added");
            json(StatusCode::CREATED, &DrainView::from(&rec))
        }
        DrainCreated::Existing(rec) => json(StatusCode::OK, &DrainView::from(&rec)),
        DrainCreated::Full(n) => Err(ApiError::Unprocessable(format!(
            "app {app:?} has {n} drains, the most an app may have: remove one first"
        ))),
    }
}

pub async fn remove(state: &ApiState, caller: &Caller, app: &str, id: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let plain = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if plain && p.store.delete_drain(app, id).await? {
        tracing::info!(app, by = %caller, id, "drain removed");
        return Ok((StatusCode::NO_CONTENT, None));
    }
    Err(ApiError::NotFound(format!(
        "app {app:?} has no drain {id:?} (pier drains {app} lists them)"
    )))
}

/// Refuses (422) a drain whose host is, or resolves to, an address drains may not reach.
/// Every address a name resolves to must be allowed: the drainer may connect to any of them.
async fn check_addresses(policy: &DrainPolicy, url: &DrainUrl) -> Result<(), ApiError> {
    let addrs: Vec<IpAddr> = match url.ip() {
        Some(ip) => vec![ip],
        None => {
            let found = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((url.host.as_str(), url.port)),
            )
            .await
            .map_err(|_| {
                ApiError::Unprocessable(format!(
                    "drain host {} does not resolve (no answer within {RESOLVE_TIMEOUT:?})",
                    url.host
                ))
            })?
            .map_err(|e| {
                ApiError::Unprocessable(format!("drain host {} does not resolve: {e}", url.host))
            })?;
            found.map(|a| a.ip()).collect()
        }
    };
    if addrs.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "drain host {} has no address",
            url.host
        )));
    }
    for ip in addrs {
        if let Some(why) = policy.refusal(ip) {
            let via = if url.ip().is_some() {
                String::new()
            } else {
                format!(" ({} resolves to it)", url.host)
            };
            return Err(ApiError::Unprocessable(format!(
                "drain refused: {why}{via}"
            )));
        }
    }
    Ok(())
}
