//! The virtio-mmio transport: a sequence of register reads and writes (any
//! offset in the 4 KiB window, any size from 1 to 8 bytes, any value), mixed with
//! the steps a driver takes (feature negotiation, queue set-up, DRIVER_OK,
//! notifications, chains on the rings, resets), against a fake device that
//! walks its queues at activation or the real virtio-rng or virtio-blk device
//! with their worker threads.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use moat_fuzz::guest::GuestQueue;
use moat_fuzz::inputs::virtio_mmio::*;
use moat_vmm::devices::bus::BusDevice;
use moat_vmm::devices::virtio::block::{Block, BlockConfig};
use moat_vmm::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
use moat_vmm::devices::virtio::queue_util::testing::interrupt;
use moat_vmm::devices::virtio::queue_util::{DescChain, DeviceQueue, GuestErrorLog};
use moat_vmm::devices::virtio::rng::{Rng, RngConfig};
use moat_vmm::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, GuestMemory, VirtioDevice,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

const MEM: u64 = 1 << 20;
const STATUS_ACK: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

/// A device with two queues (16 and 8 entries) that walks every available chain
/// of each at activation, the way a device worker does.
#[derive(Debug)]
struct Fake {
    config: Arc<Mutex<[u8; 8]>>,
    can_reset: bool,
    fail_activate: bool,
}

impl VirtioDevice for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        (1 << 32) | (1 << 29) | (1 << 28) | 0x5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&*self.config.lock().unwrap(), offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config.lock().unwrap();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(data.len()).min(c.len());
        c[start..end].copy_from_slice(&data[..end - start]);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Other {
                device: "fake",
                reason: "told to fail".into(),
            });
        }
        let mut log = GuestErrorLog::new("fake");
        for q in ctx.queues {
            if !q.queue.ready() {
                continue;
            }
            let mut q = DeviceQueue::new(q.queue, q.notify);
            let size = q.size();
            for _ in 0..size {
                let Some(chain) = q.pop(&ctx.mem, &mut log) else {
                    break;
                };
                let head = match DescChain::parse(chain, size, &ctx.mem) {
                    Ok(c) => c.head,
                    Err(e) => e.head(),
                };
                q.add_used(&ctx.mem, head, 0, &mut log);
            }
            q.signal_used(&ctx.mem, &ctx.interrupt);
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.can_reset
    }
}

fn read(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut d = [0u8; 4];
    t.read(u64::from(offset), &mut d);
    u32::from_le_bytes(d)
}

fn write(t: &mut MmioTransport, offset: u32, v: u32) {
    t.write(u64::from(offset), &v.to_le_bytes());
}

/// Guest-side ring layout of queue `index`: a 64 KiB slot per queue.
fn ring_base(index: u8) -> u64 {
    0x1_0000 * (1 + u64::from(index % 4))
}

thread_local! {
    static DISK: tempfile::NamedTempFile = {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 512).unwrap();
        f
    };
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let device: Box<dyn VirtioDevice> = match input.device {
        Device::Fake {
            can_reset,
            fail_activate,
        } => Box::new(Fake {
            config: Arc::new(Mutex::new([1, 2, 3, 4, 5, 6, 7, 8])),
            can_reset,
            fail_activate,
        }),
        Device::Rng => Box::new(Rng::new(RngConfig::default()).unwrap()),
        Device::Block { read_only } => {
            let path = DISK.with(|d| d.path().to_path_buf());
            Box::new(
                Block::new(BlockConfig {
                    path,
                    read_only,
                    id: None,
                })
                .unwrap(),
            )
        }
    };
    let mut t = MmioTransport::new(mem.clone(), device, interrupt()).unwrap();
    // The simulated guest's view of each queue it set up: (size, queue).
    let mut guest: Vec<Option<GuestQueue<'_>>> = (0..4).map(|_| None).collect();
    for op in input.ops.iter().take(256) {
        match op {
            Op::Read { offset, size } => {
                let size = usize::from(size % 8) + 1;
                let offset = u64::from(*offset) % (MMIO_WINDOW_SIZE - size as u64 + 1);
                let mut d = vec![0u8; size];
                t.read(offset, &mut d);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                let size = usize::from(size % 8) + 1;
                let offset = u64::from(*offset) % (MMIO_WINDOW_SIZE - size as u64 + 1);
                t.write(offset, &value.to_le_bytes()[..size]);
            }
            Op::Negotiate { features } => {
                write(&mut t, VIRTIO_MMIO_STATUS, STATUS_ACK);
                write(&mut t, VIRTIO_MMIO_STATUS, STATUS_ACK | STATUS_DRIVER);
                write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
                write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, *features as u32);
                write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
                write(
                    &mut t,
                    VIRTIO_MMIO_DRIVER_FEATURES,
                    (*features >> 32) as u32,
                );
                write(
                    &mut t,
                    VIRTIO_MMIO_STATUS,
                    STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK,
                );
            }
            Op::SetupQueue {
                index,
                size,
                rings,
                ready,
            } => {
                write(&mut t, VIRTIO_MMIO_QUEUE_SEL, u32::from(*index));
                let (desc, avail, used) = match rings {
                    Some(r) => *r,
                    None => {
                        // A power of two up to 256 in the guest's own layout.
                        let qsize = 1u16 << (size % 9);
                        let g = GuestQueue::new(&mem, MEM, ring_base(*index), qsize, 0x8_0000..MEM);
                        let addrs = (
                            g.drv.mock.desc_table_addr().0,
                            g.drv.mock.avail_addr().0,
                            g.drv.mock.used_addr().0,
                        );
                        guest[usize::from(*index % 4)] = Some(g);
                        addrs
                    }
                };
                let num = if rings.is_some() {
                    u32::from(*size)
                } else {
                    1 << (size % 9)
                };
                write(&mut t, VIRTIO_MMIO_QUEUE_NUM, num);
                for (lo, hi, v) in [
                    (
                        VIRTIO_MMIO_QUEUE_DESC_LOW,
                        VIRTIO_MMIO_QUEUE_DESC_HIGH,
                        desc,
                    ),
                    (
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                        VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                        avail,
                    ),
                    (
                        VIRTIO_MMIO_QUEUE_USED_LOW,
                        VIRTIO_MMIO_QUEUE_USED_HIGH,
                        used,
                    ),
                ] {
                    write(&mut t, lo, v as u32);
                    write(&mut t, hi, (v >> 32) as u32);
                }
                if *ready {
                    write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
                }
            }
            Op::DriverOk => {
                let s = read(&mut t, VIRTIO_MMIO_STATUS);
                write(&mut t, VIRTIO_MMIO_STATUS, s | STATUS_DRIVER_OK);
            }
            Op::Notify { queue } => write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, *queue),
            Op::Chain {
                queue,
                chain,
                request,
            } => {
                if let Some(g) = guest[usize::from(*queue % 4)].as_mut() {
                    g.push(chain, &request.0);
                }
            }
            Op::Reset => write(&mut t, VIRTIO_MMIO_STATUS, 0),
        }
    }
    // Interrupt status reads and acks after whatever the device did.
    let isr = read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS);
    write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, isr);
});
