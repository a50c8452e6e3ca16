//! The net worker: a thread that waits on the rx and tx queues' notify
//! eventfds, the tap and the stop eventfd, and moves frames between them. It
//! owns the queues while the device is active; it must not write guest memory
//! outside the rx chains' checked writable buffers.
//!
//! rx: one frame is read from the tap at a time and held until the guest has
//! buffers for it. While the guest has none, the tap is taken out of the epoll
//! set, so frames wait in the tap's queue instead of being dropped; a kick on
//! the rx queue brings it back. Without `MRG_RXBUF` a frame goes into one
//! buffer, and one that does not fit the buffer is dropped and counted; with
//! it, a frame spans as many buffers as it needs.
//!
//! tx: each chain is one frame (header + Ethernet frame), read into a host
//! buffer and written to the tap with a zeroed header, since no offload was
//! negotiated: the guest's header flags are never passed to the host kernel.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{ByteValued, Le16};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use super::{NetStats, VirtioNetHdr, MAX_FRAME_LEN, NAME};
use crate::devices::virtio::queue_util::{
    DescChain, DeviceQueue, EventLoop, GuestErrorLog, Segments,
};
use crate::devices::virtio::{GuestMemory, Interrupt};

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Ethernet header length: the shortest frame the tap accepts.
const ETH_HLEN: usize = 14;
/// Host rx buffer: the largest frame plus room to see that a read was
/// truncated (a read that fills the buffer is treated as one).
const RX_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN + 64;
/// Frames moved from the tap per wake-up before the worker looks at its other
/// events again.
const RX_FRAMES_PER_WAKE: usize = 256;

/// A checked guest rx buffer, taken from the queue and not yet used.
#[derive(Debug)]
struct RxBuf {
    head: u16,
    writable: Segments,
}

enum Delivery {
    Delivered,
    Dropped,
    NoBuffers,
}

/// State of the running net device.
pub(super) struct NetWorker {
    mem: GuestMemory,
    rx: DeviceQueue,
    tx: DeviceQueue,
    interrupt: Interrupt,
    tap: Arc<Tap>,
    mrg_rxbuf: bool,
    stats: Arc<NetStats>,
    log: GuestErrorLog,
    /// The frame read from the tap and not yet delivered: header + frame.
    frame: Vec<u8>,
    /// Bytes of `frame` in use; 0 when no frame is held.
    frame_len: usize,
    rx_bufs: VecDeque<RxBuf>,
    /// Whether the tap is in the epoll set for input.
    tap_watched: bool,
    /// The tap failed; rx is stopped until the device is reset.
    tap_dead: bool,
    tx_buf: Vec<u8>,
}

impl NetWorker {
    pub(super) fn new(
        mem: GuestMemory,
        rx: DeviceQueue,
        tx: DeviceQueue,
        interrupt: Interrupt,
        tap: Arc<Tap>,
        mrg_rxbuf: bool,
        stats: Arc<NetStats>,
    ) -> Self {
        NetWorker {
            mem,
            rx,
            tx,
            interrupt,
            tap,
            mrg_rxbuf,
            stats,
            log: GuestErrorLog::new(NAME),
            frame: vec![0; RX_BUF_LEN],
            frame_len: 0,
            rx_bufs: VecDeque::new(),
            tap_watched: true,
            tap_dead: false,
            tx_buf: Vec::with_capacity(VNET_HDR_LEN + MAX_FRAME_LEN),
        }
    }

    // ---- rx: tap -> guest ----

    /// Moves frames from the tap to the guest until the tap is empty, the
    /// guest has no buffers, or the per-wake budget is spent.
    fn process_rx(&mut self, events: &EventLoop) {
        if self.tap_dead {
            return;
        }
        let mut blocked = false;
        for _ in 0..RX_FRAMES_PER_WAKE {
            if self.frame_len == 0 && !self.read_frame(events) {
                break;
            }
            if self.frame_len == 0 {
                // A malformed read was dropped; try the next one.
                continue;
            }
            match self.deliver() {
                Delivery::Delivered | Delivery::Dropped => self.frame_len = 0,
                Delivery::NoBuffers => {
                    blocked = true;
                    break;
                }
            }
        }
        self.rx.signal_used(&self.mem, &self.interrupt);
        if !self.tap_dead {
            self.watch_tap(events, !blocked);
        }
    }

    /// Reads one frame from the tap into `frame`. Returns false when the tap
    /// has nothing (or failed); true otherwise, with `frame_len` 0 when the
    /// read was not a frame.
    fn read_frame(&mut self, events: &EventLoop) -> bool {
        loop {
            match (&self.tap.file).read(&mut self.frame) {
                Ok(n) if n < VNET_HDR_LEN + ETH_HLEN || n >= self.frame.len() => {
                    NetStats::add(&self.stats.rx_malformed, 1);
                    tracing::debug!(
                        device = NAME,
                        len = n,
                        "dropped a malformed read from the tap"
                    );
                    self.frame_len = 0;
                    return true;
                }
                Ok(n) => {
                    self.frame_len = n;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::error!(
                        device = NAME,
                        tap = self.tap.name(),
                        error = %e,
                        "read from tap; receive stopped until the device is reset"
                    );
                    self.tap_dead = true;
                    if let Err(e) = events.remove(self.tap.file.as_raw_fd()) {
                        tracing::error!(device = NAME, error = %e, "remove tap from the event loop");
                    }
                    return false;
                }
            }
        }
    }

