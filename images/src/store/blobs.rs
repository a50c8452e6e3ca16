//! Content-addressed blobs under `blobs/sha256/<hex>`: verified while written
//! (temp file in `tmp/`, sha256 on the fly, fsync, rename), read back whole for
//! small documents or streamed for layers. Owns the blob files only.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::{io_err, Lease, Store, StoreError};
use crate::digest::{Digest, Hasher};
use crate::fsutil;

/// Writes one blob; nothing is visible under `blobs/` until [`BlobWriter::commit`]
/// has verified the digest. Dropping it without commit deletes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    blobs_dir: PathBuf,
    durable: bool,
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: Hasher,
    expected: Option<Digest>,
    expected_size: Option<u64>,
    max_size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.hasher.len() + buf.len() as u64;
        // A descriptor cannot lift the store's own cap.
        if after
            > self
                .expected_size
                .unwrap_or(self.max_size)
                .min(self.max_size)
        {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                match self.expected_size {
                    Some(s) => format!("blob larger than its descriptor ({s} bytes)"),
                    None => format!("blob larger than {} bytes", self.max_size),
                },
            ));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Verifies the digest (and size, if one was expected), makes the blob durable
    /// and moves it into place, protected by `lease` until the caller records an
    /// image. Returns its digest.
    pub fn commit(self, lease: &mut Lease) -> Result<Digest, StoreError> {
        let tmp = self.file.into_inner().map_err(|e| StoreError::Io {
            op: "write blob",
            path: PathBuf::from("(temp)"),
            source: e.into_error(),
        })?;
        let len = self.hasher.len();
        let actual = self.hasher.finish();
        if let Some(size) = self.expected_size {
            if size != len {
                return Err(StoreError::SizeMismatch {
                    digest: actual.to_string(),
                    expected: size,
                    actual: len,
                });
            }
        }
        if let Some(expected) = self.expected {
            if expected != actual {
                return Err(StoreError::DigestMismatch { expected, actual });
            }
        }
        lease.add(&actual);
        let dest = self.blobs_dir.join(actual.hex());
        if dest.exists() {
            return Ok(actual);
        }
        if self.durable {
            tmp.as_file()
                .sync_all()
                .map_err(io_err("fsync", tmp.path()))?;
        }
        let tmp_path = tmp.path().to_owned();
        tmp.persist(&dest)
            .map_err(|e| io_err("rename blob", tmp_path)(e.error))?;
        if self.durable {
            fsutil::fsync_dir(&self.blobs_dir).map_err(io_err("fsync", &self.blobs_dir))?;
        }
        Ok(actual)
    }
}

impl Store {
    /// Where a blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// True if the blob is in the store.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64, StoreError> {
        match fs::metadata(self.blob_path(d)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobMissing(d.clone()))
            }
            Err(e) => Err(io_err("stat blob", self.blob_path(d))(e)),
        }
    }

    /// Opens a stored blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        match File::open(self.blob_path(d)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobMissing(d.clone()))
            }
            Err(e) => Err(io_err("open blob", self.blob_path(d))(e)),
        }
    }

    /// Reads a small stored blob whole, re-verifying its digest.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let f = self.open_blob(d)?;
        let mut data = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut data)
            .map_err(io_err("read blob", self.blob_path(d)))?;
        if data.len() as u64 > max {
            return Err(StoreError::Invalid(format!(
                "read blob {d}: larger than {max} bytes"
            )));
        }
        let actual = Digest::of_bytes(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Starts writing a blob. `expected` and `expected_size` are checked at
    /// commit (the size also while writing, so a hostile source cannot send more).
    pub fn blob_writer(
        &self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        let tmp_dir = self.tmp_dir();
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp_dir)
            .map_err(io_err("create temp blob in", &tmp_dir))?;
        Ok(BlobWriter {
            blobs_dir: self.root.join("blobs/sha256"),
            durable: self.opts.durable,
            file: BufWriter::with_capacity(1 << 20, tmp),
            hasher: Hasher::new(),
            expected: expected.cloned(),
            expected_size,
            max_size: self.opts.limits.max_total_bytes,
        })
    }

    /// Stores `data` as a blob (protected by `lease`) and returns its digest.
    pub fn put_blob(&self, data: &[u8], lease: &mut Lease) -> Result<Digest, StoreError> {
        let d = Digest::of_bytes(data);
        lease.add(&d);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer(Some(&d), Some(data.len() as u64))?;
        w.write_all(data)
            .map_err(io_err("write blob", self.blob_path(&d)))?;
        w.commit(lease)
    }
}
