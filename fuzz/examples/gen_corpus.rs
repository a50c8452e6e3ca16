//! Writes the seed corpora, `fuzz/corpus/<target>/<name>`, from the unit tests'
//! valid cases: requests, chains and documents each device or parser accepts.
//! Structured seeds are encoded with `moat_fuzz::seed::Enc` and checked by
//! decoding them again (a seed that decodes differently is a bug here).
//!
//! Usage: `gen-corpus <fuzz/corpus>`; existing files of the same name are
//! replaced, others (crash reproducers) are left alone.

use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use moat_fuzz::guest::{ChainSpec, RawDesc, INDIRECT, NEXT, WRITE};
use moat_fuzz::inputs::*;
use moat_fuzz::seed::{simple_chain, Enc};
use moat_fuzz::Bytes;

struct Corpus {
    root: PathBuf,
    count: usize,
}

impl Corpus {
    fn raw(&mut self, target: &str, name: &str, data: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        self.count += 1;
    }

    /// Writes a structured seed after checking it decodes to `value`.
    fn structured<'a, T: Arbitrary<'a> + Debug>(
        &mut self,
        target: &str,
        name: &str,
        value: &T,
        data: &'a [u8],
        prefix: &[u8],
    ) {
        let back: T =
            moat_fuzz::decode(data).unwrap_or_else(|| panic!("{target}/{name}: no decode"));
        assert_eq!(
            format!("{back:?}"),
            format!("{value:?}"),
            "{target}/{name}: seed decodes to something else"
        );
        let mut all = prefix.to_vec();
        all.extend_from_slice(data);
        self.raw(target, name, &all);
    }
}

fn b(s: &[u8]) -> Bytes {
    Bytes(s.to_vec())
}

// ---- queue_chain -----------------------------------------------------------

fn enc_raw(e: &mut Enc, d: &RawDesc) {
    e.u64(d.addr)
        .u32(d.len)
        .u16(d.flags)
        .u16(d.next)
        .bool(d.fold);
}

fn queue_chain(c: &mut Corpus) {
    use queue_chain::Input;
    let d = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags,
        next,
        fold: false,
    };
    let cases = [
        (
            "readable_then_writable",
            Input {
                size_log2: 4,
                descs: vec![
                    d(0x4000, 16, NEXT, 1),
                    d(0x5000, 512, NEXT | WRITE, 2),
                    d(0x6000, 1, WRITE, 0),
                ],
                heads: vec![0],
                avail_idx: None,
                writes: vec![],
                event_idx: false,
                used_len: 513,
            },
        ),
        (
            "indirect_table",
            Input {
                size_log2: 3,
                descs: vec![d(0x8000, 32, INDIRECT, 0)],
                heads: vec![0],
                avail_idx: None,
                writes: vec![(0x8000, {
                    let mut t = Vec::new();
                    for (addr, len, flags, next) in
                        [(0x9000u64, 64u32, NEXT, 1u16), (0xa000, 64, WRITE, 0)]
                    {
                        t.extend_from_slice(&addr.to_le_bytes());
                        t.extend_from_slice(&len.to_le_bytes());
                        t.extend_from_slice(&flags.to_le_bytes());
                        t.extend_from_slice(&next.to_le_bytes());
                    }
                    Bytes(t)
                })],
                event_idx: true,
                used_len: 64,
            },
        ),
        (
            "second_region",
            Input {
                size_log2: 2,
                descs: vec![d(0x2_0000, 4096, NEXT, 1), d(0x2_f000, 4096, WRITE, 0)],
                heads: vec![0, 0],
                avail_idx: Some(2),
                writes: vec![],
                event_idx: false,
                used_len: 0,
            },
        ),
    ];
    for (name, input) in &cases {
        let mut e = Enc::new();
        e.u8(input.size_log2);
        e.vec(&input.descs, enc_raw);
        e.vec(&input.heads, |e, &h| {
            e.u16(h);
        });
        e.option(input.avail_idx.as_ref(), |e, &v| {
            e.u16(v);
        });
        e.vec(&input.writes, |e, (a, bytes)| {
            e.u32(*a).bytes(&bytes.0);
        });
        e.bool(input.event_idx).u32(input.used_len);
        let data = e.finish();
        c.structured("queue_chain", name, input, &data, &[]);
    }
}

// ---- block_req ---------------------------------------------------------------

