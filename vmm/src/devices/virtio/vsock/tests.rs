//! Device tests: a simulated guest (virtio driver and a small vsock stack that
//! behaves like Linux's) on one side, real Unix sockets in a temp dir on the
//! host side, and the device's worker thread in between.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::packet::*;
use super::*;
use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
/// Guest buffer behind each descriptor.
const SLOT: u64 = 0x11000;
const BUF_BASE: u64 = 0x10_0000;
const MEM_SIZE: usize = 0x10_0000 + 3 * QSIZE as usize * SLOT as usize + 0x10_0000;
const WAIT: Duration = Duration::from_secs(20);

// ---- scaffolding -----------------------------------------------------------

/// A temp dir removed on drop; shared with the other test modules of vsock.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "moat-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(super) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fast() -> Tunables {
    Tunables {
        handshake_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        close_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(2),
        ..Tunables::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hash(data: &[u8]) -> (usize, u64) {
    let mut h = DefaultHasher::new();
    h.write(data);
    (data.len(), h.finish())
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Reads until EOF (or error) with a deadline; returns what was read and
/// whether EOF was seen.
fn read_to_eof(s: &mut UnixStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

// ---- the guest's virtio driver ---------------------------------------------

/// The descriptors of one chain: (index, buffer address, length).
type Chain = Vec<(u16, GuestAddress, u32)>;

/// One virtqueue, driven as a guest driver would.
struct DriverQueue {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    buf_base: u64,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    /// Descriptors of each chain in flight, by head.
    chains: HashMap<u16, Chain>,
    notify: EventFd,
}

impl DriverQueue {
    fn new(index: u64) -> (DriverQueue, ActiveQueue) {
        // Our own ring layout: `MockSplitQueue::create` places the used ring
        // `len` bytes after the avail ring's entries instead of `2 * len`, so
        // with 256 entries its two rings overlap.
        let base = index * 0x8000;
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_ready(true);
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dq = DriverQueue {
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            buf_base: BUF_BASE + index * QSIZE as u64 * SLOT,
            avail_idx: 0,
            used_seen: 0,
            free: (0..QSIZE).rev().collect(),
            chains: HashMap::new(),
            notify: notify.try_clone().unwrap(),
        };
        (dq, ActiveQueue { queue, notify })
    }

    fn slot(&self, i: u16) -> GuestAddress {
        GuestAddress(self.buf_base + u64::from(i) * SLOT)
    }

    fn write_desc(&self, mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(d, self.desc.unchecked_add(16 * u64::from(i)))
            .unwrap();
    }

    /// Adds a chain; each part is (address or `None` for the descriptor's own
    /// slot, length, write-only). Returns the head, or `None` when out of
    /// descriptors.
    fn add_chain(&mut self, mem: &GuestMemory, parts: &[(Option<u64>, u32, bool)]) -> Option<u16> {
        self.add_chain_with(mem, parts, |_| {})
    }

    /// Like `add_chain`, calling `fill` with the chain's buffers before the
    /// chain is published to the device.
    fn add_chain_with(
        &mut self,
        mem: &GuestMemory,
        parts: &[(Option<u64>, u32, bool)],
        fill: impl FnOnce(&[(u16, GuestAddress, u32)]),
    ) -> Option<u16> {
        if self.free.len() < parts.len() {
            return None;
        }
        let idx: Vec<u16> = (0..parts.len()).map(|_| self.free.pop().unwrap()).collect();
        let mut descs = Vec::new();
        for (k, (&(addr, len, write), &i)) in parts.iter().zip(&idx).enumerate() {
            let addr = addr.unwrap_or(self.slot(i).0);
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = if k + 1 < idx.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                idx[k + 1]
            } else {
                0
            };
            self.write_desc(mem, i, addr, len, flags, next);
            descs.push((i, GuestAddress(addr), len));
        }
        fill(&descs);
        self.chains.insert(idx[0], descs);
        self.publish(mem, idx[0]);
        Some(idx[0])
    }

    /// Puts `head` on the avail ring (no matter whether it is a real chain).
    fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(self.avail_idx % QSIZE));
        mem.write_obj(head.to_le(), slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx.to_le(),
            self.avail.unchecked_add(2),
            std::sync::atomic::Ordering::Release,
        )
        .unwrap();
    }

    fn kick(&self) {
        self.notify.write(1).unwrap();
    }

    /// Used elements since the last call, with their chains freed.
    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32, Chain)> {
        let idx: u16 = u16::from_le(
            mem.load(
                self.used.unchecked_add(2),
                std::sync::atomic::Ordering::Acquire,
            )
            .unwrap(),
        );
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self
                .used
                .unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = mem.read_obj(e).unwrap();
            let len: u32 = mem.read_obj(e.unchecked_add(4)).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            let head = u16::try_from(id).unwrap();
            let chain = self.chains.remove(&head).unwrap_or_else(|| {
                panic!(
                    "device used chain {head} (len {len}) twice or never offered; in flight: {:?}",
                    self.chains.keys().collect::<Vec<_>>()
                )
            });
            for &(i, _, _) in &chain {
                self.free.push(i);
            }
            out.push((head, len, chain));
        }
        out
    }
}

/// The guest's virtio side of the device.
struct Guest {
    mem: GuestMemory,
    rx: DriverQueue,
    tx: DriverQueue,
    _ev: DriverQueue,
    interrupt: Interrupt,
    rx_buf_len: u32,
    /// Most rx buffers posted at once.
    rx_limit: usize,
    /// Unusable rx chains to post before the next good buffers.
    bad_rx: Vec<Vec<(Option<u64>, u32, bool)>>,
    /// Rx buffers the device returned unused (length 0).
    rx_refused: usize,
}

impl Guest {
    /// A guest with its queues set up, and the context to activate a device.
    fn new(rx_limit: usize) -> (Guest, ActivateContext) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, rxq) = DriverQueue::new(0);
        let (tx, txq) = DriverQueue::new(1);
        let (ev, evq) = DriverQueue::new(2);
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut g = Guest {
            mem: mem.clone(),
            rx,
            tx,
            _ev: ev,
            interrupt: interrupt.clone(),
            rx_buf_len: 4096,
            rx_limit,
            bad_rx: Vec::new(),
            rx_refused: 0,
        };
        g.refill_rx();
        let ctx = ActivateContext {
            mem,
            acked_features: VIRTIO_F_VERSION_1,
            queues: vec![rxq, txq, evq],
            interrupt,
        };
        (g, ctx)
    }

    fn refill_rx(&mut self) {
        let mut added = false;
        while self.rx.chains.len() < self.rx_limit {
            let parts = if self.bad_rx.is_empty() {
                vec![(None, self.rx_buf_len, true)]
            } else {
                self.bad_rx.remove(0)
            };
            if self.rx.add_chain(&self.mem, &parts).is_none() {
                break;
            }
            added = true;
        }
        if added {
            self.rx.kick();
        }
    }

    /// Sends one packet (header and payload in separate descriptors, as Linux
    /// does). `false` when the tx queue is full.
    fn send(&mut self, hdr: VsockHeader, payload: &[u8]) -> bool {
        self.reclaim_tx();
        let mut parts = vec![(None, HDR_SIZE as u32, false)];
        if !payload.is_empty() {
            parts.push((None, payload.len() as u32, false));
        }
        let mem = self.mem.clone();
        let added = self.tx.add_chain_with(&self.mem, &parts, |chain| {
            mem.write_obj(hdr, chain[0].1).unwrap();
            if let Some(&(_, addr, _)) = chain.get(1) {
                mem.write_slice(payload, addr).unwrap();
            }
        });
        if added.is_none() {
            return false;
        }
        self.tx.kick();
        true
    }

    /// Sends a hand-made chain whose buffers the caller filled, waiting for
    /// room in the tx queue.
    fn send_chain(&mut self, parts: &[(Option<u64>, u32, bool)]) -> u16 {
        let end = Instant::now() + WAIT;
        loop {
            self.reclaim_tx();
            if let Some(head) = self.tx.add_chain(&self.mem, parts) {
                self.tx.kick();
                return head;
            }
            assert!(Instant::now() < end, "tx queue stays full");
            thread::sleep(Duration::from_micros(300));
        }
    }

    fn reclaim_tx(&mut self) -> Vec<u16> {
        let used = self.tx.take_used(&self.mem);
        for (_, len, _) in &used {
            assert_eq!(*len, 0, "device wrote into a tx buffer");
        }
        used.into_iter().map(|(h, _, _)| h).collect()
    }

    /// Packets the device delivered since the last call.
    fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len, chain) in self.rx.take_used(&self.mem) {
            if len == 0 {
                // A buffer the device refused.
                self.rx_refused += 1;
                continue;
            }
            let (_, addr, buf_len) = chain[0];
            assert!(
                len as usize >= HDR_SIZE && len <= buf_len,
                "bad used len {len}"
            );
            let hdr: VsockHeader = self.mem.read_obj(addr).unwrap();
            assert_eq!(
                hdr.len() as usize + HDR_SIZE,
                len as usize,
                "used len disagrees with header (head {head})"
            );
            let mut payload = vec![0u8; hdr.len() as usize];
            self.mem
                .read_slice(&mut payload, addr.unchecked_add(HDR_SIZE as u64))
                .unwrap();
            out.push((hdr, payload));
        }
        self.refill_rx();
        out
    }
}

