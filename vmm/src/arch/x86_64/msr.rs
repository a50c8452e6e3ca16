//! Model-specific registers a vCPU starts with. This module owns the list and its
//! values; it does not filter what KVM supports (every MSR here is one KVM always
//! emulates).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// Why the boot MSRs could not be set.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("build msr list: {0:?}")]
    Build(vmm_sys_util::fam::Error),
    #[error("set msrs on vcpu: {0}")]
    Set(#[source] kvm_ioctls::Error),
    #[error("set msrs on vcpu: kvm refused msr {index:#x}")]
    Refused { index: u32 },
}

/// The MSRs and values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs on `vcpu`; every one must be accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if let Some(refused) = entries.get(set) {
        return Err(MsrError::Refused {
            index: refused.index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_unique_and_sane() {
        let entries = boot_msr_entries();
        let mut indexes: Vec<u32> = entries.iter().map(|e| e.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), entries.len());
        let get = |i| entries.iter().find(|e| e.index == i).unwrap().data;
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), 1);
        assert!(Msrs::from_entries(&entries).is_ok());
    }
}
