//! Certificates in the registry, against a real `redis-server` on a free port: the writes and
//! their checks, the cascades, the change feed, and the loads a balancer does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pier_registry::apply::{apply_change, table_from_snapshot, TableLoader};
use pier_registry::model::{ChangeKind, DomainRecord};
use pier_registry::{AppRecord, CertRecord, Change, Registry, RegistryError};
use pier_testkit::RedisServer;

/// The registry on a private `redis-server`.
async fn registry(server: &RedisServer) -> Registry {
    Registry::connect(&server.url()).await.unwrap()
}

/// A self-signed certificate record of `app` for `names`.
fn record(app: &str, names: &[&str]) -> CertRecord {
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&kp)
            .unwrap();
    CertRecord {
        app: app.into(),
        cert: cert.pem(),
        key: kp.serialize_pem(),
        added_ms: 1_700_000_000_000,
        source: Default::default(),
    }
}

/// Two apps; `blog` has `blog.test` and `*.blog.test` verified and `pending.test` pending;
/// `shop` has `shop.test`.
async fn setup(reg: &Registry) {
    for app in ["blog", "shop"] {
        reg.put_app(app, &AppRecord::default()).await.unwrap();
    }
    for d in ["blog.test", "*.blog.test"] {
        reg.put_domain(d, &DomainRecord::verified("blog"))
            .await
            .unwrap();
    }
    reg.put_domain(
        "pending.test",
        &DomainRecord {
            app: "blog".into(),
            verified: false,
            token: Some("t".into()),
            claimed_ms: 0,
        },
    )
    .await
    .unwrap();
    reg.put_domain("shop.test", &DomainRecord::verified("shop"))
        .await
        .unwrap();
}

/// Every change after `after`, as (op, key, has value).
async fn feed(reg: &Registry, after: &str) -> Vec<Change> {
    reg.changes(after, Duration::from_millis(10), 1000)
        .await
        .unwrap()
}

fn ops(changes: &[Change]) -> Vec<(ChangeKind, &str, bool)> {
    changes
        .iter()
        .map(|c| (c.kind, c.key.as_str(), c.value.is_some()))
        .collect()
}

#[tokio::test]
async fn put_get_delete_and_the_checks() {
    let redis = RedisServer::start();
    let reg = registry(&redis).await;
    setup(&reg).await;
    let v0 = reg.version().await.unwrap();
    let rec = record("blog", &["blog.test"]);
    let v = reg.put_cert("blog.test", &rec).await.unwrap();
    assert_eq!(v, v0 + 1);
    assert_eq!(reg.cert("blog.test").await.unwrap().as_ref(), Some(&rec));
    assert_eq!(reg.cert("shop.test").await.unwrap(), None);
    // The Debug form never shows the key.
    assert!(!format!("{rec:?}").contains("PRIVATE"), "{rec:?}");

    // Refused, and nothing written: a domain of another app, an unknown one, a pending one.
    for (domain, app) in [
        ("shop.test", "blog"),
        ("nope.test", "blog"),
        ("blog.test", "shop"),
    ] {
        let e = reg
            .put_cert(domain, &record(app, &[domain]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::NotAppDomain { domain: d, app: a } if d == domain && a == app),
            "{e:?}"
        );
    }
    let e = reg
        .put_cert("pending.test", &record("blog", &["pending.test"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::DomainNotVerified(d) if d == "pending.test"),
        "{e:?}"
    );
    assert_eq!(reg.version().await.unwrap(), v);
    assert_eq!(reg.cert("blog.test").await.unwrap().as_ref(), Some(&rec));

    // Replace, then delete.
    let newer = record("blog", &["blog.test"]);
    reg.put_cert("blog.test", &newer).await.unwrap();
    assert_eq!(reg.cert("blog.test").await.unwrap(), Some(newer));
    assert!(reg.delete_cert("blog.test").await.unwrap().is_some());
    assert_eq!(reg.cert("blog.test").await.unwrap(), None);
    assert_eq!(reg.delete_cert("blog.test").await.unwrap(), None);

    // The feed: one `cert` entry per write, the record as value, empty for the deletion.
    let changes = feed(&reg, "0-0").await;
    let certs: Vec<&Change> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Cert)
        .collect();
    assert_eq!(certs.len(), 3, "{changes:#?}");
    assert_eq!(certs[0].version, v);
    let first: CertRecord = serde_json::from_str(certs[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(first, rec);
    assert_eq!(certs[2].value, None);
    assert_eq!(certs[2].key, "blog.test");
    // Versions stay consecutive across the whole log.
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c.version, i as u64 + 1);
    }
}

