//! Host-mode integration tests: the real agent binary, in a private mount namespace on
//! this host, creating busybox containers with libcontainer over a two-layer overlay.
//! Run as root. Every test has its own agent and temporary directory, and its own
//! container ids (the cgroup v2 hierarchy is shared).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{opts, out_err, sh, Agent};
use moat_agent::protocol::{ErrorCode, EtcFiles, HostEntry, StdioConfig, StreamKind};

#[test]
fn exit_codes_and_stdout_stderr_separation() {
    let agent = Agent::start();
    let (code, out, err) = agent.run("codes-3", sh("echo out; echo err >&2; exit 3"));
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    assert_eq!(agent.run("codes-0", opts(["true"])).0, 0);
    assert_eq!(agent.run("codes-1", opts(["false"])).0, 1);
}

#[test]
fn missing_binary_is_127_and_non_executable_is_126() {
    let agent = Agent::start();
    let (code, out, err) = agent.run("exec-127", opts(["no-such-binary"]));
    assert_eq!(code, 127, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    let (code, _, err) = agent.run("exec-127b", opts(["/bin/no-such-binary"]));
    assert_eq!(code, 127, "{err}");
    let (code, _, err) = agent.run("exec-126", opts(["/bin/notexec"]));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn sigkill_is_137() {
    let agent = Agent::start();
    let mut c = agent.client();
    agent.create(
        &mut c,
        "kill-137",
        opts(["sleep", "100"]),
        StdioConfig::default(),
    );
    c.start("kill-137").unwrap();
    c.signal("kill-137", None, 9).unwrap();
    let st = c.wait("kill-137", None).unwrap();
    assert_eq!((st.code, st.signal), (137, Some(9)));
    // Signalling an exited process is a state error, not a stray kill.
    let err = c.signal("kill-137", None, 9).unwrap_err();
    assert_eq!(err.wire().unwrap().code, ErrorCode::InvalidState);
    c.delete("kill-137", false).unwrap();
}

#[test]
fn rootfs_layers_whiteout_and_opaque_dir() {
    let agent = Agent::start();
    let (code, out, err) = agent.run(
        "layers",
        sh("cat /etc/motd; ls /etc/gone 2>&1; ls /data; echo new > /newfile"),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // The top layer wins, the whiteout deletes, the opaque dir hides the lower one.
    assert_eq!(lines[0], "layer 1");
    assert!(lines[1].contains("No such file"), "{out}");
    assert_eq!(lines[2], "c");
    assert_eq!(
        std::fs::read_to_string(agent.upper("layers").join("newfile")).unwrap(),
        "new\n"
    );
}

#[test]
fn fork_works_under_default_seccomp() {
    // Subshells and command substitution fork under Docker's clone rule.
    let agent = Agent::start();
    let (code, out, err) = agent.run("fork", sh("(exit 4); echo $?; echo $(echo sub)"));
    assert_eq!((code, out.as_str()), (0, "4\nsub\n"), "{err}");
}

fn probe(out: &str) -> std::collections::HashMap<String, i32> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

#[test]
fn docker_seccomp_profile_is_enforced() {
    let agent = Agent::start();
    let (code, out, err) = agent.run("seccomp", opts(["/bin/seccomp-probe"]));
    assert_eq!(code, 0, "{err}");
    let r = probe(&out);
    const EPERM: i32 = 1;
    const ENOSYS: i32 = 38;
    assert_eq!(r["clone_plain"], 0, "{out}");
    assert_eq!(r["fork"], 0, "{out}");
    assert_eq!(r["clone_newuser"], EPERM, "{out}");
    assert_eq!(r["clone_newns"], EPERM, "{out}");
    assert_eq!(r["clone3"], ENOSYS, "{out}");
    assert_eq!(r["socket_vsock"], EPERM, "{out}");
    assert_eq!(r["socket_unix"], 0, "{out}");
    assert_eq!(r["unshare"], EPERM, "{out}");
    assert_eq!(r["mount"], EPERM, "{out}");

    // Unconfined, the same calls pass the filter (and fail or succeed on their own).
    let mut o = opts(["/bin/seccomp-probe"]);
    o.seccomp_unconfined = true;
    let (_, out, _) = agent.run("seccomp-off", o);
    let r = probe(&out);
    assert_ne!(r["clone3"], ENOSYS, "{out}");
    assert_ne!(r["socket_vsock"], EPERM, "{out}");
}

#[test]
fn stdin_stream_reaches_the_process() {
    let agent = Agent::start();
    let mut c = agent.client();
    let stdio = StdioConfig {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    agent.create(
        &mut c,
        "stdin",
        opts(["sh", "-c", "tr a-z A-Z; echo done >&2"]),
        stdio,
    );
    let out = agent.collect("stdin", None, StreamKind::Stdout);
    let err = agent.collect("stdin", None, StreamKind::Stderr);
    let mut input = agent.input("stdin", None);
    c.start("stdin").unwrap();
    input.write_all(b"hello ").unwrap();
    input.write_all(b"world\n").unwrap();
    input.close().unwrap();
    assert_eq!(c.wait("stdin", None).unwrap().code, 0);
    assert_eq!(out.join().unwrap(), b"HELLO WORLD\n");
    assert_eq!(err.join().unwrap(), b"done\n");
    // A second stdin attachment after the end is refused.
    let e = moat_agent::client::attach_input(agent.connect(), "stdin", None).unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::InvalidState);
    c.delete("stdin", false).unwrap();
}

#[test]
fn close_stdin_request_ends_input() {
    let agent = Agent::start();
    let mut c = agent.client();
    let stdio = StdioConfig {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    agent.create(
        &mut c,
        "closein",
        opts(["sh", "-c", "cat; echo eof"]),
        stdio,
    );
    let out = agent.collect("closein", None, StreamKind::Stdout);
    c.start("closein").unwrap();
    c.close_stdin("closein", None).unwrap();
    assert_eq!(c.wait("closein", None).unwrap().code, 0);
    assert_eq!(out.join().unwrap(), b"eof\n");
    // stderr was not requested: attaching it is a bad request.
    let e = moat_agent::client::attach_output(agent.connect(), "closein", None, StreamKind::Stderr)
        .unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::BadRequest);
    c.delete("closein", false).unwrap();
}

#[test]
fn tty_mode_and_resize() {
    let agent = Agent::start();
    let mut c = agent.client();
    let mut o = sh("stty size; read x; stty size; exit 5");
    o.terminal = true;
    o.console_size = Some((24, 80));
    let stdio = StdioConfig {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    agent.create(&mut c, "tty", o, stdio);
    let mut out = agent.output("tty", None, StreamKind::Stdout);
    let mut input = agent.input("tty", None);
    c.start("tty").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "terminal ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    c.resize_tty("tty", None, 40, 100).unwrap();
    input.write_all(b"\n").unwrap();
    out.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("40 100"), "{text:?}");
    // A terminal turns \n into \r\n.
    assert!(text.contains("24 80\r\n"), "{text:?}");
    assert_eq!(c.wait("tty", None).unwrap().code, 5);
    // resize on a process without a terminal is a state error.
    c.delete("tty", false).unwrap();
    agent.create(&mut c, "notty", opts(["true"]), StdioConfig::default());
    let e = c.resize_tty("notty", None, 1, 1).unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::InvalidState);
    c.delete("notty", false).unwrap();
}

#[test]
fn exec_while_running_and_sigterm() {
    let agent = Agent::start();
    let mut c = agent.client();
    // The init process traps SIGTERM (as PID 1 of its namespace it would ignore it
    // otherwise).
    agent.create(
        &mut c,
        "execs",
        sh("trap 'echo got-term; exit 7' TERM; while true; do sleep 0.05; done"),
        out_err(),
    );
    let init_out = agent.collect("execs", None, StreamKind::Stdout);
    let _init_err = agent.collect("execs", None, StreamKind::Stderr);
    c.start("execs").unwrap();

    let exec =
        |c: &mut moat_agent::client::Client<_>, id: &str, o: moat_agent::spec::SpecOptions| {
            let spec = moat_agent::spec::docker_default(&o).unwrap();
            c.exec(moat_agent::protocol::ExecRequest {
                container: "execs".into(),
                exec: id.into(),
                process: spec.process().clone().unwrap(),
                stdio: out_err(),
            })
            .unwrap()
        };
    exec(&mut c, "e1", sh("echo from-exec; cat /etc/motd; exit 5"));
    let out = agent.collect("execs", Some("e1"), StreamKind::Stdout);
    let err = agent.collect("execs", Some("e1"), StreamKind::Stderr);
    assert_eq!(c.wait("execs", Some("e1")).unwrap().code, 5);
    assert_eq!(out.join().unwrap(), b"from-exec\nlayer 1\n");
    assert!(err.join().unwrap().is_empty());

    // An exec process is not PID 1: SIGTERM's default action ends it with 143.
    exec(&mut c, "e2", opts(["sleep", "100"]));
    let _o = agent.collect("execs", Some("e2"), StreamKind::Stdout);
    let _e = agent.collect("execs", Some("e2"), StreamKind::Stderr);
    c.signal("execs", Some("e2"), 15).unwrap();
    let st = c.wait("execs", Some("e2")).unwrap();
    assert_eq!((st.code, st.signal), (143, Some(15)));

    // Duplicate exec ids are refused.
    let spec = moat_agent::spec::docker_default(&opts(["true"])).unwrap();
    let e = c
        .exec(moat_agent::protocol::ExecRequest {
            container: "execs".into(),
            exec: "e1".into(),
            process: spec.process().clone().unwrap(),
            stdio: StdioConfig::default(),
        })
        .unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::AlreadyExists);

    // The init process handles SIGTERM.
    c.signal("execs", None, 15).unwrap();
    assert_eq!(c.wait("execs", None).unwrap().code, 7);
    assert_eq!(init_out.join().unwrap(), b"got-term\n");
    c.delete("execs", false).unwrap();
}

#[test]
fn hundred_mib_of_output_arrives_intact() {
    use sha2::{Digest, Sha256};
    let agent = Agent::start();
    let mut c = agent.client();
    // tee copies the data to the container's stdout (fd 3) and to sha256sum, whose
    // digest goes to stderr.
    agent.create(
        &mut c,
        "bulk",
        sh("exec 3>&1; head -c 104857600 /dev/urandom | tee /proc/self/fd/3 | sha256sum >&2"),
        out_err(),
    );
    let mut out = agent.output("bulk", None, StreamKind::Stdout);
    let err = agent.collect("bulk", None, StreamKind::Stderr);
    let t0 = Instant::now();
    c.start("bulk").unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(c.wait("bulk", None).unwrap().code, 0);
    assert_eq!(total, 100 << 20);
    let ours = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let theirs = String::from_utf8(err.join().unwrap()).unwrap();
    assert_eq!(theirs.split_whitespace().next(), Some(ours.as_str()));
    println!(
        "measured: 100 MiB stdout through the host-mode agent in {secs:.2} s ({:.0} MiB/s)",
        100.0 / secs
    );
    c.delete("bulk", false).unwrap();
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn slow_reader_gets_back_pressure_without_loss() {
    let agent = Agent::start();
    let mut c = agent.client();
    // 6.9 MB of numbered lines, written as fast as the pipe allows.
    agent.create(&mut c, "slow", opts(["seq", "1", "1000000"]), out_err());
    let mut out = agent.output("slow", None, StreamKind::Stdout);
    let _err = agent.collect("slow", None, StreamKind::Stderr);
    c.start("slow").unwrap();
    let rss_before = rss_kib(agent.pid());
    let read_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiter = {
        let mut c2 = agent.client();
        let read_so_far = read_so_far.clone();
        std::thread::spawn(move || {
            let st = c2.wait("slow", None).unwrap();
            (st, read_so_far.load(std::sync::atomic::Ordering::SeqCst))
        })
    };
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut max_rss = rss_before;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        read_so_far.store(got.len(), std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(15));
        max_rss = max_rss.max(rss_kib(agent.pid()));
    }
    let (st, read_at_exit) = waiter.join().unwrap();
    assert_eq!(st.code, 0);
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    assert!(
        got == expected.as_bytes(),
        "output differs ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    // The process stayed blocked while the host was slow: its exit was reported only
    // when the host had read all but what fits in the socket's buffers.
    assert!(
        read_at_exit + (1 << 20) >= got.len(),
        "exit reported when the host had read {read_at_exit} of {} bytes",
        got.len()
    );
    // Bounded buffering: the agent did not soak up the 6.9 MB.
    assert!(
        max_rss < rss_before + 4096,
        "agent RSS grew from {rss_before} to {max_rss} KiB"
    );
    c.delete("slow", false).unwrap();
}

#[test]
fn malformed_messages_get_errors_and_the_agent_keeps_serving() {
    use moat_agent::protocol::{read_frame, write_frame, HelloReply, Outcome, ResponseFrame};
    let agent = Agent::start();
    let mut s = agent.connect();
    moat_agent::client::handshake(&mut s, moat_agent::protocol::Channel::Control).unwrap();
    let mut ask = |payload: &[u8]| -> ResponseFrame {
        write_frame(&mut s, payload).unwrap();
        let f = read_frame(&mut s, 1 << 20).unwrap().unwrap();
        serde_json::from_slice(&f).unwrap()
    };
    let r = ask(b"{not json");
    assert_eq!(r.id, 0);
    assert!(matches!(r.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadRequest));
    let r = ask(br#"{"id":9,"request":{"type":"format_disk"}}"#);
    assert_eq!(r.id, 9);
    assert!(matches!(r.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadRequest));
    let r = ask(br#"{"id":10,"request":{"type":"start","container":"../etc"}}"#);
    assert!(matches!(r.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadRequest));
    let r = ask(br#"{"id":11,"request":{"type":"wait","container":"nope"}}"#);
    assert!(matches!(r.outcome, Outcome::Error(ref e) if e.code == ErrorCode::NotFound));
    // Same connection still works.
    let r = ask(br#"{"id":12,"request":{"type":"ping"}}"#);
    assert!(matches!(r.outcome, Outcome::Ok(_)), "{r:?}");
    // An oversized frame: error reply, then the connection is closed.
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let f = read_frame(&mut s, 1 << 20).unwrap().unwrap();
    let r: ResponseFrame = serde_json::from_slice(&f).unwrap();
    assert!(matches!(r.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadRequest));
    assert!(read_frame(&mut s, 1 << 20).unwrap().is_none());

    // A truncated frame, then a hang-up.
    let mut t = agent.connect();
    moat_agent::client::handshake(&mut t, moat_agent::protocol::Channel::Control).unwrap();
    t.write_all(&100u32.to_le_bytes()).unwrap();
    t.write_all(b"short").unwrap();
    drop(t);
    // Garbage instead of a handshake, and a wrong version.
    let mut g = agent.connect();
    write_frame(&mut g, b"\x00\x01garbage").unwrap();
    let f = read_frame(&mut g, 1 << 20).unwrap().unwrap();
    let hr: HelloReply = serde_json::from_slice(&f).unwrap();
    assert_eq!(hr.error.unwrap().code, ErrorCode::BadRequest);
    let mut v = agent.connect();
    write_frame(&mut v, br#"{"version":99,"channel":{"kind":"control"}}"#).unwrap();
    let f = read_frame(&mut v, 1 << 20).unwrap().unwrap();
    let hr: HelloReply = serde_json::from_slice(&f).unwrap();
    assert_eq!(hr.error.unwrap().code, ErrorCode::UnsupportedVersion);

    // The agent still serves, and still runs containers.
    let mut c = agent.client();
    assert!(!c.ping().unwrap().is_empty());
    assert_eq!(agent.run("after-garbage", opts(["true"])).0, 0);
}

#[test]
fn docker_identity_capabilities_and_paths() {
    let agent = Agent::start();
    let mut o = sh(
        "id -u; id -g; id -G; grep CapBnd /proc/self/status; grep CapEff /proc/self/status; \
         cat /proc/interrupts 2>&1 | wc -c; \
         (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-rw || echo sys-ro; \
         hostname; cat /etc/hostname /etc/resolv.conf; grep db /etc/hosts; echo $HOSTNAME",
    );
    o.uid = 1000;
    o.gid = 1000;
    o.additional_gids = vec![10];
    o.hostname = "web1".into();
    let mut c = agent.client();
    let mut req = agent.create_request("ident", o, out_err());
    req.etc = Some(EtcFiles {
        hostname: "web1".into(),
        ip: None,
        extra_hosts: vec![HostEntry {
            ip: "10.0.0.5".into(),
            names: vec!["db".into()],
        }],
        dns: Default::default(),
    });
    c.create(req).unwrap();
    let out = agent.collect("ident", None, StreamKind::Stdout);
    let err = agent.collect("ident", None, StreamKind::Stderr);
    c.start("ident").unwrap();
    assert_eq!(c.wait("ident", None).unwrap().code, 0);
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    let err = String::from_utf8(err.join().unwrap()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], &["1000", "1000", "1000 10"], "{out}\n{err}");
    // Docker's 14 default capabilities in the bounding set; none effective for uid 1000.
    assert_eq!(lines[3], "CapBnd:\t00000000a80425fb", "{out}");
    assert_eq!(lines[4], "CapEff:\t0000000000000000", "{out}");
    assert_eq!(
        lines[5], "0",
        "masked /proc/interrupts must read empty: {out}"
    );
    assert_eq!(lines[6], "sys-ro", "{out}");
    assert_eq!(&lines[7..9], &["web1", "web1"], "{out}");
    assert_eq!(lines[9], "# Generated by moat.", "{out}");
    assert!(out.contains("nameserver 8.8.8.8"), "{out}");
    assert!(out.contains("10.0.0.5\tdb"), "{out}");
    assert_eq!(lines.last(), Some(&"web1"), "{out}");
    c.delete("ident", false).unwrap();
}

#[test]
fn root_gets_dockers_effective_capabilities() {
    let agent = Agent::start();
    let (code, out, err) = agent.run("caps-root", sh("grep CapEff /proc/self/status"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "CapEff:\t00000000a80425fb\n");
}

#[test]
fn cgroup_limits_are_refused_in_host_mode_and_stats_work() {
    let agent = Agent::start();
    let mut c = agent.client();
    let mut o = opts(["true"]);
    o.memory_limit = Some(64 << 20);
    let e = c
        .create(agent.create_request("limits", o, StdioConfig::default()))
        .unwrap_err();
    let w = e.wire().unwrap();
    assert_eq!(w.code, ErrorCode::NotSupported);
    assert!(
        w.message.contains("memory") && w.message.contains("host mode"),
        "{}",
        w.message
    );
    // Nothing was left behind: the same id can be created.
    agent.create(
        &mut c,
        "limits",
        sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"),
        StdioConfig::default(),
    );
    c.start("limits").unwrap();
    assert_eq!(c.wait("limits", None).unwrap().code, 0);
    let st = c.stats("limits").unwrap();
    assert!(st.cpu_usage_usec.unwrap() > 0, "{st:?}");
    assert_eq!(
        st.memory_usage_bytes, None,
        "no memory controller in host mode"
    );
    c.delete("limits", false).unwrap();
}

#[test]
fn default_rlimits_need_cap_sys_resource() {
    let agent = Agent::start();
    let mut c = agent.client();
    let spec_default = moat_agent::spec::SpecOptions::new(["true"]);
    let can_raise = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap() & (1 << 24) != 0)
        .unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let r = c.create(agent.create_request("rlimits", spec_default, StdioConfig::default()));
    if can_raise || hard >= moat_agent::spec::DEFAULT_NOFILE {
        r.unwrap();
        c.delete("rlimits", true).unwrap();
    } else {
        let e = r.unwrap_err();
        assert_eq!(e.wire().unwrap().code, ErrorCode::NotSupported);
        assert!(
            e.wire().unwrap().message.contains("CAP_SYS_RESOURCE"),
            "{e}"
        );
    }
}

#[test]
fn lifecycle_errors_and_delete() {
    let agent = Agent::start();
    let mut c = agent.client();
    agent.create(
        &mut c,
        "life",
        opts(["sleep", "100"]),
        StdioConfig::default(),
    );
    let e = c
        .create(agent.create_request("life", opts(["true"]), StdioConfig::default()))
        .unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::AlreadyExists);
    c.start("life").unwrap();
    let e = c.start("life").unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::InvalidState);
    let e = c.delete("life", false).unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::InvalidState);
    c.delete("life", true).unwrap();
    let e = c.wait("life", None).unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::NotFound);
    // The overlay is gone, the upper layer stays (moatd owns it), the id is free.
    assert!(!agent.dir.path().join("run/containers/life").exists());
    assert!(agent.upper("life").exists());
    assert!(!std::path::Path::new("/sys/fs/cgroup/unified/moat/life").exists());
    agent.create(&mut c, "life", opts(["true"]), StdioConfig::default());
    // A created, never started container can be deleted without force.
    c.delete("life", false).unwrap();
}

#[test]
fn latency_create_to_first_byte() {
    let agent = Agent::start();
    let mut c = agent.client();
    let mut totals = Vec::new();
    let mut agent_share = Vec::new();
    for i in 0..5 {
        let id = format!("lat{i}");
        let t0 = Instant::now();
        let req = agent.create_request(&id, opts(["echo", "x"]), out_err());
        let (_, create_us) = c.create(req).unwrap();
        let mut out = agent.output(&id, None, StreamKind::Stdout);
        let _err = agent.collect(&id, None, StreamKind::Stderr);
        let start_us = c.start(&id).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(out.read(&mut b).unwrap(), 1);
        let total = t0.elapsed();
        c.wait(&id, None).unwrap();
        c.delete(&id, false).unwrap();
        totals.push(total.as_secs_f64() * 1000.0);
        agent_share.push((create_us + start_us) as f64 / 1000.0);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (t, a) = (med(&mut totals), med(&mut agent_share));
    println!(
        "measured: host mode, create -> first stdout byte: median {t:.1} ms over 5 runs; \
         agent's own time in create+start: {a:.1} ms ({:.0}%)",
        100.0 * a / t
    );
    assert!(a <= t);
}

#[test]
fn device_rules_are_enforced() {
    // Docker's rules allow mknod of any device but opening only the default set; the
    // agent's BPF device filter enforces them on cgroup v2. /dev/kmsg (1:11) opens
    // write-only without any capability, so only the filter can refuse it.
    let agent = Agent::start();
    let script = "mknod /tmp/kmsg c 1 11 && echo made; \
                  if (: > /tmp/kmsg) 2>/dev/null; then echo opened; else echo denied; fi; \
                  : > /dev/null && echo null-ok";
    let (code, out, err) = agent.run("devices", sh(script));
    assert_eq!(
        (code, out.as_str()),
        (0, "made\ndenied\nnull-ok\n"),
        "{err}"
    );

    // With a rule that allows it, the same open works: the filter, not something else,
    // refused it above.
    let mut c = agent.client();
    let mut req = agent.create_request("devices-allowed", sh(script), out_err());
    let linux = req.spec.linux_mut().as_mut().unwrap();
    let mut resources = linux.resources().clone().unwrap();
    let mut rules = resources.devices().clone().unwrap();
    rules.push(
        oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(oci_spec::runtime::LinuxDeviceType::C)
            .major(1i64)
            .minor(11i64)
            .access("w")
            .build()
            .unwrap(),
    );
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    c.create(req).unwrap();
    let out = agent.collect("devices-allowed", None, StreamKind::Stdout);
    let _err = agent.collect("devices-allowed", None, StreamKind::Stderr);
    c.start("devices-allowed").unwrap();
    assert_eq!(c.wait("devices-allowed", None).unwrap().code, 0);
    assert_eq!(out.join().unwrap(), b"made\nopened\nnull-ok\n");
    c.delete("devices-allowed", false).unwrap();
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<String> {
    let mut z = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == pid.to_string() {
            z.push(stat);
        }
    }
    z
}

#[test]
fn orphans_are_reaped() {
    // Without a pid namespace, a background child outlives its parent and re-parents
    // to the agent (PID 1 in the guest, a subreaper here), which must reap it.
    let agent = Agent::start();
    let mut c = agent.client();
    let mut req = agent.create_request("orphans", sh("sleep 0.3 & sleep 0.3 & exit 0"), out_err());
    let linux = req.spec.linux_mut().as_mut().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(ns));
    c.create(req).unwrap();
    let out = agent.collect("orphans", None, StreamKind::Stdout);
    let _err = agent.collect("orphans", None, StreamKind::Stderr);
    c.start("orphans").unwrap();
    // The output streams end only when the background sleeps (which hold them) exit.
    assert_eq!(c.wait("orphans", None).unwrap().code, 0);
    assert!(out.join().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(zombies_of(agent.pid()), Vec::<String>::new());
    c.delete("orphans", false).unwrap();
}

#[test]
fn volumes_binds_and_tmpfs() {
    let agent = Agent::start();
    let vol = agent.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    let mut o = sh("cat /data/in; echo from-container > /data/out; \
                    mount | grep -c ' /scratch type tmpfs'; echo t > /scratch/t && cat /scratch/t");
    o.mounts = vec![
        oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(&vol)
            .options(vec!["rbind".to_owned(), "rw".to_owned()])
            .build()
            .unwrap(),
        oci_spec::runtime::MountBuilder::default()
            .destination("/scratch")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_owned(),
                "nodev".to_owned(),
                "size=1m".to_owned(),
            ])
            .build()
            .unwrap(),
    ];
    let (code, out, err) = agent.run("volumes", o);
    assert_eq!((code, out.as_str()), (0, "from host\n1\nt\n"), "{err}");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from-container\n"
    );
    // tmpfs contents are the container's alone.
    assert!(!agent.upper("volumes").join("scratch/t").exists());
}

