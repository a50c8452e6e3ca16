//! Containers as the agent keeps them: create (rootfs, etc files, bundle, helper), start,
//! exec, signal, wait, TTY resize, stdin close, stats and delete, and the bookkeeping
//! that tells when a one-shot VM may power off. It owns the agent's container table and
//! the per-process stdio; it must not speak the wire protocol (the server does) or wait
//! for processes itself (the reaper does).
//!
//! Layout under the run directory (`/run/moat` in the guest):
//! - `state/<id>/`: libcontainer's state;
//! - `containers/<id>/bundle/config.json`, `rootfs/` (the overlay), `etc/` (hosts,
//!   hostname, resolv.conf), `exec-<exec>.json` (OCI process of an exec);
//! - `cs/<n>.sock`: console sockets, short names because of the 108-byte socket path
//!   limit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use crate::helper::{HelperReply, HelperRequest, HELPER_ARG, STDIO_FDS};
use crate::protocol::{
    validate_id, ContainerStats, CreateRequest, ErrorCode, ExecRequest, ExitStatus, ProcessRef,
    ResizeTty, Response, SignalRequest, StdioConfig, StreamKind, WireError,
};
use crate::reaper::{ExitCell, Reaper};
use crate::rootfs;
use crate::stdio::{self, AttachError, OutputSlot, StdinSlot};
use crate::sys::Sys;
use crate::util::{is_clean_absolute, lock, micros};

/// How long the helper may take to create a container or start an exec.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `delete`/`shutdown` wait for a killed init process.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A one-shot VM powers off this long after the last exit even if no host asked for
/// the exit status (it is also printed on the console).
pub const ONESHOT_UNCLAIMED_GRACE: Duration = Duration::from_secs(30);

/// Where the agent runs: PID 1 of a guest, or a test aid on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Guest,
    /// `--host-mode`: private mount namespace on the build host, no virtio-fs, no
    /// cgroup controllers.
    Host,
}

/// A failed request: an error class and a message naming the object and operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    fn state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }
}

impl From<AgentError> for WireError {
    fn from(e: AgentError) -> Self {
        WireError::new(e.code, e.message)
    }
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        AgentError::new(e.code, e.message)
    }
}

/// One process of a container (its init process or an exec) and its stdio.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    pub tty: bool,
    exit: Arc<ExitCell>,
    stdin: StdinSlot,
    stdout: OutputSlot,
    stderr: OutputSlot,
    /// The pty master, for window size changes.
    pty: Option<File>,
    /// A `wait` has reported the exit status.
    reported: AtomicBool,
}

impl Process {
    /// Blocks until the process has exited and its requested output streams have been
    /// delivered to their end.
    pub fn wait(&self) -> ExitStatus {
        let status = self.exit.wait();
        self.stdout.wait_drained();
        self.stderr.wait_drained();
        status
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.get()
    }

    fn finished(&self) -> bool {
        self.exit.get().is_some() && self.stdout.is_drained() && self.stderr.is_drained()
    }

    fn output(&self, kind: StreamKind) -> Option<&OutputSlot> {
        match kind {
            StreamKind::Stdout => Some(&self.stdout),
            StreamKind::Stderr => Some(&self.stderr),
            StreamKind::Stdin => None,
        }
    }

    fn discard_stdio(&self) {
        self.stdin.discard();
        self.stdout.discard();
        self.stderr.discard();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
}

/// One container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    dir: PathBuf,
    /// The overlay the agent mounted, if any.
    rootfs_mount: Option<PathBuf>,
    cgroup: PathBuf,
    state: Mutex<State>,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

/// The agent's containers.
#[derive(Debug)]
pub struct Manager {
    mode: Mode,
    run_dir: PathBuf,
    sys: Arc<dyn Sys>,
    reaper: Arc<Reaper>,
    helper_exe: PathBuf,
    helper_log: Option<String>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or exec ids being started, reserved against duplicates.
    reserved: Mutex<HashSet<String>>,
    oneshot: AtomicBool,
    ever_created: AtomicBool,
    next_socket: AtomicU64,
}

impl Manager {
    /// Sets up the run directory. `helper_exe` is this agent's binary.
    pub fn new(
        mode: Mode,
        run_dir: PathBuf,
        sys: Arc<dyn Sys>,
        reaper: Arc<Reaper>,
        helper_exe: PathBuf,
        helper_log: Option<String>,
    ) -> Result<Self, AgentError> {
        for sub in ["state", "containers", "cs"] {
            let p = run_dir.join(sub);
            sys.mkdir_all(&p, 0o700)
                .map_err(|e| AgentError::internal(format!("set up run directory: {e}")))?;
        }
        Ok(Self {
            mode,
            run_dir,
            sys,
            reaper,
            helper_exe,
            helper_log,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            oneshot: AtomicBool::new(false),
            ever_created: AtomicBool::new(false),
            next_socket: AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn sys(&self) -> &dyn Sys {
        &*self.sys
    }

    pub fn set_oneshot(&self, on: bool) {
        self.oneshot.store(on, Ordering::SeqCst);
    }

    fn state_root(&self) -> PathBuf {
        self.run_dir.join("state")
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        validate_id("container", id)?;
        lock(&self.containers).get(id).cloned().ok_or_else(|| {
            AgentError::new(ErrorCode::NotFound, format!("container {id}: not found"))
        })
    }

    /// The process `r` names.
    pub fn process(&self, container: &str, exec: Option<&str>) -> Result<Arc<Process>, AgentError> {
        let c = self.get(container)?;
        match exec {
            None => Ok(c.init.clone()),
            Some(e) => {
                validate_id("exec", e)?;
                lock(&c.execs).get(e).cloned().ok_or_else(|| {
                    AgentError::new(
                        ErrorCode::NotFound,
                        format!("exec {e} of container {container}: not found"),
                    )
                })
            }
        }
    }

    fn reserve(&self, key: String) -> Result<Reservation<'_>, AgentError> {
        if !lock(&self.reserved).insert(key.clone()) {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("{key}: already being created"),
            ));
        }
        Ok(Reservation { manager: self, key })
    }

