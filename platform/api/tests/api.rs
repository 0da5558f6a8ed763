//! The registry API over real loopback sockets, against a real redis-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Api, ApiServer};
use http::Method;
use pier_api::router::ROUTES;
use serde_json::json;

#[tokio::test]
async fn openapi_document_lists_exactly_the_routes_served() {
    let api = ApiServer::start().await;
    let doc = api
        .client(None)
        .expect(Method::GET, "/openapi.json", None, 200)
        .await
        .body;
    let methods = ["get", "post", "put", "patch", "delete"];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (k, _) in item.as_object().unwrap() {
            if methods.contains(&k.as_str()) {
                documented.insert((k.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    assert_eq!(documented, served);
    // Every $ref points at a declared schema.
    let text = doc.to_string();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let api = ApiServer::start().await;
    let anon = api.client(None);
    let h = anon.expect(Method::GET, "/healthz", None, 200).await;
    assert_eq!(h.body["status"], "ok");
    let r = anon.call(Method::GET, "/nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "not-found");
    let r = api.operator().call(Method::PUT, "/v1/apps", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body["error"], "method-not-allowed");
}

#[tokio::test]
async fn app_crud() {
    let api = ApiServer::start().await;
    let op = api.operator();
    let created = op
        .expect(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "blog", "settings": {"spin": true}})),
            201,
        )
        .await;
    assert_eq!(created.body["name"], "blog");
    assert_eq!(created.body["settings"]["spin"], true);
    // Creating it again is a conflict, and leaves the settings alone.
    let again = op
        .expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 409)
        .await;
    assert_eq!(again.body["error"], "conflict");
    assert!(api.registry.app("blog").await.unwrap().unwrap().spin);
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "shop"})), 201)
        .await;

    let list = op.expect(Method::GET, "/v1/apps", None, 200).await;
    let names: Vec<&str> = list.body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blog", "shop"]);

    let shown = op.expect(Method::GET, "/v1/apps/blog", None, 200).await;
    assert_eq!(shown.body["domains"], json!([]));
    assert_eq!(shown.body["backends"], json!([]));

    // PATCH replaces the given fields, keeps the others, null resets one.
    let patched = op
        .expect(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({
                "policy": "least-outstanding",
                "timeouts": {"connect_ms": 500},
                "action": {"type": "redirect", "location": "https://example.com/", "status": 301}
            })),
            200,
        )
        .await;
    assert_eq!(patched.body["settings"]["spin"], true);
    let rec = api.registry.app("blog").await.unwrap().unwrap();
    assert_eq!(rec.policy.as_deref(), Some("least-outstanding"));
    assert_eq!(rec.timeouts.connect_ms, Some(500));
    op.expect(
        Method::PATCH,
        "/v1/apps/blog",
        Some(json!({"spin": null})),
        200,
    )
    .await;
    assert!(!api.registry.app("blog").await.unwrap().unwrap().spin);

    // Settings the balancer would refuse are refused here, and nothing changes.
    for bad in [
        json!({"policy": "random"}),
        json!({"timeouts": {"connect_ms": 0}}),
        json!({"action": {"type": "redirect", "location": "x", "status": 200}}),
        json!({"colour": "blue"}),
        json!([1, 2]),
    ] {
        let r = op
            .expect(Method::PATCH, "/v1/apps/blog", Some(bad.clone()), 422)
            .await;
        assert!(!r.body["reason"].as_str().unwrap().is_empty(), "{bad}");
    }
    assert_eq!(
        api.registry
            .app("blog")
            .await
            .unwrap()
            .unwrap()
            .policy
            .as_deref(),
        Some("least-outstanding")
    );
    op.expect(
        Method::PATCH,
        "/v1/apps/nope",
        Some(json!({"spin": true})),
        404,
    )
    .await;

    op.expect(Method::DELETE, "/v1/apps/blog", None, 204).await;
    op.expect(Method::GET, "/v1/apps/blog", None, 404).await;
    op.expect(Method::DELETE, "/v1/apps/blog", None, 404).await;
    assert_eq!(api.registry.app_names().await.unwrap(), ["shop"]);
}

