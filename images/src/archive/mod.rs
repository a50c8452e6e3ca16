//! Image archives: `docker save`/`docker load` tarballs (legacy and Docker 25+
//! layouts, several images per archive), OCI image layouts (`oci-layout`,
//! `index.json`, `blobs/`) as directories or tarballs, and `docker import` of a
//! plain rootfs tarball.
//!
//! An archive is hostile input. A tarball is first staged: each entry's path is
//! normalised (no `..`, no absolute paths), small JSON documents are kept in
//! memory and the rest written under the store's `tmp/` while hashed; symlinks
//! (Docker's legacy save links duplicate layers) resolve only inside the archive.
//! Everything read from it is then verified (config digests = image IDs,
//! layer diff-ids, blob digests) on its way into the store.
//!
//! Owns the archive formats; it writes to the store only through its API.

mod docker;
mod import;
mod oci;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use docker::{load, save};
pub use import::{import_rootfs, ImportOptions};
pub use oci::{export_oci_dir, export_oci_tar, import_oci_dir};

use crate::digest::{Digest, HashingWriter};
use crate::manifest::DocumentError;
use crate::store::{Store, StoreError};
use crate::unpack::{self, tar::Kind, tar::TarReader, UnpackError, UnpackLimits};
use crate::ImageRef;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive's structure is wrong or it breaks policy.
    #[error("{op}: {reason}")]
    Invalid {
        /// load, save, import, export.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// The archive's tar stream is bad.
    #[error("{op}: read archive: {source}")]
    Tar {
        /// The operation.
        op: &'static str,
        /// The error.
        source: UnpackError,
    },
    /// Reading or writing a file or stream failed.
    #[error("{op}: {what}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// On what.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A bad document.
    #[error("{op}: {source}")]
    Document {
        /// The operation.
        op: &'static str,
        /// The error.
        source: DocumentError,
    },
    /// The store failed (including layer unpack refusals).
    #[error("{op}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The error.
        source: StoreError,
    },
}

pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid {
        op,
        reason: reason.into(),
    }
}

pub(crate) fn store_err(op: &'static str) -> impl Fn(StoreError) -> ArchiveError {
    move |source| ArchiveError::Store { op, source }
}

pub(crate) fn doc_err(op: &'static str) -> impl Fn(DocumentError) -> ArchiveError {
    move |source| ArchiveError::Document { op, source }
}

pub(crate) fn io_err(
    op: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { op, what, source }
}

/// An image an archive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Image ID.
    pub id: Digest,
    /// Tags given to it.
    pub tags: Vec<ImageRef>,
}

/// Read access to an archive's files by normalised path.
pub(crate) trait Source {
    fn exists(&self, path: &str) -> bool;
    fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>, ArchiveError>;
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ArchiveError>;
}

/// Normalises an archive path; refuses `..` and absolute paths.
pub(crate) fn norm(op: &'static str, path: &str) -> Result<String, ArchiveError> {
    let comps = unpack::normalize(path.as_bytes()).map_err(|r| {
        invalid(
            op,
            format!(
                "entry {:?}: {r}",
                path.chars().take(200).collect::<String>()
            ),
        )
    })?;
    let parts: Vec<&str> = comps
        .iter()
        .map(|c| std::str::from_utf8(c).map_err(|_| invalid(op, "non-UTF-8 entry name")))
        .collect::<Result<_, _>>()?;
    Ok(parts.join("/"))
}

enum Staged {
    Mem(Vec<u8>),
    File(PathBuf),
}

/// A tarball read once into memory (documents) and the store's `tmp/` (blobs).
pub(crate) struct Staging {
    _dir: tempfile::TempDir,
    files: HashMap<String, Staged>,
    symlinks: HashMap<String, String>,
}

/// Largest file kept in memory while staging.
const SMALL: u64 = 1 << 20;
/// Most bytes kept in memory while staging.
const MEM_BUDGET: u64 = 64 << 20;

fn is_document(path: &str) -> bool {
    path.ends_with(".json")
        || path == "repositories"
        || path == "oci-layout"
        || path.ends_with("/json")
        || path.ends_with("VERSION")
}