    /// Turns input interest on the tap on or off.
    fn watch_tap(&mut self, events: &EventLoop, on: bool) {
        if self.tap_watched == on {
            return;
        }
        match events.set_readable_interest(self.tap.file.as_raw_fd(), TOKEN_TAP, on) {
            Ok(()) => self.tap_watched = on,
            Err(e) => tracing::error!(device = NAME, error = %e, "change tap interest"),
        }
    }

    /// Takes the next usable rx buffer from the queue into `rx_bufs`, returning
    /// refused ones to the guest with 0 bytes. False when the queue has none.
    fn take_rx_buf(&mut self) -> bool {
        let size = self.rx.size();
        for _ in 0..size.max(1) {
            let Some(chain) = self.rx.pop(&self.mem, &mut self.log) else {
                return false;
            };
            let chain = match DescChain::parse(chain, size, &self.mem) {
                Ok(c) => c,
                Err(e) => {
                    self.log.warn(format_args!("rx buffer: {e}"));
                    self.refuse_rx_buf(e.head());
                    continue;
                }
            };
            if !chain.readable.is_empty() {
                self.log.warn(format_args!(
                    "rx buffer {}: has {} device-readable bytes; rx buffers must be write-only",
                    chain.head,
                    chain.readable.len()
                ));
                self.refuse_rx_buf(chain.head);
                continue;
            }
            if chain.writable.len() < VNET_HDR_LEN as u64 {
                self.log.warn(format_args!(
                    "rx buffer {}: {} bytes, smaller than the {VNET_HDR_LEN}-byte header",
                    chain.head,
                    chain.writable.len()
                ));
                self.refuse_rx_buf(chain.head);
                continue;
            }
            self.rx_bufs.push_back(RxBuf {
                head: chain.head,
                writable: chain.writable,
            });
            return true;
        }
        // A queue's worth of refused buffers: come back after other events.
        self.rx.requeue();
        false
    }

    fn refuse_rx_buf(&mut self, head: u16) {
        NetStats::add(&self.stats.rx_bad_buffers, 1);
        self.rx.add_used(&self.mem, head, 0, &mut self.log);
    }

    /// Puts the held frame into guest buffers.
    fn deliver(&mut self) -> Delivery {
        let total = self.frame_len;
        // Buffers needed: the shortest prefix of `rx_bufs` that holds `total`.
        let needed = loop {
            if self.mrg_rxbuf || !self.rx_bufs.is_empty() {
                let mut have = 0u64;
                let fit = self.rx_bufs.iter().position(|b| {
                    have += b.writable.len();
                    have >= total as u64
                });
                match fit {
                    Some(i) if self.mrg_rxbuf || i == 0 => break i + 1,
                    _ if !self.mrg_rxbuf => {
                        // One buffer per frame, and the next one is too small.
                        let room = self.rx_bufs.front().map_or(0, |b| b.writable.len());
                        return self.drop_too_big(room);
                    }
                    _ if self.rx_bufs.len() >= usize::from(self.rx.size()) => {
                        // The whole queue cannot hold it.
                        return self.drop_too_big(have);
                    }
                    _ => {}
                }
            }
            if !self.take_rx_buf() {
                return Delivery::NoBuffers;
            }
        };
        // The tap's header is replaced: no offload was negotiated, so the
        // guest gets flags 0 (and a fully checksummed frame).
        let hdr = VirtioNetHdr {
            // needed <= queue size <= 32768.
            num_buffers: Le16::from(u16::try_from(needed).unwrap_or(u16::MAX)),
            ..Default::default()
        };
        self.frame[..VNET_HDR_LEN].copy_from_slice(hdr.as_slice());
        let mut offset = 0usize;
        for _ in 0..needed {
            let Some(buf) = self.rx_bufs.pop_front() else {
                break;
            };
            let n = (total - offset).min(usize::try_from(buf.writable.len()).unwrap_or(usize::MAX));
            match buf
                .writable
                .write_all(&self.mem, &self.frame[offset..offset + n])
            {
                Ok(()) => {
                    // n <= total < RX_BUF_LEN, fits u32.
                    self.rx
                        .add_used(&self.mem, buf.head, n as u32, &mut self.log);
                }
                Err(e) => {
                    // Checked when taken; only a bug gets here.
                    self.log.warn(format_args!("rx buffer {}: {e}", buf.head));
                    self.rx.add_used(&self.mem, buf.head, 0, &mut self.log);
                }
            }
            offset += n;
        }
        NetStats::add(&self.stats.rx_frames, 1);
        NetStats::add(&self.stats.rx_bytes, (total - VNET_HDR_LEN) as u64);
        Delivery::Delivered
    }

