//! Filter tests. The ones that install a filter do it in a re-executed copy of
//! the test binary (the ignored test [`child`], picked by
//! `MOAT_SECCOMP_CHILD`), so a trap ends that process only; the parent checks
//! its exit status and stderr.

use std::process::{Command, Output};

use super::rules::{self, FIONBIO, KVM_RUN};
use super::*;
use crate::exit::ExitCode;
use crate::vstate::vcpu::kick_signal;

fn kick() -> u64 {
    u64::try_from(kick_signal()).unwrap()
}

#[test]
fn every_filter_compiles_for_this_architecture() {
    let filters = Filters::compile(kick_signal()).unwrap();
    let mut kinds = vec![ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Launcher];
    kinds.extend(WorkerKind::ALL.map(ThreadKind::Worker));
    for kind in kinds {
        let len = filters.program(kind).len();
        // The kernel takes at most 4096 instructions per program.
        assert!(len > 10 && len <= 4096, "{kind}: {len} instructions");
    }
}

#[test]
fn lists_stay_narrow() {
    let never = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_bpf,
        libc::SYS_kexec_load,
        libc::SYS_init_module,
        libc::SYS_setns,
        libc::SYS_process_vm_writev,
    ];
    let mut kinds = vec![ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Launcher];
    kinds.extend(WorkerKind::ALL.map(ThreadKind::Worker));
    for kind in kinds {
        let allowed = rules::allowed(kind, kick()).unwrap();
        for nr in never {
            assert!(!allowed.contains(nr), "{kind} allows syscall {nr}");
        }
        // Memory is never mapped executable, ioctl is always by request.
        assert!(!allowed.allows_any_args(libc::SYS_mmap), "{kind}");
        assert!(!allowed.allows_any_args(libc::SYS_mprotect), "{kind}");
        assert!(!allowed.allows_any_args(libc::SYS_ioctl), "{kind}");
    }
    let vcpu = rules::allowed(ThreadKind::Vcpu, kick()).unwrap();
    for nr in [
        libc::SYS_socket,
        libc::SYS_openat,
        libc::SYS_clone,
        libc::SYS_clone3,
    ] {
        assert!(!vcpu.contains(nr), "vcpu allows syscall {nr}");
    }
    let main = rules::allowed(ThreadKind::Main, kick()).unwrap();
    assert!(!main.allows_any_args(libc::SYS_tgkill));
    assert!(!main.contains(libc::SYS_openat));
    assert!(!main.contains(libc::SYS_clone));
    // Only the fs worker touches files by path, only vsock makes sockets.
    for kind in WorkerKind::ALL {
        let allowed = rules::allowed(ThreadKind::Worker(kind), kick()).unwrap();
        assert_eq!(allowed.contains(libc::SYS_openat), kind == WorkerKind::Fs);
        assert_eq!(
            allowed.contains(libc::SYS_socket),
            kind == WorkerKind::Vsock
        );
        assert!(!allowed.contains(libc::SYS_clone), "{kind:?}");
    }
}

#[test]
fn the_launcher_allows_what_every_worker_does() {
    let launcher = rules::allowed(ThreadKind::Launcher, kick()).unwrap();
    for kind in WorkerKind::ALL {
        let worker = rules::allowed(ThreadKind::Worker(kind), kick())
            .unwrap()
            .into_rules();
        for (nr, rules) in worker {
            let nr = libc::c_long::try_from(nr).unwrap();
            assert!(launcher.contains(nr), "{kind:?}: {nr}");
            if rules.is_empty() {
                assert!(launcher.allows_any_args(nr), "{kind:?}: {nr}");
            }
        }
    }
}

#[test]
fn ioctl_request_numbers_match_the_kernel_headers() {
    use vmm_sys_util::ioctl_io_nr;
    const KVMIO: u32 = 0xae;
    ioctl_io_nr!(KVM_RUN_NR, KVMIO, 0x80);
    assert_eq!(KVM_RUN, KVM_RUN_NR());
    #[cfg(target_arch = "x86_64")]
    {
        use vmm_sys_util::ioctl_ior_nr;
        ioctl_ior_nr!(KVM_GET_REGS_NR, KVMIO, 0x81, kvm_bindings::kvm_regs);
        assert_eq!(rules::KVM_GET_REGS, KVM_GET_REGS_NR());
    }
    #[cfg(target_arch = "aarch64")]
    {
        use vmm_sys_util::ioctl_iow_nr;
        ioctl_iow_nr!(KVM_GET_ONE_REG_NR, KVMIO, 0xab, kvm_bindings::kvm_one_reg);
        assert_eq!(rules::KVM_GET_ONE_REG, KVM_GET_ONE_REG_NR());
    }
    assert_eq!(FIONBIO, libc::FIONBIO);
}

