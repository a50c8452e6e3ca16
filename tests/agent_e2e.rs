//! The agent end to end in a real microVM: moat-vmm boots the guest kernel with the
//! static moat-agent as `/init` (agent/mkinitramfs.sh), shares a busybox rootfs as two
//! layers (the upper one with a whiteout) over virtio-fs, and moat-agent-ctl runs
//! `sh -c 'echo out; echo err >&2; exit 3'` over vsock. The container's stdout, stderr
//! and exit status must come back, and the one-shot VM must power off cleanly.
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
    let Some(ctl) = artifact_or_skip(TEST, a.static_bin("moat-agent-ctl")) else {
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
    notice(&format!("{TEST} ({} tier): {summary}; {timing}", out.tier));
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
    // Output, and the layers: the upper layer's whiteout hides /etc/gone, its motd wins.
    assert!(stdout.starts_with("out\nlayer 1\n"), "{stdout}");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(!stderr.contains("whiteout-ignored"), "{stderr}");
}
