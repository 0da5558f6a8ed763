//! Custom domains through the API: claims, the DNS proof against a real authoritative DNS
//! server on loopback (hickory-server, from the test kit), the names that may be claimed, and
//! where names point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Api, ApiServer, TestBackend};
use http::Method;
use pier_registry::model::DomainRecord;
use serde_json::{json, Value};

async fn claim(api: &Api, app: &str, domain: &str, status: u16) -> Value {
    api.expect(
        Method::POST,
        &format!("/v1/apps/{app}/domains"),
        Some(json!({"domain": domain})),
        status,
    )
    .await
    .body
}

fn verify_path(app: &str, domain: &str) -> String {
    format!("/v1/apps/{app}/domains/{domain}/verify")
}

fn reason(v: &Value) -> String {
    v["reason"].as_str().unwrap_or_default().to_string()
}

async fn domain_names(api: &Api, app: &str) -> Vec<(String, bool)> {
    let r = api
        .expect(Method::GET, &format!("/v1/apps/{app}/domains"), None, 200)
        .await;
    r.body["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["domain"].as_str().unwrap().to_string(),
                d["verified"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_domain_is_verified_only_by_its_txt_record() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let r = claim(&owner, "blog", "WWW.Blog-Example.test", 201).await;
    assert_eq!(r["domain"], "www.blog-example.test");
    assert_eq!(r["verified"], false);
    assert_eq!(r["challenge"]["type"], "TXT");
    assert_eq!(
        r["challenge"]["name"],
        "_pier-challenge.www.blog-example.test"
    );
    let token = r["challenge"]["value"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32);
    // A claim routes nothing: the domains the balancers read do not have it.
    assert!(api
        .registry
        .domain("www.blog-example.test")
        .await
        .unwrap()
        .is_none());
    let verify = verify_path("blog", "www.blog-example.test");
    let record = "_pier-challenge.www.blog-example.test";

    // No record at all: the answer names the record looked up.
    let r = owner.expect(Method::POST, &verify, None, 422).await.body;
    assert_eq!(r["error"], "verification-failed");
    assert!(
        reason(&r).contains(record) && reason(&r).contains("does not exist"),
        "{r}"
    );

    // The attack of the old HTTP check: a backend that echoes any challenge proves nothing.
    let backend = TestBackend::start("blog").await;
    backend.serve_challenge("www.blog-example.test", &token);
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/backends",
            Some(json!({"address": backend.addr.to_string(), "id": "web"})),
            201,
        )
        .await;
    owner.expect(Method::POST, &verify, None, 422).await;
    assert!(backend.seen.lock().unwrap().is_empty(), "the app was asked");

    // A record with other values: still not proven, and what was found is told.
    api.dns.add_txt(record, "v=spf1 -all");
    let r = owner.expect(Method::POST, &verify, None, 422).await.body;
    assert!(
        reason(&r).contains("v=spf1 -all") && reason(&r).contains("not this claim's token"),
        "{r}"
    );
    // Another claim's token beside the owner's own: the owner's counts, among others.
    api.dns.add_txt(record, &token);
    let r = owner.expect(Method::POST, &verify, None, 200).await.body;
    assert_eq!(r["verified"], true);
    assert!(r.get("challenge").is_none());
    let rec = api
        .registry
        .domain("www.blog-example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec, DomainRecord::verified("blog"));
    assert_eq!(
        api.registry
            .claim("www.blog-example.test", "blog")
            .await
            .unwrap(),
        None
    );
    // Verified stays verified: again, adding it again, and once the record is gone.
    api.dns.remove_txt(record);
    owner.expect(Method::POST, &verify, None, 200).await;
    let r = claim(&owner, "blog", "www.blog-example.test", 200).await;
    assert_eq!(r["verified"], true);
}

#[tokio::test]
async fn wildcards_are_proven_at_their_base_name_beside_other_tokens() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let wild = claim(&owner, "blog", "*.blog.test", 201).await;
    let apex = claim(&owner, "blog", "blog.test", 201).await;
    // Both are proven at _pier-challenge.blog.test, as ACME's DNS-01 does.
    for c in [&wild, &apex] {
        assert_eq!(c["challenge"]["name"], "_pier-challenge.blog.test");
    }
    let (wt, at) = (
        wild["challenge"]["value"].as_str().unwrap(),
        apex["challenge"]["value"].as_str().unwrap(),
    );
    assert_ne!(wt, at);
    // Both published on one name, one of them split into two strings as long values are.
    api.dns.add_txt("_pier-challenge.blog.test", at);
    api.dns
        .add_txt_strings("_pier-challenge.blog.test", &[&wt[..10], &wt[10..]]);
    owner
        .expect(Method::POST, &verify_path("blog", "*.blog.test"), None, 200)
        .await;
    owner
        .expect(Method::POST, &verify_path("blog", "blog.test"), None, 200)
        .await;
    assert_eq!(
        domain_names(&owner, "blog").await,
        [("*.blog.test".into(), true), ("blog.test".into(), true)]
    );
}

#[tokio::test]
async fn the_first_app_to_prove_a_name_gets_it_and_other_claims_are_dropped() {
    let api = ApiServer::start().await;
    let squat = api.app_with_owner("squat").await;
    let real = api.app_with_owner("real").await;
    // A claim reserves nothing: both may claim the same name, each with its own token.
    let s = claim(&squat, "squat", "shop.example.com", 201).await;
    let r = claim(&real, "real", "Shop.Example.com", 201).await;
    assert_ne!(s["challenge"]["value"], r["challenge"]["value"]);
    // The squatter cannot prove it with the real owner's record, nor its own unpublished one.
    api.dns.add_txt(
        "_pier-challenge.shop.example.com",
        r["challenge"]["value"].as_str().unwrap(),
    );
    squat
        .expect(
            Method::POST,
            &verify_path("squat", "shop.example.com"),
            None,
            422,
        )
        .await;
    real.expect(
        Method::POST,
        &verify_path("real", "shop.example.com"),
        None,
        200,
    )
    .await;
    // The squatter's claim is gone with the proof: not listed, not verifiable, not re-addable.
    assert!(domain_names(&squat, "squat").await.is_empty());
    assert_eq!(
        api.registry
            .claim("shop.example.com", "squat")
            .await
            .unwrap(),
        None
    );
    squat
        .expect(
            Method::POST,
            &verify_path("squat", "shop.example.com"),
            None,
            404,
        )
        .await;
    let again = claim(&squat, "squat", "shop.example.com", 409).await;
    assert!(reason(&again).contains("another app"), "{again}");
    // The owner of a name cannot be told who claims it: removing another's is a 404.
    squat
        .expect(
            Method::DELETE,
            "/v1/apps/squat/domains/shop.example.com",
            None,
            404,
        )
        .await;
}

#[tokio::test]
async fn an_exact_name_under_another_apps_wildcard_needs_its_own_proof() {
    let api = ApiServer::start().await;
    let op = api.operator();
    let blog = api.app_with_owner("blog").await;
    api.app_with_owner("shop").await;
    op.expect(
        Method::POST,
        "/v1/apps/shop/domains",
        Some(json!({"domain": "*.shop.example.com", "verified": true})),
        201,
    )
    .await;
    let c = claim(&blog, "blog", "www.shop.example.com", 201).await;
    assert_eq!(c["verified"], false);
    let path = verify_path("blog", "www.shop.example.com");
    blog.expect(Method::POST, &path, None, 422).await;
    api.dns.add_txt(
        "_pier-challenge.www.shop.example.com",
        c["challenge"]["value"].as_str().unwrap(),
    );
    blog.expect(Method::POST, &path, None, 200).await;
    let exact = api
        .registry
        .domain("www.shop.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exact.app, "blog");
    let wild = api
        .registry
        .domain("*.shop.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wild.app, "shop");
}

#[tokio::test]
async fn an_app_holds_a_bounded_number_of_pending_claims() {
    let api = ApiServer::start_with(|s| s.with_max_pending_claims(3)).await;
    let owner = api.app_with_owner("blog").await;
    for d in ["a.example.com", "b.example.com", "c.example.com"] {
        claim(&owner, "blog", d, 201).await;
    }
    let r = claim(&owner, "blog", "d.example.com", 409).await;
    assert!(
        reason(&r).contains("3 pending domain claims"),
        "{}",
        reason(&r)
    );
    // Claiming one it holds again is no new claim.
    claim(&owner, "blog", "a.example.com", 200).await;
    // A proven claim no longer counts, nor a withdrawn one.
    let c = claim(&owner, "blog", "b.example.com", 200).await;
    api.dns.add_txt(
        "_pier-challenge.b.example.com",
        c["challenge"]["value"].as_str().unwrap(),
    );
    owner
        .expect(
            Method::POST,
            &verify_path("blog", "b.example.com"),
            None,
            200,
        )
        .await;
    claim(&owner, "blog", "d.example.com", 201).await;
    claim(&owner, "blog", "e.example.com", 409).await;
    owner
        .expect(
            Method::DELETE,
            "/v1/apps/blog/domains/a.example.com",
            None,
            204,
        )
        .await;
    claim(&owner, "blog", "e.example.com", 201).await;
    // The operator's grants are not claims.
    api.operator()
        .expect(
            Method::POST,
            "/v1/apps/blog/domains",
            Some(json!({"domain": "f.example.com", "verified": true})),
            201,
        )
        .await;
}

#[tokio::test]
async fn the_operator_overrides_and_a_lapsed_claim_is_renewed_with_its_token() {
    let api = ApiServer::start_with(|s| s.with_claim_ttl(Some(Duration::from_millis(1500)))).await;
    let op = api.operator();
    let owner = api.app_with_owner("blog").await;
    claim(&owner, "blog", "forced.example.org", 201).await;
    let forced = verify_path("blog", "forced.example.org");
    owner
        .expect(Method::POST, &forced, Some(json!({"force": true})), 403)
        .await;
    owner
        .expect(Method::POST, &forced, Some(json!({"froce": true})), 422)
        .await;
    let r = op
        .expect(Method::POST, &forced, Some(json!({"force": true})), 200)
        .await;
    assert_eq!(r.body["verified"], true);

    let c = claim(&owner, "blog", "late.example.org", 201).await;
    let token = c["challenge"]["value"].as_str().unwrap().to_string();
    let expires = c["claim_expires_at"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    api.dns.add_txt("_pier-challenge.late.example.org", &token);
    let path = verify_path("blog", "late.example.org");
    let r = owner.expect(Method::POST, &path, None, 422).await.body;
    assert!(reason(&r).contains("lapsed"), "{r}");
    // Adding it again renews it, with the same token: the published record still proves it.
    let renewed = claim(&owner, "blog", "late.example.org", 200).await;
    assert_eq!(renewed["challenge"]["value"], token.as_str());
    assert_ne!(renewed["claim_expires_at"], expires.as_str());
    owner.expect(Method::POST, &path, None, 200).await;
}

#[tokio::test]
async fn names_that_are_no_ones_to_claim_are_refused_with_the_reason() {
    let api = ApiServer::start().await;
    let owner = api.app_with_owner("blog").await;
    let op = api.operator();
    for (bad, why) in [
        ("1.2.3.4", "IP address"),
        ("127.1", "IP address"),
        ("0x7f.0.0.1", "IP address"),
        ("[::1]", "domain"),
        ("com", "single label"),
        ("co.uk", "public suffix"),
        ("*.com", "public suffix"),
        ("*.co.uk", "public suffix"),
        ("*.test", "public suffix"),
        ("github.io", "public suffix"),
        ("xn--x.test", "punycode"),
        ("_dmarc.example.com", "letters, digits and hyphens"),
        ("exa mple.com", "domain"),
        ("*.*.example.com", "domain"),
        ("", "domain"),
    ] {
        for who in [&owner, &op] {
            let r = who
                .expect(
                    Method::POST,
                    "/v1/apps/blog/domains",
                    Some(json!({"domain": bad})),
                    422,
                )
                .await;
            assert!(reason(&r.body).contains(why), "{bad}: {}", r.text);
        }
    }
    // Unicode names are kept as their A-label; the catch-all stays the operator's.
    let r = claim(&owner, "blog", "bücher.example", 201).await;
    assert_eq!(r["domain"], "xn--bcher-kva.example");
    claim(&owner, "blog", "*", 403).await;
    let r = claim(&op, "blog", "*", 422).await;
    assert!(reason(&r).contains("verified"), "{r}");
    op.expect(
        Method::POST,
        "/v1/apps/blog/domains",
        Some(json!({"domain": "*", "verified": true})),
        201,
    )
    .await;
}

#[tokio::test]
async fn domain_list_shows_whether_names_point_at_the_dns_target() {
    let api = ApiServer::start_with(|s| s.with_dns_target(Some("lb.pier.test".into()))).await;
    let op = api.operator();
    api.app_with_owner("blog").await;
    for d in [
        "www.blog-example.test",
        "blog-example.test",
        "other.blog-example.test",
        "*.apps.blog-example.test",
    ] {
        op.expect(
            Method::POST,
            "/v1/apps/blog/domains",
            Some(json!({"domain": d, "verified": true})),
            201,
        )
        .await;
    }
    let c = claim(&op, "blog", "new.blog-example.test", 201).await;
    assert_eq!(c["dns_target"], "lb.pier.test");
    api.dns.add_ip("lb.pier.test", "127.0.0.9".parse().unwrap());
    api.dns.add_ip("lb.pier.test", "::9".parse().unwrap());
    api.dns.add_cname("www.blog-example.test", "lb.pier.test");
    api.dns
        .add_ip("blog-example.test", "127.0.0.9".parse().unwrap());
    api.dns
        .add_ip("other.blog-example.test", "10.1.1.1".parse().unwrap());
    api.dns
        .add_cname("pier-dns-check.apps.blog-example.test", "lb.pier.test");
    let list = op
        .expect(Method::GET, "/v1/apps/blog/domains", None, 200)
        .await
        .body;
    let dns = |name: &str| {
        list["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == name)
            .unwrap()["dns"]
            .clone()
    };
    let www = dns("www.blog-example.test");
    assert_eq!(www["points_at_target"], true, "{www}");
    assert!(www["found"]
        .as_array()
        .unwrap()
        .contains(&json!("CNAME lb.pier.test")));
    assert_eq!(dns("blog-example.test")["points_at_target"], true);
    let other = dns("other.blog-example.test");
    assert_eq!(other["points_at_target"], false, "{other}");
    assert_eq!(other["found"], json!(["A 10.1.1.1"]));
    assert_eq!(dns("*.apps.blog-example.test")["points_at_target"], true);
    let new = dns("new.blog-example.test");
    assert_eq!(new["points_at_target"], false);
    assert_eq!(new["found"], json!([]));
    assert_eq!(new["target"], "lb.pier.test");
}

#[tokio::test]
async fn claims_go_with_their_app_and_old_pending_records_move_to_claims() {
    let api = ApiServer::start().await;
    let op = api.operator();
    let owner = api.app_with_owner("blog").await;
    claim(&owner, "blog", "gone.example.com", 201).await;
    op.expect(Method::DELETE, "/v1/apps/blog", None, 204).await;
    assert_eq!(
        api.registry
            .claim("gone.example.com", "blog")
            .await
            .unwrap(),
        None
    );

    // A pending record written by a version before claims: moved, token and time kept; a
    // verified one is left alone.
    let owner = api.app_with_owner("shop").await;
    let old = DomainRecord {
        app: "shop".into(),
        verified: false,
        token: Some("0123456789abcdef0123456789abcdef".into()),
        claimed_ms: pier_api::api::now_ms(),
    };
    api.registry
        .put_domain("old.example.com", &old)
        .await
        .unwrap();
    api.registry
        .put_domain("kept.example.com", &DomainRecord::verified("shop"))
        .await
        .unwrap();
    assert_eq!(api.registry.migrate_pending_domains().await.unwrap(), 1);
    assert_eq!(api.registry.migrate_pending_domains().await.unwrap(), 0);
    assert!(api
        .registry
        .domain("old.example.com")
        .await
        .unwrap()
        .is_none());
    let c = api
        .registry
        .claim("old.example.com", "shop")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.token, old.token.clone().unwrap());
    assert_eq!(c.claimed_ms, old.claimed_ms);
    assert_eq!(
        domain_names(&owner, "shop").await,
        [
            ("kept.example.com".into(), true),
            ("old.example.com".into(), false)
        ]
    );
    api.dns.add_txt("_pier-challenge.old.example.com", &c.token);
    owner
        .expect(
            Method::POST,
            &verify_path("shop", "old.example.com"),
            None,
            200,
        )
        .await;
}
