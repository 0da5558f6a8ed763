//! The server's rules, stated in the OpenAPI document: the lengths, patterns, ranges and
//! enumerations each request field is held to. The schemas utoipa derives from the wire types
//! say only "a string" or "an integer"; [`tighten`] adds what the handlers check, so a client
//! (or a fuzzer such as schemathesis) knows the limits, and the server enforces exactly these
//! before a handler runs ([`crate::schema`]). Rules that no schema can state (a name's IDNA
//! form, a certificate's contents, what DNS answers) stay the handlers' and answer 422.

use serde_json::{json, Value};

/// App names: 1-63 lower-case letters, digits or `-`, not starting or ending with `-`.
pub const APP_NAME: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// Backend instance ids.
pub const BACKEND_ID: &str = "^[A-Za-z0-9._-]{1,64}$";
/// Drain ids (16 hex digits, made by the server).
pub const DRAIN_ID: &str = "^[0-9a-f]{16}$";
/// Release numbers, `3` or `v3` (19 digits always fit).
pub const VERSION: &str = "^v?[1-9][0-9]{0,18}$";
/// A one-off process: `7` or `run.7`.
pub const RUN_NUMBER: &str = "^(run\\.)?[1-9][0-9]{0,14}$";
/// A backup's id within its app.
pub const BACKUP_ID: &str = "^[1-9][0-9]{0,14}$";
/// A time of day, `HH:MM` (UTC).
pub const TIME_OF_DAY: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";
/// Most days, weeks or months a backup schedule keeps.
pub const MAX_RETENTION: u32 = 1000;
/// Process types.
pub const PROCESS_TYPE: &str = "^[a-z][a-z0-9_-]{0,29}$";
/// One instance, `TYPE.N` (N from 1, at most 9 digits).
pub const INSTANCE: &str = "^[a-z][a-z0-9_-]{0,29}\\.[1-9][0-9]{0,8}$";
/// Config var names (`PORT` and `PIER_*` excluded separately).
pub const CONFIG_KEY: &str = "^[A-Z_][A-Z0-9_]{0,127}$";
/// Longest backend TTL, seconds (a year).
pub const MAX_TTL_S: u64 = 365 * 24 * 3600;

const PORT: &str =
    "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
/// Visible ASCII, spaces and tabs: what may go in a header.
const HEADER_TEXT: &str = "^[\\t -~]*$";
/// An HSTS value with max-age from 0 to two years (63072000 s).
const HSTS: &str = "^[Mm][Aa][Xx]-[Aa][Gg][Ee]=0*([0-9]{1,7}|[0-5][0-9]{7}|6[0-2][0-9]{6}|630[0-6][0-9]{4}|6307[01][0-9]{3}|63072000) *(;[ -~]*)?$";
/// A redirect location: an absolute path (not `//` or `/\`), or an http(s) URL with a host.
const LOCATION: &str =
    "^(/|/[!-.0-\\[\\]-~][!-~]*|[Hh][Tt][Tt][Pp][Ss]?://[!\"$-.0->@-\\[\\]-~][!-~]*)$";

fn backend_address() -> Value {
    json!({
        "description": "IP:port: an IPv4 address, or an IPv6 address in brackets; port 1-65535. Prefixed with https:// the backend is spoken to over TLS (HTTP/1.1, its certificate verified).",
        "type": "string",
        "anyOf": [
            { "pattern": format!("^([Hh][Tt][Tt][Pp][Ss]://)?({OCTET}\\.){{3}}{OCTET}:{PORT}$") },
            { "pattern": format!("^([Hh][Tt][Tt][Pp][Ss]://)?\\[[0-9A-Fa-f:.]{{2,45}}\\]:{PORT}$") }
        ]
    })
}

