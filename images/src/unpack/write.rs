//! Creates a layer's entries inside one directory without ever leaving it. Every
//! operation is relative to a directory fd: parent paths are opened with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`,
//! Linux ≥ 5.6) or walked one component at a time with `O_NOFOLLOW`, and final names
//! are created with `*at` calls that do not follow symlinks. Owns the on-disk shape
//! of a layer (overlayfs whiteouts, opaque directories); it must not parse tar.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::tar::Time;
use super::{Refusal, UnpackError};

/// The xattr overlayfs reads to make a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Ownership, permissions, times and xattrs of one entry.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory being filled with one layer.
pub(crate) struct LayerWriter {
    root: Rc<OwnedFd>,
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directory times, applied at the end (creating children changes them).
    dir_times: Vec<(Vec<u8>, Time, Option<Time>)>,
    /// Xattr names seen and not applied (policy or kernel refusal).
    dropped_xattrs: HashSet<Vec<u8>>,
}

fn io_err(entry: &str, op: &'static str, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        entry: entry.to_owned(),
        op,
        source: e.into(),
    }
}

fn refused(entry: &str, reason: Refusal) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_owned(),
        reason,
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by
    // nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn timespec(t: Time) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nanos))
}

/// What exists at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    None,
    Dir,
    Other { dev: u64, ino: u64 },
}

