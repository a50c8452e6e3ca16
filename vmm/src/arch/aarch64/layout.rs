//! The fixed guest physical address map of an aarch64 microVM. Everything the VMM
//! places in guest memory or in the MMIO region has its address here, and nowhere
//! else; so do the interrupt numbers. This module owns addresses, sizes and
//! interrupt numbers only; it writes nothing.
//!
//! ```text
//! 0x0000_0000 ┌──────────────────────────────┐
//!             │ nothing: no RAM, no device    │
//!             │ (a stray access is an exit    │
//!             │ the VMM answers with zeros)   │
//! 0x4000_0000 ├──────────────────────────────┤ MMIO region (1 GiB)
//!             │ boot-time marker (1 page)     │
//! 0x4000_1000 │ serial 8250 (1 page, SPI 1)   │
//! 0x4000_2000 │ virtio-mmio slot 0 (SPI 2)    │
//! 0x4000_3000 │ virtio-mmio slot 1 (SPI 3)    │
//!             │ ... 4 KiB per slot, 32 slots  │
//!             │ (SPIs 2..=33)                 │
//!             │ free                          │
//!  GICD - n * │ GICv3 redistributors, 128 KiB │
//!    128 KiB  │ per vCPU (n vCPUs)            │
//! 0x7fff_0000 │ GICv3 distributor (64 KiB)    │
//! 0x8000_0000 ├──────────────────────────────┤ RAM (any size)
//!             │ kernel Image at text_offset   │
//!             │ (0 for Linux 6.1), up to its  │
//!             │ image_size (BSS included)     │
//!             │ free                          │
//!             │ initrd: as high as fits below │
//!             │ the FDT and below RAM + 32 GiB│
//!             │ (64 KiB-aligned)              │
//! end of RAM  │ FDT: the last 2 MiB-aligned   │
//!   - 2 MiB   │ 2 MiB block (FDT ≤ 2 MiB)     │
//!             └──────────────────────────────┘
//! ```
//!
//! Interrupts: the GIC's private interrupts (SGIs 0-15, PPIs 16-31) belong to
//! KVM (the arch timer's PPIs are in `fdt.rs`). Devices get SPIs; an irqfd on KVM
//! GSI `n` raises SPI `n` (interrupt ID `32 + n`), and the device tree names SPI
//! `n` as `<GIC_SPI n flags>`, so one number serves both.

/// Size of a guest page as the VMM lays things out (the guest kernel may use
/// 4, 16 or 64 KiB pages; see [`INITRD_ALIGN`]).
pub const PAGE_SIZE: u64 = 0x1000;

/// Start of the MMIO region: devices only, no RAM.
pub const MMIO_START: u64 = 0x4000_0000;
/// Size of the MMIO region (up to the start of RAM).
pub const MMIO_SIZE: u64 = RAM_START - MMIO_START;

/// Boot-time marker device: the guest writes the byte 123 here (first page of the
/// MMIO region). moat-agent's `BOOT_MARKER_ADDR` for aarch64 is this address.
pub const BOOT_MARKER_START: u64 = MMIO_START;
/// Size of the boot-time marker's MMIO range.
pub const BOOT_MARKER_SIZE: u64 = PAGE_SIZE;

/// The serial console's 8250 UART (byte-wide registers, `reg-shift` 0).
pub const SERIAL_MMIO_START: u64 = MMIO_START + PAGE_SIZE;
/// Size of the UART's MMIO range (its 8 registers, padded to a page).
pub const SERIAL_MMIO_SIZE: u64 = PAGE_SIZE;
/// The UART's SPI.
pub const SERIAL_SPI: u32 = 1;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = SERIAL_MMIO_START + SERIAL_MMIO_SIZE;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = PAGE_SIZE;
/// SPI of virtio-mmio slot 0; slot `n` has SPI `VIRTIO_SPI_BASE + n`.
pub const VIRTIO_SPI_BASE: u32 = 2;
/// Maximum number of virtio-mmio devices.
pub const MAX_VIRTIO_DEVICES: usize = 32;

