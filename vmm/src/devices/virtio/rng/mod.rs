//! virtio-rng (virtio 1.2 §5.4): one request queue whose write-only buffers the
//! device fills from the host's `getrandom(2)`.
//!
//! It owns the rng device's features, its (empty) configuration space and its
//! worker ([`worker`]). It must not touch the transport, other devices or any
//! host state beyond reading the kernel's random pool.

mod worker;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::queue_util::{DeviceQueue, WorkerSlot};
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Default for [`RngConfig::max_bytes_per_request`].
pub const DEFAULT_MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Largest accepted [`RngConfig::max_bytes_per_request`]; it is also the size
/// of the worker's host buffer.
pub const MAX_BYTES_PER_REQUEST_LIMIT: u32 = 1024 * 1024;

const NAME: &str = "rng";

/// How an rng device is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngConfig {
    /// At most this many bytes are served per request chain, however large the
    /// chain's buffers are: one chain cannot make the worker read an unbounded
    /// amount of entropy. 1 ..= [`MAX_BYTES_PER_REQUEST_LIMIT`].
    pub max_bytes_per_request: u32,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            max_bytes_per_request: DEFAULT_MAX_BYTES_PER_REQUEST,
        }
    }
}

/// Why an rng device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error(
        "create rng device: max bytes per request {0} is outside 1..={MAX_BYTES_PER_REQUEST_LIMIT}"
    )]
    InvalidLimit(u32),
}

/// Counters of an rng device, shared with its worker.
#[derive(Debug, Default)]
pub struct RngStats {
    /// Request chains answered with random bytes.
    pub requests: AtomicU64,
    /// Random bytes written to the guest.
    pub bytes: AtomicU64,
    /// Chains refused (malformed, wrong direction, outside guest memory) and
    /// returned with 0 bytes.
    pub bad_requests: AtomicU64,
}

impl RngStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    config: RngConfig,
    stats: Arc<RngStats>,
    worker: WorkerSlot,
}

impl Rng {
    /// Creates the device; nothing runs until the driver activates it.
    pub fn new(config: RngConfig) -> Result<Rng, RngError> {
        if config.max_bytes_per_request == 0
            || config.max_bytes_per_request > MAX_BYTES_PER_REQUEST_LIMIT
        {
            return Err(RngError::InvalidLimit(config.max_bytes_per_request));
        }
        Ok(Rng {
            config,
            stats: Arc::new(RngStats::default()),
            worker: WorkerSlot::default(),
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<RngStats> {
        Arc::clone(&self.stats)
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        super::read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.worker.ensure_idle(NAME)?;
        let ActivateContext {
            mem,
            acked_features: _,
            queues,
            interrupt,
        } = ctx;
        let [q] = super::valid_queues(NAME, queues, &mem)?;
        let queue = DeviceQueue::new(q.queue, q.notify);
        let limit = self.config.max_bytes_per_request;
        let stats = Arc::clone(&self.stats);
        self.worker
            .start(NAME, crate::seccomp::WorkerKind::Rng, move |stop| {
                worker::run(worker::RngWorker::new(
                    mem, queue, interrupt, limit, stats, stop,
                ))
            })
    }

    fn reset(&mut self) -> bool {
        self.worker.stop()
    }
}

/// Fills `buf` from `getrandom(2)` (the kernel's urandom pool; blocks only
/// before the pool is first initialised at boot).
pub(crate) fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, writable byte slice; getrandom writes at
        // most `rest.len()` bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // n >= 0 here, and at most rest.len().
        done += n.unsigned_abs();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
