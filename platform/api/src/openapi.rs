//! The OpenAPI 3.1 document served at `/openapi.json`. The schemas of bodies are generated from
//! the wire types in `pier_model::api` (utoipa's `ToSchema`); the operations (summary, body,
//! statuses) are listed here next to [`crate::router::ROUTES`]. The integration tests check
//! that both list the same operations and that every response a test run sees has a declared
//! status and matches its schema.

use pier_model::api as wire;
use serde_json::{json, Map, Value};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        101 => "Switching Protocols: the run's WebSocket (subprotocol pier-run.v1; docs/api.md)",
        201 => "Created",
        202 => "Accepted: the coordinator carries it out",
        204 => "No content",
        400 => "Malformed request: the body is not JSON, or the path is badly encoded",
        401 => "No token, or an unknown token",
        403 => {
            "The token may not do this (an owner acting on another app, or an operator-only action)"
        }
        404 => "No such app, domain, backend, certificate, add-on or drain",
        409 => "Exists already, the domain belongs to another app, it is not verified yet, or the change conflicts with the app's backends (h2c and https:// backends)",
        408 => "The request body did not arrive within the server's body timeout (pier api --body-timeout, 30 s by default)",
        405 => "Another method on this path: the Allow header lists the ones it has",
        413 => "Request body too large: its declared Content-Length is answered at once, before any of it is read (1 MiB; deploys: pier api --max-upload-mb)",
        415 => "A request body that is not Content-Type: application/json",
        426 => "Upgrade Required: this endpoint speaks WebSocket only",
        429 => "Too many requests: wait the Retry-After seconds (failed token attempts from this address, or a renewal asked for again within a minute)",
        422 => {
            "Invalid values (app name, hostname, address, settings, certificate) or a failed domain check"
        }
        500 => "Bad data in the registry, or a bug",
        502 => "The add-on server (the operator's PostgreSQL or Redis) failed or is unreachable; nothing was left half-made",
        503 => "Unavailable for now: the registry (Redis), the DNS resolver of domain proofs, or a runner to place a dedicated add-on on",
        _ => "",
    }
}

/// Error statuses every authenticated operation can answer.
const AUTHED: &[u16] = &[400, 401, 408, 413, 415, 429, 500, 503];

struct Op<'a> {
    id: &'a str,
    summary: &'a str,
    authed: bool,
    body: Option<&'a str>,
    /// The body may be left out.
    optional_body: bool,
    ok: &'a [(u16, Option<&'a str>)],
    errors: &'a [u16],
}

fn operation(op: &Op<'_>) -> Value {
    let mut responses = Map::new();
    for (status, schema) in op.ok {
        let mut r = json!({ "description": status_text(*status) });
        match schema {
            // A text body (Prometheus's exposition format), not JSON.
            Some("text/plain") => {
                r["content"] = json!({ "text/plain": { "schema": { "type": "string" } } });
            }
            Some(s) => r["content"] = json!({ "application/json": { "schema": schema_ref(s) } }),
            None => {}
        }
        responses.insert(status.to_string(), r);
    }
    let mut errors: Vec<u16> = op.errors.to_vec();
    // Any other method on the operation's path (with an Allow header).
    errors.push(405);
    if op.authed {
        errors.extend_from_slice(AUTHED);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses.insert(
            status.to_string(),
            json!({
                "description": status_text(status),
                "content": { "application/json": { "schema": schema_ref("Error") } }
            }),
        );
    }
    let mut v = json!({
        "operationId": op.id,
        "summary": op.summary,
        "responses": responses,
    });
    if !op.authed {
        v["security"] = json!([]);
    }
    if let Some(b) = op.body {
        v["requestBody"] = json!({
            "required": !op.optional_body,
            "content": { "application/json": { "schema": schema_ref(b) } }
        });
    }
    v
}

fn path_params(path: &str, names: &[&str]) -> Value {
    let descr = |n: &str| match n {
        "app" => "App name",
        "domain" => "Domain pattern (percent-encode '*' as %2A if your client needs to)",
        "version" => "Release number (3 or v3)",
        "kind" => "Add-on kind: postgres or redis",
        "run" => "One-off process: its number (7) or name (run.7)",
        "backup" => "A backup's id within the app (3)",
        _ => "Backend instance id (backends) or drain id (drains)",
    };
    Value::Array(
        names
            .iter()
            .map(|n| {
                json!({
                    "name": n, "in": "path", "required": true,
                    "description": descr(n), "schema": crate::contract::path_param(path, n)
                })
            })
            .collect(),
    )
}

