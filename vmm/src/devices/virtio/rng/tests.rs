use std::sync::atomic::Ordering;

use super::*;
use crate::devices::virtio::queue_util::testing::*;
use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

const MEM: usize = 1 << 20;
const BUF: u64 = 0x10000;

fn ctx(mem: &GuestMemory, queues: Vec<ActiveQueue>, irq: &Interrupt) -> ActivateContext {
    ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues,
        interrupt: irq.clone(),
    }
}

fn start(config: RngConfig, mem: &GuestMemory, drv: &Driver<'_>) -> (Rng, Interrupt) {
    let mut dev = Rng::new(config).unwrap();
    let irq = interrupt();
    dev.activate(ctx(mem, vec![drv.active_queue()], &irq))
        .unwrap();
    (dev, irq)
}

#[test]
fn identity_and_config() {
    let dev = Rng::new(RngConfig::default()).unwrap();
    assert_eq!(dev.device_type(), 4);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 8]);
}

#[test]
fn limit_is_checked() {
    assert!(Rng::new(RngConfig {
        max_bytes_per_request: 0
    })
    .is_err());
    assert!(Rng::new(RngConfig {
        max_bytes_per_request: MAX_BYTES_PER_REQUEST_LIMIT + 1
    })
    .is_err());
}

#[test]
fn activate_checks_queues() {
    let mem = guest_memory(MEM);
    let drv = Driver::new(&mem, 0, 16);
    let mut dev = Rng::new(RngConfig::default()).unwrap();
    let irq = interrupt();
    let err = dev.activate(ctx(&mem, vec![], &irq)).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            got: 0,
            ..
        }
    ));
    let err = dev
        .activate(ctx(
            &mem,
            vec![drv.active_queue(), drv.active_queue()],
            &irq,
        ))
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { got: 2, .. }));
    // Rings outside guest memory.
    let mut q = drv.active_queue();
    virtio_queue::QueueT::set_used_ring_address(&mut q.queue, Some(0xffff_0000), Some(0));
    let err = dev.activate(ctx(&mem, vec![q], &irq)).unwrap_err();
    assert!(matches!(err, ActivateError::InvalidQueue { index: 0, .. }));
    // A good activation after the refused ones, and no double activation.
    dev.activate(ctx(&mem, vec![drv.active_queue()], &irq))
        .unwrap();
    let err = dev
        .activate(ctx(&mem, vec![drv.active_queue()], &irq))
        .unwrap_err();
    assert!(matches!(err, ActivateError::Other { .. }));
    assert!(dev.reset());
}

#[test]
fn fills_write_only_buffers_and_interrupts() {
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 16);
    let (mut dev, irq) = start(RngConfig::default(), &mem, &drv);
    // One chain of three buffers.
    let head = drv.add(&[w(BUF, 100), w(BUF + 0x1000, 0), w(BUF + 0x2000, 28)]);
    assert!(drv.kick_and_wait(1));
    assert_eq!(drv.used(0), (u32::from(head), 128));
    let a = drv.read(BUF, 100);
    assert!(a.iter().any(|&b| b != 0), "random bytes written");
    assert!(wait_interrupt(&irq) >= 1);
    assert!(irq.status() & crate::devices::virtio::VIRTIO_MMIO_INT_VRING != 0);

    // A second request gets different bytes.
    drv.add(&[w(BUF + 0x4000, 100)]);
    assert!(drv.kick_and_wait(2));
    assert_ne!(drv.read(BUF + 0x4000, 100), a);
    let stats = dev.stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 2);
    assert_eq!(stats.bytes.load(Ordering::Relaxed), 228);
    assert!(dev.reset());
}

#[test]
fn bytes_per_chain_are_bounded() {
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 16);
    let (mut dev, _irq) = start(
        RngConfig {
            max_bytes_per_request: 100,
        },
        &mem,
        &drv,
    );
    drv.write(BUF, &[0xaa; 4096]);
    drv.add(&[w(BUF, 4096)]);
    assert!(drv.kick_and_wait(1));
    assert_eq!(drv.used(0).1, 100);
    assert_eq!(
        drv.read(BUF + 100, 3996),
        vec![0xaa; 3996],
        "rest untouched"
    );
    assert!(dev.reset());
}

