//! Sandbox tests without a VM: moat-vmm is played by this test binary itself
//! (the `fake_vmm` entry below, started through a small shell script that the
//! sandbox spawns as its "moat-vmm"). The fake reads the VM config the sandbox
//! wrote with moat-vmm's own parser, opens the hybrid vsock socket and answers
//! as the agent would, with the real wire types. The real thing runs in
//! `tests/runtime_sandbox.rs`.

use super::*;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Condvar, Mutex};

use moat_agent::protocol::{
    read_frame, write_frame, write_json, Channel, ErrorCode, ExitStatus, Hello, HelloReply,
    Outcome, Request, RequestFrame, Response, ResponseFrame, WireError, MAX_CONTROL_FRAME,
    MAX_DATA_FRAME,
};

/// Not a test: the fake VMM's entry point, run in a child process by the
/// script of [`fake_vmm_script`]. Without its environment it does nothing.
#[test]
fn fake_vmm() {
    let Ok(config) = std::env::var("FAKE_VMM_CONFIG") else {
        return;
    };
    let mode = std::env::var("FAKE_VMM_MODE").unwrap_or_default();
    if let Ok(pidfile) = std::env::var("FAKE_VMM_PIDFILE") {
        fs::write(pidfile, std::process::id().to_string()).unwrap();
    }
    std::process::exit(fake::main(Path::new(&config), &mode));
}

