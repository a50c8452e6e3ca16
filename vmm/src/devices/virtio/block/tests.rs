use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::worker::{DiscardRange, RequestHeader};
use super::*;
use crate::devices::virtio::queue_util::testing::*;
use crate::devices::virtio::{ActiveQueue, GuestMemory, Interrupt};

const MEM: usize = 4 << 20;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x1f000;
const DISK_SECTORS: u64 = 2048; // 1 MiB

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Status byte value before the device answers.
const UNTOUCHED: u8 = 0xee;

fn disk_file(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    f
}

fn config(f: &TempFile, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: f.as_path().to_path_buf(),
        read_only,
        id: Some("moat-test-disk".to_string()),
    }
}

fn ctx(mem: &GuestMemory, queues: Vec<ActiveQueue>, irq: &Interrupt) -> ActivateContext {
    ActivateContext {
        mem: mem.clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues,
        interrupt: irq.clone(),
    }
}

fn start(dev: &mut Block, mem: &GuestMemory, drv: &Driver<'_>) -> Interrupt {
    let irq = interrupt();
    dev.activate(ctx(mem, vec![drv.active_queue()], &irq))
        .unwrap();
    irq
}

fn header(drv: &Driver<'_>, type_: u32, sector: u64) {
    let h = RequestHeader {
        type_: type_.into(),
        ioprio: 0.into(),
        sector: sector.into(),
    };
    drv.write(HDR, h.as_slice());
}

/// Publishes `descs`, kicks, waits for the device; returns (used len, status).
fn run(drv: &mut Driver<'_>, descs: &[Desc]) -> (u32, u8) {
    drv.write(STATUS, &[UNTOUCHED]);
    let n = drv.used_idx().wrapping_add(1);
    let head = drv.add(descs);
    assert!(drv.kick_and_wait(n), "request answered");
    let (id, len) = drv.used(n - 1);
    assert_eq!(id, u32::from(head));
    (len, drv.read(STATUS, 1)[0])
}

/// A request with the usual layout: header, data, status.
fn request(drv: &mut Driver<'_>, type_: u32, sector: u64, data: Option<Desc>) -> (u32, u8) {
    header(drv, type_, sector);
    let mut descs = vec![r(HDR, 16)];
    descs.extend(data);
    descs.push(w(STATUS, 1));
    run(drv, &descs)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn config_space_layout_matches_the_spec() {
    use std::mem::{offset_of, size_of};
    type Spec = virtio_bindings::virtio_blk::virtio_blk_config;
    assert_eq!(size_of::<BlockConfigSpace>(), 64);
    macro_rules! same {
        ($ours:ident, $spec:ident) => {
            assert_eq!(
                offset_of!(BlockConfigSpace, $ours),
                offset_of!(Spec, $spec),
                stringify!($ours)
            );
        };
    }
    same!(capacity, capacity);
    same!(size_max, size_max);
    same!(seg_max, seg_max);
    same!(cylinders, geometry);
    same!(blk_size, blk_size);
    same!(physical_block_exp, physical_block_exp);
    same!(alignment_offset, alignment_offset);
    same!(min_io_size, min_io_size);
    same!(opt_io_size, opt_io_size);
    same!(writeback, wce);
    same!(num_queues, num_queues);
    same!(max_discard_sectors, max_discard_sectors);
    same!(max_discard_seg, max_discard_seg);
    same!(discard_sector_alignment, discard_sector_alignment);
    same!(max_write_zeroes_sectors, max_write_zeroes_sectors);
    same!(max_write_zeroes_seg, max_write_zeroes_seg);
    same!(write_zeroes_may_unmap, write_zeroes_may_unmap);
    same!(unused1, unused1);
    assert_eq!(offset_of!(Spec, max_secure_erase_sectors), CONFIG_SPACE_LEN);
}

#[test]
fn config_space_and_features() {
    let f = disk_file(DISK_SECTORS);
    let dev = Block::new(config(&f, false)).unwrap();
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    let mut b8 = [0u8; 8];
    dev.read_config(0, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), DISK_SECTORS);
    let mut b4 = [0u8; 4];
    dev.read_config(8, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), SIZE_MAX);
    dev.read_config(12, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), SEG_MAX);
    dev.read_config(20, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 512);
    dev.read_config(36, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), MAX_DISCARD_SECTORS);
    let mut b1 = [0u8; 1];
    dev.read_config(56, &mut b1);
    assert_eq!(b1, [1]);
    // Past the structure: zeros.
    dev.read_config(CONFIG_SPACE_LEN as u64, &mut b4);
    assert_eq!(b4, [0; 4]);

    let feat = dev.avail_features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert!(feat & (1 << bit) != 0, "feature {bit}");
    }
    assert!(feat & VIRTIO_F_VERSION_1 != 0);
    assert!(feat & (1 << VIRTIO_BLK_F_RO) == 0);

    let ro = Block::new(config(&f, true)).unwrap().avail_features();
    assert!(ro & (1 << VIRTIO_BLK_F_RO) != 0);
    assert!(ro & (1 << VIRTIO_BLK_F_DISCARD) == 0);
    assert!(ro & (1 << VIRTIO_BLK_F_WRITE_ZEROES) == 0);
}

