//! Key names. Every key starts with a prefix (default `pier:`) so several registries can share
//! one Redis database. See docs/registry.md for the whole schema.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Route-affecting version counter (INCR on every such write).
    pub version: String,
    /// The change log: a stream of `{v, op, key, value}` entries.
    pub changes: String,
    /// Hash: app name → [`crate::AppRecord`] JSON.
    pub apps: String,
    /// Hash: domain pattern → [`crate::DomainRecord`] JSON.
    pub domains: String,
    /// Hash: `app/instance-id` → [`crate::BackendRecord`] JSON.
    pub backends: String,
    /// Hash: domain pattern → [`crate::model::CertRecord`] JSON (a TLS certificate and key).
    pub certs: String,
    /// Hash: SHA-256 of a token (hex) → [`crate::model::TokenRecord`] JSON.
    pub tokens: String,
    /// Hash: balancer id → [`crate::balancers::BalancerStatus`] JSON, each balancer's report.
    pub balancers: String,
    /// Hash: token → [`crate::model::ChallengeRecord`] JSON, the pending ACME HTTP-01
    /// challenges every balancer answers (route-affecting: each write is a change).
    pub acme_challenges: String,
    /// Hash: domain → [`crate::acme::AcmeStatus`] JSON, where each name's certificate stands.
    pub acme_status: String,
    /// Hash: domain → [`crate::model::CertRecord`] JSON, the certificates the orderer issued
    /// (served through `certs` unless an upload is there).
    pub acme_certs: String,
    /// String: the ACME account's credentials (JSON; never returned by the API).
    pub acme_account: String,
    /// String with a time to live: who runs the orderer now.
    pub acme_lease: String,
    /// Hash: `<kind>:<result>` → count of finished ACME orders, platform-wide (the metric
    /// `pier_acme_orders_total`).
    pub acme_results: String,
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            version: format!("{prefix}version"),
            changes: format!("{prefix}changes"),
            apps: format!("{prefix}apps"),
            domains: format!("{prefix}domains"),
            backends: format!("{prefix}backends"),
            certs: format!("{prefix}certs"),
            tokens: format!("{prefix}tokens"),
            balancers: format!("{prefix}balancers"),
            acme_challenges: format!("{prefix}acme:challenges"),
            acme_status: format!("{prefix}acme:status"),
            acme_certs: format!("{prefix}acme:certs"),
            acme_account: format!("{prefix}acme:account"),
            acme_lease: format!("{prefix}acme:lease"),
            acme_results: format!("{prefix}acme:results"),
            prefix: prefix.to_string(),
        }
    }

    /// Set of an app's domain patterns (an index, kept by the write scripts).
    pub fn app_domains(&self, app: &str) -> String {
        format!("{}app:{app}:domains", self.prefix)
    }

    /// Hash of the pending claims on one domain pattern: app name → [`crate::model::ClaimRecord`]
    /// JSON. Several apps may claim one name; the first to prove it gets it.
    pub fn claims(&self, domain: &str) -> String {
        format!("{}claims:{domain}", self.prefix)
    }

    /// Set of the domain patterns an app has pending claims on.
    pub fn app_claims(&self, app: &str) -> String {
        format!("{}app:{app}:claims", self.prefix)
    }

    /// Set of an app's backend keys (`app/id`).
    pub fn app_backends(&self, app: &str) -> String {
        format!("{}app:{app}:backends", self.prefix)
    }

    /// Counter of the ACME orders started in one clock hour (`hour` since the Unix epoch).
    pub fn acme_orders(&self, hour: u64) -> String {
        format!("{}acme:orders:{hour}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("pier:")
    }
}

/// The field of a backend in the backends hash.
pub fn backend_field(app: &str, id: &str) -> String {
    format!("{app}/{id}")
}
