//! The consistent-hash policy over real sockets: a key (header, cookie, client address) keeps
//! going to one backend, keys spread over all of them, a backend's loss moves only its keys,
//! and a hot key spills past its bound of load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use pier_testkit::h1::{Backend, Conn};
use pier_testkit::proxy::{app_routes, Balancer};

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await);
    }
    v
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

/// Which backend of `sticky.test` answered user `user` (header `X-User`).
async fn user_home(conn: &mut Conn, user: u32) -> String {
    served_by(conn, "sticky.test", "/", &format!("X-User: u{user}\r\n")).await
}

/// App `sticky` on `sticky.test`, hashing header `header` over `backends`.
fn sticky_routes(backends: &[SocketAddr], header: &str) -> String {
    app_routes(
        "sticky",
        &["sticky.test"],
        backends,
        &format!("policy = \"consistent-hash\"\nhash_on = \"header:{header}\""),
    )
}

/// Which backend answered `extra_headers` on `conn`.
async fn served_by(conn: &mut Conn, host: &str, path: &str, extra_headers: &str) -> String {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\r\n").as_bytes())
        .await;
    let r = conn.read_response(false).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    // The body is `<backend name> <path>`.
    r.text().split(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keeps_each_user_on_one_backend_and_users_spread() {
    let bs = backends(3).await;
    let routes = sticky_routes(&addrs(&bs), "X-User");
    let b = Balancer::start(&routes, "").await;
    let mut conn = Conn::connect(b.addr()).await;
    let mut home: HashMap<u32, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..60 {
            let by = user_home(&mut conn, user).await;
            match home.get(&user) {
                Some(h) => assert_eq!(h, &by, "user {user} moved in round {round}"),
                None => {
                    home.insert(user, by);
                }
            }
        }
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for h in home.values() {
        *per_backend.entry(h).or_default() += 1;
    }
    // 60 users over 3 backends: 20 each expected; each gets a fair part of them.
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(per_backend.values().all(|&n| n >= 6), "{per_backend:?}");
    // Without the header: spread as round-robin spreads.
    let mut spread: HashSet<String> = HashSet::new();
    for _ in 0..6 {
        spread.insert(served_by(&mut conn, "sticky.test", "/", "").await);
    }
    assert_eq!(spread.len(), 3, "{spread:?}");

    // Another balancer (another process: the ring is the same everywhere) whose app lost a
    // backend: its users move (and are served); nobody else's user moves.
    let (gone, _) = per_backend.iter().max_by_key(|(_, n)| **n).unwrap();
    let gone = gone.to_string();
    let rest: Vec<SocketAddr> = bs
        .iter()
        .filter(|b| b.name != gone)
        .map(|b| b.addr)
        .collect();
    let routes = sticky_routes(&rest, "X-User");
    let b2 = Balancer::start(&routes, "").await;
    let mut conn = Conn::connect(b2.addr()).await;
    for (user, h) in &home {
        let by = user_home(&mut conn, *user).await;
        if *h == gone {
            assert_ne!(by, gone);
        } else {
            assert_eq!(
                &by, h,
                "user {user} moved though its backend is still there"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_or_the_forwarded_client_is_the_key() {
    let bs = backends(4).await;
    let trusted = pier_testkit::net::free_port();
    let routes = format!(
        "{}{}",
        app_routes(
            "cookie",
            &["cookie.test"],
            &addrs(&bs),
            "policy = \"consistent-hash\"\nhash_on = \"cookie:sid\""
        ),
        app_routes(
            "ip",
            &["ip.test"],
            &addrs(&bs),
            "policy = \"consistent-hash\""
        ),
    );
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\", {{ address = \"127.0.0.1:{trusted}\", trusted = true }}]\n"
    );
    let b = Balancer::start(&routes, &config).await;
    let mut conn = Conn::connect(b.addr()).await;
    let mut seen = HashSet::new();
    for sid in 0..40 {
        let cookie = format!("Cookie: theme=dark; sid=s{sid}; lang=en\r\n");
        let first = served_by(&mut conn, "cookie.test", "/", &cookie).await;
        // Other cookies around it do not change the key.
        let again = served_by(
            &mut conn,
            "cookie.test",
            "/",
            &format!("Cookie: sid=s{sid}\r\n"),
        )
        .await;
        assert_eq!(first, again, "sid {sid}");
        seen.insert(first);
    }
    assert!(seen.len() >= 3, "{seen:?}");

    // The client's address: on the plain listener every request here is 127.0.0.1.
    let one = served_by(&mut conn, "ip.test", "/", "").await;
    for _ in 0..5 {
        assert_eq!(served_by(&mut conn, "ip.test", "/", "").await, one);
    }
    // Behind a trusted proxy, the forwarded client's (a client cannot pick its backend on an
    // untrusted listener: X-Forwarded-For is not read there).
    for _ in 0..5 {
        let xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n";
        assert_eq!(served_by(&mut conn, "ip.test", "/", xff).await, one);
    }
    let mut p = Conn::connect(SocketAddr::from(([127, 0, 0, 1], trusted))).await;
    let mut homes = HashSet::new();
    for c in 0..40 {
        let xff = format!("X-Forwarded-For: 203.0.113.{c}\r\n");
        let home = served_by(&mut p, "ip.test", "/", &xff).await;
        assert_eq!(served_by(&mut p, "ip.test", "/", &xff).await, home);
        homes.insert(home);
    }
    assert!(homes.len() >= 3, "{homes:?}");
}

/// Sends `n` requests of one key at once (each held 600 ms by its backend) and counts them by
/// backend.
async fn hot_key(b: &Balancer, host: &'static str, n: usize) -> HashMap<String, usize> {
    let addr = b.addr();
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await;
            served_by(&mut c, host, "/slow/600", "X-User: hot\r\n").await
        }));
        // One after the other, so each choice sees the ones before it in flight.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut counts = HashMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_spills_over_past_its_bound() {
    let bs = backends(4).await;
    let routes = format!(
        "{}{}",
        app_routes(
            "bounded",
            &["bounded.test"],
            &addrs(&bs),
            "policy = \"consistent-hash\"\nhash_on = \"header:X-User\"\nhash_balance = 125"
        ),
        app_routes(
            "unbounded",
            &["unbounded.test"],
            &addrs(&bs),
            "policy = \"consistent-hash\"\nhash_on = \"header:X-User\"\nhash_balance = 0"
        ),
    );
    let b = Balancer::start(&routes, "").await;
    // Unbounded: all 24 at the key's backend.
    let counts = hot_key(&b, "unbounded.test", 24).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    // Bounded at 125%: none holds more than ceil(1.25 × 24 / 4) = 8 of the 24 in flight.
    let counts = hot_key(&b, "bounded.test", 24).await;
    assert!(counts.len() >= 3, "{counts:?}");
    assert!(counts.values().all(|&n| n <= 8), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_hash_on_the_same_key() {
    let bs = backends(3).await;
    let routes = sticky_routes(&addrs(&bs), "x-user");
    let b = Balancer::start(&routes, "").await;
    let mut h1 = Conn::connect(b.addr()).await;
    let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let send = pier_testkit::h2::h2_client(tcp).await;
    for user in 0..20 {
        let over_h1 = user_home(&mut h1, user).await;
        let req = http::Request::builder()
            .uri("http://sticky.test/")
            .header("x-user", format!("u{user}"))
            .body(())
            .unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let over_h2 = resp.headers()["x-backend"].to_str().unwrap().to_string();
        assert_eq!(over_h1, over_h2, "user {user}");
    }
}