#[tokio::test]
async fn malformed_and_invalid_bodies() {
    let api = ApiServer::start().await;
    let op = api.operator();
    // Not JSON at all: 400.
    let r = op
        .client
        .call(Method::POST, "/v1/apps", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"], "bad-request");
    // JSON of the wrong shape: 422.
    op.expect(Method::POST, "/v1/apps", Some(json!({"nom": "x"})), 422)
        .await;
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": 5})), 422)
        .await;
    for bad in ["Blog", "my_app", "-x", "", &"a".repeat(64), "a/b"] {
        let r = op
            .expect(Method::POST, "/v1/apps", Some(json!({"name": bad})), 422)
            .await;
        assert!(
            r.body["reason"].as_str().unwrap().contains("app name"),
            "{bad}"
        );
    }
    assert!(api.registry.app_names().await.unwrap().is_empty());
}

#[tokio::test]
async fn owners_cannot_point_backends_at_the_platform_itself() {
    // One machine (as `pier up` has it): loopback is allowed, the platform's own endpoints,
    // cloud metadata and friends in any spelling are not.
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    assert_eq!(add_backend(&owner, "127.0.0.1:9000").await.status, 201);
    let own = [
        api.addr.to_string(),
        format!("127.0.0.1:{}", api.redis.port),
        format!("[::ffff:127.0.0.1]:{}", api.addr.port()),
    ];
    for bad in own.iter().map(String::as_str).chain([
        "169.254.169.254:80",
        "[::ffff:169.254.169.254]:80",
        "[::169.254.169.254]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "[2002:a9fe:a9fe::1]:80",
        "0.0.0.0:8000",
        "[fe80::1]:80",
        "224.0.0.1:80",
    ]) {
        let r = add_backend(&owner, bad).await;
        assert_eq!(r.status, 403, "{bad}: {}", r.text);
        assert_eq!(r.body["error"], "forbidden");
        assert!(r.text.contains("not an app instance"), "{}", r.text);
    }
    // The operator may register anything (it knows what it is doing).
    let r = add_backend(&api.operator(), "169.254.169.254:80").await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Nothing refused reached the registry.
    let listed = owner
        .call(Method::GET, "/v1/apps/blog/backends", None)
        .await;
    let n = listed.body["backends"].as_array().unwrap().len();
    assert_eq!(n, 2, "{}", listed.text);

    // No allow-list: loopback is the operator's to allow.
    let api = ApiServer::start_with(|s| s.with_backend_policy(Default::default())).await;
    let owner = api.app_with_owner("blog").await;
    let r = add_backend(&owner, "127.0.0.1:9000").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("--backend-allow"), "{}", r.text);
    assert_eq!(add_backend(&owner, "10.1.2.3:8000").await.status, 201);

    // With an allow-list (the runners' network), owners stay inside it.
    let api = ApiServer::start_with(|s| {
        s.with_backend_policy(pier_api::netpolicy::BackendPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            endpoints: vec!["10.0.0.2:7070".parse().unwrap()],
        })
    })
    .await;
    let owner = api.app_with_owner("blog").await;
    assert_eq!(add_backend(&owner, "10.1.2.3:8000").await.status, 201);
    let r = add_backend(&owner, "10.0.0.2:7070").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("platform's own endpoint"), "{}", r.text);
    let r = add_backend(&owner, "192.168.0.9:9901").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text.contains("outside the networks allowed"),
        "{}",
        r.text
    );
    assert!(r.text.contains("10.0.0.0/8"), "{}", r.text);
    let r = add_backend(&api.operator(), "127.0.0.1:9901").await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn h2c_apps_and_https_backends_conflict_both_ways() {
    // A valid request that the app's present state refuses is a 409, not a 422: the same body
    // succeeds once the conflicting part is gone.
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    assert_eq!(
        add_backend(&owner, "https://127.0.0.1:9443").await.status,
        201
    );
    let to_h2c = json!({ "backend_protocol": "h2c" });
    let r = owner
        .call(Method::PATCH, "/v1/apps/blog", Some(to_h2c.clone()))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["error"], "conflict", "{}", r.text);
    assert!(r.text.contains("remove it first"), "{}", r.text);
    let app = owner.call(Method::GET, "/v1/apps/blog", None).await;
    assert_ne!(
        app.body["settings"]["backend_protocol"], "h2c",
        "{}",
        app.text
    );

    // Without the https backend the same patch lands, and an https backend is then refused.
    let listed = owner
        .call(Method::GET, "/v1/apps/blog/backends", None)
        .await;
    let id = listed.body["backends"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = owner
        .call(
            Method::DELETE,
            &format!("/v1/apps/blog/backends/{id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = owner
        .call(Method::PATCH, "/v1/apps/blog", Some(to_h2c))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = add_backend(&owner, "https://127.0.0.1:9443").await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("cleartext HTTP/2"), "{}", r.text);
    assert_eq!(add_backend(&owner, "127.0.0.1:9000").await.status, 201);
}

#[tokio::test]
async fn an_apps_limit_on_requests_in_flight_is_set_and_reset() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "max_in_flight": 50 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["settings"]["max_in_flight"], 50);
    let stored = api.registry.app("blog").await.unwrap().unwrap();
    assert_eq!(stored.max_in_flight, Some(50));
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "max_in_flight": -1 })),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "max_in_flight": null })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["settings"].get("max_in_flight").is_none(),
        "{}",
        r.text
    );
    // Slow start, in milliseconds, at most an hour.
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "slow_start_ms": 30000 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["settings"]["slow_start_ms"], 30000);
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "slow_start_ms": 3600001 })),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // Consistent hashing on a cookie, with its bound on load.
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "policy": "consistent-hash", "hash_on": "cookie:sid", "hash_balance": 150 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["settings"]["policy"], "consistent-hash");
    assert_eq!(r.body["settings"]["hash_on"], "cookie:sid");
    assert_eq!(r.body["settings"]["hash_balance"], 150);
    for bad in [
        json!({ "hash_on": "query:id" }),
        json!({ "hash_on": "header:" }),
        json!({ "hash_balance": 99 }),
        json!({ "hash_balance": 1001 }),
    ] {
        let r = owner
            .call(Method::PATCH, "/v1/apps/blog", Some(bad.clone()))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
    }
    // Back to the defaults (client address, 125 %): nothing stored.
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "hash_on": null, "hash_balance": 125 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["settings"].get("hash_on").is_none(), "{}", r.text);
    // The adaptive limit, on for this app.
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(json!({ "adaptive_limit": true })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["settings"]["adaptive_limit"], true);
}

