//! The syscall lists of each thread kind, for the architecture moat-vmm is
//! compiled for (`libc::SYS_*` are the target's numbers, so the aarch64 lists
//! are the same code built for aarch64).
//!
//! Each list was taken from what the threads do, traced with `strace -f` while
//! the devices' unit tests and the end-to-end boots ran, under both libcs moat-vmm
//! ships with (glibc for the dev and arm64 builds, musl for the static x86_64
//! one): their malloc, thread exit and `stat` differ (musl: `brk`,
//! `newfstatat`/`fstat`; glibc: `mmap` arenas, `statx`). Only the calls made
//! after a thread installed its filter are listed; thread start-up (`rseq`,
//! `set_robust_list`, the name, the signal stack) happens before, under the
//! filter of the thread that created it.
//!
//! This module owns the lists only; compiling and installing is `mod.rs`'s.

use std::collections::BTreeMap;

use libc::c_long;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::{SeccompError, ThreadKind, WorkerKind};

/// Allowed syscalls: each either with any arguments (`None`) or when one of
/// its rules matches.
#[derive(Debug, Clone, Default)]
pub(super) struct Allowed(BTreeMap<c_long, Option<Vec<SeccompRule>>>);

impl Allowed {
    /// Allows `nrs` whatever their arguments.
    fn any(&mut self, nrs: &[c_long]) -> &mut Self {
        for &nr in nrs {
            self.0.insert(nr, None);
        }
        self
    }

    /// Allows `nr` when one of `rules` matches (added to the rules it had,
    /// unless it was allowed with any arguments already).
    fn when(&mut self, nr: c_long, rules: Vec<SeccompRule>) -> &mut Self {
        if let Some(existing) = self.0.entry(nr).or_insert_with(|| Some(Vec::new())) {
            existing.extend(rules);
        }
        self
    }

    /// Everything `other` allows too.
    fn union(&mut self, other: &Allowed) -> &mut Self {
        for (&nr, rules) in &other.0 {
            match rules {
                None => {
                    self.0.insert(nr, None);
                }
                Some(rules) => {
                    self.when(nr, rules.clone());
                }
            }
        }
        self
    }

    /// Whether `nr` is allowed with some arguments.
    #[cfg(test)]
    pub(super) fn contains(&self, nr: c_long) -> bool {
        self.0.contains_key(&nr)
    }

    /// Whether `nr` is allowed whatever its arguments.
    #[cfg(test)]
    pub(super) fn allows_any_args(&self, nr: c_long) -> bool {
        matches!(self.0.get(&nr), Some(None))
    }

    /// The rule map seccompiler takes: an empty rule list allows any arguments.
    pub(super) fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect()
    }
}

/// Argument `index` (as a 32-bit value) equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(SeccompError::Rule)
}

/// Argument `index` has none of the bits of `mask`.
fn arg_clear(index: u8, mask: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
    .map_err(SeccompError::Rule)
}

/// Argument `index` is one of `values`: one rule each.
fn arg_in(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![arg_eq(index, v)?]).map_err(SeccompError::Rule))
        .collect()
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![
        SeccompRule::new(conditions).map_err(SeccompError::Rule)?
    ])
}