/// Adds the server's rules to the generated component schemas.
pub fn tighten(s: &mut Value) {
    let name = json!({
        "description": "app name: 1-63 lower-case letters, digits or '-', not starting or ending with '-'",
        "type": "string", "pattern": APP_NAME, "maxLength": 63
    });
    s["NewApp"]["properties"]["name"] = name.clone();
    s["NewToken"]["properties"]["app"] = name;

    let settings = &mut s["AppSettings"]["properties"];
    settings["policy"]["enum"] = json!(["round-robin", "least-outstanding", "consistent-hash"]);
    let hash_on = "^(client-ip|(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+)$";
    settings["hash_on"]["pattern"] = json!(hash_on);
    // 0 (unbounded) or 100 to 1000 (pier_routes::hash::check_hash_balance).
    let not_1_to_99 = json!({ "type": "integer", "minimum": 1, "maximum": 99 });
    settings["hash_balance"]["not"] = not_1_to_99.clone();
    settings["backend_protocol"]["enum"] = json!(["http1", "h2c"]);
    let hsts_rule = "must be max-age=<seconds> (between 0 and two years) then any ;directives, in visible ASCII";
    settings["hsts"]["pattern"] = json!(HSTS);
    settings["hsts"]["description"] = json!(hsts_rule);
    settings["hsts"]["maxLength"] = json!(pier_routes::app::MAX_HSTS_LEN);
    let patch = &mut s["AppSettingsPatch"]["properties"];
    patch["policy"]["enum"] = json!(["round-robin", "least-outstanding", "consistent-hash", null]);
    patch["hash_on"]["pattern"] = json!(hash_on);
    patch["hash_balance"]["not"] = not_1_to_99;
    patch["backend_protocol"]["enum"] = json!(["http1", "h2c", null]);
    patch["hsts"]["pattern"] = json!(HSTS);
    patch["hsts"]["description"] = json!(hsts_rule);
    patch["hsts"]["maxLength"] = json!(pier_routes::app::MAX_HSTS_LEN);
    for t in ["connect_ms", "first_byte_ms", "idle_ms"] {
        s["Timeouts"]["properties"][t]["minimum"] = json!(1);
    }
    // Active health checks: an HTTP path or tcp, exactly one (pier_routes::app::HealthCheck::new).
    let hc = &mut s["HealthCheck"];
    hc["properties"]["path"]["pattern"] = json!("^/[!-~]{0,1023}$");
    hc["properties"]["path"]["description"] =
        json!("an absolute path of visible ASCII, at most 1024 characters");
    hc["properties"]["expect"]["minimum"] = json!(100);
    hc["properties"]["expect"]["maximum"] = json!(599);
    hc["properties"]["interval_ms"]["minimum"] = json!(100);
    hc["properties"]["interval_ms"]["maximum"] = json!(3_600_000);
    hc["properties"]["timeout_ms"]["minimum"] = json!(1);
    for n in ["rise", "fall"] {
        hc["properties"][n]["minimum"] = json!(1);
        hc["properties"][n]["maximum"] = json!(100);
    }
    hc["oneOf"] = json!([
        { "required": ["path"], "properties": { "tcp": { "const": false } } },
        {
            "required": ["tcp"],
            "properties": { "tcp": { "const": true } },
            "not": { "anyOf": [{ "required": ["path"] }, { "required": ["expect"] }] }
        }
    ]);
    if let Some(forms) = s["Action"]["oneOf"].as_array_mut() {
        for form in forms {
            form["additionalProperties"] = json!(false);
            let kind = form["properties"]["type"]["enum"][0]
                .as_str()
                .unwrap_or("")
                .to_string();
            let props = &mut form["properties"];
            match kind.as_str() {
                "redirect" => {
                    props["status"]["enum"] = json!([301, 302, 303, 307, 308]);
                    props["location"]["pattern"] = json!(LOCATION);
                    props["location"]["description"] = json!("must be an http:// or https:// URL with a host, or an absolute path such as /new (javascript:, data: and //host are refused)");
                    props["location"]["maxLength"] = json!(pier_routes::app::MAX_LOCATION_LEN);
                }
                "static" => {
                    props["status"]["minimum"] = json!(200);
                    props["status"]["maximum"] = json!(599);
                    props["content_type"]["pattern"] = json!(HEADER_TEXT);
                }
                "maintenance" => props["content_type"]["pattern"] = json!(HEADER_TEXT),
                _ => {}
            }
        }
    }

    s["ConfigPatch"]["minProperties"] = json!(1);
    s["ConfigPatch"]["propertyNames"] = json!({
        "type": "string",
        "pattern": CONFIG_KEY,
        "not": { "anyOf": [ { "const": "PORT" }, { "pattern": "^PIER_" } ] }
    });
    // No NUL: values go into a process environment.
    s["ConfigPatch"]["additionalProperties"] = json!({
        "type": ["string", "null"],
        "maxLength": pier_model::platform::MAX_CONFIG_VALUE_CHARS,
        "pattern": "^[^\\x00]*$"
    });
    s["FormationPatch"]["minProperties"] = json!(1);
    s["FormationPatch"]["propertyNames"] = json!({ "type": "string", "pattern": PROCESS_TYPE });
    s["FormationPatch"]["additionalProperties"]["maximum"] = json!(pier_model::platform::MAX_SCALE);
    s["RestartRequest"]["properties"]["instance"]["pattern"] = json!(INSTANCE);
    s["Rollback"]["properties"]["version"]["maximum"] = json!(i64::MAX);

    s["NewAddon"] = json!({
        "description": "An add-on to make: postgres (plan standard, the default) or redis (plan shared, the default, or dedicated).",
        "type": "object",
        "oneOf": [
            { "type": "object", "additionalProperties": false, "required": ["kind"],
              "properties": { "kind": { "const": "postgres" }, "plan": { "enum": ["standard"] } } },
            { "type": "object", "additionalProperties": false, "required": ["kind"],
              "properties": { "kind": { "const": "redis" }, "plan": { "enum": ["shared", "dedicated"] } } }
        ]
    });
    s["NewBackupSchedule"]["properties"]["at"]["pattern"] = json!(TIME_OF_DAY);
    for f in ["daily", "weekly", "monthly"] {
        s["NewBackupSchedule"]["properties"][f]["maximum"] = json!(MAX_RETENTION);
    }
    s["NewBackend"]["properties"]["address"] = backend_address();
    s["NewBackend"]["properties"]["server_name"]["maxLength"] = json!(253);
    s["NewBackend"]["properties"]["id"]["pattern"] = json!(BACKEND_ID);
    s["NewBackend"]["properties"]["ttl_s"]["maximum"] = json!(MAX_TTL_S);
    s["Heartbeat"]["properties"]["ttl_s"]["maximum"] = json!(MAX_TTL_S);
    s["NewDomain"]["properties"]["domain"]["maxLength"] = json!(255);
    s["NewDomain"]["properties"]["domain"]["minLength"] = json!(1);
    // The URL's form is the handler's to explain (scheme, host, port, path: each named).
    s["NewDrain"]["properties"]["url"]["maxLength"] = json!(pier_model::drain::MAX_DRAIN_URL);
    s["NewCert"]["properties"]["cert"]["maxLength"] = json!(crate::domains::MAX_CHAIN_BYTES);
    s["NewCert"]["properties"]["key"]["maxLength"] = json!(crate::domains::MAX_KEY_BYTES);
}

