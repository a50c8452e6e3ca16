//! The virtio device interface shared by every virtio device and the MMIO
//! transport.
//!
//! Each device lives in its own folder with the same shape:
//! `<dev>/{mod.rs (device), worker.rs (queue processing thread), ...}`.
//!
//! Life cycle, driven by the transport (`mmio.rs`) from the guest's register
//! writes:
//! 1. the transport reads `device_type`, `queue_max_sizes`, `avail_features` and
//!    the config space;
//! 2. once the driver sets `DRIVER_OK`, the transport calls [`VirtioDevice::activate`]
//!    with guest memory, the acknowledged features, the configured queues (each
//!    with the eventfd that KVM signals when the guest writes `QueueNotify`), and an
//!    [`Interrupt`];
//! 3. the device starts its worker (a thread per device, polling its queue eventfds
//!    and backend fds) and returns;
//! 4. on a driver reset (status 0) the transport calls [`VirtioDevice::reset`].

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue_util;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every modern (non-legacy) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bit: the device used a buffer in at least one queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// The guest memory type used by every device.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The interrupt line of one virtio-mmio device: the interrupt status register
/// shared with the transport, and the irqfd that KVM turns into a guest interrupt.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
    config_generation: Arc<AtomicU32>,
}

impl Interrupt {
    /// Wraps an irqfd (registered with KVM by the caller, or read by a test).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
            config_generation: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Tells the guest that buffers were used.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the guest that the configuration space changed. Also bumps the
    /// `ConfigGeneration` register, so a driver reading a multi-word field across
    /// the change retries.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    /// The `ConfigGeneration` register: how many config changes were signalled.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd, for tests that play the guest and wait for interrupts.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// One queue handed to a device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue as the driver configured it (size, ring addresses, ready).
    pub queue: Queue,
    /// Signalled (by KVM's ioeventfd, or by a test) when the guest notifies this
    /// queue.
    pub notify: EventFd,
}

/// Everything a device needs to run.
#[derive(Debug)]
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// The features the driver acknowledged (a subset of `avail_features`).
    pub acked_features: u64,
    /// One entry per queue in `queue_max_sizes` order.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Interrupt,
}

/// Why a device refused to activate. The transport then sets `DEVICE_NEEDS_RESET`
/// and the VMM keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("activate {device}: expected {expected} queues, got {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("activate {device}: queue {index} is not valid in guest memory")]
    InvalidQueue { device: &'static str, index: usize },
    #[error("activate {device}: {source}")]
    Io {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("activate {device}: {reason}")]
    Other {
        device: &'static str,
        reason: String,
    },
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// Short name for logs and errors, e.g. `"vsock"`.
    fn name(&self) -> &'static str;

    /// Virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Features offered to the driver, including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Reads the device configuration space. Out-of-range reads fill zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space. Devices with a read-only config
    /// ignore the write (and log it).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            device = self.name(),
            offset,
            len = data.len(),
            "guest wrote read-only config space; ignored"
        );
    }

    /// Starts the device after `DRIVER_OK`.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Stops the device after a driver reset. Returns `true` when the device
    /// stopped its worker and can be activated again, `false` when it cannot be
    /// reset (the transport then leaves it failed).
    fn reset(&mut self) -> bool {
        false
    }
}

/// Refuses an activation that does not bring exactly `expected` queues, or
/// brings one that is not valid in guest memory (naming its index).
pub fn check_queues(
    device: &'static str,
    queues: &[ActiveQueue],
    mem: &GuestMemory,
    expected: usize,
) -> Result<(), ActivateError> {
    if queues.len() != expected {
        return Err(ActivateError::QueueCount {
            device,
            expected,
            got: queues.len(),
        });
    }
    for (index, q) in queues.iter().enumerate() {
        if !virtio_queue::QueueT::is_valid(&q.queue, mem) {
            return Err(ActivateError::InvalidQueue { device, index });
        }
    }
    Ok(())
}

/// The `N` queues of an activation, checked by [`check_queues`].
pub fn valid_queues<const N: usize>(
    device: &'static str,
    queues: Vec<ActiveQueue>,
    mem: &GuestMemory,
) -> Result<[ActiveQueue; N], ActivateError> {
    check_queues(device, &queues, mem, N)?;
    <[_; N]>::try_from(queues).map_err(|q: Vec<_>| ActivateError::QueueCount {
        device,
        expected: N,
        got: q.len(),
    })
}

/// Reads `data.len()` bytes at `offset` from a config space held as bytes; the
/// part outside it reads as zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&config[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_read_is_bounded_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0, 0, 0, 0]);
        let mut one = [0u8; 1];
        read_config_bytes(&cfg, 0, &mut one);
        assert_eq!(one, [1]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn config_change_bumps_generation() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(irq.config_generation(), 0);
        irq.signal_used_queue().unwrap();
        assert_eq!(irq.config_generation(), 0);
        irq.signal_config_change().unwrap();
        // Clones share the counter.
        assert_eq!(irq.clone().config_generation(), 1);
    }
}
