//! Test-only: the share file system ([`ShareFs`] behind the same FUSE server the
//! device uses) mounted through the host kernel's own FUSE client (`/dev/fuse`),
//! with a real overlayfs built on it exactly as the guest agent does: lower =
//! `/layers/N`, upper and work inside `/upper`.
//!
//! virtio-fs and `/dev/fuse` differ only in transport; what overlayfs demands of
//! a FUSE upper (d_type, RENAME_WHITEOUT, trusted.* xattrs, checked at mount
//! since Linux 5.x for "remote" upper file systems) is the same. This runs the
//! kernel's checks and its copy-up, whiteout and opaque-directory paths against
//! our server, which the request-level tests can only imitate.
//!
//! Everything happens in a forked child with its own mount namespace; the
//! host's mount table is never touched.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;
use vmm_sys_util::tempdir::TempDir;

use super::config::FsConfig;
use super::filesystem::{unshare_fs_struct, ShareFs};
use super::FsMount;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn mount_fs(src: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> bool {
    let (src, target) = (CString::new(src).unwrap(), cpath(target));
    let (fstype, data) = (CString::new(fstype).unwrap(), CString::new(data).unwrap());
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    rc == 0
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 64];
    // SAFETY: valid strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    (rc >= 0).then(|| {
        buf.truncate(rc as usize);
        buf
    })
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Layer 0: `a`, `b`, `c`, `d/x`. Layer 1 (above it): a whiteout for `b`, an
/// opaque `d` holding `d/y`.
fn build_layers(base: &Path) {
    let l0 = base.join("layer0");
    let l1 = base.join("layer1");
    std::fs::create_dir_all(l0.join("d")).unwrap();
    std::fs::create_dir_all(l1.join("d")).unwrap();
    for (name, data) in [("a", "a0"), ("b", "b0"), ("c", "c0"), ("d/x", "x0")] {
        std::fs::write(l0.join(name), data).unwrap();
    }
    std::fs::write(l1.join("d/y"), "y1").unwrap();
    let wh = cpath(&l1.join("b"));
    // SAFETY: a valid path; char 0/0 is the overlayfs whiteout.
    assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0);
    let (d, n) = (
        cpath(&l1.join("d")),
        CString::new("trusted.overlay.opaque").unwrap(),
    );
    // SAFETY: valid strings and a one-byte value.
    let rc = unsafe { libc::lsetxattr(d.as_ptr(), n.as_ptr(), c"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0);
    std::fs::create_dir_all(base.join("upper/diff")).unwrap();
    std::fs::create_dir_all(base.join("upper/work")).unwrap();
    std::fs::create_dir_all(base.join("fuse")).unwrap();
    std::fs::create_dir_all(base.join("merged")).unwrap();
}

/// Runs in the forked child: serve, mount, check. Returns the exit code.
fn overlay_child(base: &Path) -> i32 {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return 40;
    }
    if !mount_fs(
        "none",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    ) {
        return 41;
    }
    let mounts = vec![
        FsMount {
            guest_path: "/layers/0".into(),
            host_dir: base.join("layer0"),
            read_only: true,
        },
        FsMount {
            guest_path: "/layers/1".into(),
            host_dir: base.join("layer1"),
            read_only: true,
        },
        FsMount {
            guest_path: "/upper".into(),
            host_dir: base.join("upper"),
            read_only: false,
        },
    ];
    let Ok(valid) = FsConfig::new("overlay", mounts).validate() else {
        return 42;
    };
    let Ok(fs) = ShareFs::new(&valid) else {
        return 43;
    };
    let server = Arc::new(Server::new(Arc::new(fs)));
    let fuse = base.join("fuse");
    let Ok(mut session) = FuseSession::new(&fuse, "moat-test", "", false) else {
        return 44;
    };
    if session.mount().is_err() {
        return 45;
    }
    let Ok(mut channel) = session.new_channel() else {
        return 46;
    };
    let serving = std::thread::spawn(move || {
        if unshare_fs_struct().is_err() {
            return;
        }
        while let Ok(Some((reader, writer))) = channel.get_request() {
            let _ = server.handle_message(reader, writer.into(), None, None);
        }
    });

    let code = overlay_checks(base);

    let merged = cpath(&base.join("merged"));
    // SAFETY: a valid path.
    unsafe { libc::umount2(merged.as_ptr(), libc::MNT_DETACH) };
    let _ = session.umount();
    let _ = session.wake();
    let _ = serving.join();
    code
}