    // ---------------------------------------------------------------------------
    // create
    // ---------------------------------------------------------------------------

    pub fn create(&self, req: CreateRequest) -> Result<Response, AgentError> {
        let t0 = Instant::now();
        let id = req.container.clone();
        validate_id("container", &id)?;
        if lock(&self.containers).contains_key(&id) {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("create container {id}: already exists"),
            ));
        }
        let _reservation = self.reserve(format!("container {id}"))?;
        let mut cleanup = CreateCleanup::new(self, &id);
        let container = self.create_inner(req, &mut cleanup).map_err(|e| {
            AgentError::new(e.code, format!("create container {id}: {}", e.message))
        })?;
        cleanup.disarm();
        let pid = container.init.pid;
        lock(&self.containers).insert(id.clone(), Arc::new(container));
        self.ever_created.store(true, Ordering::SeqCst);
        tracing::info!(container = %id, pid, "created");
        Ok(Response::Created {
            pid,
            agent_us: micros(t0.elapsed()),
        })
    }

    fn create_inner(
        &self,
        req: CreateRequest,
        cleanup: &mut CreateCleanup<'_>,
    ) -> Result<Container, AgentError> {
        let id = req.container;
        let mut spec = req.spec;
        let tty = check_process(spec.process().as_ref(), &req.stdio)?;
        if spec.hooks().is_some() {
            return Err(AgentError::new(
                ErrorCode::NotSupported,
                "OCI hooks are not supported yet (they would run inside the guest)",
            ));
        }
        if spec.linux().is_none() {
            return Err(AgentError::bad("the spec has no linux section"));
        }
        self.check_controllers(spec.linux().as_ref().and_then(|l| l.resources().as_ref()))?;
        check_rlimits(spec.process().as_ref())?;

        let t_rootfs = Instant::now();
        let dir = self.run_dir.join("containers").join(&id);
        let sys = &*self.sys;
        sys.mkdir_all(&dir, 0o700)
            .map_err(|e| AgentError::internal(e.to_string()))?;
        cleanup.dir = Some(dir.clone());

        // Rootfs.
        let rootfs_mount = match &req.rootfs {
            Some(layers) => {
                let target = dir.join("rootfs");
                rootfs::mount_overlay(sys, layers, &target).map_err(|e| match e {
                    rootfs::RootfsError::Sys(_) => AgentError::internal(e.to_string()),
                    _ => AgentError::bad(e.to_string()),
                })?;
                cleanup.rootfs = Some(target.clone());
                let root = oci_spec::runtime::RootBuilder::default()
                    .path(target.clone())
                    .readonly(
                        spec.root()
                            .as_ref()
                            .and_then(|r| r.readonly())
                            .unwrap_or(false),
                    )
                    .build()
                    .map_err(|e| AgentError::bad(format!("root: {e}")))?;
                spec.set_root(Some(root));
                Some(target)
            }
            None => {
                let path = spec
                    .root()
                    .as_ref()
                    .map(|r| r.path().clone())
                    .unwrap_or_default();
                if !is_clean_absolute(&path) {
                    return Err(AgentError::bad(format!(
                        "root.path {} must be absolute when no rootfs layers are given",
                        path.display()
                    )));
                }
                None
            }
        };

        let rootfs_us = micros(t_rootfs.elapsed());
        let t_bundle = Instant::now();
        // /etc/hosts, /etc/hostname, /etc/resolv.conf.
        if let Some(etc) = &req.etc {
            let existing = spec.mounts().clone().unwrap_or_default();
            let extra = rootfs::write_etc_files(sys, &dir.join("etc"), etc, &existing)
                .map_err(|e| AgentError::bad(e.to_string()))?;
            let mut mounts = existing;
            mounts.extend(extra);
            spec.set_mounts(Some(mounts));
        }

        // cgroup.
        let cgroup = {
            let linux = spec
                .linux_mut()
                .as_mut()
                .ok_or_else(|| AgentError::bad("the spec has no linux section"))?;
            if linux.cgroups_path().is_none() {
                linux.set_cgroups_path(Some(PathBuf::from(format!("/moat/{id}"))));
            }
            let p = linux.cgroups_path().clone().unwrap_or_default();
            if !is_clean_absolute(&p) {
                return Err(AgentError::bad(format!(
                    "linux.cgroupsPath {} must be a clean absolute path",
                    p.display()
                )));
            }
            p
        };
        adapt_for_libcontainer(&mut spec);

        // Bundle.
        let bundle = dir.join("bundle");
        let config = serde_json::to_vec_pretty(&spec)
            .map_err(|e| AgentError::internal(format!("encode config.json: {e}")))?;
        sys.mkdir_all(&bundle, 0o700)
            .and_then(|()| sys.write_file(&bundle.join("config.json"), &config, 0o600))
            .map_err(|e| AgentError::internal(e.to_string()))?;

        // Stdio and the helper.
        let console_size = spec
            .process()
            .as_ref()
            .and_then(|p| p.console_size())
            .map(window_size);
        let bundle_us = micros(t_bundle.elapsed());
        let t_helper = Instant::now();
        let mut io = PendingStdio::new(self, tty, &req.stdio)?;
        cleanup.state = true;
        let helper_req = HelperRequest::Create {
            container: id.clone(),
            bundle,
            state_root: self.state_root(),
            console_socket: io.console_path(),
            stdio_fds: !tty,
        };
        let (pid, exit) = self.run_helper(&helper_req, io.child_fds.take())?;
        cleanup.init = Some((pid, exit.clone()));
        let helper_us = micros(t_helper.elapsed());
        let t_devices = Instant::now();
        // Before `start`: the init process waits for it, so the workload never runs
        // without the filter.
        let device_rules = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        if !device_rules.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(cgroup.strip_prefix("/").unwrap_or(&cgroup));
            crate::devices::apply(&dir, &device_rules).map_err(|e| match e {
                crate::devices::DeviceRuleError::Bpf { .. } => AgentError::internal(e.to_string()),
                _ => AgentError::bad(e.to_string()),
            })?;
        }
        let process = io.finish(pid, exit, req.stdio, console_size)?;
        tracing::info!(
            container = %id,
            rootfs_us,
            bundle_us,
            helper_us,
            devices_stdio_us = micros(t_devices.elapsed()),
            "create stages"
        );

        Ok(Container {
            id,
            dir,
            rootfs_mount,
            cgroup,
            state: Mutex::new(State::Created),
            init: Arc::new(process),
            execs: Mutex::new(HashMap::new()),
        })
    }

    /// Refuses limits the cgroup hierarchy cannot enforce, instead of failing later in
    /// libcontainer with a less clear error.
    fn check_controllers(&self, resources: Option<&LinuxResources>) -> Result<(), AgentError> {
        let Some(r) = resources else { return Ok(()) };
        let mut needed = Vec::new();
        if r.memory()
            .is_some_and(|m| m.limit().is_some() || m.reservation().is_some() || m.swap().is_some())
        {
            needed.push("memory");
        }
        if let Some(cpu) = r.cpu() {
            if cpu.shares().is_some() || cpu.quota().is_some() || cpu.period().is_some() {
                needed.push("cpu");
            }
            if cpu.cpus().is_some() || cpu.mems().is_some() {
                needed.push("cpuset");
            }
        }
        if r.pids().is_some() {
            needed.push("pids");
        }
        if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
            needed.push("hugetlb");
        }
        if r.block_io().is_some() {
            needed.push("io");
        }
        if needed.is_empty() {
            return Ok(());
        }
        let available = self
            .sys
            .read_file(Path::new("/sys/fs/cgroup/cgroup.controllers"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let have: Vec<&str> = available.split_ascii_whitespace().collect();
        let missing: Vec<&str> = needed.into_iter().filter(|n| !have.contains(n)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let why = match self.mode {
            Mode::Host => {
                "host mode runs on this host's cgroup v2 hierarchy, which has no controllers \
                 (cgroup limits work in the guest)"
            }
            Mode::Guest => "the guest kernel does not offer it",
        };
        Err(AgentError::new(
            ErrorCode::NotSupported,
            format!(
                "the spec sets cgroup limits needing the {} controller(s), not available: {why}",
                missing.join(", ")
            ),
        ))
    }

    /// Runs the helper, waits for its answer, and watches the new process's pid before
    /// letting the helper exit (see the reaper module).
    fn run_helper(
        &self,
        req: &HelperRequest,
        child_fds: Option<[OwnedFd; 3]>,
    ) -> Result<(i32, Arc<ExitCell>), AgentError> {
        let mut cmd = Command::new(&self.helper_exe);
        cmd.arg(HELPER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(filter) = &self.helper_log {
            cmd.env(crate::LOG_ENV, filter);
        }
        if let Some(fds) = &child_fds {
            let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
            // SAFETY: the closure runs in the forked child before exec and only calls
            // fcntl and dup2, which are async-signal-safe, on descriptors open in it.
            unsafe {
                cmd.pre_exec(move || place_fds(raw));
            }
        }
        let (mut child, helper_exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| AgentError::internal(format!("start container helper: {e}")))?;
        // The child has its copies now.
        drop(child_fds);
        let helper_pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let finish_helper = |exit: &ExitCell| {
            // Do not leave a stuck helper behind; its status is only logged.
            if exit.wait_timeout(Duration::from_secs(5)).is_none() {
                let _ = self.reaper.signal(helper_pid, Some(Signal::SIGKILL));
            }
            self.reaper.forget(helper_pid);
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = self.reaper.signal(helper_pid, Some(Signal::SIGKILL));
            return Err(AgentError::internal("container helper: no stdio pipes"));
        };
        let request = serde_json::to_string(req)
            .map_err(|e| AgentError::internal(format!("encode helper request: {e}")))?;
        if let Err(e) = writeln!(stdin, "{request}") {
            let _ = self.reaper.signal(helper_pid, Some(Signal::SIGKILL));
            return Err(AgentError::internal(format!(
                "send request to container helper: {e}"
            )));
        }
        let line = match read_line_timeout(File::from(OwnedFd::from(stdout)), HELPER_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.reaper.signal(helper_pid, Some(Signal::SIGKILL));
                drop(stdin);
                finish_helper(&helper_exit);
                return Err(AgentError::internal(format!("container helper: {e}")));
            }
        };
        let reply: HelperReply = serde_json::from_str(&line).map_err(|e| {
            AgentError::internal(format!("container helper: decode reply {line:?}: {e}"))
        })?;
        let result = match reply {
            HelperReply::Ok { pid } => Ok((pid, self.reaper.watch(pid))),
            HelperReply::Err { code, message } => Err(AgentError::new(code, message)),
        };
        // Acknowledge: the helper exits, and the new process re-parents to the agent,
        // already watched.
        drop(stdin);
        finish_helper(&helper_exit);
        result
    }

    // ---------------------------------------------------------------------------
    // start, exec
    // ---------------------------------------------------------------------------

    pub fn start(&self, id: &str) -> Result<Response, AgentError> {
        let t0 = Instant::now();
        let c = self.get(id)?;
        let mut state = lock(&c.state);
        if *state != State::Created {
            return Err(AgentError::state(format!(
                "start container {id}: already started"
            )));
        }
        if let Some(status) = c.init.exit_status() {
            return Err(AgentError::state(format!(
                "start container {id}: its init process already exited with code {}",
                status.code
            )));
        }
        let mut lc = libcontainer::container::Container::load(self.state_root().join(id))
            .map_err(|e| AgentError::internal(format!("start container {id}: load state: {e}")))?;
        lc.start()
            .map_err(|e| AgentError::internal(format!("start container {id}: {e}")))?;
        *state = State::Running;
        tracing::info!(container = %id, "started");
        Ok(Response::Started {
            agent_us: micros(t0.elapsed()),
        })
    }

    pub fn exec(&self, req: ExecRequest) -> Result<Response, AgentError> {
        let t0 = Instant::now();
        let (id, exec) = (req.container.clone(), req.exec.clone());
        let c = self.get(&id)?;
        validate_id("exec", &exec)?;
        let what = format!("exec {exec} in container {id}");
        if *lock(&c.state) != State::Running || c.init.exit_status().is_some() {
            return Err(AgentError::state(format!(
                "{what}: the container is not running"
            )));
        }
        if lock(&c.execs).contains_key(&exec) {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("{what}: exec id already used"),
            ));
        }
        let _reservation = self.reserve(format!("exec {id}/{exec}"))?;
        let tty = check_process(Some(&req.process), &req.stdio)
            .and_then(|tty| check_rlimits(Some(&req.process)).map(|()| tty))
            .map_err(|e| AgentError::new(e.code, format!("{what}: {}", e.message)))?;
        let console_size = req.process.console_size().map(window_size);
        let process_file = c.dir.join(format!("exec-{exec}.json"));
        let mut process = req.process.clone();
        adapt_process_for_libcontainer(&mut process);
        let json = serde_json::to_vec(&process)
            .map_err(|e| AgentError::internal(format!("{what}: encode process: {e}")))?;
        self.sys
            .write_file(&process_file, &json, 0o600)
            .map_err(|e| AgentError::internal(format!("{what}: {e}")))?;
        let mut io = PendingStdio::new(self, tty, &req.stdio)
            .map_err(|e| AgentError::new(e.code, format!("{what}: {}", e.message)))?;
        let helper_req = HelperRequest::Exec {
            container: id.clone(),
            state_root: self.state_root(),
            process_file: process_file.clone(),
            console_socket: io.console_path(),
            stdio_fds: !tty,
        };
        let result = self
            .run_helper(&helper_req, io.child_fds.take())
            .and_then(|(pid, exit)| io.finish(pid, exit, req.stdio, console_size));
        let _ = std::fs::remove_file(&process_file);
        let process =
            result.map_err(|e| AgentError::new(e.code, format!("{what}: {}", e.message)))?;
        let pid = process.pid;
        lock(&c.execs).insert(exec.clone(), Arc::new(process));
        tracing::info!(container = %id, exec = %exec, pid, "exec started");
        Ok(Response::ExecStarted {
            pid,
            agent_us: micros(t0.elapsed()),
        })
    }

    // ---------------------------------------------------------------------------
    // signal, wait, resize, stdin, streams
    // ---------------------------------------------------------------------------

    pub fn signal(&self, req: &SignalRequest) -> Result<Response, AgentError> {
        let p = self.process(&req.container, req.exec.as_deref())?;
        let sig = Signal::try_from(req.signal)
            .map_err(|_| AgentError::bad(format!("signal {}: not a signal number", req.signal)))?;
        match self.reaper.signal(p.pid, Some(sig)) {
            Ok(()) => Ok(Response::Signaled),
            Err(nix::Error::ESRCH) => Err(AgentError::state(format!(
                "signal {sig} to {}: the process is not running",
                describe(&req.container, req.exec.as_deref())
            ))),
            Err(e) => Err(AgentError::internal(format!("signal {sig}: {e}"))),
        }
    }

    pub fn wait(&self, r: &ProcessRef) -> Result<Response, AgentError> {
        let p = self.process(&r.container, r.exec.as_deref())?;
        let status = p.wait();
        p.reported.store(true, Ordering::SeqCst);
        if r.exec.is_none() {
            // Also on the console, for a host that lost the vsock connection.
            eprintln!(
                "moat-agent: container {} exited with code {}",
                r.container, status.code
            );
        }
        Ok(Response::Exited(status))
    }

    pub fn resize(&self, r: &ResizeTty) -> Result<Response, AgentError> {
        let p = self.process(&r.container, r.exec.as_deref())?;
        let what = describe(&r.container, r.exec.as_deref());
        let pty = p.pty.as_ref().ok_or_else(|| {
            AgentError::state(format!("resize tty of {what}: it has no terminal"))
        })?;
        stdio::set_window_size(pty, r.rows, r.cols)
            .map_err(|e| AgentError::internal(format!("resize tty of {what}: {e}")))?;
        Ok(Response::Resized)
    }

    pub fn close_stdin(&self, r: &ProcessRef) -> Result<Response, AgentError> {
        let p = self.process(&r.container, r.exec.as_deref())?;
        p.stdin.close().map_err(|e| {
            attach_error(
                e,
                &format!(
                    "close stdin of {}",
                    describe(&r.container, r.exec.as_deref())
                ),
            )
        })?;
        Ok(Response::StdinClosed)
    }

    /// Checks that a stream can be attached (before the handshake is accepted).
    pub fn check_stream(
        &self,
        container: &str,
        exec: Option<&str>,
        kind: StreamKind,
    ) -> Result<Arc<Process>, AgentError> {
        let p = self.process(container, exec)?;
        let what = format!("attach {kind} of {}", describe(container, exec));
        let check = match p.output(kind) {
            Some(slot) => slot.check_attachable(),
            None => p.stdin.check_attachable(),
        };
        check.map_err(|e| attach_error(e, &what))?;
        Ok(p)
    }

    /// Serves one attached stream on `conn` until it ends.
    pub fn pump_stream(&self, p: &Process, kind: StreamKind, conn: &mut crate::conn::Conn) {
        let result = match p.output(kind) {
            Some(slot) => slot.pump(conn).map(|_| ()),
            None => p.stdin.pump(conn),
        };
        if let Err(e) = result {
            tracing::debug!("stream {kind}: {e}");
        }
    }

    // ---------------------------------------------------------------------------
    // stats, delete, shutdown
    // ---------------------------------------------------------------------------

    pub fn stats(&self, id: &str) -> Result<Response, AgentError> {
        let c = self.get(id)?;
        let rel = c.cgroup.strip_prefix("/").unwrap_or(&c.cgroup);
        let dir = Path::new("/sys/fs/cgroup").join(rel);
        if self.sys.device_of(&dir).is_err() {
            return Err(AgentError::state(format!(
                "stats of container {id}: its cgroup {} does not exist",
                dir.display()
            )));
        }
        let read = |name: &str| -> Option<String> {
            self.sys
                .read_file(&dir.join(name))
                .ok()
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        };
        // `max` (no limit) does not parse and reads as absent.
        let num = |name: &str| read(name).and_then(|s| s.parse::<u64>().ok());
        let cpu = read("cpu.stat").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
        Ok(Response::Stats(ContainerStats {
            memory_usage_bytes: num("memory.current"),
            memory_limit_bytes: num("memory.max"),
            cpu_usage_usec: cpu,
            pids_current: num("pids.current"),
            pids_limit: num("pids.max"),
        }))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<Response, AgentError> {
        let c = self.get(id)?;
        let what = format!("delete container {id}");
        let started = *lock(&c.state) == State::Running;
        if c.init.exit_status().is_none() {
            if started && !force {
                return Err(AgentError::state(format!(
                    "{what}: it is running; stop it first or force"
                )));
            }
            let _ = self.reaper.signal(c.init.pid, Some(Signal::SIGKILL));
            if c.init.exit.wait_timeout(KILL_TIMEOUT).is_none() {
                return Err(AgentError::internal(format!(
                    "{what}: init process {} did not die after SIGKILL",
                    c.init.pid
                )));
            }
        }
        for p in lock(&c.execs).values() {
            let _ = self.reaper.signal(p.pid, Some(Signal::SIGKILL));
        }
        let mut errors = Vec::new();
        match libcontainer::container::Container::load(self.state_root().join(id)) {
            Ok(mut lc) => {
                if let Err(e) = lc.delete(true) {
                    errors.push(format!("libcontainer state and cgroup: {e}"));
                }
            }
            Err(e) => errors.push(format!("load libcontainer state: {e}")),
        }
        c.init.discard_stdio();
        for p in lock(&c.execs).values() {
            p.discard_stdio();
            self.reaper.forget(p.pid);
        }
        self.reaper.forget(c.init.pid);
        if let Err(e) = remove_container_dir(&*self.sys, &c.dir, c.rootfs_mount.as_deref()) {
            errors.push(e);
        }
        lock(&self.containers).remove(id);
        tracing::info!(container = %id, "deleted");
        if errors.is_empty() {
            Ok(Response::Deleted)
        } else {
            Err(AgentError::internal(format!(
                "{what}: {}",
                errors.join("; ")
            )))
        }
    }

    /// Kills and deletes every container.
    pub fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.delete(&id, true) {
                tracing::warn!("shutdown: {e}");
            }
        }
    }

    /// True when a one-shot VM should power off: it has run containers, and every one
    /// has exited, its output was delivered, and its exit status was reported (or has
    /// waited for a host longer than [`ONESHOT_UNCLAIMED_GRACE`]).
    pub fn oneshot_done(&self) -> bool {
        if !self.oneshot.load(Ordering::SeqCst) || !self.ever_created.load(Ordering::SeqCst) {
            return false;
        }
        lock(&self.containers).values().all(|c| {
            c.init.finished()
                && (c.init.reported.load(Ordering::SeqCst)
                    || c.init.exit.exited_for() >= Some(ONESHOT_UNCLAIMED_GRACE))
        })
    }
}

