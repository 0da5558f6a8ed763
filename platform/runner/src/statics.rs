//! Static files: a request under one of a release's static mounts (`pier.toml`) answered from
//! the release's files, without the app.
//!
//! Two stages, both free of any server:
//! 1. [`StaticSite::route`] reads the request's path: the app's, a static file's (which mount,
//!    which file), or refused (`..`, an encoded `/` or `\`, a NUL, a bad `%`) when it is under a
//!    mount. Whether a path is under a mount is decided on its decoded, normalised form, so no
//!    spelling of a static path reaches the app.
//! 2. [`StaticSite::respond`] answers it: first it resolves the path in the file system
//!    (blocking calls: run it off the async threads): links followed and refused when their
//!    real path leaves the mount, directories answered with their `index.html`, the `.br` and
//!    `.gz` twins found; then it answers from what it found: the twin the client accepts,
//!    validators (ETag, Last-Modified) and conditional requests, one byte range.
//!
//! A release's files never change, so what a path resolves to is kept, with the contents of
//! small files ([`INLINE_MAX`]): [`StaticSite::respond_from_memory`] answers those without a
//! file system call. Larger bodies are handed to the caller to stream.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use pier_slug::manifest::Manifest;

/// Files up to this size are read whole and answered in one piece; larger ones are streamed.
pub const INLINE_MAX: u64 = 64 * 1024;

/// What `Allow` says: the methods a static path answers.
const ALLOW: &str = "GET, HEAD, OPTIONS";

/// The static mounts of one release, with their directories' real paths.
#[derive(Debug)]
pub struct StaticSite {
    /// Longest prefix first: the most specific mount wins.
    mounts: Vec<Mount>,
    /// Serve only files every user may read (`o+r`): with per-app users, what the app's own
    /// user could read.
    world_readable_only: bool,
    /// Files already resolved, by path: the release's files never change.
    cache: RwLock<FileCache>,
}

/// Files resolved once, and the small ones' contents, up to [`CACHE_ENTRIES`] and
/// [`CACHE_BYTES`]; past that, files are read from the file system at each request.
#[derive(Debug, Default)]
struct FileCache {
    entries: HashMap<Vec<u8>, Arc<Resolved>>,
    bytes: u64,
}

/// Most files a site keeps resolved.
const CACHE_ENTRIES: usize = 4096;
/// Most bytes of small files' contents a site keeps in memory.
const CACHE_BYTES: u64 = 16 << 20;

#[derive(Debug)]
struct Mount {
    prefix: Vec<Vec<u8>>,
    root: PathBuf,
    cache_control: Option<HeaderValue>,
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Not under a static mount: the app's.
    App,
    /// Under a mount: answered by [`StaticSite::respond`].
    Static(Target),
    /// Under a mount, and refused as it is (a path that climbs out or hides a separator).
    Refused(StatusCode),
}

/// A file (or directory) under a mount.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    mount: usize,
    /// The path's segments below the mount, decoded.
    rel: Vec<Vec<u8>>,
    /// The path ended with `/`.
    dir_form: bool,
}

impl Target {
    /// The cache's key: the mount, the path below it, and whether it ended with `/`.
    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + self.rel.iter().map(|s| s.len() + 1).sum::<usize>());
        k.extend_from_slice(&self.mount.to_le_bytes());
        for s in &self.rel {
            k.push(b'/');
            k.extend_from_slice(s);
        }
        if self.dir_form {
            k.push(b'/');
        }
        k
    }
}

/// A static answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

/// A static answer's body.
#[derive(Debug)]
pub enum ReplyBody {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of `file` from `start` (larger than [`INLINE_MAX`]): the caller streams it.
    File {
        file: File,
        start: u64,
        len: u64,
    },
}

