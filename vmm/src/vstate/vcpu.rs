//! vCPU threads: the `KVM_RUN` loop, dispatch of port I/O (x86_64) and MMIO exits
//! to the buses, and stopping. This module owns the threads and the kick signal; it
//! does not configure registers (that is `arch`) and does not decide what a stop
//! means (that is `exit.rs`).
//!
//! Stopping: the main thread sets the exit flag, then sends each vCPU thread the
//! kick signal. The signal handler sets `immediate_exit` in that vCPU's `kvm_run`,
//! so `KVM_RUN` returns `EINTR` whether the signal lands while the vCPU runs or
//! just before it enters the guest; the loop then sees the flag and ends. No exit,
//! expected or not, panics: unknown ones stop the VM with a reason.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch;
use crate::devices::bus::Buses;
use crate::devices::GuestLogLimit;
use crate::exit::{ExitHandle, VmExit};
use crate::seccomp::{self, Filters, ThreadKind};

/// Stack of a vCPU thread. It runs the exit handlers (devices' register
/// accesses, virtio activation), never deep. Below 2 MiB on purpose: a stack
/// that holds a whole aligned 2 MiB range gets a transparent huge page on hosts
/// with THP enabled, 2 MiB of RSS for a few KiB used (seen in the test host).
pub const VCPU_STACK_SIZE: usize = 1 << 20;

/// Offset from `SIGRTMIN` of the signal that kicks vCPUs out of `KVM_RUN`.
const KICK_SIGNAL_OFFSET: c_int = 0;

/// KVM system event types (`kvm_run.system_event.type`). On aarch64 they are how
/// PSCI `SYSTEM_OFF` (shutdown) and `SYSTEM_RESET` (reset) reach the VMM.
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler. Const-initialised
    /// with no destructor, so reading it from a signal handler is sound.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's `kvm_run` mapping, set by the vCPU
            // loop while it owns the `VcpuFd` and cleared before it drops it; the
            // handler runs on that same thread, so the mapping is live. A single
            // byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The kick signal number.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the kick signal handler (once per process, before vCPUs start).
pub fn register_kick_signal() -> Result<(), kvm_ioctls::Error> {
    register_signal_handler(kick_signal(), kick_handler)
}

/// What the loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Stop(VmExit),
    /// `KVM_EXIT_INTERNAL_ERROR`: the loop reads the details from `kvm_run`.
    InternalError,
}

/// Holds vCPU threads between their start and their first `KVM_RUN`, so each
/// confines itself before the main thread does and before any runs guest code
/// (see `Vmm::start`). Opened once, or aborted when the VM is dropped unstarted.
#[derive(Debug, Clone, Default)]
pub struct StartGate(Arc<(Mutex<Option<bool>>, Condvar)>);

impl StartGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&self, go: bool) {
        let (state, cond) = &*self.0;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_none() {
            *state = Some(go);
        }
        cond.notify_all();
    }

    /// Lets every vCPU run.
    pub fn open(&self) {
        self.set(true);
    }

    /// Makes every vCPU end without running.
    pub fn abort(&self) {
        self.set(false);
    }

    /// Blocks until the gate is opened (`true`) or aborted (`false`).
    fn wait(&self) -> bool {
        let (state, cond) = &*self.0;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = cond.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One vCPU, ready to run.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    buses: Arc<Buses>,
    exit: ExitHandle,
    warn: GuestLogLimit,
    /// The VMM process's start, when the first `KVM_RUN` is to be reported.
    first_run_from: Option<Instant>,
    /// The filters, when the thread is to confine itself before it runs.
    seccomp: Option<Arc<Filters>>,
    /// Waited for before the first `KVM_RUN`, when set.
    gate: Option<StartGate>,
}

impl Vcpu {
    pub fn new(index: u8, fd: VcpuFd, buses: Arc<Buses>, exit: ExitHandle) -> Self {
        Vcpu {
            index,
            fd,
            buses,
            exit,
            warn: GuestLogLimit::new(32),
            first_run_from: None,
            seccomp: None,
            gate: None,
        }
    }

