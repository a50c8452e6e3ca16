//! aarch64: everything about booting and running a guest that is specific to
//! arm64. It owns the address map (`layout`), loading the kernel `Image` and the
//! initrd, the device tree (`fdt`), the in-kernel GICv3 (`gic`), vCPU set-up
//! (`KVM_ARM_VCPU_INIT` with PSCI, entry registers, MPIDR; `regs`) and where the
//! serial console sits (MMIO, on an SPI). It does not own device emulation or the
//! vCPU run loop. Callers use the names re-exported by `arch`, which
//! `arch/x86_64` exports too.
//!
//! How a guest ends: through PSCI. `SYSTEM_OFF` and `SYSTEM_RESET` (Linux's
//! `poweroff`, `reboot`, and a panic with `panic=-1`) reach the VMM as
//! `KVM_EXIT_SYSTEM_EVENT`, which the vCPU loop turns into the same exit reasons
//! as an x86 guest's reboot; the console's panic watch tells a panic apart.
//!
//! The pure parts (layout, device tree, register encodings, placement of the
//! initrd and the FDT) compile on every host for the unit tests; the KVM calls
//! compile on aarch64 only.

pub mod fdt;
#[cfg(target_arch = "aarch64")]
pub mod gic;
pub mod layout;
pub mod regs;

use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, Bytes, GuestAddress};

pub use layout::CMDLINE_MAX_SIZE;

use super::VirtioMmioInfo;
use crate::devices::virtio::GuestMemory;

/// Kernel command line used when the configuration gives none: the 8250 console
/// (the device tree's UART is ttyS0), reboot on panic (PSCI `SYSTEM_RESET`, which
/// the console's panic watch reports as a panic), no modules.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 nomodule";

/// Most vCPUs a VM may have. The GIC's redistributor frames (128 KiB each) sit
/// below the distributor, so this bounds how far down they reach (8 MiB).
pub const MAX_VCPUS: u8 = 64;

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

/// Where and how the kernel is entered: PC at `addr`, X0 = `fdt`, the physical
/// address of the device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub addr: GuestAddress,
    pub fdt: GuestAddress,
}

/// The result of loading the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First byte past the kernel's memory: the Image, or its `image_size` (BSS
    /// included) if larger.
    pub kernel_end: u64,
}

/// What the device tree needs to know about one configured vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuBootInfo {
    /// MPIDR_EL1 as KVM set it at `KVM_ARM_VCPU_INIT`.
    pub mpidr: u64,
}

/// The guest RAM regions for `mem_size` bytes: one, from `layout::RAM_START`.
pub fn guest_memory_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    vec![(GuestAddress(layout::RAM_START), mem_size)]
}

/// Offset of `image_size` in the arm64 Image header.
const IMAGE_SIZE_OFFSET: u64 = 16;

/// The end of the kernel's memory once its Image is at `load` with `file_end`
/// the end of the bytes copied: the header's `image_size` (the memory the kernel
/// uses from `load`, BSS included; 0 in kernels older than 3.17, which say
/// nothing) read back from guest memory, or the file's end if that is further.
pub fn kernel_end(mem: &GuestMemory, load: GuestAddress, file_end: u64) -> Option<u64> {
    let image_size: u64 = mem
        .read_obj(load.checked_add(IMAGE_SIZE_OFFSET)?)
        .ok()
        .map(u64::from_le)?;
    let declared = load.0.checked_add(image_size)?;
    Some(declared.max(file_end))
}

/// Why the initrd could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadInitrdError {
    #[error("load initrd {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load initrd {path}: {size} bytes do not fit between the kernel (ending at {kernel_end:#x}) and the device tree at the end of RAM")]
    TooLarge {
        path: std::path::PathBuf,
        size: u64,
        kernel_end: u64,
    },
    #[error("load initrd {path}: copy into guest memory: {source}")]
    Copy {
        path: std::path::PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Copies the initrd into guest memory (see [`layout::initrd_address`]).
pub fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    file: &mut std::fs::File,
    path: &std::path::Path,
    kernel_end: u64,
) -> Result<InitrdRegion, LoadInitrdError> {
    let size = file
        .metadata()
        .map_err(|source| LoadInitrdError::Read {
            path: path.to_owned(),
            source,
        })?
        .len();
    let too_large = || LoadInitrdError::TooLarge {
        path: path.to_owned(),
        size,
        kernel_end,
    };
    let addr = layout::initrd_address(mem_size, kernel_end, size).ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|source| LoadInitrdError::Copy {
            path: path.to_owned(),
            source,
        })?;
    Ok(InitrdRegion { addr, size })
}