impl Staging {
    /// Reads a (possibly gzip or zstd compressed) tarball.
    pub(crate) fn read<R: Read>(
        op: &'static str,
        store: &Store,
        r: R,
    ) -> Result<Self, ArchiveError> {
        let limits: &UnpackLimits = &store.options().limits;
        let (c, r) = unpack::sniff(r).map_err(io_err(op, "archive"))?;
        let dec = unpack::decoder(r, c).map_err(io_err(op, "archive"))?;
        let dir = tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(store.tmp_dir())
            .map_err(io_err(op, "create staging directory"))?;
        let mut tr = TarReader::new(dec, limits);
        let mut files = HashMap::new();
        let mut symlinks = HashMap::new();
        let mut mem = 0u64;
        let mut total = 0u64;
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let tar_err = |source| ArchiveError::Tar { op, source };
        while let Some(e) = tr.next_entry().map_err(tar_err)? {
            n += 1;
            if n > 100_000 {
                return Err(invalid(op, "more than 100000 entries"));
            }
            let name = String::from_utf8(e.path.clone())
                .map_err(|_| invalid(op, "non-UTF-8 entry name"))?;
            let path = norm(op, &name)?;
            match e.kind {
                Kind::Dir => {}
                Kind::File => {
                    total += e.size;
                    if total > limits.max_total_bytes {
                        return Err(invalid(op, "archive larger than the size limit"));
                    }
                    if e.size <= SMALL && is_document(&path) && mem + e.size <= MEM_BUDGET {
                        mem += e.size;
                        let mut data = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
                        loop {
                            let k = tr.read_data(&mut buf).map_err(tar_err)?;
                            if k == 0 {
                                break;
                            }
                            data.extend_from_slice(&buf[..k]);
                        }
                        files.insert(path, Staged::Mem(data));
                    } else {
                        let p = dir.path().join(format!("{n}"));
                        let f = File::create(&p).map_err(io_err(op, "staging file"))?;
                        let mut w = io::BufWriter::with_capacity(1 << 20, f);
                        loop {
                            let k = tr.read_data(&mut buf).map_err(tar_err)?;
                            if k == 0 {
                                break;
                            }
                            w.write_all(&buf[..k]).map_err(io_err(op, "staging file"))?;
                        }
                        w.flush().map_err(io_err(op, "staging file"))?;
                        files.insert(path, Staged::File(p));
                    }
                    symlinks.remove(&norm(op, &name)?);
                }
                Kind::Symlink | Kind::Hardlink => {
                    let target = String::from_utf8(e.link.clone())
                        .map_err(|_| invalid(op, "non-UTF-8 link target"))?;
                    // Symlinks are relative to their directory; hardlinks to the root.
                    let full = if e.kind == Kind::Symlink {
                        if target.starts_with('/') {
                            return Err(invalid(op, format!("entry {path:?}: absolute symlink")));
                        }
                        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                        resolve_relative(op, parent, &target)?
                    } else {
                        norm(op, &target)?
                    };
                    files.remove(&path);
                    symlinks.insert(path, full);
                }
                _ => {
                    return Err(invalid(
                        op,
                        format!("entry {path:?}: unexpected entry type in an image archive"),
                    ))
                }
            }
        }
        Ok(Self {
            _dir: dir,
            files,
            symlinks,
        })
    }

    fn resolve(&self, path: &str) -> Option<&Staged> {
        let mut p = path.to_owned();
        for _ in 0..8 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            p = self.symlinks.get(&p)?.clone();
        }
        None
    }
}