#[tokio::test]
async fn health_checks_are_set_checked_and_reset() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let patch = |v: serde_json::Value| json!({ "health_check": v });
    let r = owner
        .call(
            Method::PATCH,
            "/v1/apps/blog",
            Some(patch(
                json!({ "path": "/healthz", "interval_ms": 1000, "fall": 2 }),
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let stored = api.registry.app("blog").await.unwrap().unwrap();
    let hc = stored.health_check.unwrap();
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!((hc.interval_ms, hc.fall), (Some(1000), Some(2)));
    // Refused by the contract's schema or by the balancer's own rules, naming the field.
    for (bad, why) in [
        (json!({ "path": "/h", "tcp": true }), "health_check"),
        (json!({}), "health_check"),
        (json!({ "tcp": true, "interval_ms": 5 }), "interval"),
        (json!({ "path": "/h", "colour": "red" }), "colour"),
    ] {
        let r = owner
            .call(Method::PATCH, "/v1/apps/blog", Some(patch(bad.clone())))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
        assert!(r.text.contains(why), "{bad}: {}", r.text);
    }
    let r = owner
        .call(Method::PATCH, "/v1/apps/blog", Some(patch(json!(null))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(api
        .registry
        .app("blog")
        .await
        .unwrap()
        .unwrap()
        .health_check
        .is_none());
}

#[tokio::test]
async fn backend_weights_are_stored_shown_and_checked() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let body = json!({ "address": "127.0.0.1:9000", "id": "big", "weight": 5 });
    let r = owner
        .call(Method::POST, "/v1/apps/blog/backends", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["weight"], 5);
    let r = add_backend(&owner, "127.0.0.1:9001").await;
    assert_eq!(r.body["weight"], 1, "{}", r.text);
    let stored = api.registry.app_backends("blog").await.unwrap();
    let big = stored.iter().find(|(id, _)| id == "big").unwrap();
    assert_eq!(big.1.weight, Some(5));
    for bad in [0, 1001] {
        let body = json!({ "address": "127.0.0.1:9002", "weight": bad });
        let r = owner
            .call(Method::POST, "/v1/apps/blog/backends", Some(body))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
        assert!(r.text.contains("weight"), "{}", r.text);
    }
}

/// Registers a backend at `address` for app `blog`.
async fn add_backend(api: &Api, address: &str) -> pier_model::client::ApiResponse {
    let body = json!({ "address": address });
    api.call(Method::POST, "/v1/apps/blog/backends", Some(body))
        .await
}

#[tokio::test]
async fn backends_register_heartbeat_expire_deregister() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let r = owner
        .expect(
            Method::POST,
            "/v1/apps/blog/backends",
            Some(json!({"address": "127.0.0.1:9001", "id": "web-1", "ttl_s": 30})),
            201,
        )
        .await;
    let first_deadline = r.body["expires_at_ms"].as_u64().unwrap();
    assert!(first_deadline > pier_api::api::now_ms() + 25_000);
    assert_eq!(r.body["live"], true);
    // Without an id one is generated; without a TTL it never expires.
    let r = owner
        .expect(
            Method::POST,
            "/v1/apps/blog/backends",
            Some(json!({"address": "[::1]:9002"})),
            201,
        )
        .await;
    let generated = r.body["id"].as_str().unwrap().to_string();
    assert!(!generated.is_empty());
    assert_eq!(r.body["expires_at_ms"], 0);

    let r = owner
        .expect(
            Method::PUT,
            "/v1/apps/blog/backends/web-1/heartbeat",
            Some(json!({"ttl_s": 600})),
            200,
        )
        .await;
    let new_deadline = r.body["expires_at_ms"].as_u64().unwrap();
    assert!(new_deadline > first_deadline + 500_000);
    assert_eq!(r.body["address"], "127.0.0.1:9001");
    let stored = api.registry.app_backends("blog").await.unwrap();
    assert_eq!(stored.len(), 2);
    // Stored exactly (the registry rewrites the record's JSON in Lua).
    assert!(
        stored.iter().any(|(id, b)| id == "web-1"
            && b.expires_at_ms == new_deadline
            && b.address == "127.0.0.1:9001"),
        "{stored:?}"
    );

    owner
        .expect(
            Method::PUT,
            "/v1/apps/blog/backends/ghost/heartbeat",
            Some(json!({"ttl_s": 5})),
            404,
        )
        .await;
    for bad in [
        json!({"address": "localhost:80"}),
        json!({"address": "10.0.0.1"}),
        json!({"address": "10.0.0.1:0"}),
        json!({"address": "10.0.0.1:80", "id": "a/b"}),
        json!({"address": "10.0.0.1:80", "ttl_s": 0}),
    ] {
        owner
            .expect(Method::POST, "/v1/apps/blog/backends", Some(bad), 422)
            .await;
    }

    // A backend whose deadline passes is listed as not live.
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/backends",
            Some(json!({"address": "127.0.0.1:9003", "id": "short", "ttl_s": 1})),
            201,
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let list = owner
        .expect(Method::GET, "/v1/apps/blog/backends", None, 200)
        .await;
    let live: Vec<(&str, bool)> = list.body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["live"].as_bool().unwrap()))
        .collect();
    assert!(live.contains(&("short", false)), "{live:?}");
    assert!(live.contains(&("web-1", true)), "{live:?}");

    owner
        .expect(Method::DELETE, "/v1/apps/blog/backends/web-1", None, 204)
        .await;
    owner
        .expect(Method::DELETE, "/v1/apps/blog/backends/web-1", None, 404)
        .await;
    let left: Vec<String> = api
        .registry
        .app_backends("blog")
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut want = vec![generated, "short".to_string()];
    want.sort();
    assert_eq!(left, want);
}

