use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::ByteValued;

use super::tap::VNET_HDR_LEN;
use super::*;
use crate::devices::virtio::queue_util::testing::*;
use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

const MEM: usize = 16 << 20;
const RX_RINGS: u64 = 0;
const TX_RINGS: u64 = 0x8000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x80_0000;
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

fn stat(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// An Ethernet frame.
fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn with_hdr(hdr: VirtioNetHdr, frame: &[u8]) -> Vec<u8> {
    let mut v = hdr.as_slice().to_vec();
    v.extend_from_slice(frame);
    v
}

/// The guest side: rx and tx queues and their buffers.
struct Guest<'a> {
    rx: Driver<'a>,
    tx: Driver<'a>,
    /// rx head -> buffer address.
    rx_addr: HashMap<u16, u64>,
    rx_seen: u16,
    next_rx: u64,
    next_tx: u64,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory, rx_size: u16) -> Self {
        Guest {
            rx: Driver::new(mem, RX_RINGS, rx_size),
            tx: Driver::new(mem, TX_RINGS, 256),
            rx_addr: HashMap::new(),
            rx_seen: 0,
            next_rx: RX_BUFS,
            next_tx: TX_BUFS,
        }
    }

    fn queues(&self) -> Vec<ActiveQueue> {
        vec![self.rx.active_queue(), self.tx.active_queue()]
    }

    /// Posts `n` rx buffers of `len` bytes (not kicked).
    fn post_rx(&mut self, n: usize, len: u32) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let addr = self.next_rx;
                self.next_rx += 0x1_1000;
                let head = self.rx.add(&[w(addr, len)]);
                self.rx_addr.insert(head, addr);
                head
            })
            .collect()
    }

    /// Sends one frame (with a zero header) in a single descriptor, and waits
    /// for the device to use it.
    fn send(&mut self, frame: &[u8]) {
        self.send_raw(&with_hdr(VirtioNetHdr::default(), frame));
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let addr = self.next_tx;
        self.next_tx += 0x1_1000;
        self.tx.write(addr, bytes);
        self.send_descs(&[r(addr, bytes.len() as u32)]);
    }

    fn send_descs(&mut self, descs: &[Desc]) -> u16 {
        let n = self.tx.used_idx().wrapping_add(1);
        let head = self.tx.add(descs);
        assert!(self.tx.kick_and_wait(n), "tx chain used");
        assert_eq!(self.tx.used(n - 1), (u32::from(head), 0));
        head
    }

    /// Next used rx entry: (head, len), waiting up to `timeout`.
    fn next_used(&mut self, timeout: Duration) -> Option<(u16, u32)> {
        let end = Instant::now() + timeout;
        while self.rx.used_idx() == self.rx_seen {
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (head, len) = self.rx.used(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        Some((head as u16, len))
    }

    /// Next received frame: its header and the frame bytes.
    fn recv(&mut self, timeout: Duration) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let (head, len) = self.next_used(timeout)?;
        let mut bytes = self.rx.read(self.rx_addr[&head], len as usize);
        let mut hdr = VirtioNetHdr::default();
        hdr.as_mut_slice().copy_from_slice(&bytes[..VNET_HDR_LEN]);
        for _ in 1..hdr.num_buffers.to_native() {
            let (head, len) = self.next_used(timeout).expect("merged buffer");
            bytes.extend(self.rx.read(self.rx_addr[&head], len as usize));
        }
        Some((hdr, bytes.split_off(VNET_HDR_LEN)))
    }

    /// Receives until `want` matches a frame (other frames are skipped).
    fn recv_matching(
        &mut self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let (hdr, frame) = self.recv(left)?;
            if want(&frame) {
                return Some((hdr, frame));
            }
        }
    }
}

