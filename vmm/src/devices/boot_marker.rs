//! The boot-time marker: one MMIO page where the guest writes the byte 123 when
//! it reaches a point worth timing (moat's `/init`). The VMM then reports the
//! microseconds elapsed since it started, as `moat-vmm: boot-marker <us> us` on
//! stderr, the line benchmarks parse. This module owns that device only.

use std::time::Instant;

use crate::devices::bus::BusDevice;
use crate::devices::GuestLogLimit;

/// The value the guest writes.
pub const BOOT_MARKER_VALUE: u8 = 123;

/// Receives each mark, in microseconds since the VMM started.
pub type MarkReporter = Box<dyn FnMut(u64) + Send>;

/// The line printed on stderr for each mark.
pub fn marker_line(us: u64) -> String {
    format!("moat-vmm: boot-marker {us} us")
}

/// The marker device.
pub struct BootMarker {
    start: Instant,
    report: MarkReporter,
    warn: GuestLogLimit,
}

impl std::fmt::Debug for BootMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootMarker")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl BootMarker {
    /// Reports on stderr (and in the log), relative to `start`, the instant the
    /// VMM process started.
    pub fn new(start: Instant) -> Self {
        Self::with_reporter(
            start,
            Box::new(|us| {
                tracing::info!(us, "guest boot-time marker");
                eprintln!("{}", marker_line(us));
            }),
        )
    }

    pub fn with_reporter(start: Instant, report: MarkReporter) -> Self {
        BootMarker {
            start,
            report,
            warn: GuestLogLimit::new(8),
        }
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A mark is a write of 123 at offset 0, of any width (a byte, or a wider
    /// store whose upper bytes are zero).
    fn write(&mut self, offset: u64, data: &[u8]) {
        let is_mark = offset == 0
            && data.first() == Some(&BOOT_MARKER_VALUE)
            && data[1..].iter().all(|b| *b == 0);
        if is_mark {
            let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            (self.report)(us);
        } else if self.warn.allow() {
            tracing::warn!(offset, ?data, "boot marker: unexpected write; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn marker() -> (BootMarker, Arc<Mutex<Vec<u64>>>) {
        let marks = Arc::new(Mutex::new(Vec::new()));
        let sink = marks.clone();
        let start = Instant::now() - Duration::from_millis(5);
        let dev =
            BootMarker::with_reporter(start, Box::new(move |us| sink.lock().unwrap().push(us)));
        (dev, marks)
    }

    #[test]
    fn reports_microseconds_since_start() {
        let (mut dev, marks) = marker();
        dev.write(0, &[123]);
        dev.write(0, &123u32.to_le_bytes());
        let marks = marks.lock().unwrap();
        assert_eq!(marks.len(), 2);
        assert!(marks[0] >= 5000, "{} us", marks[0]);
        assert!(marks[1] >= marks[0]);
        assert_eq!(marker_line(1234), "moat-vmm: boot-marker 1234 us");
    }

    #[test]
    fn other_writes_are_not_marks() {
        let (mut dev, marks) = marker();
        dev.write(0, &[122]);
        dev.write(1, &[123]);
        dev.write(0, &[123, 1]);
        dev.write(0, &[]);
        dev.write(0xfff, &[123]);
        let mut data = [0xffu8; 8];
        dev.read(0, &mut data);
        assert_eq!(data, [0; 8]);
        assert!(marks.lock().unwrap().is_empty());
    }
}
