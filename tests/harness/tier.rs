//! The tier probe: can this machine's `/dev/kvm` boot an ordinary kernel
//! (`direct`), or must real boots go through the nested test host (`nested`)?
//! Owns only the decision; `tests/kvm-host/probe` is the shell twin and must
//! decide the same way.
//!
//! Guests of another architecture than the build machine's (arm64 guests on
//! x86_64) have one tier only: the nested test host of their architecture, which
//! QEMU's TCG emulates ([`probe_arch`]).

use std::fmt;
use std::path::Path;

/// The architecture of the guests (and of the test host) a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    X86_64,
    Arm64,
}

impl GuestArch {
    /// The build machine's own architecture.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            GuestArch::Arm64
        } else {
            GuestArch::X86_64
        }
    }

    /// The QEMU that runs a test host of this architecture.
    pub fn qemu(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "qemu-system-x86_64",
            GuestArch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The name the Makefile and `tests/kvm-host/*.sh` use (`--arch`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "x86_64",
            GuestArch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for GuestArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where end-to-end commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// On this machine: hardware KVM boots ordinary kernels.
    Direct,
    /// Inside the nested test host under QEMU TCG.
    Nested,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Direct => "direct",
            Tier::Nested => "nested",
        })
    }
}

/// The probe's answer: a tier, or none, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub tier: Option<Tier>,
    pub reason: String,
}

/// What the probe looks at, gathered by [`probe`] (or made up by tests).
#[derive(Debug, Clone, Default)]
pub struct ProbeInput {
    /// `MOAT_E2E_TIER`, if set.
    pub forced: Option<String>,
    /// Contents of `/proc/cpuinfo`.
    pub cpuinfo: String,
    /// Names under `/sys/module` that start with `kvm`.
    pub kvm_modules: Vec<String>,
    /// Whether `/dev/kvm` opens read-write.
    pub dev_kvm: bool,
    /// Whether `qemu-system-x86_64` is on `PATH` (needed for `nested`).
    pub qemu: bool,
}

/// Probes this machine.
pub fn probe() -> Probe {
    probe_from(&gather())
}

