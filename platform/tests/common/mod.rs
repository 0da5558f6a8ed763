//! Test harness: a real `redis-server` on a free port, the API server in-process on a loopback
//! port, an API client that checks every response against the OpenAPI document, a tiny app
//! backend written here (not with pier's code), and helpers to run the `pier` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use pier_platform::api::ApiState;
use pier_platform::auth::Authenticator;
use pier_platform::client::{ApiClient, ApiResponse};
use pier_platform::router::{self, Match};
use pier_platform::verify::HttpVerifier;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const OPERATOR: &str = "op-secret-token-for-tests";

/// A loopback port nothing listens on right now, never handed out before by this process: the
/// kernel can give the same port to two `bind(0)` calls in a row once the first socket is closed,
/// and a test that asks for two ports (a listener and an admin port) must not get one twice.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    // Hold every socket tried until a new port comes up, so the kernel cannot offer one again.
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
        held.push(l);
    }
}

/// A private `redis-server` on a free port, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        // A port chosen here can be taken by another process before redis-server binds it; the
        // server then exits at once, and is started again on another port (twice at most).
        for _ in 0..2 {
            if let Some(server) = Self::try_start_on(free_port()) {
                return server;
            }
        }
        Self::start_on(free_port())
    }

    /// Kills this server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let fresh = Self::start_on(self.port);
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old); // its process is already gone; dropping it would kill nothing
    }

    fn start_on(port: u16) -> RedisServer {
        Self::try_start_on(port).expect("redis-server starts")
    }

    /// The server on `port` once it answers PING, or None if it exited (port taken).
    fn try_start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = server.child.try_wait() {
                return None; // exited already (its port was taken)
            }
            if server.ping() {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .map(|n| &buf[..n] == b"+PONG\r\n")
                .unwrap_or(false)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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
            match t.as_str() {
                "string" => out.push(redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap()),
                "hash" => {
                    let kv: Vec<String> = redis::cmd("HGETALL")
                        .arg(&k)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    out.extend(kv);
                }
                "set" => {
                    let m: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&k)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    out.extend(m);
                }
                "stream" => {
                    let v: redis::Value = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    out.push(format!("{v:?}"));
                }
                other => panic!("unexpected key type {other} for {k}"),
            }
            out.push(k);
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API server running in this test process, on a loopback port.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub registry: pier_registry::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub redis: RedisServer,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        Self::start_with(|s| s).await
    }

    /// An API server whose pending domain claims lapse after `ttl`.
    pub async fn start_with_claim_ttl(ttl: Option<Duration>) -> ApiServer {
        Self::start_with(|s| s.with_claim_ttl(ttl)).await
    }

    /// An API server with settings changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(ApiState) -> ApiState) -> ApiServer {
        let redis = RedisServer::start();
        let registry = pier_registry::Registry::connect(&redis.url())
            .await
            .unwrap();
        let state = Arc::new(configure(ApiState::new(
            registry.clone(),
            &redis.url(),
            "pier:",
            Authenticator::new(OPERATOR),
            Arc::new(HttpVerifier {
                via: None,
                timeout: Duration::from_secs(2),
            }),
        )));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(pier_platform::server::serve(listener, state, async {
            let _ = rx.await;
        }));
        ApiServer {
            addr,
            registry,
            stop: Some(tx),
            redis,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self, token: Option<&str>) -> Api {
        Api::new(&self.url(), token)
    }

    pub fn operator(&self) -> Api {
        self.client(Some(OPERATOR))
    }

    /// Creates an app (as the operator) and an owner token for it.
    pub async fn app_with_owner(&self, name: &str) -> Api {
        let op = self.operator();
        op.expect(
            Method::POST,
            "/v1/apps",
            Some(serde_json::json!({"name": name})),
            201,
        )
        .await;
        let t = op
            .expect(
                Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"app": name})),
                201,
            )
            .await;
        self.client(Some(t.body["token"].as_str().unwrap()))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// An API client whose every answer is checked against the OpenAPI document.
#[derive(Clone)]
pub struct Api {
    pub client: ApiClient,
}

impl Api {
    pub fn new(url: &str, token: Option<&str>) -> Api {
        Api {
            client: ApiClient::new(url, token.map(str::to_string)).unwrap(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> ApiResponse {
        let r = self
            .client
            .call(method.clone(), path, body.as_ref())
            .await
            .unwrap();
        check_against_openapi(&method, path, &r);
        if r.status.is_success() {
            check_request_against_openapi(&method, path, body.as_ref());
        }
        r
    }

    /// Calls and asserts the status; returns the response.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> ApiResponse {
        let r = self.call(method.clone(), path, body).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path}: got {} {}",
            r.status,
            r.text
        );
        r
    }
}

// ------------------------------------------------------------------ OpenAPI checking

