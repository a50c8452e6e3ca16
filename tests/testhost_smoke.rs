//! The nested test host gives a working `/dev/kvm`: `moat-kvm-smoke` (static,
//! from `make static`) runs its tiny real-mode guest there. This test always uses
//! the nested test host, whatever the probe says, because it tests that host.

use moat_tests::{artifact_or_skip, notice, Artifacts, TestHost};

#[test]
fn kvm_guest_runs_inside_the_nested_test_host() {
    let name = "kvm_guest_runs_inside_the_nested_test_host";
    let Some(smoke) = artifact_or_skip(name, Artifacts::from_env().static_bin("moat-kvm-smoke"))
    else {
        return;
    };
    let out = TestHost::nested()
        .add(&smoke, "/bin/moat-kvm-smoke")
        .run(&["moat-kvm-smoke"])
        .unwrap();
    notice(&format!(
        "{name}: test host ready at {:?}s uptime, run took {:.1}s wall",
        out.ready_uptime,
        out.wall.as_secs_f64()
    ));
    let stdout = out.stdout_str();
    assert_eq!(
        out.status,
        0,
        "smoke failed in the test host\nstdout: {stdout}\nstderr: {}",
        out.stderr_str()
    );
    assert!(stdout.contains("guest: moat-kvm-smoke "), "{stdout}");
    assert!(stdout.contains("moat-kvm-smoke: ok:"), "{stdout}");
}

/// The smoke check can fail: with kvm-amd unloaded the same binary must report
/// that it cannot run its guest.
#[test]
fn kvm_smoke_fails_without_kvm_in_the_test_host() {
    let name = "kvm_smoke_fails_without_kvm_in_the_test_host";
    let Some(smoke) = artifact_or_skip(name, Artifacts::from_env().static_bin("moat-kvm-smoke"))
    else {
        return;
    };
    let out = TestHost::nested()
        .add(&smoke, "/bin/moat-kvm-smoke")
        .run(&["sh", "-c", "rmmod kvm_amd && moat-kvm-smoke"])
        .unwrap();
    assert_ne!(out.status, 0, "stdout: {}", out.stdout_str());
    assert!(
        out.stderr_str().contains("moat-kvm-smoke: failed:"),
        "stderr: {}",
        out.stderr_str()
    );
}