/// An OCI console size as `(rows, cols)`, clamped to what a terminal can hold.
fn window_size(b: oci_spec::runtime::Box) -> (u16, u16) {
    let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
    (clamp(b.height()), clamp(b.width()))
}

fn describe(container: &str, exec: Option<&str>) -> String {
    match exec {
        None => format!("container {container}"),
        Some(e) => format!("exec {e} of container {container}"),
    }
}

fn attach_error(e: AttachError, what: &str) -> AgentError {
    let code = match e {
        AttachError::NotRequested => ErrorCode::BadRequest,
        AttachError::Busy | AttachError::Finished | AttachError::Closed => ErrorCode::InvalidState,
    };
    AgentError::new(code, format!("{what}: the stream {e}"))
}

/// Capability number of `CAP_SYS_RESOURCE` (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// `CAP_SYS_RESOURCE` is in the agent's effective set (always so in the guest).
fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Refuses rlimits above the agent's own hard limits when the agent may not raise them
/// (a host without `CAP_SYS_RESOURCE`), instead of libcontainer's bare EPERM.
fn check_rlimits(p: Option<&OciProcess>) -> Result<(), AgentError> {
    let Some(rlimits) = p.and_then(|p| p.rlimits().as_ref()) else {
        return Ok(());
    };
    if rlimits.is_empty() || has_sys_resource() {
        return Ok(());
    }
    for r in rlimits {
        let Ok(resource) = rlimit_resource(r.typ()) else {
            continue;
        };
        let Ok((_, hard)) = nix::sys::resource::getrlimit(resource) else {
            continue;
        };
        if r.hard() > hard {
            return Err(AgentError::new(
                ErrorCode::NotSupported,
                format!(
                    "{:?} hard limit {} exceeds the agent's {hard}, and the agent lacks \
                     CAP_SYS_RESOURCE to raise it",
                    r.typ(),
                    r.hard()
                ),
            ));
        }
    }
    Ok(())
}

