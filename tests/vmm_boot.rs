//! End-to-end: moat-vmm (static, `make static`) boots the guest kernel (`make
//! kernel`) to a static `/init` (`tests/vmm-boot/init.c`) that writes the
//! boot-time marker through `/dev/mem` and reboots. In the nested tier this runs
//! inside the test host, in the direct tier here. One run covers the PVH entry,
//! the 64-bit entry, two vCPUs, a guest panic (exit status 3), and the guest's
//! own virtio drivers on moat-vmm's virtio-mmio transport: rng, block, virtio-fs
//! (read and write) and vsock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moat_tests::{artifact_or_skip, host_or_skip, notice, skip, Artifacts};

/// Builds the test initramfs (just `/init`; the kernel's built-in initramfs
/// provides `/dev/console`) in `dir`.
fn build_initrd(root: &Path, dir: &Path) -> Result<PathBuf, String> {
    let staging = dir.join("initrd-root");
    std::fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(staging.join("init"))
        .arg(root.join("tests/vmm-boot/init.c"))
        .output()
        .map_err(|e| format!("run cc (make deps: build-essential): {e}"))?;
    if !cc.status.success() {
        return Err(format!(
            "cc -static init.c: {}",
            String::from_utf8_lossy(&cc.stderr)
        ));
    }
    let initrd = dir.join("initrd.cpio");
    let out = std::fs::File::create(&initrd).map_err(|e| format!("create initrd: {e}"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("echo init | cpio -o -H newc -R 0:0 --quiet")
        .current_dir(&staging)
        .stdout(out)
        .status()
        .map_err(|e| format!("run cpio (make deps: cpio): {e}"))?;
    if !status.success() {
        return Err(format!("cpio exited with {status}"));
    }
    Ok(initrd)
}

/// Per case: exit status, console lines, stderr lines.
type Cases = BTreeMap<String, (i32, Vec<String>, Vec<String>)>;

fn parse_cases(stdout: &str) -> Cases {
    let mut cases = Cases::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("case ") {
            if let Some((name, status)) = rest.split_once(" status=") {
                let status = status.trim().parse().unwrap_or(-1);
                cases.insert(name.to_string(), (status, Vec::new(), Vec::new()));
            }
        } else if let Some((name, text)) = line.split_once(" console: ") {
            if let Some(c) = cases.get_mut(name) {
                c.1.push(text.to_string());
            }
        } else if let Some((name, text)) = line.split_once(" stderr: ") {
            if let Some(c) = cases.get_mut(name) {
                c.2.push(text.to_string());
            }
        }
    }
    cases
}

fn marker_us(stderr: &[String]) -> Option<u64> {
    stderr.iter().find_map(|l| {
        l.strip_prefix("moat-vmm: boot-marker ")?
            .strip_suffix(" us")?
            .parse()
            .ok()
    })
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
    let work = a.runs_dir.join(format!("vmm-boot-{}", std::process::id()));
    let initrd = match build_initrd(&a.root, &work) {
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
        .run(&["sh", "./boot-matrix.sh"])
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let stdout = out.stdout_str();
    assert_eq!(
        out.status,
        0,
        "stdout: {stdout}\nstderr: {}",
        out.stderr_str()
    );
    let cases = parse_cases(&stdout);
    for name in ["pvh", "linux64", "smp"] {
        let (status, console, stderr) = cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing: {stdout}"));
        let reached = console
            .iter()
            .find(|l| l.contains("moat-boot-test: init reached"));
        let marker = marker_us(stderr);
        notice(&format!(
            "{test} ({} tier) {name}: status {status}, boot marker {marker:?} us, {reached:?}",
            out.tier
        ));
        assert_eq!(*status, 0, "{name}: {stderr:?}\nconsole: {console:?}");
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
        let stderr = &cases[name].2;
        assert!(
            stderr.iter().any(|l| l.contains(entry)),
            "{name}: {stderr:?}"
        );
    }
    let smp = &cases["smp"].1;
    assert!(smp.iter().any(|l| l.ends_with(", 2 cpus")), "smp: {smp:?}");
    let (status, console, stderr) = cases
        .get("panic")
        .unwrap_or_else(|| panic!("case panic missing: {stdout}"));
    assert_eq!(*status, 3, "panic: {stderr:?}\nconsole: {console:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("guest kernel panic: Attempted to kill init!")),
        "panic: {stderr:?}"
    );

    let (status, console, stderr) = cases
        .get("devices")
        .unwrap_or_else(|| panic!("case devices missing: {stdout}"));
    notice(&format!("{test} devices: {console:?}"));
    assert_eq!(*status, 0, "devices: {stderr:?}\nconsole: {console:?}");
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

#[test]
fn case_output_parsing() {
    let cases = parse_cases(
        "case a status=0\na console: hello\na stderr: moat-vmm: boot-marker 12 us\n\
         case b status=3\nb stderr: x\nnoise\n",
    );
    assert_eq!(cases["a"].0, 0);
    assert_eq!(cases["a"].1, vec!["hello"]);
    assert_eq!(marker_us(&cases["a"].2), Some(12));
    assert_eq!(cases["b"].0, 3);
    assert_eq!(marker_us(&cases["b"].2), None);
}
