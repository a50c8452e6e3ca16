//! Architecture-specific boot and vCPU set-up. Each architecture module exports
//! the same names (`layout`, `guest_memory_regions`, `load_kernel`,
//! `load_initrd`, `setup_irqchip`, `Irqchip`, `CpuTemplate`, `configure_vcpu`,
//! `VcpuBootInfo`, `attach_legacy_devices`, `configure_system`,
//! `instruction_pointer`, `DEFAULT_CMDLINE`, `REQUIRED_CAPS`, `MAX_VCPUS`, ...)
//! and this module re-exports them under `#[cfg(target_arch)]`, so callers never
//! branch on the architecture. It also owns the few arch-neutral types both
//! sides take ([`VirtioMmioInfo`]).
//!
//! `aarch64` is compiled on every host when testing: its pure parts (address map,
//! device tree, register encodings, GIC addresses) are unit-tested on the x86_64
//! build machines; its KVM calls are compiled on aarch64 only.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(any(target_arch = "aarch64", test))]
pub mod aarch64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    attach_legacy_devices, configure_system, configure_vcpu, guest_memory_regions,
    instruction_pointer, kernel_cmdline, layout, load_initrd, load_kernel, setup_irqchip,
    BootProtocol, ConfigureSystemError, ConfigureVcpuError, CpuTemplate, CpuTemplateError,
    EntryPoint, InitrdRegion, Irqchip, IrqchipError, LegacyDevicesError, LoadInitrdError,
    LoadKernelError, LoadedKernel, VcpuBootInfo, CMDLINE_MAX_SIZE, DEFAULT_CMDLINE,
    INSTRUCTION_POINTER, MAX_VCPUS, REQUIRED_CAPS,
};

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{
    attach_legacy_devices, configure_system, configure_vcpu, guest_memory_regions,
    instruction_pointer, layout, load_initrd, load_kernel, setup_irqchip, ConfigureSystemError,
    ConfigureVcpuError, CpuTemplate, CpuTemplateError, EntryPoint, InitrdRegion, Irqchip,
    IrqchipError, LegacyDevicesError, LoadInitrdError, LoadKernelError, LoadedKernel, VcpuBootInfo,
    CMDLINE_MAX_SIZE, DEFAULT_CMDLINE, INSTRUCTION_POINTER, MAX_VCPUS, REQUIRED_CAPS,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("moat-vmm supports x86_64 and aarch64 hosts only");

/// A virtio-mmio device as the guest is told about it: its register window and
/// its interrupt (an IOAPIC pin on x86_64, a GIC SPI number on aarch64). x86_64
/// describes it on the kernel command line, aarch64 in the device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioInfo {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}
