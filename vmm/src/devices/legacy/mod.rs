//! Legacy devices: the 8250 UART of the serial console (on the port I/O bus on
//! x86_64, on the MMIO bus on aarch64) and, on x86_64 only, the i8042 controller,
//! whose reset line is how an x86 guest reboots. This module owns their emulation
//! (on top of `vm-superio`); where they sit in the address map is `arch`'s
//! business.

#[cfg(target_arch = "x86_64")]
pub mod i8042;
pub mod serial;

#[cfg(target_arch = "x86_64")]
pub use i8042::I8042;
pub use serial::{ConsoleWriter, SerialDevice};

use vmm_sys_util::eventfd::EventFd;

/// Raises a device's interrupt line by writing to the irqfd KVM listens on.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
