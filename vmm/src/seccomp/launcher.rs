//! The worker launcher: the thread that starts device workers once seccomp is
//! on. Workers are asked for on vCPU threads (a driver's `DRIVER_OK` write
//! activates its device there), but a thread inherits its creator's filter, so
//! a worker created by a vCPU would be bound by the vCPU filter too. The
//! launcher is started with the VM, confined to the union of the worker
//! filters plus thread creation; it creates each worker, which installs its
//! own kind's filter before it runs any device code, and only then answers.
//!
//! This module owns that thread and [`spawn_worker`]; without a launcher (no
//! seccomp, unit tests, the fuzzer) `spawn_worker` starts the thread directly.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use super::{install, Filters, SeccompError, ThreadKind, WorkerKind};

type Body = Box<dyn FnOnce() + Send + 'static>;

/// One request: start `body` on a thread named `name`, confined as `kind`.
struct Request {
    name: String,
    kind: WorkerKind,
    body: Body,
    reply: mpsc::Sender<io::Result<JoinHandle<()>>>,
}

/// The launcher's request queue, set once it runs.
static LAUNCHER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

/// Starts the launcher thread under the launcher filter (once per process;
/// later calls do nothing). From then on [`spawn_worker`] goes through it.
pub fn start_launcher(filters: &Arc<Filters>) -> Result<(), SeccompError> {
    if LAUNCHER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let filters = Arc::clone(filters);
    let thread = std::thread::Builder::new()
        .name("worker-launcher".into())
        .stack_size(256 << 10)
        .spawn(move || {
            if let Err(e) = install(&filters, ThreadKind::Launcher) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            // Ends when every sender is gone, which the static one never is:
            // the launcher lives as long as the process.
            while let Ok(request) = rx.recv() {
                let result = launch(&filters, request.name, request.kind, request.body);
                let _ = request.reply.send(result);
            }
        })
        .map_err(SeccompError::Launcher)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(SeccompError::Launcher(io::Error::other(
                "launcher thread exited during start",
            )));
        }
    }
    // Another VM in this process may have won the race; its launcher serves
    // both (same filters) and this one ends when `tx` is dropped.
    let _ = LAUNCHER.set(tx);
    Ok(())
}

/// Starts one worker on the launcher thread: the new thread installs `kind`'s
/// filter, says so, and only then runs `body`.
fn launch(
    filters: &Arc<Filters>,
    name: String,
    kind: WorkerKind,
    body: Body,
) -> io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let filters = Arc::clone(filters);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let installed = install(&filters, ThreadKind::Worker(kind));
        drop(filters);
        let ok = installed.is_ok();
        let _ = ready_tx.send(installed);
        if ok {
            body();
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(io::Error::other(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(io::Error::other("worker exited before it was confined"))
        }
    }
}

/// Starts a device worker named `name` running `body`: through the launcher,
/// confined to `kind`'s filter, once seccomp is on; directly otherwise.
/// Returns once the thread runs (and, with seccomp, is confined).
pub fn spawn_worker<F>(name: String, kind: WorkerKind, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    #[cfg(test)]
    confine_test_workers();
    let Some(launcher) = LAUNCHER.get() else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    launcher
        .send(Request {
            name,
            kind,
            body: Box::new(body),
            reply: reply_tx,
        })
        .map_err(|_| io::Error::other("worker launcher is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("worker launcher did not answer"))?
}

/// Test builds only: with `MOAT_TEST_SECCOMP_WORKERS=1`, every worker the
/// unit tests start goes through a launcher and runs confined, so the device
/// tests (`cargo test devices::virtio`) check the worker lists against real
/// device traffic. A refused call ends the test process with status 159 and
/// the report line. Run them with `MALLOC_ARENA_MAX=1`, as moat-vmm runs
/// (see `single_malloc_arena`).
#[cfg(test)]
fn confine_test_workers() {
    if LAUNCHER.get().is_some() || std::env::var_os("MOAT_TEST_SECCOMP_WORKERS").is_none() {
        return;
    }
    let filters =
        Filters::compile(crate::vstate::vcpu::kick_signal()).unwrap_or_else(|e| panic!("{e}"));
    start_launcher(&filters).unwrap_or_else(|e| panic!("{e}"));
}
