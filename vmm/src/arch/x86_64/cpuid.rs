//! The CPUID a vCPU sees: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`),
//! normalised per vCPU. This module owns the filtering rules only; it does not
//! query KVM and does not set anything on a vCPU.
//!
//! Rules, following what Firecracker does so nested hosts accept the guest:
//! - leaf 0x1: initial APIC ID = vCPU index, logical-processor count, HTT when
//!   there is more than one vCPU, the hypervisor bit, and the TSC-deadline timer
//!   when KVM emulates it (`KVM_GET_SUPPORTED_CPUID` never reports that bit; it
//!   is a capability). Without it the guest programs its LAPIC timer in one-shot
//!   mode and calibrates it at boot, which costs a nested host dearly;
//! - topology: one thread per core, all vCPUs cores of one package; leaves 0xb and
//!   0x1f (x2APIC topology), 0x4 (Intel caches), 0x8000_0008 / 0x8000_001d /
//!   0x8000_001e (AMD) rewritten to say so;
//! - no PMU: leaf 0xa zeroed and AMD's core performance counters hidden, since
//!   perf-counter MSRs are what nested hosts most often refuse;
//! - no power-management hints the guest could act on (turbo, EPB in leaf 0x6).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPU vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

const LEAF_0X1_EBX_APIC_ID_SHIFT: u32 = 24;
const LEAF_0X1_EBX_CPU_COUNT_SHIFT: u32 = 16;
const LEAF_0X1_EBX_CLFLUSH_SHIFT: u32 = 8;
const LEAF_0X1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF_0X1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF_0X1_EDX_HTT: u32 = 1 << 28;
const LEAF_0X6_EAX_TURBO: u32 = 1 << 1;
const LEAF_0X6_ECX_EPB: u32 = 1 << 3;
const LEAF_0X80000001_ECX_PERFCTR_CORE: u32 = 1 << 23;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// The vendor named by leaf 0 (`GenuineIntel`, `AuthenticAMD`, `HygonGenuine`).
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Number of APIC-ID bits needed to number `count` vCPUs: ceil(log2(count)).
pub fn apic_id_bits(count: u8) -> u32 {
    match count {
        0 | 1 => 0,
        n => u32::BITS - u32::from(n - 1).leading_zeros(),
    }
}

fn topology_leaf(function: u32, index: u32, vcpu_id: u8, cpu_count: u8) -> kvm_cpuid_entry2 {
    let (eax, ebx, ecx) = match index {
        // SMT level: one thread per core.
        0 => (0, 1, (TOPOLOGY_LEVEL_SMT << 8) | index),
        // Core level: every vCPU is a core of the one package.
        1 => (
            apic_id_bits(cpu_count),
            u32::from(cpu_count),
            (TOPOLOGY_LEVEL_CORE << 8) | index,
        ),
        // Terminating, invalid level.
        _ => (0, 0, index),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: u32::from(vcpu_id),
        ..Default::default()
    }
}

/// Sets bits `shift..shift+width` of `reg` to `value`.
fn set_field(reg: u32, shift: u32, width: u32, value: u32) -> u32 {
    let mask = ((1u32 << width) - 1) << shift;
    (reg & !mask) | ((value << shift) & mask)
}

/// Host facts that shape the CPUID beyond KVM's supported entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidOptions {
    /// KVM emulates the TSC-deadline LAPIC timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
}

