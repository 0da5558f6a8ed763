//! The API's routes: one table ([`ROUTES`]) that the server dispatches on, the OpenAPI
//! document is checked against, and tests use to name the route a request hit.

use http::Method;

use crate::error::ApiError;

/// What a route does; the server has one handler per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Healthz,
    OpenApi,
    Metrics,
    ListApps,
    CreateApp,
    ShowApp,
    UpdateApp,
    DeleteApp,
    ListDomains,
    AddDomain,
    RemoveDomain,
    VerifyDomain,
    PutCert,
    ShowCert,
    RemoveCert,
    RenewCert,
    ListBackends,
    AddBackend,
    Heartbeat,
    RemoveBackend,
    CreateToken,
    Deploy,
    ListReleases,
    ShowRelease,
    Rollback,
    ShowConfig,
    UpdateConfig,
    ShowFormation,
    Scale,
    ListInstances,
    Restart,
    ListRunners,
    ListBalancers,
    ListAddons,
    Logs,
    Stats,
    CreateAddon,
    DestroyAddon,
    ListDrains,
    AddDrain,
    RemoveDrain,
    CreateRun,
    ListRuns,
    ShowRun,
    StopRun,
    AttachRun,
    ListBackups,
    CaptureBackup,
    ShowBackup,
    DeleteBackup,
    DownloadBackup,
    RestoreBackup,
    ShowBackupSchedule,
    PutBackupSchedule,
    DeleteBackupSchedule,
    AppUsage,
    AllUsage,
}

/// One method and path pattern; `{name}` segments are parameters.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
    pub id: RouteId,
}

const fn route(method: Method, pattern: &'static str, id: RouteId) -> Route {
    Route {
        method,
        pattern,
        id,
    }
}

/// Every route the server serves.
pub static ROUTES: &[Route] = &[
    route(Method::GET, "/healthz", RouteId::Healthz),
    route(Method::GET, "/openapi.json", RouteId::OpenApi),
    route(Method::GET, "/metrics", RouteId::Metrics),
    route(Method::GET, "/v1/apps", RouteId::ListApps),
    route(Method::POST, "/v1/apps", RouteId::CreateApp),
    route(Method::GET, "/v1/apps/{app}", RouteId::ShowApp),
    route(Method::PATCH, "/v1/apps/{app}", RouteId::UpdateApp),
    route(Method::DELETE, "/v1/apps/{app}", RouteId::DeleteApp),
    route(Method::GET, "/v1/apps/{app}/domains", RouteId::ListDomains),
    route(Method::POST, "/v1/apps/{app}/domains", RouteId::AddDomain),
    route(
        Method::DELETE,
        "/v1/apps/{app}/domains/{domain}",
        RouteId::RemoveDomain,
    ),
    route(
        Method::POST,
        "/v1/apps/{app}/domains/{domain}/verify",
        RouteId::VerifyDomain,
    ),
    route(
        Method::PUT,
        "/v1/apps/{app}/domains/{domain}/cert",
        RouteId::PutCert,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/domains/{domain}/cert",
        RouteId::ShowCert,
    ),
    route(
        Method::DELETE,
        "/v1/apps/{app}/domains/{domain}/cert",
        RouteId::RemoveCert,
    ),
    route(
        Method::POST,
        "/v1/apps/{app}/domains/{domain}/cert/renew",
        RouteId::RenewCert,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/backends",
        RouteId::ListBackends,
    ),
    route(Method::POST, "/v1/apps/{app}/backends", RouteId::AddBackend),
    route(
        Method::PUT,
        "/v1/apps/{app}/backends/{id}/heartbeat",
        RouteId::Heartbeat,
    ),
    route(
        Method::DELETE,
        "/v1/apps/{app}/backends/{id}",
        RouteId::RemoveBackend,
    ),
    route(Method::POST, "/v1/tokens", RouteId::CreateToken),
    route(Method::POST, "/v1/apps/{app}/deploys", RouteId::Deploy),
    route(
        Method::GET,
        "/v1/apps/{app}/releases",
        RouteId::ListReleases,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/releases/{version}",
        RouteId::ShowRelease,
    ),
    route(Method::POST, "/v1/apps/{app}/rollback", RouteId::Rollback),
    route(Method::GET, "/v1/apps/{app}/config", RouteId::ShowConfig),
    route(
        Method::PATCH,
        "/v1/apps/{app}/config",
        RouteId::UpdateConfig,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/formation",
        RouteId::ShowFormation,
    ),
    route(Method::PATCH, "/v1/apps/{app}/formation", RouteId::Scale),
    route(
        Method::GET,
        "/v1/apps/{app}/instances",
        RouteId::ListInstances,
    ),
    route(Method::POST, "/v1/apps/{app}/restart", RouteId::Restart),
    route(Method::GET, "/v1/runners", RouteId::ListRunners),
    route(Method::GET, "/v1/balancers", RouteId::ListBalancers),
    route(Method::GET, "/v1/apps/{app}/addons", RouteId::ListAddons),
    route(Method::GET, "/v1/apps/{app}/logs", RouteId::Logs),
    route(Method::GET, "/v1/apps/{app}/stats", RouteId::Stats),
    route(Method::POST, "/v1/apps/{app}/addons", RouteId::CreateAddon),
    route(
        Method::DELETE,
        "/v1/apps/{app}/addons/{kind}",
        RouteId::DestroyAddon,
    ),
    route(Method::GET, "/v1/apps/{app}/drains", RouteId::ListDrains),
    route(Method::POST, "/v1/apps/{app}/drains", RouteId::AddDrain),
    route(
        Method::DELETE,
        "/v1/apps/{app}/drains/{id}",
        RouteId::RemoveDrain,
    ),
    route(Method::POST, "/v1/apps/{app}/runs", RouteId::CreateRun),
    route(Method::GET, "/v1/apps/{app}/runs", RouteId::ListRuns),
    route(Method::GET, "/v1/apps/{app}/runs/{run}", RouteId::ShowRun),
    route(
        Method::DELETE,
        "/v1/apps/{app}/runs/{run}",
        RouteId::StopRun,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/runs/{run}/attach",
        RouteId::AttachRun,
    ),
    route(Method::GET, "/v1/apps/{app}/backups", RouteId::ListBackups),
    route(
        Method::POST,
        "/v1/apps/{app}/backups",
        RouteId::CaptureBackup,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/backups/{backup}",
        RouteId::ShowBackup,
    ),
    route(
        Method::DELETE,
        "/v1/apps/{app}/backups/{backup}",
        RouteId::DeleteBackup,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/backups/{backup}/download",
        RouteId::DownloadBackup,
    ),
    route(
        Method::POST,
        "/v1/apps/{app}/backups/{backup}/restore",
        RouteId::RestoreBackup,
    ),
    route(
        Method::GET,
        "/v1/apps/{app}/backup-schedule",
        RouteId::ShowBackupSchedule,
    ),
    route(
        Method::PUT,
        "/v1/apps/{app}/backup-schedule",
        RouteId::PutBackupSchedule,
    ),
    route(
        Method::DELETE,
        "/v1/apps/{app}/backup-schedule",
        RouteId::DeleteBackupSchedule,
    ),
    route(Method::GET, "/v1/apps/{app}/usage", RouteId::AppUsage),
    route(Method::GET, "/v1/usage", RouteId::AllUsage),
];