// ---- the guest's vsock stack ----------------------------------------------

#[derive(Debug, Default)]
struct Sock {
    connected: bool,
    reset: bool,
    peer_shutdown: u32,
    /// Our receive buffer, as advertised.
    buf_alloc: u32,
    /// Bytes the application consumed.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the device.
    fwd_told: u32,
    rx_cnt: u32,
    /// Whether the application reads what arrives.
    consume: bool,
    received: Vec<u8>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    out: VecDeque<u8>,
    /// Send SHUTDOWN with these flags once `out` is sent.
    shutdown_after: Option<u32>,
    /// Ignore the device's credit (a misbehaving guest).
    ignore_credit: bool,
    /// Do not answer the device's SHUTDOWN with RST.
    mute: bool,
    credit_updates_rx: usize,
    credit_requests_rx: usize,
}

impl Sock {
    fn new(buf_alloc: u32) -> Sock {
        Sock {
            buf_alloc,
            consume: true,
            ..Default::default()
        }
    }
}

type Key = (u32, u32); // (guest port, host port)

struct Stack {
    g: Guest,
    socks: HashMap<Key, Sock>,
    /// Guest ports listening, with the buf_alloc of accepted sockets.
    listening: HashMap<u32, u32>,
    /// Guest ports that ignore REQUESTs.
    deaf: Vec<u32>,
    /// Every packet received, in order.
    log: Vec<VsockHeader>,
    chunk: usize,
    /// Rounds of one packet per socket per step.
    burst: usize,
    /// CREDIT_UPDATEs the guest sent.
    credit_updates_tx: usize,
}

impl Stack {
    fn new(g: Guest) -> Stack {
        Stack {
            g,
            socks: HashMap::new(),
            listening: HashMap::new(),
            deaf: Vec::new(),
            log: Vec::new(),
            chunk: 4096,
            burst: 1,
            credit_updates_tx: 0,
        }
    }

    fn hdr(&self, key: Key, op: u16) -> VsockHeader {
        let (buf_alloc, fwd) = self
            .socks
            .get(&key)
            .map(|s| (s.buf_alloc, s.fwd_cnt))
            .unwrap_or((0, 0));
        guest_hdr(key.0, key.1, op).with_credit(buf_alloc, fwd)
    }

