//! virtio-vsock packets (virtio 1.x §5.10.6): the wire header, the op, type and
//! flag constants, and the checked conversion of guest descriptor chains into
//! packets (tx queue) and packet buffers (rx queue).
//!
//! Owns: every byte layout the guest sees and the validation of descriptor chains
//! (direction, count, lengths, guest-memory bounds) and of header fields. It must
//! not know about connections or host sockets. Nothing read from the guest is
//! trusted: callers get either a validated packet or a [`PacketError`].

use std::fmt;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory as _, Le16, Le32, Le64};

use crate::devices::virtio::GuestMemory;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Largest CID a guest may have: the upper 32 bits are reserved and
/// `u32::MAX` is `VMADDR_CID_ANY`.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device offers.
pub const TYPE_STREAM: u16 = 1;

pub const OP_INVALID: u16 = 0;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Size of [`VsockHeader`] on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest payload of one packet, in either direction. Linux never sends more
/// (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`), and the device never fills more.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors accepted in one chain. Linux uses two for tx (header, data)
/// and one for rx; newer kernels use up to 18 for tx.
pub const MAX_CHAIN_DESCRIPTORS: usize = 64;

/// `struct virtio_vsock_hdr`: packed, little-endian, 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub struct VsockHeader {
    src_cid: Le64,
    dst_cid: Le64,
    src_port: Le32,
    dst_port: Le32,
    len: Le32,
    type_: Le16,
    op: Le16,
    flags: Le32,
    buf_alloc: Le32,
    fwd_cnt: Le32,
}

// SAFETY: `VsockHeader` is `repr(C, packed)` and made only of little-endian integer
// wrappers, so it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for VsockHeader {}

impl VsockHeader {
    /// A header for a packet the device sends to the guest: `src` is the host,
    /// `dst` the guest.
    pub fn to_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Self {
        VsockHeader {
            src_cid: HOST_CID.into(),
            dst_cid: guest_cid.into(),
            src_port: src_port.into(),
            dst_port: dst_port.into(),
            type_: TYPE_STREAM.into(),
            op: op.into(),
            ..Default::default()
        }
    }

    pub fn with_src_cid(mut self, cid: u64) -> Self {
        self.src_cid = cid.into();
        self
    }
    #[cfg(test)]
    pub fn with_dst_cid(mut self, cid: u64) -> Self {
        self.dst_cid = cid.into();
        self
    }
    #[cfg(test)]
    pub fn with_ports(mut self, src_port: u32, dst_port: u32) -> Self {
        self.src_port = src_port.into();
        self.dst_port = dst_port.into();
        self
    }
    pub fn with_len(mut self, len: u32) -> Self {
        self.len = len.into();
        self
    }
    #[cfg(test)]
    pub fn with_type(mut self, type_: u16) -> Self {
        self.type_ = type_.into();
        self
    }
    #[cfg(test)]
    pub fn with_op(mut self, op: u16) -> Self {
        self.op = op.into();
        self
    }
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags.into();
        self
    }
    pub fn with_credit(mut self, buf_alloc: u32, fwd_cnt: u32) -> Self {
        self.buf_alloc = buf_alloc.into();
        self.fwd_cnt = fwd_cnt.into();
        self
    }

    // Reading a field of a packed struct by value copies it; no reference to an
    // unaligned field is ever made.
    pub fn src_cid(&self) -> u64 {
        u64::from(self.src_cid)
    }
    pub fn dst_cid(&self) -> u64 {
        u64::from(self.dst_cid)
    }
    pub fn src_port(&self) -> u32 {
        u32::from(self.src_port)
    }
    pub fn dst_port(&self) -> u32 {
        u32::from(self.dst_port)
    }
    pub fn len(&self) -> u32 {
        u32::from(self.len)
    }
    pub fn type_(&self) -> u16 {
        u16::from(self.type_)
    }
    pub fn op(&self) -> u16 {
        u16::from(self.op)
    }
    pub fn flags(&self) -> u32 {
        u32::from(self.flags)
    }
    pub fn buf_alloc(&self) -> u32 {
        u32::from(self.buf_alloc)
    }
    pub fn fwd_cnt(&self) -> u32 {
        u32::from(self.fwd_cnt)
    }
}

