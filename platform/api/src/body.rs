//! Request bodies: read under a size limit and a total deadline, checked for their media type,
//! and parsed strictly.
//!
//! Strict means: the top level is an object; no object holds a key twice (`{"a":1,"a":2}` is
//! refused with the key named, where plain serde_json keeps the last); numbers written with a
//! zero fraction (`1.0`) are the integers they are, as JSON Schema reads them; then the typed
//! parse refuses unknown fields and wrong types with the field named.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// Default of `pier api --body-timeout`: a body must arrive whole within it.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The declared `Content-Length`, if any and valid.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `413` at once when the declared length is over `limit`, before any of the body is read.
pub fn check_declared_length(headers: &HeaderMap, limit: u64, what: &str) -> Result<(), ApiError> {
    match declared_length(headers) {
        Some(n) if n > limit => Err(ApiError::TooLarge(format!(
            "{what} of {n} bytes is over the limit of {limit} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Whether the request says it carries a body.
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || declared_length(headers).is_some_and(|n| n > 0)
}

/// `415` unless a request with a body says it is JSON (`application/json`, parameters such as
/// `charset=utf-8` allowed).
pub fn check_json_type(headers: &HeaderMap) -> Result<(), ApiError> {
    if !has_body(headers) {
        return Ok(());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = ct.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "the body must be application/json, not {other:?}"
        ))),
        None => Err(ApiError::UnsupportedMediaType(
            "the body needs Content-Type: application/json".into(),
        )),
    }
}

/// The whole body, at most `limit` bytes (`413`), within `deadline` (`408`).
pub async fn read(body: Incoming, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(ApiError::Timeout(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs_f64()
        ))),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge(format!(
                "request body is over {limit} bytes"
            )))
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("cannot read body: {e}"))),
    }
}

/// Parses a JSON body strictly (see the module's text). Text that is not JSON is a `400`; JSON
/// of the wrong shape (not an object, a repeated key, missing or unknown fields, wrong types) or
/// with refused values is a `422`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = parse_value(body)?;
    if !value.is_object() {
        return Err(ApiError::Unprocessable(format!(
            "the body must be a JSON object, not {}",
            kind(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// Parses JSON into a [`Value`] strictly: repeated keys refused, integral floats made integers.
pub fn parse_value(body: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Strict::deserialize(&mut de)
        .and_then(|s| de.end().map(|()| s.0))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
        })?;
    Ok(v)
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // 1.0 is the integer 1 (JSON Schema's reading); beyond 2^53 a float is no exact integer.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if v.fract() == 0.0 && v.abs() <= EXACT {
            return Ok(Value::Number(if v < 0.0 {
                Number::from(v as i64)
            } else {
                Number::from(v as u64)
            }));
        }
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        n: u32,
        #[serde(default)]
        s: Option<String>,
    }

    #[test]
    fn strict_parse() {
        assert_eq!(parse::<T>(br#"{"n": 1.0}"#).unwrap().n, 1);
        let e = parse::<T>(br#"{"n": 1, "n": 2}"#).unwrap_err();
        assert!(e.reason().contains("duplicate key \"n\""), "{e}");
        let e = parse::<T>(br#"{"n": 1, "x": 2}"#).unwrap_err();
        assert!(e.reason().contains("unknown field `x`"), "{e}");
        let e = parse::<T>(br#"[1]"#).unwrap_err();
        assert!(e.reason().contains("not an array"), "{e}");
        let e = parse::<T>(br#"{"n": 1.5}"#).unwrap_err();
        assert!(matches!(e, ApiError::Unprocessable(_)), "{e}");
        assert!(matches!(parse::<T>(b"{"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            parse::<T>(br#"{"n":1} x"#),
            Err(ApiError::BadRequest(_))
        ));
        let nested = parse_value(br#"{"a": {"b": 1, "b": 2}}"#).unwrap_err();
        assert!(nested.reason().contains("duplicate key \"b\""));
        assert_eq!(parse::<T>(br#"{"n": 7, "s": null}"#).unwrap().s, None);
    }

    #[test]
    fn integral_floats_parse_exactly() {
        // Found by schemathesis: without correctly rounded parsing this literal read as
        // 4268113609052782.5 (one unit in the last place off) and an integer was refused.
        let v = parse_value(br#"{"n": 4268113609052782.0}"#).unwrap();
        assert_eq!(v["n"].as_u64(), Some(4_268_113_609_052_782));
        let v = parse_value(br#"{"n": 4268113609052782.5}"#).unwrap();
        assert_eq!(v["n"].as_f64(), Some(4_268_113_609_052_782.5));
        let v = parse_value(br#"{"n": -9007199254740992.0}"#).unwrap();
        assert_eq!(v["n"].as_i64(), Some(-9_007_199_254_740_992));
    }

    #[test]
    fn media_type() {
        let mut h = HeaderMap::new();
        assert!(check_json_type(&h).is_ok());
        h.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        assert!(matches!(
            check_json_type(&h),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_json_type(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(check_json_type(&h).is_ok());
    }
}
