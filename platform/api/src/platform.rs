//! The platform's handlers: deploys (upload, build, release), releases and rollback, config
//! vars, formation, instances, restarts and runners. They write the desired state into
//! `pier-store`; runners and the coordinator take it from there.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use pier_model::api::{
    ConfigPatch, ConfigView, DeployEvent, FormationPatch, FormationView, InstanceList, ReleaseList,
    RestartRequest, Restarted, RollbackRequest, RunnerList, RunnerView,
};
use pier_model::platform::{
    check_config_key, check_config_value, check_process_type, effective_formation, Release,
    ReleaseStatus, MAX_SCALE,
};
use pier_slug::build::{BuildConfig, BuildError};
use pier_slug::SlugStore;
use pier_store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use crate::api::{existing_app, json, now_ms, parse_body, ApiState, Reply};
use crate::auth::Caller;
use crate::error::ApiError;

/// What the platform handlers need beside the registry.
pub struct PlatformState {
    pub store: Store,
    pub slugs: SlugStore,
    pub build: BuildConfig,
    /// Largest upload accepted, bytes.
    pub max_upload: usize,
    /// Builds at once (they are CPU-heavy; more wait their turn).
    pub builds: Arc<Semaphore>,
    /// The operator's servers add-ons are made on.
    pub addon_servers: crate::addons::AddonServers,
    /// Limits on one-off processes (`pier run`).
    pub runs: crate::runs::RunLimits,
    /// Where apps answer, with `{app}` for the app's name (`http://{app}.example.net/`), as the
    /// balancers' `app_domains` make it; told to the deploying user.
    pub apps_url: Option<String>,
}

/// Default of [`PlatformState::max_upload`]: 200 MiB.
pub const DEFAULT_MAX_UPLOAD: usize = 200 << 20;

pub(crate) fn platform(state: &ApiState) -> Result<&PlatformState, ApiError> {
    state.platform.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "this API runs without the platform (no slug store configured)".into(),
        )
    })
}

// ------------------------------------------------------------------- deploys

/// An upload spooled to a private temporary file (removed when dropped).
pub struct Upload {
    pub file: tempfile::NamedTempFile,
    pub size: u64,
}

/// Reads a request body into a temporary file, refusing it (413) once it is over `limit`
/// bytes: an upload is never held in memory whole.
pub async fn receive_upload(
    mut body: impl hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
    limit: u64,
) -> Result<Upload, ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::Builder::new()
        .prefix("pier-upload-")
        .tempfile()
        .map_err(|e| ApiError::Internal(format!("cannot make a file for the upload: {e}")))?;
    let std_file = tmp
        .reopen()
        .map_err(|e| ApiError::Internal(format!("cannot open the upload file: {e}")))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read the upload: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(ApiError::TooLarge(format!(
                "the upload is over the limit of {limit} bytes (pier api --max-upload-mb)"
            )));
        }
        file.write_all(&data)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot write the upload: {e}")))?;
    Ok(Upload { file: tmp, size })
}

/// Checks a deploy before its upload is read: the caller's right and the app.
pub async fn deploy_allowed(state: &ApiState, caller: &Caller, app: &str) -> Result<(), ApiError> {
    caller.may_act_on(app)?;
    platform(state)?;
    existing_app(state, app).await?;
    Ok(())
}

/// Builds `upload` into a slug and makes a release of it, sending progress as NDJSON lines on
/// `out`: `{"log": "..."}` for each line of build output, then `{"release": {...}}` or
/// `{"error": "..."}`. Nothing that runs changes when the build fails.
pub async fn deploy(
    state: Arc<ApiState>,
    caller: Caller,
    app: String,
    upload: Upload,
    out: mpsc::Sender<Bytes>,
) {
    let result = run_deploy(&state, &app, upload, &out).await;
    let last = match result {
        Ok(rel) => {
            tracing::info!(app, by = %caller, version = rel.version, "deployed");
            let url = state
                .platform
                .as_ref()
                .and_then(|p| p.apps_url.as_ref())
                .map(|t| t.replace("{app}", &app));
            DeployEvent::Release {
                release: Box::new(rel),
                url,
            }
            .line()
        }
        Err(e) => {
            tracing::info!(app, by = %caller, error = %e, "deploy failed");
            DeployEvent::Error { error: e }.line()
        }
    };
    let _ = out.send(last).await;
}