fn block_req(c: &mut Corpus) {
    use block_req::{Input, Kind, Range, Request, Sector};
    let chain = |readable: Vec<u16>, writable: Vec<u32>| ChainSpec::Good {
        readable,
        writable,
        indirect: false,
    };
    let req = |kind, sector, chain, data: &[u8], ranges| Request {
        chain,
        kind,
        ioprio: 0,
        sector: Sector::Near(sector),
        ranges,
        data: b(data),
        header_len: None,
    };
    let sector_data: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    let cases = vec![
        (
            "write_read_flush_id",
            Input {
                read_only: false,
                requests: vec![
                    req(Kind::Out, 3, chain(vec![16], vec![1]), &sector_data, vec![]),
                    req(Kind::In, 3, chain(vec![16], vec![512, 1]), b"", vec![]),
                    req(Kind::Flush, 0, chain(vec![16], vec![1]), b"", vec![]),
                    req(Kind::GetId, 0, chain(vec![16], vec![20, 1]), b"", vec![]),
                ],
            },
        ),
        (
            "discard_write_zeroes",
            Input {
                read_only: false,
                requests: vec![
                    req(
                        Kind::Discard,
                        0,
                        chain(vec![16, 16], vec![1]),
                        b"",
                        vec![Range {
                            sector: Sector::Near(8),
                            num_sectors: 8,
                            flags: 0,
                        }],
                    ),
                    req(
                        Kind::WriteZeroes,
                        0,
                        chain(vec![16, 16], vec![1]),
                        b"",
                        vec![Range {
                            sector: Sector::Near(16),
                            num_sectors: 4,
                            flags: 1,
                        }],
                    ),
                ],
            },
        ),
        (
            "read_only_split_read",
            Input {
                read_only: true,
                requests: vec![
                    req(
                        Kind::In,
                        63,
                        chain(vec![8, 8], vec![100, 412, 1]),
                        b"",
                        vec![],
                    ),
                    req(Kind::Out, 0, chain(vec![16], vec![1]), &sector_data, vec![]),
                ],
            },
        ),
    ];
    for (name, input) in &cases {
        let mut e = Enc::new();
        e.bool(input.read_only);
        e.vec(&input.requests, |e, r| {
            e.chain(&r.chain);
            match r.kind {
                Kind::In => e.variant(0, 7),
                Kind::Out => e.variant(1, 7),
                Kind::Flush => e.variant(2, 7),
                Kind::GetId => e.variant(3, 7),
                Kind::Discard => e.variant(4, 7),
                Kind::WriteZeroes => e.variant(5, 7),
                Kind::Other(t) => e.variant(6, 7).u32(t),
            };
            e.u32(r.ioprio);
            enc_sector(e, &r.sector);
            e.vec(&r.ranges, |e, rg| {
                enc_sector(e, &rg.sector);
                e.u32(rg.num_sectors).u32(rg.flags);
            });
            e.bytes(&r.data.0);
            e.option(r.header_len.as_ref(), |e, &v| {
                e.u8(v);
            });
        });
        let data = e.finish();
        c.structured("block_req", name, input, &data, &[]);
    }
}

fn enc_sector(e: &mut Enc, s: &block_req::Sector) {
    match *s {
        block_req::Sector::Near(n) => e.variant(0, 2).u8(n),
        block_req::Sector::Far(n) => e.variant(1, 2).u64(n),
    };
}

// ---- net_tx --------------------------------------------------------------------

fn eth_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn net_tx(c: &mut Corpus) {
    use net_tx::{Input, TxFrame};
    let mut with_hdr = vec![0u8; 12];
    with_hdr.extend_from_slice(&eth_frame(b"from the host"));
    let cases = vec![
        (
            "tx_and_rx",
            Input {
                mrg_rxbuf: false,
                tx: vec![
                    TxFrame {
                        chain: simple_chain(0),
                        hdr: [0; 12],
                        frame: Bytes(eth_frame(b"hello")),
                    },
                    TxFrame {
                        chain: ChainSpec::Good {
                            readable: vec![12, 14],
                            writable: vec![],
                            indirect: true,
                        },
                        hdr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                        frame: Bytes(eth_frame(&[0xab; 200])),
                    },
                ],
                rx_bufs: vec![simple_chain(1526), simple_chain(1526)],
                rx_frames: vec![Bytes(with_hdr.clone())],
            },
        ),
        (
            "mergeable_rx",
            Input {
                mrg_rxbuf: true,
                tx: vec![],
                rx_bufs: vec![simple_chain(40), simple_chain(40), simple_chain(40)],
                rx_frames: vec![Bytes(with_hdr)],
            },
        ),
    ];
    for (name, input) in &cases {
        let mut e = Enc::new();
        e.bool(input.mrg_rxbuf);
        e.vec(&input.tx, |e, f| {
            e.chain(&f.chain);
            for &x in &f.hdr {
                e.u8(x);
            }
            e.bytes(&f.frame.0);
        });
        e.vec(&input.rx_bufs, |e, ch| {
            e.chain(ch);
        });
        e.vec(&input.rx_frames, |e, f| {
            e.bytes(&f.0);
        });
        let data = e.finish();
        c.structured("net_tx", name, input, &data, &[]);
    }
}

