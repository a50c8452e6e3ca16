//! The block worker: a thread that waits on the request queue's notify
//! eventfd and the stop eventfd, checks every request chain and executes it on
//! the [`Disk`]. It owns the queue while the device is active; it must not
//! write guest memory outside a chain's checked writable buffers.
//!
//! A request is read as two byte streams, whatever the descriptor layout
//! (virtio 1.2 §2.6.4, message framing): the readable part is the 16-byte
//! header followed by the data of `OUT`, `DISCARD` and `WRITE_ZEROES`; the
//! writable part is the data of `IN` and `GET_ID` followed by the status byte,
//! which is the chain's last byte.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{ByteValued, Le32, Le64};
use vmm_sys_util::eventfd::EventFd;

use super::disk::{Disk, SECTOR_SIZE};
use super::{BlockStats, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, NAME, SEG_MAX, SIZE_MAX};
use crate::devices::virtio::queue_util::{
    DescChain, DeviceQueue, EventLoop, GuestErrorLog, Segments,
};
use crate::devices::virtio::{GuestMemory, Interrupt};

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// `struct virtio_blk_outhdr`: the request header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestHeader {
    pub type_: Le32,
    pub ioprio: Le32,
    pub sector: Le64,
}

// SAFETY: repr(C) with two Le32 and one Le64: no padding (checked by the
// layout test); every bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`: one range of a discard or
/// write-zeroes request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DiscardRange {
    pub sector: Le64,
    pub num_sectors: Le32,
    pub flags: Le32,
}

// SAFETY: repr(C) with one Le64 and two Le32: no padding (checked by the
// layout test); every bit pattern is valid.
unsafe impl ByteValued for DiscardRange {}

const HEADER_LEN: u64 = std::mem::size_of::<RequestHeader>() as u64;
const RANGE_LEN: u64 = std::mem::size_of::<DiscardRange>() as u64;

/// The answer to one request: its status and how many data bytes the device
/// wrote into the chain before the status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    status: u8,
    written: u32,
}

impl Outcome {
    const fn ok(written: u32) -> Outcome {
        Outcome {
            status: VIRTIO_BLK_S_OK as u8,
            written,
        }
    }
    const IOERR: Outcome = Outcome {
        status: VIRTIO_BLK_S_IOERR as u8,
        written: 0,
    };
    const UNSUPP: Outcome = Outcome {
        status: VIRTIO_BLK_S_UNSUPP as u8,
        written: 0,
    };
}

/// State of the running block device.
pub(super) struct BlockWorker {
    mem: GuestMemory,
    queue: DeviceQueue,
    interrupt: Interrupt,
    disk: Arc<Disk>,
    id: [u8; ID_BYTES],
    stats: Arc<BlockStats>,
    log: GuestErrorLog,
}

impl BlockWorker {
    pub(super) fn new(
        mem: GuestMemory,
        queue: DeviceQueue,
        interrupt: Interrupt,
        disk: Arc<Disk>,
        id: [u8; ID_BYTES],
        stats: Arc<BlockStats>,
    ) -> Self {
        BlockWorker {
            mem,
            queue,
            interrupt,
            disk,
            id,
            stats,
            log: GuestErrorLog::new(NAME),
        }
    }

    /// Executes the available requests, at most one queue's worth per call
    /// (then the worker yields to the event loop so a stop is seen promptly).
    pub(super) fn process_queue(&mut self) {
        let budget = self.queue.size().max(1);
        for _ in 0..budget {
            let Some(chain) = self.queue.pop(&self.mem, &mut self.log) else {
                self.queue.signal_used(&self.mem, &self.interrupt);
                return;
            };
            let (head, used) = match DescChain::parse(chain, self.queue.size(), &self.mem) {
                Ok(chain) => (chain.head, self.handle(&chain)),
                Err(e) => {
                    self.log.warn(format_args!("{e}"));
                    BlockStats::add(&self.stats.bad_chains, 1);
                    (e.head(), 0)
                }
            };
            self.queue.add_used(&self.mem, head, used, &mut self.log);
        }
        self.queue.signal_used(&self.mem, &self.interrupt);
        self.queue.requeue();
    }

