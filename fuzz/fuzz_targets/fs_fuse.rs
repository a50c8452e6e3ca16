//! virtio-fs: arbitrary FUSE requests (any opcode, node, handle, body, length
//! field, descriptor layout) through the device's activation checks, its worker
//! and fuse-backend-rs's server, on a fresh temp share each run: one read-only
//! share, one read-write share, or read-only layers plus a read-write upper
//! under one device. Node ids and file handles from replies are fed back to
//! later requests. After each run: nothing beside the shares changed (a canary
//! file, a directory and the symlinks' targets), read-only shares are
//! untouched, and no device node other than a 0/0 whiteout exists.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use moat_fuzz::guest::{ChainSpec, GuestQueue};
use moat_fuzz::inputs::fs_fuse::*;
use moat_fuzz::tree::{assert_unchanged, device_nodes, snapshot};
use moat_vmm::devices::virtio::fs::{Fs, FsConfig, FsMount, QUEUE_SIZE};
use moat_vmm::devices::virtio::queue_util::testing::interrupt;
use moat_vmm::devices::virtio::{ActivateContext, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes as _, GuestAddress};

const MEM: u64 = 8 << 20;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const ENTRY_OUT: usize = 128;

/// `fuse_init_in` for protocol 7.31 with no flags.
pub fn init_body() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&7u32.to_le_bytes());
    b.extend_from_slice(&31u32.to_le_bytes());
    b.extend_from_slice(&(128u32 << 10).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 48]);
    b
}

/// The temp tree of one run.
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    /// Read-write shares (skipped by the outside snapshot).
    rw: Vec<PathBuf>,
    mounts: Vec<FsMount>,
}

