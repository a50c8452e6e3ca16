//! virtio-blk: arbitrary request chains (headers, data, discard and
//! write-zeroes ranges, any descriptor layout) against a 32 KiB temp file,
//! through the device's activation checks and one worker pass. Checks that the
//! disk never grows and that a read-only disk never changes.
#![no_main]

use std::io::{Read, Seek, SeekFrom};

use libfuzzer_sys::fuzz_target;
use moat_fuzz::guest::GuestQueue;
use moat_fuzz::inputs::block_req::*;
use moat_vmm::devices::virtio::block::{Block, BlockConfig, QUEUE_SIZE, SECTOR_SIZE};
use moat_vmm::devices::virtio::queue_util::testing::interrupt;
use moat_vmm::devices::virtio::{ActivateContext, GuestMemory, VIRTIO_F_VERSION_1};
use vm_memory::GuestAddress;

const MEM: u64 = 4 << 20;
const DISK_SECTORS: u64 = 64;

fn sector(s: &Sector) -> u64 {
    match *s {
        Sector::Near(n) => u64::from(n),
        Sector::Far(n) => n,
    }
}

fn encode(r: &Request) -> Vec<u8> {
    let type_ = match r.kind {
        Kind::In => 0,
        Kind::Out => 1,
        Kind::Flush => 4,
        Kind::GetId => 8,
        Kind::Discard => 11,
        Kind::WriteZeroes => 13,
        Kind::Other(t) => t,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&u32::to_le_bytes(type_));
    out.extend_from_slice(&r.ioprio.to_le_bytes());
    out.extend_from_slice(&sector(&r.sector).to_le_bytes());
    if let Some(n) = r.header_len {
        out.truncate(usize::from(n) % 16);
    }
    for range in r.ranges.iter().take(8) {
        out.extend_from_slice(&sector(&range.sector).to_le_bytes());
        out.extend_from_slice(&range.num_sectors.to_le_bytes());
        out.extend_from_slice(&range.flags.to_le_bytes());
    }
    out.extend_from_slice(&r.data.0);
    out
}

struct Disk {
    file: tempfile::NamedTempFile,
    pristine: Vec<u8>,
}

thread_local! {
    static DISK: Disk = {
        let file = tempfile::NamedTempFile::new().unwrap();
        let pristine: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE).map(|i| (i % 251) as u8).collect();
        Disk { file, pristine }
    };
}

fn contents(f: &std::fs::File) -> Vec<u8> {
    let mut f = f;
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = moat_fuzz::decode::<Input>(data) else {
        return;
    };
    DISK.with(|disk| {
        std::fs::write(disk.file.path(), &disk.pristine).unwrap();
        let dev = Block::new(BlockConfig {
            path: disk.file.path().to_path_buf(),
            read_only: input.read_only,
            id: Some("fuzz-disk".to_string()),
        })
        .unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut q = GuestQueue::new(&mem, MEM, 0, QUEUE_SIZE, 0x1_0000..MEM);
        for r in input.requests.iter().take(64) {
            q.push(&r.chain, &encode(r));
        }
        let ctx = ActivateContext {
            mem: mem.clone(),
            acked_features: VIRTIO_F_VERSION_1,
            queues: vec![q.active_queue()],
            interrupt: interrupt(),
        };
        dev.serve_once(ctx).unwrap();
        drop(dev);
        let after = contents(disk.file.as_file());
        assert_eq!(
            after.len() as u64,
            DISK_SECTORS * SECTOR_SIZE,
            "the guest changed the disk's size"
        );
        if input.read_only {
            assert!(after == disk.pristine, "the guest wrote a read-only disk");
        }
    });
});
