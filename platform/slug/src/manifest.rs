//! `pier.toml`: what an app declares about itself beside its `Procfile`. For now, its static
//! directories: URL prefixes the runner answers from the release's files without asking the
//! app.
//!
//! ```toml
//! [static]
//! cache_control = "public, max-age=600"          # optional: every mount's default
//! "/static" = "static"                           # URL prefix = directory in the app
//! "/assets" = { dir = "build/assets", cache_control = "public, max-age=31536000, immutable" }
//! ```
//!
//! The pipeline: TOML → [`ManifestFile`] (unknown keys refused) → [`Manifest::from_file`]
//! (prefixes and directories checked lexically) → [`Manifest`]; [`Manifest::check_tree`] then
//! checks the directories against an unpacked tree (they exist, and stay inside it). Every
//! error names the file, the key and the reason.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The manifest's file name, at the root of the app.
pub const FILE: &str = "pier.toml";

/// `Cache-Control` of static files when `pier.toml` does not say.
pub const DEFAULT_CACHE_CONTROL: &str = "public, max-age=3600";

/// Largest `pier.toml` read.
const MAX_FILE: u64 = 64 * 1024;
/// Longest URL prefix of a mount.
const MAX_PREFIX: usize = 256;
/// Longest `cache_control` value.
const MAX_CACHE_CONTROL: usize = 1024;
/// Most static mounts.
const MAX_MOUNTS: usize = 64;