/// A script that runs [`fake_vmm`] in `mode`, as the sandbox runs moat-vmm
/// (`--config FILE --log FILTER`).
fn fake_vmm_script(dir: &Path, mode: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let script = dir.join(format!("fake-vmm-{mode}"));
    let pidfile = dir.join(format!("fake-vmm-{mode}.pid"));
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = --config ] && [ \"$3\" = --log ] || exit 99\n\
             FAKE_VMM_CONFIG=\"$2\" FAKE_VMM_MODE='{mode}' FAKE_VMM_PIDFILE='{}' \
             exec '{}' --exact sandbox::tests::fake_vmm --nocapture --test-threads=1 -q\n",
            pidfile.display(),
            exe.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

struct Fixture {
    dir: tempfile::TempDir,
    cfg: SandboxConfig,
}

fn fixture(mode: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<PathBuf> = (0..2)
        .map(|i| {
            let l = dir.path().join(format!("layer{i}"));
            fs::create_dir(&l).unwrap();
            l
        })
        .collect();
    let kernel = dir.path().join("vmlinux");
    let initrd = dir.path().join("initrd.cpio");
    fs::write(&kernel, b"kernel").unwrap();
    fs::write(&initrd, b"initrd").unwrap();
    let mut cfg = SandboxConfig::new("c1", dir.path().join("state/c1"), layers);
    cfg.vmm = fake_vmm_script(dir.path(), mode);
    cfg.kernel = kernel;
    cfg.initrd = initrd;
    cfg.start_timeout = Duration::from_secs(20);
    cfg.stop_timeout = Duration::from_secs(10);
    Fixture { dir, cfg }
}

fn pid_of(dir: &Path, mode: &str) -> i32 {
    fs::read_to_string(dir.join(format!("fake-vmm-{mode}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0
}

/// Runs `args` and returns (exit, stdout, stderr).
fn run_capture(
    sb: &mut Sandbox,
    args: &[&str],
    stdin: Option<Vec<u8>>,
) -> (Result<ContainerExit, RunError>, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = sb.run(
        &RunSpec::new(args.iter().copied()),
        RunIo {
            stdin: stdin.map(|d| Box::new(io::Cursor::new(d)) as Box<dyn Read + Send>),
            stdout: &mut out,
            stderr: &mut err,
        },
    );
    (r, out, err)
}

#[test]
fn vm_config_is_moat_vmms_own_and_carries_every_share() {
    let f = fixture("unused");
    let vm = f.cfg.vm_config();
    let text = serde_json::to_string(&vm).unwrap();
    let parsed = VmConfig::from_json(&text, Path::new("vm.json")).unwrap();
    parsed.validate().unwrap();
    assert_eq!(parsed, vm);
    assert_eq!(parsed.fs.len(), 1, "one virtio-fs device for all shares");
    let mounts: Vec<(&str, bool)> = parsed.fs[0]
        .mounts
        .iter()
        .map(|m| (m.guest_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [("/layers/0", true), ("/layers/1", true), ("/upper", false)]
    );
    assert_eq!(
        parsed.fs[0].mounts[2].host_dir,
        f.cfg.state_dir.join("upper")
    );
    let cmdline = parsed.cmdline.unwrap();
    assert!(cmdline.contains(" moat.fs=moat:/mnt/moat"), "{cmdline}");
    assert!(cmdline.starts_with("console=ttyS0"), "{cmdline}");
    let rootfs = f.cfg.guest_rootfs();
    assert_eq!(rootfs.layers, ["/mnt/moat/layers/0", "/mnt/moat/layers/1"]);
    assert_eq!(rootfs.upper, "/mnt/moat/upper/diff");
    assert_eq!(rootfs.work, "/mnt/moat/upper/work");
}

#[test]
fn runs_streams_and_stops() {
    let f = fixture("ok");
    let state = f.cfg.state_dir.clone();
    let mut sb = Sandbox::start(f.cfg.clone()).unwrap();
    let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(state.join("upper/diff").is_dir() && state.join("upper/work").is_dir());

    let (r, out, err) = run_capture(&mut sb, &["echo", "hello", "there"], None);
    assert_eq!(
        r.unwrap(),
        ContainerExit {
            code: 0,
            signal: None
        }
    );
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"hello there\n"[..], &b""[..])
    );
    let t = sb.timings();
    assert!(t.first_output.is_some() && t.exited.is_some());
    assert_eq!(t.vcpus_started_us, Some(1500));
    assert_eq!(t.boot_marker_us, Some(2500));
    assert_eq!(t.agent_up_uptime_s, Some(0.01));
    assert_eq!(
        (t.agent_create_us, t.agent_start_us),
        (Some(1000), Some(500))
    );
    assert_eq!(t.create_stages.map(|s| s.helper_us), Some(30));
    assert!(t.breakdown().is_some());

    // Exit code and the two streams apart; the sandbox runs again after a run.
    let (r, out, err) = run_capture(&mut sb, &["fail", "3"], None);
    assert_eq!(r.unwrap().code, 3);
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );

    // stdin: 1 MiB through the "container" and back.
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (r, out, _) = run_capture(&mut sb, &["cat"], Some(data.clone()));
    assert_eq!(r.unwrap().code, 0);
    assert!(out == data, "stdin round trip: {} bytes back", out.len());

    let pid = pid_of(f.dir.path(), "ok");
    let stopped = sb.stop().unwrap();
    assert_eq!(
        stopped.vmm,
        VmmStatus {
            code: Some(0),
            signal: None
        }
    );
    assert_eq!(stopped.reason, "the guest rebooted");
    assert!(stopped.shutdown_acknowledged && !stopped.killed);
    assert!(stopped.timings.create_stages.is_some());
    assert!(stopped.kept_state_dir.is_none());
    assert!(!state.exists(), "state dir removed");
    assert!(gone(pid));
}

#[test]
fn relative_paths_are_made_absolute() {
    let f = fixture("unused");
    let cwd = std::env::current_dir().unwrap();
    let mut cfg = f.cfg.clone();
    cfg.kernel = "k/vmlinux".into();
    cfg.vmm = "./bin/moat-vmm".into();
    cfg.layers = vec!["l0".into()];
    let abs = cfg.absolute().unwrap();
    assert_eq!(abs.kernel, cwd.join("k/vmlinux"));
    assert_eq!(abs.vmm, cwd.join("bin/moat-vmm"));
    assert_eq!(abs.layers, [cwd.join("l0")]);
    assert_eq!(abs.state_dir, f.cfg.state_dir);
    let mut bare = f.cfg.clone();
    bare.vmm = "moat-vmm".into();
    assert_eq!(bare.absolute().unwrap().vmm, Path::new("moat-vmm"));
}

#[test]
fn vmm_exiting_before_its_socket_is_a_clear_error() {
    let f = fixture("early-exit");
    let state = f.cfg.state_dir.clone();
    let err = Sandbox::start(f.cfg).unwrap_err().to_string();
    assert_eq!(
        err,
        "start sandbox c1: moat-vmm exited with status 2 before its vsock socket appeared: \
         moat-vmm: virtio-fs moat: share /upper: No such file or directory (os error 2)"
    );
    assert!(!state.exists());
}

#[test]
fn a_missing_kernel_is_a_clear_error() {
    let mut f = fixture("ok");
    f.cfg.kernel = f.dir.path().join("missing-vmlinux");
    let state = f.cfg.state_dir.clone();
    let err = Sandbox::start(f.cfg).unwrap_err().to_string();
    // The socket exists for a moment before the kernel is opened; whether the
    // sandbox saw it decides the step named.
    let after_socket = "start sandbox c1: moat-vmm exited with status 2 before the agent \
                        answered: moat-vmm: open kernel ";
    let before_socket = "start sandbox c1: moat-vmm exited with status 2 before its vsock \
                         socket appeared: moat-vmm: open kernel ";
    assert!(
        err.starts_with(after_socket) || err.starts_with(before_socket),
        "{err}"
    );
    assert!(
        err.contains("missing-vmlinux: No such file or directory"),
        "{err}"
    );
    assert!(!err.contains("DEBUG"), "log lines are not quoted: {err}");
    assert!(!state.exists());
}

#[test]
fn no_socket_within_the_bound_kills_the_vmm() {
    let mut f = fixture("no-socket");
    f.cfg.start_timeout = Duration::from_millis(500);
    let state = f.cfg.state_dir.clone();
    let err = Sandbox::start(f.cfg).unwrap_err();
    assert!(matches!(err, StartError::SocketTimeout { .. }), "{err}");
    assert!(err.to_string().contains("no vsock socket at"), "{err}");
    assert!(!state.exists());
    assert!(gone(pid_of(f.dir.path(), "no-socket")));
}

#[test]
fn an_agent_that_never_answers_times_out() {
    let mut f = fixture("no-agent");
    f.cfg.start_timeout = Duration::from_secs(2);
    f.cfg.keep_state = true;
    let state = f.cfg.state_dir.clone();
    let err = Sandbox::start(f.cfg).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StartError::AgentTimeout { .. }), "{msg}");
    assert!(msg.contains("the agent did not answer within"), "{msg}");
    assert!(msg.contains("vsock connect to port 1024"), "{msg}");
    // Kept on request, with the logs.
    assert!(state.join("vmm.err").exists());
    assert!(gone(pid_of(f.dir.path(), "no-agent")));
}

