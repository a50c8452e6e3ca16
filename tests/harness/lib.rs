//! End-to-end test harness: finds the built artifacts, probes which test tier this
//! machine can run, and runs commands inside the nested KVM test host.
//!
//! Owns: artifact lookup ([`Artifacts`]), the tier probe ([`probe`],
//! [`probe_arch`] for guests of another architecture), running a command in a
//! tier ([`TestHost`]), the skip rule ([`host_or_skip`]) and what the boot tests
//! share (`boot.rs`). It must
//! not build anything itself beyond what `tests/kvm-host/run.sh` does (the
//! Makefile builds the kernel and the static binaries), and it never touches the
//! host outside its run directories under `build/test-runs/`.
//!
//! Tiers:
//! - `direct`: this machine's `/dev/kvm` is hardware KVM (`vmx`/`svm` and
//!   `kvm_intel`/`kvm_amd`), so commands run here, as they are.
//! - `nested`: it is not (e.g. `kvm_pvm`), so commands run inside the nested test
//!   host: QEMU TCG emulating an AMD CPU with SVM, and KVM loaded there.
//!
//! `MOAT_E2E_TIER=direct|nested` overrides the probe. A test that cannot run
//! prints why; with `MOAT_E2E_REQUIRED=1` (set by `make test`) it fails instead.

mod artifacts;
mod boot;
mod host;
mod tier;

pub use artifacts::{ArtifactError, Artifacts};
pub use boot::{build_boot_initrd, parse_boot_cases, BootCase};
pub use host::{HarnessError, Output, TestHost};
pub use tier::{
    gather, probe, probe_arch, probe_foreign, probe_from, GuestArch, Probe, ProbeInput, Tier,
};

use std::io::Write;

/// Whether end-to-end tests must run (`MOAT_E2E_REQUIRED=1`) instead of skipping.
pub fn e2e_required() -> bool {
    std::env::var("MOAT_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// Writes a notice past the test runner's output capture, so that tier choices
/// and skips always show, even for passing tests.
pub fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "moat e2e: {msg}");
}

/// Skips `test` with `reason`, loudly; panics instead when e2e tests are required.
pub fn skip(test: &str, reason: &str) {
    if e2e_required() {
        panic!("{test}: cannot run and MOAT_E2E_REQUIRED=1: {reason}");
    }
    notice(&format!("SKIP {test}: {reason}"));
}

/// A test host for the probed tier, or `None` after [`skip`] says why.
pub fn host_or_skip(test: &str) -> Option<TestHost> {
    match TestHost::new() {
        Ok(h) => Some(h),
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}

/// A test host for `arch` guests, or `None` after [`skip`] says why.
pub fn host_for_arch_or_skip(test: &str, arch: GuestArch) -> Option<TestHost> {
    match TestHost::for_arch(arch) {
        Ok(h) => Some(h),
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}

/// The path of an artifact, or `None` after [`skip`] says it is missing.
pub fn artifact_or_skip(
    test: &str,
    found: Result<std::path::PathBuf, ArtifactError>,
) -> Option<std::path::PathBuf> {
    match found {
        Ok(p) => Some(p),
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}
