//! The web dashboard's files, built into the binary and served under `/ui` (no build step, no
//! download on the user's side). The dashboard is a client of the same API as the CLI: it has
//! no endpoint of its own. It keeps the token in the tab's session storage and sends it only in
//! the `Authorization` header, so there is no cookie to forge a request with; the Content
//! Security Policy allows scripts and styles from this server only (no inline script), and the
//! script puts every string from the API into the page as text.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::server::Body;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// The policy every dashboard answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether `path` is the dashboard's.
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The answer to `method path` under `/ui`.
pub fn serve(method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard's files are read with GET\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (body, kind) = match path {
        "/ui" => {
            let mut r = plain(StatusCode::PERMANENT_REDIRECT, "");
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return r;
        }
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return plain(StatusCode::NOT_FOUND, "no such file in the dashboard\n"),
    };
    let body = if method == Method::HEAD { "" } else { body };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    secure(h);
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure(h);
    r
}

fn secure(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary: always ask again (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}
