//! The i8042 keyboard controller, reduced to what a microVM needs: its CPU reset
//! command (0xfe on the command port), which Linux uses to reboot with
//! `reboot=k`. This module owns that device and turns the reset into a VM exit; it
//! does not emulate a keyboard.
//!
//! The status register always reads "output buffer full, input buffer empty".
//! Linux's i8042 driver then drains 16 bytes, concludes "No controller found"
//! and stops in under a millisecond, where a controller that never answered its
//! commands would cost two 0.5 s timeouts per boot; and the reboot path, which
//! only waits for the input buffer to be empty, pulses the reset line at once.

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

/// Status register: output buffer full (bit 0), input buffer empty (bit 1 clear).
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Offset of the status/command port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u8 = 4;

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
            ([byte], Ok(COMMAND_OFFSET)) => *byte = STATUS_OUTPUT_FULL,
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
        let mut status = [0u8];
        dev.read(4, &mut status);
        assert_eq!(
            status[0] & 0x2,
            0,
            "input buffer empty: the reset goes out at once"
        );
        assert_eq!(
            status[0] & 0x1,
            1,
            "output buffer full: the driver gives up"
        );
        let mut data = [0xffu8];
        dev.read(0, &mut data);
        assert_eq!(data[0], 0);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert!(!exit.is_requested(), "only 0xfe on the command port resets");
        dev.write(4, &[0xfe, 0]);
        assert!(!exit.is_requested(), "two-byte writes are ignored");
        dev.write(4, &[0xfe]);
        assert_eq!(exit.wait(), VmExit::GuestReset);
    }
}
