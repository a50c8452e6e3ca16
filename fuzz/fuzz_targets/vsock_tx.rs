//! virtio-vsock: arbitrary packets on the tx queue (any header field, any
//! descriptor layout), rx buffers, and a real host side in a temp dir: Unix
//! listeners for guest-initiated connections (ports 1024 and 5000) and host
//! clients that connect to the device's socket with arbitrary `CONNECT` lines,
//! write, shut down and close. Runs the device's activation checks and up to 10
//! worker rounds, then checks every rx packet the device wrote is addressed
//! to this guest, from the host (or, for a RST refusing a packet, from the CID
//! the guest sent it to), and fits its buffer.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::guest::{ChainSpec, GuestQueue};
use moat_fuzz::inputs::vsock_tx::*;
use moat_vmm::devices::virtio::queue_util::testing::interrupt;
use moat_vmm::devices::virtio::vsock::{Vsock, VsockConfig, QUEUE_SIZE};
use moat_vmm::devices::virtio::{ActivateContext, GuestMemory, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes as _, GuestAddress};

const MEM: u64 = 8 << 20;
const GUEST_CID: u64 = 3;
const HDR: usize = 44;
const LISTEN_PORTS: [u32; 2] = [1024, 5000];

fn cid(c: &Cid) -> u64 {
    match *c {
        Cid::Guest => GUEST_CID,
        Cid::Host => 2,
        Cid::Other(c) => c,
    }
}

fn encode(p: &Packet) -> Vec<u8> {
    let op = match p.op {
        Op::Request => 1,
        Op::Response => 2,
        Op::Rst => 3,
        Op::Shutdown => 4,
        Op::Rw => 5,
        Op::CreditUpdate => 6,
        Op::CreditRequest => 7,
        Op::Other(o) => o,
    };
    let dst_port = match p.dst_port {
        Port::Listening(b) => LISTEN_PORTS[usize::from(b)],
        Port::HostSide(n) => (1 << 30) + u32::from(n),
        Port::Other(p) => p,
    };
    let mut out = Vec::with_capacity(HDR + p.payload.0.len());
    out.extend_from_slice(&cid(&p.src_cid).to_le_bytes());
    out.extend_from_slice(&cid(&p.dst_cid).to_le_bytes());
    out.extend_from_slice(&p.src_port.to_le_bytes());
    out.extend_from_slice(&dst_port.to_le_bytes());
    let len = p.len.unwrap_or(p.payload.0.len() as u32);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&p.type_.unwrap_or(1).to_le_bytes());
    out.extend_from_slice(&u16::to_le_bytes(op));
    out.extend_from_slice(&p.flags.to_le_bytes());
    out.extend_from_slice(&p.buf_alloc.to_le_bytes());
    out.extend_from_slice(&p.fwd_cnt.to_le_bytes());
    out.extend_from_slice(&p.payload.0);
    out
}

/// The host side of one run.
struct Host {
    uds: PathBuf,
    listeners: Vec<UnixListener>,
    conns: Vec<UnixStream>,
}

impl Host {
    fn act(&mut self, a: &HostAction) {
        let pick = |conns: &mut Vec<UnixStream>, n: u8| -> Option<usize> {
            (!conns.is_empty()).then(|| usize::from(n) % conns.len())
        };
        match a {
            HostAction::Connect { line } => {
                if self.conns.len() >= 16 {
                    return;
                }
                if let Ok(mut s) = UnixStream::connect(&self.uds) {
                    s.set_nonblocking(true).unwrap();
                    let _ = s.write(&line.0);
                    self.conns.push(s);
                }
            }
            HostAction::Accept => {
                for l in &self.listeners {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        self.conns.push(s);
                    }
                }
            }
            HostAction::Write { conn, data } => {
                if let Some(i) = pick(&mut self.conns, *conn) {
                    let _ = self.conns[i].write(&data.0);
                }
            }
            HostAction::Read { conn } => {
                if let Some(i) = pick(&mut self.conns, *conn) {
                    let mut buf = [0u8; 4096];
                    let _ = self.conns[i].read(&mut buf);
                }
            }
            HostAction::ShutdownWrite { conn } => {
                if let Some(i) = pick(&mut self.conns, *conn) {
                    let _ = self.conns[i].shutdown(Shutdown::Write);
                }
            }
            HostAction::Close { conn } => {
                if let Some(i) = pick(&mut self.conns, *conn) {
                    self.conns.swap_remove(i);
                }
            }
        }
    }
}