    fn send_ctl(&mut self, key: Key, op: u16, flags: u32) {
        let hdr = self.hdr(key, op).with_flags(flags);
        if op == OP_CREDIT_UPDATE {
            self.credit_updates_tx += 1;
        }
        if let Some(s) = self.socks.get_mut(&key) {
            s.fwd_told = s.fwd_cnt;
        }
        let end = Instant::now() + WAIT;
        while !self.g.send(hdr, &[]) {
            assert!(Instant::now() < end, "tx queue stays full");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn connect(&mut self, guest_port: u32, host_port: u32, buf_alloc: u32) -> Key {
        let key = (guest_port, host_port);
        self.socks.insert(key, Sock::new(buf_alloc));
        self.send_ctl(key, OP_REQUEST, 0);
        key
    }

    fn write(&mut self, key: Key, data: &[u8]) {
        self.socks.get_mut(&key).unwrap().out.extend(data);
    }

    fn step(&mut self) {
        self.g.reclaim_tx();
        for (hdr, payload) in self.g.recv() {
            self.dispatch(hdr, payload);
        }
        self.pump();
    }

    fn dispatch(&mut self, hdr: VsockHeader, payload: Vec<u8>) {
        self.log.push(hdr);
        assert_eq!(hdr.dst_cid(), GUEST_CID, "{hdr:?}");
        assert_eq!(hdr.type_(), TYPE_STREAM, "{hdr:?}");
        let key = (hdr.dst_port(), hdr.src_port());
        if hdr.op() == OP_REQUEST {
            assert_eq!(hdr.src_cid(), HOST_CID);
            if self.deaf.contains(&key.0) {
                return;
            }
            if let Some(&buf_alloc) = self.listening.get(&key.0) {
                let mut s = Sock::new(buf_alloc);
                s.connected = true;
                s.peer_buf_alloc = hdr.buf_alloc();
                s.peer_fwd_cnt = hdr.fwd_cnt();
                self.socks.insert(key, s);
                self.send_ctl(key, OP_RESPONSE, 0);
            } else {
                self.send_ctl(key, OP_RST, 0);
            }
            return;
        }
        let Some(s) = self.socks.get_mut(&key) else {
            return;
        };
        s.peer_buf_alloc = hdr.buf_alloc();
        s.peer_fwd_cnt = hdr.fwd_cnt();
        match hdr.op() {
            OP_RESPONSE => s.connected = true,
            OP_RW => {
                // The device must stay within the credit it was told.
                let in_flight = s.rx_cnt.wrapping_sub(s.fwd_told) as usize + payload.len();
                assert!(
                    in_flight <= s.buf_alloc as usize,
                    "device exceeded guest credit: {in_flight} > {}",
                    s.buf_alloc
                );
                assert!(
                    s.peer_shutdown & SHUTDOWN_SEND == 0,
                    "data after SHUTDOWN(SEND)"
                );
                s.rx_cnt = s.rx_cnt.wrapping_add(payload.len() as u32);
                s.received.extend_from_slice(&payload);
                if s.consume {
                    s.fwd_cnt = s.rx_cnt;
                }
                // Like Linux: update the peer once free space runs low.
                let unseen = s.fwd_cnt.wrapping_sub(s.fwd_told);
                if unseen > 0 && unseen >= s.buf_alloc / 4 {
                    self.send_ctl(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_CREDIT_UPDATE => s.credit_updates_rx += 1,
            OP_CREDIT_REQUEST => {
                s.credit_requests_rx += 1;
                self.send_ctl(key, OP_CREDIT_UPDATE, 0);
            }
            OP_SHUTDOWN => {
                s.peer_shutdown |= hdr.flags();
                if s.peer_shutdown == SHUTDOWN_BOTH && !s.mute {
                    s.reset = true;
                    self.send_ctl(key, OP_RST, 0);
                }
            }
            OP_RST => s.reset = true,
            op => panic!("device sent op {op}"),
        }
    }

    /// Lets the application consume what it received.
    fn consume(&mut self, key: Key) {
        let s = self.socks.get_mut(&key).unwrap();
        s.consume = true;
        s.fwd_cnt = s.rx_cnt;
        self.send_ctl(key, OP_CREDIT_UPDATE, 0);
    }

    /// Sends pending data within the device's credit, one packet per socket
    /// per round so connections interleave.
    fn pump(&mut self) {
        let keys: Vec<Key> = self.socks.keys().copied().collect();
        for _ in 0..self.burst {
            for &key in &keys {
                if !self.pump_one(key) {
                    return;
                }
            }
        }
    }

    /// Sends at most one packet for `key`; `false` when the tx queue is full.
    fn pump_one(&mut self, key: Key) -> bool {
        let s = &self.socks[&key];
        if !s.connected || s.reset {
            return true;
        }
        if s.out.is_empty() {
            if let Some(flags) = s.shutdown_after {
                self.socks.get_mut(&key).unwrap().shutdown_after = None;
                self.send_ctl(key, OP_SHUTDOWN, flags);
            }
            return true;
        }
        let credit = if s.ignore_credit {
            usize::MAX
        } else {
            s.peer_buf_alloc
                .saturating_sub(s.tx_cnt.wrapping_sub(s.peer_fwd_cnt)) as usize
        };
        let n = s.out.len().min(credit).min(self.chunk);
        if n == 0 {
            return true;
        }
        let data: Vec<u8> = s.out.iter().take(n).copied().collect();
        let hdr = self.hdr(key, OP_RW).with_len(n as u32);
        if !self.g.send(hdr, &data) {
            return false;
        }
        let s = self.socks.get_mut(&key).unwrap();
        s.fwd_told = s.fwd_cnt;
        s.out.drain(..n);
        s.tx_cnt = s.tx_cnt.wrapping_add(n as u32);
        true
    }

    fn run_until(&mut self, what: &str, mut cond: impl FnMut(&Stack) -> bool) {
        let end = Instant::now() + WAIT;
        loop {
            self.step();
            if cond(self) {
                return;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            thread::sleep(Duration::from_micros(300));
        }
    }

    /// Runs until the guest's sending on `key` is stuck for want of credit
    /// (and stays stuck for a while); returns the bytes it could not send.
    fn run_until_credit_stalled(&mut self, key: Key) -> usize {
        let end = Instant::now() + WAIT;
        loop {
            self.run_until("credit exhausted", |n| {
                let s = n.sock(key);
                !s.out.is_empty() && s.tx_cnt.wrapping_sub(s.peer_fwd_cnt) == s.peer_buf_alloc
            });
            let before = self.sock(key).out.len();
            self.run_for(Duration::from_millis(200));
            let s = self.sock(key);
            if s.out.len() == before && s.tx_cnt.wrapping_sub(s.peer_fwd_cnt) == s.peer_buf_alloc {
                return before;
            }
            assert!(Instant::now() < end, "guest never stalled");
        }
    }

    /// Runs for a while, for things that must not happen.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step();
            thread::sleep(Duration::from_micros(300));
        }
    }

    fn sock(&self, key: Key) -> &Sock {
        &self.socks[&key]
    }

    fn got_op(&self, key: Key, op: u16) -> bool {
        self.log
            .iter()
            .any(|h| (h.dst_port(), h.src_port()) == key && h.op() == op)
    }
}

fn guest_hdr(src_port: u32, dst_port: u32, op: u16) -> VsockHeader {
    VsockHeader::default()
        .with_src_cid(GUEST_CID)
        .with_dst_cid(HOST_CID)
        .with_type(TYPE_STREAM)
        .with_op(op)
        .with_ports(src_port, dst_port)
}

// ---- a device with a guest and a temp dir ----------------------------------

struct Rig {
    dev: Vsock,
    net: Stack,
    dir: TempDir,
}

impl Rig {
    fn new(tun: Tunables) -> Rig {
        Self::with_rx_limit(tun, 32)
    }

    fn with_rx_limit(tun: Tunables, rx_limit: usize) -> Rig {
        let dir = TempDir::new();
        let mut dev = Vsock::with_tunables(
            VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: dir.join("v.sock"),
            },
            tun,
        )
        .unwrap();
        let (g, ctx) = Guest::new(rx_limit);
        dev.activate(ctx).unwrap();
        Rig {
            dev,
            net: Stack::new(g),
            dir,
        }
    }

    fn uds(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// A host listener for guest connects to `port`.
    fn host_listener(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.uds().display())).unwrap()
    }

    /// A host client through the handshake to guest `port` (which must listen);
    /// returns the client and the guest-side key.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Key) {
        let mut c = UnixStream::connect(self.uds()).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let host_port = read_ok_line(&mut c, &mut self.net);
        let key = (port, host_port);
        assert!(self.net.sock(key).connected);
        (c, key)
    }

    /// A guest connect to host `port`, accepted on `listener`.
    fn guest_connect(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        port: u32,
        buf_alloc: u32,
    ) -> (UnixStream, Key) {
        let key = self.net.connect(guest_port, port, buf_alloc);
        self.net.run_until("guest connect", |n| {
            n.sock(key).connected || n.sock(key).reset
        });
        assert!(
            self.net.sock(key).connected,
            "guest connect to {port} was reset"
        );
        let (s, _) = listener.accept().unwrap();
        (s, key)
    }

    /// Checks the connection still carries bytes both ways.
    fn roundtrip(&mut self, host: &mut UnixStream, key: Key, tag: &str) {
        host.write_all(tag.as_bytes()).unwrap();
        let before = self.net.sock(key).received.len();
        self.net.run_until("host→guest roundtrip", |n| {
            n.sock(key).received.len() >= before + tag.len()
        });
        assert_eq!(&self.net.sock(key).received[before..], tag.as_bytes());
        self.net.write(key, tag.as_bytes());
        let mut got = vec![0u8; tag.len()];
        let mut read = 0;
        host.set_nonblocking(true).unwrap();
        let end = Instant::now() + WAIT;
        while read < got.len() {
            self.net.step();
            match host.read(&mut got[read..]) {
                Ok(0) => panic!("host socket closed during roundtrip"),
                Ok(n) => read += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < end, "guest→host roundtrip timed out");
                    thread::sleep(Duration::from_micros(300));
                }
                Err(e) => panic!("host read: {e}"),
            }
        }
        host.set_nonblocking(false).unwrap();
        assert_eq!(got, tag.as_bytes());
    }
}

/// Drives the guest until the handshake answer arrives; returns the host port.
fn read_ok_line(c: &mut UnixStream, net: &mut Stack) -> u32 {
    c.set_nonblocking(true).unwrap();
    let mut line = Vec::new();
    let end = Instant::now() + WAIT;
    loop {
        net.step();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => panic!("client closed before OK; got {line:?}"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "no OK line");
                thread::sleep(Duration::from_micros(300));
            }
            Err(e) => panic!("read OK line: {e}"),
        }
    }
    c.set_nonblocking(false).unwrap();
    let text = String::from_utf8(line).unwrap();
    let port = text.strip_prefix("OK ").expect("OK line");
    port.parse().unwrap()
}

// ---- tests ------------------------------------------------------------------

