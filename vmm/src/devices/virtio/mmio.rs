//! The virtio-mmio transport, virtio 1.x (register layout version 2). It owns the
//! register file of one device slot: feature negotiation, queue configuration,
//! the device status state machine, interrupt status and the config-space window,
//! and it hands the configured queues to the device at `DRIVER_OK`. It does not
//! process queues (the device does) and does not talk to KVM (the builder
//! registers the irqfd and the per-queue ioeventfds it exposes).
//!
//! Every value the guest writes is checked. A bad access (wrong size or
//! alignment, unknown register, queue index out of range, size not a power of two
//! or above the maximum, ring outside guest memory, configuration after
//! `DRIVER_OK`, illegal status transition) is logged — rate-limited, since the
//! guest controls the rate — and ignored. Nothing here panics on guest input.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_PACKED,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory as _};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use crate::devices::GuestLogLimit;

/// "virt", little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Register layout version of virtio 1.x (modern) devices.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID the guest reads: "MOAT", little-endian.
pub const MMIO_VENDOR_ID: u32 = 0x5441_4f4d;
/// Offset of the `QueueNotify` register, where the builder registers the
/// per-queue ioeventfds (datamatch = queue index, 4 bytes).
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Size of a transport's MMIO window: registers plus config space.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Features the transport cannot carry whatever the device offers: packed rings
/// (virtio-queue is split-only), notification data (would change what the guest
/// writes to `QueueNotify`, breaking the ioeventfd datamatch) and platform
/// access (no IOMMU).
const TRANSPORT_UNSUPPORTED_FEATURES: u64 = (1 << VIRTIO_F_RING_PACKED)
    | (1 << VIRTIO_F_NOTIFICATION_DATA)
    | (1 << VIRTIO_F_ACCESS_PLATFORM);

/// Driver status bits in the order the driver must set them.
const STATUS_SEQUENCE: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];

