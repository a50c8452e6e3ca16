//! `moat-demo`: one container in one microVM, end to end. It builds the bundled
//! demo image (Debian's busybox-static, imported into a fresh image store),
//! runs a command in it in a VM sandbox, prints the container's output as it
//! comes, then a summary on stderr (exit code, timings), and exits with the
//! container's exit code (125 when moat itself failed, as `docker run` does).
//! It owns only its arguments and the summary; the work is the library's.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use moat_images::{Store, StoreOptions};
use moat_runtime::demo_image::{import_demo_image, DEFAULT_BUSYBOX};
use moat_runtime::sandbox::{
    ContainerExit, RunIo, RunSpec, Sandbox, SandboxConfig, Stopped, Timings, DEFAULT_INITRD,
    DEFAULT_KERNEL, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, DEFAULT_VMM,
};

/// Runs a command in a container in a moat microVM.
#[derive(Debug, Parser)]
#[command(name = "moat-demo", version)]
struct Cli {
    /// Guest kernel (ELF vmlinux).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KERNEL)]
    kernel: PathBuf,
    /// Initramfs with moat-agent as /init (make initrd).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_INITRD)]
    initrd: PathBuf,
    /// moat-vmm; default: the one next to this program, else from PATH.
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// The static busybox the demo image is made of (Debian's busybox-static).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BUSYBOX)]
    busybox: PathBuf,
    /// Image store and container state go here (default: a new temporary
    /// directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (image store, VM config, logs, console).
    #[arg(long)]
    keep: bool,
    #[arg(long, default_value_t = DEFAULT_VCPUS)]
    vcpus: u8,
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    memory_mib: u32,
    /// Bound on VM start until the agent answers.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    start_timeout: u64,
    /// Pass our stdin to the container.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// The command (default: echo hello from a moat microVM).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

const CONTAINER_ID: &str = "demo";

/// moat-vmm's pid once the sandbox runs (0 before), for the signal thread.
static VMM_PID: AtomicU32 = AtomicU32::new(0);
/// The stop signal received, if any.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = watch_stop_signals() {
        eprintln!("moat-demo: SIGINT/SIGTERM will not stop the VM cleanly: {e}");
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("moat-demo: {e}");
            ExitCode::from(125)
        }
    }
}

/// Blocks SIGINT and SIGTERM in every thread and takes them on one: it stops the
/// VM with SIGTERM (moat-vmm then exits cleanly and the run ends), or exits at
/// once while no VM runs yet. The sandbox clears the mask for moat-vmm.
fn watch_stop_signals() -> io::Result<()> {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset fill it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid storage for a signal set, the signals are valid, and
    // the old mask is not requested; no other thread exists yet.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            // SAFETY: `set` is a valid signal set; no siginfo is requested.
            let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
            if signal < 0 {
                continue;
            }
            STOP_SIGNAL.store(signal, Ordering::SeqCst);
            let pid = VMM_PID.load(Ordering::SeqCst);
            match i32::try_from(pid) {
                Ok(pid) if pid > 0 => {
                    eprintln!("moat-demo: signal {signal}: stopping the VM");
                    // SAFETY: kill(2) on the VMM we spawned and have not reaped
                    // (the pid is cleared before the sandbox reaps it).
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                _ => std::process::exit(128 + signal),
            }
        })?;
    Ok(())
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn run(cli: &Cli) -> Result<i32, String> {
    // A temporary work directory is removed when `_temp` drops, unless kept.
    let (work, _temp) = match &cli.work_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("moat-demo.")
                .tempdir()
                .map_err(|e| format!("create a work directory: {e}"))?;
            if cli.keep {
                let kept = t.keep();
                eprintln!("moat-demo: work directory {} (kept)", kept.display());
                (kept, None)
            } else {
                (t.path().to_path_buf(), Some(t))
            }
        }
    };

    // The image, through the real store.
    let t0 = Instant::now();
    let store_dir = work.join("images");
    // A throw-away store: no fsync/syncfs (durability buys nothing here).
    let store = Store::open(
        &store_dir,
        StoreOptions {
            durable: false,
            ..StoreOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let image = import_demo_image(&store, &cli.busybox).map_err(|e| e.to_string())?;
    eprintln!(
        "moat-demo: image {} (busybox-static: {} applets, {} KiB rootfs tarball) imported in {}",
        image.id.short(),
        image.applets,
        image.tar_bytes >> 10,
        ms(t0.elapsed())
    );
    if STOP_SIGNAL.load(Ordering::SeqCst) != 0 {
        return Ok(130);
    }

    let vmm = cli.vmm.clone().unwrap_or_else(default_vmm);
    let mut cfg = SandboxConfig::new(
        CONTAINER_ID,
        work.join("containers").join(CONTAINER_ID),
        image.layers,
    );
    cfg.vmm = vmm;
    cfg.kernel = cli.kernel.clone();
    cfg.initrd = cli.initrd.clone();
    cfg.vcpus = cli.vcpus;
    cfg.memory_mib = cli.memory_mib;
    cfg.start_timeout = Duration::from_secs(cli.start_timeout);
    cfg.keep_state = cli.keep;
    eprintln!(
        "moat-demo: starting a microVM ({} vCPU, {} MiB, kernel {})",
        cfg.vcpus,
        cfg.memory_mib,
        cfg.kernel.display()
    );
    let mut sandbox = Sandbox::start(cfg).map_err(|e| e.to_string())?;
    VMM_PID.store(sandbox.vmm_pid().unwrap_or(0), Ordering::SeqCst);
    let signalled = STOP_SIGNAL.load(Ordering::SeqCst);
    if signalled != 0 {
        VMM_PID.store(0, Ordering::SeqCst);
        let _ = sandbox.stop();
        return Ok(128 + signalled);
    }

    let args = if cli.command.is_empty() {
        ["echo", "hello", "from", "a", "moat", "microVM"]
            .map(String::from)
            .to_vec()
    } else {
        cli.command.clone()
    };
    let spec = RunSpec::new(args);
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    let ran = sandbox.run(
        &spec,
        RunIo {
            stdin: cli
                .interactive
                .then(|| Box::new(io::stdin()) as Box<dyn io::Read + Send>),
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    );
    let timings = sandbox.timings();
    VMM_PID.store(0, Ordering::SeqCst);
    let t_stop = Instant::now();
    let stopped = sandbox.stop().map_err(|e| e.to_string());
    let stop_took = t_stop.elapsed();
    let signalled = STOP_SIGNAL.load(Ordering::SeqCst);
    if signalled != 0 {
        eprintln!("moat-demo: stopped by signal {signalled}");
        return Ok(128 + signalled);
    }
    let exit = ran.map_err(|e| e.to_string())?;
    let stopped = stopped?;
    summary(exit, &timings, &stopped, stop_took);
    Ok(exit.code)
}

/// `moat-vmm` next to this program, else from `PATH`.
fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name(DEFAULT_VMM))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new(DEFAULT_VMM).to_path_buf())
}