#[tokio::test]
async fn removing_unverifying_or_deleting_the_app_removes_the_cert() {
    let redis = RedisServer::start();
    let reg = registry(&redis).await;
    setup(&reg).await;
    reg.put_cert("blog.test", &record("blog", &["blog.test"]))
        .await
        .unwrap();
    reg.put_cert("*.blog.test", &record("blog", &["*.blog.test"]))
        .await
        .unwrap();
    reg.put_cert("shop.test", &record("shop", &["shop.test"]))
        .await
        .unwrap();
    let mark = feed(&reg, "0-0").await.last().unwrap().id.clone();

    // Deleting a domain: its certificate goes first, in the same script.
    reg.delete_domain("blog.test").await.unwrap().unwrap();
    assert_eq!(reg.cert("blog.test").await.unwrap(), None);
    let changes = feed(&reg, &mark).await;
    assert_eq!(
        ops(&changes),
        [
            (ChangeKind::Cert, "blog.test", false),
            (ChangeKind::Domain, "blog.test", false)
        ]
    );
    let mark = changes.last().unwrap().id.clone();

    // Re-adding a domain as verified keeps its certificate; as pending drops it.
    reg.put_domain("shop.test", &DomainRecord::verified("shop"))
        .await
        .unwrap();
    assert!(reg.cert("shop.test").await.unwrap().is_some());
    reg.put_domain(
        "shop.test",
        &DomainRecord {
            app: "shop".into(),
            verified: false,
            token: Some("again".into()),
            claimed_ms: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(reg.cert("shop.test").await.unwrap(), None);
    let changes = feed(&reg, &mark).await;
    assert_eq!(
        ops(&changes),
        [
            (ChangeKind::Domain, "shop.test", true),
            (ChangeKind::Cert, "shop.test", false),
            (ChangeKind::Domain, "shop.test", true)
        ]
    );
    let mark = changes.last().unwrap().id.clone();

    // Deleting the app: each domain's certificate, then the domain, then the app.
    reg.delete_app("blog").await.unwrap().unwrap();
    assert_eq!(reg.cert("*.blog.test").await.unwrap(), None);
    let changes = feed(&reg, &mark).await;
    let got = ops(&changes);
    assert!(
        got.contains(&(ChangeKind::Cert, "*.blog.test", false)),
        "{got:?}"
    );
    let cert_at = got
        .iter()
        .position(|c| *c == (ChangeKind::Cert, "*.blog.test", false));
    let domain_at = got
        .iter()
        .position(|c| *c == (ChangeKind::Domain, "*.blog.test", false));
    assert!(cert_at < domain_at, "{got:?}");
    assert_eq!(got.last(), Some(&(ChangeKind::App, "blog", false)));
    assert_eq!(reg.snapshot().await.unwrap().certs.len(), 0);
}

#[tokio::test]
async fn snapshots_scans_and_the_feed_give_the_table_its_certs() {
    let redis = RedisServer::start();
    let reg = registry(&redis).await;
    setup(&reg).await;
    let blog = record("blog", &["blog.test"]);
    let wild = record("blog", &["*.blog.test"]);
    reg.put_cert("blog.test", &blog).await.unwrap();
    reg.put_cert("*.blog.test", &wild).await.unwrap();
    // Bad records can only get in raw; they are skipped, the rest loads.
    reg.put_raw(ChangeKind::Cert, "shop.test", "{not json")
        .await
        .unwrap();
    let mut mismatched = record("blog", &["x.blog.test"]);
    mismatched.key = record("blog", &["x.blog.test"]).key;
    reg.put_raw(
        ChangeKind::Cert,
        "x.blog.test",
        &serde_json::to_string(&mismatched).unwrap(),
    )
    .await
    .unwrap();

    let head = reg.snapshot_head().await.unwrap();
    assert_eq!(head.certs, 4);
    let snap = reg.snapshot().await.unwrap();
    assert_eq!(snap.certs.len(), 4);
    let (table, problems) = table_from_snapshot(&snap, &[], None);
    assert_eq!(table.cert_count(), 2);
    assert_eq!(problems.len(), 2, "{problems:?}");
    let leaf = |t: &pier_routes::RouteTable, sni: &str| {
        t.cert_for(sni).map(|k| k.cert[0].as_ref().to_vec())
    };
    let der = |r: &CertRecord| {
        pier_registry::cert::load_pair(&r.cert, &r.key)
            .unwrap()
            .key
            .cert[0]
            .as_ref()
            .to_vec()
    };
    assert_eq!(leaf(&table, "blog.test"), Some(der(&blog)));
    assert_eq!(leaf(&table, "www.blog.test"), Some(der(&wild)));
    assert_eq!(leaf(&table, "shop.test"), None);

    // The balancer's full load: scan each hash page by page into a TableLoader.
    let mut loader = TableLoader::new(&[], head.apps, head.domains, None);
    for (kind, step) in [
        (ChangeKind::App, 0),
        (ChangeKind::Backend, 1),
        (ChangeKind::Domain, 2),
        (ChangeKind::Cert, 3),
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = reg.clone();
        let fetch = tokio::spawn(async move { reader.scan_into(kind, tx).await });
        while let Some(page) = rx.recv().await {
            match step {
                0 => loader.apps(page),
                1 => loader.backends(page),
                2 => loader.domains(page),
                _ => loader.certs(page),
            }
        }
        fetch.await.unwrap().unwrap();
    }
    let (scanned, skipped, _) = loader.finish(head.version);
    assert_eq!((scanned.cert_count(), skipped), (2, 2));
    assert_eq!(leaf(&scanned, "a.blog.test"), Some(der(&wild)));

    // Following the feed from the snapshot: a change of certificate, then a bad one, then a
    // cascade, each applied to the table.
    let mut t = table;
    let newer = record("blog", &["blog.test"]);
    reg.put_cert("blog.test", &newer).await.unwrap();
    reg.put_raw(ChangeKind::Cert, "blog.test", "[]")
        .await
        .unwrap();
    reg.delete_domain("*.blog.test").await.unwrap().unwrap();
    let changes = feed(&reg, &snap.feed_id).await;
    let mut errors = Vec::new();
    for c in &changes {
        assert_eq!(c.version, t.version() + 1);
        if let Err(e) = apply_change(&mut t, c) {
            errors.push(e);
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("certificate of blog.test"), "{errors:?}");
    // The bad record left the previous certificate in place; the cascade removed the wildcard's.
    assert_eq!(leaf(&t, "blog.test"), Some(der(&newer)));
    assert_eq!(leaf(&t, "www.blog.test"), None);
    assert!(t.lookup("www.blog.test").is_none());
    assert_eq!(t.cert_count(), 1);
}