#[test]
fn oneshot_agent_stops_after_the_last_exit_is_reported() {
    let mut agent = Agent::start();
    let mut c = agent.client();
    c.configure(moat_agent::protocol::Configure {
        oneshot: Some(true),
        shares: Vec::new(),
    })
    .unwrap();
    // Shares cannot be mounted in host mode: a clear error, not a crash.
    let e = c
        .configure(moat_agent::protocol::Configure {
            oneshot: None,
            shares: vec![moat_agent::protocol::Share {
                tag: "moat".into(),
                path: "/mnt/moat".into(),
            }],
        })
        .unwrap_err();
    assert_eq!(e.wire().unwrap().code, ErrorCode::NotSupported);
    agent.create(&mut c, "oneshot", opts(["true"]), out_err());
    let _o = agent.collect("oneshot", None, StreamKind::Stdout);
    let _e = agent.collect("oneshot", None, StreamKind::Stderr);
    c.start("oneshot").unwrap();
    assert_eq!(c.wait("oneshot", None).unwrap().code, 0);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "the one-shot agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn exec_with_a_terminal() {
    // `docker exec -it`: an exec process gets its own pty, with the requested size.
    let agent = Agent::start();
    let mut c = agent.client();
    agent.create(
        &mut c,
        "exec-tty",
        opts(["sleep", "100"]),
        StdioConfig::default(),
    );
    c.start("exec-tty").unwrap();
    let mut o = sh("stty size; tty; exit 4");
    o.terminal = true;
    o.console_size = Some((30, 90));
    let spec = moat_agent::spec::docker_default(&o).unwrap();
    let stdio = StdioConfig {
        stdin: false,
        stdout: true,
        stderr: false,
    };
    c.exec(moat_agent::protocol::ExecRequest {
        container: "exec-tty".into(),
        exec: "t1".into(),
        process: spec.process().clone().unwrap(),
        stdio,
    })
    .unwrap();
    let out = agent.collect("exec-tty", Some("t1"), StreamKind::Stdout);
    assert_eq!(c.wait("exec-tty", Some("t1")).unwrap().code, 4);
    let text = String::from_utf8(out.join().unwrap()).unwrap();
    assert!(text.starts_with("30 90\r\n/dev/pts/"), "{text:?}");
    c.delete("exec-tty", true).unwrap();
}

#[test]
fn agent_logs_never_reach_container_output() {
    // libcontainer logs from inside the container's processes after they put the
    // container's stderr on descriptor 2; the helper logs to its own descriptor.
    let agent = Agent::start_with_log("trace");
    let (code, out, err) = agent.run("quiet", opts(["true"]));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}