fn summary(exit: ContainerExit, t: &Timings, stopped: &Stopped, stop_took: Duration) {
    let mut s = String::new();
    let mut line = |text: String| {
        s.push_str("moat-demo: ");
        s.push_str(&text);
        s.push('\n');
    };
    line(match exit.signal {
        Some(sig) => format!("container exited with code {} (signal {sig})", exit.code),
        None => format!("container exited with code {}", exit.code),
    });
    let show = |d: Option<Duration>| d.map_or_else(|| "?".to_owned(), ms);
    line(format!(
        "VM start -> agent up {} -> first output {} (create -> first output {})",
        show(t.start_to_agent()),
        show(t.start_to_first_output()),
        show(t.create_to_first_output()),
    ));
    if let (Some(c2f), Some(agent)) = (t.create_to_first_output(), t.agent_create_start()) {
        let pct = if c2f.is_zero() {
            0.0
        } else {
            agent.as_secs_f64() * 100.0 / c2f.as_secs_f64()
        };
        line(format!(
            "  of create -> first output, the agent's own create + start: {} ({pct:.0} %)",
            ms(agent)
        ));
    }
    if let Some(b) = t.breakdown() {
        line(format!(
            "  VM start -> first output: VMM start {} ({:.0} %), kernel boot {} ({:.0} %), \
             agent {} ({:.0} %: start-up {}, create + start {}), rest {} ({:.0} %)",
            ms(b.vmm_start),
            b.percent(b.vmm_start),
            ms(b.kernel_boot),
            b.percent(b.kernel_boot),
            ms(b.agent()),
            b.percent(b.agent()),
            ms(b.agent_start),
            ms(b.agent_create_start),
            ms(b.rest),
            b.percent(b.rest),
        ));
    }
    if let Some(st) = t.create_stages {
        line(format!(
            "  agent create stages: overlay {}, bundle {}, libcontainer helper {}, devices + stdio {}",
            ms(Duration::from_micros(st.rootfs_us)),
            ms(Duration::from_micros(st.bundle_us)),
            ms(Duration::from_micros(st.helper_us)),
            ms(Duration::from_micros(st.devices_stdio_us)),
        ));
    }
    if let (Some(marker), Some(up)) = (t.boot_marker_us, t.agent_up_uptime_s) {
        line(format!(
            "  guest /init at {} after moat-vmm's start; agent up at guest uptime {up:.2} s",
            ms(Duration::from_micros(marker))
        ));
    }
    line(format!(
        "VM stopped in {}: {} (moat-vmm exit status {}{})",
        ms(stop_took),
        stopped.reason,
        stopped.vmm,
        if stopped.killed { ", killed" } else { "" }
    ));
    let _ = io::stderr().write_all(s.as_bytes());
}