/// Interrupt IDs the vGIC implements: 32 private ones and 96 SPIs, more than
/// the devices above use (KVM wants a multiple of 32, at least 64).
pub const GIC_NR_IRQS: u32 = 128;
/// Number of SPIs (the interrupt IDs past the 32 private ones).
pub const GIC_NR_SPIS: u32 = GIC_NR_IRQS - 32;
/// GICv3 distributor: the last 64 KiB below RAM.
pub const GICD_SIZE: u64 = 0x1_0000;
pub const GICD_START: u64 = RAM_START - GICD_SIZE;
/// GICv3 redistributor of one vCPU: the RD_base and SGI_base frames.
pub const GICR_SIZE_PER_VCPU: u64 = 0x2_0000;

/// Start of guest RAM (2 MiB-aligned, as the kernel's load base must be).
pub const RAM_START: u64 = 0x8000_0000;
/// The kernel Image goes `text_offset` bytes above this base.
pub const KERNEL_BASE: u64 = RAM_START;
/// Alignment the arm64 boot protocol wants for the kernel's base.
pub const KERNEL_BASE_ALIGN: u64 = 2 << 20;

/// Largest device tree the arm64 boot protocol accepts.
pub const FDT_MAX_SIZE: u64 = 2 << 20;
/// The FDT must not share a 2 MiB block with memory the kernel maps otherwise.
pub const FDT_ALIGN: u64 = 2 << 20;

/// The initrd and the kernel must lie in one 1 GiB-aligned window of at most
/// 32 GiB (arm64 booting.rst); with the kernel at [`KERNEL_BASE`] the initrd
/// ends at most here.
pub const INITRD_WINDOW_END: u64 = KERNEL_BASE + (32 << 30);
/// Initrd alignment: 64 KiB, the largest arm64 page size, so the kernel can
/// free the initrd's pages without touching a neighbour's.
pub const INITRD_ALIGN: u64 = 0x1_0000;

/// Kernel command line buffer (arm64 `COMMAND_LINE_SIZE`), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// The MMIO address and SPI of virtio-mmio slot `slot`, or `None` past the last
/// slot.
pub fn virtio_mmio_slot(slot: usize) -> Option<(u64, u32)> {
    if slot >= MAX_VIRTIO_DEVICES {
        return None;
    }
    let slot32 = u32::try_from(slot).ok()?;
    Some((
        VIRTIO_MMIO_START + u64::from(slot32) * VIRTIO_MMIO_SIZE,
        VIRTIO_SPI_BASE + slot32,
    ))
}

/// The GICv3 frames of a VM with `vcpus` vCPUs: the distributor at
/// [`GICD_START`], and the redistributors packed right below it, vCPU 0's
/// lowest. Both as `(base, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicLayout {
    pub dist: (u64, u64),
    pub redists: (u64, u64),
}

/// Where the GIC's frames sit for `vcpus` vCPUs (at least one is assumed).
pub fn gic_layout(vcpus: u8) -> GicLayout {
    let redists_size = u64::from(vcpus.max(1)) * GICR_SIZE_PER_VCPU;
    GicLayout {
        dist: (GICD_START, GICD_SIZE),
        redists: (GICD_START - redists_size, redists_size),
    }
}

/// One past the last byte of RAM.
pub fn ram_end(mem_size: u64) -> u64 {
    RAM_START.saturating_add(mem_size)
}

/// Where the FDT goes: the start of the last whole 2 MiB block of RAM, or `None`
/// if RAM has no such block.
pub fn fdt_address(mem_size: u64) -> Option<u64> {
    let end = ram_end(mem_size) & !(FDT_ALIGN - 1);
    let addr = end.checked_sub(FDT_MAX_SIZE)?;
    (addr >= RAM_START).then_some(addr)
}

