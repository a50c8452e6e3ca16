//! The file system the FUSE server serves: fuse-backend-rs's union file system
//! ([`Vfs`]) with one passthrough backend per mount, wrapped in [`ShareFs`], which
//! adds the policy the guest boundary needs and the library does not give.
//!
//! It owns the mapping from FUSE inodes to mounts and the per-request checks; it
//! must not touch the virtqueues (that is `worker.rs`) or the process's mount
//! namespace (that is `sandbox.rs`).
//!
//! What the wrapper adds to fuse-backend-rs 0.14, case by case:
//! - **read-only mounts**: passthrough has no read-only mode. Every mutating
//!   request (setattr, symlink, mknod, mkdir, unlink, rmdir, rename, link, create,
//!   open with a write access mode, `O_TRUNC` or `O_CREAT`, write, fallocate,
//!   setxattr, removexattr, access with `W_OK`) on an inode of a read-only mount,
//!   or of the pseudo root that holds several mounts, gets `EROFS`.
//! - **link/rename across mounts**: [`Vfs`] refuses them with `EINVAL`; the
//!   wrapper answers `EXDEV` first, as the kernel does for two mounts, so tools
//!   fall back to copying.
//! - **device nodes**: passthrough creates any node the guest asks for (as host
//!   root). The wrapper allows only the overlayfs whiteout, a character device
//!   0/0; other character and block devices get `EPERM`. Opening a node never
//!   reaches the host device either way: passthrough opens only regular files and
//!   directories (`EBADF` otherwise), and the sandbox mounts shares `nodev`.
//! - **guest-sized buffers**: `getxattr`/`listxattr` allocate the guest's `size`
//!   (up to 4 GiB) before asking the kernel; `readdir` allocates `size` too. The
//!   wrapper caps them at the kernel's own limits.
//! - **file flags on READ and WRITE**: passthrough copies the request's `flags`
//!   onto the host fd with `fcntl(F_SETFL)` when they differ from the open
//!   flags, and when that fails (`O_DIRECT` on a directory, say) it returns
//!   early, dropping a `File` it had built over the handle's fd: the fd is closed
//!   under the handle and closed again at RELEASE, and in between any fd the VMM
//!   opens may take its number. The wrapper records each handle's open flags and
//!   passes those, so passthrough never calls `fcntl` for the guest (found by
//!   the `fs_fuse` fuzz target). A guest's later `fcntl` on its FUSE file is not
//!   mirrored on the host fd; the guest kernel applies O_APPEND and O_DIRECT
//!   itself before it sends the request.
//!
//! What fuse-backend-rs already does, and the tests in `tests.rs` pin down:
//! `..` looked up at a mount root resolves to the root itself; names with `/`
//! are refused (`EINVAL`); lookups open with `O_PATH | O_NOFOLLOW`, so a symlink
//! is returned as a symlink (the guest resolves it in its own namespace) and a
//! lookup under a symlink inode fails (`ENOTDIR`); opening a symlink inode fails
//! (`EBADF`).

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::api::vfs::{Vfs, VfsInode};
use fuse_backend_rs::api::{VfsIndex, VfsOptions};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::config::{ValidConfig, ValidMount};
use super::FsError;

/// The top 8 bits of a [`Vfs`] inode number name the mount (0 is the pseudo root).
/// fuse-backend-rs keeps this private; `vfs_index_layout_matches_library` checks it.
const VFS_INDEX_SHIFT: u32 = 56;

/// `XATTR_SIZE_MAX`: the largest xattr value Linux stores.
const XATTR_SIZE_MAX: u32 = 65536;
/// `XATTR_LIST_MAX`: the largest xattr name list Linux returns.
const XATTR_LIST_MAX: u32 = 65536;
/// The largest readdir buffer worth allocating (the FUSE server's own message cap).
const MAX_READDIR_SIZE: u32 = 1 << 20;

/// Attribute and entry timeout for read-only mounts. Image layers are written once,
/// content-addressed, and never change while a container uses them.
const READ_ONLY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Attribute and entry timeout for read-write mounts, which the host (moatd's
/// `docker cp`, for instance) may change behind the guest's back.
const READ_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Where a FUSE inode lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The pseudo directories above several mounts; always read-only.
    Pseudo,
    /// Inside the mount with this [`VfsIndex`].
    Mount { index: VfsIndex, read_only: bool },
}

/// The union of a device's mounts with moat's boundary policy on top.
pub struct ShareFs {
    vfs: Vfs,
    /// `read_only[index]` for every mounted [`VfsIndex`]; `None` for unused ones.
    read_only: Vec<Option<bool>>,
    /// The mount at `/`, if the device is a plain share.
    root_mount: Option<VfsIndex>,
    /// The flags each open file handle was opened with, by (inode, handle):
    /// what READ and WRITE pass to passthrough (see the module doc).
    open_flags: Mutex<HashMap<(u64, u64), u32>>,
}

