//! PostgreSQL backups end to end: `pier api` with a real PostgreSQL (the test kit's) and its own
//! Redis, driven by `pier pg backups`. Captured data comes back on restore, downloads stream
//! whole with their checksum, a tampered archive is refused, owners reach only their own app's
//! backups, the store is private, and a schedule captures at its time and applies retention.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pier_testkit::PostgresServer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

struct Setup {
    api: ApiProcess,
    _pg: PostgresServer,
    dir: tempfile::TempDir,
    database_url: String,
}

impl Setup {
    /// `pier api` with a PostgreSQL for add-ons and a backup store in a temporary directory,
    /// and the app `blog` with its database; `extra` are more `pier api` arguments.
    fn start(extra: &[&str]) -> Setup {
        let pg = PostgresServer::start();
        let dir = tempfile::tempdir().unwrap();
        let slugs = dir.path().join("slugs").display().to_string();
        let backups = format!("file://{}", dir.path().join("backups").display());
        let mut args = vec![
            "--addon-postgres".to_string(),
            pg.admin_url(),
            "--slug-store".into(),
            slugs,
            "--backup-store".into(),
            backups,
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let api = ApiProcess::start_with(&args);
        let op = Some(OPERATOR);
        api.pier(op, &["apps", "create", "blog"]).ok();
        api.pier(op, &["addons", "create", "blog", "postgres"]).ok();
        let config = api.pier(op, &["config", "blog"]).ok();
        let database_url = config
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("DATABASE_URL="))
            .expect("DATABASE_URL set")
            .to_string();
        Setup {
            api,
            _pg: pg,
            dir,
            database_url,
        }
    }

    fn backups_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("backups")
    }

    /// Runs SQL in blog's database as its own role; the rows, `|`-separated.
    fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(&self.database_url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn list(&self, token: &str) -> Vec<Value> {
        let out = self
            .api
            .pier(Some(token), &["--json", "pg", "backups", "blog"])
            .ok();
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v["backups"].as_array().unwrap().clone()
    }
}