impl StaticSite {
    /// The site of the release unpacked at `slug_dir`, as its manifest says (mount directories
    /// resolved now: one that is missing or leaves the slug is an error).
    pub fn new(
        slug_dir: &Path,
        manifest: &Manifest,
        world_readable_only: bool,
    ) -> Result<StaticSite, String> {
        manifest.check_tree(slug_dir).map_err(|e| e.to_string())?;
        let mut mounts = Vec::new();
        for m in &manifest.statics {
            let root = std::fs::canonicalize(slug_dir.join(&m.dir))
                .map_err(|e| format!("{}: {e}", m.dir.display()))?;
            let cache_control = if m.cache_control.is_empty() {
                None
            } else {
                Some(
                    HeaderValue::from_str(&m.cache_control)
                        .map_err(|_| format!("bad cache_control for {}", m.prefix))?,
                )
            };
            mounts.push(Mount {
                prefix: segments(m.prefix.as_bytes()),
                root,
                cache_control,
            });
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Ok(StaticSite {
            mounts,
            world_readable_only,
            cache: RwLock::new(FileCache::default()),
        })
    }

    /// Whether the site has any mount at all.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// Where a request for `path` (the request target's path, still percent-encoded) goes.
    pub fn route(&self, path: &str) -> Route {
        let d = Decoded::of(path.as_bytes());
        let lexical = segments(&d.bytes);
        let resolved = resolve_dots(&lexical);
        let Some(mount) = self
            .mounts
            .iter()
            .position(|m| lexical.starts_with(&m.prefix) || resolved.starts_with(&m.prefix))
        else {
            return Route::App;
        };
        if d.suspicious || lexical.iter().any(|s| s == b"..") {
            return Route::Refused(StatusCode::BAD_REQUEST);
        }
        let rel = lexical[self.mounts[mount].prefix.len()..].to_vec();
        Route::Static(Target {
            mount,
            rel,
            dir_form: d.bytes.ends_with(b"/"),
        })
    }

    /// The answer to `method` with `headers` for `target`, when it can be given from memory
    /// (a file already resolved and small enough to be kept): no file system call, so it may run
    /// on the async threads. `None`: call [`StaticSite::respond`].
    pub fn respond_from_memory(
        &self,
        target: &Target,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Reply> {
        let head = match allowed(method) {
            Ok(head) => head,
            Err(reply) => return Some(*reply),
        };
        let file = self.cached(target)?;
        answer(&file, head, headers, false)
    }

    /// The answer to `method` with `headers` for `target` (blocking file system calls).
    /// `query` is kept in a redirect.
    pub fn respond(
        &self,
        target: &Target,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Reply {
        let head = match allowed(method) {
            Ok(head) => head,
            Err(reply) => return *reply,
        };
        let file = match self.cached(target) {
            Some(f) => f,
            None => match self.resolve(target, query) {
                Ok(f) => self.keep(target, f),
                Err(reply) => return *reply,
            },
        };
        answer(&file, head, headers, true).unwrap_or_else(|| refusal(StatusCode::NOT_FOUND))
    }

    fn cached(&self, target: &Target) -> Option<Arc<Resolved>> {
        let cache = self.cache.read().ok()?;
        cache.entries.get(&target.key()).cloned()
    }

    /// Keeps `file` for the next requests of `target` while the cache has room (the release's
    /// files never change: an entry never goes stale).
    fn keep(&self, target: &Target, file: Resolved) -> Arc<Resolved> {
        let file = Arc::new(file);
        if let Ok(mut cache) = self.cache.write() {
            let bytes = file.kept_bytes();
            if cache.entries.len() < CACHE_ENTRIES && cache.bytes + bytes <= CACHE_BYTES {
                cache.bytes += bytes;
                cache.entries.insert(target.key(), file.clone());
            }
        }
        file
    }

    /// What `target` names: a file (with its twins) inside its mount's directory, or the answer
    /// that says why not (a redirect to a directory's `/`, 403, 404).
    fn resolve(&self, target: &Target, query: Option<&str>) -> Result<Resolved, Box<Reply>> {
        let Some(mount) = self.mounts.get(target.mount) else {
            return Err(Box::new(refusal(StatusCode::NOT_FOUND)));
        };
        let mut path = mount.root.clone();
        for s in &target.rel {
            path.push(std::ffi::OsStr::from_bytes(s));
        }
        let (real, meta) = self
            .open_inside(mount, &path)
            .map_err(|s| Box::new(refusal(s)))?;
        let (real, meta) = if meta.is_dir() {
            if !target.dir_form {
                return Err(Box::new(redirect_to_dir(mount, target, query)));
            }
            match self.open_inside(mount, &real.join("index.html")) {
                Ok((r, m)) if m.is_file() => (r, m),
                Ok(_) => return Err(Box::new(refusal(StatusCode::NOT_FOUND))),
                Err(status) => return Err(Box::new(refusal(status))),
            }
        } else if target.dir_form {
            // `file.css/` names no file.
            return Err(Box::new(refusal(StatusCode::NOT_FOUND)));
        } else {
            (real, meta)
        };
        if !meta.is_file() {
            return Err(Box::new(refusal(StatusCode::NOT_FOUND)));
        }
        if !self.readable(&meta) {
            return Err(Box::new(refusal(StatusCode::FORBIDDEN)));
        }
        // The type is the one of the name asked for (a link `logo` to `logo.png` is the
        // link's), else of the file it leads to.
        let asked = target
            .rel
            .last()
            .map(|s| Path::new(std::ffi::OsStr::from_bytes(s)).to_path_buf())
            .unwrap_or_else(|| real.clone());
        let content_type = content_type(&asked, &real);
        let mut reps =
            vec![Representation::of(None, real.clone(), &meta).map_err(|s| Box::new(refusal(s)))?];
        // The compressed twins beside the real file.
        for c in [Coding::Br, Coding::Gzip] {
            let mut name = real.as_os_str().to_os_string();
            name.push(c.suffix());
            if let Ok((p, m)) = self.open_inside(mount, Path::new(&name)) {
                if m.is_file() && self.readable(&m) {
                    if let Ok(rep) = Representation::of(Some(c), p, &m) {
                        reps.push(rep);
                    }
                }
            }
        }
        Ok(Resolved {
            content_type,
            cache_control: mount.cache_control.clone(),
            reps,
        })
    }

    /// The real path of `path` and its metadata, when it exists and its real path (links
    /// followed) is inside the mount's directory; else the status to answer.
    fn open_inside(
        &self,
        mount: &Mount,
        path: &Path,
    ) -> Result<(PathBuf, std::fs::Metadata), StatusCode> {
        let real = std::fs::canonicalize(path).map_err(|e| io_status(&e))?;
        if !real.starts_with(&mount.root) {
            // A link that leads out of the directory: as if there were nothing.
            return Err(StatusCode::NOT_FOUND);
        }
        let meta = std::fs::metadata(&real).map_err(|e| io_status(&e))?;
        Ok((real, meta))
    }

    fn readable(&self, meta: &std::fs::Metadata) -> bool {
        !self.world_readable_only || meta.permissions().mode() & 0o004 != 0
    }
}

/// `Ok(head)` for the methods a static path answers (`GET`, `HEAD`), else the answer: `204`
/// for `OPTIONS`, `405` for the rest, both with `Allow`.
fn allowed(method: &Method) -> Result<bool, Box<Reply>> {
    match *method {
        Method::GET => Ok(false),
        Method::HEAD => Ok(true),
        Method::OPTIONS => {
            let mut headers = HeaderMap::new();
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            Err(Box::new(Reply {
                status: StatusCode::NO_CONTENT,
                headers,
                body: ReplyBody::Empty,
            }))
        }
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            r.headers
                .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            Err(Box::new(r))
        }
    }
}

/// A file found under a mount, with its compressed twins: what a path names, found once.
#[derive(Debug)]
struct Resolved {
    content_type: HeaderValue,
    cache_control: Option<HeaderValue>,
    /// The file itself first, then its twins (`.br`, `.gz`) that exist.
    reps: Vec<Representation>,
}

impl Resolved {
    fn kept_bytes(&self) -> u64 {
        self.reps
            .iter()
            .map(|r| r.bytes.as_ref().map_or(0, |b| b.len() as u64))
            .sum()
    }
}

/// One representation of a file: the file, or one of its twins.
#[derive(Debug)]
struct Representation {
    coding: Option<Coding>,
    path: PathBuf,
    size: u64,
    mtime: u64,
    /// The content, read once, when it is at most [`INLINE_MAX`].
    bytes: Option<Bytes>,
}

impl Representation {
    fn of(
        coding: Option<Coding>,
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) -> Result<Representation, StatusCode> {
        let size = meta.len();
        let bytes = if size <= INLINE_MAX {
            match read_body(&path, 0, size)? {
                ReplyBody::Bytes(b) => Some(b),
                _ => None,
            }
        } else {
            None
        };
        Ok(Representation {
            coding,
            path,
            size,
            mtime: meta.mtime().max(0).unsigned_abs(),
            bytes,
        })
    }
}

/// The answer for `file`: the representation the client accepts, validators and conditional
/// requests, one range. With `may_block` false, `None` when the body would have to be read from
/// the file system.
fn answer(file: &Resolved, head: bool, headers: &HeaderMap, may_block: bool) -> Option<Reply> {
    let accepted = accepted_codings(headers);
    let rep = accepted
        .iter()
        .find_map(|c| file.reps.iter().find(|r| r.coding == Some(*c)))
        .or_else(|| file.reps.first())?;
    let size = rep.size;
    let v = Validators::new(size, rep.mtime, rep.coding);
    let mut h = HeaderMap::new();
    if let Ok(e) = HeaderValue::from_str(&v.etag) {
        h.insert(header::ETAG, e);
    }
    if let Ok(lm) = HeaderValue::from_str(&httpdate::fmt_http_date(v.last_modified)) {
        h.insert(header::LAST_MODIFIED, lm);
    }
    if let Some(cc) = &file.cache_control {
        h.insert(header::CACHE_CONTROL, cc.clone());
    }
    if file.reps.len() > 1 {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }

    match v.preconditions(headers) {
        Precondition::Failed => {
            let mut r = plain(StatusCode::PRECONDITION_FAILED, "412 Precondition Failed\n");
            r.headers.extend(h);
            return Some(r);
        }
        Precondition::NotModified => {
            return Some(Reply {
                status: StatusCode::NOT_MODIFIED,
                headers: h,
                body: ReplyBody::Empty,
            })
        }
        Precondition::Proceed => {}
    }

    h.insert(header::CONTENT_TYPE, file.content_type.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(c) = rep.coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.name()));
    }
    let mut status = StatusCode::OK;
    let (mut start, mut len) = (0, size);
    if !head && v.range_applies(headers) {
        match headers
            .get(header::RANGE)
            .map(|r| parse_range(r.as_bytes(), size))
        {
            Some(RangeAnswer::Whole) | None => {}
            Some(RangeAnswer::Part(first, last)) => {
                status = StatusCode::PARTIAL_CONTENT;
                (start, len) = (first, last - first + 1);
                if let Ok(cr) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
                    h.insert(header::CONTENT_RANGE, cr);
                }
            }
            Some(RangeAnswer::Unsatisfiable) => {
                let mut r = plain(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "416 Range Not Satisfiable\n",
                );
                if let Ok(cr) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers.insert(header::CONTENT_RANGE, cr);
                }
                for name in [header::ETAG, header::LAST_MODIFIED] {
                    if let Some(v) = h.get(&name) {
                        r.headers.insert(name, v.clone());
                    }
                }
                return Some(r);
            }
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = if head {
        ReplyBody::Empty
    } else if let Some(b) = &rep.bytes {
        let (from, to) = (
            usize::try_from(start).ok()?,
            usize::try_from(start + len).ok()?,
        );
        ReplyBody::Bytes(b.slice(from..to))
    } else if !may_block {
        return None;
    } else {
        match read_body(&rep.path, start, len) {
            Ok(b) => b,
            Err(status) => return Some(refusal(status)),
        }
    };
    Some(Reply {
        status,
        headers: h,
        body,
    })
}