/// Resolves `target` relative to directory `parent` inside the archive.
fn resolve_relative(op: &'static str, parent: &str, target: &str) -> Result<String, ArchiveError> {
    let mut out: Vec<&str> = if parent.is_empty() {
        Vec::new()
    } else {
        parent.split('/').collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(invalid(
                        op,
                        format!("link target {target:?} leaves the archive"),
                    ));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

impl Source for Staging {
    fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        match self.resolve(path) {
            Some(Staged::Mem(d)) if d.len() as u64 <= max => Ok(d.clone()),
            Some(Staged::Mem(_)) => {
                Err(invalid("load", format!("{path}: larger than {max} bytes")))
            }
            Some(Staged::File(p)) => {
                let f = File::open(p).map_err(io_err("load", path))?;
                let mut data = Vec::new();
                f.take(max + 1)
                    .read_to_end(&mut data)
                    .map_err(io_err("load", path))?;
                if data.len() as u64 > max {
                    return Err(invalid("load", format!("{path}: larger than {max} bytes")));
                }
                Ok(data)
            }
            None => Err(invalid("load", format!("{path}: not in the archive"))),
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ArchiveError> {
        match self.resolve(path) {
            Some(Staged::Mem(d)) => Ok(Box::new(&d[..])),
            Some(Staged::File(p)) => Ok(Box::new(File::open(p).map_err(io_err("load", path))?)),
            None => Err(invalid("load", format!("{path}: not in the archive"))),
        }
    }
}

/// A directory (an OCI layout on disk). Paths resolve with `openat2`
/// `RESOLVE_BENEATH`, so symlinks inside may not leave it.
pub(crate) struct DirSource {
    root: OwnedFd,
    display: PathBuf,
}

impl DirSource {
    pub(crate) fn open(op: &'static str, dir: &Path) -> Result<Self, ArchiveError> {
        let f = File::open(dir).map_err(io_err(op, dir.display().to_string()))?;
        Ok(Self {
            root: OwnedFd::from(f),
            display: dir.to_owned(),
        })
    }

    fn file(&self, path: &str) -> io::Result<File> {
        let how = nix::fcntl::OpenHow::new()
            .flags(nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC)
            .resolve(
                nix::fcntl::ResolveFlag::RESOLVE_BENEATH
                    | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = nix::fcntl::openat2(self.root.as_raw_fd(), path, how)?;
        // SAFETY: openat2 just returned this descriptor; nobody else owns it.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl Source for DirSource {
    fn exists(&self, path: &str) -> bool {
        self.file(path).is_ok()
    }

    fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        let what = format!("{}/{path}", self.display.display());
        let f = self.file(path).map_err(io_err("import", what.clone()))?;
        let mut data = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut data)
            .map_err(io_err("import", what.clone()))?;
        if data.len() as u64 > max {
            return Err(invalid(
                "import",
                format!("{what}: larger than {max} bytes"),
            ));
        }
        Ok(data)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ArchiveError> {
        let what = format!("{}/{path}", self.display.display());
        Ok(Box::new(self.file(path).map_err(io_err("import", what))?))
    }
}

/// Reads a small document from a source and checks it against a digest.
pub(crate) fn read_verified(
    op: &'static str,
    src: &dyn Source,
    path: &str,
    d: &Digest,
    max: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let data = src.read_small(path, max)?;
    let actual = Digest::of_bytes(&data);
    if actual != *d {
        return Err(invalid(
            op,
            format!("{path}: digest mismatch (expected {d}, got {actual})"),
        ));
    }
    Ok(data)
}

/// Copies a stream into a tar entry of exactly `size` bytes whose sha256 must be
/// `expected` (a stored layer decompressed on the fly, for instance).
pub(crate) struct Verified<R> {
    inner: HashingWriter<io::Sink>,
    r: R,
    left: u64,
    expected: Digest,
}

impl<R: Read> Verified<R> {
    pub(crate) fn new(r: R, size: u64, expected: Digest) -> Self {
        Self {
            inner: HashingWriter::new(io::sink()),
            r,
            left: size,
            expected,
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.r.read(&mut probe)? != 0 {
                return Err(io::Error::other("stored layer longer than recorded"));
            }
            let h = std::mem::replace(&mut self.inner, HashingWriter::new(io::sink()));
            let (d, _, _) = h.finish();
            if d != self.expected {
                return Err(io::Error::other(format!(
                    "stored layer does not match its diff-id {} (got {d})",
                    self.expected
                )));
            }
            // Make the check idempotent if called again.
            self.expected = Digest::of_bytes(b"");
            return Ok(0);
        }
        let max = usize::try_from(self.left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = self.r.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored layer shorter than recorded",
            ));
        }
        self.inner.write_all(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a stored layer blob decompressed.
pub(crate) fn open_layer_tar<'a>(
    store: &Store,
    blob: &Digest,
) -> Result<Box<dyn Read + 'a>, StoreError> {
    let f = store.open_blob(blob)?;
    let (c, r) = unpack::sniff(io::BufReader::with_capacity(1 << 20, f)).map_err(|source| {
        StoreError::Io {
            op: "read blob",
            path: store.blob_path(blob),
            source,
        }
    })?;
    let r: Box<dyn Read + 'a> = Box::new(r);
    unpack::decoder(r, c).map_err(|source| StoreError::Io {
        op: "decompress blob",
        path: store.blob_path(blob),
        source,
    })
}

#[cfg(test)]
mod tests;
