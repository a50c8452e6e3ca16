//! The aarch64 steps that call KVM or load the kernel with `linux-loader`'s
//! arm64 Image loader: compiled on aarch64 only. The values they apply come from
//! the pure modules next door (`layout`, `regs`), which the unit tests cover.

use std::io::Seek;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use linux_loader::loader::pe::PE;
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, ReadVolatile};
use vmm_sys_util::eventfd::EventFd;

use super::regs::{self, RegsError};
use super::{kernel_end, layout, EntryPoint, LoadedKernel, VcpuBootInfo};
use crate::config::BootProtocolChoice;
use crate::devices::bus::{BusError, Buses};
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::GuestMemory;
use crate::exit::ExitHandle;

/// KVM capabilities the aarch64 VM needs.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::ImmediateExit,
    Cap::DeviceCtrl,
    Cap::OneReg,
    Cap::ArmPsci02,
];

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadKernelError {
    #[error("load kernel {path}: boot protocol {choice} is for x86_64; an arm64 Image has one entry (use auto)")]
    Protocol { path: PathBuf, choice: &'static str },
    #[error("load kernel {path}: no room for the device tree in {mem_size} bytes of RAM")]
    NoFdtRoom { path: PathBuf, mem_size: u64 },
    #[error("load kernel {path}: not an arm64 Image, or it does not fit in RAM: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("load kernel {path}: the kernel needs memory up to {end:#x}, past the device tree at {fdt:#x}")]
    TooLarge { path: PathBuf, end: u64, fdt: u64 },
}

/// Loads an arm64 `Image` `text_offset` bytes above [`layout::KERNEL_BASE`]
/// (2 MiB-aligned) and enters it at its first byte, with the device tree in the
/// last 2 MiB block of RAM.
pub fn load_kernel<F>(
    mem: &GuestMemory,
    kernel: &mut F,
    path: &Path,
    choice: BootProtocolChoice,
) -> Result<LoadedKernel, LoadKernelError>
where
    F: std::io::Read + ReadVolatile + Seek,
{
    let refused = match choice {
        BootProtocolChoice::Auto => None,
        BootProtocolChoice::Linux64 => Some("linux64"),
        BootProtocolChoice::Pvh => Some("pvh"),
    };
    if let Some(choice) = refused {
        return Err(LoadKernelError::Protocol {
            path: path.to_owned(),
            choice,
        });
    }
    let mem_size = vm_memory::GuestMemory::last_addr(mem)
        .0
        .saturating_add(1)
        .saturating_sub(layout::RAM_START);
    let fdt = layout::fdt_address(mem_size).ok_or_else(|| LoadKernelError::NoFdtRoom {
        path: path.to_owned(),
        mem_size,
    })?;
    let result =
        PE::load(mem, Some(GuestAddress(layout::KERNEL_BASE)), kernel, None).map_err(|source| {
            LoadKernelError::Image {
                path: path.to_owned(),
                source,
            }
        })?;
    let too_large = |end| LoadKernelError::TooLarge {
        path: path.to_owned(),
        end,
        fdt,
    };
    let end = kernel_end(mem, result.kernel_load, result.kernel_end)
        .ok_or_else(|| too_large(u64::MAX))?;
    if end > fdt {
        return Err(too_large(end));
    }
    let entry = EntryPoint {
        addr: result.kernel_load,
        fdt: GuestAddress(fdt),
    };
    tracing::debug!(
        entry = format_args!("{:#x}", entry.addr.0),
        kernel_end = format_args!("{end:#x}"),
        fdt = format_args!("{fdt:#x}"),
        "kernel Image loaded; entering at its first byte with x0 = the device tree"
    );
    Ok(LoadedKernel {
        entry,
        kernel_end: end,
    })
}

/// What every vCPU's `KVM_ARM_VCPU_INIT` starts from: KVM's preferred target
/// for this host.
#[derive(Debug)]
pub struct CpuTemplate {
    init: kvm_vcpu_init,
}

/// Why the CPU template could not be read.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CpuTemplateError(#[from] RegsError);

impl CpuTemplate {
    pub fn new(_kvm: &Kvm, vm: &VmFd) -> Result<Self, CpuTemplateError> {
        Ok(CpuTemplate {
            init: regs::preferred_target(vm)?,
        })
    }
}

/// Why a vCPU could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("vcpu {vcpu}: {source}")]
pub struct ConfigureVcpuError {
    vcpu: u8,
    #[source]
    source: RegsError,
}

/// Initialises a vCPU (PSCI 0.2; powered off unless it is vCPU 0), sets the
/// boot vCPU's entry registers, and reads back the MPIDR KVM gave it.
pub fn configure_vcpu(
    template: &CpuTemplate,
    vcpu: &VcpuFd,
    id: u8,
    _cpu_count: u8,
    entry: EntryPoint,
) -> Result<VcpuBootInfo, ConfigureVcpuError> {
    let err = |source| ConfigureVcpuError { vcpu: id, source };
    regs::init_vcpu(vcpu, &template.init, id).map_err(err)?;
    if id == 0 {
        for (reg, value) in regs::boot_registers(entry.addr.0, entry.fdt.0) {
            regs::set_reg(vcpu, reg, value).map_err(err)?;
        }
    }
    let mpidr = regs::get_reg(vcpu, regs::REG_MPIDR_EL1).map_err(err)?;
    Ok(VcpuBootInfo { mpidr })
}

/// A vCPU's program counter, for error messages.
pub fn instruction_pointer(vcpu: &VcpuFd) -> Result<u64, kvm_ioctls::Error> {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(regs::REG_PC, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Why the legacy devices could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDevicesError {
    #[error("register serial irqfd (spi {irq}): {source}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Puts the serial console's 8250 on the MMIO bus, its interrupt on
/// [`layout::SERIAL_SPI`]. There is no other legacy device on aarch64.
pub fn attach_legacy_devices(
    vm: &VmFd,
    buses: &mut Buses,
    serial: Arc<Mutex<SerialDevice>>,
    serial_irq: &EventFd,
    _exit: &ExitHandle,
) -> Result<(), LegacyDevicesError> {
    vm.register_irqfd(serial_irq, layout::SERIAL_SPI)
        .map_err(|source| LegacyDevicesError::Irqfd {
            irq: layout::SERIAL_SPI,
            source,
        })?;
    buses.mmio.insert(
        serial,
        "serial",
        layout::SERIAL_MMIO_START,
        layout::SERIAL_MMIO_SIZE,
    )?;
    Ok(())
}

/// Kernel loading needs `linux-loader`'s arm64 Image loader, which exists on
/// aarch64 only; these run on arm64 build machines (the placement rules they
/// rely on are tested everywhere, in `layout.rs` and `mod.rs`).
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    /// A minimal arm64 Image: the 64-byte header and `body` bytes of code.
    fn image(text_offset: u64, image_size: u64, magic: &[u8; 4], body: usize) -> std::fs::File {
        let mut bytes = vec![0u8; 64 + body];
        bytes[8..16].copy_from_slice(&text_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
        bytes[24..32].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4K, anywhere
        bytes[56..60].copy_from_slice(magic);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        file
    }

    fn memory(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(layout::RAM_START), size as usize)]).unwrap()
    }

    #[test]
    fn loads_an_image_at_its_text_offset() {
        let mem = memory(64 * MIB);
        let path = Path::new("Image");
        let mut file = image(0, 3 * MIB, b"ARM\x64", 0x1000);
        let k = load_kernel(&mem, &mut file, path, BootProtocolChoice::Auto).unwrap();
        assert_eq!(k.entry.addr, GuestAddress(layout::RAM_START));
        assert_eq!(k.entry.fdt.0, layout::fdt_address(64 * MIB).unwrap());
        assert_eq!(
            k.kernel_end,
            layout::RAM_START + 3 * MIB,
            "image_size counts"
        );

        let mut file = image(0x8_0000, 0x10_0000, b"ARM\x64", 0x1000);
        let k = load_kernel(&mem, &mut file, path, BootProtocolChoice::Auto).unwrap();
        assert_eq!(k.entry.addr, GuestAddress(layout::RAM_START + 0x8_0000));
    }

    #[test]
    fn refuses_what_is_not_a_bootable_image() {
        let mem = memory(16 * MIB);
        let path = Path::new("Image");
        let load = |file: &mut std::fs::File, choice| load_kernel(&mem, file, path, choice);
        assert!(matches!(
            load(&mut image(0, MIB, b"MZ\0\0", 16), BootProtocolChoice::Auto),
            Err(LoadKernelError::Image { .. })
        ));
        assert!(matches!(
            load(&mut image(0, MIB, b"ARM\x64", 16), BootProtocolChoice::Pvh),
            Err(LoadKernelError::Protocol { choice: "pvh", .. })
        ));
        // Its memory would run into the device tree, or wrap around.
        assert!(matches!(
            load(
                &mut image(0, 15 * MIB, b"ARM\x64", 16),
                BootProtocolChoice::Auto
            ),
            Err(LoadKernelError::TooLarge { .. })
        ));
        assert!(matches!(
            load(
                &mut image(0, u64::MAX, b"ARM\x64", 16),
                BootProtocolChoice::Auto
            ),
            Err(LoadKernelError::TooLarge { .. })
        ));
        let mut empty = tempfile::tempfile().unwrap();
        assert!(load(&mut empty, BootProtocolChoice::Auto).is_err());
    }
}