/// The status for a file system error: missing is 404, not allowed 403, anything else 500.
fn io_status(e: &std::io::Error) -> StatusCode {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        // ENOTDIR (a file used as a directory), ELOOP, ENAMETOOLONG: names nothing servable.
        _ if matches!(e.raw_os_error(), Some(20 | 36 | 40)) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    Reply {
        status,
        headers,
        body: ReplyBody::Bytes(Bytes::from_static(text.as_bytes())),
    }
}

/// The answer refusing a static request with `status` (400, 403, 404; anything else is 500).
pub fn refusal(status: StatusCode) -> Reply {
    match status {
        StatusCode::BAD_REQUEST => plain(status, "400 Bad Request\n"),
        StatusCode::FORBIDDEN => plain(status, "403 Forbidden\n"),
        StatusCode::NOT_FOUND => plain(status, "404 Not Found\n"),
        _ => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error\n",
        ),
    }
}

/// `301` to the directory's path with a `/` (as nginx does), built from the decoded segments so
/// that nothing of the request's spelling (`//host`) makes it elsewhere.
fn redirect_to_dir(mount: &Mount, target: &Target, query: Option<&str>) -> Reply {
    let mut loc = String::new();
    for s in mount.prefix.iter().chain(&target.rel) {
        loc.push('/');
        encode_segment(s, &mut loc);
    }
    loc.push('/');
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        loc.push('?');
        loc.push_str(q);
    }
    let mut r = plain(StatusCode::MOVED_PERMANENTLY, "301 Moved Permanently\n");
    match HeaderValue::from_str(&loc) {
        Ok(v) => {
            r.headers.insert(header::LOCATION, v);
            r
        }
        Err(_) => refusal(StatusCode::NOT_FOUND),
    }
}