#[tokio::test]
async fn tokens_authenticate_and_owners_act_only_on_their_app() {
    let api = ApiServer::start().await;
    let a = api.app_with_owner("app-a").await;
    let b = api.app_with_owner("app-b").await;

    // No token, a malformed header, an unknown token: 401.
    let anon = api.client(None);
    let r = anon.expect(Method::GET, "/v1/apps", None, 401).await;
    assert_eq!(r.body["error"], "unauthorized");
    api.client(Some("pier_not-a-real-token"))
        .expect(Method::GET, "/v1/apps/app-a", None, 401)
        .await;
    anon.expect(Method::POST, "/v1/apps", Some(json!({"name": "x"})), 401)
        .await;

    // Owner A on app B: 403 everywhere.
    let forbidden: &[(Method, &str, Option<serde_json::Value>)] = &[
        (Method::GET, "/v1/apps/app-b", None),
        (Method::PATCH, "/v1/apps/app-b", Some(json!({"spin": true}))),
        (Method::GET, "/v1/apps/app-b/domains", None),
        (
            Method::POST,
            "/v1/apps/app-b/domains",
            Some(json!({"domain": "b.example.com"})),
        ),
        (Method::DELETE, "/v1/apps/app-b/domains/b.example.com", None),
        (
            Method::POST,
            "/v1/apps/app-b/domains/b.example.com/verify",
            None,
        ),
        (Method::GET, "/v1/apps/app-b/backends", None),
        (
            Method::POST,
            "/v1/apps/app-b/backends",
            Some(json!({"address": "127.0.0.1:1234"})),
        ),
        (
            Method::PUT,
            "/v1/apps/app-b/backends/x/heartbeat",
            Some(json!({"ttl_s": 5})),
        ),
        (Method::DELETE, "/v1/apps/app-b/backends/x", None),
        // Not even learning whether an app exists.
        (Method::GET, "/v1/apps/no-such-app", None),
        // Operator-only actions, even on its own app.
        (Method::POST, "/v1/apps", Some(json!({"name": "app-c"}))),
        (Method::DELETE, "/v1/apps/app-a", None),
        (Method::POST, "/v1/tokens", Some(json!({"app": "app-a"}))),
        (
            Method::POST,
            "/v1/apps/app-a/domains",
            Some(json!({"domain": "a.example.com", "verified": true})),
        ),
        (
            Method::POST,
            "/v1/apps/app-a/domains",
            Some(json!({"domain": "*"})),
        ),
    ];
    for (m, path, body) in forbidden {
        let r = a.call(m.clone(), path, body.clone()).await;
        assert_eq!(r.status, 403, "{m} {path}: {}", r.text);
        assert_eq!(r.body["error"], "forbidden");
    }
    assert!(!api.registry.app("app-b").await.unwrap().unwrap().spin);
    assert!(api.registry.app_domains("app-b").await.unwrap().is_empty());
    assert!(api.registry.app("app-c").await.unwrap().is_none());

    // Owner A on app A: allowed; and it sees only its own app.
    a.expect(
        Method::PATCH,
        "/v1/apps/app-a",
        Some(json!({"spin": true})),
        200,
    )
    .await;
    a.expect(
        Method::POST,
        "/v1/apps/app-a/backends",
        Some(json!({"address": "127.0.0.1:1234", "id": "one"})),
        201,
    )
    .await;
    let list = a.expect(Method::GET, "/v1/apps", None, 200).await;
    assert_eq!(list.body["apps"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["apps"][0]["name"], "app-a");
    b.expect(Method::GET, "/v1/apps/app-b", None, 200).await;

    // The operator makes tokens only for apps that exist, with valid names.
    let op = api.operator();
    op.expect(
        Method::POST,
        "/v1/tokens",
        Some(json!({"app": "ghost"})),
        404,
    )
    .await;
    op.expect(
        Method::POST,
        "/v1/tokens",
        Some(json!({"app": "Bad Name"})),
        422,
    )
    .await;
}

#[tokio::test]
async fn tokens_are_stored_only_hashed() {
    let api = ApiServer::start().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    let t = op
        .expect(
            Method::POST,
            "/v1/tokens",
            Some(json!({"app": "blog"})),
            201,
        )
        .await;
    let token = t.body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pier_"));
    assert_eq!(t.body["app"], "blog");
    let everything = api.redis.everything().await;
    for s in &everything {
        assert!(!s.contains(&token), "raw token stored in Redis: {s}");
        assert!(
            !s.contains(&token["pier_".len()..]),
            "token secret stored: {s}"
        );
        assert!(!s.contains(common::OPERATOR), "operator token stored: {s}");
    }
    let hash = pier_api::auth::hash_token(&token);
    let rec = api.registry.token(&hash).await.unwrap().unwrap();
    assert_eq!(rec.role, "owner");
    assert_eq!(rec.app.as_deref(), Some("blog"));
    // And the stored hash is what authenticates it.
    api.client(Some(&token))
        .expect(Method::GET, "/v1/apps/blog", None, 200)
        .await;
}

#[tokio::test]
async fn deleting_an_app_removes_its_domains_and_backends() {
    let api = ApiServer::start().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    op.expect(
        Method::POST,
        "/v1/apps/blog/domains",
        Some(json!({"domain": "blog.test", "verified": true})),
        201,
    )
    .await;
    op.expect(
        Method::POST,
        "/v1/apps/blog/backends",
        Some(json!({"address": "127.0.0.1:5000"})),
        201,
    )
    .await;
    op.expect(Method::DELETE, "/v1/apps/blog", None, 204).await;
    assert!(api.registry.domain("blog.test").await.unwrap().is_none());
    assert!(api.registry.app_backends("blog").await.unwrap().is_empty());
    op.expect(Method::GET, "/v1/apps/blog/domains", None, 404)
        .await;
    op.expect(
        Method::POST,
        "/v1/apps/blog/backends",
        Some(json!({"address": "127.0.0.1:5000"})),
        404,
    )
    .await;
}

#[tokio::test]
async fn deleting_an_app_revokes_its_owner_tokens() {
    let api = ApiServer::start().await;
    let blog_owner = api.app_with_owner("blog").await;
    let shop_owner = api.app_with_owner("shop").await;
    blog_owner
        .expect(Method::GET, "/v1/apps/blog", None, 200)
        .await;
    let op = api.operator();
    op.expect(Method::DELETE, "/v1/apps/blog", None, 204).await;
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    // The old owner of "blog" has no rights on the new "blog"; shop's owner keeps its own.
    blog_owner
        .expect(Method::GET, "/v1/apps/blog", None, 401)
        .await;
    shop_owner
        .expect(Method::GET, "/v1/apps/shop", None, 200)
        .await;
}

#[tokio::test]
async fn api_reconnects_when_redis_comes_back() {
    let mut api = ApiServer::start().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    api.redis.restart(false);
    // The first requests may fail (503) while the API notices; then it is back, on the new,
    // empty Redis.
    let start = std::time::Instant::now();
    loop {
        let r = op
            .call(Method::POST, "/v1/apps", Some(json!({"name": "blog"})))
            .await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.body["error"], "registry-unavailable");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "API still failing: {}",
            r.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    op.expect(Method::GET, "/v1/apps/blog", None, 200).await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = ApiServer::start().await;
    let body = format!("{{\"name\": \"{}\"}}", "a".repeat(1_100_000));
    let mut s = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/apps HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        common::OPERATOR,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before reading it all: a failed write is fine.
    let _ = s.write_all(body.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"too-large\""), "{text}");
    assert!(api.registry.app_names().await.unwrap().is_empty());
}

