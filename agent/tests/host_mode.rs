//! Host-mode integration tests: the real agent binary, in a private mount namespace on
//! this host, creating busybox containers with libcontainer over a two-layer overlay.
//! Run as root. Every test has its own agent and temporary directory, and its own
//! container ids (the cgroup v2 hierarchy is shared).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{opts, out_err, sh, Agent};
use moat_agent::protocol::{ErrorCode, EtcFiles, HostEntry, StdioConfig, StreamKind};
use moat_agent::spec::SpecOptions;

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
    agent.create(&mut c, "kill-137", opts(["sleep", "100"]), StdioConfig::default());
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
    assert_eq!(std::fs::read_to_string(agent.upper("layers").join("newfile")).unwrap(), "new\n");
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
