//! `moat-agent` entry point: guest mode (PID 1 of a moat microVM), host mode (a test
//! aid), and the container helper. It owns argument parsing, logging and the process
//! set-up of each mode; the work happens in the library.

// PID 1 must not panic: a dead init takes the VM and the exit status with it.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use moat_agent::conn::Listener;
use moat_agent::container::{Manager, Mode};
use moat_agent::helper::HELPER_ARG;
use moat_agent::init::{self, GUEST_RUN_DIR};
use moat_agent::protocol::AGENT_VSOCK_PORT;
use moat_agent::reaper::Reaper;
use moat_agent::server::{Server, Stop};
use moat_agent::sys::{LinuxSys, Sys};
use moat_agent::LOG_ENV;

const HELP: &str = "\
moat-agent: moat's in-guest agent.

Guest mode (the product): run as PID 1 (`/init` of the initramfs) of a moat microVM.
  It mounts /proc, /sys, /dev, /run and cgroup2, the virtio-fs shares named by
  `moat.fs=<tag>:<dir>[,...]` on the kernel command line, and serves the agent
  protocol on vsock port 1024. `moat.oneshot=1` powers the VM off after the last
  container; `moat.log=debug` raises the log level.

Host mode (a TEST AID, never the product path):
  moat-agent --host-mode --listen <unix socket> [--root <dir>]
  Serves the same protocol on a Unix socket on this host, inside a private mount
  namespace, with <dir> (default: <socket>.d) as its run directory. This host's
  cgroup v2 hierarchy has no controllers, so specs with cgroup limits are refused.

Options:
  -h, --help     this text
  -V, --version  the agent's version
";

fn env_filter(filter: Option<&str>) -> tracing_subscriber::EnvFilter {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var(LOG_ENV).ok())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn init_logging(filter: Option<&str>) {
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; the guest console goes to a file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::process::id() != 1)
        .with_target(false)
        .try_init();
}

/// The helper logs to a close-on-exec duplicate of the agent's stderr, not to
/// descriptor 2: libcontainer's container processes log through the same subscriber
/// after they have put the container's stderr on descriptor 2, and those lines must
/// reach the agent's log, never the container's output.
fn init_helper_logging() {
    let Ok(fd) = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)) else {
        return;
    };
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let log = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::io::IsTerminal;
    let ansi = log.is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter(None))
        .with_ansi(ansi)
        .with_writer(std::sync::Mutex::new(log))
        .with_target(false)
        .try_init();
}

/// Logs panics; the panicking thread dies, the agent keeps serving.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!("panic in thread {name}: {info}");
        eprintln!("moat-agent: panic in thread {name}: {info}");
    }));
}

/// The log filter the helper should use: the agent's own.
fn log_filter_for_helper(filter: Option<&str>) -> Option<String> {
    filter
        .map(str::to_owned)
        .or_else(|| std::env::var(LOG_ENV).ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(HELPER_ARG) {
        init_helper_logging();
        let code = moat_agent::helper::main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if std::process::id() == 1 {
        // The kernel passes unknown command-line words as arguments; ignore them.
        guest_main();
    }
    let mut host_mode = false;
    let mut listen = None;
    let mut root = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("moat-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--host-mode" => host_mode = true,
            "--listen" => listen = it.next().map(PathBuf::from),
            "--root" => root = it.next().map(PathBuf::from),
            other => {
                eprintln!("moat-agent: unknown argument {other:?}\n\n{HELP}");
                return ExitCode::from(2);
            }
        }
    }
    match (host_mode, listen) {
        (true, Some(listen)) => {
            let root = root.unwrap_or_else(|| {
                let mut p = listen.clone().into_os_string();
                p.push(".d");
                PathBuf::from(p)
            });
            host_main(listen, root)
        }
        _ => {
            eprintln!(
                "moat-agent: not PID 1; guest mode runs only as a VM's init. For tests: \
                 --host-mode --listen <socket>\n\n{HELP}"
            );
            ExitCode::from(2)
        }
    }
}

/// Makes sure descriptors 0, 1 and 2 are open, so no pipe or socket the agent creates
/// lands on a stdio number by accident.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            // SAFETY: open with a valid NUL-terminated path; the result is checked.
            let opened = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
            if opened >= 0 {
                if opened != fd {
                    // SAFETY: dup2/close on descriptors we just opened.
                    unsafe {
                        libc::dup2(opened, fd);
                        libc::close(opened);
                    }
                }
                break;
            }
        }
    }
}

