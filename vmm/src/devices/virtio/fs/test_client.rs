//! Test-only guest for the virtio-fs device: a simulated driver that lays out
//! split virtqueues in guest memory, places requests in readable descriptors and
//! collects replies from writable ones, and a small FUSE client that builds
//! requests from its own wire structs (written from `include/uapi/linux/fuse.h`,
//! independently of fuse-backend-rs's).
//!
//! The rings are laid out here rather than with `virtio_queue::mock::
//! MockSplitQueue`: in virtio-queue 0.17 its `SplitQueueRing::end()` counts ring
//! elements as bytes, so the used ring it places overlaps the second half of
//! the available ring, and a test that publishes more than `size / 2` chains
//! sees its available ring overwritten by the device's used index
//! (`many_requests_wrap_the_rings` runs past that point).
//!
//! It owns nothing outside tests.

use std::ffi::CString;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Fs, QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateContext, ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// FUSE wire structs, as the Linux 6.1 guest sends and expects them.
pub mod wire {
    use vm_memory::ByteValued;

    macro_rules! wire {
        ($(#[$m:meta])* $name:ident { $($f:ident : $t:ty),* $(,)? }) => {
            $(#[$m])*
            #[repr(C)]
            #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
            pub struct $name { $(pub $f: $t),* }
            // SAFETY: repr(C) structs of unsigned/signed integers laid out without
            // padding (sizes checked in `wire_sizes_match_linux`), so any bytes
            // are a valid value.
            unsafe impl ByteValued for $name {}
        };
    }

    wire!(InHeader {
        len: u32,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        uid: u32,
        gid: u32,
        pid: u32,
        total_extlen: u16,
        padding: u16
    });
    wire!(OutHeader {
        len: u32,
        error: i32,
        unique: u64
    });
    wire!(Attr {
        ino: u64,
        size: u64,
        blocks: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        nlink: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        blksize: u32,
        flags: u32,
    });
    wire!(EntryOut {
        nodeid: u64,
        generation: u64,
        entry_valid: u64,
        attr_valid: u64,
        entry_valid_nsec: u32,
        attr_valid_nsec: u32,
        attr: Attr
    });
    wire!(AttrOut {
        attr_valid: u64,
        attr_valid_nsec: u32,
        dummy: u32,
        attr: Attr
    });
    wire!(GetattrIn {
        getattr_flags: u32,
        dummy: u32,
        fh: u64
    });
    wire!(SetattrIn {
        valid: u32,
        padding: u32,
        fh: u64,
        size: u64,
        lock_owner: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        unused4: u32,
        uid: u32,
        gid: u32,
        unused5: u32,
    });
    wire!(InitIn {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
        flags2: u32,
        unused: [u32; 11]
    });
    wire!(InitOut {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
        max_background: u16,
        congestion_threshold: u16,
        max_write: u32,
        time_gran: u32,
        max_pages: u16,
        map_alignment: u16,
        flags2: u32,
        unused: [u32; 7],
    });
    wire!(OpenIn {
        flags: u32,
        open_flags: u32
    });
    wire!(OpenOut {
        fh: u64,
        open_flags: u32,
        padding: u32
    });
    wire!(CreateIn {
        flags: u32,
        mode: u32,
        umask: u32,
        open_flags: u32
    });
    wire!(ReadIn {
        fh: u64,
        offset: u64,
        size: u32,
        read_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32
    });
    wire!(WriteIn {
        fh: u64,
        offset: u64,
        size: u32,
        write_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32
    });
    wire!(WriteOut {
        size: u32,
        padding: u32
    });
    wire!(ReleaseIn {
        fh: u64,
        flags: u32,
        release_flags: u32,
        lock_owner: u64
    });
    wire!(MknodIn {
        mode: u32,
        rdev: u32,
        umask: u32,
        padding: u32
    });
    wire!(MkdirIn {
        mode: u32,
        umask: u32
    });
    wire!(Rename2In {
        newdir: u64,
        flags: u32,
        padding: u32
    });
    wire!(LinkIn { oldnodeid: u64 });
    wire!(
        /// The 8-byte form, used while FUSE_SETXATTR_EXT is not negotiated.
        SetxattrIn { size: u32, flags: u32 }
    );
    wire!(GetxattrIn {
        size: u32,
        padding: u32
    });
    wire!(GetxattrOut {
        size: u32,
        padding: u32
    });
    wire!(ForgetIn { nlookup: u64 });
    wire!(AccessIn {
        mask: u32,
        padding: u32
    });
    wire!(FallocateIn {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
        padding: u32
    });
    wire!(Dirent {
        ino: u64,
        off: u64,
        namelen: u32,
        type_: u32
    });

    pub const FUSE_LOOKUP: u32 = 1;
    pub const FUSE_FORGET: u32 = 2;
    pub const FUSE_GETATTR: u32 = 3;
    pub const FUSE_SETATTR: u32 = 4;
    pub const FUSE_READLINK: u32 = 5;
    pub const FUSE_SYMLINK: u32 = 6;
    pub const FUSE_MKNOD: u32 = 8;
    pub const FUSE_MKDIR: u32 = 9;
    pub const FUSE_UNLINK: u32 = 10;
    pub const FUSE_RMDIR: u32 = 11;
    pub const FUSE_LINK: u32 = 13;
    pub const FUSE_OPEN: u32 = 14;
    pub const FUSE_READ: u32 = 15;
    pub const FUSE_WRITE: u32 = 16;
    pub const FUSE_RELEASE: u32 = 18;
    pub const FUSE_SETXATTR: u32 = 21;
    pub const FUSE_GETXATTR: u32 = 22;
    pub const FUSE_LISTXATTR: u32 = 23;
    pub const FUSE_REMOVEXATTR: u32 = 24;
    pub const FUSE_INIT: u32 = 26;
    pub const FUSE_OPENDIR: u32 = 27;
    pub const FUSE_READDIR: u32 = 28;
    pub const FUSE_RELEASEDIR: u32 = 29;
    pub const FUSE_ACCESS: u32 = 34;
    pub const FUSE_CREATE: u32 = 35;
    pub const FUSE_DESTROY: u32 = 38;
    pub const FUSE_FALLOCATE: u32 = 43;
    pub const FUSE_RENAME2: u32 = 45;

    pub const FATTR_MODE: u32 = 1 << 0;
    pub const FATTR_SIZE: u32 = 1 << 3;

    pub const ROOT_ID: u64 = 1;
    /// INIT flags a Linux 6.1 guest offers (a representative subset).
    pub const INIT_FLAGS: u32 = 1 // ASYNC_READ
        | (1 << 5)   // ATOMIC_O_TRUNC
        | (1 << 6)   // EXPORT_SUPPORT
        | (1 << 7)   // BIG_WRITES
        | (1 << 11)  // HAS_IOCTL_DIR
        | (1 << 12)  // AUTO_INVAL_DATA
        | (1 << 13)  // DO_READDIRPLUS
        | (1 << 14)  // READDIRPLUS_AUTO
        | (1 << 15)  // ASYNC_DIO
        | (1 << 16)  // WRITEBACK_CACHE
        | (1 << 17)  // NO_OPEN_SUPPORT
        | (1 << 18)  // PARALLEL_DIROPS
        | (1 << 22)  // MAX_PAGES
        | (1 << 24)  // NO_OPENDIR_SUPPORT
        | (1 << 25); // EXPLICIT_INVAL_DATA
}

use wire::*;

/// Base of the guest RAM used by tests, and its size.
const MEM_SIZE: usize = 64 << 20;
/// Queue `q` lays out its rings at `q * QUEUE_STRIDE`.
const QUEUE_STRIDE: u64 = 0x10000;
/// Request and reply buffers are carved from here up.
const DATA_START: u64 = 0x100_0000;
/// The first address past guest RAM.
pub const MEM_END: u64 = MEM_SIZE as u64;

/// One segment of a chain the test places by hand.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

struct QueueLayout {
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// A simulated guest driver with an activated virtio-fs device.
pub struct Guest {
    pub dev: Fs,
    pub mem: GuestMemory,
    queues: Vec<QueueLayout>,
    notify: Vec<EventFd>,
    pub interrupt: Interrupt,
    data_next: u64,
    unique: u64,
}

/// Fresh guest RAM for one test guest.
fn new_memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Builds the queues and activation context for `dev` over fresh rings.
fn activation(
    mem: &GuestMemory,
    n: usize,
) -> (ActivateContext, Vec<QueueLayout>, Vec<EventFd>, Interrupt) {
    let mut active = Vec::new();
    let mut layouts = Vec::new();
    let mut notify = Vec::new();
    for q in 0..n {
        let base = GuestAddress(q as u64 * QUEUE_STRIDE);
        // Zero the rings (a reset reuses the memory).
        mem.write_slice(&vec![0u8; QUEUE_STRIDE as usize], base)
            .unwrap();
        // virtio 1.2 §2.7: descriptor table (16 bytes each), then the available
        // ring (flags, idx, ring[size], used_event), then the used ring (4-byte
        // aligned: flags, idx, ring[size] of 8 bytes, avail_event).
        let size = u64::from(QUEUE_SIZE);
        let desc_table = base;
        let avail = desc_table.unchecked_add(16 * size);
        let used = GuestAddress((avail.0 + 6 + 2 * size).next_multiple_of(4));
        assert!(used.0 + 6 + 8 * size <= base.0 + QUEUE_STRIDE);
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(desc_table.0 as u32), Some((desc_table.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        queue.set_ready(true);
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        notify.push(fd.try_clone().unwrap());
        active.push(ActiveQueue { queue, notify: fd });
        layouts.push(QueueLayout {
            desc_table,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        });
    }
    let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let ctx = ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues: active,
        interrupt: interrupt.clone(),
    };
    (ctx, layouts, notify, interrupt)
}

impl Guest {
    /// Activates `dev` with fresh queues.
    pub fn new(mut dev: Fs) -> Guest {
        let mem = new_memory();
        let n = dev.queue_max_sizes().len();
        let (ctx, queues, notify, interrupt) = activation(&mem, n);
        dev.activate(ctx).unwrap();
        Guest {
            dev,
            mem,
            queues,
            notify,
            interrupt,
            data_next: DATA_START,
            unique: 0,
        }
    }

    /// Resets the device and activates it again with fresh queues, as a driver
    /// reload does. Panics if the device refuses.
    pub fn reset_and_reactivate(&mut self) {
        assert!(self.dev.reset(), "device refused reset");
        let n = self.dev.queue_max_sizes().len();
        let (ctx, queues, notify, interrupt) = activation(&self.mem, n);
        self.dev.activate(ctx).unwrap();
        self.queues = queues;
        self.notify = notify;
        self.interrupt = interrupt;
    }

    /// Reserves `len` bytes of guest RAM for a buffer.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1).next_multiple_of(64);
        if self.data_next + len > MEM_END {
            self.data_next = DATA_START;
        }
        let addr = self.data_next;
        self.data_next += len;
        addr
    }

    /// Publishes a chain of segments on queue `q` without notifying.
    pub fn push_chain(&mut self, q: usize, segs: &[Segment]) -> u16 {
        let layout = &mut self.queues[q];
        let head = layout.next_desc;
        for (i, s) in segs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let mut flags = 0u16;
            if s.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = (idx + 1) % QUEUE_SIZE;
            if i + 1 < segs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = RawDescriptor::from(Descriptor::new(s.addr, s.len, flags, next));
            self.mem
                .write_obj(desc, layout.desc_table.unchecked_add(16 * u64::from(idx)))
                .unwrap();
        }
        layout.next_desc = (head + segs.len() as u16) % QUEUE_SIZE;
        self.publish(q, head);
        head
    }

    /// Overwrites descriptor `idx` of queue `q` (for chains a helper cannot build).
    pub fn write_desc(&self, q: usize, idx: u16, desc: Descriptor) {
        let addr = self.queues[q]
            .desc_table
            .unchecked_add(16 * u64::from(idx % QUEUE_SIZE));
        self.mem.write_obj(RawDescriptor::from(desc), addr).unwrap();
    }

    /// Puts `head` in the available ring of queue `q`.
    pub fn publish(&mut self, q: usize, head: u16) {
        let layout = &mut self.queues[q];
        let slot = u64::from(layout.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head.to_le(), layout.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        layout.avail_idx = layout.avail_idx.wrapping_add(1);
        let idx = layout.avail_idx;
        self.set_avail_idx(q, idx);
    }

    /// Writes the available index the device reads (tests may lie with it).
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        let layout = &self.queues[q];
        self.mem
            .write_obj(idx.to_le(), layout.avail.unchecked_add(2))
            .unwrap();
    }

    pub fn avail_idx(&self, q: usize) -> u16 {
        self.queues[q].avail_idx
    }

    /// Notifies queue `q`, as the guest's QueueNotify write does.
    pub fn kick(&self, q: usize) {
        self.notify[q].write(1).unwrap();
    }

    /// Waits for the next used element of queue `q`: `(head, len)`.
    pub fn wait_used(&mut self, q: usize) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let layout = &self.queues[q];
        loop {
            let used_idx: u16 = self.mem.read_obj(layout.used.unchecked_add(2)).unwrap();
            if used_idx != layout.used_seen {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "queue {q}: no used buffer in time"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let layout = &mut self.queues[q];
        let slot = u64::from(layout.used_seen % QUEUE_SIZE);
        let elem = layout.used.unchecked_add(4 + 8 * slot);
        let id: u32 = self.mem.read_obj(elem).unwrap();
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        layout.used_seen = layout.used_seen.wrapping_add(1);
        (u16::try_from(id).unwrap(), len)
    }

    /// Whether queue `q` has used no buffer within `wait`.
    pub fn idle_for(&self, q: usize, wait: Duration) -> bool {
        std::thread::sleep(wait);
        let layout = &self.queues[q];
        let used_idx: u16 = self.mem.read_obj(layout.used.unchecked_add(2)).unwrap();
        used_idx == layout.used_seen
    }

    /// Sends raw request bytes on queue `q` with a writable buffer of `reply_cap`
    /// bytes (none if 0). Returns the bytes the device reported as written.
    pub fn raw(&mut self, q: usize, request: &[u8], reply_cap: u32) -> Vec<u8> {
        let req_addr = self.alloc(request.len() as u32);
        self.mem
            .write_slice(request, GuestAddress(req_addr))
            .unwrap();
        let mut segs = vec![Segment {
            addr: req_addr,
            len: request.len() as u32,
            writable: false,
        }];
        let reply_addr = self.alloc(reply_cap);
        if reply_cap > 0 {
            // Poison the reply area so stale bytes cannot pass for a reply.
            self.mem
                .write_slice(&vec![0xa5; reply_cap as usize], GuestAddress(reply_addr))
                .unwrap();
            segs.push(Segment {
                addr: reply_addr,
                len: reply_cap,
                writable: true,
            });
        }
        let head = self.push_chain(q, &segs);
        self.kick(q);
        let (id, len) = self.wait_used(q);
        assert_eq!(id, head, "used element for another chain");
        assert!(
            len <= reply_cap,
            "device claims {len} bytes in a {reply_cap}-byte buffer"
        );
        let mut out = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(reply_addr))
            .unwrap();
        out
    }

    fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    /// Builds a request: header (with the right `len`) followed by `args`.
    pub fn request(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]]) -> (u64, Vec<u8>) {
        let body: usize = args.iter().map(|a| a.len()).sum();
        let unique = self.next_unique();
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + body) as u32,
            opcode,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            ..Default::default()
        };
        let mut bytes = h.as_slice().to_vec();
        for a in args {
            bytes.extend_from_slice(a);
        }
        (unique, bytes)
    }

    /// Sends a request on request queue 1 and parses the reply: `Ok(body)` or
    /// `Err(errno)`. Checks the reply header against the used length.
    pub fn call_cap(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        reply_cap: u32,
    ) -> Result<Vec<u8>, i32> {
        let (unique, req) = self.request(opcode, nodeid, args);
        let reply = self.raw(1, &req, reply_cap);
        parse_reply(unique, &reply)
    }

    pub fn call(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]]) -> Result<Vec<u8>, i32> {
        self.call_cap(opcode, nodeid, args, 64 * 1024)
    }

    // ---- FUSE operations ----

    pub fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 38,
            max_readahead: 128 * 1024,
            flags: INIT_FLAGS,
            ..Default::default()
        };
        let body = self.call(FUSE_INIT, 0, &[init.as_slice()]).unwrap();
        read_struct(&body)
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let name = cstr(name);
        self.call(FUSE_LOOKUP, parent, &[name.as_bytes_with_nul()])
            .map(|b| read_struct(&b))
    }

    pub fn getattr(&mut self, node: u64) -> Result<Attr, i32> {
        let g = GetattrIn::default();
        self.call(FUSE_GETATTR, node, &[g.as_slice()])
            .map(|b| read_struct::<AttrOut>(&b).attr)
    }

    pub fn setattr(&mut self, node: u64, s: SetattrIn) -> Result<Attr, i32> {
        self.call(FUSE_SETATTR, node, &[s.as_slice()])
            .map(|b| read_struct::<AttrOut>(&b).attr)
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        self.call(FUSE_READLINK, node, &[])
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let o = OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        self.call(FUSE_OPEN, node, &[o.as_slice()])
            .map(|b| read_struct::<OpenOut>(&b).fh)
    }

    pub fn opendir(&mut self, node: u64) -> Result<u64, i32> {
        let o = OpenIn {
            flags: libc::O_RDONLY as u32 | libc::O_DIRECTORY as u32,
            open_flags: 0,
        };
        self.call(FUSE_OPENDIR, node, &[o.as_slice()])
            .map(|b| read_struct::<OpenOut>(&b).fh)
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call_cap(FUSE_READ, node, &[r.as_slice()], size + 16)
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let w = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(FUSE_WRITE, node, &[w.as_slice(), data])
            .map(|b| read_struct::<WriteOut>(&b).size)
    }

    pub fn release(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        let r = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(FUSE_RELEASE, node, &[r.as_slice()]).map(drop)
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, u64), i32> {
        let c = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            open_flags: 0,
        };
        let name = cstr(name);
        self.call(
            FUSE_CREATE,
            parent,
            &[c.as_slice(), name.as_bytes_with_nul()],
        )
        .map(|b| {
            let e: EntryOut = read_struct(&b);
            let o: OpenOut = read_struct(&b[std::mem::size_of::<EntryOut>()..]);
            (e, o.fh)
        })
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
    ) -> Result<EntryOut, i32> {
        self.mknod_with_umask(parent, name, mode, rdev, 0)
    }

    /// MKNOD with the guest's umask (the kernel sends its process's).
    pub fn mknod_with_umask(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<EntryOut, i32> {
        let m = MknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        };
        let name = cstr(name);
        self.call(
            FUSE_MKNOD,
            parent,
            &[m.as_slice(), name.as_bytes_with_nul()],
        )
        .map(|b| read_struct(&b))
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        umask: u32,
    ) -> Result<EntryOut, i32> {
        let m = MkdirIn { mode, umask };
        let name = cstr(name);
        self.call(
            FUSE_MKDIR,
            parent,
            &[m.as_slice(), name.as_bytes_with_nul()],
        )
        .map(|b| read_struct(&b))
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        let name = cstr(name);
        let target = cstr(target);
        self.call(
            FUSE_SYMLINK,
            parent,
            &[name.as_bytes_with_nul(), target.as_bytes_with_nul()],
        )
        .map(|b| read_struct(&b))
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(FUSE_UNLINK, parent, &[name.as_bytes_with_nul()])
            .map(drop)
    }

    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(FUSE_RMDIR, parent, &[name.as_bytes_with_nul()])
            .map(drop)
    }

    pub fn rename2(
        &mut self,
        olddir: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), i32> {
        let r = Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        let (old, new) = (cstr(old), cstr(new));
        self.call(
            FUSE_RENAME2,
            olddir,
            &[
                r.as_slice(),
                old.as_bytes_with_nul(),
                new.as_bytes_with_nul(),
            ],
        )
        .map(drop)
    }

    pub fn link(&mut self, node: u64, newparent: u64, name: &str) -> Result<EntryOut, i32> {
        let l = LinkIn { oldnodeid: node };
        let name = cstr(name);
        self.call(
            FUSE_LINK,
            newparent,
            &[l.as_slice(), name.as_bytes_with_nul()],
        )
        .map(|b| read_struct(&b))
    }

    pub fn setxattr(&mut self, node: u64, name: &str, value: &[u8], flags: u32) -> Result<(), i32> {
        let s = SetxattrIn {
            size: value.len() as u32,
            flags,
        };
        let name = cstr(name);
        self.call(
            FUSE_SETXATTR,
            node,
            &[s.as_slice(), name.as_bytes_with_nul(), value],
        )
        .map(drop)
    }

    /// `size == 0` asks for the value's length.
    pub fn getxattr(&mut self, node: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
        let g = GetxattrIn { size, padding: 0 };
        let name = cstr(name);
        self.call(
            FUSE_GETXATTR,
            node,
            &[g.as_slice(), name.as_bytes_with_nul()],
        )
    }

    pub fn listxattr(&mut self, node: u64, size: u32) -> Result<Vec<u8>, i32> {
        let g = GetxattrIn { size, padding: 0 };
        self.call(FUSE_LISTXATTR, node, &[g.as_slice()])
    }

    pub fn removexattr(&mut self, node: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(FUSE_REMOVEXATTR, node, &[name.as_bytes_with_nul()])
            .map(drop)
    }

    pub fn access(&mut self, node: u64, mask: i32) -> Result<(), i32> {
        let a = AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        self.call(FUSE_ACCESS, node, &[a.as_slice()]).map(drop)
    }

    pub fn fallocate(&mut self, node: u64, fh: u64, length: u64) -> Result<(), i32> {
        let f = FallocateIn {
            fh,
            offset: 0,
            length,
            mode: 0,
            padding: 0,
        };
        self.call(FUSE_FALLOCATE, node, &[f.as_slice()]).map(drop)
    }

    /// READDIR from offset 0: `(name, type)` of every entry.
    pub fn readdir(&mut self, node: u64) -> Result<Vec<(String, u32)>, i32> {
        let fh = self.opendir(node)?;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let r = ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            };
            let body = self.call_cap(FUSE_READDIR, node, &[r.as_slice()], 4096 + 16)?;
            if body.is_empty() {
                break;
            }
            let mut rest = &body[..];
            while rest.len() >= std::mem::size_of::<Dirent>() {
                let d: Dirent = read_struct(rest);
                let start = std::mem::size_of::<Dirent>();
                let name = &rest[start..start + d.namelen as usize];
                out.push((String::from_utf8_lossy(name).into_owned(), d.type_));
                offset = d.off;
                let rec = (start + d.namelen as usize).next_multiple_of(8);
                rest = &rest[rec.min(rest.len())..];
            }
        }
        let r = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(FUSE_RELEASEDIR, node, &[r.as_slice()])?;
        Ok(out)
    }

    /// FORGET on the high-priority queue, which carries no reply buffer.
    pub fn forget(&mut self, node: u64, nlookup: u64) -> u32 {
        let f = ForgetIn { nlookup };
        let (_, req) = self.request(FUSE_FORGET, node, &[f.as_slice()]);
        let addr = self.alloc(req.len() as u32);
        self.mem.write_slice(&req, GuestAddress(addr)).unwrap();
        let head = self.push_chain(
            0,
            &[Segment {
                addr,
                len: req.len() as u32,
                writable: false,
            }],
        );
        self.kick(0);
        let (id, len) = self.wait_used(0);
        assert_eq!(id, head);
        len
    }

    /// Looks a path up from the root, one component at a time.
    pub fn walk(&mut self, path: &str) -> Result<EntryOut, i32> {
        let mut node = ROOT_ID;
        let mut entry = None;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            let e = self.lookup(node, c)?;
            node = e.nodeid;
            entry = Some(e);
        }
        entry.ok_or(libc::EINVAL)
    }
}

/// A C string for a test name (test names never hold NUL).
pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Reads a wire struct from the start of `bytes` (zero-extended if short).
pub fn read_struct<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = std::mem::size_of::<T>().min(bytes.len());
    v.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
    v
}

/// Checks a reply against its request and splits off the body.
pub fn parse_reply(unique: u64, reply: &[u8]) -> Result<Vec<u8>, i32> {
    assert!(
        reply.len() >= std::mem::size_of::<OutHeader>(),
        "reply of {} bytes has no header",
        reply.len()
    );
    let h: OutHeader = read_struct(reply);
    assert_eq!(h.unique, unique, "reply for another request");
    assert_eq!(
        h.len as usize,
        reply.len(),
        "header len disagrees with used len"
    );
    if h.error != 0 {
        assert!(h.error < 0, "positive error {}", h.error);
        return Err(-h.error);
    }
    Ok(reply[std::mem::size_of::<OutHeader>()..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sizes_match_linux() {
        use std::mem::size_of;
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<InitIn>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<CreateIn>(), 16);
        assert_eq!(size_of::<MknodIn>(), 16);
        assert_eq!(size_of::<Rename2In>(), 16);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<Dirent>(), 24);
    }
}
