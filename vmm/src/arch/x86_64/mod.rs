//! x86_64: everything about booting and running a guest that is specific to the
//! PC platform. It owns the address map (`layout`), kernel entry (64-bit Linux
//! boot protocol or PVH), boot information (e820, zero page, `hvm_start_info`,
//! MP table), vCPU set-up (CPUID, MSRs, registers, LAPIC), the in-kernel irqchip
//! and PIT, and where the legacy devices sit. It does not own device emulation or
//! the vCPU run loop. Callers use the names re-exported by `arch`, which
//! `arch/aarch64` exports too.

pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

use std::fs::File;
use std::io::Seek;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, ReadVolatile};
use vmm_sys_util::eventfd::EventFd;

pub use boot::InitrdRegion;
pub use layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
pub use mptable::MAX_SUPPORTED_CPUS as MAX_VCPUS;

use super::VirtioMmioInfo;
use crate::config::BootProtocolChoice;
use crate::devices::bus::{BusError, Buses};
use crate::devices::legacy::{SerialDevice, I8042};
use crate::devices::virtio::GuestMemory;
use crate::exit::ExitHandle;

/// Kernel command line used when the configuration gives none: serial console,
/// reboot through the i8042 (how a guest ends the VM), reboot on panic, no PCI,
/// no modules, and no probing of the PS/2 hardware we do not emulate.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// KVM capabilities the x86_64 VM needs.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Pit2,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::ExtCpuid,
    Cap::ImmediateExit,
];

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// The 64-bit Linux boot protocol: long mode, paging on, `%rsi` = zero page.
    Linux64,
    /// The PVH boot protocol: 32-bit protected mode, paging off, `%ebx` =
    /// `hvm_start_info`.
    Pvh,
}

impl std::fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootProtocol::Linux64 => "64-bit linux boot protocol",
            BootProtocol::Pvh => "pvh",
        })
    }
}

/// Where and how the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub addr: GuestAddress,
    pub protocol: BootProtocol,
}

/// The result of loading the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First byte past the loaded image.
    pub kernel_end: u64,
}

/// The guest RAM regions for `mem_size` bytes: below the MMIO window, and the
/// rest from 4 GiB up.
pub fn guest_memory_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_size.min(layout::MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if mem_size > layout::MMIO_GAP_START {
        regions.push((
            GuestAddress(layout::MMIO_GAP_END),
            mem_size - layout::MMIO_GAP_START,
        ));
    }
    regions
}

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadKernelError {
    #[error("load kernel {path}: {source}")]
    Elf {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("load kernel {path}: pvh entry requested but the kernel has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote { path: PathBuf },
    #[error("load kernel {path}: image ends at {end:#x}, past the RAM below the MMIO window")]
    TooLarge { path: PathBuf, end: u64 },
}

/// Loads an ELF `vmlinux` at its physical addresses and picks the entry: PVH
/// when the kernel has the note (unless told otherwise), the 64-bit entry
/// otherwise.
pub fn load_kernel<F>(
    mem: &GuestMemory,
    kernel: &mut F,
    path: &Path,
    choice: BootProtocolChoice,
) -> Result<LoadedKernel, LoadKernelError>
where
    F: std::io::Read + ReadVolatile + Seek,
{
    let result = Elf::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START))).map_err(
        |source| LoadKernelError::Elf {
            path: path.to_owned(),
            source,
        },
    )?;
    if result.kernel_end > layout::MMIO_GAP_START {
        return Err(LoadKernelError::TooLarge {
            path: path.to_owned(),
            end: result.kernel_end,
        });
    }
    let pvh = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr),
        _ => None,
    };
    let entry = match (choice, pvh) {
        (BootProtocolChoice::Auto | BootProtocolChoice::Pvh, Some(addr)) => EntryPoint {
            addr,
            protocol: BootProtocol::Pvh,
        },
        (BootProtocolChoice::Pvh, None) => {
            return Err(LoadKernelError::NoPvhNote {
                path: path.to_owned(),
            })
        }
        (BootProtocolChoice::Auto | BootProtocolChoice::Linux64, _) => EntryPoint {
            addr: result.kernel_load,
            protocol: BootProtocol::Linux64,
        },
    };
    tracing::debug!(
        protocol = %entry.protocol,
        entry = format_args!("{:#x}", entry.addr.0),
        kernel_end = format_args!("{:#x}", result.kernel_end),
        pvh_note = pvh.is_some(),
        "kernel loaded; entering through the {}",
        entry.protocol
    );
    Ok(LoadedKernel {
        entry,
        kernel_end: result.kernel_end,
    })
}

