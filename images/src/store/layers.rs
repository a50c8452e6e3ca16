//! Unpacked layers under `layers/sha256/<diff-id>/`, each unpacked once and shared
//! read-only by every image (and every guest) that uses it. A layer is unpacked
//! into `tmp/`, made durable with `syncfs`, described by `layers/meta/<hex>.json`
//! and then renamed into place; a directory under `layers/sha256/` is therefore
//! always complete. Owns the layer directories and their metadata only.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BlobWriter;
use super::{io_err, Lease, Store, StoreError};
use crate::digest::Digest;
use crate::fsutil;
use crate::media::{self, Compression};
use crate::unpack::{self, UnpackStats};

/// What the store knows about an unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Bytes of file data (Docker's layer size).
    pub size: u64,
    /// Length of the uncompressed tar (needed to write `docker save` archives).
    pub tar_size: u64,
    /// Tar entries.
    pub entries: u64,
}

/// A layer being unpacked: a temp directory that becomes the layer on
/// [`LayerTemp::commit`] and is deleted if dropped.
#[derive(Debug)]
pub struct LayerTemp {
    dir: tempfile::TempDir,
    layers_dir: PathBuf,
    meta_dir: PathBuf,
    durable: bool,
}

impl LayerTemp {
    /// Where to unpack.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the finished layer into place under its diff-id, protected by `lease`.
    pub fn commit(self, stats: &UnpackStats, lease: &mut Lease) -> Result<LayerInfo, StoreError> {
        let info = LayerInfo {
            diff_id: stats.diff_id.clone(),
            size: stats.size,
            tar_size: stats.tar_size,
            entries: stats.entries,
        };
        lease.add(&info.diff_id);
        let dest = self.layers_dir.join(info.diff_id.hex());
        if dest.exists() {
            // Someone else committed the same layer first; ours is dropped.
            return Ok(info);
        }
        if self.durable {
            let f = File::open(self.dir.path()).map_err(io_err("open", self.dir.path()))?;
            // SAFETY: syncfs on a descriptor we own; no memory is involved.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(io_err("syncfs", self.dir.path())(io::Error::last_os_error()));
            }
        }
        let meta_path = self.meta_dir.join(format!("{}.json", info.diff_id.hex()));
        let data = serde_json::to_vec(&info).map_err(|e| StoreError::Invalid(e.to_string()))?;
        fsutil::write_atomic(&meta_path, &data).map_err(io_err("write", &meta_path))?;
        let src = self.dir.keep();
        if let Err(e) = nix::fcntl::renameat2(
            None,
            &src,
            None,
            &dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            let _ = fsutil::remove_path(&src);
            if e == nix::errno::Errno::EEXIST {
                return Ok(info);
            }
            return Err(io_err("rename layer", &dest)(e.into()));
        }
        fsutil::fsync_dir(&self.layers_dir).map_err(io_err("fsync", &self.layers_dir))?;
        Ok(info)
    }
}

