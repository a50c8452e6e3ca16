//! Smoke tier on this machine's own `/dev/kvm`: tiny guests run even where an
//! ordinary kernel cannot boot (e.g. `kvm_pvm`). Skips, saying why, without
//! `/dev/kvm`; fails then when `MOAT_E2E_REQUIRED=1`.

use std::process::Command;

#[test]
fn kvm_guest_runs_on_local_dev_kvm() {
    let name = "kvm_guest_runs_on_local_dev_kvm";
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        moat_tests::skip(name, &format!("open /dev/kvm: {e}"));
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moat-kvm-smoke"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("moat-kvm-smoke: ok:"), "{stdout}");
}