/// The schema of path parameter `name` on `path`.
pub fn path_param(path: &str, name: &str) -> Value {
    match name {
        "app" => json!({ "type": "string", "pattern": APP_NAME }),
        "version" => json!({ "type": "string", "pattern": VERSION }),
        "kind" => json!({ "type": "string", "enum": ["postgres", "redis"] }),
        "id" if path.contains("/drains/") => json!({ "type": "string", "pattern": DRAIN_ID }),
        "id" => json!({ "type": "string", "pattern": BACKEND_ID }),
        "domain" => json!({ "type": "string", "minLength": 1, "maxLength": 255 }),
        "run" => json!({ "type": "string", "pattern": RUN_NUMBER }),
        "backup" => json!({ "type": "string", "pattern": BACKUP_ID }),
        _ => json!({ "type": "string" }),
    }
}

/// The query parameters of the log listing (`tail=1`, the live stream, is described in the
/// summary: it does not end by itself).
pub fn log_query() -> Value {
    json!([
        { "name": "n", "in": "query", "required": false, "description": "How many of the newest lines (default 100)",
          "schema": { "type": "integer", "minimum": 1, "maximum": 10000 } },
        { "name": "source", "in": "query", "required": false, "description": "Only lines of this source",
          "schema": { "type": "string", "enum": ["app", "router"] } },
        { "name": "ps", "in": "query", "required": false, "description": "Only lines of this process (web.1) or process type (web)",
          "schema": { "type": "string", "maxLength": 64 } }
    ])
}

/// The query of the usage routes.
pub fn month_query() -> Value {
    json!([
        { "name": "month", "in": "query", "required": false, "description": "The month, YYYY-MM, UTC, from 1970-01 (default: this month)",
          "schema": { "type": "string", "pattern": "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$" } }
    ])
}

#[cfg(test)]
mod tests {
    /// Every rule lands on a field the wire types have: a renamed field would otherwise get
    /// a new, typeless entry and the rule would guard nothing.
    #[test]
    fn rules_land_on_existing_fields() {
        let doc = crate::openapi::document();
        let s = &doc["components"]["schemas"];
        for (schema, field) in [
            ("NewApp", "name"),
            ("NewToken", "app"),
            ("AppSettings", "policy"),
            ("AppSettings", "hsts"),
            ("AppSettings", "backend_protocol"),
            ("AppSettingsPatch", "hsts"),
            ("Timeouts", "connect_ms"),
            ("RestartRequest", "instance"),
            ("Rollback", "version"),
            ("NewBackend", "address"),
            ("NewBackend", "server_name"),
            ("NewBackend", "id"),
            ("NewBackend", "ttl_s"),
            ("Heartbeat", "ttl_s"),
            ("NewDomain", "domain"),
            ("NewDrain", "url"),
            ("NewCert", "cert"),
            ("NewCert", "key"),
            ("NewBackupSchedule", "at"),
            ("NewBackupSchedule", "daily"),
        ] {
            let f = &s[schema]["properties"][field];
            assert!(f.get("type").is_some(), "{schema}.{field}: {f}");
        }
        for forms in s["Action"]["oneOf"].as_array().into_iter().flatten() {
            assert_eq!(forms["additionalProperties"], false);
        }
        assert!(s["FormationPatch"]["additionalProperties"]["type"].is_string());
    }
}
