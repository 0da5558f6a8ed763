//! The provisioners against real servers started here: a PostgreSQL with password
//! authentication and a redis-server, each on a free port. Two apps' add-ons are isolated both
//! ways, creating again is idempotent, a server that is down is a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pier_addons::postgres::Postgres;
use pier_addons::redis::SharedRedis;
use pier_addons::AddonError;
use pier_testkit::{PostgresServer, RedisServer};
use tokio_postgres::NoTls;

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

#[tokio::test]
async fn postgres_addons_are_isolated_and_idempotent() {
    let pg = PostgresServer::start();
    let p = Postgres::new(&pg.admin_url(), 5).unwrap();
    let a = p.create("blog", "passwordA1").await.unwrap();
    let b = p.create("shop-2", "passwordB2").await.unwrap();
    assert_eq!(a.database, "pier_blog");
    assert_eq!(b.database, "pier_shop_2");
    // Again, as after a timeout: the same database, no second one.
    assert_eq!(p.create("blog", "passwordA1").await.unwrap(), a);
    let admin = connect(&pg.admin_url()).await.unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pier_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Each app uses its own database.
    let ca = connect(&a.url).await.unwrap();
    ca.batch_execute("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('a-only')")
        .await
        .unwrap();
    let cb = connect(&b.url).await.unwrap();
    cb.batch_execute("CREATE TABLE t (v text)").await.unwrap();
    // Neither can connect to the other's database, nor with the other's role's name.
    for url in [with_db(&a.url, &b.database), with_db(&b.url, &a.database)] {
        let Err(e) = connect(&url).await else {
            panic!("{url}: connected to the other app's database")
        };
        let code = e.as_db_error().map(|d| d.code().code().to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{e}"); // insufficient_privilege
    }
    let wrong = a.url.replace("passwordA1", "passwordB2");
    assert!(
        connect(&wrong).await.is_err(),
        "a wrong password is refused"
    );
    // Inside its own database, the other app's tables do not exist (PostgreSQL has no queries
    // across databases); database names themselves are visible to every role (pg_database).
    let ca2 = connect(&a.url).await.unwrap();
    assert!(ca2.simple_query("SELECT * FROM t").await.is_err());
    drop(ca2);
    // The connection limit holds (the connections above closed first).
    drop(ca);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect(&a.url).await.unwrap());
    }
    let Err(e) = connect(&a.url).await else {
        panic!("a sixth connection was accepted")
    };
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    assert_eq!(code.as_deref(), Some("53300"), "{e:?}"); // too_many_connections
    drop(held);

    // Destroy: gone, and again is fine.
    p.destroy("blog").await.unwrap();
    p.destroy("blog").await.unwrap();
    assert!(connect(&a.url).await.is_err());
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'pier_blog'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_postgres_server_that_is_down_is_a_clear_error() {
    let mut pg = PostgresServer::start();
    let p = Postgres::new(&pg.admin_url(), 5).unwrap();
    pg.kill();
    let e = p.create("blog", "passwordA1").await.err().unwrap();
    assert!(matches!(e, AddonError::Unreachable { .. }), "{e}");
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn refused(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> bool {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(c).await {
        Ok(_) => false,
        Err(e) => {
            let text = e.to_string();
            text.contains("NOPERM")
                || text.contains("no permissions")
                || text.contains("not allowed")
        }
    }
}

#[tokio::test]
async fn redis_addons_see_only_their_own_keys() {
    let server = RedisServer::start();
    let s = SharedRedis::new(&server.url()).unwrap();
    let a = s.create("blog", "passwordA1").await.unwrap();
    let b = s.create("shop", "passwordB2").await.unwrap();
    assert_eq!(a.prefix, "blog:");
    assert_eq!(
        s.create("blog", "passwordA1").await.unwrap(),
        a,
        "idempotent"
    );
    let mut ca = redis_conn(&a.url).await;
    let mut cb = redis_conn(&b.url).await;
    redis::cmd("SET")
        .arg("blog:k")
        .arg("a")
        .query_async::<()>(&mut ca)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg("shop:k")
        .arg("b")
        .query_async::<()>(&mut cb)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("blog:k")
        .query_async(&mut ca)
        .await
        .unwrap();
    assert_eq!(v, "a");
    // The other app's keys and channels, key enumeration and dangerous commands: denied.
    let mut admin = redis_conn(&server.url()).await;
    for args in [
        &["GET", "shop:k"][..],
        &["SET", "nokey", "x"],
        &["PUBLISH", "shop:ch", "x"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["CONFIG", "GET", "*"],
        &["DEBUG", "SLEEP", "0"],
        &["SELECT", "1"],
        &["ACL", "LIST"],
        &["CLIENT", "LIST"],
        &["INFO"],
    ] {
        assert!(refused(&mut ca, args).await, "{args:?} was allowed");
        // And the ACL itself says no (DEBUG is also off by Redis's own default).
        let mut dry = redis::cmd("ACL");
        dry.arg("DRYRUN").arg(&a.user);
        for x in args.iter() {
            dry.arg(*x);
        }
        let verdict: String = dry
            .query_async(&mut admin)
            .await
            .unwrap_or_else(|e| e.to_string());
        assert_ne!(verdict, "OK", "{args:?} allowed by the ACL");
    }
    assert!(!refused(&mut ca, &["PUBLISH", "blog:ch", "x"]).await);
    // Destroy: the user and its keys go; the other app's stay.
    s.destroy("blog").await.unwrap();
    s.destroy("blog").await.unwrap();
    assert!(redis::Client::open(a.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .is_err());
    let left: Option<String> = redis::cmd("GET")
        .arg("blog:k")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, None);
    let kept: String = redis::cmd("GET")
        .arg("shop:k")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(kept, "b");
}
