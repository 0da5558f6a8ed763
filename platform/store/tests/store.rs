//! The platform state against a real `redis-server`: releases made atomically, formations,
//! the lease, and fenced writes refused once another coordinator leads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pier_model::platform::{InstanceSpec, Release, ReleaseStatus};
use pier_store::{FencedOp, Lease, Store, StoreError};
use pier_testkit::RedisServer;

fn release(desc: &str, base: Option<&Release>) -> Release {
    let mut config = base.map(|b| b.config.clone()).unwrap_or_default();
    config.insert(desc.to_string(), "1".into());
    Release {
        app: String::new(),
        version: 0,
        slug: None,
        processes: Default::default(),
        config,
        description: desc.to_string(),
        created_ms: 1,
        status: ReleaseStatus::Pending,
        reason: None,
    }
}

#[tokio::test]
async fn concurrent_releases_get_distinct_numbers_and_keep_every_change() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), "pier:").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.create_release("blog", true, |base| Ok(release(&format!("K{i}"), base)))
                .await
                .unwrap()
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    // Each release was made from the one before it: the last holds all eight changes.
    let latest = store.latest_release("blog").await.unwrap().unwrap();
    assert_eq!(latest.version, 8);
    assert_eq!(latest.config.len(), 8, "{:?}", latest.config);
    assert_eq!(store.current("blog").await.unwrap(), Some(8));
    assert_eq!(store.releases("blog").await.unwrap().len(), 8);
}

#[tokio::test]
async fn scale_changes_only_the_named_types() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), "pier:").await.unwrap();
    store
        .scale("blog", &[("web".into(), 2), ("worker".into(), 1)].into())
        .await
        .unwrap();
    let f = store
        .scale("blog", &[("web".into(), 3)].into())
        .await
        .unwrap();
    assert_eq!(f, [("web".into(), 3), ("worker".into(), 1)].into());
    assert_eq!(store.formation("blog").await.unwrap(), f);
}

#[tokio::test]
async fn a_deposed_leaders_writes_are_refused() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), "pier:").await.unwrap();
    let a = Lease::new(store.clone(), "coord-a", Duration::from_millis(300));
    let b = Lease::new(store.clone(), "coord-b", Duration::from_millis(300));
    let ta = a.acquire_or_renew().await.unwrap().expect("a leads");
    assert_eq!(
        b.acquire_or_renew().await.unwrap(),
        None,
        "one leader at a time"
    );
    assert_eq!(
        a.acquire_or_renew().await.unwrap(),
        Some(ta),
        "renewal keeps the token"
    );
    let spec = |id: &str| InstanceSpec {
        id: id.into(),
        app: "blog".into(),
        ptype: "web".into(),
        index: 1,
        release: 1,
        generation: 0,
        run: None,
    };
    store
        .fenced(
            ta,
            &[FencedOp::Assign {
                runner: "r1".into(),
                spec: spec("i1"),
            }],
        )
        .await
        .unwrap();
    // a stops renewing (paused); its lease lapses and b takes over with a new token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tb = b.acquire_or_renew().await.unwrap().expect("b leads");
    assert!(tb > ta);
    // a wakes up and writes with its old token: refused, nothing changed.
    let late = store
        .fenced(
            ta,
            &[FencedOp::Assign {
                runner: "r1".into(),
                spec: spec("i2"),
            }],
        )
        .await;
    assert!(
        matches!(late, Err(StoreError::Fenced(t)) if t == ta),
        "{late:?}"
    );
    let ids: Vec<String> = store
        .assignments("r1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["i1".to_string()]);
    // a cannot take the lease back while b holds it.
    assert_eq!(a.acquire_or_renew().await.unwrap(), None);
    // b gives it up on shutdown: a takes it at once, with a newer token still.
    b.release().await.unwrap();
    let ta2 = a.acquire_or_renew().await.unwrap().expect("a leads again");
    assert!(ta2 > tb);
}

#[tokio::test]
async fn uids_are_stable_and_distinct() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), "pier:").await.unwrap();
    let a = store.app_uid("a").await.unwrap();
    let b = store.app_uid("b").await.unwrap();
    assert_ne!(a, b);
    assert_eq!(store.app_uid("a").await.unwrap(), a);
    assert!(a > pier_store::store::FIRST_APP_UID);
}