impl std::fmt::Debug for ShareFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFs")
            .field("mounts", &self.read_only.iter().flatten().count())
            .field("root_mount", &self.root_mount)
            .finish()
    }
}

fn passthrough_config(m: &ValidMount) -> Config {
    let (cache_policy, timeout) = if m.read_only {
        (CachePolicy::Always, READ_ONLY_TIMEOUT)
    } else {
        (CachePolicy::Auto, READ_WRITE_TIMEOUT)
    };
    Config {
        root_dir: m.host_dir_str.clone(),
        // Under a Vfs the backend is imported by us before mounting, and the Vfs
        // validates names (see `Vfs::symlink` etc.).
        do_import: false,
        // overlayfs in the guest needs trusted.overlay.* on every layer.
        xattr: true,
        cache_policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        // Writes reach the host file at once, so moatd sees the upper layer
        // (`docker diff`, `cp`, `commit`) without asking the VM.
        writeback: false,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        // O_PATH fds, not file handles: open_by_handle_at needs
        // CAP_DAC_READ_SEARCH and can reach any file on the host file system.
        inode_file_handles: false,
        // No DAX window.
        dax_file_size: None,
        ..Config::default()
    }
}

impl ShareFs {
    /// Opens every mount's host directory and builds the union.
    ///
    /// `PassthroughFs::import` sets the umask of the calling thread's `fs_struct`
    /// to 0, which is shared by every thread of the VMM; so this must run on a
    /// thread that called `unshare(CLONE_FS)` (see [`run_with_private_umask`]).
    fn build(config: &ValidConfig) -> Result<ShareFs, FsError> {
        let mut opts = VfsOptions {
            no_open: false,
            no_opendir: false,
            no_writeback: true,
            killpriv_v2: false,
            ..VfsOptions::default()
        };
        opts.out_opts.remove(FsOptions::PERFILE_DAX);
        let vfs = Vfs::new(opts);

        let mut read_only = vec![None; 256];
        let mut root_mount = None;
        for m in &config.mounts {
            let share_err = |source: io::Error| FsError::Share {
                tag: config.tag.clone(),
                guest_path: m.guest_path.clone(),
                host_dir: m.host_dir.clone(),
                source,
            };
            let backend = PassthroughFs::<()>::new(passthrough_config(m)).map_err(share_err)?;
            backend.import().map_err(share_err)?;
            let index =
                vfs.mount(Box::new(backend), &m.guest_path)
                    .map_err(|e| FsError::Mount {
                        tag: config.tag.clone(),
                        guest_path: m.guest_path.clone(),
                        reason: e.to_string(),
                    })?;
            read_only[usize::from(index)] = Some(m.read_only);
            if m.guest_path == "/" {
                root_mount = Some(index);
            }
        }
        Ok(ShareFs {
            vfs,
            read_only,
            root_mount,
            open_flags: Mutex::new(HashMap::new()),
        })
    }

    /// The open-flags table; a poisoned lock is recovered (the table holds no
    /// invariant a panic could break).
    fn open_flags(&self) -> MutexGuard<'_, HashMap<(u64, u64), u32>> {
        self.open_flags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The flags to pass with a READ or WRITE on `handle`: the ones it was
    /// opened with. A handle the table does not know is not open on `inode`,
    /// and passthrough refuses it (`EBADF`) before it looks at the flags.
    fn request_flags(&self, inode: u64, handle: u64, guest_flags: u32) -> u32 {
        self.open_flags()
            .get(&(inode, handle))
            .copied()
            .unwrap_or(guest_flags)
    }

    /// Builds the union on a short-lived thread with its own umask.
    pub fn new(config: &ValidConfig) -> Result<ShareFs, FsError> {
        run_with_private_umask(|| ShareFs::build(config)).map_err(|source| FsError::Thread {
            tag: config.tag.clone(),
            source,
        })?
    }

    fn place(&self, inode: u64) -> Place {
        let index = (inode >> VFS_INDEX_SHIFT) as VfsIndex;
        if index == 0 {
            return match self.root_mount {
                Some(root) if inode == ROOT_ID => Place::Mount {
                    index: root,
                    read_only: self.read_only[usize::from(root)].unwrap_or(true),
                },
                _ => Place::Pseudo,
            };
        }
        Place::Mount {
            index,
            // An index nothing is mounted at: the Vfs answers ENOENT to reads;
            // refuse writes like a read-only mount.
            read_only: self.read_only[usize::from(index)].unwrap_or(true),
        }
    }