#[test]
fn device_identity_and_config_space() {
    let mut rig = Rig::new(fast());
    assert_eq!(rig.dev.device_type(), 19);
    assert_eq!(rig.dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(rig.dev.avail_features(), VIRTIO_F_VERSION_1);
    let mut cid = [0u8; 8];
    rig.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut hi = [0xffu8; 4];
    rig.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    rig.dev.read_config(8, &mut hi);
    assert_eq!(hi, [0; 4]);
    // The config space is read-only.
    for _ in 0..100 {
        rig.dev.write_config(0, &[9; 8]);
    }
    rig.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
}

#[test]
fn host_connect_handshake_data_and_shutdown() {
    let mut rig = Rig::new(fast());
    rig.net.listening.insert(52, 64 * 1024);
    let (mut c, key) = rig.host_connect(52);
    assert!(key.1 >= 1 << 30, "host ports come from the high range");
    rig.roundtrip(&mut c, key, "ping-pong");
    assert!(rig.net.g.interrupt.status() & crate::devices::virtio::VIRTIO_MMIO_INT_VRING != 0);

    // Host half-closes: the guest learns SHUTDOWN(SEND) and can still send.
    c.shutdown(Shutdown::Write).unwrap();
    rig.net.run_until("SHUTDOWN(SEND)", |n| {
        n.sock(key).peer_shutdown == SHUTDOWN_SEND
    });
    rig.net.write(key, b"late reply");
    rig.net.socks.get_mut(&key).unwrap().shutdown_after = Some(SHUTDOWN_BOTH);
    rig.net.run_until("reply and SHUTDOWN sent", |n| {
        n.sock(key).out.is_empty() && n.sock(key).shutdown_after.is_none()
    });
    let (got, eof) = read_to_eof(&mut c, WAIT);
    assert_eq!(got, b"late reply");
    assert!(eof);
    // The guest closed both ways: the device resets and forgets it.
    rig.net.run_until("RST", |n| n.got_op(key, OP_RST));
    let m = rig.dev.metrics();
    wait_for(|| m.connections() == 0, "connection removed");
}

#[test]
fn bytes_sent_with_the_connect_line_are_not_lost() {
    let mut rig = Rig::new(fast());
    rig.net.listening.insert(52, 64 * 1024);
    let mut c = UnixStream::connect(rig.uds()).unwrap();
    // One write: the request line and the first stream bytes.
    c.write_all(b"CONNECT 52\nearly bytes").unwrap();
    let port = read_ok_line(&mut c, &mut rig.net);
    let key = (52, port);
    rig.net
        .run_until("early bytes", |n| n.sock(key).received.len() >= 11);
    assert_eq!(rig.net.sock(key).received, b"early bytes");
    rig.roundtrip(&mut c, key, "then more");
}

#[test]
fn guest_connect_with_and_without_listener() {
    let mut rig = Rig::new(fast());
    let l = rig.host_listener(1234);
    let (mut h, key) = rig.guest_connect(&l, 5000, 1234, 64 * 1024);
    rig.roundtrip(&mut h, key, "hello over vsock");

    // Nobody listens on 4321.
    let key2 = rig.net.connect(5001, 4321, 64 * 1024);
    rig.net.run_until("RST for 4321", |n| n.sock(key2).reset);
    assert!(!rig.net.sock(key2).connected);

    // A stale socket file (its listener is gone) is refused the same way.
    drop(rig.host_listener(999));
    let key3 = rig.net.connect(5002, 999, 64 * 1024);
    rig.net.run_until("RST for 999", |n| n.sock(key3).reset);

    // The first connection is unaffected.
    rig.roundtrip(&mut h, key, "still here");
    // Guest closes: the host reads EOF.
    rig.net.socks.get_mut(&key).unwrap().shutdown_after = Some(SHUTDOWN_BOTH);
    rig.net.step();
    let (rest, eof) = read_to_eof(&mut h, WAIT);
    assert!(rest.is_empty() && eof);
}

#[test]
fn bulk_both_directions_with_small_guest_credit() {
    const N: usize = (1 << 20) + 12345;
    let mut rig = Rig::new(Tunables {
        // Small device buffer too, so the device's credit updates matter.
        conn_buf_size: 32 * 1024,
        credit_update_threshold: 8 * 1024,
        ..fast()
    });
    let l = rig.host_listener(7000);
    let (h, key) = rig.guest_connect(&l, 6000, 7000, 16 * 1024);
    let to_guest = pattern(1, N);
    let to_host = pattern(2, N);
    let expect_host = hash(&to_host);

    let mut hw = h.try_clone().unwrap();
    let writer = thread::spawn(move || {
        // Uneven writes.
        for chunk in to_guest.chunks(7919) {
            hw.write_all(chunk).unwrap();
        }
        hw.shutdown(Shutdown::Write).unwrap();
        hash(&to_guest)
    });
    let mut hr = h;
    let reader = thread::spawn(move || {
        let mut got = Vec::with_capacity(N);
        hr.read_to_end(&mut got).unwrap();
        hash(&got)
    });

    rig.net.chunk = 3001;
    rig.net.write(key, &to_host);
    rig.net.socks.get_mut(&key).unwrap().shutdown_after = Some(SHUTDOWN_SEND);
    rig.net.run_until("bulk transfer", |n| {
        let s = n.sock(key);
        s.peer_shutdown & SHUTDOWN_SEND != 0 && s.out.is_empty() && s.shutdown_after.is_none()
    });
    let expect_guest = writer.join().unwrap();
    assert_eq!(hash(&rig.net.sock(key).received), expect_guest);
    assert_eq!(reader.join().unwrap(), expect_host);

    // 1 MiB through a 16 KiB guest buffer and a 32 KiB device buffer: both
    // sides had to learn of freed space (CREDIT_UPDATE, or the fwd_cnt of a
    // data packet) many times, and the device never overran the guest (checked
    // on every packet by the guest stack).
    assert!(
        rig.net.credit_updates_tx > 0,
        "guest never sent CREDIT_UPDATE"
    );
    assert!(
        rig.net.sock(key).credit_updates_rx > 0,
        "device never sent CREDIT_UPDATE"
    );
    // Both sides done: the device resets the connection after the guest's
    // SHUTDOWN(SEND) reached the host.
    rig.net
        .run_until("RST after both shutdowns", |n| n.got_op(key, OP_RST));
}

#[test]
fn two_hundred_concurrent_connections_interleaved() {
    const CONNS: u32 = 100;
    const LEN: usize = 24 * 1024;
    let mut rig = Rig::new(fast());
    let listener = rig.host_listener(8000);
    rig.net.listening.insert(80, 16 * 1024);
    rig.net.chunk = 1500;

    // 100 guest-initiated connections, all to host port 8000.
    let mut keys = Vec::new();
    let mut host_threads = Vec::new();
    for i in 0..CONNS {
        let key = rig.net.connect(10_000 + i, 8000, 16 * 1024);
        keys.push(key);
    }
    rig.net.run_until("guest connects", |n| {
        keys.iter()
            .all(|k| n.sock(*k).connected || n.sock(*k).reset)
    });
    let refused: Vec<_> = keys.iter().filter(|k| rig.net.sock(**k).reset).collect();
    assert!(refused.is_empty(), "guest connects refused: {refused:?}");
    for _ in 0..CONNS {
        let (mut s, _) = listener.accept().unwrap();
        host_threads.push(thread::spawn(move || {
            // Each host peer learns which connection it is from the first
            // bytes, then echoes a transformed stream.
            let mut id = [0u8; 4];
            s.read_exact(&mut id).unwrap();
            let id = u32::from_le_bytes(id);
            let mut data = vec![0u8; LEN];
            s.read_exact(&mut data).unwrap();
            assert!(
                data == pattern(u64::from(id), LEN),
                "host side of conn {id}: wrong data"
            );
            s.write_all(&pattern(u64::from(id) + 1000, LEN)).unwrap();
            id
        }));
    }
    // 100 host-initiated connections to guest port 80, started concurrently.
    let uds = rig.uds();
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let mut c = UnixStream::connect(&uds).unwrap();
        c.write_all(b"CONNECT 80\n").unwrap();
        clients.push(c);
    }
    for c in &mut clients {
        let port = read_ok_line(c, &mut rig.net);
        keys.push((80, port));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let key = keys[CONNS as usize + i];
        let mut c = c;
        host_threads.push(thread::spawn(move || {
            let id = 500 + i as u32;
            c.write_all(&pattern(u64::from(id) + 1000, LEN)).unwrap();
            let mut data = vec![0u8; LEN];
            c.read_exact(&mut data).unwrap();
            assert!(
                data == pattern(u64::from(key.1), LEN),
                "host client {id}: wrong data"
            );
            id
        }));
        // The guest side of a host-initiated connection answers with the
        // pattern of its host port.
        rig.net.write(key, &pattern(u64::from(key.1), LEN));
    }
    for (i, key) in keys.iter().take(CONNS as usize).enumerate() {
        let id = i as u32;
        rig.net.write(*key, &id.to_le_bytes());
        rig.net.write(*key, &pattern(u64::from(id), LEN));
    }
    assert!(rig.dev.metrics().connections() >= 2 * u64::from(CONNS));
    rig.net.run_until("all data", |n| {
        keys.iter()
            .all(|k| n.sock(*k).received.len() == LEN && n.sock(*k).out.is_empty())
    });
    for (i, key) in keys.iter().enumerate() {
        let id = if i < CONNS as usize {
            i as u32
        } else {
            500 + (i as u32 - CONNS)
        };
        assert!(
            rig.net.sock(*key).received == pattern(u64::from(id) + 1000, LEN),
            "guest side of connection {i}: wrong data"
        );
    }
    for t in host_threads {
        t.join().unwrap();
    }
}