async fn add_domain(api: &ApiServer, app: &str, domain: &str, verified: bool) {
    api.operator()
        .expect(
            Method::POST,
            &format!("/v1/apps/{app}/domains"),
            Some(json!({"domain": domain, "verified": verified})),
            201,
        )
        .await;
}

#[tokio::test]
async fn certificates_put_show_delete() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("shop").await;
    add_domain(&api, "shop", "shop.example.com", true).await;
    add_domain(&api, "shop", "*.shop.example.com", true).await;
    let path = "/v1/apps/shop/domains/shop.example.com/cert";
    owner.expect(Method::GET, path, None, 404).await;

    let (cert, key) = common::cert_pair(&["shop.example.com", "*.shop.example.com"], 2020, 2090);
    let put = owner
        .expect(
            Method::PUT,
            path,
            Some(json!({"cert": cert, "key": key})),
            200,
        )
        .await;
    assert_eq!(put.body["domain"], "shop.example.com");
    assert_eq!(
        put.body["names"],
        json!(["shop.example.com", "*.shop.example.com"])
    );
    assert_eq!(put.body["not_before"], "2020-01-01T00:00:00Z");
    assert_eq!(put.body["not_after"], "2090-01-01T00:00:00Z");
    assert_eq!(put.body["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert!(put.body["subject"].as_str().unwrap().contains("CN="));
    let shown = owner.expect(Method::GET, path, None, 200).await;
    assert_eq!(shown.body, put.body);
    // The private key is never in an answer, not even as a field name.
    for r in [&put, &shown] {
        assert!(!r.text.contains("PRIVATE KEY") && !r.text.contains("\"key\""));
    }
    // Stored with its owner, the key kept for the balancers.
    let rec = api
        .registry
        .cert("shop.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rec.app.as_str(), rec.key.as_str()), ("shop", key.as_str()));

    // The same certificate serves the wildcard domain (any spelling in the path).
    let wild = "/v1/apps/shop/domains/%2A.Shop.Example.com/cert";
    let put = owner
        .expect(
            Method::PUT,
            wild,
            Some(json!({"cert": cert, "key": key})),
            200,
        )
        .await;
    assert_eq!(put.body["domain"], "*.shop.example.com");

    // The app view shows each domain's certificate at a glance.
    let app = owner.expect(Method::GET, "/v1/apps/shop", None, 200).await;
    let domains = app.body["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 2);
    for d in domains {
        assert_eq!(d["certificate"]["not_after"], "2090-01-01T00:00:00Z", "{d}");
        assert_eq!(
            d["certificate"]["fingerprint_sha256"],
            shown.body["fingerprint_sha256"]
        );
    }
    assert!(!app.text.contains("PRIVATE KEY"));

    // Delete: 204, then 404; the domain stays.
    owner.expect(Method::DELETE, path, None, 204).await;
    owner.expect(Method::DELETE, path, None, 404).await;
    owner.expect(Method::GET, path, None, 404).await;
    assert!(api
        .registry
        .cert("shop.example.com")
        .await
        .unwrap()
        .is_none());
    assert!(api
        .registry
        .domain("shop.example.com")
        .await
        .unwrap()
        .is_some());

    // Deleting the domain takes its certificate along.
    owner
        .expect(
            Method::DELETE,
            "/v1/apps/shop/domains/%2A.shop.example.com",
            None,
            204,
        )
        .await;
    assert!(api
        .registry
        .cert("*.shop.example.com")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn bad_certificates_are_refused_with_the_reason() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("shop").await;
    add_domain(&api, "shop", "shop.example.com", true).await;
    let path = "/v1/apps/shop/domains/shop.example.com/cert";
    let (cert, key) = common::cert_pair(&["shop.example.com"], 2020, 2090);
    let (_, other_key) = common::cert_pair(&["shop.example.com"], 2020, 2090);
    let (expired, expired_key) = common::cert_pair(&["shop.example.com"], 2000, 2001);
    let (future, future_key) = common::cert_pair(&["shop.example.com"], 2990, 2999);
    let (elsewhere, elsewhere_key) = common::cert_pair(&["www.shop.example.com"], 2020, 2090);
    let cases: &[(serde_json::Value, &str)] = &[
        (json!({"cert": "hello", "key": key}), "no certificate"),
        (
            json!({"cert": cert.replacen("MII", "M!I", 1), "key": key}),
            "bad PEM",
        ),
        (json!({"cert": cert, "key": "nothing"}), "no private key"),
        (json!({"cert": cert, "key": other_key}), "does not match"),
        (
            json!({"cert": expired, "key": expired_key}),
            "expired at 2001-01-01T00:00:00Z",
        ),
        (
            json!({"cert": future, "key": future_key}),
            "not valid before 2990-01-01",
        ),
        (
            json!({"cert": elsewhere, "key": elsewhere_key}),
            "does not cover shop.example.com (its names: www.shop.example.com)",
        ),
        (json!({"cert": cert}), "missing field `key`"),
        (
            json!({"cert": cert, "key": key, "chain": ""}),
            "unknown field",
        ),
    ];
    for (body, why) in cases {
        let r = owner
            .expect(Method::PUT, path, Some(body.clone()), 422)
            .await;
        assert_eq!(r.body["error"], "unprocessable");
        let reason = r.body["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{why}: {reason}");
        // The key's material is never echoed back.
        assert!(!reason.contains(&key[40..80]), "{reason}");
    }
    assert!(api
        .registry
        .cert("shop.example.com")
        .await
        .unwrap()
        .is_none());
    assert_eq!(api.registry.snapshot().await.unwrap().certs.len(), 0);
}

#[tokio::test]
async fn certificates_need_an_own_verified_domain() {
    let api = ApiServer::start().await;
    let shop = api.app_with_owner("shop").await;
    let blog = api.app_with_owner("blog").await;
    add_domain(&api, "shop", "shop.example.com", true).await;
    add_domain(&api, "blog", "blog.example.com", true).await;
    add_domain(&api, "shop", "pending.example.com", false).await;
    let body = |names: &[&str]| {
        let (cert, key) = common::cert_pair(names, 2020, 2090);
        Some(json!({"cert": cert, "key": key}))
    };
    let op = api.operator();
    // Unknown app, unknown domain, another app's domain: 404 (the operator too).
    for (who, path) in [
        (&op, "/v1/apps/nope/domains/shop.example.com/cert"),
        (&op, "/v1/apps/shop/domains/nope.example.com/cert"),
        (&op, "/v1/apps/shop/domains/blog.example.com/cert"),
        (&shop, "/v1/apps/shop/domains/blog.example.com/cert"),
    ] {
        let domain = path.split('/').nth(5).unwrap();
        who.expect(Method::PUT, path, body(&[domain]), 404).await;
        who.expect(Method::GET, path, None, 404).await;
        who.expect(Method::DELETE, path, None, 404).await;
    }
    // A pending domain: 409 until it is verified.
    let pending = "/v1/apps/shop/domains/pending.example.com/cert";
    let r = shop
        .expect(Method::PUT, pending, body(&["pending.example.com"]), 409)
        .await;
    assert!(r.body["reason"].as_str().unwrap().contains("not verified"));
    op.expect(
        Method::POST,
        "/v1/apps/shop/domains/pending.example.com/verify",
        Some(json!({"force": true})),
        200,
    )
    .await;
    shop.expect(Method::PUT, pending, body(&["pending.example.com"]), 200)
        .await;
    // The owner of another app: 403, whatever the domain; the operator may.
    let own = "/v1/apps/shop/domains/shop.example.com/cert";
    blog.expect(Method::PUT, own, body(&["shop.example.com"]), 403)
        .await;
    blog.expect(Method::GET, own, None, 403).await;
    blog.expect(Method::DELETE, own, None, 403).await;
    op.expect(Method::PUT, own, body(&["shop.example.com"]), 200)
        .await;
    op.expect(Method::GET, own, None, 200).await;
    // No token: 401.
    api.client(None).expect(Method::GET, own, None, 401).await;
    // Deleting the app deletes its certificates.
    op.expect(Method::DELETE, "/v1/apps/shop", None, 204).await;
    assert_eq!(api.registry.snapshot().await.unwrap().certs.len(), 0);
}

#[tokio::test]
async fn https_settings_are_kept_and_checked() {
    let api = ApiServer::start().await;
    let op = api.operator();
    let created = op
        .expect(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "shop", "settings": {"https_redirect": true}})),
            201,
        )
        .await;
    assert_eq!(created.body["settings"]["https_redirect"], true);
    let patched = op
        .expect(
            Method::PATCH,
            "/v1/apps/shop",
            Some(json!({"hsts": "max-age=31536000; includeSubDomains"})),
            200,
        )
        .await;
    assert_eq!(
        patched.body["settings"]["hsts"],
        "max-age=31536000; includeSubDomains"
    );
    let rec = api.registry.app("shop").await.unwrap().unwrap();
    assert!(rec.https_redirect);
    let settings = rec.to_settings().unwrap();
    assert_eq!(
        settings.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    for bad in [
        json!({"hsts": "includeSubDomains"}),
        json!({"hsts": "max-age=1\r\nx: y"}),
        json!({"https_redirect": "yes"}),
    ] {
        let r = op
            .expect(Method::PATCH, "/v1/apps/shop", Some(bad.clone()), 422)
            .await;
        assert!(!r.body["reason"].as_str().unwrap().is_empty(), "{bad}");
    }
    let reset = op
        .expect(
            Method::PATCH,
            "/v1/apps/shop",
            Some(json!({"hsts": null, "https_redirect": null})),
            200,
        )
        .await;
    assert_eq!(reset.body["settings"].get("hsts"), None);
    assert_eq!(reset.body["settings"].get("https_redirect"), None);
}

/// A gzipped tar of an app with these files, as `pier deploy` packs it.
fn app_archive(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut out = Vec::new();
    pier_slug::archive::pack_dir(dir.path(), &mut out, true).unwrap();
    out
}

#[tokio::test]
async fn platform_routes_answer_as_the_document_says() {
    let api = ApiServer::start_platform().await;
    let owner = api.app_with_owner("blog").await;
    let r = owner
        .expect(Method::GET, "/v1/apps/blog/releases", None, 200)
        .await;
    assert_eq!(r.body, json!({"current": null, "releases": []}));
    // Deploy: build output as NDJSON lines, then the release and the app's URL.
    let mut events = Vec::new();
    let r = owner
        .client
        .stream_lines(
            Method::POST,
            "/v1/apps/blog/deploys",
            "application/gzip",
            app_archive(&[
                ("Procfile", "web: python3 app.py\n"),
                ("app.py", "print(1)\n"),
            ])
            .into(),
            Duration::from_secs(60),
            &mut |l| events.push(serde_json::from_str::<pier_model::api::DeployEvent>(l).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    match events.last().unwrap() {
        pier_model::api::DeployEvent::Release { release, url } => {
            assert_eq!(release.version, 1);
            assert_eq!(url.as_deref(), Some("http://blog.apps.test/"));
        }
        other => panic!("{other:?}"),
    }
    assert!(events.iter().any(|e| matches!(e, pier_model::api::DeployEvent::Log { log } if log.contains("Procfile declares: web"))));
    let rel = owner
        .expect(Method::GET, "/v1/apps/blog/releases/v1", None, 200)
        .await;
    assert_eq!(rel.body["processes"]["web"], "python3 app.py");
    owner
        .expect(Method::GET, "/v1/apps/blog/releases/abc", None, 422)
        .await;
    owner
        .expect(Method::GET, "/v1/apps/blog/releases/9", None, 404)
        .await;
    // Config: a change is a release; bad names refused.
    let c = owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/config",
            Some(json!({"GREETING": "hi"})),
            200,
        )
        .await;
    assert_eq!(c.body, json!({"config": {"GREETING": "hi"}, "release": 2}));
    for bad in [
        json!({"PORT": "1"}),
        json!({"lower": "x"}),
        json!({"PIER_X": "1"}),
        json!({}),
    ] {
        owner
            .expect(Method::PATCH, "/v1/apps/blog/config", Some(bad), 422)
            .await;
    }
    owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/config",
            Some(json!({"GREETING": null})),
            200,
        )
        .await;
    let c = owner
        .expect(Method::GET, "/v1/apps/blog/config", None, 200)
        .await;
    assert_eq!(c.body, json!({"config": {}}));
    // Formation: web defaults to 1; only the Procfile's types; at most 100.
    let f = owner
        .expect(Method::GET, "/v1/apps/blog/formation", None, 200)
        .await;
    assert_eq!(f.body, json!({"formation": {"web": 1}}));
    let f = owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/formation",
            Some(json!({"web": 2})),
            200,
        )
        .await;
    assert_eq!(f.body, json!({"formation": {"web": 2}}));
    owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/formation",
            Some(json!({"worker": 1})),
            409,
        )
        .await;
    owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/formation",
            Some(json!({"web": 101})),
            422,
        )
        .await;
    let i = owner
        .expect(Method::GET, "/v1/apps/blog/instances", None, 200)
        .await;
    assert_eq!(i.body, json!({"instances": []}));
    let r = owner
        .expect(Method::POST, "/v1/apps/blog/restart", Some(json!({})), 202)
        .await;
    assert_eq!(r.body["generation"], 1);
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/restart",
            Some(json!({"instance": "web"})),
            422,
        )
        .await;
    // Rollback without a version: the newest earlier release that has a slug.
    let r = owner
        .expect(Method::POST, "/v1/apps/blog/rollback", Some(json!({})), 201)
        .await;
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.body["description"], "Rollback to v2");
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/rollback",
            Some(json!({"version": 9})),
            404,
        )
        .await;
    // Runners are the operator's; another owner sees nothing of blog.
    owner.expect(Method::GET, "/v1/runners", None, 403).await;
    let runners = api
        .operator()
        .expect(Method::GET, "/v1/runners", None, 200)
        .await;
    assert_eq!(runners.body, json!({"runners": []}));
    let other = api.app_with_owner("shop").await;
    other
        .expect(Method::GET, "/v1/apps/blog/releases", None, 403)
        .await;
    other
        .expect(
            Method::PATCH,
            "/v1/apps/blog/formation",
            Some(json!({"web": 0})),
            403,
        )
        .await;
}

