//! [`ApiError`]: every way a request can fail, and the one place that maps it to a status code
//! and the JSON error body `{"error": "<code>", "reason": "<text>"}`.

use http::StatusCode;
use pier_registry::RegistryError;

/// Why a request failed. Each variant carries the human-readable reason sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON shape the route expects.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No token, or a token the registry does not know.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A known token without the right to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// The thing exists already, or belongs to someone else.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    /// The body did not arrive within `pier api --body-timeout`.
    #[error("request timeout: {0}")]
    Timeout(String),
    /// A body that is not `application/json`.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Too many failed token attempts from this address: retry after the seconds given.
    #[error("too many requests: {0}")]
    TooManyRequests(String, u64),
    /// Well-formed JSON whose values are refused (bad hostname, address, app name, setting),
    /// or a domain whose ownership check failed.
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// The domain's ownership check ran and failed.
    #[error("verification failed: {0}")]
    VerificationFailed(String),
    /// A WebSocket endpoint asked for without the upgrade (`426`, `Upgrade: websocket`).
    #[error("upgrade required: {0}")]
    UpgradeRequired(String),
    /// Nothing to place the work on (no live runner): retrying later may work.
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// The DNS resolver did not answer a domain's proof lookup: retrying later may work.
    #[error("dns unavailable: {0}")]
    DnsUnavailable(String),
    /// Redis did not answer (or answered with an error): retrying later may work.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// An add-on server (the operator's PostgreSQL or Redis) failed or is unreachable; nothing
    /// was left half-made, so trying again later works.
    #[error("add-on server failed: {0}")]
    AddonServer(String),
    /// Bad data in the registry or a bug: not the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The status code and the short machine-readable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UpgradeRequired(_) => (StatusCode::UPGRADE_REQUIRED, "upgrade-required"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::TooManyRequests(..) => (StatusCode::TOO_MANY_REQUESTS, "too-many-requests"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::VerificationFailed(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "verification-failed")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry-unavailable"),
            ApiError::DnsUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "dns-unavailable"),
            ApiError::NoCapacity(_) => (StatusCode::SERVICE_UNAVAILABLE, "no-capacity"),
            ApiError::AddonServer(_) => (StatusCode::BAD_GATEWAY, "addon-server-failed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            ApiError::BadRequest(r)
            | ApiError::Unauthorized(r)
            | ApiError::Forbidden(r)
            | ApiError::NotFound(r)
            | ApiError::MethodNotAllowed(r)
            | ApiError::Conflict(r)
            | ApiError::UpgradeRequired(r)
            | ApiError::TooLarge(r)
            | ApiError::Timeout(r)
            | ApiError::UnsupportedMediaType(r)
            | ApiError::TooManyRequests(r, _)
            | ApiError::Unprocessable(r)
            | ApiError::VerificationFailed(r)
            | ApiError::Unavailable(r)
            | ApiError::DnsUnavailable(r)
            | ApiError::NoCapacity(r)
            | ApiError::AddonServer(r)
            | ApiError::Internal(r) => r,
        }
    }
}

impl From<pier_store::StoreError> for ApiError {
    fn from(e: pier_store::StoreError) -> Self {
        use pier_store::StoreError as S;
        match e {
            S::BadData(m) => ApiError::Internal(m),
            S::Contended(app) => ApiError::Conflict(format!(
                "release of {app:?} kept conflicting with concurrent changes: try again"
            )),
            e @ S::Fenced(_) => ApiError::Internal(e.to_string()),
            e @ (S::Redis(_) | S::Timeout(_)) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NoSuchApp(app) => ApiError::NotFound(format!("no app named {app:?}")),
            RegistryError::DomainTaken { domain, .. } => {
                // The owner's name is not told: it is another customer's business.
                ApiError::Conflict(format!("domain {domain} belongs to another app"))
            }
            RegistryError::NotAppDomain { domain, app } => {
                ApiError::NotFound(format!("app {app:?} has no domain {domain}"))
            }
            RegistryError::DomainNotVerified(domain) => ApiError::Conflict(format!(
                "domain {domain} is not verified yet: verify it before adding a certificate"
            )),
            e @ RegistryError::TooManyClaims { .. } => ApiError::Conflict(e.to_string()),
            e @ RegistryError::NoClaim { .. } => ApiError::Conflict(e.to_string()),
            RegistryError::BadData(m) => ApiError::Internal(m),
            e @ (RegistryError::Redis(_) | RegistryError::Timeout(_)) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}
