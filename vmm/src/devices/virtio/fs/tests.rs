//! Tests of the whole virtio-fs device: requests go through guest memory, the
//! virtqueues, the worker thread, the FUSE server and the file system wrapper,
//! exactly as a guest's would (see `test_client.rs`).

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::test_client::wire::*;
use super::test_client::{read_struct, Guest, Segment, MEM_END};
use super::*;
use crate::devices::virtio::{VirtioDevice, VIRTIO_MMIO_INT_VRING};

const DT_CHR: u32 = 2;
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;
const DT_LNK: u32 = 10;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (CAP_MKNOD, trusted.* xattrs)");
            return;
        }
    };
}

/// A temporary directory with `share/` (served) and, beside it, `secret`
/// (must stay unreachable).
struct Tree {
    _base: TempDir,
    base: PathBuf,
    share: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = TempDir::new().unwrap();
        let base = dir.as_path().canonicalize().unwrap();
        let share = base.join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(base.join("secret"), b"host secret").unwrap();
        std::fs::write(share.join("marker"), b"inside").unwrap();
        Tree {
            _base: dir,
            base,
            share,
        }
    }

    fn sub(&self, name: &str) -> PathBuf {
        let p = self.base.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn mount(guest_path: &str, host_dir: &Path, read_only: bool) -> FsMount {
    FsMount {
        guest_path: guest_path.to_owned(),
        host_dir: host_dir.to_owned(),
        read_only,
    }
}

/// An activated device with the given mounts, after FUSE INIT.
fn guest(mounts: Vec<FsMount>) -> Guest {
    let dev = Fs::new(FsConfig::new("test", mounts)).unwrap();
    let mut g = Guest::new(dev);
    let init = g.init();
    assert_eq!(init.major, 7);
    g
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn host_mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    let c = cpath(p);
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn host_setxattr(p: &Path, name: &str, value: &[u8]) {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn host_getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

fn thread_umask() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------
// The device itself
// ---------------------------------------------------------------------------

#[test]
fn config_space_layout() {
    assert_eq!(std::mem::size_of::<VirtioFsConfigSpace>(), 40);
    assert_eq!(std::mem::offset_of!(VirtioFsConfigSpace, tag), 0);
    assert_eq!(
        std::mem::offset_of!(VirtioFsConfigSpace, num_request_queues),
        36
    );
}

#[test]
fn device_identity_and_config_space() {
    let t = Tree::new();
    let mut cfg = FsConfig::new("myfs", vec![mount("/", &t.share, true)]);
    cfg.num_request_queues = 2;
    let dev = Fs::new(cfg).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.tag(), "myfs");
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);

    let mut tag = [0xffu8; 36];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..4], b"myfs");
    assert!(tag[4..].iter().all(|&b| b == 0));
    let mut n = [0u8; 4];
    dev.read_config(36, &mut n);
    assert_eq!(u32::from_le_bytes(n), 2);
    let mut beyond = [0xffu8; 8];
    dev.read_config(38, &mut beyond);
    assert_eq!(beyond, [0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn activate_refuses_wrong_queue_count() {
    let t = Tree::new();
    let mut dev = Fs::new(FsConfig::new("t", vec![mount("/", &t.share, true)])).unwrap();
    let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let ctx = ActivateContext {
        mem,
        acked_features: VIRTIO_F_VERSION_1,
        queues: vec![],
        interrupt: crate::devices::virtio::Interrupt::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ),
    };
    let err = dev.activate(ctx).unwrap_err();
    assert!(
        matches!(
            err,
            ActivateError::QueueCount {
                expected: 2,
                got: 0,
                ..
            }
        ),
        "{err}"
    );
}

/// Found by the `fs_fuse` fuzz target: passthrough's READ and WRITE copy the
/// guest's `flags` onto the host fd with `fcntl(F_SETFL)`, and when that fails
/// (here `O_DIRECT` on a directory opened with OPEN) they return early after
/// wrapping the handle's fd in a `File` that is dropped: the fd was closed under
/// the handle, and closed again at RELEASE (in between, any fd the VMM opened
/// could take its number). The handle must survive a READ with any flags.
#[test]
fn read_with_flags_the_host_refuses_keeps_the_handle() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let fh = g.open(ROOT_ID, libc::O_RDONLY).unwrap();
    let read = |g: &mut Guest, flags: i32| {
        let r = ReadIn {
            fh,
            size: 4096,
            flags: flags as u32,
            ..Default::default()
        };
        g.call_cap(FUSE_READ, ROOT_ID, &[r.as_slice()], 4096 + 16)
    };
    assert_eq!(read(&mut g, libc::O_DIRECT).unwrap_err(), libc::EISDIR);
    // The handle's fd is still open: reading a directory fd is EISDIR, a
    // closed one would be EBADF.
    assert_eq!(read(&mut g, 0).unwrap_err(), libc::EISDIR);
    g.release(ROOT_ID, fh).unwrap();
}

#[test]
fn new_refuses_bad_config() {
    let err = Fs::new(FsConfig::new("", vec![])).unwrap_err();
    assert!(matches!(err, FsError::Config(_)), "{err}");
}

#[test]
fn init_lookup_open_read_through_the_queue() {
    let t = Tree::new();
    std::fs::write(t.share.join("hello"), b"hello from the host").unwrap();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    assert!(crate::devices::virtio::queue_util::testing::wait_interrupt(&g.interrupt) >= 1);
    assert!(g.interrupt.status() & VIRTIO_MMIO_INT_VRING != 0);

    let e = g.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(e.attr.size, 19);
    let attr = g.getattr(e.nodeid).unwrap();
    assert_eq!(attr.size, 19);
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        g.read(e.nodeid, fh, 0, 4096).unwrap(),
        b"hello from the host"
    );
    assert_eq!(g.read(e.nodeid, fh, 11, 4).unwrap(), b"the ");
    g.release(e.nodeid, fh).unwrap();
    assert_eq!(g.lookup(ROOT_ID, "absent").unwrap_err(), libc::ENOENT);
}

