//! The slug store: slugs by digest in a local directory (a shared mount when runners are on
//! other machines). Written once, read by every runner, checked on every read.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pier_model::platform::SlugRef;
use sha2::{Digest, Sha256};

use crate::archive::ArchiveError;

/// Slugs kept in one directory as `<sha256>.tar.gz`.
#[derive(Debug, Clone)]
pub struct SlugStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SlugStore {
    /// A store in `dir` (`file:///path` or a plain path), created if missing, private to the
    /// platform's user (an app's processes must not read other apps' slugs).
    pub fn open(location: &str) -> Result<Self, ArchiveError> {
        let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        Ok(SlugStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, digest: &str) -> Result<PathBuf, ArchiveError> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ArchiveError::Refused(format!("bad slug digest {digest:?}")));
        }
        Ok(self.dir.join(format!("{digest}.tar.gz")))
    }

    /// Stores a slug archive; the same bytes stored twice are one file.
    pub fn put(&self, bytes: &[u8]) -> Result<SlugRef, ArchiveError> {
        let digest = sha256_hex(bytes);
        let path = self.path_of(&digest)?;
        if !path.exists() {
            let tmp = self
                .dir
                .join(format!(".{digest}.{}.tmp", std::process::id()));
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(SlugRef {
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Reads a slug and checks it against its digest (a corrupt copy is refused).
    pub fn get(&self, slug: &SlugRef) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path_of(&slug.digest)?;
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io(&path))?;
        let got = sha256_hex(&bytes);
        if got != slug.digest {
            return Err(ArchiveError::Refused(format!(
                "slug {} is corrupt (its content hashes to {got})",
                slug.digest
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn put_get_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = SlugStore::open(&format!("file://{}", dir.path().display())).unwrap();
        let s = store.put(b"slug bytes").unwrap();
        assert_eq!(s.size, 10);
        assert_eq!(store.get(&s).unwrap(), b"slug bytes");
        fs::write(store.path_of(&s.digest).unwrap(), b"tampered!!").unwrap();
        assert!(store.get(&s).is_err());
        assert!(store.path_of("../../etc/passwd").is_err());
    }
}