fn guest_main() -> ! {
    ensure_stdio();
    install_panic_hook();
    let sys: Arc<dyn Sys> = Arc::new(LinuxSys);
    let report = match init::setup_guest(&*sys) {
        Ok(r) => r,
        Err(e) => {
            init_logging(None);
            fatal(&*sys, &format!("guest set-up: {e}"));
        }
    };
    init_logging(report.boot.log.as_deref());
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        uptime_s = %uptime,
        controllers = ?report.controllers,
        oneshot = report.boot.oneshot,
        "moat-agent up"
    );
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => fatal(&*sys, &format!("start reaper: {e}")),
    };
    let manager = match Manager::new(
        Mode::Guest,
        PathBuf::from(GUEST_RUN_DIR),
        sys.clone(),
        reaper,
        PathBuf::from("/proc/self/exe"),
        log_filter_for_helper(report.boot.log.as_deref()),
    ) {
        Ok(m) => Arc::new(m),
        Err(e) => fatal(&*sys, &e.to_string()),
    };
    manager.set_oneshot(report.boot.oneshot);
    let listener = match Listener::vsock(AGENT_VSOCK_PORT) {
        Ok(l) => l,
        Err(e) => fatal(
            &*sys,
            &format!("listen on vsock port {AGENT_VSOCK_PORT}: {e}"),
        ),
    };
    let server = Server::new(manager.clone());
    let stop = serve_forever(&server, listener);
    tracing::info!(?stop, "powering off");
    manager.shutdown();
    let err = init::power_off(&*sys);
    fatal(&*sys, &format!("power off: {err}"));
}

/// Serves; a panic escaping the server loop is logged and the loop restarted.
fn serve_forever(server: &Arc<Server>, listener: Listener) -> Stop {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.serve(listener))) {
        Ok(stop) => stop,
        Err(_) => {
            tracing::error!("the server loop panicked; stopping");
            Stop::ListenerFailed
        }
    }
}

/// PID 1 cannot exit: say what went wrong on the console, then power off; if even that
/// fails, sleep forever so the kernel does not panic over a dead init.
fn fatal(sys: &dyn Sys, msg: &str) -> ! {
    eprintln!("moat-agent: fatal: {msg}");
    tracing::error!("fatal: {msg}");
    let err = init::power_off(sys);
    eprintln!("moat-agent: power off failed: {err}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Host mode set-up: a private mount namespace (so overlay mounts stay private) with
/// the cgroup v2 hierarchy at /sys/fs/cgroup (libcontainer looks for it there), and a
/// child subreaper, so container processes re-parent to the agent.
fn host_setup() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let cgroup = std::path::Path::new("/sys/fs/cgroup");
    let is_cgroup2 = nix::sys::statfs::statfs(cgroup)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if !is_cgroup2 {
        mount(
            Some("cgroup2"),
            cgroup,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mount cgroup2 on /sys/fs/cgroup: {e}"))?;
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("become a subreaper: {e}"))?;
    // A test that dies must not leave its agent behind.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;
    Ok(())
}

fn host_main(listen: PathBuf, root: PathBuf) -> ExitCode {
    // Before any thread exists: unshare(CLONE_NEWNS) refuses multi-threaded callers.
    if let Err(e) = host_setup() {
        eprintln!("moat-agent: host mode: {e}");
        return ExitCode::from(1);
    }
    init_logging(None);
    install_panic_hook();
    let sys: Arc<dyn Sys> = Arc::new(LinuxSys);
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat-agent: start reaper: {e}");
            return ExitCode::from(1);
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let manager = match Manager::new(
        Mode::Host,
        root,
        sys,
        reaper,
        exe,
        log_filter_for_helper(None),
    ) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("moat-agent: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match Listener::unix(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("moat-agent: listen on {}: {e}", listen.display());
            return ExitCode::from(1);
        }
    };
    tracing::info!(socket = %listen.display(), "moat-agent up in host mode (test aid)");
    let server = Server::new(manager.clone());
    let stop = serve_forever(&server, listener);
    manager.shutdown();
    let _ = std::fs::remove_file(&listen);
    match stop {
        Stop::ListenerFailed => ExitCode::from(1),
        Stop::Shutdown | Stop::OneshotDone => ExitCode::SUCCESS,
    }
}