#[test]
fn create_write_mkdir_readdir_on_a_rw_share() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    let (e, fh) = g
        .create(
            ROOT_ID,
            "new",
            libc::O_RDWR | libc::O_CREAT,
            libc::S_IFREG | 0o640,
        )
        .unwrap();
    assert_eq!(g.write(e.nodeid, fh, 0, b"written by guest").unwrap(), 16);
    assert_eq!(g.read(e.nodeid, fh, 0, 100).unwrap(), b"written by guest");
    g.release(e.nodeid, fh).unwrap();
    assert_eq!(
        std::fs::read(t.share.join("new")).unwrap(),
        b"written by guest"
    );
    assert_eq!(
        std::fs::metadata(t.share.join("new"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );

    g.mkdir(ROOT_ID, "dir", 0o755, 0).unwrap();
    let dir = g.lookup(ROOT_ID, "dir").unwrap();
    assert_eq!(dir.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    std::os::unix::fs::symlink("marker", t.share.join("link")).unwrap();

    let mut entries = g.readdir(ROOT_ID).unwrap();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("dir".to_owned(), DT_DIR),
            ("link".to_owned(), DT_LNK),
            ("marker".to_owned(), DT_REG),
            ("new".to_owned(), DT_REG),
        ]
    );
    g.unlink(ROOT_ID, "new").unwrap();
    g.rmdir(ROOT_ID, "dir").unwrap();
    assert!(!t.share.join("new").exists());
    assert!(!t.share.join("dir").exists());
}

#[test]
fn modes_are_the_guests_not_the_vmm_umask() {
    // Passthrough expects the server's umask to be 0 and applies the guest's
    // umask itself; the worker runs with a private umask of 0.
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    g.mkdir(ROOT_ID, "tmp", 0o1777, 0).unwrap();
    g.mkdir(ROOT_ID, "masked", 0o777, 0o022).unwrap();
    let mode = |n: &str| {
        std::fs::metadata(t.share.join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("masked"), 0o755);
}

#[test]
fn the_vmm_umask_is_untouched() {
    // fuse-backend-rs's PassthroughFs::import calls umask(0) on the calling
    // thread's fs_struct, which every thread of a process shares unless it
    // unshared it. Creating, serving, destroying and resetting a device must
    // leave the creator's umask alone: a VMM with umask 0 creates
    // world-writable sockets and files.
    //
    // The scenario runs on a thread with a private fs_struct and a known umask,
    // so tests running in parallel cannot blur the result.
    let umask = std::thread::spawn(|| {
        // SAFETY: unshare and umask take no pointers and affect only this
        // thread (after CLONE_FS is unshared).
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_FS), 0);
            libc::umask(0o027);
        }
        let t = Tree::new();
        let mut g = guest(vec![mount("/", &t.share, false)]);
        g.mkdir(ROOT_ID, "d", 0o755, 0).unwrap();
        // fuse-backend-rs writes DESTROY's reply but reports 0 bytes used; Linux
        // does not read the used length of a virtio-fs reply.
        let (_, destroy) = g.request(FUSE_DESTROY, 0, &[]);
        g.raw(1, &destroy, 256);
        g.reset_and_reactivate();
        g.init();
        drop(g);
        thread_umask()
    })
    .join()
    .unwrap();
    assert_eq!(umask, "0027");
}

#[test]
fn second_request_queue_serves_requests() {
    let t = Tree::new();
    let mut cfg = FsConfig::new("t", vec![mount("/", &t.share, true)]);
    cfg.num_request_queues = 2;
    let mut g = Guest::new(Fs::new(cfg).unwrap());
    g.init();
    let name = CString::new("marker").unwrap();
    let (unique, req) = g.request(FUSE_LOOKUP, ROOT_ID, &[name.as_bytes_with_nul()]);
    let reply = g.raw(2, &req, 4096);
    let body = super::test_client::parse_reply(unique, &reply).unwrap();
    let e: EntryOut = read_struct(&body);
    assert_eq!(e.attr.size, 6);
}

#[test]
fn forget_on_the_hiprio_queue_needs_no_reply() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    assert_eq!(g.forget(e.nodeid, 1), 0);
    // The inode is forgotten; a new lookup brings it back.
    let again = g.lookup(ROOT_ID, "marker").unwrap();
    assert_eq!(again.attr.size, 6);
}

#[test]
fn reset_starts_a_fresh_fuse_session() {
    // Without destroying the session on reset, the second INIT fails with EINVAL
    // ("vfs is already initialized") and the guest cannot mount again.
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    let _fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    g.reset_and_reactivate();
    let init = g.init();
    assert_eq!(init.major, 7);
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(e.nodeid, fh, 0, 100).unwrap(), b"inside");
}

#[test]
fn a_full_ring_is_served_in_batches() {
    // More chains than one batch, with a single notification: the worker must
    // come back for the rest by itself.
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let count = 400;
    assert!(count > super::worker::BATCH_BUDGET && 2 * count < usize::from(QUEUE_SIZE));
    let mut heads = Vec::new();
    for _ in 0..count {
        let name = CString::new("marker").unwrap();
        let (_, req) = g.request(FUSE_LOOKUP, ROOT_ID, &[name.as_bytes_with_nul()]);
        let addr = g.alloc(req.len() as u32);
        g.mem.write_slice(&req, GuestAddress(addr)).unwrap();
        let reply = g.alloc(256);
        let segs = [
            Segment {
                addr,
                len: req.len() as u32,
                writable: false,
            },
            Segment {
                addr: reply,
                len: 256,
                writable: true,
            },
        ];
        heads.push(g.push_chain(1, &segs));
    }
    g.kick(1);
    for head in heads {
        assert_eq!(g.wait_used(1).0, head);
    }
}