/// A net device on one end of a datagram socket pair; the test holds the other
/// end as the "tap".
fn socket_net() -> (Net, UnixDatagram) {
    let (dev_end, peer) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tap = tap::Tap {
        file: File::from(OwnedFd::from(dev_end)),
        name: "test".to_string(),
    };
    (Net::with_tap(tap, GUEST_MAC), peer)
}

fn activate(dev: &mut Net, mem: &GuestMemory, g: &Guest<'_>, features: u64) -> Interrupt {
    let irq = interrupt();
    dev.activate(ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1 | features,
        queues: g.queues(),
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

fn recv_peer(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn peer_quiet(peer: &UnixDatagram) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let quiet = peer.recv(&mut buf).is_err();
    peer.set_nonblocking(false).unwrap();
    quiet
}

#[test]
fn layouts_match_the_spec() {
    use std::mem::{offset_of, size_of};
    use virtio_bindings::virtio_net::{virtio_net_config, virtio_net_hdr_v1};
    assert_eq!(size_of::<VirtioNetHdr>(), VNET_HDR_LEN);
    assert_eq!(size_of::<VirtioNetHdr>(), size_of::<virtio_net_hdr_v1>());
    assert_eq!(
        offset_of!(VirtioNetHdr, flags),
        offset_of!(virtio_net_hdr_v1, flags)
    );
    assert_eq!(
        offset_of!(VirtioNetHdr, gso_type),
        offset_of!(virtio_net_hdr_v1, gso_type)
    );
    assert_eq!(
        offset_of!(VirtioNetHdr, hdr_len),
        offset_of!(virtio_net_hdr_v1, hdr_len)
    );
    assert_eq!(
        offset_of!(VirtioNetHdr, gso_size),
        offset_of!(virtio_net_hdr_v1, gso_size)
    );
    assert_eq!(offset_of!(VirtioNetHdr, csum_start), 6);
    assert_eq!(offset_of!(VirtioNetHdr, csum_offset), 8);
    assert_eq!(
        offset_of!(VirtioNetHdr, num_buffers),
        offset_of!(virtio_net_hdr_v1, num_buffers)
    );
    assert_eq!(size_of::<NetConfigSpace>(), 8);
    assert_eq!(
        offset_of!(NetConfigSpace, mac),
        offset_of!(virtio_net_config, mac)
    );
    assert_eq!(
        offset_of!(NetConfigSpace, status),
        offset_of!(virtio_net_config, status)
    );
}

#[test]
fn identity_features_and_mac() {
    let (dev, _peer) = socket_net();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = dev.avail_features();
    assert!(f & VIRTIO_F_VERSION_1 != 0);
    assert!(f & (1 << VIRTIO_NET_F_MAC) != 0);
    assert!(f & MRG != 0);
    // No offloads are offered.
    for bit in [0, 1, 7, 8, 10, 11, 12, 14] {
        assert!(f & (1 << bit) == 0, "offload feature {bit}");
    }
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
    let mut tail = [0xffu8; 4];
    dev.read_config(6, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0], "status LINK_UP, then zeros");
}

#[test]
fn invalid_config_is_refused_before_opening_the_tap() {
    for (mac, why) in [
        ([0u8; 6], "all zeros"),
        ([1, 0, 0, 0, 0, 1], "a multicast address"),
    ] {
        let err = Net::new(NetConfig {
            tap_name: "moat-t0".into(),
            mac: Some(mac),
        })
        .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    let err = Net::new(NetConfig {
        tap_name: "bad/name".into(),
        mac: None,
    })
    .unwrap_err();
    assert!(matches!(
        err,
        NetError::Tap(tap::TapError::InvalidName { .. })
    ));
}

#[test]
fn activate_checks_queues() {
    let mem = guest_memory(MEM);
    let g = Guest::new(&mem, 256);
    let (mut dev, _peer) = socket_net();
    let irq = interrupt();
    let err = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            acked_features: VIRTIO_F_VERSION_1,
            queues: vec![g.rx.active_queue()],
            interrupt: irq.clone(),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1,
            ..
        }
    ));
    let mut tx = g.tx.active_queue();
    virtio_queue::QueueT::set_avail_ring_address(&mut tx.queue, Some(0xffff_0000), Some(1));
    let err = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            acked_features: VIRTIO_F_VERSION_1,
            queues: vec![g.rx.active_queue(), tx],
            interrupt: irq,
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::InvalidQueue { index: 1, .. }));
}

