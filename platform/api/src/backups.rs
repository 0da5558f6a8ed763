//! PostgreSQL backups of apps' databases: captured with `pg_dump -Fc` by this process (never on
//! a runner) into the backup store ([`crate::backup_store`]), checksummed while they stream,
//! listed, downloaded, deleted, and restored with `pg_restore` after their checksum is
//! checked. Records and the one-at-a-time lock are in Redis (`pier_store::backups`); schedules
//! and retention are in [`crate::backup_schedule`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use pier_addons::pgdump::{AppConnection, PgTools};
use pier_model::api::{
    BackupList, BackupRetention, BackupSchedule, BackupView, NewBackupSchedule, RestoreBackup,
};
use pier_model::platform::AddonState;
use pier_store::Store;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::api::{existing_app, json, parse_body, ApiState, Reply};
use crate::auth::Caller;
use crate::backup_store::{BackupStore, BackupStoreError, Stored};
use crate::error::ApiError;
use crate::platform::{platform, PlatformState};
use crate::server::{Body, ChannelBody};

/// How long the lock lasts unless renewed; renewed every [`LOCK_RENEW`] while the work runs.
const LOCK_TTL_MS: u64 = 60_000;
const LOCK_RENEW: Duration = Duration::from_secs(15);
/// Most bytes of a tool's error output kept in a failure's reason.
const MAX_REASON: usize = 2000;

/// What backups need beside the platform: where archives go, the tools, and the clock.
pub struct Backups {
    pub store: BackupStore,
    /// `pg_dump` and `pg_restore` (`None`: not installed; captures fail saying so).
    pub tools: Option<PgTools>,
    /// Added to the system clock (tests only: a schedule's time comes without waiting for it).
    pub clock_offset_ms: i64,
}

impl Backups {
    pub fn new(store: BackupStore) -> Self {
        let tools = match PgTools::find() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL backups cannot be made");
                None
            }
        };
        Backups {
            store,
            tools,
            clock_offset_ms: 0,
        }
    }

    /// Milliseconds since the epoch, by the backups' clock.
    pub fn now_ms(&self) -> u64 {
        let now = i64::try_from(crate::api::now_ms()).unwrap_or(i64::MAX);
        u64::try_from(now.saturating_add(self.clock_offset_ms)).unwrap_or(0)
    }

    fn tools(&self) -> Result<&PgTools, String> {
        self.tools.as_ref().ok_or_else(|| {
            "pg_dump and pg_restore are not installed on the API's machine (apt-get install postgresql-client)"
                .to_string()
        })
    }
}

fn backups(state: &ApiState) -> Result<&Arc<Backups>, ApiError> {
    state.backups.as_ref().ok_or_else(|| {
        ApiError::NoCapacity("this API keeps no backups (pier api --backup-store)".into())
    })
}

/// `7` → 7; anything else names no backup.
fn parse_id(app: &str, id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && !id.starts_with('0') && id.len() <= 15)
        .ok_or_else(|| ApiError::NotFound(format!("{app} has no backup {id:?}")))
}

/// The app's database, as its own role: 409 when the app has no PostgreSQL add-on.
async fn app_database(p: &PlatformState, app: &str) -> Result<AppConnection, ApiError> {
    let none = || {
        ApiError::Conflict(format!(
            "{app} has no PostgreSQL add-on to back up (pier addons create {app} postgres)"
        ))
    };
    let pg = p.addon_servers.postgres.as_ref().ok_or_else(none)?;
    let rec = p
        .store
        .addon(app, "postgres")
        .await?
        .filter(|r| r.state == AddonState::Ready)
        .ok_or_else(none)?;
    Ok(pg.app_connection(app, &rec.password))
}

async fn find(p: &PlatformState, app: &str, id: &str) -> Result<BackupView, ApiError> {
    let n = parse_id(app, id)?;
    p.store
        .backup(app, n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{app} has no backup {n}")))
}

fn busy(app: &str, holder: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{app}'s database is busy ({holder}): one backup or restore at a time per app; try again when it ends"
    ))
}

fn not_offered(b: &BackupView) -> ApiError {
    match b.state.as_str() {
        "running" => ApiError::Conflict(format!(
            "backup {} of {} is still being captured",
            b.id, b.app
        )),
        _ => ApiError::Conflict(format!(
            "backup {} of {} failed ({}): it has nothing to offer",
            b.id,
            b.app,
            b.reason.as_deref().unwrap_or("no reason kept")
        )),
    }
}

// ------------------------------------------------------------------- handlers

