//! The agent end to end in a real microVM: moat-vmm boots the guest kernel with the
//! static moat-agent as `/init` (agent/mkinitramfs.sh), shares a busybox rootfs as two
//! layers (the upper one with a whiteout) over virtio-fs, and moat-agent-ctl runs
//! `sh -c 'echo out; echo err >&2; exit 3'` over vsock. The container's stdout, stderr
//! and exit status must come back, and the one-shot VM must power off cleanly. A first
//! container checks cgroup v2 memory and pids limits, which host mode cannot apply.
//!
//! Needs: `make kernel static testhost`, with moat-vmm's vsock and virtio-fs devices
//! and moat-agent-ctl in the static binaries. In the nested tier everything runs inside
//! the test host; in the direct tier, here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use moat_tests::{artifact_or_skip, host_or_skip, notice, Artifacts};

const TEST: &str = "agent_runs_a_container_in_a_microvm";

#[test]
fn agent_runs_a_container_in_a_microvm() {
    let a = Artifacts::from_env();
    let Some(kernel) = artifact_or_skip(TEST, a.guest_kernel()) else {
        return;
    };
    let Some(vmm) = artifact_or_skip(TEST, a.static_bin("moat-vmm")) else {
        return;
    };
    let Some(agent) = artifact_or_skip(TEST, a.static_bin("moat-agent")) else {
        return;
    };
    // `make static` builds every moat-agent binary; it copies moat-agent-ctl to
    // build/bin only once the Makefile lists it, so also look where cargo put it.
    let built_ctl = a
        .root
        .join("target/x86_64-unknown-linux-gnu/release/moat-agent-ctl");
    let ctl_found = a.static_bin("moat-agent-ctl").or_else(|e| {
        if built_ctl.exists() {
            Ok(built_ctl.clone())
        } else {
            Err(e)
        }
    });
    let Some(ctl) = artifact_or_skip(TEST, ctl_found) else {
        return;
    };
    let Some(host) = host_or_skip(TEST) else {
        return;
    };

    // The initramfs: the static agent as /init.
    let work = a.runs_dir.join("agent-e2e");
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("initrd.cpio");
    let mk = Command::new(a.root.join("agent/mkinitramfs.sh"))
        .arg(&initrd)
        .arg(&agent)
        .output()
        .unwrap();
    assert!(
        mk.status.success(),
        "mkinitramfs.sh failed: {}",
        String::from_utf8_lossy(&mk.stderr)
    );

    let script: PathBuf = a.root.join("agent/tests/e2e/agent-e2e.sh");
    let out = host
        .timeout(Duration::from_secs(600))
        .add(&kernel, "/e2e/vmlinux")
        .add(&initrd, "/e2e/initrd.cpio")
        .add(&vmm, "/e2e/moat-vmm")
        .add(&ctl, "/e2e/moat-agent-ctl")
        .add(&script, "/e2e/agent-e2e.sh")
        .run(&["/e2e/agent-e2e.sh", "/e2e"])
        .unwrap();
    let stdout = out.stdout_str();
    let stderr = out.stderr_str();
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("E2E "))
        .unwrap_or("no summary");
    let timing = stderr
        .lines()
        .find(|l| l.starts_with("timing:"))
        .unwrap_or("no timing");
    let marker = stdout
        .lines()
        .find(|l| l.contains("boot-marker"))
        .unwrap_or("no boot marker");
    let agent_up = stdout
        .lines()
        .find(|l| l.starts_with("uptime_s="))
        .unwrap_or("agent start not logged");
    let stages = stdout
        .lines()
        .find(|l| l.starts_with("rootfs_us="))
        .unwrap_or("create stages not logged");
    notice(&format!(
        "{TEST} ({} tier, emulated timings): {summary}; {marker}; agent up at guest \
         {agent_up}; {timing}; agent create stages: {stages}",
        out.tier
    ));
    let missing_devices = stderr.contains("not supported") || stderr.contains("unsupported");
    assert!(
        summary.contains("ctl_exit=3") && summary.contains("vmm_exit=0"),
        "{}the container or the VM did not end as expected\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        if missing_devices {
            "moat-vmm lacks a device the agent needs (virtio-vsock and virtio-fs): "
        } else {
            ""
        }
    );
    // cgroup v2 limits inside the guest, seen from the container and in the stats.
    assert!(
        stdout.contains("limits 67108864 100\nlimits_exit=0\n"),
        "{stdout}\n{stderr}"
    );
    let stats = stderr
        .lines()
        .find(|l| l.starts_with("stats:"))
        .unwrap_or("");
    assert!(
        stats.contains("memory_limit=67108864") && stats.contains("pids_limit=100"),
        "{stderr}"
    );
    // Output, and the layers: the upper layer's whiteout hides /etc/gone, its motd wins.
    assert!(stdout.contains("limits_exit=0\nout\nlayer 1\n"), "{stdout}");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(!stderr.contains("whiteout-ignored"), "{stderr}");
    // The agent's first act reached the VMM's boot-time marker.
    assert!(
        marker.starts_with("moat-vmm: boot-marker "),
        "{stdout}\n{stderr}"
    );
}
