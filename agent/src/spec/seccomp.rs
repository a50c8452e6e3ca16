//! Docker's default seccomp profile, kept as data in `seccomp_default.json` (moat's
//! own rule format) and turned into an OCI `LinuxSeccomp` for a given capability set
//! and architecture, with Docker's rules for when a conditional rule applies:
//! - `only_caps`: every listed capability is in the bounding set;
//! - `except_caps`: none of the listed capabilities is in the bounding set;
//! - `only_arches` / `except_arches`: the native architecture (Go names: `amd64`,
//!   `arm64`, ...) is / is not listed;
//! - `min_kernel`: the guest kernel is at least that version.
//!
//! The default action is `SCMP_ACT_ERRNO` with EPERM. This module owns the profile
//! and its evaluation; it must not apply the filter (libcontainer does).

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::SpecError;

/// The profile's data.
const PROFILE_JSON: &str = include_str!("seccomp_default.json");

/// The guest kernel moat builds (Linux 6.1); `min_kernel` conditions compare to it,
/// because the filter runs there, not on the host that builds the spec.
pub const GUEST_KERNEL: (u32, u32) = (6, 1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    #[allow(dead_code)]
    about: String,
    default_errno: u32,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    #[allow(dead_code)]
    why: Option<String>,
    action: Action,
    #[serde(default)]
    errno: Option<u32>,
    names: Vec<String>,
    #[serde(default)]
    args: Vec<Arg>,
    /// Emit one rule per value: libseccomp ANDs the conditions of one rule, so
    /// "argument 0 is one of these values" needs one rule each.
    #[serde(default)]
    one_rule_per_value: Option<ValueSet>,
    #[serde(default)]
    only_caps: Vec<Capability>,
    #[serde(default)]
    except_caps: Vec<Capability>,
    #[serde(default)]
    only_arches: Vec<String>,
    #[serde(default)]
    except_arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Allow,
    Errno,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    MaskedEq,
}

