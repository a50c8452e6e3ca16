//! Layer unpack: turns one layer stream (gzip, zstd or plain tar) into a directory in
//! overlayfs format, refusing hostile input. OCI whiteouts become 0/0 character
//! devices, opaque markers become `trusted.overlay.opaque=y`. Hardlinks (inside the
//! layer), symlinks, `user.*`/`security.capability` xattrs, modes including
//! setuid/setgid/sticky, ownership and times are kept.
//!
//! Policy for hostile input (each is refused with an error naming the entry; the
//! caller unpacks into a temporary directory and deletes it on any error, so nothing
//! half-written is ever visible):
//! - `..` components and absolute paths (`./` prefixes are normalised away);
//! - any parent path component that is a symlink (checked with `openat2`
//!   `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`, Linux ≥ 5.6);
//! - hardlinks whose target is absolute, escapes, is missing from this layer, or is
//!   not a regular file, symlink or fifo;
//! - character and block devices ([`DevicePolicy::Refuse`], the default) — or they
//!   are skipped with [`DevicePolicy::Skip`]; fifos are allowed (they are inert
//!   files until opened in the guest);
//! - GNU sparse files, multi-volume and other exotic entry types;
//! - names or PAX headers over the limits, more entries or bytes than allowed;
//! - truncated streams, bad checksums, and a stream whose sha256 is not the
//!   expected diff-id.
//!
//! It owns the unpack of one stream into one directory; it must not decide where
//! layers live (the store does).

pub(crate) mod tar;
mod write;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::digest::{Digest, HashingReader};
use crate::media::Compression;

pub use write::OPAQUE_XATTR;

use self::tar::{Kind, TarReader};
use self::write::{LayerWriter, Meta};

/// What to do with character and block device entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Refuse the layer.
    Refuse,
    /// Leave the entry out and log it.
    Skip,
}

/// Limits applied to every layer.
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Maximum uncompressed stream size in bytes.
    pub max_total_bytes: u64,
    /// Maximum number of tar entries.
    pub max_entries: u64,
    /// Maximum path or link-target length in bytes (GNU long names included).
    pub max_path_len: usize,
    /// Maximum size of one PAX extended header.
    pub max_pax_header_size: u64,
    /// Device nodes.
    pub devices: DevicePolicy,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: 64 << 30,
            max_entries: 2_000_000,
            max_path_len: 4096,
            max_pax_header_size: 1 << 20,
            devices: DevicePolicy::Refuse,
        }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A `..` component.
    #[error("path escapes the layer (\"..\" component)")]
    DotDot,
    /// A path starting with `/`.
    #[error("absolute path")]
    Absolute,
    /// A parent component is a symlink.
    #[error("parent path traverses a symlink")]
    SymlinkInPath,
    /// A parent component exists and is not a directory.
    #[error("parent path is not a directory")]
    ParentNotDirectory,
    /// The parent must exist and does not.
    #[error("parent directory missing")]
    MissingParent,
    /// Resolution left the layer.
    #[error("path escapes the layer")]
    Escape,
    /// A hardlink target that is absolute or escapes.
    #[error("hardlink target outside the layer")]
    HardlinkOutside,
    /// A hardlink target not created earlier in this layer.
    #[error("hardlink target is not in this layer")]
    HardlinkTargetMissing,
    /// A hardlink to a directory, device, or the like.
    #[error("hardlink target is not a regular file, symlink or fifo")]
    HardlinkTargetType,
    /// A hardlink to a whiteout.
    #[error("hardlink to a whiteout")]
    HardlinkToWhiteout,
    /// Character or block device under [`DevicePolicy::Refuse`].
    #[error("device node (refused by policy)")]
    DeviceNode,
    /// An entry type moat does not unpack.
    #[error("unsupported tar entry type {:?}", char::from(*.0))]
    UnsupportedType(u8),
    /// A feature not supported yet.
    #[error("{0}")]
    Unsupported(&'static str),
    /// NUL byte in a name.
    #[error("NUL byte in a name")]
    NulInName,
    /// An empty symlink target.
    #[error("empty symlink target")]
    EmptyLinkTarget,
    /// A whiteout with an invalid name.
    #[error("invalid whiteout name")]
    BadWhiteout,
    /// A non-directory entry for the layer root.
    #[error("the layer root can only be a directory")]
    RootNotDirectory,
    /// A uid or gid that does not fit Linux's 32-bit ids.
    #[error("uid or gid out of range")]
    IdOutOfRange,
}