/// The wire types of the API: their schemas (and those they refer to) are generated from the
/// Rust types the server answers with and clients read.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    wire::ErrorBody,
    wire::Health,
    wire::AppView,
    wire::AppList,
    wire::AppSettingsPatch,
    wire::NewApp,
    wire::DomainView,
    wire::DomainList,
    wire::NewDomain,
    wire::VerifyRequest,
    wire::BackendView,
    wire::BackendList,
    wire::NewBackend,
    wire::HeartbeatRequest,
    wire::NewCert,
    wire::CertView,
    wire::NewToken,
    wire::NewRun,
    wire::RunView,
    wire::RunList,
    pier_model::platform::RunExit,
    wire::TokenView,
    wire::ReleaseList,
    wire::RollbackRequest,
    wire::ConfigView,
    wire::ConfigPatch,
    wire::FormationView,
    wire::FormationPatch,
    wire::InstanceList,
    wire::RestartRequest,
    wire::Restarted,
    wire::RunnerList,
    wire::BalancerList,
    wire::BalancerView,
    pier_registry::BalancerStatus,
    wire::AddonList,
    wire::LogList,
    wire::AppStats,
    wire::RequestStats,
    wire::StatsPoint,
    wire::InstanceStats,
    wire::UsageStats,
    wire::NewAddon,
    wire::DestroyAddon,
    pier_model::platform::Release,
    pier_model::drain::DrainList,
    pier_model::drain::NewDrain,
    wire::BackupView,
    wire::BackupList,
    wire::BackupSchedule,
    wire::BackupRetention,
    wire::NewBackupSchedule,
    wire::RestoreBackup,
    wire::UsageView,
    wire::AppUsageView,
    wire::UsageItem,
    wire::UsageGap,
)))]
struct Wire;

fn schemas() -> Value {
    use utoipa::OpenApi as _;
    let mut all = Wire::openapi()
        .components
        .map(|c| serde_json::to_value(c.schemas).unwrap_or_default())
        .unwrap_or_default();
    crate::contract::tighten(&mut all);
    // The document itself, for `/openapi.json`.
    all["OpenApi"] = json!({
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": { "openapi": { "type": "string" }, "info": { "type": "object" }, "paths": { "type": "object" } }
    });
    all
}

/// The whole document, built once.
pub fn cached() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(document)
}

/// The request body schema of the operation `method` on path `pattern`, if it takes one, and
/// whether the body is required.
pub fn request_schema(pattern: &str, method: &http::Method) -> Option<(&'static Value, bool)> {
    let op = &cached()["paths"][pattern][method.as_str().to_ascii_lowercase()];
    let body = op.get("requestBody")?;
    let schema = &body["content"]["application/json"]["schema"];
    Some((schema, body["required"].as_bool().unwrap_or(false)))
}

