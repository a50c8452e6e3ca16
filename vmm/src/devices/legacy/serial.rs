//! The serial console: an 8250 UART (`vm-superio`) whose output goes to a file,
//! to stdout/stderr, or nowhere, and whose input optionally comes from the host's
//! stdin. The output path also watches for the guest kernel's panic banner (see
//! `exit.rs` for why). This module owns the UART state and the console output
//! buffering; it does not read stdin itself (the VMM's input thread feeds
//! [`SerialDevice::enqueue_input`]).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::IrqTrigger;
use crate::devices::bus::BusDevice;
use crate::devices::GuestLogLimit;
use crate::exit::{ExitHandle, VmExit};

/// Linux's panic banner, at KERN_EMERG.
const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
/// Printed when a panicking kernel will not reboot: the VM is over.
const PANIC_END: &[u8] = b"---[ end Kernel panic - not syncing";
/// Longest console line the watcher keeps; the rest of a longer line is dropped.
const MAX_WATCHED_LINE: usize = 512;
/// Output kept back at most before writing, when line-buffered.
const MAX_PENDING: usize = 4096;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Scans console output, one line at a time, for the guest's panic banner.
#[derive(Debug)]
pub struct PanicWatch {
    line: Vec<u8>,
    exit: ExitHandle,
}

impl PanicWatch {
    pub fn new(exit: ExitHandle) -> Self {
        PanicWatch {
            line: Vec::with_capacity(128),
            exit,
        }
    }

    pub fn push(&mut self, byte: u8) {
        if byte == b'\n' {
            self.end_line();
        } else if self.line.len() < MAX_WATCHED_LINE {
            self.line.push(byte);
        }
    }

    /// The panic reason after the banner, up to the end of the line.
    fn reason_after(line: &[u8], at: usize, marker: &[u8]) -> String {
        let rest = &line[at + marker.len()..];
        let rest = rest.strip_prefix(b":").unwrap_or(rest);
        let rest = String::from_utf8_lossy(rest);
        rest.trim()
            .trim_end_matches("]---")
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .collect()
    }

    fn end_line(&mut self) {
        if let Some(at) = find(&self.line, PANIC_END) {
            let reason = Self::reason_after(&self.line, at, PANIC_END);
            self.exit.request(VmExit::GuestPanic { reason });
        } else if let Some(at) = find(&self.line, PANIC_BANNER) {
            let reason = Self::reason_after(&self.line, at, PANIC_BANNER);
            tracing::debug!(%reason, "guest kernel panic banner on the console");
            self.exit.note_guest_panic(reason);
        }
        self.line.clear();
    }
}

/// Where console output goes, after the panic watch.
pub struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    pending: Vec<u8>,
    /// Flush on every byte (an interactive console) or only on newlines.
    line_buffered: bool,
    watch: PanicWatch,
}

impl std::fmt::Debug for ConsoleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWriter")
            .field("has_sink", &self.sink.is_some())
            .field("pending", &self.pending.len())
            .field("line_buffered", &self.line_buffered)
            .finish()
    }
}

impl ConsoleWriter {
    /// `sink` is `None` to discard output (it is still watched).
    pub fn new(sink: Option<Box<dyn Write + Send>>, line_buffered: bool, exit: ExitHandle) -> Self {
        ConsoleWriter {
            sink,
            pending: Vec::with_capacity(256),
            line_buffered,
            watch: PanicWatch::new(exit),
        }
    }