fn rlimit_resource(
    t: oci_spec::runtime::PosixRlimitType,
) -> Result<nix::sys::resource::Resource, ()> {
    use nix::sys::resource::Resource as R;
    use oci_spec::runtime::PosixRlimitType as T;
    Ok(match t {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return Err(()),
    })
}

/// Checks the process part of a spec; returns whether it runs on a terminal.
fn check_process(p: Option<&OciProcess>, stdio: &StdioConfig) -> Result<bool, AgentError> {
    let p = p.ok_or_else(|| AgentError::bad("the spec has no process"))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::bad("process.args is empty"));
    }
    let tty = p.terminal().unwrap_or(false);
    if tty && stdio.stderr {
        return Err(AgentError::bad(
            "a terminal has no separate stderr: set stdio.stderr to false",
        ));
    }
    if !is_clean_absolute(p.cwd()) {
        return Err(AgentError::bad(format!(
            "process.cwd {} must be a clean absolute path",
            p.cwd().display()
        )));
    }
    Ok(tty)
}

/// Works around two libcontainer 0.7 quirks so that the spec means what it says:
///
/// 1. It hands OCI's `SCMP_CMP_MASKED_EQ` operands to libseccomp the wrong way round
///    (`value` as the datum, `valueTwo` as the mask; OCI, runc and Docker mean `value`
///    as the mask). Without swapping them, Docker's clone rule does not filter the
///    namespace flags: a container could `clone(CLONE_NEWUSER)` (test
///    `docker_seccomp_profile_is_enforced` fails without the swap).
/// 2. It treats `noNewPrivileges: false` like `true` when ordering seccomp: it loads
///    the filter after dropping capabilities, without no_new_privs, which the kernel
///    refuses (EACCES, reported as "failed to load seccomp context"). `false` is the
///    default, so it is removed.
pub fn adapt_for_libcontainer(spec: &mut Spec) {
    if let Some(p) = spec.process_mut().as_mut() {
        adapt_process_for_libcontainer(p);
    }
    seccomp_for_libcontainer(spec);
}

