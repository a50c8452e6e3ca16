//! The guest side of one virtqueue, driven by fuzzer input: chains are either
//! well-formed (the fuzzer picks how the request bytes are split over readable
//! descriptors, the writable lengths and whether an indirect table is used) or
//! raw descriptors written exactly as given. Built on moat-vmm's own test
//! driver (`queue_util::testing::Driver`).

use arbitrary::Arbitrary;
use moat_vmm::devices::virtio::queue_util::testing::{self, Driver};
use moat_vmm::devices::virtio::{ActiveQueue, GuestMemory};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes as _, GuestAddress};

pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Largest writable buffer a well-formed chain asks for.
pub const MAX_WRITABLE: u32 = 64 << 10;
/// Most readable (and most writable) descriptors of a well-formed chain.
pub const MAX_SEGMENTS: usize = 64;

/// One raw descriptor.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
    /// Fold `addr` into guest memory (most interesting chains point into it).
    pub fold: bool,
}

/// How one request is laid out in descriptors.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum ChainSpec {
    /// The request bytes split over readable descriptors of these lengths (the
    /// rest in one more descriptor), then writable descriptors of these lengths
    /// (capped at [`MAX_WRITABLE`]), optionally through an indirect table.
    Good {
        readable: Vec<u16>,
        writable: Vec<u32>,
        indirect: bool,
    },
    /// Descriptors written at consecutive table slots exactly as given; the
    /// first is published. The request bytes go where the first descriptor
    /// points, if that is in the queue's buffer area.
    Raw { descs: Vec<RawDesc> },
}

/// One queue of the simulated guest: its rings at `ring_base` and a bump
/// allocator for buffers in `[buf_base, buf_end)`.
///
/// Within one run every descriptor slot and every buffer byte is handed out
/// once, and at most `size / 2` chains are published (virtio-queue 0.17's mock
/// places the used ring over the second half of the available ring, see
/// `vmm/src/devices/virtio/fs/test_client.rs`). A chain past those budgets is
/// not published. So a used-ring entry always names the chain it was written
/// for, and what a target reads back is what the device wrote there. (A
/// guest may of course reuse slots and buffers; `Raw` chains and the
/// `queue_chain` target cover descriptors that point anywhere.)
pub struct GuestQueue<'a> {
    pub drv: Driver<'a>,
    mem: &'a GuestMemory,
    mem_size: u64,
    size: u16,
    buf_base: u64,
    buf_end: u64,
    next_buf: u64,
    published: u16,
    descs_used: usize,
}

/// Bytes `alloc` takes for a buffer of `len`.
fn rounded(len: u64) -> u64 {
    len.max(1).next_multiple_of(8)
}

impl<'a> GuestQueue<'a> {
    pub fn new(
        mem: &'a GuestMemory,
        mem_size: u64,
        ring_base: u64,
        size: u16,
        buffers: std::ops::Range<u64>,
    ) -> Self {
        GuestQueue {
            drv: Driver::new(mem, ring_base, size),
            mem,
            mem_size,
            size,
            buf_base: buffers.start,
            buf_end: buffers.end,
            next_buf: buffers.start,
            published: 0,
            descs_used: 0,
        }
    }

    /// The queue as the transport would hand it to the device.
    pub fn active_queue(&self) -> ActiveQueue {
        self.drv.active_queue()
    }