// ---- vsock_tx ------------------------------------------------------------------

fn vsock_tx(c: &mut Corpus) {
    use vsock_tx::{Cid, HostAction, Input, Op, Packet, Port, Round};
    let pkt = |op, dst_port, src_port, payload: &[u8]| Packet {
        chain: simple_chain(0),
        src_cid: Cid::Guest,
        dst_cid: Cid::Host,
        src_port,
        dst_port,
        len: None,
        type_: None,
        op,
        flags: 0,
        buf_alloc: 256 << 10,
        fwd_cnt: 0,
        payload: b(payload),
    };
    let rx = || vec![simple_chain(4096), simple_chain(4096), simple_chain(4096)];
    let guest_connect = Input {
        rounds: vec![
            Round {
                host: vec![],
                rx_bufs: rx(),
                tx: vec![pkt(Op::Request, Port::Listening(false), 1234, b"")],
            },
            Round {
                host: vec![HostAction::Accept],
                rx_bufs: rx(),
                tx: vec![pkt(Op::Rw, Port::Listening(false), 1234, b"hello host")],
            },
            Round {
                host: vec![
                    HostAction::Read { conn: 0 },
                    HostAction::Write {
                        conn: 0,
                        data: b(b"hello guest"),
                    },
                ],
                rx_bufs: rx(),
                tx: vec![
                    pkt(Op::CreditUpdate, Port::Listening(false), 1234, b""),
                    pkt(Op::Shutdown, Port::Listening(false), 1234, b""),
                ],
            },
            Round {
                host: vec![HostAction::Close { conn: 0 }],
                rx_bufs: rx(),
                tx: vec![pkt(Op::Rst, Port::Listening(false), 1234, b"")],
            },
        ],
    };
    let host_connect = Input {
        rounds: vec![
            Round {
                host: vec![HostAction::Connect {
                    line: b(b"CONNECT 1024\n"),
                }],
                rx_bufs: rx(),
                tx: vec![],
            },
            Round {
                host: vec![],
                rx_bufs: rx(),
                tx: vec![pkt(Op::Response, Port::HostSide(0), 1024, b"")],
            },
            Round {
                host: vec![
                    HostAction::Write {
                        conn: 0,
                        data: b(b"ping"),
                    },
                    HostAction::ShutdownWrite { conn: 0 },
                ],
                rx_bufs: rx(),
                tx: vec![pkt(Op::Rw, Port::HostSide(0), 1024, b"pong")],
            },
        ],
    };
    let bad_line = Input {
        rounds: vec![Round {
            host: vec![HostAction::Connect {
                line: b(b"CONNECT 99999999999\n"),
            }],
            rx_bufs: rx(),
            tx: vec![pkt(Op::CreditRequest, Port::Other(7), 1, b"")],
        }],
    };
    for (name, input) in [
        ("guest_connect", guest_connect),
        ("host_connect", host_connect),
        ("bad_line", bad_line),
    ] {
        let mut e = Enc::new();
        e.vec(&input.rounds, |e, r| {
            e.vec(&r.host, |e, a| {
                match a {
                    HostAction::Connect { line } => e.variant(0, 6).bytes(&line.0),
                    HostAction::Accept => e.variant(1, 6),
                    HostAction::Write { conn, data } => e.variant(2, 6).u8(*conn).bytes(&data.0),
                    HostAction::Read { conn } => e.variant(3, 6).u8(*conn),
                    HostAction::ShutdownWrite { conn } => e.variant(4, 6).u8(*conn),
                    HostAction::Close { conn } => e.variant(5, 6).u8(*conn),
                };
            });
            e.vec(&r.rx_bufs, |e, ch| {
                e.chain(ch);
            });
            e.vec(&r.tx, |e, p| {
                e.chain(&p.chain);
                enc_cid(e, &p.src_cid);
                enc_cid(e, &p.dst_cid);
                e.u32(p.src_port);
                match p.dst_port {
                    Port::Listening(x) => e.variant(0, 3).bool(x),
                    Port::HostSide(n) => e.variant(1, 3).u8(n),
                    Port::Other(n) => e.variant(2, 3).u32(n),
                };
                e.option(p.len.as_ref(), |e, &v| {
                    e.u32(v);
                });
                e.option(p.type_.as_ref(), |e, &v| {
                    e.u16(v);
                });
                match p.op {
                    Op::Request => e.variant(0, 8),
                    Op::Response => e.variant(1, 8),
                    Op::Rst => e.variant(2, 8),
                    Op::Shutdown => e.variant(3, 8),
                    Op::Rw => e.variant(4, 8),
                    Op::CreditUpdate => e.variant(5, 8),
                    Op::CreditRequest => e.variant(6, 8),
                    Op::Other(o) => e.variant(7, 8).u16(o),
                };
                e.u32(p.flags)
                    .u32(p.buf_alloc)
                    .u32(p.fwd_cnt)
                    .bytes(&p.payload.0);
            });
        });
        let data = e.finish();
        c.structured("vsock_tx", name, &input, &data, &[]);
    }
}