#[test]
fn tx_sends_frames_with_a_clean_header() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, 0);
    let frame = eth([0xff; 6], GUEST_MAC, 0x0800, &[7u8; 100]);
    g.send(&frame);
    assert_eq!(recv_peer(&peer), with_hdr(VirtioNetHdr::default(), &frame));

    // The guest sets offload flags it never negotiated: the host sees zeros.
    let dirty = VirtioNetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 54.into(),
        gso_size: 1448.into(),
        csum_start: 34.into(),
        csum_offset: 16.into(),
        num_buffers: 0.into(),
    };
    g.send_raw(&with_hdr(dirty, &frame));
    assert_eq!(recv_peer(&peer), with_hdr(VirtioNetHdr::default(), &frame));

    // Header and frame over several descriptors.
    let a = TX_BUFS + 0x40_0000;
    g.tx.write(a, &[0; 12]);
    g.tx.write(a + 0x1000, &frame[..20]);
    g.tx.write(a + 0x2000, &frame[20..]);
    g.send_descs(&[
        r(a, 12),
        r(a + 0x1000, 20),
        r(a + 0x3000, 0),
        r(a + 0x2000, (frame.len() - 20) as u32),
    ]);
    assert_eq!(recv_peer(&peer), with_hdr(VirtioNetHdr::default(), &frame));

    // The largest frame goes through.
    let big = eth([0xff; 6], GUEST_MAC, 0x0800, &vec![1u8; MAX_FRAME_LEN - 14]);
    g.send(&big);
    assert_eq!(recv_peer(&peer).len(), VNET_HDR_LEN + MAX_FRAME_LEN);

    let s = dev.stats();
    assert_eq!(stat(&s.tx_frames), 4);
    assert_eq!(
        stat(&s.tx_bytes),
        3 * frame.len() as u64 + MAX_FRAME_LEN as u64
    );
    assert!(dev.reset());
}

/// Hostile tx chains are dropped and counted; nothing reaches the tap; the
/// device keeps sending.
#[test]
fn tx_hostile_chains_are_dropped() {
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, 0);
    let frame = eth([0xff; 6], GUEST_MAC, 0x0800, &[7u8; 50]);
    let a = TX_BUFS;
    g.tx.write(a, &with_hdr(VirtioNetHdr::default(), &frame));

    // Oversized: one byte over 64 KiB + header.
    g.send_raw(&vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN + 1]);
    // Too short for header + Ethernet header.
    g.send_descs(&[r(a, (VNET_HDR_LEN + 13) as u32)]);
    // A device-writable buffer (wrong direction).
    g.send_descs(&[w(a, 76)]);
    g.send_descs(&[r(a, 12), w(a + 12, 64)]);
    // Outside guest memory; huge length.
    g.send_descs(&[r(MEM as u64 - 16, 76)]);
    g.send_descs(&[r(a, u32::MAX)]);
    // No descriptor with data at all.
    g.send_descs(&[r(a, 0)]);
    // A loop.
    let n = g.tx.used_idx() + 1;
    let base = g.tx.write_raw(&[]);
    let head =
        g.tx.write_raw(&[(a, 12, NEXT, base + 1), (a + 12, 64, NEXT, base)]);
    g.tx.publish(head);
    assert!(g.tx.kick_and_wait(n));
    // A next index past the queue.
    let n = n + 1;
    let head = g.tx.write_raw(&[(a, 12, NEXT, 4000)]);
    g.tx.publish(head);
    assert!(g.tx.kick_and_wait(n));
    // A head out of range: consumed, cannot be returned.
    g.tx.publish(300);
    // avail.idx more than a queue ahead: nothing is taken until it is sane.
    let idx = g.tx.avail_idx();
    g.tx.set_avail_idx(idx.wrapping_add(257));
    g.tx.kick();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.tx.used_idx(), n);
    g.tx.set_avail_idx(idx);
    // Still working.
    g.send(&frame);
    assert_eq!(recv_peer(&peer), with_hdr(VirtioNetHdr::default(), &frame));
    assert!(peer_quiet(&peer), "no dropped frame reached the tap");
    let s = dev.stats();
    assert_eq!(stat(&s.tx_dropped_oversized), 1);
    assert_eq!(stat(&s.tx_malformed), 9);
    assert_eq!(stat(&s.tx_frames), 1);
    assert!(dev.reset());
}