/// Gathers the facts the probe decides on, from this machine and environment.
pub fn gather() -> ProbeInput {
    let kvm_modules = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kvm"))
                .collect()
        })
        .unwrap_or_default();
    ProbeInput {
        forced: std::env::var("MOAT_E2E_TIER")
            .ok()
            .filter(|v| !v.is_empty()),
        cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        kvm_modules,
        dev_kvm: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        qemu: on_path("qemu-system-x86_64"),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Probes where tests with `arch` guests run: [`probe`] for the build machine's
/// own architecture; for another one, [`probe_foreign`].
pub fn probe_arch(arch: GuestArch) -> Probe {
    if arch == GuestArch::host() {
        return probe();
    }
    let forced = std::env::var("MOAT_E2E_TIER")
        .ok()
        .filter(|v| !v.is_empty());
    probe_foreign(arch, forced.as_deref(), on_path(arch.qemu()))
}

/// The decision for guests of a foreign architecture: only the nested test host
/// of that architecture can run them, and it needs its QEMU (`qemu` says
/// whether `arch.qemu()` is installed).
pub fn probe_foreign(arch: GuestArch, forced: Option<&str>, qemu: bool) -> Probe {
    let host = GuestArch::host();
    let none = |reason: String| Probe { tier: None, reason };
    match forced {
        Some("direct") => {
            return none(format!(
                "MOAT_E2E_TIER=direct, but {arch} guests cannot run directly on this {host} machine"
            ))
        }
        Some("nested") | None => {}
        Some(other) => {
            return none(format!(
                "MOAT_E2E_TIER={other} is neither direct nor nested"
            ))
        }
    }
    if qemu {
        Probe {
            tier: Some(Tier::Nested),
            reason: format!("{arch} guests on this {host} machine: the nested {arch} test host"),
        }
    } else {
        let pkg = match arch {
            GuestArch::X86_64 => "qemu-system-x86",
            GuestArch::Arm64 => "qemu-system-arm",
        };
        none(format!(
            "{arch} guests on this {host} machine need the nested {arch} test host, and {} is not installed (make deps: {pkg})",
            arch.qemu()
        ))
    }
}

/// The decision, from gathered facts.
pub fn probe_from(input: &ProbeInput) -> Probe {
    let nested = || {
        if input.qemu {
            Ok(())
        } else {
            Err("qemu-system-x86_64 is not installed (make deps)".to_string())
        }
    };
    match input.forced.as_deref() {
        Some("direct") => {
            return Probe {
                tier: Some(Tier::Direct),
                reason: "MOAT_E2E_TIER=direct".into(),
            }
        }
        Some("nested") => {
            return match nested() {
                Ok(()) => Probe {
                    tier: Some(Tier::Nested),
                    reason: "MOAT_E2E_TIER=nested".into(),
                },
                Err(why) => Probe {
                    tier: None,
                    reason: format!("MOAT_E2E_TIER=nested, but {why}"),
                },
            }
        }
        Some(other) => {
            return Probe {
                tier: None,
                reason: format!("MOAT_E2E_TIER={other} is neither direct nor nested"),
            }
        }
        None => {}
    }

    let flags = input
        .cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let hw_flag = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let hw_module = input
        .kvm_modules
        .iter()
        .find(|m| *m == "kvm_intel" || *m == "kvm_amd");
    let why_not_direct = match (input.dev_kvm, hw_flag, hw_module) {
        (true, true, Some(m)) => {
            return Probe {
                tier: Some(Tier::Direct),
                reason: format!("/dev/kvm is hardware KVM ({m})"),
            }
        }
        (false, _, _) => "/dev/kvm cannot be opened".to_string(),
        (true, false, _) => format!(
            "no vmx/svm CPU flag; kvm modules: {}",
            list(&input.kvm_modules)
        ),
        (true, true, None) => format!(
            "no kvm_intel/kvm_amd module; kvm modules: {}",
            list(&input.kvm_modules)
        ),
    };
    match nested() {
        Ok(()) => Probe {
            tier: Some(Tier::Nested),
            reason: format!("{why_not_direct}, so the nested test host"),
        },
        Err(why) => Probe {
            tier: None,
            reason: format!("{why_not_direct}, and {why}"),
        },
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(flags: &str, modules: &[&str], dev_kvm: bool, qemu: bool) -> ProbeInput {
        ProbeInput {
            forced: None,
            cpuinfo: format!("processor\t: 0\nflags\t\t: fpu {flags} sse\n"),
            kvm_modules: modules.iter().map(|s| s.to_string()).collect(),
            dev_kvm,
            qemu,
        }
    }

    #[test]
    fn hardware_kvm_is_direct() {
        let p = probe_from(&input("vmx", &["kvm", "kvm_intel"], true, false));
        assert_eq!(p.tier, Some(Tier::Direct), "{}", p.reason);
        let p = probe_from(&input("svm", &["kvm", "kvm_amd"], true, true));
        assert_eq!(p.tier, Some(Tier::Direct), "{}", p.reason);
    }

    #[test]
    fn kvm_pvm_is_nested() {
        // This build machine: /dev/kvm works, but it is kvm_pvm and no vmx/svm.
        let p = probe_from(&input("", &["kvm", "kvm_pvm"], true, true));
        assert_eq!(p.tier, Some(Tier::Nested));
        assert!(p.reason.contains("kvm_pvm"), "{}", p.reason);
    }

    #[test]
    fn flag_without_module_is_nested() {
        let p = probe_from(&input("svm", &["kvm"], true, true));
        assert_eq!(p.tier, Some(Tier::Nested));
    }

    #[test]
    fn no_kvm_and_no_qemu_is_none_with_both_reasons() {
        let p = probe_from(&input("vmx", &[], false, false));
        assert_eq!(p.tier, None);
        assert!(p.reason.contains("/dev/kvm"), "{}", p.reason);
        assert!(p.reason.contains("qemu-system-x86_64"), "{}", p.reason);
    }

    /// `tests/kvm-host/probe` must decide as this module does, on this machine
    /// and under each override.
    #[test]
    fn shell_probe_agrees() {
        let script = crate::Artifacts::with_lookup(|_| None).script("probe");
        for forced in [None, Some("direct"), Some("nested"), Some("sideways")] {
            let mut cmd = std::process::Command::new(&script);
            cmd.env_remove("MOAT_E2E_TIER");
            if let Some(f) = forced {
                cmd.env("MOAT_E2E_TIER", f);
            }
            let out = cmd.output().unwrap();
            let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let mut input = gather();
            input.forced = forced.map(str::to_string);
            let rust = probe_from(&input)
                .tier
                .map(|t| t.to_string())
                .unwrap_or_default();
            assert_eq!(shell, rust, "MOAT_E2E_TIER={forced:?}");
            assert_eq!(out.status.success(), !rust.is_empty(), "{forced:?}");
        }
    }

    #[test]
    fn foreign_guests_only_run_nested() {
        // On this (x86_64) machine arm64 guests go to the arm64 test host.
        let foreign = match GuestArch::host() {
            GuestArch::X86_64 => GuestArch::Arm64,
            GuestArch::Arm64 => GuestArch::X86_64,
        };
        let p = probe_foreign(foreign, None, true);
        assert_eq!(p.tier, Some(Tier::Nested), "{}", p.reason);
        assert_eq!(
            probe_foreign(foreign, Some("nested"), true).tier,
            Some(Tier::Nested)
        );
        let p = probe_foreign(foreign, None, false);
        assert_eq!(p.tier, None);
        assert!(p.reason.contains(foreign.qemu()), "{}", p.reason);
        let p = probe_foreign(foreign, Some("direct"), true);
        assert_eq!(p.tier, None);
        assert!(p.reason.contains("cannot run directly"), "{}", p.reason);
        assert_eq!(probe_foreign(foreign, Some("sideways"), true).tier, None);
        assert_eq!(GuestArch::Arm64.to_string(), "arm64");
        assert_eq!(GuestArch::Arm64.qemu(), "qemu-system-aarch64");
    }

    #[test]
    fn override_wins_and_is_checked() {
        let mut i = input("vmx", &["kvm_intel"], true, true);
        i.forced = Some("nested".into());
        assert_eq!(probe_from(&i).tier, Some(Tier::Nested));
        i.forced = Some("direct".into());
        i.dev_kvm = false;
        assert_eq!(probe_from(&i).tier, Some(Tier::Direct));
        i.forced = Some("sideways".into());
        assert_eq!(probe_from(&i).tier, None);
        i.forced = Some("nested".into());
        i.qemu = false;
        assert_eq!(probe_from(&i).tier, None);
    }
}
