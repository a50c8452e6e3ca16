//! The SIGSYS handler: what a seccomp violation looks like. The kernel traps
//! the refused syscall (`SECCOMP_RET_TRAP`) and raises SIGSYS in the thread
//! that made it; the handler writes `moat-vmm: bad syscall <nr> on thread
//! <name>` to stderr and ends the process with
//! [`ExitCode::BadSyscall`](crate::exit::ExitCode::BadSyscall).
//!
//! It runs under the thread's own filter, so it makes only calls every filter
//! allows (`write`, `exit_group`), and async-signal-safe ones: no allocation,
//! no lock. The thread's name is copied into a fixed thread-local buffer when
//! the filter is installed. This module owns the handler and that buffer.

use std::cell::Cell;
use std::io;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use crate::exit::ExitCode;

/// Longest thread name kept (Linux's own limit is 15 bytes).
const NAME_MAX: usize = 32;

thread_local! {
    /// This thread's name, for the report. Const-initialised with no
    /// destructor, so reading it from a signal handler is sound.
    static NAME: Cell<([u8; NAME_MAX], usize)> = const { Cell::new(([0; NAME_MAX], 0)) };
}

/// Keeps (the first [`NAME_MAX`] bytes of) `name` for this thread's report.
pub(super) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_MAX];
    let len = name.len().min(NAME_MAX);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    NAME.with(|n| n.set((buf, len)));
}

/// Offset of `si_syscall` in `siginfo_t` on 64-bit Linux: `si_signo`,
/// `si_errno`, `si_code`, padding, then the `_sigsys` union member
/// (`_call_addr`, `_syscall`, `_arch`).
const SI_SYSCALL_OFFSET: usize = 24;

/// Appends `bytes` to `buf` at `*at`, as far as it fits.
fn push(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if *at < buf.len() {
            buf[*at] = b;
            *at += 1;
        }
    }
}

/// Formats the report line into `buf`; returns its length. No allocation.
pub(super) fn format_report(buf: &mut [u8], nr: i32, name: &[u8]) -> usize {
    let mut at = 0;
    push(buf, &mut at, b"moat-vmm: bad syscall ");
    if nr < 0 {
        push(buf, &mut at, b"-");
    }
    let mut n = nr.unsigned_abs();
    let mut digits = [0u8; 10];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..count).rev() {
        push(buf, &mut at, &digits[i..=i]);
    }
    push(buf, &mut at, b" on thread ");
    push(
        buf,
        &mut at,
        if name.is_empty() { b"unnamed" } else { name },
    );
    push(buf, &mut at, b"\n");
    at
}

extern "C" fn handle_sigsys(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
        // for a seccomp SIGSYS its `_sigsys` member is filled, and
        // `si_syscall` sits at this offset on every 64-bit Linux ABI.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let (name, len) = NAME.with(Cell::get);
    let mut buf = [0u8; 128];
    let n = format_report(&mut buf, nr, &name[..len.min(NAME_MAX)]);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is a live
    // stack buffer of at least `n` bytes. Both are allowed by every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), n);
        libc::_exit(ExitCode::BadSyscall as c_int);
    }
}

/// Installs the handler, once per process; later calls return the first
/// call's result.
pub(super) fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handle_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised and points to a handler with the
        // SA_SIGINFO signature; the old action is not requested.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        }
    });
    (*result).map_err(io::Error::from_raw_os_error)
}
