//! Where backups' archives live: a local directory private to the platform's user, or an
//! S3-compatible bucket (feature `aws`), behind `object_store`'s one API. Objects are
//! `<prefix>/<app>/<id>.dump`. An upload is hashed (SHA-256) as it streams; nothing is held
//! in memory whole.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Parts of a multipart upload (S3 takes at least 5 MiB but for the last).
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Why the backup store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum BackupStoreError {
    #[error("backup store {0}")]
    Config(String),
    #[error("backup store: {0}")]
    Store(#[from] object_store::Error),
    #[error("reading the dump: {0}")]
    Read(std::io::Error),
}

/// The backup store.
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The directory of a local store (its files are made private after each upload).
    local: Option<PathBuf>,
    /// What it is, for logs: `file:///var/lib/pier/backups`, `s3://bucket/prefix`.
    pub describe: String,
}

/// What an upload stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

impl BackupStore {
    /// `file:///DIR` or a plain path: a local directory, made mode 0700 when new, and refused
    /// when someone else owns it or others may read it. `s3://BUCKET[/PREFIX]`: a bucket,
    /// with the credentials and region of the usual `AWS_*` variables (`AWS_ENDPOINT` for
    /// another S3-compatible service).
    pub fn open(url: &str) -> Result<BackupStore, BackupStoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return open_s3(url, rest);
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(BackupStoreError::Config(format!(
                "{url:?}: use a directory, file:///DIR or s3://BUCKET/PREFIX"
            )));
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        if dir.as_os_str().is_empty() {
            return Err(BackupStoreError::Config("the directory is empty".into()));
        }
        make_private_dir(&dir)?;
        let dir = dir
            .canonicalize()
            .map_err(|e| BackupStoreError::Config(format!("{}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
        Ok(BackupStore {
            store: Arc::new(store),
            prefix: String::new(),
            local: Some(dir.clone()),
            describe: format!("file://{}", dir.display()),
        })
    }

    /// The directory of a local store.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    fn path(&self, app: &str, id: u64) -> ObjectPath {
        let name = format!("{app}/{id}.dump");
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Streams `reader` to the object of `app`'s backup `id`, hashing it on the way. The
    /// object is made only when `finish` says the reader ended well (the dump's exit status):
    /// otherwise the upload is aborted and nothing is stored.
    pub async fn upload<R, F>(
        &self,
        app: &str,
        id: u64,
        mut reader: R,
        finish: F,
    ) -> Result<Stored, String>
    where
        R: AsyncRead + Unpin,
        F: std::future::Future<Output = Result<(), String>>,
    {
        let path = self.path(app, id);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| format!("cannot start the upload to the backup store: {e}"))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let read: Result<(), String> = async {
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading pg_dump's output: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                hash.update(&buf[..n]);
                size += n as u64;
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| format!("uploading to the backup store: {e}"))?;
                w.write(&buf[..n]);
            }
        }
        .await;
        let ended = match read {
            Ok(()) => finish.await,
            Err(e) => Err(e),
        };
        if let Err(e) = ended {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish()
            .await
            .map_err(|e| format!("uploading to the backup store: {e}"))?;
        self.make_private(app, id);
        Ok(Stored {
            size,
            sha256: hex(&hash.finalize()),
        })
    }

    /// The object's size and its bytes as a stream.
    pub async fn read(
        &self,
        app: &str,
        id: u64,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, object_store::Error>>), BackupStoreError>
    {
        let got = self.store.get(&self.path(app, id)).await?;
        let size = got.meta.size;
        Ok((size, got.into_stream()))
    }

    /// Streams the object into `file` and returns its SHA-256 and size.
    pub async fn read_into(
        &self,
        app: &str,
        id: u64,
        file: &mut tokio::fs::File,
    ) -> Result<Stored, BackupStoreError> {
        use tokio::io::AsyncWriteExt;
        let (_, mut stream) = self.read(app, id).await?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(BackupStoreError::Read)?;
        }
        file.flush().await.map_err(BackupStoreError::Read)?;
        Ok(Stored {
            size,
            sha256: hex(&hash.finalize()),
        })
    }

    /// Deletes the object (gone already is fine).
    pub async fn delete(&self, app: &str, id: u64) -> Result<(), BackupStoreError> {
        match self.store.delete(&self.path(app, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A local object: mode 0600, its app's directory 0700 (the store's own directory is 0700
    /// already; this keeps each level private should anyone loosen one).
    fn make_private(&self, app: &str, id: u64) {
        use std::os::unix::fs::PermissionsExt;
        let Some(dir) = &self.local else { return };
        let app_dir = dir.join(app);
        let file = app_dir.join(format!("{id}.dump"));
        for (p, mode) in [(&app_dir, 0o700), (&file, 0o600)] {
            if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %p.display(), error = %e, "cannot make a backup file private");
            }
        }
    }
}

/// Makes `dir` (mode 0700) when it is missing; refuses it when another user owns it or group
/// or others have any right on it: an app's processes must never read a backup.
fn make_private_dir(dir: &std::path::Path) -> Result<(), BackupStoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let cfg = |e: std::io::Error| BackupStoreError::Config(format!("{}: {e}", dir.display()));
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(cfg)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(cfg)?;
    }
    let meta = std::fs::metadata(dir).map_err(cfg)?;
    if !meta.is_dir() {
        return Err(BackupStoreError::Config(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    // /proc/self belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|uid| uid != meta.uid()) {
        return Err(BackupStoreError::Config(format!(
            "{} belongs to uid {}, not to this process's user: backups must be the platform's alone",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BackupStoreError::Config(format!(
            "{} has mode {mode:04o}: others could read the backups in it; chmod 700 it",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(feature = "aws")]
fn open_s3(url: &str, rest: &str) -> Result<BackupStore, BackupStoreError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(BackupStoreError::Config(format!(
            "{url:?} names no bucket: s3://BUCKET/PREFIX"
        )));
    }
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    Ok(BackupStore {
        store: Arc::new(store),
        prefix: prefix.trim_matches('/').to_string(),
        local: None,
        describe: url.to_string(),
    })
}

#[cfg(not(feature = "aws"))]
fn open_s3(url: &str, _rest: &str) -> Result<BackupStore, BackupStoreError> {
    Err(BackupStoreError::Config(format!(
        "{url:?}: this pier was built without S3 support (cargo build --features aws)"
    )))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_local_store_is_private_and_checksums_what_it_stores() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("backups");
        let store = BackupStore::open(&format!("file://{}", dir.display())).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let data = vec![7u8; 3 << 20];
        let stored = store
            .upload("blog", 1, &data[..], async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.sha256, hex(&Sha256::digest(&data)));
        let file = dir.join("blog/1.dump");
        assert_eq!(std::fs::read(&file).unwrap(), data);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A dump that ended badly stores nothing.
        let err = store
            .upload("blog", 2, &data[..], async { Err("pg_dump failed".into()) })
            .await
            .unwrap_err();
        assert_eq!(err, "pg_dump failed");
        assert!(!dir.join("blog/2.dump").exists());
        store.delete("blog", 1).await.unwrap();
        store.delete("blog", 1).await.unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn a_directory_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = BackupStore::open(&dir.display().to_string())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("mode 0755"), "{err}");
        assert!(BackupStore::open("ftp://x/y").is_err());
    }
}
