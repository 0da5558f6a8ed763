//! The `pier` binary end to end: `pier api` as a process with its own redis-server, and the
//! client verbs run as processes against it, as operators' scripts run them.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ApiProcess, Output, OPERATOR};

#[test]
fn operator_and_owner_workflow() {
    let api = ApiProcess::start();
    let op = Some(OPERATOR);

    let out = api.pier(op, &["apps", "create", "blog"]).ok();
    assert!(out.stdout.contains("created app blog"), "{out:?}");
    // Again: an API error, exit 1, the reason on stderr.
    let out = api.pier(op, &["apps", "create", "blog"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("exists") && out.stderr.contains("409"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());

    // tokens create: the new token is the last line.
    let out = api.pier(op, &["tokens", "create", "--app", "blog"]).ok();
    let token = out.last_line().to_string();
    assert!(
        token.starts_with("pier_") && !token.contains(' '),
        "{out:?}"
    );
    let owner = Some(token.as_str());

    let out = api.pier(owner, &["apps", "list"]).ok();
    assert_eq!(out.stdout.trim(), "blog");
    // The owner cannot create apps or tokens.
    let out = api.pier(owner, &["apps", "create", "shop"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("operator"), "{out:?}");
    let out = api.pier(owner, &["tokens", "create", "--app", "blog"]);
    assert_eq!(out.code, 1);

    // Domains: the operator's --verified skips the check; an owner's domain is pending.
    api.pier(
        op,
        &["domains", "add", "blog", "WWW.Blog.test", "--verified"],
    )
    .ok();
    let out = api
        .pier(owner, &["domains", "add", "blog", "shop.blog.test"])
        .ok();
    assert!(out.stdout.contains("pending its DNS proof"), "{out:?}");
    // The proof as a line to paste into a zone file.
    let zone_line = out
        .stdout
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("_pier-challenge.shop.blog.test. 300 IN TXT \"")
        })
        .unwrap_or_else(|| panic!("{out:?}"))
        .trim()
        .to_string();
    let proof = zone_line.rsplit('"').nth(1).unwrap().to_string();
    assert_eq!(proof.len(), 32, "{zone_line}");
    assert!(out.stdout.contains("the claim lapses at 2"), "{out:?}");
    let out = api.pier(
        owner,
        &["domains", "add", "blog", "x.blog.test", "--verified"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    // `pier domains APP` lists, as `pier domains list APP` does.
    let out = api.pier(owner, &["domains", "blog"]).ok();
    assert_eq!(
        out.stdout,
        api.pier(owner, &["domains", "list", "blog"]).ok().stdout
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[1], "www.blog.test\tverified");
    let cols: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(cols[..3], ["shop.blog.test", "pending", zone_line.as_str()]);
    // The fourth column: when the pending claim lapses (RFC 3339, UTC).
    let until = cols[3].strip_prefix("lapses ").unwrap_or("");
    assert!(until.len() == 20 && until.ends_with('Z'), "{}", lines[0]);
    // Not published yet: the reason names the record; published: verified.
    let out = api.pier(owner, &["domains", "verify", "blog", "shop.blog.test"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("_pier-challenge.shop.blog.test"),
        "{out:?}"
    );
    api.dns.add_txt("_pier-challenge.shop.blog.test", &proof);
    let out = api
        .pier(owner, &["domains", "verify", "blog", "shop.blog.test"])
        .ok();
    assert!(out.stdout.contains("shop.blog.test verified"), "{out:?}");
    let out = api.pier(owner, &["domains", "add", "blog", "bad host"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("422") && out.stderr.contains("domain"),
        "{out:?}"
    );

    // Backends.
    let out = api
        .pier(
            owner,
            &[
                "backends",
                "add",
                "blog",
                "127.0.0.1:9000",
                "--id",
                "web1",
                "--ttl",
                "30",
            ],
        )
        .ok();
    assert!(
        out.stdout
            .starts_with("web1\t127.0.0.1:9000\tlive\texpires_at_ms="),
        "{out:?}"
    );
    api.pier(
        owner,
        &["backends", "add", "blog", "127.0.0.1:9001", "--id", "web2"],
    )
    .ok();
    let out = api.pier(owner, &["backends", "list", "blog"]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    assert!(
        out.stdout
            .contains("web2\t127.0.0.1:9001\tlive\tno-deadline"),
        "{out:?}"
    );
    api.pier(owner, &["backends", "remove", "blog", "web1"])
        .ok();
    let out = api.pier(owner, &["backends", "list", "blog"]).ok();
    assert!(!out.stdout.contains("web1"), "{out:?}");
    let out = api.pier(owner, &["backends", "remove", "blog", "web1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("404"), "{out:?}");
    let out = api.pier(owner, &["backends", "add", "blog", "not-an-address"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("IP:port"), "{out:?}");

    // --json prints the API's answer.
    let out = api
        .pier(owner, &["--json", "backends", "list", "blog"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["id"], "web2");

    // The registry holds what the CLI said.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let reg = pier_registry::Registry::connect(&api.redis.url())
            .await
            .unwrap();
        let d = reg.domain("www.blog.test").await.unwrap().unwrap();
        assert!(d.verified);
        // Proven by its TXT record through `pier domains verify`.
        assert!(
            reg.domain("shop.blog.test")
                .await
                .unwrap()
                .unwrap()
                .verified
        );
        assert_eq!(reg.app_backends("blog").await.unwrap().len(), 1);
    });
    // Every change is logged with who made it, never with the token itself.
    let log = api.log_text();
    for line in [
        "app created",
        "owner token created",
        "domain claimed",
        "domain verified",
        "domain added as verified",
    ] {
        let found = log.lines().find(|l| l.contains(line));
        assert!(found.is_some_and(|l| l.contains("by=")), "{line}: {log}");
    }
    assert!(
        log.contains("by=owner:blog") && log.contains("by=operator"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token is in the log");
}

#[test]
fn exit_codes_and_overrides() {
    let api = ApiProcess::start();
    // Usage errors: exit 2.
    assert_eq!(api.pier(Some(OPERATOR), &["apps"]).code, 2);
    assert_eq!(api.pier(Some(OPERATOR), &["apps", "frobnicate"]).code, 2);
    assert_eq!(
        api.pier(Some(OPERATOR), &["backends", "add", "blog"]).code,
        2
    );
    let out = api.pier(None, &["apps", "list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("PIER_TOKEN"), "{out:?}");

    // Unknown token: an API error (401), exit 1.
    let out = api.pier(Some("pier_nope"), &["apps", "list"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("401"), "{out:?}");

    // Nothing listening: exit 1 with the address in the message.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let out = api.pier(Some(OPERATOR), &["--api", &dead, "apps", "list"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");

    // --api and --token override the environment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
    cmd.args([
        "--api",
        &api.url(),
        "--token",
        OPERATOR,
        "apps",
        "create",
        "blog",
    ])
    .env("PIER_API_URL", &dead)
    .env("PIER_TOKEN", "pier_wrong");
    let out = Output::of(cmd).ok();
    assert!(out.stdout.contains("created app blog"));

    // `pier api` without an operator token refuses to start.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
    cmd.args([
        "api",
        "--listen",
        "127.0.0.1:0",
        "--redis",
        &api.redis.url(),
    ])
    .env_remove("PIER_OPERATOR_TOKEN");
    let out = Output::of(cmd);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("PIER_OPERATOR_TOKEN"), "{out:?}");
}

#[test]
fn remaining_verbs() {
    let api = ApiProcess::start();
    let op = Some(OPERATOR);
    api.pier(op, &["apps", "create", "blog"]).ok();
    let out = api
        .pier(op, &["apps", "update", "blog", r#"{"spin": true}"#])
        .ok();
    assert!(out.stdout.contains("updated app blog"), "{out:?}");
    let out = api.pier(op, &["apps", "update", "blog", r#"{"policy": "random"}"#]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("policy"), "{out:?}");
    assert_eq!(api.pier(op, &["apps", "update", "blog", "{nope"]).code, 2);

    api.pier(
        op,
        &[
            "backends",
            "add",
            "blog",
            "127.0.0.1:9000",
            "--id",
            "w",
            "--ttl",
            "5",
        ],
    )
    .ok();
    let out = api
        .pier(op, &["backends", "heartbeat", "blog", "w", "--ttl", "600"])
        .ok();
    let expires: u64 = out
        .stdout
        .split("expires_at_ms=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(expires > pier_api::api::now_ms() + 500_000, "{out:?}");

    api.pier(op, &["domains", "add", "blog", "*.blog.test"])
        .ok();
    let out = api.pier(op, &["domains", "verify", "blog", "*.blog.test"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("_pier-challenge.blog.test"), "{out:?}");
    let out = api
        .pier(op, &["domains", "verify", "blog", "*.blog.test", "--force"])
        .ok();
    assert!(out.stdout.contains("*.blog.test verified"), "{out:?}");

    let out = api.pier(op, &["apps", "show", "blog"]).ok();
    assert!(out.stdout.contains("\"spin\":true"), "{out:?}");
    assert!(
        out.stdout.contains("domain\t*.blog.test\tverified"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("backend\tw\t127.0.0.1:9000\tlive"),
        "{out:?}"
    );

    api.pier(op, &["domains", "remove", "blog", "*.blog.test"])
        .ok();
    assert_eq!(api.pier(op, &["domains", "list", "blog"]).ok().stdout, "");
    api.pier(op, &["apps", "delete", "blog"]).ok();
    let out = api.pier(op, &["apps", "show", "blog"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("404"), "{out:?}");
}

#[test]
fn certs_add_show_rm() {
    let api = ApiProcess::start();
    let op = Some(OPERATOR);
    api.pier(op, &["apps", "create", "shop"]).ok();
    api.pier(op, &["domains", "add", "shop", "shop.test", "--verified"])
        .ok();
    let token = api
        .pier(op, &["tokens", "create", "--app", "shop"])
        .ok()
        .last_line()
        .to_string();
    let owner = Some(token.as_str());
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert, key) = common::cert_pair(&["shop.test"], 2020, 2090);
    let (_, other_key) = common::cert_pair(&["shop.test"], 2020, 2090);
    let (cert_f, key_f) = (file("shop.crt", &cert), file("shop.key", &key));
    let other_f = file("other.key", &other_key);

    let out = api
        .pier(
            owner,
            &[
                "certs",
                "add",
                "shop",
                "Shop.Test",
                "--cert",
                &cert_f,
                "--key",
                &key_f,
            ],
        )
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0], "certificate for shop.test of shop stored",
        "{out:?}"
    );
    assert!(lines.contains(&"domain\tshop.test"), "{out:?}");
    assert!(lines.contains(&"names\tshop.test"), "{out:?}");
    assert!(
        lines.contains(&"not_after\t2090-01-01T00:00:00Z"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("PRIVATE"), "{out:?}");

    let out = api
        .pier(owner, &["certs", "show", "shop", "shop.test"])
        .ok();
    // The certificate's seven facts, who provided it, and the platform's certificate state
    // (this API issues none: off).
    assert_eq!(out.stdout.lines().count(), 9, "{out:?}");
    assert!(out.stdout.starts_with("domain\tshop.test\n"), "{out:?}");
    assert!(out.stdout.contains("\nsource\tuploaded\n"), "{out:?}");
    assert!(out.stdout.ends_with("\nstate\toff\n"), "{out:?}");
    let fingerprint = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint_sha256\t"))
        .unwrap()
        .to_string();
    assert_eq!(fingerprint.len(), 64);
    let out = api
        .pier(owner, &["--json", "certs", "show", "shop", "shop.test"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["fingerprint_sha256"], fingerprint);

    // A mismatched key: the API's 422 and its reason, exit 1.
    let out = api.pier(
        owner,
        &[
            "certs",
            "add",
            "shop",
            "shop.test",
            "--cert",
            &cert_f,
            "--key",
            &other_f,
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("does not match") && out.stderr.contains("422"),
        "{out:?}"
    );
    // An unreadable file or a missing option: a usage error, exit 2.
    let missing = dir.path().join("missing.crt").display().to_string();
    let out = api.pier(
        owner,
        &[
            "certs",
            "add",
            "shop",
            "shop.test",
            "--cert",
            &missing,
            "--key",
            &key_f,
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("missing.crt"), "{out:?}");
    let out = api.pier(
        owner,
        &["certs", "add", "shop", "shop.test", "--cert", &cert_f],
    );
    assert_eq!(out.code, 2, "{out:?}");

    let out = api.pier(owner, &["certs", "rm", "shop", "shop.test"]).ok();
    assert_eq!(
        out.stdout,
        "removed the certificate of shop.test from shop\n"
    );
    let out = api.pier(owner, &["certs", "show", "shop", "shop.test"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    let out = api.pier(owner, &["certs", "rm", "shop", "shop.test"]);
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn addons_verbs() {
    let shared = common::RedisServer::start();
    let slugs = tempfile::tempdir().unwrap();
    let api = ApiProcess::start_with(&[
        "--slug-store",
        &slugs.path().display().to_string(),
        "--addon-redis",
        &shared.url(),
    ]);
    let op = Some(OPERATOR);
    api.pier(op, &["apps", "create", "blog"]).ok();
    let out = api.pier(op, &["addons", "create", "blog", "redis"]).ok();
    assert!(
        out.stdout.starts_with("redis\tshared\tready\tpier-blog\t"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("REDIS_PREFIX, REDIS_URL set"),
        "{out:?}"
    );
    let out = api.pier(op, &["addons", "blog"]).ok();
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let out = api.pier(op, &["config", "blog"]).ok();
    assert!(out.stdout.contains("REDIS_PREFIX=blog:"), "{out:?}");
    // PostgreSQL is not configured: refused with what to do.
    let out = api.pier(op, &["addons", "create", "blog", "postgres"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--addon-postgres"), "{out:?}");
    // Destroy needs the app's name repeated; nothing happens without it.
    let out = api.pier(op, &["addons", "destroy", "blog", "redis"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("confirm"), "{out:?}");
    assert_eq!(
        api.pier(op, &["addons", "blog"])
            .ok()
            .stdout
            .lines()
            .count(),
        1
    );
    api.pier(
        op,
        &["addons", "destroy", "blog", "redis", "--confirm", "blog"],
    )
    .ok();
    let out = api.pier(op, &["addons", "blog"]).ok();
    assert!(out.stdout.contains("blog has no add-ons"), "{out:?}");
    // The credentials never reached the API's log.
    let log = api.log_text();
    assert!(!log.contains("redis://pier-blog:"), "{log}");
}
