//! vCPU register state at the kernel's entry point, for the two boot protocols:
//! the boot GDT and IDT, the identity page tables of the 64-bit entry, and the
//! general, segment and FPU registers. This module owns the encodings and the
//! structures it writes below 1 MiB (addresses from `layout.rs`); it does not
//! choose the protocol and does not run vCPUs.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BOOT_GDT_ENTRIES, BOOT_GDT_START, BOOT_IDT_START, BOOT_PD_COUNT, BOOT_STACK_POINTER,
    PDPT_START, PD_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::{BootProtocol, EntryPoint};
use crate::devices::virtio::GuestMemory;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Segment descriptor flags (access byte plus the G/DB/L nibble), as
/// `(flags_hi_nibble << 12) | access_byte`.
const GDT_CODE64: u16 = 0xa09b; // G, L, present, code exec/read accessed
const GDT_CODE32: u16 = 0xc09b; // G, D, present, code exec/read accessed
const GDT_DATA: u16 = 0xc093; // G, B, present, data read/write accessed
const GDT_TSS64: u16 = 0x808b; // G, present, busy TSS
const GDT_TSS32: u16 = 0x008b; // present, busy 32-bit TSS

/// Page-table entry bits.
const PTE_PRESENT: u64 = 0x1;
const PTE_WRITABLE: u64 = 0x2;
const PDE_HUGE: u64 = 0x80;

/// Selector indexes in the boot GDT.
const GDT_CODE_INDEX: u8 = 1;
const GDT_DATA_INDEX: u8 = 2;
const GDT_TSS_INDEX: u8 = 3;

/// Why a vCPU's registers could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("write {what} at {addr:#x}: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("{op} on vcpu: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Encodes a segment descriptor (Intel SDM vol. 3, 3.4.5).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a descriptor into KVM's segment register form, for selector index
/// `index`. The limit is returned in bytes (scaled when G is set).
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let raw_limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let granular = (entry >> 55) & 1 == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        // At most 0xffff_ffff: 20 bits shifted by 12 plus 0xfff.
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: u8::from(granular),
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for `protocol`: null, code, data, TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; BOOT_GDT_ENTRIES] {
    match protocol {
        BootProtocol::Linux64 => [
            0,
            gdt_entry(GDT_CODE64, 0, 0xfffff),
            gdt_entry(GDT_DATA, 0, 0xfffff),
            gdt_entry(GDT_TSS64, 0, 0xfffff),
        ],
        // PVH: flat 32-bit protected mode, TR a 32-bit TSS with limit 0x67.
        BootProtocol::Pvh => [
            0,
            gdt_entry(GDT_CODE32, 0, 0xfffff),
            gdt_entry(GDT_DATA, 0, 0xfffff),
            gdt_entry(GDT_TSS32, 0, 0x67),
        ],
    }
}

fn write_u64(mem: &GuestMemory, val: u64, addr: u64, what: &'static str) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::Write { what, addr, source })
}

/// Writes the boot GDT and an empty IDT.
pub fn write_gdt_idt(mem: &GuestMemory, protocol: BootProtocol) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt(protocol).iter().enumerate() {
        write_u64(mem, *entry, BOOT_GDT_START + 8 * i as u64, "boot gdt")?;
    }
    write_u64(mem, 0, BOOT_IDT_START, "boot idt")
}

/// Writes identity page tables mapping 0..4 GiB with 2 MiB pages (64-bit entry
/// only; the kernel builds its own right away).
pub fn write_page_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    write_u64(
        mem,
        PDPT_START | PTE_PRESENT | PTE_WRITABLE,
        PML4_START,
        "pml4",
    )?;
    for dir in 0..BOOT_PD_COUNT {
        let pd = PD_START + dir * 0x1000;
        write_u64(
            mem,
            pd | PTE_PRESENT | PTE_WRITABLE,
            PDPT_START + dir * 8,
            "pdpt",
        )?;
        for i in 0..512u64 {
            let frame = ((dir << 9) + i) << 21;
            write_u64(
                mem,
                frame | PTE_PRESENT | PTE_WRITABLE | PDE_HUGE,
                pd + i * 8,
                "page directory",
            )?;
        }
    }
    Ok(())
}