/// Quirk 2 of [`adapt_for_libcontainer`], for an exec's process.
pub fn adapt_process_for_libcontainer(p: &mut OciProcess) {
    if p.no_new_privileges() == Some(false) {
        p.set_no_new_privileges(None);
    }
}

/// Quirk 1 of [`adapt_for_libcontainer`].
pub fn seccomp_for_libcontainer(spec: &mut Spec) {
    let Some(seccomp) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.seccomp_mut().as_mut())
    else {
        return;
    };
    let Some(mut syscalls) = seccomp.syscalls().clone() else {
        return;
    };
    for sc in syscalls.iter_mut() {
        let Some(mut args) = sc.args().clone() else {
            continue;
        };
        for a in args.iter_mut() {
            if a.op() != oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq {
                continue;
            }
            let (mask, datum) = (a.value(), a.value_two().unwrap_or(0));
            if let Ok(swapped) = oci_spec::runtime::LinuxSeccompArgBuilder::default()
                .index(a.index())
                .op(a.op())
                .value(datum)
                .value_two(mask)
                .build()
            {
                *a = swapped;
            }
        }
        sc.set_args(Some(args));
    }
    seccomp.set_syscalls(Some(syscalls));
}

/// In the forked helper child: puts the container's stdio on descriptors 3, 4, 5.
/// First duplicates every source above 9 so that no `dup2` overwrites a source still
/// needed; the duplicates are close-on-exec, the targets are not.
fn place_fds(raw: [RawFd; 3]) -> std::io::Result<()> {
    let mut high = [0; 3];
    for (h, fd) in high.iter_mut().zip(raw) {
        // SAFETY: fcntl on a descriptor the child inherited; async-signal-safe.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *h = r;
    }
    for (h, target) in high.iter().zip(STDIO_FDS) {
        // SAFETY: dup2 between descriptors open in the child; async-signal-safe.
        if unsafe { libc::dup2(*h, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads one line (the helper's reply) within `timeout`.
fn read_line_timeout(mut f: File, timeout: Duration) -> Result<String, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(pos);
            return String::from_utf8(buf).map_err(|_| "reply is not UTF-8".to_owned());
        }
        if buf.len() > 1 << 20 {
            return Err("reply longer than 1 MiB".to_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {} s", timeout.as_secs()));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&f), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        match f.read(&mut chunk) {
            Ok(0) => return Err("exited without an answer (see the agent log)".to_owned()),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read reply: {e}")),
        }
    }
}

/// Removes what the agent created for a container. The rootfs is unmounted first and,
/// if that fails, left in place: recursing into a mounted overlay would delete the
/// container's writable layer.
fn remove_container_dir(sys: &dyn Sys, dir: &Path, rootfs: Option<&Path>) -> Result<(), String> {
    if let Some(r) = rootfs {
        if let Err(e) = rootfs::unmount(sys, r) {
            return Err(format!("unmount rootfs: {e}"));
        }
        let _ = std::fs::remove_dir(r);
    }
    for sub in ["bundle", "etc"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
        }
    }
    // Leftover exec process files, then the (now empty) directory.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("exec-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

/// Releases a reserved id.
struct Reservation<'a> {
    manager: &'a Manager,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.manager.reserved).remove(&self.key);
    }
}

/// Undoes a half-done create.
struct CreateCleanup<'a> {
    manager: &'a Manager,
    id: String,
    dir: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    state: bool,
    init: Option<(i32, Arc<ExitCell>)>,
    armed: bool,
}

