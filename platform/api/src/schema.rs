//! A JSON Schema validator for the subset the API's OpenAPI document uses: `$ref`, `allOf`,
//! `anyOf`, `oneOf`, `not`, `type` (one or a list, `"null"` among them), `enum`, `const`,
//! `minimum`/`maximum`, integer `format`s (`int32`, `int64`), `minLength`/`maxLength` (in
//! characters), `pattern`, `required`, `properties`, `additionalProperties`,
//! `minProperties`/`maxProperties`, `propertyNames`, `items`.
//!
//! The server checks every request body against the document with it before a handler sees
//! it, so what the document states and what the server enforces cannot drift apart; the tests
//! check every response with it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde_json::Value;

/// Checks `v` against `schema` (resolving `$ref`s in `doc`); `Err` names where and why.
pub fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
        let target = &doc["components"]["schemas"][name];
        if !target.is_object() {
            return Err(format!("{at}: the schema refers to {r}, which is missing"));
        }
        return validate(doc, target, v, at);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, v, at)?;
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let mut why = Vec::new();
        for s in any {
            match validate(doc, s, v, at) {
                Ok(()) => {
                    why.clear();
                    break;
                }
                Err(e) => why.push(e),
            }
        }
        if !why.is_empty() {
            return Err(match schema.get("description").and_then(Value::as_str) {
                Some(d) => format!("{at}: {} is not {d}", short(v)),
                None => why.join("; or "),
            });
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let mut why = Vec::new();
        let mut matching = 0;
        for s in one {
            match validate(doc, s, v, at) {
                Ok(()) => matching += 1,
                Err(e) => why.push(e),
            }
        }
        match matching {
            1 => {}
            0 => {
                // Only the forms this value could mean are worth telling: of its type, and
                // with its tag (`"type": "redirect"`) when the forms are tagged.
                let meant: Vec<&String> = one
                    .iter()
                    .zip(&why)
                    .filter(|(s, _)| could_mean(doc, s, v))
                    .map(|(_, e)| e)
                    .collect();
                return Err(match meant.as_slice() {
                    [] => why.join("; or "),
                    some => some
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; or "),
                });
            }
            n => return Err(format!("{at}: matches {n} of the allowed forms, not one")),
        }
    }
    if let Some(not) = schema.get("not") {
        if validate(doc, not, v, at).is_ok() {
            return Err(format!("{at}: {v} is not allowed here"));
        }
    }
    // OpenAPI 3.1: `type` is a name or a list of names ("null" among them for optional values).
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| json_type_is(v, t));
        if !ok {
            return Err(format!(
                "{at}: expected {}, got {}",
                types.join(" or "),
                short(v)
            ));
        }
        if v.is_null() {
            return Ok(());
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            let allowed: Vec<String> = e.iter().map(Value::to_string).collect();
            return Err(format!(
                "{at}: {} is not one of {}",
                short(v),
                allowed.join(", ")
            ));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            return Err(format!("{at}: must be {c}"));
        }
    }
    if v.is_number() {
        number(schema, v, at)?;
    }
    if let Some(s) = v.as_str() {
        string(schema, s, at)?;
    }
    if let Some(obj) = v.as_object() {
        let count = |k: &str| schema.get(k).and_then(Value::as_u64);
        if count("minProperties").is_some_and(|m| (obj.len() as u64) < m) {
            return Err(format!(
                "{at}: needs at least {} entries",
                count("minProperties").unwrap_or(0)
            ));
        }
        if count("maxProperties").is_some_and(|m| (obj.len() as u64) > m) {
            return Err(format!(
                "{at}: at most {} entries",
                count("maxProperties").unwrap_or(0)
            ));
        }
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap_or_default();
            if !obj.contains_key(req) {
                return Err(format!("{at}: missing field `{req}`"));
            }
        }
        let names = schema.get("propertyNames");
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let here = format!("{at}.{k}");
            if let Some(n) = names {
                validate(
                    doc,
                    n,
                    &Value::String(k.clone()),
                    &format!("{at} key {k:?}"),
                )?;
            }
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => validate(doc, s, val, &here)?,
                (None, Some(Value::Bool(false))) => {
                    return Err(format!("{at}: unknown field `{k}`"))
                }
                (None, Some(extra @ Value::Object(_))) => validate(doc, extra, val, &here)?,
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Whether `v` is of `schema`'s type and carries its tag, if it has one (a property whose
/// schema is a single `const` or one-value `enum`).
fn could_mean(doc: &Value, schema: &Value, v: &Value) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    if schema.get("oneOf").is_some() && schema.get("type").is_none() {
        return v.is_object();
    }
    let type_ok = match schema.get("type") {
        Some(Value::String(t)) => json_type_is(v, t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .any(|t| json_type_is(v, t)),
        _ => true,
    };
    if !type_ok {
        return false;
    }
    let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) else {
        return true;
    };
    props.iter().all(|(k, p)| {
        let tag = p.get("const").or_else(|| {
            p.get("enum")
                .and_then(Value::as_array)
                .filter(|e| e.len() == 1)
                .and_then(|e| e.first())
        });
        match (tag, obj.get(k)) {
            (Some(t), Some(got)) => t == got,
            _ => true,
        }
    })
}

