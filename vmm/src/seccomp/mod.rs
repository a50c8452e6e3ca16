//! Per-thread seccomp filters of moat-vmm: a guest that finds a bug in a device
//! runs code with the syscalls of the thread it lands in, not the VMM's.
//!
//! This module owns the filters (one per [`ThreadKind`], lists in `rules.rs`),
//! compiling them to BPF with `seccompiler`, installing one in the calling
//! thread, the SIGSYS handler that reports a violation (`sigsys.rs`), and the
//! launcher thread that starts device workers outside the vCPU filter
//! (`launcher.rs`). It does not decide when a thread is confined: the builder,
//! the vCPU loop, the `Vmm` and the devices call [`install`] at their thread's
//! start.
//!
//! Threads and their filters:
//! - the main thread, once the VM is built and before any vCPU enters the
//!   guest, and its helpers (stop-signal watcher, console input): [`ThreadKind::Main`];
//! - each vCPU, before its first `KVM_RUN`: [`ThreadKind::Vcpu`] (`ioctl` only
//!   `KVM_RUN`, the register read of its fault report, and `FIONBIO`);
//! - each device worker, first thing on its thread: [`ThreadKind::Worker`],
//!   one list per device kind.
//!
//! Workers are started when the guest driver activates a device, from a
//! register write on a vCPU thread. A thread inherits its creator's filter and
//! filters only add up, so a worker started by a vCPU could never do more than
//! the vCPU. Hence the launcher: a thread started with the VM, confined to the
//! union of every worker list plus thread creation ([`ThreadKind::Launcher`]),
//! starts each worker on request; the worker then narrows itself to its kind.
//!
//! A violation is `SECCOMP_RET_TRAP`: the SIGSYS handler writes `moat-vmm: bad
//! syscall <nr> on thread <name>` to stderr and exits the process with
//! [`ExitCode::BadSyscall`](crate::exit::ExitCode::BadSyscall).
//!
//! With no filters set up (`--no-seccomp`, unit tests, the fuzzer's
//! single-threaded entry points) nothing here runs and workers are started
//! directly.

mod launcher;
mod rules;
mod sigsys;

use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use launcher::{spawn_worker, start_launcher};

/// What a thread does, and so which filter it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread after set-up, the stop-signal watcher, console input.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The thread that starts device workers.
    Launcher,
    /// A device worker.
    Worker(WorkerKind),
}

/// The device a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    Block,
    Net,
    Rng,
    Vsock,
    Fs,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 5] = [
        WorkerKind::Block,
        WorkerKind::Net,
        WorkerKind::Rng,
        WorkerKind::Vsock,
        WorkerKind::Fs,
    ];

    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Block => "block",
            WorkerKind::Net => "net",
            WorkerKind::Rng => "rng",
            WorkerKind::Vsock => "vsock",
            WorkerKind::Fs => "fs",
        }
    }

    fn index(self) -> usize {
        match self {
            WorkerKind::Block => 0,
            WorkerKind::Net => 1,
            WorkerKind::Rng => 2,
            WorkerKind::Vsock => 3,
            WorkerKind::Fs => 4,
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThreadKind::Main => write!(f, "main"),
            ThreadKind::Vcpu => write!(f, "vcpu"),
            ThreadKind::Launcher => write!(f, "launcher"),
            ThreadKind::Worker(kind) => write!(f, "{} worker", kind.name()),
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: build rule: {0}")]
    Rule(#[source] seccompiler::BackendError),
    #[error("seccomp: build {kind} filter: {source}")]
    Filter {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: compile {kind} filter: {source}")]
    Compile {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: install the SIGSYS handler: {0}")]
    SigsysHandler(#[source] std::io::Error),
    #[error("seccomp: install {kind} filter on thread {thread}: {source}")]
    Install {
        kind: ThreadKind,
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("seccomp: start the worker launcher: {0}")]
    Launcher(#[source] std::io::Error),
}

/// The BPF programs of every thread kind, compiled for this architecture.
#[derive(Debug)]
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    launcher: BpfProgram,
    workers: [BpfProgram; 5],
}

/// The architecture moat-vmm runs on, as seccompiler names it.
#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Compiles the filter of `kind`: its list allowed, everything else trapped.
fn compile(kind: ThreadKind, kick_signal: u64) -> Result<BpfProgram, SeccompError> {
    let allowed = rules::allowed(kind, kick_signal)?;
    let filter = SeccompFilter::new(
        allowed.into_rules(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(|source| SeccompError::Filter { kind, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { kind, source })
}

impl Filters {
    /// Compiles every filter. `kick_signal` is the only signal the main
    /// thread may send (to vCPU threads).
    pub fn compile(kick_signal: i32) -> Result<Arc<Filters>, SeccompError> {
        let kick = u64::try_from(kick_signal).unwrap_or(u64::MAX);
        let mut workers: [BpfProgram; 5] = Default::default();
        for kind in WorkerKind::ALL {
            workers[kind.index()] = compile(ThreadKind::Worker(kind), kick)?;
        }
        Ok(Arc::new(Filters {
            main: compile(ThreadKind::Main, kick)?,
            vcpu: compile(ThreadKind::Vcpu, kick)?,
            launcher: compile(ThreadKind::Launcher, kick)?,
            workers,
        }))
    }

    /// The program of `kind`.
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Launcher => &self.launcher,
            ThreadKind::Worker(w) => &self.workers[w.index()],
        }
    }
}

/// Makes glibc's malloc keep one arena for every thread. Call first thing in
/// `main`, before any thread exists.
///
/// Why: when glibc shrinks the heap of a per-thread arena it reads
/// `/proc/sys/vm/overcommit_memory` (once per process, at the first shrink,
/// which can come long after boot), and `openat` is refused to every thread
/// but the virtio-fs worker. With one arena there are no per-thread heaps to
/// shrink (the main arena trims with `brk`). musl's malloc has no arenas.
/// The unit tests that confine workers run with `MALLOC_ARENA_MAX=1` for the
/// same reason.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers; M_ARENA_MAX only bounds how many
    // arenas later allocations may create.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Confines the calling thread with the filter of `kind`, for good. The SIGSYS
/// handler is installed first (once per process), and the thread's name kept
/// for its report.
pub fn install(filters: &Filters, kind: ThreadKind) -> Result<(), SeccompError> {
    sigsys::install_handler().map_err(SeccompError::SigsysHandler)?;
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    sigsys::set_thread_name(&name);
    seccompiler::apply_filter(filters.program(kind)).map_err(|source| SeccompError::Install {
        kind,
        thread: name.clone(),
        source,
    })?;
    tracing::trace!(thread = %name, %kind, "seccomp filter installed");
    Ok(())
}

/// Installs `kind`'s filter when there are filters; nothing otherwise.
pub fn install_if(filters: Option<&Filters>, kind: ThreadKind) -> Result<(), SeccompError> {
    match filters {
        Some(f) => install(f, kind),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