fn enc_cid(e: &mut Enc, cid: &vsock_tx::Cid) {
    match *cid {
        vsock_tx::Cid::Guest => e.variant(0, 3),
        vsock_tx::Cid::Host => e.variant(1, 3),
        vsock_tx::Cid::Other(c) => e.variant(2, 3).u64(c),
    };
}

// ---- fs_fuse -------------------------------------------------------------------

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_READLINK: u32 = 5;
const FUSE_SYMLINK: u32 = 6;
const FUSE_MKDIR: u32 = 9;
const FUSE_UNLINK: u32 = 10;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_RELEASE: u32 = 18;
const FUSE_GETXATTR: u32 = 22;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_CREATE: u32 = 35;
const FUSE_RENAME2: u32 = 45;
const FUSE_FORGET: u32 = 2;

fn cname(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn read_in(offset: u64, size: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0u64.to_le_bytes()); // fh, patched from a reply
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&[0u8; 20]);
    v
}

fn fs_fuse(c: &mut Corpus) {
    use fs_fuse::{Input, Layout, Node, Request};
    let req = |opcode, node, fh: Option<u8>, body: Vec<u8>, reply: u32| Request {
        hiprio: false,
        opcode,
        node,
        uid: 0,
        gid: 0,
        fh,
        body: Bytes(body),
        len: None,
        chain: simple_chain(reply),
    };
    let open_in = |flags: u32| {
        let mut v = flags.to_le_bytes().to_vec();
        v.extend_from_slice(&[0u8; 4]);
        v
    };
    let read_path = vec![
        req(FUSE_GETATTR, Node::Root, None, vec![0u8; 16], 256),
        req(FUSE_LOOKUP, Node::Root, None, cname("file"), 256),
        req(FUSE_OPEN, Node::Learned(0), None, open_in(0), 64),
        req(FUSE_READ, Node::Learned(0), Some(0), read_in(0, 4096), 4096),
        req(FUSE_RELEASE, Node::Learned(0), Some(0), vec![0u8; 24], 64),
        req(FUSE_LOOKUP, Node::Root, None, cname("up"), 256),
        req(FUSE_READLINK, Node::Learned(1), None, vec![], 256),
        req(FUSE_OPENDIR, Node::Root, None, open_in(0), 64),
        req(FUSE_READDIR, Node::Root, Some(1), read_in(0, 4096), 4096),
        req(
            FUSE_GETXATTR,
            Node::Learned(0),
            None,
            {
                let mut v = 64u32.to_le_bytes().to_vec();
                v.extend_from_slice(&[0u8; 4]);
                v.extend_from_slice(&cname("user.x"));
                v
            },
            256,
        ),
    ];
    let mut create = 0o644u32.to_le_bytes().to_vec();
    let create_in = |flags: u32| {
        let mut v = flags.to_le_bytes().to_vec();
        v.extend_from_slice(&0o644u32.to_le_bytes());
        v.extend_from_slice(&0o022u32.to_le_bytes());
        v.extend_from_slice(&[0u8; 4]);
        v.extend_from_slice(&cname("new"));
        v
    };
    create.clear();
    let mut write = Vec::new();
    write.extend_from_slice(&0u64.to_le_bytes());
    write.extend_from_slice(&0u64.to_le_bytes());
    write.extend_from_slice(&5u32.to_le_bytes());
    write.extend_from_slice(&[0u8; 20]);
    write.extend_from_slice(b"hello");
    let mut mkdir = 0o755u32.to_le_bytes().to_vec();
    mkdir.extend_from_slice(&0o022u32.to_le_bytes());
    mkdir.extend_from_slice(&cname("newdir"));
    let mut symlink = cname("sl");
    symlink.extend_from_slice(&cname("../canary"));
    let mut rename = 1u64.to_le_bytes().to_vec();
    rename.extend_from_slice(&[0u8; 8]);
    rename.extend_from_slice(&cname("new"));
    rename.extend_from_slice(&cname("renamed"));
    let mut forget = 1u64.to_le_bytes().to_vec();
    forget.truncate(8);
    let write_path = vec![
        req(FUSE_CREATE, Node::Root, None, create_in(0o2 | 0o100), 512),
        req(FUSE_WRITE, Node::Learned(0), Some(0), write, 64),
        req(FUSE_RELEASE, Node::Learned(0), Some(0), vec![0u8; 24], 64),
        req(FUSE_MKDIR, Node::Root, None, mkdir, 256),
        req(FUSE_SYMLINK, Node::Root, None, symlink, 256),
        req(FUSE_RENAME2, Node::Root, None, rename, 64),
        req(FUSE_UNLINK, Node::Root, None, cname("renamed"), 64),
        Request {
            hiprio: true,
            ..req(FUSE_FORGET, Node::Learned(0), None, forget, 0)
        },
    ];
    let mut layers_path = vec![req(FUSE_LOOKUP, Node::Root, None, cname("upper"), 256)];
    layers_path.push(req(FUSE_LOOKUP, Node::Root, None, cname("layers"), 256));
    layers_path.push(req(FUSE_LOOKUP, Node::Learned(1), None, cname("0"), 256));
    layers_path.push(req(FUSE_LOOKUP, Node::Learned(2), None, cname("file"), 256));
    layers_path.push(req(FUSE_OPEN, Node::Learned(3), None, open_in(2), 64));
    for (name, input) in [
        (
            "read_only_share",
            Input {
                layout: Layout::ReadOnly,
                init: true,
                requests: read_path,
            },
        ),
        (
            "read_write_share",
            Input {
                layout: Layout::ReadWrite,
                init: true,
                requests: write_path,
            },
        ),
        (
            "layers_and_upper",
            Input {
                layout: Layout::Layers,
                init: true,
                requests: layers_path,
            },
        ),
    ] {
        let mut e = Enc::new();
        match input.layout {
            Layout::ReadOnly => e.variant(0, 3),
            Layout::ReadWrite => e.variant(1, 3),
            Layout::Layers => e.variant(2, 3),
        };
        e.bool(input.init);
        e.vec(&input.requests, |e, r| {
            e.bool(r.hiprio).u32(r.opcode);
            match r.node {
                Node::Root => e.variant(0, 3),
                Node::Learned(i) => e.variant(1, 3).u8(i),
                Node::Raw(n) => e.variant(2, 3).u64(n),
            };
            e.u32(r.uid).u32(r.gid);
            e.option(r.fh.as_ref(), |e, &v| {
                e.u8(v);
            });
            e.bytes(&r.body.0);
            e.option(r.len.as_ref(), |e, &v| {
                e.u32(v);
            });
            e.chain(&r.chain);
        });
        let data = e.finish();
        c.structured("fs_fuse", name, &input, &data, &[]);
    }
}