impl fmt::Debug for VsockHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VsockHeader")
            .field("src_cid", &self.src_cid())
            .field("dst_cid", &self.dst_cid())
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("len", &self.len())
            .field("type", &self.type_())
            .field("op", &op_name(self.op()))
            .field("flags", &self.flags())
            .field("buf_alloc", &self.buf_alloc())
            .field("fwd_cnt", &self.fwd_cnt())
            .finish()
    }
}

/// A readable name for an op, for logs.
pub fn op_name(op: u16) -> &'static str {
    match op {
        OP_INVALID => "INVALID",
        OP_REQUEST => "REQUEST",
        OP_RESPONSE => "RESPONSE",
        OP_RST => "RST",
        OP_SHUTDOWN => "SHUTDOWN",
        OP_RW => "RW",
        OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "unknown",
    }
}

/// Why a descriptor chain or a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain is empty or its head index is out of range")]
    EmptyChain,
    #[error("descriptor chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor chain has a device-writable descriptor where only readable ones belong")]
    UnexpectedWriteOnly,
    #[error("descriptor chain has a device-readable descriptor where only writable ones belong")]
    UnexpectedReadOnly,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("descriptor chain holds {len} bytes, too few for a {HDR_SIZE}-byte header")]
    TooShort { len: usize },
    #[error("header len {len} exceeds the {available} payload bytes in the chain")]
    LenExceedsChain { len: u32, available: usize },
    #[error("header len {len} exceeds the {MAX_PAYLOAD}-byte packet limit")]
    PayloadTooLarge { len: u32 },
    #[error("guest memory access: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Why a well-formed chain carries a header the device refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("src_cid {got} is not the guest's cid {expected}")]
    WrongSrcCid { got: u64, expected: u64 },
    #[error("dst_cid {0} is not the host")]
    WrongDstCid(u64),
    #[error("socket type {0} is not STREAM")]
    WrongType(u16),
    #[error("unknown op {0}")]
    UnknownOp(u16),
    #[error("control op {op} carries {len} payload bytes")]
    PayloadOnControl { op: &'static str, len: u32 },
    #[error("shutdown flags {0:#x} are not RCV/SEND")]
    BadShutdownFlags(u32),
}

impl HeaderError {
    /// Whether the guest should get a `RST` for it. A packet with a forged source
    /// is dropped instead: a reply would go to an address the guest does not own.
    pub fn answer_with_rst(&self) -> bool {
        !matches!(self, HeaderError::WrongSrcCid { .. })
    }
}

/// Checks the fields of a guest packet that do not depend on connection state.
pub fn check_header(hdr: &VsockHeader, guest_cid: u64) -> Result<(), HeaderError> {
    if hdr.src_cid() != guest_cid {
        return Err(HeaderError::WrongSrcCid {
            got: hdr.src_cid(),
            expected: guest_cid,
        });
    }
    if hdr.dst_cid() != HOST_CID {
        return Err(HeaderError::WrongDstCid(hdr.dst_cid()));
    }
    if hdr.type_() != TYPE_STREAM {
        return Err(HeaderError::WrongType(hdr.type_()));
    }
    match hdr.op() {
        OP_RW => {}
        OP_REQUEST | OP_RESPONSE | OP_RST | OP_SHUTDOWN | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {
            if hdr.len() != 0 {
                return Err(HeaderError::PayloadOnControl {
                    op: op_name(hdr.op()),
                    len: hdr.len(),
                });
            }
        }
        op => return Err(HeaderError::UnknownOp(op)),
    }
    if hdr.op() == OP_SHUTDOWN && hdr.flags() & !SHUTDOWN_BOTH != 0 {
        return Err(HeaderError::BadShutdownFlags(hdr.flags()));
    }
    Ok(())
}

/// Guest memory described by a descriptor chain, every region checked to lie in
/// guest memory.
#[derive(Debug, Clone, Default)]
pub struct SgList {
    regions: Vec<(GuestAddress, usize)>,
    total: usize,
}

