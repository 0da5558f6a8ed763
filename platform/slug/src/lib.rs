//! Slugs: what a deploy uploads, what a build makes of it, and where the result is kept.
//!
//! A deploy uploads the app's directory as a gzipped tar ([`archive::pack_dir`], which leaves
//! out `.git` and what `.gitignore` ignores). The build unpacks it safely
//! ([`archive::unpack`]: nothing is written outside the build directory), reads its
//! `Procfile`, installs Python requirements when there are any ([`build`]), and packs the
//! result into a slug: content-addressed and checksummed, kept in the [`store::SlugStore`] and
//! unpacked the same way by every runner. Starting an instance never builds.
//!
//! This crate runs no server and knows nothing of Redis.
//!
//! Modules:
//! - [`archive`]: packing a directory, unpacking an upload or a slug with its checks.
//! - [`build`]: the build of one upload into a slug directory.
//! - [`manifest`]: `pier.toml`, the app's static directories.
//! - [`store`]: the slug store (a local directory).

pub mod archive;
pub mod build;
pub mod manifest;
pub mod store;

pub use archive::ArchiveError;
pub use manifest::{Manifest, ManifestError};
pub use store::SlugStore;