    /// Executes one checked chain and writes its status byte; returns the used
    /// length (data written + the status byte, or 0 when there is no status
    /// byte to write).
    fn handle(&mut self, chain: &DescChain) -> u32 {
        let Some(status_at) = chain.writable.len().checked_sub(1) else {
            self.log.warn(format_args!(
                "request chain {}: no writable status byte",
                chain.head
            ));
            BlockStats::add(&self.stats.bad_chains, 1);
            return 0;
        };
        let Some((data_in, status)) = chain.writable.split_at(status_at) else {
            return 0;
        };
        let outcome = self.execute(chain.head, &chain.readable, &data_in);
        match outcome.status {
            s if s == VIRTIO_BLK_S_IOERR as u8 => BlockStats::add(&self.stats.io_errors, 1),
            s if s == VIRTIO_BLK_S_UNSUPP as u8 => BlockStats::add(&self.stats.unsupported, 1),
            _ => {}
        }
        if let Err(e) = status.write_all(&self.mem, &[outcome.status]) {
            self.log.warn(format_args!(
                "request chain {}: write status: {e}",
                chain.head
            ));
            return 0;
        }
        // written <= data_in.len() < 4 GiB (a chain carries at most 4 GiB).
        outcome.written.saturating_add(1)
    }

    /// Checks and executes one request.
    fn execute(&mut self, head: u16, readable: &Segments, data_in: &Segments) -> Outcome {
        let Some((header_segs, data_out)) = readable.split_at(HEADER_LEN) else {
            self.log.warn(format_args!(
                "request chain {head}: header has {} readable bytes, needs {HEADER_LEN}",
                readable.len()
            ));
            return Outcome::IOERR;
        };
        let mut header = RequestHeader::default();
        if let Err(e) = header_segs.read_exact(&self.mem, header.as_mut_slice()) {
            self.log
                .warn(format_args!("request chain {head}: read header: {e}"));
            return Outcome::IOERR;
        }
        let segments = data_out.as_slice().len() + data_in.as_slice().len();
        if segments > SEG_MAX as usize {
            self.log.warn(format_args!(
                "request chain {head}: {segments} data buffers, seg_max is {SEG_MAX}"
            ));
            return Outcome::IOERR;
        }
        if let Some(seg) = data_out
            .as_slice()
            .iter()
            .chain(data_in.as_slice())
            .find(|s| s.len > SIZE_MAX)
        {
            self.log.warn(format_args!(
                "request chain {head}: data buffer of {} bytes, size_max is {SIZE_MAX}",
                seg.len
            ));
            return Outcome::IOERR;
        }
        let sector = header.sector.to_native();
        match header.type_.to_native() {
            VIRTIO_BLK_T_IN => self.read(head, sector, data_out, data_in),
            VIRTIO_BLK_T_OUT => self.write(head, sector, data_out, data_in),
            VIRTIO_BLK_T_FLUSH => self.flush(head),
            VIRTIO_BLK_T_GET_ID => self.get_id(head, data_out, data_in),
            t @ (VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) => {
                self.discard_or_zero(head, t == VIRTIO_BLK_T_WRITE_ZEROES, data_out, data_in)
            }
            other => {
                self.log.warn(format_args!(
                    "request chain {head}: unsupported request type {other}"
                ));
                Outcome::UNSUPP
            }
        }
    }