#[test]
fn rx_delivers_frames_with_a_clean_header() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let irq = activate(&mut dev, &mem, &g, 0);
    g.post_rx(4, 1526);
    g.rx.kick();
    let frame = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[9u8; 200]);
    // The tap says DATA_VALID; the guest, which negotiated no offload, gets 0.
    let tap_hdr = VirtioNetHdr {
        flags: 2,
        ..Default::default()
    };
    peer.send(&with_hdr(tap_hdr, &frame)).unwrap();
    let (hdr, got) = g.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(got, frame);
    assert_eq!(
        hdr,
        VirtioNetHdr {
            num_buffers: 1.into(),
            ..Default::default()
        }
    );
    assert_eq!(g.rx.used(0).1 as usize, VNET_HDR_LEN + frame.len());
    assert!(wait_interrupt(&irq) >= 1);
    let s = dev.stats();
    assert_eq!(stat(&s.rx_frames), 1);
    assert_eq!(stat(&s.rx_bytes), frame.len() as u64);

    // Reads that are not frames are dropped.
    peer.send(&[0u8; VNET_HDR_LEN + 13]).unwrap();
    peer.send(&with_hdr(tap_hdr, &frame)).unwrap();
    assert_eq!(g.recv(Duration::from_secs(5)).unwrap().1, frame);
    assert_eq!(stat(&s.rx_malformed), 1);
    assert!(dev.reset());
}

/// Frames that arrive while the guest has no buffers wait in the tap, and
/// all of them arrive once buffers are posted.
#[test]
fn rx_waits_for_buffers_without_dropping() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, 0);
    let frames: Vec<_> = (0..5u8)
        .map(|i| eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[i; 60]))
        .collect();
    for f in &frames {
        peer.send(&with_hdr(VirtioNetHdr::default(), f)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.rx.used_idx(), 0);
    // Two buffers: two frames; the rest keep waiting.
    g.post_rx(2, 1526);
    g.rx.kick();
    for f in &frames[..2] {
        assert_eq!(&g.recv(Duration::from_secs(5)).unwrap().1, f);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.rx.used_idx(), 2);
    g.post_rx(8, 1526);
    g.rx.kick();
    for f in &frames[2..] {
        assert_eq!(&g.recv(Duration::from_secs(5)).unwrap().1, f);
    }
    let s = dev.stats();
    assert_eq!(stat(&s.rx_frames), 5);
    assert_eq!(stat(&s.rx_dropped_too_big), 0);
    assert!(dev.reset());
}

/// Without MRG_RXBUF, a frame larger than the next buffer is dropped and
/// counted; the buffer stays for the next frame.
#[test]
fn rx_frame_too_big_without_mrg_is_dropped() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, 0);
    let heads = g.post_rx(1, (VNET_HDR_LEN + 100) as u32);
    g.rx.kick();
    let big = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[1; 200]);
    let small = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[2; 50]);
    peer.send(&with_hdr(VirtioNetHdr::default(), &big)).unwrap();
    peer.send(&with_hdr(VirtioNetHdr::default(), &small))
        .unwrap();
    assert_eq!(g.recv(Duration::from_secs(5)).unwrap().1, small);
    assert_eq!(g.rx.used(0).0, u32::from(heads[0]));
    assert_eq!(stat(&dev.stats().rx_dropped_too_big), 1);
    assert!(dev.reset());
}

