//! Queue plumbing shared by the virtio-rng, virtio-blk and virtio-net devices.
//!
//! It owns: turning a guest descriptor chain into checked guest-memory
//! [`Segments`] ([`DescChain::parse`]), copying between those segments and host
//! buffers, popping and returning chains on a [`DeviceQueue`], the epoll loop
//! ([`EventLoop`]) and the stop/join handle ([`WorkerThread`]) of a device
//! worker, and rate-limited logging of guest mistakes ([`GuestErrorLog`]).
//! It must not know any device protocol, and it never touches the transport's
//! registers.
//!
//! Why not `virtio_queue::{Reader, Writer}`: they iterate a chain with
//! `DescriptorChain`'s iterator, which ends a chain silently on a loop, on a
//! `next` index out of range or on a bad indirect table, so a hostile chain
//! looks like a short valid one; they do not check that readable descriptors
//! come before writable ones; and they borrow guest memory, so a chain cannot
//! be held across events (virtio-net keeps rx buffers while it waits for
//! frames). [`DescChain::parse`] walks the chain once with the same iterator and
//! reports each of those cases as an error.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryError};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, GuestMemory, Interrupt};
use crate::seccomp::{self, WorkerKind};

/// One guest-memory buffer of a descriptor: `len` bytes at `addr`, checked to lie
/// inside guest memory when the chain was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The buffers of one direction of a descriptor chain, in chain order, seen as
/// one byte stream. Zero-length descriptors are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    segs: Vec<Segment>,
    len: u64,
}

impl Segments {
    /// Appends a buffer (a zero-length one is left out).
    pub fn push(&mut self, seg: Segment) {
        if seg.len > 0 {
            self.len += u64::from(seg.len);
            self.segs.push(seg);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn as_slice(&self) -> &[Segment] {
        &self.segs
    }

    /// Splits the stream after `at` bytes: `(first at bytes, the rest)`. `None`
    /// when `at` is past the end.
    pub fn split_at(&self, at: u64) -> Option<(Segments, Segments)> {
        if at > self.len {
            return None;
        }
        let mut head = Segments::default();
        let mut tail = Segments::default();
        let mut left = at;
        for seg in &self.segs {
            let len = u64::from(seg.len);
            if left >= len {
                head.push(*seg);
                left -= len;
            } else if left == 0 {
                tail.push(*seg);
            } else {
                // 0 < left < seg.len, so both halves fit in u32.
                let first = u32::try_from(left).ok()?;
                head.push(Segment {
                    addr: seg.addr,
                    len: first,
                });
                tail.push(Segment {
                    addr: seg.addr.checked_add(left)?,
                    len: seg.len - first,
                });
                left = 0;
            }
        }
        Some((head, tail))
    }

    /// Fills `buf` from the start of the stream. Fails when the stream is
    /// shorter than `buf`.
    pub fn read_exact(&self, mem: &GuestMemory, buf: &mut [u8]) -> Result<(), CopyError> {
        let mut done = 0usize;
        for seg in &self.segs {
            if done == buf.len() {
                break;
            }
            let n = (buf.len() - done).min(seg.len as usize);
            mem.read_slice(&mut buf[done..done + n], seg.addr)
                .map_err(|source| CopyError::Memory {
                    addr: seg.addr.0,
                    source,
                })?;
            done += n;
        }
        if done < buf.len() {
            return Err(CopyError::TooShort {
                needed: buf.len(),
                available: self.len,
            });
        }
        Ok(())
    }

    /// Writes all of `buf` at the start of the stream. Fails when the stream is
    /// shorter than `buf`.
    pub fn write_all(&self, mem: &GuestMemory, buf: &[u8]) -> Result<(), CopyError> {
        if (buf.len() as u64) > self.len {
            return Err(CopyError::TooShort {
                needed: buf.len(),
                available: self.len,
            });
        }
        let mut done = 0usize;
        for seg in &self.segs {
            if done == buf.len() {
                break;
            }
            let n = (buf.len() - done).min(seg.len as usize);
            mem.write_slice(&buf[done..done + n], seg.addr)
                .map_err(|source| CopyError::Memory {
                    addr: seg.addr.0,
                    source,
                })?;
            done += n;
        }
        Ok(())
    }
}

/// Why a copy between guest buffers and a host buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("copy guest buffer: need {needed} bytes, chain has {available}")]
    TooShort { needed: usize, available: u64 },
    #[error("copy guest buffer at {addr:#x}: {source}")]
    Memory {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// A descriptor chain, walked once and checked: it ended properly, its readable
/// descriptors come before its writable ones, and every buffer lies inside guest
/// memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescChain {
    /// Head index, the id the chain is returned under.
    pub head: u16,
    /// The device-readable part (driver → device).
    pub readable: Segments,
    /// The device-writable part (device → driver).
    pub writable: Segments,
    /// Number of descriptors, zero-length ones included.
    pub descriptors: usize,
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain {head}: head index out of range for queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("descriptor chain {head}: no descriptor could be read")]
    Empty { head: u16 },
    #[error(
        "descriptor chain {head}: stops after {count} descriptors with the next flag set \
         (loop, next index out of range, or bad indirect table)"
    )]
    Truncated { head: u16, count: usize },
    #[error("descriptor chain {head}: readable descriptor {index} follows a writable one")]
    ReadAfterWrite { head: u16, index: usize },
    #[error(
        "descriptor chain {head}: descriptor {index} ({addr:#x}, {len} bytes) is outside \
         guest memory"
    )]
    OutOfMemory {
        head: u16,
        index: usize,
        addr: u64,
        len: u32,
    },
}

