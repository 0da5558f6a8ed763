//! Gzipped tar archives of app code: packing a directory, and unpacking one that came off the
//! network without letting it write outside its target.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Why an archive was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A hostile or broken archive: nothing outside the target was written.
    #[error("refused archive: {0}")]
    Refused(String),
    #[error("archive is over the limit of {0} bytes unpacked")]
    TooLarge(u64),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Limits of an unpack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of file content.
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 200_000,
        }
    }
}

/// Packs `dir` into a gzipped tar written to `out`. With `respect_gitignore`, `.git` and what
/// `.gitignore` files ignore are left out (an app's own upload); without it everything is packed
/// (a built slug). Symbolic links are stored as links, never followed.
pub fn pack_dir(dir: &Path, out: impl Write, respect_gitignore: bool) -> Result<u64, ArchiveError> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, flate2::Compression::fast()));
    tar.follow_symlinks(false);
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_global(false)
        .git_exclude(false)
        .git_ignore(respect_gitignore)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| !(respect_gitignore && e.file_name() == ".git"))
        .build();
    let mut count = 0u64;
    for entry in walker {
        let entry =
            entry.map_err(|e| ArchiveError::Refused(format!("walking {}: {e}", dir.display())))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        tar.append_path_with_name(path, rel).map_err(io(path))?;
        count += 1;
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    let mut out = gz.finish().map_err(io(dir))?;
    out.flush().map_err(io(dir))?;
    Ok(count)
}