/// Where an initrd of `size` bytes goes: as high as possible below the MMIO
/// window (and below the end of RAM), page-aligned, above the kernel.
pub fn initrd_address(mem_size: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let top = mem_size.min(layout::MMIO_GAP_START);
    let addr = top.checked_sub(size)? & !(layout::PAGE_SIZE - 1);
    (addr >= kernel_end.max(layout::HIMEM_START)).then_some(addr)
}

/// Why the initrd could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadInitrdError {
    #[error("load initrd {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load initrd {path}: {size} bytes do not fit between the kernel (ending at {kernel_end:#x}) and the top of low memory")]
    TooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
    },
    #[error("load initrd {path}: copy into guest memory: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Copies the initrd into guest memory (see [`initrd_address`]).
pub fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    file: &mut File,
    path: &Path,
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
    let addr = initrd_address(mem_size, kernel_end, size).ok_or_else(too_large)?;
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
    #[error("write kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    #[error("add virtio-mmio device at {addr:#x} to the kernel command line: {source}")]
    VirtioCmdline {
        addr: u64,
        #[source]
        source: linux_loader::cmdline::Error,
    },
    #[error(transparent)]
    BootInfo(#[from] boot::BootInfoError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

/// The command line the kernel gets: `base` plus one
/// `virtio_mmio.device=<size>@<addr>:<irq>` per device, within
/// `CMDLINE_MAX_SIZE` (linux-loader refuses what would not fit).
pub fn kernel_cmdline(
    base: &Cmdline,
    devices: &[VirtioMmioInfo],
) -> Result<Cmdline, ConfigureSystemError> {
    let mut cmdline = base.clone();
    for d in devices {
        cmdline
            .add_virtio_mmio_device(d.size, GuestAddress(d.addr), d.irq, None)
            .map_err(|source| ConfigureSystemError::VirtioCmdline {
                addr: d.addr,
                source,
            })?;
    }
    Ok(cmdline)
}

/// Writes everything the kernel reads at entry: the command line (with one
/// `virtio_mmio.device=<size>@<addr>:<irq>` per device in `devices`), the boot
/// GDT/IDT (and page tables for the 64-bit entry), the zero page or the PVH start
/// info, and the MP table for `vcpus`.
pub fn configure_system(
    mem: &GuestMemory,
    mem_size: u64,
    cmdline: &Cmdline,
    vcpus: &[VcpuBootInfo],
    entry: EntryPoint,
    initrd: Option<InitrdRegion>,
    devices: &[VirtioMmioInfo],
) -> Result<(), ConfigureSystemError> {
    let cmdline = kernel_cmdline(cmdline, devices)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(ConfigureSystemError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .map_err(|_| {
            ConfigureSystemError::Cmdline(linux_loader::loader::Error::InvalidCommandLine)
        })?;
    regs::write_gdt_idt(mem, entry.protocol)?;
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs::write_page_tables(mem)?;
            boot::write_boot_params(mem, mem_size, cmdline_len, initrd)?;
        }
        BootProtocol::Pvh => boot::write_pvh_start_info(mem, mem_size, initrd)?,
    }
    // More than 255 vCPUs cannot be configured; the MP table refuses u8::MAX.
    let cpu_count = u8::try_from(vcpus.len()).unwrap_or(u8::MAX);
    mptable::setup_mptable(mem, cpu_count)?;
    Ok(())
}

