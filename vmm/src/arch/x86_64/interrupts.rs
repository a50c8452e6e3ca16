//! Local APIC set-up of a vCPU: LINT0 delivers the legacy PIC's interrupts
//! (ExtINT) and LINT1 delivers NMIs, as on a PC whose BIOS ran. This module owns
//! only those two LVT entries; the irqchip itself is created by `setup_irqchip`.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Offsets of the LVT LINT0 / LINT1 registers in the APIC page.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Why the local APIC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    #[error("get lapic state of vcpu: {0}")]
    Get(#[source] kvm_ioctls::Error),
    #[error("set lapic state of vcpu: {0}")]
    Set(#[source] kvm_ioctls::Error),
}

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        // c_char to its byte.
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        // The byte back to c_char.
        *r = b as _;
    }
}

/// An LVT entry with its delivery mode (bits 10:8) replaced.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in `lapic`.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Sets LINT0/LINT1 on a vCPU. The in-kernel irqchip must exist.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut lapic = vcpu.get_lapic().map_err(LapicError::Get)?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        // Masked entries with a vector, as after reset, plus a high byte.
        set_reg(&mut lapic, APIC_LVT0, 0x8001_0020);
        set_reg(&mut lapic, APIC_LVT1, 0x0001_0000);
        set_lint_modes(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x8001_0720);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x0001_0400);
        // Neighbouring registers untouched.
        assert_eq!(get_reg(&lapic, APIC_LVT0 - 4), 0);
        assert_eq!(get_reg(&lapic, APIC_LVT1 + 4), 0);
    }

    #[test]
    fn delivery_mode_only_touches_bits_10_8() {
        assert_eq!(with_delivery_mode(0xffff_ffff, 0), 0xffff_f8ff);
        assert_eq!(with_delivery_mode(0, APIC_MODE_EXTINT), 0x700);
        assert_eq!(with_delivery_mode(0x500, APIC_MODE_NMI), 0x400);
    }
}
