//! The OpenAPI 3.0 document served at `/openapi.json`. It is written by hand next to
//! [`crate::router::ROUTES`]; the integration tests check that both list the same operations
//! and that every response a test run sees has a declared status and matches its schema.

use serde_json::{json, Map, Value};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted: the coordinator carries it out",
        204 => "No content",
        400 => "Malformed request: the body is not JSON, or the path is badly encoded",
        401 => "No token, or an unknown token",
        403 => {
            "The token may not do this (an owner acting on another app, or an operator-only action)"
        }
        404 => "No such app, domain, backend or certificate",
        409 => "Exists already, the domain belongs to another app, or it is not verified yet",
        413 => "Request body too large",
        422 => {
            "Invalid values (app name, hostname, address, settings, certificate) or a failed domain check"
        }
        500 => "Bad data in the registry, or a bug",
        503 => "The registry (Redis) is unavailable",
        _ => "",
    }
}

/// Error statuses every authenticated operation can answer.
const AUTHED: &[u16] = &[400, 401, 413, 500, 503];

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
        if let Some(s) = schema {
            r["content"] = json!({ "application/json": { "schema": schema_ref(s) } });
        }
        responses.insert(status.to_string(), r);
    }
    let mut errors: Vec<u16> = op.errors.to_vec();
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