fn sha256_file(path: &std::path::Path) -> String {
    let data = std::fs::read(path).unwrap();
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[tokio::test(flavor = "multi_thread")]
async fn captured_data_comes_back_on_restore_and_a_tampered_backup_is_refused() {
    let s = Setup::start(&[]);
    let api = &s.api;
    let owner = api
        .pier(Some(OPERATOR), &["tokens", "create", "--app", "blog"])
        .ok()
        .last_line()
        .to_string();
    // A few MB of rows that do not compress to nothing.
    s.sql(
        "CREATE TABLE posts (id int PRIMARY KEY, title text, body text);
         INSERT INTO posts SELECT g, 'post ' || g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(g::text)
           FROM generate_series(1, 40000) g;",
    );
    let sum = "SELECT count(*) || ':' || md5(string_agg(body, ',' ORDER BY id)) FROM posts";
    let before = s.sql(sum);

    // Capture as the owner; the CLI waits for it.
    let started = Instant::now();
    let out = api
        .pier(Some(&owner), &["pg", "backups", "capture", "blog"])
        .ok();
    let capture_time = started.elapsed();
    assert!(out.stdout.contains("captured"), "{out:?}");
    let id = out.last_line().to_string();
    assert_eq!(id, "1");
    let list = s.list(&owner);
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(b["kind"], "manual");
    assert_eq!(b["by"], "owner:blog");
    let size = b["size"].as_u64().unwrap();
    let sha = b["sha256"].as_str().unwrap().to_string();
    assert!(size > 2 << 20, "a few MB: {size}");
    eprintln!("captured {size} bytes in {capture_time:?} (pier pg backups capture, CLI included)");
    let text = api.pier(Some(&owner), &["pg", "backups", "blog"]).ok();
    assert!(text.stdout.starts_with("1\t"), "{text:?}");
    assert!(text.stdout.contains(&sha) && text.stdout.contains("succeeded\tmanual"));

    // The archive in the store: private, its checksum the recorded one.
    let dir = s.backups_dir();
    let file = dir.join("blog/1.dump");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("blog")), 0o700);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(sha256_file(&file), sha);
    if is_root() {
        // As a user of no app and of no group: what an app's process is.
        use std::os::unix::process::CommandExt;
        let read = Command::new("cat")
            .arg(&file)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!read.status.success(), "another user read the backup");
        assert!(String::from_utf8_lossy(&read.stderr).contains("Permission denied"));
    }

    // Download: streamed whole, its SHA-256 the backup's.
    let got = s.dir.path().join("got.dump");
    let started = Instant::now();
    api.pier(
        Some(&owner),
        &[
            "pg",
            "backups",
            "download",
            "blog",
            "1",
            "-o",
            &got.display().to_string(),
        ],
    )
    .ok();
    eprintln!("downloaded {size} bytes in {:?}", started.elapsed());
    assert_eq!(std::fs::metadata(&got).unwrap().len(), size);
    assert_eq!(sha256_file(&got), sha);
    assert_eq!(mode(&got), 0o600);
    // To stdout, the same bytes.
    let raw = api
        .pier_command(Some(&owner), &["pg", "backups", "download", "blog", "1"])
        .output()
        .unwrap();
    assert!(raw.status.success());
    assert_eq!(raw.stdout, std::fs::read(&got).unwrap());

    // Another app's owner reaches none of it.
    api.pier(Some(OPERATOR), &["apps", "create", "other"]).ok();
    let stranger = api
        .pier(Some(OPERATOR), &["tokens", "create", "--app", "other"])
        .ok()
        .last_line()
        .to_string();
    for args in [
        &["pg", "backups", "blog"][..],
        &["pg", "backups", "download", "blog", "1", "-o", "/dev/null"],
        &["pg", "backups", "capture", "blog"],
        &["pg", "backups", "restore", "blog", "1", "--confirm", "blog"],
        &["pg", "backups", "delete", "blog", "1"],
    ] {
        let out = api.pier(Some(&stranger), args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("HTTP 403"), "{args:?}: {out:?}");
    }
    // A refused download leaves its -o path alone (as root it once removed /dev/null).
    {
        use std::os::unix::fs::FileTypeExt;
        let t = std::fs::metadata("/dev/null").unwrap().file_type();
        assert!(t.is_char_device(), "/dev/null is no longer a device");
    }
    // The operator reaches every app's.
    assert_eq!(s.list(OPERATOR).len(), 1);

    // Change the data; restoring needs the confirmation, then brings it back.
    s.sql("DELETE FROM posts WHERE id > 10; UPDATE posts SET body = 'changed'; CREATE TABLE later (x int);");
    assert_ne!(s.sql(sum), before);
    let out = api.pier(Some(&owner), &["pg", "backups", "restore", "blog", "1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--confirm blog"), "{out:?}");
    assert_ne!(s.sql(sum), before);
    let started = Instant::now();
    api.pier(
        Some(&owner),
        &["pg", "backups", "restore", "blog", "1", "--confirm", "blog"],
    )
    .ok();
    eprintln!("restored {size} bytes in {:?}", started.elapsed());
    assert_eq!(s.sql(sum), before);
    // Objects are the app's role's, so the app can go on changing them.
    assert_eq!(
        s.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'posts'"),
        "pier_blog"
    );
    s.sql("INSERT INTO posts VALUES (999999, 'after the restore', 'x')");

    // One capture or restore at a time per app.
    let mut redis = redis::Client::open(api.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("pier:backup_lock:blog")
        .arg("restore 7")
        .arg("PX")
        .arg(60_000)
        .query(&mut redis)
        .unwrap();
    let out = api.pier(Some(&owner), &["pg", "backups", "capture", "blog"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("busy (restore 7)") && out.stderr.contains("HTTP 409"),
        "{out:?}"
    );
    let _: () = redis::cmd("DEL")
        .arg("pier:backup_lock:blog")
        .query(&mut redis)
        .unwrap();

    // A tampered archive: one byte flipped in the store. The restore checks first and refuses;
    // the database is untouched.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let out = api.pier(
        Some(&owner),
        &["pg", "backups", "restore", "blog", "1", "--confirm", "blog"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("fails its checksum") && out.stderr.contains("HTTP 409"),
        "{out:?}"
    );
    assert_eq!(
        s.sql("SELECT title FROM posts WHERE id = 999999"),
        "after the restore"
    );

    // Deleting removes the archive and the record.
    api.pier(Some(&owner), &["pg", "backups", "delete", "blog", "1"])
        .ok();
    assert!(!file.exists());
    assert!(s.list(&owner).is_empty());
    let out = api.pier(Some(&owner), &["pg", "backups", "download", "blog", "1"]);
    assert!(out.stderr.contains("HTTP 404"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_dump_is_recorded_failed_and_never_offered() {
    let s = Setup::start(&[]);
    let api = &s.api;
    // The role may no longer log in: pg_dump fails, and the backup says why.
    let mut admin = Command::new("psql");
    admin
        .arg(format!(
            "{}/pier_blog",
            s._pg.admin_url().strip_suffix("/postgres").unwrap()
        ))
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            "ALTER ROLE pier_blog NOLOGIN",
        ]);
    assert!(admin.status().unwrap().success());
    let out = api.pier(Some(OPERATOR), &["pg", "backups", "capture", "blog"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("backup 1 failed: pg_dump failed"),
        "{out:?}"
    );
    let list = s.list(OPERATOR);
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not permitted to log in"),
        "{list:?}"
    );
    assert!(!s.backups_dir().join("blog/1.dump").exists());
    for args in [
        &["pg", "backups", "restore", "blog", "1", "--confirm", "blog"][..],
        &["pg", "backups", "download", "blog", "1"],
    ] {
        let out = api.pier(Some(OPERATOR), args);
        assert!(
            out.stderr.contains("failed (pg_dump failed") && out.stderr.contains("HTTP 409"),
            "{args:?}: {out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_capture_runs_at_its_time_and_retention_keeps_the_right_ones() {
    // The API's backup clock is set so that its next minute starts about 20 s from now.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let offset = (40 + 60 - now_s % 60) % 60;
    let offset_arg = format!("--backup-clock-offset-s={offset}");
    let s = Setup::start(&[&offset_arg]);
    let api = &s.api;
    s.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);");
    let api_now_ms = || {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + offset)
            * 1000
    };
    let next_minute = api_now_ms() / 60_000 + 1;
    let at = format!("{:02}:{:02}", (next_minute / 60) % 24, next_minute % 60);

    // Bad times are refused; a good one is set and shown.
    let out = api.pier(
        Some(OPERATOR),
        &["pg", "backups", "schedule", "blog", "--at", "24:00"],
    );
    assert!(out.stderr.contains("HTTP 422"), "{out:?}");
    api.pier(
        Some(OPERATOR),
        &["pg", "backups", "schedule", "blog", "--at", &at],
    )
    .ok();
    let shown = api
        .pier(Some(OPERATOR), &["pg", "backups", "schedule", "blog"])
        .ok();
    assert!(
        shown.stdout.contains(&format!(
            "every day at {at} UTC; keeps 7 daily, 4 weekly, 12 monthly"
        )),
        "{shown:?}"
    );

    // Older backups: a scheduled one from 400 days ago (past every window), one from 2 days ago
    // (within the daily window), a manual one from 400 days ago (kept until deleted).
    let mut redis = redis::Client::open(api.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let day = 86_400_000;
    for (id, kind, age_days) in [
        (100, "scheduled", 400),
        (101, "scheduled", 2),
        (102, "manual", 400),
    ] {
        let rec = json!({
            "app": "blog", "id": id, "state": "succeeded", "kind": kind, "by": "schedule",
            "created_ms": api_now_ms() - age_days * day, "size": 4, "sha256": "x",
        });
        let _: () = redis::cmd("HSET")
            .arg("pier:backups:blog")
            .arg(id)
            .arg(rec.to_string())
            .query(&mut redis)
            .unwrap();
        std::fs::create_dir_all(s.backups_dir().join("blog")).unwrap();
        std::fs::write(s.backups_dir().join(format!("blog/{id}.dump")), "old!").unwrap();
    }

    // The capture comes at its minute, made by the schedule, then retention runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let scheduled = loop {
        let list = s.list(OPERATOR);
        let done = list
            .iter()
            .find(|b| {
                b["by"] == "schedule" && b["id"].as_u64() < Some(100) && b["state"] != "running"
            })
            .cloned();
        if let Some(b) = done {
            if list.iter().all(|b| b["id"] != 100) {
                break (b, list);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled capture: {list:?}\n{}",
            api.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (b, list) = scheduled;
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(b["kind"], "scheduled");
    let created = b["created_ms"].as_u64().unwrap();
    assert!(
        created / 60_000 == next_minute,
        "captured at minute {} of the API's clock, scheduled for {next_minute}",
        created / 60_000
    );
    let ids: Vec<u64> = list.iter().map(|b| b["id"].as_u64().unwrap()).collect();
    assert!(ids.contains(&101) && ids.contains(&102), "{ids:?}");
    assert!(!ids.contains(&100), "{ids:?}");
    assert!(!s.backups_dir().join("blog/100.dump").exists());
    assert!(s.backups_dir().join("blog/102.dump").exists());
    // Captured once that day, by one API.
    let day_key = format!(
        "pier:backup_day:blog:{}",
        std::str::from_utf8(
            &Command::new("date")
                .args(["-u", "-d", &format!("@{}", created / 1000), "+%F"])
                .output()
                .unwrap()
                .stdout
        )
        .unwrap()
        .trim()
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&day_key)
        .query(&mut redis)
        .unwrap();
    assert_eq!(exists, 1, "{day_key}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = s.list(OPERATOR);
    assert_eq!(
        again
            .iter()
            .filter(|b| b["by"] == "schedule" && b["id"].as_u64() < Some(100))
            .count(),
        1,
        "{again:?}"
    );

    // Unscheduled: shown as gone, the backups stay.
    api.pier(Some(OPERATOR), &["pg", "backups", "unschedule", "blog"])
        .ok();
    let out = api.pier(Some(OPERATOR), &["pg", "backups", "schedule", "blog"]);
    assert!(out.stderr.contains("HTTP 404"), "{out:?}");
    assert_eq!(s.list(OPERATOR).len(), again.len());
}