    /// `EROFS` unless `inode` is in a read-write mount.
    fn writable(&self, inode: u64) -> io::Result<()> {
        match self.place(inode) {
            Place::Mount {
                read_only: false, ..
            } => Ok(()),
            _ => Err(errno(libc::EROFS)),
        }
    }

    /// `EXDEV` unless both inodes are in the same mount (or both in the pseudo
    /// root), then `EROFS` unless that mount is writable.
    fn same_mount_writable(&self, a: u64, b: u64) -> io::Result<()> {
        let (pa, pb) = (self.place(a), self.place(b));
        let same = match (pa, pb) {
            (Place::Pseudo, Place::Pseudo) => true,
            (Place::Mount { index: x, .. }, Place::Mount { index: y, .. }) => x == y,
            _ => false,
        };
        if !same {
            return Err(errno(libc::EXDEV));
        }
        self.writable(a)
    }
}

/// Whether `open` flags can change the file.
fn open_mutates(flags: u32) -> bool {
    // Flags travel as u32 on the wire; reinterpret the bits as the C int they are.
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
}

/// Whether a `mknod` of `mode` (as it will be created: after the umask) may go
/// ahead: a regular file, FIFO or socket, or the overlayfs whiteout (character
/// device 0/0). Anything else, block devices and types the kernel does not
/// know included, is refused.
fn mknod_allowed(mode: u32, rdev: u32) -> bool {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => true,
        libc::S_IFCHR => rdev == 0,
        _ => false,
    }
}

/// The guest's umask as a umask: permission bits only. Passthrough creates
/// `mode & !umask`, so file-type bits in a guest's umask would change what
/// kind of node is created after `mknod_allowed` looked at the mode.
fn permission_umask(umask: u32) -> u32 {
    umask & 0o7777
}

/// Runs `f` on a scoped thread that has its own `fs_struct` (root, cwd and
/// umask), so the umask passthrough sets does not leak into the VMM.
pub(super) fn run_with_private_umask<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("virtio-fs-setup".into())
            .spawn_scoped(s, || {
                unshare_fs_struct()?;
                Ok(f())
            })?;
        handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("virtio-fs setup thread panicked")))
    })
}

/// Gives the calling thread its own root, cwd and umask, then sets the umask to 0:
/// passthrough applies the guest's umask itself (`mode & !umask`) and expects the
/// host's to be 0.
pub(super) fn unshare_fs_struct() -> io::Result<()> {
    // SAFETY: unshare takes no pointers; it only changes this thread's fs_struct.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umask cannot fail and takes no pointers; after unshare(CLONE_FS) it
    // affects only this thread.
    unsafe { libc::umask(0) };
    Ok(())
}

