//! The fixed guest physical address map of an x86_64 microVM. Everything the VMM
//! places in guest memory or in the MMIO window has its address here, and nowhere
//! else. This module owns addresses and sizes only; it writes nothing.
//!
//! ```text
//! 0x0000_0000 ┌──────────────────────────────┐
//!             │ real-mode IVT / BDA (unused)  │
//! 0x0000_0500 │ boot GDT (4 entries)          │
//! 0x0000_0520 │ boot IDT (empty)              │
//! 0x0000_6000 │ PVH hvm_start_info            │
//! 0x0000_6040 │ PVH module list (initrd)      │
//! 0x0000_6100 │ PVH memory map                │
//! 0x0000_7000 │ zero page (boot_params)       │
//! 0x0000_8ff0 │ boot stack top (grows down)   │
//! 0x0000_9000 │ PML4                          │
//! 0x0000_a000 │ PDPT                          │
//! 0x0000_b000 │ 4 page directories: identity  │
//!             │ map of 0..4 GiB, 2 MiB pages  │
//! 0x0002_0000 │ kernel command line (2 KiB)   │
//! 0x0009_fc00 │ EBDA: MP table (reserved)     │
//! 0x000a_0000 │ legacy VGA/BIOS hole (no RAM  │
//!             │ in the e820 map)              │
//! 0x0010_0000 │ RAM: kernel (ELF p_paddr,     │
//!             │ 16 MiB for Linux), then free; │
//!             │ initrd at the top, below the  │
//!             │ MMIO window, page-aligned     │
//! 0xd000_0000 ├──────────────────────────────┤ MMIO window (768 MiB, no RAM)
//!             │ boot-time marker (1 page)     │
//! 0xd000_1000 │ virtio-mmio slot 0 (IRQ 5)    │
//! 0xd000_2000 │ virtio-mmio slot 1 (IRQ 6)    │
//!             │ ... 4 KiB per slot, up to 19  │
//!             │ slots (IRQs 5..=23)           │
//! 0xfec0_0000 │ IOAPIC (in-kernel)            │
//! 0xfee0_0000 │ LAPIC (in-kernel)             │
//! 0xfffb_d000 │ KVM TSS (3 pages, Intel)      │
//! 0x1_0000_0000 ├────────────────────────────┤
//!             │ RAM above 3.25 GiB continues  │
//!             │ here                          │
//!             └──────────────────────────────┘
//! ```

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 0x1000;

/// Boot GDT: null, code, data, TSS descriptors.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of descriptors in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 4;
/// Boot IDT: a single zero entry; the guest installs its own before it enables
/// interrupts.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH: the `hvm_start_info` structure (its address goes in `%ebx`).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH: the module list (one entry, the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH: the memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// PVH: room for the memory map, up to the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// 64-bit Linux boot protocol: the zero page (`struct boot_params`, `%rsi`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity page tables for the 64-bit entry: PML4, one PDPT and
/// [`BOOT_PD_COUNT`] page directories of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Page directories: 4 x 1 GiB, so the whole 32-bit space (MMIO window
/// included) is mapped when the kernel starts.
pub const BOOT_PD_COUNT: u64 = 4;

/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Extended BIOS data area: the MP table lives in its first KiB, where Linux
/// scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory; 0xa0000..0x100000 is the legacy hole.
pub const EBDA_END: u64 = 0xa0000;
/// Where the MP floating pointer and table are written.
pub const MPTABLE_START: u64 = EBDA_START;

/// First byte of high memory: the kernel is loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the MMIO window below 4 GiB. No RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End (exclusive) of the MMIO window: RAM resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Boot-time marker device: the guest writes the byte 123 here (first page of the
/// MMIO window).
pub const BOOT_MARKER_START: u64 = MMIO_GAP_START;
/// Size of the boot-time marker's MMIO range.
pub const BOOT_MARKER_SIZE: u64 = PAGE_SIZE;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + PAGE_SIZE;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = PAGE_SIZE;
/// IRQ of virtio-mmio slot 0; slot `n` has IRQ `VIRTIO_IRQ_BASE + n`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ usable by a virtio-mmio device (the IOAPIC has 24 pins).
pub const VIRTIO_IRQ_MAX: u32 = 23;
/// Maximum number of virtio-mmio devices: one per IRQ in 5..=23.
pub const MAX_VIRTIO_DEVICES: usize = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// IOAPIC registers (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Number of IOAPIC pins; every pin gets an MP-table interrupt entry.
pub const IOAPIC_PINS: u32 = 24;
/// Local APIC registers (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS for real-mode emulation on Intel (three pages, inside the MMIO window).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// COM1: 8250 UART ports and IRQ.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_SIZE: u16 = 8;
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller: data port 0x60 .. command port 0x64.
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_SIZE: u16 = 5;

/// The MMIO address and IRQ of virtio-mmio slot `slot`, or `None` past the last
/// slot.
pub fn virtio_mmio_slot(slot: usize) -> Option<(u64, u32)> {
    if slot >= MAX_VIRTIO_DEVICES {
        return None;
    }
    let slot32 = u32::try_from(slot).ok()?;
    Some((
        VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_IRQ_BASE + slot32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_structures_do_not_overlap() {
        // (start, end) of every structure written below 1 MiB, in address order.
        let gdt_end = BOOT_GDT_START + 8 * BOOT_GDT_ENTRIES as u64;
        let ranges = [
            (BOOT_GDT_START, gdt_end),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + 56),
            (PVH_MODLIST_START, PVH_MODLIST_START + 32),
            (
                PVH_MEMMAP_START,
                PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64,
            ),
            (ZERO_PAGE_START, ZERO_PAGE_START + PAGE_SIZE),
            (BOOT_STACK_POINTER - 0x100, BOOT_STACK_POINTER),
            (PML4_START, PML4_START + PAGE_SIZE),
            (PDPT_START, PDPT_START + PAGE_SIZE),
            (PD_START, PD_START + BOOT_PD_COUNT * PAGE_SIZE),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, EBDA_END),
        ];
        for pair in ranges.windows(2) {
            assert!(pair[0].0 < pair[0].1);
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        const { assert!(EBDA_END <= HIMEM_START) };
    }

    #[test]
    fn mmio_window_layout() {
        assert_eq!(BOOT_MARKER_START, 0xd000_0000);
        assert_eq!(VIRTIO_MMIO_START, 0xd000_1000);
        assert_eq!(MAX_VIRTIO_DEVICES, 19);
        assert_eq!(virtio_mmio_slot(0), Some((0xd000_1000, 5)));
        assert_eq!(virtio_mmio_slot(1), Some((0xd000_2000, 6)));
        assert_eq!(virtio_mmio_slot(18), Some((0xd001_3000, 23)));
        assert_eq!(virtio_mmio_slot(19), None);
        assert_eq!(virtio_mmio_slot(usize::MAX), None);
        // The last slot ends well below the IOAPIC, LAPIC and KVM's TSS.
        let (last, _) = virtio_mmio_slot(MAX_VIRTIO_DEVICES - 1).unwrap();
        assert!(last + VIRTIO_MMIO_SIZE <= IOAPIC_START);
        const {
            assert!(IOAPIC_START < APIC_START && APIC_START < KVM_TSS_ADDRESS);
            assert!(KVM_TSS_ADDRESS + 3 * PAGE_SIZE <= MMIO_GAP_END);
        };
        // The page tables map the whole 32-bit space.
        assert_eq!(BOOT_PD_COUNT << 30, MMIO_GAP_END);
    }
}
