//! The VM sandbox: one container's microVM. It owns the container's state
//! directory, the `moat-vmm` process (spawned in its own session, so it would
//! outlive a daemon restart), the control connection to the guest agent over the
//! VMM's hybrid vsock socket, the container's create/start/wait with its stdio
//! streamed to the caller, and stopping the VM.
//!
//! It must not know the Engine API or the image store's internals: it takes
//! layer directories (bottom first) and a state directory, and speaks only to
//! moat-vmm (through its config file and exit status) and to the agent (through
//! the agent crate's client and wire types, converted here).
//!
//! # State directory (0700, created by [`Sandbox::start`], removed by
//! [`Sandbox::stop`] unless kept)
//! ```text
//! <state>/vm.json       the VM config (moat-vmm's own serde types)
//! <state>/vmm.out       moat-vmm's stdout, <state>/vmm.err its stderr
//! <state>/console.log   the guest's serial console
//! <state>/vsock.sock    moat-vmm's hybrid vsock socket (agent: port 1024)
//! <state>/upper/diff    the container's writable layer (overlayfs upperdir)
//! <state>/upper/work    overlayfs workdir
//! ```
//! Guest side: one virtio-fs device, tag [`SHARE_TAG`], mounted by the agent at
//! [`GUEST_SHARE_DIR`] (`moat.fs=` on the kernel command line), carries every
//! share of the container: `/layers/<i>` read-only, `/upper` read-write.
//! `upper/` is guest-written: a hostile directory for the host (never follow
//! its symlinks); the sandbox only ever removes it.

mod timings;

pub use timings::{Breakdown, CreateStages, Timings};

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use moat_agent::client::{attach_input, attach_output, vsock_connect, Client, ClientError};
use moat_agent::protocol::{
    validate_id, CreateRequest, RootfsLayers, StdioConfig, StreamKind, AGENT_VSOCK_PORT,
};
use moat_agent::spec::{docker_default, SpecError, SpecOptions};
use moat_vmm::config::{
    ConfigError, ConsoleConfig, ConsoleOutput, FsConfig, FsMountConfig, RngConfig, VmConfig,
    VsockConfig,
};

/// The virtio-fs tag of a container's share.
pub const SHARE_TAG: &str = "moat";
/// Where the agent mounts it in the guest.
pub const GUEST_SHARE_DIR: &str = "/mnt/moat";
/// Default kernel, initramfs (agent as `/init`) and VMM binary of an installed moat.
pub const DEFAULT_KERNEL: &str = "/usr/lib/moat/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/lib/moat/agent.cpio";
/// Looked up in `PATH`.
pub const DEFAULT_VMM: &str = "moat-vmm";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Bound on VMM spawn → agent answering `ping`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on `shutdown` → VMM exit, before `SIGKILL`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Each VM has its own vsock socket, so every guest can have the same CID.
pub const GUEST_CID: u64 = 3;
/// moat-vmm's log filter: warnings, plus its builder's step timings (the line
/// `vcpus started elapsed_us=` is read for [`Timings::vcpus_started_us`]).
pub const VMM_LOG_FILTER: &str = "warn,moat_vmm::builder=debug";
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Polling interval while waiting for the VMM.
const POLL: Duration = Duration::from_millis(10);
/// Pause between attempts to reach the agent.
const AGENT_RETRY: Duration = Duration::from_millis(20);
/// Most of the VMM's stderr quoted in an error.
const MAX_STDERR_QUOTE: usize = 2000;

/// How to build one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The container's id (`[A-Za-z0-9_.+-]`, at most 128): names it to the agent
    /// and in every error.
    pub id: String,
    /// The per-container state directory; must not exist yet (its parent is
    /// created if needed).
    pub state_dir: PathBuf,
    /// Image layer directories, bottom (base) layer first.
    pub layers: Vec<PathBuf>,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// Initramfs with moat-agent as `/init` (`agent/mkinitramfs.sh`).
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Appended to the kernel command line (e.g. `moat.log=debug`).
    pub extra_cmdline: Option<String>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    /// Keep the state directory after stop (and after a failed start).
    pub keep_state: bool,
}