/// With MRG_RXBUF a frame spans buffers; one that the whole queue cannot
/// hold is dropped and counted.
#[test]
fn rx_mergeable_buffers() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 4);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, MRG);
    let heads = g.post_rx(3, (VNET_HDR_LEN + 100) as u32);
    g.rx.kick();
    let frame = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[5; 286]); // 300 bytes
    peer.send(&with_hdr(VirtioNetHdr::default(), &frame))
        .unwrap();
    let (hdr, got) = g.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(hdr.num_buffers.to_native(), 3);
    assert_eq!(got, frame);
    assert_eq!(g.rx.used(0), (u32::from(heads[0]), 112));
    assert_eq!(g.rx.used(1), (u32::from(heads[1]), 112));
    assert_eq!(g.rx.used(2), (u32::from(heads[2]), 88));

    // 4 buffers of 112 bytes (the whole queue) cannot hold 1000 bytes.
    g.post_rx(4, (VNET_HDR_LEN + 100) as u32);
    g.rx.kick();
    let huge = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[6; 986]);
    let small = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[7; 50]);
    peer.send(&with_hdr(VirtioNetHdr::default(), &huge))
        .unwrap();
    peer.send(&with_hdr(VirtioNetHdr::default(), &small))
        .unwrap();
    let (hdr, got) = g.recv(Duration::from_secs(5)).unwrap();
    assert_eq!((hdr.num_buffers.to_native(), got), (1, small));
    assert_eq!(stat(&dev.stats().rx_dropped_too_big), 1);
    assert!(dev.reset());
}

/// Hostile rx buffers are returned with 0 bytes and counted; the frame goes
/// to the next good buffer.
#[test]
fn rx_hostile_buffers_are_refused() {
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let _irq = activate(&mut dev, &mem, &g, MRG);
    let a = RX_BUFS + 0x80_0000;
    g.rx.write(a, &[0xaa; 64]);
    // Readable (wrong direction); smaller than the header; outside memory;
    // huge length; a loop; a head out of range.
    let bad = [
        g.rx.add(&[r(a, 1526)]),
        g.rx.add(&[w(a, (VNET_HDR_LEN - 1) as u32)]),
        g.rx.add(&[w(MEM as u64 - 100, 1526)]),
        g.rx.add(&[w(a, u32::MAX)]),
    ];
    let base = g.rx.write_raw(&[]);
    let looped = g.rx.write_raw(&[
        (a, 8, NEXT | WRITE, base + 1),
        (a + 8, 8, NEXT | WRITE, base),
    ]);
    g.rx.publish(looped);
    g.rx.publish(999);
    let good = g.post_rx(1, 1526)[0];
    g.rx.kick();
    let frame = eth(GUEST_MAC, [2, 0, 0, 0, 0, 1], 0x0800, &[3; 64]);
    peer.send(&with_hdr(VirtioNetHdr::default(), &frame))
        .unwrap();
    for head in bad.iter().chain([&looped]) {
        assert_eq!(g.next_used(Duration::from_secs(5)), Some((*head, 0)));
    }
    let (head, len) = g.next_used(Duration::from_secs(5)).unwrap();
    assert_eq!((head, len as usize), (good, VNET_HDR_LEN + frame.len()));
    assert_eq!(g.rx.read(g.rx_addr[&good] + 12, frame.len()), frame);
    assert_eq!(
        g.rx.read(a, 64),
        vec![0xaa; 64],
        "refused buffers untouched"
    );
    assert_eq!(stat(&dev.stats().rx_bad_buffers), 6);
    assert!(dev.reset());
}