/// `len` bytes of the file at `path` from `start`: read now when small, else the open file.
fn read_body(path: &Path, start: u64, len: u64) -> Result<ReplyBody, StatusCode> {
    let mut f = File::open(path).map_err(|e| io_status(&e))?;
    if start > 0 {
        f.seek(SeekFrom::Start(start))
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    }
    if len > INLINE_MAX {
        return Ok(ReplyBody::File {
            file: f,
            start,
            len,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len)
        .read_to_end(&mut buf)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    if buf.len() as u64 != len {
        // The file shrank under us: do not send a body that disagrees with its length.
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(ReplyBody::Bytes(Bytes::from(buf)))
}

/// A content coding a twin file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// The codings of `Accept-Encoding` the client takes, best first (`br` before `gzip` at equal
/// weight); `q=0` refuses one, `*` stands for those not named.
fn accepted_codings(headers: &HeaderMap) -> Vec<Coding> {
    let mut named: Vec<(Coding, u16)> = Vec::new();
    let mut star: Option<u16> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1000u16;
            for p in parts {
                let p = p.trim();
                if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    q = parse_qvalue(v.trim()).unwrap_or(0);
                }
            }
            match token.as_str() {
                "br" => named.push((Coding::Br, q)),
                "gzip" | "x-gzip" => named.push((Coding::Gzip, q)),
                "*" => star = Some(q),
                _ => {}
            }
        }
    }
    let mut out: Vec<(Coding, u16)> = [Coding::Br, Coding::Gzip]
        .into_iter()
        .filter_map(|c| {
            let q = named
                .iter()
                .filter(|(n, _)| *n == c)
                .map(|(_, q)| *q)
                .max()
                .or(star)?;
            (q > 0).then_some((c, q))
        })
        .collect();
    // Stable: br stays before gzip at equal weight.
    out.sort_by_key(|(_, q)| std::cmp::Reverse(*q));
    out.into_iter().map(|(c, _)| c).collect()
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" => Some(1000),
        _ => None,
    }
}