#[test]
fn guest_that_stops_reading_gets_no_more_than_its_credit() {
    const N: usize = 256 * 1024;
    let mut rig = Rig::new(fast());
    let l = rig.host_listener(9200);
    let (h, key) = rig.guest_connect(&l, 9201, 9200, 16 * 1024);
    rig.net.socks.get_mut(&key).unwrap().consume = false;
    let data = pattern(5, N);
    let writer = {
        let data = data.clone();
        let mut h = h.try_clone().unwrap();
        thread::spawn(move || h.write_all(&data).unwrap())
    };
    // The guest stack checks every packet against the credit it advertised.
    rig.net.run_until("credit used up", |n| {
        let s = n.sock(key);
        s.received.len() >= 16 * 1024 && s.credit_requests_rx >= 1
    });
    rig.net.run_for(Duration::from_millis(200));
    let s = rig.net.sock(key);
    assert_eq!(
        s.received.len(),
        16 * 1024,
        "device sent beyond or below the credit"
    );
    assert!(s.credit_requests_rx >= 1, "device did not ask for credit");
    assert!(
        s.credit_requests_rx <= 2,
        "device kept asking: {}",
        s.credit_requests_rx
    );
    // The application reads: the rest flows.
    rig.net.consume(key);
    rig.net
        .run_until("all host data", |n| n.sock(key).received.len() == N);
    writer.join().unwrap();
    assert_eq!(hash(&rig.net.sock(key).received), hash(&data));
}

#[test]
fn backpressure_stops_the_guest_then_resumes_without_loss() {
    const N: usize = 1 << 20;
    let buf = 64 * 1024;
    let mut rig = Rig::new(Tunables {
        conn_buf_size: buf,
        credit_update_threshold: 16 * 1024,
        ..fast()
    });
    let l = rig.host_listener(9000);
    let (mut h, key) = rig.guest_connect(&l, 9001, 9000, 64 * 1024);
    let data = pattern(9, N);
    rig.net.write(key, &data);
    // The host does not read: the device's buffer and the socket's fill up,
    // then the guest runs out of credit and stops.
    let stuck = rig.net.run_until_credit_stalled(key);
    assert!(stuck > 0, "guest sent everything though nobody read");
    let m = rig.dev.metrics();
    assert!(
        m.buffered_bytes() <= u64::from(buf),
        "device buffers {}",
        m.buffered_bytes()
    );
    assert_eq!(
        m.held_chains(),
        0,
        "a guest within credit never gets chains held"
    );
    rig.net.run_for(Duration::from_millis(200));
    assert_eq!(
        rig.net.sock(key).out.len(),
        stuck,
        "guest kept sending without credit"
    );

    // The host reads again: everything arrives, in order.
    let reader = {
        let mut h = h.try_clone().unwrap();
        thread::spawn(move || {
            let mut got = vec![0u8; N];
            h.read_exact(&mut got).unwrap();
            hash(&got)
        })
    };
    rig.net
        .run_until("guest sent all", |n| n.sock(key).out.is_empty());
    assert_eq!(reader.join().unwrap(), hash(&data));
    rig.roundtrip(&mut h, key, "after");
}

#[test]
fn guest_ignoring_credit_gets_its_chains_held_not_dropped() {
    let buf = 32 * 1024;
    let mut rig = Rig::new(Tunables {
        conn_buf_size: buf,
        credit_update_threshold: 8 * 1024,
        ..fast()
    });
    let l = rig.host_listener(9100);
    let (h, key) = rig.guest_connect(&l, 9101, 9100, 64 * 1024);
    let (mut h2, key2) = rig.guest_connect(&l, 9102, 9100, 64 * 1024);
    // Fill the host socket's kernel buffer first, within credit.
    let filler = pattern(3, 4 << 20);
    rig.net.write(key, &filler);
    assert!(rig.net.run_until_credit_stalled(key) > 0);
    // Now the guest ignores its credit and pushes 48 more packets.
    rig.net.socks.get_mut(&key).unwrap().ignore_credit = true;
    rig.net.chunk = 16 * 1024;
    let free_before = rig.net.g.tx.free.len();
    for _ in 0..48 {
        rig.net.pump();
    }
    // Back to a well-behaved guest, which now has no credit.
    rig.net.socks.get_mut(&key).unwrap().ignore_credit = false;
    let m = rig.dev.metrics();
    rig.net
        .run_until("chains held back", |_| m.held_chains() > 0);
    rig.net.run_for(Duration::from_millis(100));
    assert!(
        m.buffered_bytes() <= u64::from(buf) + 64,
        "buffered {}",
        m.buffered_bytes()
    );
    rig.net.g.reclaim_tx();
    assert!(
        rig.net.g.tx.free.len() < free_before,
        "held chains were returned to the guest"
    );
    // Another connection is served meanwhile.
    rig.roundtrip(&mut h2, key2, "other connection");

    // The host drains: all bytes arrive in order, the chains come back.
    let sent_total = filler.len();
    let reader = {
        let mut h = h.try_clone().unwrap();
        thread::spawn(move || {
            let mut got = vec![0u8; sent_total];
            h.read_exact(&mut got).unwrap();
            hash(&got)
        })
    };
    rig.net.chunk = 4096;
    rig.net
        .run_until("all sent", |n| n.sock(key).out.is_empty());
    assert_eq!(reader.join().unwrap(), hash(&filler));
    wait_for(|| m.held_chains() == 0, "held chains released");
    // The muxer lets go of a chain before the worker puts it on the used ring:
    // wait for the ring, not only the counter (this raced under emulation).
    wait_for(
        || {
            rig.net.g.reclaim_tx();
            rig.net.g.tx.free.len() == QSIZE as usize
        },
        "every tx chain back on the used ring",
    );
    assert_eq!(rig.net.g.tx.free.len(), QSIZE as usize);
    drop(h);
}