/// Special registers at entry, starting from the vCPU's reset state `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let gdt = boot_gdt(protocol);
    let code = segment_from_gdt(gdt[usize::from(GDT_CODE_INDEX)], GDT_CODE_INDEX);
    let data = segment_from_gdt(gdt[usize::from(GDT_DATA_INDEX)], GDT_DATA_INDEX);
    let tss = segment_from_gdt(gdt[usize::from(GDT_TSS_INDEX)], GDT_TSS_INDEX);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (8 * BOOT_GDT_ENTRIES - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers at entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.addr.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => {
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// FPU state at entry: the x87 control word and MXCSR of a reset CPU.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets a vCPU's general, special and FPU registers for `entry`.
pub fn setup_vcpu_regs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), RegsError> {
    let kvm = |op| move |source| RegsError::Kvm { op, source };
    let sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry.protocol))
        .map_err(kvm("set sregs"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(kvm("set regs"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("set fpu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_encoding_known_values() {
        // Values any x86 boot loader writes for flat segments.
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_TSS32, 0, 0x67), 0x0000_8b00_0000_0067);
        // Base and limit bits land in their split fields.
        assert_eq!(gdt_entry(0, 0x1234_5678, 0xa_bcde), 0x120a_0034_5678_bcde);
    }

    #[test]
    fn gdt_decoding_round_trips() {
        let seg = segment_from_gdt(gdt_entry(GDT_CODE64, 0, 0xfffff), 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(
            (seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.unusable, 0);

        let data = segment_from_gdt(gdt_entry(GDT_DATA, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.type_, data.db, data.l), (16, 3, 1, 0));

        let tss = segment_from_gdt(gdt_entry(GDT_TSS32, 0, 0x67), 3);
        assert_eq!((tss.selector, tss.type_, tss.s, tss.g), (24, 0xb, 0, 0));
        assert_eq!(tss.limit, 0x67);

        let odd = segment_from_gdt(gdt_entry(0x0093, 0xdead_beef, 0x1234), 5);
        assert_eq!(
            (odd.base, odd.limit, odd.selector),
            (0xdead_beef, 0x1234, 40)
        );

        let null = segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn sregs_for_the_64bit_entry() {
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.selector), (1, 8));
        assert_eq!(s.ss.selector, 16);
        assert_eq!(s.tr.selector, 24);
        assert_eq!(s.gdt.base, BOOT_GDT_START);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn sregs_for_pvh() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010,
            efer: EFER_LME,
            ..Default::default()
        };
        let s = boot_sregs(reset, BootProtocol::Pvh);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!((s.cs.l, s.cs.db, s.cs.limit), (0, 1, 0xffff_ffff));
        assert_eq!((s.ds.db, s.ds.limit), (1, 0xffff_ffff));
        assert_eq!((s.tr.type_, s.tr.limit), (0xb, 0x67));
    }

    #[test]
    fn regs_per_protocol() {
        let linux = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
        });
        assert_eq!(
            (linux.rip, linux.rsi, linux.rsp, linux.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let pvh = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0200),
            protocol: BootProtocol::Pvh,
        });
        assert_eq!((pvh.rip, pvh.rbx, pvh.rsi), (0x100_0200, PVH_INFO_START, 0));
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_START), PDPT_START | 3);
        for dir in 0..4 {
            assert_eq!(read(PDPT_START + dir * 8), (PD_START + dir * 0x1000) | 3);
        }
        // Translate a few addresses through the tables.
        for addr in [
            0u64,
            0x20_0000,
            0x100_0000,
            0xd000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            let pdpt = read(PML4_START) & !0xfff;
            let pd = read(pdpt + ((addr >> 30) & 0x1ff) * 8) & !0xfff;
            let pde = read(pd + ((addr >> 21) & 0x1ff) * 8);
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
        // Nothing mapped past 4 GiB.
        assert_eq!(read(PDPT_START + 4 * 8), 0);
    }

    #[test]
    fn gdt_written_to_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        write_gdt_idt(&mem, BootProtocol::Pvh).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt_entry(GDT_CODE32, 0, 0xfffff));
        let empty = GuestMemory::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert!(matches!(
            write_gdt_idt(&empty, BootProtocol::Pvh),
            Err(RegsError::Write { .. })
        ));
    }
}