impl Store {
    /// Directory of an unpacked layer (whether or not it exists).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    fn layer_meta_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers/meta")
            .join(format!("{}.json", diff_id.hex()))
    }

    /// True if the layer is unpacked.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir() && self.layer_meta_path(diff_id).is_file()
    }

    /// Metadata of an unpacked layer.
    pub fn layer_info(&self, diff_id: &Digest) -> Result<LayerInfo, StoreError> {
        if !self.layer_path(diff_id).is_dir() {
            return Err(StoreError::LayerMissing(diff_id.clone()));
        }
        let p = self.layer_meta_path(diff_id);
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::LayerMissing(diff_id.clone()))
            }
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let info: LayerInfo = serde_json::from_slice(&data).map_err(|e| StoreError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if info.diff_id != *diff_id {
            return Err(StoreError::Corrupt {
                path: p,
                reason: "diff-id does not match the file name".into(),
            });
        }
        Ok(info)
    }

    /// A fresh temp directory to unpack a layer into.
    pub fn layer_temp(&self) -> Result<LayerTemp, StoreError> {
        let tmp = self.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&tmp)
            .map_err(io_err("create temp layer in", &tmp))?;
        Ok(LayerTemp {
            dir,
            layers_dir: self.root.join("layers/sha256"),
            meta_dir: self.root.join("layers/meta"),
            durable: self.opts.durable,
        })
    }

    /// Makes sure the layer `diff_id` is unpacked, from the stored blob `blob`
    /// (media type `media_type`). Blocking; waits if another caller is unpacking
    /// the same layer.
    pub fn ensure_layer_from_blob(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &Digest,
        lease: &mut Lease,
    ) -> Result<LayerInfo, StoreError> {
        let _g = self.lock_key_blocking(&layer_key(diff_id));
        self.unpack_blob_unlocked(blob, media_type, diff_id, lease)
    }

    /// [`Store::ensure_layer_from_blob`] for a caller that already holds the
    /// `layer:<hex>` lock.
    pub fn unpack_blob_unlocked(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &Digest,
        lease: &mut Lease,
    ) -> Result<LayerInfo, StoreError> {
        lease.add(diff_id);
        if self.has_layer(diff_id) {
            return self.layer_info(diff_id);
        }
        let f = self.open_blob(blob)?;
        let tmp = self.layer_temp()?;
        let stats = unpack::unpack_layer(
            BufReader::with_capacity(1 << 20, f),
            media::layer_compression(media_type),
            Some(diff_id),
            tmp.path(),
            &self.opts.limits,
        )
        .map_err(|source| StoreError::Unpack {
            layer: diff_id.clone(),
            source,
        })?;
        tmp.commit(&stats, lease)
    }

    /// Streams one layer blob into the store in a single pass: the bytes are
    /// stored as the blob (verified against `expected_blob` = digest and size, if
    /// given) and unpacked on the fly (verified against `expected_diff`, if given).
    /// If the layer is already unpacked only the blob is stored. Callers that know
    /// the digests hold `blob:<hex>` then `layer:<hex>` locks
    /// ([`blob_key`], [`layer_key`]) so concurrent ingests of one layer do the work
    /// once.
    pub fn ingest_layer<R: Read>(
        &self,
        r: R,
        media_type: Option<&str>,
        expected_blob: Option<(&Digest, u64)>,
        expected_diff: Option<&Digest>,
        lease: &mut Lease,
    ) -> Result<IngestedLayer, StoreError> {
        let declared = media_type.and_then(media::layer_compression);
        let writer = self.blob_writer(expected_blob.map(|b| b.0), expected_blob.map(|b| b.1))?;
        let mut tee = TeeReader { inner: r, writer };
        let label = expected_diff
            .or(expected_blob.map(|b| b.0))
            .cloned()
            .unwrap_or_else(|| Digest::of_bytes(b""));
        let unpack_err = |source| StoreError::Unpack {
            layer: label.clone(),
            source,
        };
        let (info, compression) = match expected_diff {
            Some(d) if self.has_layer(d) => {
                io::copy(&mut tee, &mut io::sink())
                    .map_err(|e| unpack_err(unpack::stream_error(e)))?;
                (self.layer_info(d)?, declared.unwrap_or(Compression::None))
            }
            _ => {
                let tmp = self.layer_temp()?;
                let (found, sniffed) =
                    unpack::sniff(&mut tee).map_err(|e| unpack_err(unpack::stream_error(e)))?;
                let compression = match declared {
                    Some(Compression::None) | None => found,
                    Some(d) if d == found => d,
                    Some(d) => {
                        return Err(unpack_err(unpack::UnpackError::Corrupt(format!(
                            "media type says {} but the stream is {}",
                            d.name(),
                            found.name()
                        ))))
                    }
                };
                let dec = unpack::decoder(sniffed, compression)
                    .map_err(|e| unpack_err(unpack::stream_error(e)))?;
                let stats = unpack::unpack_tar(dec, expected_diff, tmp.path(), &self.opts.limits)
                    .map_err(unpack_err)?;
                // Whatever the decoder left unread still belongs to the blob.
                io::copy(&mut tee, &mut io::sink())
                    .map_err(|e| unpack_err(unpack::stream_error(e)))?;
                // Verify the blob before the layer becomes visible.
                let blob_len = tee.writer.written();
                let blob = tee.writer.commit(lease)?;
                let info = tmp.commit(&stats, lease)?;
                return Ok(IngestedLayer {
                    blob,
                    blob_size: blob_len,
                    info,
                    compression,
                });
            }
        };
        let blob_len = tee.writer.written();
        let blob = tee.writer.commit(lease)?;
        lease.add(&info.diff_id);
        Ok(IngestedLayer {
            blob,
            blob_size: blob_len,
            info,
            compression,
        })
    }
}

/// Lock key for one blob.
pub fn blob_key(d: &Digest) -> String {
    format!("blob:{}", d.hex())
}

/// Lock key for one layer.
pub fn layer_key(d: &Digest) -> String {
    format!("layer:{}", d.hex())
}

/// A layer stored by [`Store::ingest_layer`].
#[derive(Debug, Clone)]
pub struct IngestedLayer {
    /// The blob as stored.
    pub blob: Digest,
    /// Its size.
    pub blob_size: u64,
    /// The unpacked layer.
    pub info: LayerInfo,
    /// The blob's compression.
    pub compression: Compression,
}

/// Copies everything read into a blob writer.
struct TeeReader<R> {
    inner: R,
    writer: BlobWriter,
}

impl<R: Read> Read for TeeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.writer.write_all(&buf[..n])?;
        Ok(n)
    }
}
