//! `docker import`: one rootfs tarball (plain, gzip or zstd) becomes a one-layer
//! image with a generated config. Owns only the mapping of import options to the
//! config.

use std::io::Read;

use super::{store_err, ArchiveError};
use crate::build::ImageBuilder;
use crate::digest::Digest;
use crate::manifest::RunConfig;
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::store::Store;

/// Options of `docker import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Tag to give the image.
    pub tag: Option<ImageRef>,
    /// Commit message (`-m`), stored as the config comment.
    pub message: Option<String>,
    /// Run config (`--change` already parsed by the caller).
    pub run_config: RunConfig,
    /// Platform; `None` = the host's.
    pub platform: Option<Platform>,
    /// Source shown in history (`-` for stdin, or a URL/path).
    pub source: Option<String>,
}

/// Imports a rootfs tarball as a new image; returns its ID.
pub fn import_rootfs<R: Read>(
    store: &Store,
    r: R,
    opts: &ImportOptions,
) -> Result<Digest, ArchiveError> {
    const OP: &str = "import";
    let mut b = ImageBuilder::new(store)
        .platform(opts.platform.clone().unwrap_or_else(Platform::host))
        .run_config(opts.run_config.clone());
    if let Some(m) = &opts.message {
        b = b.comment(m);
    }
    let comment = format!("Imported from {}", opts.source.as_deref().unwrap_or("-"));
    b.add_layer(store, r, "", Some(&comment))
        .map_err(store_err(OP))?;
    let tags: Vec<ImageRef> = opts.tag.iter().cloned().collect();
    b.commit(store, &tags).map_err(store_err(OP))
}