// ---- virtio_mmio ----------------------------------------------------------------

fn virtio_mmio(c: &mut Corpus) {
    use virtio_mmio::{Device, Input, Op};
    let init = |chain: ChainSpec, request: &[u8]| {
        vec![
            Op::Read { offset: 0, size: 3 },
            Op::Read { offset: 4, size: 3 },
            Op::Read { offset: 8, size: 3 },
            Op::Negotiate {
                features: (1 << 32) | 1,
            },
            Op::SetupQueue {
                index: 0,
                size: 4,
                rings: None,
                ready: true,
            },
            Op::SetupQueue {
                index: 1,
                size: 3,
                rings: None,
                ready: true,
            },
            Op::Chain {
                queue: 0,
                chain,
                request: b(request),
            },
            Op::DriverOk,
            Op::Notify { queue: 0 },
            Op::Read {
                offset: 0x60,
                size: 3,
            },
            Op::Write {
                offset: 0x64,
                size: 3,
                value: 1,
            },
            Op::Read {
                offset: 0x100,
                size: 0,
            },
            Op::Write {
                offset: 0x100,
                size: 1,
                value: 0xffff,
            },
            Op::Read {
                offset: 0xfc,
                size: 3,
            },
            Op::Reset,
        ]
    };
    let mut blk_read = Vec::new();
    blk_read.extend_from_slice(&0u32.to_le_bytes());
    blk_read.extend_from_slice(&0u32.to_le_bytes());
    blk_read.extend_from_slice(&1u64.to_le_bytes());
    let cases = [
        (
            "fake_full_init",
            Input {
                device: Device::Fake {
                    can_reset: true,
                    fail_activate: false,
                },
                ops: init(simple_chain(64), b"request"),
            },
        ),
        (
            "rng_full_init",
            Input {
                device: Device::Rng,
                ops: init(simple_chain(64), b""),
            },
        ),
        (
            "block_full_init",
            Input {
                device: Device::Block { read_only: true },
                ops: init(
                    ChainSpec::Good {
                        readable: vec![16],
                        writable: vec![512, 1],
                        indirect: false,
                    },
                    &blk_read,
                ),
            },
        ),
    ];
    for (name, input) in &cases {
        let mut e = Enc::new();
        match input.device {
            Device::Fake {
                can_reset,
                fail_activate,
            } => e.variant(0, 3).bool(can_reset).bool(fail_activate),
            Device::Rng => e.variant(1, 3),
            Device::Block { read_only } => e.variant(2, 3).bool(read_only),
        };
        e.vec(&input.ops, |e, op| {
            match op {
                Op::Read { offset, size } => e.variant(0, 8).u16(*offset).u8(*size),
                Op::Write {
                    offset,
                    size,
                    value,
                } => e.variant(1, 8).u16(*offset).u8(*size).u64(*value),
                Op::Negotiate { features } => e.variant(2, 8).u64(*features),
                Op::SetupQueue {
                    index,
                    size,
                    rings,
                    ready,
                } => {
                    e.variant(3, 8).u8(*index).u16(*size);
                    e.option(rings.as_ref(), |e, &(a, b, c)| {
                        e.u64(a).u64(b).u64(c);
                    });
                    e.bool(*ready)
                }
                Op::DriverOk => e.variant(4, 8),
                Op::Notify { queue } => e.variant(5, 8).u32(*queue),
                Op::Chain {
                    queue,
                    chain,
                    request,
                } => e.variant(6, 8).u8(*queue).chain(chain).bytes(&request.0),
                Op::Reset => e.variant(7, 8),
            };
        });
        let data = e.finish();
        c.structured("virtio_mmio", name, input, &data, &[]);
    }
}