    /// Writes out everything pending.
    pub fn flush_all(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(sink) = &mut self.sink {
            if let Err(e) = sink.write_all(&self.pending).and_then(|()| sink.flush()) {
                // A closed pipe or a full disk: keep the guest running, stop writing.
                tracing::warn!(error = %e, "write serial console output; output dropped from now on");
                self.sink = None;
            }
        }
        self.pending.clear();
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for b in buf {
            self.watch.push(*b);
        }
        if self.sink.is_some() {
            self.pending.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    /// `vm-superio` flushes after every byte; batch those into lines unless the
    /// console is interactive.
    fn flush(&mut self) -> io::Result<()> {
        if !self.line_buffered
            || self.pending.last() == Some(&b'\n')
            || self.pending.len() >= MAX_PENDING
        {
            self.flush_all();
        }
        Ok(())
    }
}

/// The UART on the port I/O bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
    warn: GuestLogLimit,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("out", self.serial.writer())
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: IrqTrigger, out: ConsoleWriter) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
            warn: GuestLogLimit::new(16),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit (0 when the
    /// guest has not drained its FIFO yet).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                tracing::warn!(error = ?e, "queue serial console input");
                0
            }
        }
    }

    /// Writes out buffered console output (at exit).
    pub fn flush_output(&mut self) {
        self.serial.writer_mut().flush_all();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.serial.read(offset),
            (data, _) => {
                if self.warn.allow() {
                    tracing::warn!(
                        offset,
                        len = data.len(),
                        "serial read wider than a byte; reads 0xff"
                    );
                }
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => {
                if let Err(e) = self.serial.write(offset, *byte) {
                    if self.warn.allow() {
                        tracing::warn!(error = ?e, "serial write");
                    }
                }
            }
            (data, _) => {
                if self.warn.allow() {
                    tracing::warn!(
                        offset,
                        len = data.len(),
                        "serial write wider than a byte; ignored"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    /// A sink tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial(
        sink: Option<Box<dyn Write + Send>>,
        line_buffered: bool,
    ) -> (SerialDevice, EventFd, ExitHandle) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let exit = ExitHandle::new();
        let dev = SerialDevice::new(
            IrqTrigger(irq.try_clone().unwrap()),
            ConsoleWriter::new(sink, line_buffered, exit.clone()),
        );
        (dev, irq, exit)
    }

    fn type_out(dev: &mut SerialDevice, text: &[u8]) {
        for b in text {
            dev.write(0, &[*b]);
        }
    }

    #[test]
    fn output_is_line_buffered() {
        let out = Shared::default();
        let (mut dev, _irq, _) = serial(Some(Box::new(out.clone())), true);
        type_out(&mut dev, b"hello");
        assert!(out.0.lock().unwrap().is_empty());
        type_out(&mut dev, b"\nwor");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
        dev.flush_output();
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\nwor");
    }

    #[test]
    fn interactive_output_is_not_buffered() {
        let out = Shared::default();
        let (mut dev, _irq, _) = serial(Some(Box::new(out.clone())), false);
        type_out(&mut dev, b"$ ");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"$ ");
    }

    #[test]
    fn a_broken_sink_does_not_stop_the_guest() {
        let (mut dev, _irq, exit) = serial(Some(Box::new(Broken)), false);
        type_out(&mut dev, b"abc\n");
        type_out(&mut dev, b"Kernel panic - not syncing: still watched\n");
        exit.request(VmExit::GuestReset);
        assert!(matches!(exit.wait(), VmExit::GuestPanic { .. }));
    }

    #[test]
    fn input_reaches_the_guest_and_raises_the_irq() {
        let (mut dev, irq, _) = serial(None, true);
        // Enable the received-data interrupt (IER bit 0).
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'o');
        // A full FIFO takes nothing more.
        let big = vec![b'x'; 100];
        let taken = dev.enqueue_input(&big);
        assert!(taken < 100);
        assert_eq!(dev.enqueue_input(&big), 0);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let (mut dev, _irq, _) = serial(None, true);
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0, &[1, 2, 3, 4]);
        dev.read(u64::MAX, &mut [0u8]);
    }

    #[test]
    fn panic_banner_then_reset_is_a_panic() {
        let (mut dev, _irq, exit) = serial(None, true);
        type_out(&mut dev, b"[    0.5] Run /init as init process\r\n");
        type_out(
            &mut dev,
            b"[    0.6] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n",
        );
        assert!(!exit.is_requested());
        exit.request(VmExit::GuestReset);
        assert_eq!(
            exit.wait(),
            VmExit::GuestPanic {
                reason: "Attempted to kill init! exitcode=0x00000100".into()
            }
        );
    }

    #[test]
    fn panic_end_marker_stops_the_vm() {
        let (mut dev, _irq, exit) = serial(None, true);
        type_out(&mut dev, b"Kernel panic - not syncing: VFS: no root\n");
        type_out(
            &mut dev,
            b"---[ end Kernel panic - not syncing: VFS: no root ]---\n",
        );
        assert_eq!(
            exit.wait(),
            VmExit::GuestPanic {
                reason: "VFS: no root".into()
            }
        );
    }

    #[test]
    fn ordinary_output_and_huge_lines_are_not_panics() {
        let (mut dev, _irq, exit) = serial(None, true);
        type_out(&mut dev, b"Kernel panic? no, just talking\n");
        let long = vec![b'a'; 10_000];
        type_out(&mut dev, &long);
        type_out(
            &mut dev,
            b"Kernel panic - not syncing: past the kept part\n",
        );
        exit.request(VmExit::GuestReset);
        assert_eq!(exit.wait(), VmExit::GuestReset);
    }
}
