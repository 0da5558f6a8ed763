//! Log drains through the API: added, listed, added again, removed; bad URLs and addresses
//! drains may not reach refused; other apps' owners kept out. Real sockets, a real
//! redis-server, every answer checked against the OpenAPI document.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, ApiServer};
use http::Method;
use pier_model::client::ApiResponse;
use pier_model::drain::DrainPolicy;
use serde_json::json;

const DRAINS: &str = "/v1/apps/blog/drains";

/// `POST` a drain of blog to `url` as `who`, expecting `status`.
async fn add_drain(who: &Api, url: &str, status: u16) -> ApiResponse {
    who.expect(Method::POST, DRAINS, Some(json!({ "url": url })), status)
        .await
}

/// An API with the platform's routes whose drains may reach loopback (as `pier up`'s).
async fn api_allowing_loopback() -> ApiServer {
    ApiServer::start_platform_configured(Default::default(), |s| {
        s.with_drain_policy(DrainPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        })
    })
    .await
}

#[tokio::test]
async fn drains_are_added_once_listed_and_removed() {
    let api = api_allowing_loopback().await;
    let blog = api.app_with_owner("blog").await;
    let empty = blog.expect(Method::GET, DRAINS, None, 200).await;
    assert_eq!(empty.body["drains"], json!([]));

    let made = add_drain(&blog, "SYSLOG://127.0.0.1:6514", 201).await;
    let id = made.body["id"].as_str().unwrap().to_string();
    assert_eq!(made.body["url"], "syslog://127.0.0.1:6514");
    assert_eq!(made.body["kind"], "syslog");
    assert_eq!(made.body["delivered"], 0);
    assert_eq!(made.body["dropped"], 0);
    assert!(made.body["last_error"].is_null());
    assert!(made.body["created_at_ms"].as_u64().unwrap() > 0);

    // The same URL (in any spelling that normalises to it) answers the drain there: 200.
    let again = add_drain(&blog, "syslog://127.0.0.1:6514/", 200).await;
    assert_eq!(again.body["id"], id.as_str());
    let https = add_drain(&blog, "https://localhost:8443/logs?app=blog", 201).await;
    assert_eq!(https.body["kind"], "https");
    assert_eq!(https.body["url"], "https://localhost:8443/logs?app=blog");

    let list = blog.expect(Method::GET, DRAINS, None, 200).await;
    let ids: Vec<&str> = list.body["drains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], id);

    // Stored as docs/platform.md says: a hash per app, the app in the set, a cursor per drain.
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    assert_eq!(store.drained_apps().await.unwrap(), ["blog"]);
    assert_eq!(
        store.drain_cursor("blog", &id).await.unwrap().as_deref(),
        Some("0-0")
    );

    blog.expect(Method::DELETE, &format!("{DRAINS}/{id}"), None, 204)
        .await;
    let gone = blog
        .expect(Method::DELETE, &format!("{DRAINS}/{id}"), None, 404)
        .await;
    assert!(gone.reason().contains("has no drain"), "{}", gone.text);
    blog.expect(Method::DELETE, &format!("{DRAINS}/no%20such"), None, 404)
        .await;
    assert_eq!(store.drain_cursor("blog", &id).await.unwrap(), None);
    let list = blog.expect(Method::GET, DRAINS, None, 200).await;
    assert_eq!(list.body["drains"].as_array().unwrap().len(), 1);
    let other = list.body["drains"][0]["id"].as_str().unwrap().to_string();
    blog.expect(Method::DELETE, &format!("{DRAINS}/{other}"), None, 204)
        .await;
    assert!(store.drained_apps().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_new_drain_starts_after_the_lines_already_written() {
    let api = api_allowing_loopback().await;
    let blog = api.app_with_owner("blog").await;
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    let line = pier_model::platform::LogLine {
        id: String::new(),
        at_ms: 1,
        source: "app".into(),
        process: "web.1".into(),
        line: "before".into(),
    };
    store
        .append_logs(&[("blog".into(), line.clone()), ("blog".into(), line)])
        .await
        .unwrap();
    let newest = store.recent_logs("blog", 1).await.unwrap()[0].id.clone();
    let made = add_drain(&blog, "syslog://127.0.0.1:514", 201).await;
    let id = made.body["id"].as_str().unwrap();
    assert_eq!(store.drain_cursor("blog", id).await.unwrap(), Some(newest));
    let rec = &store.drains("blog").await.unwrap()[0];
    assert_eq!(rec.offset, 2, "the lines before it are not its to deliver");
}

#[tokio::test]
async fn bad_urls_and_the_limit_are_refused_with_the_reason() {
    let api = api_allowing_loopback().await;
    let blog = api.app_with_owner("blog").await;
    let long = format!("https://localhost/{}", "a".repeat(2100));
    for (url, why) in [
        ("ftp://127.0.0.1:21", "unknown drain scheme"),
        ("127.0.0.1:514", "not a drain URL"),
        ("syslog://:514", "no host"),
        ("syslog://127.0.0.1", "needs a port"),
        ("syslog://user:pw@127.0.0.1:514", "no user or password"),
        ("syslog://127.0.0.1:514/path", "no path"),
        ("https://bad host/", "printable ASCII"),
        ("https://no-such-host.invalid/", "does not resolve"),
        (long.as_str(), "longer than 2048"),
    ] {
        let r = add_drain(&blog, url, 422).await;
        assert!(r.reason().contains(why), "{url}: {}", r.text);
    }
    blog.expect(Method::POST, DRAINS, Some(json!({"href": "x"})), 422)
        .await;
    for port in 1..=5 {
        blog.expect(
            Method::POST,
            DRAINS,
            Some(json!({"url": format!("syslog://127.0.0.1:{port}")})),
            201,
        )
        .await;
    }
    let r = add_drain(&blog, "syslog://127.0.0.1:6", 422).await;
    assert!(
        r.reason().contains("the most an app may have"),
        "{}",
        r.text
    );
    // One already there is still answered.
    add_drain(&blog, "syslog://127.0.0.1:5", 200).await;
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_the_operator_allows_them() {
    // No --drain-allow: loopback, private and metadata addresses are refused, also by name.
    let api = ApiServer::start_platform().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    for url in [
        "syslog://127.0.0.1:514",
        "syslog://10.0.0.5:514",
        "syslog+tls://192.168.1.10:6514",
        "https://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
        "syslog://0.0.0.0:514",
        "https://localhost/logs",
    ] {
        // The operator too: the drainer sits inside the platform whoever adds the drain.
        let r = add_drain(&op, url, 422).await;
        assert!(
            r.reason().contains("drains may not reach it") && r.reason().contains("--drain-allow"),
            "{url}: {}",
            r.text
        );
    }
    // A public address is fine without any allowance.
    add_drain(&op, "syslog://93.184.216.34:514", 201).await;

    // With --drain-allow 127.0.0.0/8, loopback is accepted and private networks are not.
    let api = api_allowing_loopback().await;
    let blog = api.app_with_owner("blog").await;
    add_drain(&blog, "syslog://127.0.0.1:514", 201).await;
    let r = add_drain(&blog, "syslog://10.0.0.5:514", 422).await;
    assert!(r.reason().contains("10.0.0.5 is private"), "{}", r.text);
}

#[tokio::test]
async fn owners_see_and_change_only_their_own_apps_drains() {
    let api = api_allowing_loopback().await;
    let blog = api.app_with_owner("blog").await;
    let shop = api.app_with_owner("shop").await;
    let made = add_drain(&blog, "syslog://127.0.0.1:514", 201).await;
    let id = made.body["id"].as_str().unwrap();
    shop.expect(Method::GET, DRAINS, None, 403).await;
    add_drain(&shop, "syslog://127.0.0.1:515", 403).await;
    shop.expect(Method::DELETE, &format!("{DRAINS}/{id}"), None, 403)
        .await;
    // The operator sees every app's; an unknown app is a 404.
    let list = api.operator().expect(Method::GET, DRAINS, None, 200).await;
    assert_eq!(list.body["drains"].as_array().unwrap().len(), 1);
    api.operator()
        .expect(Method::GET, "/v1/apps/nope/drains", None, 404)
        .await;
    api.client(None)
        .expect(Method::GET, DRAINS, None, 401)
        .await;
}

#[tokio::test]
async fn deleting_an_app_removes_its_drains() {
    let api = api_allowing_loopback().await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    let made = add_drain(&op, "syslog://127.0.0.1:514", 201).await;
    let id = made.body["id"].as_str().unwrap();
    op.expect(Method::DELETE, "/v1/apps/blog", None, 204).await;
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    assert!(store.drains("blog").await.unwrap().is_empty());
    assert!(store.drained_apps().await.unwrap().is_empty());
    assert_eq!(store.drain_cursor("blog", id).await.unwrap(), None);
    // Made again under the same name, it starts with none.
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    let list = op.expect(Method::GET, DRAINS, None, 200).await;
    assert_eq!(list.body["drains"], json!([]));
}