impl Op {
    fn oci(self) -> LinuxSeccompOperator {
        match self {
            Op::Eq => LinuxSeccompOperator::ScmpCmpEq,
            Op::Ne => LinuxSeccompOperator::ScmpCmpNe,
            Op::MaskedEq => LinuxSeccompOperator::ScmpCmpMaskedEq,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    index: usize,
    op: Op,
    /// For `masked_eq`: the mask (OCI `value`), compared to `value_two` after masking.
    value: u64,
    #[serde(default)]
    value_two: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueSet {
    index: usize,
    op: Op,
    values: Vec<u64>,
}

/// Go's name for the architecture this agent runs on, as the profile's arch
/// conditions use it.
pub fn native_go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The seccomp architectures a filter for `go_arch` covers (the native one and its
/// compat ABIs, as Docker's `archMap`).
fn architectures(go_arch: &str) -> Vec<Arch> {
    match go_arch {
        "amd64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "arm64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        _ => vec![Arch::ScmpArchNative],
    }
}

fn applies(rule: &Rule, caps: &[Capability], go_arch: &str) -> bool {
    let has = |c: &Capability| caps.contains(c);
    if !rule.only_caps.iter().all(has) {
        return false;
    }
    if rule.except_caps.iter().any(has) {
        return false;
    }
    if !rule.only_arches.is_empty() && !rule.only_arches.iter().any(|a| a == go_arch) {
        return false;
    }
    if rule.except_arches.iter().any(|a| a == go_arch) {
        return false;
    }
    if let Some(min) = rule.min_kernel {
        if min > GUEST_KERNEL {
            return false;
        }
    }
    true
}

fn oci_arg(
    index: usize,
    op: Op,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSeccompArg, SpecError> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op.oci())
        .value(value);
    if let Some(v2) = value_two {
        b = b.value_two(v2);
    }
    b.build().map_err(|e| SpecError::Seccomp(e.to_string()))
}

fn syscall(rule: &Rule, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, SpecError> {
    let mut b = LinuxSyscallBuilder::default().names(rule.names.clone());
    b = match rule.action {
        Action::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
        Action::Errno => b
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(rule.errno.unwrap_or(libc::EPERM as u32)),
    };
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().map_err(|e| SpecError::Seccomp(e.to_string()))
}

/// Docker's default profile for a container whose bounding set is `caps`, on the
/// architecture `go_arch` (see [`native_go_arch`]).
pub fn docker_profile(caps: &[Capability], go_arch: &str) -> Result<LinuxSeccomp, SpecError> {
    let profile: Profile = serde_json::from_str(PROFILE_JSON)
        .map_err(|e| SpecError::Seccomp(format!("embedded profile: {e}")))?;
    let mut syscalls = Vec::new();
    for rule in profile.rules.iter().filter(|r| applies(r, caps, go_arch)) {
        if let Some(set) = &rule.one_rule_per_value {
            for v in &set.values {
                syscalls.push(syscall(rule, vec![oci_arg(set.index, set.op, *v, None)?])?);
            }
            continue;
        }
        let args = rule
            .args
            .iter()
            .map(|a| oci_arg(a.index, a.op, a.value, a.value_two))
            .collect::<Result<Vec<_>, _>>()?;
        syscalls.push(syscall(rule, args)?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(profile.default_errno)
        .architectures(architectures(go_arch))
        .syscalls(syscalls)
        .build()
        .map_err(|e| SpecError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DOCKER_DEFAULT_CAPS;

    fn allowed(p: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn default_caps_on_amd64() {
        let p = docker_profile(&DOCKER_DEFAULT_CAPS, "amd64").unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        // Plain allow list.
        assert_eq!(allowed(&p, "read").len(), 1);
        assert_eq!(allowed(&p, "arch_prctl").len(), 1);
        // Not for the default capability set.
        for denied in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "reboot",
            "kcmp",
            "iopl",
            "syslog",
            "arm_fadvise64_64",
        ] {
            assert!(
                allowed(&p, denied).is_empty(),
                "{denied} must not be allowed"
            );
        }
        // CAP_SYS_CHROOT is a Docker default capability, so chroot is allowed.
        assert_eq!(allowed(&p, "chroot").len(), 1);
        // ptrace (min kernel 4.8) is allowed on the 6.1 guest.
        assert_eq!(allowed(&p, "ptrace").len(), 1);
        // clone: only without namespace flags.
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.op(), arg.value(), arg.value_two()),
            (
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                0x7E02_0000,
                Some(0)
            )
        );
        // clone3: ENOSYS.
        let clone3 = allowed(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(38));
        // socket: anything but AF_VSOCK.
        let socket = allowed(&p, "socket");
        assert_eq!(socket[0].args().as_ref().unwrap()[0].value(), 40);
        // personality: one rule per allowed value.
        assert_eq!(allowed(&p, "personality").len(), 5);
    }

    #[test]
    fn sys_admin_opens_the_admin_rules_and_drops_the_clone_limits() {
        let mut caps = DOCKER_DEFAULT_CAPS.to_vec();
        caps.push(Capability::SysAdmin);
        let p = docker_profile(&caps, "amd64").unwrap();
        for name in ["mount", "unshare", "setns", "clone3"] {
            let rules = allowed(&p, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(
                rules[0].action(),
                LinuxSeccompAction::ScmpActAllow,
                "{name}"
            );
        }
        // The unconditional clone comes from the CAP_SYS_ADMIN rule only.
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none());
    }

    #[test]
    fn dropping_chroot_removes_it() {
        let caps: Vec<_> = DOCKER_DEFAULT_CAPS
            .iter()
            .copied()
            .filter(|c| *c != Capability::SysChroot)
            .collect();
        let p = docker_profile(&caps, "amd64").unwrap();
        assert!(allowed(&p, "chroot").is_empty());
    }

    #[test]
    fn arm64_rules() {
        let p = docker_profile(&DOCKER_DEFAULT_CAPS, "arm64").unwrap();
        assert!(allowed(&p, "arch_prctl").is_empty());
        assert_eq!(allowed(&p, "set_tls").len(), 1);
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
    }

    #[test]
    fn s390_clone_uses_the_second_argument() {
        let p = docker_profile(&DOCKER_DEFAULT_CAPS, "s390x").unwrap();
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args().as_ref().unwrap()[0].index(), 1);
    }
}