// ---- agent_frame ------------------------------------------------------------------

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

fn agent_frame(c: &mut Corpus) {
    use moat_agent::protocol::*;
    let hello = serde_json::to_vec(&Hello {
        version: PROTOCOL_VERSION,
        channel: Channel::Control,
    })
    .unwrap();
    let spec = moat_agent::spec::docker_default(&moat_agent::spec::SpecOptions::new([
        "sh", "-c", "echo hi",
    ]))
    .unwrap();
    let requests = vec![
        Request::Ping,
        Request::Configure(Configure {
            oneshot: Some(true),
            shares: vec![Share {
                tag: "layers".into(),
                path: "/run/moat/layers".into(),
            }],
        }),
        Request::Create(Box::new(CreateRequest {
            container: "c1".into(),
            spec,
            rootfs: Some(RootfsLayers {
                layers: vec!["0".into(), "1".into()],
                upper: "upper".into(),
                work: "work".into(),
            }),
            etc: Some(EtcFiles {
                hostname: "c1".into(),
                ip: Some("10.0.0.2".into()),
                extra_hosts: vec![HostEntry {
                    ip: "10.0.0.1".into(),
                    names: vec!["host".into()],
                }],
                dns: DnsConfig {
                    nameservers: vec!["10.0.0.1".into()],
                    search: vec![],
                    options: vec![],
                },
            }),
            stdio: StdioConfig {
                stdin: false,
                stdout: true,
                stderr: true,
            },
        })),
        Request::Start {
            container: "c1".into(),
        },
        Request::Signal(SignalRequest {
            container: "c1".into(),
            exec: Some("e1".into()),
            signal: 15,
        }),
        Request::Wait(ProcessRef {
            container: "c1".into(),
            exec: None,
        }),
        Request::Stats {
            container: "c1".into(),
        },
        Request::Delete {
            container: "c1".into(),
            force: true,
        },
        Request::Shutdown,
    ];
    let mut control = vec![0u8];
    frame(&mut control, &hello);
    for (i, r) in requests.into_iter().enumerate() {
        let f = RequestFrame {
            id: i as u64 + 1,
            request: r,
        };
        frame(&mut control, &serde_json::to_vec(&f).unwrap());
    }
    frame(
        &mut control,
        br#"{"id":42,"request":{"type":"format_disk"}}"#,
    );
    c.raw("agent_frame", "control", &control);

    let mut stream = vec![0u8];
    frame(
        &mut stream,
        br#"{"version":1,"channel":{"kind":"stream","container":"c1","exec":"e1","stream":"stderr"}}"#,
    );
    c.raw("agent_frame", "stream_hello", &stream);

    let mut host = vec![1u8];
    frame(&mut host, br#"{"version":1,"agent":"0.1.0"}"#);
    frame(
        &mut host,
        br#"{"id":3,"ok":{"type":"exited","code":137,"signal":9}}"#,
    );
    frame(
        &mut host,
        br#"{"id":4,"error":{"code":"not_found","message":"container c9: not found"}}"#,
    );
    frame(
        &mut host,
        br#"{"id":1,"ok":{"type":"pong","agent":"0.1.0","version":1}}"#,
    );
    c.raw("agent_frame", "host_side", &host);

    let mut data = vec![2u8];
    frame(&mut data, b"hello stdout\n");
    frame(&mut data, b"");
    c.raw("agent_frame", "data", &data);
}

// ---- layer_unpack ------------------------------------------------------------------

fn tar_stream(gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |kind: tar::EntryType, path: &str, link: Option<&str>, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add(tar::EntryType::Directory, "etc", None, b"", 0o755);
    add(
        tar::EntryType::Regular,
        "etc/hostname",
        None,
        b"moat\n",
        0o644,
    );
    add(
        tar::EntryType::Symlink,
        "etc/localtime",
        Some("/usr/share/zoneinfo/UTC"),
        b"",
        0o777,
    );
    add(
        tar::EntryType::Link,
        "etc/hostname2",
        Some("etc/hostname"),
        b"",
        0o644,
    );
    add(tar::EntryType::Regular, "etc/.wh.motd", None, b"", 0o644);
    add(tar::EntryType::Directory, "var", None, b"", 0o755);
    add(
        tar::EntryType::Regular,
        "var/.wh..wh..opq",
        None,
        b"",
        0o644,
    );
    add(tar::EntryType::Fifo, "var/fifo", None, b"", 0o600);
    let raw = b.into_inner().unwrap();
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    } else {
        raw
    }
}

