//! This machine's unpacked slugs: fetched from the slug store, checked, unpacked once per app
//! and slug, readable by that app's user only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pier_model::platform::SlugRef;
use pier_slug::archive::{self, Limits};
use pier_slug::SlugStore;
use tokio::sync::Mutex;

/// Unpacked slugs under `<workdir>/slugs/<app>-<digest>`.
pub struct SlugCache {
    dir: PathBuf,
    store: SlugStore,
    /// One lock per slug: two instances of one release unpack it once.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl SlugCache {
    pub fn new(workdir: &Path, store: SlugStore) -> std::io::Result<Self> {
        let dir = workdir.join("slugs");
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o711)?;
        Ok(SlugCache {
            dir,
            store,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// The directory of `app`'s slug, unpacked if it was not yet. With `gid`, the directory is
    /// made readable by that group only (the app's user), not by other apps.
    pub async fn unpacked(
        &self,
        app: &str,
        slug: &SlugRef,
        gid: Option<u32>,
    ) -> Result<PathBuf, String> {
        let name = format!("{app}-{}", slug.digest);
        let lock = {
            let mut locks = self.locks.lock().await;
            locks.entry(name.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let dest = self.dir.join(&name);
        if dest.join(".pier-unpacked").exists() {
            return Ok(dest);
        }
        let store = self.store.clone();
        let slug = slug.clone();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)
                .map_err(|e| format!("cannot make {}: {e}", tmp.display()))?;
            set_mode(&tmp, 0o700).map_err(|e| e.to_string())?;
            let bytes = store.get(&slug).map_err(|e| e.to_string())?;
            archive::unpack(&bytes[..], &tmp, Limits::default())
                .map_err(|e| format!("cannot unpack slug {}: {e}", slug.digest))?;
            std::fs::write(tmp.join(".pier-unpacked"), b"")
                .map_err(|e| format!("cannot write to {}: {e}", tmp.display()))?;
            let _ = std::fs::remove_dir_all(&dest2);
            std::fs::rename(&tmp, &dest2)
                .map_err(|e| format!("cannot move the slug in place: {e}"))?;
            Ok(())
        })
        .await
        .map_err(|e| format!("unpack task failed: {e}"))??;
        if let Some(gid) = gid {
            // Root owns the files (the app cannot change its code); the app's group may enter.
            std::os::unix::fs::chown(&dest, None, Some(gid))
                .map_err(|e| format!("chown {}: {e}", dest.display()))?;
            set_mode(&dest, 0o750).map_err(|e| e.to_string())?;
        } else {
            set_mode(&dest, 0o755).map_err(|e| e.to_string())?;
        }
        Ok(dest)
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
