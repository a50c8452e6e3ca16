//! Reference boot: `make kernel`'s vmlinux boots under QEMU (the reference VMM)
//! to our static `/init`, which prints `MOAT-REF-INIT uptime=<s>`. In the nested
//! tier QEMU runs inside the test host on its /dev/kvm; in the direct tier here.

use std::time::Duration;

use moat_tests::{artifact_or_skip, host_or_skip, notice, Artifacts};

fn reference_boot(test: &str, machine: &str) {
    let a = Artifacts::from_env();
    let Some(kernel) = artifact_or_skip(test, a.guest_kernel()) else {
        return;
    };
    let Some(initrd) = artifact_or_skip(test, a.ref_initrd()) else {
        return;
    };
    let Some(host) = host_or_skip(test) else {
        return;
    };
    let out = host
        .with_qemu()
        .timeout(Duration::from_secs(400))
        .add(&kernel, "/ref/vmlinux")
        .add(&initrd, "/ref/initrd.cpio")
        .add(a.script("ref-boot.sh"), "/ref/ref-boot.sh")
        .run(&[
            "./ref/ref-boot.sh",
            "./ref/vmlinux",
            "./ref/initrd.cpio",
            "1",
            machine,
        ])
        .unwrap();
    let stdout = out.stdout_str();
    let result = stdout.lines().find(|l| l.starts_with("ref-boot run=1"));
    notice(&format!("{test} ({} tier): {result:?}", out.tier));
    assert_eq!(
        out.status,
        0,
        "stdout: {stdout}\nstderr: {}",
        out.stderr_str()
    );
    assert!(stdout.contains("MOAT-REF-INIT uptime="), "{stdout}");
    assert!(
        result.is_some_and(|l| l.contains("guest_uptime=")),
        "{stdout}"
    );
}

#[test]
fn guest_kernel_boots_to_init_under_qemu_pc() {
    reference_boot("guest_kernel_boots_to_init_under_qemu_pc", "pc");
}

#[test]
fn guest_kernel_boots_to_init_under_qemu_microvm() {
    reference_boot("guest_kernel_boots_to_init_under_qemu_microvm", "microvm");
}