#[tokio::test]
async fn addons_are_made_once_set_config_vars_and_need_a_confirmation_to_go() {
    let mut pg = pier_testkit::PostgresServer::start();
    let shared = pier_testkit::RedisServer::start();
    let api = ApiServer::start_platform_with(pier_api::addons::AddonServers {
        postgres: Some(pier_addons::postgres::Postgres::new(&pg.admin_url(), 5).unwrap()),
        redis: Some(pier_addons::redis::SharedRedis::new(&shared.url()).unwrap()),
    })
    .await;
    let blog = api.app_with_owner("blog").await;
    let a = blog
        .expect(
            Method::POST,
            "/v1/apps/blog/addons",
            Some(json!({"kind": "postgres"})),
            201,
        )
        .await;
    assert_eq!(a.body["resource"], "pier_blog");
    let url = a.body["config"]["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("postgres://pier_blog:"), "{url}");
    // Again (a retry after a timeout): the same add-on, no second database or release.
    let again = blog
        .expect(
            Method::POST,
            "/v1/apps/blog/addons",
            Some(json!({"kind": "postgres"})),
            200,
        )
        .await;
    assert_eq!(again.body["config"]["DATABASE_URL"], url.as_str());
    let c = blog
        .expect(Method::GET, "/v1/apps/blog/config", None, 200)
        .await;
    assert_eq!(c.body["config"]["DATABASE_URL"], url.as_str());
    let r = blog
        .expect(
            Method::POST,
            "/v1/apps/blog/addons",
            Some(json!({"kind": "redis"})),
            201,
        )
        .await;
    assert_eq!(r.body["config"]["REDIS_PREFIX"], "blog:");
    let rel = blog
        .expect(Method::GET, "/v1/apps/blog/releases", None, 200)
        .await;
    assert_eq!(
        rel.body["releases"].as_array().unwrap().len(),
        2,
        "one release per add-on"
    );
    let list = blog
        .expect(Method::GET, "/v1/apps/blog/addons", None, 200)
        .await;
    assert_eq!(list.body["addons"].as_array().unwrap().len(), 2);
    // Refusals: unknown kind or plan, no confirmation (nothing happens), another app's add-on.
    blog.expect(
        Method::POST,
        "/v1/apps/blog/addons",
        Some(json!({"kind": "mysql"})),
        422,
    )
    .await;
    // Another plan of a kind the app has: a conflict, not a second one.
    blog.expect(
        Method::POST,
        "/v1/apps/blog/addons",
        Some(json!({"kind": "redis", "plan": "dedicated"})),
        409,
    )
    .await;
    blog.expect(
        Method::POST,
        "/v1/apps/blog/addons",
        Some(json!({"kind": "redis", "plan": "huge"})),
        422,
    )
    .await;
    blog.expect(
        Method::DELETE,
        "/v1/apps/blog/addons/postgres",
        Some(json!({})),
        422,
    )
    .await;
    blog.expect(
        Method::DELETE,
        "/v1/apps/blog/addons/postgres",
        Some(json!({"confirm": "shop"})),
        422,
    )
    .await;
    let shop = api.app_with_owner("shop").await;
    shop.expect(Method::GET, "/v1/apps/blog/addons", None, 403)
        .await;
    // A dedicated Redis needs a live runner to run on: none here, so 503 and nothing kept.
    shop.expect(
        Method::POST,
        "/v1/apps/shop/addons",
        Some(json!({"kind": "redis", "plan": "dedicated"})),
        503,
    )
    .await;
    let none = shop
        .expect(Method::GET, "/v1/apps/shop/addons", None, 200)
        .await;
    assert_eq!(none.body["addons"], json!([]));
    // The app cannot be deleted while it has add-ons.
    api.operator()
        .expect(Method::DELETE, "/v1/apps/blog", None, 409)
        .await;
    // Destroyed with the confirmation: 204, its config var unset; then 404.
    blog.expect(
        Method::DELETE,
        "/v1/apps/blog/addons/postgres",
        Some(json!({"confirm": "blog"})),
        204,
    )
    .await;
    let c = blog
        .expect(Method::GET, "/v1/apps/blog/config", None, 200)
        .await;
    assert!(c.body["config"].get("DATABASE_URL").is_none(), "{}", c.body);
    blog.expect(
        Method::DELETE,
        "/v1/apps/blog/addons/postgres",
        Some(json!({"confirm": "blog"})),
        404,
    )
    .await;
    // A server that is down: 502 with the reason, nothing recorded, and a later try works.
    pg.kill();
    let down = shop
        .expect(
            Method::POST,
            "/v1/apps/shop/addons",
            Some(json!({"kind": "postgres"})),
            502,
        )
        .await;
    assert!(down.reason().contains("PostgreSQL"), "{}", down.text);
    let list = shop
        .expect(Method::GET, "/v1/apps/shop/addons", None, 200)
        .await;
    assert_eq!(list.body, json!({"addons": []}));
}

#[tokio::test]
async fn addons_without_a_server_are_refused_with_the_reason() {
    let api = ApiServer::start_platform().await;
    let blog = api.app_with_owner("blog").await;
    let r = blog
        .expect(
            Method::POST,
            "/v1/apps/blog/addons",
            Some(json!({"kind": "postgres"})),
            422,
        )
        .await;
    assert!(r.reason().contains("--addon-postgres"), "{}", r.text);
    let r = blog
        .expect(
            Method::POST,
            "/v1/apps/blog/addons",
            Some(json!({"kind": "redis"})),
            422,
        )
        .await;
    assert!(r.reason().contains("--addon-redis"), "{}", r.text);
}

#[tokio::test]
async fn logs_are_read_in_order_and_filtered() {
    let api = ApiServer::start_platform().await;
    let blog = api.app_with_owner("blog").await;
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    let line = |ps: &str, text: &str| {
        (
            "blog".to_string(),
            pier_model::platform::LogLine {
                id: String::new(),
                at_ms: 1,
                source: "app".into(),
                process: ps.into(),
                line: text.into(),
            },
        )
    };
    store
        .append_logs(&[
            line("web.1", "one"),
            line("web.2", "two \u{1b}[31mred"),
            line("web.1", "three"),
        ])
        .await
        .unwrap();
    let r = blog
        .expect(Method::GET, "/v1/apps/blog/logs", None, 200)
        .await;
    let texts: Vec<&str> = r.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["one", "two \u{1b}[31mred", "three"]);
    let r = blog
        .expect(Method::GET, "/v1/apps/blog/logs?n=1&ps=web.1", None, 200)
        .await;
    assert_eq!(r.body["lines"][0]["line"], "three");
    assert_eq!(r.body["lines"].as_array().unwrap().len(), 1);
    blog.expect(Method::GET, "/v1/apps/blog/logs?n=0", None, 422)
        .await;
    blog.expect(Method::GET, "/v1/apps/blog/logs?colour=red", None, 422)
        .await;
    blog.expect(Method::GET, "/v1/apps/blog/logs?source=db", None, 422)
        .await;
    let shop = api.app_with_owner("shop").await;
    shop.expect(Method::GET, "/v1/apps/blog/logs", None, 403)
        .await;
}