impl SandboxConfig {
    /// Defaults for everything but the container.
    pub fn new(id: impl Into<String>, state_dir: impl Into<PathBuf>, layers: Vec<PathBuf>) -> Self {
        Self {
            id: id.into(),
            state_dir: state_dir.into(),
            layers,
            vmm: DEFAULT_VMM.into(),
            kernel: DEFAULT_KERNEL.into(),
            initrd: DEFAULT_INITRD.into(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            extra_cmdline: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            keep_state: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// The same config with every path absolute (moat-vmm runs in the state
    /// dir); a bare VMM name stays, for the `PATH` lookup.
    fn absolute(mut self) -> io::Result<Self> {
        self.state_dir = std::path::absolute(&self.state_dir)?;
        self.kernel = std::path::absolute(&self.kernel)?;
        self.initrd = std::path::absolute(&self.initrd)?;
        if self.vmm.components().count() > 1 {
            self.vmm = std::path::absolute(&self.vmm)?;
        }
        for l in &mut self.layers {
            *l = std::path::absolute(&*l)?;
        }
        Ok(self)
    }

    /// The kernel command line: the VMM's default, `quiet` (every console byte is
    /// a VM exit), the agent's share, then `extra_cmdline`.
    pub fn cmdline(&self) -> String {
        let mut c = format!(
            "{} quiet moat.fs={SHARE_TAG}:{GUEST_SHARE_DIR}",
            moat_vmm::arch::DEFAULT_CMDLINE
        );
        if let Some(extra) = &self.extra_cmdline {
            c.push(' ');
            c.push_str(extra);
        }
        c
    }

    /// The VM config moat-vmm gets, as its own types.
    pub fn vm_config(&self) -> VmConfig {
        let mut mounts: Vec<FsMountConfig> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, dir)| FsMountConfig {
                guest_path: format!("/layers/{i}"),
                host_dir: dir.clone(),
                read_only: true,
            })
            .collect();
        mounts.push(FsMountConfig {
            guest_path: "/upper".into(),
            host_dir: self.path("upper"),
            read_only: false,
        });
        VmConfig {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            kernel: Some(self.kernel.clone()),
            initrd: Some(self.initrd.clone()),
            cmdline: Some(self.cmdline()),
            console: ConsoleConfig {
                output: ConsoleOutput::File(self.path("console.log")),
                input: false,
            },
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: self.path("vsock.sock"),
            }),
            fs: vec![FsConfig {
                tag: SHARE_TAG.into(),
                path: None,
                read_only: false,
                mounts,
                num_request_queues: 1,
            }],
            rng: Some(RngConfig {}),
            ..VmConfig::default()
        }
    }

    /// The overlay the agent builds, in guest paths.
    fn guest_rootfs(&self) -> RootfsLayers {
        RootfsLayers {
            layers: (0..self.layers.len())
                .map(|i| format!("{GUEST_SHARE_DIR}/layers/{i}"))
                .collect(),
            upper: format!("{GUEST_SHARE_DIR}/upper/diff"),
            work: format!("{GUEST_SHARE_DIR}/upper/work"),
        }
    }

    /// Checks what the VMM and the agent would refuse less clearly.
    fn check(&self) -> Result<(), String> {
        validate_id("container", &self.id).map_err(|e| e.message)?;
        if self.layers.is_empty() {
            return Err("no image layers".into());
        }
        let max = moat_vmm::devices::virtio::fs::MAX_MOUNTS - 1;
        if self.layers.len() > max {
            return Err(format!(
                "{} image layers, at most {max} (one virtio-fs mount each, plus the upper layer)",
                self.layers.len()
            ));
        }
        let sock = self.path("vsock.sock");
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "state dir {} is too long for a Unix socket path inside it (at most {MAX_SOCKET_PATH} bytes)",
                self.state_dir.display()
            ));
        }
        Ok(())
    }
}

/// How moat-vmm ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmStatus {
    /// Its exit code (see `docs/vmm.md`: 0 the guest powered off, 2 bad config,
    /// 3 guest panic, ...).
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl From<std::process::ExitStatus> for VmmStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        Self {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

impl std::fmt::Display for VmmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "{c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

/// How a container process ended, Docker-style: the exit code, or 128 + the
/// signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    pub code: i32,
    pub signal: Option<i32>,
}