impl FileSystem for ShareFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.vfs.init(capable)
    }

    fn destroy(&self) {
        self.vfs.destroy();
        self.open_flags().clear();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.vfs.lookup(ctx, VfsInode::from(parent), name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.vfs.forget(ctx, VfsInode::from(inode), count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        let requests = requests
            .into_iter()
            .map(|(i, n)| (VfsInode::from(i), n))
            .collect();
        self.vfs.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.vfs.getattr(ctx, VfsInode::from(inode), handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable(inode)?;
        self.vfs
            .setattr(ctx, VfsInode::from(inode), attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.vfs.readlink(ctx, VfsInode::from(inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable(parent)?;
        self.vfs
            .symlink(ctx, linkname, VfsInode::from(parent), name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable(inode)?;
        let umask = permission_umask(umask);
        if !mknod_allowed(mode & !umask, rdev) {
            tracing::warn!(mode, rdev, "virtio-fs: refused mknod of a device node");
            return Err(errno(libc::EPERM));
        }
        self.vfs
            .mknod(ctx, VfsInode::from(inode), name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable(parent)?;
        self.vfs.mkdir(
            ctx,
            VfsInode::from(parent),
            name,
            mode,
            permission_umask(umask),
        )
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable(parent)?;
        self.vfs.unlink(ctx, VfsInode::from(parent), name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable(parent)?;
        self.vfs.rmdir(ctx, VfsInode::from(parent), name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.same_mount_writable(olddir, newdir)?;
        self.vfs.rename(
            ctx,
            VfsInode::from(olddir),
            oldname,
            VfsInode::from(newdir),
            newname,
            flags,
        )
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.same_mount_writable(inode, newparent)?;
        self.vfs.link(
            ctx,
            VfsInode::from(inode),
            VfsInode::from(newparent),
            newname,
        )
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if open_mutates(flags) {
            self.writable(inode)?;
        }
        let opened = self
            .vfs
            .open(ctx, VfsInode::from(inode), flags, fuse_flags)?;
        if let (Some(handle), _, _) = opened {
            self.open_flags().insert((inode, handle), flags);
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable(parent)?;
        let args = CreateIn {
            umask: permission_umask(args.umask),
            ..args
        };
        let created = self.vfs.create(ctx, VfsInode::from(parent), name, args)?;
        if let (entry, Some(handle), _, _) = &created {
            self.open_flags().insert((entry.inode, *handle), args.flags);
        }
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let flags = self.request_flags(inode, handle, flags);
        self.vfs.read(
            ctx,
            VfsInode::from(inode),
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable(inode)?;
        let flags = self.request_flags(inode, handle, flags);
        self.vfs.write(
            ctx,
            VfsInode::from(inode),
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.vfs
            .flush(ctx, VfsInode::from(inode), handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.vfs.fsync(ctx, VfsInode::from(inode), datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable(inode)?;
        self.vfs
            .fallocate(ctx, VfsInode::from(inode), handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.vfs.release(
            ctx,
            VfsInode::from(inode),
            flags,
            handle,
            flush,
            flock_release,
            lock_owner,
        )?;
        self.open_flags().remove(&(inode, handle));
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.vfs.statfs(ctx, VfsInode::from(inode))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable(inode)?;
        self.vfs
            .setxattr(ctx, VfsInode::from(inode), name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.vfs
            .getxattr(ctx, VfsInode::from(inode), name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.vfs
            .listxattr(ctx, VfsInode::from(inode), size.min(XATTR_LIST_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable(inode)?;
        self.vfs.removexattr(ctx, VfsInode::from(inode), name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        if open_mutates(flags) {
            self.writable(inode)?;
        }
        self.vfs.opendir(ctx, VfsInode::from(inode), flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.vfs.readdir(
            ctx,
            VfsInode::from(inode),
            handle,
            size.min(MAX_READDIR_SIZE),
            offset,
            add_entry,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.vfs.readdirplus(
            ctx,
            VfsInode::from(inode),
            handle,
            size.min(MAX_READDIR_SIZE),
            offset,
            add_entry,
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.vfs
            .fsyncdir(ctx, VfsInode::from(inode), datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        // The pseudo directories hand out no handle (opendir returns 0) and the
        // library has no releasedir for them; releasing nothing succeeds.
        if self.place(inode) == Place::Pseudo {
            return Ok(());
        }
        self.vfs
            .releasedir(ctx, VfsInode::from(inode), flags, handle)
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // No DAX window: the device exposes no shared-memory region.
        Err(errno(libc::EOPNOTSUPP))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(errno(libc::EOPNOTSUPP))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        // Mask bits are small positive ints; the cast only reinterprets them.
        if mask & (libc::W_OK as u32) != 0 {
            self.writable(inode)?;
        }
        self.vfs.access(ctx, VfsInode::from(inode), mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.vfs
            .lseek(ctx, VfsInode::from(inode), handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mutates_covers_write_modes_truncate_and_create() {
        let f = |x: i32| x as u32;
        assert!(!open_mutates(f(libc::O_RDONLY)));
        assert!(!open_mutates(f(libc::O_RDONLY
            | libc::O_DIRECTORY
            | libc::O_NOFOLLOW)));
        assert!(open_mutates(f(libc::O_WRONLY)));
        assert!(open_mutates(f(libc::O_RDWR)));
        assert!(open_mutates(f(libc::O_ACCMODE)));
        assert!(open_mutates(f(libc::O_RDONLY | libc::O_TRUNC)));
        assert!(open_mutates(f(libc::O_RDONLY | libc::O_CREAT)));
    }

    #[test]
    fn mknod_allows_only_whiteout_devices() {
        assert!(mknod_allowed(libc::S_IFCHR, 0));
        assert!(!mknod_allowed(libc::S_IFCHR | 0o666, (1 << 8) | 3));
        assert!(!mknod_allowed(libc::S_IFBLK | 0o600, 0));
        assert!(mknod_allowed(libc::S_IFIFO | 0o600, 0));
        assert!(mknod_allowed(libc::S_IFSOCK | 0o600, 0));
        assert!(mknod_allowed(libc::S_IFREG | 0o600, 0));
        assert!(mknod_allowed(0o600, 0), "no type bits: a regular file");
        assert!(!mknod_allowed(0o070600, 0), "no such file type");
        assert!(!mknod_allowed(libc::S_IFDIR | 0o700, 0), "mkdir's business");
        assert_eq!(permission_umask(0o070022), 0o022);
    }
}
