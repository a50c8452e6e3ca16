//! Boot information handed to the kernel: the e820 memory map, the zero page
//! (`boot_params`) of the 64-bit Linux boot protocol, and the `hvm_start_info` of
//! the PVH boot protocol. This module owns the layout and the writing of these
//! structures at the addresses in `layout.rs`; it does not load the kernel and does
//! not touch vCPU state.
//!
//! x86 is little-endian, so native integers in these `#[repr(C)]` structs are the
//! layout the guest reads.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::layout::{
    CMDLINE_START, EBDA_END, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::devices::virtio::GuestMemory;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// `boot_params.hdr.boot_flag`.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `boot_params.hdr.header`: "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.type_of_loader`: "undefined" boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `boot_params.hdr.kernel_alignment`: 16 MiB, what Linux asks for.
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// One entry of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for `mem_size` bytes of RAM laid out as in `layout.rs`:
/// conventional memory up to the EBDA, the EBDA (MP table) reserved, RAM from
/// 1 MiB to the MMIO window, and the rest of RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: EBDA_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

/// Why the boot information could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    #[error("write boot information: the memory map has {0} entries, more than fits")]
    TooManyE820Entries(usize),
    #[error("write boot information: initrd at {addr:#x} (+{size:#x}) is not below 4 GiB")]
    InitrdAbove4G { addr: u64, size: u64 },
    #[error("write boot information: command line of {0} bytes does not fit")]
    CmdlineTooLong(usize),
    #[error("write {what} at {addr:#x}: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn write_obj<T: ByteValued>(
    mem: &GuestMemory,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), BootInfoError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| BootInfoError::Write { what, addr, source })
}

/// Builds the zero page for the 64-bit Linux boot protocol. `cmdline_len` is the
/// command line's length without its NUL, already written at `CMDLINE_START`.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<boot_params, BootInfoError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len).map_err(|_| BootInfoError::CmdlineTooLong(cmdline_len))?;
    if let Some(initrd) = initrd {
        let (Ok(addr), Ok(size)) = (u32::try_from(initrd.addr), u32::try_from(initrd.size)) else {
            return Err(BootInfoError::InitrdAbove4G {
                addr: initrd.addr,
                size: initrd.size,
            });
        };
        params.hdr.ramdisk_image = addr;
        params.hdr.ramdisk_size = size;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootInfoError::TooManyE820Entries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
        };
    }
    // Bounded by the table length (128) just above.
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page for the 64-bit entry.
pub fn write_boot_params(
    mem: &GuestMemory,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<(), BootInfoError> {
    let params = build_boot_params(mem_size, cmdline_len, initrd)?;
    write_obj(mem, params, ZERO_PAGE_START, "zero page")
}

/// `struct hvm_start_info` (Xen's `arch-x86/hvm/start_info.h`, version 1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct HvmMemmapTableEntry {
    pub addr: u64,
    pub size: u64,
    pub type_: u32,
    pub reserved: u32,
}

// SAFETY: plain integers, `#[repr(C)]` with no padding (checked by the layout test);
// every bit pattern is valid.
unsafe impl ByteValued for HvmStartInfo {}
// SAFETY: as above.
unsafe impl ByteValued for HvmModlistEntry {}
// SAFETY: as above.
unsafe impl ByteValued for HvmMemmapTableEntry {}