#[test]
fn many_requests_wrap_the_rings() {
    // Several laps of the descriptor table, the available ring and the used
    // ring, in pipelined batches.
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    let getattr = GetattrIn::default();
    for _ in 0..12 {
        let mut sent = Vec::new();
        for _ in 0..256 {
            let (unique, req) = g.request(FUSE_GETATTR, e.nodeid, &[getattr.as_slice()]);
            let addr = g.alloc(req.len() as u32);
            g.mem.write_slice(&req, GuestAddress(addr)).unwrap();
            let reply = g.alloc(256);
            let segs = [
                Segment {
                    addr,
                    len: req.len() as u32,
                    writable: false,
                },
                Segment {
                    addr: reply,
                    len: 256,
                    writable: true,
                },
            ];
            sent.push((g.push_chain(1, &segs), unique, reply));
        }
        g.kick(1);
        for (head, unique, reply) in sent {
            let (id, len) = g.wait_used(1);
            assert_eq!(id, head);
            let mut out = vec![0u8; len as usize];
            g.mem.read_slice(&mut out, GuestAddress(reply)).unwrap();
            let body = super::test_client::parse_reply(unique, &out).unwrap();
            assert_eq!(read_struct::<AttrOut>(&body).attr.size, 6);
        }
    }
}

#[test]
fn indirect_descriptor_chains_are_served() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let name = CString::new("marker").unwrap();
    let (unique, req) = g.request(FUSE_LOOKUP, ROOT_ID, &[name.as_bytes_with_nul()]);
    let req_addr = g.alloc(req.len() as u32);
    g.mem.write_slice(&req, GuestAddress(req_addr)).unwrap();
    let reply_addr = g.alloc(4096);
    let table = g.alloc(32);
    let descs = [
        Descriptor::new(req_addr, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
        Descriptor::new(reply_addr, 4096, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        g.mem
            .write_obj(
                virtio_queue::desc::RawDescriptor::from(*d),
                GuestAddress(table + 16 * i as u64),
            )
            .unwrap();
    }
    let head = g.push_chain(
        1,
        &[Segment {
            addr: table,
            len: 32,
            writable: false,
        }],
    );
    // push_chain wrote flags 0; mark the head indirect.
    g.write_desc(
        1,
        head,
        Descriptor::new(table, 32, VRING_DESC_F_INDIRECT as u16, 0),
    );
    g.kick(1);
    let (id, len) = g.wait_used(1);
    assert_eq!(id, head);
    let mut reply = vec![0u8; len as usize];
    g.mem
        .read_slice(&mut reply, GuestAddress(reply_addr))
        .unwrap();
    let body = super::test_client::parse_reply(unique, &reply).unwrap();
    assert_eq!(read_struct::<EntryOut>(&body).attr.size, 6);
}

// ---------------------------------------------------------------------------
// Escapes that must fail
// ---------------------------------------------------------------------------

#[test]
fn dotdot_at_a_share_root_stays_in_the_share() {
    let t = Tree::new();
    std::fs::create_dir(t.share.join("sub")).unwrap();
    // Plain share at /.
    let mut g = guest(vec![mount("/", &t.share, false)]);
    let up = g.lookup(ROOT_ID, "..").unwrap();
    assert_eq!(up.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(
        g.lookup(up.nodeid, "marker").is_ok(),
        "'..' of the root left the share"
    );
    assert_eq!(g.lookup(up.nodeid, "secret").unwrap_err(), libc::ENOENT);
    assert_eq!(g.lookup(up.nodeid, "share").unwrap_err(), libc::ENOENT);
    // `..` twice from a subdirectory ends at the root, not above it.
    let sub = g.lookup(ROOT_ID, "sub").unwrap();
    let root = g.lookup(sub.nodeid, "..").unwrap();
    let above = g.lookup(root.nodeid, "..").unwrap();
    assert!(g.lookup(above.nodeid, "marker").is_ok());
    assert_eq!(g.lookup(above.nodeid, "secret").unwrap_err(), libc::ENOENT);

    // A mount below a pseudo root: `..` of the mount root is the mount root.
    let t2 = Tree::new();
    let mut g = guest(vec![mount("/layers/0", &t2.share, true)]);
    let layer = g.walk("/layers/0").unwrap();
    let up = g.lookup(layer.nodeid, "..").unwrap();
    assert!(g.lookup(up.nodeid, "marker").is_ok());
    assert_eq!(g.lookup(up.nodeid, "secret").unwrap_err(), libc::ENOENT);
    assert_eq!(g.lookup(up.nodeid, "0").unwrap_err(), libc::ENOENT);
}

#[test]
fn names_with_a_slash_are_refused() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    for name in ["../secret", "sub/../../secret", "/etc", "a/b"] {
        assert_eq!(g.lookup(ROOT_ID, name).unwrap_err(), libc::EINVAL, "{name}");
    }
    for name in ["../escaped", "x/y"] {
        assert_eq!(g.mkdir(ROOT_ID, name, 0o755, 0).unwrap_err(), libc::EINVAL);
        assert_eq!(
            g.create(ROOT_ID, name, libc::O_WRONLY, 0o644).unwrap_err(),
            libc::EINVAL
        );
        assert_eq!(g.symlink(ROOT_ID, name, "/etc").unwrap_err(), libc::EINVAL);
    }
    for name in [".", ".."] {
        assert_eq!(g.mkdir(ROOT_ID, name, 0o755, 0).unwrap_err(), libc::EINVAL);
        assert_eq!(g.unlink(ROOT_ID, name).unwrap_err(), libc::EINVAL);
    }
    assert!(!t.base.join("escaped").exists());
}

#[test]
fn symlinks_out_of_the_share_are_never_followed() {
    let t = Tree::new();
    let outside = t.sub("outside");
    std::fs::write(outside.join("file"), b"outside").unwrap();
    std::os::unix::fs::symlink("/etc", t.share.join("etc")).unwrap();
    std::os::unix::fs::symlink(t.base.join("secret"), t.share.join("secret_link")).unwrap();
    std::os::unix::fs::symlink(&outside, t.share.join("outside_link")).unwrap();
    let secret_mode = std::fs::metadata(t.base.join("secret")).unwrap().mode();
    let mut g = guest(vec![mount("/", &t.share, false)]);

    // LOOKUP returns the link itself; the guest resolves it in its own namespace.
    let etc = g.lookup(ROOT_ID, "etc").unwrap();
    assert_eq!(etc.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        g.getattr(etc.nodeid).unwrap().mode & libc::S_IFMT,
        libc::S_IFLNK
    );
    assert_eq!(g.readlink(etc.nodeid).unwrap(), b"/etc");
    // Nothing can be looked up *through* the link.
    assert_eq!(g.lookup(etc.nodeid, "passwd").unwrap_err(), libc::ENOTDIR);
    let out = g.lookup(ROOT_ID, "outside_link").unwrap();
    assert_eq!(g.lookup(out.nodeid, "file").unwrap_err(), libc::ENOTDIR);
    assert!(g.readdir(out.nodeid).is_err());

    // OPEN of a symlink inode fails instead of opening the target.
    let secret = g.lookup(ROOT_ID, "secret_link").unwrap();
    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        assert_eq!(g.open(secret.nodeid, flags).unwrap_err(), libc::EBADF);
    }
    // CREATE over a symlink neither follows nor truncates it.
    assert!(g
        .create(
            ROOT_ID,
            "secret_link",
            libc::O_WRONLY | libc::O_TRUNC,
            0o644
        )
        .is_err());
    assert!(g
        .create(
            ROOT_ID,
            "secret_link",
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o644
        )
        .is_err());
    // SETATTR on the link changes the link, not the target (size needs an
    // open, which fails; mode on a symlink is refused by the host kernel).
    let truncate = SetattrIn {
        valid: FATTR_SIZE,
        size: 0,
        ..Default::default()
    };
    assert!(g.setattr(secret.nodeid, truncate).is_err());
    let chmod = SetattrIn {
        valid: FATTR_MODE,
        mode: 0o777,
        ..Default::default()
    };
    let _ = g.setattr(secret.nodeid, chmod);
    assert_eq!(
        std::fs::read(t.base.join("secret")).unwrap(),
        b"host secret"
    );
    assert_eq!(
        std::fs::metadata(t.base.join("secret")).unwrap().mode(),
        secret_mode
    );

    // A symlink the guest creates is just as inert.
    let made = g.symlink(ROOT_ID, "shadow", "/etc/shadow").unwrap();
    assert_eq!(
        g.open(made.nodeid, libc::O_RDONLY).unwrap_err(),
        libc::EBADF
    );
    assert_eq!(
        std::fs::read_link(t.share.join("shadow")).unwrap(),
        Path::new("/etc/shadow")
    );
}