fn path_params(names: &[&str]) -> Value {
    let descr = |n: &str| match n {
        "app" => "App name",
        "domain" => "Domain pattern (percent-encode '*' as %2A if your client needs to)",
        "version" => "Release number (3 or v3)",
        _ => "Backend instance id",
    };
    Value::Array(
        names
            .iter()
            .map(|n| {
                json!({
                    "name": n, "in": "path", "required": true,
                    "description": descr(n), "schema": { "type": "string" }
                })
            })
            .collect(),
    )
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let int = json!({ "type": "integer", "minimum": 0 });
    json!({
        "Error": {
            "type": "object",
            "required": ["error", "reason"],
            "properties": {
                "error": { "type": "string", "description": "Short code: bad-request, unauthorized, forbidden, not-found, method-not-allowed, conflict, too-large, unprocessable, verification-failed, registry-unavailable, internal" },
                "reason": { "type": "string", "description": "What was wrong, for a human" }
            }
        },
        "Health": {
            "type": "object",
            "required": ["status", "registry_version"],
            "properties": { "status": string, "registry_version": int }
        },
        "OpenApi": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": { "openapi": string, "info": { "type": "object" }, "paths": { "type": "object" } }
        },
        "Timeouts": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "connect_ms": int, "first_byte_ms": int, "idle_ms": int }
        },
        "Action": {
            "type": "object",
            "required": ["type"],
            "description": "proxy (default); redirect {location, status, keep_path}; static {status, body, content_type}; maintenance {body, content_type, retry_after}",
            "properties": {
                "type": { "type": "string", "enum": ["proxy", "redirect", "static", "maintenance"] },
                "location": string, "status": int, "keep_path": { "type": "boolean" },
                "body": { "type": "string", "nullable": true }, "content_type": string,
                "retry_after": { "type": "integer", "nullable": true }
            }
        },
        "AppSettings": {
            "type": "object",
            "additionalProperties": false,
            "description": "Every field optional; PATCH replaces the fields given, null resets one",
            "properties": {
                "policy": { "type": "string", "enum": ["round-robin", "least-outstanding"] },
                "max_body": int,
                "retries": int,
                "timeouts": schema_ref("Timeouts"),
                "action": schema_ref("Action"),
                "spin": { "type": "boolean" },
                "https_redirect": { "type": "boolean", "description": "Answer plain-HTTP requests with a 308 to HTTPS" },
                "hsts": { "type": "string", "description": "Strict-Transport-Security value for HTTPS responses: max-age=<seconds>[; directives], visible ASCII" },
                "backend_protocol": { "type": "string", "enum": ["http1", "h2c"], "description": "What the app's backends speak: HTTP/1.1 (default) or cleartext HTTP/2 with prior knowledge" }
            }
        },
        "AppSettingsPatch": {
            "type": "object",
            "additionalProperties": false,
            "description": "AppSettings fields to replace; null resets a field to its default",
            "properties": {
                "policy": { "type": "string", "enum": ["round-robin", "least-outstanding"], "nullable": true },
                "max_body": { "type": "integer", "minimum": 0, "nullable": true },
                "retries": { "type": "integer", "minimum": 0, "nullable": true },
                "timeouts": { "allOf": [schema_ref("Timeouts")], "nullable": true },
                "action": { "allOf": [schema_ref("Action")], "nullable": true },
                "spin": { "type": "boolean", "nullable": true },
                "https_redirect": { "type": "boolean", "nullable": true },
                "hsts": { "type": "string", "nullable": true },
                "backend_protocol": { "type": "string", "enum": ["http1", "h2c"], "nullable": true }
            }
        },
        "App": {
            "type": "object",
            "required": ["name", "settings"],
            "properties": {
                "name": string,
                "settings": schema_ref("AppSettings"),
                "domains": { "type": "array", "items": schema_ref("Domain"), "description": "Only in GET /v1/apps/{app}" },
                "backends": { "type": "array", "items": schema_ref("Backend"), "description": "Only in GET /v1/apps/{app}" }
            }
        },
        "AppList": {
            "type": "object",
            "required": ["apps"],
            "properties": { "apps": { "type": "array", "items": schema_ref("App") } }
        },
        "NewApp": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": { "name": string, "settings": schema_ref("AppSettings") }
        },
        "Domain": {
            "type": "object",
            "required": ["domain", "app", "verified"],
            "properties": {
                "domain": string,
                "app": string,
                "verified": { "type": "boolean", "description": "Only verified domains are routed" },
                "challenge": {
                    "type": "object",
                    "required": ["path", "body"],
                    "description": "While pending: the app must answer GET <path> for Host: <domain> with <body>",
                    "properties": { "path": string, "body": string }
                },
                "claim_expires_at": {
                    "type": "string",
                    "description": "While pending: when the claim stops holding the name against other apps (RFC 3339; `pier api --claim-ttl-hours`, 72 by default); after it another app may claim the domain"
                },
                "certificate": {
                    "type": "object",
                    "required": ["not_after", "fingerprint_sha256"],
                    "description": "In the app view only: the domain's certificate, if it has one",
                    "properties": { "not_after": string, "fingerprint_sha256": string }
                }
            }
        },
        "DomainList": {
            "type": "object",
            "required": ["domains"],
            "properties": { "domains": { "type": "array", "items": schema_ref("Domain") } }
        },
        "NewDomain": {
            "type": "object",
            "required": ["domain"],
            "additionalProperties": false,
            "properties": {
                "domain": string,
                "verified": { "type": "boolean", "description": "Operator only: skip the ownership check" }
            }
        },
        "VerifyRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "force": { "type": "boolean", "description": "Operator only: verify without the check" } }
        },
        "NewCert": {
            "type": "object",
            "required": ["cert", "key"],
            "additionalProperties": false,
            "properties": {
                "cert": { "type": "string", "description": "PEM: the certificate, then its intermediates" },
                "key": { "type": "string", "description": "PEM: its private key (PKCS#8, PKCS#1 or SEC1); never returned" }
            }
        },
        "Cert": {
            "type": "object",
            "required": ["domain", "names", "not_before", "not_after", "fingerprint_sha256", "issuer", "subject"],
            "additionalProperties": false,
            "description": "A domain's certificate, without its private key",
            "properties": {
                "domain": string,
                "names": { "type": "array", "items": string, "description": "DNS names of the certificate (subjectAltName)" },
                "not_before": { "type": "string", "description": "RFC 3339, UTC" },
                "not_after": { "type": "string", "description": "RFC 3339, UTC" },
                "fingerprint_sha256": { "type": "string", "description": "SHA-256 of the leaf certificate (DER), hex" },
                "issuer": string,
                "subject": string
            }
        },
        "Backend": {
            "type": "object",
            "required": ["id", "address", "expires_at_ms", "live"],
            "properties": {
                "id": string,
                "address": string,
                "expires_at_ms": int,
                "live": { "type": "boolean" }
            }
        },
        "BackendList": {
            "type": "object",
            "required": ["backends"],
            "properties": { "backends": { "type": "array", "items": schema_ref("Backend") } }
        },
        "NewBackend": {
            "type": "object",
            "required": ["address"],
            "additionalProperties": false,
            "properties": {
                "address": { "type": "string", "description": "IP:port" },
                "id": { "type": "string", "description": "Instance id (default: generated)" },
                "ttl_s": { "type": "integer", "minimum": 1, "description": "Seconds to live without a heartbeat (default: forever)" }
            }
        },
        "Heartbeat": {
            "type": "object",
            "required": ["ttl_s"],
            "additionalProperties": false,
            "properties": { "ttl_s": { "type": "integer", "minimum": 1 } }
        },
        "NewToken": {
            "type": "object",
            "required": ["app"],
            "additionalProperties": false,
            "properties": { "app": string }
        },
        "Release": {
            "type": "object",
            "required": ["app", "version", "processes", "config", "description", "created_ms", "status"],
            "additionalProperties": false,
            "description": "A numbered release: a slug (absent before the first deploy) and config vars",
            "properties": {
                "app": string,
                "version": { "type": "integer", "minimum": 1 },
                "slug": {
                    "type": "object",
                    "required": ["digest", "size"],
                    "additionalProperties": false,
                    "properties": {
                        "digest": { "type": "string", "description": "SHA-256 of the slug archive, hex" },
                        "size": int
                    }
                },
                "processes": { "type": "object", "additionalProperties": string, "description": "The Procfile: process type to command" },
                "config": { "type": "object", "additionalProperties": string },
                "description": string,
                "created_ms": int,
                "status": { "type": "string", "enum": ["pending", "running", "failed"] },
                "reason": { "type": "string", "description": "Why a release failed" }
            }
        },
        "ReleaseList": {
            "type": "object",
            "required": ["current", "releases"],
            "properties": {
                "current": { "type": "integer", "nullable": true, "description": "The release that should run" },
                "releases": { "type": "array", "items": schema_ref("Release"), "description": "Newest first" }
            }
        },
        "Rollback": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "version": { "type": "integer", "minimum": 1, "description": "Default: the release before the current one" } }
        },
        "Config": {
            "type": "object",
            "required": ["config"],
            "properties": {
                "config": { "type": "object", "additionalProperties": string },
                "release": { "type": "integer", "description": "The release the change made" }
            }
        },
        "ConfigPatch": {
            "type": "object",
            "description": "Config vars to set (a string) or unset (null). Names match [A-Z_][A-Z0-9_]*; PORT and PIER_* are the platform's",
            "additionalProperties": { "type": "string", "nullable": true }
        },
        "Formation": {
            "type": "object",
            "required": ["formation"],
            "properties": { "formation": { "type": "object", "additionalProperties": int } }
        },
        "FormationPatch": {
            "type": "object",
            "description": "Instances wanted per process type, e.g. {\"web\": 3}",
            "additionalProperties": { "type": "integer", "minimum": 0, "maximum": 100 }
        },
        "Instance": {
            "type": "object",
            "required": ["id", "app", "ptype", "index", "release", "runner", "state", "updated_ms"],
            "additionalProperties": false,
            "properties": {
                "id": string,
                "app": string,
                "ptype": string,
                "index": int,
                "release": int,
                "generation": int,
                "runner": string,
                "state": { "type": "string", "enum": ["preparing", "starting", "up", "crashed", "failed", "stopping"] },
                "address": string,
                "started_ms": int,
                "restarts": int,
                "last_exit": string,
                "next_try_ms": int,
                "cpu_s": { "type": "number" },
                "rss_kib": int,
                "updated_ms": int
            }
        },
        "InstanceList": {
            "type": "object",
            "required": ["instances"],
            "properties": { "instances": { "type": "array", "items": schema_ref("Instance") } }
        },
        "RestartRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "instance": { "type": "string", "description": "One instance (web.1); default: all" } }
        },
        "Restarted": {
            "type": "object",
            "required": ["generation"],
            "properties": { "generation": int, "instance": { "type": "string", "nullable": true } }
        },
        "RunnerList": {
            "type": "object",
            "required": ["runners"],
            "properties": { "runners": { "type": "array", "items": {
                "type": "object",
                "required": ["id", "address", "capacity", "started_ms", "heartbeat_ms", "live", "heartbeat_age_ms", "instances"],
                "properties": {
                    "id": string, "address": string, "capacity": int, "started_ms": int,
                    "heartbeat_ms": int, "limits": string, "live": { "type": "boolean" },
                    "heartbeat_age_ms": int, "instances": int
                }
            } } }
        },
        "Token": {
            "type": "object",
            "required": ["token", "role", "app"],
            "properties": {
                "token": { "type": "string", "description": "Shown once; only its SHA-256 is stored" },
                "role": string,
                "app": string
            }
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let app = &["app"][..];
    let app_domain = &["app", "domain"][..];
    let cert_path = "/v1/apps/{app}/domains/{domain}/cert";
    let app_id = &["app", "id"][..];
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
                errors: &[403, 404, 422],
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
                errors: &[403, 404],
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
                summary: "A domain's certificate (never its key)",
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
                summary: "Remove a domain's certificate",
                authed: true,
                body: None,
                optional_body: false,
                ok: &[(204, None)],
                errors: &[403, 404, 422],
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
                errors: &[403, 404, 422],
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
                errors: &[403, 404, 422],
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
    ];
    let mut paths = Map::new();
    for (path, method, params, op) in ops {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if !params.is_empty() {
            entry["parameters"] = path_params(params);
        }
        entry[*method] = operation(op);
    }
    json!({
        "openapi": "3.0.3",
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