#[test]
fn constructor_errors_name_the_disk() {
    let err = Block::new(BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: true,
        id: None,
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "open disk /nonexistent/disk.img: No such file or directory (os error 2)"
    );
    let err = Block::new(BlockConfig {
        path: "/tmp".into(),
        read_only: true,
        id: None,
    })
    .unwrap_err();
    assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");
    let f = disk_file(8);
    let mut c = config(&f, false);
    c.id = Some("x".repeat(21));
    assert!(matches!(
        Block::new(c).unwrap_err(),
        BlockError::IdTooLong { .. }
    ));
}

#[test]
fn write_then_read_back() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let irq = start(&mut dev, &mem, &drv);

    let data = pattern(1024, 1);
    drv.write(DATA, &data);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_OUT, 3, Some(r(DATA, 1024))),
        (1, OK)
    );
    let mut on_disk = vec![0u8; 1024];
    f.as_file().read_exact_at(&mut on_disk, 3 * 512).unwrap();
    assert_eq!(on_disk, data);
    assert!(wait_interrupt(&irq) >= 1);

    drv.write(DATA + 0x10000, &[0u8; 1024]);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_IN, 3, Some(w(DATA + 0x10000, 1024))),
        (1025, OK)
    );
    assert_eq!(drv.read(DATA + 0x10000, 1024), data);

    // Last sector of the disk.
    assert_eq!(
        request(
            &mut drv,
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            Some(w(DATA, 512))
        ),
        (513, OK)
    );
    let stats = dev.stats();
    assert_eq!(stats.writes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.reads.load(Ordering::Relaxed), 2);
    assert_eq!(stats.read_bytes.load(Ordering::Relaxed), 1536);
    assert!(dev.reset());
}

/// The device reads the request as byte streams: header and data in one
/// descriptor, data split over many, data and status in one.
#[test]
fn any_descriptor_layout_works() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);

    // Header + 512 bytes of data in one readable descriptor.
    header(&drv, VIRTIO_BLK_T_OUT, 10);
    let data = pattern(512, 9);
    drv.write(HDR + 16, &data);
    assert_eq!(run(&mut drv, &[r(HDR, 16 + 512), w(STATUS, 1)]), (1, OK));
    let mut on_disk = vec![0u8; 512];
    f.as_file().read_exact_at(&mut on_disk, 10 * 512).unwrap();
    assert_eq!(on_disk, data);

    // Read into three uneven buffers, the last one also holding the status.
    header(&drv, VIRTIO_BLK_T_IN, 10);
    let (len, _) = run(
        &mut drv,
        &[
            r(HDR, 16),
            w(DATA, 100),
            w(DATA + 0x1000, 0),
            w(DATA + 0x2000, 300),
            w(DATA + 0x3000, 113),
        ],
    );
    assert_eq!(len, 513);
    let mut got = drv.read(DATA, 100);
    got.extend(drv.read(DATA + 0x2000, 300));
    got.extend(drv.read(DATA + 0x3000, 112));
    assert_eq!(got, data);
    assert_eq!(drv.read(DATA + 0x3000 + 112, 1), [OK]);
    assert!(dev.reset());
}