impl ChainError {
    /// The head index of the refused chain.
    pub fn head(&self) -> u16 {
        match *self {
            ChainError::HeadOutOfRange { head, .. }
            | ChainError::Empty { head }
            | ChainError::Truncated { head, .. }
            | ChainError::ReadAfterWrite { head, .. }
            | ChainError::OutOfMemory { head, .. } => head,
        }
    }
}

impl DescChain {
    /// Walks `chain` and checks it. `queue_size` is the size of the queue the
    /// chain came from.
    ///
    /// The walk is bounded: `DescriptorChain` stops after `queue_size`
    /// descriptors (or the indirect table's length) and after 4 GiB in total; a
    /// chain cut short by either bound, by a loop or by a bad index ends with
    /// the next flag still set and is refused here.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        queue_size: u16,
        mem: &GuestMemory,
    ) -> Result<DescChain, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let head = chain.head_index();
        if head >= queue_size {
            return Err(ChainError::HeadOutOfRange {
                head,
                size: queue_size,
            });
        }
        let mut out = DescChain {
            head,
            readable: Segments::default(),
            writable: Segments::default(),
            descriptors: 0,
        };
        let mut seen_writable = false;
        let mut last_has_next = false;
        for (index, desc) in chain.enumerate() {
            out.descriptors = index + 1;
            last_has_next = desc.has_next();
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if seg.len > 0 && !mem.check_range(seg.addr, seg.len as usize) {
                return Err(ChainError::OutOfMemory {
                    head,
                    index,
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
            if desc.is_write_only() {
                seen_writable = true;
                out.writable.push(seg);
            } else {
                if seen_writable {
                    return Err(ChainError::ReadAfterWrite { head, index });
                }
                out.readable.push(seg);
            }
        }
        if out.descriptors == 0 {
            return Err(ChainError::Empty { head });
        }
        if last_has_next {
            return Err(ChainError::Truncated {
                head,
                count: out.descriptors,
            });
        }
        Ok(out)
    }
}

/// One queue owned by a device worker: the queue, its notify eventfd, and
/// whether used buffers are waiting for an interrupt.
#[derive(Debug)]
pub struct DeviceQueue {
    pub queue: Queue,
    pub notify: EventFd,
    used_since_signal: bool,
}

impl DeviceQueue {
    pub fn new(queue: Queue, notify: EventFd) -> Self {
        DeviceQueue {
            queue,
            notify,
            used_since_signal: false,
        }
    }

    /// The negotiated queue size.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Clears the notify eventfd after epoll reported it readable.
    pub fn ack_notify(&self) {
        // A failed read means the counter was already zero (non-blocking fd);
        // either way there is nothing to undo.
        let _ = self.notify.read();
    }

    /// Asks the worker's event loop to come back to this queue (after a work
    /// budget ran out).
    pub fn requeue(&self) {
        if let Err(e) = self.notify.write(1) {
            tracing::error!(error = %e, "re-arm queue notify eventfd");
        }
    }

    /// Takes the next available chain. A driver that moved `avail.idx` more
    /// than the queue size ahead gets `None` (and a log line) until it fixes it.
    pub fn pop<'m>(
        &mut self,
        mem: &'m GuestMemory,
        log: &mut GuestErrorLog,
    ) -> Option<DescriptorChain<&'m GuestMemory>> {
        match self.queue.iter(mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                log.warn(format_args!("read available ring: {e}"));
                None
            }
        }
    }

    /// Puts the previously popped chain back (it will be popped again).
    pub fn unpop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns a chain to the driver with `len` bytes written. A head that is
    /// out of range cannot be returned; that chain is only logged.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32, log: &mut GuestErrorLog) {
        match self.queue.add_used(mem, head, len) {
            Ok(()) => self.used_since_signal = true,
            Err(e) => {
                log.warn(format_args!("return chain {head} to used ring: {e}"));
            }
        }
    }

    /// Raises the used-buffer interrupt if chains were returned since the last
    /// call and the driver wants to hear about it.
    pub fn signal_used(&mut self, mem: &GuestMemory, interrupt: &Interrupt) {
        if !self.used_since_signal {
            return;
        }
        self.used_since_signal = false;
        match self.queue.needs_notification(mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                if let Err(e) = interrupt.signal_used_queue() {
                    tracing::error!(error = %e, "signal used queue interrupt");
                }
            }
        }
    }
}