async fn run_deploy(
    state: &ApiState,
    app: &str,
    upload: Upload,
    out: &mpsc::Sender<Bytes>,
) -> Result<Release, String> {
    let p = platform(state).map_err(|e| e.reason().to_string())?;
    let send = |text: String| {
        let out = out.clone();
        async move {
            let _ = out.send(DeployEvent::Log { log: text }.line()).await;
        }
    };
    let _turn = match p.builds.clone().try_acquire_owned() {
        Ok(t) => t,
        Err(_) => {
            send("-----> Waiting for another build to finish".into()).await;
            p.builds
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| "the API is shutting down".to_string())?
        }
    };
    let cfg = p.build.clone();
    let slugs = p.slugs.clone();
    let lines = out.clone();
    let built = tokio::task::spawn_blocking(move || {
        let work = tempfile::Builder::new()
            .prefix("pier-build-")
            .tempdir()
            .map_err(|e| format!("cannot make a build directory: {e}"))?;
        let mut log = |l: &str| {
            let _ = lines.blocking_send(DeployEvent::Log { log: l.to_string() }.line());
        };
        let file = std::fs::File::open(upload.file.path())
            .map_err(|e| format!("cannot read the upload back: {e}"))?;
        let reader = std::io::BufReader::new(file);
        let result = pier_slug::build::build(reader, upload.size, work.path(), &cfg, &mut log);
        let built = result.map_err(|e| match e {
            BuildError::Archive(e) => e.to_string(),
            other => other.to_string(),
        })?;
        let slug = slugs
            .put(&built.slug)
            .map_err(|e| format!("cannot store the slug: {e}"))?;
        Ok::<_, String>((built.processes, slug))
    })
    .await
    .map_err(|e| format!("build task failed: {e}"))??;
    let (processes, slug) = built;
    let short = slug.digest.get(..8).unwrap_or_default().to_string();
    send(format!("-----> Slug {short} stored ({} bytes)", slug.size)).await;
    let rel = p
        .store
        .create_release(app, true, |base| {
            Ok(Release {
                app: app.to_string(),
                version: 0,
                slug: Some(slug.clone()),
                processes: processes.clone(),
                config: base.map(|b| b.config.clone()).unwrap_or_default(),
                description: format!("Deploy {short}"),
                created_ms: now_ms(),
                status: ReleaseStatus::Pending,
                reason: None,
            })
        })
        .await
        .map_err(|e| format!("cannot record the release: {e}"))?;
    send(format!("-----> Released v{}", rel.version)).await;
    Ok(rel)
}

// ------------------------------------------------------------------- releases

pub async fn list_releases(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let releases = p.store.releases(app).await?;
    let current = p.store.current(app).await?;
    json(StatusCode::OK, &ReleaseList { current, releases })
}

pub async fn show_release(state: &ApiState, caller: &Caller, app: &str, raw: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let version = parse_version(raw)?;
    let rel = p
        .store
        .release(app, version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app:?} has no release v{version}")))?;
    json(StatusCode::OK, &rel)
}

fn parse_version(raw: &str) -> Result<u64, ApiError> {
    // As crate::contract::VERSION: one optional `v`, then digits without a leading zero.
    let digits = raw.strip_prefix('v').unwrap_or(raw);
    Some(digits)
        .filter(|d| !d.starts_with('0') && !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            ApiError::Unprocessable(format!("release {raw:?} is not a number like 3 or v3"))
        })
}