/// A relative path inside the archive, with `.` parts dropped; refused when absolute or when it
/// climbs out with `..`.
fn safe_relative(raw: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::Refused(format!(
                    "{} climbs out of the archive with ..",
                    raw.display()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Refused(format!(
                    "{} is an absolute path",
                    raw.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Whether a link at `link` (relative to the root) pointing at `target` stays inside the root,
/// read lexically.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Checks that no part of `rel`'s parent, below `root`, is a symbolic link: an entry must not be
/// written through a link an earlier entry made.
fn no_link_on_the_way(root: &Path, rel: &Path) -> Result<(), ArchiveError> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            if let Ok(m) = fs::symlink_metadata(&at) {
                if m.file_type().is_symlink() {
                    return Err(ArchiveError::Refused(format!(
                        "{} is written through the link {}",
                        rel.display(),
                        at.strip_prefix(root).unwrap_or(&at).display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Unpacks the gzipped tar `input` into `root` (an existing, empty directory). Refused, with
/// nothing written outside `root`: absolute paths, `..`, links pointing outside, hard links,
/// devices and FIFOs, entries written through a link, more than `limits` allow. Modes keep their
/// permission bits without setuid, setgid or sticky; files keep their modification times.
pub fn unpack(input: impl Read, root: &Path, limits: Limits) -> Result<u64, ArchiveError> {
    let mut ar = tar::Archive::new(GzDecoder::new(input));
    let mut total = 0u64;
    let mut entries = 0u64;
    let broken = |e: std::io::Error| ArchiveError::Refused(format!("not a gzipped tar: {e}"));
    for entry in ar.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(ArchiveError::Refused(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path().map_err(broken)?.into_owned();
        let rel = safe_relative(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // the archive's own `./`
        }
        no_link_on_the_way(root, &rel)?;
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&dest).map_err(io(&dest))?;
                set_mode(&dest, mode | 0o700)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.header().size().unwrap_or(0));
                if total > limits.max_bytes {
                    return Err(ArchiveError::TooLarge(limits.max_bytes));
                }
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).map_err(io(p))?;
                }
                // Replacing an earlier entry of the same name is allowed; replacing a link is
                // not followed: remove it first.
                if fs::symlink_metadata(&dest).is_ok() {
                    fs::remove_file(&dest).map_err(io(&dest))?;
                }
                let mut f = fs::File::create(&dest).map_err(io(&dest))?;
                // The entry reads exactly its header's size, counted above.
                std::io::copy(&mut entry, &mut f).map_err(io(&dest))?;
                // The file keeps its time from the archive: static files are served with it
                // (Last-Modified, ETag), the same on every runner. Not fatal when it cannot be set.
                if let Ok(secs) = entry.header().mtime() {
                    if secs > 0 && secs < 1 << 40 {
                        let _ = f.set_modified(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                        );
                    }
                }
                set_mode(&dest, mode | 0o400)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(broken)?
                    .ok_or_else(|| {
                        ArchiveError::Refused(format!("link {} has no target", raw.display()))
                    })?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(ArchiveError::Refused(format!(
                        "link {} points outside the archive ({})",
                        raw.display(),
                        target.display()
                    )));
                }
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).map_err(io(p))?;
                }
                std::os::unix::fs::symlink(&target, &dest).map_err(io(&dest))?;
                // Lexically inside can still resolve outside through another link: check the
                // real path when the target exists.
                if let (Ok(real), Ok(real_root)) = (fs::canonicalize(&dest), fs::canonicalize(root))
                {
                    if !real.starts_with(&real_root) {
                        let _ = fs::remove_file(&dest);
                        return Err(ArchiveError::Refused(format!(
                            "link {} resolves outside the archive",
                            raw.display()
                        )));
                    }
                }
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(ArchiveError::Refused(format!(
                    "{} is a {other:?} entry (only files, directories and links are allowed)",
                    raw.display()
                )))
            }
        }
    }
    Ok(entries)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A gzipped tar with raw headers, to make the hostile archives a real packer would not.
    fn hostile(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            // set_path refuses `..`; write the name bytes directly as an attacker would.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                h.set_link_name(data).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn try_unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<u64, ArchiveError>) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let r = unpack(bytes, &root, Limits::default());
        (outer, r)
    }

    use tar::EntryType as T;

    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        let cases: &[&[(&str, T, &str)]] = &[
            &[("../evil", T::Regular, "x")],
            &[("a/../../evil", T::Regular, "x")],
            &[("/tmp/evil", T::Regular, "x")],
            &[("link", T::Symlink, "/etc")],
            &[("link", T::Symlink, "../outside")],
            &[("a/link", T::Symlink, "../../outside")],
            &[("link", T::Symlink, "."), ("link2", T::Symlink, "link/..")],
            &[("d", T::Symlink, "."), ("d/../evil", T::Regular, "x")],
            &[
                ("sub", T::Directory, ""),
                ("sub/l", T::Symlink, ".."),
                ("sub/l/evil", T::Regular, "x"),
            ],
            &[("hard", T::Link, "/etc/passwd")],
            &[("dev", T::Char, "")],
            &[("fifo", T::Fifo, "")],
        ];
        for entries in cases {
            let (outer, r) = try_unpack(&hostile(entries));
            assert!(
                matches!(r, Err(ArchiveError::Refused(_))),
                "{entries:?}: {r:?}"
            );
            let mut outside: Vec<_> = fs::read_dir(outer.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            outside.sort();
            assert_eq!(
                outside,
                vec![std::ffi::OsString::from("root")],
                "{entries:?} wrote outside"
            );
        }
    }

    #[test]
    fn links_inside_are_kept() {
        let (outer, r) = try_unpack(&hostile(&[
            ("app/main.py", T::Regular, "print(1)"),
            ("app/current", T::Symlink, "main.py"),
            ("top", T::Symlink, "app/../app/main.py"),
        ]));
        r.unwrap();
        let root = outer.path().join("root");
        assert_eq!(
            fs::read_to_string(root.join("app/current")).unwrap(),
            "print(1)"
        );
        assert_eq!(fs::read_to_string(root.join("top")).unwrap(), "print(1)");
    }

    #[test]
    fn limits_hold() {
        let big = "x".repeat(1000);
        let bytes = hostile(&[("a", T::Regular, &big), ("b", T::Regular, &big)]);
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(
            &bytes[..],
            dir.path(),
            Limits {
                max_bytes: 1500,
                max_entries: 10,
            },
        );
        assert!(matches!(r, Err(ArchiveError::TooLarge(1500))), "{r:?}");
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(
            &bytes[..],
            dir.path(),
            Limits {
                max_bytes: 1 << 20,
                max_entries: 1,
            },
        );
        assert!(matches!(r, Err(ArchiveError::Refused(_))), "{r:?}");
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(&b"not gzip at all"[..], dir.path(), Limits::default());
        assert!(matches!(r, Err(ArchiveError::Refused(_))), "{r:?}");
    }

    #[test]
    fn pack_leaves_out_git_and_ignored_files_and_round_trips() {
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        fs::write(p.join("Procfile"), "web: python3 app.py\n").unwrap();
        fs::write(p.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        fs::write(p.join("app.log"), "noise").unwrap();
        fs::create_dir_all(p.join("build")).unwrap();
        fs::write(p.join("build/x"), "x").unwrap();
        fs::create_dir_all(p.join(".git/objects")).unwrap();
        fs::write(p.join(".git/HEAD"), "ref").unwrap();
        fs::create_dir_all(p.join("pkg")).unwrap();
        fs::write(p.join("pkg/mod.py"), "x = 1").unwrap();
        fs::write(p.join(".env.example"), "A=1").unwrap();
        let mut bytes = Vec::new();
        pack_dir(p, &mut bytes, true).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&bytes[..], out.path(), Limits::default()).unwrap();
        let o = out.path();
        assert!(o.join("Procfile").exists() && o.join("pkg/mod.py").exists());
        assert!(o.join(".gitignore").exists() && o.join(".env.example").exists());
        assert!(
            !o.join("app.log").exists() && !o.join("build").exists() && !o.join(".git").exists()
        );
        // Without gitignore rules (a slug), everything goes.
        let mut bytes = Vec::new();
        pack_dir(p, &mut bytes, false).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&bytes[..], out.path(), Limits::default()).unwrap();
        assert!(out.path().join("app.log").exists());
    }

    #[test]
    fn unpacked_files_keep_their_modification_time() {
        let src = tempfile::tempdir().unwrap();
        let f = src.path().join("site.css");
        fs::write(&f, "body{}").unwrap();
        let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(then)
            .unwrap();
        let mut bytes = Vec::new();
        pack_dir(src.path(), &mut bytes, false).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&bytes[..], out.path(), Limits::default()).unwrap();
        let got = fs::metadata(out.path().join("site.css"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(got, then);
    }
}