fn layer_unpack(c: &mut Corpus) {
    use layer_unpack::{Entry, Kind, Layer, Name};
    c.raw(
        "layer_unpack",
        "raw_plain",
        &[&[1u8][..], &tar_stream(false)].concat(),
    );
    c.raw(
        "layer_unpack",
        "raw_gzip",
        &[&[1u8][..], &tar_stream(true)].concat(),
    );
    let entry = |kind, name: u8, link: u8, data: &[u8]| Entry {
        kind,
        name: Name::Known(name),
        link: Name::Known(link),
        mode: 0o644,
        uid: 0,
        gid: 0,
        data: b(data),
        size: None,
        pax: vec![],
        gnu_long_name: false,
    };
    let cases = [
        (
            "structured_tree",
            Layer {
                gzip: false,
                skip_devices: false,
                entries: vec![
                    entry(Kind::Dir, 2, 0, b""),
                    entry(Kind::File, 3, 0, b"x"),
                    entry(Kind::File, 0, 0, b"a"),
                    entry(Kind::Hardlink, 1, 0, b""),
                    entry(Kind::Symlink, 10, 2, b""),
                    entry(Kind::File, 6, 0, b""),
                    entry(Kind::Fifo, 20, 0, b""),
                ],
                truncate: None,
            },
        ),
        (
            "structured_hostile",
            Layer {
                gzip: true,
                skip_devices: true,
                entries: vec![
                    entry(Kind::Symlink, 10, 19, b""),
                    entry(Kind::File, 11, 0, b"through a symlink"),
                    entry(Kind::Char { major: 1, minor: 3 }, 0, 0, b""),
                    Entry {
                        pax: vec![(b(b"path"), b(b"../canary"))],
                        ..entry(Kind::File, 0, 0, b"pax escape")
                    },
                    Entry {
                        gnu_long_name: true,
                        ..entry(Kind::File, 18, 0, b"absolute")
                    },
                    entry(Kind::Hardlink, 1, 16, b""),
                ],
                truncate: None,
            },
        ),
    ];
    for (name, layer) in &cases {
        let mut e = Enc::new();
        e.bool(layer.gzip).bool(layer.skip_devices);
        e.vec(&layer.entries, |e, en| {
            match en.kind {
                Kind::File => e.variant(0, 8),
                Kind::Dir => e.variant(1, 8),
                Kind::Symlink => e.variant(2, 8),
                Kind::Hardlink => e.variant(3, 8),
                Kind::Char { major, minor } => e.variant(4, 8).u8(major).u8(minor),
                Kind::Block => e.variant(5, 8),
                Kind::Fifo => e.variant(6, 8),
                Kind::Other(k) => e.variant(7, 8).u8(k),
            };
            for n in [&en.name, &en.link] {
                match n {
                    Name::Known(i) => e.variant(0, 2).u8(*i),
                    Name::Raw(bytes) => e.variant(1, 2).bytes(&bytes.0),
                };
            }
            e.u32(en.mode).u16(en.uid).u16(en.gid).bytes(&en.data.0);
            e.option(en.size.as_ref(), |e, &v| {
                e.u32(v);
            });
            e.vec(&en.pax, |e, (k, v)| {
                e.bytes(&k.0).bytes(&v.0);
            });
            e.bool(en.gnu_long_name);
        });
        e.option(layer.truncate.as_ref(), |e, &v| {
            e.u16(v);
        });
        let data = e.finish();
        c.structured("layer_unpack", name, layer, &data, &[0]);
    }
}