/// A rollback makes a new release with an older one's slug and config: nothing is rebuilt.
pub async fn rollback(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        parse_body(body)?
    };
    existing_app(state, app).await?;
    let current = p.store.current(app).await?.unwrap_or(0);
    let target = match req.version {
        Some(v) => v,
        // The newest release before the current one that did not fail and has a slug.
        None => p
            .store
            .releases(app)
            .await?
            .into_iter()
            .find(|r| r.version < current && r.slug.is_some() && r.status != ReleaseStatus::Failed)
            .map(|r| r.version)
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "app {app:?} has no release before v{current} to go back to"
                ))
            })?,
    };
    let old = p
        .store
        .release(app, target)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app:?} has no release v{target}")))?;
    if old.slug.is_none() {
        return Err(ApiError::Conflict(format!(
            "release v{target} has no slug (it was made before the first deploy)"
        )));
    }
    let rel = p
        .store
        .create_release(app, true, |_| {
            Ok(Release {
                description: format!("Rollback to v{target}"),
                created_ms: now_ms(),
                status: ReleaseStatus::Pending,
                reason: None,
                ..old.clone()
            })
        })
        .await?;
    tracing::info!(app, by = %caller, to = target, version = rel.version, "rollback");
    json(StatusCode::CREATED, &rel)
}

// ------------------------------------------------------------------- config

pub async fn show_config(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let current = match p.store.current(app).await? {
        Some(v) => p.store.release(app, v).await?,
        None => p.store.latest_release(app).await?,
    };
    let config = current.map(|r| r.config).unwrap_or_default();
    json(
        StatusCode::OK,
        &ConfigView {
            config,
            release: None,
        },
    )
}

/// PATCH: each key set to a string is set, each set to `null` is removed; a new release.
pub async fn update_config(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let ConfigPatch(patch) = parse_body(body)?;
    if patch.is_empty() {
        return Err(ApiError::Unprocessable(
            "no config var to set or unset".into(),
        ));
    }
    for (k, v) in &patch {
        check_config_key(k).map_err(ApiError::Unprocessable)?;
        if let Some(v) = v {
            check_config_value(k, v).map_err(ApiError::Unprocessable)?;
        }
    }
    existing_app(state, app).await?;
    let set: Vec<&str> = patch
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    let unset: Vec<&str> = patch
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut words = Vec::new();
    if !set.is_empty() {
        words.push(format!("Set {}", set.join(", ")));
    }
    if !unset.is_empty() {
        words.push(format!("Unset {}", unset.join(", ")));
    }
    let description = words.join("; ");
    let rel = release_with_config(p, app, &patch, &description).await?;
    // Names only: values may be secrets.
    tracing::info!(app, by = %caller, version = rel.version, change = %description, "config changed");
    json(
        StatusCode::OK,
        &ConfigView {
            config: rel.config,
            release: Some(rel.version),
        },
    )
}

/// A new current release: the current one with `changes` applied to its config vars (a value
/// sets, `None` removes). Config changes and add-ons make their releases with it.
pub(crate) async fn release_with_config(
    p: &PlatformState,
    app: &str,
    changes: &BTreeMap<String, Option<String>>,
    description: &str,
) -> Result<Release, ApiError> {
    Ok(p.store
        .create_release(app, true, |base| {
            let mut config = base.map(|b| b.config.clone()).unwrap_or_default();
            for (k, v) in changes {
                match v {
                    Some(v) => config.insert(k.clone(), v.clone()),
                    None => config.remove(k),
                };
            }
            Ok(Release {
                app: app.to_string(),
                version: 0,
                slug: base.and_then(|b| b.slug.clone()),
                processes: base.map(|b| b.processes.clone()).unwrap_or_default(),
                config,
                description: description.to_string(),
                created_ms: now_ms(),
                status: ReleaseStatus::Pending,
                reason: None,
            })
        })
        .await?)
}

// ------------------------------------------------------------------- formation