/// What to run: the parts of `docker run` the sandbox passes on; everything else
/// is Docker's default (`moat_agent::spec::docker_default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub args: Vec<String>,
    /// `KEY=value`; Docker's `PATH` and `HOSTNAME` come first.
    pub env: Vec<String>,
    pub cwd: String,
    /// One terminal for stdin/stdout; there is then no separate stderr.
    pub tty: bool,
    pub hostname: Option<String>,
}

impl RunSpec {
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            tty: false,
            hostname: None,
        }
    }

    fn spec_options(&self) -> SpecOptions {
        let mut opts = SpecOptions::new(self.args.clone());
        opts.env = self.env.clone();
        opts.cwd = self.cwd.clone();
        opts.terminal = self.tty;
        if let Some(h) = &self.hostname {
            opts.hostname = h.clone();
        }
        opts
    }
}

/// Where a run's stdio goes. Output is written as it arrives. `stdin`, when
/// given, is copied to the container on a thread of its own and closed at its
/// end; a reader that blocks past the container's exit leaves that thread behind
/// until it returns.
pub struct RunIo<'a> {
    pub stdin: Option<Box<dyn Read + Send>>,
    pub stdout: &'a mut (dyn Write + Send),
    /// Unused in TTY mode.
    pub stderr: &'a mut (dyn Write + Send),
}

impl std::fmt::Debug for RunIo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunIo")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`Sandbox::stop`] found.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub vmm: VmmStatus,
    /// moat-vmm's own last word (`the guest rebooted`, `guest kernel panic: ...`),
    /// or why it was killed.
    pub reason: String,
    /// It did not exit within the stop bound and got `SIGKILL`.
    pub killed: bool,
    /// The agent acknowledged `shutdown`.
    pub shutdown_acknowledged: bool,
    /// The sandbox's timings, read before the state dir went.
    pub timings: Timings,
    /// The state dir, when kept.
    pub kept_state_dir: Option<PathBuf>,
}

/// Why a sandbox did not start. The VMM is killed and the state dir removed
/// (unless kept) before this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("start sandbox {id}: {reason}")]
    Config { id: String, reason: String },
    #[error("start sandbox {id}: layer {index} {}: {reason}", path.display())]
    Layer {
        id: String,
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("start sandbox {id}: vm config: {source}")]
    VmConfig {
        id: String,
        #[source]
        source: ConfigError,
    },
    #[error("start sandbox {id}: {op} {}: {source}", path.display())]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("start sandbox {id}: spawn {}: {source}", vmm.display())]
    Spawn {
        id: String,
        vmm: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("start sandbox {id}: moat-vmm exited with status {status} before {step}: {stderr}")]
    VmmExited {
        id: String,
        step: &'static str,
        status: VmmStatus,
        stderr: String,
    },
    #[error("start sandbox {id}: no vsock socket at {} within {after:?}; moat-vmm killed", path.display())]
    SocketTimeout {
        id: String,
        path: PathBuf,
        after: Duration,
    },
    #[error("start sandbox {id}: the agent did not answer within {after:?} (last error: {last}); moat-vmm killed")]
    AgentTimeout {
        id: String,
        after: Duration,
        last: String,
    },
    #[error("start sandbox {id}: agent refused the connection: {source}")]
    AgentRefused {
        id: String,
        #[source]
        source: ClientError,
    },
}

/// Why a run failed. The sandbox stays usable for [`Sandbox::stop`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run in sandbox {id}: build the OCI spec: {source}")]
    Spec {
        id: String,
        #[source]
        source: SpecError,
    },
    #[error("run in sandbox {id}: {step}: {source}")]
    Agent {
        id: String,
        step: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("run in sandbox {id}: {step}: connect to the agent: {source}")]
    Connect {
        id: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("run in sandbox {id}: {step}: the VM stopped: moat-vmm exited with status {status}: {stderr}")]
    VmGone {
        id: String,
        step: &'static str,
        status: VmmStatus,
        stderr: String,
    },
    #[error("run in sandbox {id}: {stream}: {source}")]
    Stream {
        id: String,
        stream: StreamKind,
        #[source]
        source: io::Error,
        /// How the container ended, when it did.
        exit: Option<ContainerExit>,
    },
}