#[test]
fn flush_and_get_id() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    assert_eq!(request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));
    assert_eq!(dev.stats().flushes.load(Ordering::Relaxed), 1);

    drv.write(DATA, &[0xff; 20]);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, Some(w(DATA, 20))),
        (21, OK)
    );
    let mut want = b"moat-test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(drv.read(DATA, 20), want);
    // A short buffer gets a prefix.
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, Some(w(DATA, 4))),
        (5, OK)
    );
    // Readable data instead of a writable buffer.
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, Some(r(DATA, 20))),
        (1, IOERR)
    );
    assert!(dev.reset());

    // Without an id: derived from the file, non-empty.
    let mut c = config(&f, false);
    c.id = None;
    let mut dev = Block::new(c).unwrap();
    let mut drv = Driver::new(&mem, 0, 64);
    let _irq = start(&mut dev, &mem, &drv);
    drv.write(DATA, &[0; 20]);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, Some(w(DATA, 20))),
        (21, OK)
    );
    let meta = f.as_file().metadata().unwrap();
    let want = format!("{:x}-{:x}", meta.dev(), meta.ino());
    assert_eq!(
        &drv.read(DATA, want.len().min(20))[..],
        &want.as_bytes()[..want.len().min(20)]
    );
    assert!(dev.reset());
}

#[test]
fn read_only_disk_refuses_writes() {
    let f = disk_file(DISK_SECTORS);
    f.as_file().write_all_at(&[0x5a; 512], 0).unwrap();
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, true)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    drv.write(DATA, &[1; 512]);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_OUT, 0, Some(r(DATA, 512))),
        (1, IOERR)
    );
    let range = DiscardRange {
        sector: 0.into(),
        num_sectors: 1.into(),
        flags: 0.into(),
    };
    drv.write(DATA + 0x1000, range.as_slice());
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        assert_eq!(
            request(&mut drv, t, 0, Some(r(DATA + 0x1000, 16))),
            (1, IOERR)
        );
    }
    let mut on_disk = [0u8; 512];
    f.as_file().read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, [0x5a; 512]);
    // Reads still work.
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_IN, 0, Some(w(DATA, 512))),
        (513, OK)
    );
    assert_eq!(drv.read(DATA, 512), vec![0x5a; 512]);
    assert_eq!(dev.stats().io_errors.load(Ordering::Relaxed), 3);
    assert!(dev.reset());
}

#[test]
fn ranges_and_lengths_are_checked() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    let cases: &[(&str, u32, u64, Desc)] = &[
        (
            "read at capacity",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS,
            w(DATA, 512),
        ),
        (
            "read across the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            w(DATA, 1024),
        ),
        (
            "write across the end",
            VIRTIO_BLK_T_OUT,
            DISK_SECTORS - 1,
            r(DATA, 1024),
        ),
        (
            "sector * 512 overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX / 512 + 1,
            w(DATA, 512),
        ),
        ("sector u64::MAX", VIRTIO_BLK_T_OUT, u64::MAX, r(DATA, 512)),
        (
            "offset + len overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX / 512,
            w(DATA, 1024),
        ),
        (
            "read not a multiple of 512",
            VIRTIO_BLK_T_IN,
            0,
            w(DATA, 511),
        ),
        (
            "write not a multiple of 512",
            VIRTIO_BLK_T_OUT,
            0,
            r(DATA, 513),
        ),
        ("read with readable data", VIRTIO_BLK_T_IN, 0, r(DATA, 512)),
        (
            "write with writable data",
            VIRTIO_BLK_T_OUT,
            0,
            w(DATA, 512),
        ),
    ];
    for (what, t, sector, d) in cases {
        drv.write(DATA, &[0x77; 1024]);
        assert_eq!(
            request(&mut drv, *t, *sector, Some(*d)),
            (1, IOERR),
            "{what}"
        );
        if d.write {
            assert_eq!(drv.read(DATA, 1024), vec![0x77; 1024], "{what}: no data");
        }
    }
    // Nothing was written to the file.
    assert_eq!(f.as_file().metadata().unwrap().blocks(), 0);
    assert!(dev.reset());
}