/// Unpack errors. Messages leave out the layer; the store adds it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Hostile or unsupported input.
    #[error("entry {entry:?}: {reason}")]
    Refused {
        /// The entry's name as written in the tar (lossy, truncated).
        entry: String,
        /// Why.
        reason: Refusal,
    },
    /// A filesystem call failed.
    #[error("entry {entry:?}: {op}: {source}")]
    Io {
        /// The entry.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Reading or decompressing the stream failed.
    #[error("read layer stream: {0}")]
    Read(io::Error),
    /// The stream ended early.
    #[error("truncated tar stream: {0}")]
    Truncated(String),
    /// Not a well-formed tar stream.
    #[error("corrupt tar stream: {0}")]
    Corrupt(String),
    /// A configured limit was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The uncompressed stream is not the expected diff-id.
    #[error("diff-id mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// From the image config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// Setting up the destination failed.
    #[error("prepare {path}: {source}")]
    Setup {
        /// The destination.
        path: String,
        /// The error.
        source: io::Error,
    },
}

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed stream.
    pub diff_id: Digest,
    /// Length of the uncompressed stream.
    pub tar_size: u64,
    /// Bytes of regular-file data (what Docker reports as the layer size).
    pub size: u64,
    /// Tar entries read.
    pub entries: u64,
}

/// Splits a tar path into components, dropping `.` and empty ones and refusing
/// `..` and absolute paths.
pub(crate) fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, Refusal> {
    if path.first() == Some(&b'/') {
        return Err(Refusal::Absolute);
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::DotDot),
            c if c.contains(&0) => return Err(Refusal::NulInName),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Wraps a compressed stream in its decoder.
pub fn decoder<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Reads up to 4 magic bytes and gives back a reader that still yields them.
pub fn sniff<R: Read>(mut r: R) -> io::Result<(Compression, impl Read)> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let c = Compression::from_magic(&head[..n]);
    Ok((c, io::Cursor::new(head).take(n as u64).chain(r)))
}

/// Unpacks a possibly compressed layer stream into `dest` (an existing, empty
/// directory). `declared` is the compression the media type claims, if any: a
/// stream whose magic disagrees (gzip declared, something else found) is refused.
/// `expected` is the diff-id from the image config, if known.
pub fn unpack_layer<R: Read>(
    r: R,
    declared: Option<Compression>,
    expected: Option<&Digest>,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let (found, r) = sniff(r).map_err(UnpackError::Read)?;
    let compression = match declared {
        Some(Compression::None) | None => found,
        Some(d) if d == found => d,
        Some(d) => {
            return Err(UnpackError::Corrupt(format!(
                "media type says {} but the stream is {}",
                d.name(),
                found.name()
            )))
        }
    };
    let dec = decoder(r, compression).map_err(UnpackError::Read)?;
    unpack_tar(dec, expected, dest, limits)
}