impl<'a> CreateCleanup<'a> {
    fn new(manager: &'a Manager, id: &str) -> Self {
        Self {
            manager,
            id: id.to_owned(),
            dir: None,
            rootfs: None,
            state: false,
            init: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CreateCleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let m = self.manager;
        if let Some((pid, exit)) = &self.init {
            let _ = m.reaper.signal(*pid, Some(Signal::SIGKILL));
            let _ = exit.wait_timeout(KILL_TIMEOUT);
            m.reaper.forget(*pid);
        }
        if self.state {
            match libcontainer::container::Container::load(m.state_root().join(&self.id)) {
                Ok(mut lc) => {
                    if let Err(e) = lc.delete(true) {
                        tracing::warn!(container = %self.id, "clean up failed create: {e}");
                    }
                }
                Err(e) => tracing::debug!(container = %self.id, "clean up failed create: {e}"),
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = remove_container_dir(&*m.sys, dir, self.rootfs.as_deref()) {
                tracing::warn!(container = %self.id, "clean up failed create: {e}");
            }
        }
    }
}

/// The console socket a TTY process's pty master arrives on; its file is removed when
/// it is dropped, whether or not the process was created.
struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's stdio between set-up and the helper's answer.
struct PendingStdio {
    /// The container's ends (stdin, stdout, stderr) for the helper; `None` in TTY mode.
    child_fds: Option<[OwnedFd; 3]>,
    stdin: StdinSlot,
    stdout: OutputSlot,
    stderr: OutputSlot,
    console: Option<ConsoleSocket>,
}

impl PendingStdio {
    fn new(m: &Manager, tty: bool, cfg: &StdioConfig) -> Result<Self, AgentError> {
        let io_err = |e: std::io::Error| AgentError::internal(format!("set up stdio: {e}"));
        if tty {
            let n = m.next_socket.fetch_add(1, Ordering::SeqCst);
            let path = m.run_dir.join("cs").join(format!("{n}.sock"));
            if path.as_os_str().len() >= 108 {
                return Err(AgentError::internal(format!(
                    "console socket path {} is too long for a Unix socket; use a shorter run directory",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(io_err)?;
            return Ok(Self {
                child_fds: None,
                stdin: StdinSlot::unused(),
                stdout: OutputSlot::unused(),
                stderr: OutputSlot::unused(),
                console: Some(ConsoleSocket { listener, path }),
            });
        }
        let (stdin_child, stdin) = if cfg.stdin {
            let (r, w) = stdio::pipe().map_err(io_err)?;
            (OwnedFd::from(r), StdinSlot::new(w, false))
        } else {
            (stdio::dev_null(false).map_err(io_err)?, StdinSlot::unused())
        };
        let out = |wanted: bool| -> Result<(OwnedFd, OutputSlot), AgentError> {
            if wanted {
                let (r, w) = stdio::pipe().map_err(io_err)?;
                Ok((OwnedFd::from(w), OutputSlot::new(r, false)))
            } else {
                Ok((stdio::dev_null(true).map_err(io_err)?, OutputSlot::unused()))
            }
        };
        let (stdout_child, stdout) = out(cfg.stdout)?;
        let (stderr_child, stderr) = out(cfg.stderr)?;
        Ok(Self {
            child_fds: Some([stdin_child, stdout_child, stderr_child]),
            stdin,
            stdout,
            stderr,
            console: None,
        })
    }

    fn console_path(&self) -> Option<PathBuf> {
        self.console.as_ref().map(|c| c.path.clone())
    }

    /// Builds the process once the helper answered; in TTY mode receives the pty
    /// master the container sent to the console socket.
    fn finish(
        self,
        pid: i32,
        exit: Arc<ExitCell>,
        cfg: StdioConfig,
        console_size: Option<(u16, u16)>,
    ) -> Result<Process, AgentError> {
        let Some(console) = self.console else {
            return Ok(Process {
                pid,
                tty: false,
                exit,
                stdin: self.stdin,
                stdout: self.stdout,
                stderr: self.stderr,
                pty: None,
                reported: AtomicBool::new(false),
            });
        };
        let master = receive_pty(&console.listener);
        drop(console);
        let master =
            master.map_err(|e| AgentError::internal(format!("receive the terminal: {e}")))?;
        // The container process set this size itself before exec (helper::MoatExecutor);
        // repeating it changes nothing then (no SIGWINCH for an unchanged size) and
        // covers a workload that ran without the executor.
        if let Some((rows, cols)) = console_size.filter(|(r, c)| *r > 0 && *c > 0) {
            if let Err(e) = stdio::set_window_size(&master, rows, cols) {
                tracing::warn!("set initial window size: {e}");
            }
        }
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|e| AgentError::internal(format!("duplicate the terminal: {e}")))
        };
        let stdin = if cfg.stdin {
            StdinSlot::new(dup(&master)?, true)
        } else {
            StdinSlot::unused()
        };
        let stdout = if cfg.stdout {
            OutputSlot::new(dup(&master)?, true)
        } else {
            // Nobody will read the terminal: drain it so the process never blocks.
            let mut sink = dup(&master)?;
            let _ = std::thread::Builder::new()
                .name("tty-drain".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(sink.read(&mut buf), Ok(n) if n > 0) {}
                });
            OutputSlot::unused()
        };
        Ok(Process {
            pid,
            tty: true,
            exit,
            stdin,
            stdout,
            stderr: OutputSlot::unused(),
            pty: Some(master),
            reported: AtomicBool::new(false),
        })
    }
}

/// Accepts the container's connection on the console socket and receives the pty
/// master it sends (`SCM_RIGHTS`). libcontainer connects before `create` returns and
/// sends before the init process reports ready, so both are queued by now.
fn receive_pty(listener: &UnixListener) -> std::io::Result<File> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::io::IoSliceMut;
    listener.set_nonblocking(true)?;
    let (stream, _) = listener.accept().map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::other("the container did not connect to the console socket")
        } else {
            e
        }
    })?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us (SCM_RIGHTS).
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(File::from(owned));
                }
            }
        }
    }
    received.ok_or_else(|| std::io::Error::other("no descriptor in the console socket message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompOperator;

    #[test]
    fn masked_eq_operands_are_swapped_for_libcontainer() {
        let mut spec = crate::spec::docker_default(&crate::spec::SpecOptions::new(["sh"])).unwrap();
        adapt_for_libcontainer(&mut spec);
        let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        let clone = seccomp
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names().iter().any(|n| n == "clone"))
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((arg.value(), arg.value_two()), (0, Some(0x7E02_0000)));
        // Other comparisons are untouched.
        let socket = seccomp
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names().iter().any(|n| n == "socket"))
            .unwrap();
        assert_eq!(socket.args().as_ref().unwrap()[0].value(), 40);
    }

    #[test]
    fn process_checks() {
        let ok = crate::spec::docker_default(&crate::spec::SpecOptions::new(["sh"])).unwrap();
        let p = ok.process().clone().unwrap();
        assert_eq!(check_process(Some(&p), &StdioConfig::default()), Ok(false));
        let mut empty = p.clone();
        empty.set_args(Some(vec![]));
        assert!(check_process(Some(&empty), &StdioConfig::default()).is_err());
        let mut tty = p.clone();
        tty.set_terminal(Some(true));
        let both = StdioConfig {
            stdin: true,
            stdout: true,
            stderr: true,
        };
        assert_eq!(
            check_process(Some(&tty), &both).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let mut rel = p;
        rel.set_cwd("tmp".into());
        assert!(check_process(Some(&rel), &StdioConfig::default()).is_err());
        assert!(check_process(None, &StdioConfig::default()).is_err());
    }
}
