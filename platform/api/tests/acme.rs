//! Certificates issued by the platform over ACME, against a real ACME server: Let's Encrypt's
//! `pebble` on loopback, validating HTTP-01 at a real balancer that follows the registry, names
//! resolved by the test's authoritative DNS server (hickory-server, from the test kit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, ApiServer};
use http::Method;
use pier_api::acme::{Acme, AcmeConfig};
use pier_registry::model::ChallengeRecord;
use pier_testkit::balancer::RegistryBalancer;
use pier_testkit::pebble::Pebble;
use pier_testkit::tls::{accept_any, served_cert, tls_connect};
use pier_testkit::{http_get, TestBackend};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The name custom domains point at in these tests.
const TARGET: &str = "lb.pier.test";

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An API with ACME on (pebble's directory, checked every 200 ms) and a DNS target.
async fn acme_api(pebble_ports: (u16, u16), ca_file: &std::path::Path) -> ApiServer {
    let mut cfg = AcmeConfig::new(format!("https://127.0.0.1:{}/dir", pebble_ports.0));
    cfg.ca_file = Some(ca_file.to_path_buf());
    cfg.interval = Duration::from_millis(200);
    ApiServer::start_with(move |s| {
        s.with_dns_target(Some(TARGET.into()))
            .with_acme(Acme::new(cfg))
    })
    .await
}

/// Claims `domain` for the owner's app and proves it by its TXT record.
async fn verified(api: &ApiServer, owner: &Api, app: &str, domain: &str) {
    let r = owner
        .expect(
            Method::POST,
            &format!("/v1/apps/{app}/domains"),
            Some(json!({"domain": domain})),
            201,
        )
        .await;
    let name = r.body["challenge"]["name"].as_str().unwrap().to_string();
    let value = r.body["challenge"]["value"].as_str().unwrap().to_string();
    api.dns.add_txt(&name, &value);
    owner
        .expect(
            Method::POST,
            &format!("/v1/apps/{app}/domains/{domain}/verify"),
            None,
            200,
        )
        .await;
}

async fn cert_view(owner: &Api, app: &str, domain: &str) -> Value {
    owner
        .expect(
            Method::GET,
            &format!("/v1/apps/{app}/domains/{domain}/cert"),
            None,
            200,
        )
        .await
        .body
}

/// Polls the certificate view until `want` holds (or fails with the last view).
async fn wait_view(
    owner: &Api,
    app: &str,
    domain: &str,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = cert_view(owner, app, domain).await;
        if want(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{domain}: still {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the balancer's https listener serves a certificate for `name` whose SHA-256
/// satisfies `want`; returns it.
async fn wait_served(
    port: u16,
    name: &str,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let fp = served_cert(port, name).await.map(|d| sha256_hex(&d));
        if let Some(fp) = fp.filter(|f| want(f)) {
            return fp;
        }
        assert!(Instant::now() < deadline, "{name}: not served as wanted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request on an open connection; the status.
async fn get_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
) -> u16 {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_verified_name_pointed_at_the_platform_gets_a_certificate_renewed_and_upload_wins() {
    assert!(
        Pebble::installed(),
        "pebble is not installed (apt-get install pebble; .ci/run does it)"
    );
    let ports = Pebble::ports();
    // The CA file pebble's HTTPS will present is written when pebble starts; the API only
    // reads it when it first orders, after the name is verified and pointed.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("pebble.crt");
    let api = acme_api(ports, &ca_file).await;
    let owner = api.app_with_owner("shop").await;
    let backend = TestBackend::start("shop").await;
    owner
        .expect(
            Method::POST,
            "/v1/apps/shop/backends",
            Some(json!({"address": backend.addr.to_string()})),
            201,
        )
        .await;
    let b1 = RegistryBalancer::start_tls(&api.redis.url(), "").await;
    let b2 = RegistryBalancer::start_tls(&api.redis.url(), "").await;
    let pebble = Pebble::start(ports, b1.port, api.dns.addr).await;
    std::fs::copy(&pebble.ca_file, &ca_file).unwrap();

    // A name not verified yet is not ordered.
    owner
        .expect(
            Method::POST,
            "/v1/apps/shop/domains",
            Some(json!({"domain": "later.example"})),
            201,
        )
        .await;
    let v = cert_view(&owner, "shop", "later.example").await;
    assert_eq!(v["state"], "waiting for verification", "{v}");

    // Verified but not pointed at the platform: it waits for its DNS, and says why.
    verified(&api, &owner, "shop", "shop.example").await;
    let v = wait_view(
        &owner,
        "shop",
        "shop.example",
        Duration::from_secs(10),
        |v| v["state"] == "waiting for DNS" && v["error"].is_string(),
    )
    .await;
    assert!(v["error"].as_str().unwrap().contains(TARGET), "{v}");
    assert!(v.get("source").is_none(), "{v}");
    let listed = owner
        .expect(Method::GET, "/v1/apps/shop/domains", None, 200)
        .await;
    let row = listed.body["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "shop.example")
        .unwrap()
        .clone();
    assert_eq!(row["cert_state"], "waiting for DNS", "{row}");

    // Pointed: within 30 s a certificate is issued and served by every balancer.
    api.dns.add_ip(TARGET, "127.0.0.1".parse().unwrap());
    api.dns.add_ip("shop.example", "127.0.0.1".parse().unwrap());
    let pointed = Instant::now();
    let https1 = b1.https.unwrap();
    let https2 = b2.https.unwrap();
    let default_fp = served_cert(https1, "default.test")
        .await
        .map(|d| sha256_hex(&d))
        .unwrap();
    let issued = wait_served(https1, "shop.example", Duration::from_secs(30), |f| {
        f != default_fp
    })
    .await;
    let took = pointed.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    wait_served(https2, "shop.example", Duration::from_secs(5), |f| {
        f == issued
    })
    .await;
    let v = cert_view(&owner, "shop", "shop.example").await;
    assert_eq!(v["state"], "issued", "{v}");
    assert_eq!(v["source"], "acme", "{v}");
    assert_eq!(v["fingerprint_sha256"], issued.as_str(), "{v}");
    assert_eq!(v["names"], json!(["shop.example"]), "{v}");
    assert!(v["issuer"].as_str().unwrap().contains("Pebble"), "{v}");
    assert!(v["next_attempt"].is_string(), "renewal time: {v}");
    eprintln!("issued and served {took:?} after the name was pointed");
    // Operators see each certificate's expiry, and who provided it.
    let (_, metrics) = http_get(([127, 0, 0, 1], b1.admin).into(), "admin", "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("pier_tls_cert_expiry_seconds{domain=\"shop.example\",source=\"acme\"}"),
        "{metrics}"
    );

    // A renewal asked for: the next handshake gets a new certificate, while a connection
    // opened before keeps working.
    let mut old = tls_connect(https1, "shop.example", accept_any())
        .await
        .unwrap();
    assert_eq!(get_on(&mut old, "shop.example").await, 200);
    let r = owner
        .expect(
            Method::POST,
            "/v1/apps/shop/domains/shop.example/cert/renew",
            None,
            202,
        )
        .await;
    assert_eq!(r.body["state"], "ordering", "{}", r.body);
    let again = owner
        .call(
            Method::POST,
            "/v1/apps/shop/domains/shop.example/cert/renew",
            None,
        )
        .await;
    assert_eq!(again.status, 429, "one renewal a minute: {}", again.body);
    let renewed = wait_served(https1, "shop.example", Duration::from_secs(30), |f| {
        f != issued && f != default_fp
    })
    .await;
    assert_eq!(get_on(&mut old, "shop.example").await, 200);
    drop(old);
    let text = api_metrics(&api).await;
    for line in [
        "pier_acme_orders_total{kind=\"new\",result=\"issued\"} 1\n",
        "pier_acme_orders_total{kind=\"renewal\",result=\"issued\"} 1\n",
        "pier_acme_names{state=\"issued\"} 1\n",
        "pier_acme_renewals_failing 0\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }

    // An upload wins over the issued certificate; removing it brings the issued one back.
    let (cert, key) = pier_testkit::certs::cert_pair(&["shop.example"], 2020, 2090);
    let up = owner
        .expect(
            Method::PUT,
            "/v1/apps/shop/domains/shop.example/cert",
            Some(json!({"cert": cert, "key": key})),
            200,
        )
        .await;
    assert_eq!(up.body["source"], "uploaded", "{}", up.body);
    let uploaded = up.body["fingerprint_sha256"].as_str().unwrap().to_string();
    wait_served(https1, "shop.example", Duration::from_secs(5), |f| {
        f == uploaded
    })
    .await;
    owner
        .expect(
            Method::DELETE,
            "/v1/apps/shop/domains/shop.example/cert",
            None,
            204,
        )
        .await;
    wait_served(https1, "shop.example", Duration::from_secs(5), |f| {
        f == renewed
    })
    .await;
    // The issued certificate cannot be "removed" as if uploaded.
    let rm = owner
        .call(
            Method::DELETE,
            "/v1/apps/shop/domains/shop.example/cert",
            None,
        )
        .await;
    assert_eq!(rm.status, 404, "{}", rm.body);
    wait_served(https1, "shop.example", Duration::from_secs(2), |f| {
        f == renewed
    })
    .await;

    // Removing the domain stops serving (and renewing) its certificate.
    owner
        .expect(
            Method::DELETE,
            "/v1/apps/shop/domains/shop.example",
            None,
            204,
        )
        .await;
    wait_served(https1, "shop.example", Duration::from_secs(5), |f| {
        f == default_fp
    })
    .await;
    assert!(api
        .registry
        .acme_status("shop.example")
        .await
        .unwrap()
        .is_none());
    assert!(api
        .registry
        .issued_cert("shop.example")
        .await
        .unwrap()
        .is_none());
    drop(pebble);
}

#[tokio::test]
async fn a_failed_validation_shows_the_cas_words_and_backs_off_and_wildcards_say_to_upload() {
    assert!(
        Pebble::installed(),
        "pebble is not installed (apt-get install pebble; .ci/run does it)"
    );
    let ports = Pebble::ports();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("pebble.crt");
    let api = acme_api(ports, &ca_file).await;
    let owner = api.app_with_owner("shop").await;
    let b = RegistryBalancer::start_tls(&api.redis.url(), "").await;
    let pebble = Pebble::start(ports, b.port, api.dns.addr).await;
    std::fs::copy(&pebble.ca_file, &ca_file).unwrap();
    // The target has two addresses; the name points at the one no balancer listens on, so
    // the CA's validation cannot connect.
    api.dns.add_ip(TARGET, "127.0.0.1".parse().unwrap());
    api.dns.add_ip(TARGET, "127.0.0.2".parse().unwrap());
    api.dns
        .add_ip("broken.example", "127.0.0.2".parse().unwrap());
    verified(&api, &owner, "shop", "broken.example").await;
    let (v, wait) = first_failure(&api, &owner, "broken.example", Duration::from_secs(30)).await;
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.2") || error.contains("connection refused"),
        "the CA's own words: {v}"
    );
    let next = v["next_attempt"].as_str().unwrap();
    assert!(
        (55_000..=65_000).contains(&wait),
        "a minute first: {wait} ms ({next})"
    );
    // Not tried again before then.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = api
        .registry
        .acme_status("broken.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.failures, 1);
    assert!(api.registry.challenge_tokens().await.unwrap().is_empty());

    // A wildcard name is verified like the others, but its certificate must be uploaded.
    let r = owner
        .expect(
            Method::POST,
            "/v1/apps/shop/domains",
            Some(json!({"domain": "*.wild.example"})),
            201,
        )
        .await;
    api.dns.add_txt(
        r.body["challenge"]["name"].as_str().unwrap(),
        r.body["challenge"]["value"].as_str().unwrap(),
    );
    owner
        .expect(
            Method::POST,
            "/v1/apps/shop/domains/*.wild.example/verify",
            None,
            200,
        )
        .await;
    let v = cert_view(&owner, "shop", "*.wild.example").await;
    assert_eq!(v["state"], "off", "{v}");
    assert!(v["error"].as_str().unwrap().contains("upload"), "{v}");
    let renew = owner
        .call(
            Method::POST,
            "/v1/apps/shop/domains/*.wild.example/cert/renew",
            None,
        )
        .await;
    assert_eq!(renew.status, 409, "{}", renew.body);
    drop(pebble);
}

#[tokio::test]
async fn every_balancer_answers_a_published_challenge_for_its_name_only() {
    let api = ApiServer::start().await;
    let b1 = RegistryBalancer::start(&api.redis.url(), "").await;
    let b2 = RegistryBalancer::start(&api.redis.url(), "").await;
    let path = "/.well-known/acme-challenge/tok-123";
    api.registry
        .put_challenge(
            "tok-123",
            &ChallengeRecord {
                domain: "shop.example".into(),
                key_authorization: "tok-123.thumbprint".into(),
            },
        )
        .await
        .unwrap();
    for b in [&b1, &b2] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = http_get(b.addr(), "shop.example", path).await.unwrap();
            if r == (200, "tok-123.thumbprint".to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "not answered: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another name, or another token, is routed as usual (no app: 404).
        let other = http_get(b.addr(), "other.example", path).await.unwrap();
        assert_eq!(other.0, 404);
        let wrong = http_get(b.addr(), "shop.example", "/.well-known/acme-challenge/nope")
            .await
            .unwrap();
        assert_eq!(wrong.0, 404);
    }
    api.registry.delete_challenge("tok-123").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(b1.addr(), "shop.example", path).await.unwrap().0 != 404 {
        assert!(
            Instant::now() < deadline,
            "withdrawn challenge still answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_a_directory_certificates_are_uploaded_and_say_so() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("shop").await;
    verified(&api, &owner, "shop", "plain.example").await;
    // No certificate, ACME off: as before, 404.
    let r = owner
        .call(
            Method::GET,
            "/v1/apps/shop/domains/plain.example/cert",
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let renew = owner
        .call(
            Method::POST,
            "/v1/apps/shop/domains/plain.example/cert/renew",
            None,
        )
        .await;
    assert_eq!(renew.status, 409, "{}", renew.body);
    let (cert, key) = pier_testkit::certs::cert_pair(&["plain.example"], 2020, 2090);
    let up = owner
        .expect(
            Method::PUT,
            "/v1/apps/shop/domains/plain.example/cert",
            Some(json!({"cert": cert, "key": key})),
            200,
        )
        .await;
    assert_eq!(up.body["source"], "uploaded");
    assert_eq!(up.body["state"], "off");
}

#[tokio::test]
async fn a_ca_over_its_rate_limit_is_not_asked_again_before_its_retry_after() {
    // pebble has no rate limits: this CA (test kit) answers every new account and order with
    // 429, `Retry-After: 7200` and a rateLimited problem, over HTTPS like a CA.
    let ca = pier_testkit::limited_ca::LimitedCa::start("7200").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.ca.write(dir.path(), "limited");
    let mut cfg = AcmeConfig::new(ca.directory());
    cfg.ca_file = Some(ca_file);
    cfg.interval = Duration::from_millis(200);
    let api = ApiServer::start_with(move |s| {
        s.with_dns_target(Some(TARGET.into()))
            .with_acme(Acme::new(cfg))
    })
    .await;
    let owner = api.app_with_owner("shop").await;
    api.dns.add_ip(TARGET, "127.0.0.1".parse().unwrap());
    api.dns.add_ip("busy.example", "127.0.0.1".parse().unwrap());
    verified(&api, &owner, "shop", "busy.example").await;
    let (v, wait) = first_failure(&api, &owner, "busy.example", Duration::from_secs(20)).await;
    // The CA's words, as it gave them.
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("too many new orders recently")
            && error.contains("urn:ietf:params:acme:error:rateLimited"),
        "{v}"
    );
    // Two hours, as asked — not the first failure's one minute.
    assert!(
        (7_190_000..=7_210_000).contains(&wait),
        "Retry-After honoured: {wait} ms"
    );
    // And nothing more is sent to it meanwhile.
    let asked = ca.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ca.refused.load(std::sync::atomic::Ordering::SeqCst), asked);

    // The operator's metrics count it; an owner may not read them.
    let text = api_metrics(&api).await;
    assert!(
        text.contains("pier_acme_orders_total{kind=\"new\",result=\"rate-limited\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("pier_acme_names{state=\"failed\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("pier_acme_enabled 1\n"), "{text}");
    let r = owner.call(Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

/// Waits (up to `within`) for the order of app `shop`'s `domain` to fail; checks the registry
/// counts it as the first failure, and gives the owner's view and the wait until the next
/// attempt in milliseconds.
async fn first_failure(
    api: &ApiServer,
    owner: &Api,
    domain: &str,
    within: Duration,
) -> (Value, u64) {
    let v = wait_view(owner, "shop", domain, within, |v| v["state"] == "failed").await;
    let status = api.registry.acme_status(domain).await.unwrap().unwrap();
    assert_eq!(status.failures, 1, "{v}");
    (v, status.next_attempt_ms.saturating_sub(status.updated_ms))
}

/// The operator's `GET /metrics` (Prometheus text).
async fn api_metrics(api: &ApiServer) -> String {
    let r = api.operator().call(Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.text
}
