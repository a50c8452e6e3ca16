//! vCPU state at the kernel's entry point on aarch64: which vCPU features are
//! asked of `KVM_ARM_VCPU_INIT`, the `KVM_{GET,SET}_ONE_REG` ids of the registers
//! the VMM touches, and their boot values (arm64 booting.rst: PC at the Image,
//! X0 = the FDT's physical address, X1-X3 zero, EL1h with D, A, I and F masked,
//! MMU off). This module owns those encodings and the calls that apply them; it
//! does not choose addresses (`layout.rs`) and does not run vCPUs.
//!
//! The encodings are our own constants, so they are tested on any host; on
//! aarch64 a compile-time check holds them equal to `kvm-bindings`'.

/// `KVM_REG_ARM64`: the architecture field of a register id.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`: a 64-bit register.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE`: the core registers, indexed by their offset in
/// `struct kvm_regs` in 32-bit words.
pub const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
/// `KVM_REG_ARM64_SYSREG`: system registers, by their `op0, op1, CRn, CRm, op2`.
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// The id of the 64-bit core register at byte `offset` of `struct kvm_regs`.
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// The id of system register `S<op0>_<op1>_C<crn>_C<crm>_<op2>`.
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// `struct kvm_regs` starts with `struct user_pt_regs { u64 regs[31]; u64 sp;
/// u64 pc; u64 pstate; }`.
const USER_PT_REGS_SP: u64 = 31 * 8;
const USER_PT_REGS_PC: u64 = USER_PT_REGS_SP + 8;
const USER_PT_REGS_PSTATE: u64 = USER_PT_REGS_PC + 8;

/// General-purpose register X0 (the FDT address at entry).
pub const REG_X0: u64 = core_reg(0);
/// The program counter.
pub const REG_PC: u64 = core_reg(USER_PT_REGS_PC);
/// PSTATE (the saved program status).
pub const REG_PSTATE: u64 = core_reg(USER_PT_REGS_PSTATE);
/// MPIDR_EL1 (`S3_0_C0_C0_5`): the vCPU's affinity, which the device tree's cpu
/// nodes and the GIC use to name it.
pub const REG_MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);

/// PSTATE bits.
const PSR_MODE_EL1H: u64 = 0x5;
const PSR_F_BIT: u64 = 0x40;
const PSR_I_BIT: u64 = 0x80;
const PSR_A_BIT: u64 = 0x100;
const PSR_D_BIT: u64 = 0x200;
/// PSTATE at the kernel's entry: EL1 with SP_EL1, debug, SError, IRQ and FIQ
/// masked.
pub const BOOT_PSTATE: u64 = PSR_MODE_EL1H | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT;

/// `KVM_ARM_VCPU_POWER_OFF`: the vCPU starts powered off (until PSCI CPU_ON).
pub const VCPU_FEATURE_POWER_OFF: u32 = 0;
/// `KVM_ARM_VCPU_PSCI_0_2`: PSCI 0.2 and later, through HVC.
pub const VCPU_FEATURE_PSCI_0_2: u32 = 2;

/// The first word of `kvm_vcpu_init.features` for vCPU `id`: PSCI 0.2 for all,
/// and powered off for every vCPU but the boot vCPU 0, which the guest's PSCI
/// `CPU_ON` starts.
pub fn vcpu_features(id: u8) -> u32 {
    let mut features = 1 << VCPU_FEATURE_PSCI_0_2;
    if id > 0 {
        features |= 1 << VCPU_FEATURE_POWER_OFF;
    }
    features
}

/// The registers the boot vCPU starts with, as `(id, value)`: PC at the kernel
/// entry, X0 the FDT address, PSTATE [`BOOT_PSTATE`]. Secondary vCPUs start
/// powered off and get their entry from the guest's `CPU_ON`.
pub fn boot_registers(entry: u64, fdt: u64) -> [(u64, u64); 3] {
    [(REG_PSTATE, BOOT_PSTATE), (REG_PC, entry), (REG_X0, fdt)]
}

/// The affinity fields of an MPIDR (Aff3 in bits 32-39, Aff2-Aff0 in bits 0-23),
/// as a device-tree cpu node's `reg` with `#address-cells = <2>` takes them.
pub fn mpidr_affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

#[cfg(target_arch = "aarch64")]
mod kvm {
    use kvm_bindings::{kvm_regs, kvm_vcpu_init, user_pt_regs};
    use kvm_ioctls::{VcpuFd, VmFd};

    use super::*;