/// `GET /v1/apps/{app}/backups`: newest first. A capture whose API stopped before it ended
/// (its lock lapsed) is marked failed here.
pub async fn list(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let b = backups(state)?;
    existing_app(state, app).await?;
    // The lock first: a capture writes its record before it gives the lock up.
    let holder = p.store.backup_lock_holder(app).await?;
    let mut all = p.store.backups(app).await?;
    for rec in all.iter_mut().filter(|r| r.state == "running") {
        if holder.as_deref() != Some(&format!("capture {}", rec.id)) {
            rec.state = "failed".into();
            rec.reason = Some("the API capturing it stopped before it ended".into());
            rec.finished_ms = Some(b.now_ms());
            p.store.put_backup(rec).await?;
        }
    }
    json(StatusCode::OK, &BackupList { backups: all })
}

/// `GET /v1/apps/{app}/backups/{backup}`.
pub async fn show(state: &ApiState, caller: &Caller, app: &str, id: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    backups(state)?;
    existing_app(state, app).await?;
    json(StatusCode::OK, &find(p, app, id).await?)
}

/// `POST /v1/apps/{app}/backups`: 202 with the backup `running`; the capture goes on in the
/// background.
pub async fn capture(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let (backup, _task) = start_capture(state, app, "manual", caller.to_string()).await?;
    tracing::info!(app, by = %caller, id = backup.id, "backup capture started");
    json(StatusCode::ACCEPTED, &backup)
}

/// Starts a capture of `app`'s database: takes the app's lock (409 when held), records the
/// backup as `running` and spawns the dump. The task ends once the record says how it went.
pub async fn start_capture(
    state: &ApiState,
    app: &str,
    kind: &str,
    by: String,
) -> Result<(BackupView, tokio::task::JoinHandle<()>), ApiError> {
    let p = platform(state)?;
    let b = backups(state)?.clone();
    existing_app(state, app).await?;
    let conn = app_database(p, app).await?;
    let id = p.store.next_backup_id(app).await?;
    let holder = format!("capture {id}");
    if let Err(other) = p.store.lock_backups(app, &holder, LOCK_TTL_MS).await? {
        return Err(busy(app, &other));
    }
    let rec = BackupView {
        app: app.to_string(),
        id,
        state: "running".into(),
        kind: kind.to_string(),
        by,
        created_ms: b.now_ms(),
        finished_ms: None,
        size: None,
        sha256: None,
        reason: None,
        restored_ms: None,
    };
    if let Err(e) = p.store.put_backup(&rec).await {
        let _ = p.store.unlock_backups(app, &holder).await;
        return Err(e.into());
    }
    let task = tokio::spawn(run_capture(p.store.clone(), b, conn, rec.clone(), holder));
    Ok((rec, task))
}

/// Runs `work` while renewing the app's lock for `holder`.
async fn holding_lock<T>(
    store: &Store,
    app: &str,
    holder: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(LOCK_RENEW);
    renew.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = renew.tick() => {
                if let Ok(false) = store.renew_backup_lock(app, holder, LOCK_TTL_MS).await {
                    tracing::warn!(app, holder, "backup lock lapsed while working");
                }
            }
        }
    }
}

async fn run_capture(
    store: Store,
    b: Arc<Backups>,
    conn: AppConnection,
    mut rec: BackupView,
    holder: String,
) {
    let app = rec.app.clone();
    let started = std::time::Instant::now();
    let result = holding_lock(&store, &app, &holder, dump(&b, &conn, &app, rec.id)).await;
    rec.finished_ms = Some(b.now_ms());
    match result {
        Ok(Stored { size, sha256 }) => {
            tracing::info!(
                app,
                id = rec.id,
                size,
                ms = started.elapsed().as_millis() as u64,
                "backup captured"
            );
            rec.state = "succeeded".into();
            rec.size = Some(size);
            rec.sha256 = Some(sha256);
        }
        Err(reason) => {
            tracing::warn!(app, id = rec.id, reason, "backup failed");
            rec.state = "failed".into();
            rec.reason = Some(reason);
        }
    }
    // The record must say how it ended: Redis may be away for a moment.
    for _ in 0..10 {
        match store.put_backup(&rec).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(app, id = rec.id, error = %e, "backup record not written yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if let Err(e) = store.unlock_backups(&app, &holder).await {
        tracing::warn!(app, error = %e, "backup lock not given up (it lapses by itself)");
    }
}

/// `pg_dump -Fc` of the app's database, streamed into the store with its checksum.
async fn dump(b: &Backups, conn: &AppConnection, app: &str, id: u64) -> Result<Stored, String> {
    let mut child = b
        .tools()?
        .dump(conn)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run pg_dump: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| "pg_dump has no output".to_string())?;
    let errors = tokio::spawn(read_tail(child.stderr.take()));
    let ended = async move {
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for pg_dump: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let text = errors.await.unwrap_or_default();
        Err(format!("pg_dump failed ({status}): {text}"))
    };
    b.store.upload(app, id, stdout, ended).await
}

