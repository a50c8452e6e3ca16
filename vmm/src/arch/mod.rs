//! Architecture-specific boot and vCPU set-up. Each architecture module exports
//! the same names (`layout`, `guest_memory_regions`, `load_kernel`,
//! `load_initrd`, `configure_system`, `setup_irqchip`, `CpuTemplate`,
//! `configure_vcpu`, `attach_legacy_devices`, `DEFAULT_CMDLINE`,
//! `REQUIRED_CAPS`, `MAX_VCPUS`, ...) and this module re-exports them under
//! `#[cfg(target_arch)]`, so callers never branch on the architecture. Only
//! x86_64 exists today; aarch64 comes later as `arch/aarch64`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    attach_legacy_devices, configure_system, configure_vcpu, guest_memory_regions, layout,
    load_initrd, load_kernel, setup_irqchip, BootProtocol, ConfigureSystemError,
    ConfigureVcpuError, CpuTemplate, CpuTemplateError, EntryPoint, InitrdRegion, IrqchipError,
    LegacyDevicesError, LoadInitrdError, LoadKernelError, LoadedKernel, CMDLINE_MAX_SIZE,
    DEFAULT_CMDLINE, MAX_VCPUS, REQUIRED_CAPS,
};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("moat-vmm supports x86_64 only for now (aarch64 is planned as arch/aarch64)");