/// Why the boot information could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureSystemError {
    #[error("kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error(transparent)]
    Fdt(#[from] fdt::FdtError),
    #[error("write the device tree at {addr:#x}: {source}")]
    Write {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Writes everything the kernel reads at entry: the device tree, at
/// `entry.fdt`, describing memory, `vcpus`, the GIC, the timer, the UART, the
/// virtio-mmio `devices`, the command line and the initrd.
pub fn configure_system(
    mem: &GuestMemory,
    mem_size: u64,
    cmdline: &Cmdline,
    vcpus: &[VcpuBootInfo],
    entry: EntryPoint,
    initrd: Option<InitrdRegion>,
    devices: &[VirtioMmioInfo],
) -> Result<(), ConfigureSystemError> {
    let cmdline = cmdline
        .as_cstring()
        .map_err(ConfigureSystemError::Cmdline)?;
    let mpidrs: Vec<u64> = vcpus.iter().map(|v| v.mpidr).collect();
    let blob = fdt::create_fdt(&fdt::FdtConfig {
        mem_size,
        cmdline: &cmdline,
        mpidrs: &mpidrs,
        initrd,
        devices,
    })?;
    mem.write_slice(&blob, entry.fdt)
        .map_err(|source| ConfigureSystemError::Write {
            addr: entry.fdt.0,
            source,
        })?;
    tracing::debug!(
        fdt = format_args!("{:#x}", entry.fdt.0),
        bytes = blob.len(),
        "device tree written"
    );
    Ok(())
}

/// What the instruction pointer is called in error messages.
pub const INSTRUCTION_POINTER: &str = "pc";

#[cfg(target_arch = "aarch64")]
mod kvm;
#[cfg(target_arch = "aarch64")]
pub use gic::{setup_irqchip, Irqchip, IrqchipError};
#[cfg(target_arch = "aarch64")]
pub use kvm::{
    attach_legacy_devices, configure_vcpu, instruction_pointer, load_kernel, ConfigureVcpuError,
    CpuTemplate, CpuTemplateError, LegacyDevicesError, LoadKernelError, REQUIRED_CAPS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn memory(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(
            &guest_memory_regions(size)
                .into_iter()
                .map(|(a, l)| (a, l as usize))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn ram_starts_at_2gib() {
        assert_eq!(
            guest_memory_regions(256 * MIB),
            vec![(GuestAddress(0x8000_0000), 256 * MIB)]
        );
    }

    #[test]
    fn kernel_end_covers_the_declared_image_size() {
        let mem = memory(64 * MIB);
        let load = GuestAddress(layout::KERNEL_BASE);
        // image_size larger than the file: the BSS counts.
        mem.write_obj(0x180_0000u64.to_le(), GuestAddress(load.0 + 16))
            .unwrap();
        assert_eq!(
            kernel_end(&mem, load, load.0 + 0x100_0000),
            Some(load.0 + 0x180_0000)
        );
        // An old kernel says 0: the file's end.
        mem.write_obj(0u64, GuestAddress(load.0 + 16)).unwrap();
        assert_eq!(
            kernel_end(&mem, load, load.0 + 0x100_0000),
            Some(load.0 + 0x100_0000)
        );
        // A hostile header cannot wrap around.
        mem.write_obj(u64::MAX, GuestAddress(load.0 + 16)).unwrap();
        assert_eq!(kernel_end(&mem, load, load.0 + 0x100), None);
    }

    #[test]
    fn initrd_lands_below_the_fdt() {
        let mem = memory(64 * MIB);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0xab; 0x3000]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let path = std::path::Path::new("initrd");
        let kernel_end = layout::RAM_START + 16 * MIB;
        let region = load_initrd(&mem, 64 * MIB, &mut file, path, kernel_end).unwrap();
        let fdt = layout::fdt_address(64 * MIB).unwrap();
        assert_eq!(
            region,
            InitrdRegion {
                addr: fdt - 0x1_0000,
                size: 0x3000
            }
        );
        let mut back = [0u8; 0x3000];
        mem.read_slice(&mut back, GuestAddress(region.addr))
            .unwrap();
        assert!(back.iter().all(|b| *b == 0xab));

        let mut big = tempfile::tempfile().unwrap();
        big.set_len(48 * MIB).unwrap();
        let err = load_initrd(&mem, 64 * MIB, &mut big, path, kernel_end).unwrap_err();
        assert!(matches!(err, LoadInitrdError::TooLarge { .. }), "{err}");
        assert!(err.to_string().starts_with("load initrd initrd: "), "{err}");
    }

    #[test]
    fn configure_system_writes_the_device_tree_at_the_entry_fdt() {
        let mem = memory(64 * MIB);
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        let fdt = GuestAddress(layout::fdt_address(64 * MIB).unwrap());
        let entry = EntryPoint {
            addr: GuestAddress(layout::KERNEL_BASE),
            fdt,
        };
        let vcpus = [VcpuBootInfo { mpidr: 0x8000_0000 }];
        let devices = [VirtioMmioInfo {
            addr: 0x4000_2000,
            size: 0x1000,
            irq: 2,
        }];
        configure_system(&mem, 64 * MIB, &cmdline, &vcpus, entry, None, &devices).unwrap();
        let magic: u32 = mem.read_obj(fdt).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
        let total: u32 = mem.read_obj(GuestAddress(fdt.0 + 4)).unwrap();
        let total = u64::from(u32::from_be(total));
        assert!(total > 0 && total <= layout::FDT_MAX_SIZE);
        assert!(fdt.0 + total <= layout::ram_end(64 * MIB));
        // The command line is in the blob.
        let mut blob = vec![0u8; total as usize];
        mem.read_slice(&mut blob, fdt).unwrap();
        assert!(blob.windows(13).any(|w| w == b"console=ttyS0"));
    }
}