/// Why stopping did not finish cleanly. The VMM has been reaped or killed
/// unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("stop sandbox {id}: wait for moat-vmm (pid {pid}): {source}")]
    Wait {
        id: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("stop sandbox {id}: kill moat-vmm (pid {pid}): {source}")]
    Kill {
        id: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("stop sandbox {id}: remove state dir {}: {source}", path.display())]
    Cleanup {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running sandbox. Dropping it without [`Sandbox::stop`] kills the VM.
#[derive(Debug)]
pub struct Sandbox {
    cfg: SandboxConfig,
    vmm: Option<Child>,
    /// How the VMM ended, once reaped.
    reaped: Option<VmmStatus>,
    client: Option<Client<UnixStream>>,
    /// The control connection's socket, for its timeouts.
    control: Option<UnixStream>,
    timings: Timings,
}

impl Sandbox {
    /// Creates the state dir, writes the VM config, spawns moat-vmm, waits for its
    /// vsock socket and for the agent to answer `ping`, within
    /// `cfg.start_timeout`.
    pub fn start(cfg: SandboxConfig) -> Result<Self, StartError> {
        let id = cfg.id.clone();
        let cfg = cfg.absolute().map_err(|e| StartError::Config {
            id: id.clone(),
            reason: format!("make paths absolute: {e}"),
        })?;
        cfg.check().map_err(|reason| StartError::Config {
            id: id.clone(),
            reason,
        })?;
        for (index, path) in cfg.layers.iter().enumerate() {
            let layer_err = |reason: String| StartError::Layer {
                id: id.clone(),
                index,
                path: path.clone(),
                reason,
            };
            match fs::metadata(path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(layer_err("not a directory".into())),
                Err(e) => return Err(layer_err(e.to_string())),
            }
        }
        let vm = cfg.vm_config();
        vm.validate().map_err(|source| StartError::VmConfig {
            id: id.clone(),
            source,
        })?;
        create_state_dir(&cfg)?;
        let mut sandbox = Sandbox {
            cfg,
            vmm: None,
            reaped: None,
            client: None,
            control: None,
            timings: Timings::default(),
        };
        match sandbox.boot(&vm) {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                // Drop kills the VMM and removes the state dir (unless kept).
                drop(sandbox);
                Err(e)
            }
        }
    }

    fn io_err(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StartError {
        let (id, path) = (self.cfg.id.clone(), path.to_path_buf());
        move |source| StartError::Io {
            id,
            op,
            path,
            source,
        }
    }

    fn boot(&mut self, vm: &VmConfig) -> Result<(), StartError> {
        let id = self.cfg.id.clone();
        let config_path = self.cfg.path("vm.json");
        let text = serde_json::to_vec_pretty(vm).map_err(|e| {
            self.io_err("encode", &config_path)(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        write_private(&config_path, &text).map_err(self.io_err("write", &config_path))?;

        let out_path = self.cfg.path("vmm.out");
        let err_path = self.cfg.path("vmm.err");
        let out = create_private(&out_path).map_err(self.io_err("create", &out_path))?;
        let err = create_private(&err_path).map_err(self.io_err("create", &err_path))?;
        let mut cmd = Command::new(&self.cfg.vmm);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--log")
            .arg(VMM_LOG_FILTER)
            .current_dir(&self.cfg.state_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the child between fork and exec and calls
        // only async-signal-safe system calls (setsid, sigprocmask, getrlimit,
        // setrlimit) on its own stack; it allocates nothing and touches no
        // shared state.
        unsafe {
            cmd.pre_exec(|| {
                // Its own session: no terminal signals from ours, and it survives
                // the daemon (moatd) exiting.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // No signal mask inherited from a caller that blocks signals for
                // a watcher thread: moat-vmm sets up its own.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // virtio-fs passthrough holds one descriptor per guest inode.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0
                    && lim.rlim_cur < lim.rlim_max
                {
                    lim.rlim_cur = lim.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| StartError::Spawn {
            id: id.clone(),
            vmm: self.cfg.vmm.clone(),
            source,
        })?;
        let spawned = Instant::now();
        self.timings.vmm_spawned = Some(spawned);
        tracing::debug!(container = %id, pid = child.id(), "moat-vmm spawned");
        self.vmm = Some(child);
        let deadline = spawned + self.cfg.start_timeout;

        // The socket: the VMM creates it with its devices, before it boots.
        let sock = self.cfg.path("vsock.sock");
        loop {
            if let Some(status) = self.try_reap() {
                return Err(StartError::VmmExited {
                    id,
                    step: "its vsock socket appeared",
                    status,
                    stderr: self.vmm_stderr_summary(),
                });
            }
            if fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StartError::SocketTimeout {
                    id,
                    path: sock,
                    after: self.cfg.start_timeout,
                });
            }
            std::thread::sleep(POLL);
        }
        self.timings.vsock_up = Some(Instant::now());

        // The agent: the guest boots, then listens on vsock port 1024.
        let mut last = String::from("none");
        loop {
            if let Some(status) = self.try_reap() {
                return Err(StartError::VmmExited {
                    id,
                    step: "the agent answered",
                    status,
                    stderr: self.vmm_stderr_summary(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StartError::AgentTimeout {
                    id,
                    after: self.cfg.start_timeout,
                    last,
                });
            }
            match ping_agent(&sock, deadline - now) {
                Ok((client, control)) => {
                    self.timings.agent_ready = Some(Instant::now());
                    tracing::debug!(container = %id, agent = client.agent_version(), "agent up");
                    self.client = Some(client);
                    self.control = Some(control);
                    return Ok(());
                }
                Err(AgentAttempt::Fatal(source)) => {
                    return Err(StartError::AgentRefused { id, source })
                }
                Err(AgentAttempt::Retry(e)) => last = e,
            }
            std::thread::sleep(AGENT_RETRY);
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    /// moat-vmm's pid, while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.vmm.as_ref().map(Child::id)
    }

    /// The timings so far, with what the VMM and the agent logged.
    pub fn timings(&self) -> Timings {
        let mut t = self.timings.clone();
        t.read_logs(
            &self.cfg.path("vmm.err"),
            &self.cfg.path("console.log"),
            &self.cfg.id,
        );
        t
    }

    /// Reaps the VMM if it has exited; its status once it has.
    fn try_reap(&mut self) -> Option<VmmStatus> {
        if self.reaped.is_none() {
            let status = self.vmm.as_mut()?.try_wait().ok()??;
            self.vmm = None;
            self.reaped = Some(status.into());
        }
        self.reaped
    }

    /// The lines moat-vmm printed as its own (`moat-vmm: ...`, not log lines or
    /// boot markers), else the tail of its stderr; bounded.
    fn vmm_stderr_summary(&self) -> String {
        let text = timings::read_capped(&self.cfg.path("vmm.err"), 1 << 20).unwrap_or_default();
        summarize_stderr(&text)
    }

    /// Creates the container, attaches its output (and stdin when given),
    /// starts it and waits for it. Output goes to `io` as it arrives; the agent
    /// answers `wait` only after every byte was delivered. The container is
    /// deleted in the guest afterwards, so the overlay is unmounted and its upper
    /// directory complete on the host; a second run reuses that upper directory
    /// (like `docker start` of an exited container).
    pub fn run(&mut self, spec: &RunSpec, io: RunIo<'_>) -> Result<ContainerExit, RunError> {
        let id = self.cfg.id.clone();
        let oci = docker_default(&spec.spec_options()).map_err(|source| RunError::Spec {
            id: id.clone(),
            source,
        })?;
        let stdio = StdioConfig {
            stdin: io.stdin.is_some(),
            stdout: true,
            stderr: !spec.tty,
        };
        let request = CreateRequest {
            container: id.clone(),
            spec: oci,
            rootfs: Some(self.cfg.guest_rootfs()),
            etc: None,
            stdio,
        };
        self.timings.create_sent = Some(Instant::now());
        self.timings.first_output = None;
        self.timings.exited = None;
        self.timings.agent_create_us = None;
        self.timings.agent_start_us = None;
        let (_pid, create_us) = self.call("create", |c| c.create(request))?;
        self.timings.agent_create_us = Some(create_us);
        let result = self.run_created(&id, stdio, io);
        if result.is_err() && self.reaped.is_none() {
            // Best effort, so a later run can create the container again.
            if let Some(client) = self.client.as_mut() {
                if let Err(e) = client.delete(&id, true) {
                    tracing::debug!(container = %id, error = %e, "delete after a failed run");
                }
            }
        }
        result
    }

    /// [`Sandbox::run`] once the container exists: attach, start, wait, delete.
    fn run_created(
        &mut self,
        id: &str,
        stdio: StdioConfig,
        io: RunIo<'_>,
    ) -> Result<ContainerExit, RunError> {
        let id = id.to_owned();
        let sock = self.cfg.path("vsock.sock");
        let first_output = OnceLock::new();
        let RunIo {
            stdin,
            stdout,
            stderr,
        } = io;
        let mut outputs = vec![(StreamKind::Stdout, stdout)];
        if stdio.stderr {
            outputs.push((StreamKind::Stderr, stderr));
        }
        let mut attached = Vec::new();
        // Second descriptors of the output sockets: shut down to end the pumps
        // when the run fails before the agent ended the streams.
        let mut stream_sockets = Vec::new();
        for (kind, writer) in outputs {
            let step = match kind {
                StreamKind::Stderr => "attach stderr",
                _ => "attach stdout",
            };
            let stream = self.connect_stream(step, &sock)?;
            stream_sockets.push(stream.try_clone().map_err(|source| RunError::Connect {
                id: id.clone(),
                step,
                source,
            })?);
            let out = attach_output(stream, &id, None, kind)
                .map_err(|source| self.agent_err(step, source))?;
            attached.push((kind, out, writer));
        }
        if let Some(mut reader) = stdin {
            let stream = self.connect_stream("attach stdin", &sock)?;
            let mut input = attach_input(stream, &id, None)
                .map_err(|source| self.agent_err("attach stdin", source))?;
            let container = id.clone();
            std::thread::Builder::new()
                .name(format!("stdin-{id}"))
                .spawn(move || {
                    if let Err(e) = io::copy(&mut reader, &mut input) {
                        tracing::debug!(%container, error = %e, "stdin copy ended early");
                    }
                    if let Err(e) = input.close() {
                        tracing::debug!(%container, error = %e, "close stdin");
                    }
                })
                .map_err(|source| RunError::Stream {
                    id: id.clone(),
                    stream: StreamKind::Stdin,
                    source,
                    exit: None,
                })?;
        }

        let result = std::thread::scope(|scope| {
            let pumps: Vec<_> = attached
                .into_iter()
                .map(|(kind, out, writer)| {
                    let first = &first_output;
                    (kind, scope.spawn(move || pump(out, writer, first)))
                })
                .collect();
            let waited = self.call("start", |c| c.start(&id)).and_then(|start_us| {
                self.timings.agent_start_us = Some(start_us);
                self.call("wait", |c| c.wait(&id, None))
            });
            let exited_at = Instant::now();
            // The agent delivered all output before answering `wait`; after a
            // failure nothing more is coming that the caller could use.
            if waited.is_err() {
                for s in &stream_sockets {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
            let mut stream_error = None;
            for (kind, handle) in pumps {
                let res = handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("output thread panicked")));
                if let (Err(e), None) = (res, &stream_error) {
                    stream_error = Some((kind, e));
                }
            }
            (waited, exited_at, stream_error)
        });
        let (waited, exited_at, stream_error) = result;
        self.timings.first_output = first_output.get().copied();
        let status = waited?;
        self.timings.exited = Some(exited_at);
        let exit = ContainerExit {
            code: status.code,
            signal: status.signal,
        };
        if let Some((stream, source)) = stream_error {
            return Err(RunError::Stream {
                id,
                stream,
                source,
                exit: Some(exit),
            });
        }
        self.call("delete", |c| c.delete(&id, false))?;
        Ok(exit)
    }

    /// One request on the control connection; a failure says whether the VM is
    /// gone.
    fn call<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&mut Client<UnixStream>) -> Result<T, ClientError>,
    ) -> Result<T, RunError> {
        let result = match self.client.as_mut() {
            Some(c) => f(c),
            None => Err(ClientError::Closed),
        };
        result.map_err(|source| self.agent_err(step, source))
    }

    fn agent_err(&mut self, step: &'static str, source: ClientError) -> RunError {
        // A connection that broke because the VMM died says less than its
        // status; give a dying VMM a moment to be reaped.
        if source.wire().is_none() {
            let deadline = Instant::now() + Duration::from_millis(500);
            loop {
                if let Some(status) = self.try_reap() {
                    return RunError::VmGone {
                        id: self.cfg.id.clone(),
                        step,
                        status,
                        stderr: self.vmm_stderr_summary(),
                    };
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        RunError::Agent {
            id: self.cfg.id.clone(),
            step,
            source,
        }
    }

    fn connect_stream(&mut self, step: &'static str, sock: &Path) -> Result<UnixStream, RunError> {
        vsock_connect(sock, AGENT_VSOCK_PORT).map_err(|source| {
            match self.agent_err(step, ClientError::Io(source)) {
                RunError::Agent {
                    id,
                    step,
                    source: ClientError::Io(source),
                } => RunError::Connect { id, step, source },
                other => other,
            }
        })
    }

    /// Asks the agent to power the guest off, waits up to `stop_timeout` for the
    /// VMM to exit, `SIGKILL`s it after that, and removes the state dir unless
    /// it is kept.
    pub fn stop(mut self) -> Result<Stopped, StopError> {
        let id = self.cfg.id.clone();
        let mut shutdown_acknowledged = false;
        if let Some(mut client) = self.client.take() {
            // Bound the answer too: a wedged agent must not hold up the stop.
            if let Some(control) = &self.control {
                let _ = control.set_read_timeout(Some(self.cfg.stop_timeout));
                let _ = control.set_write_timeout(Some(self.cfg.stop_timeout));
            }
            match client.shutdown() {
                Ok(()) => shutdown_acknowledged = true,
                Err(e) => tracing::debug!(container = %id, error = %e, "shutdown request"),
            }
        }
        let mut killed = false;
        self.control = None;
        let status = match self.vmm.take() {
            None => self.reaped,
            Some(mut child) => {
                let pid = child.id();
                let deadline = Instant::now() + self.cfg.stop_timeout;
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break s,
                        Ok(None) if Instant::now() >= deadline => {
                            killed = true;
                            if let Err(source) = child.kill() {
                                // It may have exited just now; wait tells.
                                if source.kind() != io::ErrorKind::InvalidInput {
                                    self.vmm = Some(child);
                                    return Err(StopError::Kill { id, pid, source });
                                }
                            }
                            match child.wait() {
                                Ok(s) => break s,
                                Err(source) => return Err(StopError::Wait { id, pid, source }),
                            }
                        }
                        Ok(None) => std::thread::sleep(POLL),
                        Err(source) => {
                            self.vmm = Some(child);
                            return Err(StopError::Wait { id, pid, source });
                        }
                    }
                };
                Some(VmmStatus::from(status))
            }
        };
        let timings = self.timings();
        let reason = if killed {
            format!(
                "killed with SIGKILL: it did not exit within {:?} of the shutdown request",
                self.cfg.stop_timeout
            )
        } else {
            vmm_exit_reason(
                &timings::read_capped(&self.cfg.path("vmm.err"), 1 << 20).unwrap_or_default(),
            )
            .unwrap_or_else(|| "moat-vmm gave no reason".into())
        };
        let vmm = status.unwrap_or(VmmStatus {
            code: None,
            signal: None,
        });
        let kept_state_dir = if self.cfg.keep_state {
            Some(self.cfg.state_dir.clone())
        } else {
            let path = self.cfg.state_dir.clone();
            fs::remove_dir_all(&path).map_err(|source| StopError::Cleanup {
                id: id.clone(),
                path: path.clone(),
                source,
            })?;
            None
        };
        // Nothing left for Drop to do.
        self.cfg.keep_state = true;
        Ok(Stopped {
            vmm,
            reason,
            killed,
            shutdown_acknowledged,
            timings,
            kept_state_dir,
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.client = None;
        if let Some(mut child) = self.vmm.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.cfg.keep_state {
            let _ = fs::remove_dir_all(&self.cfg.state_dir);
        }
    }
}

enum AgentAttempt {
    /// Not up yet (or not reachable yet): try again.
    Retry(String),
    /// The agent answered and refused us: trying again will not help.
    Fatal(ClientError),
}

/// One attempt to reach the agent: connect, handshake, ping, each bounded by
/// `within` (and the vsock client's own 10 s for the VMM's `OK`). Returns the
/// control client and a second descriptor of its socket (timeouts set through
/// one apply to both).
fn ping_agent(
    sock: &Path,
    within: Duration,
) -> Result<(Client<UnixStream>, UnixStream), AgentAttempt> {
    let retry = |e: &dyn std::fmt::Display| AgentAttempt::Retry(e.to_string());
    let stream = vsock_connect(sock, AGENT_VSOCK_PORT).map_err(|e| retry(&e))?;
    let control = stream.try_clone().map_err(|e| retry(&e))?;
    control
        .set_read_timeout(Some(within.max(Duration::from_millis(1))))
        .map_err(|e| retry(&e))?;
    let mut client = match Client::new(stream) {
        Ok(c) => c,
        Err(e @ ClientError::Refused(_)) => return Err(AgentAttempt::Fatal(e)),
        Err(e) => return Err(retry(&e)),
    };
    client.ping().map_err(|e| retry(&e))?;
    control.set_read_timeout(None).map_err(|e| retry(&e))?;
    Ok((client, control))
}

/// Copies one output stream to its writer, noting the first byte. A writer that
/// fails does not stop the copy: the rest is drained and dropped, so the
/// container never blocks on a reader that went away; the error is returned.
fn pump(
    mut from: impl Read,
    to: &mut (dyn Write + Send),
    first: &OnceLock<Instant>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut write_error = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(write_error.unwrap_or(e)),
        };
        let _ = first.set(Instant::now());
        if write_error.is_none() {
            let chunk = buf.get(..n).unwrap_or_default();
            if let Err(e) = to.write_all(chunk).and_then(|()| to.flush()) {
                write_error = Some(e);
            }
        }
    }
    write_error.map_or(Ok(()), Err)
}

/// Creates the state dir (0700; its parent with `create_dir_all`) and the
/// overlay's upper and work dirs. The upper dir is 0755: overlayfs gives the
/// container's `/` the upper dir's mode.
fn create_state_dir(cfg: &SandboxConfig) -> Result<(), StartError> {
    let err = |op: &'static str, path: &Path| {
        let (id, path) = (cfg.id.clone(), path.to_path_buf());
        move |source| StartError::Io {
            id,
            op,
            path,
            source,
        }
    };
    if let Some(parent) = cfg.state_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(err("create", parent))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&cfg.state_dir)
        .map_err(err("create state dir", &cfg.state_dir))?;
    for (dir, mode) in [
        ("upper", 0o755),
        ("upper/diff", 0o755),
        ("upper/work", 0o700),
    ] {
        let path = cfg.path(dir);
        if let Err(e) = DirBuilder::new().mode(mode).create(&path) {
            // Ours, just created: nothing else is in it.
            let _ = fs::remove_dir_all(&cfg.state_dir);
            return Err(err("create", &path)(e));
        }
    }
    Ok(())
}

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes `data` to a new file next to `path` and renames it into place.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = create_private(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The VMM's own lines (`moat-vmm: ...` other than boot markers) or, without
/// any, the last lines; at most [`MAX_STDERR_QUOTE`] bytes, on one line.
fn summarize_stderr(text: &str) -> String {
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("moat-vmm: ") && !l.starts_with("moat-vmm: boot-marker "))
        .collect();
    let lines: Vec<&str> = if own.is_empty() {
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(5)..].to_vec()
    } else {
        own
    };
    let mut s = lines.join("; ");
    if s.is_empty() {
        s = "(no output on stderr)".into();
    }
    if s.len() > MAX_STDERR_QUOTE {
        let mut cut = s.len() - MAX_STDERR_QUOTE;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("...{}", &s[cut..]);
    }
    s
}

/// The VMM's last line `moat-vmm: <reason> (exit status N)`, as `<reason>`.
fn vmm_exit_reason(text: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("moat-vmm: ")?;
        let (reason, _) = rest.rsplit_once(" (exit status ")?;
        Some(reason.to_owned())
    })
}

#[cfg(test)]
mod tests;