/// Checks that `r` is declared for the operation `method path` hits (status code) and that its
/// body matches the declared schema. Responses to unknown routes are not operations: skipped.
pub fn check_against_openapi(method: &Method, path: &str, r: &ApiResponse) {
    let doc = pier_platform::openapi::document();
    let path_only = path.split('?').next().unwrap_or(path);
    let Ok(Match::Found(route, _)) = router::match_route(method, path_only) else {
        return;
    };
    let op = &doc["paths"][route.pattern][method.as_str().to_ascii_lowercase()];
    assert!(
        op.is_object(),
        "{} {} is served but not in the OpenAPI document",
        method,
        route.pattern
    );
    let status = r.status.as_u16().to_string();
    let resp = &op["responses"][&status];
    assert!(
        resp.is_object(),
        "{method} {}: status {status} is not declared in the OpenAPI document (body {})",
        route.pattern,
        r.text
    );
    match resp.get("content") {
        Some(content) => {
            let schema = &content["application/json"]["schema"];
            if let Err(e) = validate(&doc, schema, &r.body, "$") {
                panic!(
                    "{method} {} {status}: body does not match its schema: {e}\nbody: {}",
                    route.pattern, r.text
                );
            }
        }
        None => assert!(
            r.text.is_empty(),
            "{method} {} {status}: declared without a body, got {}",
            route.pattern,
            r.text
        ),
    }
}

/// Checks that a request body the server accepted matches the operation's declared request
/// schema, so the document does not describe bodies the server would refuse or vice versa.
pub fn check_request_against_openapi(method: &Method, path: &str, body: Option<&Value>) {
    let doc = pier_platform::openapi::document();
    let Ok(Match::Found(route, _)) = router::match_route(method, path) else {
        return;
    };
    let op = &doc["paths"][route.pattern][method.as_str().to_ascii_lowercase()];
    let Some(schema) = op
        .get("requestBody")
        .map(|b| &b["content"]["application/json"]["schema"])
    else {
        assert!(
            body.is_none(),
            "{method} {}: body sent but none declared",
            route.pattern
        );
        return;
    };
    if let Some(body) = body {
        if let Err(e) = validate(&doc, schema, body, "$") {
            panic!(
                "{method} {}: accepted request body does not match its schema: {e}\nbody: {body}",
                route.pattern
            );
        }
    }
}

/// A JSON Schema subset (allOf of one schema for nullable references): $ref, type (with nullable), required, properties,
/// additionalProperties: false, items, enum, minimum.
pub fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return validate(doc, target, v, at);
    }
    if v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, v, at)?;
        }
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            other => return Err(format!("schema type {other} unknown")),
        };
        if !ok {
            return Err(format!("{at}: expected {t}, got {v}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            return Err(format!("{at}: {n} is below {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required field {req} missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, val, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: field {k} is not declared"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ a test backend

/// What a test backend saw: (method, path, host) of each request.
pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A tiny HTTP/1.1 app server (keep-alive, GET only). It answers
/// `/.well-known/pier-challenge/<token>` with the token when `tokens` maps the request's Host
/// to it, 404 for other challenges, and `hello from <name>` for any other path.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub seen: Seen,
    pub tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let name = name.to_string();
        let (s, t) = (seen.clone(), tokens.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_backend_conn(
                    stream,
                    name.clone(),
                    s.clone(),
                    t.clone(),
                ));
            }
        });
        TestBackend { addr, seen, tokens }
    }

    pub fn serve_challenge(&self, host: &str, token: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(host.to_string(), token.to_string());
    }
}

async fn serve_backend_conn(
    mut stream: tokio::net::TcpStream,
    name: String,
    seen: Seen,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let host = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        seen.lock()
            .unwrap()
            .push((method, path.clone(), host.clone()));
        let (status, body) = match path.strip_prefix("/.well-known/pier-challenge/") {
            Some(t) => match tokens.lock().unwrap().get(&host) {
                Some(want) if want == t => ("200 OK", format!("{want}\n")),
                _ => ("404 Not Found", "no such challenge\n".to_string()),
            },
            None => ("200 OK", format!("hello from {name}")),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------------ raw HTTP

/// One GET over a fresh connection with the given Host; returns (status, body).
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ------------------------------------------------------------------ the pier binary

/// `pier api` as a separate process on a free port, with its own redis-server; killed when
/// dropped.
pub struct ApiProcess {
    child: Child,
    pub port: u16,
    pub redis: RedisServer,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiProcess {
    pub fn start() -> ApiProcess {
        let redis = RedisServer::start();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", &redis.url()])
            .env("PIER_OPERATOR_TOKEN", OPERATOR)
            .env_remove("PIER_TOKEN")
            .env_remove("PIER_API_URL")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut api = ApiProcess {
            child,
            port,
            redis,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = api.child.try_wait() {
                panic!("pier api exited with {status}: {}", api.log_text());
            }
            if healthz_ok(port) {
                return api;
            }
            assert!(
                Instant::now() < deadline,
                "pier api did not start: {}",
                api.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `pier ARGS` against this API with `token` in `PIER_TOKEN`.
    pub fn pier(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
        cmd.args(args).env("PIER_API_URL", self.url());
        match token {
            Some(t) => cmd.env("PIER_TOKEN", t),
            None => cmd.env_remove("PIER_TOKEN"),
        };
        Output::of(cmd)
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// What a `pier` run printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn of(mut cmd: Command) -> Output {
        let out = cmd.output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Output {
        assert_eq!(self.code, 0, "pier failed: {self:?}");
        self
    }

    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

// ------------------------------------------------------------------ certificates

/// A self-signed certificate for `names`, valid from January 1st of `from` to January 1st of
/// `to`, and its private key, both PEM.
pub fn cert_pair(names: &[&str], from: i32, to: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