/// Why the interrupt controllers could not be created.
#[derive(Debug, thiserror::Error)]
pub enum IrqchipError {
    #[error("set kvm tss address: {0}")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("create in-kernel irqchip: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("create in-kernel pit: {0}")]
    Pit(#[source] kvm_ioctls::Error),
}

/// The in-kernel interrupt controllers, once created.
#[derive(Debug)]
pub struct Irqchip(());

impl Irqchip {
    /// Completes the interrupt controllers once every vCPU exists. Nothing is
    /// left to do on x86_64: the PIC, IOAPIC and PIT are complete at creation and
    /// each LAPIC comes with its vCPU.
    pub fn finish(&self) -> Result<(), IrqchipError> {
        Ok(())
    }
}

/// Creates the in-kernel PIC, IOAPIC and LAPICs, and the PIT. Must run before any
/// vCPU is created (KVM refuses an irqchip once vCPUs exist) and before irqfds
/// are registered. The vCPU count does not matter here.
pub fn setup_irqchip(vm: &VmFd, _vcpu_count: u8) -> Result<Irqchip, IrqchipError> {
    // KVM on Intel needs three pages for real-mode emulation; they sit in the
    // MMIO window, never over RAM.
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(IrqchipError::Tss)?;
    vm.create_irq_chip().map_err(IrqchipError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(IrqchipError::Pit)?;
    Ok(Irqchip(()))
}

/// What every vCPU's CPUID is derived from.
#[derive(Debug)]
pub struct CpuTemplate {
    supported: CpuId,
    options: cpuid::CpuidOptions,
}

/// Why the CPU template could not be read.
#[derive(Debug, thiserror::Error)]
#[error("get kvm supported cpuid: {0}")]
pub struct CpuTemplateError(#[source] kvm_ioctls::Error);

impl CpuTemplate {
    /// Reads KVM's supported CPUID (the VM itself is not needed on x86_64).
    pub fn new(kvm: &Kvm, _vm: &VmFd) -> Result<Self, CpuTemplateError> {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(CpuTemplateError)?;
        let options = cpuid::CpuidOptions {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        };
        Ok(CpuTemplate { supported, options })
    }
}

/// Why a vCPU could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureVcpuError {
    #[error("vcpu {vcpu}: build cpuid: {error:?}")]
    BuildCpuid {
        vcpu: u8,
        error: vmm_sys_util::fam::Error,
    },
    #[error("vcpu {vcpu}: set cpuid: {source}")]
    SetCpuid {
        vcpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vcpu {vcpu}: {source}")]
    Msrs {
        vcpu: u8,
        #[source]
        source: msr::MsrError,
    },
    #[error("vcpu {vcpu}: {source}")]
    Regs {
        vcpu: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("vcpu {vcpu}: {source}")]
    Lapic {
        vcpu: u8,
        #[source]
        source: interrupts::LapicError,
    },
}

/// What the boot information needs to know about one configured vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuBootInfo {
    /// The vCPU's APIC ID (its index), as the MP table lists it.
    pub apic_id: u8,
}

/// Sets a vCPU's CPUID, MSRs, registers for `entry`, and LAPIC LINT0/LINT1.
/// Application processors get the same registers; they only run after the
/// boot processor sends INIT/SIPI, which resets them.
pub fn configure_vcpu(
    template: &CpuTemplate,
    vcpu: &VcpuFd,
    id: u8,
    cpu_count: u8,
    entry: EntryPoint,
) -> Result<VcpuBootInfo, ConfigureVcpuError> {
    let entries = cpuid::normalize(
        template.supported.as_slice(),
        id,
        cpu_count,
        template.options,
    );
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|error| ConfigureVcpuError::BuildCpuid { vcpu: id, error })?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| ConfigureVcpuError::SetCpuid { vcpu: id, source })?;
    msr::setup_msrs(vcpu).map_err(|source| ConfigureVcpuError::Msrs { vcpu: id, source })?;
    regs::setup_vcpu_regs(vcpu, entry)
        .map_err(|source| ConfigureVcpuError::Regs { vcpu: id, source })?;
    interrupts::setup_lint(vcpu)
        .map_err(|source| ConfigureVcpuError::Lapic { vcpu: id, source })?;
    Ok(VcpuBootInfo { apic_id: id })
}

/// What the instruction pointer is called in error messages.
pub const INSTRUCTION_POINTER: &str = "rip";

/// A vCPU's instruction pointer, for error messages.
pub fn instruction_pointer(vcpu: &VcpuFd) -> Result<u64, kvm_ioctls::Error> {
    vcpu.get_regs().map(|regs| regs.rip)
}

/// Why the legacy devices could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDevicesError {
    #[error("register serial irqfd (irq {irq}): {source}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Puts the serial console on COM1 (its interrupt on IRQ 4) and the i8042 on