#[test]
fn a_failed_run_leaves_no_container_behind() {
    let f = fixture("ok");
    let mut sb = Sandbox::start(f.cfg.clone()).unwrap();
    // start fails with both output streams attached: the run ends (the pumps
    // are cut loose) and the container is deleted, so the next run can create
    // it again.
    let (r, ..) = run_capture(&mut sb, &["nostart"], None);
    let msg = r.unwrap_err().to_string();
    assert_eq!(
        msg,
        "run in sandbox c1: start: agent: internal error: start container c1: exec failed"
    );
    let (r, out, _) = run_capture(&mut sb, &["echo", "again"], None);
    assert_eq!(r.unwrap().code, 0);
    assert_eq!(out, b"again\n");
    sb.stop().unwrap();
}

#[test]
fn stop_kills_a_vmm_that_does_not_exit() {
    let mut f = fixture("ignore-shutdown");
    f.cfg.stop_timeout = Duration::from_millis(300);
    f.cfg.keep_state = true;
    let sb = Sandbox::start(f.cfg.clone()).unwrap();
    let stopped = sb.stop().unwrap();
    assert!(stopped.killed && stopped.shutdown_acknowledged);
    assert_eq!(stopped.vmm.signal, Some(libc::SIGKILL));
    assert!(stopped.reason.contains("SIGKILL"), "{}", stopped.reason);
    assert_eq!(
        stopped.kept_state_dir.as_deref(),
        Some(f.cfg.state_dir.as_path())
    );
    assert!(gone(pid_of(f.dir.path(), "ignore-shutdown")));
}

#[test]
fn a_vmm_dying_mid_run_is_reported_with_its_status() {
    let f = fixture("ok");
    let mut sb = Sandbox::start(f.cfg.clone()).unwrap();
    let (r, ..) = run_capture(&mut sb, &["die"], None);
    let err = r.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RunError::VmGone { .. }), "{msg}");
    assert!(
        msg.starts_with("run in sandbox c1: wait: the VM stopped: moat-vmm exited with status 5: "),
        "{msg}"
    );
    assert!(msg.contains("KVM could not run a vCPU"), "{msg}");
    let stopped = sb.stop().unwrap();
    assert_eq!(stopped.vmm.code, Some(5));
    assert!(!stopped.shutdown_acknowledged);
    assert_eq!(stopped.reason, "KVM could not run a vCPU");
}