#[test]
fn chains_available_before_activation_are_served() {
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 16);
    drv.add(&[w(BUF, 8)]);
    let (mut dev, _irq) = start(RngConfig::default(), &mem, &drv);
    assert!(drv.wait_used(1, std::time::Duration::from_secs(5)));
    assert!(dev.reset());
}

/// Each hostile chain is returned with 0 bytes (or, with a head out of range,
/// skipped), nothing outside it is written, and the next good chain is served.
#[test]
fn hostile_chains_fail_and_device_keeps_going() {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let (mut dev, _irq) = start(RngConfig::default(), &mem, &drv);
    drv.write(BUF, &[0xaa; 64]);
    let mut used = 0u16;
    let mut expect_zero = |drv: &mut Driver<'_>, what: &str, head: u16| {
        drv.publish(head);
        used += 1;
        assert!(drv.kick_and_wait(used), "{what}: chain returned");
        assert_eq!(drv.used(used - 1), (u32::from(head), 0), "{what}");
        assert_eq!(drv.read(BUF, 64), vec![0xaa; 64], "{what}: no write");
    };
    // Wrong direction: a device-readable buffer.
    let h = drv.write_chain(&[r(BUF, 64)]);
    expect_zero(&mut drv, "readable", h);
    // Readable buffer before a writable one.
    let h = drv.write_chain(&[r(BUF + 0x1000, 8), w(BUF, 64)]);
    expect_zero(&mut drv, "mixed", h);
    // Writable after... readable after writable.
    let h = drv.write_chain(&[w(BUF, 64), r(BUF + 0x1000, 8)]);
    expect_zero(&mut drv, "read after write", h);
    // Zero-length buffer only.
    let h = drv.write_chain(&[w(BUF, 0)]);
    expect_zero(&mut drv, "zero length", h);
    // Loop.
    let base = drv.write_raw(&[]);
    let h = drv.write_raw(&[
        (BUF, 8, NEXT | WRITE, base + 1),
        (BUF + 8, 8, NEXT | WRITE, base),
    ]);
    expect_zero(&mut drv, "loop", h);
    // Next index out of range.
    let h = drv.write_raw(&[(BUF, 8, NEXT | WRITE, 5000)]);
    expect_zero(&mut drv, "next out of range", h);
    // Outside guest memory, and a huge length.
    let h = drv.write_chain(&[w(MEM as u64 + 0x1000, 64)]);
    expect_zero(&mut drv, "outside memory", h);
    let h = drv.write_chain(&[w(BUF, u32::MAX)]);
    expect_zero(&mut drv, "huge length", h);
    let h = drv.write_chain(&[w(BUF, 32), w(u64::MAX - 8, 64)]);
    expect_zero(&mut drv, "address overflow", h);

    // Head index out of range: cannot be returned; it is consumed.
    drv.publish(1000);
    let h = drv.add(&[w(BUF + 0x2000, 16)]);
    used += 1;
    assert!(drv.kick_and_wait(used));
    assert_eq!(drv.used(used - 1), (u32::from(h), 16));

    // avail.idx far ahead of the device: nothing is taken until it is sane.
    let good = drv.avail_idx();
    drv.set_avail_idx(good.wrapping_add(1000));
    drv.kick();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(drv.used_idx(), used);
    drv.set_avail_idx(good);
    let h = drv.add(&[w(BUF + 0x3000, 16)]);
    used += 1;
    assert!(drv.kick_and_wait(used));
    assert_eq!(drv.used(used - 1), (u32::from(h), 16));

    assert_eq!(dev.stats().bad_requests.load(Ordering::Relaxed), 10);
    assert!(dev.reset());
}

#[test]
fn reset_then_activate_again() {
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 16);
    let (mut dev, irq) = start(RngConfig::default(), &mem, &drv);
    drv.add(&[w(BUF, 8)]);
    assert!(drv.kick_and_wait(1));
    assert!(dev.reset());
    assert!(dev.reset(), "reset of an inactive device");

    // The driver sets the queue up again from scratch.
    let mut drv = Driver::new(&mem, 0, 16);
    dev.activate(ctx(&mem, vec![drv.active_queue()], &irq))
        .unwrap();
    drv.add(&[w(BUF, 8)]);
    assert!(drv.kick_and_wait(1));
    assert_eq!(drv.used(0).1, 8);
    assert!(dev.reset());
}