#[test]
fn large_packets_into_a_small_device_buffer_lose_nothing() {
    // A device buffer smaller than one packet, a guest ignoring its credit, and
    // a host that reads only later: what the socket cannot take must wait in
    // guest memory, not overflow the buffer.
    let mut rig = Rig::new(Tunables {
        conn_buf_size: 4096,
        credit_update_threshold: 1024,
        ..fast()
    });
    let l = rig.host_listener(9300);
    let (h, key) = rig.guest_connect(&l, 9301, 9300, 64 * 1024);
    let data = pattern(13, 1 << 20);
    rig.net.socks.get_mut(&key).unwrap().ignore_credit = true;
    rig.net.chunk = MAX_PAYLOAD;
    rig.net.write(key, &data);
    let m = rig.dev.metrics();
    rig.net
        .run_until("chains held back", |_| m.held_chains() > 0);
    assert!(m.buffered_bytes() <= 4096 + 64);
    let reader = {
        let mut h = h.try_clone().unwrap();
        thread::spawn(move || {
            let mut got = vec![0u8; 1 << 20];
            h.read_exact(&mut got).unwrap();
            hash(&got)
        })
    };
    rig.net
        .run_until("all sent", |n| n.sock(key).out.is_empty());
    assert_eq!(reader.join().unwrap(), hash(&data));
    assert!(!rig.net.sock(key).reset, "connection was reset");
}

/// Sends a packet whose parts the test lays out by hand: header bytes at
/// 0x40000, payload at 0x41000 (between the rings and the buffers).
fn send_raw(
    net: &mut Stack,
    hdr: &VsockHeader,
    hdr_len: u32,
    payload_len: u32,
    payload_flags_write: bool,
) -> u16 {
    net.g.mem.write_obj(*hdr, GuestAddress(0x40000)).unwrap();
    let mut parts = vec![(Some(0x40000), hdr_len, false)];
    if payload_len > 0 {
        parts.push((Some(0x41000), payload_len, payload_flags_write));
    }
    net.g.send_chain(&parts)
}

#[test]
fn malformed_packets_are_refused_and_others_keep_working() {
    let mut rig = Rig::with_rx_limit(fast(), 2);
    let l = rig.host_listener(4000);
    let (mut h, key) = rig.guest_connect(&l, 4001, 4000, 64 * 1024);
    let m = rig.dev.metrics();

    // (description, header, header descriptor len, payload len, payload write-only, expect RST)
    let base = |op| guest_hdr(3000, 4000, op).with_credit(4096, 0);
    let cases: Vec<(&str, VsockHeader, u32, u32, bool, bool)> = vec![
        (
            "chain shorter than a header",
            base(OP_RW),
            40,
            0,
            false,
            false,
        ),
        // A header split over descriptors is fine; here it claims 4 payload
        // bytes the chain does not have.
        (
            "header split, payload missing",
            base(OP_RW).with_len(4),
            40,
            4,
            false,
            true,
        ),
        (
            "write-only payload",
            base(OP_RW).with_len(8),
            44,
            8,
            true,
            false,
        ),
        (
            "len beyond the chain",
            base(OP_RW).with_len(100),
            44,
            50,
            false,
            true,
        ),
        (
            "huge len",
            base(OP_RW).with_len(u32::MAX),
            44,
            64,
            false,
            true,
        ),
        (
            "seqpacket type",
            base(OP_REQUEST).with_type(2),
            44,
            0,
            false,
            true,
        ),
        (
            "unknown type",
            base(OP_REQUEST).with_type(77),
            44,
            0,
            false,
            true,
        ),
        ("unknown op", base(42), 44, 0, false, true),
        ("invalid op", base(OP_INVALID), 44, 0, false, true),
        (
            "payload on control op",
            base(OP_CREDIT_UPDATE).with_len(4),
            44,
            4,
            false,
            true,
        ),
        (
            "bad shutdown flags",
            base(OP_SHUTDOWN).with_flags(8),
            44,
            0,
            false,
            true,
        ),
        (
            "forged src_cid",
            base(OP_REQUEST).with_src_cid(99),
            44,
            0,
            false,
            false,
        ),
        (
            "dst_cid not host",
            base(OP_REQUEST).with_dst_cid(7),
            44,
            0,
            false,
            true,
        ),
        (
            "RW for unknown connection",
            base(OP_RW).with_len(4),
            44,
            4,
            false,
            true,
        ),
        (
            "RESPONSE for unknown connection",
            base(OP_RESPONSE),
            44,
            0,
            false,
            true,
        ),
        (
            "RST for unknown connection",
            base(OP_RST),
            44,
            0,
            false,
            false,
        ),
    ];
    for (i, (what, hdr, hdr_len, payload_len, write, want_rst)) in cases.into_iter().enumerate() {
        let bad_before = m.bad_packets();
        let rst_key = (3000, 4000);
        rig.net.log.clear();
        let head = send_raw(&mut rig.net, &hdr, hdr_len, payload_len, write);
        // The chain comes back, and the healthy connection still works.
        rig.net
            .run_until(what, |n| !n.g.tx.chains.contains_key(&head));
        rig.roundtrip(&mut h, key, &format!("after case {i}"));
        let got_rst = rig
            .net
            .log
            .iter()
            .any(|h| (h.dst_port(), h.src_port()) == rst_key && h.op() == OP_RST);
        assert_eq!(got_rst, want_rst, "{what}: RST expected {want_rst}");
        if what == "dst_cid not host" {
            let rst = rig.net.log.iter().find(|h| h.op() == OP_RST).unwrap();
            assert_eq!(
                rst.src_cid(),
                7,
                "RST comes from the cid the guest addressed"
            );
        }
        if !what.contains("unknown connection") {
            assert!(m.bad_packets() > bad_before, "{what}: not counted as bad");
        }
    }

    // Chains pointing outside guest memory, or with huge descriptors.
    for parts in [
        vec![(Some(MEM_SIZE as u64 - 8), 44, false)],
        vec![(Some(0x40000), u32::MAX, false)],
        vec![(Some(u64::MAX - 20), 44, false)],
    ] {
        let head = rig.net.g.send_chain(&parts);
        rig.net.run_until("out-of-memory chain returned", |n| {
            !n.g.tx.chains.contains_key(&head)
        });
    }
    // An avail entry naming a descriptor index past the queue.
    rig.net.g.tx.publish(&rig.net.g.mem, QSIZE + 5);
    rig.net.g.tx.kick();
    rig.net.run_for(Duration::from_millis(50));
    rig.roundtrip(&mut h, key, "after bogus head");

    // Unusable rx buffers: read-only, and too short for a header. With two
    // buffers posted at a time, they are next in line.
    let g = &mut rig.net.g;
    g.bad_rx.push(vec![(None, 4096, false)]);
    g.bad_rx.push(vec![(None, 20, true)]);
    // Room for a header but no data.
    g.bad_rx.push(vec![(None, HDR_SIZE as u32, true)]);
    // Traffic makes the device take them; each is refused and the data goes
    // into the next good buffer.
    for i in 0..10 {
        rig.roundtrip(&mut h, key, &format!("after bad rx buffers {i}"));
        if rig.net.g.rx_refused == 3 {
            break;
        }
    }
    assert!(rig.net.g.bad_rx.is_empty());
    assert_eq!(rig.net.g.rx_refused, 3);

    // A second REQUEST on a live connection resets it.
    rig.net.send_ctl(key, OP_REQUEST, 0);
    rig.net
        .run_until("reset of duplicated connection", |n| n.sock(key).reset);
    let (rest, eof) = read_to_eof(&mut h, WAIT);
    assert!(rest.is_empty() && eof);
}

