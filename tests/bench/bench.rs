//! `moat-bench` (`make bench`): boot timings, measured, several runs each.
//!
//! - Test-host boot: the nested test host running `true`; wall time from QEMU's
//!   start to its exit, and the test host's uptime when the command started.
//! - Reference boot: the guest kernel under QEMU (`-M pc` and `-M microvm`) to our
//!   static `/init`, all runs of one machine type inside one test-host run (or
//!   here, in the direct tier); wall time per VMM run and guest uptime at `/init`.
//!
//! Timings inside the nested test host are emulated: compare them only as ratios
//! against another VMM measured in the same run, never as absolute figures.
//! Owns nothing but its output; it uses the harness and the built artifacts.

use std::process::ExitCode;
use std::time::Duration;

use moat_tests::{Artifacts, TestHost};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: moat-bench [--runs N]")]
    Usage,
    #[error("{0}")]
    Artifact(#[from] moat_tests::ArtifactError),
    #[error("{0}")]
    Harness(#[from] moat_tests::HarnessError),
    #[error("{what} failed with status {status}: {stderr}")]
    Failed {
        what: String,
        status: i32,
        stderr: String,
    },
    #[error("{what}: expected {want} result lines, got {got}")]
    MissingResults {
        what: String,
        want: usize,
        got: usize,
    },
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        "-".into()
    } else {
        format!("{min:.2}–{max:.2}")
    }
}

/// Test-host boot: `runs` separate test-host runs of `true`.
fn testhost_boot(runs: usize) -> Result<(), BenchError> {
    println!("## test-host boot (QEMU TCG, -M microvm, {runs} runs)\n");
    println!("| run | wall, QEMU start to exit (s) | uptime when the command started (s) |");
    println!("|---|---|---|");
    let (mut walls, mut ups) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let out = TestHost::nested()
            .timeout(Duration::from_secs(120))
            .run(&["true"])?;
        if !out.success() {
            return Err(BenchError::Failed {
                what: "test host run of true".into(),
                status: out.status,
                stderr: out.stderr_str(),
            });
        }
        let wall = out.wall.as_secs_f64();
        let up = out.ready_uptime.unwrap_or(f64::NAN);
        println!("| {i} | {wall:.2} | {up:.2} |");
        walls.push(wall);
        ups.push(up);
    }
    println!("| range | {} | {} |\n", range(&walls), range(&ups));
    Ok(())
}

/// Reference boot: `runs` QEMU boots of the guest kernel on one machine type.
fn reference_boot(runs: usize, machine: &str) -> Result<(), BenchError> {
    let a = Artifacts::from_env();
    let kernel = a.guest_kernel()?;
    let initrd = a.ref_initrd()?;
    let host = TestHost::new()?;
    let tier = host.tier();
    let out = host
        .with_qemu()
        .timeout(Duration::from_secs(120 + 120 * runs as u64))
        .add(&kernel, "/ref/vmlinux")
        .add(&initrd, "/ref/initrd.cpio")
        .add(a.script("ref-boot.sh"), "/ref/ref-boot.sh")
        .run(&[
            "./ref/ref-boot.sh",
            "./ref/vmlinux",
            "./ref/initrd.cpio",
            &runs.to_string(),
            machine,
        ])?;
    let what = format!("reference boot (-M {machine})");
    if !out.success() {
        return Err(BenchError::Failed {
            what,
            status: out.status,
            stderr: out.stderr_str(),
        });
    }
    let stdout = out.stdout_str();
    let results: Vec<(f64, f64)> = stdout
        .lines()
        .filter(|l| l.starts_with("ref-boot run="))
        .filter_map(|l| Some((field(l, "wall")?, field(l, "guest_uptime")?)))
        .collect();
    if results.len() != runs {
        return Err(BenchError::MissingResults {
            what,
            want: runs,
            got: results.len(),
        });
    }
    println!("## reference boot: QEMU -M {machine} -enable-kvm -cpu qemu64, {tier} tier\n");
    println!("| run | wall per VM lifecycle (s) | guest uptime at /init (s) |");
    println!("|---|---|---|");
    for (i, (wall, up)) in results.iter().enumerate() {
        println!("| {} | {wall:.2} | {up:.2} |", i + 1);
    }
    let walls: Vec<f64> = results.iter().map(|r| r.0).collect();
    let ups: Vec<f64> = results.iter().map(|r| r.1).collect();
    println!("| range | {} | {} |\n", range(&walls), range(&ups));
    Ok(())
}

/// `key=<number>` from a `ref-boot run=...` line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn run() -> Result<(), BenchError> {
    let mut args = std::env::args().skip(1);
    let mut runs = 3;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or(BenchError::Usage)?
            }
            _ => return Err(BenchError::Usage),
        }
    }
    println!("# moat bench (load average at start: {})\n", loadavg());
    println!("Nested-tier figures are emulated; compare them only as ratios within one run.\n");
    testhost_boot(runs)?;
    reference_boot(runs, "pc")?;
    reference_boot(runs, "microvm")?;
    println!("load average at end: {}", loadavg());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_fields_are_parsed() {
        let l = "ref-boot run=2 machine=pc wall=3.86 guest_uptime=1.03";
        assert_eq!(field(l, "wall"), Some(3.86));
        assert_eq!(field(l, "guest_uptime"), Some(1.03));
        assert_eq!(field(l, "uptime"), None);
        assert_eq!(field("ref-boot run=1 wall=x", "wall"), None);
    }

    #[test]
    fn range_spans_min_to_max() {
        assert_eq!(range(&[2.0, 1.5, 3.25]), "1.50–3.25");
        assert_eq!(range(&[]), "-");
    }
}