/// Unpacks an uncompressed tar stream into `dest` (an existing, empty directory).
pub fn unpack_tar<R: Read>(
    r: R,
    expected: Option<&Digest>,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let mut hr = HashingReader::new(LimitedReader {
        inner: r,
        left: limits.max_total_bytes,
    });
    let mut writer = LayerWriter::open(dest)?;
    let mut entries = 0u64;
    let mut size = 0u64;
    {
        let mut tr = TarReader::new(&mut hr, limits);
        let mut buf = vec![0u8; 256 * 1024];
        while let Some(e) = tr.next_entry()? {
            entries += 1;
            if entries > limits.max_entries {
                return Err(UnpackError::Limit(format!(
                    "more than {} entries",
                    limits.max_entries
                )));
            }
            let label = String::from_utf8_lossy(&e.path[..e.path.len().min(200)]).into_owned();
            let refuse = |reason| UnpackError::Refused {
                entry: label.clone(),
                reason,
            };
            let comps = normalize(&e.path).map_err(refuse)?;
            let uid = u32::try_from(e.uid)
                .ok()
                .filter(|&u| u != u32::MAX)
                .ok_or_else(|| refuse(Refusal::IdOutOfRange))?;
            let gid = u32::try_from(e.gid)
                .ok()
                .filter(|&g| g != u32::MAX)
                .ok_or_else(|| refuse(Refusal::IdOutOfRange))?;
            let meta = Meta {
                mode: e.mode,
                uid,
                gid,
                mtime: e.mtime,
                atime: e.atime,
                xattrs: e.xattrs.clone(),
            };
            let Some((name, parents)) = comps.split_last() else {
                // The layer root itself.
                if e.kind != Kind::Dir {
                    return Err(refuse(Refusal::RootNotDirectory));
                }
                writer.root_meta(&label, &meta)?;
                continue;
            };
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                if hidden == b".wh..opq" {
                    writer.opaque(&label, parents)?;
                } else if hidden.starts_with(b".wh.") {
                    // aufs metadata (.wh..wh.plnk, ...): not part of the image.
                } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(refuse(Refusal::BadWhiteout));
                } else {
                    writer.whiteout(&label, parents, hidden, &meta)?;
                }
                continue;
            }
            match e.kind {
                Kind::Dir => writer.mkdir(&label, &comps, &meta)?,
                Kind::File => {
                    size += e.size;
                    let tr = &mut tr;
                    let buf = &mut buf;
                    let label2 = label.clone();
                    writer.file(&label, &comps, &meta, &mut |f: &mut File| loop {
                        let n = tr.read_data(buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        f.write_all(&buf[..n]).map_err(|source| UnpackError::Io {
                            entry: label2.clone(),
                            op: "write file",
                            source,
                        })?;
                    })?;
                }
                Kind::Symlink => writer.symlink(&label, &comps, &e.link, &meta)?,
                Kind::Hardlink => {
                    if e.link.first() == Some(&b'/') {
                        return Err(refuse(Refusal::HardlinkOutside));
                    }
                    let target =
                        normalize(&e.link).map_err(|_| refuse(Refusal::HardlinkOutside))?;
                    if target.is_empty() {
                        return Err(refuse(Refusal::HardlinkTargetType));
                    }
                    writer.hardlink(&label, &comps, &target)?;
                }
                Kind::Fifo => writer.fifo(&label, &comps, &meta)?,
                Kind::CharDevice | Kind::BlockDevice => match limits.devices {
                    DevicePolicy::Refuse => return Err(refuse(Refusal::DeviceNode)),
                    DevicePolicy::Skip => {
                        tracing::warn!(entry = %label, "skipping device node in layer");
                    }
                },
            }
        }
        // Whatever follows the end-of-archive marker is part of the diff-id.
        let mut rest = tr.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(stream_error)?;
    }
    let dropped: Vec<String> = writer
        .dropped_xattrs()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if !dropped.is_empty() {
        tracing::debug!(?dropped, "xattrs not applied (policy)");
    }
    writer.finish()?;
    let (diff_id, tar_size, _) = hr.finish();
    if let Some(expected) = expected {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(UnpackStats {
        diff_id,
        tar_size,
        size,
        entries,
    })
}

/// Maps a stream read error: early EOF is truncation, the size cap is a limit.
pub(crate) fn stream_error(e: io::Error) -> UnpackError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => UnpackError::Truncated("unexpected end of stream".into()),
        io::ErrorKind::FileTooLarge => UnpackError::Limit(e.to_string()),
        _ => UnpackError::Read(e),
    }
}

/// Stops a stream after `left` bytes, with an error, so a decompression bomb
/// cannot run forever.
struct LimitedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Anything more is over the limit; a zero-length probe is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "uncompressed layer exceeds the size limit",
                )),
            };
        }
        let max = usize::try_from(self.left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