fn populate(dir: &Path, base: &Path) {
    std::fs::create_dir_all(dir.join("dir/sub")).unwrap();
    std::fs::write(dir.join("file"), b"hello from the share").unwrap();
    std::fs::write(dir.join("dir/sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("../canary", dir.join("up")).unwrap();
    std::os::unix::fs::symlink(base.join("canary"), dir.join("abs")).unwrap();
    std::os::unix::fs::symlink(base.join("outside"), dir.join("outdir")).unwrap();
    std::os::unix::fs::symlink("dir", dir.join("rel")).unwrap();
}

impl Tree {
    fn new(layout: Layout) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::write(base.join("canary"), b"host canary").unwrap();
        std::fs::create_dir(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret"), b"host secret").unwrap();
        let mut rw = Vec::new();
        let mut mounts = Vec::new();
        match layout {
            Layout::ReadOnly | Layout::ReadWrite => {
                let share = base.join("share");
                populate(&share, &base);
                let read_only = layout == Layout::ReadOnly;
                if !read_only {
                    rw.push(share.clone());
                }
                mounts.push(FsMount {
                    guest_path: "/".into(),
                    host_dir: share,
                    read_only,
                });
            }
            Layout::Layers => {
                for (name, guest, read_only) in [
                    ("layer0", "/layers/0", true),
                    ("layer1", "/layers/1", true),
                    ("upper", "/upper", false),
                ] {
                    let d = base.join(name);
                    populate(&d, &base);
                    if !read_only {
                        rw.push(d.clone());
                    }
                    mounts.push(FsMount {
                        guest_path: guest.into(),
                        host_dir: d,
                        read_only,
                    });
                }
            }
        }
        Tree {
            _dir: dir,
            base,
            rw,
            mounts,
        }
    }
}

/// Node ids and handles learned from replies.
#[derive(Default)]
struct Learned {
    nodes: Vec<u64>,
    handles: Vec<u64>,
}

impl Learned {
    fn reply(&mut self, opcode: u32, reply: &[u8]) {
        if reply.len() < OUT_HEADER || reply[4..8] != [0; 4] {
            return;
        }
        let at = |off: usize| -> Option<u64> {
            reply
                .get(off..off + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        match opcode {
            // LOOKUP, SYMLINK, MKNOD, MKDIR, LINK: fuse_entry_out.
            1 | 6 | 8 | 9 | 13 => self.nodes.extend(at(OUT_HEADER)),
            // OPEN, OPENDIR: fuse_open_out.
            14 | 27 => self.handles.extend(at(OUT_HEADER)),
            // CREATE: entry then open.
            35 => {
                self.nodes.extend(at(OUT_HEADER));
                self.handles.extend(at(OUT_HEADER + ENTRY_OUT));
            }
            _ => {}
        }
        self.nodes.truncate(64);
        self.handles.truncate(64);
    }
}

fn encode(r: &Request, unique: u64, learned: &Learned) -> Vec<u8> {
    let node = match r.node {
        Node::Root => 1,
        Node::Learned(i) if !learned.nodes.is_empty() => {
            learned.nodes[usize::from(i) % learned.nodes.len()]
        }
        Node::Learned(_) => 1,
        Node::Raw(n) => n,
    };
    let mut body = r.body.0.clone();
    if let (Some(i), false) = (r.fh, learned.handles.is_empty()) {
        let fh = learned.handles[usize::from(i) % learned.handles.len()];
        if body.len() < 8 {
            body.resize(8, 0);
        }
        body[..8].copy_from_slice(&fh.to_le_bytes());
    }
    let len = r.len.unwrap_or((IN_HEADER + body.len()) as u32);
    let mut out = Vec::with_capacity(IN_HEADER + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&r.opcode.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&r.uid.to_le_bytes());
    out.extend_from_slice(&r.gid.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&body);
    out
}

/// The guest's queues, used by the device's scoped worker thread between
/// rounds.
struct Guest<'a> {
    queues: [GuestQueue<'a>; 2],
}

// SAFETY: a `GuestQueue` holds raw pointers (virtio-queue's mock rings) into the
// guest memory mapping, which outlives the run. `serve_rounds` calls the closure
// on one scoped thread while this thread waits for it, so the queues are never
// used from two threads at once.
unsafe impl Send for Guest<'_> {}

impl Guest<'_> {
    /// Publishes a request on queue `q`; returns its writable buffers. A
    /// method, so the closure captures the whole `Guest` (which is `Send`).
    fn push(&mut self, q: usize, chain: &ChainSpec, request: &[u8]) -> Vec<(u64, u32)> {
        self.queues[q]
            .push(chain, request)
            .map(|(_, bufs)| bufs)
            .unwrap_or_default()
    }
}

fn read_reply(mem: &GuestMemory, bufs: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in bufs {
        let n = (len as usize).min(4096 - out.len().min(4096));
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        out.extend_from_slice(&b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    let tree = Tree::new(input.layout);
    let skip: Vec<&Path> = tree.rw.iter().map(PathBuf::as_path).collect();
    let before = snapshot(&tree.base, &skip);
    let dev = Fs::new(FsConfig::new("fuzz", tree.mounts.clone())).unwrap();
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut guest = Guest {
        queues: [
            GuestQueue::new(&mem, MEM, 0, QUEUE_SIZE, 0x2_0000..0x10_0000),
            GuestQueue::new(&mem, MEM, 0x1_0000, QUEUE_SIZE, 0x10_0000..MEM),
        ],
    };
    let ctx = ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues: guest.queues.iter().map(GuestQueue::active_queue).collect(),
        interrupt: interrupt(),
    };
    let requests: Vec<&Request> = input.requests.iter().take(48).collect();
    let mut learned = Learned::default();
    // The request whose reply the next round reads: (opcode, writable buffers).
    let mut pending: Option<(u32, Vec<(u64, u32)>)> = None;
    if input.init {
        let mut init = vec![0u8; IN_HEADER];
        init[0..4].copy_from_slice(&((IN_HEADER + 64) as u32).to_le_bytes());
        init[4..8].copy_from_slice(&26u32.to_le_bytes());
        init.extend_from_slice(&init_body());
        let spec = moat_fuzz::seed::simple_chain(4096);
        guest.queues[1].push(&spec, &init);
    }
    let mut next = 0usize;
    dev.serve_rounds(ctx, |_| {
        if let Some((opcode, bufs)) = pending.take() {
            learned.reply(opcode, &read_reply(&mem, &bufs));
        }
        let Some(r) = requests.get(next) else {
            return false;
        };
        next += 1;
        let bytes = encode(r, next as u64, &learned);
        let bufs = guest.push(usize::from(!r.hiprio), &r.chain, &bytes);
        pending = Some((r.opcode, bufs));
        true
    })
    .unwrap();
    drop(dev);
    let after = snapshot(&tree.base, &skip);
    assert_unchanged("outside the read-write shares", &before, &after);
    for rw in &tree.rw {
        let nodes = device_nodes(rw);
        assert!(nodes.is_empty(), "device nodes in a share: {nodes:?}");
    }
});