#[test]
fn the_report_line_is_formatted_without_allocating() {
    let mut buf = [0u8; 128];
    let n = sigsys::format_report(&mut buf, 41, b"vcpu0");
    assert_eq!(&buf[..n], b"moat-vmm: bad syscall 41 on thread vcpu0\n");
    let n = sigsys::format_report(&mut buf, 0, b"");
    assert_eq!(&buf[..n], b"moat-vmm: bad syscall 0 on thread unnamed\n");
    let n = sigsys::format_report(&mut buf, -1, b"x");
    assert_eq!(&buf[..n], b"moat-vmm: bad syscall -1 on thread x\n");
    // A buffer too short is filled, never overrun.
    let mut small = [0u8; 8];
    assert_eq!(sigsys::format_report(&mut small, 435, b"moat-block"), 8);
}

/// Runs [`child`] with `case` in a fresh copy of this test binary.
fn run_child(case: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "--exact",
            "seccomp::tests::child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MOAT_SECCOMP_CHILD", case)
        .output()
        .unwrap()
}

/// Checks that `case` passed its allowed calls, then died through the SIGSYS
/// handler on syscall `nr` in thread `thread`.
fn expect_trap(case: &str, nr: libc::c_long, thread: &str) {
    let out = run_child(case);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(ExitCode::BadSyscall as i32),
        "{case}: {stderr}"
    );
    assert!(
        stderr.contains("allowed calls ok\n"),
        "{case}: the allowed calls did not all work: {stderr}"
    );
    let line = format!("moat-vmm: bad syscall {nr} on thread {thread}\n");
    assert!(stderr.contains(&line), "{case}: no `{line}` in {stderr}");
}

#[test]
fn vcpu_filter_traps_socket() {
    expect_trap("vcpu-socket", libc::SYS_socket, "vcpu0");
}

#[test]
fn vcpu_filter_traps_execve() {
    expect_trap("vcpu-execve", libc::SYS_execve, "vcpu0");
}

#[test]
fn vcpu_filter_traps_an_ioctl_with_another_request() {
    expect_trap("vcpu-ioctl", libc::SYS_ioctl, "vcpu0");
}

#[test]
fn block_worker_filter_traps_execve() {
    expect_trap("block-execve", libc::SYS_execve, "moat-block");
}

#[test]
fn vsock_worker_filter_traps_ptrace_and_inet_sockets() {
    expect_trap("vsock-ptrace", libc::SYS_ptrace, "vsock");
    expect_trap("vsock-inet", libc::SYS_socket, "vsock");
}

#[test]
fn fs_worker_filter_traps_mount() {
    expect_trap("fs-mount", libc::SYS_mount, "virtio-fs-t");
}

#[test]
fn main_filter_traps_openat() {
    expect_trap("main-openat", libc::SYS_openat, "main-t");
}

/// A worker started from a vCPU thread goes through the launcher: it can do
/// what its own filter allows (open a file) though the vCPU's cannot, and is
/// still refused the rest.
#[test]
fn a_worker_started_from_a_vcpu_gets_its_own_filter() {
    expect_trap("launcher-fs", libc::SYS_mount, "virtio-fs-l");
}

/// Runs `f` on a thread named `name` confined as `kind`, and waits for it.
fn confined<F: FnOnce() + Send + 'static>(
    filters: &Arc<Filters>,
    name: &str,
    kind: ThreadKind,
    f: F,
) {
    let filters = Arc::clone(filters);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            install(&filters, kind).unwrap();
            f();
        })
        .unwrap()
        .join()
        .unwrap();
}

fn ok() {
    eprintln!("allowed calls ok");
}

fn eventfd() -> i32 {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    fd
}

fn execve() {
    let path = c"/nonexistent-moat-binary";
    let argv = [std::ptr::null::<libc::c_char>()];
    // SAFETY: valid NUL-terminated path and NULL-terminated argv/envp. Were the
    // call allowed it would fail with ENOENT.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), argv.as_ptr()) };
}

