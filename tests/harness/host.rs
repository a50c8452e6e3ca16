//! Running one command in a test tier and getting back its stdout, stderr and
//! exit status.
//!
//! In the `nested` tier this drives `tests/kvm-host/run.sh` (the one
//! implementation of the test host) with `--out-dir`, and reads the files it
//! leaves: `stdout`, `stderr`, `status` (`exit=N`, `ready_uptime=S`,
//! `wall_seconds=S`, or `setup_error=...`) and `console.log`. In the `direct` tier
//! it runs the command here, from a scratch root that holds the added files.
//! Either way the command starts in the root of the added files (`/` in the test
//! host), with `MOAT_ROOT` naming it, so `./bin/x` works in both tiers.
//!
//! Owns the run directories under `Artifacts::runs_dir`; removes each when its
//! [`Output`] is dropped, except after a failure or with `MOAT_KEEP_RUNS=1`.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::tier::{probe, probe_arch, GuestArch, Tier};

/// Why a command could not be run to completion (its own exit status, even a
/// failing one, is not an error).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("no end-to-end tier on this machine: {0}")]
    NoTier(String),
    #[error("add {src} to the test host: destination {dst:?} must be absolute, without ..")]
    BadDestination { src: PathBuf, dst: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{tier} run of {argv:?} timed out after {after:?} (logs in {})", run_dir.display())]
    Timeout {
        tier: Tier,
        argv: Vec<String>,
        after: Duration,
        run_dir: PathBuf,
    },
    #[error("test host failed running {argv:?}: {message} (console log {})", console_log.display())]
    TestHost {
        argv: Vec<String>,
        message: String,
        console_log: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HarnessError + 'a {
    move |source| HarnessError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    pub tier: Tier,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command's exit status (128+N when killed by signal N).
    pub status: i32,
    /// The test host's console (`nested` only): kernel messages, init's notes.
    pub console_log: Option<PathBuf>,
    /// Test-host uptime when the command started (`nested` only).
    pub ready_uptime: Option<f64>,
    /// Wall time of the whole run (for `nested`, QEMU start to exit).
    pub wall: Duration,
    run_dir: RunDir,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The directory holding this run's files.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir.path
    }
    /// Keeps the run directory after this `Output` is dropped.
    pub fn keep(&mut self) {
        self.run_dir.keep = true;
    }
}

/// A run directory, removed on drop unless kept.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(parent: &Path) -> Result<Self, HarnessError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        fs::create_dir_all(parent).map_err(io_err("create run directory", parent))?;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("run-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(RunDir {
                        path,
                        keep: std::env::var("MOAT_KEEP_RUNS").is_ok_and(|v| v == "1"),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create run directory", &path)(e)),
            }
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One command to run in a tier, with files to put beside it.
#[derive(Debug, Clone)]
pub struct TestHost {
    tier: Tier,
    arch: GuestArch,
    artifacts: Artifacts,
    adds: Vec<(PathBuf, String)>,
    envs: Vec<(String, String)>,
    timeout: Duration,
    mem_mib: u32,
    cpus: u32,
    qemu: bool,
}

impl TestHost {
    /// A host in the tier the probe picks; says on stderr which one and why.
    pub fn new() -> Result<Self, HarnessError> {
        let p = probe();
        match p.tier {
            Some(tier) => {
                crate::notice(&format!("tier {tier}: {}", p.reason));
                Ok(Self::in_tier(tier))
            }
            None => Err(HarnessError::NoTier(p.reason)),
        }
    }

    /// A host for `arch` guests in the tier [`probe_arch`] picks: the ordinary
    /// probe for this machine's own architecture, the nested test host of `arch`
    /// otherwise. Says on stderr which one and why.
    pub fn for_arch(arch: GuestArch) -> Result<Self, HarnessError> {
        let p = probe_arch(arch);
        match p.tier {
            Some(tier) => {
                crate::notice(&format!("{arch} guests, tier {tier}: {}", p.reason));
                Ok(TestHost {
                    arch,
                    ..Self::in_tier(tier)
                })
            }
            None => Err(HarnessError::NoTier(p.reason)),
        }
    }

    /// The nested test host, whatever the probe says (for tests of the test host).
    pub fn nested() -> Self {
        Self::in_tier(Tier::Nested)
    }

