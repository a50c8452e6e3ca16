//! The virtio-fs worker thread: waits on the queue eventfds and a stop eventfd,
//! turns each descriptor chain into a FUSE request for the in-process server, and
//! returns the chain with an interrupt.
//!
//! It owns the queues while the device is active and the per-chain error policy;
//! it must not decide what a request may do (that is `filesystem.rs`).
//!
//! Error policy, per chain (never per device):
//! - a chain whose readable or writable descriptors fall outside guest memory is
//!   returned unused (length 0) and logged (rate-limited: the guest controls how
//!   often);
//! - only the first [`MAX_REQUEST_SIZE`] readable bytes are offered to the
//!   server, the most a FUSE request may carry. fuse-backend-rs sizes some
//!   buffers from the chain rather than from the header (IOCTL copies `in_size`
//!   bytes, up to 4 GiB, when the chain holds them, and descriptors may repeat
//!   the same guest pages);
//! - a request the server cannot decode (short header, `len` beyond the chain,
//!   bad strings) or cannot answer (reply larger than the writable descriptors)
//!   gets an error reply (`EINVAL` or `EIO`) when its header could be read and its
//!   writable part holds one, and is returned unused otherwise;
//! - a panic inside fuse-backend-rs is caught; that request gets `EIO` and every
//!   later request `EIO` too, without touching the file system again, because its
//!   locks may be poisoned. The VMM keeps running.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::filesystem::{unshare_fs_struct, ShareFs};
use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

/// The epoll token of the stop eventfd; queue `i` uses token `i`.
const STOP_TOKEN: u64 = u64::MAX;

/// The largest request the server accepts (`MAX_BUFFER_SIZE` + one page of
/// headers in fuse-backend-rs; a 1 MiB WRITE is 1 MiB + 80 bytes).
pub(super) const MAX_REQUEST_SIZE: usize = (1 << 20) + 4096;

/// Chains served from one queue before the worker looks at its other queues
/// and the stop eventfd again; a guest that keeps the ring full cannot starve
/// them or keep the device from stopping.
pub(super) const BATCH_BUDGET: usize = 256;

/// Dropped chains logged in full before logging only every
/// [`DROP_LOG_EVERY`]th.
const DROP_LOG_FIRST: u64 = 16;
/// A power of two.
const DROP_LOG_EVERY: u64 = 4096;

pub(super) type FsServer = Server<Arc<ShareFs>>;

/// A running worker: signal `stop` and join `thread` to stop it.
#[derive(Debug)]
pub(super) struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops the worker and waits for it. `false` if the thread panicked outside
    /// request handling (its queues are then in an unknown state).
    pub(super) fn stop(self) -> bool {
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "virtio-fs: signal worker stop");
        }
        self.thread.join().is_ok()
    }
}

pub(super) struct Worker {
    tag: String,
    server: Arc<FsServer>,
    fs: Arc<ShareFs>,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    interrupt: Interrupt,
    stop: EventFd,
    /// Set after a panic in the server: answer everything with EIO. Shared with
    /// the device, so a reset cannot bring a poisoned file system back.
    poisoned: Arc<AtomicBool>,
    /// Chains dropped so far, for rate-limited logging.
    dropped: AtomicU64,
}

impl Worker {
    pub(super) fn new(
        tag: String,
        server: Arc<FsServer>,
        fs: Arc<ShareFs>,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
        poisoned: Arc<AtomicBool>,
    ) -> std::io::Result<Worker> {
        Ok(Worker {
            tag,
            server,
            fs,
            mem,
            queues,
            interrupt,
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
            poisoned,
            dropped: AtomicU64::new(0),
        })
    }

