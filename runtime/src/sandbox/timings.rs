//! When a sandbox's steps happened: host-side monotonic instants the sandbox
//! records, and what the VMM (its stderr) and the agent (the guest console) report
//! about their own stages. This module owns the [`Timings`] record, reading those
//! two files and the breakdown of "VM start → first output"; it never talks to
//! the VMM or the agent.
//!
//! Clocks: host instants are this process's `Instant`s; the VMM reports
//! microseconds since its own `main` (the boot marker, its vCPU start), which
//! begins a few milliseconds after `vmm_spawned` (fork + exec). The breakdown
//! reads the VMM's clock as if it started at `vmm_spawned`, so that exec time
//! lands in "agent start-up" (the step measured on the host clock across it).
//! The console is written by the guest: it is hostile input, read with a size
//! cap and parsed without trusting a line to be well-formed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

/// The most of a log file read for timings: its first and its last half of this.
pub const MAX_LOG_READ: u64 = 4 << 20;

/// What the agent logs about one `create` (`create stages`), microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateStages {
    /// Overlay mount of the layers and the upper directory.
    pub rootfs_us: u64,
    /// OCI bundle written.
    pub bundle_us: u64,
    /// The libcontainer helper process (exec + create).
    pub helper_us: u64,
    /// cgroup device filter and stdio set-up.
    pub devices_stdio_us: u64,
}

/// Timestamps of one sandbox. `None` until the step happened (or when a log did
/// not say).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// moat-vmm spawned.
    pub vmm_spawned: Option<Instant>,
    /// Its vsock Unix socket appeared.
    pub vsock_up: Option<Instant>,
    /// The agent answered `ping`.
    pub agent_ready: Option<Instant>,
    /// The last run's `create` was sent.
    pub create_sent: Option<Instant>,
    /// The last run's first byte of output (stdout or stderr) arrived.
    pub first_output: Option<Instant>,
    /// The last run's `wait` answered: the container exited.
    pub exited: Option<Instant>,
    /// From the VMM's stderr: its line `moat-vmm: boot-marker <us> us`, written
    /// when the agent (guest `/init`) started; µs since the VMM's start.
    pub boot_marker_us: Option<u64>,
    /// From the VMM's stderr (debug log of its builder): vCPUs started, µs since
    /// the VMM's start.
    pub vcpus_started_us: Option<u64>,
    /// From the console: guest uptime when the agent had set the guest up and was
    /// about to listen (`moat-agent up ... uptime_s=`).
    pub agent_up_uptime_s: Option<f64>,
    /// The agent's own time on the last run's `create` and `start` (from its
    /// answers), µs.
    pub agent_create_us: Option<u64>,
    pub agent_start_us: Option<u64>,
    /// The agent's `create stages` log line for the last run.
    pub create_stages: Option<CreateStages>,
}

/// "VM start → first output", cut into its parts. Durations; `rest` is what the
/// parts do not cover (vsock round trips, host work, the workload's exec until
/// its first write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakdown {
    /// Spawn → first output.
    pub total: Duration,
    /// Spawn → vCPUs started (VMM start-up: config, devices, kernel load).
    pub vmm_start: Duration,
    /// vCPUs started → the agent's first act (boot marker): kernel boot.
    pub kernel_boot: Duration,
    /// Boot marker → the agent answered `ping`: guest set-up by the agent, its
    /// listener, and the first vsock connection.
    pub agent_start: Duration,
    /// The agent's own time on `create` + `start`.
    pub agent_create_start: Duration,
    /// Everything else.
    pub rest: Duration,
}

impl Breakdown {
    /// `part` as a share of the total, in percent.
    pub fn percent(&self, part: Duration) -> f64 {
        if self.total.is_zero() {
            return 0.0;
        }
        part.as_secs_f64() * 100.0 / self.total.as_secs_f64()
    }

    /// The agent's share: its start-up plus its create/start time.
    pub fn agent(&self) -> Duration {
        self.agent_start + self.agent_create_start
    }
}

impl Timings {
    /// `to - from`, when both are known.
    pub fn between(from: Option<Instant>, to: Option<Instant>) -> Option<Duration> {
        Some(to?.checked_duration_since(from?).unwrap_or_default())
    }

    /// VM start (spawn) → first output.
    pub fn start_to_first_output(&self) -> Option<Duration> {
        Self::between(self.vmm_spawned, self.first_output)
    }

    /// VM start → the agent answered.
    pub fn start_to_agent(&self) -> Option<Duration> {
        Self::between(self.vmm_spawned, self.agent_ready)
    }

