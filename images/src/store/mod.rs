//! The image store on disk. Layout under the root (0700):
//!
//! ```text
//! lock                      flock held while the store is open (one owner)
//! db.json                   image records and tags, replaced atomically
//! blobs/sha256/<hex>        manifests, indexes, configs, layer blobs
//! layers/sha256/<hex>/      one unpacked layer per diff-id (overlayfs format)
//! layers/meta/<hex>.json    its size and entry count
//! tmp/                      work in progress; emptied at open
//! ```
//!
//! Crash safety: content is written under `tmp/`, fsynced and renamed into place
//! (blobs and layer directories appear whole or not at all); `db.json` is replaced
//! atomically and only ever points at content already in place. Removal renames a
//! layer out of `layers/` before deleting it, so a half-deleted layer is never
//! visible. Leftovers of a crash are unreferenced content, removed by
//! [`Store::gc`].
//!
//! Owns everything under its root; it must not know about registries, archives or
//! containers (callers pass the set of image IDs that containers use).

mod blobs;
mod images;
mod layers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fsutil;
use crate::manifest::DocumentError;
use crate::platform::Platform;
use crate::reference::ReferenceError;
use crate::unpack::{UnpackError, UnpackLimits};

pub use blobs::BlobWriter;
pub use images::GcReport;
pub use layers::{blob_key, layer_key, IngestedLayer, LayerInfo, LayerTemp};

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Limits for every layer unpack.
    pub limits: UnpackLimits,
    /// fsync blobs and `syncfs` layer directories before they become visible, so a
    /// power loss cannot leave a committed but empty file. Tests may turn it off.
    pub durable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            limits: UnpackLimits::default(),
            durable: true,
        }
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error("open image store {0}: locked by another process")]
    Locked(PathBuf),
    /// A filesystem call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No image by that name.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short ID matching several images.
    #[error("resolve image {0:?}: ambiguous short id")]
    Ambiguous(String),
    /// An operation refused to keep the store consistent.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A blob's content does not match its digest.
    #[error("write blob {expected}: digest mismatch (got {actual})")]
    DigestMismatch {
        /// Wanted.
        expected: Digest,
        /// Got.
        actual: Digest,
    },
    /// A blob's length does not match its descriptor.
    #[error("write blob {digest}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Wanted.
        expected: u64,
        /// Got so far.
        actual: u64,
    },
    /// A missing blob.
    #[error("read blob {0}: not in the store")]
    BlobMissing(Digest),
    /// A missing layer.
    #[error("open layer {0}: not in the store")]
    LayerMissing(Digest),
    /// Store metadata that cannot be read.
    #[error("read {path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A layer failed to unpack.
    #[error("unpack layer {layer}: {source}")]
    Unpack {
        /// diff-id (or blob digest when the diff-id is not known yet).
        layer: Digest,
        /// The error.
        source: UnpackError,
    },
    /// A bad document (manifest, config).
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// An invalid request.
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { op, path, source }
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The stored blob (compressed or not).
    pub blob: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size.
    pub blob_size: u64,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image ID: the config digest.
    pub id: Digest,
    /// Config media type.
    pub config_media_type: String,
    /// The manifest blob.
    pub manifest: Digest,
    /// Its media type.
    pub manifest_media_type: String,
    /// The index the manifest was selected from, if any (kept for GC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// Normalised `name@sha256:...` references.
    #[serde(default)]
    pub repo_digests: BTreeSet<String>,
    /// The platform.
    pub platform: Platform,
    /// When the image entered the store (RFC 3339).
    pub added: String,
    /// When it was last tagged (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tag_time: Option<String>,
}

impl ImageRecord {
    /// Every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.id, &self.manifest]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter().map(|l| &l.blob))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Db {
    version: u32,
    images: BTreeMap<Digest, ImageRecord>,
    /// Normalised `name:tag` → image ID.
    tags: BTreeMap<String, Digest>,
}

const DB_VERSION: u32 = 1;

/// Per-key locks, usable from async and blocking code alike: one download or
/// unpack per blob or layer at a time. (A tokio mutex would panic when a
/// blocking caller happens to run on a runtime thread; this one only blocks.)
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    held: Mutex<HashSet<String>>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

/// Holds one key of a [`KeyedLocks`] until dropped.
#[derive(Debug)]
pub struct KeyGuard {
    key: String,
    locks: Arc<KeyedLocks>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        lock(&self.locks.held).remove(&self.key);
        self.locks.cv.notify_all();
        self.locks.notify.notify_waiters();
    }
}