#[test]
fn xattrs_on_a_symlink_do_not_reach_its_target() {
    require_root!();
    let t = Tree::new();
    let target = t.base.join("secret");
    host_setxattr(&target, "trusted.secret", b"s3cret");
    std::os::unix::fs::symlink(&target, t.share.join("link")).unwrap();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    let link = g.lookup(ROOT_ID, "link").unwrap();
    assert!(g.getxattr(link.nodeid, "trusted.secret", 64).is_err());
    let names = g.listxattr(link.nodeid, 1024).unwrap_or_default();
    assert!(!names.windows(6).any(|w| w == b"secret"));
    // trusted.* may be set on the link itself, never on the target.
    let _ = g.setxattr(link.nodeid, "trusted.evil", b"1", 0);
    assert_eq!(host_getxattr(&target, "trusted.evil"), None);
    assert_eq!(
        g.removexattr(link.nodeid, "trusted.secret").unwrap_err(),
        libc::ENODATA
    );
    assert_eq!(host_getxattr(&target, "trusted.secret").unwrap(), b"s3cret");
}

#[test]
fn link_and_rename_across_mounts_fail_with_exdev() {
    let t = Tree::new();
    let a = t.sub("a");
    let b = t.sub("b");
    let lower = t.sub("lower");
    std::fs::write(a.join("f"), b"in a").unwrap();
    std::fs::write(lower.join("l"), b"in lower").unwrap();
    let mut g = guest(vec![
        mount("/a", &a, false),
        mount("/b", &b, false),
        mount("/lower", &lower, true),
    ]);
    let a_root = g.walk("/a").unwrap().nodeid;
    let b_root = g.walk("/b").unwrap().nodeid;
    let lower_root = g.walk("/lower").unwrap().nodeid;
    let f = g.lookup(a_root, "f").unwrap();

    assert_eq!(g.link(f.nodeid, b_root, "f").unwrap_err(), libc::EXDEV);
    assert_eq!(
        g.rename2(a_root, "f", b_root, "f", 0).unwrap_err(),
        libc::EXDEV
    );
    // Into or out of the pseudo root above the mounts.
    assert_eq!(
        g.rename2(a_root, "f", ROOT_ID, "f", 0).unwrap_err(),
        libc::EXDEV
    );
    assert_eq!(g.link(f.nodeid, ROOT_ID, "f").unwrap_err(), libc::EXDEV);
    // Out of a read-only mount: EXDEV comes first, as for two kernel mounts.
    assert_eq!(
        g.rename2(lower_root, "l", a_root, "l", 0).unwrap_err(),
        libc::EXDEV
    );
    let l = g.lookup(lower_root, "l").unwrap();
    assert_eq!(g.link(l.nodeid, a_root, "l").unwrap_err(), libc::EXDEV);

    assert!(a.join("f").exists() && !b.join("f").exists() && !a.join("l").exists());
    assert!(lower.join("l").exists());
    // Within one mount both work.
    g.link(f.nodeid, a_root, "g").unwrap();
    g.rename2(a_root, "g", a_root, "h", 0).unwrap();
    assert_eq!(std::fs::read(a.join("h")).unwrap(), b"in a");
}

