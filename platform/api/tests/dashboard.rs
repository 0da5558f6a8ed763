//! The web dashboard (`/ui`): its files and their security headers over a real socket, and an
//! owner's session in headless Chromium (the test kit's DevTools driver) against the API with
//! its own Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::ApiServer;
use http::Method;
use pier_model::platform::LogLine;
use pier_testkit::browser::Browser;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(api: &ApiServer, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn dashboard_files_are_served_with_a_strict_policy() {
    let api = ApiServer::start().await;
    let mut weight = 0;
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (head, body) = get(&api, "GET", path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"));
        assert!(head.contains("x-frame-options: deny"));
        assert!(head.contains("referrer-policy: no-referrer"));
        weight += body.len();
    }
    // No inline script or handler in the page: the policy would block it anyway.
    let (_, page) = get(&api, "GET", "/ui/").await;
    assert!(!page.contains("<script>") && !page.contains("onclick="));
    // Page weight, all assets included (goal: under 150 KiB).
    eprintln!("dashboard weight: {weight} bytes");
    assert!(weight < 150 * 1024, "{weight}");
    assert!(get(&api, "GET", "/ui").await.0.starts_with("http/1.1 308"));
    assert!(get(&api, "GET", "/ui/nope.js")
        .await
        .0
        .starts_with("http/1.1 404"));
    let (head, _) = get(&api, "POST", "/ui/").await;
    assert!(head.starts_with("http/1.1 405") && head.contains("allow: get, head"));
}

/// Where the test run leaves its screenshots (docs/screenshots holds copies).
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_works_in_the_dashboard_and_hostile_text_stays_text() {
    let api = ApiServer::start_platform().await;
    let op = api.operator();
    for app in ["blog", "other"] {
        op.expect(Method::POST, "/v1/apps", Some(json!({"name": app})), 201)
            .await;
    }
    let token = op
        .expect(
            Method::POST,
            "/v1/tokens",
            Some(json!({"app": "blog"})),
            201,
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let owner = api.client(Some(&token));
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/domains",
            Some(json!({"domain": "www.blog-example.test"})),
            201,
        )
        .await;
    owner
        .expect(
            Method::PATCH,
            "/v1/apps/blog/config",
            Some(json!({"SECRET_KEY": "s3cr3t-<b>value</b>"})),
            200,
        )
        .await;
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    let hostile = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"#;
    store
        .append_logs(&[(
            "blog".into(),
            LogLine {
                id: String::new(),
                at_ms: pier_api::api::now_ms(),
                source: "app".into(),
                process: "web.1".into(),
                line: hostile.into(),
            },
        )])
        .await
        .unwrap();

    let browser = Browser::start();
    let url = format!("http://{}/ui/", api.addr);
    let mut page = browser.page(&url).await;
    page.goto(&url).await;
    let d = Duration::from_secs(15);
    // Log in as the owner through the form.
    page.dashboard_log_in(&token, d).await;
    page.wait_for(
        "[...document.querySelectorAll('ul.apps a')].map(a => a.textContent).join() === 'blog'",
        d,
        "the owner's one app listed",
    )
    .await;
    // The token is in no URL and no cookie.
    assert_eq!(page.eval("document.cookie").await, json!(""));
    let href = page.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains(&token));

    page.eval("location.hash = '#/apps/blog'; true").await;
    page.wait_for(
        "document.getElementById('log-lines') !== null",
        d,
        "the app page",
    )
    .await;
    // The hostile log line shows as text (brought by the live tail) and ran nothing.
    page.wait_for(
        &format!(
            "document.getElementById('log-lines').textContent.includes({})",
            json!(hostile)
        ),
        d,
        "the hostile line in the tail",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#view img, #view script').length")
            .await,
        json!(0)
    );
    assert_eq!(page.eval("typeof window.pwned").await, json!("undefined"));
    // The domain's exact proof is shown.
    let text = page
        .eval("document.getElementById('view').textContent")
        .await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("_pier-challenge.www.blog-example.test. 300 IN TXT"),
        "{text}"
    );
    // Config values hidden until asked, and then shown as text.
    assert!(!text.contains("s3cr3t"), "{text}");
    page.eval("document.querySelector('button[aria-label=\"Show the value of SECRET_KEY\"]').click(); true")
        .await;
    page.wait_for(
        "document.getElementById('view').textContent.includes('s3cr3t-<b>value</b>')",
        d,
        "the value shown as text",
    )
    .await;
    std::fs::create_dir_all(shots()).unwrap();
    page.screenshot(&shots().join("app.png")).await;

    // An action goes through the API; a refused one shows the API's reason.
    page.eval("document.getElementById('new-domain').value = 'shop.blog-example.test'; document.querySelector('form[aria-label=\"Add a domain\"]').requestSubmit(); true")
        .await;
    page.wait_for(
        "document.getElementById('view').textContent.includes('_pier-challenge.shop.blog-example.test')",
        d,
        "the added domain",
    )
    .await;
    page.eval("document.getElementById('new-domain').value = '1.2.3.4'; document.querySelector('form[aria-label=\"Add a domain\"]').requestSubmit(); true")
        .await;
    page.wait_for(
        "document.getElementById('status').textContent.includes('IP address')",
        d,
        "the refusal's reason",
    )
    .await;
    // Another owner's app: refused, with the reason.
    page.eval("location.hash = '#/apps/other'; true").await;
    page.wait_for(
        "document.getElementById('status').textContent.includes('may not act on app')",
        d,
        "another app refused",
    )
    .await;
    // 360 px wide: no horizontal scroll of the page.
    page.eval("location.hash = '#/apps/blog'; true").await;
    page.wait_for(
        "document.getElementById('log-lines') !== null",
        d,
        "the app page",
    )
    .await;
    page.viewport(360, 800, 1.0).await;
    let wide = page
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(wide, json!(true), "the page is wider than 360 px");
    page.screenshot(&shots().join("app-360.png")).await;
    // Log out: the token is gone from the session.
    page.eval("document.getElementById('logout').click(); true")
        .await;
    page.wait_for(
        "!document.getElementById('login').hidden && sessionStorage.length === 0",
        d,
        "logged out",
    )
    .await;
}
