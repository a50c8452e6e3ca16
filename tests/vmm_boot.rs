//! End-to-end: moat-vmm (static, `make static`) boots the guest kernel (`make
//! kernel`) to a static `/init` (`tests/vmm-boot/init.c`) that writes the
//! boot-time marker through `/dev/mem` and reboots. In the nested tier this runs
//! inside the test host, in the direct tier here. One run covers the PVH entry,
//! the 64-bit entry, two vCPUs, a guest panic (exit status 3), the VMM's first
//! `KVM_RUN` before the marker, and the guest's own virtio drivers on moat-vmm's
//! virtio-mmio transport: rng, block, a read-write and a read-only virtio-fs
//! share (every write there fails with `EROFS`, the host's files stay as they
//! were), and vsock both ways, 1 MiB each way on a host-initiated and on a
//! guest-initiated connection, checked by sha256 on both ends (the host end is
//! `moat-vsock-peer`, running beside moat-vmm).

use std::collections::BTreeMap;
use std::time::Duration;

use moat_tests::{
    artifact_or_skip, build_boot_initrd, host_or_skip, notice, parse_boot_cases, skip, Artifacts,
    GuestArch,
};

/// moat-vmm's debug line once every thread is confined (`Vmm::start`).
const SECCOMP_LINE: &str = "seccomp filters installed";

/// `elapsed_us` of moat-vmm's debug line `first KVM_RUN vcpu=0 elapsed_us=N`.
fn first_kvm_run_us(stderr: &[String]) -> Option<u64> {
    stderr
        .iter()
        .filter(|l| l.contains("first KVM_RUN") && l.contains("vcpu=0"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("elapsed_us="))?
                .parse()
                .ok()
        })
}

/// One end's account of one vsock connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VsockReport {
    sent: u64,
    sent_sha256: String,
    received: u64,
    received_sha256: String,
}

/// Parses `<kind> sent=N sha256=H received=M sha256=H`, after the guest's
/// `moat-boot-test: vsock ` or the peer's `vsock-peer ` prefix.
fn parse_vsock(rest: &str) -> Option<(String, VsockReport)> {
    let mut words = rest.split_whitespace();
    let kind = words.next()?.to_string();
    let mut field = |key: &str| words.next()?.strip_prefix(key).map(str::to_string);
    let sent = field("sent=")?.parse().ok()?;
    let sent_sha256 = field("sha256=")?;
    let received = field("received=")?.parse().ok()?;
    let received_sha256 = field("sha256=")?;
    let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&sent_sha256) || !hex(&received_sha256) {
        return None;
    }
    Some((
        kind,
        VsockReport {
            sent,
            sent_sha256,
            received,
            received_sha256,
        },
    ))
}

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
    let Some(peer) = artifact_or_skip(test, a.static_bin("moat-vsock-peer")) else {
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
        .add(&peer, "/bin/moat-vsock-peer")
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
    // Every boot runs with the seccomp filters on (the default); the debug
    // line says they are installed, and no thread tripped over them.
    for name in ["pvh", "linux64"] {
        let stderr = &cases[name].stderr;
        assert!(
            stderr.iter().any(|l| l.contains(SECCOMP_LINE)),
            "{name}: {stderr:?}"
        );
    }
    assert!(
        !stdout.contains("bad syscall"),
        "a thread made a syscall its filter refuses: {stdout}"
    );
    // The VMM's own share of boot time, on the boot marker's clock.
    let pvh = &cases["pvh"];
    let first_run = first_kvm_run_us(&pvh.stderr);
    notice(&format!("{test} pvh: first KVM_RUN at {first_run:?} us"));
    assert!(
        first_run.is_some_and(|us| us > 0 && Some(us) < pvh.marker_us()),
        "pvh: first KVM_RUN {first_run:?} us must come before the marker: {:?}",
        pvh.stderr
    );
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
    assert!(
        devices.marker_us().is_some(),
        "devices: no boot marker: {stderr:?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains(SECCOMP_LINE)),
        "devices: filters not installed: {stderr:?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("guest rebooted (exit status 0)")),
        "devices: {stderr:?}"
    );

    // The read-only share: readable, every write refused with EROFS, and the
    // host's files unchanged.
    devices.assert_ro_share_intact(&stdout);

    // vsock: each connection kind carried at least 1 MiB each way, and what one
    // end sent is what the other received, by sha256.
    let guest_reports: BTreeMap<String, VsockReport> = console
        .iter()
        .filter_map(|l| parse_vsock(l.strip_prefix("moat-boot-test: vsock ")?))
        .collect();
    let peer_reports: BTreeMap<String, VsockReport> = stdout
        .lines()
        .filter_map(|l| parse_vsock(l.strip_prefix("devices peer: vsock-peer ")?))
        .collect();
    assert!(
        stdout.contains("devices peer status=0"),
        "moat-vsock-peer failed: {stdout}"
    );
    for kind in ["host-connect", "guest-connect"] {
        let g = guest_reports
            .get(kind)
            .unwrap_or_else(|| panic!("no guest vsock {kind} line: {console:?}"));
        let h = peer_reports
            .get(kind)
            .unwrap_or_else(|| panic!("no peer vsock {kind} line: {stdout}"));
        notice(&format!(
            "{test} vsock {kind}: guest sent {} received {}, host sent {} received {}",
            g.sent, g.received, h.sent, h.received
        ));
        assert!(
            g.sent >= 1 << 20 && h.sent >= 1 << 20,
            "{kind}: {g:?} {h:?}"
        );
        assert_eq!((g.sent, h.sent), (h.received, g.received), "{kind}");
        assert_eq!(g.sent_sha256, h.received_sha256, "{kind}: guest to host");
        assert_eq!(h.sent_sha256, g.received_sha256, "{kind}: host to guest");
    }
}

#[test]
fn first_kvm_run_line_parsing() {
    let lines = |s: &str| s.lines().map(String::from).collect::<Vec<_>>();
    let stderr = lines(
        "   0.2s DEBUG first KVM_RUN vcpu=1 elapsed_us=300\n\
         \x20  0.2s DEBUG first KVM_RUN vcpu=0 elapsed_us=215000\n",
    );
    assert_eq!(first_kvm_run_us(&stderr), Some(215000));
    assert_eq!(first_kvm_run_us(&lines("vcpus started elapsed_us=5")), None);
}

#[test]
fn vsock_report_parsing() {
    let h = "ab".repeat(32);
    let (kind, r) = parse_vsock(&format!(
        "host-connect sent=1048576 sha256={h} received=7 sha256={h}"
    ))
    .unwrap();
    assert_eq!(kind, "host-connect");
    assert_eq!((r.sent, r.received), (1 << 20, 7));
    assert_eq!(r.sent_sha256, h);
    for bad in [
        format!("host-connect sent=1 sha256={h} received=2"),
        format!("host-connect sent=x sha256={h} received=2 sha256={h}"),
        format!("host-connect sent=1 sha256=zz received=2 sha256={h}"),
        "host-connect: connect 2:5001: Connection reset by peer".to_string(),
    ] {
        assert_eq!(parse_vsock(&bad), None, "{bad}");
    }
}
