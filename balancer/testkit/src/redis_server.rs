//! A private `redis-server` process on a free loopback port, with its own data directory.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port;

/// A real `redis-server` on a free port, with its data directory. Killed when dropped.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port. A port chosen here can be taken by another process before
    /// redis-server binds it; the server then exits at once and is started on another port.
    pub fn start() -> RedisServer {
        let mut last = None;
        for _ in 0..3 {
            let mut r = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
            };
            match r.launch() {
                Ok(()) => return r,
                Err(e) => last = Some(e),
            }
        }
        panic!("redis-server did not start: {}", last.unwrap_or_default());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn launch(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {status} (port {} taken?)", self.port));
                }
            }
            if self.command(b"PING\r\n").starts_with("+PONG") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("it did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends one inline command and returns the first reply read ("" when unreachable).
    fn command(&self, cmd: &[u8]) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 64];
        if s.write_all(cmd).is_err() {
            return String::new();
        }
        match s.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Kills the server at once (no save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Saves the data to disk (for a restart "with data").
    pub fn save(&self) {
        let reply = self.command(b"SAVE\r\n");
        assert!(reply.starts_with("+OK"), "SAVE answered {reply:?}");
    }

    /// Starts again on the same port; `keep_data` loads the last SAVE, otherwise starts empty
    /// (the saved data is put aside, and comes back with the next restart that keeps data).
    pub fn restart(&mut self, keep_data: bool) {
        self.kill();
        let dump = self.dir.path().join("dump.rdb");
        let aside = self.dir.path().join("dump.rdb.aside");
        if keep_data {
            if aside.exists() {
                std::fs::rename(&aside, &dump).unwrap();
            }
        } else if dump.exists() {
            std::fs::rename(&dump, &aside).unwrap();
        }
        self.launch().unwrap();
    }

    /// Every string stored anywhere in this Redis: keys, values, hash fields and values, set
    /// members and stream entries.
    pub async fn everything(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = Vec::new();
        for k in keys {
            let t: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            let (cmd, args): (&str, &[&str]) = match t.as_str() {
                "string" => ("GET", &[]),
                "hash" => ("HGETALL", &[]),
                "set" => ("SMEMBERS", &[]),
                "list" => ("LRANGE", &["0", "-1"]),
                "zset" => ("ZRANGE", &["0", "-1"]),
                "stream" => ("XRANGE", &["-", "+"]),
                other => panic!("unexpected key type {other} for {k}"),
            };
            let v: redis::Value = redis::cmd(cmd)
                .arg(&k)
                .arg(args)
                .query_async(&mut c)
                .await
                .unwrap();
            flatten(&v, &mut out);
            out.push(k);
        }
        out
    }
}

/// Every string in a reply, nested arrays and maps included.
fn flatten(v: &redis::Value, out: &mut Vec<String>) {
    match v {
        redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => out.push(s.clone()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|i| flatten(i, out))
        }
        redis::Value::Map(kv) => kv.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out)
        }),
        other => out.push(format!("{other:?}")),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
