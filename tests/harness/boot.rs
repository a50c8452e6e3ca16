//! What the moat-vmm boot tests share: the test initramfs (`/init` from
//! `tests/vmm-boot/init.c`, built static for the guest's architecture) and the
//! parser of `tests/vmm-boot/boot-matrix.sh`'s output. Owns nothing else; it
//! runs no VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tier::GuestArch;

/// Builds the boot test's initramfs (just `/init`; the kernel's built-in
/// initramfs provides `/dev/console`) in `dir`, for `arch` guests.
pub fn build_boot_initrd(root: &Path, dir: &Path, arch: GuestArch) -> Result<PathBuf, String> {
    let (cc, package) = match arch {
        GuestArch::X86_64 => ("cc", "build-essential"),
        GuestArch::Arm64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    };
    let staging = dir.join(format!("initrd-root-{arch}"));
    std::fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let out = Command::new(cc)
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(staging.join("init"))
        .arg(root.join("tests/vmm-boot/init.c"))
        .output()
        .map_err(|e| format!("run {cc} (make deps: {package}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc} -static init.c: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let initrd = dir.join(format!("initrd-{arch}.cpio"));
    let file = std::fs::File::create(&initrd).map_err(|e| format!("create initrd: {e}"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("echo init | cpio -o -H newc -R 0:0 --quiet")
        .current_dir(&staging)
        .stdout(file)
        .status()
        .map_err(|e| format!("run cpio (make deps: cpio): {e}"))?;
    if !status.success() {
        return Err(format!("cpio exited with {status}"));
    }
    Ok(initrd)
}

/// One case of the boot matrix: exit status, console lines, stderr lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootCase {
    pub status: i32,
    pub console: Vec<String>,
    pub stderr: Vec<String>,
}

impl BootCase {
    /// The boot-time marker moat-vmm reported, in microseconds.
    pub fn marker_us(&self) -> Option<u64> {
        self.stderr.iter().find_map(|l| {
            l.strip_prefix("moat-vmm: boot-marker ")?
                .strip_suffix(" us")?
                .parse()
                .ok()
        })
    }

    /// The first console line containing `text`.
    pub fn console_line(&self, text: &str) -> Option<&str> {
        self.console
            .iter()
            .find(|l| l.contains(text))
            .map(String::as_str)
    }

    /// Whether a stderr line contains `text`.
    pub fn stderr_has(&self, text: &str) -> bool {
        self.stderr.iter().any(|l| l.contains(text))
    }

    /// The rest of the first console line that starts with `prefix`; panics,
    /// showing the console, when there is none.
    pub fn console_value(&self, prefix: &str) -> String {
        self.console
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", self.console))
            .to_string()
    }

    /// The `devices` case's read-only share checks (`tests/vmm-boot/init.c`):
    /// readable, every write refused with EROFS, and the host's manifest of the
    /// share (`boot-matrix.sh`'s `devices host: ro manifest` line in `stdout`)
    /// the same before and after the boot.
    pub fn assert_ro_share_intact(&self, stdout: &str) {
        assert_eq!(
            self.console_value("moat-boot-test: ro read "),
            "read-only from the host"
        );
        for op in [
            "create",
            "open-write",
            "truncate",
            "mkdir",
            "unlink",
            "rename",
            "chmod",
            "symlink",
        ] {
            assert_eq!(
                self.console_value(&format!("moat-boot-test: ro {op} ")),
                "EROFS",
                "ro {op}"
            );
        }
        let manifest = stdout
            .lines()
            .find_map(|l| l.strip_prefix("devices host: ro manifest before="))
            .unwrap_or_else(|| panic!("no ro manifest: {stdout}"));
        let (before, after) = manifest
            .split_once(" after=")
            .unwrap_or_else(|| panic!("bad ro manifest line: {manifest}"));
        assert_eq!(before.len(), 64, "{manifest}");
        assert_eq!(before, after, "the read-only share changed");
    }
}

/// Parses `boot-matrix.sh`'s output: `case <name> status=<n>`, then
/// `<name> console: ...` and `<name> stderr: ...` lines.
pub fn parse_boot_cases(stdout: &str) -> BTreeMap<String, BootCase> {
    let mut cases = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("case ") {
            if let Some((name, status)) = rest.split_once(" status=") {
                let status = status.trim().parse().unwrap_or(-1);
                cases.insert(
                    name.to_string(),
                    BootCase {
                        status,
                        ..BootCase::default()
                    },
                );
            }
        } else if let Some((name, text)) = line.split_once(" console: ") {
            if let Some(c) = cases.get_mut(name) {
                c.console.push(text.to_string());
            }
        } else if let Some((name, text)) = line.split_once(" stderr: ") {
            if let Some(c) = cases.get_mut(name) {
                c.stderr.push(text.to_string());
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_output_parsing() {
        let cases = parse_boot_cases(
            "case a status=0\na console: hello\na stderr: moat-vmm: boot-marker 12 us\n\
             case b status=3\nb stderr: x\nnoise\n",
        );
        assert_eq!(cases["a"].status, 0);
        assert_eq!(cases["a"].console, vec!["hello"]);
        assert_eq!(cases["a"].marker_us(), Some(12));
        assert_eq!(cases["a"].console_line("hel"), Some("hello"));
        assert_eq!(cases["b"].status, 3);
        assert_eq!(cases["b"].marker_us(), None);
        assert!(cases["b"].stderr_has("x"));
    }
}