/// The last [`MAX_REASON`] bytes a tool wrote to its error output, on one line.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if all.len() > 4 * MAX_REASON {
            all.drain(..all.len() - MAX_REASON);
        }
    }
    let text = String::from_utf8_lossy(&all);
    let text = text.trim().replace('\n', "; ");
    let cut = text.len().saturating_sub(MAX_REASON);
    let start = (cut..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// `DELETE /v1/apps/{app}/backups/{backup}`: the archive, then the record.
pub async fn delete(state: &ApiState, caller: &Caller, app: &str, id: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let b = backups(state)?;
    existing_app(state, app).await?;
    let rec = find(p, app, id).await?;
    if rec.state == "running" {
        return Err(not_offered(&rec));
    }
    b.store
        .delete(app, rec.id)
        .await
        .map_err(|e| ApiError::Internal(format!("deleting backup {} of {app}: {e}", rec.id)))?;
    p.store.delete_backup(app, rec.id).await?;
    tracing::info!(app, by = %caller, id = rec.id, "backup deleted");
    Ok((StatusCode::NO_CONTENT, None))
}

/// `GET /v1/apps/{app}/backups/{backup}/download`: the archive, streamed as it is read from
/// the store, with its length and the SHA-256 it was made with (`X-Pier-Sha256`) for the
/// client to check.
pub async fn download(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let b = backups(state)?;
    existing_app(state, app).await?;
    let rec = find(p, app, id).await?;
    if rec.state != "succeeded" {
        return Err(not_offered(&rec));
    }
    let (size, mut stream) = b
        .store
        .read(app, rec.id)
        .await
        .map_err(|e| missing(&rec, e))?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let what = format!("backup {} of {app}", rec.id);
    tokio::spawn(async move {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if tx.send(bytes).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The body ends short of its length: the client sees it cut.
                    tracing::warn!(what, error = %e, "backup download cut");
                    return;
                }
            }
        }
    });
    tracing::info!(app, by = %caller, id = rec.id, size, "backup downloaded");
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{app}-backup-{}.dump\"",
        rec.id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(v) = rec
        .sha256
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        h.insert("x-pier-sha256", v);
    }
    Ok(r)
}

fn missing(rec: &BackupView, e: BackupStoreError) -> ApiError {
    match e {
        BackupStoreError::Store(object_store::Error::NotFound { .. }) => {
            ApiError::Conflict(format!(
                "backup {} of {} is missing from the backup store",
                rec.id, rec.app
            ))
        }
        e => ApiError::Internal(format!("reading backup {} of {}: {e}", rec.id, rec.app)),
    }
}

/// `POST /v1/apps/{app}/backups/{backup}/restore`: checks the archive's checksum, then
/// restores it into the app's own database in one transaction. Needs `{"confirm": APP}`.
pub async fn restore(state: &ApiState, caller: &Caller, app: &str, id: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let b = backups(state)?;
    let req: RestoreBackup = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreBackup::default()
    } else {
        parse_body(body)?
    };
    existing_app(state, app).await?;
    let mut rec = find(p, app, id).await?;
    if req.confirm.as_deref() != Some(app) {
        return Err(ApiError::Unprocessable(format!(
            "restoring replaces everything in {app}'s database with backup {}: confirm with the app's name ({{\"confirm\": \"{app}\"}}, pier pg backups restore {app} {} --confirm {app})",
            rec.id, rec.id
        )));
    }
    if rec.state != "succeeded" {
        return Err(not_offered(&rec));
    }
    let conn = app_database(p, app).await?;
    let holder = format!("restore {}", rec.id);
    if let Err(other) = p.store.lock_backups(app, &holder, LOCK_TTL_MS).await? {
        return Err(busy(app, &other));
    }
    tracing::info!(app, by = %caller, id = rec.id, "backup restore started");
    let result = holding_lock(&p.store, app, &holder, restore_checked(b, &conn, &rec)).await;
    let _ = p.store.unlock_backups(app, &holder).await;
    if let Err(e) = &result {
        tracing::warn!(app, id = rec.id, error = %e, "backup not restored");
    }
    result?;
    rec.restored_ms = Some(b.now_ms());
    p.store.put_backup(&rec).await?;
    tracing::info!(app, by = %caller, id = rec.id, "backup restored");
    json(StatusCode::OK, &rec)
}