#[test]
fn dropping_a_sandbox_kills_its_vm() {
    let f = fixture("ignore-shutdown");
    let state = f.cfg.state_dir.clone();
    let sb = Sandbox::start(f.cfg).unwrap();
    drop(sb);
    assert!(gone(pid_of(f.dir.path(), "ignore-shutdown")));
    assert!(!state.exists());
}

#[test]
fn bad_configurations_are_refused_before_anything_is_created() {
    let base = fixture("ok");
    let cases: Vec<(SandboxConfig, &str)> = vec![
        (
            SandboxConfig {
                id: "a/b".into(),
                ..base.cfg.clone()
            },
            "start sandbox a/b: container id \"a/b\": character '/' not allowed",
        ),
        (
            SandboxConfig {
                layers: vec![],
                ..base.cfg.clone()
            },
            "start sandbox c1: no image layers",
        ),
        (
            SandboxConfig {
                layers: vec![base.dir.path().join("nope")],
                ..base.cfg.clone()
            },
            "start sandbox c1: layer 0 ",
        ),
        (
            SandboxConfig {
                layers: vec![base.cfg.kernel.clone()],
                ..base.cfg.clone()
            },
            "start sandbox c1: layer 0 ",
        ),
        (
            SandboxConfig {
                layers: vec![base.cfg.layers[0].clone(); 255],
                ..base.cfg.clone()
            },
            "start sandbox c1: 255 image layers, at most 254",
        ),
        (
            SandboxConfig {
                state_dir: base.dir.path().join("x".repeat(100)),
                ..base.cfg.clone()
            },
            "start sandbox c1: state dir ",
        ),
        (
            SandboxConfig {
                vcpus: 0,
                ..base.cfg.clone()
            },
            "start sandbox c1: vm config: config field `vcpus`",
        ),
    ];
    for (cfg, want) in cases {
        let state = cfg.state_dir.clone();
        let err = Sandbox::start(cfg).unwrap_err().to_string();
        assert!(err.starts_with(want), "want {want:?}, got {err:?}");
        assert!(!state.exists(), "{err}");
    }
    // An existing state dir is not reused, and not removed.
    fs::create_dir_all(&base.cfg.state_dir).unwrap();
    let err = Sandbox::start(base.cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("create state dir"), "{err}");
    assert!(base.cfg.state_dir.exists());
}

#[test]
fn stderr_summary_and_exit_reason() {
    let text = "   0.1s DEBUG vcpus started elapsed_us=1\n\
                moat-vmm: boot-marker 12 us\n\
                moat-vmm: config field `kernel`: missing\n";
    assert_eq!(
        summarize_stderr(text),
        "moat-vmm: config field `kernel`: missing"
    );
    assert_eq!(summarize_stderr("a\n\nb\nc\nd\ne\nf\n"), "b; c; d; e; f");
    assert_eq!(summarize_stderr(""), "(no output on stderr)");
    let long = format!("moat-vmm: {}\u{e9}", "x".repeat(3000));
    let s = summarize_stderr(&long);
    assert!(
        s.starts_with("...") && s.len() <= MAX_STDERR_QUOTE + 4,
        "{}",
        s.len()
    );
    assert_eq!(
        vmm_exit_reason(
            "moat-vmm: boot-marker 1 us\nmoat-vmm: guest kernel panic: oops (exit status 3)\n"
        ),
        Some("guest kernel panic: oops".into())
    );
    assert_eq!(vmm_exit_reason("nothing\n"), None);
}

/// A writer that fails after `ok` bytes.
struct Failing {
    ok: usize,
    got: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.got >= self.ok {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "reader went away",
            ));
        }
        self.got += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_does_not_stop_the_drain() {
    // Three reads' worth: the first is written, the rest drained and dropped.
    let data = vec![7u8; 3 * (64 << 10)];
    let mut src = io::Cursor::new(data);
    let mut w = Failing { ok: 1, got: 0 };
    let first = OnceLock::new();
    let err = pump(&mut src, &mut w, &first).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(src.position(), 3 * (64 << 10), "everything was read");
    assert!(first.get().is_some());
    // An empty stream: no first byte.
    let first = OnceLock::new();
    pump(io::empty(), &mut Vec::new(), &first).unwrap();
    assert!(first.get().is_none());
}