impl SgList {
    /// Collects the descriptors of `chain`; all must be device-writable when
    /// `writable`, device-readable otherwise.
    fn from_chain(
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
        writable: bool,
    ) -> Result<SgList, PacketError> {
        let mut sg = SgList::default();
        for desc in chain {
            if sg.regions.len() == MAX_CHAIN_DESCRIPTORS {
                return Err(PacketError::TooManyDescriptors);
            }
            if desc.is_write_only() != writable {
                return Err(if writable {
                    PacketError::UnexpectedReadOnly
                } else {
                    PacketError::UnexpectedWriteOnly
                });
            }
            let out_of_memory = PacketError::OutOfMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            };
            let Ok(len) = usize::try_from(desc.len()) else {
                return Err(out_of_memory);
            };
            if !mem.check_range(desc.addr(), len) {
                return Err(out_of_memory);
            }
            sg.total = sg.total.checked_add(len).ok_or(out_of_memory)?;
            sg.regions.push((desc.addr(), len));
        }
        if sg.regions.is_empty() {
            return Err(PacketError::EmptyChain);
        }
        Ok(sg)
    }

    fn len(&self) -> usize {
        self.total
    }

    /// The part `[offset, offset + len)` of this list; `None` when out of range.
    fn subrange(&self, offset: usize, len: usize) -> Option<SgList> {
        let end = offset.checked_add(len)?;
        if end > self.total {
            return None;
        }
        let mut out = SgList::default();
        let mut skip = offset;
        let mut want = len;
        for &(addr, rlen) in &self.regions {
            if want == 0 {
                break;
            }
            if skip >= rlen {
                skip -= rlen;
                continue;
            }
            let take = (rlen - skip).min(want);
            // In range: `addr + skip + take` was checked against guest memory.
            out.regions.push((addr.unchecked_add(skip as u64), take));
            want -= take;
            skip = 0;
        }
        out.total = len;
        Some(out)
    }

    /// Copies `buf.len()` bytes starting at `offset` out of guest memory.
    pub fn read_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), PacketError> {
        let Some(part) = self.subrange(offset, buf.len()) else {
            return Err(PacketError::TooShort { len: self.total });
        };
        let mut done = 0;
        for (addr, len) in part.regions {
            mem.read_slice(&mut buf[done..done + len], addr)?;
            done += len;
        }
        Ok(())
    }

    /// Copies `data` into guest memory starting at `offset`.
    pub fn write_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        data: &[u8],
    ) -> Result<(), PacketError> {
        let Some(part) = self.subrange(offset, data.len()) else {
            return Err(PacketError::TooShort { len: self.total });
        };
        let mut done = 0;
        for (addr, len) in part.regions {
            mem.write_slice(&data[done..done + len], addr)?;
            done += len;
        }
        Ok(())
    }
}

/// A packet the guest put on the tx queue: its header, checked against the chain,
/// and its payload, still in guest memory. The chain is returned to the guest (by
/// its head index) once the payload was consumed.
#[derive(Debug)]
pub struct TxPacket {
    head: u16,
    hdr: VsockHeader,
    payload: SgList,
    consumed: usize,
}

/// A tx chain that could not be parsed. `hdr` is set when the header itself was
/// readable, so the sender can be answered.
#[derive(Debug)]
pub struct TxParseError {
    pub head: u16,
    pub hdr: Option<VsockHeader>,
    pub error: PacketError,
}

