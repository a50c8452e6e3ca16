//! How a VM ends and what the process returns. This module owns the process exit
//! codes, the reasons a VM stops, and the one-shot signal vCPU threads and devices
//! use to ask the main thread to stop the VM. It does not stop vCPUs itself.
//!
//! Telling a guest panic from a clean power-off. The guest has no ACPI, so it
//! cannot power off: `poweroff` only halts its CPUs. A guest ends the VM by
//! rebooting (`reboot=k` on its command line makes Linux pulse the i8042 reset
//! line, which stops the VMM; `panic=-1` makes a panicking kernel do the same).
//! The two paths look identical at the i8042, so the VMM watches the serial
//! console for Linux's panic banner (`Kernel panic - not syncing: <reason>`,
//! printed at KERN_EMERG, so even with `quiet`): a reboot after the banner is a
//! guest panic, with the banner's reason; the banner's end marker
//! (`---[ end Kernel panic`, printed when the kernel will not reboot) stops the VM
//! at once. Consequences, written down on purpose: panics are only seen when the
//! kernel's console is `ttyS0`; and a guest that prints the banner itself can make
//! its own exit look like a panic, which costs it nothing it could not do anyway.
//! No pvpanic: Linux only finds that device through ACPI or a device tree.
//!
//! On aarch64 the guest can power off: PSCI `SYSTEM_OFF` and `SYSTEM_RESET`
//! reach the VMM as KVM system events (power-off and reset, both clean), and a
//! panicking kernel with `panic=-1` resets through PSCI, so the same console
//! watch tells the panic apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Process exit codes of `moat-vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest rebooted or powered off cleanly.
    Ok = 0,
    /// The VMM failed: the VM could not be built or a host resource failed.
    Error = 1,
    /// The configuration or the command line is invalid, names a file that
    /// cannot be used, or a device refused its configuration.
    BadConfig = 2,
    /// The guest kernel panicked.
    GuestPanic = 3,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault = 4,
    /// KVM could not run a vCPU: internal error, emulation failure, failed
    /// entry, or an exit the VMM does not handle.
    VcpuFault = 5,
    /// A VMM thread made a syscall its seccomp filter refuses (128 + SIGSYS,
    /// as a shell reports a process killed by SIGSYS). The SIGSYS handler
    /// exits at once, without stopping vCPUs or flushing the console; stderr
    /// has `moat-vmm: bad syscall <nr> on thread <name>`.
    BadSyscall = 159,
    /// Stopped by SIGINT (128 + 2), after stopping the vCPUs and flushing the
    /// console.
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15), likewise.
    Terminated = 143,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 pulse, or a KVM reset event).
    GuestReset,
    /// The guest powered off (a KVM shutdown event).
    GuestPowerOff,
    /// The guest kernel panicked; the reason from its banner.
    GuestPanic { reason: String },
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not run a vCPU.
    VcpuFault { vcpu: u8, reason: String },
    /// The VMM itself failed while the VM ran (e.g. a device thread).
    VmmError { reason: String },
    /// The host asked the VMM to stop (SIGTERM, SIGINT).
    Signalled { signal: i32 },
}

impl VmExit {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            VmExit::GuestReset | VmExit::GuestPowerOff => ExitCode::Ok,
            VmExit::GuestPanic { .. } => ExitCode::GuestPanic,
            VmExit::TripleFault { .. } => ExitCode::TripleFault,
            VmExit::VcpuFault { .. } => ExitCode::VcpuFault,
            VmExit::VmmError { .. } => ExitCode::Error,
            VmExit::Signalled { signal } if *signal == libc::SIGINT => ExitCode::Interrupted,
            VmExit::Signalled { .. } => ExitCode::Terminated,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset => write!(f, "guest rebooted"),
            VmExit::GuestPowerOff => write!(f, "guest powered off"),
            VmExit::GuestPanic { reason } => write!(f, "guest kernel panic: {reason}"),
            VmExit::TripleFault { vcpu } => write!(f, "vcpu {vcpu}: triple fault"),
            VmExit::VcpuFault { vcpu, reason } => write!(f, "vcpu {vcpu}: {reason}"),
            VmExit::VmmError { reason } => write!(f, "vmm error: {reason}"),
            VmExit::Signalled { signal } => match *signal {
                libc::SIGTERM => write!(f, "stopped by SIGTERM"),
                libc::SIGINT => write!(f, "stopped by SIGINT"),
                other => write!(f, "stopped by signal {other}"),
            },
        }
    }
}

#[derive(Debug, Default)]
struct ExitState {
    reason: Option<VmExit>,
    panic_reason: Option<String>,
}

#[derive(Debug, Default)]
struct ExitInner {
    requested: AtomicBool,
    state: Mutex<ExitState>,
    cond: Condvar,
}