/// Where an initrd of `size` bytes goes: as high as possible below the FDT and
/// below [`INITRD_WINDOW_END`], aligned to [`INITRD_ALIGN`], not below
/// `kernel_end`. `None` if it does not fit.
pub fn initrd_address(mem_size: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let top = fdt_address(mem_size)?.min(INITRD_WINDOW_END);
    let addr = top.checked_sub(size)? & !(INITRD_ALIGN - 1);
    (addr >= kernel_end.max(RAM_START)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn mmio_region_layout() {
        assert_eq!(BOOT_MARKER_START, 0x4000_0000);
        assert_eq!(SERIAL_MMIO_START, 0x4000_1000);
        assert_eq!(virtio_mmio_slot(0), Some((0x4000_2000, 2)));
        assert_eq!(virtio_mmio_slot(1), Some((0x4000_3000, 3)));
        assert_eq!(virtio_mmio_slot(31), Some((0x4002_1000, 33)));
        assert_eq!(virtio_mmio_slot(32), None);
        assert_eq!(virtio_mmio_slot(usize::MAX), None);
        // Every device interrupt is an SPI the vGIC implements, and the serial's
        // is not shared with a virtio slot.
        let (_, last_spi) = virtio_mmio_slot(MAX_VIRTIO_DEVICES - 1).unwrap();
        assert!(last_spi < GIC_NR_SPIS);
        const {
            assert!(SERIAL_SPI < VIRTIO_SPI_BASE);
            assert!(GIC_NR_IRQS & 31 == 0);
        };
        // The devices' pages do not overlap and stay in the MMIO region.
        let ranges = [
            (BOOT_MARKER_START, BOOT_MARKER_SIZE),
            (SERIAL_MMIO_START, SERIAL_MMIO_SIZE),
            (
                VIRTIO_MMIO_START,
                MAX_VIRTIO_DEVICES as u64 * VIRTIO_MMIO_SIZE,
            ),
        ];
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        assert!(ranges[0].0 >= MMIO_START);
        assert_eq!(MMIO_START + MMIO_SIZE, RAM_START);
    }

    #[test]
    fn gic_frames_sit_below_ram_above_the_devices() {
        let one = gic_layout(1);
        assert_eq!(one.dist, (0x7fff_0000, 0x1_0000));
        assert_eq!(one.redists, (0x7ffd_0000, 0x2_0000));
        let four = gic_layout(4);
        assert_eq!(four.redists, (0x7ff7_0000, 0x8_0000));
        // The redistributors end where the distributor starts; the distributor
        // ends where RAM starts.
        for n in [1, 2, 8, super::super::MAX_VCPUS, u8::MAX] {
            let g = gic_layout(n);
            assert_eq!(g.redists.0 + g.redists.1, g.dist.0);
            assert_eq!(g.dist.0 + g.dist.1, RAM_START);
            assert_eq!(g.redists.1, u64::from(n) * GICR_SIZE_PER_VCPU);
            assert_eq!(g.redists.0 % 0x1_0000, 0, "64 KiB-aligned frames");
            let (last, _) = virtio_mmio_slot(MAX_VIRTIO_DEVICES - 1).unwrap();
            assert!(last + VIRTIO_MMIO_SIZE <= g.redists.0);
        }
        assert_eq!(gic_layout(0), gic_layout(1));
    }

    #[test]
    fn fdt_takes_the_last_2mib_block_of_ram() {
        assert_eq!(fdt_address(256 * MIB), Some(RAM_START + 254 * MIB));
        // RAM ending mid-block: the FDT stays inside one aligned block.
        assert_eq!(fdt_address(9 * MIB), Some(RAM_START + 6 * MIB));
        assert_eq!(fdt_address(2 * MIB), Some(RAM_START));
        assert_eq!(fdt_address(MIB), None);
        let big = fdt_address(64 * GIB).unwrap();
        assert_eq!(big, RAM_START + 64 * GIB - 2 * MIB);
        assert_eq!(big % FDT_ALIGN, 0);
    }

    #[test]
    fn initrd_goes_high_below_the_fdt_and_the_32gib_window() {
        let kernel_end = RAM_START + 20 * MIB;
        let fdt = fdt_address(256 * MIB).unwrap();
        assert_eq!(
            initrd_address(256 * MIB, kernel_end, 0x1800),
            Some(fdt - 0x1_0000)
        );
        assert_eq!(
            initrd_address(256 * MIB, kernel_end, 0x1_0000),
            Some(fdt - 0x1_0000)
        );
        // Large RAM: the initrd stays inside the kernel's 32 GiB window.
        let addr = initrd_address(64 * GIB, kernel_end, 10 * MIB).unwrap();
        assert_eq!(addr, INITRD_WINDOW_END - 10 * MIB);
        assert_eq!(addr % INITRD_ALIGN, 0);
        // Does not fit above the kernel.
        assert_eq!(initrd_address(32 * MIB, kernel_end, 11 * MIB), None);
        assert_eq!(
            initrd_address(32 * MIB, kernel_end, 10 * MIB),
            Some(kernel_end)
        );
        assert_eq!(initrd_address(32 * MIB, 0, u64::MAX), None);
        assert_eq!(initrd_address(MIB, 0, 0x1000), None, "no room for the fdt");
    }
}
