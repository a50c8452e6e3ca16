//! virtio-net (virtio 1.2 §5.1) on a tap device.
//!
//! It owns the net device's features, its configuration space (the MAC), the
//! [`tap::Tap`] and the worker ([`worker`]) that moves frames between the tap
//! and the guest's rx/tx queues. It must not configure the host's network
//! (addresses, bridges, routes belong to the runtime), nor touch the
//! transport or other devices.
//!
//! Offered: `VERSION_1`, `MAC`, `MRG_RXBUF`, `RING_INDIRECT_DESC`. No
//! checksum or segmentation offload, no control queue, one queue pair.

pub mod tap;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{ByteValued, Le16};

use self::tap::{Tap, TapError};
use super::queue_util::{DeviceQueue, WorkerSlot};
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries in each of the rx and tx queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest Ethernet frame the guest may send, without the virtio-net header.
/// A longer tx chain is dropped and counted.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

const NAME: &str = "net";

/// How a net device is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap to attach to: an existing persistent tap, or created (and gone
    /// with the device) if missing.
    pub tap_name: String,
    /// The guest's MAC address; `None`: a random locally administered one.
    pub mac: Option<[u8; 6]>,
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("create net device on tap {tap}: mac {mac} is {why}")]
    InvalidMac {
        tap: String,
        mac: String,
        why: &'static str,
    },
    #[error("create net device on tap {tap}: generate mac: {source}")]
    Random {
        tap: String,
        #[source]
        source: std::io::Error,
    },
}

/// `struct virtio_net_config` up to `status` (the fields this device
/// offers).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NetConfigSpace {
    pub mac: [u8; 6],
    pub status: Le16,
}

// SAFETY: repr(C), a byte array and one Le16 at offset 6: no padding (checked
// by the layout test); every bit pattern is valid.
unsafe impl ByteValued for NetConfigSpace {}

/// `struct virtio_net_hdr_v1`, in front of every frame in both directions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: Le16,
    pub gso_size: Le16,
    pub csum_start: Le16,
    pub csum_offset: Le16,
    pub num_buffers: Le16,
}

// SAFETY: repr(C), two u8 then five Le16 at even offsets: no padding (checked
// by the layout test); every bit pattern is valid.
unsafe impl ByteValued for VirtioNetHdr {}

/// Counters of a net device, shared with its worker.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest, and their bytes (without header).
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the tap that did not fit the guest's buffers (without
    /// `MRG_RXBUF`: the buffer at the head of the queue; with it: the whole
    /// queue), dropped.
    pub rx_dropped_too_big: AtomicU64,
    /// Reads from the tap that were not a frame (shorter than header +
    /// Ethernet header, or truncated), dropped.
    pub rx_malformed: AtomicU64,
    /// Guest rx buffers refused (malformed chain, readable buffer, smaller
    /// than the header) and returned with 0 bytes.
    pub rx_bad_buffers: AtomicU64,
    /// Frames sent to the tap, and their bytes (without header).
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest frames longer than [`MAX_FRAME_LEN`], dropped.
    pub tx_dropped_oversized: AtomicU64,
    /// Guest tx chains refused (malformed, writable buffer, shorter than
    /// header + Ethernet header), dropped.
    pub tx_malformed: AtomicU64,
    /// Frames the tap refused or could not take, dropped.
    pub tx_errors: AtomicU64,
}

impl NetStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net {
    tap: Arc<Tap>,
    config_space: NetConfigSpace,
    features: u64,
    stats: Arc<NetStats>,
    worker: WorkerSlot,
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Net {
    /// Opens the tap; nothing runs until the driver activates the device.
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        let mac = match config.mac {
            Some(mac) => {
                let why = if mac == [0; 6] {
                    Some("all zeros")
                } else if mac[0] & 1 != 0 {
                    Some("a multicast address")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(NetError::InvalidMac {
                        tap: config.tap_name,
                        mac: format_mac(&mac),
                        why,
                    });
                }
                mac
            }
            None => {
                let mut mac = [0u8; 6];
                super::rng::fill_random(&mut mac).map_err(|source| NetError::Random {
                    tap: config.tap_name.clone(),
                    source,
                })?;
                // Unicast, locally administered.
                mac[0] = (mac[0] & !0x01) | 0x02;
                mac
            }
        };
        let tap = Tap::open(&config.tap_name)?;
        Ok(Net::with_tap(tap, mac))
    }

    fn with_tap(tap: Tap, mac: [u8; 6]) -> Net {
        Net {
            tap: Arc::new(tap),
            config_space: NetConfigSpace {
                mac,
                status: Le16::from(VIRTIO_NET_S_LINK_UP as u16),
            },
            features: VIRTIO_F_VERSION_1
                | 1 << VIRTIO_RING_F_INDIRECT_DESC
                | 1 << VIRTIO_NET_F_MAC
                | 1 << VIRTIO_NET_F_MRG_RXBUF,
            stats: Arc::new(NetStats::default()),
            worker: WorkerSlot::default(),
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.config_space.mac
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(&self.stats)
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(self.config_space.as_slice(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.worker.ensure_idle(NAME)?;
        let w = self.build_worker(ctx)?;
        self.worker
            .start(NAME, crate::seccomp::WorkerKind::Net, move |stop| {
                worker::run(w, stop)
            })
    }

    fn reset(&mut self) -> bool {
        self.worker.stop()
    }
}

impl Net {
    /// Checks the activation context and builds the worker that will own the
    /// queues.
    fn build_worker(&self, ctx: ActivateContext) -> Result<worker::NetWorker, ActivateError> {
        let ActivateContext {
            mem,
            acked_features,
            queues,
            interrupt,
        } = ctx;
        let [rx, tx] = super::valid_queues(NAME, queues, &mem)?;
        Ok(worker::NetWorker::new(
            mem,
            DeviceQueue::new(rx.queue, rx.notify),
            DeviceQueue::new(tx.queue, tx.notify),
            interrupt,
            Arc::clone(&self.tap),
            acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            Arc::clone(&self.stats),
        ))
    }

    /// Fuzzing entry point: a device whose "tap" is any file, e.g. one end of
    /// a datagram socket pair (what the unit tests use).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn with_file(file: std::fs::File, mac: [u8; 6]) -> Net {
        Net::with_tap(
            Tap {
                file,
                name: "fuzz".to_string(),
            },
            mac,
        )
    }

    /// Fuzzing entry point: activates a worker on the calling thread, runs one
    /// tx pass and one rx pass (what the worker thread does on notifications)
    /// and drops it. No thread, so a run is deterministic.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn serve_once(&self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.build_worker(ctx)?
            .serve_once()
            .map_err(|source| ActivateError::Io {
                device: NAME,
                source,
            })
    }
}

#[cfg(test)]
mod tests;