impl LayerWriter {
    /// Opens the (empty) directory that will hold the layer.
    pub(crate) fn open(dir: &Path) -> Result<Self, UnpackError> {
        let fd = openat(
            None,
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("", "open layer directory", e))?;
        let root = owned(fd);
        // The layer root is the container's "/": 0755 unless the tar says otherwise.
        std::os::unix::fs::fchown(&root, Some(0), Some(0))
            .map_err(|e| io_err("", "chown layer directory", e))?;
        let f = File::from(root.try_clone().map_err(|e| io_err("", "dup", e))?);
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err("", "chmod layer directory", e))?;
        Ok(Self {
            root: Rc::new(root),
            cache: None,
            dir_times: Vec::new(),
            dropped_xattrs: HashSet::new(),
        })
    }

    /// Names of xattrs seen in the layer and not applied (policy), for a log line.
    pub(crate) fn dropped_xattrs(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.dropped_xattrs.iter()
    }

    /// Opens the directory `comps` (relative to the root), refusing symlinks
    /// anywhere on the way. Missing directories are created (0755, root) when
    /// `create` is set, as tar extractors do for entries whose parents are implicit.
    fn dir(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Rc<OwnedFd>, UnpackError> {
        if comps.is_empty() {
            return Ok(self.root.clone());
        }
        let key = join(comps);
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return Ok(fd.clone());
            }
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let fd = match openat2(self.root.as_raw_fd(), os(&key), how) {
            Ok(fd) => Rc::new(owned(fd)),
            Err(Errno::ENOENT) if create => self.walk_create(entry, comps)?,
            Err(Errno::ENOENT) => return Err(refused(entry, Refusal::MissingParent)),
            Err(Errno::ELOOP) => return Err(refused(entry, Refusal::SymlinkInPath)),
            Err(Errno::ENOTDIR) => return Err(self.classify_notdir(entry, comps)),
            Err(Errno::EXDEV) => return Err(refused(entry, Refusal::Escape)),
            Err(Errno::ENOSYS) => {
                return Err(io_err(
                    entry,
                    "openat2 (needs Linux >= 5.6)",
                    io::Error::from_raw_os_error(libc::ENOSYS),
                ))
            }
            Err(e) => return Err(io_err(entry, "open parent directory", e)),
        };
        self.cache = Some((key, fd.clone()));
        Ok(fd)
    }

    /// Walks `comps` one at a time with `O_NOFOLLOW`, creating missing directories.
    fn walk_create(&mut self, entry: &str, comps: &[&[u8]]) -> Result<Rc<OwnedFd>, UnpackError> {
        let mut cur = self.root.clone();
        for c in comps {
            let open = |at: RawFd| {
                openat(
                    Some(at),
                    os(c),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            };
            let fd = match open(cur.as_raw_fd()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(
                        Some(cur.as_raw_fd()),
                        os(c),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(|e| io_err(entry, "create parent directory", e))?;
                    open(cur.as_raw_fd()).map_err(|e| io_err(entry, "open parent directory", e))?
                }
                Err(Errno::ELOOP) => return Err(refused(entry, Refusal::SymlinkInPath)),
                Err(Errno::ENOTDIR) => return Err(refused(entry, Refusal::ParentNotDirectory)),
                Err(e) => return Err(io_err(entry, "open parent directory", e)),
            };
            cur = Rc::new(owned(fd));
        }
        Ok(cur)
    }

    fn classify_notdir(&mut self, entry: &str, comps: &[&[u8]]) -> UnpackError {
        // Find the first component that is not a directory, to say why.
        let mut cur = self.root.clone();
        for c in comps {
            match fstatat(
                Some(cur.as_raw_fd()),
                os(c),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFLNK => {
                    return refused(entry, Refusal::SymlinkInPath)
                }
                Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR => {
                    match openat(
                        Some(cur.as_raw_fd()),
                        os(c),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(fd) => cur = Rc::new(owned(fd)),
                        Err(e) => return io_err(entry, "open parent directory", e),
                    }
                }
                _ => return refused(entry, Refusal::ParentNotDirectory),
            }
        }
        refused(entry, Refusal::ParentNotDirectory)
    }

    fn existing(
        &self,
        entry: &str,
        parent: &OwnedFd,
        name: &[u8],
    ) -> Result<Existing, UnpackError> {
        match fstatat(
            Some(parent.as_raw_fd()),
            os(name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR => Ok(Existing::Dir),
            Ok(st) => Ok(Existing::Other {
                dev: st.st_dev,
                ino: st.st_ino,
            }),
            Err(Errno::ENOENT) => Ok(Existing::None),
            Err(e) => Err(io_err(entry, "stat", e)),
        }
    }

    /// Removes whatever is at `name` (a later tar entry replaces an earlier one).
    fn clear(&mut self, entry: &str, parent: &OwnedFd, name: &[u8]) -> Result<(), UnpackError> {
        match self.existing(entry, parent, name)? {
            Existing::None => Ok(()),
            Existing::Other { .. } => unlinkat(
                Some(parent.as_raw_fd()),
                os(name),
                UnlinkatFlags::NoRemoveDir,
            )
            .map_err(|e| io_err(entry, "remove replaced entry", e)),
            Existing::Dir => {
                // remove_dir_all does not follow symlinks inside the tree; the path
                // goes through our verified parent fd.
                let mut p = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
                p.extend_from_slice(name);
                std::fs::remove_dir_all(Path::new(os(&p)))
                    .map_err(|e| io_err(entry, "remove replaced directory", e))?;
                self.cache = None;
                Ok(())
            }
        }
    }

    fn apply_xattrs_fd(
        &mut self,
        entry: &str,
        fd: &impl AsRawFd,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            if !xattr_allowed(name) {
                self.dropped_xattrs.insert(name.clone());
                continue;
            }
            let cname =
                CString::new(name.clone()).map_err(|_| refused(entry, Refusal::NulInName))?;
            // SAFETY: fd is open, cname is NUL-terminated, value points to
            // value.len() readable bytes.
            let rc = unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    cname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if rc != 0 {
                return Err(io_err(entry, "set xattr", io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn owner_mode_fd(&self, entry: &str, fd: &OwnedFd, meta: &Meta) -> Result<(), UnpackError> {
        std::os::unix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_err(entry, "chown", e))?;
        // chmod after chown: chown clears setuid/setgid bits.
        // SAFETY: fd is an open descriptor we own.
        let rc = unsafe { libc::fchmod(fd.as_raw_fd(), meta.mode & 0o7777) };
        if rc != 0 {
            return Err(io_err(entry, "chmod", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The root directory's own metadata (a `./` entry).
    pub(crate) fn root_meta(&mut self, entry: &str, meta: &Meta) -> Result<(), UnpackError> {
        let root = self.root.clone();
        self.owner_mode_fd(entry, &root, meta)?;
        self.apply_xattrs_fd(entry, &*root, &meta.xattrs)?;
        self.dir_times.push((Vec::new(), meta.mtime, meta.atime));
        Ok(())
    }

    /// A directory.
    pub(crate) fn mkdir(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (name, parents) = split(comps);
        let parent = self.dir(entry, parents, true)?;
        match self.existing(entry, &parent, name)? {
            Existing::Dir => {}
            Existing::None => mkdirat(
                Some(parent.as_raw_fd()),
                os(name),
                Mode::from_bits_truncate(0o700),
            )
            .map_err(|e| io_err(entry, "mkdir", e))?,
            Existing::Other { .. } => {
                self.clear(entry, &parent, name)?;
                mkdirat(
                    Some(parent.as_raw_fd()),
                    os(name),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(|e| io_err(entry, "mkdir", e))?;
            }
        }
        let fd = owned(
            openat(
                Some(parent.as_raw_fd()),
                os(name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(entry, "open directory", e))?,
        );
        self.owner_mode_fd(entry, &fd, meta)?;
        self.apply_xattrs_fd(entry, &fd, &meta.xattrs)?;
        self.dir_times.push((join(comps), meta.mtime, meta.atime));
        Ok(())
    }

    /// A regular file; `fill` writes its data.
    pub(crate) fn file(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        meta: &Meta,
        fill: &mut dyn FnMut(&mut File) -> Result<(), UnpackError>,
    ) -> Result<(), UnpackError> {
        let (name, parents) = split(comps);
        let parent = self.dir(entry, parents, true)?;
        self.clear(entry, &parent, name)?;
        let fd = owned(
            openat(
                Some(parent.as_raw_fd()),
                os(name),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| io_err(entry, "create file", e))?,
        );
        let mut f = File::from(fd);
        fill(&mut f)?;
        f.flush().map_err(|e| io_err(entry, "write file", e))?;
        let fd = OwnedFd::from(f);
        self.owner_mode_fd(entry, &fd, meta)?;
        self.apply_xattrs_fd(entry, &fd, &meta.xattrs)?;
        let atime = meta.atime.unwrap_or(meta.mtime);
        futimens(fd.as_raw_fd(), &timespec(atime), &timespec(meta.mtime))
            .map_err(|e| io_err(entry, "set file times", e))?;
        Ok(())
    }

    /// A symbolic link. Its target is stored verbatim and never followed by moat.
    pub(crate) fn symlink(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        if target.is_empty() {
            return Err(refused(entry, Refusal::EmptyLinkTarget));
        }
        let (name, parents) = split(comps);
        let parent = self.dir(entry, parents, true)?;
        self.clear(entry, &parent, name)?;
        symlinkat(os(target), Some(parent.as_raw_fd()), os(name))
            .map_err(|e| io_err(entry, "symlink", e))?;
        self.finish_by_name(entry, &parent, name, meta, false)
    }

    /// Ownership, xattrs and times of a name that is not opened (symlink, fifo,
    /// whiteout), through the parent fd without following the final name.
    fn finish_by_name(
        &mut self,
        entry: &str,
        parent: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        fchownat(
            Some(parent.as_raw_fd()),
            os(name),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(entry, "chown", e))?;
        if chmod {
            // Only for names this writer just created as non-symlinks.
            fchmodat(
                Some(parent.as_raw_fd()),
                os(name),
                Mode::from_bits_truncate(meta.mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(entry, "chmod", e))?;
        }
        if !meta.xattrs.is_empty() {
            let mut p = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
            p.extend_from_slice(name);
            let path = CString::new(p).map_err(|_| refused(entry, Refusal::NulInName))?;
            for (k, v) in &meta.xattrs {
                if !xattr_allowed(k) {
                    self.dropped_xattrs.insert(k.clone());
                    continue;
                }
                let key =
                    CString::new(k.clone()).map_err(|_| refused(entry, Refusal::NulInName))?;
                // SAFETY: both strings are NUL-terminated; v points to v.len() bytes.
                // lsetxattr does not follow the final symlink, and the path's prefix
                // is our verified parent fd.
                let rc = unsafe {
                    libc::lsetxattr(path.as_ptr(), key.as_ptr(), v.as_ptr().cast(), v.len(), 0)
                };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    // The kernel refuses user.* xattrs on symlinks and fifos.
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) {
                        self.dropped_xattrs.insert(k.clone());
                        continue;
                    }
                    return Err(io_err(entry, "set xattr", e));
                }
            }
        }
        let atime = meta.atime.unwrap_or(meta.mtime);
        utimensat(
            Some(parent.as_raw_fd()),
            os(name),
            &timespec(atime),
            &timespec(meta.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(entry, "set times", e))
    }

    /// A hard link to an earlier entry of this layer.
    pub(crate) fn hardlink(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        target: &[&[u8]],
    ) -> Result<(), UnpackError> {
        let (tname, tparents) = split(target);
        let tparent = match self.dir(entry, tparents, false) {
            Ok(fd) => fd,
            Err(UnpackError::Refused {
                reason: Refusal::MissingParent,
                ..
            }) => return Err(refused(entry, Refusal::HardlinkTargetMissing)),
            Err(e) => return Err(e),
        };
        if is_whiteout_name(tname) {
            return Err(refused(entry, Refusal::HardlinkToWhiteout));
        }
        let st = match fstatat(
            Some(tparent.as_raw_fd()),
            os(tname),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(refused(entry, Refusal::HardlinkTargetMissing)),
            Err(e) => return Err(io_err(entry, "stat hardlink target", e)),
        };
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt != libc::S_IFREG && fmt != libc::S_IFLNK && fmt != libc::S_IFIFO {
            return Err(refused(entry, Refusal::HardlinkTargetType));
        }
        let (name, parents) = split(comps);
        let parent = self.dir(entry, parents, true)?;
        if let Existing::Other { dev, ino } = self.existing(entry, &parent, name)? {
            if dev == st.st_dev && ino == st.st_ino {
                return Ok(());
            }
        }
        self.clear(entry, &parent, name)?;
        linkat(
            Some(tparent.as_raw_fd()),
            os(tname),
            Some(parent.as_raw_fd()),
            os(name),
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| io_err(entry, "hardlink", e))
    }

    /// A named pipe.
    pub(crate) fn fifo(
        &mut self,
        entry: &str,
        comps: &[&[u8]],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (name, parents) = split(comps);
        let parent = self.dir(entry, parents, true)?;
        self.clear(entry, &parent, name)?;
        mkfifoat(
            Some(parent.as_raw_fd()),
            os(name),
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(entry, "mkfifo", e))?;
        self.finish_by_name(entry, &parent, name, meta, true)
    }

    /// An OCI whiteout `.wh.<name>`, written as overlayfs does: a 0/0 character
    /// device named `<name>`.
    pub(crate) fn whiteout(
        &mut self,
        entry: &str,
        parents: &[&[u8]],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let parent = self.dir(entry, parents, true)?;
        self.clear(entry, &parent, name)?;
        mknodat(
            Some(parent.as_raw_fd()),
            os(name),
            SFlag::S_IFCHR,
            Mode::empty(),
            libc::makedev(0, 0),
        )
        .map_err(|e| io_err(entry, "create whiteout device", e))?;
        let meta = Meta {
            xattrs: Vec::new(),
            ..meta.clone()
        };
        self.finish_by_name(entry, &parent, name, &meta, false)
    }

    /// An OCI opaque marker `.wh..wh..opq`: the directory gets
    /// `trusted.overlay.opaque=y`.
    pub(crate) fn opaque(&mut self, entry: &str, dir: &[&[u8]]) -> Result<(), UnpackError> {
        let fd = self.dir(entry, dir, true)?;
        let name = CString::new(OPAQUE_XATTR).map_err(|_| refused(entry, Refusal::NulInName))?;
        // SAFETY: fd is an open directory; name is NUL-terminated; the value is one
        // readable byte.
        let rc =
            unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            return Err(io_err(
                entry,
                "set opaque xattr",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Applies directory times, deepest last-declared first.
    pub(crate) fn finish(mut self) -> Result<(), UnpackError> {
        self.cache = None;
        let times = std::mem::take(&mut self.dir_times);
        for (path, mtime, atime) in times.into_iter().rev() {
            let comps: Vec<&[u8]> = if path.is_empty() {
                Vec::new()
            } else {
                path.split(|&b| b == b'/').collect()
            };
            // A directory may have been replaced by a later entry; skip it then.
            let fd = match self.dir("", &comps, false) {
                Ok(fd) => fd,
                Err(UnpackError::Refused { .. }) => continue,
                Err(e) => return Err(e),
            };
            let atime = atime.unwrap_or(mtime);
            futimens(fd.as_raw_fd(), &timespec(atime), &timespec(mtime))
                .map_err(|e| io_err(&String::from_utf8_lossy(&path), "set directory times", e))?;
        }
        Ok(())
    }
}

fn split<'a, 'b>(comps: &'a [&'b [u8]]) -> (&'b [u8], &'a [&'b [u8]]) {
    match comps.split_last() {
        Some((last, parents)) => (last, parents),
        None => (b"", comps),
    }
}

fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(b".wh.")
}

/// Xattrs moat applies from a layer: `user.*` and file capabilities. `trusted.*`
/// (which would let an image forge overlayfs metadata such as redirects or opaque
/// flags), `security.selinux`, ACLs and anything else are dropped.
pub(crate) fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_policy() {
        assert!(xattr_allowed(b"user.foo"));
        assert!(xattr_allowed(b"security.capability"));
        assert!(!xattr_allowed(b"trusted.overlay.opaque"));
        assert!(!xattr_allowed(b"trusted.overlay.redirect"));
        assert!(!xattr_allowed(b"security.selinux"));
        assert!(!xattr_allowed(b"system.posix_acl_access"));
    }
}
