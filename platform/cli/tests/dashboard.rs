//! The web dashboard end to end in headless Chromium, against the whole platform as real
//! processes (`pier api`, a coordinator, a runner, `pier-balancer`, one redis-server, the test
//! kit's DNS server): the operator creates an app, adds and verifies a domain by DNS, scales it
//! with the mouse and with the keyboard alone, watches the live chart move under load, reads a
//! hostile log line as text in the live tail, sees the runners and balancers; an owner is
//! refused another owner's app. It prints the cold-load time of the app page and leaves
//! screenshots in target/dashboard-screenshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{app_dir, load, Platform, OPERATOR};
use pier_testkit::browser::{Browser, Page};
use serde_json::json;

const HOSTILE: &str = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"#;

/// Bounds for things that take a few seconds here (the balancer writes stats every 5 s, the
/// page refreshes every 3 s): wide, because CI machines are shared.
const WAIT: Duration = Duration::from_secs(45);

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots")
}

async fn text_has(page: &mut Page, text: &str, what: &str) {
    page.wait_for(
        &format!(
            "document.getElementById('view').textContent.includes({})",
            json!(text)
        ),
        WAIT,
        what,
    )
    .await;
}

/// Presses Tab until `js` (a predicate on `document.activeElement`) holds; returns the presses.
async fn tab_to(page: &mut Page, js: &str, what: &str) -> usize {
    for n in 1..=200 {
        page.press("Tab").await;
        if page.eval(js).await == json!(true) {
            return n;
        }
    }
    panic!("Tab never reached {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_runs_an_app_on_the_whole_platform() {
    let p = Platform::start(&["127.0.0.2"]).await;
    let browser = Browser::start();
    let url = format!("{}/ui/", p.api.url());
    let mut page = browser.page(&url).await;
    page.goto(&url).await;

    // The operator logs in and creates an app through the form; operators see runners and
    // balancers.
    page.dashboard_log_in(OPERATOR, WAIT).await;
    page.wait_for(
        "!document.querySelector('a[href=\"#/runners\"]').hidden",
        WAIT,
        "the operator's links",
    )
    .await;
    // The apps view renders after the links (a fetch of the list): wait for its form.
    page.wait_for(
        "document.getElementById('new-app') !== null",
        WAIT,
        "the create-an-app form",
    )
    .await;
    page.eval("document.getElementById('new-app').value = 'shop'; document.querySelector('form[aria-label=\"Create an app\"]').requestSubmit(); true")
        .await;
    page.wait_for(
        "[...document.querySelectorAll('ul.apps a')].some(a => a.textContent === 'shop')",
        WAIT,
        "the new app listed",
    )
    .await;

    // Deployed with the CLI (a deploy uploads the app's files); its first output line is hostile.
    let app = app_dir(&[
        ("Procfile", "web: python3 start.py\n"),
        (
            "start.py",
            &format!(
                "print({}, flush=True)\nimport runpy\nrunpy.run_path('app.py', run_name='__main__')\n",
                json!(HOSTILE)
            ),
        ),
        (
            "app.py",
            include_str!("../../examples/hello-stdlib/app.py"),
        ),
    ]);
    p.deploy_dir("shop", app.path());

    page.eval("location.hash = '#/apps/shop'; true").await;
    // The live tail brings the hostile line, as text; nothing ran.
    page.wait_for(
        &format!(
            "(document.getElementById('log-lines') || {{textContent: ''}}).textContent.includes({})",
            json!(HOSTILE)
        ),
        WAIT,
        "the hostile line in the live tail",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#view img, #view script').length")
            .await,
        json!(0)
    );
    assert_eq!(page.eval("typeof window.pwned").await, json!("undefined"));
    assert_eq!(
        page.eval("document.getElementById('tail-state').textContent")
            .await,
        json!("live")
    );

    // A domain: added, its TXT record published, verified, then routed by the balancer.
    page.eval("document.getElementById('new-domain').value = 'www.shop-example.test'; document.querySelector('form[aria-label=\"Add a domain\"]').requestSubmit(); true")
        .await;
    text_has(
        &mut page,
        "_pier-challenge.www.shop-example.test. 300 IN TXT",
        "the challenge",
    )
    .await;
    let record = page
        .eval("[...document.querySelectorAll('#s-domains code')].map(c => c.textContent).find(t => t.startsWith('_pier-challenge.www.shop-example.test'))")
        .await;
    let token = record
        .as_str()
        .unwrap()
        .rsplit('"')
        .nth(1)
        .unwrap()
        .to_string();
    p.api
        .dns
        .add_txt("_pier-challenge.www.shop-example.test", &token);
    page.eval("document.querySelector('button[aria-label=\"Verify www.shop-example.test\"]').click(); true")
        .await;
    page.wait_for(
        "[...document.querySelectorAll('#s-domains td.ok')].some(td => td.textContent === 'verified')",
        WAIT,
        "the domain verified",
    )
    .await;
    p.balancer
        .wait_served(
            "www.shop-example.test",
            |b| b.starts_with("hello from shop"),
            WAIT,
        )
        .await;

    // Scale to two with the form; the instances table follows on its own.
    page.wait_for(
        "document.getElementById('scale-web') !== null",
        WAIT,
        "the scale form",
    )
    .await;
    page.eval("document.getElementById('scale-web').value = '2'; document.querySelector('form[aria-label=\"Scale web\"]').requestSubmit(); true")
        .await;
    let two_up = "document.querySelectorAll('#instances td.ok').length === 2";
    page.wait_for(two_up, WAIT, "two instances up").await;

    // Under load, the live chart moves without a reload (the requests that checked the
    // domain make well under 10 a second).
    let before = page
        .eval("document.getElementById('chart-summary').textContent")
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        ([127, 0, 0, 1], p.balancer.port).into(),
        Platform::host("shop"),
        4,
        stop.clone(),
    ));
    page.eval("window.sameDocument = true").await;
    let moved = page
        .eval_until(
            "(() => { const m = document.getElementById('chart-summary').textContent.match(/([0-9.]+) requests\\/s/); \
               return m && Number(m[1]) > 10 && document.querySelectorAll('#s-requests rect.bar').length > 0 \
               && [...document.querySelectorAll('#s-requests rect.bar')].some(r => Number(r.getAttribute('height')) > 0) \
               ? document.getElementById('chart-summary').textContent : null; })()",
            WAIT,
            "the chart to show the load",
        )
        .await;
    println!("chart before the load: {before}; under load: {moved}");
    assert_eq!(page.eval("window.sameDocument").await, json!(true));
    std::fs::create_dir_all(shots()).unwrap();
    page.screenshot(&shots().join("app-live.png")).await;
    stop.store(true, Ordering::Relaxed);
    let counted = load.await.unwrap();
    assert!(counted.ok > 0, "{counted:?}");

    // Keyboard alone: Tab to the scale field, type, Enter.
    page.eval("document.activeElement.blur(); window.scrollTo(0, 0); true")
        .await;
    let presses = tab_to(
        &mut page,
        "document.activeElement && document.activeElement.id === 'scale-web'",
        "the scale field",
    )
    .await;
    page.eval("document.activeElement.select(); true").await;
    page.type_text("1").await;
    page.press("Enter").await;
    page.wait_for(
        "document.querySelectorAll('#instances td.ok').length === 1",
        WAIT,
        "one instance after scaling down by keyboard",
    )
    .await;
    println!("keyboard: {presses} Tab presses to the scale field");

    // Readable at 200% zoom (a 1280 px window is 640 CSS px wide) and at 360 px: no sideways
    // scroll.
    for (w, scale) in [(640, 2.0), (360, 1.0)] {
        page.viewport(w, 900, scale).await;
        assert_eq!(
            page.eval("document.documentElement.scrollWidth <= window.innerWidth")
                .await,
            json!(true),
            "wider than {w} px at zoom {scale}"
        );
    }
    page.screenshot(&shots().join("app-zoom-360.png")).await;
    page.viewport(1200, 900, 1.0).await;

    // The operator's views: the runner live, the balancer live and current.
    page.eval("location.hash = '#/runners'; true").await;
    text_has(&mut page, "r-127.0.0.2", "the runner").await;
    page.wait_for(
        "[...document.querySelectorAll('#view td.ok')].some(td => td.textContent === 'live')",
        WAIT,
        "the runner live",
    )
    .await;
    page.eval("location.hash = '#/balancers'; true").await;
    page.wait_for(
        "[...document.querySelectorAll('#view td')].some(td => td.textContent.endsWith('(current)'))",
        WAIT,
        "a balancer with a current table",
    )
    .await;
    page.screenshot(&shots().join("balancers.png")).await;

    // Cold loads of the app page (no HTTP cache): the time to its first render.
    page.call("Network.enable", json!({})).await;
    page.call("Network.setCacheDisabled", json!({"cacheDisabled": true}))
        .await;
    let mut times = Vec::new();
    for _ in 0..5 {
        // The old document is marked, so its own render mark is not mistaken for the new one.
        page.eval(
            "window.oldDocument = true; location.hash = '#/apps/shop'; location.reload(); true",
        )
        .await;
        let ms = page
            .eval_until(
                "(() => { const m = !window.oldDocument && performance.getEntriesByName('pier-app-rendered')[0]; return m ? m.startTime : null; })()",
                WAIT,
                "the app page after a reload",
            )
            .await;
        times.push(ms.as_f64().unwrap());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "app page cold load to first render: median {:.0} ms (runs {:?})",
        times[times.len() / 2],
        times.iter().map(|t| t.round()).collect::<Vec<_>>()
    );

    // An owner of another app: no operator links, and the app is refused with the reason.
    let other = p.pier(&["apps", "create", "other"]).ok();
    assert_eq!(other.code, 0);
    let owner = p.pier(&["tokens", "create", "--app", "other"]).ok();
    let owner_token = owner.stdout.lines().last().unwrap().trim().to_string();
    page.eval("document.getElementById('logout').click(); true")
        .await;
    page.dashboard_log_in(&owner_token, WAIT).await;
    page.wait_for(
        "[...document.querySelectorAll('ul.apps a')].map(a => a.textContent).join() === 'other'",
        WAIT,
        "the owner's one app",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('a[href=\"#/runners\"]').hidden")
            .await,
        json!(true)
    );
    page.eval("location.hash = '#/apps/shop'; true").await;
    page.wait_for(
        "document.getElementById('status').textContent.includes('may not act on app')",
        WAIT,
        "another owner's app refused",
    )
    .await;
}