/// How many guest-caused warnings one transport logs before going quiet.
const WARN_BUDGET: u32 = 64;

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MmioTransportError {
    #[error(
        "create virtio-mmio transport for {device}: queue {index} has invalid maximum size {size}"
    )]
    QueueSize {
        device: &'static str,
        index: usize,
        size: u16,
    },
    #[error("create virtio-mmio transport for {device}: {count} queues, at most {max} supported")]
    QueueCount {
        device: &'static str,
        count: usize,
        max: usize,
    },
    #[error("create virtio-mmio transport for {device}: queue notify eventfd: {source}")]
    EventFd {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Largest number of queues per device (an arbitrary bound on what a device
/// implementation may ask for, far above any real device).
pub const MAX_QUEUES: usize = 1024;

/// One virtio-mmio device slot.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// Features offered: the device's minus what the transport cannot carry.
    offered_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    status: u32,
    /// The device is running (activated and not reset since).
    activated: bool,
    /// The device could not be reset: it stays running on its old queues, so it
    /// must never be activated again.
    broken: bool,
    warn: GuestLogLimit,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &format_args!("{:#x}", self.status))
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("activated", &self.activated)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

macro_rules! guest_warn {
    ($self:ident, $($arg:tt)+) => {
        if $self.warn.allow() {
            tracing::warn!(device = $self.device.name(), $($arg)+);
        }
    };
}

impl MmioTransport {
    /// Wraps `device`. `interrupt` carries the irqfd the builder registered for
    /// this slot's IRQ.
    pub fn new(
        mem: GuestMemory,
        device: Box<dyn VirtioDevice>,
        interrupt: Interrupt,
    ) -> Result<Self, MmioTransportError> {
        let name = device.name();
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() > MAX_QUEUES {
            return Err(MmioTransportError::QueueCount {
                device: name,
                count: max_sizes.len(),
                max: MAX_QUEUES,
            });
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_evts = Vec::with_capacity(max_sizes.len());
        for (index, &size) in max_sizes.iter().enumerate() {
            let queue = Queue::new(size).map_err(|_| MmioTransportError::QueueSize {
                device: name,
                index,
                size,
            })?;
            queues.push(queue);
            let evt =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MmioTransportError::EventFd {
                    device: name,
                    source,
                })?;
            queue_evts.push(evt);
        }
        let offered_features = device.avail_features() & !TRANSPORT_UNSUPPORTED_FEATURES;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            offered_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            status: 0,
            activated: false,
            broken: false,
            warn: GuestLogLimit::new(WARN_BUDGET),
        })
    }

    /// The eventfd of each queue, in queue order: the builder registers each as
    /// an ioeventfd on `base + NOTIFY_REG_OFFSET` with the queue index as
    /// datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's short name.
    pub fn device_name(&self) -> &'static str {
        self.device.name()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Whether the driver may configure queues now: features negotiated, device
    /// not yet live, nothing failed.
    fn queue_config_allowed(&self) -> bool {
        self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            && self.status
                & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET)
                == 0
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.selected_queue().map_or(0, |q| q.desc_table() as u32)
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.selected_queue().map_or(0, |q| q.avail_ring() as u32)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all-ones says "absent".
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                guest_warn!(
                    self,
                    offset,
                    "read of a write-only or unknown register; reads 0"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_SHM_SEL => self.shm_sel = value,
            _ => {
                guest_warn!(
                    self,
                    offset,
                    value,
                    "write to a read-only or unknown register; ignored"
                );
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.has_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
            && self.status
                & (VIRTIO_CONFIG_S_FEATURES_OK
                    | VIRTIO_CONFIG_S_DRIVER_OK
                    | VIRTIO_CONFIG_S_FAILED
                    | VIRTIO_CONFIG_S_NEEDS_RESET)
                == 0;
        if !negotiating {
            guest_warn!(
                self,
                status = self.status,
                "driver features written outside negotiation; ignored"
            );
            return;
        }
        let (shift, mask) = match self.driver_features_sel {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000u64),
            sel => {
                if value != 0 {
                    guest_warn!(
                        self,
                        sel,
                        value,
                        "driver features for a page past 64 bits; ignored"
                    );
                }
                return;
            }
        };
        let wanted = u64::from(value) << shift;
        let unoffered = wanted & !self.offered_features;
        if unoffered != 0 {
            guest_warn!(
                self,
                unoffered = format_args!("{unoffered:#x}"),
                "driver acked features the device does not offer; dropped"
            );
        }
        self.acked_features =
            (self.acked_features & !mask) | (wanted & self.offered_features & mask);
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        if !self.queue_config_allowed() {
            guest_warn!(
                self,
                offset,
                status = self.status,
                "queue configured outside FEATURES_OK..DRIVER_OK; ignored"
            );
            return;
        }
        let index = self.queue_sel;
        let Some(queue) = self.queues.get_mut(index as usize) else {
            guest_warn!(
                self,
                queue = index,
                queues = self.queues.len(),
                "queue index out of range; ignored"
            );
            return;
        };
        if offset != VIRTIO_MMIO_QUEUE_READY && queue.ready() {
            guest_warn!(
                self,
                queue = index,
                offset,
                "queue reconfigured while ready; ignored"
            );
            return;
        }
        let result = match offset {
            VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => queue.try_set_size(size).map_err(|e| e.to_string()),
                Err(_) => Err("size above 65535".to_string()),
            },
            VIRTIO_MMIO_QUEUE_READY => match value {
                0 => {
                    queue.set_ready(false);
                    Ok(())
                }
                1 => {
                    queue.set_ready(true);
                    Ok(())
                }
                _ => Err("ready is neither 0 nor 1".to_string()),
            },
            VIRTIO_MMIO_QUEUE_DESC_LOW => set_low(queue.desc_table(), value, |a| {
                queue.try_set_desc_table_address(a)
            }),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => set_high(queue.desc_table(), value, |a| {
                queue.try_set_desc_table_address(a)
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_low(queue.avail_ring(), value, |a| {
                queue.try_set_avail_ring_address(a)
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_high(queue.avail_ring(), value, |a| {
                queue.try_set_avail_ring_address(a)
            }),
            VIRTIO_MMIO_QUEUE_USED_LOW => set_low(queue.used_ring(), value, |a| {
                queue.try_set_used_ring_address(a)
            }),
            VIRTIO_MMIO_QUEUE_USED_HIGH => set_high(queue.used_ring(), value, |a| {
                queue.try_set_used_ring_address(a)
            }),
            _ => Ok(()),
        };
        if let Err(reason) = result {
            guest_warn!(
                self,
                queue = index,
                offset,
                value,
                reason,
                "bad queue configuration; ignored"
            );
        }
    }

    /// A `QueueNotify` write that reached us (KVM's ioeventfd did not match it,
    /// or none is registered, as in tests).
    fn notify(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    guest_warn!(self, queue = index, error = %e, "signal queue notify eventfd");
                }
            }
            None => {
                guest_warn!(
                    self,
                    queue = index,
                    "notify for a queue that does not exist; ignored"
                );
            }
        }
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if new & old != old {
            guest_warn!(
                self,
                old,
                new,
                "status write clears bits without a reset; ignored"
            );
            return;
        }
        let added = new & !old;
        if added == 0 {
            return;
        }
        if added & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            guest_warn!(self, new, "driver set DEVICE_NEEDS_RESET; ignored");
            return;
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device; it may do so at any time.
            tracing::info!(
                device = self.device.name(),
                "driver marked the device FAILED"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if old & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) != 0 {
            guest_warn!(
                self,
                old,
                new,
                "status change on a failed device; only a reset is accepted"
            );
            return;
        }
        // `old` is a prefix of STATUS_SEQUENCE; the added bits must extend it in
        // order, without gaps.
        let done = STATUS_SEQUENCE
            .iter()
            .take_while(|b| old & **b != 0)
            .count();
        let mut expected = 0;
        let mut steps = 0;
        for bit in &STATUS_SEQUENCE[done..] {
            if added & bit == 0 {
                break;
            }
            expected |= bit;
            steps += 1;
        }
        if steps == 0 || expected != added {
            guest_warn!(self, old, new, "illegal status transition; ignored");
            return;
        }
        for bit in &STATUS_SEQUENCE[done..done + steps] {
            match *bit {
                VIRTIO_CONFIG_S_FEATURES_OK => {
                    if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                        guest_warn!(self, acked = self.acked_features, "FEATURES_OK without VIRTIO_F_VERSION_1 (legacy drivers are not supported); refused");
                        return;
                    }
                    self.status |= bit;
                }
                VIRTIO_CONFIG_S_DRIVER_OK => {
                    self.activate();
                    return;
                }
                _ => self.status |= bit,
            }
        }
    }

    /// Every ready queue must lie in guest memory.
    fn check_queues(&self) -> Result<(), String> {
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let size = u64::from(q.size());
            let rings = [
                ("descriptor table", q.desc_table(), 16 * size),
                ("available ring", q.avail_ring(), 6 + 2 * size),
                ("used ring", q.used_ring(), 6 + 8 * size),
            ];
            for (what, addr, len) in rings {
                // `len` is at most 6 + 8 * 32768.
                if !self.mem.check_range(GuestAddress(addr), len as usize) {
                    return Err(format!(
                        "queue {index}: {what} at {addr:#x}+{len:#x} is outside guest memory"
                    ));
                }
            }
        }
        Ok(())
    }

    fn activate(&mut self) {
        let name = self.device.name();
        if self.broken {
            self.fail_activation("the device could not be reset after its last use".into());
            return;
        }
        if let Err(reason) = self.check_queues() {
            self.fail_activation(reason);
            return;
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (queue, evt) in self.queues.iter().zip(&self.queue_evts) {
            let copied = Queue::try_from(queue.state()).map_err(|e| e.to_string());
            let notify = evt.try_clone().map_err(|e| e.to_string());
            match (copied, notify) {
                (Ok(mut queue), Ok(notify)) => {
                    queue.set_event_idx(event_idx);
                    queues.push(ActiveQueue { queue, notify });
                }
                (Err(reason), _) | (_, Err(reason)) => {
                    self.fail_activation(format!("prepare queues: {reason}"));
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            acked_features: self.acked_features,
            queues,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
                self.activated = true;
                tracing::debug!(
                    device = name,
                    features = self.acked_features,
                    "device activated"
                );
            }
            Err(e) => self.fail_activation(e.to_string()),
        }
    }

    fn fail_activation(&mut self, reason: String) {
        tracing::error!(device = self.device.name(), %reason, "activation failed; device needs reset");
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::warn!(device = self.device.name(), error = %e, "signal config change");
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            tracing::error!(
                device = self.device.name(),
                "device cannot be reset; it will refuse to start again"
            );
            self.broken = true;
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.ack(u32::MAX);
        self.status = 0;
    }
}

/// Replaces the low 32 bits of `current` and applies the result with `set`.
fn set_low<E: std::fmt::Display>(
    current: u64,
    low: u32,
    set: impl FnOnce(GuestAddress) -> Result<(), E>,
) -> Result<(), String> {
    set(GuestAddress((current & !0xffff_ffff) | u64::from(low))).map_err(|e| e.to_string())
}

/// Replaces the high 32 bits of `current` and applies the result with `set`.
fn set_high<E: std::fmt::Display>(
    current: u64,
    high: u32,
    set: impl FnOnce(GuestAddress) -> Result<(), E>,
) -> Result<(), String> {
    set(GuestAddress(
        (current & 0xffff_ffff) | (u64::from(high) << 32),
    ))
    .map_err(|e| e.to_string())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            data.fill(0);
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                guest_warn!(
                    self,
                    offset,
                    len = data.len(),
                    "config read of odd size; reads 0"
                );
                return;
            }
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            guest_warn!(
                self,
                offset,
                len = data.len(),
                "register read not 4 bytes aligned; reads 0"
            );
            data.fill(0);
            return;
        }
        // offset < 0x100 here.
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                guest_warn!(
                    self,
                    offset,
                    len = data.len(),
                    "config write of odd size; ignored"
                );
                return;
            }
            if !self.has_status(VIRTIO_CONFIG_S_DRIVER)
                || self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) != 0
            {
                guest_warn!(
                    self,
                    offset,
                    status = self.status,
                    "config write before DRIVER or on a failed device; ignored"
                );
                return;
            }
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self,
                offset,
                len = data.len(),
                "register write not 4 bytes; ignored"
            );
            return;
        };
        if offset & 3 != 0 {
            guest_warn!(self, offset, "register write not aligned; ignored");
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read_config_bytes, ActivateError};
    use super::*;
    use std::sync::{Arc, Mutex};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A queue as the device got it: ready, size, desc, avail, used, event idx.
    type QueueSeen = (bool, u16, u64, u64, u64, bool);

    /// What the fake device saw.
    #[derive(Debug, Default)]
    struct Seen {
        activations: Vec<(u64, Vec<QueueSeen>)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
        notify_fds: Vec<EventFd>,
        interrupt: Option<Interrupt>,
    }

    /// A fake device: two queues (16 and 8), config space of 8 bytes.
    #[derive(Debug)]
    struct FakeDevice {
        seen: Arc<Mutex<Seen>>,
        features: u64,
        max_sizes: Vec<u16>,
        config: [u8; 8],
        fail_activate: bool,
        can_reset: bool,
    }

    impl FakeDevice {
        fn new(seen: Arc<Mutex<Seen>>) -> Self {
            FakeDevice {
                seen,
                features: VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX) | 0x5,
                max_sizes: vec![16, 8],
                config: [1, 2, 3, 4, 5, 6, 7, 8],
                fail_activate: false,
                can_reset: true,
            }
        }
    }

    impl VirtioDevice for FakeDevice {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Other {
                    device: "fake",
                    reason: "told to fail".into(),
                });
            }
            let mut seen = self.seen.lock().unwrap();
            let queues = ctx
                .queues
                .iter()
                .map(|q| {
                    (
                        q.queue.ready(),
                        q.queue.size(),
                        q.queue.desc_table(),
                        q.queue.avail_ring(),
                        q.queue.used_ring(),
                        q.queue.event_idx_enabled(),
                    )
                })
                .collect();
            seen.activations.push((ctx.acked_features, queues));
            seen.notify_fds = ctx.queues.into_iter().map(|q| q.notify).collect();
            seen.interrupt = Some(ctx.interrupt);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.seen.lock().unwrap().resets += 1;
            self.can_reset
        }
    }

    const MEM_SIZE: usize = 0x10_0000;

    struct Driver {
        t: MmioTransport,
        seen: Arc<Mutex<Seen>>,
        mem: GuestMemory,
    }

    impl Driver {
        fn with(configure: impl FnOnce(&mut FakeDevice)) -> Self {
            let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            let seen = Arc::new(Mutex::new(Seen::default()));
            let mut dev = FakeDevice::new(seen.clone());
            configure(&mut dev);
            let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            let t = MmioTransport::new(mem.clone(), Box::new(dev), irq).unwrap();
            Driver { t, seen, mem }
        }

        fn new() -> Self {
            Self::with(|_| {})
        }

        fn r(&mut self, offset: u32) -> u32 {
            let mut data = [0xaau8; 4];
            self.t.read(u64::from(offset), &mut data);
            u32::from_le_bytes(data)
        }

        fn w(&mut self, offset: u32, value: u32) {
            self.t.write(u64::from(offset), &value.to_le_bytes());
        }

        fn status(&mut self) -> u32 {
            self.r(VIRTIO_MMIO_STATUS)
        }

        fn negotiate(&mut self, features: u64) {
            self.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
            self.w(
                VIRTIO_MMIO_STATUS,
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
            );
            self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
            self.w(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
            self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            self.w(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
            self.w(
                VIRTIO_MMIO_STATUS,
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
            );
        }

        fn setup_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
            self.w(VIRTIO_MMIO_QUEUE_SEL, index);
            self.w(VIRTIO_MMIO_QUEUE_NUM, size);
            self.w(VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
            self.w(VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
            self.w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
            self.w(VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
            self.w(VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
            self.w(VIRTIO_MMIO_QUEUE_READY, 1);
        }

        fn setup_queues(&mut self) {
            self.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
            self.setup_queue(1, 8, 0x4000, 0x5000, 0x6000);
        }

        fn driver_ok(&mut self) {
            let s = self.status();
            self.w(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        }

        fn full_init(&mut self) {
            self.negotiate(VIRTIO_F_VERSION_1 | 1);
            self.setup_queues();
            self.driver_ok();
        }

        fn activations(&self) -> usize {
            self.seen.lock().unwrap().activations.len()
        }
    }

    const READY: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let mut d = Driver::new();
        assert_eq!(d.r(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(d.r(VIRTIO_MMIO_VERSION), 2);
        assert_eq!(d.r(VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(d.r(VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(d.status(), 0);
        assert_eq!(d.r(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(d.r(VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn device_features_by_page() {
        let mut d = Driver::with(|dev| dev.features |= 1 << VIRTIO_F_RING_PACKED);
        d.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            d.r(VIRTIO_MMIO_DEVICE_FEATURES),
            (1 << VIRTIO_RING_F_EVENT_IDX) | 0x5
        );
        d.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        // VERSION_1 (bit 32) offered; RING_PACKED (bit 34) masked by the transport.
        assert_eq!(d.r(VIRTIO_MMIO_DEVICE_FEATURES), 1);
        d.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(d.r(VIRTIO_MMIO_DEVICE_FEATURES), 0);
        d.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, u32::MAX);
        assert_eq!(d.r(VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn full_initialisation_activates_with_the_configured_queues() {
        let mut d = Driver::new();
        d.negotiate(VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX) | 1);
        d.setup_queues();
        // Queue registers read back.
        d.w(VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_DESC_LOW), 0x4000);
        d.driver_ok();
        assert_eq!(d.status(), READY);
        assert!(d.t.is_activated());
        let seen = d.seen.lock().unwrap();
        assert_eq!(seen.activations.len(), 1);
        let (features, queues) = &seen.activations[0];
        assert_eq!(
            *features,
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX) | 1
        );
        assert_eq!(
            queues,
            &vec![
                (true, 16, 0x1000, 0x2000, 0x3000, true),
                (true, 8, 0x4000, 0x5000, 0x6000, true)
            ]
        );
    }

    #[test]
    fn unoffered_features_are_dropped() {
        let mut d = Driver::new();
        d.negotiate(VIRTIO_F_VERSION_1 | 0xffff_fff0 | (1 << 40));
        assert_eq!(
            d.t.acked_features(),
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)
        );
        // A feature page past 64 bits is ignored.
        d.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 7);
        d.w(VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(
            d.t.acked_features(),
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)
        );
    }

    #[test]
    fn features_ok_requires_version_1() {
        let mut d = Driver::new();
        d.negotiate(1);
        assert_eq!(
            d.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
            "FEATURES_OK must not stick"
        );
        // Queue setup is refused without FEATURES_OK; DRIVER_OK is illegal.
        d.setup_queues();
        d.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_READY), 0);
        d.driver_ok();
        assert_eq!(d.activations(), 0);
    }

    #[test]
    fn feature_writes_outside_negotiation_are_ignored() {
        let mut d = Driver::new();
        d.w(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        assert_eq!(d.t.acked_features(), 0, "before DRIVER");
        d.full_init();
        d.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        d.w(VIRTIO_MMIO_DRIVER_FEATURES, 4);
        assert_eq!(
            d.t.acked_features(),
            VIRTIO_F_VERSION_1 | 1,
            "after DRIVER_OK"
        );
    }

    #[test]
    fn illegal_status_transitions_are_refused() {
        let mut d = Driver::new();
        // Skipping steps.
        d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(d.status(), 0);
        d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(d.status(), 0);
        d.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(d.status(), 0);
        // Setting NEEDS_RESET from the driver side.
        d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(d.status(), 0);
        // Several legal steps at once are fine.
        d.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        assert_eq!(
            d.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // Clearing a bit without reset.
        d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(
            d.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // Writing the same value again is a no-op.
        d.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        assert_eq!(
            d.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // FAILED is accepted at any time, and then only a reset is.
        d.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED,
        );
        assert_ne!(d.status() & VIRTIO_CONFIG_S_FAILED, 0);
        d.w(VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_F_VERSION_1 as u32);
        d.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FAILED
                | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(d.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        d.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.status(), 0);
        d.full_init();
        assert_eq!(d.status(), READY);
    }

    #[test]
    fn bad_queue_values_are_ignored() {
        let mut d = Driver::new();
        d.negotiate(VIRTIO_F_VERSION_1);
        d.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        for bad in [0u32, 3, 12, 32, 65536, u32::MAX] {
            d.w(VIRTIO_MMIO_QUEUE_NUM, bad);
            assert_eq!(d.t.queues[0].size(), 16, "size {bad}");
        }
        d.w(VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(d.t.queues[0].size(), 4);
        // Misaligned rings (16, 2 and 4 bytes required).
        d.w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
        d.w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2001);
        d.w(VIRTIO_MMIO_QUEUE_USED_LOW, 0x3002);
        assert_eq!(
            (
                d.t.queues[0].desc_table(),
                d.t.queues[0].avail_ring(),
                d.t.queues[0].used_ring()
            ),
            (0, 0, 0)
        );
        // Ready must be 0 or 1.
        d.w(VIRTIO_MMIO_QUEUE_READY, 2);
        assert!(!d.t.queues[0].ready());
        // Out-of-range queue index: reads 0, writes ignored, nothing panics.
        for index in [2u32, 1000, u32::MAX] {
            d.w(VIRTIO_MMIO_QUEUE_SEL, index);
            assert_eq!(d.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
            assert_eq!(d.r(VIRTIO_MMIO_QUEUE_READY), 0);
            assert_eq!(d.r(VIRTIO_MMIO_QUEUE_DESC_HIGH), 0);
            d.w(VIRTIO_MMIO_QUEUE_NUM, 4);
            d.w(VIRTIO_MMIO_QUEUE_READY, 1);
            d.w(VIRTIO_MMIO_QUEUE_NOTIFY, index);
        }
    }

    #[test]
    fn queue_changes_after_ready_or_driver_ok_are_ignored() {
        let mut d = Driver::new();
        d.negotiate(VIRTIO_F_VERSION_1);
        d.setup_queues();
        d.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        d.w(VIRTIO_MMIO_QUEUE_NUM, 4);
        d.w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        assert_eq!(
            (d.t.queues[0].size(), d.t.queues[0].desc_table()),
            (16, 0x1000)
        );
        d.driver_ok();
        d.w(VIRTIO_MMIO_QUEUE_READY, 0);
        assert!(d.t.queues[0].ready());
        d.w(VIRTIO_MMIO_QUEUE_SEL, 1);
        d.w(VIRTIO_MMIO_QUEUE_USED_HIGH, 1);
        assert_eq!(d.t.queues[1].used_ring(), 0x6000);
    }

    #[test]
    fn rings_outside_guest_memory_fail_activation() {
        let cases = [
            (MEM_SIZE as u64, 0x2000, 0x3000), // desc starts past the end
            (0x1000, MEM_SIZE as u64 - 0x10, 0x3000), // avail runs past the end
            (0x1000, 0x2000, MEM_SIZE as u64 - 0x40), // used runs past the end
            (0x1_0000_0000, 0x2000, 0x3000),   // above 4 GiB, no memory there
            (0xffff_ffff_ffff_fff0, 0x2000, 0x3000), // would overflow
        ];
        for (desc, avail, used) in cases {
            let mut d = Driver::new();
            d.negotiate(VIRTIO_F_VERSION_1);
            d.setup_queue(0, 16, desc, avail, used);
            d.driver_ok();
            assert_eq!(d.activations(), 0, "{desc:#x} {avail:#x} {used:#x}");
            let status = d.status();
            assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
            assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
            // The driver is told through a config-change interrupt.
            assert_ne!(
                d.r(VIRTIO_MMIO_INTERRUPT_STATUS) & super::super::VIRTIO_MMIO_INT_CONFIG,
                0
            );
            // Only a reset gets it out.
            d.driver_ok();
            assert_eq!(d.activations(), 0);
            d.w(VIRTIO_MMIO_STATUS, 0);
            d.full_init();
            assert_eq!(d.activations(), 1);
        }
    }

    #[test]
    fn queues_not_ready_are_passed_but_not_checked() {
        let mut d = Driver::new();
        d.negotiate(VIRTIO_F_VERSION_1);
        d.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        // Queue 1 left unconfigured, with its default (invalid) addresses.
        d.driver_ok();
        let seen = d.seen.lock().unwrap();
        let queues = &seen.activations[0].1;
        assert_eq!(queues.len(), 2);
        assert!(queues[0].0 && !queues[1].0);
    }

    #[test]
    fn device_activation_failure_sets_needs_reset() {
        let mut d = Driver::with(|dev| dev.fail_activate = true);
        d.full_init();
        assert_eq!(d.activations(), 0);
        assert!(!d.t.is_activated());
        assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        // Config writes are refused on a failed device.
        d.t.write(0x100, &[1]);
        assert!(d.seen.lock().unwrap().config_writes.is_empty());
    }

    #[test]
    fn reset_and_reactivate() {
        let mut d = Driver::new();
        d.full_init();
        d.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.status(), 0);
        assert_eq!(d.seen.lock().unwrap().resets, 1);
        assert!(!d.t.is_activated());
        assert_eq!(d.t.acked_features(), 0);
        d.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_READY), 0);
        d.full_init();
        assert_eq!(d.activations(), 2);
        assert_eq!(d.status(), READY);
        // A reset before activation does not call the device.
        let mut fresh = Driver::new();
        fresh.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(fresh.seen.lock().unwrap().resets, 0);
    }

    #[test]
    fn a_device_that_cannot_reset_is_never_reactivated() {
        let mut d = Driver::with(|dev| dev.can_reset = false);
        d.full_init();
        d.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.status(), 0, "reset completes for the driver");
        d.full_init();
        assert_eq!(d.activations(), 1);
        assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_is_delegated() {
        let mut d = Driver::new();
        let mut b = [0u8; 1];
        d.t.read(0x102, &mut b);
        assert_eq!(b, [3]);
        let mut w = [0u8; 2];
        d.t.read(0x106, &mut w);
        assert_eq!(w, [7, 8]);
        let mut q = [0u8; 8];
        d.t.read(0x100, &mut q);
        assert_eq!(q, [1, 2, 3, 4, 5, 6, 7, 8]);
        // Past the device's config: zeros.
        let mut far = [0xffu8; 4];
        d.t.read(0xffc, &mut far);
        assert_eq!(far, [0; 4]);
        // Odd size: zeros, device not asked.
        let mut odd = [0xffu8; 3];
        d.t.read(0x100, &mut odd);
        assert_eq!(odd, [0; 3]);
        // Writes need DRIVER first.
        d.t.write(0x104, &[9, 9]);
        assert!(d.seen.lock().unwrap().config_writes.is_empty());
        d.negotiate(VIRTIO_F_VERSION_1);
        d.t.write(0x104, &[9, 9]);
        d.t.write(0x104, &[9, 9, 9]);
        assert_eq!(d.seen.lock().unwrap().config_writes, vec![(4, vec![9, 9])]);
    }

    #[test]
    fn config_generation_follows_config_changes() {
        let mut d = Driver::new();
        assert_eq!(d.r(VIRTIO_MMIO_CONFIG_GENERATION), 0);
        d.full_init();
        let irq = d.seen.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(d.r(VIRTIO_MMIO_CONFIG_GENERATION), 1);
    }

    #[test]
    fn bad_register_accesses_are_harmless() {
        let mut d = Driver::new();
        // Wrong sizes and misaligned offsets read as zero.
        let mut two = [0xffu8; 2];
        d.t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        d.t.read(1, &mut four);
        assert_eq!(four, [0; 4]);
        let mut eight = [0xffu8; 8];
        d.t.read(0, &mut eight);
        assert_eq!(eight, [0; 8]);
        // Wrong-size and misaligned writes to STATUS do nothing.
        d.t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        d.t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &1u32.to_le_bytes());
        d.t.write(u64::from(VIRTIO_MMIO_STATUS), &1u64.to_le_bytes());
        assert_eq!(d.status(), 0);
        // Unknown and read-only registers.
        for offset in (0..0x100).step_by(4) {
            d.w(offset, 0xdead_beef);
        }
        assert_eq!(d.r(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(d.r(0xf0), 0);
        // Legacy registers (version 1) are unknown here.
        assert_eq!(d.r(VIRTIO_MMIO_QUEUE_PFN), 0);
        // Every offset and size in the window, read and written, never panics.
        for offset in 0..0x1000u64 {
            for len in [1usize, 2, 3, 4, 8] {
                let mut buf = vec![0x5a; len];
                d.t.read(offset, &mut buf);
                d.t.write(offset, &buf);
            }
        }
    }

    #[test]
    fn notify_signals_the_queue_eventfd() {
        let mut d = Driver::new();
        d.full_init();
        d.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        d.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        let seen = d.seen.lock().unwrap();
        assert_eq!(seen.notify_fds[1].read().unwrap(), 2);
        assert!(seen.notify_fds[0].read().is_err(), "queue 0 not notified");
        // The transport keeps its own fds for KVM registration.
        assert_eq!(d.t.queue_evts().len(), 2);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut d = Driver::new();
        d.full_init();
        let irq = d.seen.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_used_queue().unwrap();
        assert_eq!(d.r(VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        d.w(VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(d.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        irq.signal_used_queue().unwrap();
        d.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0, "reset clears it");
    }

    #[test]
    fn invalid_device_queue_sizes_are_refused() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        for sizes in [vec![0u16], vec![3], vec![16, 65535]] {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let mut dev = FakeDevice::new(seen);
            dev.max_sizes = sizes.clone();
            let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            assert!(
                matches!(
                    MmioTransport::new(mem.clone(), Box::new(dev), irq),
                    Err(MmioTransportError::QueueSize { .. })
                ),
                "{sizes:?}"
            );
        }
    }

    /// A simulated driver built with `MockSplitQueue` places real rings in guest
    /// memory; the device gets queues it can pop descriptor chains from.
    #[test]
    fn device_can_use_the_queue_the_driver_built() {
        let mut d = Driver::new();
        let mem = d.mem.clone();
        let mut vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        vq.add_chain(2).unwrap();
        let (desc, avail, used) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
        d.negotiate(VIRTIO_F_VERSION_1);
        d.setup_queue(0, 16, desc, avail, used);
        d.driver_ok();
        assert_eq!(d.status(), READY);
        let seen = d.seen.lock().unwrap();
        let q = seen.activations[0].1[0];
        let mut queue = Queue::new(16).unwrap();
        queue.try_set_desc_table_address(GuestAddress(q.2)).unwrap();
        queue.try_set_avail_ring_address(GuestAddress(q.3)).unwrap();
        queue.try_set_used_ring_address(GuestAddress(q.4)).unwrap();
        queue.set_ready(true);
        assert!(queue.is_valid(&mem));
        let chain = queue.pop_descriptor_chain(&mem).expect("one chain");
        assert_eq!(chain.count(), 2);
        // The driver's avail index as the device sees it.
        let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
        assert_eq!(idx, 1);
    }
}
