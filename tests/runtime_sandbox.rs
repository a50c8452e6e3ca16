//! moat-runtime's VM sandbox end to end: in the test tier (the nested test host
//! here, or this machine with hardware KVM) `moat-sandbox-check` imports the demo
//! image (the test host's Debian busybox-static) into a fresh image store, then,
//! in one microVM booted by the static moat-vmm with the agent initramfs
//! (`make initrd`):
//! - runs the demo command and checks its output and exit code;
//! - runs a container that exits 3 with `out` on stdout and `err` on stderr;
//! - pipes 1 MiB to `cat` and checks it comes back (sha256);
//! - stops the VM (the agent powers it off, moat-vmm exits 0);
//!
//! and, without booting, starts a sandbox whose kernel is missing and checks the
//! error. Every state directory must be gone afterwards. One test-host boot for
//! all of it; the check program prints `RESULT <json>` lines, judged here. The
//! timings of the demo run are printed (emulated in the nested tier: read them
//! as shares).

use std::collections::BTreeMap;
use std::time::Duration;

use moat_tests::{artifact_or_skip, host_or_skip, notice, Artifacts};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TEST: &str = "runtime_sandbox_runs_containers_in_a_microvm";

/// The stdin pattern of moat-sandbox-check.
fn stdin_sha256() -> String {
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn runtime_sandbox_runs_containers_in_a_microvm() {
    let a = Artifacts::from_env();
    let Some(kernel) = artifact_or_skip(TEST, a.guest_kernel()) else {
        return;
    };
    let Some(initrd) = artifact_or_skip(TEST, a.agent_initrd()) else {
        return;
    };
    let Some(vmm) = artifact_or_skip(TEST, a.static_bin("moat-vmm")) else {
        return;
    };
    let Some(check) = artifact_or_skip(TEST, a.static_bin("moat-sandbox-check")) else {
        return;
    };
    let Some(host) = host_or_skip(TEST) else {
        return;
    };
    // Paths relative to the command's root work in both tiers.
    let mut out = host
        .timeout(Duration::from_secs(900))
        .add(&kernel, "/sandbox/vmlinux")
        .add(&initrd, "/sandbox/agent.cpio")
        .add(&vmm, "/sandbox/moat-vmm")
        .add(&check, "/sandbox/moat-sandbox-check")
        .run(&[
            "./sandbox/moat-sandbox-check",
            "--kernel",
            "./sandbox/vmlinux",
            "--initrd",
            "./sandbox/agent.cpio",
            "--vmm",
            "./sandbox/moat-vmm",
        ])
        .unwrap();
    let stdout = out.stdout_str();
    let stderr = out.stderr_str();
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let results: BTreeMap<String, Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter_map(|v| Some((v.get("case")?.as_str()?.to_owned(), v)))
        .collect();
    let case = |name: &str| -> &Value {
        results
            .get(name)
            .unwrap_or_else(|| panic!("no result for case {name}\n{context}"))
    };
    if out.status != 0 {
        out.keep();
    }

    let t = case("timings");
    let f = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let total = f("start_to_first_output_ms");
    let share = |k: &str| f(k) * 100.0 / total;
    notice(&format!(
        "{TEST} ({} tier, emulated timings in the nested tier: read the shares): VM start -> \
         agent up {:.0} ms, -> first output {total:.0} ms; of that VMM start {:.0} %, kernel boot \
         {:.0} %, agent {:.0} % (start-up {:.0} %, create + start {:.0} %), rest {:.0} %; \
         create -> first output {:.0} ms, agent's create + start {:.0} ms; libcontainer helper \
         {} us, overlay {} us; boot marker {} us, vCPUs at {} us; image import {:.0} ms, VM \
         start {:.0} ms, stop {:.0} ms",
        out.tier,
        f("start_to_agent_ms"),
        share("vmm_start_ms"),
        share("kernel_boot_ms"),
        share("agent_start_ms") + share("agent_create_start_ms"),
        share("agent_start_ms"),
        share("agent_create_start_ms"),
        share("rest_ms"),
        f("create_to_first_output_ms"),
        f("agent_create_start_ms"),
        t["helper_us"],
        t["rootfs_us"],
        t["boot_marker_us"],
        t["vcpus_started_us"],
        case("image")["ms"].as_f64().unwrap_or(f64::NAN),
        case("start")["ms"].as_f64().unwrap_or(f64::NAN),
        case("stop")["ms"].as_f64().unwrap_or(f64::NAN),
    ));

    assert_eq!(out.status, 0, "moat-sandbox-check failed\n{context}");
    assert_eq!(case("image")["layers"], 1, "{context}");

    // A VMM that cannot start: the sandbox says which container, which step,
    // the VMM's status and its own words; nothing is left behind.
    let m = case("missing_kernel");
    let err = m["error"].as_str().unwrap_or_default();
    // moat-vmm opens its vsock socket with its devices, just before it loads
    // the kernel (and removes it as it exits): whether the sandbox saw the
    // socket decides the step it names.
    let after_socket = "start sandbox c-missing: moat-vmm exited with status 2 before the \
                        agent answered: moat-vmm: open kernel ";
    let before_socket = "start sandbox c-missing: moat-vmm exited with status 2 before its \
                         vsock socket appeared: moat-vmm: open kernel ";
    assert!(
        err.starts_with(after_socket) || err.starts_with(before_socket),
        "{err}\n{context}"
    );
    assert!(
        err.contains("no-such-vmlinux: No such file or directory"),
        "{err}"
    );
    assert_eq!(m["state_dir_exists"], false, "{context}");

    let demo = case("demo");
    assert_eq!(demo["exit"], 0, "{context}");
    assert_eq!(demo["stdout"], "hello from a moat microVM\n", "{context}");
    assert_eq!(demo["stderr"], "", "{context}");

    let e3 = case("exit3");
    assert_eq!(e3["exit"], 3, "{context}");
    assert_eq!(e3["stdout"], "out\n", "{context}");
    assert_eq!(e3["stderr"], "err\n", "{context}");

    let s = case("stdin");
    assert_eq!(s["exit"], 0, "{context}");
    assert_eq!(s["got_len"], 1 << 20, "{context}");
    assert_eq!(s["sent_sha256"], stdin_sha256().as_str(), "{context}");
    assert_eq!(s["got_sha256"], s["sent_sha256"], "{context}");

    let stop = case("stop");
    assert_eq!(stop["vmm_code"], 0, "{context}");
    assert_eq!(stop["killed"], false, "{context}");
    assert_eq!(stop["shutdown_acknowledged"], true, "{context}");
    assert_eq!(stop["state_dir_exists"], false, "{context}");

    // Every timing the sandbox promises was taken.
    for k in [
        "start_to_agent_ms",
        "start_to_first_output_ms",
        "create_to_first_output_ms",
        "vmm_start_ms",
        "kernel_boot_ms",
        "agent_start_ms",
        "agent_create_start_ms",
    ] {
        assert!(f(k) > 0.0, "timing {k} missing\n{context}");
    }
}