impl TxPacket {
    /// Parses a tx chain: only device-readable descriptors, all inside guest
    /// memory, holding a header and at least `hdr.len` payload bytes, at most
    /// [`MAX_PAYLOAD`].
    pub fn parse(
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<TxPacket, TxParseError> {
        let head = chain.head_index();
        let fail = |hdr, error| TxParseError { head, hdr, error };
        let sg = SgList::from_chain(mem, chain, false).map_err(|e| fail(None, e))?;
        if sg.len() < HDR_SIZE {
            return Err(fail(None, PacketError::TooShort { len: sg.len() }));
        }
        let mut hdr = VsockHeader::default();
        sg.read_at(mem, 0, hdr.as_mut_slice())
            .map_err(|e| fail(None, e))?;
        let len = hdr.len();
        let available = sg.len() - HDR_SIZE;
        let Ok(len_usize) = usize::try_from(len) else {
            return Err(fail(Some(hdr), PacketError::PayloadTooLarge { len }));
        };
        if len_usize > MAX_PAYLOAD {
            return Err(fail(Some(hdr), PacketError::PayloadTooLarge { len }));
        }
        let Some(payload) = sg.subrange(HDR_SIZE, len_usize) else {
            return Err(fail(
                Some(hdr),
                PacketError::LenExceedsChain { len, available },
            ));
        };
        Ok(TxPacket {
            head,
            hdr,
            payload,
            consumed: 0,
        })
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    pub fn hdr(&self) -> &VsockHeader {
        &self.hdr
    }

    /// Payload bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.payload.len() - self.consumed
    }

    /// Marks the whole payload consumed without reading it.
    pub fn discard_payload(&mut self) {
        self.consumed = self.payload.len();
    }

    /// Copies up to `buf.len()` unconsumed payload bytes into `buf` and marks
    /// them consumed; returns how many.
    pub fn read_payload(
        &mut self,
        mem: &GuestMemory,
        buf: &mut [u8],
    ) -> Result<usize, PacketError> {
        let n = buf.len().min(self.remaining());
        self.payload.read_at(mem, self.consumed, &mut buf[..n])?;
        self.consumed += n;
        Ok(n)
    }
}

/// A buffer the guest put on the rx queue, to be filled with one packet.
#[derive(Debug)]
pub struct RxBuffer {
    head: u16,
    sg: SgList,
}

impl RxBuffer {
    /// Parses an rx chain: only device-writable descriptors, all inside guest
    /// memory, with room for the header and at least one payload byte (a
    /// buffer that can carry no data would stall a connection with data to
    /// deliver; Linux posts 4 KiB buffers).
    pub fn parse(
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<RxBuffer, (u16, PacketError)> {
        let head = chain.head_index();
        let sg = SgList::from_chain(mem, chain, true).map_err(|e| (head, e))?;
        if sg.len() <= HDR_SIZE {
            return Err((head, PacketError::TooShort { len: sg.len() }));
        }
        Ok(RxBuffer { head, sg })
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    /// Most payload bytes one packet in this buffer can carry.
    pub fn payload_capacity(&self) -> usize {
        (self.sg.len() - HDR_SIZE).min(MAX_PAYLOAD)
    }

    /// Writes a packet: `hdr` with its `len` set to `payload.len()`, then the
    /// payload. Returns the number of bytes written, for the used ring.
    pub fn write(
        &self,
        mem: &GuestMemory,
        hdr: VsockHeader,
        payload: &[u8],
    ) -> Result<u32, PacketError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|_| payload.len() <= self.payload_capacity())
            .ok_or(PacketError::PayloadTooLarge {
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            })?;
        let hdr = hdr.with_len(len);
        self.sg.write_at(mem, HDR_SIZE, payload)?;
        self.sg.write_at(mem, 0, hdr.as_slice())?;
        // HDR_SIZE + MAX_PAYLOAD fits in u32.
        Ok(len + HDR_SIZE as u32)
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    #[test]
    fn header_layout_matches_the_spec() {
        assert_eq!(size_of::<VsockHeader>(), HDR_SIZE);
        assert_eq!(std::mem::align_of::<VsockHeader>(), 1);
        assert_eq!(offset_of!(VsockHeader, src_cid), 0);
        assert_eq!(offset_of!(VsockHeader, dst_cid), 8);
        assert_eq!(offset_of!(VsockHeader, src_port), 16);
        assert_eq!(offset_of!(VsockHeader, dst_port), 20);
        assert_eq!(offset_of!(VsockHeader, len), 24);
        assert_eq!(offset_of!(VsockHeader, type_), 28);
        assert_eq!(offset_of!(VsockHeader, op), 30);
        assert_eq!(offset_of!(VsockHeader, flags), 32);
        assert_eq!(offset_of!(VsockHeader, buf_alloc), 36);
        assert_eq!(offset_of!(VsockHeader, fwd_cnt), 40);
    }

    #[test]
    fn header_fields_are_little_endian_on_the_wire() {
        let hdr = VsockHeader::to_guest(0x0102_0304, 0x1122_3344, 0x5566_7788, OP_RW)
            .with_len(0x99aa_bbcc)
            .with_flags(3)
            .with_credit(0x0a0b_0c0d, 0x0e0f_1011);
        let b = hdr.as_slice();
        assert_eq!(&b[0..8], &2u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x0102_0304u64.to_le_bytes());
        assert_eq!(&b[16..20], &0x1122_3344u32.to_le_bytes());
        assert_eq!(&b[20..24], &0x5566_7788u32.to_le_bytes());
        assert_eq!(&b[24..28], &0x99aa_bbccu32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[32..36], &3u32.to_le_bytes());
        assert_eq!(&b[36..40], &0x0a0b_0c0du32.to_le_bytes());
        assert_eq!(&b[40..44], &0x0e0f_1011u32.to_le_bytes());
        assert_eq!(hdr.dst_cid(), 0x0102_0304);
        assert_eq!(hdr.fwd_cnt(), 0x0e0f_1011);
    }

    fn guest_hdr(op: u16) -> VsockHeader {
        VsockHeader::default()
            .with_src_cid(3)
            .with_dst_cid(HOST_CID)
            .with_type(TYPE_STREAM)
            .with_op(op)
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_header(&guest_hdr(OP_RW).with_len(10), 3), Ok(()));
        assert_eq!(check_header(&guest_hdr(OP_REQUEST), 3), Ok(()));
        let e = check_header(&guest_hdr(OP_RW).with_src_cid(4), 3).unwrap_err();
        assert!(!e.answer_with_rst());
        let e = check_header(&guest_hdr(OP_RW).with_dst_cid(7), 3).unwrap_err();
        assert_eq!(e, HeaderError::WrongDstCid(7));
        assert!(e.answer_with_rst());
        assert_eq!(
            check_header(&guest_hdr(OP_RW).with_type(2), 3),
            Err(HeaderError::WrongType(2))
        );
        assert_eq!(
            check_header(&guest_hdr(0), 3),
            Err(HeaderError::UnknownOp(0))
        );
        assert_eq!(
            check_header(&guest_hdr(8), 3),
            Err(HeaderError::UnknownOp(8))
        );
        assert!(matches!(
            check_header(&guest_hdr(OP_SHUTDOWN).with_len(1), 3),
            Err(HeaderError::PayloadOnControl { .. })
        ));
        assert_eq!(
            check_header(&guest_hdr(OP_SHUTDOWN).with_flags(4), 3),
            Err(HeaderError::BadShutdownFlags(4))
        );
        assert_eq!(
            check_header(&guest_hdr(OP_SHUTDOWN).with_flags(3), 3),
            Ok(())
        );
    }