/// The VM's stop signal, shared by vCPU threads, devices and the main thread.
/// The first reason wins; later ones are logged and dropped.
#[derive(Debug, Clone, Default)]
pub struct ExitHandle {
    inner: Arc<ExitInner>,
}

impl ExitHandle {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, ExitState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for the VM to stop.
    pub fn request(&self, reason: VmExit) {
        let mut state = self.state();
        match &state.reason {
            None => {
                tracing::debug!(%reason, "vm exit requested");
                state.reason = Some(reason);
                self.inner.requested.store(true, Ordering::SeqCst);
                self.inner.cond.notify_all();
            }
            Some(first) => tracing::debug!(%first, later = %reason, "vm already exiting"),
        }
    }

    /// Records that the guest kernel panicked, without stopping the VM: the
    /// kernel goes on to reboot (`panic=-1`) or to print its end marker.
    pub fn note_guest_panic(&self, reason: String) {
        let mut state = self.state();
        if state.panic_reason.is_none() {
            state.panic_reason = Some(reason);
        }
    }

    /// Whether a stop was requested (cheap; vCPU threads poll it).
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    fn resolve(state: &ExitState) -> Option<VmExit> {
        let reason = state.reason.clone()?;
        Some(match (&reason, &state.panic_reason) {
            (VmExit::GuestReset | VmExit::GuestPowerOff, Some(panic)) => VmExit::GuestPanic {
                reason: panic.clone(),
            },
            _ => reason,
        })
    }

    /// The exit reason, if the VM is stopping.
    pub fn reason(&self) -> Option<VmExit> {
        Self::resolve(&self.state())
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) -> VmExit {
        let mut state = self.state();
        loop {
            if let Some(reason) = Self::resolve(&state) {
                return reason;
            }
            state = self
                .inner
                .cond
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let state = self.state();
        let (state, _) = self
            .inner
            .cond
            .wait_timeout_while(state, timeout, |s| s.reason.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::resolve(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = ExitHandle::new();
        assert!(!exit.is_requested());
        assert_eq!(exit.wait_timeout(Duration::from_millis(1)), None);
        exit.request(VmExit::TripleFault { vcpu: 1 });
        exit.request(VmExit::GuestReset);
        assert!(exit.is_requested());
        assert_eq!(exit.wait(), VmExit::TripleFault { vcpu: 1 });
    }

    #[test]
    fn a_reboot_after_a_panic_banner_is_a_panic() {
        let exit = ExitHandle::new();
        exit.note_guest_panic("VFS: Unable to mount root fs".into());
        assert!(!exit.is_requested(), "noting a panic does not stop the VM");
        exit.request(VmExit::GuestReset);
        let reason = exit.wait();
        assert_eq!(
            reason,
            VmExit::GuestPanic {
                reason: "VFS: Unable to mount root fs".into()
            }
        );
        assert_eq!(reason.exit_code(), ExitCode::GuestPanic);
    }

    #[test]
    fn a_plain_reboot_is_clean() {
        let exit = ExitHandle::new();
        exit.request(VmExit::GuestReset);
        assert_eq!(exit.wait().exit_code(), ExitCode::Ok);
        // A vCPU fault after a panic banner stays a vCPU fault.
        let exit = ExitHandle::new();
        exit.note_guest_panic("x".into());
        exit.request(VmExit::TripleFault { vcpu: 0 });
        assert_eq!(exit.wait().exit_code(), ExitCode::TripleFault);
    }

    #[test]
    fn wait_wakes_up_from_another_thread() {
        let exit = ExitHandle::new();
        let other = exit.clone();
        let t = std::thread::spawn(move || other.wait());
        std::thread::sleep(Duration::from_millis(20));
        exit.request(VmExit::GuestPowerOff);
        assert_eq!(t.join().unwrap(), VmExit::GuestPowerOff);
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            ExitCode::Ok,
            ExitCode::Error,
            ExitCode::BadConfig,
            ExitCode::GuestPanic,
            ExitCode::TripleFault,
            ExitCode::VcpuFault,
            ExitCode::Interrupted,
            ExitCode::Terminated,
            ExitCode::BadSyscall,
        ];
        let mut values: Vec<u8> = codes.iter().map(|c| *c as u8).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values, vec![0, 1, 2, 3, 4, 5, 130, 143, 159]);
        assert_eq!(ExitCode::BadSyscall as i32, 128 + libc::SIGSYS);
        let term = VmExit::Signalled {
            signal: libc::SIGTERM,
        };
        assert_eq!(term.exit_code(), ExitCode::Terminated);
        assert_eq!(term.to_string(), "stopped by SIGTERM");
        let int = VmExit::Signalled {
            signal: libc::SIGINT,
        };
        assert_eq!(int.exit_code(), ExitCode::Interrupted);
    }
}
