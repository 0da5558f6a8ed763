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

fn run_spec(app: &str, command: &str) -> pier_model::platform::RunSpec {
    pier_model::platform::RunSpec {
        app: app.into(),
        number: 0,
        command: command.into(),
        release: 1,
        attach: false,
        tty: false,
        cols: 0,
        rows: 0,
        term: String::new(),
        by: "owner:blog".into(),
        created_ms: 1,
        deadline_ms: 3_600_000,
        secret: String::new(),
    }
}

#[tokio::test]
async fn runs_are_numbered_per_app_and_limited_to_those_not_ended() {
    use pier_store::runs::CreateRun;
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), "pier:").await.unwrap();
    let mut made = Vec::new();
    for i in 0..3 {
        match store
            .create_run(&run_spec("blog", &format!("cmd {i}")), 3)
            .await
            .unwrap()
        {
            CreateRun::Created(s) => made.push(s.number),
            CreateRun::AtLimit(n) => panic!("refused at {n}"),
        }
    }
    assert_eq!(made, [1, 2, 3]);
    // Another app counts apart and numbers from 1.
    match store.create_run(&run_spec("shop", "x"), 3).await.unwrap() {
        CreateRun::Created(s) => assert_eq!(s.number, 1),
        CreateRun::AtLimit(n) => panic!("refused at {n}"),
    }
    assert!(matches!(
        store
            .create_run(&run_spec("blog", "one too many"), 3)
            .await
            .unwrap(),
        CreateRun::AtLimit(3)
    ));
    // A run that ended frees its place at once, before the coordinator clears it away.
    let exit = pier_model::platform::RunExit {
        ended_ms: 2,
        code: Some(0),
        signal: None,
        reason: "exit status 0".into(),
    };
    store.end_run("blog", 2, &exit).await.unwrap();
    let CreateRun::Created(s) = store
        .create_run(&run_spec("blog", "again"), 3)
        .await
        .unwrap()
    else {
        panic!("still at the limit after a run ended");
    };
    assert_eq!(s.number, 4);
    // Listed newest first, with who ran what and how it ended; a stop is recorded once.
    store.stop_run("blog", 1, 10).await.unwrap();
    store.stop_run("blog", 1, 20).await.unwrap();
    let runs = store.runs("blog").await.unwrap();
    let numbers: Vec<u64> = runs.iter().map(|r| r.spec.number).collect();
    assert_eq!(numbers, [4, 3, 2, 1]);
    assert_eq!(runs[0].spec.command, "again");
    assert_eq!(runs[2].exit.as_ref().unwrap().reason, "exit status 0");
    assert_eq!(runs[3].stop_ms, Some(10));
    assert_eq!(runs[3].spec.by, "owner:blog");
    // A run starts once: a runner that restarts cannot start it again.
    assert!(store.start_run("blog", 1, "r1").await.unwrap());
    assert!(!store.start_run("blog", 1, "r1").await.unwrap());
    // A client attaches once.
    assert!(store.attach_run("blog", 3, 5).await.unwrap());
    assert!(!store.attach_run("blog", 3, 6).await.unwrap());
    // A broken record is skipped, not fatal to the listing.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("pier:run:blog:3")
        .arg("spec")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let runs = store.runs("blog").await.unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
}
