//! Host signals that stop the VM: SIGTERM (moatd stopping a container) and
//! SIGINT (Ctrl-C). They are blocked in every thread and taken by one watcher
//! thread, which asks the VM to stop like any other exit reason, so the vCPUs
//! stop and the console is flushed before the process exits (with 128 + the
//! signal number, as a shell reports a killed process). This module owns the
//! signal mask and that thread.

use std::io;
use std::os::raw::c_int;

use crate::exit::{ExitHandle, VmExit};
use crate::seccomp::{self, Filters, ThreadKind};
use std::sync::Arc;

/// The signals that stop the VM.
pub const STOP_SIGNALS: [c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn stop_set() -> io::Result<libc::sigset_t> {
    vmm_sys_util::signal::create_sigset(&STOP_SIGNALS)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Blocks the stop signals in the calling thread; threads it starts later
/// inherit the mask. Call first thing in `main`.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_set()?;
    // SAFETY: `set` is a valid, initialised signal set; the old mask is not
    // requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that waits for a stop signal and requests
/// [`VmExit::Signalled`]. The signals must be blocked already
/// ([`block_stop_signals`]), in every thread. With `filters`, the thread
/// confines itself with the main filter first.
pub fn spawn_stop_watcher(exit: ExitHandle, filters: Option<Arc<Filters>>) -> io::Result<()> {
    let set = stop_set()?;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || {
            if let Err(e) = seccomp::install_if(filters.as_deref(), ThreadKind::Main) {
                exit.request(VmExit::VmmError {
                    reason: e.to_string(),
                });
                return;
            }
            drop(filters);
            wait_for_stop(&set, &exit);
        })?;
    Ok(())
}

/// Waits for a stop signal in `set` and asks the VM to stop.
fn wait_for_stop(set: &libc::sigset_t, exit: &ExitHandle) {
    loop {
        // SAFETY: `set` is a valid signal set; no siginfo is requested.
        let signal = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if signal < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %e, "wait for stop signals; they are ignored from now on");
            return;
        }
        tracing::debug!(signal, "stop signal received");
        exit.request(VmExit::Signalled { signal });
        return;
    }
}