/// Rate-limited warnings for one device: guest mistakes are logged, but a guest
/// that keeps making them cannot flood the host log. At most [`LOG_BURST`]
/// lines per [`LOG_WINDOW`]; the next window starts with a count of what was
/// left out.
#[derive(Debug)]
pub struct GuestErrorLog {
    device: &'static str,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
    total: u64,
}

/// Lines per window.
pub const LOG_BURST: u32 = 10;
/// Window length.
pub const LOG_WINDOW: Duration = Duration::from_secs(5);

impl GuestErrorLog {
    pub fn new(device: &'static str) -> Self {
        GuestErrorLog {
            device,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
            total: 0,
        }
    }

    /// Logs one guest error. Returns whether the line was written.
    pub fn warn(&mut self, what: fmt::Arguments<'_>) -> bool {
        self.total += 1;
        let now = Instant::now();
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    device = self.device,
                    suppressed = self.suppressed,
                    "guest errors left out of the log"
                );
            }
            self.window_start = now;
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window >= LOG_BURST {
            self.suppressed += 1;
            return false;
        }
        self.in_window += 1;
        tracing::warn!(device = self.device, "guest error: {what}");
        true
    }

    /// Guest errors seen so far, logged or not.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// An epoll set of a worker: each fd is registered with a token; [`wait`]