fn content_type(asked: &Path, real: &Path) -> HeaderValue {
    let guess = mime_guess::from_path(asked)
        .first()
        .or_else(|| mime_guess::from_path(real).first());
    let Some(mime) = guess else {
        return HeaderValue::from_static("application/octet-stream");
    };
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml");
    let s = if textual && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// The validators of one representation (a file, or one of its twins).
struct Validators {
    /// Strong: the size and modification time (kept from the upload, so the same on every
    /// runner), and the coding of a twin.
    etag: String,
    /// The modification time, never later than now.
    last_modified: SystemTime,
}

enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

impl Validators {
    fn new(size: u64, mtime: u64, coding: Option<Coding>) -> Validators {
        let etag = match coding {
            Some(c) => format!("\"{mtime:x}-{size:x}-{}\"", c.name()),
            None => format!("\"{mtime:x}-{size:x}\""),
        };
        let last_modified = (UNIX_EPOCH + Duration::from_secs(mtime)).min(SystemTime::now());
        Validators {
            etag,
            last_modified,
        }
    }

    fn modified_secs(&self) -> u64 {
        self.last_modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// RFC 9110 §13.2.2: If-Match, then If-Unmodified-Since, then If-None-Match, then
    /// If-Modified-Since (only without If-None-Match).
    fn preconditions(&self, headers: &HeaderMap) -> Precondition {
        if let Some(v) = header_str(headers, &header::IF_MATCH) {
            if !etag_list_matches(v, &self.etag, false) {
                return Precondition::Failed;
            }
        } else if let Some(t) = header_date(headers, &header::IF_UNMODIFIED_SINCE) {
            if self.modified_secs() > t {
                return Precondition::Failed;
            }
        }
        if let Some(v) = header_str(headers, &header::IF_NONE_MATCH) {
            if etag_list_matches(v, &self.etag, true) {
                return Precondition::NotModified;
            }
        } else if let Some(t) = header_date(headers, &header::IF_MODIFIED_SINCE) {
            if self.modified_secs() <= t {
                return Precondition::NotModified;
            }
        }
        Precondition::Proceed
    }

    /// Whether a `Range` is honoured: always without `If-Range`; with it, only when it names
    /// this representation (its ETag, strongly, or exactly its Last-Modified).
    fn range_applies(&self, headers: &HeaderMap) -> bool {
        let Some(v) = header_str(headers, &header::IF_RANGE) else {
            return true;
        };
        let v = v.trim();
        if v.starts_with('"') {
            return v == self.etag;
        }
        if v.starts_with("W/") {
            return false;
        }
        httpdate::parse_http_date(v)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|d| d.as_secs() == self.modified_secs())
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header's HTTP date in seconds since the epoch; `None` when absent or not a date (then
/// ignored, as RFC 9110 says).
fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let t = httpdate::parse_http_date(header_str(headers, name)?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Whether a list of entity tags (`"a", W/"b"` or `*`) holds `etag`; `weak` compares without
/// the `W/` mark (If-None-Match), else weak tags never match (If-Match).
fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    list.split(',')
        .map(str::trim)
        .any(|t| match t.strip_prefix("W/") {
            Some(bare) => weak && bare == etag,
            None => t == etag,
        })
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// No usable range (not bytes, several ranges, malformed): the whole file.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `Range: bytes=` range of a `size`-byte file: `a-b`, `a-` or `-n`. Several ranges are
/// answered with the whole file (allowed, and what keeps this small).
fn parse_range(value: &[u8], size: u64) -> RangeAnswer {
    let Ok(value) = std::str::from_utf8(value) else {
        return RangeAnswer::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Digits beyond u64 are a huge number, past any file's end.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (a.is_empty(), num(a), num(b)) {
        // -n: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(size - n.min(size), size - 1)
            }
        }
        (false, Some(first), last) if b.is_empty() || last.is_some() => {
            if last.is_some_and(|l| l < first) {
                return RangeAnswer::Whole;
            }
            if first >= size {
                return RangeAnswer::Unsatisfiable;
            }
            let last = last.unwrap_or(u64::MAX).min(size - 1);
            RangeAnswer::Part(first, last)
        }
        _ => RangeAnswer::Whole,
    }
}

/// A path's non-empty segments other than `.`.
fn segments(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|s| !s.is_empty() && *s != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// Segments with `..` applied (never above the root): where a client normalising the path
/// would go.
fn resolve_dots(segs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in segs {
        if s == b".." {
            out.pop();
        } else {
            out.push(s.clone());
        }
    }
    out
}

/// A percent-decoded path, and whether it hid something a file path must not hold.
struct Decoded {
    bytes: Vec<u8>,
    /// A bad `%` escape, an encoded `/` or `\`, a `\` or a NUL.
    suspicious: bool,
}

impl Decoded {
    fn of(raw: &[u8]) -> Decoded {
        let mut bytes = Vec::with_capacity(raw.len());
        let mut suspicious = false;
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b == b'%' {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        suspicious |= matches!(v, b'/' | b'\\' | 0);
                        bytes.push(v);
                        i += 3;
                        continue;
                    }
                    None => suspicious = true,
                }
            }
            suspicious |= matches!(b, b'\\' | 0);
            bytes.push(b);
            i += 1;
        }
        Decoded { bytes, suspicious }
    }
}

