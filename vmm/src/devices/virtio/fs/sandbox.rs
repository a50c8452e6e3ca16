//! The mount-namespace sandbox for virtio-fs shares.
//!
//! It owns one call, [`enter`], which the VMM makes early, while it is still
//! single-threaded (`unshare(CLONE_NEWNS)` fails in a multi-threaded process): it
//! moves the process into a private mount namespace and bind-mounts every share's
//! host directory onto itself with `nodev,nosuid,noexec`, plus `ro` for read-only
//! shares. From then on the kernel itself refuses writes to read-only shares and
//! refuses to open any device node inside a share, whatever the FUSE server does;
//! the host's mount table is untouched. It must not touch anything but mounts of
//! this process.
//!
//! Binds are not recursive: mounts below a share on the host are not visible
//! through it, so no submount escapes these flags. Shares nested in other shares
//! are bound shallowest first, so each keeps its own flags.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FsMount;

/// Why the sandbox could not be entered. The process's mounts are unchanged
/// unless the error is [`SandboxError::Bind`] or [`SandboxError::Remount`], which
/// happen inside the new private namespace.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("virtio-fs sandbox: share {}: {source}", path.display())]
    HostDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs sandbox: share {}: not a directory", path.display())]
    NotDirectory { path: PathBuf },
    #[error("virtio-fs sandbox: share {} is listed both read-only and read-write", path.display())]
    Conflict { path: PathBuf },
    #[error("virtio-fs sandbox: share {} contains {system}; sharing it is not supported yet (its bind would hide the VMM's {system})", path.display())]
    SystemDir { path: PathBuf, system: &'static str },
    #[error("virtio-fs sandbox: read thread count: {0}")]
    ThreadCount(#[source] io::Error),
    #[error("virtio-fs sandbox: process has {0} threads; enter the sandbox before starting any")]
    MultiThreaded(u64),
    #[error("virtio-fs sandbox: unshare mount namespace: {0}")]
    Unshare(#[source] io::Error),
    #[error("virtio-fs sandbox: make mounts private: {0}")]
    MakePrivate(#[source] io::Error),
    #[error("virtio-fs sandbox: bind-mount share {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs sandbox: remount share {} nodev,nosuid,noexec{}: {source}", path.display(), if *read_only { ",ro" } else { "" })]
    Remount {
        path: PathBuf,
        read_only: bool,
        #[source]
        source: io::Error,
    },
}

/// Mounts the VMM relies on, which no share may contain.
const SYSTEM_DIRS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// One directory to restrict, after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Share {
    path: PathBuf,
    read_only: bool,
}

/// Resolves, deduplicates and orders the shares (shallowest first).
fn plan<'a>(mounts: impl IntoIterator<Item = &'a FsMount>) -> Result<Vec<Share>, SandboxError> {
    let mut by_path: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for m in mounts {
        let path = std::fs::canonicalize(&m.host_dir).map_err(|source| SandboxError::HostDir {
            path: m.host_dir.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&path).map_err(|source| SandboxError::HostDir {
            path: m.host_dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(SandboxError::NotDirectory {
                path: m.host_dir.clone(),
            });
        }
        // Binds are not recursive, so a share above these would hide the
        // mounts the VMM itself needs (/proc/self/fd, /dev/kvm) behind it.
        for system in SYSTEM_DIRS {
            if Path::new(system).starts_with(&path) {
                return Err(SandboxError::SystemDir { path, system });
            }
        }
        match by_path.get(&path) {
            Some(&ro) if ro != m.read_only => return Err(SandboxError::Conflict { path }),
            _ => {
                by_path.insert(path, m.read_only);
            }
        }
    }
    let mut shares: Vec<Share> = by_path
        .into_iter()
        .map(|(path, read_only)| Share { path, read_only })
        .collect();
    shares.sort_by_key(|s| s.path.components().count());
    Ok(shares)
}

fn thread_count() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads: line"))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn mount(source: Option<&CString>, target: &CString, flags: libc::c_ulong) -> io::Result<()> {
    let src = source.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either null (allowed for source, fstype and data
    // with these flags) or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Enters a private mount namespace in which every host directory of `mounts` is
/// bind-mounted onto itself `nodev,nosuid,noexec`, and `ro` if its mount is
/// read-only. Call it before any thread starts and before creating the
/// [`Fs`](super::Fs) devices, e.g.
/// `sandbox::enter(configs.iter().flat_map(|c| &c.mounts))`.
pub fn enter<'a>(mounts: impl IntoIterator<Item = &'a FsMount>) -> Result<(), SandboxError> {
    let shares = plan(mounts)?;

    let threads = thread_count().map_err(SandboxError::ThreadCount)?;
    if threads != 1 {
        return Err(SandboxError::MultiThreaded(threads));
    }

    // SAFETY: unshare takes no pointers; it changes only this process's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(SandboxError::Unshare(io::Error::last_os_error()));
    }
    tracing::debug!("virtio-fs sandbox: entered a new mount namespace");

    // Nothing mounted here may propagate back to the host, nor host mounts in.
    let root = CString::from(c"/");
    mount(None, &root, libc::MS_REC | libc::MS_PRIVATE).map_err(SandboxError::MakePrivate)?;

    for share in &shares {
        let target = cpath(&share.path).map_err(|source| SandboxError::Bind {
            path: share.path.clone(),
            source,
        })?;
        mount(Some(&target), &target, libc::MS_BIND).map_err(|source| SandboxError::Bind {
            path: share.path.clone(),
            source,
        })?;
        let mut flags =
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC;
        if share.read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &target, flags).map_err(|source| SandboxError::Remount {
            path: share.path.clone(),
            read_only: share.read_only,
            source,
        })?;
        tracing::debug!(
            path = %share.path.display(),
            read_only = share.read_only,
            "virtio-fs sandbox: share bound nodev,nosuid,noexec"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn m(host: &Path, read_only: bool) -> FsMount {
        FsMount {
            guest_path: "/".into(),
            host_dir: host.to_owned(),
            read_only,
        }
    }

    #[test]
    fn plan_dedups_orders_and_refuses_conflicts() {
        let d = TempDir::new().unwrap();
        let outer = d.as_path().canonicalize().unwrap();
        let inner = outer.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();

        let mounts = [m(&inner, true), m(&outer, false), m(&inner, true)];
        let shares = plan(&mounts).unwrap();
        assert_eq!(
            shares,
            vec![
                Share {
                    path: outer.clone(),
                    read_only: false
                },
                Share {
                    path: inner.clone(),
                    read_only: true
                },
            ]
        );

        let mounts = [m(&inner, true), m(&inner, false)];
        assert!(matches!(plan(&mounts), Err(SandboxError::Conflict { .. })));

        for system in ["/", "/dev", "/proc"] {
            assert!(matches!(
                plan(&[m(Path::new(system), true)]),
                Err(SandboxError::SystemDir { .. })
            ));
        }

        let file = outer.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            plan(&[m(&file, true)]),
            Err(SandboxError::NotDirectory { .. })
        ));
        assert!(matches!(
            plan(&[m(&outer.join("missing"), true)]),
            Err(SandboxError::HostDir { .. })
        ));
    }

    #[test]
    fn refuses_a_multi_threaded_process() {
        // The test harness runs this on a thread of its own, so the process has
        // at least two threads; `enter` must refuse before changing anything.
        let d = TempDir::new().unwrap();
        let err = enter(&[m(d.as_path(), true)]).unwrap_err();
        assert!(
            matches!(err, SandboxError::MultiThreaded(n) if n >= 2),
            "{err}"
        );
    }

    /// Whether `path` is a mount point in this process's mount table, and its
    /// per-mount options.
    fn mount_options(path: &Path) -> Option<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let target = path.to_str().unwrap();
        info.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&target)).then(|| f[5].to_owned())
            })
            .next_back()
    }

    fn expect_errno<T>(r: io::Result<T>, errno: i32) -> bool {
        matches!(r, Err(e) if e.raw_os_error() == Some(errno))
    }

    /// Runs in the forked child; returns the exit code (0 = every check passed).
    fn sandboxed_child(rw: &Path, ro: &Path) -> i32 {
        if let Err(_e) = enter(&[m(rw, false), m(ro, true)]) {
            return 10;
        }
        // Read-only is kernel-enforced.
        if !expect_errno(std::fs::write(ro.join("file"), b"changed"), libc::EROFS) {
            return 11;
        }
        if !expect_errno(std::fs::create_dir(ro.join("dir")), libc::EROFS) {
            return 12;
        }
        if std::fs::read(ro.join("file")).ok().as_deref() != Some(&b"layer"[..]) {
            return 13;
        }
        // Read-write works.
        if std::fs::write(rw.join("new"), b"x").is_err() {
            return 14;
        }
        // A device node can be created (overlayfs whiteouts need mknod) but not
        // opened: /dev/null's numbers, opened through the share, must fail.
        let node = cpath(&rw.join("null")).unwrap();
        // SAFETY: `node` is a valid NUL-terminated path.
        let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        if rc != 0 {
            return 15;
        }
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .open(rw.join("null"));
        if !expect_errno(opened, libc::EACCES) {
            return 16;
        }
        // The mount table shows the flags.
        let Some(rw_opts) = mount_options(rw) else {
            return 17;
        };
        let Some(ro_opts) = mount_options(ro) else {
            return 18;
        };
        for o in ["nodev", "nosuid", "noexec"] {
            if !rw_opts.split(',').any(|x| x == o) || !ro_opts.split(',').any(|x| x == o) {
                return 19;
            }
        }
        if !ro_opts.split(',').any(|x| x == "ro") || !rw_opts.split(',').any(|x| x == "rw") {
            return 20;
        }
        0
    }

    /// Forks; the child runs `f` and exits with its result, never unwinding into
    /// the test harness. Returns the child's exit code.
    ///
    /// `enter` needs a single-threaded process, and a forked child has one
    /// thread. The child only makes syscalls and allocates (glibc's malloc is
    /// fork-safe) and reports through its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: see above; the child ends with _exit and never returns here.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
            // SAFETY: _exit ends the child without running atexit handlers or
            // unwinding into the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// The middle process: a mount namespace of its own whose `base` is a
    /// *shared* tmpfs (as `/` is on systemd hosts), so a sandbox that forgot to
    /// make its mounts private would leak its binds into this namespace.
    fn host_with_shared_mounts(base: &Path) -> i32 {
        // SAFETY: unshare takes no pointers.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return 30;
        }
        let root = CString::from(c"/");
        if mount(None, &root, libc::MS_REC | libc::MS_PRIVATE).is_err() {
            return 31;
        }
        let target = cpath(base).unwrap();
        let tmpfs = CString::from(c"tmpfs");
        // SAFETY: valid NUL-terminated strings; null data.
        let rc = unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 || mount(None, &target, libc::MS_SHARED).is_err() {
            return 32;
        }
        let (rw, ro) = (base.join("upper"), base.join("layer"));
        if std::fs::create_dir(&rw).is_err()
            || std::fs::create_dir(&ro).is_err()
            || std::fs::write(ro.join("file"), b"layer").is_err()
        {
            return 33;
        }
        let code = in_child(|| sandboxed_child(&rw, &ro));
        if code != 0 {
            return code;
        }
        // Nothing the sandbox mounted propagated back.
        if mount_options(&rw).is_some() || mount_options(&ro).is_some() {
            return 34;
        }
        0
    }

    #[test]
    fn sandbox_restricts_shares_in_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mount namespaces need root");
            return;
        }
        let dir = TempDir::new().unwrap();
        let base = dir.as_path().canonicalize().unwrap();
        let code = in_child(|| host_with_shared_mounts(&base));
        assert_eq!(
            code, 0,
            "check failed (codes in sandboxed_child / host_with_shared_mounts)"
        );
        // This process's namespace saw none of it.
        assert_eq!(mount_options(&base), None);
        assert!(std::fs::read_dir(&base).unwrap().next().is_none());
    }
}
