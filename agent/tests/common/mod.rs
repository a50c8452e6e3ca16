//! Shared set-up of the host-mode integration tests: a busybox rootfs as two image
//! layers (the upper one with a whiteout and an opaque directory), an agent in host
//! mode in a temporary directory, and small client helpers.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_agent::client::{attach_input, attach_output, Client, InputStream, OutputStream};
use moat_agent::protocol::{CreateRequest, RootfsLayers, StdioConfig, StreamKind};
use moat_agent::spec::{docker_default, SpecOptions};

pub const BUSYBOX: &str = "/bin/busybox";

/// Fails loudly when the tests cannot run here (never a silent skip).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the host-mode agent tests need root (mount and cgroup namespaces, overlayfs)"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install Debian's busybox-static"
    );
}

/// Layer 0: busybox and its applet links, base directories, `/etc/gone` (deleted by
/// layer 1), `/etc/motd` (replaced by layer 1), `/data/{a,b}` (hidden by layer 1's
/// opaque `/data`), and `/bin/notexec` (mode 0644).
/// Layer 1: `/etc/gone` whiteout (char device 0/0), `/etc/motd`, opaque `/data` with
/// `/data/c`.
pub fn busybox_layers(dir: &Path) -> Vec<PathBuf> {
    let l0 = dir.join("layer0");
    let l1 = dir.join("layer1");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "data",
    ] {
        std::fs::create_dir_all(l0.join(d)).unwrap();
    }
    std::fs::set_permissions(l0.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, l0.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list-full").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = l0.join(applet);
        if link.exists() || applet.is_empty() {
            continue;
        }
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
    }
    std::fs::write(
        l0.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(l0.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::fs::write(l0.join("etc/gone"), "deleted in layer 1\n").unwrap();
    std::fs::write(l0.join("etc/motd"), "layer 0\n").unwrap();
    std::fs::write(l0.join("data/a"), "a\n").unwrap();
    std::fs::write(l0.join("data/b"), "b\n").unwrap();
    std::fs::write(l0.join("bin/notexec"), "#!/bin/sh\necho never\n").unwrap();
    build_probe(&l0.join("bin/seccomp-probe"));
    std::fs::set_permissions(
        l0.join("bin/notexec"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::create_dir_all(l1.join("data")).unwrap();
    nix::sys::stat::mknod(
        &l1.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o000),
        nix::sys::stat::makedev(0, 0),
    )
    .unwrap();
    std::fs::write(l1.join("etc/motd"), "layer 1\n").unwrap();
    std::fs::write(l1.join("data/c"), "c\n").unwrap();
    xattr_set(&l1.join("data"), "trusted.overlay.opaque", b"y");
    vec![l0, l1]
}

/// Compiles `tests/probe/seccomp_probe.c` statically (Debian's build-essential).
fn build_probe(out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/seccomp_probe.c");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("run cc (install build-essential) to build the seccomp probe");
    assert!(status.success(), "building {} failed", src.display());
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// An agent in host mode, shut down on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub layers: Vec<PathBuf>,
    child: Child,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with_log(&std::env::var("MOAT_AGENT_LOG").unwrap_or_else(|_| "warn".into()))
    }

    /// An agent whose log filter is `filter`.
    pub fn start_with_log(filter: &str) -> Agent {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("moat-agent-")
            .tempdir()
            .unwrap();
        let layers = busybox_layers(dir.path());
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_moat-agent"))
            .arg("--host-mode")
            .arg("--listen")
            .arg(&socket)
            .arg("--root")
            .arg(dir.path().join("run"))
            .env("MOAT_AGENT_LOG", filter)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Agent {
            dir,
            socket,
            layers,
            child,
        }
    }

    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).unwrap()
    }

    pub fn client(&self) -> Client<UnixStream> {
        Client::new(self.connect()).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Rootfs layers plus a fresh upper/work pair for container `id`.
    pub fn rootfs(&self, id: &str) -> RootfsLayers {
        let rw = self.dir.path().join("rw").join(id);
        RootfsLayers {
            layers: self
                .layers
                .iter()
                .map(|l| l.display().to_string())
                .collect(),
            upper: rw.join("upper").display().to_string(),
            work: rw.join("work").display().to_string(),
        }
    }

    pub fn upper(&self, id: &str) -> PathBuf {
        self.dir.path().join("rw").join(id).join("upper")
    }

    /// `create` with Docker's defaults for `args`.
    pub fn create(
        &self,
        c: &mut Client<UnixStream>,
        id: &str,
        opts: SpecOptions,
        stdio: StdioConfig,
    ) -> i32 {
        let req = self.create_request(id, opts, stdio);
        c.create(req)
            .unwrap_or_else(|e| panic!("create {id}: {e}"))
            .0
    }

    pub fn create_request(&self, id: &str, opts: SpecOptions, stdio: StdioConfig) -> CreateRequest {
        CreateRequest {
            container: id.to_owned(),
            spec: docker_default(&opts).unwrap(),
            rootfs: Some(self.rootfs(id)),
            etc: None,
            stdio,
        }
    }

    pub fn output(
        &self,
        id: &str,
        exec: Option<&str>,
        kind: StreamKind,
    ) -> OutputStream<UnixStream> {
        attach_output(self.connect(), id, exec, kind).unwrap()
    }

    pub fn input(&self, id: &str, exec: Option<&str>) -> InputStream<UnixStream> {
        attach_input(self.connect(), id, exec).unwrap()
    }

    /// Reads an output stream to its end on a thread.
    pub fn collect(
        &self,
        id: &str,
        exec: Option<&str>,
        kind: StreamKind,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        let mut s = self.output(id, exec, kind);
        std::thread::spawn(move || {
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        })
    }

    /// create, attach stdout and stderr, start, wait: `(code, stdout, stderr)`.
    pub fn run(&self, id: &str, opts: SpecOptions) -> (i32, String, String) {
        let mut c = self.client();
        self.create(&mut c, id, opts, out_err());
        let out = self.collect(id, None, StreamKind::Stdout);
        let err = self.collect(id, None, StreamKind::Stderr);
        c.start(id).unwrap();
        let status = c.wait(id, None).unwrap();
        let out = String::from_utf8(out.join().unwrap()).unwrap();
        let err = String::from_utf8(err.join().unwrap()).unwrap();
        c.delete(id, false).unwrap();
        (status.code, out, err)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(s) = UnixStream::connect(&self.socket) {
            if let Ok(mut c) = Client::new(s) {
                let _ = c.shutdown();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

pub fn out_err() -> StdioConfig {
    StdioConfig {
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

/// Docker's defaults for `args`, except RLIMIT_NOFILE: the build hosts lack
/// CAP_SYS_RESOURCE, so the agent cannot raise the hard limit to Docker's 1048576
/// there (test `default_rlimits_need_cap_sys_resource` covers that case).
pub fn opts<S: Into<String>>(args: impl IntoIterator<Item = S>) -> SpecOptions {
    let mut o = SpecOptions::new(args);
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    o.rlimits = vec![("RLIMIT_NOFILE".to_owned(), hard.min(1024), hard.min(1024))];
    o
}

pub fn sh(script: &str) -> SpecOptions {
    opts(["sh", "-c", script])
}
