//! Guest RAM: anonymous host mappings laid out by `arch::guest_memory_regions`.
//! This module creates the mappings; registering them with KVM is `vm.rs`'s job.

use vm_memory::GuestAddress;

use crate::arch;
use crate::devices::virtio::GuestMemory;

/// Why guest memory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("create guest memory of {size} bytes: region at {addr:#x} of {len} bytes does not fit this host's address space")]
    TooLarge { size: u64, addr: u64, len: u64 },
    #[error("create guest memory of {size} bytes: {source}")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `size` bytes of guest RAM (private, anonymous, not reserved: the host
/// commits pages only when the guest touches them).
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let mut ranges = Vec::new();
    for (addr, len) in arch::guest_memory_regions(size) {
        let host_len = usize::try_from(len).map_err(|_| MemoryError::TooLarge {
            size,
            addr: addr.0,
            len,
        })?;
        ranges.push((GuestAddress(addr.0), host_len));
    }
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemory as _, GuestMemoryRegion};

    #[test]
    fn memory_matches_the_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, 64 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_window() {
        // 5 GiB of address space, never touched: MAP_NORESERVE makes this cheap.
        let mem = create_guest_memory(5 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let window = arch::layout::MMIO_GAP_START;
        assert!(mem.address_in_range(GuestAddress(window - 1)));
        assert!(!mem.address_in_range(GuestAddress(window)));
        assert!(!mem.address_in_range(GuestAddress((4 << 30) - 1)));
        assert!(mem.address_in_range(GuestAddress(4 << 30)));
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 5 << 30);
    }
}