#[test]
fn random_garbage_from_the_guest_never_stops_the_device() {
    let mut rig = Rig::new(fast());
    let l = rig.host_listener(9400);
    let (mut h, key) = rig.guest_connect(&l, 9401, 9400, 64 * 1024);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000u32 {
        let r = rnd();
        // Mostly plausible headers, so checks deep in the device are reached.
        let op = if r % 4 == 0 {
            (r >> 8) as u16
        } else {
            (r >> 8) as u16 % 8
        };
        let hdr = guest_hdr(20_000 + (round % 50), (r >> 20) as u32 % 64 + 1, op)
            .with_len(match r % 5 {
                0 => (r >> 24) as u32,
                1 => 0,
                _ => (r >> 24) as u32 % 128,
            })
            .with_type(if r % 7 == 0 {
                (r >> 40) as u16
            } else {
                TYPE_STREAM
            })
            .with_src_cid(if r % 11 == 0 { r >> 3 } else { GUEST_CID })
            .with_dst_cid(if r % 13 == 0 { r >> 5 } else { HOST_CID })
            .with_flags((r >> 33) as u32 % 8)
            .with_credit((r >> 12) as u32, (r >> 44) as u32);
        rig.net.g.mem.write_obj(hdr, GuestAddress(0x40000)).unwrap();
        let parts: Vec<(Option<u64>, u32, bool)> = (0..1 + rnd() % 4)
            .map(|k| {
                let r = rnd();
                let addr = match r % 8 {
                    0 => MEM_SIZE as u64 - (r >> 50),
                    1 => u64::MAX - (r >> 58),
                    _ if k == 0 => 0x40000,
                    _ => 0x41000 + (r >> 48) % 0x1000,
                };
                let len = match (r >> 3) % 6 {
                    0 => 0,
                    1 => u32::MAX,
                    2 => (r >> 16) as u32 % 0x20000,
                    _ if k == 0 => HDR_SIZE as u32,
                    _ => (r >> 16) as u32 % 256,
                };
                (Some(addr), len, (r >> 9) % 10 == 0)
            })
            .collect();
        rig.net.g.send_chain(&parts);
        if round % 100 == 0 {
            rig.net.step();
        }
    }
    rig.net
        .run_until("all garbage returned", |n| n.g.tx.chains.is_empty());
    rig.roundtrip(&mut h, key, "survived");
    assert!(rig.dev.metrics().bad_packets() > 100);
}

#[test]
fn protocol_violations_on_a_connection_reset_it() {
    let mut rig = Rig::new(fast());
    let l = rig.host_listener(4100);
    // Data after the guest's own SHUTDOWN(SEND).
    let (mut h, key) = rig.guest_connect(&l, 4101, 4100, 64 * 1024);
    rig.net.send_ctl(key, OP_SHUTDOWN, SHUTDOWN_SEND);
    let hdr = rig.net.hdr(key, OP_RW).with_len(3);
    assert!(rig.net.g.send(hdr, b"bad"));
    rig.net.run_until("RST", |n| n.sock(key).reset);
    let (rest, eof) = read_to_eof(&mut h, WAIT);
    assert!(rest.is_empty() && eof);
    // A RESPONSE on an established connection.
    let (mut h, key) = rig.guest_connect(&l, 4102, 4100, 64 * 1024);
    rig.net.send_ctl(key, OP_RESPONSE, 0);
    rig.net.run_until("RST", |n| n.sock(key).reset);
    let (_, eof) = read_to_eof(&mut h, WAIT);
    assert!(eof);
    // A malformed packet (len beyond its chain) on a live connection: its data
    // is lost, so the connection is reset on both sides.
    let (mut h, key) = rig.guest_connect(&l, 4103, 4100, 64 * 1024);
    rig.roundtrip(&mut h, key, "before");
    let hdr = rig.net.hdr(key, OP_RW).with_len(100);
    send_raw(&mut rig.net, &hdr, HDR_SIZE as u32, 10, false);
    rig.net.run_until("RST", |n| n.sock(key).reset);
    let (_, eof) = read_to_eof(&mut h, WAIT);
    assert!(eof, "host side of the broken stream not closed");
    assert_eq!(rig.dev.metrics().connections(), 0);
}

#[test]
fn handshake_garbage_closes_only_that_client() {
    let mut rig = Rig::new(fast());
    rig.net.listening.insert(52, 64 * 1024);
    let (mut good, key) = rig.host_connect(52);
    let uds = rig.uds();
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("no newline", b"CONNECT 52".to_vec()),
        ("overlong", vec![b'A'; 100]),
        ("bad port", b"CONNECT abc\n".to_vec()),
        ("port overflow", b"CONNECT 99999999999\n".to_vec()),
        ("wrong verb", b"HELLO 52\n".to_vec()),
        ("nothing", Vec::new()),
    ];
    let refused_before = rig.dev.metrics().handshakes_refused();
    let mut clients = Vec::new();
    for (what, bytes) in &garbage {
        let mut c = UnixStream::connect(&uds).unwrap();
        c.write_all(bytes).unwrap();
        clients.push((*what, c));
    }
    for (what, mut c) in clients {
        // Closed within the handshake timeout (300 ms) plus slack; never OK.
        let start = Instant::now();
        let (got, eof) = read_to_eof(&mut c, Duration::from_secs(10));
        assert!(eof, "{what}: client not closed");
        assert!(got.is_empty(), "{what}: got {got:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: closed late"
        );
        rig.net.step();
    }
    wait_for(
        || rig.dev.metrics().handshakes_refused() >= refused_before + 6,
        "refusals counted",
    );
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        rig.dev.metrics().handshakes_refused(),
        refused_before + 6,
        "each refused client counts once"
    );
    // The established connection and new handshakes are unaffected.
    rig.roundtrip(&mut good, key, "unaffected");
    let (mut again, key2) = rig.host_connect(52);
    rig.roundtrip(&mut again, key2, "new client");
}

#[test]
fn guest_refusing_or_ignoring_a_host_connect_closes_the_client() {
    let mut rig = Rig::new(fast());
    // No guest listener on 53: the guest answers RST.
    let mut c = UnixStream::connect(rig.uds()).unwrap();
    c.write_all(b"CONNECT 53\n").unwrap();
    c.set_nonblocking(true).unwrap();
    rig.net.run_until("REQUEST answered", |n| {
        n.log
            .iter()
            .any(|h| h.op() == OP_REQUEST && h.dst_port() == 53)
    });
    rig.net.run_for(Duration::from_millis(50));
    let (got, eof) = read_to_eof(&mut c, WAIT);
    assert!(eof && got.is_empty(), "refused client got {got:?}");

    // Guest port 54 never answers: the connect times out, the client is
    // closed and the guest gets a RST for the abandoned request.
    rig.net.deaf.push(54);
    let mut c = UnixStream::connect(rig.uds()).unwrap();
    c.write_all(b"CONNECT 54\n").unwrap();
    rig.net.run_until("RST after connect timeout", |n| {
        n.log.iter().any(|h| h.op() == OP_RST && h.dst_port() == 54)
    });
    let (got, eof) = read_to_eof(&mut c, WAIT);
    assert!(eof && got.is_empty());
    assert_eq!(rig.dev.metrics().connections(), 0);
}

#[test]
fn no_byte_lost_around_shutdown_and_close() {
    const N: usize = 300 * 1024;
    let mut rig = Rig::new(Tunables {
        conn_buf_size: 64 * 1024,
        ..fast()
    });
    let l = rig.host_listener(4200);
    // Guest → host: data, then SHUTDOWN right behind it, while the host is not
    // reading yet.
    let (mut h, key) = rig.guest_connect(&l, 4201, 4200, 64 * 1024);
    let up = pattern(11, N);
    rig.net.write(key, &up);
    rig.net.socks.get_mut(&key).unwrap().shutdown_after = Some(SHUTDOWN_BOTH);
    rig.net.run_for(Duration::from_millis(200));
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        h.read_to_end(&mut got).unwrap();
        hash(&got)
    });
    rig.net.run_until("guest done", |n| {
        let s = n.sock(key);
        s.out.is_empty() && s.shutdown_after.is_none()
    });
    assert_eq!(
        reader.join().unwrap(),
        hash(&up),
        "guest data lost at shutdown"
    );
    rig.net.run_until("RST", |n| n.got_op(key, OP_RST));

    // Host → guest: the host writes and closes at once.
    let (mut h, key) = rig.guest_connect(&l, 4202, 4200, 16 * 1024);
    let down = pattern(12, N);
    {
        let down = down.clone();
        thread::spawn(move || {
            h.write_all(&down).unwrap();
            drop(h);
        });
    }
    rig.net.run_until("host data and shutdown", |n| {
        n.sock(key).peer_shutdown == SHUTDOWN_BOTH
    });
    assert_eq!(
        hash(&rig.net.sock(key).received),
        hash(&down),
        "host data lost at close"
    );
    // The guest answered RST (it models Linux); the device forgets it.
    let m = rig.dev.metrics();
    wait_for(|| m.connections() == 0, "connection removed");
}

