//! The i8042 keyboard controller, reduced to what a microVM needs: its CPU reset
//! command (0xfe on the command port), which Linux uses to reboot with
//! `reboot=k`. This module owns that device and turns the reset into a VM exit; it
//! does not emulate a keyboard.

use vm_superio::I8042Device;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitHandle, VmExit};

/// Turns the guest's reset pulse into a request to stop the VM.
#[derive(Debug)]
struct ResetTrigger(ExitHandle);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        tracing::debug!("guest pulsed the i8042 reset line");
        self.0.request(VmExit::GuestReset);
        Ok(())
    }
}

/// The i8042 on the port I/O bus (data port at offset 0, command port at 4).
#[derive(Debug)]
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(exit: ExitHandle) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            // Status 0: output buffer empty, input buffer empty (Linux's
            // `kb_wait` before the reset command returns at once).
            ([byte], Ok(offset)) => *byte = self.dev.read(offset),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // Infallible.
            let _ = self.dev.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_reboot() {
        let exit = ExitHandle::new();
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer empty");
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert!(!exit.is_requested(), "only 0xfe on the command port resets");
        dev.write(4, &[0xfe, 0]);
        assert!(!exit.is_requested(), "two-byte writes are ignored");
        dev.write(4, &[0xfe]);
        assert_eq!(exit.wait(), VmExit::GuestReset);
    }
}