    const MEM_SIZE: usize = 0x10_0000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    fn tx_parse(mem: &GuestMemory, descs: &[RawDescriptor]) -> Result<TxPacket, TxParseError> {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        TxPacket::parse(mem, chain)
    }

    #[test]
    fn tx_header_and_payload_split_over_descriptors() {
        let m = mem();
        let hdr = guest_hdr(OP_RW).with_len(10);
        let bytes = hdr.as_slice();
        // Header split 20/24 over two descriptors, payload over two more.
        m.write_slice(&bytes[..20], GuestAddress(0x4000)).unwrap();
        m.write_slice(&bytes[20..], GuestAddress(0x5000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x6000)).unwrap();
        m.write_slice(b"world", GuestAddress(0x7000)).unwrap();
        let mut pkt = tx_parse(
            &m,
            &[
                desc(0x4000, 20, 0),
                desc(0x5000, 24, 0),
                desc(0x6000, 5, 0),
                desc(0x7000, 100, 0),
            ],
        )
        .unwrap();
        assert_eq!(pkt.hdr().op(), OP_RW);
        assert_eq!(pkt.remaining(), 10);
        let mut buf = [0u8; 4];
        assert_eq!(pkt.read_payload(&m, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"hell");
        let mut rest = [0u8; 64];
        assert_eq!(pkt.read_payload(&m, &mut rest).unwrap(), 6);
        assert_eq!(&rest[..6], b"oworld");
        assert_eq!(pkt.remaining(), 0);
    }

    #[test]
    fn tx_chain_refusals() {
        let m = mem();
        m.write_obj(guest_hdr(OP_RW).with_len(100), GuestAddress(0x4000))
            .unwrap();
        m.write_obj(guest_hdr(OP_RW).with_len(70_000), GuestAddress(0x8000))
            .unwrap();
        let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
            ("short header", vec![desc(0x4000, 43, 0)]),
            (
                "write-only",
                vec![desc(0x4000, 44, 0), desc(0x5000, 100, VRING_DESC_F_WRITE)],
            ),
            (
                "len exceeds chain",
                vec![desc(0x4000, 44, 0), desc(0x5000, 99, 0)],
            ),
            (
                "huge len",
                vec![desc(0x8000, 44, 0), desc(0x9000, 70_000, 0)],
            ),
            ("outside memory", vec![desc(MEM_SIZE as u64 - 10, 44, 0)]),
            ("huge descriptor", vec![desc(0x4000, u32::MAX, 0)]),
            ("address overflow", vec![desc(u64::MAX - 4, 44, 0)]),
        ];
        for (name, descs) in cases {
            let err = tx_parse(&m, &descs).expect_err(name);
            match name {
                "short header" => assert!(matches!(err.error, PacketError::TooShort { .. })),
                "write-only" => assert!(matches!(err.error, PacketError::UnexpectedWriteOnly)),
                "len exceeds chain" => {
                    assert!(matches!(err.error, PacketError::LenExceedsChain { .. }));
                    assert!(err.hdr.is_some());
                }
                "huge len" => assert!(matches!(err.error, PacketError::PayloadTooLarge { .. })),
                _ => assert!(
                    matches!(err.error, PacketError::OutOfMemory { .. }),
                    "{name}: {err:?}"
                ),
            }
        }
        let too_many: Vec<_> = (0..(MAX_CHAIN_DESCRIPTORS as u64 + 1))
            .map(|i| desc(0x4000 + i, 1, 0))
            .collect();
        let q = MockSplitQueue::new(&m, 128);
        let chain = q.build_desc_chain(&too_many).unwrap();
        assert!(matches!(
            TxPacket::parse(&m, chain).unwrap_err().error,
            PacketError::TooManyDescriptors
        ));
    }