/// Appends `seg` percent-encoded for a path segment.
fn encode_segment(seg: &[u8], out: &mut String) {
    for &b in seg {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        site: StaticSite,
        slug: PathBuf,
    }

    const CSS: &str = "body { color: #333; }\n";

    /// A slug with `static/` (a CSS file and its twins, a page, a subdirectory, links in and
    /// out) beside the app's own code.
    fn fixture(world_readable_only: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let slug = dir.path().join("slug");
        let s = slug.join("static");
        std::fs::create_dir_all(s.join("sub")).unwrap();
        std::fs::create_dir_all(s.join("empty")).unwrap();
        std::fs::write(slug.join("app.py"), "SECRET = 1\n").unwrap();
        std::fs::write(s.join("site.css"), CSS).unwrap();
        std::fs::write(s.join("site.css.gz"), "GZ-BYTES").unwrap();
        std::fs::write(s.join("site.css.br"), "BR-BYTES").unwrap();
        std::fs::write(s.join("only-gz.js"), "let a;").unwrap();
        std::fs::write(s.join("only-gz.js.gz"), "GZ").unwrap();
        std::fs::write(s.join("sub/index.html"), "<p>hi</p>").unwrap();
        std::fs::write(s.join("big.bin"), vec![7u8; 200_000]).unwrap();
        std::fs::write(s.join("private.txt"), "p").unwrap();
        std::fs::set_permissions(
            s.join("private.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("../app.py", s.join("leak.py")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("passwd")).unwrap();
        std::os::unix::fs::symlink("..", s.join("up")).unwrap();
        std::os::unix::fs::symlink("site.css", s.join("alias")).unwrap();
        for f in ["site.css", "site.css.gz", "site.css.br"] {
            std::fs::File::options()
                .write(true)
                .open(s.join(f))
                .unwrap()
                .set_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
                .unwrap();
        }
        let m = Manifest::parse(
            "[static]\n\"/static\" = \"static\"\n\"/static/deep\" = { dir = \"static/sub\", cache_control = \"\" }\n",
        )
        .unwrap();
        let site = StaticSite::new(&slug, &m, world_readable_only).unwrap();
        Fixture {
            _dir: dir,
            site,
            slug,
        }
    }

    fn get(f: &Fixture, path: &str, headers: &[(&str, &str)]) -> Reply {
        req(f, Method::GET, path, headers)
    }

    fn req(f: &Fixture, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        match f.site.route(path) {
            Route::Static(t) => f.site.respond(&t, &method, &h, query),
            Route::Refused(status) => refusal(status),
            Route::App => panic!("{path} went to the app"),
        }
    }

    fn body(r: &Reply) -> Vec<u8> {
        match &r.body {
            ReplyBody::Empty => Vec::new(),
            ReplyBody::Bytes(b) => b.to_vec(),
            ReplyBody::File { .. } => panic!("streamed"),
        }
    }

    fn hv<'a>(r: &'a Reply, name: &str) -> &'a str {
        r.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[test]
    fn paths_outside_the_mounts_go_to_the_app_and_the_longest_mount_wins() {
        let f = fixture(false);
        for p in [
            "/",
            "/app.py",
            "/staticx/a",
            "/api/a%2Fb",
            "/api/../x",
            "/Static/site.css",
            "/%zz",
        ] {
            assert_eq!(f.site.route(p), Route::App, "{p}");
        }
        let Route::Static(t) = f.site.route("/static/deep/index.html") else {
            panic!()
        };
        assert_eq!(t.mount, 0, "the longer prefix first");
        let r = get(&f, "/static/deep/index.html", &[]);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(hv(&r, "cache-control"), "", "none when empty");
    }

    #[test]
    fn a_file_comes_with_its_type_length_validators_and_cache_control() {
        let f = fixture(false);
        let r = get(&f, "/static/site.css", &[]);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(body(&r), CSS.as_bytes());
        assert_eq!(hv(&r, "content-type"), "text/css; charset=utf-8");
        assert_eq!(hv(&r, "content-length"), CSS.len().to_string());
        assert_eq!(
            hv(&r, "etag"),
            format!("\"{:x}-{:x}\"", 1_700_000_000, CSS.len())
        );
        assert_eq!(hv(&r, "last-modified"), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(hv(&r, "cache-control"), "public, max-age=3600");
        assert_eq!(hv(&r, "accept-ranges"), "bytes");
        assert_eq!(hv(&r, "vary"), "Accept-Encoding", "it has twins");
        assert_eq!(hv(&r, "content-encoding"), "");
        // Spellings of the same file: encoded letters, doubled slashes, `.`, a query.
        for p in [
            "/st%61tic/site.css",
            "//static//site.css",
            "/static/./site.css",
            "/static/site.css?v=3",
        ] {
            let r = get(&f, p, &[]);
            assert_eq!(body(&r), CSS.as_bytes(), "{p}");
        }
        let r = get(&f, "/static/sub/index.html", &[]);
        assert_eq!(hv(&r, "content-type"), "text/html; charset=utf-8");
        assert_eq!(hv(&r, "vary"), "", "no twins, no Vary");
        let r = req(&f, Method::HEAD, "/static/site.css", &[]);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(hv(&r, "content-length"), CSS.len().to_string());
        assert!(body(&r).is_empty());
    }

    #[test]
    fn conditional_requests_answer_304_and_412() {
        let f = fixture(false);
        let etag = hv(&get(&f, "/static/site.css", &[]), "etag").to_string();
        let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
        for h in [
            ("if-none-match", etag.as_str()),
            ("if-none-match", &format!("\"x\", W/{etag}")),
            ("if-none-match", "*"),
            ("if-modified-since", lm),
            ("if-modified-since", "Wed, 15 Nov 2023 00:00:00 GMT"),
        ] {
            let r = get(&f, "/static/site.css", &[h]);
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{h:?}");
            assert!(body(&r).is_empty());
            assert_eq!(hv(&r, "etag"), etag);
            assert_eq!(hv(&r, "cache-control"), "public, max-age=3600");
        }
        for h in [
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT"),
            ("if-modified-since", "not a date"),
        ] {
            let r = get(&f, "/static/site.css", &[h]);
            assert_eq!(r.status, StatusCode::OK, "{h:?}");
        }
        // If-None-Match wins over If-Modified-Since.
        let r = get(
            &f,
            "/static/site.css",
            &[("if-none-match", "\"other\""), ("if-modified-since", lm)],
        );
        assert_eq!(r.status, StatusCode::OK);
        let r = get(&f, "/static/site.css", &[("if-match", "\"other\"")]);
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        let r = get(&f, "/static/site.css", &[("if-match", &etag)]);
        assert_eq!(r.status, StatusCode::OK);
        let r = get(
            &f,
            "/static/site.css",
            &[("if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT")],
        );
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn one_byte_range_is_answered_206_and_a_bad_one_416() {
        let f = fixture(false);
        let n = CSS.len() as u64;
        for (range, part) in [
            ("bytes=0-3", &CSS[0..4]),
            ("bytes=5-", &CSS[5..]),
            ("bytes=-4", &CSS[CSS.len() - 4..]),
            ("bytes=2-999", &CSS[2..]),
            ("bytes=-999", CSS),
        ] {
            let r = get(&f, "/static/site.css", &[("range", range)]);
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(body(&r), part.as_bytes(), "{range}");
            assert_eq!(hv(&r, "content-length"), part.len().to_string());
            assert!(hv(&r, "content-range").starts_with("bytes "), "{range}");
        }
        let r = get(&f, "/static/site.css", &[("range", "bytes=0-3")]);
        assert_eq!(hv(&r, "content-range"), format!("bytes 0-3/{n}"));
        for range in [
            format!("bytes={n}-"),
            "bytes=-0".into(),
            "bytes=999-1000".into(),
        ] {
            let r = get(&f, "/static/site.css", &[("range", &range)]);
            assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(hv(&r, "content-range"), format!("bytes */{n}"));
        }
        // Not understood, or several: the whole file.
        for range in [
            "bytes=0-1,4-5",
            "bytes=3-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
        ] {
            let r = get(&f, "/static/site.css", &[("range", range)]);
            assert_eq!(r.status, StatusCode::OK, "{range}");
            assert_eq!(body(&r), CSS.as_bytes());
        }
        // If-Range: the range only when the validator still names this file.
        let etag = hv(&r_of(&f), "etag").to_string();
        let r = get(
            &f,
            "/static/site.css",
            &[("range", "bytes=0-3"), ("if-range", &etag)],
        );
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        let r = get(
            &f,
            "/static/site.css",
            &[
                ("range", "bytes=0-3"),
                ("if-range", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ],
        );
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        for stale in [
            "\"old\"",
            "Tue, 14 Nov 2023 22:00:00 GMT",
            &format!("W/{etag}"),
        ] {
            let r = get(
                &f,
                "/static/site.css",
                &[("range", "bytes=0-3"), ("if-range", stale)],
            );
            assert_eq!(r.status, StatusCode::OK, "{stale}");
            assert_eq!(body(&r), CSS.as_bytes());
        }
        // HEAD ignores Range.
        let r = req(
            &f,
            Method::HEAD,
            "/static/site.css",
            &[("range", "bytes=0-3")],
        );
        assert_eq!(r.status, StatusCode::OK);
    }

    fn r_of(f: &Fixture) -> Reply {
        get(f, "/static/site.css", &[])
    }

    #[test]
    fn compressed_twins_follow_accept_encoding() {
        let f = fixture(false);
        for (ae, want, coding) in [
            ("gzip, deflate, br", "BR-BYTES", "br"),
            ("br;q=0.5, gzip", "GZ-BYTES", "gzip"),
            ("gzip", "GZ-BYTES", "gzip"),
            ("x-gzip", "GZ-BYTES", "gzip"),
            ("br;q=0, gzip;q=0", CSS, ""),
            ("*", "BR-BYTES", "br"),
            ("*;q=0", CSS, ""),
            ("identity", CSS, ""),
            ("br;q=0, *", "GZ-BYTES", "gzip"),
            ("BR;Q=1.0", "BR-BYTES", "br"),
        ] {
            let r = get(&f, "/static/site.css", &[("accept-encoding", ae)]);
            assert_eq!(r.status, StatusCode::OK, "{ae}");
            assert_eq!(body(&r), want.as_bytes(), "{ae}");
            assert_eq!(hv(&r, "content-encoding"), coding, "{ae}");
            assert_eq!(hv(&r, "content-type"), "text/css; charset=utf-8", "{ae}");
            assert_eq!(hv(&r, "vary"), "Accept-Encoding", "{ae}");
        }
        let r = get(&f, "/static/site.css", &[]);
        assert_eq!(body(&r), CSS.as_bytes(), "no Accept-Encoding: identity");
        // Each representation has its own ETag, and 304s by it.
        let plain_tag = hv(&r, "etag").to_string();
        let br = get(&f, "/static/site.css", &[("accept-encoding", "br")]);
        let br_tag = hv(&br, "etag").to_string();
        assert!(br_tag.ends_with("-br\"") && br_tag != plain_tag, "{br_tag}");
        let r = get(
            &f,
            "/static/site.css",
            &[("accept-encoding", "br"), ("if-none-match", &br_tag)],
        );
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(hv(&r, "vary"), "Accept-Encoding");
        // A range of a twin is a range of its bytes.
        let r = get(
            &f,
            "/static/site.css",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-1")],
        );
        assert_eq!(body(&r), b"GZ");
        // Only the twins that exist.
        let r = get(&f, "/static/only-gz.js", &[("accept-encoding", "br, gzip")]);
        assert_eq!(body(&r), b"GZ");
        assert_eq!(hv(&r, "content-encoding"), "gzip");
        assert_eq!(hv(&r, "content-type"), "text/javascript; charset=utf-8");
    }

    #[test]
    fn traversal_and_hidden_separators_are_refused_before_any_file_is_read() {
        let f = fixture(false);
        for p in [
            "/static/../app.py",
            "/static/%2e%2e/app.py",
            "/static/%2E%2E/app.py",
            "/static/..%2fapp.py",
            "/static%2f..%2fapp.py",
            "/static/sub/..%5c..%5capp.py",
            "/static/..\\app.py",
            "/static/site.css%00.png",
            "/static/%zz",
            "/x/../static/site.css",
            "/static/sub/../../app.py",
        ] {
            assert_eq!(
                f.site.route(p),
                Route::Refused(StatusCode::BAD_REQUEST),
                "{p}"
            );
        }
    }

    #[test]
    fn links_are_followed_inside_the_directory_only() {
        let f = fixture(false);
        let r = get(&f, "/static/alias", &[]);
        assert_eq!(body(&r), CSS.as_bytes());
        assert_eq!(
            hv(&r, "content-type"),
            "text/css; charset=utf-8",
            "the type of the file it leads to when its own name has none"
        );
        for p in [
            "/static/leak.py",
            "/static/passwd",
            "/static/up/app.py",
            "/static/up/",
        ] {
            let r = get(&f, p, &[]);
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
            assert!(!body(&r).starts_with(b"SECRET"), "{p}");
        }
        assert!(f.slug.join("app.py").exists());
    }

    #[test]
    fn directories_redirect_to_their_slash_then_answer_their_index() {
        let f = fixture(false);
        let r = get(&f, "/static/sub?x=1", &[]);
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(hv(&r, "location"), "/static/sub/?x=1");
        // The location is rebuilt from the decoded path: never `//elsewhere`.
        let r = get(&f, "//static//sub", &[]);
        assert_eq!(hv(&r, "location"), "/static/sub/");
        let r = get(&f, "/static", &[]);
        assert_eq!(hv(&r, "location"), "/static/");
        let r = get(&f, "/static/sub/", &[]);
        assert_eq!(body(&r), b"<p>hi</p>");
        for p in [
            "/static/",
            "/static/empty/",
            "/static/site.css/",
            "/static/nope.css",
        ] {
            assert_eq!(get(&f, p, &[]).status, StatusCode::NOT_FOUND, "{p}");
        }
    }

    #[test]
    fn methods_other_than_get_and_head_are_refused_with_allow() {
        let f = fixture(false);
        let r = req(&f, Method::POST, "/static/site.css", &[]);
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(hv(&r, "allow"), ALLOW);
        let r = req(&f, Method::OPTIONS, "/static/site.css", &[]);
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(hv(&r, "allow"), ALLOW);
    }

    #[test]
    fn large_files_are_streamed_from_the_right_offset() {
        let f = fixture(false);
        let r = get(&f, "/static/big.bin", &[]);
        assert_eq!(hv(&r, "content-length"), "200000");
        assert_eq!(hv(&r, "content-type"), "application/octet-stream");
        match r.body {
            ReplyBody::File { start, len, .. } => assert_eq!((start, len), (0, 200_000)),
            other => panic!("{other:?}"),
        }
        let r = get(&f, "/static/big.bin", &[("range", "bytes=100-")]);
        match r.body {
            ReplyBody::File {
                mut file,
                start,
                len,
            } => {
                assert_eq!((start, len), (100, 199_900));
                assert_eq!(file.stream_position().unwrap(), 100);
            }
            other => panic!("{other:?}"),
        }
        let r = get(&f, "/static/big.bin", &[("range", "bytes=100-199")]);
        assert_eq!(body(&r), vec![7u8; 100]);
    }

    #[test]
    fn files_others_cannot_read_are_forbidden_with_per_app_users() {
        let f = fixture(true);
        assert_eq!(
            get(&f, "/static/private.txt", &[]).status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(get(&f, "/static/site.css", &[]).status, StatusCode::OK);
        let f = fixture(false);
        assert_eq!(get(&f, "/static/private.txt", &[]).status, StatusCode::OK);
    }

    #[test]
    fn a_file_seen_once_is_answered_from_memory_when_small() {
        let f = fixture(false);
        let Route::Static(css) = f.site.route("/static/site.css") else {
            panic!()
        };
        let none = HeaderMap::new();
        assert!(
            f.site
                .respond_from_memory(&css, &Method::GET, &none)
                .is_none(),
            "not resolved yet"
        );
        assert_eq!(get(&f, "/static/site.css", &[]).status, StatusCode::OK);
        let mut gz = HeaderMap::new();
        gz.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let r = f.site.respond_from_memory(&css, &Method::GET, &gz).unwrap();
        assert_eq!(body(&r), b"GZ-BYTES", "twins are kept too");
        let r = f
            .site
            .respond_from_memory(&css, &Method::POST, &none)
            .unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        // A large file is resolved once but read from disk: not from memory.
        let Route::Static(big) = f.site.route("/static/big.bin") else {
            panic!()
        };
        get(&f, "/static/big.bin", &[]);
        assert!(f
            .site
            .respond_from_memory(&big, &Method::GET, &none)
            .is_none());
        assert!(f
            .site
            .respond_from_memory(&big, &Method::HEAD, &none)
            .is_some());
        // Missing files are not kept (the cache is not a way to fill memory).
        get(&f, "/static/nope-1.css", &[]);
        assert_eq!(f.site.cache.read().unwrap().entries.len(), 2);
    }

    #[test]
    fn qvalues_and_ranges_parse_strictly() {
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.0001"), None);
        assert_eq!(parse_qvalue("2"), None);
        assert_eq!(parse_range(b"bytes=0-0", 1), RangeAnswer::Part(0, 0));
        assert_eq!(parse_range(b"bytes=0-", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(
            parse_range(b"bytes=99999999999999999999999-", 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            parse_range(b"bytes=-99999999999999999999999", 10),
            RangeAnswer::Part(0, 9)
        );
        assert_eq!(parse_range(b"bytes= 1 - 2 ", 10), RangeAnswer::Part(1, 2));
        assert_eq!(parse_range(b"bytes=+1-2", 10), RangeAnswer::Whole);
    }
}