    /// Starts the thread. Returns once the thread has its own umask (see
    /// `filesystem::unshare_fs_struct`), or the reason it could not.
    pub(super) fn spawn(self) -> std::io::Result<WorkerHandle> {
        let stop = self.stop.try_clone()?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = format!("virtio-fs-{}", self.tag);
        let thread =
            crate::seccomp::spawn_worker(name, crate::seccomp::WorkerKind::Fs, move || {
                let started = unshare_fs_struct().and_then(|()| self.epoll());
                match started {
                    Ok(epoll) => {
                        // The receiver waits for this message; if it is gone the
                        // device is being dropped and the loop exits on stop.
                        let _ = ready_tx.send(Ok(()));
                        self.run(epoll);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(WorkerHandle { stop, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(std::io::Error::other(
                    "virtio-fs worker exited during start",
                ))
            }
        }
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (i, q) in self.queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                q.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        Ok(epoll)
    }

    fn run(mut self, epoll: Epoll) {
        // Buffers made available before activation finished.
        for i in 0..self.queues.len() {
            self.process_queue(i);
        }
        let mut events = vec![EpollEvent::default(); self.queues.len() + 1];
        'outer: loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(tag = %self.tag, error = %e, "virtio-fs: epoll wait; worker stops");
                    break;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == STOP_TOKEN {
                    break 'outer;
                }
                let Ok(i) = usize::try_from(token) else {
                    continue;
                };
                if let Some(q) = self.queues.get(i) {
                    // Level-triggered: clear the notification before draining, so
                    // a notify racing with the drain wakes us again.
                    let _ = q.notify.read();
                    self.process_queue(i);
                }
            }
        }
        // The guest session is over: close every handle and forget every inode
        // so the next activation starts a fresh FUSE session (a second INIT on
        // an initialized Vfs fails). Runs here, where the umask is private.
        if !self.poisoned.load(Ordering::SeqCst) {
            self.fs.destroy();
        }
    }

    /// Serves every queue once per round until `between(round)` says stop,
    /// then ends the session as `run` does after a stop (for the fuzzer).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn serve_rounds(mut self, mut between: impl FnMut(usize) -> bool) {
        let mut round = 0;
        loop {
            for i in 0..self.queues.len() {
                self.process_queue(i);
            }
            if !between(round) {
                break;
            }
            round += 1;
        }
        if !self.poisoned.load(Ordering::SeqCst) {
            self.fs.destroy();
        }
    }

    /// Serves up to [`BATCH_BUDGET`] available chains of queue `index`, then
    /// interrupts the guest once if any chain was used. With chains left over it
    /// signals the queue's own eventfd, so the epoll loop comes back to it.
    fn process_queue(&mut self, index: usize) {
        let mut used_any = false;
        let mut served = 0;
        loop {
            let Some(q) = self.queues.get_mut(index) else {
                return;
            };
            if served == BATCH_BUDGET {
                if let Err(e) = q.notify.write(1) {
                    tracing::error!(tag = %self.tag, queue = index, error = %e, "virtio-fs: re-arm queue");
                }
                break;
            }
            served += 1;
            let Some(chain) = q.queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.handle_chain(index, chain);
            let q = &mut self.queues[index];
            if let Err(e) = q.queue.add_used(&self.mem, head, len) {
                // A head index beyond the queue: the guest's own mistake.
                self.note_drop(index, "cannot return the chain", &e);
                continue;
            }
            used_any = true;
        }
        if used_any {
            if let Err(e) = self.interrupt.signal_used_queue() {
                tracing::error!(tag = %self.tag, error = %e, "virtio-fs: signal used queue");
            }
        }
    }

    /// Serves one chain; returns the number of bytes written into it.
    fn handle_chain(&self, queue: usize, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let mem = &self.mem;
        let mut reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                self.note_drop(queue, "readable descriptors outside guest memory", &e);
                return 0;
            }
        };
        let writer = match VirtioFsWriter::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => {
                self.note_drop(queue, "writable descriptors outside guest memory", &e);
                return 0;
            }
        };
        if reader.available_bytes() > MAX_REQUEST_SIZE {
            // Keep the first MAX_REQUEST_SIZE bytes; the rest is never read.
            if let Err(e) = reader.split_at(MAX_REQUEST_SIZE) {
                self.note_drop(queue, "cannot bound the request", &e);
                return 0;
            }
        }
        let header: Option<InHeader> = reader.clone().read_obj().ok();

        if self.poisoned.load(Ordering::SeqCst) {
            return error_reply(mem, chain, header, libc::EIO);
        }

        let server = &self.server;
        let result = catch_unwind(AssertUnwindSafe(|| {
            server.handle_message(reader, writer.into(), None, None)
        }));
        match result {
            Ok(Ok(written)) => u32::try_from(written).unwrap_or(u32::MAX),
            Ok(Err(e)) => {
                tracing::debug!(
                    tag = %self.tag,
                    queue,
                    opcode = header.map(|h| h.opcode),
                    error = %e,
                    "virtio-fs: request failed"
                );
                error_reply(mem, chain, header, errno_of(&e))
            }
            Err(_) => {
                tracing::error!(
                    tag = %self.tag,
                    queue,
                    opcode = header.map(|h| h.opcode),
                    "virtio-fs: FUSE server panicked; every later request fails with EIO"
                );
                self.poisoned.store(true, Ordering::SeqCst);
                error_reply(mem, chain, header, libc::EIO)
            }
        }
    }
}

