//! End-to-end on arm64: the static aarch64 moat-vmm (`make static-arm64`) boots
//! the arm64 guest kernel (`make kernel ARCH=arm64`) to a static `/init`
//! (`tests/vmm-boot/init.c`, cross-built) that writes the boot-time marker
//! through `/dev/mem` and powers off through PSCI. On an x86_64 build machine
//! this runs inside the nested arm64 test host (QEMU TCG, `-M
//! virt,virtualization=on,gic-version=3`, KVM in Debian's cloud arm64 kernel).
//!
//! One test-host run covers: PSCI SYSTEM_OFF and SYSTEM_RESET (both exit status
//! 0), an x86 boot protocol refused as a configuration error (status 2), two
//! vCPUs started through PSCI CPU_ON, a guest panic (status 3, told apart by the
//! console's panic watch), and the guest's own virtio drivers on moat-vmm's
//! virtio-mmio transport, found through the device tree: rng, block and
//! virtio-fs (read and write, and a read-only share where every write fails
//! with `EROFS`).

use std::time::{Duration, Instant};

use moat_tests::{
    artifact_or_skip, build_boot_initrd, host_for_arch_or_skip, notice, parse_boot_cases, skip,
    Artifacts, GuestArch,
};

#[test]
fn moat_vmm_boots_the_arm64_guest_kernel_to_init() {
    let test = "moat_vmm_boots_the_arm64_guest_kernel_to_init";
    let a = Artifacts::from_env();
    let Some(kernel) = artifact_or_skip(test, a.guest_kernel_arm64()) else {
        return;
    };
    let Some(vmm) = artifact_or_skip(test, a.static_bin_arm64("moat-vmm")) else {
        return;
    };
    let work = a
        .runs_dir
        .join(format!("vmm-boot-arm64-{}", std::process::id()));
    let initrd = match build_boot_initrd(&a.root, &work, GuestArch::Arm64) {
        Ok(p) => p,
        Err(e) => {
            skip(test, &e);
            return;
        }
    };
    let Some(host) = host_for_arch_or_skip(test, GuestArch::Arm64) else {
        return;
    };
    let started = Instant::now();
    let out = host
        .timeout(Duration::from_secs(600))
        .add(&vmm, "/bin/moat-vmm")
        .add(&kernel, "/boot/Image")
        .add(&initrd, "/boot/initrd.cpio")
        .add(
            a.root.join("tests/vmm-boot/boot-matrix.sh"),
            "/boot-matrix.sh",
        )
        .run(&["sh", "./boot-matrix.sh", "arm64"])
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let stdout = out.stdout_str();
    assert_eq!(
        out.status,
        0,
        "stdout: {stdout}\nstderr: {}",
        out.stderr_str()
    );
    let cases = parse_boot_cases(&stdout);
    let case = |name: &str| {
        cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing: {stdout}"))
    };

    for (name, ending) in [
        ("poweroff", "guest powered off (exit status 0)"),
        ("reboot", "guest rebooted (exit status 0)"),
        ("smp", "guest powered off (exit status 0)"),
    ] {
        let c = case(name);
        let reached = c.console_line("moat-boot-test: init reached");
        notice(&format!(
            "{test} ({} tier, emulated timings) {name}: status {}, boot marker {:?} us, {reached:?}",
            out.tier,
            c.status,
            c.marker_us()
        ));
        assert_eq!(c.status, 0, "{name}: {c:?}");
        assert!(reached.is_some(), "{name}: /init not reached: {c:?}");
        assert!(
            c.marker_us().is_some(),
            "{name}: no boot-marker line: {c:?}"
        );
        assert!(c.stderr_has(ending), "{name}: {c:?}");
    }
    // The device tree, the GIC and the vCPU set-up as the debug log tells them.
    let poweroff = case("poweroff");
    for step in [
        "gicv3 created",
        "device tree written",
        "kernel Image loaded",
        // With the seccomp filters on (the default), every thread confined.
        "seccomp filters installed",
    ] {
        assert!(poweroff.stderr_has(step), "no {step:?}: {poweroff:?}");
    }
    let smp = case("smp");
    assert!(
        smp.console_line(", 2 cpus").is_some(),
        "the second vCPU did not come up through PSCI: {smp:?}"
    );

    let pvh = case("pvh");
    assert_eq!(pvh.status, 2, "pvh: {pvh:?}");
    assert!(pvh.stderr_has("is for x86_64"), "pvh: {pvh:?}");

    let panic = case("panic");
    assert_eq!(panic.status, 3, "panic: {panic:?}");
    assert!(
        panic.stderr_has("guest kernel panic: Attempted to kill init!"),
        "panic: {panic:?}"
    );

    let devices = case("devices");
    notice(&format!("{test} devices: {:?}", devices.console));
    assert_eq!(devices.status, 0, "devices: {devices:?}");
    assert!(
        devices.stderr_has("seccomp filters installed"),
        "devices: {devices:?}"
    );
    let random = devices.console_value("moat-boot-test: hwrng ");
    assert_eq!(random.len(), 32, "{random}");
    assert_ne!(random, "0".repeat(32));
    assert_eq!(
        devices.console_value("moat-boot-test: disk "),
        "moat-disk-ok"
    );
    assert_eq!(
        devices.console_value("moat-boot-test: share "),
        "hello from the host"
    );
    assert!(
        stdout.contains("devices host: from-guest.txt: written by the guest"),
        "{stdout}"
    );
    // The read-only share: readable, every write refused with EROFS, the host's
    // files unchanged. (The vsock exchange runs in the x86_64 test only: its
    // host end is built for x86_64.)
    devices.assert_ro_share_intact(&stdout);
    notice(&format!(
        "{test}: whole run {:.1} s wall (test host {:.1} s, ready at {:?} s uptime)",
        started.elapsed().as_secs_f64(),
        out.wall.as_secs_f64(),
        out.ready_uptime
    ));
}