// Request numbers, as `<linux/kvm.h>` and `<asm-generic/ioctls.h>` define them.
/// `_IO(KVMIO, 0x80)`.
pub(super) const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`: the run loop reads RIP when it reports
/// a triple fault or an internal error.
#[cfg(target_arch = "x86_64")]
pub(super) const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `_IOW(KVMIO, 0xab, struct kvm_one_reg)`: the run loop reads PC when it
/// reports an internal error.
#[cfg(target_arch = "aarch64")]
pub(super) const KVM_GET_ONE_REG: u64 = 0x4010_aeab;
/// Non-blocking mode on a socket (`UnixListener::set_nonblocking`).
pub(super) const FIONBIO: u64 = 0x5421;

/// What every thread does once confined: memory (never executable), futexes,
/// signal returns and masks, time, sleeping, logging to stderr, closing fds,
/// hash seeds, and leaving.
fn base() -> Result<Allowed, SeccompError> {
    let mut a = Allowed::default();
    a.any(&[
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sched_yield,
        libc::SYS_restart_syscall,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_getrandom,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]);
    // New mappings and protection changes, never executable: no thread writes
    // code at run time.
    let prot_exec = libc::PROT_EXEC as u64;
    a.when(libc::SYS_mmap, rule(vec![arg_clear(2, prot_exec)?])?);
    a.when(libc::SYS_mprotect, rule(vec![arg_clear(2, prot_exec)?])?);
    // Rust's `OwnedFd` checks and duplicates, O_NONBLOCK and FD_CLOEXEC.
    a.when(
        libc::SYS_fcntl,
        arg_in(
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        )?,
    );
    Ok(a)
}

/// An epoll loop over eventfds.
fn event_loop(a: &mut Allowed) {
    a.any(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_read,
    ]);
    #[cfg(target_arch = "x86_64")]
    a.any(&[libc::SYS_epoll_wait]);
}

/// The main thread once the VM is built, and its helpers (the stop-signal
/// watcher and the console input thread): wait for the VM to stop, kick the
/// vCPUs out of `KVM_RUN` with the kick signal, read stdin, flush the console,
/// stop device workers, remove the vsock socket file, exit.
fn main_thread(kick_signal: u64) -> Result<Allowed, SeccompError> {
    let mut a = base()?;
    a.any(&[
        libc::SYS_read,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_unlinkat,
    ]);
    #[cfg(target_arch = "x86_64")]
    a.any(&[libc::SYS_lstat, libc::SYS_stat, libc::SYS_unlink]);
    // The kick, and nothing else, to threads of this process (glibc's
    // pthread_kill is tgkill, musl's tkill).
    a.when(libc::SYS_tgkill, rule(vec![arg_eq(2, kick_signal)?])?);
    a.when(libc::SYS_tkill, rule(vec![arg_eq(1, kick_signal)?])?);
    Ok(a)
}

/// A vCPU: `KVM_RUN`, the exits it dispatches (console output, the i8042 and
/// panic watch ending the VM, virtio-mmio register accesses), and what a
/// device's activation does on the vCPU thread before the launcher starts its
/// worker (eventfds, an epoll set, a non-blocking listener for vsock).
fn vcpu() -> Result<Allowed, SeccompError> {
    let mut a = base()?;
    event_loop(&mut a);
    a.any(&[libc::SYS_fsync, libc::SYS_fdatasync]);
    #[cfg(target_arch = "x86_64")]
    let requests = [KVM_RUN, KVM_GET_REGS, FIONBIO];
    #[cfg(target_arch = "aarch64")]
    let requests = [KVM_RUN, KVM_GET_ONE_REG, FIONBIO];
    a.when(libc::SYS_ioctl, arg_in(1, &requests)?);
    Ok(a)
}

/// What the worker of `kind` does: its epoll loop, plus the device's own I/O.
fn worker(kind: WorkerKind) -> Result<Allowed, SeccompError> {
    let mut a = base()?;
    event_loop(&mut a);
    match kind {
        // Reads and writes of the disk image, flushes, discard and write-zeroes.
        WorkerKind::Block => {
            a.any(&[
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_fallocate,
            ]);
        }
        // Frames to and from the tap.
        WorkerKind::Net => {
            a.any(&[libc::SYS_readv]);
        }
        // getrandom is in the base list.
        WorkerKind::Rng => {}
        // Host Unix sockets: accept on the listener, connect to `<uds>_<port>`,
        // stream data, shut down.
        WorkerKind::Vsock => {
            a.any(&[
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_recvmsg,
                libc::SYS_sendmsg,
                libc::SYS_shutdown,
                libc::SYS_getsockopt,
            ]);
            a.when(
                libc::SYS_socket,
                rule(vec![arg_eq(0, libc::AF_UNIX as u64)?])?,
            );
            a.when(libc::SYS_ioctl, arg_in(1, &[FIONBIO])?);
        }
        // fuse-backend-rs passthrough on the shares: every file operation a
        // FUSE request maps to, the caller's credentials per request, and the
        // worker's private umask.
        WorkerKind::Fs => {
            a.any(&[
                libc::SYS_openat,
                libc::SYS_newfstatat,
                libc::SYS_fstat,
                libc::SYS_statx,
                libc::SYS_fstatfs,
                libc::SYS_statfs,
                libc::SYS_getdents64,
                libc::SYS_lseek,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_readv,
                libc::SYS_readlinkat,
                libc::SYS_mkdirat,
                libc::SYS_mknodat,
                libc::SYS_unlinkat,
                libc::SYS_renameat2,
                libc::SYS_linkat,
                libc::SYS_symlinkat,
                libc::SYS_fchmodat,
                libc::SYS_fchmod,
                libc::SYS_fchownat,
                libc::SYS_fchown,
                libc::SYS_utimensat,
                libc::SYS_ftruncate,
                libc::SYS_fallocate,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_dup,
                libc::SYS_getxattr,
                libc::SYS_lgetxattr,
                libc::SYS_fgetxattr,
                libc::SYS_setxattr,
                libc::SYS_lsetxattr,
                libc::SYS_fsetxattr,
                libc::SYS_listxattr,
                libc::SYS_llistxattr,
                libc::SYS_flistxattr,
                libc::SYS_removexattr,
                libc::SYS_lremovexattr,
                libc::SYS_fremovexattr,
                libc::SYS_setresuid,
                libc::SYS_setresgid,
                libc::SYS_umask,
            ]);
            #[cfg(target_arch = "x86_64")]
            a.any(&[libc::SYS_renameat]);
            // The worker's own fs_struct, so the umask stays private.
            a.when(
                libc::SYS_unshare,
                rule(vec![arg_eq(0, libc::CLONE_FS as u64)?])?,
            );
        }
    }
    Ok(a)
}

/// The launcher starts every device worker (see `launcher.rs`), so its filter
/// is inherited by each: it allows what any worker does, thread creation, and
/// what a new thread does before it confines itself further (its name, its
/// robust list and rseq area, its signal stack, installing its own filter).
fn launcher() -> Result<Allowed, SeccompError> {
    let mut a = base()?;
    for kind in WorkerKind::ALL {
        a.union(&worker(kind)?);
    }
    a.any(&[
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_set_tid_address,
    ]);
    a.when(
        libc::SYS_prctl,
        arg_in(
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )?,
    );
    a.when(
        libc::SYS_seccomp,
        arg_in(0, &[u64::from(libc::SECCOMP_SET_MODE_FILTER)])?,
    );
    Ok(a)
}

/// The list of one thread kind.
pub(super) fn allowed(kind: ThreadKind, kick_signal: u64) -> Result<Allowed, SeccompError> {
    match kind {
        ThreadKind::Main => main_thread(kick_signal),
        ThreadKind::Vcpu => vcpu(),
        ThreadKind::Launcher => launcher(),
        ThreadKind::Worker(kind) => worker(kind),
    }
}
