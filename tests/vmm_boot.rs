//! End-to-end: moat-vmm (static, `make static`) boots the guest kernel (`make
//! kernel`) to a static `/init` (`tests/vmm-boot/init.c`) that writes the
//! boot-time marker through `/dev/mem` and reboots. In the nested tier this runs
//! inside the test host, in the direct tier here. One run covers the PVH entry,
//! the 64-bit entry, two vCPUs, a guest panic (exit status 3), and the guest's
//! own virtio drivers on moat-vmm's virtio-mmio transport: rng, block, virtio-fs
//! (read and write) and vsock.

use std::time::Duration;

use moat_tests::{
    artifact_or_skip, build_boot_initrd, host_or_skip, notice, parse_boot_cases, skip, Artifacts,
    GuestArch,
};

#[test]
fn moat_vmm_boots_the_guest_kernel_to_init() {
    let test = "moat_vmm_boots_the_guest_kernel_to_init";
    let a = Artifacts::from_env();
    let Some(kernel) = artifact_or_skip(test, a.guest_kernel()) else {
        return;
    };
    let Some(vmm) = artifact_or_skip(test, a.static_bin("moat-vmm")) else {
        return;
    };
    let work = a.runs_dir.join(format!("vmm-boot-{}", std::process::id()));
    let initrd = match build_boot_initrd(&a.root, &work, GuestArch::X86_64) {
        Ok(p) => p,
        Err(e) => {
            skip(test, &e);
            return;
        }
    };
    let Some(host) = host_or_skip(test) else {
        return;
    };
    let out = host
        .timeout(Duration::from_secs(600))
        .add(&vmm, "/bin/moat-vmm")
        .add(&kernel, "/boot/vmlinux")
        .add(&initrd, "/boot/initrd.cpio")
        .add(
            a.root.join("tests/vmm-boot/boot-matrix.sh"),
            "/boot-matrix.sh",
        )
        .run(&["sh", "./boot-matrix.sh", "x86_64"])
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
    for name in ["pvh", "linux64", "smp"] {
        let case = cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing: {stdout}"));
        let (status, console, stderr) = (case.status, &case.console, &case.stderr);
        let reached = case.console_line("moat-boot-test: init reached");
        let marker = case.marker_us();
        notice(&format!(
            "{test} ({} tier) {name}: status {status}, boot marker {marker:?} us, {reached:?}",
            out.tier
        ));
        assert_eq!(status, 0, "{name}: {stderr:?}\nconsole: {console:?}");
        assert!(reached.is_some(), "{name}: /init not reached: {console:?}");
        assert!(marker.is_some(), "{name}: no boot-marker line: {stderr:?}");
        assert!(
            stderr
                .iter()
                .any(|l| l.contains("guest rebooted (exit status 0)")),
            "{name}: {stderr:?}"
        );
    }
    for (name, entry) in [
        ("pvh", "entering through the pvh"),
        ("linux64", "entering through the 64-bit"),
    ] {
        let stderr = &cases[name].stderr;
        assert!(
            stderr.iter().any(|l| l.contains(entry)),
            "{name}: {stderr:?}"
        );
    }
    let smp = &cases["smp"].console;
    assert!(smp.iter().any(|l| l.ends_with(", 2 cpus")), "smp: {smp:?}");
    let panic = cases
        .get("panic")
        .unwrap_or_else(|| panic!("case panic missing: {stdout}"));
    let (status, console, stderr) = (panic.status, &panic.console, &panic.stderr);
    assert_eq!(status, 3, "panic: {stderr:?}\nconsole: {console:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("guest kernel panic: Attempted to kill init!")),
        "panic: {stderr:?}"
    );

    let devices = cases
        .get("devices")
        .unwrap_or_else(|| panic!("case devices missing: {stdout}"));
    let (status, console, stderr) = (devices.status, &devices.console, &devices.stderr);
    notice(&format!("{test} devices: {console:?}"));
    assert_eq!(status, 0, "devices: {stderr:?}\nconsole: {console:?}");
    let line = |prefix: &str| {
        console
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {console:?}"))
            .to_string()
    };
    let random = line("moat-boot-test: hwrng ");
    assert_eq!(random.len(), 32, "{random}");
    assert_ne!(random, "0".repeat(32));
    assert_eq!(line("moat-boot-test: disk "), "moat-disk-ok");
    assert_eq!(line("moat-boot-test: share "), "hello from the host");
    assert!(
        stdout.contains("devices host: from-guest.txt: written by the guest"),
        "{stdout}"
    );
}