    #[test]
    fn rx_buffer_write_and_refusals() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[
                desc(0x4000, 30, VRING_DESC_F_WRITE),
                desc(0x5000, 30, VRING_DESC_F_WRITE),
            ])
            .unwrap();
        let rx = RxBuffer::parse(&m, chain).unwrap();
        assert_eq!(rx.payload_capacity(), 16);
        let hdr = VsockHeader::to_guest(3, 1, 2, OP_RW);
        assert!(rx.write(&m, hdr, &[0u8; 17]).is_err());
        assert_eq!(rx.write(&m, hdr, b"0123456789abcdef").unwrap(), 60);
        let mut got = [0u8; 30];
        m.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(&got[14..], b"0123456789abcdef");
        let mut hdr_bytes = [0u8; HDR_SIZE];
        hdr_bytes[..30].copy_from_slice(&m.read_obj::<[u8; 30]>(GuestAddress(0x4000)).unwrap());
        hdr_bytes[30..].copy_from_slice(&got[..14]);
        let back = VsockHeader::from_slice(&hdr_bytes).copied().unwrap();
        assert_eq!(back.len(), 16);
        assert_eq!(back.op(), OP_RW);

        let q = MockSplitQueue::new(&m, 16);
        let chain = q.build_desc_chain(&[desc(0x4000, 4096, 0)]).unwrap();
        assert!(matches!(
            RxBuffer::parse(&m, chain),
            Err((_, PacketError::UnexpectedReadOnly))
        ));
        for len in [43, 44] {
            let chain = q
                .build_desc_chain(&[desc(0x4000, len, VRING_DESC_F_WRITE)])
                .unwrap();
            assert!(matches!(
                RxBuffer::parse(&m, chain),
                Err((_, PacketError::TooShort { .. }))
            ));
        }
    }
}
