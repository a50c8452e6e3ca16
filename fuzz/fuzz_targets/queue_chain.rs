//! queue_util's chain walk against arbitrary descriptor tables, available rings
//! and indirect tables, in guest memory with a hole. Every chain
//! `DescChain::parse` accepts must hold what its doc promises: head in range,
//! every buffer inside guest memory, readable before writable, lengths that add
//! up, and copies and splits that work.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_fuzz::inputs::queue_chain::*;
use moat_vmm::devices::virtio::queue_util::testing::{eventfd, interrupt, Driver};
use moat_vmm::devices::virtio::queue_util::{DescChain, DeviceQueue, GuestErrorLog};
use moat_vmm::devices::virtio::GuestMemory;
use virtio_queue::QueueT;
use vm_memory::{Bytes as _, GuestAddress, GuestMemory as _};

/// Two 64 KiB regions with a 64 KiB hole between them.
const REGION: u64 = 0x1_0000;
const SECOND: u64 = 0x2_0000;
const SPAN: u64 = SECOND + REGION;

fn check(c: &DescChain, size: u16, mem: &GuestMemory) {
    assert!(c.head < size, "head {} of a queue of {size}", c.head);
    let mut total = [0u64; 2];
    for (i, segs) in [&c.readable, &c.writable].into_iter().enumerate() {
        for s in segs.as_slice() {
            assert!(s.len > 0, "zero-length segment kept");
            assert!(
                mem.check_range(s.addr, s.len as usize),
                "segment {:#x}+{} outside guest memory",
                s.addr.0,
                s.len
            );
            total[i] += u64::from(s.len);
        }
        assert_eq!(total[i], segs.len());
        let n = segs.len().min(1 << 20) as usize;
        let mut buf = vec![0u8; n];
        if i == 0 {
            segs.read_exact(mem, &mut buf)
                .expect("read a checked chain");
        } else {
            segs.write_all(mem, &buf).expect("write a checked chain");
        }
        let half = segs.len() / 2;
        let (a, b) = segs.split_at(half).expect("split inside the chain");
        assert_eq!(a.len(), half);
        assert_eq!(a.len() + b.len(), segs.len());
        assert!(segs.split_at(segs.len() + 1).is_none());
    }
    assert!(c.descriptors >= c.readable.as_slice().len() + c.writable.as_slice().len());
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(SECOND), REGION as usize),
    ])
    .unwrap();
    let size = 1u16 << (input.size_log2 % 9);
    let mut drv = Driver::new(&mem, 0, size);
    let raw: Vec<_> = input
        .descs
        .iter()
        .take(usize::from(size))
        .map(|d| {
            let addr = if d.fold { d.addr % SPAN } else { d.addr };
            (addr, d.len, d.flags, d.next)
        })
        .collect();
    if !raw.is_empty() {
        drv.write_raw(&raw);
    }
    for (addr, bytes) in input.writes.iter().take(16) {
        let _ = mem.write_slice(&bytes.0, GuestAddress(u64::from(*addr) % SPAN));
    }
    for &h in input.heads.iter().take(usize::from(size)) {
        drv.publish(h);
    }
    if let Some(idx) = input.avail_idx {
        drv.set_avail_idx(idx);
    }
    let mut queue = drv.active_queue().queue;
    queue.set_event_idx(input.event_idx);
    let mut q = DeviceQueue::new(queue, eventfd());
    let mut log = GuestErrorLog::new("fuzz");
    let irq = interrupt();
    for _ in 0..2 * u32::from(size) {
        let Some(chain) = q.pop(&mem, &mut log) else {
            break;
        };
        let head = match DescChain::parse(chain, size, &mem) {
            Ok(c) => {
                check(&c, size, &mem);
                c.head
            }
            Err(e) => e.head(),
        };
        q.add_used(&mem, head, input.used_len, &mut log);
    }
    q.signal_used(&mem, &irq);
});