#[test]
fn unknown_requests_are_unsupported() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    for t in [
        VIRTIO_BLK_T_SCSI_CMD,
        VIRTIO_BLK_T_SECURE_ERASE,
        0xdead_beef,
    ] {
        assert_eq!(request(&mut drv, t, 0, None), (1, UNSUPP), "type {t}");
    }
    assert_eq!(dev.stats().unsupported.load(Ordering::Relaxed), 3);
    assert!(dev.reset());
}

#[test]
fn discard_and_write_zeroes() {
    let f = disk_file(DISK_SECTORS);
    let file: &File = f.as_file();
    file.write_all_at(&vec![0xab; 64 * 1024], 0).unwrap();
    file.sync_all().unwrap();
    let blocks_before = file.metadata().unwrap().blocks();
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    let range = |sector: u64, n: u32, flags: u32| DiscardRange {
        sector: sector.into(),
        num_sectors: n.into(),
        flags: flags.into(),
    };
    let send = |drv: &mut Driver<'_>, t: u32, ranges: &[DiscardRange]| {
        let bytes: Vec<u8> = ranges.iter().flat_map(|r| r.as_slice().to_vec()).collect();
        drv.write(DATA, &bytes);
        request(drv, t, 0, Some(r(DATA, bytes.len() as u32)))
    };
    // Write zeroes over sectors 8..16 (bytes 4096..8192), no unmap.
    assert_eq!(
        send(&mut drv, VIRTIO_BLK_T_WRITE_ZEROES, &[range(8, 8, 0)]),
        (1, OK)
    );
    let mut buf = vec![0u8; 12288];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..4096], &[0xab; 4096][..]);
    assert_eq!(&buf[4096..8192], &[0; 4096][..]);
    assert_eq!(&buf[8192..], &[0xab; 4096][..]);
    // Write zeroes with unmap over sectors 16..32.
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[range(16, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        (1, OK)
    );
    file.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(&buf[..8192], &[0; 8192][..]);
    // Discard the first 32 KiB: the file gives the space back.
    assert_eq!(
        send(&mut drv, VIRTIO_BLK_T_DISCARD, &[range(64, 64, 0)]),
        (1, OK)
    );
    let blocks_after = file.metadata().unwrap().blocks();
    assert!(
        blocks_after < blocks_before,
        "holes punched: {blocks_before} -> {blocks_after} blocks"
    );
    let s = dev.stats();
    assert_eq!(s.discards.load(Ordering::Relaxed), 1);
    assert_eq!(s.write_zeroes.load(Ordering::Relaxed), 2);

    // Checked: unknown flags, unmap on discard, too many ranges, past the end,
    // too many sectors, a torn range, writable data.
    assert_eq!(
        send(&mut drv, VIRTIO_BLK_T_WRITE_ZEROES, &[range(0, 1, 0x2)]),
        (1, UNSUPP)
    );
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_DISCARD,
            &[range(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        (1, UNSUPP)
    );
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_DISCARD,
            &[range(0, 1, 0), range(8, 1, 0)]
        ),
        (1, IOERR)
    );
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_DISCARD,
            &[range(DISK_SECTORS - 1, 2, 0)]
        ),
        (1, IOERR)
    );
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[range(u64::MAX, 1, 0)]
        ),
        (1, IOERR)
    );
    assert_eq!(
        send(
            &mut drv,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[range(0, MAX_DISCARD_SECTORS + 1, 0)]
        ),
        (1, IOERR)
    );
    header(&drv, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        run(&mut drv, &[r(HDR, 16), r(DATA, 15), w(STATUS, 1)]),
        (1, IOERR)
    );
    assert_eq!(
        run(&mut drv, &[r(HDR, 16), w(DATA, 16), w(STATUS, 1)]),
        (1, IOERR)
    );
    assert!(dev.reset());
}