    /// Makes the thread install the vCPU filter before anything else, then
    /// wait for `gate` before its first `KVM_RUN`.
    pub fn confined(mut self, filters: Option<Arc<Filters>>, gate: StartGate) -> Self {
        self.seccomp = filters;
        self.gate = Some(gate);
        self
    }

    /// Logs (at debug level, `first KVM_RUN ... elapsed_us=N`) how long after
    /// `start`, the VMM process's start and the boot marker's zero, this vCPU
    /// enters `KVM_RUN` for the first time: the VMM's own share of boot time.
    pub fn report_first_run(mut self, start: Instant) -> Self {
        self.first_run_from = Some(start);
        self
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Starts the vCPU on its own thread.
    pub fn start(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || self.run())
    }

    fn run(mut self) {
        // Before any guest input: the filter, then the gate (the main thread
        // confines itself meanwhile).
        if let Err(e) = seccomp::install_if(self.seccomp.as_deref(), ThreadKind::Vcpu) {
            self.exit.request(VmExit::VmmError {
                reason: format!("vcpu {}: {e}", self.index),
            });
            return;
        }
        self.seccomp = None;
        if let Some(gate) = self.gate.take() {
            if !gate.wait() {
                return;
            }
        }
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run()));
        if let Some(start) = self.first_run_from.take() {
            let elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(vcpu = self.index, elapsed_us, "first KVM_RUN");
        }
        loop {
            if self.exit.is_requested() {
                break;
            }
            if let Next::Stop(reason) = self.run_once() {
                self.exit.request(reason);
                break;
            }
        }
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }

    fn run_once(&mut self) -> Next {
        let index = self.index;
        let result = match self.fd.run() {
            Ok(exit) => Ok(handle_exit(index, exit, &self.buses, &mut self.warn)),
            Err(e) => Err(e),
        };
        match result {
            Ok(Next::InternalError) => Next::Stop(VmExit::VcpuFault {
                vcpu: index,
                reason: self.internal_error_details(),
            }),
            Ok(Next::Stop(VmExit::TripleFault { vcpu })) => {
                tracing::error!(vcpu, ip = self.ip(), "triple fault");
                Next::Stop(VmExit::TripleFault { vcpu })
            }
            Ok(next) => next,
            Err(e) if e.errno() == libc::EINTR => {
                // A kick (or another signal): clear the request and look at the
                // exit flag again.
                self.fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(VmExit::VcpuFault {
                vcpu: index,
                reason: format!("run vcpu: {e}"),
            }),
        }
    }

    /// The instruction pointer, named as the architecture names it.
    fn ip(&self) -> String {
        match arch::instruction_pointer(&self.fd) {
            Ok(ip) => format!("{} {ip:#x}", arch::INSTRUCTION_POINTER),
            Err(e) => format!("{} unknown ({e})", arch::INSTRUCTION_POINTER),
        }
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR` from `kvm_run`.
    fn internal_error_details(&mut self) -> String {
        let ip = self.ip();
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return format!("kvm internal error at {ip}");
        }
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let kind = match internal.suberror {
            1 => "emulation failure",
            2 => "exception while delivering an exception",
            3 => "failure delivering an event",
            4 => "unexpected exit reason",
            _ => "unknown suberror",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        format!(
            "kvm internal error: {kind} (suberror {}) at {ip}, data {:x?}",
            internal.suberror,
            &internal.data[..n]
        )
    }
}

/// Handles one exit. Pure dispatch: tested without KVM.
fn handle_exit(index: u8, exit: VcpuExit<'_>, buses: &Buses, warn: &mut GuestLogLimit) -> Next {
    let mmio = &buses.mmio;
    match exit {
        #[cfg(target_arch = "x86_64")]
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                // Nothing there: the bus floats high, as on a PC.
                data.fill(0xff);
                tracing::trace!(port, len = data.len(), "port read with no device");
            }
            Next::Continue
        }
        #[cfg(target_arch = "x86_64")]
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                tracing::trace!(port, ?data, "port write with no device");
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0);
                if warn.allow() {
                    tracing::warn!(
                        vcpu = index,
                        addr = format_args!("{addr:#x}"),
                        len = data.len(),
                        "mmio read with no device; reads 0"
                    );
                }
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) && warn.allow() {
                tracing::warn!(
                    vcpu = index,
                    addr = format_args!("{addr:#x}"),
                    ?data,
                    "mmio write with no device; ignored"
                );
            }
            Next::Continue
        }
        VcpuExit::Shutdown => Next::Stop(VmExit::TripleFault { vcpu: index }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_RESET => Next::Stop(VmExit::GuestReset),
            KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(VmExit::GuestPowerOff),
            KVM_SYSTEM_EVENT_CRASH => Next::Stop(VmExit::GuestPanic {
                reason: "crash reported to the hypervisor".into(),
            }),
            other => Next::Stop(VmExit::VcpuFault {
                vcpu: index,
                reason: format!("unknown kvm system event {other}"),
            }),
        },
        VcpuExit::InternalError => Next::InternalError,
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(VmExit::VcpuFault {
            vcpu: index,
            reason: format!(
                "kvm failed to enter the guest: hardware reason {reason:#x} on host cpu {cpu}"
            ),
        }),
        // With the in-kernel irqchip KVM handles HLT itself; seeing it means
        // the vCPU can never be woken.
        VcpuExit::Hlt => Next::Stop(VmExit::VcpuFault {
            vcpu: index,
            reason: "halted with no way to wake up (hlt exit)".into(),
        }),
        VcpuExit::Intr => Next::Continue,
        other => Next::Stop(VmExit::VcpuFault {
            vcpu: index,
            reason: format!("unexpected kvm exit {other:?}"),
        }),
    }
}

/// Stops vCPU threads: kicks each until it has left its loop, for at most
/// `timeout`. Returns how many did not stop in time (they are left running; the
/// process is about to exit).
pub fn stop_vcpus(exit: &ExitHandle, handles: Vec<JoinHandle<()>>, timeout: Duration) -> usize {
    if !exit.is_requested() {
        exit.request(VmExit::VmmError {
            reason: "vcpus stopped by the vmm".into(),
        });
    }
    let deadline = Instant::now() + timeout;
    let mut stuck = 0;
    for handle in handles {
        let name = handle.thread().name().unwrap_or("vcpu").to_owned();
        loop {
            if handle.is_finished() {
                if handle.join().is_err() {
                    tracing::error!(thread = %name, "vcpu thread panicked");
                }
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(thread = %name, "vcpu thread did not stop");
                stuck += 1;
                break;
            }
            if let Err(e) = handle.kill(kick_signal()) {
                tracing::warn!(thread = %name, error = %e, "kick vcpu thread");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Echo {
        writes: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Buses, Arc<Mutex<Echo>>) {
        let dev = Arc::new(Mutex::new(Echo::default()));
        let mut buses = Buses::new();
        #[cfg(target_arch = "x86_64")]
        buses.pio.insert(dev.clone(), "echo", 0x3f8, 8).unwrap();
        buses
            .mmio
            .insert(dev.clone(), "echo", 0xd000_0000, 0x1000)
            .unwrap();
        (buses, dev)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn port_exits_reach_the_bus() {
        let (buses, dev) = buses();
        let mut warn = GuestLogLimit::new(4);
        let mut data = [0u8; 1];
        let next = handle_exit(0, VcpuExit::IoIn(0x3fd, &mut data), &buses, &mut warn);
        assert_eq!((next, data), (Next::Continue, [6]));
        // Unclaimed ports float high.
        let mut data = [0u8; 2];
        handle_exit(0, VcpuExit::IoIn(0x2f8, &mut data), &buses, &mut warn);
        assert_eq!(data, [0xff, 0xff]);
        handle_exit(0, VcpuExit::IoOut(0x3f8, b"x"), &buses, &mut warn);
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn mmio_exits_reach_the_bus() {
        let (buses, dev) = buses();
        let mut warn = GuestLogLimit::new(4);
        let mut data = [0u8; 2];
        let next = handle_exit(
            0,
            VcpuExit::MmioRead(0xd000_0004, &mut data),
            &buses,
            &mut warn,
        );
        assert_eq!((next, data), (Next::Continue, [5, 5]));
        // Unclaimed MMIO reads zero.
        let mut data = [0xaau8; 4];
        handle_exit(
            0,
            VcpuExit::MmioRead(0xfee0_0000, &mut data),
            &buses,
            &mut warn,
        );
        assert_eq!(data, [0; 4]);
        handle_exit(
            0,
            VcpuExit::MmioWrite(0xd000_0000, &[123]),
            &buses,
            &mut warn,
        );
        handle_exit(0, VcpuExit::MmioWrite(0x1234, &[1]), &buses, &mut warn);
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![123])]);
    }

    #[test]
    fn stopping_exits_map_to_reasons() {
        let (buses, _) = buses();
        let mut warn = GuestLogLimit::new(4);
        let mut run = |exit| handle_exit(3, exit, &buses, &mut warn);
        assert_eq!(
            run(VcpuExit::Shutdown),
            Next::Stop(VmExit::TripleFault { vcpu: 3 })
        );
        // PSCI SYSTEM_RESET / SYSTEM_OFF on aarch64 arrive as these events, and
        // end the VM as cleanly as an x86 reboot.
        assert_eq!(
            run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            Next::Stop(VmExit::GuestReset)
        );
        assert_eq!(
            run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Next::Stop(VmExit::GuestPowerOff)
        );
        assert_eq!(VmExit::GuestPowerOff.exit_code(), crate::exit::ExitCode::Ok);
        assert!(matches!(
            run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])),
            Next::Stop(VmExit::GuestPanic { .. })
        ));
        assert_eq!(run(VcpuExit::InternalError), Next::InternalError);
        for exit in [
            VcpuExit::SystemEvent(99, &[]),
            VcpuExit::FailEntry(0x21, 1),
            VcpuExit::Hlt,
            VcpuExit::Unknown,
            VcpuExit::Exception,
            VcpuExit::Unsupported(1234),
        ] {
            assert!(
                matches!(run(exit), Next::Stop(VmExit::VcpuFault { vcpu: 3, .. })),
                "a fault stops the vm"
            );
        }
        assert_eq!(run(VcpuExit::Intr), Next::Continue);
    }

    /// Port I/O exits cannot happen on aarch64; should KVM report one anyway,
    /// it stops the VM like any exit the VMM does not handle.
    #[cfg(not(target_arch = "x86_64"))]
    #[test]
    fn port_exits_are_faults_without_port_io() {
        let (buses, _) = buses();
        let mut warn = GuestLogLimit::new(4);
        let mut data = [0u8; 1];
        assert!(matches!(
            handle_exit(1, VcpuExit::IoIn(0x3f8, &mut data), &buses, &mut warn),
            Next::Stop(VmExit::VcpuFault { vcpu: 1, .. })
        ));
    }

    #[test]
    fn the_start_gate_releases_or_aborts_every_waiter_once() {
        let gate = StartGate::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.wait())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(10));
        gate.open();
        gate.abort(); // too late: the first decision stands
        for w in waiters {
            assert!(w.join().unwrap());
        }
        assert!(gate.wait(), "a late waiter sees the gate open");
        let aborted = StartGate::new();
        aborted.abort();
        aborted.open();
        assert!(!aborted.wait());
    }

    #[test]
    fn stop_vcpus_kicks_threads_blocked_in_a_syscall() {
        register_kick_signal().unwrap();
        let exit = ExitHandle::new();
        let flag = exit.clone();
        // Stand-in for a vCPU blocked in KVM_RUN: a thread sleeping in a
        // syscall that the kick signal interrupts.
        let handle = std::thread::spawn(move || {
            while !flag.is_requested() {
                // SAFETY: pause() has no preconditions; it returns on a signal.
                unsafe { libc::pause() };
            }
        });
        std::thread::sleep(Duration::from_millis(10));
        exit.request(VmExit::GuestReset);
        assert_eq!(stop_vcpus(&exit, vec![handle], Duration::from_secs(5)), 0);
        assert_eq!(exit.wait(), VmExit::GuestReset);
    }
}