async fn formation_view(p: &PlatformState, app: &str) -> Result<Value, ApiError> {
    let view = |formation| FormationView { formation };
    let set = p.store.formation(app).await?;
    let processes = match p.store.current(app).await? {
        Some(v) => p
            .store
            .release(app, v)
            .await?
            .map(|r| r.processes)
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    serde_json::to_value(view(effective_formation(&processes, &set)))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

pub async fn show_formation(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    Ok((StatusCode::OK, Some(formation_view(p, app).await?)))
}

/// PATCH `{"web": 3, "worker": 1}`: sets those counts, keeps the others.
pub async fn scale(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let FormationPatch(changes) = parse_body(body)?;
    if changes.is_empty() {
        return Err(ApiError::Unprocessable("no process type to scale".into()));
    }
    for (t, n) in &changes {
        check_process_type(t).map_err(ApiError::Unprocessable)?;
        if *n > MAX_SCALE {
            return Err(ApiError::Unprocessable(format!(
                "{t}={n}: at most {MAX_SCALE} instances per process type"
            )));
        }
    }
    existing_app(state, app).await?;
    if let Some(v) = p.store.current(app).await? {
        if let Some(rel) = p.store.release(app, v).await? {
            if let Some(t) = changes.keys().find(|t| !rel.processes.contains_key(*t)) {
                // The request is well-formed; it conflicts with the current release.
                return Err(ApiError::Conflict(format!(
                    "the Procfile of v{v} has no process type {t:?} (it has: {})",
                    rel.processes.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
    p.store.scale(app, &changes).await?;
    tracing::info!(app, by = %caller, ?changes, "scaled");
    Ok((StatusCode::OK, Some(formation_view(p, app).await?)))
}

// ------------------------------------------------------------------- instances

pub async fn list_instances(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let mut instances = p.store.reports(app).await?;
    instances.sort_by(|a, b| (&a.ptype, a.index, a.release).cmp(&(&b.ptype, b.index, b.release)));
    json(StatusCode::OK, &InstanceList { instances })
}

/// A rolling restart: each instance is replaced by a new one, the old drained once the new one
/// is healthy.
pub async fn restart(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: RestartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestartRequest::default()
    } else {
        parse_body(body)?
    };
    if let Some(slot) = &req.instance {
        // As crate::contract::INSTANCE: digits without a leading zero.
        let ok = slot.split_once('.').is_some_and(|(t, n)| {
            check_process_type(t).is_ok()
                && !n.starts_with('0')
                && n.len() <= 9
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u32>().is_ok_and(|n| n > 0)
        });
        if !ok {
            return Err(ApiError::Unprocessable(format!(
                "instance {slot:?} is not TYPE.N, such as web.1"
            )));
        }
    }
    existing_app(state, app).await?;
    let generation = p
        .store
        .request_restart(app, req.instance.as_deref())
        .await?;
    tracing::info!(app, by = %caller, instance = ?req.instance, generation, "restart requested");
    json(
        StatusCode::ACCEPTED,
        &Restarted {
            generation,
            instance: req.instance,
        },
    )
}

// ------------------------------------------------------------------- runners

/// How long a runner may go without a heartbeat before it counts as dead (the coordinator's
/// default).
pub const RUNNER_DEAD_AFTER_MS: u64 = 3_000;

pub async fn list_runners(state: &ApiState, caller: &Caller) -> Reply {
    caller.require_operator("list runners")?;
    let p = platform(state)?;
    let now = now_ms();
    let mut runners = Vec::new();
    for r in p.store.runners().await? {
        let instances = p.store.assignments(&r.id).await?.len() as u64;
        let age = now.saturating_sub(r.heartbeat_ms);
        runners.push(RunnerView {
            live: age < RUNNER_DEAD_AFTER_MS,
            heartbeat_age_ms: age,
            instances,
            runner: r,
        });
    }
    json(StatusCode::OK, &RunnerList { runners })
}