/// The whole document.
pub fn document() -> Value {
    let app = &["app"][..];
    let app_domain = &["app", "domain"][..];
    let cert_path = "/v1/apps/{app}/domains/{domain}/cert";
    let app_id = &["app", "id"][..];
    let app_run = &["app", "run"][..];
    let app_backup = &["app", "backup"][..];
    let ops: &[(&str, &str, &[&str], Op<'_>)] = &[
        (
            "/healthz",
            "get",
            &[],
            Op {
                id: "healthz",
                summary: "Liveness, with the registry's version",
                authed: false,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Health"))],
                errors: &[503],
            },
        ),
        (
            "/openapi.json",
            "get",
            &[],
            Op {
                id: "openapi",
                summary: "This document",
                authed: false,
                body: None,
                optional_body: false,
                ok: &[(200, Some("OpenApi"))],
                errors: &[],
            },
        ),
        (
            "/metrics",
            "get",
            &[],
            Op {
                id: "metrics",
                summary: "The platform's figures in Prometheus's text format (text/plain; version=0.0.4): ACME orders by kind and result, names by certificate state, failing and overdue renewals (operator)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("text/plain"))],
                errors: &[403],
            },
        ),
        (
            "/v1/apps",
            "get",
            &[],
            Op {
                id: "listApps",
                summary: "Apps the token may see (all for the operator)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("AppList"))],
                errors: &[],
            },
        ),
        (
            "/v1/apps",
            "post",
            &[],
            Op {
                id: "createApp",
                summary: "Create an app (operator)",
                authed: true,
                body: Some("NewApp"),
                optional_body: false,
                ok: &[(201, Some("App"))],
                errors: &[403, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}",
            "get",
            app,
            Op {
                id: "showApp",
                summary: "An app with its domains and backends",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("App"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}",
            "patch",
            app,
            Op {
                id: "updateApp",
                summary: "Change an app's settings",
                authed: true,
                body: Some("AppSettingsPatch"),
                optional_body: false,
                ok: &[(200, Some("App"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}",
            "delete",
            app,
            Op {
                id: "deleteApp",
                summary: "Delete an app with its domains and backends (operator)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404, 409],
            },
        ),
        (
            "/v1/apps/{app}/domains",
            "get",
            app,
            Op {
                id: "listDomains",
                summary: "An app's domains",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("DomainList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/domains",
            "post",
            app,
            Op {
                id: "addDomain",
                summary: "Add a domain (pending until verified; 200 if the app has it already)",
                authed: true,
                body: Some("NewDomain"),
                optional_body: false,
                ok: &[(200, Some("Domain")), (201, Some("Domain"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/domains/{domain}",
            "delete",
            app_domain,
            Op {
                id: "removeDomain",
                summary: "Remove a domain",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/domains/{domain}/verify",
            "post",
            app_domain,
            Op {
                id: "verifyDomain",
                summary: "Run the ownership check of a pending domain (body optional)",
                authed: true,
                body: Some("VerifyRequest"),
                optional_body: true,
                ok: &[(200, Some("Domain"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            cert_path,
            "put",
            app_domain,
            Op {
                id: "putCert",
                summary: "Set a verified domain's TLS certificate and key (replacing any)",
                authed: true,
                body: Some("NewCert"),
                optional_body: false,
                ok: &[(200, Some("Cert"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            cert_path,
            "get",
            app_domain,
            Op {
                id: "showCert",
                summary: "A domain's certificate (never its key) and the state of the platform's issued one",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Cert"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            cert_path,
            "delete",
            app_domain,
            Op {
                id: "removeCert",
                summary: "Remove a domain's uploaded certificate (an issued one is served again, if any)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/domains/{domain}/cert/renew",
            "post",
            app_domain,
            Op {
                id: "renewCert",
                summary: "Renew the platform's certificate of a verified name now (ACME; once a minute per name)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(202, Some("Cert"))],
                errors: &[403, 404, 409, 422, 429],
            },
        ),
        (
            "/v1/apps/{app}/backends",
            "get",
            app,
            Op {
                id: "listBackends",
                summary: "An app's backends",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("BackendList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/backends",
            "post",
            app,
            Op {
                id: "addBackend",
                summary: "Register (or re-register) a backend",
                authed: true,
                body: Some("NewBackend"),
                optional_body: false,
                ok: &[(201, Some("Backend"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/backends/{id}/heartbeat",
            "put",
            app_id,
            Op {
                id: "heartbeat",
                summary: "Extend a backend's deadline to now + ttl_s",
                authed: true,
                body: Some("Heartbeat"),
                optional_body: false,
                ok: &[(200, Some("Backend"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/backends/{id}",
            "delete",
            app_id,
            Op {
                id: "removeBackend",
                summary: "Deregister a backend",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/tokens",
            "post",
            &[],
            Op {
                id: "createToken",
                summary: "Create an owner token for an app (operator); shown once",
                authed: true,
                body: Some("NewToken"),
                optional_body: false,
                ok: &[(201, Some("Token"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/deploys",
            "post",
            app,
            Op {
                id: "deploy",
                summary: "Upload the app (a gzipped tar with a Procfile at its root; body application/gzip), build it and release it. Answers 200 with NDJSON lines as the build runs: {\"log\"}, then {\"release\"} or {\"error\"}",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, None)],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/releases",
            "get",
            app,
            Op {
                id: "listReleases",
                summary: "An app's releases, newest first, and the current one",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("ReleaseList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/releases/{version}",
            "get",
            &["app", "version"][..],
            Op {
                id: "showRelease",
                summary: "One release (its status tells how its rollout went)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Release"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/rollback",
            "post",
            app,
            Op {
                id: "rollback",
                summary: "A new release with an older one's slug and config (no rebuild); body optional",
                authed: true,
                body: Some("Rollback"),
                optional_body: true,
                ok: &[(201, Some("Release"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/config",
            "get",
            app,
            Op {
                id: "showConfig",
                summary: "An app's config vars",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Config"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/config",
            "patch",
            app,
            Op {
                id: "updateConfig",
                summary: "Set and unset config vars: a new release",
                authed: true,
                body: Some("ConfigPatch"),
                optional_body: false,
                ok: &[(200, Some("Config"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/formation",
            "get",
            app,
            Op {
                id: "showFormation",
                summary: "Instances wanted per process type of the current release",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Formation"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/formation",
            "patch",
            app,
            Op {
                id: "scale",
                summary: "Scale process types (others keep their counts)",
                authed: true,
                body: Some("FormationPatch"),
                optional_body: false,
                ok: &[(200, Some("Formation"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/instances",
            "get",
            app,
            Op {
                id: "listInstances",
                summary: "An app's instances as their runners report them",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("InstanceList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/restart",
            "post",
            app,
            Op {
                id: "restart",
                summary: "Rolling restart of all instances or one (body optional)",
                authed: true,
                body: Some("RestartRequest"),
                optional_body: true,
                ok: &[(202, Some("Restarted"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/runners",
            "get",
            &[],
            Op {
                id: "listRunners",
                summary: "Runners with their heartbeat age and instance count (operator)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("RunnerList"))],
                errors: &[403],
            },
        ),
        (
            "/v1/balancers",
            "get",
            &[],
            Op {
                id: "listBalancers",
                summary: "Balancers with their route table version, registry lag and report age (operator)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("BalancerList"))],
                errors: &[403],
            },
        ),
        (
            "/v1/apps/{app}/logs",
            "get",
            app,
            Op {
                id: "logs",
                summary: "The app's last log lines (query: n=1..10000, default 100; ps=web.1; source=app|router). With tail=1, an NDJSON stream of LogLine: those lines, then each new one as it is written",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("LogList"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/stats",
            "get",
            app,
            Op {
                id: "stats",
                summary: "Requests per second, share of 5xx and p50/p95/p99 latency (merged across balancers), and each instance's CPU and memory, over the last minute, hour and day",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("AppStats"))],
                errors: &[403, 404, 503],
            },
        ),
        (
            "/v1/apps/{app}/addons",
            "get",
            app,
            Op {
                id: "listAddons",
                summary: "An app's add-ons, with the config vars (credentials) they set",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("AddonList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/addons",
            "post",
            app,
            Op {
                id: "createAddon",
                summary: "Make a PostgreSQL database or a Redis user of the app's own (201), or finish making it (200; a repeated create makes no second one); sets its config vars as a new release",
                authed: true,
                body: Some("NewAddon"),
                optional_body: false,
                ok: &[(200, Some("Addon")), (201, Some("Addon"))],
                errors: &[403, 404, 409, 422, 502],
            },
        ),
        (
            "/v1/apps/{app}/addons/{kind}",
            "delete",
            &["app", "kind"][..],
            Op {
                id: "destroyAddon",
                summary: "Drop an add-on and its data; the body must confirm with the app's name",
                authed: true,
                body: Some("DestroyAddon"),
                optional_body: true,
                ok: &[(204, None)],
                errors: &[403, 404, 409, 422, 502],
            },
        ),
        (
            "/v1/apps/{app}/drains",
            "get",
            app,
            Op {
                id: "listDrains",
                summary: "An app's log drains, with their delivery status (delivered, dropped, last error)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("DrainList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/drains",
            "post",
            app,
            Op {
                id: "addDrain",
                summary: "Forward the app's log lines to syslog://HOST:PORT, syslog+tls://HOST:PORT or https://HOST[:PORT]/PATH (201); the same URL again answers its drain (200). 422: a bad URL, an address drains may not reach, or the app's most drains",
                authed: true,
                body: Some("NewDrain"),
                optional_body: false,
                ok: &[(200, Some("Drain")), (201, Some("Drain"))],
                errors: &[403, 404, 422],
            },
        ),
        (
            "/v1/apps/{app}/drains/{id}",
            "delete",
            app_id,
            Op {
                id: "removeDrain",
                summary: "Stop forwarding to a drain and forget it",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/runs",
            "post",
            app,
            Op {
                id: "createRun",
                summary: "Run a command once in a new process of the app's current release (pier run): attached (then attach to attach_url with a WebSocket) or detached (output to the logs as run.N). 409: nothing deployed, or the app's most one-off processes at once",
                authed: true,
                body: Some("NewRun"),
                optional_body: false,
                ok: &[(201, Some("RunView"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/runs",
            "get",
            app,
            Op {
                id: "listRuns",
                summary: "The app's one-off processes, newest first (the last 100): who ran what, and how each ended",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("RunList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/runs/{run}",
            "get",
            app_run,
            Op {
                id: "showRun",
                summary: "One one-off process",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("RunView"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/runs/{run}",
            "delete",
            app_run,
            Op {
                id: "stopRun",
                summary: "Stop a one-off process (pier stop APP run.N): SIGTERM, then SIGKILL after the runner's grace",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(202, Some("RunView"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/runs/{run}/attach",
            "get",
            app_run,
            Op {
                id: "attachRun",
                summary: "Attach to an attached run with a WebSocket (subprotocol pier-run.v1): once per run. 409: detached, ended, or attached already; 426: not a WebSocket upgrade",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(101, None)],
                errors: &[403, 404, 409, 426],
            },
        ),
        (
            "/v1/apps/{app}/backups",
            "get",
            app,
            Op {
                id: "listBackups",
                summary: "The app's PostgreSQL backups, newest first: id, state (running, succeeded, failed with its reason), kind (manual or scheduled), size, SHA-256",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("BackupList"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/backups",
            "post",
            app,
            Op {
                id: "captureBackup",
                summary: "Capture a backup of the app's PostgreSQL database (pg_dump -Fc, one snapshot: the app is not stopped). 202 with the backup running; poll it until succeeded or failed. 409: no PostgreSQL add-on, or a capture or restore of the app is running",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(202, Some("Backup"))],
                errors: &[403, 404, 409],
            },
        ),
        (
            "/v1/apps/{app}/backups/{backup}",
            "get",
            app_backup,
            Op {
                id: "showBackup",
                summary: "One backup",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("Backup"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/backups/{backup}",
            "delete",
            app_backup,
            Op {
                id: "deleteBackup",
                summary: "Delete a backup and its archive. 409: it is still being captured",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404, 409],
            },
        ),
        (
            "/v1/apps/{app}/backups/{backup}/download",
            "get",
            app_backup,
            Op {
                id: "downloadBackup",
                summary: "The backup's archive (pg_dump custom format, application/octet-stream), streamed, with Content-Length and its SHA-256 in X-Pier-Sha256. 409: running, failed, or missing from the store",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, None)],
                errors: &[403, 404, 409],
            },
        ),
        (
            "/v1/apps/{app}/backups/{backup}/restore",
            "post",
            app_backup,
            Op {
                id: "restoreBackup",
                summary: "Restore a backup into the app's own database (pg_restore --clean --if-exists --no-owner --role=<app role>, one transaction), after checking the archive's SHA-256. The body must confirm with the app's name. 409: the checksum does not match (nothing restored), the backup failed or is running, or a capture or restore is running; 502: pg_restore failed (the database is as it was)",
                authed: true,
                body: Some("RestoreBackup"),
                optional_body: true,
                ok: &[(200, Some("Backup"))],
                errors: &[403, 404, 409, 422, 502],
            },
        ),
        (
            "/v1/apps/{app}/backup-schedule",
            "get",
            app,
            Op {
                id: "showBackupSchedule",
                summary: "The app's daily backup schedule and retention. 404: none",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("BackupSchedule"))],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/backup-schedule",
            "put",
            app,
            Op {
                id: "putBackupSchedule",
                summary: "Capture the app's database every day at HH:MM UTC, keeping the newest scheduled backup of each of the last daily (7) days, weekly (4) weeks and monthly (12) months; manual backups are kept until deleted. 409: no PostgreSQL add-on",
                authed: true,
                body: Some("NewBackupSchedule"),
                optional_body: false,
                ok: &[(200, Some("BackupSchedule"))],
                errors: &[403, 404, 409, 422],
            },
        ),
        (
            "/v1/apps/{app}/backup-schedule",
            "delete",
            app,
            Op {
                id: "deleteBackupSchedule",
                summary: "Stop the scheduled captures (the backups stay). 404: no schedule",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404],
            },
        ),
        (
            "/v1/apps/{app}/usage",
            "get",
            app,
            Op {
                id: "appUsage",
                summary: "The app's usage in a month (UTC, default this month): instance hours by process type and size, CPU seconds, memory GB-hours, requests, GB in and out, add-on hours; costs from the operator's price sheet; gaps where reports are missing. 409: no platform database (pier api --platform-db)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("UsageView"))],
                errors: &[403, 409, 422],
            },
        ),
        (
            "/v1/usage",
            "get",
            &[],
            Op {
                id: "allUsage",
                summary: "Every app's usage in a month (operator), as appUsage. 409: no platform database (pier api --platform-db)",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(200, Some("UsageView"))],
                errors: &[403, 409, 422],
            },
        ),
    ];
    let mut paths = Map::new();
    for (path, method, params, op) in ops {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if !params.is_empty() {
            entry["parameters"] = path_params(path, params);
        }
        entry[*method] = operation(op);
        if op.id == "logs" {
            entry[*method]["parameters"] = crate::contract::log_query();
        }
        if op.id == "appUsage" || op.id == "allUsage" {
            entry[*method]["parameters"] = crate::contract::month_query();
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pier registry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Apps, domains and their certificates, backends and tokens of a pier platform. Errors are {\"error\", \"reason\"}; an unknown path answers 404 and a known path with another method 405 with an Allow header. See docs/api.md."
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}