#[test]
fn sparse_disk_stays_sparse() {
    // 1 GiB sparse image.
    let f = disk_file(2 << 20);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    assert_eq!(dev.capacity(), 2 << 20);
    let _irq = start(&mut dev, &mem, &drv);
    drv.write(DATA, &[1; 4096]);
    assert_eq!(
        request(
            &mut drv,
            VIRTIO_BLK_T_OUT,
            (2 << 20) - 8,
            Some(r(DATA, 4096))
        ),
        (1, OK)
    );
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_IN, 1 << 20, Some(w(DATA, 4096))),
        (4097, OK)
    );
    assert_eq!(drv.read(DATA, 4096), vec![0; 4096], "a hole reads as zeros");
    let blocks = f.as_file().metadata().unwrap().blocks();
    assert!(
        blocks <= 64,
        "only the written block is allocated: {blocks}"
    );
    assert!(dev.reset());
}

/// Malformed chains: each is answered (IOERR when a status byte can be
/// written, else returned with 0 bytes), and the device keeps serving.
#[test]
fn hostile_chains_fail_and_device_keeps_going() {
    let f = disk_file(DISK_SECTORS);
    f.as_file().write_all_at(&[0x42; 512], 0).unwrap();
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);
    let good = |drv: &mut Driver<'_>| {
        drv.write(DATA, &[0; 512]);
        assert_eq!(
            request(drv, VIRTIO_BLK_T_IN, 0, Some(w(DATA, 512))),
            (513, OK)
        );
        assert_eq!(drv.read(DATA, 512), vec![0x42; 512]);
    };

    header(&drv, VIRTIO_BLK_T_IN, 0);
    // Header shorter than 16 bytes.
    assert_eq!(
        run(&mut drv, &[r(HDR, 8), w(DATA, 512), w(STATUS, 1)]),
        (1, IOERR)
    );
    // Header in a writable descriptor (no readable bytes).
    assert_eq!(
        run(&mut drv, &[w(HDR, 16), w(DATA, 512), w(STATUS, 1)]),
        (1, IOERR)
    );
    // Status readable, after writable data: refused, nothing written.
    assert_eq!(
        run(&mut drv, &[r(HDR, 16), w(DATA, 512), r(STATUS, 1)]),
        (0, UNTOUCHED)
    );
    // No writable byte at all.
    assert_eq!(run(&mut drv, &[r(HDR, 16), r(STATUS, 1)]), (0, UNTOUCHED));
    // A single zero-length descriptor.
    assert_eq!(run(&mut drv, &[w(STATUS, 0)]), (0, UNTOUCHED));
    // Status outside guest memory.
    assert_eq!(
        run(&mut drv, &[r(HDR, 16), w(DATA, 512), w(MEM as u64, 1)]),
        (0, UNTOUCHED)
    );
    // Data buffer with a huge length.
    assert_eq!(
        run(&mut drv, &[r(HDR, 16), w(DATA, u32::MAX), w(STATUS, 1)]),
        (0, UNTOUCHED)
    );
    // Header address outside guest memory.
    assert_eq!(
        run(&mut drv, &[r(u64::MAX - 15, 16), w(STATUS, 1)]),
        (0, UNTOUCHED)
    );
    good(&mut drv);

    // A loop through the descriptor table.
    drv.write(STATUS, &[UNTOUCHED]);
    let n = drv.used_idx().wrapping_add(1);
    let base = drv.write_raw(&[]);
    let head = drv.write_raw(&[
        (HDR, 16, NEXT, base + 1),
        (DATA, 512, NEXT | WRITE, base + 2),
        (STATUS, 1, NEXT | WRITE, base + 1),
    ]);
    drv.publish(head);
    assert!(drv.kick_and_wait(n));
    assert_eq!(drv.used(n - 1), (u32::from(head), 0));
    assert_eq!(drv.read(STATUS, 1), [UNTOUCHED]);
    // A next index past the queue.
    let n = n + 1;
    let head = drv.write_raw(&[(HDR, 16, NEXT, 999)]);
    drv.publish(head);
    assert!(drv.kick_and_wait(n));
    assert_eq!(drv.used(n - 1), (u32::from(head), 0));
    // A head index past the queue: consumed, cannot be returned.
    drv.publish(64);
    good(&mut drv);
    assert_eq!(drv.used_idx(), n + 1);

    // avail.idx moved more than a queue ahead: ignored until sane.
    let idx = drv.avail_idx();
    drv.set_avail_idx(idx.wrapping_add(65));
    drv.kick();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(drv.used_idx(), n + 1);
    drv.set_avail_idx(idx);
    good(&mut drv);
    assert!(dev.reset());
}

