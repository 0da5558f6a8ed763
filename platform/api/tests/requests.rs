//! Hostile and malformed requests: bodies that are slow, large, not JSON or not the documented
//! shape, token guessing, and settings values that would hurt visitors. Each answer is the
//! status the document declares, with the reason named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::ApiServer;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (and `body`) raw, returns the whole answer as text (the server closes or the
/// answer ends within 10 s).
async fn raw(api: &ApiServer, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn auth() -> String {
    format!("Authorization: Bearer {}\r\n", common::OPERATOR)
}

#[tokio::test]
async fn slow_large_and_non_json_bodies_get_408_413_415() {
    let api = ApiServer::start_with(|s| s.with_body_timeout(Duration::from_secs(1))).await;
    // A body that stops half-way: 408 once the deadline passes, and the connection closes.
    let started = Instant::now();
    let head = format!(
        "POST /v1/apps HTTP/1.1\r\nHost: api\r\n{}Content-Type: application/json\r\nContent-Length: 40\r\n\r\n",
        auth()
    );
    let answer = raw(&api, &head, b"{\"name\":").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"timeout\""), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A declared length over the limit: 413 at once, nothing of the body read.
    let head = format!(
        "POST /v1/apps HTTP/1.1\r\nHost: api\r\n{}Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
        auth()
    );
    let started = Instant::now();
    let answer = raw(&api, &head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("999999999 bytes"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // Not JSON by its media type: 415, with or without a Content-Type.
    for ct in ["Content-Type: text/plain\r\n", ""] {
        let head = format!(
            "POST /v1/apps HTTP/1.1\r\nHost: api\r\n{}{ct}Content-Length: 13\r\n\r\n",
            auth()
        );
        let answer = raw(&api, &head, br#"{"name":"ab"}"#).await;
        assert!(answer.starts_with("HTTP/1.1 415"), "{ct}: {answer}");
        assert!(answer.contains("application/json"), "{answer}");
    }
    // With parameters and in any case, JSON is JSON.
    let head = format!(
        "POST /v1/apps HTTP/1.1\r\nHost: api\r\n{}Content-Type: Application/JSON; charset=utf-8\r\nContent-Length: 13\r\n\r\n",
        auth()
    );
    let answer = raw(&api, &head, br#"{"name":"ab"}"#).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // No app was made by any refused request.
    assert_eq!(api.registry.app_names().await.unwrap(), ["ab"]);
}

#[tokio::test]
async fn bodies_must_be_the_documented_object_with_each_key_once() {
    let api = ApiServer::start().await;
    let op = api.operator();
    for (body, why) in [
        (r#"["blog"]"#, "must be a JSON object, not an array"),
        (r#""blog""#, "not a string"),
        (r#"null"#, "not null"),
        (r#"{"name":"blog","name":"shop"}"#, "duplicate key \"name\""),
        (r#"{"name":"blog","colour":1}"#, "unknown field `colour`"),
        (
            r#"{"name":"blog","settings":{"retries":1,"retries":2}}"#,
            "duplicate key \"retries\"",
        ),
    ] {
        let r = op
            .client
            .call_raw(Method::POST, "/v1/apps", body.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        let reason = r.body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{body}: {}", r.text);
    }
    assert!(api.registry.app_names().await.unwrap().is_empty());
    // A number written with a zero fraction is the integer it is.
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    let r = op
        .expect(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({"retries": 2.0})),
            200,
        )
        .await;
    assert_eq!(r.body["settings"]["retries"], 2);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_guessing_is_throttled() {
    let api =
        ApiServer::start_with(|s| s.with_auth_failures(pier_api::throttle::FailureLimiter::new(3)))
            .await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let head = format!(
            "GET /v1/apps HTTP/1.1\r\nHost: api\r\nAuthorization: {scheme}  {}\r\nConnection: close\r\n\r\n",
            common::OPERATOR
        );
        let answer = raw(&api, &head, b"").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
    // Three wrong tokens, then 429 with Retry-After for everything from this address, the
    // right token included.
    for _ in 0..3 {
        api.client(Some("pier_wrong"))
            .expect(Method::GET, "/v1/apps", None, 401)
            .await;
    }
    let head = "GET /v1/apps HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer pier_wrong\r\nConnection: close\r\n\r\n";
    let answer = raw(&api, head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let retry: u64 = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let r = api.operator().call(Method::GET, "/v1/apps", None).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"], "too-many-requests");
    // Unauthenticated routes stay open.
    api.client(None)
        .expect(Method::GET, "/healthz", None, 200)
        .await;
}

#[tokio::test]
async fn settings_that_would_hurt_visitors_are_refused_with_the_reason() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    for (patch, why) in [
        (
            json!({"action": {"type": "redirect", "location": "javascript:alert(1)"}}),
            "must be an http:// or https:// URL",
        ),
        (
            json!({"action": {"type": "redirect", "location": "data:text/html,x"}}),
            "must be an http:// or https:// URL",
        ),
        (
            json!({"action": {"type": "redirect", "location": "//evil.example/"}}),
            "must be an http:// or https:// URL",
        ),
        (json!({"hsts": "max-age=63072001"}), "two years"),
    ] {
        let r = owner
            .expect(Method::PATCH, "/v1/apps/blog", Some(patch.clone()), 422)
            .await;
        assert!(r.text.contains(why), "{patch}: {}", r.text);
    }
    owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({"hsts": "max-age=63072000; includeSubDomains",
                "action": {"type": "redirect", "location": "/elsewhere", "status": 308}})),
            200,
        )
        .await;
}

#[tokio::test]
async fn certificate_chains_are_bounded() {
    let api = ApiServer::start().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "shop"})), 201)
        .await;
    op.expect(
        Method::POST,
        "/v1/apps/shop/domains",
        Some(json!({"domain": "shop.example.com", "verified": true})),
        201,
    )
    .await;
    let (cert, key) = common::cert_pair(&["shop.example.com"], 2020, 2090);
    let path = "/v1/apps/shop/domains/shop.example.com/cert";
    let long = cert.repeat(11);
    let r = op
        .expect(
            Method::PUT,
            path,
            Some(json!({"cert": long, "key": key})),
            422,
        )
        .await;
    assert!(r.text.contains("11 certificates"), "{}", r.text);
    let huge = format!("{cert}{}", "#".repeat(70 * 1024));
    let r = op
        .expect(
            Method::PUT,
            path,
            Some(json!({"cert": huge, "key": key})),
            422,
        )
        .await;
    assert!(r.text.contains("65536"), "{}", r.text);
    op.expect(
        Method::PUT,
        path,
        Some(json!({"cert": cert, "key": key})),
        200,
    )
    .await;
}
