//! virtio-blk (virtio 1.2 §5.2) on a raw file or block device.
//!
//! It owns the block device's features, its configuration space, the backing
//! [`disk::Disk`] and the worker ([`worker`]) that checks and executes
//! requests. It must not touch the transport, other devices, or any file but
//! the one it was given.
//!
//! Offered: `VERSION_1`, `RING_INDIRECT_DESC`, `SIZE_MAX`, `SEG_MAX`,
//! `BLK_SIZE`, `FLUSH`, `RO` (read-only disks), and `DISCARD` and
//! `WRITE_ZEROES` (writable disks). Requests: `IN`, `OUT`, `FLUSH`, `GET_ID`,
//! `DISCARD`, `WRITE_ZEROES`; anything else gets `UNSUPP`.

mod disk;
mod worker;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{ByteValued, Le16, Le32, Le64};

use self::disk::Disk;
pub use self::disk::SECTOR_SIZE;
use super::queue_util::{DeviceQueue, WorkerSlot};
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data buffer (descriptor) in a request, in bytes (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data buffers in a request (`seg_max`): the queue minus the header
/// and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Block size reported to the guest (`blk_size`).
pub const BLK_SIZE: u32 = 512;
/// Most sectors in one discard or write-zeroes range (512 MiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 20;
/// Ranges per discard or write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 1;
/// Serial length of `GET_ID`.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

const NAME: &str = "block";

/// How a block device is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// A raw disk image (regular file, sparse is fine) or a block device.
    pub path: PathBuf,
    /// Opened read-only and offered with `VIRTIO_BLK_F_RO`; writes fail with
    /// `IOERR`.
    pub read_only: bool,
    /// Serial returned by `GET_ID`, at most 20 bytes. `None`: derived from the
    /// file's device and inode numbers.
    pub id: Option<String>,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("open disk {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open disk {path}: not a regular file or block device")]
    NotADisk { path: PathBuf },
    #[error("size disk {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open disk {path}: serial {id:?} is longer than {ID_BYTES} bytes")]
    IdTooLong { path: PathBuf, id: String },
}

/// `struct virtio_blk_config` up to the write-zeroes fields (60 bytes), padded
/// to its alignment. Little-endian, as every modern virtio device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockConfigSpace {
    pub capacity: Le64,
    pub size_max: Le32,
    pub seg_max: Le32,
    pub cylinders: Le16,
    pub heads: u8,
    pub sectors: u8,
    pub blk_size: Le32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: Le16,
    pub opt_io_size: Le32,
    pub writeback: u8,
    pub unused0: u8,
    pub num_queues: Le16,
    pub max_discard_sectors: Le32,
    pub max_discard_seg: Le32,
    pub discard_sector_alignment: Le32,
    pub max_write_zeroes_sectors: Le32,
    pub max_write_zeroes_seg: Le32,
    pub write_zeroes_may_unmap: u8,
    pub unused1: [u8; 3],
    /// Not part of the spec's structure: tail padding made explicit.
    pub padding: [u8; 4],
}

// SAFETY: repr(C), only integer fields and byte arrays, no implicit padding
// (the layout test checks every offset and the size), so every bit pattern is
// a valid value.
unsafe impl ByteValued for BlockConfigSpace {}

/// Bytes of the config space the guest sees (the spec's structure up to
/// `unused1`).
pub const CONFIG_SPACE_LEN: usize = 60;

/// Counters of a block device, shared with its worker.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    /// Requests answered `IOERR` (malformed, out of range, read-only, failed I/O).
    pub io_errors: AtomicU64,
    /// Requests answered `UNSUPP`.
    pub unsupported: AtomicU64,
    /// Chains that could not carry a status byte, returned with 0 bytes.
    pub bad_chains: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Arc<Disk>,
    id: [u8; ID_BYTES],
    config_space: BlockConfigSpace,
    features: u64,
    stats: Arc<BlockStats>,
    worker: WorkerSlot,
}

impl Block {
    /// Opens the disk; nothing runs until the driver activates the device.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let BlockConfig {
            path,
            read_only,
            id,
        } = config;
        if let Some(id) = &id {
            if id.len() > ID_BYTES {
                return Err(BlockError::IdTooLong {
                    path,
                    id: id.clone(),
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(BlockError::NotADisk { path });
        }
        let size = disk_size(&file).map_err(|source| BlockError::Size {
            path: path.clone(),
            source,
        })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                path = %path.display(),
                size,
                "disk size is not a multiple of 512; the last partial sector is not exposed"
            );
        }
        let mut serial = [0u8; ID_BYTES];
        let id_bytes = match id {
            Some(id) => id.into_bytes(),
            None => format!("{:x}-{:x}", meta.dev(), meta.ino()).into_bytes(),
        };
        let n = id_bytes.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id_bytes[..n]);
        Ok(Block::with_disk(
            Disk::new(file, path, read_only, size),
            serial,
        ))
    }

    fn with_disk(disk: Disk, id: [u8; ID_BYTES]) -> Block {
        let read_only = disk.read_only();
        let mut features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let config_space = BlockConfigSpace {
            capacity: Le64::from(disk.capacity()),
            size_max: Le32::from(SIZE_MAX),
            seg_max: Le32::from(SEG_MAX),
            blk_size: Le32::from(BLK_SIZE),
            num_queues: Le16::from(1),
            max_discard_sectors: Le32::from(MAX_DISCARD_SECTORS),
            max_discard_seg: Le32::from(MAX_DISCARD_SEG),
            // In sectors: 4 KiB, the granularity holes are punched at.
            discard_sector_alignment: Le32::from(8),
            max_write_zeroes_sectors: Le32::from(MAX_DISCARD_SECTORS),
            max_write_zeroes_seg: Le32::from(MAX_DISCARD_SEG),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };
        Block {
            disk: Arc::new(disk),
            id,
            config_space,
            features,
            stats: Arc::new(BlockStats::default()),
            worker: WorkerSlot::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        Arc::clone(&self.stats)
    }
}

/// Size in bytes of a regular file or block device.
fn disk_size(file: &File) -> io::Result<u64> {
    // `seek(End)` works for both, and the fd's position is never used for I/O.
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(
            &self.config_space.as_slice()[..CONFIG_SPACE_LEN],
            offset,
            data,
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.worker.ensure_idle(NAME)?;
        let w = self.build_worker(ctx)?;
        self.worker
            .start(NAME, crate::seccomp::WorkerKind::Block, move |stop| {
                worker::run(w, stop)
            })
    }

    fn reset(&mut self) -> bool {
        self.worker.stop()
    }
}

impl Block {
    /// Checks the activation context and builds the worker that will own the
    /// queue.
    fn build_worker(&self, ctx: ActivateContext) -> Result<worker::BlockWorker, ActivateError> {
        let ActivateContext {
            mem,
            // Nothing here depends on the acked features: the limits are
            // enforced either way, and every request type is understood.
            acked_features: _,
            queues,
            interrupt,
        } = ctx;
        let [q] = super::valid_queues(NAME, queues, &mem)?;
        Ok(worker::BlockWorker::new(
            mem,
            DeviceQueue::new(q.queue, q.notify),
            interrupt,
            Arc::clone(&self.disk),
            self.id,
            Arc::clone(&self.stats),
        ))
    }

    /// Fuzzing entry point: activates a worker on the calling thread, runs one
    /// pass over the available requests (what the worker thread does on a
    /// queue notification) and drops it. No thread, so a run is deterministic.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn serve_once(&self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.build_worker(ctx)?.process_queue();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