/// Writes `hvm_start_info`, the memory map and the module list (the initrd) for
/// the PVH entry.
pub fn write_pvh_start_info(
    mem: &GuestMemory,
    mem_size: u64,
    initrd: Option<InitrdRegion>,
) -> Result<(), BootInfoError> {
    let map = e820_map(mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootInfoError::TooManyE820Entries(map.len()));
    }
    let entry_size = std::mem::size_of::<HvmMemmapTableEntry>() as u64;
    for (i, entry) in map.iter().enumerate() {
        let addr = PVH_MEMMAP_START + i as u64 * entry_size;
        let val = HvmMemmapTableEntry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        write_obj(mem, val, addr, "pvh memory map")?;
    }
    let mut info = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        // Bounded by PVH_MEMMAP_MAX_ENTRIES just above.
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = HvmModlistEntry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        write_obj(mem, module, PVH_MODLIST_START, "pvh module list")?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    write_obj(mem, info, PVH_INFO_START, "pvh start info")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MMIO_GAP_END;
    use linux_loader::loader::bootparam::setup_header;
    use std::mem::{offset_of, size_of};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: MIB,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_mmio_window() {
        let map = e820_map(8 * GIB);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Only the legacy hole (0x9fc00..1 MiB) is missing from RAM.
        assert_eq!(ram, 8 * GIB - (MIB - 0x9fc00));
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        assert_eq!(map[3].size, 8 * GIB - MMIO_GAP_START);
        // Exactly at the window: nothing above 4 GiB.
        assert_eq!(e820_map(MMIO_GAP_START).len(), 3);
        assert_eq!(e820_map(MMIO_GAP_START + 1).len(), 4);
    }

    #[test]
    fn boot_params_layout_matches_the_boot_protocol() {
        // Documentation/x86/zero-page.rst and boot.rst.
        assert_eq!(size_of::<boot_params>(), 4096);
        assert_eq!(offset_of!(boot_params, e820_entries), 0x1e8);
        assert_eq!(offset_of!(boot_params, hdr), 0x1f1);
        assert_eq!(offset_of!(boot_params, e820_table), 0x2d0);
        assert_eq!(size_of::<boot_e820_entry>(), 20);
        let hdr = offset_of!(boot_params, hdr);
        assert_eq!(hdr + offset_of!(setup_header, boot_flag), 0x1fe);
        assert_eq!(hdr + offset_of!(setup_header, header), 0x202);
        assert_eq!(hdr + offset_of!(setup_header, type_of_loader), 0x210);
        assert_eq!(hdr + offset_of!(setup_header, ramdisk_image), 0x218);
        assert_eq!(hdr + offset_of!(setup_header, ramdisk_size), 0x21c);
        assert_eq!(hdr + offset_of!(setup_header, cmd_line_ptr), 0x228);
        assert_eq!(hdr + offset_of!(setup_header, kernel_alignment), 0x230);
        assert_eq!(hdr + offset_of!(setup_header, cmdline_size), 0x238);
    }

    #[test]
    fn boot_params_content() {
        let initrd = InitrdRegion {
            addr: 0x7fe0_0000,
            size: 0x1234,
        };
        let p = build_boot_params(256 * MIB, 42, Some(initrd)).unwrap();
        let bytes = p.as_slice();
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(u16_at(0x1fe), 0xaa55);
        assert_eq!(u32_at(0x202), 0x5372_6448);
        assert_eq!(bytes[0x210], 0xff);
        assert_eq!(u32_at(0x218), 0x7fe0_0000);
        assert_eq!(u32_at(0x21c), 0x1234);
        assert_eq!(u32_at(0x228), CMDLINE_START as u32);
        assert_eq!(u32_at(0x238), 42);
        assert_eq!(bytes[0x1e8], 3);
        // Third e820 entry: 1 MiB .. 256 MiB, RAM.
        let e = 0x2d0 + 2 * 20;
        assert_eq!(u64::from_le_bytes(bytes[e..e + 8].try_into().unwrap()), MIB);
        assert_eq!(
            u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap()),
            255 * MIB
        );
        assert_eq!(u32_at(e + 16), E820_RAM);
    }

    #[test]
    fn boot_params_refuses_an_initrd_above_4g() {
        let initrd = InitrdRegion {
            addr: 5 * GIB,
            size: 1,
        };
        assert!(matches!(
            build_boot_params(8 * GIB, 1, Some(initrd)),
            Err(BootInfoError::InitrdAbove4G { .. })
        ));
    }

    #[test]
    fn pvh_structs_layout() {
        assert_eq!(size_of::<HvmStartInfo>(), 56);
        assert_eq!(offset_of!(HvmStartInfo, modlist_paddr), 16);
        assert_eq!(offset_of!(HvmStartInfo, cmdline_paddr), 24);
        assert_eq!(offset_of!(HvmStartInfo, rsdp_paddr), 32);
        assert_eq!(offset_of!(HvmStartInfo, memmap_paddr), 40);
        assert_eq!(offset_of!(HvmStartInfo, memmap_entries), 48);
        assert_eq!(size_of::<HvmModlistEntry>(), 32);
        assert_eq!(size_of::<HvmMemmapTableEntry>(), 24);
        assert_eq!(offset_of!(HvmMemmapTableEntry, type_), 16);
    }

    #[test]
    fn pvh_start_info_in_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (16 * MIB) as usize)]).unwrap();
        let initrd = InitrdRegion {
            addr: 0x80_0000,
            size: 0x1000,
        };
        write_pvh_start_info(&mem, 16 * MIB, Some(initrd)).unwrap();
        let info: HvmStartInfo = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 3);
        let module: HvmModlistEntry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 0x1000));
        let last: HvmMemmapTableEntry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (MIB, 15 * MIB, E820_RAM)
        );
    }
}