/// ports 0x60..0x64, both on the port I/O bus.
pub fn attach_legacy_devices(
    vm: &VmFd,
    buses: &mut Buses,
    serial: Arc<Mutex<SerialDevice>>,
    serial_irq: &EventFd,
    exit: &ExitHandle,
) -> Result<(), LegacyDevicesError> {
    vm.register_irqfd(serial_irq, layout::SERIAL_IRQ)
        .map_err(|source| LegacyDevicesError::Irqfd {
            irq: layout::SERIAL_IRQ,
            source,
        })?;
    buses.pio.insert(
        serial,
        "serial",
        u64::from(layout::SERIAL_PORT_BASE),
        u64::from(layout::SERIAL_PORT_SIZE),
    )?;
    buses.pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        "i8042",
        u64::from(layout::I8042_PORT_BASE),
        u64::from(layout::I8042_PORT_SIZE),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn memory_regions_split_around_the_mmio_window() {
        assert_eq!(
            guest_memory_regions(256 * MIB),
            vec![(GuestAddress(0), 256 * MIB)]
        );
        assert_eq!(
            guest_memory_regions(layout::MMIO_GAP_START),
            vec![(GuestAddress(0), layout::MMIO_GAP_START)]
        );
        let big = guest_memory_regions(16 * GIB);
        assert_eq!(
            big,
            vec![
                (GuestAddress(0), layout::MMIO_GAP_START),
                (GuestAddress(4 * GIB), 16 * GIB - layout::MMIO_GAP_START),
            ]
        );
        let total: u64 = big.iter().map(|(_, len)| len).sum();
        assert_eq!(total, 16 * GIB);
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_above_the_kernel() {
        let kernel_end = 20 * MIB;
        assert_eq!(
            initrd_address(256 * MIB, kernel_end, 0x1800),
            Some(256 * MIB - 0x2000)
        );
        // Large memory: below the MMIO window, not at the end of RAM.
        let addr = initrd_address(8 * GIB, kernel_end, 10 * MIB).unwrap();
        assert_eq!(addr, layout::MMIO_GAP_START - 10 * MIB);
        assert_eq!(addr % layout::PAGE_SIZE, 0);
        // Does not fit above the kernel.
        assert_eq!(initrd_address(32 * MIB, kernel_end, 13 * MIB), None);
        assert_eq!(
            initrd_address(32 * MIB, kernel_end, 12 * MIB),
            Some(20 * MIB)
        );
        assert_eq!(initrd_address(32 * MIB, 0, u64::MAX), None);
        // Never below 1 MiB, even with a tiny kernel.
        assert_eq!(initrd_address(2 * MIB, 0, 2 * MIB - 0x1000), None);
    }

    /// A minimal ELF64 image: one PT_LOAD segment of `code` at `paddr`, entry at
    /// `paddr`, and optionally a PT_NOTE with a PVH entry.
    pub(crate) fn tiny_elf(code: &[u8], paddr: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let ehdr_size = 64u64;
        let phdr_size = 56u64;
        let note_off = ehdr_size + phdr_size * u64::from(phnum);
        let note = pvh_entry.map(|entry| {
            let mut n = Vec::new();
            n.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            n.extend_from_slice(&4u32.to_le_bytes()); // descsz
            n.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            n.extend_from_slice(b"Xen\0");
            n.extend_from_slice(&entry.to_le_bytes());
            n
        });
        let code_off = note_off + note.as_ref().map_or(0, |n| n.len() as u64);
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF");
        elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1
        elf.extend_from_slice(&[0; 8]);
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&paddr.to_le_bytes()); // e_entry
        elf.extend_from_slice(&ehdr_size.to_le_bytes()); // e_phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf.extend_from_slice(&phnum.to_le_bytes());
        elf.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
        assert_eq!(elf.len(), 64);
        let phdr = |elf: &mut Vec<u8>, ptype: u32, off: u64, addr: u64, size: u64| {
            elf.extend_from_slice(&ptype.to_le_bytes());
            elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
            elf.extend_from_slice(&off.to_le_bytes());
            elf.extend_from_slice(&addr.to_le_bytes()); // vaddr
            elf.extend_from_slice(&addr.to_le_bytes()); // paddr
            elf.extend_from_slice(&size.to_le_bytes()); // filesz
            elf.extend_from_slice(&size.to_le_bytes()); // memsz
            elf.extend_from_slice(&0x1000u64.to_le_bytes());
        };
        phdr(&mut elf, 1, code_off, paddr, code.len() as u64);
        if let Some(n) = &note {
            phdr(&mut elf, 4, note_off, 0, n.len() as u64);
        }
        if let Some(n) = &note {
            elf.extend_from_slice(n);
        }
        elf.extend_from_slice(code);
        elf
    }

    fn load(elf: &[u8], choice: BootProtocolChoice) -> Result<LoadedKernel, LoadKernelError> {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (32 * MIB) as usize)]).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, elf).unwrap();
        let loaded = load_kernel(&mem, &mut file, Path::new("vmlinux"), choice)?;
        let mut first = [0u8; 4];
        vm_memory::Bytes::read_slice(&mem, &mut first, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&first, b"\x90\x90\xf4\xeb");
        Ok(loaded)
    }

    const CODE: &[u8] = b"\x90\x90\xf4\xeb\xfd";

    #[test]
    fn loads_elf_and_picks_the_entry() {
        let plain = tiny_elf(CODE, 0x100_0000, None);
        let with_pvh = tiny_elf(CODE, 0x100_0000, Some(0x100_0001));

        let k = load(&plain, BootProtocolChoice::Auto).unwrap();
        assert_eq!(
            k.entry,
            EntryPoint {
                addr: GuestAddress(0x100_0000),
                protocol: BootProtocol::Linux64
            }
        );
        assert_eq!(k.kernel_end, 0x100_0000 + CODE.len() as u64);

        let k = load(&with_pvh, BootProtocolChoice::Auto).unwrap();
        assert_eq!(
            k.entry,
            EntryPoint {
                addr: GuestAddress(0x100_0001),
                protocol: BootProtocol::Pvh
            }
        );
        let k = load(&with_pvh, BootProtocolChoice::Linux64).unwrap();
        assert_eq!(k.entry.protocol, BootProtocol::Linux64);
        assert!(matches!(
            load(&plain, BootProtocolChoice::Pvh),
            Err(LoadKernelError::NoPvhNote { .. })
        ));
    }

    #[test]
    fn refuses_bad_kernels() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (32 * MIB) as usize)]).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("not elf", b"MZ not an elf at all".repeat(10)),
            ("entry below 1 MiB", tiny_elf(CODE, 0x1000, None)),
            ("past the end of memory", tiny_elf(CODE, 64 * MIB, None)),
        ];
        for (what, bytes) in cases {
            let mut file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut file, &bytes).unwrap();
            let err = load_kernel(&mem, &mut file, Path::new("k"), BootProtocolChoice::Auto);
            assert!(
                matches!(err, Err(LoadKernelError::Elf { .. })),
                "{what}: {err:?}"
            );
            assert!(err.unwrap_err().to_string().starts_with("load kernel k: "));
        }
    }

    #[test]
    fn configure_system_writes_what_the_kernel_reads() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        for protocol in [BootProtocol::Linux64, BootProtocol::Pvh] {
            let entry = EntryPoint {
                addr: GuestAddress(0x100_0000),
                protocol,
            };
            let vcpus = [VcpuBootInfo { apic_id: 0 }, VcpuBootInfo { apic_id: 1 }];
            let devices = [VirtioMmioInfo {
                addr: 0xd000_1000,
                size: 0x1000,
                irq: 5,
            }];
            configure_system(&mem, 64 * MIB, &cmdline, &vcpus, entry, None, &devices).unwrap();
            let want = b"console=ttyS0 virtio_mmio.device=4K@0xd0001000:5\0";
            let mut text = [0u8; 49];
            vm_memory::Bytes::read_slice(&mem, &mut text, GuestAddress(CMDLINE_START)).unwrap();
            assert_eq!(&text, want);
            let mut mp = [0u8; 4];
            vm_memory::Bytes::read_slice(&mem, &mut mp, GuestAddress(layout::MPTABLE_START))
                .unwrap();
            assert_eq!(&mp, b"_MP_");
        }
        let magic: u32 =
            vm_memory::Bytes::read_obj(&mem, GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(magic, boot::XEN_HVM_START_MAGIC_VALUE);
        let flag: u16 =
            vm_memory::Bytes::read_obj(&mem, GuestAddress(layout::ZERO_PAGE_START + 0x1fe))
                .unwrap();
        assert_eq!(flag, 0xaa55);
    }
}