#[test]
fn reset_keeps_the_tap_and_its_frames() {
    let mem = guest_memory(MEM);
    let mut g = Guest::new(&mem, 256);
    let (mut dev, peer) = socket_net();
    let irq = activate(&mut dev, &mem, &g, 0);
    let frame = eth([0xff; 6], GUEST_MAC, 0x0800, &[1; 40]);
    g.send(&frame);
    assert_eq!(recv_peer(&peer).len(), VNET_HDR_LEN + frame.len());
    assert!(dev.reset());
    // A frame arrives while the device is reset.
    peer.send(&with_hdr(VirtioNetHdr::default(), &frame))
        .unwrap();
    let mut g = Guest::new(&mem, 256);
    dev.activate(ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues: g.queues(),
        interrupt: irq,
    })
    .unwrap();
    g.post_rx(1, 1526);
    g.rx.kick();
    assert_eq!(g.recv(Duration::from_secs(5)).unwrap().1, frame);
    g.send(&frame);
    assert_eq!(recv_peer(&peer).len(), VNET_HDR_LEN + frame.len());
    assert!(dev.reset());
}

/// Real tap devices, in a network namespace the test creates (root only).
mod real_tap {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::*;

    const HOST_IP: [u8; 4] = [10, 0, 0, 1];
    const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