fn overlay_checks(base: &Path) -> i32 {
    let f = base.join("fuse");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        f.join("layers/1").display(),
        f.join("layers/0").display(),
        f.join("upper/diff").display(),
        f.join("upper/work").display(),
    );
    // Through the kernel's FUSE client: layers refuse writes, the pseudo root
    // refuses everything, device nodes other than whiteouts are refused.
    let erofs =
        |r: std::io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS));
    if !erofs(std::fs::write(f.join("layers/0/a"), b"x"))
        || !erofs(std::fs::create_dir(f.join("x")))
    {
        return 47;
    }
    let node = cpath(&f.join("upper/null"));
    // SAFETY: a valid path.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return 48;
    }

    // The mount itself runs overlayfs's checks of a remote upper: d_type,
    // RENAME_WHITEOUT and trusted.* xattrs, or EINVAL.
    if !mount_fs("overlay", &base.join("merged"), "overlay", 0, &opts) {
        return 50;
    }
    let m = base.join("merged");
    let upper = base.join("upper/diff");

    // Lower layers, whiteouts and opaque directories as the image defines them.
    if std::fs::read(m.join("a")).ok().as_deref() != Some(&b"a0"[..]) {
        return 51;
    }
    if m.join("b").exists() {
        return 52;
    }
    if m.join("d/x").exists() || std::fs::read(m.join("d/y")).ok().as_deref() != Some(&b"y1"[..]) {
        return 53;
    }
    // A new file lands in the upper directory on the host.
    if std::fs::write(m.join("n"), b"new").is_err()
        || std::fs::read(upper.join("n")).ok().as_deref() != Some(&b"new"[..])
    {
        return 54;
    }
    // Copy-up of a lower file on write; the layer itself is untouched.
    use std::io::Write;
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("c"))
        .and_then(|mut file| file.write_all(b"+"));
    if appended.is_err()
        || std::fs::read(upper.join("c")).ok().as_deref() != Some(&b"c0+"[..])
        || std::fs::read(base.join("layer0/c")).ok().as_deref() != Some(&b"c0"[..])
    {
        return 55;
    }
    // Deleting a lower file leaves a whiteout in the upper directory.
    if std::fs::remove_file(m.join("a")).is_err() || m.join("a").exists() {
        return 56;
    }
    if !is_whiteout(&upper.join("a")) || !base.join("layer0/a").exists() {
        return 57;
    }
    // Replacing a merged directory makes an opaque directory in the upper.
    if std::fs::remove_dir_all(m.join("d")).is_err() || std::fs::create_dir(m.join("d")).is_err() {
        return 58;
    }
    if getxattr(&upper.join("d"), "trusted.overlay.opaque").as_deref() != Some(&b"y"[..]) {
        return 59;
    }
    if std::fs::read_dir(m.join("d")).map(|d| d.count()).ok() != Some(0) {
        return 60;
    }
    // Renaming within the merged tree.
    if std::fs::rename(m.join("n"), m.join("n2")).is_err() || !upper.join("n2").exists() {
        return 61;
    }
    0
}

#[test]
fn guest_style_overlayfs_over_the_shares() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = TempDir::new().unwrap();
    let base = dir.as_path().canonicalize().unwrap();
    build_layers(&base);

    // SAFETY: the child makes syscalls, allocates (glibc malloc is fork-safe) and
    // starts its own threads; it ends with _exit and never returns here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| overlay_child(&base)).unwrap_or(99);
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: a valid out pointer for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "check failed (codes in overlay_child/overlay_checks)"
    );
}