async fn restore_checked(
    b: &Backups,
    conn: &AppConnection,
    rec: &BackupView,
) -> Result<(), ApiError> {
    let tools = b.tools().map_err(ApiError::Internal)?;
    let tmp = tempfile::Builder::new()
        .prefix("pier-restore-")
        .tempfile()
        .map_err(|e| ApiError::Internal(format!("cannot make a file for the restore: {e}")))?;
    let file = tmp
        .reopen()
        .map_err(|e| ApiError::Internal(format!("cannot open the restore's file: {e}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let got = b
        .store
        .read_into(&rec.app, rec.id, &mut file)
        .await
        .map_err(|e| missing(rec, e))?;
    drop(file);
    let want = rec.sha256.as_deref().unwrap_or("");
    if got.sha256 != want || Some(got.size) != rec.size {
        return Err(ApiError::Conflict(format!(
            "backup {} of {} fails its checksum: the stored archive ({} bytes) has SHA-256 {}, the backup was made with {} ({} bytes); it was changed or damaged since, and nothing was restored",
            rec.id,
            rec.app,
            got.size,
            got.sha256,
            want,
            rec.size.unwrap_or(0)
        )));
    }
    let out = tools
        .restore(conn, tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ApiError::Internal(format!("cannot run pg_restore: {e}")))?;
    let out = out
        .wait_with_output()
        .await
        .map_err(|e| ApiError::Internal(format!("waiting for pg_restore: {e}")))?;
    if !out.status.success() {
        let text = read_tail(Some(&out.stderr[..])).await;
        return Err(ApiError::AddonServer(format!(
            "pg_restore failed ({}): {text}; the database is as it was (the restore is one transaction)",
            out.status
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------- schedules

/// `GET /v1/apps/{app}/backup-schedule`.
pub async fn show_schedule(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    backups(state)?;
    existing_app(state, app).await?;
    let s = p.store.backup_schedule(app).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "{app} has no backup schedule (pier pg backups schedule {app} --at HH:MM)"
        ))
    })?;
    json(StatusCode::OK, &s)
}

/// `PUT /v1/apps/{app}/backup-schedule`: a capture every day at `at` (UTC), then retention.
pub async fn put_schedule(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let b = backups(state)?;
    let req: NewBackupSchedule = parse_body(body)?;
    if crate::backup_schedule::parse_at(&req.at).is_none() {
        return Err(ApiError::Unprocessable(format!(
            "at {:?}: a time of day as HH:MM, UTC (00:00 to 23:59)",
            req.at
        )));
    }
    let d = BackupRetention::default();
    let retention = BackupRetention {
        daily: req.daily.unwrap_or(d.daily),
        weekly: req.weekly.unwrap_or(d.weekly),
        monthly: req.monthly.unwrap_or(d.monthly),
    };
    if retention.daily == 0 && retention.weekly == 0 && retention.monthly == 0 {
        return Err(ApiError::Unprocessable(
            "a retention of 0 days, 0 weeks and 0 months would remove every scheduled backup once made".into(),
        ));
    }
    existing_app(state, app).await?;
    app_database(p, app).await?;
    let s = BackupSchedule {
        app: app.to_string(),
        at: req.at.clone(),
        retention,
        since_ms: b.now_ms(),
        by: caller.to_string(),
    };
    p.store.put_backup_schedule(&s).await?;
    tracing::info!(app, by = %caller, at = %s.at, daily = retention.daily, weekly = retention.weekly, monthly = retention.monthly, "backup schedule set");
    json(StatusCode::OK, &s)
}

/// `DELETE /v1/apps/{app}/backup-schedule`: no more scheduled captures; the backups stay.
pub async fn delete_schedule(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    backups(state)?;
    existing_app(state, app).await?;
    if !p.store.delete_backup_schedule(app).await? {
        return Err(ApiError::NotFound(format!("{app} has no backup schedule")));
    }
    tracing::info!(app, by = %caller, "backup schedule removed");
    Ok((StatusCode::NO_CONTENT, None))
}

/// Removes the scheduled backups the app's retention no longer keeps (archive, then record).
pub async fn apply_retention(state: &ApiState, app: &str) -> Result<Vec<u64>, ApiError> {
    let p = platform(state)?;
    let b = backups(state)?;
    let Some(s) = p.store.backup_schedule(app).await? else {
        return Ok(Vec::new());
    };
    let all = p.store.backups(app).await?;
    let gone = crate::backup_schedule::expired(&all, s.retention, b.now_ms());
    for id in &gone {
        b.store
            .delete(app, *id)
            .await
            .map_err(|e| ApiError::Internal(format!("deleting backup {id} of {app}: {e}")))?;
        p.store.delete_backup(app, *id).await?;
    }
    if !gone.is_empty() {
        tracing::info!(app, removed = ?gone, "backup retention applied");
    }
    Ok(gone)
}
