//! The Intel MultiProcessor Specification (1.4) table: how a guest without ACPI
//! learns its CPUs, its IOAPIC and how the ISA interrupts are wired. This module
//! owns the table's structures and writes them at `MPTABLE_START`; nothing else.
//!
//! Layout written: the floating pointer (`_MP_`), then the configuration table
//! (`PCMP`) with one processor entry per vCPU, one ISA bus, the IOAPIC, one
//! interrupt entry per IOAPIC pin (ISA IRQ n → pin n), and the two local
//! interrupt entries (LINT0 = ExtINT, LINT1 = NMI). Everything fits in the first
//! KiB of the EBDA, which bounds the number of vCPUs ([`MAX_SUPPORTED_CPUS`]).

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::layout::{APIC_START, EBDA_END, IOAPIC_PINS, IOAPIC_START, MPTABLE_START};
use crate::devices::virtio::GuestMemory;

/// Largest vCPU count the table (and moat-vmm on x86_64) supports.
pub const MAX_SUPPORTED_CPUS: u8 = 32;

const SMP_MAGIC_IDENT: [u8; 4] = *b"PCMP";
const MPF_INTEL_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SPEC: u8 = 4;
const MPC_OEM: [u8; 8] = *b"MOAT    ";
const MPC_PRODUCT_ID: [u8; 12] = *b"MICROVM     ";
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, model 0, stepping 0: only informative, Linux reads CPUID.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQTYPE_INT: u8 = 0;
const MP_IRQTYPE_NMI: u8 = 1;
const MP_IRQTYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conforming to the bus": ISA is edge, active high.
const MP_IRQFLAG_DEFAULT: u16 = 0;
const MP_APIC_ALL: u8 = 0xff;

/// `struct mpf_intel`: the floating pointer.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: u8,
    feature4: u8,
    feature5: u8,
}

/// `struct mpc_table`: the configuration table header.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    reserved: u32,
}

/// `struct mpc_cpu`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// `struct mpc_bus`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// `struct mpc_ioapic`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// `struct mpc_intsrc`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

/// `struct mpc_lintsrc`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MpcLintsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbusid: u8,
    srcbusirq: u8,
    destapic: u8,
    destapiclint: u8,
}

// SAFETY: each struct is `#[repr(C)]`, made of integers and byte arrays, with no
// padding (checked by `layout` below); every bit pattern is valid.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: as above.
unsafe impl ByteValued for MpcLintsrc {}

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("write mp table: {0} vCPUs, supported 1..={MAX_SUPPORTED_CPUS}")]
    CpuCount(u8),
    #[error("write mp table: {0} bytes do not fit in the EBDA")]
    TooLarge(usize),
    #[error("write mp table at {MPTABLE_START:#x}: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// The APIC ID of the IOAPIC: right after the CPUs'.
fn ioapic_id(cpu_count: u8) -> u8 {
    cpu_count + 1
}