#[test]
fn segment_limits_are_enforced() {
    let f = disk_file(DISK_SECTORS * 4);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let _irq = start(&mut dev, &mem, &drv);

    // One data buffer larger than size_max.
    header(&drv, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(
            &mut drv,
            &[r(HDR, 16), w(0x100000, SIZE_MAX + 512), w(STATUS, 1)]
        ),
        (1, IOERR)
    );
    assert_eq!(drv.read(0x100000, 4), [0; 4], "nothing read");

    // seg_max and seg_max + 1 data buffers, through an indirect table.
    let table = 0x40000u64;
    let send = |drv: &mut Driver<'_>, segs: u32| {
        let mut descs = vec![(HDR, 16u32, 0u16)];
        descs.extend((0..segs).map(|i| (0x100000 + u64::from(i) * 0x1000, 512, WRITE)));
        descs.push((STATUS, 1, WRITE));
        let count = descs.len();
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let (flags, next) = if i + 1 < count {
                (flags | NEXT, i as u16 + 1)
            } else {
                (flags, 0)
            };
            let d = virtio_queue::desc::RawDescriptor::from(
                virtio_queue::desc::split::Descriptor::new(addr, len, flags, next),
            );
            mem.write_obj(d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        drv.write(STATUS, &[UNTOUCHED]);
        let n = drv.used_idx().wrapping_add(1);
        let head = drv.write_raw(&[(table, 16 * count as u32, VRING_DESC_F_INDIRECT as u16, 0)]);
        drv.publish(head);
        assert!(drv.kick_and_wait(n));
        (drv.used(n - 1).1, drv.read(STATUS, 1)[0])
    };
    header(&drv, VIRTIO_BLK_T_IN, 0);
    assert_eq!(send(&mut drv, SEG_MAX), (SEG_MAX * 512 + 1, OK));
    assert_eq!(send(&mut drv, SEG_MAX + 1), (1, IOERR));
    assert!(dev.reset());
}

/// Host I/O failures fail the request only.
#[test]
fn backend_errors_fail_the_request_not_the_device() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    // The disk is offered writable, but the file is open read-only: every
    // pwrite fails with EBADF.
    let file = File::open(f.as_path()).unwrap();
    let disk = disk::Disk::new(
        file,
        f.as_path().to_path_buf(),
        false,
        DISK_SECTORS * SECTOR_SIZE,
    );
    let mut dev = Block::with_disk(disk, [b'x'; ID_BYTES]);
    let _irq = start(&mut dev, &mem, &drv);
    drv.write(DATA, &[3; 512]);
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_OUT, 0, Some(r(DATA, 512))),
        (1, IOERR)
    );
    // The file shrinks under the device: reads past the new end fail.
    f.as_file().set_len(512).unwrap();
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_IN, 4, Some(w(DATA, 512))),
        (1, IOERR)
    );
    // The device still answers.
    assert_eq!(
        request(&mut drv, VIRTIO_BLK_T_IN, 0, Some(w(DATA, 512))),
        (513, OK)
    );
    assert_eq!(dev.stats().io_errors.load(Ordering::Relaxed), 2);
    assert!(dev.reset());
}

#[test]
fn reset_then_activate_again() {
    let f = disk_file(DISK_SECTORS);
    let mem = guest_memory(MEM);
    let mut drv = Driver::new(&mem, 0, 64);
    let mut dev = Block::new(config(&f, false)).unwrap();
    let irq = start(&mut dev, &mem, &drv);
    assert_eq!(request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));
    assert!(dev.reset());
    let mut drv = Driver::new(&mem, 0, 64);
    dev.activate(ctx(&mem, vec![drv.active_queue()], &irq))
        .unwrap();
    assert_eq!(request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));
    assert!(dev.reset());
}