    /// Reserves `len` bytes of buffer space; `push` checked the budget.
    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += rounded(u64::from(len));
        addr
    }

    /// Descriptor slots and buffer bytes `spec` takes for a request of
    /// `request_len` bytes.
    fn cost(&self, spec: &ChainSpec, request_len: usize) -> (usize, u64) {
        match spec {
            ChainSpec::Good {
                readable,
                writable,
                indirect,
            } => {
                let mut descs = 0usize;
                let mut bytes = 0u64;
                let mut rest = request_len as u64;
                for &len in readable.iter().take(MAX_SEGMENTS) {
                    descs += 1;
                    bytes += rounded(u64::from(len));
                    rest = rest.saturating_sub(u64::from(len));
                }
                if rest > 0 {
                    descs += 1;
                    bytes += rounded(rest);
                }
                for &len in writable.iter().take(MAX_SEGMENTS) {
                    descs += 1;
                    bytes += rounded(u64::from(len % (MAX_WRITABLE + 1)));
                }
                if descs == 0 {
                    descs = 1;
                    bytes += rounded(0);
                }
                if *indirect {
                    bytes += rounded(descs as u64 * 16);
                    descs = 1;
                }
                (descs, bytes)
            }
            ChainSpec::Raw { descs } => (descs.len().clamp(1, usize::from(self.size)), 0),
        }
    }

    fn fold(&self, addr: u64) -> u64 {
        addr % self.mem_size
    }

    /// Lays out `request` as `spec` says and publishes the chain. Returns the
    /// published head and the writable buffers (address, length) of a
    /// well-formed chain; `None` once `size / 2` chains were published.
    pub fn push(&mut self, spec: &ChainSpec, request: &[u8]) -> Option<(u16, Vec<(u64, u32)>)> {
        if self.published >= (self.size / 2).max(1) {
            return None;
        }
        let (descs, bytes) = self.cost(spec, request.len());
        if self.descs_used + descs > usize::from(self.size) || self.next_buf + bytes > self.buf_end
        {
            return None;
        }
        self.published += 1;
        self.descs_used += descs;
        Some(self.push_unchecked(spec, request))
    }

    fn push_unchecked(&mut self, spec: &ChainSpec, request: &[u8]) -> (u16, Vec<(u64, u32)>) {
        match spec {
            ChainSpec::Good {
                readable,
                writable,
                indirect,
            } => {
                let mut descs: Vec<(u64, u32, bool)> = Vec::new();
                let mut rest = request;
                for &len in readable.iter().take(MAX_SEGMENTS) {
                    let n = usize::from(len).min(rest.len());
                    let addr = self.alloc(u32::from(len));
                    let (now, later) = rest.split_at(n);
                    self.drv.write(addr, now);
                    descs.push((addr, u32::from(len), false));
                    rest = later;
                }
                if !rest.is_empty() {
                    let len = rest.len() as u32;
                    let addr = self.alloc(len);
                    self.drv.write(addr, rest);
                    descs.push((addr, len, false));
                }
                let mut out = Vec::new();
                for &len in writable.iter().take(MAX_SEGMENTS) {
                    let len = len % (MAX_WRITABLE + 1);
                    let addr = self.alloc(len);
                    out.push((addr, len));
                    descs.push((addr, len, true));
                }
                if descs.is_empty() {
                    descs.push((self.alloc(0), 0, false));
                }
                let head = if *indirect {
                    self.push_indirect(&descs)
                } else {
                    let chain: Vec<testing::Desc> = descs
                        .iter()
                        .map(|&(addr, len, write)| testing::Desc { addr, len, write })
                        .collect();
                    self.drv.write_chain(&chain)
                };
                self.drv.publish(head);
                (head, out)
            }
            ChainSpec::Raw { descs } => {
                let raw: Vec<(u64, u32, u16, u16)> = descs
                    .iter()
                    .take(usize::from(self.size))
                    .map(|d| {
                        let addr = if d.fold { self.fold(d.addr) } else { d.addr };
                        (addr, d.len, d.flags, d.next)
                    })
                    .collect();
                if let Some(first) = raw.first() {
                    // The request lands where the first descriptor points when
                    // that is inside this queue's buffer area (not over rings
                    // or other queues' buffers, which would make what the
                    // targets read back meaningless).
                    if (self.buf_base..self.buf_end).contains(&first.0) {
                        let n = request
                            .len()
                            .min(first.1 as usize)
                            .min((self.buf_end - first.0) as usize);
                        if n > 0 {
                            let _ = self.mem.write_slice(&request[..n], GuestAddress(first.0));
                        }
                    }
                }
                let head = if raw.is_empty() {
                    0
                } else {
                    self.drv.write_raw(&raw)
                };
                self.drv.publish(head);
                (head, Vec::new())
            }
        }
    }

    /// Writes `descs` as an indirect table and one ring descriptor pointing
    /// at it; returns that descriptor's slot.
    fn push_indirect(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let table = self.alloc((descs.len() * 16) as u32);
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let mut flags = if write { WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < descs.len() {
                flags |= NEXT;
                next = (i + 1) as u16;
            }
            let raw = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            let _ = self
                .mem
                .write_obj(raw, GuestAddress(table + (i as u64) * 16));
        }
        self.drv
            .write_raw(&[(table, (descs.len() * 16) as u32, INDIRECT, 0)])
    }
}
