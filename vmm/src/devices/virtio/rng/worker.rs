//! The rng worker: a thread that waits on the request queue's notify eventfd
//! and the stop eventfd, and answers each request chain with random bytes.
//! It owns the queue while the device is active; it must not touch guest
//! memory outside the chains' checked buffers.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{fill_random, RngStats, NAME};
use crate::devices::virtio::queue_util::{DescChain, DeviceQueue, EventLoop, GuestErrorLog};
use crate::devices::virtio::{GuestMemory, Interrupt};

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// State of the running rng device.
pub(super) struct RngWorker {
    mem: GuestMemory,
    queue: DeviceQueue,
    interrupt: Interrupt,
    limit: u32,
    stats: Arc<RngStats>,
    stop: EventFd,
    log: GuestErrorLog,
    buf: Vec<u8>,
}

impl RngWorker {
    pub(super) fn new(
        mem: GuestMemory,
        queue: DeviceQueue,
        interrupt: Interrupt,
        limit: u32,
        stats: Arc<RngStats>,
        stop: EventFd,
    ) -> Self {
        RngWorker {
            mem,
            queue,
            interrupt,
            limit,
            stats,
            stop,
            log: GuestErrorLog::new(NAME),
            buf: Vec::new(),
        }
    }

    /// Answers the available chains, at most one queue's worth per call (then
    /// the worker yields to the event loop so a stop is seen promptly).
    fn process_queue(&mut self) {
        let budget = self.queue.size().max(1);
        for _ in 0..budget {
            let Some(chain) = self.queue.pop(&self.mem, &mut self.log) else {
                self.queue.signal_used(&self.mem, &self.interrupt);
                return;
            };
            let (head, written) = match DescChain::parse(chain, self.queue.size(), &self.mem) {
                Ok(chain) => (chain.head, self.serve(&chain)),
                Err(e) => {
                    self.log.warn(format_args!("{e}"));
                    RngStats::add(&self.stats.bad_requests, 1);
                    (e.head(), 0)
                }
            };
            self.queue.add_used(&self.mem, head, written, &mut self.log);
        }
        self.queue.signal_used(&self.mem, &self.interrupt);
        self.queue.requeue();
    }

    /// Fills one chain; returns the bytes written (0 for a refused chain).
    fn serve(&mut self, chain: &DescChain) -> u32 {
        if !chain.readable.is_empty() {
            self.log.warn(format_args!(
                "request chain {} has {} device-readable bytes; rng buffers must be write-only",
                chain.head,
                chain.readable.len()
            ));
            RngStats::add(&self.stats.bad_requests, 1);
            return 0;
        }
        if chain.writable.is_empty() {
            self.log.warn(format_args!(
                "request chain {} has no writable bytes",
                chain.head
            ));
            RngStats::add(&self.stats.bad_requests, 1);
            return 0;
        }
        let n = u32::try_from(chain.writable.len()).map_or(self.limit, |len| len.min(self.limit));
        self.buf.resize(n as usize, 0);
        if let Err(e) = fill_random(&mut self.buf) {
            tracing::error!(device = NAME, error = %e, "getrandom");
            return 0;
        }
        if let Err(e) = chain.writable.write_all(&self.mem, &self.buf) {
            self.log
                .warn(format_args!("request chain {}: {e}", chain.head));
            RngStats::add(&self.stats.bad_requests, 1);
            return 0;
        }
        RngStats::add(&self.stats.requests, 1);
        RngStats::add(&self.stats.bytes, u64::from(n));
        n
    }
}

/// Runs until the stop eventfd fires (or the event loop itself fails).
pub(super) fn run(mut w: RngWorker) {
    let mut events = match EventLoop::new().and_then(|el| {
        el.add(w.queue.notify.as_raw_fd(), TOKEN_QUEUE)?;
        el.add(w.stop.as_raw_fd(), TOKEN_STOP)?;
        Ok(el)
    }) {
        Ok(el) => el,
        Err(e) => {
            tracing::error!(device = NAME, error = %e, "set up worker event loop; device stopped");
            return;
        }
    };
    // Chains made available before activation are served without a kick.
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