/// Why `pier.toml` was refused: the key at fault (empty for the whole file) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FILE}: {}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ManifestError {
    /// The key at fault, as written in TOML (`static."/assets".dir`).
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `pier.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// URL prefix → directory (a string or a [`MountFile`]), and `cache_control`.
    #[serde(rename = "static", default)]
    pub statics: BTreeMap<String, toml::Value>,
}

/// One mount written as an inline table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountFile {
    pub dir: String,
    pub cache_control: Option<String>,
}

/// `pier.toml`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The static mounts, in the order of their prefixes.
    pub statics: Vec<StaticMount>,
}

/// A URL prefix answered from a directory of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMount {
    /// `/static`: starts with `/`, no trailing `/`, never `/` alone.
    pub prefix: String,
    /// `static`: relative to the app's root, normalised (no `.`, no `..`, no trailing `/`).
    pub dir: PathBuf,
    /// The `Cache-Control` sent with its files; empty: none.
    pub cache_control: String,
}

impl Manifest {
    /// Parses and checks the text of a `pier.toml`.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let file: ManifestFile =
            toml::from_str(text).map_err(|e| bad("", toml_reason(&e, Some(text))))?;
        Manifest::from_file(file)
    }

    /// Checks what was written.
    pub fn from_file(file: ManifestFile) -> Result<Manifest, ManifestError> {
        let mut default_cc = DEFAULT_CACHE_CONTROL.to_string();
        if let Some(v) = file.statics.get("cache_control") {
            let Some(s) = v.as_str() else {
                return Err(bad("static.cache_control", "must be a string"));
            };
            default_cc = cache_control(s, "static.cache_control")?;
        }
        let mut statics: Vec<StaticMount> = Vec::new();
        for (key, value) in &file.statics {
            if key == "cache_control" {
                continue;
            }
            let at = format!("static.{}", quoted(key));
            if !key.starts_with('/') {
                return Err(bad(
                    at,
                    "unknown key: a mount's URL prefix starts with / (\"/static\" = \"static\"), \
                     and the only other key is cache_control",
                ));
            }
            let prefix = url_prefix(key).map_err(|why| bad(at.clone(), why))?;
            let (dir, cc) = match value {
                toml::Value::String(dir) => (dir.clone(), default_cc.clone()),
                toml::Value::Table(_) => {
                    let m: MountFile = value
                        .clone()
                        .try_into()
                        .map_err(|e: toml::de::Error| bad(at.clone(), toml_reason(&e, None)))?;
                    let cc = match &m.cache_control {
                        Some(s) => cache_control(s, &format!("{at}.cache_control"))?,
                        None => default_cc.clone(),
                    };
                    (m.dir, cc)
                }
                _ => {
                    return Err(bad(
                        at,
                        "must be a directory (\"static\") or a table ({ dir = \"static\", \
                         cache_control = \"...\" })",
                    ))
                }
            };
            let dir = relative_dir(&dir).map_err(|why| bad(at.clone(), why))?;
            if let Some(other) = statics.iter().find(|m| m.prefix == prefix) {
                return Err(bad(
                    at,
                    format!("the URL prefix {} is declared twice", other.prefix),
                ));
            }
            statics.push(StaticMount {
                prefix,
                dir,
                cache_control: cc,
            });
        }
        if statics.len() > MAX_MOUNTS {
            return Err(bad("static", format!("more than {MAX_MOUNTS} mounts")));
        }
        statics.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(Manifest { statics })
    }

    /// Reads `<root>/pier.toml` and checks it against the tree at `root`: `None` without one.
    pub fn read(root: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = root.join(FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad("", e.to_string())),
        };
        if !meta.is_file() {
            return Err(bad("", "is not a file"));
        }
        if meta.len() > MAX_FILE {
            return Err(bad("", format!("is larger than {MAX_FILE} bytes")));
        }
        let text = std::fs::read(&path).map_err(|e| bad("", e.to_string()))?;
        let text = String::from_utf8(text).map_err(|_| bad("", "is not UTF-8"))?;
        let m = Manifest::parse(&text)?;
        m.check_tree(root)?;
        Ok(Some(m))
    }

    /// Checks every mount's directory in the tree at `root`: it exists, is a directory, and its
    /// real path (links followed) is inside `root` without being `root` itself.
    pub fn check_tree(&self, root: &Path) -> Result<(), ManifestError> {
        let real_root = std::fs::canonicalize(root).map_err(|e| bad("", e.to_string()))?;
        for m in &self.statics {
            let at = format!("static.{}", quoted(&m.prefix));
            let shown = m.dir.display();
            let real = match std::fs::canonicalize(root.join(&m.dir)) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(bad(at, format!("the directory {shown}/ is not in the app")))
                }
                Err(e) => return Err(bad(at, format!("{shown}/: {e}"))),
            };
            if real == real_root {
                return Err(bad(
                    at,
                    format!("the directory {shown}/ is the app's root (through a link)"),
                ));
            }
            if !real.starts_with(&real_root) {
                return Err(bad(
                    at,
                    format!("the directory {shown}/ leads outside the app (through a link)"),
                ));
            }
            if !real.is_dir() {
                return Err(bad(at, format!("{shown} is not a directory")));
            }
        }
        Ok(())
    }
}

/// TOML's message on one line, with the line it is about when known.
fn toml_reason(e: &toml::de::Error, text: Option<&str>) -> String {
    let msg = e.message().trim_end().to_string();
    match (e.span(), text) {
        (Some(span), Some(text)) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {msg}")
        }
        _ => msg,
    }
}

/// A key as TOML would write it: quoted when it is not bare.
fn quoted(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// A mount's URL prefix, normalised: `/static/` → `/static`. Plain path characters only (no
/// percent-encoding, no `.` or `..` segments, no empty segment), never `/` alone.
fn url_prefix(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_PREFIX {
        return Err(format!("a URL prefix is at most {MAX_PREFIX} bytes"));
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(
            "/ cannot be static: every request would be, and none would reach the app".into(),
        );
    }
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() {
            return Err("a URL prefix has no empty segment (//)".into());
        }
        if seg == "." || seg == ".." {
            return Err("a URL prefix has no . or .. segment".into());
        }
        if let Some(c) = seg.chars().find(|c| !prefix_char(*c)) {
            return Err(format!(
                "a URL prefix is made of letters, digits and -._~!$&'()*+,;=:@ only, not {c:?}"
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// Characters a path segment may hold unencoded (RFC 3986 `pchar` without `%`).
fn prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

/// A directory relative to the app's root, normalised: no absolute path, no `..`, not the root
/// itself (that would publish the app's code), not the platform's `.pier`.
fn relative_dir(raw: &str) -> Result<PathBuf, String> {
    if raw.contains('\0') || raw.contains('\\') {
        return Err(format!("{raw:?} is not a plain relative directory"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "the directory {raw:?} climbs out of the app with .."
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "the directory {raw:?} must be relative to the app's root, not absolute"
                ))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(
            "the directory cannot be the app's root: that would publish its code and config; \
             name a subdirectory such as \"static\""
                .into(),
        );
    }
    if out.starts_with(".pier") {
        return Err("the directory .pier belongs to the platform".into());
    }
    Ok(out)
}

/// A `Cache-Control` value: visible ASCII and spaces, at most [`MAX_CACHE_CONTROL`] bytes.
fn cache_control(raw: &str, key: &str) -> Result<String, ManifestError> {
    let v = raw.trim();
    if v.len() > MAX_CACHE_CONTROL {
        return Err(bad(key, format!("at most {MAX_CACHE_CONTROL} bytes")));
    }
    if !v
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(bad(
            key,
            "a header value: visible ASCII characters and spaces only",
        ));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn mounts_as_strings_and_tables_with_their_cache_control() {
        let m = Manifest::parse(
            r#"
            [static]
            "/static/" = "./static/"
            "/assets" = { dir = "build/assets", cache_control = "public, max-age=31536000, immutable" }
            "#,
        )
        .unwrap();
        assert_eq!(
            m.statics,
            vec![
                StaticMount {
                    prefix: "/assets".into(),
                    dir: "build/assets".into(),
                    cache_control: "public, max-age=31536000, immutable".into(),
                },
                StaticMount {
                    prefix: "/static".into(),
                    dir: "static".into(),
                    cache_control: DEFAULT_CACHE_CONTROL.into(),
                },
            ]
        );
    }

    #[test]
    fn a_table_level_cache_control_is_every_mounts_default_and_empty_sends_none() {
        let m = Manifest::parse(
            r#"
            [static]
            cache_control = "no-cache"
            "/a" = "a"
            "/b" = { dir = "b", cache_control = "" }
            "#,
        )
        .unwrap();
        assert_eq!(m.statics[0].cache_control, "no-cache");
        assert_eq!(m.statics[1].cache_control, "");
    }

    #[test]
    fn an_empty_or_absent_static_table_declares_nothing() {
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
        assert_eq!(Manifest::parse("[static]\n").unwrap(), Manifest::default());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_key_and_the_reason() {
        assert!(
            err("[statics]\n\"/s\" = \"s\"").contains("unknown field `statics`"),
            "{}",
            err("[statics]")
        );
        let e = err("[static]\nstatic = \"s\"");
        assert!(
            e.starts_with("pier.toml: static.static: unknown key"),
            "{e}"
        );
        let e = err("[static]\n\"/s\" = { dir = \"s\", cache = \"x\" }");
        assert!(
            e.starts_with("pier.toml: static.\"/s\": unknown field `cache`"),
            "{e}"
        );
        let e = err("[static]\n\"/s\" = { cache_control = \"x\" }");
        assert!(e.contains("missing field `dir`"), "{e}");
        let e = err("[static]\n\"/s\" = 3");
        assert!(e.contains("must be a directory"), "{e}");
        let e = err("[static]\ncache_control = 3");
        assert!(e.contains("static.cache_control: must be a string"), "{e}");
        let e = err("# a comment\n[static\n");
        assert!(e.starts_with("pier.toml: line 2: "), "{e}");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for (prefix, why) in [
            ("/", "/ cannot be static"),
            ("//", "empty segment"),
            ("/a//b", "empty segment"),
            ("/a/../b", ".. segment"),
            ("/./a", ". segment"),
            ("/a%2fb", "not '%'"),
            ("/a b", "not ' '"),
            ("/a?b", "not '?'"),
            ("/é", "not 'é'"),
        ] {
            let e = err(&format!("[static]\n{prefix:?} = \"s\""));
            assert!(e.contains(why), "{prefix}: {e}");
        }
        let e = err("[static]\n\"/s\" = \"a\"\n\"/s/\" = \"b\"");
        assert!(e.contains("declared twice"), "{e}");
    }

    #[test]
    fn directories_that_leave_the_app_or_publish_it_are_refused() {
        for (dir, why) in [
            ("../x", "climbs out"),
            ("a/../../x", "climbs out"),
            ("/etc", "not absolute"),
            (".", "cannot be the app's root"),
            ("./", "cannot be the app's root"),
            ("", "cannot be the app's root"),
            (".pier/python", "belongs to the platform"),
            ("a\\b", "not a plain relative"),
        ] {
            let e = err(&format!("[static]\n\"/s\" = {dir:?}"));
            assert!(e.contains(why), "{dir}: {e}");
        }
        let e =
            err("[static]\n\"/s\" = \"a\"\n\"/t\" = { dir = \"x\", cache_control = \"a\\nb\" }");
        assert!(
            e.contains("static.\"/t\".cache_control: a header value"),
            "{e}"
        );
    }

    #[test]
    fn the_tree_check_finds_missing_dirs_files_and_links_that_leave() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("app");
        std::fs::create_dir_all(root.join("static")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::fs::create_dir_all(outer.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", root.join("out")).unwrap();
        std::os::unix::fs::symlink(".", root.join("self")).unwrap();
        std::os::unix::fs::symlink("static", root.join("alias")).unwrap();
        let check = |dir: &str| {
            Manifest::parse(&format!("[static]\n\"/s\" = {dir:?}"))
                .unwrap()
                .check_tree(&root)
        };
        check("static").unwrap();
        check("alias").unwrap();
        let e = check("missing").unwrap_err().to_string();
        assert!(e.contains("missing/ is not in the app"), "{e}");
        let e = check("file").unwrap_err().to_string();
        assert!(e.contains("file is not a directory"), "{e}");
        let e = check("out").unwrap_err().to_string();
        assert!(e.contains("leads outside"), "{e}");
        let e = check("self").unwrap_err().to_string();
        assert!(e.contains("is the app's root"), "{e}");
    }

    #[test]
    fn read_finds_none_without_the_file_and_refuses_a_large_one() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), None);
        std::fs::write(d.path().join(FILE), "#".repeat(100_000)).unwrap();
        let e = Manifest::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::create_dir(d.path().join("static")).unwrap();
        std::fs::write(d.path().join(FILE), "[static]\n\"/static\" = \"static\"\n").unwrap();
        let m = Manifest::read(d.path()).unwrap().unwrap();
        assert_eq!(m.statics[0].prefix, "/static");
    }
}