    fn drop_too_big(&mut self, room: u64) -> Delivery {
        NetStats::add(&self.stats.rx_dropped_too_big, 1);
        self.log.warn(format_args!(
            "rx: dropped a {}-byte frame; the guest's buffers hold {room} bytes",
            self.frame_len - VNET_HDR_LEN
        ));
        Delivery::Dropped
    }

    // ---- tx: guest -> tap ----

    /// Sends the available tx chains, at most one queue's worth per call.
    fn process_tx(&mut self) {
        let size = self.tx.size();
        for _ in 0..size.max(1) {
            let Some(chain) = self.tx.pop(&self.mem, &mut self.log) else {
                self.tx.signal_used(&self.mem, &self.interrupt);
                return;
            };
            let head = match DescChain::parse(chain, size, &self.mem) {
                Ok(chain) => {
                    self.send(&chain);
                    chain.head
                }
                Err(e) => {
                    self.log.warn(format_args!("tx: {e}"));
                    NetStats::add(&self.stats.tx_malformed, 1);
                    e.head()
                }
            };
            self.tx.add_used(&self.mem, head, 0, &mut self.log);
        }
        self.tx.signal_used(&self.mem, &self.interrupt);
        self.tx.requeue();
    }

    /// Writes one tx chain's frame to the tap.
    fn send(&mut self, chain: &DescChain) {
        let len = chain.readable.len();
        let refuse = if !chain.writable.is_empty() {
            Some("has device-writable buffers")
        } else if len < (VNET_HDR_LEN + ETH_HLEN) as u64 {
            Some("is shorter than header + Ethernet header")
        } else {
            None
        };
        if let Some(why) = refuse {
            NetStats::add(&self.stats.tx_malformed, 1);
            self.log.warn(format_args!(
                "tx chain {}: {len} bytes {why}; dropped",
                chain.head
            ));
            return;
        }
        if len > (VNET_HDR_LEN + MAX_FRAME_LEN) as u64 {
            NetStats::add(&self.stats.tx_dropped_oversized, 1);
            self.log.warn(format_args!(
                "tx chain {}: frame of {} bytes is over {MAX_FRAME_LEN}; dropped",
                chain.head,
                len - VNET_HDR_LEN as u64
            ));
            return;
        }
        // len <= VNET_HDR_LEN + MAX_FRAME_LEN here.
        let len = len as usize;
        self.tx_buf.resize(len, 0);
        if let Err(e) = chain.readable.read_exact(&self.mem, &mut self.tx_buf) {
            NetStats::add(&self.stats.tx_malformed, 1);
            self.log.warn(format_args!("tx chain {}: {e}", chain.head));
            return;
        }
        self.tx_buf[..VNET_HDR_LEN].fill(0);
        let result = loop {
            match (&self.tap.file).write(&self.tx_buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match result {
            Ok(n) if n == len => {
                NetStats::add(&self.stats.tx_frames, 1);
                NetStats::add(&self.stats.tx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            Ok(n) => {
                NetStats::add(&self.stats.tx_errors, 1);
                self.log
                    .warn(format_args!("tx: tap took {n} of {len} bytes"));
            }
            Err(e) => {
                // Includes EAGAIN: a tap that cannot take the frame now drops
                // it, as a NIC with a full ring would.
                NetStats::add(&self.stats.tx_errors, 1);
                self.log.warn(format_args!(
                    "tx: write {len} bytes to tap {}: {e}",
                    self.tap.name()
                ));
            }
        }
    }
}

impl NetWorker {
    /// One tx pass and one rx pass on the calling thread, with an event loop
    /// that holds only the tap (for the fuzzer).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn serve_once(mut self) -> io::Result<()> {
        let events = EventLoop::new()?;
        events.add(self.tap.file.as_raw_fd(), TOKEN_TAP)?;
        self.process_tx();
        self.process_rx(&events);
        Ok(())
    }
}

/// Runs until the stop eventfd fires (or the event loop itself fails).
pub(super) fn run(mut w: NetWorker, stop: EventFd) {
    let events = EventLoop::new().and_then(|el| {
        el.add(w.rx.notify.as_raw_fd(), TOKEN_RX)?;
        el.add(w.tx.notify.as_raw_fd(), TOKEN_TX)?;
        el.add(w.tap.file.as_raw_fd(), TOKEN_TAP)?;
        el.add(stop.as_raw_fd(), TOKEN_STOP)?;
        Ok(el)
    });
    let mut events = match events {
        Ok(el) => el,
        Err(e) => {
            tracing::error!(device = NAME, error = %e, "set up worker event loop; device stopped");
            return;
        }
    };
    w.process_tx();
    w.process_rx(&events);
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
        if ready.contains(&TOKEN_TX) {
            w.tx.ack_notify();
            w.process_tx();
        }
        if ready.contains(&TOKEN_RX) {
            w.rx.ack_notify();
        }
        if ready.contains(&TOKEN_RX) || ready.contains(&TOKEN_TAP) {
            w.process_rx(&events);
        }
    }
}