/// returns the tokens that are ready.
///
/// [`wait`]: EventLoop::wait
#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    ready: Vec<u64>,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 8],
            ready: Vec::with_capacity(8),
        })
    }

    /// Watches `fd` for input, level-triggered.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Turns input interest on `fd` (added before) on or off.
    pub fn set_readable_interest(&self, fd: RawFd, token: u64, on: bool) -> io::Result<()> {
        let events = if on { EventSet::IN } else { EventSet::empty() };
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Blocks until at least one fd is ready; returns their tokens. An
    /// interrupted wait returns an empty list.
    pub fn wait(&mut self) -> io::Result<&[u64]> {
        self.ready.clear();
        match self.epoll.wait(-1, &mut self.events) {
            Ok(n) => {
                for ev in &self.events[..n] {
                    self.ready.push(ev.data());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(&self.ready)
    }
}

/// The worker thread of an active device and the eventfd that stops it.
#[derive(Debug)]
pub struct WorkerThread {
    device: &'static str,
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Starts `body` on a thread named `moat-<device>`, confined to `kind`'s
    /// seccomp filter when filters are on (see [`seccomp::spawn_worker`]).
    /// `body` gets the stop eventfd: it must watch it and return once it
    /// becomes readable.
    pub fn spawn<F>(device: &'static str, kind: WorkerKind, body: F) -> io::Result<Self>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let worker_stop = stop.try_clone()?;
        let handle =
            seccomp::spawn_worker(format!("moat-{device}"), kind, move || body(worker_stop))?;
        Ok(WorkerThread {
            device,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the worker and waits for it. Returns `false` if the worker
    /// panicked or could not be told to stop.
    pub fn stop(mut self) -> bool {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        if let Err(e) = self.stop.write(1) {
            tracing::error!(device = self.device, error = %e, "signal worker to stop");
            // Leave the thread running detached; the device stays failed.
            return false;
        }
        match handle.join() {
            Ok(()) => true,
            Err(_) => {
                tracing::error!(device = self.device, "worker thread panicked");
                false
            }
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The worker of a device that runs one thread while active: empty until
/// `activate`, filled by [`WorkerSlot::start`], emptied by `reset`.
#[derive(Debug, Default)]
pub struct WorkerSlot(Option<WorkerThread>);

impl WorkerSlot {
    /// Refuses a second activation: the driver must reset the device first.
    pub fn ensure_idle(&self, device: &'static str) -> Result<(), ActivateError> {
        match self.0 {
            Some(_) => Err(ActivateError::Other {
                device,
                reason: "already active".to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Starts `body` as the device's worker (see [`WorkerThread::spawn`]).
    pub fn start<F>(
        &mut self,
        device: &'static str,
        kind: WorkerKind,
        body: F,
    ) -> Result<(), ActivateError>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        self.ensure_idle(device)?;
        let worker = WorkerThread::spawn(device, kind, body)
            .map_err(|source| ActivateError::Io { device, source })?;
        self.0 = Some(worker);
        Ok(())
    }

    /// Stops the worker, if any, and waits for it: what `reset` returns.
    /// `false` if the worker panicked or could not be told to stop.
    pub fn stop(&mut self) -> bool {
        self.0.take().is_none_or(WorkerThread::stop)
    }
}

/// Test helpers: the guest driver side of a split queue over simulated guest
/// memory, built on `virtio_queue::mock::MockSplitQueue`. Other crates (the
/// fuzzer) get them with the `test-utils` feature.
#[cfg(any(test, feature = "test-utils"))]
pub mod testing {
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

    /// Guest memory of `size` bytes at address 0.
    pub fn guest_memory(size: usize) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A non-blocking eventfd.
    pub fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    /// Waits (up to 5 s) for `irq` to be signalled and returns the irqfd's count.
    /// A device publishes a used entry before it signals, so a test that saw the
    /// entry must still wait for the interrupt (seen to race on arm64).
    pub fn wait_interrupt(irq: &Interrupt) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match irq.irqfd().read() {
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no interrupt within 5 s");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("read irqfd: {e}"),
            }
        }
    }

    /// One descriptor as the test guest writes it.
    #[derive(Debug, Clone, Copy)]
    pub struct Desc {
        pub addr: u64,
        pub len: u32,
        pub write: bool,
    }

    /// Device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: false,
        }
    }

    /// Device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: true,
        }
    }

    /// The driver side of one queue.
    pub struct Driver<'a> {
        pub mock: MockSplitQueue<'a, GuestMemory>,
        mem: &'a GuestMemory,
        size: u16,
        next_desc: u16,
        notify: EventFd,
    }

    impl std::fmt::Debug for Driver<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Driver")
                .field("size", &self.size)
                .field("next_desc", &self.next_desc)
                .finish_non_exhaustive()
        }
    }

    impl<'a> Driver<'a> {
        /// A queue of `size` entries whose rings start at `base`.
        pub fn new(mem: &'a GuestMemory, base: u64, size: u16) -> Self {
            Driver {
                mock: MockSplitQueue::create(mem, GuestAddress(base), size),
                mem,
                size,
                next_desc: 0,
                notify: eventfd(),
            }
        }

        /// The queue as the transport would hand it to the device.
        pub fn active_queue(&self) -> ActiveQueue {
            ActiveQueue {
                queue: self.mock.create_queue::<Queue>().unwrap(),
                notify: self.notify.try_clone().unwrap(),
            }
        }

        /// Writes raw descriptors at consecutive table slots (flags and next
        /// exactly as given) and returns the first slot.
        pub fn write_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
            let first = self.next_desc;
            for &(addr, len, flags, next) in descs {
                let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                self.mock.desc_table().store(self.next_desc, raw).unwrap();
                self.next_desc = (self.next_desc + 1) % self.size;
            }
            first
        }

        /// Writes a well-formed chain and returns its head (not yet published).
        pub fn write_chain(&mut self, descs: &[Desc]) -> u16 {
            let first = self.next_desc;
            let n = descs.len() as u16;
            let raw: Vec<_> = descs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let i = i as u16;
                    let mut flags = if d.write {
                        VRING_DESC_F_WRITE as u16
                    } else {
                        0
                    };
                    let mut next = 0;
                    if i + 1 < n {
                        flags |= VRING_DESC_F_NEXT as u16;
                        next = (first + i + 1) % self.size;
                    }
                    (d.addr, d.len, flags, next)
                })
                .collect();
            self.write_raw(&raw)
        }

        /// Puts `head` on the available ring (any value, valid or not).
        pub fn publish(&mut self, head: u16) {
            let avail = self.mock.avail();
            let idx = avail.idx().load();
            avail
                .ring()
                .ref_at(usize::from(idx % self.size))
                .unwrap()
                .store(head);
            avail.idx().store(idx.wrapping_add(1));
        }

        /// Writes and publishes a chain; returns its head.
        pub fn add(&mut self, descs: &[Desc]) -> u16 {
            let head = self.write_chain(descs);
            self.publish(head);
            head
        }

        /// Overwrites `avail.idx`.
        pub fn set_avail_idx(&mut self, idx: u16) {
            self.mock.avail().idx().store(idx);
        }

        pub fn avail_idx(&self) -> u16 {
            self.mock.avail().idx().load()
        }

        /// Rings the doorbell.
        pub fn kick(&self) {
            self.notify.write(1).unwrap();
        }

        /// `used.idx` as the device left it.
        pub fn used_idx(&self) -> u16 {
            self.mock.used().idx().load()
        }

        /// Used ring entry `i`: (head, len).
        pub fn used(&self, i: u16) -> (u32, u32) {
            let e = self
                .mock
                .used()
                .ring()
                .ref_at(usize::from(i % self.size))
                .unwrap()
                .load();
            (e.id(), e.len())
        }

        /// Waits until `used.idx` reaches `n`; false on timeout.
        pub fn wait_used(&self, n: u16, timeout: Duration) -> bool {
            let end = Instant::now() + timeout;
            while Instant::now() < end {
                if self.used_idx() == n {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.used_idx() == n
        }

        /// Kicks and waits for `n` used entries in total.
        pub fn kick_and_wait(&self, n: u16) -> bool {
            self.kick();
            self.wait_used(n, Duration::from_secs(5))
        }

        pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }

        pub fn write(&self, addr: u64, data: &[u8]) {
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        }
    }

    /// An interrupt whose irqfd the test can read.
    pub fn interrupt() -> Interrupt {
        Interrupt::new(eventfd())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    fn parse_next(drv: &Driver<'_>, mem: &GuestMemory) -> Result<DescChain, ChainError> {
        let mut q: Queue = drv.mock.create_queue().unwrap();
        let size = q.size();
        let chain = q.iter(mem).unwrap().next().unwrap();
        DescChain::parse(chain, size, mem)
    }

    #[test]
    fn parses_readable_then_writable() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        drv.add(&[
            r(0x10000, 16),
            r(0x11000, 0),
            w(0x12000, 512),
            w(0x13000, 1),
        ]);
        let c = parse_next(&drv, &mem).unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.descriptors, 4);
        assert_eq!(c.readable.len(), 16);
        assert_eq!(c.readable.as_slice().len(), 1, "zero-length left out");
        assert_eq!(c.writable.len(), 513);
    }

    #[test]
    fn refuses_loop() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        let head = drv.write_raw(&[(0x10000, 8, NEXT, 1), (0x11000, 8, NEXT, 0)]);
        drv.publish(head);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::Truncated { head: 0, count: 16 })
        );
    }

    #[test]
    fn refuses_next_out_of_range() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        let head = drv.write_raw(&[(0x10000, 8, NEXT, 200)]);
        drv.publish(head);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::Truncated { head: 0, count: 1 })
        );
    }

    #[test]
    fn refuses_head_out_of_range() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        drv.publish(16);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::HeadOutOfRange { head: 16, size: 16 })
        );
    }

    #[test]
    fn refuses_readable_after_writable() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        drv.add(&[w(0x10000, 8), r(0x11000, 8)]);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::ReadAfterWrite { head: 0, index: 1 })
        );
    }

    #[test]
    fn refuses_buffers_outside_memory() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        // Starts inside, ends outside.
        drv.add(&[w((1 << 20) - 8, 16)]);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::OutOfMemory {
                head: 0,
                index: 0,
                addr: (1 << 20) - 8,
                len: 16
            })
        );
        // Address near u64::MAX: no overflow, refused.
        let mut drv = Driver::new(&mem, 0, 16);
        drv.add(&[r(u64::MAX - 4, 0xffff_ffff)]);
        assert!(matches!(
            parse_next(&drv, &mem),
            Err(ChainError::OutOfMemory { index: 0, .. })
        ));
    }

    #[test]
    fn refuses_unreadable_descriptor_table() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        drv.add(&[w(0x10000, 8)]);
        let mut q: Queue = drv.mock.create_queue().unwrap();
        // A descriptor table outside guest memory.
        q.set_desc_table_address(Some(0xffff_0000), Some(0xffff));
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(
            DescChain::parse(chain, 16, &mem),
            Err(ChainError::Empty { head: 0 })
        );
    }

    #[test]
    fn follows_indirect_table_and_refuses_nested_indirect() {
        let mem = guest_memory(1 << 20);
        let mut drv = Driver::new(&mem, 0, 16);
        // Indirect table at 0x20000 with two descriptors.
        let table = 0x20000u64;
        for (i, (addr, len, flags, next)) in
            [(0x30000u64, 16u32, NEXT, 1u16), (0x31000, 1, WRITE, 0)]
                .into_iter()
                .enumerate()
        {
            let raw = virtio_queue::desc::RawDescriptor::from(
                virtio_queue::desc::split::Descriptor::new(addr, len, flags, next),
            );
            mem.write_obj(raw, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let head = drv.write_raw(&[(table, 32, INDIRECT, 0)]);
        drv.publish(head);
        let c = parse_next(&drv, &mem).unwrap();
        assert_eq!(c.readable.len(), 16);
        assert_eq!(c.writable.len(), 1);

        // An indirect descriptor inside an indirect table ends the walk.
        let raw = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(table, 32, INDIRECT, 0),
        );
        mem.write_obj(raw, GuestAddress(table + 16)).unwrap();
        let mut drv = Driver::new(&mem, 0, 16);
        let head = drv.write_raw(&[(table, 32, INDIRECT, 0)]);
        drv.publish(head);
        assert_eq!(
            parse_next(&drv, &mem),
            Err(ChainError::Truncated { head: 0, count: 1 })
        );
    }

    #[test]
    fn segments_split_and_copy() {
        let mem = guest_memory(1 << 20);
        let mut s = Segments::default();
        s.push(Segment {
            addr: GuestAddress(0x1000),
            len: 4,
        });
        s.push(Segment {
            addr: GuestAddress(0x2000),
            len: 4,
        });
        let (a, b) = s.split_at(6).unwrap();
        assert_eq!(a.len(), 6);
        assert_eq!(b.len(), 2);
        assert_eq!(b.as_slice()[0].addr, GuestAddress(0x2002));
        assert!(s.split_at(9).is_none());
        let (a, b) = s.split_at(4).unwrap();
        assert_eq!((a.as_slice().len(), b.as_slice().len()), (1, 1));

        s.write_all(&mem, &[1, 2, 3, 4, 5, 6]).unwrap();
        let mut out = [0u8; 8];
        s.read_exact(&mem, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 0, 0]);
        assert!(matches!(
            s.write_all(&mem, &[0; 9]),
            Err(CopyError::TooShort { needed: 9, .. })
        ));
        assert!(matches!(
            s.read_exact(&mem, &mut [0; 9]),
            Err(CopyError::TooShort { .. })
        ));
    }

    #[test]
    fn log_is_rate_limited() {
        let mut log = GuestErrorLog::new("test");
        let written = (0..100)
            .filter(|i| log.warn(format_args!("bad chain {i}")))
            .count();
        assert_eq!(written, LOG_BURST as usize);
        assert_eq!(log.total(), 100);
    }

    #[test]
    fn worker_thread_stops() {
        let w = WorkerThread::spawn("test", WorkerKind::Rng, |stop| {
            let mut el = EventLoop::new().unwrap();
            el.add(std::os::fd::AsRawFd::as_raw_fd(&stop), 1).unwrap();
            loop {
                if el.wait().unwrap().contains(&1) {
                    return;
                }
            }
        })
        .unwrap();
        assert!(w.stop());
        let w = WorkerThread::spawn("test", WorkerKind::Rng, |_stop| panic!("worker bug")).unwrap();
        assert!(!w.stop(), "a panicked worker is reported");
    }

    /// Waits for the stop eventfd, as a worker loop does.
    fn wait_for_stop(stop: EventFd) {
        let mut el = EventLoop::new().unwrap();
        el.add(std::os::fd::AsRawFd::as_raw_fd(&stop), 1).unwrap();
        while !el.wait().unwrap().contains(&1) {}
    }

    #[test]
    fn worker_slot_runs_one_worker_at_a_time() {
        let mut slot = WorkerSlot::default();
        assert!(slot.stop(), "stopping an idle device is a clean reset");
        slot.ensure_idle("test").unwrap();
        slot.start("test", WorkerKind::Rng, wait_for_stop).unwrap();
        let again = slot
            .start("test", WorkerKind::Rng, wait_for_stop)
            .unwrap_err();
        assert!(again.to_string().contains("already active"), "{again}");
        assert!(slot.ensure_idle("test").is_err());
        assert!(slot.stop());
        // Idle again: a reset device can be activated anew.
        slot.start("test", WorkerKind::Rng, wait_for_stop).unwrap();
        assert!(slot.stop());
        slot.start("test", WorkerKind::Rng, |_stop| panic!("worker bug"))
            .unwrap();
        assert!(!slot.stop(), "a panicked worker fails the reset");
        assert!(slot.stop(), "and leaves the slot idle");
    }
}