    // The encodings above are the kernel's.
    const _: () = {
        assert!(KVM_REG_ARM64 == kvm_bindings::KVM_REG_ARM64);
        assert!(KVM_REG_SIZE_U64 == kvm_bindings::KVM_REG_SIZE_U64);
        assert!(KVM_REG_ARM_CORE == kvm_bindings::KVM_REG_ARM_CORE as u64);
        assert!(KVM_REG_ARM64_SYSREG == kvm_bindings::KVM_REG_ARM64_SYSREG as u64);
        assert!(USER_PT_REGS_PC == std::mem::offset_of!(user_pt_regs, pc) as u64);
        assert!(USER_PT_REGS_PSTATE == std::mem::offset_of!(user_pt_regs, pstate) as u64);
        assert!(std::mem::offset_of!(kvm_regs, regs) == 0);
        assert!(PSR_MODE_EL1H == kvm_bindings::PSR_MODE_EL1h as u64);
        assert!(PSR_F_BIT == kvm_bindings::PSR_F_BIT as u64);
        assert!(PSR_I_BIT == kvm_bindings::PSR_I_BIT as u64);
        assert!(PSR_A_BIT == kvm_bindings::PSR_A_BIT as u64);
        assert!(PSR_D_BIT == kvm_bindings::PSR_D_BIT as u64);
        assert!(VCPU_FEATURE_POWER_OFF == kvm_bindings::KVM_ARM_VCPU_POWER_OFF);
        assert!(VCPU_FEATURE_PSCI_0_2 == kvm_bindings::KVM_ARM_VCPU_PSCI_0_2);
    };

    /// Why a vCPU's registers could not be set.
    #[derive(Debug, thiserror::Error)]
    pub enum RegsError {
        #[error("read kvm's preferred vcpu target: {0}")]
        PreferredTarget(#[source] kvm_ioctls::Error),
        #[error(
            "init vcpu (KVM_ARM_VCPU_INIT, target {target}, features {features:#x}): {source}"
        )]
        Init {
            target: u32,
            features: u32,
            #[source]
            source: kvm_ioctls::Error,
        },
        #[error("set register {reg:#x}: {source}")]
        Set {
            reg: u64,
            #[source]
            source: kvm_ioctls::Error,
        },
        #[error("read register {reg:#x}: {source}")]
        Get {
            reg: u64,
            #[source]
            source: kvm_ioctls::Error,
        },
    }

    /// KVM's preferred vCPU target for this host (`KVM_ARM_PREFERRED_TARGET`).
    pub fn preferred_target(vm: &VmFd) -> Result<kvm_vcpu_init, RegsError> {
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(RegsError::PreferredTarget)?;
        Ok(init)
    }

    /// `KVM_ARM_VCPU_INIT` with [`vcpu_features`].
    pub fn init_vcpu(vcpu: &VcpuFd, template: &kvm_vcpu_init, id: u8) -> Result<(), RegsError> {
        let mut init = *template;
        init.features[0] |= vcpu_features(id);
        vcpu.vcpu_init(&init).map_err(|source| RegsError::Init {
            target: init.target,
            features: init.features[0],
            source,
        })
    }

    pub fn set_reg(vcpu: &VcpuFd, reg: u64, value: u64) -> Result<(), RegsError> {
        vcpu.set_one_reg(reg, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|source| RegsError::Set { reg, source })
    }

    pub fn get_reg(vcpu: &VcpuFd, reg: u64) -> Result<u64, RegsError> {
        let mut bytes = [0u8; 8];
        vcpu.get_one_reg(reg, &mut bytes)
            .map_err(|source| RegsError::Get { reg, source })?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(target_arch = "aarch64")]
pub use kvm::{get_reg, init_vcpu, preferred_target, set_reg, RegsError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_encoding() {
        // Values as the kernel's uapi macros compute them (and as kvm selftests
        // and other VMMs hard-code them).
        assert_eq!(REG_X0, 0x6030_0000_0010_0000);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(REG_MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(core_reg(8), REG_X0 + 2, "x1 is two words after x0");
    }

    #[test]
    fn boot_state() {
        assert_eq!(BOOT_PSTATE, 0x3c5);
        let regs = boot_registers(0x8000_0000, 0x8fe0_0000);
        assert!(regs.contains(&(REG_PC, 0x8000_0000)));
        assert!(regs.contains(&(REG_X0, 0x8fe0_0000)));
        assert!(regs.contains(&(REG_PSTATE, 0x3c5)));
    }

    #[test]
    fn only_the_boot_vcpu_starts_powered_on() {
        assert_eq!(vcpu_features(0), 0b100);
        assert_eq!(vcpu_features(1), 0b101);
        assert_eq!(vcpu_features(63), 0b101);
    }

    #[test]
    fn mpidr_affinity_drops_the_flag_bits() {
        // Bit 31 (RES1) and the MT/U bits are not part of the affinity.
        assert_eq!(mpidr_affinity(0x8000_0000), 0);
        assert_eq!(mpidr_affinity(0x8000_0013), 0x13);
        assert_eq!(mpidr_affinity(0x0000_00ff_c1ab_cdef), 0xff_00ab_cdef);
    }
}