#[test]
fn a_read_only_mount_refuses_every_mutation() {
    let t = Tree::new();
    let layer = t.sub("layer");
    let upper = t.sub("upper");
    std::fs::write(layer.join("f"), b"layer").unwrap();
    std::fs::create_dir(layer.join("empty")).unwrap();
    std::fs::set_permissions(layer.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut g = guest(vec![
        mount("/layers/0", &layer, true),
        mount("/upper", &upper, false),
    ]);
    let root = g.walk("/layers/0").unwrap().nodeid;
    let f = g.lookup(root, "f").unwrap().nodeid;
    const EROFS: i32 = libc::EROFS;

    assert_eq!(
        g.create(root, "new", libc::O_WRONLY | libc::O_CREAT, 0o644)
            .unwrap_err(),
        EROFS
    );
    assert_eq!(g.mkdir(root, "dir", 0o755, 0).unwrap_err(), EROFS);
    assert_eq!(
        g.mknod(root, "fifo", libc::S_IFIFO | 0o644, 0).unwrap_err(),
        EROFS
    );
    assert_eq!(g.mknod(root, "wh", libc::S_IFCHR, 0).unwrap_err(), EROFS);
    assert_eq!(g.symlink(root, "ln", "f").unwrap_err(), EROFS);
    assert_eq!(g.unlink(root, "f").unwrap_err(), EROFS);
    assert_eq!(g.rmdir(root, "empty").unwrap_err(), EROFS);
    assert_eq!(g.rename2(root, "f", root, "g", 0).unwrap_err(), EROFS);
    assert_eq!(g.link(f, root, "hard").unwrap_err(), EROFS);
    let chmod = SetattrIn {
        valid: FATTR_MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(g.setattr(f, chmod).unwrap_err(), EROFS);
    let truncate = SetattrIn {
        valid: FATTR_SIZE,
        ..Default::default()
    };
    assert_eq!(g.setattr(f, truncate).unwrap_err(), EROFS);
    assert_eq!(g.setxattr(f, "user.x", b"1", 0).unwrap_err(), EROFS);
    assert_eq!(g.removexattr(f, "user.x").unwrap_err(), EROFS);
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_APPEND,
    ] {
        assert_eq!(
            g.open(f, flags).unwrap_err(),
            EROFS,
            "open flags {flags:#o}"
        );
    }
    assert_eq!(g.access(f, libc::W_OK).unwrap_err(), EROFS);

    // Reading still works, and a read-only handle cannot be used to write.
    g.access(f, libc::R_OK).unwrap();
    let fh = g.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(g.write(f, fh, 0, b"overwrite").unwrap_err(), EROFS);
    assert_eq!(g.fallocate(f, fh, 1 << 20).unwrap_err(), EROFS);
    assert_eq!(g.read(f, fh, 0, 100).unwrap(), b"layer");

    // The pseudo directories above the mounts are read-only too.
    assert_eq!(g.mkdir(ROOT_ID, "x", 0o755, 0).unwrap_err(), EROFS);
    let layers = g.walk("/layers").unwrap().nodeid;
    assert_eq!(
        g.create(layers, "x", libc::O_WRONLY, 0o644).unwrap_err(),
        EROFS
    );
    assert_eq!(
        g.rename2(ROOT_ID, "layers", ROOT_ID, "x", 0).unwrap_err(),
        EROFS
    );

    // The host saw nothing.
    assert_eq!(std::fs::read(layer.join("f")).unwrap(), b"layer");
    assert_eq!(
        std::fs::metadata(layer.join("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    let mut names: Vec<_> = std::fs::read_dir(&layer)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "f"]);

    // The read-write mount next to it still takes writes.
    let up = g.walk("/upper").unwrap().nodeid;
    g.mkdir(up, "work", 0o755, 0).unwrap();
    assert!(upper.join("work").is_dir());
}

#[test]
fn device_nodes_cannot_be_created_or_opened() {
    require_root!();
    let t = Tree::new();
    // A node placed on the host (as a tampered layer would): /dev/null's numbers.
    host_mknod(&t.share.join("hostnull"), libc::S_IFCHR | 0o666, 1, 3);
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(cpath(&t.share.join("fifo")).as_ptr(), 0o666) };
    assert_eq!(rc, 0);
    let mut g = guest(vec![mount("/", &t.share, false)]);

    // The guest may not make device nodes other than whiteouts.
    let rdev_null = (1 << 8) | 3;
    assert_eq!(
        g.mknod(ROOT_ID, "null", libc::S_IFCHR | 0o666, rdev_null)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        g.mknod(ROOT_ID, "sda", libc::S_IFBLK | 0o666, 8 << 8)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!t.share.join("null").exists() && !t.share.join("sda").exists());
    // Nor through the umask (found by the fs_fuse fuzz target,
    // fuzz/corpus/fs_fuse/crash-umask-block-device): passthrough creates
    // `mode & !umask`, so a umask with file-type bits turned a mode that was
    // no device at all (0o070000, refused by the kernel) into a block device,
    // and a block-device mode into a character device with any numbers.
    let type_bits = 0o010000;
    assert_eq!(
        g.mknod_with_umask(ROOT_ID, "viaumask", 0o070600, 8 << 8, type_bits)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        g.mknod_with_umask(
            ROOT_ID,
            "blk2chr",
            libc::S_IFBLK | 0o600,
            rdev_null,
            0o040000
        )
        .unwrap_err(),
        libc::EPERM
    );
    assert!(!t.share.join("viaumask").exists() && !t.share.join("blk2chr").exists());
    // A umask still takes permission bits off, as the guest's kernel expects.
    let fifo = g
        .mknod_with_umask(ROOT_ID, "fifo2", libc::S_IFIFO | 0o666, 0, 0o022)
        .unwrap();
    assert_eq!(fifo.attr.mode, libc::S_IFIFO | 0o644);

    // Nodes that exist are visible, but opening one never opens the host device
    // (nor blocks the worker on a FIFO).
    for name in ["hostnull", "fifo"] {
        let e = g.lookup(ROOT_ID, name).unwrap();
        for flags in [
            libc::O_RDONLY,
            libc::O_RDWR,
            libc::O_WRONLY | libc::O_NONBLOCK,
        ] {
            assert_eq!(g.open(e.nodeid, flags).unwrap_err(), libc::EBADF, "{name}");
        }
        let truncate = SetattrIn {
            valid: FATTR_SIZE,
            ..Default::default()
        };
        assert!(g.setattr(e.nodeid, truncate).is_err(), "{name}");
    }
    let e = g.lookup(ROOT_ID, "hostnull").unwrap();
    assert_eq!(e.attr.rdev, rdev_null);
}

// ---------------------------------------------------------------------------
// What overlayfs in the guest needs
// ---------------------------------------------------------------------------

#[test]
fn lower_layers_show_opaque_dirs_and_whiteouts() {
    require_root!();
    let t = Tree::new();
    let layer = t.sub("layer");
    std::fs::create_dir(layer.join("opaque")).unwrap();
    host_setxattr(&layer.join("opaque"), "trusted.overlay.opaque", b"y");
    host_mknod(&layer.join("gone"), libc::S_IFCHR, 0, 0);
    std::fs::write(layer.join("file"), b"f").unwrap();
    let mut g = guest(vec![mount("/layers/0", &layer, true)]);
    let root = g.walk("/layers/0").unwrap().nodeid;

    let dir = g.lookup(root, "opaque").unwrap().nodeid;
    let len = g.getxattr(dir, "trusted.overlay.opaque", 0).unwrap();
    assert_eq!(read_struct::<GetxattrOut>(&len).size, 1);
    assert_eq!(g.getxattr(dir, "trusted.overlay.opaque", 16).unwrap(), b"y");
    let names = g.listxattr(dir, 4096).unwrap();
    assert!(names
        .split(|&b| b == 0)
        .any(|n| n == b"trusted.overlay.opaque"));
    assert_eq!(
        g.getxattr(dir, "trusted.overlay.origin", 16).unwrap_err(),
        libc::ENODATA
    );

    let wh = g.lookup(root, "gone").unwrap();
    assert_eq!(wh.attr.mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(wh.attr.rdev, 0);

    let mut entries = g.readdir(root).unwrap();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("file".to_owned(), DT_REG),
            ("gone".to_owned(), DT_CHR),
            ("opaque".to_owned(), DT_DIR),
        ]
    );
    // The pseudo directories list the mounts.
    let layers = g.walk("/layers").unwrap().nodeid;
    let names: Vec<String> = g
        .readdir(layers)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["0"]);
}

#[test]
fn upper_xattrs_round_trip() {
    require_root!();
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    let d = g.mkdir(ROOT_ID, "d", 0o755, 0).unwrap().nodeid;
    g.setxattr(d, "trusted.overlay.opaque", b"y", 0).unwrap();
    g.setxattr(d, "user.note", b"hello", 0).unwrap();
    assert_eq!(
        host_getxattr(&t.share.join("d"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(g.getxattr(d, "trusted.overlay.opaque", 64).unwrap(), b"y");
    // XATTR_CREATE on an existing name fails; XATTR_REPLACE replaces.
    assert_eq!(
        g.setxattr(d, "user.note", b"x", 1).unwrap_err(),
        libc::EEXIST
    );
    g.setxattr(d, "user.note", b"bye", 2).unwrap();
    assert_eq!(g.getxattr(d, "user.note", 64).unwrap(), b"bye");
    // A buffer that is too small gets ERANGE, as from the kernel.
    assert_eq!(g.getxattr(d, "user.note", 1).unwrap_err(), libc::ERANGE);
    // A guest asking for a 4 GiB buffer gets the value, not an allocation of it.
    assert_eq!(g.getxattr(d, "user.note", u32::MAX).unwrap(), b"bye");
    let names = g.listxattr(d, 4096).unwrap();
    let mut names: Vec<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    assert_eq!(names, [&b"trusted.overlay.opaque"[..], b"user.note"]);
    g.removexattr(d, "trusted.overlay.opaque").unwrap();
    assert_eq!(
        g.getxattr(d, "trusted.overlay.opaque", 64).unwrap_err(),
        libc::ENODATA
    );
    assert_eq!(
        host_getxattr(&t.share.join("d"), "trusted.overlay.opaque"),
        None
    );
}

#[test]
fn upper_takes_whiteouts_and_rename2_flags() {
    require_root!();
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    // mknod of a whiteout, as overlayfs does on unlink of a lower file.
    let wh = g.mknod(ROOT_ID, "wh", libc::S_IFCHR, 0).unwrap();
    assert_eq!(wh.attr.mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(wh.attr.rdev, 0);
    let meta = std::fs::symlink_metadata(t.share.join("wh")).unwrap();
    assert_eq!(meta.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(meta.rdev(), 0);

    std::fs::write(t.share.join("a"), b"A").unwrap();
    std::fs::write(t.share.join("b"), b"B").unwrap();
    // RENAME_NOREPLACE onto an existing name.
    let noreplace = libc::RENAME_NOREPLACE;
    assert_eq!(
        g.rename2(ROOT_ID, "a", ROOT_ID, "b", noreplace)
            .unwrap_err(),
        libc::EEXIST
    );
    // RENAME_EXCHANGE swaps.
    g.rename2(ROOT_ID, "a", ROOT_ID, "b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(std::fs::read(t.share.join("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(t.share.join("b")).unwrap(), b"A");
    // RENAME_WHITEOUT leaves a whiteout behind (overlayfs checks this at mount).
    g.rename2(ROOT_ID, "a", ROOT_ID, "c", libc::RENAME_WHITEOUT)
        .unwrap();
    assert_eq!(std::fs::read(t.share.join("c")).unwrap(), b"B");
    let meta = std::fs::symlink_metadata(t.share.join("a")).unwrap();
    assert_eq!(meta.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(meta.rdev(), 0);
    let e = g.lookup(ROOT_ID, "a").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFCHR);
}

// ---------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------

fn lookup_request(g: &mut Guest, name: &str) -> (u64, Vec<u8>) {
    let name = CString::new(name).unwrap();
    g.request(FUSE_LOOKUP, ROOT_ID, &[name.as_bytes_with_nul()])
}

fn set_header_len(req: &mut [u8], len: u32) {
    req[..4].copy_from_slice(&len.to_le_bytes());
}

/// The device still answers a valid request.
fn still_serving(g: &mut Guest) {
    assert_eq!(g.lookup(ROOT_ID, "marker").unwrap().attr.size, 6);
}

#[test]
fn a_short_header_is_dropped() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    for len in [1usize, 8, 39] {
        let bytes = vec![7u8; len];
        let reply = g.raw(1, &bytes, 256);
        assert!(reply.is_empty(), "{len}-byte request got a reply");
    }
    still_serving(&mut g);
}

#[test]
fn a_len_beyond_the_chain_gets_einval() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let (unique, mut req) = lookup_request(&mut g, "marker");
    set_header_len(&mut req, 4000);
    let reply = g.raw(1, &req, 256);
    assert_eq!(
        super::test_client::parse_reply(unique, &reply).unwrap_err(),
        libc::EINVAL
    );

    // A len shorter than the header itself.
    let (unique, mut req) = lookup_request(&mut g, "marker");
    set_header_len(&mut req, 8);
    let reply = g.raw(1, &req, 256);
    assert_eq!(
        super::test_client::parse_reply(unique, &reply).unwrap_err(),
        libc::EINVAL
    );

    // A len far beyond any buffer the server accepts.
    let (unique, mut req) = lookup_request(&mut g, "marker");
    set_header_len(&mut req, u32::MAX);
    let reply = g.raw(1, &req, 256);
    assert_eq!(
        super::test_client::parse_reply(unique, &reply).unwrap_err(),
        libc::ENOMEM
    );

    // A name without its NUL.
    let (unique, mut req) = g.request(FUSE_LOOKUP, ROOT_ID, &[b"marker"]);
    set_header_len(&mut req, 46);
    let reply = g.raw(1, &req, 256);
    assert_eq!(
        super::test_client::parse_reply(unique, &reply).unwrap_err(),
        libc::EINVAL
    );
    still_serving(&mut g);
}

#[test]
fn an_unknown_opcode_gets_enosys() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    for opcode in [0u32, 7, 50, 999, u32::MAX] {
        let (unique, req) = g.request(opcode, ROOT_ID, &[]);
        let reply = g.raw(1, &req, 256);
        assert_eq!(
            super::test_client::parse_reply(unique, &reply).unwrap_err(),
            libc::ENOSYS,
            "opcode {opcode}"
        );
    }
    still_serving(&mut g);
}

#[test]
fn a_chain_without_writable_descriptors_is_dropped() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let (_, req) = lookup_request(&mut g, "marker");
    assert!(g.raw(1, &req, 0).is_empty());
    // A writable buffer smaller than a reply header.
    let (_, req) = lookup_request(&mut g, "marker");
    assert!(g.raw(1, &req, 8).is_empty());
    still_serving(&mut g);
}

#[test]
fn a_reply_larger_than_the_writable_buffer_gets_an_error() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    // An entry reply is 144 bytes; 32 hold only an error header.
    let (unique, req) = lookup_request(&mut g, "marker");
    let reply = g.raw(1, &req, 32);
    assert_eq!(
        super::test_client::parse_reply(unique, &reply).unwrap_err(),
        libc::EIO
    );
    // READ asking for more than the buffer holds.
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    let r = ReadIn {
        fh,
        size: 1 << 20,
        ..Default::default()
    };
    assert!(g
        .call_cap(FUSE_READ, e.nodeid, &[r.as_slice()], 20)
        .is_err());
    still_serving(&mut g);
}

#[test]
fn descriptors_outside_guest_memory_are_dropped() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let (_, req) = lookup_request(&mut g, "marker");
    let req_addr = g.alloc(req.len() as u32);
    g.mem.write_slice(&req, GuestAddress(req_addr)).unwrap();
    let reply_addr = g.alloc(4096);
    let good_req = Segment {
        addr: req_addr,
        len: req.len() as u32,
        writable: false,
    };
    let good_reply = Segment {
        addr: reply_addr,
        len: 4096,
        writable: true,
    };
    let chains = [
        // Readable part beyond the end of RAM.
        vec![
            Segment {
                addr: MEM_END + 0x1000,
                len: 64,
                writable: false,
            },
            good_reply,
        ],
        // Readable part straddling the end of RAM.
        vec![
            Segment {
                addr: MEM_END - 16,
                len: 64,
                writable: false,
            },
            good_reply,
        ],
        // Writable part beyond, or wrapping around, the address space.
        vec![
            good_req,
            Segment {
                addr: MEM_END - 8,
                len: 4096,
                writable: true,
            },
        ],
        vec![
            good_req,
            Segment {
                addr: u64::MAX - 8,
                len: 4096,
                writable: true,
            },
        ],
    ];
    for segs in chains {
        let head = g.push_chain(1, &segs);
        g.kick(1);
        assert_eq!(g.wait_used(1), (head, 0), "{segs:?}");
    }
    still_serving(&mut g);
}