#[test]
fn close_times_out_when_the_guest_never_answers() {
    let mut rig = Rig::new(fast());
    let l = rig.host_listener(4300);
    let (h, key) = rig.guest_connect(&l, 4301, 4300, 64 * 1024);
    rig.net.socks.get_mut(&key).unwrap().mute = true;
    drop(h);
    rig.net
        .run_until("SHUTDOWN", |n| n.sock(key).peer_shutdown == SHUTDOWN_BOTH);
    let start = Instant::now();
    rig.net
        .run_until("RST after close timeout", |n| n.sock(key).reset);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(rig.dev.metrics().connections(), 0);
}

#[test]
fn reset_and_reactivate() {
    let mut rig = Rig::new(fast());
    rig.net.listening.insert(52, 64 * 1024);
    let (mut c, key) = rig.host_connect(52);
    rig.roundtrip(&mut c, key, "before reset");
    assert!(rig.dev.reset());
    let (got, eof) = read_to_eof(&mut c, WAIT);
    assert!(eof && got.is_empty(), "client not closed by reset");
    assert_eq!(rig.dev.metrics().connections(), 0);

    // A new driver instance, new queues.
    let (g, ctx) = Guest::new(32);
    rig.dev.activate(ctx).unwrap();
    rig.net = Stack::new(g);
    rig.net.listening.insert(52, 64 * 1024);
    let (mut c, key) = rig.host_connect(52);
    rig.roundtrip(&mut c, key, "after reset");
    // Activating twice is refused.
    let (_, ctx) = Guest::new(32);
    assert!(rig.dev.activate(ctx).is_err());
}

#[test]
fn broken_ring_fails_the_device_not_the_vmm() {
    let mut rig = Rig::new(fast());
    rig.net.listening.insert(52, 64 * 1024);
    let (mut c, _key) = rig.host_connect(52);
    // The guest claims 1000 new tx entries in a 256-entry ring.
    let g = &mut rig.net.g;
    let idx = g.tx.avail_idx.wrapping_add(1000);
    g.mem
        .store(
            idx.to_le(),
            g.tx.avail.unchecked_add(2),
            std::sync::atomic::Ordering::Release,
        )
        .unwrap();
    g.tx.kick();
    let (_, eof) = read_to_eof(&mut c, WAIT);
    assert!(eof, "device kept running on a broken ring");
    // The driver resets the device and starts over.
    assert!(rig.dev.reset());
    let (g, ctx) = Guest::new(32);
    rig.dev.activate(ctx).unwrap();
    rig.net = Stack::new(g);
    rig.net.listening.insert(52, 64 * 1024);
    let (mut c, key) = rig.host_connect(52);
    rig.roundtrip(&mut c, key, "recovered");
}

#[test]
fn activate_refuses_bad_setups() {
    let dir = TempDir::new();
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: dir.join("v.sock"),
    })
    .unwrap();
    let (_, mut ctx) = Guest::new(32);
    ctx.queues.pop();
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 2,
            ..
        })
    ));
    let (_, mut ctx) = Guest::new(32);
    ctx.acked_features = 0;
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::Other { .. })
    ));
    let (_, mut ctx) = Guest::new(32);
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_ready(true);
    let far = MEM_SIZE as u64 + 0x1000;
    q.set_desc_table_address(Some(far as u32), Some((far >> 32) as u32));
    ctx.queues[1].queue = q;
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::InvalidQueue { index: 1, .. })
    ));
    // Still activatable after the refusals.
    let (_, ctx) = Guest::new(32);
    dev.activate(ctx).unwrap();
}

#[test]
fn construction_checks_cid_and_socket_path() {
    let dir = TempDir::new();
    let cfg = |cid, path: &Path| VsockConfig {
        guest_cid: cid,
        uds_path: path.to_owned(),
    };
    let p = dir.join("v.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cfg(cid, &p)),
            Err(VsockError::InvalidCid(_))
        ));
    }
    let long = dir.join(&"x".repeat(120));
    assert!(matches!(
        Vsock::new(cfg(3, &long)),
        Err(VsockError::PathTooLong { .. })
    ));
    // A regular file is never removed.
    std::fs::write(&p, b"precious").unwrap();
    assert!(matches!(
        Vsock::new(cfg(3, &p)),
        Err(VsockError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    std::fs::remove_file(&p).unwrap();
    // A live listener is not taken over.
    let live = UnixListener::bind(&p).unwrap();
    assert!(matches!(
        Vsock::new(cfg(3, &p)),
        Err(VsockError::InUse { .. })
    ));
    drop(live);
    // A stale socket file (listener gone, file left) is replaced.
    assert!(p.exists());
    let dev = Vsock::new(cfg(3, &p)).unwrap();
    UnixStream::connect(&p).unwrap();
    // A missing directory is a bind error naming the path.
    let err = Vsock::new(cfg(3, &dir.join("no/such/dir.sock"))).unwrap_err();
    assert!(err.to_string().contains("no/such/dir.sock"), "{err}");
    // Dropping the device removes its socket file.
    drop(dev);
    assert!(!p.exists());
}

/// Throughput and footprint figures, not a pass/fail check. Run with
/// `cargo test -p moat-vmm --release vsock::tests::figures -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand in release mode"]
fn figures() {
    const N: usize = 64 << 20;
    eprintln!(
        "size_of Connection: {} bytes; per-connection buffer {} KiB, allocated only while the host lags",
        std::mem::size_of::<super::csm::Connection>(),
        Tunables::default().conn_buf_size / 1024
    );
    let mut rig = Rig::new(Tunables::default());
    rig.net.g.rx_limit = QSIZE as usize;
    rig.net.chunk = 64 * 1024;
    rig.net.burst = 64;
    let l = rig.host_listener(9900);
    let (h, key) = rig.guest_connect(&l, 9901, 9900, 256 * 1024);

    // Guest → host.
    let data = pattern(77, N);
    let mut hr = h.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < N {
            total += hr.read(&mut buf).unwrap();
        }
    });
    let start = Instant::now();
    rig.net.write(key, &data);
    rig.net
        .run_until("guest→host", |n| n.sock(key).out.is_empty());
    reader.join().unwrap();
    let up = start.elapsed();

    // Host → guest (the guest consumes at once, like a reading application).
    let mut hw = h.try_clone().unwrap();
    let start = Instant::now();
    let writer = thread::spawn(move || hw.write_all(&data).unwrap());
    rig.net
        .run_until("host→guest", |n| n.sock(key).received.len() == N);
    writer.join().unwrap();
    let down = start.elapsed();
    let mib = (N >> 20) as f64;
    eprintln!(
        "guest→host: {mib} MiB in {:.2?} = {:.0} MiB/s; host→guest: {mib} MiB in {:.2?} = {:.0} MiB/s (4 KiB rx buffers)",
        up,
        mib / up.as_secs_f64(),
        down,
        mib / down.as_secs_f64()
    );
}