/// Builds the floating pointer and the table, as the bytes to write at
/// `MPTABLE_START`.
fn build(cpu_count: u8) -> Result<Vec<u8>, MptableError> {
    if cpu_count == 0 || cpu_count > MAX_SUPPORTED_CPUS {
        return Err(MptableError::CpuCount(cpu_count));
    }
    let mpf_len = std::mem::size_of::<MpfIntel>();
    let mut entries = Vec::new();
    for id in 0..cpu_count {
        let cpu = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: id,
            apicver: APIC_VERSION,
            cpuflag: CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 },
            cpufeature: CPU_STEPPING,
            featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        };
        entries.extend_from_slice(cpu.as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: 0,
        bustype: BUS_TYPE_ISA,
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic_id = ioapic_id(cpu_count);
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: MPC_APIC_USABLE,
        apicaddr: IOAPIC_START as u32,
    };
    entries.extend_from_slice(ioapic.as_slice());
    for pin in 0..IOAPIC_PINS as u8 {
        let src = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_IRQTYPE_INT,
            irqflag: MP_IRQFLAG_DEFAULT,
            srcbus: 0,
            srcbusirq: pin,
            dstapic: ioapic_id,
            dstirq: pin,
        };
        entries.extend_from_slice(src.as_slice());
    }
    let lint0 = MpcLintsrc {
        type_: MP_LINTSRC,
        irqtype: MP_IRQTYPE_EXTINT,
        irqflag: MP_IRQFLAG_DEFAULT,
        srcbusid: 0,
        srcbusirq: 0,
        destapic: 0,
        destapiclint: 0,
    };
    let lint1 = MpcLintsrc {
        irqtype: MP_IRQTYPE_NMI,
        destapic: MP_APIC_ALL,
        destapiclint: 1,
        ..lint0
    };
    entries.extend_from_slice(lint0.as_slice());
    entries.extend_from_slice(lint1.as_slice());

    let table_len = std::mem::size_of::<MpcTable>() + entries.len();
    let total = mpf_len + table_len;
    if total as u64 > EBDA_END - MPTABLE_START {
        return Err(MptableError::TooLarge(total));
    }
    let mut table = MpcTable {
        signature: SMP_MAGIC_IDENT,
        // Bounded by the EBDA size just above.
        length: table_len as u16,
        spec: MPC_SPEC,
        checksum: 0,
        oem: MPC_OEM,
        productid: MPC_PRODUCT_ID,
        oemptr: 0,
        oemsize: 0,
        // Entries, not bytes: one per CPU, the bus, the IOAPIC, one per pin, two
        // local interrupts.
        oemcount: u16::from(cpu_count) + 2 + IOAPIC_PINS as u16 + 2,
        lapic: APIC_START as u32,
        reserved: 0,
    };
    let sum = checksum(table.as_slice()).wrapping_add(checksum(&entries));
    table.checksum = 0u8.wrapping_sub(sum);

    let mut mpf = MpfIntel {
        signature: MPF_INTEL_SIGNATURE,
        physptr: (MPTABLE_START + mpf_len as u64) as u32,
        length: 1,
        specification: MPC_SPEC,
        ..Default::default()
    };
    mpf.checksum = 0u8.wrapping_sub(checksum(mpf.as_slice()));

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(mpf.as_slice());
    out.extend_from_slice(table.as_slice());
    out.extend_from_slice(&entries);
    Ok(out)
}

/// Writes the MP table for `cpu_count` vCPUs at `MPTABLE_START`.
pub fn setup_mptable(mem: &GuestMemory, cpu_count: u8) -> Result<(), MptableError> {
    let bytes = build(cpu_count)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(offset_of!(MpcTable, lapic), 36);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcIntsrc>(), 8);
        assert_eq!(offset_of!(MpcIntsrc, srcbus), 4);
        assert_eq!(size_of::<MpcLintsrc>(), 8);
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 7, MAX_SUPPORTED_CPUS] {
            let bytes = build(cpus).unwrap();
            // Floating pointer: 16 bytes summing to zero, pointing at the table.
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(checksum(&bytes[0..16]), 0);
            let physptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(u64::from(physptr), MPTABLE_START + 16);
            // Table: its declared length sums to zero and ends the buffer.
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(checksum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(usize::from(count), usize::from(cpus) + 2 + 24 + 2);
            // Exactly one boot processor, APIC IDs 0..n.
            let cpu_entries = &table[44..44 + 20 * usize::from(cpus)];
            let bsp: Vec<_> = cpu_entries
                .chunks(20)
                .enumerate()
                .filter(|(_, e)| e[3] & CPU_BOOTPROCESSOR != 0)
                .collect();
            assert_eq!(bsp.len(), 1);
            assert_eq!(bsp[0].0, 0);
            for (i, e) in cpu_entries.chunks(20).enumerate() {
                assert_eq!((e[0], usize::from(e[1])), (MP_PROCESSOR, i));
            }
            assert!(bytes.len() as u64 <= EBDA_END - MPTABLE_START);
        }
    }

    #[test]
    fn refuses_bad_cpu_counts() {
        assert!(matches!(build(0), Err(MptableError::CpuCount(0))));
        assert!(matches!(build(33), Err(MptableError::CpuCount(33))));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        // Too little memory for the EBDA: a clean error.
        let small = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1),
            Err(MptableError::Write(_))
        ));
    }
}
