//! The backing file of a virtio-blk device: positional reads and writes
//! straight between the file and guest memory (`pread`/`pwrite`, no file
//! cursor, holes stay holes), flush, and range deallocation. It owns the open
//! file; it must not interpret requests (that is the worker's job).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestMemoryError, ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use crate::devices::virtio::queue_util::Segments;
use crate::devices::virtio::GuestMemory;

/// Bytes per virtio-blk sector, whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;

/// The open backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    /// Size in 512-byte sectors (a partial last sector is not exposed).
    capacity: u64,
}

impl Disk {
    pub fn new(file: File, path: PathBuf, read_only: bool, size: u64) -> Disk {
        Disk {
            file,
            path,
            read_only,
            capacity: size / SECTOR_SIZE,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Byte offset of `sector`, checked so that `len` bytes from there stay
    /// within the disk. `None` when they do not (or the arithmetic overflows).
    pub fn checked_range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.capacity.checked_mul(SECTOR_SIZE)?).then_some(offset)
    }

    /// Reads `segs.len()` bytes at `offset` into the guest buffers.
    pub fn read_to(&self, mem: &GuestMemory, offset: u64, segs: &Segments) -> io::Result<()> {
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        for seg in segs.as_slice() {
            mem.read_exact_volatile_from(seg.addr, &mut at, seg.len as usize)
                .map_err(guest_io_error)?;
        }
        Ok(())
    }

    /// Writes the guest buffers at `offset`.
    pub fn write_from(&self, mem: &GuestMemory, offset: u64, segs: &Segments) -> io::Result<()> {
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        for seg in segs.as_slice() {
            mem.write_all_volatile_to(seg.addr, &mut at, seg.len as usize)
                .map_err(guest_io_error)?;
        }
        Ok(())
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` (a hint: a backend that cannot
    /// punch holes keeps the data and reports success).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match punch_hole(&self.file, offset, len) {
            Err(e) if is_unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// Makes `len` bytes at `offset` read as zeros; with `unmap`, deallocating
    /// them is allowed.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            match punch_hole(&self.file, offset, len) {
                Err(e) if is_unsupported(&e) => {}
                r => return r,
            }
        }
        match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if is_unsupported(&io::Error::from(e)) => {}
            Err(e) => return Err(e.into()),
        }
        // No ZERO_RANGE (e.g. tmpfs): punch a hole, which also reads as zeros.
        match punch_hole(&self.file, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            r => return r,
        }
        self.write_zero_bytes(offset, len)
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, FallocateMode::PunchHole, true, offset, len).map_err(io::Error::from)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

fn guest_io_error(e: GuestMemoryError) -> io::Error {
    match e {
        GuestMemoryError::IOError(e) => e,
        e => io::Error::other(e),
    }
}

/// A file seen at a moving position, for `vm_memory`'s volatile copies:
/// `pread`/`pwrite` at `offset`, then `offset` advances.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn pos(&self, done: usize) -> Result<libc::off64_t, VolatileMemoryError> {
        self.offset
            .checked_add(done as u64)
            .and_then(|o| libc::off64_t::try_from(o).ok())
            .ok_or_else(|| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl ReadVolatile for FileAt<'_> {
    /// Fills `buf` unless the file ends first; returns the bytes read.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let base = guard.as_ptr();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = self.pos(done)?;
            // SAFETY: `base` points to `buf.len()` bytes of mapped guest memory,
            // kept mapped by `guard`; `done < buf.len()`, so the destination
            // range [base + done, base + buf.len()) lies inside it. pread writes
            // at most that many bytes, and the fd is open for the call.
            let n = unsafe {
                libc::pread64(
                    self.file.as_raw_fd(),
                    base.add(done).cast(),
                    buf.len() - done,
                    pos,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                buf.bitmap().mark_dirty(0, buf.len());
                return Err(VolatileMemoryError::IOError(e));
            }
            if n == 0 {
                break;
            }
            done += n.unsigned_abs();
        }
        buf.bitmap().mark_dirty(0, done);
        self.offset += done as u64;
        Ok(done)
    }
}

impl WriteVolatile for FileAt<'_> {
    /// Writes all of `buf`; returns its length.
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        let base = guard.as_ptr();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = self.pos(done)?;
            // SAFETY: `base` points to `buf.len()` bytes of mapped guest memory,
            // kept mapped by `guard`; `done < buf.len()`, so the source range
            // [base + done, base + buf.len()) lies inside it and pwrite only
            // reads it. The fd is open for the call.
            let n = unsafe {
                libc::pwrite64(
                    self.file.as_raw_fd(),
                    base.add(done).cast(),
                    buf.len() - done,
                    pos,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VolatileMemoryError::IOError(e));
            }
            if n == 0 {
                return Err(VolatileMemoryError::IOError(io::Error::from(
                    io::ErrorKind::WriteZero,
                )));
            }
            done += n.unsigned_abs();
        }
        self.offset += done as u64;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn range_check_does_not_overflow() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let d = Disk::new(
            f.into_file(),
            PathBuf::from("t"),
            false,
            8 * SECTOR_SIZE + 100,
        );
        assert_eq!(d.capacity(), 8, "partial last sector not exposed");
        assert_eq!(d.checked_range(0, 8 * 512), Some(0));
        assert_eq!(d.checked_range(7, 512), Some(7 * 512));
        assert_eq!(d.checked_range(7, 1024), None);
        assert_eq!(d.checked_range(8, 0), Some(8 * 512));
        assert_eq!(d.checked_range(9, 0), None);
        assert_eq!(d.checked_range(u64::MAX / 512, 512), None);
        assert_eq!(d.checked_range(u64::MAX, 0), None);
        assert_eq!(d.checked_range(1, u64::MAX - 100), None);
    }

    #[test]
    fn copies_across_guest_regions() {
        // Two adjacent regions; one segment spans the boundary.
        let mem =
            GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
                .unwrap();
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let file = f.into_file();
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &data, 512).unwrap();
        let d = Disk::new(file, PathBuf::from("t"), false, 4096);
        let seg = crate::devices::virtio::queue_util::Segment {
            addr: GuestAddress(0x1000 - 300),
            len: 1024,
        };
        let mut segs = Segments::default();
        segs.push(seg);
        d.read_to(&mem, 512, &segs).unwrap();
        let mut out = vec![0u8; 1024];
        mem.read_slice(&mut out, GuestAddress(0x1000 - 300))
            .unwrap();
        assert_eq!(out, data);
        // And back, at another offset.
        d.write_from(&mem, 2048, &segs).unwrap();
        let mut back = vec![0u8; 1024];
        std::os::unix::fs::FileExt::read_exact_at(&d.file, &mut back, 2048).unwrap();
        assert_eq!(back, data);
    }
}