// ---- manifest ----------------------------------------------------------------------------

fn manifest(c: &mut Corpus) {
    let d = |s: &str| moat_images::Digest::of_bytes(s.as_bytes()).to_string();
    let docs = [
        (
            "oci_manifest",
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":5}}],"annotations":{{"a":"b"}}}}"#,
                d("c"),
                d("l")
            ),
        ),
        (
            "docker_manifest",
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":5}}]}}"#,
                d("c"),
                d("l")
            ),
        ),
        (
            "index",
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
                d("a"),
                d("b"),
                d("c")
            ),
        ),
        (
            "config",
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"Cmd":["sh"],"Healthcheck":{{"Test":["NONE"]}}}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created_by":"x","empty_layer":true}}],"container_config":{{}}}}"#,
                d("l")
            ),
        ),
        (
            "reference",
            "registry.example.com:5000/library/alpine:3.19".to_string(),
        ),
        ("reference_digest", format!("alpine@{}", d("x"))),
        ("platform", "linux/arm64/v8".to_string()),
    ];
    for (name, doc) in docs {
        c.raw("manifest", name, &[&[0u8][..], doc.as_bytes()].concat());
    }
}

// ---- vmm_config -----------------------------------------------------------------------------

fn vmm_config(c: &mut Corpus) {
    let json = r#"{
  "vcpus": 2,
  "memory_mib": 256,
  "kernel": "/var/lib/moat/vmlinux",
  "initrd": "/var/lib/moat/initrd.cpio",
  "cmdline": "console=ttyS0 reboot=k panic=-1 quiet",
  "boot_protocol": "auto",
  "console": { "output": { "file": "/run/moat/c1/console.log" }, "input": false },
  "vsock": { "guest_cid": 3, "uds_path": "/run/moat/c1/vsock.sock" },
  "fs": [ { "tag": "rootfs", "path": "/var/lib/moat/layers/ab12", "read_only": true },
          { "tag": "layers", "mounts": [ { "guest_path": "/0", "host_dir": "/l/0", "read_only": true },
                                         { "guest_path": "/upper", "host_dir": "/c1/upper" } ] } ],
  "net": [ { "tap": "moat0", "mac": "02:00:00:00:00:01" } ],
  "disks": [ { "path": "/c1/scratch.img", "read_only": false, "id": "scratch" } ],
  "rng": {}
}"#;
    c.raw(
        "vmm_config",
        "full_example",
        &[&[0u8][..], json.as_bytes()].concat(),
    );
    c.raw("vmm_config", "minimal", b"\x00{\"kernel\":\"/vmlinux\"}");
    let flags = [
        "--kernel",
        "/vmlinux",
        "--memory-mib",
        "64",
        "--cmdline",
        "console=ttyS0 -- init",
        "--fs",
        "tag=rootfs,path=/tmp,ro",
        "--tap",
        "moat0,mac=02:00:00:00:00:01",
        "--disk",
        "path=/tmp/d.img,ro,id=d",
        "--rng",
        "--vsock-uds",
        "/tmp/v.sock",
        "--vsock-cid",
        "3",
    ]
    .join("\0");
    c.raw(
        "vmm_config",
        "flags",
        &[&[1u8][..], flags.as_bytes()].concat(),
    );
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut c = Corpus { root, count: 0 };
    queue_chain(&mut c);
    block_req(&mut c);
    net_tx(&mut c);
    vsock_tx(&mut c);
    fs_fuse(&mut c);
    virtio_mmio(&mut c);
    agent_frame(&mut c);
    layer_unpack(&mut c);
    manifest(&mut c);
    vmm_config(&mut c);
    println!("gen-corpus: {} seeds in {}", c.count, c.root.display());
}