/// Whether `v` is of JSON Schema type `t` (2.0 is an integer).
fn json_type_is(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// An exact number: integers compare as integers (a float would round 2^63 to i64::MAX).
fn exact(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e30)
                .map(|f| f as i128)
        })
}

fn number(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let (mut min, mut max) = (
        schema.get("minimum").and_then(exact),
        schema.get("maximum").and_then(exact),
    );
    let range = match schema.get("format").and_then(Value::as_str) {
        Some("int32") => Some((i128::from(i32::MIN), i128::from(i32::MAX))),
        Some("int64") => Some((i128::from(i64::MIN), i128::from(i64::MAX))),
        _ => None,
    };
    if let Some((lo, hi)) = range {
        min = Some(min.map_or(lo, |m| m.max(lo)));
        max = Some(max.map_or(hi, |m| m.min(hi)));
    }
    match exact(v) {
        Some(n) => {
            if let Some(m) = min.filter(|m| n < *m) {
                return Err(format!("{at}: {n} is below the least allowed, {m}"));
            }
            if let Some(m) = max.filter(|m| n > *m) {
                return Err(format!("{at}: {n} is above the most allowed, {m}"));
            }
        }
        None => {
            let n = v.as_f64().unwrap_or(0.0);
            if let Some(m) = min.filter(|m| n < *m as f64) {
                return Err(format!("{at}: {n} is below the least allowed, {m}"));
            }
            if let Some(m) = max.filter(|m| n > *m as f64) {
                return Err(format!("{at}: {n} is above the most allowed, {m}"));
            }
        }
    }
    Ok(())
}

fn string(schema: &Value, s: &str, at: &str) -> Result<(), String> {
    let len = || s.chars().count() as u64;
    if let Some(m) = schema.get("minLength").and_then(Value::as_u64) {
        if len() < m {
            return Err(format!("{at}: shorter than {m} characters"));
        }
    }
    if let Some(m) = schema.get("maxLength").and_then(Value::as_u64) {
        if len() > m {
            let what = schema
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(format!("{at}: longer than {m} characters{what}"));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match compiled(p) {
            Some(re) if re.is_match(s) => {}
            Some(_) => {
                let what = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                return Err(format!(
                    "{at}: {} does not match {p}{what}",
                    short(&Value::String(s.into()))
                ));
            }
            None => return Err(format!("{at}: the schema's pattern {p} does not compile")),
        }
    }
    Ok(())
}

/// The document's patterns, compiled once each.
fn compiled(pattern: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .clone()
}

/// A value for a message: at most 60 characters of it.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_is_checked() {
        let doc = json!({"components": {"schemas": {"N": {"type": "integer", "format": "int32", "minimum": 0}}}});
        let s = json!({
            "type": "object", "additionalProperties": false, "required": ["n"],
            "properties": {
                "n": {"$ref": "#/components/schemas/N"},
                "s": {"type": ["string", "null"], "pattern": "^[a-z]+$", "maxLength": 3},
                "m": {"type": "object", "minProperties": 1,
                      "propertyNames": {"pattern": "^[A-Z]+$", "not": {"const": "PORT"}},
                      "additionalProperties": {"type": "integer", "maximum": 100}},
                "k": {"oneOf": [{"const": "a"}, {"const": "b"}]}
            }
        });
        let ok = |v: Value| validate(&doc, &s, &v, "$");
        assert!(ok(json!({"n": 1, "s": "ab", "m": {"A": 100}, "k": "b"})).is_ok());
        assert!(ok(json!({"n": 2.0, "s": null})).is_ok());
        for bad in [
            json!([1]),
            json!({}),
            json!({"n": -1}),
            json!({"n": 2147483648u64}),
            json!({"n": 9223372036854775808u64}),
            json!({"n": 1.5}),
            json!({"n": 1, "x": 1}),
            json!({"n": 1, "s": "abcd"}),
            json!({"n": 1, "s": "AB"}),
            json!({"n": 1, "m": {}}),
            json!({"n": 1, "m": {"PORT": 1}}),
            json!({"n": 1, "m": {"a": 1}}),
            json!({"n": 1, "m": {"A": 101}}),
            json!({"n": 1, "k": "c"}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }
}