impl Worker {
    /// Logs a chain returned unused: the first few in full, then one in
    /// [`DROP_LOG_EVERY`], so a guest cannot flood the VMM's log.
    fn note_drop(&self, queue: usize, what: &str, error: &dyn std::fmt::Display) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= DROP_LOG_FIRST || n & (DROP_LOG_EVERY - 1) == 0 {
            tracing::warn!(
                tag = %self.tag,
                queue,
                dropped_total = n,
                error = %error,
                "virtio-fs: {what}; request dropped"
            );
        }
    }
}

/// The errno a guest gets for a request the server gave up on.
fn errno_of(e: &fuse_backend_rs::Error) -> i32 {
    use fuse_backend_rs::Error as E;
    match e {
        E::DecodeMessage(_)
        | E::MissingParameter
        | E::InvalidCString(_)
        | E::InvalidHeaderLength
        | E::InvalidXattrSize(_)
        | E::InvalidMessage(_) => libc::EINVAL,
        E::FailedToRemapID(_) => libc::EPERM,
        E::EncodeMessage(_) | E::FailedToWrite(_) | E::FailedToSplitWriter(_) => libc::EIO,
    }
}

/// Requests the guest expects no reply to.
fn expects_reply(opcode: u32) -> bool {
    ![
        Opcode::Forget as u32,
        Opcode::BatchForget as u32,
        Opcode::Interrupt as u32,
    ]
    .contains(&opcode)
}

/// Writes a bare error reply at the start of the chain's writable part. Returns
/// its length, or 0 when there is no header to answer or no room for the reply.
fn error_reply(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    header: Option<InHeader>,
    errno: i32,
) -> u32 {
    let Some(header) = header else {
        return 0;
    };
    if !expects_reply(header.opcode) {
        return 0;
    }
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique: header.unique,
    };
    let Ok(mut w) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    match w.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_and_interrupt_get_no_reply() {
        assert!(!expects_reply(Opcode::Forget as u32));
        assert!(!expects_reply(Opcode::BatchForget as u32));
        assert!(!expects_reply(Opcode::Interrupt as u32));
        assert!(expects_reply(Opcode::Lookup as u32));
        assert!(expects_reply(0xdead));
    }

    #[test]
    fn decode_errors_map_to_einval() {
        let e = fuse_backend_rs::Error::InvalidHeaderLength;
        assert_eq!(errno_of(&e), libc::EINVAL);
        let e = fuse_backend_rs::Error::EncodeMessage(std::io::Error::other("x"));
        assert_eq!(errno_of(&e), libc::EIO);
    }
}