/// The outcome of matching a request line against [`ROUTES`].
#[derive(Debug)]
pub enum Match {
    /// The route, its pattern, and its parameters (decoded) in pattern order.
    Found(&'static Route, Vec<String>),
    /// The path exists with other methods (for `405` and its `Allow` header).
    WrongMethod(Vec<Method>),
    NotFound,
}

/// Finds the route for `method` and the raw (percent-encoded) `path`.
pub fn match_route(method: &Method, path: &str) -> Result<Match, ApiError> {
    let segments = path
        .strip_prefix('/')
        .ok_or_else(|| ApiError::BadRequest("path must start with '/'".into()))?
        .split('/')
        .map(percent_decode)
        .collect::<Result<Vec<_>, _>>()?;
    let mut allowed = Vec::new();
    for r in ROUTES {
        let Some(params) = match_pattern(r.pattern, &segments) else {
            continue;
        };
        if r.method == method {
            return Ok(Match::Found(r, params));
        }
        allowed.push(r.method.clone());
    }
    Ok(if allowed.is_empty() {
        Match::NotFound
    } else {
        Match::WrongMethod(allowed)
    })
}

fn match_pattern(pattern: &str, segments: &[String]) -> Option<Vec<String>> {
    let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in parts.iter().zip(segments) {
        if p.starts_with('{') && p.ends_with('}') {
            if s.is_empty() {
                return None;
            }
            params.push(s.clone());
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

pub(crate) fn percent_decode(segment: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest(format!("bad percent-encoding in path segment {segment:?}"));
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn found(method: Method, path: &str) -> Option<(RouteId, Vec<String>)> {
        match match_route(&method, path).unwrap() {
            Match::Found(r, p) => Some((r.id, p)),
            _ => None,
        }
    }

    #[test]
    fn routes_match_with_decoded_params() {
        assert_eq!(
            found(Method::DELETE, "/v1/apps/blog/domains/%2A.example.com"),
            Some((
                RouteId::RemoveDomain,
                vec!["blog".into(), "*.example.com".into()]
            ))
        );
        assert_eq!(
            found(Method::GET, "/v1/apps"),
            Some((RouteId::ListApps, vec![]))
        );
        assert_eq!(found(Method::GET, "/v1/apps/"), None);
    }

    #[test]
    fn wrong_method_lists_allowed() {
        match match_route(&Method::PUT, "/v1/apps").unwrap() {
            Match::WrongMethod(m) => assert_eq!(m, vec![Method::GET, Method::POST]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            match_route(&Method::GET, "/nope").unwrap(),
            Match::NotFound
        ));
    }

    #[test]
    fn bad_encoding_is_a_bad_request() {
        assert!(match_route(&Method::GET, "/v1/apps/%zz").is_err());
        assert!(match_route(&Method::GET, "/v1/apps/%ff").is_err());
        assert!(match_route(&Method::GET, "/v1/apps/%4").is_err());
    }
}
