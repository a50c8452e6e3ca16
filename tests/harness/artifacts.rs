//! Where the end-to-end tests find what the Makefile built. Each path comes from
//! an environment variable (so `make test` and CI can point elsewhere) with a
//! default under `build/` of the workspace. Owns only lookup: it builds nothing.

use std::path::{Path, PathBuf};

/// A required artifact that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{what} not found at {} (${var}); build it with `{hint}`", path.display())]
pub struct ArtifactError {
    pub what: &'static str,
    pub path: PathBuf,
    pub var: &'static str,
    pub hint: &'static str,
}

/// Paths of the built artifacts.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The workspace root (holds `tests/kvm-host/`).
    pub root: PathBuf,
    /// Guest kernel: `MOAT_GUEST_KERNEL`, default `build/kernel/x86_64/vmlinux`.
    pub guest_kernel: PathBuf,
    /// Static binaries: `MOAT_BIN_DIR`, default `build/bin`.
    pub bin_dir: PathBuf,
    /// Test host kernel and initramfs: `MOAT_TESTHOST_DIR`, default `build/testhost`.
    pub testhost_dir: PathBuf,
    /// Reference-boot initramfs: `MOAT_REF_INITRD`, default
    /// `build/testhost/ref-initrd.cpio`.
    pub ref_initrd: PathBuf,
    /// arm64 guest kernel: `MOAT_GUEST_KERNEL_ARM64`, default
    /// `build/kernel/arm64/Image`.
    pub guest_kernel_arm64: PathBuf,
    /// Static arm64 binaries: `MOAT_BIN_DIR_ARM64`, default `build/bin-arm64`.
    pub bin_dir_arm64: PathBuf,
    /// arm64 test host: `MOAT_TESTHOST_ARM64_DIR`, default `build/testhost-arm64`.
    pub testhost_arm64_dir: PathBuf,
    /// Where runs keep their files: `MOAT_TEST_RUNS`, default `build/test-runs`.
    pub runs_dir: PathBuf,
    /// The guest initramfs with moat-agent as `/init` (`make initrd`):
    /// `MOAT_AGENT_INITRD`, default `build/initrd/agent.cpio`.
    pub agent_initrd: PathBuf,
}

impl Artifacts {
    /// Looks the paths up in the environment.
    pub fn from_env() -> Self {
        Self::with_lookup(|k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Same as [`Artifacts::from_env`] with another variable source (for tests).
    pub fn with_lookup(var: impl Fn(&str) -> Option<PathBuf>) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let build = root.join("build");
        let pick = |name: &str, default: PathBuf| var(name).unwrap_or(default);
        let testhost_dir = pick("MOAT_TESTHOST_DIR", build.join("testhost"));
        Artifacts {
            guest_kernel: pick("MOAT_GUEST_KERNEL", build.join("kernel/x86_64/vmlinux")),
            bin_dir: pick("MOAT_BIN_DIR", build.join("bin")),
            ref_initrd: pick("MOAT_REF_INITRD", testhost_dir.join("ref-initrd.cpio")),
            guest_kernel_arm64: pick("MOAT_GUEST_KERNEL_ARM64", build.join("kernel/arm64/Image")),
            bin_dir_arm64: pick("MOAT_BIN_DIR_ARM64", build.join("bin-arm64")),
            testhost_arm64_dir: pick("MOAT_TESTHOST_ARM64_DIR", build.join("testhost-arm64")),
            runs_dir: pick("MOAT_TEST_RUNS", build.join("test-runs")),
            agent_initrd: pick("MOAT_AGENT_INITRD", build.join("initrd/agent.cpio")),
            testhost_dir,
            root,
        }
    }

    /// `tests/kvm-host/<name>`: the test-host scripts.
    pub fn script(&self, name: &str) -> PathBuf {
        self.root.join("tests/kvm-host").join(name)
    }

    /// The guest kernel, if built.
    pub fn guest_kernel(&self) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.guest_kernel,
            "guest kernel",
            "MOAT_GUEST_KERNEL",
            "make kernel",
        )
    }

    /// A static binary from `make static`, if built.
    pub fn static_bin(&self, name: &str) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.bin_dir.join(name),
            "static binary",
            "MOAT_BIN_DIR",
            "make static",
        )
    }

    /// The arm64 guest kernel (an `Image`), if built.
    pub fn guest_kernel_arm64(&self) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.guest_kernel_arm64,
            "arm64 guest kernel",
            "MOAT_GUEST_KERNEL_ARM64",
            "make kernel ARCH=arm64",
        )
    }

    /// A static arm64 binary from `make static-arm64`, if built.
    pub fn static_bin_arm64(&self, name: &str) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.bin_dir_arm64.join(name),
            "static arm64 binary",
            "MOAT_BIN_DIR_ARM64",
            "make static-arm64",
        )
    }

    /// The agent's initramfs, if built.
    pub fn agent_initrd(&self) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.agent_initrd,
            "agent initramfs",
            "MOAT_AGENT_INITRD",
            "make initrd",
        )
    }

    /// The reference-boot initramfs, if built.
    pub fn ref_initrd(&self) -> Result<PathBuf, ArtifactError> {
        exists(
            &self.ref_initrd,
            "reference initramfs",
            "MOAT_REF_INITRD",
            "make testhost",
        )
    }
}

fn exists(
    path: &Path,
    what: &'static str,
    var: &'static str,
    hint: &'static str,
) -> Result<PathBuf, ArtifactError> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(ArtifactError {
            what,
            path: path.to_path_buf(),
            var,
            hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_live_under_build() {
        let a = Artifacts::with_lookup(|_| None);
        assert!(a.guest_kernel.ends_with("build/kernel/x86_64/vmlinux"));
        assert!(a.bin_dir.ends_with("build/bin"));
        assert!(a.ref_initrd.ends_with("build/testhost/ref-initrd.cpio"));
        assert!(a.agent_initrd.ends_with("build/initrd/agent.cpio"));
        assert!(a.script("run.sh").ends_with("tests/kvm-host/run.sh"));
        assert!(a.guest_kernel_arm64.ends_with("build/kernel/arm64/Image"));
        assert!(a.bin_dir_arm64.ends_with("build/bin-arm64"));
        assert!(a.testhost_arm64_dir.ends_with("build/testhost-arm64"));
    }

    #[test]
    fn environment_overrides_defaults() {
        let a = Artifacts::with_lookup(|k| match k {
            "MOAT_GUEST_KERNEL" => Some(PathBuf::from("/k/vmlinux")),
            "MOAT_TESTHOST_DIR" => Some(PathBuf::from("/th")),
            _ => None,
        });
        assert_eq!(a.guest_kernel, PathBuf::from("/k/vmlinux"));
        // The reference initramfs follows the test-host directory.
        assert_eq!(a.ref_initrd, PathBuf::from("/th/ref-initrd.cpio"));
    }

    #[test]
    fn missing_artifact_names_variable_and_fix() {
        let a = Artifacts::with_lookup(|k| {
            (k == "MOAT_BIN_DIR").then(|| PathBuf::from("/nonexistent-moat-bin"))
        });
        let e = a.static_bin("moat-kvm-smoke").unwrap_err().to_string();
        assert!(e.contains("/nonexistent-moat-bin/moat-kvm-smoke"), "{e}");
        assert!(
            e.contains("MOAT_BIN_DIR") && e.contains("make static"),
            "{e}"
        );
    }
}
