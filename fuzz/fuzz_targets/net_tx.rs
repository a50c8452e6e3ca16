//! virtio-net: arbitrary tx chains (virtio-net header + frame, any layout) and
//! rx buffers with frames arriving from the "tap" (one end of a datagram socket
//! pair, as in the unit tests: no tap device needed), through the device's
//! activation checks and one tx and one rx pass. Checks what reaches the host:
//! every frame carries a zeroed header (no offload was negotiated, so the
//! guest's header flags must never reach the host kernel) and is within size.
#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::guest::GuestQueue;
use moat_fuzz::inputs::net_tx::*;
use moat_vmm::devices::virtio::net::{Net, MAX_FRAME_LEN, QUEUE_SIZE};
use moat_vmm::devices::virtio::queue_util::testing::interrupt;
use moat_vmm::devices::virtio::{ActivateContext, GuestMemory, VIRTIO_F_VERSION_1};
use vm_memory::GuestAddress;

const MEM: u64 = 8 << 20;
const VNET_HDR_LEN: usize = 12;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    let (dev_end, peer) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let dev = Net::with_file(File::from(OwnedFd::from(dev_end)), [2, 0, 0, 0, 0, 2]);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut rx = GuestQueue::new(&mem, MEM, 0, QUEUE_SIZE, 0x2_0000..0x40_0000);
    let mut tx = GuestQueue::new(&mem, MEM, 0x8000, QUEUE_SIZE, 0x40_0000..MEM);
    for b in input.rx_bufs.iter().take(64) {
        rx.push(b, &[]);
    }
    for f in input.tx.iter().take(64) {
        let mut bytes = f.hdr.to_vec();
        bytes.extend_from_slice(&f.frame.0);
        tx.push(&f.chain, &bytes);
    }
    for f in input.rx_frames.iter().take(16) {
        let _ = peer.send(&f.0);
    }
    let features = if input.mrg_rxbuf {
        VIRTIO_NET_F_MRG_RXBUF
    } else {
        0
    };
    let ctx = ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1 | features,
        queues: vec![rx.active_queue(), tx.active_queue()],
        interrupt: interrupt(),
    };
    dev.serve_once(ctx).unwrap();
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN + 64];
    while let Ok(n) = peer.recv(&mut buf) {
        assert!(
            n >= VNET_HDR_LEN + 14,
            "short frame of {n} bytes sent to the tap"
        );
        assert!(
            n <= VNET_HDR_LEN + MAX_FRAME_LEN,
            "oversized frame sent to the tap"
        );
        assert!(
            buf[..VNET_HDR_LEN].iter().all(|&b| b == 0),
            "guest header reached the tap: {:?}",
            &buf[..VNET_HDR_LEN]
        );
    }
});
