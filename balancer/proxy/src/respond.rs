//! Answers pier writes itself: error pages, an app's own redirect, static page or maintenance
//! page, and the redirect to HTTPS — written once as a [`LocalResponse`] that each front end
//! sends its own way (an HTTP/1.1 head and body, or an h2 head and DATA).

use std::io::Write;

use pier_routes::Action;

use crate::error::ProxyError;
use crate::util::with_http_date;

/// The reason phrase for the statuses pier writes itself.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response pier writes without a backend.
pub struct LocalResponse<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub error: Option<&'static str>,
    pub location: Option<&'a [u8]>,
    pub retry_after: Option<u32>,
    pub request_id: &'a [u8],
    /// `Strict-Transport-Security` (HTTPS answers of apps that set `hsts`).
    pub hsts: Option<&'a str>,
}

/// Scratch space for an app's own answer (the redirect location and body it builds).
#[derive(Default)]
pub struct AnswerScratch {
    location: Vec<u8>,
    body: String,
}

/// The answer an app gives itself (redirect, static page, maintenance); `None` for `proxy`.
/// `target` is the origin-form request target (kept by redirects with `keep_path`).
pub fn action_response<'a>(
    action: &'a Action,
    target: &[u8],
    request_id: &'a [u8],
    scratch: &'a mut AnswerScratch,
) -> Option<LocalResponse<'a>> {
    match action {
        Action::Proxy => None,
        Action::Redirect {
            status,
            location,
            keep_path,
        } => {
            let loc = &mut scratch.location;
            loc.clear();
            loc.extend_from_slice(location.as_bytes());
            if *keep_path {
                if loc.ends_with(b"/") && target.starts_with(b"/") {
                    loc.pop();
                }
                loc.extend_from_slice(target);
            }
            scratch.body = format!("Redirecting to {}\n", String::from_utf8_lossy(loc));
            Some(LocalResponse {
                status: *status,
                content_type: "text/plain; charset=utf-8",
                body: scratch.body.as_bytes(),
                error: None,
                location: Some(&scratch.location),
                retry_after: None,
                request_id,
                hsts: None,
            })
        }
        Action::Static {
            status,
            body,
            content_type,
        } => Some(LocalResponse {
            status: *status,
            content_type,
            body,
            error: None,
            location: None,
            retry_after: None,
            request_id,
            hsts: None,
        }),
        Action::Maintenance {
            body,
            content_type,
            retry_after,
        } => Some(LocalResponse {
            status: 503,
            content_type,
            body,
            error: Some("maintenance"),
            location: None,
            retry_after: *retry_after,
            request_id,
            hsts: None,
        }),
    }
}

/// The redirect of a plain-HTTP request to HTTPS (apps with `https_redirect`): 308 keeps the
/// method and body. `host` is the request's host without port.
pub fn https_redirect<'a>(
    host: &str,
    port: u16,
    target: &[u8],
    request_id: &'a [u8],
    scratch: &'a mut AnswerScratch,
) -> LocalResponse<'a> {
    let loc = &mut scratch.location;
    loc.clear();
    loc.extend_from_slice(b"https://");
    loc.extend_from_slice(host.as_bytes());
    if port != 443 {
        let _ = write!(loc, ":{port}");
    }
    loc.extend_from_slice(if target == b"*" { b"/" } else { target });
    scratch.body = format!("Redirecting to {}\n", String::from_utf8_lossy(loc));
    LocalResponse {
        status: 308,
        content_type: "text/plain; charset=utf-8",
        body: scratch.body.as_bytes(),
        error: None,
        location: Some(&scratch.location),
        retry_after: None,
        request_id,
        hsts: None,
    }
}

impl<'a> LocalResponse<'a> {
    /// A short text answer for an error.
    pub fn error(err: ProxyError, body: &'a [u8], request_id: &'a [u8]) -> Self {
        LocalResponse {
            status: err.status(),
            content_type: "text/plain; charset=utf-8",
            body,
            error: Some(err.reason()),
            location: None,
            retry_after: err.retry_after(),
            request_id,
            hsts: None,
        }
    }

    /// The same answer as an h2 response head (the body is sent separately).
    pub fn h2_head(&self) -> http::Response<()> {
        let mut r = http::Response::new(());
        *r.status_mut() =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let h = r.headers_mut();
        let mut put = |name: &'static str, v: &[u8]| {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                h.append(name, v);
            }
        };
        with_http_date(|d| put("date", d.as_bytes()));
        put("content-type", self.content_type.as_bytes());
        put(
            "content-length",
            itoa::Buffer::new().format(self.body.len()).as_bytes(),
        );
        if let Some(reason) = self.error {
            put("x-pier-error", reason.as_bytes());
        }
        if let Some(loc) = self.location {
            put("location", loc);
        }
        if let Some(secs) = self.retry_after {
            put("retry-after", itoa::Buffer::new().format(secs).as_bytes());
        }
        if !self.request_id.is_empty() {
            put("x-request-id", self.request_id);
        }
        if let Some(v) = self.hsts {
            put("strict-transport-security", v.as_bytes());
        }
        r
    }

    /// Writes the whole response (head and, unless `head_request`, body) into `out`.
    pub fn write(&self, out: &mut Vec<u8>, keep_alive: bool, http10: bool, head_request: bool) {
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            status_text(self.status)
        );
        with_http_date(|d| {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
        let _ = write!(
            out,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            self.content_type,
            self.body.len()
        );
        if let Some(reason) = self.error {
            let _ = write!(out, "X-Pier-Error: {reason}\r\n");
        }
        if let Some(loc) = self.location {
            out.extend_from_slice(b"Location: ");
            out.extend_from_slice(loc);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(secs) = self.retry_after {
            let _ = write!(out, "Retry-After: {secs}\r\n");
        }
        if !self.request_id.is_empty() {
            out.extend_from_slice(b"X-Request-Id: ");
            out.extend_from_slice(self.request_id);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(v) = self.hsts {
            out.extend_from_slice(b"Strict-Transport-Security: ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(self.body);
        }
    }
}

/// The body of an error answer: `<status> <text>: <reason>`.
pub fn error_body(err: ProxyError) -> Vec<u8> {
    let status = err.status();
    format!("{status} {}: {}\n", status_text(status), err.reason()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_h1::framing::FramingError;
    use pier_h1::head::HeadError;

    #[test]
    fn statuses_follow_the_issue() {
        assert_eq!(ProxyError::Head(HeadError::ObsFold).status(), 400);
        assert_eq!(ProxyError::Head(HeadError::LineTooLong).status(), 414);
        assert_eq!(ProxyError::Head(HeadError::HeadTooLarge).status(), 431);
        assert_eq!(ProxyError::BodyTooLarge.status(), 413);
        assert_eq!(ProxyError::UnknownHost.status(), 404);
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(ProxyError::UpstreamConnect.status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(
            ProxyError::Framing(FramingError::UnsupportedTransferEncoding).status(),
            501
        );
    }

    #[test]
    fn local_response_is_complete() {
        let body = error_body(ProxyError::UnknownHost);
        let mut out = Vec::new();
        LocalResponse::error(ProxyError::UnknownHost, &body, b"id1")
            .write(&mut out, false, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("X-Pier-Error: unknown-host\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(text.ends_with("404 Not Found: unknown-host\n"));
    }
}