/// Returns the CPUID entries of vCPU `vcpu_id` (of `cpu_count`), from KVM's
/// supported entries.
pub fn normalize(
    supported: &[kvm_cpuid_entry2],
    vcpu_id: u8,
    cpu_count: u8,
    options: CpuidOptions,
) -> Vec<kvm_cpuid_entry2> {
    let vendor = vendor(supported);
    let cpu_count = cpu_count.max(1);
    let mut out = Vec::with_capacity(supported.len() + 6);
    let mut topology_leaves = Vec::new();
    for entry in supported {
        let mut e = *entry;
        match e.function {
            0x1 => {
                e.ebx = set_field(e.ebx, LEAF_0X1_EBX_APIC_ID_SHIFT, 8, u32::from(vcpu_id));
                e.ebx = set_field(e.ebx, LEAF_0X1_EBX_CPU_COUNT_SHIFT, 8, u32::from(cpu_count));
                if (e.ebx >> LEAF_0X1_EBX_CLFLUSH_SHIFT) & 0xff == 0 {
                    // 8 x 8 bytes: the 64-byte line every x86_64 host has.
                    e.ebx = set_field(e.ebx, LEAF_0X1_EBX_CLFLUSH_SHIFT, 8, 8);
                }
                e.ecx |= LEAF_0X1_ECX_HYPERVISOR;
                if options.tsc_deadline {
                    e.ecx |= LEAF_0X1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF_0X1_ECX_TSC_DEADLINE;
                }
                if cpu_count > 1 {
                    e.edx |= LEAF_0X1_EDX_HTT;
                } else {
                    e.edx &= !LEAF_0X1_EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    u32::from(cpu_count) - 1
                } else {
                    0
                };
                e.eax = set_field(e.eax, 14, 12, sharing);
                e.eax = set_field(e.eax, 26, 6, u32::from(cpu_count) - 1);
            }
            0x6 => {
                e.eax &= !LEAF_0X6_EAX_TURBO;
                e.ecx &= !LEAF_0X6_ECX_EPB;
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                if !topology_leaves.contains(&e.function) {
                    topology_leaves.push(e.function);
                }
                // Replaced as a whole below.
                continue;
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                e.ecx &= !LEAF_0X80000001_ECX_PERFCTR_CORE;
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = set_field(e.ecx, 0, 8, u32::from(cpu_count) - 1);
                e.ecx = set_field(e.ecx, 12, 4, apic_id_bits(cpu_count));
            }
            0x8000_001d if vendor == Vendor::Amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    u32::from(cpu_count) - 1
                } else {
                    0
                };
                e.eax = set_field(e.eax, 14, 12, sharing);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = u32::from(vcpu_id);
                // One thread per core (bits 15:8 = 0), core ID = vCPU index.
                e.ebx = u32::from(vcpu_id);
                // Node 0, one node per package.
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
        out.push(e);
    }
    for function in topology_leaves {
        for index in 0..3 {
            out.push(topology_leaf(function, index, vcpu_id, cpu_count));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(id[i..i + 4].try_into().unwrap());
        entry(0, 0, [0x1f, word(0), word(8), word(4)])
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    fn intel_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"GenuineIntel"),
            // APIC ID 7 and count 16 from the host, clflush 8, HTT set.
            entry(1, 0, [0x906ea, 0x0710_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
            // L1d (level 1, type 1) and L3 (level 3, type 3), host sharing values.
            entry(4, 0, [0x1c00_4121, 0, 0, 0]),
            entry(4, 3, [0x1c03_c163, 0, 0, 0]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(6, 0, [0x27f7, 2, 0x9, 0]),
            entry(0xa, 0, [0x0730_0404, 0, 0, 0x603]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
        ]
    }

    fn amd_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"AuthenticAMD"),
            entry(1, 0, [0x800f12, 0x0b10_0800, 0x7ed8_320b, 0x178b_fbff]),
            entry(0x8000_0001, 0, [0, 0, 0x75c2_37ff, 0x2fd3_fbff]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            entry(0x8000_001d, 0, [0x0000_4121, 0, 0, 0]),
            entry(0x8000_001d, 3, [0x0003_c163, 0, 0, 0]),
            entry(0x8000_001e, 0, [0x0b, 0x0105, 0x0300, 0]),
        ]
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(&intel_host()), Vendor::Intel);
        assert_eq!(vendor(&amd_host()), Vendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"HygonGenuine")]), Vendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"SomethingOdd")]), Vendor::Other);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn apic_id_bits_is_ceil_log2() {
        let expect = [
            (1u8, 0u32),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (32, 5),
        ];
        for (count, bits) in expect {
            assert_eq!(apic_id_bits(count), bits, "count {count}");
        }
        assert_eq!(apic_id_bits(0), 0);
    }

    #[test]
    fn leaf1_per_vcpu() {
        let host = intel_host();
        for (id, count) in [(0u8, 1u8), (2, 4), (31, 32)] {
            let out = normalize(&host, id, count, CpuidOptions::default());
            let l1 = find(&out, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!((l1.ebx >> 8) & 0xff, 8, "clflush kept");
            assert_ne!(l1.ecx & LEAF_0X1_ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & LEAF_0X1_EDX_HTT != 0, count > 1);
            // Other feature bits untouched; no TSC deadline unless KVM has it.
            assert_eq!(l1.ecx & LEAF_0X1_ECX_TSC_DEADLINE, 0);
            assert_eq!(
                l1.ecx & 0x7fff_ffff & !LEAF_0X1_ECX_TSC_DEADLINE,
                0x7ffa_fbff & !LEAF_0X1_ECX_TSC_DEADLINE
            );
        }
    }

    #[test]
    fn tsc_deadline_follows_the_capability() {
        let with = CpuidOptions { tsc_deadline: true };
        let l1 = find(&normalize(&amd_host(), 0, 1, with), 1, 0);
        assert_ne!(l1.ecx & LEAF_0X1_ECX_TSC_DEADLINE, 0);
        // A host entry claiming it is overruled when KVM lacks the capability.
        let mut host = amd_host();
        host[1].ecx |= LEAF_0X1_ECX_TSC_DEADLINE;
        let l1 = find(&normalize(&host, 0, 1, CpuidOptions::default()), 1, 0);
        assert_eq!(l1.ecx & LEAF_0X1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn intel_topology_and_caches() {
        let out = normalize(&intel_host(), 3, 4, CpuidOptions::default());
        let smt = find(&out, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = find(&out, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let end = find(&out, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00, end.edx), (0, 0, 0, 3));
        assert_eq!(out.iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(out
            .iter()
            .filter(|e| e.function == 0xb)
            .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0));
        // L1: not shared; L3: shared by all 4; cores per package 4.
        let l1 = find(&out, 4, 0);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        assert_eq!(l1.eax >> 26, 3);
        assert_eq!(l1.eax & 0x3fff, 0x121, "cache type and level kept");
        let l3 = find(&out, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        // The terminating subleaf stays zero.
        assert_eq!(find(&out, 4, 4).eax, 0);
        // No PMU, no turbo or EPB.
        let pmu = find(&out, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        let pm = find(&out, 6, 0);
        assert_eq!(pm.eax & LEAF_0X6_EAX_TURBO, 0);
        assert_eq!(pm.ecx & LEAF_0X6_ECX_EPB, 0);
        // The KVM signature leaf is passed through.
        assert_eq!(find(&out, 0x4000_0000, 0).ebx, 0x4b4d_564b);
    }

    #[test]
    fn amd_topology_and_caches() {
        let out = normalize(&amd_host(), 5, 6, CpuidOptions::default());
        let l8 = find(&out, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 5);
        assert_eq!((l8.ecx >> 12) & 0xf, 3);
        let l1e = find(&out, 0x8000_001e, 0);
        assert_eq!((l1e.eax, l1e.ebx, l1e.ecx), (5, 5, 0));
        let l1d = find(&out, 0x8000_001d, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        let l3 = find(&out, 0x8000_001d, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 5);
        let ext = find(&out, 0x8000_0001, 0);
        assert_eq!(ext.ecx & LEAF_0X80000001_ECX_PERFCTR_CORE, 0);
        // No 0xb on this host: none invented.
        assert!(out.iter().all(|e| e.function != 0xb));
    }

    #[test]
    fn zero_cpu_count_is_treated_as_one() {
        let out = normalize(&intel_host(), 0, 0, CpuidOptions::default());
        let l1 = find(&out, 1, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
        assert_eq!(l1.edx & LEAF_0X1_EDX_HTT, 0);
    }
}