thread_local! {
    static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    let rounds: Vec<&Round> = input.rounds.iter().take(8).collect();
    let dir = DIR.with(|d| d.path().to_path_buf());
    let uds = dir.join("v.sock");
    let dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    })
    .unwrap();
    let mut host = Host {
        listeners: LISTEN_PORTS
            .iter()
            .map(|p| {
                let path = dir.join(format!("v.sock_{p}"));
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect(),
        uds,
        conns: Vec::new(),
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut rx = GuestQueue::new(&mem, MEM, 0, QUEUE_SIZE, 0x2_0000..0x40_0000);
    let mut tx = GuestQueue::new(&mem, MEM, 0x8000, QUEUE_SIZE, 0x40_0000..MEM);
    let ev = GuestQueue::new(&mem, MEM, 0x1_0000, QUEUE_SIZE, 0x1_8000..0x2_0000);
    // rx heads with a buffer of at least one header, to read back afterwards,
    // and how often each head was used for a buffer (only heads used once are
    // checked; raw rx chains rewrite slots unseen, so they turn the check off).
    let mut rx_bufs: Vec<(Option<u64>, u32)> = vec![(None, 0); usize::from(QUEUE_SIZE)];
    let mut raw_rx = false;

    let mut load = |i: usize, host: &mut Host, rx: &mut GuestQueue<'_>, tx: &mut GuestQueue<'_>| {
        let r = rounds[i];
        for a in r.host.iter().take(16) {
            host.act(a);
        }
        for b in r.rx_bufs.iter().take(32) {
            raw_rx |= matches!(b, ChainSpec::Raw { .. });
            let Some((head, bufs)) = rx.push(b, &[]) else {
                break;
            };
            let first = bufs.first().filter(|(_, len)| *len as usize >= HDR);
            if let Some(slot) = rx_bufs.get_mut(usize::from(head)) {
                *slot = (first.map(|&(addr, _)| addr), slot.1 + 1);
            }
        }
        for p in r.tx.iter().take(32) {
            tx.push(&p.chain, &encode(p));
        }
    };
    if !rounds.is_empty() {
        load(0, &mut host, &mut rx, &mut tx);
    }
    let ctx = ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues: vec![rx.active_queue(), tx.active_queue(), ev.active_queue()],
        interrupt: interrupt(),
    };
    dev.serve_rounds(ctx, |i| {
        let next = i + 1;
        if next < rounds.len() {
            load(next, &mut host, &mut rx, &mut tx);
        }
        // Two rounds more than the input has, for the host side to settle.
        next < rounds.len() + 2
    })
    .unwrap();

    let used = if raw_rx { 0 } else { rx.drv.used_idx() };
    for i in 0..used.min(QUEUE_SIZE) {
        let (head, len) = rx.drv.used(i);
        let Some(&(Some(addr), 1)) = rx_bufs.get(head as usize) else {
            continue;
        };
        if (len as usize) < HDR {
            continue;
        }
        let mut hdr = [0u8; HDR];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let src = u64::from_le_bytes(hdr[0..8].try_into().unwrap());
        let dst = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        let plen = u32::from_le_bytes(hdr[24..28].try_into().unwrap());
        let op = u16::from_le_bytes(hdr[30..32].try_into().unwrap());
        // A RST answering a guest packet to another CID comes from that CID,
        // so the guest's connect fails at once; everything else is the host's.
        assert!(src == 2 || op == 3, "rx packet not from the host: {hdr:?}");
        assert_eq!(dst, GUEST_CID, "rx packet not to this guest: {hdr:?}");
        assert!(
            HDR as u64 + u64::from(plen) <= u64::from(len),
            "rx len {len} < header + {plen}"
        );
    }
});
