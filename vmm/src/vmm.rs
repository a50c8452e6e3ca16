//! A running microVM: what the builder made, started (the main thread confined,
//! the vCPUs let into the guest), kept alive until the guest stops, then torn
//! down in order (stop vCPUs, flush the console). This module owns the VM's
//! lifetime and the console input thread; it builds nothing.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::devices::bus::lock_device;
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::exit::{ExitHandle, VmExit};
use crate::seccomp::{self, Filters, SeccompError, ThreadKind};
use crate::vstate::memory::GuestRam;
use crate::vstate::vcpu::{stop_vcpus, StartGate};
use crate::vstate::vm::Vm;

/// How long vCPU threads get to leave `KVM_RUN` once kicked.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// A running VM. Fields drop in order: devices before the VM, guest memory last,
/// so no device still holds guest memory when it is unmapped.
#[derive(Debug)]
pub struct Vmm {
    exit: ExitHandle,
    /// Holds the vCPUs before their first `KVM_RUN` until [`Vmm::start`].
    gate: StartGate,
    started: bool,
    /// The seccomp filters, when they are on.
    seccomp: Option<Arc<Filters>>,
    vcpus: Vec<JoinHandle<()>>,
    serial: Arc<Mutex<SerialDevice>>,
    _transports: Vec<Arc<Mutex<MmioTransport>>>,
    _vm: Vm,
    _ram: GuestRam,
}

impl Vmm {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vm: Vm,
        ram: GuestRam,
        exit: ExitHandle,
        vcpus: Vec<JoinHandle<()>>,
        serial: Arc<Mutex<SerialDevice>>,
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        console_input: bool,
        gate: StartGate,
        seccomp: Option<Arc<Filters>>,
    ) -> Self {
        if console_input {
            spawn_console_input(serial.clone(), exit.clone(), seccomp.clone());
        }
        Vmm {
            exit,
            gate,
            started: false,
            seccomp,
            vcpus,
            serial,
            _transports: transports,
            _vm: vm,
            _ram: ram,
        }
    }

    /// The VM's stop signal (to stop it from outside, e.g. on SIGTERM).
    pub fn exit_handle(&self) -> ExitHandle {
        self.exit.clone()
    }

    /// The seccomp filters, for helper threads of the main thread (the
    /// stop-signal watcher) to confine themselves with; `None` when off.
    pub fn seccomp_filters(&self) -> Option<Arc<Filters>> {
        self.seccomp.clone()
    }

    /// Lets the vCPUs run. With seccomp on, first confines the calling thread
    /// (the main thread, which waits for the VM from here on) with the main
    /// filter; every vCPU confined itself already. Start helper threads
    /// before this: the main filter allows no thread creation. A second call
    /// does nothing.
    pub fn start(&mut self) -> Result<(), SeccompError> {
        if self.started {
            return Ok(());
        }
        if let Err(e) = seccomp::install_if(self.seccomp.as_deref(), ThreadKind::Main) {
            self.gate.abort();
            self.started = true;
            return Err(e);
        }
        if self.seccomp.is_some() {
            tracing::debug!("seccomp filters installed: main, vcpu, worker-launcher");
        }
        self.started = true;
        self.gate.open();
        Ok(())
    }

    /// Starts the VM if [`start`](Self::start) was not called, blocks until
    /// the VM stops, stops every vCPU, flushes the console, and says why the
    /// VM stopped.
    pub fn wait(mut self) -> VmExit {
        if let Err(e) = self.start() {
            self.exit.request(VmExit::VmmError {
                reason: e.to_string(),
            });
        }
        let reason = self.exit.wait();
        let stuck = stop_vcpus(
            &self.exit,
            std::mem::take(&mut self.vcpus),
            VCPU_STOP_TIMEOUT,
        );
        if stuck > 0 {
            tracing::error!(stuck, "vcpu threads still running at exit");
        }
        lock_device(&self.serial).flush_output();
        reason
    }
}

impl Drop for Vmm {
    /// A VM dropped unstarted (a failed `start`, an embedder's early return)
    /// lets its vCPU threads end instead of waiting at the gate for good.
    fn drop(&mut self) {
        if !self.started {
            self.gate.abort();
        }
    }
}

/// Feeds stdin to the serial console until stdin closes or the VM stops. Bytes
/// the guest has no room for yet wait here, never dropped. The thread confines
/// itself with the main filter first.
fn spawn_console_input(
    serial: Arc<Mutex<SerialDevice>>,
    exit: ExitHandle,
    filters: Option<Arc<Filters>>,
) {
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        // Small, like the vCPUs' (see VCPU_STACK_SIZE): no huge page for it.
        .stack_size(256 << 10)
        .spawn(move || {
            if let Err(e) = seccomp::install_if(filters.as_deref(), ThreadKind::Main) {
                exit.request(VmExit::VmmError {
                    reason: e.to_string(),
                });
                return;
            }
            drop(filters);
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            while !exit.is_requested() {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "read console input from stdin; input stops");
                        return;
                    }
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() && !exit.is_requested() {
                    let taken = lock_device(&serial).enqueue_input(pending);
                    pending = &pending[taken..];
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "start console input thread; no console input");
    }
}
