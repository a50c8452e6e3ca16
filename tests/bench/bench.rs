//! `moat-bench` (`make bench`): boot time and memory, measured, several runs
//! each, every figure printed beside its references with the ratio.
//!
//! - Test-host boot: the nested test host running `true`; wall time from QEMU's
//!   start to its exit, and the test host's uptime when the command started.
//! - moat-vmm beside its references: inside one test-host run (or here, in the
//!   direct tier), `tests/vmm-boot/compare.sh` boots the same kernel and
//!   initramfs (`tests/vmm-boot/init.c`) with moat-vmm, QEMU `-M pc`, QEMU
//!   `-M microvm` and Firecracker (when a static binary is found at
//!   `$MOAT_FIRECRACKER` or `~/.cache/moat/peers/firecracker`), each through
//!   `bootmeter.c`, N rounds in rotated order. Per VM: time from the VMM's
//!   start to `/init`'s console line, the guest's uptime at `/init`, wall time
//!   of the whole VM lifecycle, and the VMM's resident memory outside the
//!   guest-RAM mapping when `/init` is reached; for moat-vmm also its boot
//!   marker and its first `KVM_RUN`, on its own process-start clock.
//!
//! Timings inside the nested test host are emulated: compare them only as ratios
//! against another VMM measured in the same run, never as absolute figures. The
//! goals (boot ≤ 0.7× QEMU's time, VMM overhead ≤ 5 MiB) are printed, not
//! asserted. Owns nothing but its output and its scratch directory under the
//! test-runs directory; it uses the harness and the built artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use moat_tests::{build_boot_initrd, Artifacts, GuestArch, TestHost};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: moat-bench [--runs N]")]
    Usage,
    #[error("{0}")]
    Artifact(#[from] moat_tests::ArtifactError),
    #[error("{0}")]
    Harness(#[from] moat_tests::HarnessError),
    #[error("build the test guest: {0}")]
    Guest(String),
    #[error("run cc (make deps installs build-essential): {0}")]
    SpawnCc(std::io::Error),
    #[error("cc -static {}: {stderr}", src.display())]
    Compile { src: PathBuf, stderr: String },
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
    #[error("moat-vmm failed {failed} of {runs} boots (see the per-boot table)")]
    MoatBootFailed { failed: usize, runs: usize },
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown date".into())
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

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// `median (min–max)` with `decimals`, or `-` without values.
fn summary(values: &[f64], decimals: usize) -> String {
    match median(values) {
        None => "-".into(),
        Some(m) if values.len() == 1 => format!("{m:.decimals$}"),
        Some(m) => {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{m:.decimals$} ({min:.decimals$}–{max:.decimals$})")
        }
    }
}

/// Test-host boot: `runs` separate test-host runs of `true`.
fn testhost_boot(runs: usize) -> Result<(), BenchError> {
    println!(
        "## test-host boot (QEMU TCG, -M microvm, {runs} run{})\n",
        if runs == 1 { "" } else { "s" }
    );
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

/// One boot as `compare.sh` reports it (`result vmm=... round=... ...`).
#[derive(Debug, Clone, PartialEq)]
struct Boot {
    vmm: String,
    round: u32,
    /// VMM start to `/init`'s console line; `None` if it never showed.
    line_s: Option<f64>,
    /// VMM start to its exit.
    exit_s: f64,
    /// Resident memory outside the guest-RAM mapping, at `/init`.
    vmm_rss_mib: Option<f64>,
    /// Its private anonymous part.
    vmm_anon_mib: Option<f64>,
    status: String,
    uptime_s: Option<f64>,
    /// moat-vmm's own figures, from its process start: boot marker, build
    /// steps (VM and guest memory ready, kernel and initrd loaded, vCPUs
    /// started), vCPU 0's first `KVM_RUN`.
    marker_s: Option<f64>,
    memory_s: Option<f64>,
    loaded_s: Option<f64>,
    started_s: Option<f64>,
    first_run_s: Option<f64>,
}

impl Boot {
    fn ok(&self) -> bool {
        self.status == "0" && self.line_s.is_some()
    }
}

/// `key=<value>` from a result line.
fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `key=<number>`; `none`, `-1` and `-1.0` (not measured) are `None`.
fn number(line: &str, key: &str) -> Option<f64> {
    word(line, key)?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn parse_boot(line: &str) -> Option<Boot> {
    let rest = line.strip_prefix("result ")?;
    let kib = |key| number(rest, key).map(|k| k / 1024.0);
    let us = |key| number(rest, key).map(|u| u / 1e6);
    Some(Boot {
        vmm: word(rest, "vmm")?.to_string(),
        round: word(rest, "round")?.parse().ok()?,
        line_s: number(rest, "line_ms").map(|ms| ms / 1e3),
        exit_s: number(rest, "exit_ms")? / 1e3,
        vmm_rss_mib: kib("vmm_rss_kib"),
        vmm_anon_mib: kib("vmm_anon_kib"),
        status: word(rest, "status")?.to_string(),
        uptime_s: number(rest, "uptime_s"),
        marker_s: us("marker_us"),
        memory_s: us("memory_us"),
        loaded_s: us("loaded_us"),
        started_s: us("vcpus_started_us"),
        first_run_s: us("first_run_us"),
    })
}

/// The reference VMMs, in table order, with how the tables name them.
const VMMS: [(&str, &str); 4] = [
    ("moat-vmm", "moat-vmm"),
    ("qemu-pc", "QEMU -M pc"),
    ("qemu-microvm", "QEMU -M microvm"),
    ("firecracker", "Firecracker"),
];

/// A measured quantity of a boot.
type Metric = fn(&Boot) -> Option<f64>;

const METRICS: [(&str, Metric); 4] = [
    ("VMM start → /init (s)", |b| b.line_s),
    ("guest uptime at /init (s)", |b| b.uptime_s),
    ("wall per VM lifecycle (s)", |b| Some(b.exit_s)),
    ("VMM RSS outside guest RAM (MiB)", |b| b.vmm_rss_mib),
];

fn values(boots: &[&Boot], metric: Metric) -> Vec<f64> {
    boots
        .iter()
        .filter(|b| b.ok())
        .filter_map(|b| metric(b))
        .collect()
}

/// moat-vmm's value over the reference's, round by round (rounds where both
/// booted).
fn round_ratios(moat: &[&Boot], other: &[&Boot], metric: Metric) -> Vec<f64> {
    moat.iter()
        .filter(|m| m.ok())
        .filter_map(|m| {
            let o = other.iter().find(|o| o.round == m.round && o.ok())?;
            let (a, b) = (metric(m)?, metric(o)?);
            (b > 0.0).then(|| a / b)
        })
        .collect()
}

/// Compiles the C program `src` to the static binary `out` (bootmeter, which
/// runs beside the VMMs in the test host).
fn cc_static(src: &Path, out: &Path) -> Result<(), BenchError> {
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .map_err(BenchError::SpawnCc)?;
    if !cc.status.success() {
        return Err(BenchError::Compile {
            src: src.to_path_buf(),
            stderr: String::from_utf8_lossy(&cc.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Where Firecracker is: `$MOAT_FIRECRACKER`, else `~/.cache/moat/peers/firecracker`.
fn firecracker() -> Option<PathBuf> {
    let path = match std::env::var_os("MOAT_FIRECRACKER").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/moat/peers/firecracker"),
    };
    path.is_file().then_some(path)
}

/// moat-vmm, QEMU and Firecracker booting the same kernel, in one test-host run.
fn vmm_comparison(runs: usize) -> Result<(), BenchError> {
    let a = Artifacts::from_env();
    let kernel = a.guest_kernel()?;
    let vmm = a.static_bin("moat-vmm")?;
    let work = a.runs_dir.join(format!("bench-{}", std::process::id()));
    let initrd = build_boot_initrd(&a.root, &work, GuestArch::X86_64).map_err(BenchError::Guest)?;
    let bootmeter = work.join("bootmeter");
    cc_static(&a.root.join("tests/vmm-boot/bootmeter.c"), &bootmeter)?;
    let fc = firecracker();
    let host = TestHost::new()?;
    let tier = host.tier();
    let mut host = host
        .with_qemu()
        .timeout(Duration::from_secs(300 + 4 * 150 * runs as u64))
        .add(&vmm, "/bench/moat-vmm")
        .add(&bootmeter, "/bench/bootmeter")
        .add(&kernel, "/bench/vmlinux")
        .add(&initrd, "/bench/initrd.cpio")
        .add(
            a.root.join("tests/vmm-boot/compare.sh"),
            "/bench/compare.sh",
        );
    if let Some(fc) = &fc {
        host = host.add(fc, "/bench/firecracker");
    }
    let out = host.run(&["sh", "./bench/compare.sh", "./bench", &runs.to_string()]);
    let _ = std::fs::remove_dir_all(&work);
    let out = out?;
    let what = "vmm comparison (tests/vmm-boot/compare.sh)".to_string();
    if !out.success() {
        return Err(BenchError::Failed {
            what,
            status: out.status,
            stderr: out.stderr_str(),
        });
    }
    let stdout = out.stdout_str();
    let boots: Vec<Boot> = stdout.lines().filter_map(parse_boot).collect();
    let vmm_count = if fc.is_some() { 4 } else { 3 };
    if boots.len() != vmm_count * runs {
        return Err(BenchError::MissingResults {
            what,
            want: vmm_count * runs,
            got: boots.len(),
        });
    }
    let by_vmm: BTreeMap<&str, Vec<&Boot>> = VMMS
        .iter()
        .map(|(key, _)| (*key, boots.iter().filter(|b| b.vmm == *key).collect()))
        .collect();

    println!(
        "## moat-vmm beside QEMU and Firecracker ({tier} tier, {runs} round{}, rotated order)\n",
        if runs == 1 { "" } else { "s" }
    );
    println!(
        "Same vmlinux and initramfs, 1 vCPU, 256 MiB, `console=ttyS0 reboot=k panic=-1 quiet` \
         plus the i8042 options (`reboot=t` for -M microvm, which has no i8042); QEMU with \
         `-enable-kvm -cpu host`. Median (range) of the boots that reached /init and exited \
         cleanly. Memory is sampled when /init's line shows.\n"
    );
    if fc.is_none() {
        println!("firecracker: not built (set MOAT_FIRECRACKER)\n");
    }
    print!("| VMM ");
    for (name, _) in METRICS {
        print!("| {name} ");
    }
    println!("| private anonymous (MiB) | boots ok |");
    println!("|---|---|---|---|---|---|---|");
    for (key, label) in VMMS {
        let list = &by_vmm[key];
        if list.is_empty() {
            continue;
        }
        print!("| {label} ");
        for (name, metric) in METRICS {
            let decimals = if name.contains("MiB") { 1 } else { 2 };
            print!("| {} ", summary(&values(list, metric), decimals));
        }
        let ok = list.iter().filter(|b| b.ok()).count();
        println!(
            "| {} | {ok}/{} |",
            summary(&values(list, |b| b.vmm_anon_mib), 2),
            list.len()
        );
    }
    let moat = &by_vmm["moat-vmm"];
    println!(
        "\nmoat-vmm on its own process-start clock (s): VM and guest memory ready {}, \
         kernel and initrd loaded {}, vCPUs started {}, first KVM_RUN {}, boot marker (/init) {}.\n",
        summary(&values(moat, |b| b.memory_s), 3),
        summary(&values(moat, |b| b.loaded_s), 3),
        summary(&values(moat, |b| b.started_s), 3),
        summary(&values(moat, |b| b.first_run_s), 3),
        summary(&values(moat, |b| b.marker_s), 2),
    );

    print!("| ratio, median of the rounds' ratios (range) ");
    for (name, _) in METRICS {
        print!(
            "| {} ",
            name.trim_end_matches(" (s)").trim_end_matches(" (MiB)")
        );
    }
    println!("|");
    println!("|---|---|---|---|---|");
    let mut ratios = BTreeMap::new();
    for (key, label) in &VMMS[1..] {
        let other = &by_vmm[key];
        if other.is_empty() {
            continue;
        }
        print!("| moat-vmm / {label} ");
        for (i, (_, metric)) in METRICS.iter().enumerate() {
            let r = round_ratios(moat, other, *metric);
            print!("| {} ", summary(&r, 2));
            ratios.insert((*key, i), median(&r));
        }
        println!("|");
    }

    let moat_rss = median(&values(moat, |b| b.vmm_rss_mib));
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    let boot_ratio = ratios.get(&("qemu-pc", 0)).copied().flatten();
    println!(
        "\nGoals: boot ≤ 0.7× QEMU's time (moat-vmm / QEMU -M pc, VMM start → /init): {} — {}; \
         VMM overhead ≤ 5 MiB: {} — {}.\n",
        boot_ratio.map_or("-".into(), |r| format!("{r:.2}")),
        verdict(boot_ratio.map(|r| r <= 0.7)),
        moat_rss.map_or("-".into(), |m| format!("{m:.1} MiB")),
        verdict(moat_rss.map(|m| m <= 5.0)),
    );

    println!("Per boot:\n");
    println!("| round | VMM | VMM start → /init (s) | guest uptime (s) | wall (s) | VMM RSS (MiB) | status |");
    println!("|---|---|---|---|---|---|---|");
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
    let mut sorted: Vec<&Boot> = boots.iter().collect();
    sorted.sort_by_key(|b| b.round);
    for b in sorted {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            b.round,
            b.vmm,
            fmt(b.line_s, 2),
            fmt(b.uptime_s, 2),
            b.exit_s,
            fmt(b.vmm_rss_mib, 1),
            b.status
        );
    }
    println!();
    let failed = moat.iter().filter(|b| !b.ok()).count();
    if failed > 0 {
        return Err(BenchError::MoatBootFailed {
            failed,
            runs: moat.len(),
        });
    }
    Ok(())
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
    println!(
        "# moat bench ({}, load average at start: {})\n",
        today(),
        loadavg()
    );
    println!("Nested-tier figures are emulated; compare them only as ratios within one run.\n");
    testhost_boot(runs)?;
    vmm_comparison(runs)?;
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
    fn result_lines_are_parsed() {
        let b = parse_boot(
            "result vmm=moat-vmm round=2 line_ms=1709.2 exit_ms=1784.5 rss_kib=36436 \
             guest_rss_kib=32768 vmm_rss_kib=3668 vmm_anon_kib=464 status=0 uptime_s=0.76 \
             marker_us=1668693 memory_us=32002 loaded_us=156009 vcpus_started_us=172010 \
             first_run_us=729853",
        )
        .unwrap();
        assert_eq!((b.vmm.as_str(), b.round), ("moat-vmm", 2));
        assert_eq!(b.line_s, Some(1.7092));
        assert_eq!(b.exit_s, 1.7845);
        assert_eq!(b.vmm_rss_mib, Some(3668.0 / 1024.0));
        assert_eq!(b.uptime_s, Some(0.76));
        assert_eq!(b.marker_s, Some(1.668693));
        assert_eq!(b.first_run_s, Some(0.729853));
        assert_eq!(
            (b.memory_s, b.loaded_s, b.started_s),
            (Some(0.032002), Some(0.156009), Some(0.17201))
        );
        assert!(b.ok());

        let t = parse_boot(
            "result vmm=qemu-microvm round=1 line_ms=-1.0 exit_ms=120056.7 rss_kib=-1 \
             guest_rss_kib=-1 vmm_rss_kib=-1 vmm_anon_kib=-1 status=timeout uptime_s=none \
             marker_us=none first_run_us=none",
        )
        .unwrap();
        assert_eq!((t.line_s, t.vmm_rss_mib, t.uptime_s), (None, None, None));
        assert_eq!(t.status, "timeout");
        assert!(!t.ok());
        assert!(parse_boot("warmup vmm=moat-vmm round=0 exit_ms=1").is_none());
        assert!(parse_boot("result vmm=x round=1 status=0").is_none());
    }

    #[test]
    fn medians_ranges_and_summaries() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(range(&[2.0, 1.5, 3.25]), "1.50–3.25");
        assert_eq!(range(&[]), "-");
        assert_eq!(summary(&[2.0, 1.0, 3.0], 2), "2.00 (1.00–3.00)");
        assert_eq!(summary(&[2.0], 1), "2.0");
        assert_eq!(summary(&[], 2), "-");
    }

    fn boot(vmm: &str, round: u32, line: f64, status: &str) -> Boot {
        Boot {
            vmm: vmm.into(),
            round,
            line_s: Some(line),
            exit_s: line + 0.1,
            vmm_rss_mib: Some(3.0),
            vmm_anon_mib: Some(0.5),
            status: status.into(),
            uptime_s: Some(0.5),
            marker_s: None,
            memory_s: None,
            loaded_s: None,
            started_s: None,
            first_run_s: None,
        }
    }

    #[test]
    fn ratios_pair_rounds_and_skip_failed_boots() {
        let moat = [
            boot("moat-vmm", 1, 1.0, "0"),
            boot("moat-vmm", 2, 2.0, "0"),
            boot("moat-vmm", 3, 1.5, "0"),
        ];
        let qemu = [
            boot("qemu-pc", 2, 4.0, "0"),
            boot("qemu-pc", 1, 2.0, "0"),
            boot("qemu-pc", 3, 9.0, "timeout"),
        ];
        let m: Vec<&Boot> = moat.iter().collect();
        let q: Vec<&Boot> = qemu.iter().collect();
        assert_eq!(round_ratios(&m, &q, |b| b.line_s), vec![0.5, 0.5]);
        assert_eq!(values(&q, |b| b.line_s), vec![4.0, 2.0]);
    }
}
