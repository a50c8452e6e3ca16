//! The in-kernel GICv3 (`KVM_DEV_TYPE_ARM_VGIC_V3`): created with
//! `KVM_CREATE_DEVICE`, given its number of interrupts and the addresses of its
//! distributor and redistributors (from `layout::gic_layout`), and initialised
//! (`KVM_DEV_ARM_VGIC_CTRL_INIT`) once every vCPU exists. This module owns that
//! device; the device tree describes it (`fdt.rs`), and irqfds raise its SPIs.
//!
//! Ordering, as KVM (Linux 6.1) enforces it: the device may be created before
//! or after the vCPUs but before any vCPU runs; a vCPU created after the
//! redistributor address is set registers its redistributor at once;
//! `CTRL_INIT` fails while a vCPU is still being created and sizes the per-vCPU
//! state from the vCPUs that exist, so it comes after the last one; `KVM_IRQFD`
//! answers `EAGAIN` until `CTRL_INIT` is done, so devices are attached after it;
//! the first `KVM_RUN` fails without it.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::layout;

/// Why the GIC could not be created or initialised.
#[derive(Debug, thiserror::Error)]
pub enum IrqchipError {
    #[error(
        "create the in-kernel gicv3: {0} (the host's GIC must be able to back a virtual GICv3)"
    )]
    Create(#[source] kvm_ioctls::Error),
    #[error("gicv3: set {what}: {source}")]
    SetAttr {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("gicv3: initialise (KVM_DEV_ARM_VGIC_CTRL_INIT): {0}")]
    Init(#[source] kvm_ioctls::Error),
}

/// The vGIC, created and addressed; [`Irqchip::finish`] initialises it.
#[derive(Debug)]
pub struct Irqchip {
    fd: DeviceFd,
}

fn set_attr(
    fd: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u64,
    addr: u64,
) -> Result<(), IrqchipError> {
    let attr = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    fd.set_device_attr(&attr)
        .map_err(|source| IrqchipError::SetAttr { what, source })
}

/// Creates the GICv3 for `vcpus` vCPUs: [`layout::GIC_NR_IRQS`] interrupts, the
/// distributor and redistributor frames of [`layout::gic_layout`].
pub fn setup_irqchip(vm: &VmFd, vcpus: u8) -> Result<Irqchip, IrqchipError> {
    let mut device = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let fd = vm
        .create_device(&mut device)
        .map_err(IrqchipError::Create)?;
    let gic = layout::gic_layout(vcpus);
    // KVM reads each value through the pointer during the call only.
    let nr_irqs: u32 = layout::GIC_NR_IRQS;
    set_attr(
        &fd,
        "number of interrupts",
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        std::ptr::addr_of!(nr_irqs) as u64,
    )?;
    let dist: u64 = gic.dist.0;
    set_attr(
        &fd,
        "distributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        std::ptr::addr_of!(dist) as u64,
    )?;
    let redists: u64 = gic.redists.0;
    set_attr(
        &fd,
        "redistributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        std::ptr::addr_of!(redists) as u64,
    )?;
    tracing::debug!(
        dist = format_args!("{:#x}", gic.dist.0),
        redists = format_args!("{:#x}+{:#x}", gic.redists.0, gic.redists.1),
        nr_irqs,
        "gicv3 created"
    );
    Ok(Irqchip { fd })
}

impl Irqchip {
    /// Initialises the vGIC. Call once every vCPU exists, before any runs.
    pub fn finish(&self) -> Result<(), IrqchipError> {
        set_attr(
            &self.fd,
            "init",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
        )
        .map_err(|e| match e {
            IrqchipError::SetAttr { source, .. } => IrqchipError::Init(source),
            other => other,
        })
    }
}