    /// `create` sent → first output.
    pub fn create_to_first_output(&self) -> Option<Duration> {
        Self::between(self.create_sent, self.first_output)
    }

    /// The agent's own time on `create` + `start`.
    pub fn agent_create_start(&self) -> Option<Duration> {
        Some(Duration::from_micros(
            self.agent_create_us?.saturating_add(self.agent_start_us?),
        ))
    }

    /// The breakdown of VM start → first output, when every part is known.
    pub fn breakdown(&self) -> Option<Breakdown> {
        let total = self.start_to_first_output()?;
        let agent_ready = self.start_to_agent()?;
        let vcpus = Duration::from_micros(self.vcpus_started_us?);
        let marker = Duration::from_micros(self.boot_marker_us?);
        let vmm_start = vcpus.min(total);
        let kernel_boot = marker.saturating_sub(vcpus);
        let agent_start = agent_ready.saturating_sub(marker);
        let agent_create_start = self.agent_create_start()?;
        let covered = vmm_start + kernel_boot + agent_start + agent_create_start;
        Some(Breakdown {
            total,
            vmm_start,
            kernel_boot,
            agent_start,
            agent_create_start,
            rest: total.saturating_sub(covered),
        })
    }

    /// Fills the fields the VMM's stderr and the guest console report.
    /// `container` selects the agent's `create stages` line. Unreadable files
    /// leave the fields as they are.
    pub fn read_logs(&mut self, vmm_stderr: &Path, console: &Path, container: &str) {
        if let Ok(text) = read_capped(vmm_stderr, MAX_LOG_READ) {
            self.boot_marker_us = self.boot_marker_us.or(parse_boot_marker(&text));
            self.vcpus_started_us = self.vcpus_started_us.or(parse_vcpus_started(&text));
        }
        if let Ok(text) = read_capped(console, MAX_LOG_READ) {
            self.agent_up_uptime_s = self.agent_up_uptime_s.or(parse_agent_up(&text));
            if let Some(stages) = parse_create_stages(&text, container) {
                self.create_stages = Some(stages);
            }
        }
    }
}