    pub fn in_tier(tier: Tier) -> Self {
        TestHost {
            tier,
            arch: GuestArch::host(),
            artifacts: Artifacts::from_env(),
            adds: Vec::new(),
            envs: Vec::new(),
            timeout: Duration::from_secs(300),
            mem_mib: 2048,
            cpus: 1,
            qemu: false,
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The architecture of the test host (and of the guests it boots).
    pub fn arch(&self) -> GuestArch {
        self.arch
    }

    pub fn artifacts(&self) -> &Artifacts {
        &self.artifacts
    }

    /// Puts file or directory `src` at `dst` (absolute) under the command's root.
    pub fn add(mut self, src: impl Into<PathBuf>, dst: &str) -> Self {
        self.adds.push((src.into(), dst.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }

    /// Wall-clock limit for the whole run, boot included (default 300 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Test-host memory (`nested` only; default 2048 MiB).
    pub fn mem_mib(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Test-host vCPUs (`nested` only; default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Makes `qemu-system-x86_64` available to the command (the reference VMM).
    /// In the `direct` tier it must already be installed here. Not supported yet
    /// in the arm64 test host (`run.sh` refuses it).
    pub fn with_qemu(mut self) -> Self {
        self.qemu = true;
        self
    }

    /// Runs `argv` and waits for it, within the timeout.
    pub fn run(&self, argv: &[&str]) -> Result<Output, HarnessError> {
        for (src, dst) in &self.adds {
            if !valid_destination(dst) {
                return Err(HarnessError::BadDestination {
                    src: src.clone(),
                    dst: dst.clone(),
                });
            }
        }
        let run_dir = RunDir::create(&self.artifacts.runs_dir)?;
        match self.tier {
            Tier::Nested => self.run_nested(argv, run_dir),
            Tier::Direct => self.run_direct(argv, run_dir),
        }
    }

    fn run_nested(&self, argv: &[&str], mut run_dir: RunDir) -> Result<Output, HarnessError> {
        let script = self.artifacts.script("run.sh");
        let mut cmd = Command::new(&script);
        cmd.env("MOAT_TESTHOST_DIR", &self.artifacts.testhost_dir)
            .env(
                "MOAT_TESTHOST_ARM64_DIR",
                &self.artifacts.testhost_arm64_dir,
            )
            .arg("--arch")
            .arg(self.arch.as_str())
            .arg("--out-dir")
            .arg(&run_dir.path)
            .arg("--timeout")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg("--mem")
            .arg(self.mem_mib.to_string())
            .arg("--cpus")
            .arg(self.cpus.to_string());
        if self.qemu {
            cmd.arg("--qemu");
        }
        for (src, dst) in &self.adds {
            let mut spec = src.clone().into_os_string();
            spec.push(":");
            spec.push(dst);
            cmd.arg("--add").arg(spec);
        }
        for (k, v) in &self.envs {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--").args(argv);
        let start = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| HarnessError::Spawn {
                program: script.display().to_string(),
                source,
            })?;
        let wall_outer = start.elapsed();
        let dir = run_dir.path.clone();
        let status_text = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let status = parse_status(&status_text);
        let console_log = dir.join("console.log");
        let argv_owned = || argv.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let Some(exit) = status.exit else {
            run_dir.keep = true;
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if message.contains("timed out after") {
                return Err(HarnessError::Timeout {
                    tier: Tier::Nested,
                    argv: argv_owned(),
                    after: self.timeout,
                    run_dir: dir,
                });
            }
            return Err(HarnessError::TestHost {
                argv: argv_owned(),
                message,
                console_log,
            });
        };
        let read = |name: &str| fs::read(dir.join(name)).map_err(io_err("read", &dir));
        Ok(Output {
            tier: Tier::Nested,
            stdout: read("stdout")?,
            stderr: read("stderr")?,
            status: exit,
            console_log: Some(console_log),
            ready_uptime: status.ready_uptime,
            wall: status
                .wall_seconds
                .map(Duration::from_secs_f64)
                .unwrap_or(wall_outer),
            run_dir,
        })
    }

    fn run_direct(&self, argv: &[&str], mut run_dir: RunDir) -> Result<Output, HarnessError> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};

        let dir = run_dir.path.clone();
        let root = dir.join("root");
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        for (src, dst) in &self.adds {
            let to = root.join(dst.trim_start_matches('/'));
            copy_tree(src, &to)?;
        }
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let stdout = fs::File::create(&stdout_path).map_err(io_err("create", &stdout_path))?;
        let stderr = fs::File::create(&stderr_path).map_err(io_err("create", &stderr_path))?;
        let path = format!(
            "{}:{}:{}",
            root.join("bin").display(),
            root.join("usr/bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec \"$@\"")
            .arg("sh")
            .args(argv)
            .current_dir(&root)
            .env("PATH", path)
            .env("MOAT_ROOT", &root)
            .env("MOAT_E2E_TIER", "direct")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: argv.first().unwrap_or(&"").to_string(),
            source,
        })?;
        let exit = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if start.elapsed() >= self.timeout => {
                    let pgid = i32::try_from(child.id()).unwrap_or(i32::MAX);
                    // SAFETY: kill(2) on the process group we created for this
                    // child (process_group(0) makes its pid the group id); it
                    // touches no memory.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait();
                    run_dir.keep = true;
                    return Err(HarnessError::Timeout {
                        tier: Tier::Direct,
                        argv: argv.iter().map(|s| s.to_string()).collect(),
                        after: self.timeout,
                        run_dir: dir,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(HarnessError::Spawn {
                        program: argv.first().unwrap_or(&"").to_string(),
                        source,
                    })
                }
            }
        };
        let wall = start.elapsed();
        let status = exit
            .code()
            .or_else(|| exit.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        Ok(Output {
            tier: Tier::Direct,
            stdout: fs::read(&stdout_path).map_err(io_err("read", &stdout_path))?,
            stderr: fs::read(&stderr_path).map_err(io_err("read", &stderr_path))?,
            status,
            console_log: None,
            ready_uptime: None,
            wall,
            run_dir,
        })
    }
}

/// `dst` must be absolute and must not climb out with `..`.
fn valid_destination(dst: &str) -> bool {
    let p = Path::new(dst);
    p.is_absolute()
        && p.components().count() > 1
        && p.components().all(|c| !matches!(c, Component::ParentDir))
}

/// Copies a file, or a directory recursively, keeping permissions and symlinks.
fn copy_tree(src: &Path, to: &Path) -> Result<(), HarnessError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let meta = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(target, to).map_err(io_err("create symlink", to))?;
    } else if meta.is_dir() {
        fs::create_dir_all(to).map_err(io_err("create", to))?;
        for entry in fs::read_dir(src).map_err(io_err("read directory", src))? {
            let entry = entry.map_err(io_err("read directory", src))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        fs::copy(src, to).map_err(io_err("copy", src))?;
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq)]
struct Status {
    exit: Option<i32>,
    ready_uptime: Option<f64>,
    wall_seconds: Option<f64>,
}

/// Parses run.sh's `status` file; unknown or malformed lines are ignored.
fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "exit" => s.exit = v.trim().parse().ok(),
            "ready_uptime" => s.ready_uptime = v.trim().parse().ok(),
            "wall_seconds" => {
                s.wall_seconds = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_file_is_parsed() {
        let s = parse_status("ready_uptime=1.70\nexit=3\nend_uptime=1.74\nwall_seconds=2.33\n");
        assert_eq!(s.exit, Some(3));
        assert_eq!(s.ready_uptime, Some(1.70));
        assert_eq!(s.wall_seconds, Some(2.33));
    }

    #[test]
    fn status_without_exit_means_no_result() {
        let s = parse_status("setup_error=insmod kvm\nwall_seconds=1.0\n");
        assert_eq!(s.exit, None);
        assert_eq!(parse_status("exit=\nexit=abc\ngarbage\n").exit, None);
        assert_eq!(parse_status("wall_seconds=-1\n").wall_seconds, None);
    }

    #[test]
    fn destinations_are_checked() {
        assert!(valid_destination("/bin/x"));
        assert!(valid_destination("/work/dir"));
        assert!(!valid_destination("bin/x"));
        assert!(!valid_destination("/"));
        assert!(!valid_destination("/a/../../etc"));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moat-harness-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn direct_run_reports_stdout_stderr_status_and_files() {
        let tmp = scratch("direct");
        let file = tmp.join("data.txt");
        fs::write(&file, "payload\n").unwrap();
        let mut host = TestHost::in_tier(Tier::Direct)
            .add(&file, "/srv/data.txt")
            .env("GREETING", "hi there");
        host.artifacts.runs_dir = tmp.join("runs");
        let out = host
            .run(&[
                "sh",
                "-c",
                "cat ./srv/data.txt; echo \"$GREETING\" >&2; exit 7",
            ])
            .unwrap();
        assert_eq!(out.tier, Tier::Direct);
        assert_eq!(out.stdout_str(), "payload\n");
        assert_eq!(out.stderr_str(), "hi there\n");
        assert_eq!(out.status, 7);
        let dir = out.run_dir().to_path_buf();
        drop(out);
        assert!(!dir.exists(), "run directory is removed with its output");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn direct_run_times_out_and_kills_the_command() {
        let tmp = scratch("timeout");
        let mut host = TestHost::in_tier(Tier::Direct).timeout(Duration::from_millis(300));
        host.artifacts.runs_dir = tmp.join("runs");
        let start = Instant::now();
        let err = host.run(&["sh", "-c", "sleep 30; echo late"]).unwrap_err();
        assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn bad_destination_is_refused_before_running() {
        let err = TestHost::in_tier(Tier::Direct)
            .add("/etc/hostname", "../escape")
            .run(&["true"])
            .unwrap_err();
        assert!(matches!(err, HarnessError::BadDestination { .. }), "{err}");
    }
}