    /// Runs `f` on a thread in a new network namespace; prints why and
    /// returns false when that is not possible here.
    fn in_new_netns(test: &str, f: impl FnOnce() + Send + 'static) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("{test}: skipped: not root");
            return false;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("{test}: skipped: no /dev/net/tun");
            return false;
        }
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                ok_tx.send(Err(std::io::Error::last_os_error())).unwrap();
                return;
            }
            ok_tx.send(Ok(())).unwrap();
            f();
        });
        match ok_rx.recv().unwrap() {
            Ok(()) => {
                if let Err(e) = t.join() {
                    std::panic::resume_unwind(e);
                }
                true
            }
            Err(e) => {
                t.join().unwrap();
                eprintln!("{test}: skipped: unshare(CLONE_NEWNET): {e}");
                false
            }
        }
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all zeros is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr
    }

    fn ioctl(sock: &UdpSocket, req: libc::c_ulong, ifr: &mut libc::ifreq) {
        // SAFETY: every request used here reads/writes one `struct ifreq`,
        // and `ifr` is one, live across the call.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut libc::ifreq) };
        assert!(
            r == 0,
            "ioctl {req:#x}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn set_sockaddr_in(ifr: &mut libc::ifreq, ip: [u8; 4]) {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr are both 16 bytes; the union
        // field is plain memory we own.
        unsafe {
            std::ptr::write_unaligned(
                std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
                sin,
            );
        }
    }

    /// Gives the tap HOST_IP/24, brings it up, returns its MAC.
    fn configure(tap: &str) -> [u8; 6] {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut ifr = ifreq(tap);
        set_sockaddr_in(&mut ifr, HOST_IP);
        ioctl(&sock, libc::SIOCSIFADDR, &mut ifr);
        let mut ifr = ifreq(tap);
        set_sockaddr_in(&mut ifr, [255, 255, 255, 0]);
        ioctl(&sock, libc::SIOCSIFNETMASK, &mut ifr);
        let mut ifr = ifreq(tap);
        ioctl(&sock, libc::SIOCGIFFLAGS, &mut ifr);
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut ifr);
        let mut ifr = ifreq(tap);
        ioctl(&sock, libc::SIOCGIFHWADDR, &mut ifr);
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
        let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        // c_char is i8 on x86_64 and u8 on aarch64: reinterpret the byte.
        std::array::from_fn(|i| u8::from_ne_bytes(data[i].to_ne_bytes()))
    }

    /// `ip neigh add <ip> lladdr <mac> dev <dev> nud permanent`.
    fn add_neighbour(dev: &str, ip: [u8; 4], mac: [u8; 6]) {
        const ATF_COM: libc::c_int = 0x02;
        const ATF_PERM: libc::c_int = 0x04;
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        // SAFETY: arpreq is plain old data; all zeros is a valid value.
        let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
        let mut ifr = ifreq(dev);
        set_sockaddr_in(&mut ifr, ip);
        // SAFETY: set_sockaddr_in just wrote the addr member.
        req.arp_pa = unsafe { ifr.ifr_ifru.ifru_addr };
        req.arp_ha.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
        req.arp_flags = ATF_COM | ATF_PERM;
        req.arp_dev = ifr.ifr_name;
        // SAFETY: SIOCSARP reads one `struct arpreq`; `req` is one, live
        // across the call.
        let r = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSARP,
                &mut req as *mut libc::arpreq,
            )
        };
        assert!(r == 0, "SIOCSARP: {}", std::io::Error::last_os_error());
    }

    /// Whether interface `name` exists in this thread's network namespace.
    fn interface_exists(name: &str) -> bool {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let udp_len = 8 + payload.len() as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&udp_len.to_be_bytes());
        ip.extend_from_slice(&[0, 0]); // no UDP checksum
        ip.extend_from_slice(payload);
        ip
    }

    fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&tha);
        a.extend_from_slice(&tpa);
        a
    }

    fn is_arp(f: &[u8], op: u16, tpa: [u8; 4]) -> bool {
        f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == op.to_be_bytes() && f[38..42] == tpa
    }

    fn is_udp_to(f: &[u8], dst: [u8; 4], dport: u16) -> bool {
        f.len() >= 42
            && f[12..14] == [8, 0]
            && f[23] == 17
            && f[30..34] == dst
            && f[36..38] == dport.to_be_bytes()
    }

    /// The simulated guest talks to the host stack through a real tap: UDP
    /// out, ARP in and out, UDP in; with and without mergeable buffers.
    #[test]
    fn exchanges_frames_with_the_host_stack() {
        for features in [0, MRG] {
            in_new_netns("exchanges_frames_with_the_host_stack", move || {
                exchange(features)
            });
        }
    }

    fn exchange(features: u64) {
        let mut dev = Net::new(NetConfig {
            tap_name: "moat-test0".into(),
            mac: Some(GUEST_MAC),
        })
        .unwrap();
        assert_eq!(dev.tap_name(), "moat-test0");
        let tap_mac = configure("moat-test0");
        let mem = guest_memory(MEM);
        let mut g = Guest::new(&mem, 256);
        let _irq = activate(&mut dev, &mem, &g, features);
        g.post_rx(64, 1526);
        g.rx.kick();
        let t = Duration::from_secs(5);

        // Guest -> host: a UDP datagram to a socket on the tap's address.
        let host = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::from(HOST_IP), 7777)).unwrap();
        host.set_read_timeout(Some(t)).unwrap();
        let ip = ipv4_udp(GUEST_IP, HOST_IP, 4000, 7777, b"hello from the guest");
        g.send(&eth(tap_mac, GUEST_MAC, 0x0800, &ip));
        let mut buf = [0u8; 64];
        let (n, from) = host.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello from the guest");
        assert_eq!(from.to_string(), "10.0.0.2:4000");

        // Host -> guest: the host asks who has GUEST_IP, the guest answers,
        // and the datagram follows.
        host.send_to(b"hello from the host", "10.0.0.2:5000")
            .unwrap();
        let (_, req) = g
            .recv_matching(t, |f| is_arp(f, 1, GUEST_IP))
            .expect("arp request for the guest");
        assert_eq!(&req[6..12], &tap_mac);
        let reply = arp(2, GUEST_MAC, GUEST_IP, tap_mac, HOST_IP);
        g.send(&eth(tap_mac, GUEST_MAC, 0x0806, &reply));
        let (hdr, udp) = g
            .recv_matching(t, |f| is_udp_to(f, GUEST_IP, 5000))
            .expect("udp datagram for the guest");
        assert_eq!(hdr.flags, 0);
        assert_eq!(hdr.num_buffers.to_native(), 1);
        assert_eq!(&udp[0..6], &GUEST_MAC);
        assert_eq!(&udp[42..], b"hello from the host");

        // Guest asks the host's MAC: the host stack answers.
        let req = arp(1, GUEST_MAC, GUEST_IP, [0; 6], HOST_IP);
        g.send(&eth([0xff; 6], GUEST_MAC, 0x0806, &req));
        let (_, rep) = g
            .recv_matching(t, |f| is_arp(f, 2, GUEST_IP))
            .expect("arp reply from the host");
        assert_eq!(&rep[22..28], &tap_mac);

        let s = dev.stats();
        assert_eq!(stat(&s.tx_frames), 3);
        assert!(stat(&s.rx_frames) >= 2);
        assert_eq!(stat(&s.tx_errors) + stat(&s.rx_dropped_too_big), 0);
        assert!(dev.reset());
    }

    /// Frames the host sends while the guest has no rx buffers are all
    /// delivered once it posts some.
    #[test]
    fn holds_host_frames_until_the_guest_has_buffers() {
        in_new_netns("holds_host_frames_until_the_guest_has_buffers", || {
            let mut dev = Net::new(NetConfig {
                tap_name: "moat-test1".into(),
                mac: Some(GUEST_MAC),
            })
            .unwrap();
            let tap_mac = configure("moat-test1");
            let mem = guest_memory(MEM);
            let mut g = Guest::new(&mem, 256);
            let _irq = activate(&mut dev, &mem, &g, 0);
            assert_eq!(tap_mac.len(), 6);
            // A permanent neighbour entry: the host's datagrams need no ARP.
            add_neighbour("moat-test1", GUEST_IP, GUEST_MAC);
            let host = UdpSocket::bind("10.0.0.1:0").unwrap();
            for i in 0..5u8 {
                host.send_to(&[i; 32], "10.0.0.2:6000").unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(g.rx.used_idx(), 0);
            g.post_rx(64, 1526);
            g.rx.kick();
            let mut got = Vec::new();
            while got.len() < 5 {
                let (_, f) = g
                    .recv_matching(Duration::from_secs(5), |f| is_udp_to(f, GUEST_IP, 6000))
                    .expect("all five datagrams");
                got.push(f[42]);
            }
            assert_eq!(got, vec![0, 1, 2, 3, 4]);
            assert!(dev.reset());
        });
    }

    #[test]
    fn attaches_to_a_persistent_tap_and_reports_busy_ones() {
        in_new_netns("attaches_to_a_persistent_tap_and_reports_busy_ones", || {
            // Create a persistent tap, as an operator would, and let go of it.
            {
                let t = tap::Tap::open("moat-pers0").unwrap();
                // SAFETY: TUNSETPERSIST takes its argument by value.
                let r = unsafe {
                    libc::ioctl(t.file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong)
                };
                assert_eq!(r, 0);
            }
            assert!(interface_exists("moat-pers0"));
            let dev = Net::new(NetConfig {
                tap_name: "moat-pers0".into(),
                mac: None,
            })
            .unwrap();
            let mac = dev.mac();
            assert_eq!(mac[0] & 0x03, 0x02, "unicast, locally administered");
            // The tap has one queue, held by `dev`.
            let err = Net::new(NetConfig {
                tap_name: "moat-pers0".into(),
                mac: None,
            })
            .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("open tap moat-pers0: TUNSETIFF: "),
                "{err}"
            );
            drop(dev);
            // A tap that lives only with its device.
            {
                let _d = Net::new(NetConfig {
                    tap_name: "moat-tmp0".into(),
                    mac: None,
                })
                .unwrap();
                assert!(interface_exists("moat-tmp0"));
            }
            assert!(!interface_exists("moat-tmp0"));
        });
    }
}