impl KeyedLocks {
    fn try_take(&self, key: &str) -> bool {
        lock(&self.held).insert(key.to_owned())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.held).is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes is replaced whole (copy on write), so a panic
    // elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps blobs and layers alive while an operation that has written them has not
/// yet recorded an image that references them.
#[derive(Debug)]
pub struct Lease {
    table: Arc<Mutex<HashMap<Digest, usize>>>,
    held: Vec<Digest>,
}

impl Lease {
    /// Protects `d` until the lease is dropped.
    pub fn add(&mut self, d: &Digest) {
        *lock(&self.table).entry(d.clone()).or_default() += 1;
        self.held.push(d.clone());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        for d in self.held.drain(..) {
            if let Some(n) = t.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&d);
                }
            }
        }
    }
}

/// The image store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    opts: StoreOptions,
    _lock: File,
    db: Mutex<Db>,
    locks: Arc<KeyedLocks>,
    leases: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Only one `Store` may have a
    /// root open at a time, across processes.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        fsutil::create_private_dir(root).map_err(io_err("create image store", root))?;
        let lock_path = root.join("lock");
        let lock_file =
            fsutil::open_private_append(&lock_path).map_err(io_err("open", &lock_path))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::Locked(root.to_owned()));
            }
            return Err(io_err("lock", &lock_path)(e));
        }
        for d in [
            "blobs",
            "blobs/sha256",
            "layers",
            "layers/sha256",
            "layers/meta",
            "tmp",
        ] {
            let p = root.join(d);
            fsutil::ensure_dir(&p, 0o700).map_err(io_err("create", &p))?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
            let e = e.map_err(io_err("read", &tmp))?;
            fsutil::remove_path(&e.path()).map_err(io_err("clean", e.path()))?;
        }
        let db_path = root.join("db.json");
        let db = match fs::read(&db_path) {
            Ok(data) => {
                let db: Db = serde_json::from_slice(&data).map_err(|e| StoreError::Corrupt {
                    path: db_path.clone(),
                    reason: e.to_string(),
                })?;
                if db.version != DB_VERSION {
                    return Err(StoreError::Corrupt {
                        path: db_path,
                        reason: format!("version {} not supported", db.version),
                    });
                }
                db
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Db {
                version: DB_VERSION,
                ..Db::default()
            },
            Err(e) => return Err(io_err("read", &db_path)(e)),
        };
        Ok(Self {
            root: root.to_owned(),
            opts,
            _lock: lock_file,
            db: Mutex::new(db),
            locks: Arc::new(KeyedLocks::default()),
            leases: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Settings.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Directory for temporary work on the store's filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new, empty lease.
    pub fn lease(&self) -> Lease {
        Lease {
            table: self.leases.clone(),
            held: Vec::new(),
        }
    }

    /// Waits for exclusive use of `key` (async callers).
    pub async fn lock_key(&self, key: &str) -> KeyGuard {
        loop {
            // Register for the wake-up before checking, so a release between the
            // check and the wait is not missed.
            let notified = self.locks.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.locks.try_take(key) {
                return KeyGuard {
                    key: key.to_owned(),
                    locks: self.locks.clone(),
                };
            }
            notified.await;
        }
    }

    /// Waits for exclusive use of `key` (blocking callers; from async code prefer
    /// [`Store::lock_key`] or run the whole operation in `spawn_blocking`).
    pub fn lock_key_blocking(&self, key: &str) -> KeyGuard {
        let mut held = lock(&self.locks.held);
        while held.contains(key) {
            held = self.locks.cv.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        held.insert(key.to_owned());
        KeyGuard {
            key: key.to_owned(),
            locks: self.locks.clone(),
        }
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.db)
    }

    /// Applies `f` to a copy of the records, persists the copy atomically, and only
    /// then makes it current.
    fn update<T>(&self, f: impl FnOnce(&mut Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.update_keep(f).map(|(t, _)| t)
    }

    /// [`Store::update`], keeping the records locked (for a GC that must see
    /// exactly the state just written).
    fn update_keep<T>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError>,
    ) -> Result<(T, MutexGuard<'_, Db>), StoreError> {
        let mut db = self.db();
        let mut next = db.clone();
        let out = f(&mut next)?;
        let data = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::Corrupt {
            path: self.root.join("db.json"),
            reason: e.to_string(),
        })?;
        let path = self.root.join("db.json");
        fsutil::write_atomic(&path, &data).map_err(io_err("write", &path))?;
        *db = next;
        Ok((out, db))
    }
}

#[cfg(test)]
mod tests;