    /// Checks a data transfer: direction, length and sector range. Returns the
    /// byte offset on the disk.
    fn check_transfer(
        &mut self,
        head: u16,
        what: &str,
        sector: u64,
        data: &Segments,
        wrong_way: &Segments,
    ) -> Option<u64> {
        if !wrong_way.is_empty() {
            self.log.warn(format_args!(
                "request chain {head}: {what} has {} data bytes in the wrong direction",
                wrong_way.len()
            ));
            return None;
        }
        let len = data.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            self.log.warn(format_args!(
                "request chain {head}: {what} of {len} bytes is not a multiple of {SECTOR_SIZE}"
            ));
            return None;
        }
        let offset = self.disk.checked_range(sector, len);
        if offset.is_none() {
            self.log.warn(format_args!(
                "request chain {head}: {what} of {len} bytes at sector {sector} is past the \
                 end of the disk ({} sectors)",
                self.disk.capacity()
            ));
        }
        offset
    }

    fn read(&mut self, head: u16, sector: u64, data_out: Segments, data_in: &Segments) -> Outcome {
        let Some(offset) = self.check_transfer(head, "read", sector, data_in, &data_out) else {
            return Outcome::IOERR;
        };
        let Ok(len) = u32::try_from(data_in.len()) else {
            return Outcome::IOERR;
        };
        match self.disk.read_to(&self.mem, offset, data_in) {
            Ok(()) => {
                BlockStats::add(&self.stats.reads, 1);
                BlockStats::add(&self.stats.read_bytes, u64::from(len));
                Outcome::ok(len)
            }
            Err(e) => self.backend_error(head, "read", offset, e),
        }
    }

    fn write(&mut self, head: u16, sector: u64, data_out: Segments, data_in: &Segments) -> Outcome {
        let Some(offset) = self.check_transfer(head, "write", sector, &data_out, data_in) else {
            return Outcome::IOERR;
        };
        if self.disk.read_only() {
            self.log.warn(format_args!(
                "request chain {head}: write to a read-only disk"
            ));
            return Outcome::IOERR;
        }
        match self.disk.write_from(&self.mem, offset, &data_out) {
            Ok(()) => {
                BlockStats::add(&self.stats.writes, 1);
                BlockStats::add(&self.stats.written_bytes, data_out.len());
                Outcome::ok(0)
            }
            Err(e) => self.backend_error(head, "write", offset, e),
        }
    }

    fn flush(&mut self, head: u16) -> Outcome {
        match self.disk.flush() {
            Ok(()) => {
                BlockStats::add(&self.stats.flushes, 1);
                Outcome::ok(0)
            }
            Err(e) => self.backend_error(head, "flush", 0, e),
        }
    }

    fn get_id(&mut self, head: u16, data_out: Segments, data_in: &Segments) -> Outcome {
        if !data_out.is_empty() || data_in.is_empty() {
            self.log.warn(format_args!(
                "request chain {head}: get id needs a writable buffer and no readable data"
            ));
            return Outcome::IOERR;
        }
        // At most ID_BYTES (20), so the cast is exact.
        let n = data_in.len().min(ID_BYTES as u64) as usize;
        match data_in.write_all(&self.mem, &self.id[..n]) {
            Ok(()) => Outcome::ok(n as u32),
            Err(e) => {
                self.log
                    .warn(format_args!("request chain {head}: write id: {e}"));
                Outcome::IOERR
            }
        }
    }

    fn discard_or_zero(
        &mut self,
        head: u16,
        zero: bool,
        data_out: Segments,
        data_in: &Segments,
    ) -> Outcome {
        let what = if zero { "write zeroes" } else { "discard" };
        if self.disk.read_only() {
            self.log.warn(format_args!(
                "request chain {head}: {what} on a read-only disk"
            ));
            return Outcome::IOERR;
        }
        let ranges = data_out.len() / RANGE_LEN;
        if !data_in.is_empty()
            || !data_out.len().is_multiple_of(RANGE_LEN)
            || ranges == 0
            || ranges > u64::from(MAX_DISCARD_SEG)
        {
            self.log.warn(format_args!(
                "request chain {head}: {what} with {} readable and {} writable data bytes \
                 (expects 1..={MAX_DISCARD_SEG} ranges of {RANGE_LEN} bytes)",
                data_out.len(),
                data_in.len()
            ));
            return Outcome::IOERR;
        }
        let mut range = DiscardRange::default();
        if let Err(e) = data_out.read_exact(&self.mem, range.as_mut_slice()) {
            self.log
                .warn(format_args!("request chain {head}: read {what} range: {e}"));
            return Outcome::IOERR;
        }
        let flags = range.flags.to_native();
        let allowed = if zero {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            self.log.warn(format_args!(
                "request chain {head}: {what} flags {flags:#x}"
            ));
            return Outcome::UNSUPP;
        }
        let sector = range.sector.to_native();
        let sectors = range.num_sectors.to_native();
        if sectors > MAX_DISCARD_SECTORS {
            self.log.warn(format_args!(
                "request chain {head}: {what} of {sectors} sectors, limit {MAX_DISCARD_SECTORS}"
            ));
            return Outcome::IOERR;
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let Some(offset) = self.disk.checked_range(sector, len) else {
            self.log.warn(format_args!(
                "request chain {head}: {what} of {sectors} sectors at sector {sector} is past \
                 the end of the disk"
            ));
            return Outcome::IOERR;
        };
        if len == 0 {
            return Outcome::ok(0);
        }
        let result = if zero {
            self.disk
                .write_zeroes(offset, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
        } else {
            self.disk.discard(offset, len)
        };
        match result {
            Ok(()) => {
                let counter = if zero {
                    &self.stats.write_zeroes
                } else {
                    &self.stats.discards
                };
                BlockStats::add(counter, 1);
                Outcome::ok(0)
            }
            Err(e) => self.backend_error(head, what, offset, e),
        }
    }

    /// A failed host I/O fails that request only.
    fn backend_error(&mut self, head: u16, what: &str, offset: u64, e: io::Error) -> Outcome {
        self.log.warn(format_args!(
            "request chain {head}: {what} {} at byte {offset}: {e}",
            self.disk.path().display()
        ));
        Outcome::IOERR
    }
}

/// Runs until the stop eventfd fires (or the event loop itself fails).
pub(super) fn run(mut w: BlockWorker, stop: EventFd) {
    let mut events = match EventLoop::new().and_then(|el| {
        el.add(w.queue.notify.as_raw_fd(), TOKEN_QUEUE)?;
        el.add(stop.as_raw_fd(), TOKEN_STOP)?;
        Ok(el)
    }) {
        Ok(el) => el,
        Err(e) => {
            tracing::error!(device = NAME, error = %e, "set up worker event loop; device stopped");
            return;
        }
    };
    w.process_queue();
    loop {
        let ready = match events.wait() {
            Ok(ready) => ready.to_vec(),
            Err(e) => {
                tracing::error!(device = NAME, error = %e, "wait for events; device stopped");
                return;
            }
        };
        if ready.contains(&TOKEN_STOP) {
            return;
        }
        if ready.contains(&TOKEN_QUEUE) {
            w.queue.ack_notify();
            w.process_queue();
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn request_structs_match_the_spec() {
        assert_eq!(size_of::<RequestHeader>(), 16);
        assert_eq!(offset_of!(RequestHeader, type_), 0);
        assert_eq!(offset_of!(RequestHeader, ioprio), 4);
        assert_eq!(offset_of!(RequestHeader, sector), 8);
        assert_eq!(
            size_of::<RequestHeader>(),
            size_of::<virtio_bindings::virtio_blk::virtio_blk_outhdr>()
        );
        assert_eq!(size_of::<DiscardRange>(), 16);
        assert_eq!(offset_of!(DiscardRange, sector), 0);
        assert_eq!(offset_of!(DiscardRange, num_sectors), 8);
        assert_eq!(offset_of!(DiscardRange, flags), 12);
    }
}