/// The fake moat-vmm + agent.
mod fake {
    use super::*;

    #[derive(Default)]
    struct St {
        /// Counts creates: a stream of an earlier container ends quietly.
        generation: u64,
        /// A container exists (created, not deleted).
        exists: bool,
        args: Vec<String>,
        started: bool,
        stdin_wanted: bool,
        stdin: Option<Vec<u8>>,
        expected: usize,
        done: usize,
    }

    type Shared = Arc<(Mutex<St>, Condvar)>;

    pub fn main(config: &Path, mode: &str) -> i32 {
        let text = fs::read_to_string(config).unwrap();
        let cfg = match VmConfig::from_json(&text, config).and_then(|c| c.validate().map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("moat-vmm: {e}");
                return 2;
            }
        };
        // As moat-vmm: devices (the vsock socket among them) come first, then the
        // kernel is loaded.
        if mode == "early-exit" {
            eprintln!(
                "moat-vmm: virtio-fs moat: share /upper: No such file or directory (os error 2)"
            );
            return 2;
        }
        if mode == "no-socket" {
            std::thread::sleep(Duration::from_secs(60));
            return 1;
        }
        let ConsoleOutput::File(console) = &cfg.console.output else {
            panic!("console not in a file")
        };
        let console = Arc::new(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(console)
                .unwrap(),
        ));
        let listener = UnixListener::bind(&cfg.vsock.as_ref().unwrap().uds_path).unwrap();
        eprintln!("   0.001s DEBUG vm and guest memory ready elapsed_us=900");
        let kernel = cfg.kernel.clone().unwrap();
        if !kernel.exists() {
            eprintln!(
                "moat-vmm: open kernel {}: No such file or directory (os error 2)",
                kernel.display()
            );
            return 2;
        }
        eprintln!("   0.002s DEBUG vcpus started elapsed_us=1500");
        eprintln!("moat-vmm: boot-marker 2500 us");
        writeln!(
            console.lock().unwrap(),
            "1970-01-01T00:00:00Z  INFO moat-agent up version=fake uptime_s=0.01 oneshot=false"
        )
        .unwrap();
        let shared: Shared = Arc::default();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (shared, console, mode) = (shared.clone(), console.clone(), mode.to_owned());
            std::thread::spawn(move || serve(conn, &shared, &console, &mode));
        }
        1
    }

    fn serve(mut conn: UnixStream, shared: &Shared, console: &Mutex<File>, mode: &str) {
        // The VMM's side of the hybrid vsock handshake.
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while !line.ends_with('\n') {
            if conn.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            line.push(char::from(byte[0]));
        }
        assert_eq!(line, "CONNECT 1024\n");
        if mode == "no-agent" {
            return; // the guest answers RST: the VMM closes the connection
        }
        conn.write_all(b"OK 1073741824\n").unwrap();
        let hello: Hello =
            serde_json::from_slice(&read_frame(&mut conn, MAX_CONTROL_FRAME).unwrap().unwrap())
                .unwrap();
        write_json(
            &mut conn,
            &HelloReply {
                version: 1,
                agent: "fake".into(),
                error: None,
            },
        )
        .unwrap();
        match hello.channel {
            Channel::Control => control(conn, shared, console, mode),
            Channel::Stream { stream, .. } => match stream {
                StreamKind::Stdin => stdin(conn, shared),
                kind => output(conn, shared, kind),
            },
        }
    }

    fn control(mut conn: UnixStream, shared: &Shared, console: &Mutex<File>, mode: &str) {
        let (lock, cv) = &**shared;
        while let Ok(Some(payload)) = read_frame(&mut conn, MAX_CONTROL_FRAME) {
            let frame: RequestFrame = serde_json::from_slice(&payload).unwrap();
            let response = match frame.request {
                Request::Ping => Response::Pong {
                    agent: "fake".into(),
                    version: 1,
                },
                Request::Create(req) => {
                    let args = req.spec.process().as_ref().unwrap().args().clone().unwrap();
                    assert_eq!(req.rootfs.unwrap().upper, "/mnt/moat/upper/diff");
                    let mut st = lock.lock().unwrap();
                    if st.exists {
                        reply_error(
                            &mut conn,
                            frame.id,
                            ErrorCode::AlreadyExists,
                            "container c1: already exists",
                        );
                        continue;
                    }
                    *st = St {
                        generation: st.generation + 1,
                        exists: true,
                        args,
                        stdin_wanted: req.stdio.stdin,
                        expected: usize::from(req.stdio.stdout) + usize::from(req.stdio.stderr),
                        ..St::default()
                    };
                    writeln!(
                        console.lock().unwrap(),
                        "1970-01-01T00:00:00Z  INFO create stages container={} rootfs_us=10 \
                         bundle_us=20 helper_us=30 devices_stdio_us=40",
                        req.container
                    )
                    .unwrap();
                    Response::Created {
                        pid: 42,
                        agent_us: 1000,
                    }
                }
                Request::Start { .. } => {
                    let mut st = lock.lock().unwrap();
                    if st.args[0] == "nostart" {
                        reply_error(
                            &mut conn,
                            frame.id,
                            ErrorCode::Internal,
                            "start container c1: exec failed",
                        );
                        continue;
                    }
                    st.started = true;
                    cv.notify_all();
                    Response::Started { agent_us: 500 }
                }
                Request::Wait(_) => {
                    let st = lock.lock().unwrap();
                    if st.args[0] == "die" {
                        eprintln!("moat-vmm: KVM could not run a vCPU (exit status 5)");
                        std::process::exit(5);
                    }
                    let st = cv.wait_while(st, |s| s.done < s.expected).unwrap();
                    let code = match st.args[0].as_str() {
                        "fail" => st.args[1].parse().unwrap(),
                        _ => 0,
                    };
                    Response::Exited(ExitStatus::exited(code))
                }
                Request::Delete { .. } => {
                    lock.lock().unwrap().exists = false;
                    cv.notify_all();
                    Response::Deleted
                }
                Request::Shutdown => {
                    write_json(
                        &mut conn,
                        &ResponseFrame {
                            id: frame.id,
                            outcome: Outcome::Ok(Response::ShuttingDown),
                        },
                    )
                    .unwrap();
                    if mode != "ignore-shutdown" {
                        eprintln!("moat-vmm: the guest rebooted (exit status 0)");
                        std::process::exit(0);
                    }
                    continue;
                }
                other => panic!("fake agent: unexpected {other:?}"),
            };
            write_json(
                &mut conn,
                &ResponseFrame {
                    id: frame.id,
                    outcome: Outcome::Ok(response),
                },
            )
            .unwrap();
        }
    }

    fn reply_error(conn: &mut UnixStream, id: u64, code: ErrorCode, message: &str) {
        write_json(
            conn,
            &ResponseFrame {
                id,
                outcome: Outcome::Error(WireError::new(code, message)),
            },
        )
        .unwrap();
    }

    fn stdin(mut conn: UnixStream, shared: &Shared) {
        let mut data = Vec::new();
        while let Ok(Some(frame)) = read_frame(&mut conn, MAX_DATA_FRAME) {
            if frame.is_empty() {
                break;
            }
            data.extend_from_slice(&frame);
        }
        let (lock, cv) = &**shared;
        lock.lock().unwrap().stdin = Some(data);
        cv.notify_all();
    }

    fn output(mut conn: UnixStream, shared: &Shared, kind: StreamKind) {
        let (lock, cv) = &**shared;
        let generation = lock.lock().unwrap().generation;
        let st = cv
            .wait_while(lock.lock().unwrap(), |s| {
                s.generation == generation
                    && s.exists
                    && (!s.started || (s.stdin_wanted && s.stdin.is_none()) || s.args[0] == "die")
            })
            .unwrap();
        if st.generation != generation || !st.exists {
            return; // its container is gone
        }
        let data: Vec<u8> = match (st.args[0].as_str(), kind) {
            ("echo", StreamKind::Stdout) => format!("{}\n", st.args[1..].join(" ")).into_bytes(),
            ("fail", StreamKind::Stdout) => b"out\n".to_vec(),
            ("fail", StreamKind::Stderr) => b"err\n".to_vec(),
            ("cat", StreamKind::Stdout) => st.stdin.clone().unwrap_or_default(),
            _ => Vec::new(),
        };
        drop(st);
        for chunk in data.chunks(MAX_DATA_FRAME) {
            write_frame(&mut conn, chunk).unwrap();
        }
        write_frame(&mut conn, &[]).unwrap();
        lock.lock().unwrap().done += 1;
        cv.notify_all();
    }
}