fn socket(domain: libc::c_int) -> libc::c_int {
    // SAFETY: socket takes no pointers.
    unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
}

fn mount() {
    // SAFETY: null pointers are allowed for a bind-less call; were it allowed
    // it would fail (EFAULT or EPERM) without mounting anything.
    unsafe {
        libc::mount(
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            0,
            std::ptr::null(),
        )
    };
}

/// Not a test: the body of the re-executed child (see [`run_child`]).
#[test]
#[ignore = "run by the seccomp tests in a child process"]
fn child() {
    let Ok(case) = std::env::var("MOAT_SECCOMP_CHILD") else {
        return;
    };
    let filters = Filters::compile(kick_signal()).unwrap();
    match case.as_str() {
        "vcpu-socket" | "vcpu-execve" | "vcpu-ioctl" => {
            confined(&filters, "vcpu0", ThreadKind::Vcpu, move || {
                // What a vCPU does besides KVM_RUN: eventfds, epoll, sleep.
                let fd = eventfd();
                // SAFETY: writes 8 bytes from a live u64.
                let n = unsafe { libc::write(fd, (&1u64 as *const u64).cast(), 8) };
                assert_eq!(n, 8);
                // SAFETY: epoll_create1 takes no pointers.
                let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                assert!(ep >= 0);
                std::thread::sleep(std::time::Duration::from_millis(1));
                // KVM_RUN on an eventfd passes the filter and fails in the kernel.
                // SAFETY: KVM_RUN takes no argument.
                let rc = unsafe { libc::ioctl(fd, KVM_RUN as _, 0) };
                assert_eq!(rc, -1);
                // SAFETY: closing fds this closure opened.
                unsafe {
                    libc::close(ep);
                }
                ok();
                match case.as_str() {
                    "vcpu-socket" => {
                        socket(libc::AF_UNIX);
                    }
                    "vcpu-execve" => execve(),
                    _ => {
                        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
                        // SAFETY: TCGETS writes a termios into the buffer.
                        unsafe { libc::ioctl(fd, libc::TCGETS as _, termios.as_mut_ptr()) };
                    }
                }
            });
        }
        "block-execve" => {
            // The disk is opened at set-up, before the worker exists.
            let file = tempfile::tempfile().unwrap();
            confined(
                &filters,
                "moat-block",
                ThreadKind::Worker(WorkerKind::Block),
                move || {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(b"sector", 512).unwrap();
                    let mut buf = [0u8; 6];
                    file.read_exact_at(&mut buf, 512).unwrap();
                    assert_eq!(&buf, b"sector");
                    file.sync_data().unwrap();
                    ok();
                    execve();
                },
            );
        }
        "vsock-ptrace" | "vsock-inet" => {
            confined(
                &filters,
                "vsock",
                ThreadKind::Worker(WorkerKind::Vsock),
                move || {
                    let fd = socket(libc::AF_UNIX);
                    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
                    ok();
                    if case == "vsock-ptrace" {
                        // SAFETY: PEEKUSER of pid 0 fails (ESRCH) if allowed.
                        unsafe { libc::ptrace(libc::PTRACE_PEEKUSER, 0, 0, 0) };
                    } else {
                        socket(libc::AF_INET);
                    }
                },
            );
        }
        "fs-mount" => confined(
            &filters,
            "virtio-fs-t",
            ThreadKind::Worker(WorkerKind::Fs),
            || {
                let dir = std::fs::read_dir("/").unwrap();
                assert!(dir.count() > 0);
                ok();
                mount();
            },
        ),
        "main-openat" => confined(&filters, "main-t", ThreadKind::Main, || {
            std::thread::sleep(std::time::Duration::from_millis(1));
            ok();
            let _ = std::fs::File::open("/");
        }),
        "launcher-fs" => {
            start_launcher(&filters).unwrap();
            confined(&filters, "vcpu0", ThreadKind::Vcpu, || {
                let worker = spawn_worker("virtio-fs-l".into(), WorkerKind::Fs, || {
                    let dir = std::fs::read_dir("/").unwrap();
                    assert!(dir.count() > 0);
                    ok();
                    mount();
                })
                .unwrap();
                let _ = worker.join();
            });
        }
        other => panic!("unknown child case {other}"),
    }
}