/// Reads a text file, at most `cap` bytes of it: all of it when it is small, else
/// its first and last `cap / 2` bytes joined by a newline. Invalid UTF-8 is
/// replaced.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::new();
    if len <= cap {
        f.take(cap).read_to_end(&mut buf)?;
    } else {
        let half = cap / 2;
        (&mut f).take(half).read_to_end(&mut buf)?;
        buf.push(b'\n');
        f.seek(SeekFrom::Start(len - half))?;
        f.take(half).read_to_end(&mut buf)?;
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The value of `key=` in a `tracing` line: the characters up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// `moat-vmm: boot-marker <us> us`: the first one.
pub fn parse_boot_marker(vmm_stderr: &str) -> Option<u64> {
    vmm_stderr.lines().find_map(|line| {
        line.strip_prefix("moat-vmm: boot-marker ")?
            .strip_suffix(" us")?
            .parse()
            .ok()
    })
}

/// The builder's debug line `vcpus started elapsed_us=<us>`.
pub fn parse_vcpus_started(vmm_stderr: &str) -> Option<u64> {
    vmm_stderr
        .lines()
        .filter(|line| line.contains("vcpus started"))
        .find_map(|line| field(line, "elapsed_us")?.parse().ok())
}

/// The agent's `moat-agent up ... uptime_s=<s>`: the first one.
pub fn parse_agent_up(console: &str) -> Option<f64> {
    console
        .lines()
        .filter(|line| line.contains("moat-agent up"))
        .find_map(|line| {
            let v: f64 = field(line, "uptime_s")?.parse().ok()?;
            v.is_finite().then_some(v)
        })
}

/// The agent's last `create stages container=<id> rootfs_us=.. bundle_us=..
/// helper_us=.. devices_stdio_us=..` line for `container`.
pub fn parse_create_stages(console: &str, container: &str) -> Option<CreateStages> {
    console
        .lines()
        .rev()
        .filter(|line| {
            line.contains("create stages") && field(line, "container") == Some(container)
        })
        .find_map(|line| {
            let n = |key| field(line, key)?.parse().ok();
            Some(CreateStages {
                rootfs_us: n("rootfs_us")?,
                bundle_us: n("bundle_us")?,
                helper_us: n("helper_us")?,
                devices_stdio_us: n("devices_stdio_us")?,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMM_ERR: &str = "   0.012s DEBUG virtio device attached device=\"vsock\" slot=0\n\
        \x20  0.230s DEBUG vcpus started elapsed_us=229871\n\
        moat-vmm: boot-marker 2061234 us\n\
        moat-vmm: boot-marker 9999999 us\n\
        moat-vmm: the guest rebooted (exit status 0)\n";

    const CONSOLE: &str = "[    0.000000] Linux version 6.1\n\
        1970-01-01T00:00:01.0Z  INFO moat-agent up version=0.1.0 uptime_s=1.03 controllers=[\"cpu\"] oneshot=false\n\
        1970-01-01T00:00:02.0Z  INFO create stages container=c10 rootfs_us=1 bundle_us=2 helper_us=3 devices_stdio_us=4\n\
        1970-01-01T00:00:02.0Z  INFO create stages container=c1 rootfs_us=29000 bundle_us=300 helper_us=296000 devices_stdio_us=500\n\
        garbage create stages container=c1 rootfs_us=x\n";

    #[test]
    fn parses_vmm_and_agent_lines() {
        assert_eq!(parse_boot_marker(VMM_ERR), Some(2_061_234));
        assert_eq!(parse_vcpus_started(VMM_ERR), Some(229_871));
        assert_eq!(parse_agent_up(CONSOLE), Some(1.03));
        assert_eq!(
            parse_create_stages(CONSOLE, "c1"),
            Some(CreateStages {
                rootfs_us: 29_000,
                bundle_us: 300,
                helper_us: 296_000,
                devices_stdio_us: 500,
            })
        );
        assert_eq!(parse_create_stages(CONSOLE, "c2"), None);
    }

    #[test]
    fn malformed_lines_are_ignored() {
        for text in [
            "",
            "moat-vmm: boot-marker lots us",
            "moat-vmm: boot-marker 12",
            "vcpus started elapsed_us=-1",
            "moat-agent up uptime_s=NaN",
            "moat-agent up uptime_s=inf",
            "create stages container=c1 rootfs_us=1",
            "\u{0}\u{ffff} elapsed_us= uptime_s= container=",
        ] {
            assert_eq!(parse_boot_marker(text), None, "{text:?}");
            assert_eq!(parse_vcpus_started(text), None, "{text:?}");
            assert_eq!(parse_agent_up(text), None, "{text:?}");
            assert_eq!(parse_create_stages(text, "c1"), None, "{text:?}");
        }
    }

    #[test]
    fn read_capped_keeps_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut text = String::from("HEAD\n");
        text.push_str(&"x".repeat(10_000));
        text.push_str("\nTAIL\n");
        std::fs::write(&p, &text).unwrap();
        let small = read_capped(&p, 100).unwrap();
        assert!(
            small.starts_with("HEAD\n") && small.ends_with("TAIL\n"),
            "{small}"
        );
        assert!(small.len() <= 101);
        assert_eq!(read_capped(&p, 1 << 20).unwrap(), text);
        std::fs::write(&p, b"ok \xff\xfe\n").unwrap();
        assert_eq!(read_capped(&p, 100).unwrap(), "ok \u{fffd}\u{fffd}\n");
    }

    #[test]
    fn breakdown_adds_up() {
        let t0 = Instant::now();
        let ms = |n| Some(t0 + Duration::from_millis(n));
        let t = Timings {
            vmm_spawned: ms(0),
            vsock_up: ms(5),
            agent_ready: ms(2500),
            create_sent: ms(2510),
            first_output: ms(3200),
            exited: ms(3300),
            boot_marker_us: Some(2_000_000),
            vcpus_started_us: Some(200_000),
            agent_up_uptime_s: Some(1.5),
            agent_create_us: Some(400_000),
            agent_start_us: Some(100_000),
            create_stages: None,
        };
        let b = t.breakdown().unwrap();
        assert_eq!(b.total, Duration::from_millis(3200));
        assert_eq!(b.vmm_start, Duration::from_millis(200));
        assert_eq!(b.kernel_boot, Duration::from_millis(1800));
        assert_eq!(b.agent_start, Duration::from_millis(500));
        assert_eq!(b.agent_create_start, Duration::from_millis(500));
        assert_eq!(b.rest, Duration::from_millis(200));
        assert_eq!(b.agent(), Duration::from_millis(1000));
        assert!((b.percent(b.agent()) - 31.25).abs() < 1e-9);
        assert_eq!(t.create_to_first_output(), Some(Duration::from_millis(690)));
        // A missing part: no breakdown, but the host-side figures remain.
        let partial = Timings {
            vcpus_started_us: None,
            ..t
        };
        assert!(partial.breakdown().is_none());
        assert_eq!(partial.start_to_agent(), Some(Duration::from_millis(2500)));
    }
}