#[test]
fn a_descriptor_loop_ends() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let (_, req) = lookup_request(&mut g, "marker");
    let addr = g.alloc(req.len() as u32);
    g.mem.write_slice(&req, GuestAddress(addr)).unwrap();
    // One descriptor whose `next` is itself.
    let head = g.push_chain(
        1,
        &[Segment {
            addr,
            len: req.len() as u32,
            writable: false,
        }],
    );
    g.write_desc(
        1,
        head,
        Descriptor::new(addr, req.len() as u32, VRING_DESC_F_NEXT as u16, head),
    );
    g.kick(1);
    let (id, _) = g.wait_used(1);
    assert_eq!(id, head);
    still_serving(&mut g);
}

#[test]
fn a_bogus_available_index_stalls_nothing_but_the_guest() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let real = g.avail_idx(1);
    // More chains "available" than the queue holds: the device must refuse to
    // walk the ring rather than serve garbage forever.
    g.set_avail_idx(1, real.wrapping_add(5000));
    g.kick(1);
    assert!(g.idle_for(1, Duration::from_millis(100)));
    g.set_avail_idx(1, real);
    still_serving(&mut g);
}

#[test]
fn a_head_index_beyond_the_queue_is_skipped() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    g.publish(1, QUEUE_SIZE + 7);
    g.publish(1, u16::MAX);
    g.kick(1);
    assert!(g.idle_for(1, Duration::from_millis(100)));
    still_serving(&mut g);
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_huge_readable_chain_is_not_copied_into_the_vmm() {
    // IOCTL's in_size is checked against the readable bytes of the chain, not
    // against the header's len, and fuse-backend-rs then allocates and copies
    // in_size bytes. Descriptors may repeat the same guest pages, so a 64 MiB
    // guest can offer 1 GiB. The worker offers the server at most one request's
    // worth (1 MiB + 4 KiB).
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, true)]);
    let e = g.lookup(ROOT_ID, "marker").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    // struct fuse_ioctl_in: fh, flags, cmd, arg, in_size, out_size.
    let mut ioctl = Vec::new();
    ioctl.extend_from_slice(&fh.to_le_bytes());
    ioctl.extend_from_slice(&0u32.to_le_bytes());
    ioctl.extend_from_slice(&0x5401u32.to_le_bytes());
    ioctl.extend_from_slice(&0u64.to_le_bytes());
    ioctl.extend_from_slice(&(1u32 << 30).to_le_bytes());
    ioctl.extend_from_slice(&0u32.to_le_bytes());
    let (unique, req) = g.request(39, e.nodeid, &[&ioctl]);
    let req_addr = g.alloc(req.len() as u32);
    g.mem.write_slice(&req, GuestAddress(req_addr)).unwrap();
    let filler = g.alloc(4 << 20);
    let reply = g.alloc(4096);
    let mut segs = vec![Segment {
        addr: req_addr,
        len: req.len() as u32,
        writable: false,
    }];
    segs.extend((0..256).map(|_| Segment {
        addr: filler,
        len: 4 << 20,
        writable: false,
    }));
    segs.push(Segment {
        addr: reply,
        len: 4096,
        writable: true,
    });

    let before = peak_rss_kib();
    let head = g.push_chain(1, &segs);
    g.kick(1);
    let (id, len) = g.wait_used(1);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(id, head);
    let mut out = vec![0u8; len as usize];
    g.mem.read_slice(&mut out, GuestAddress(reply)).unwrap();
    assert_eq!(
        super::test_client::parse_reply(unique, &out).unwrap_err(),
        libc::ENOTTY
    );
    assert!(
        grown_mib < 256,
        "peak RSS grew by {grown_mib} MiB for one request"
    );
    still_serving(&mut g);
}

