//! Test harness of the API: the API server in-process on a loopback port (with its own
//! `redis-server` from the test kit), and an API client that checks every response against the
//! OpenAPI document.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use pier_api::api::ApiState;
use pier_api::auth::Authenticator;
use pier_api::router::{self, Match};
use pier_api::verify::DnsVerifier;
use pier_model::client::{ApiClient, ApiResponse};
pub use pier_testkit::certs::cert_pair;
pub use pier_testkit::{free_port, http_get, DnsServer, RedisServer, TestBackend};
use serde_json::Value;
use tokio::net::TcpListener;

pub const OPERATOR: &str = "op-secret-token-for-tests";

/// The zones the tests' DNS server answers for: every custom domain the tests use is under one.
pub const ZONES: &[&str] = &["test", "com", "org", "example"];

/// The API server running in this test process, on a loopback port.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub registry: pier_registry::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub redis: RedisServer,
    /// The authoritative DNS server the API's proofs are looked up at.
    pub dns: DnsServer,
    /// The slug store of an API started with the platform's routes.
    _slugs: Option<tempfile::TempDir>,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        Self::start_with(|s| s).await
    }

    /// An API server whose pending domain claims lapse after `ttl`.
    pub async fn start_with_claim_ttl(ttl: Option<Duration>) -> ApiServer {
        Self::start_with(|s| s.with_claim_ttl(ttl)).await
    }

    /// An API server with the platform's routes (deploys, releases, formation, ...).
    pub async fn start_platform() -> ApiServer {
        Self::start_platform_with(Default::default()).await
    }

    /// [`ApiServer::start_platform`] with add-on servers.
    pub async fn start_platform_with(addon_servers: pier_api::addons::AddonServers) -> ApiServer {
        Self::start_platform_configured(addon_servers, |s| s).await
    }

    /// [`ApiServer::start_platform`] with add-on servers and settings changed by `configure`.
    pub async fn start_platform_configured(
        addon_servers: pier_api::addons::AddonServers,
        configure: impl FnOnce(ApiState) -> ApiState,
    ) -> ApiServer {
        let slugs = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let store = pier_store::Store::connect(&redis.url(), "pier:")
            .await
            .unwrap();
        let platform = pier_api::platform::PlatformState {
            store,
            slugs: pier_slug::SlugStore::open(&slugs.path().display().to_string()).unwrap(),
            build: Default::default(),
            max_upload: 1 << 20,
            builds: Arc::new(tokio::sync::Semaphore::new(1)),
            apps_url: Some("http://{app}.apps.test/".into()),
            addon_servers,
            runs: Default::default(),
        };
        let mut api = Self::start_on(redis, |s| configure(s.with_platform(platform))).await;
        api._slugs = Some(slugs);
        api
    }

    /// An API server with settings changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(ApiState) -> ApiState) -> ApiServer {
        Self::start_on(RedisServer::start(), configure).await
    }

    async fn start_on(
        redis: RedisServer,
        configure: impl FnOnce(ApiState) -> ApiState,
    ) -> ApiServer {
        let registry = pier_registry::Registry::connect(&redis.url())
            .await
            .unwrap();
        let dns = DnsServer::start(ZONES);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As `pier up` has it (one machine, owners' backends on loopback, never the API or its
        // Redis), plus a runners' network.
        let one_machine = pier_api::netpolicy::BackendPolicy {
            allow: ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect(),
            endpoints: vec![addr, ([127, 0, 0, 1], redis.port).into()],
        };
        let state = Arc::new(configure(
            ApiState::new(
                registry.clone(),
                &redis.url(),
                "pier:",
                Authenticator::new(OPERATOR),
                Arc::new(DnsVerifier::with_nameserver(dns.addr).unwrap()),
            )
            .with_backend_policy(one_machine),
        ));
        if state.acme.is_some() {
            tokio::spawn(pier_api::acme::run(state.clone()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(pier_api::server::serve(listener, state, async {
            let _ = rx.await;
        }));
        ApiServer {
            addr,
            registry,
            stop: Some(tx),
            redis,
            dns,
            _slugs: None,
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
    let doc = pier_api::openapi::document();
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
        // Text (Prometheus's format): any body.
        Some(content) if content.get("text/plain").is_some() => {}
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
    let doc = pier_api::openapi::document();
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

/// The server's own JSON Schema validator (the same one that checks request bodies).
pub fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    pier_api::schema::validate(doc, schema, v, at)
}