#[test]
fn random_requests_never_stop_the_device() {
    let t = Tree::new();
    let mut g = guest(vec![mount("/", &t.share, false)]);
    // xorshift64: deterministic garbage.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let len = (next() % 300) as usize;
        let mut req: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if req.len() >= 40 && i % 2 == 0 {
            // A plausible header: a real opcode and node, a lying or true length.
            let opcode = (next() % 50) as u32;
            // DESTROY would legitimately end the session; keep it out.
            let opcode = if opcode == FUSE_DESTROY || opcode == FUSE_INIT {
                1
            } else {
                opcode
            };
            req[4..8].copy_from_slice(&opcode.to_le_bytes());
            req[16..24].copy_from_slice(&(next() % 4).to_le_bytes());
            if i % 4 == 0 {
                let l = req.len() as u32;
                req[..4].copy_from_slice(&l.to_le_bytes());
            }
        }
        if req.is_empty() {
            req.push(0);
        }
        let cap = (next() % 512) as u32;
        let reply = g.raw(1, &req, cap);
        if reply.len() >= 16 {
            let h: OutHeader = read_struct(&reply);
            assert_eq!(h.len as usize, reply.len());
            assert!(h.error <= 0);
        }
    }
    still_serving(&mut g);
    // Nothing escaped the share.
    assert_eq!(
        std::fs::read(t.base.join("secret")).unwrap(),
        b"host secret"
    );
}
