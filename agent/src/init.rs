//! Guest init: what PID 1 does before it serves, and how it powers off. It owns the
//! guest's base mounts, the boot-time marker, the kernel command line options of the
//! agent (`moat.*`), cgroup controller delegation, the virtio-fs shares and loopback.
//! It must not create containers or talk to the host; every kernel call goes through
//! the [`Sys`] seam so the sequence is tested without root.
//!
//! Kernel command line options (the kernel hides `a.b=c` words from init's argv and
//! environment, so they are read from `/proc/cmdline`):
//! - `moat.fs=<tag>:<dir>[,<tag>:<dir>...]`: virtio-fs tags to mount at start;
//! - `moat.oneshot=1`: power off once the last container has exited and its exit
//!   status was reported;
//! - `moat.log=<filter>`: log filter (`info` by default), e.g. `debug`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::protocol::Share;
use crate::sys::{Sys, SysError};
use crate::util::is_clean_absolute;

/// Physical address of the VMM's boot-time marker: the agent writes [`BOOT_MARKER_VALUE`]
/// there through `/dev/mem` as its first act, and the VMM logs the time since its start.
#[cfg(target_arch = "x86_64")]
pub const BOOT_MARKER_ADDR: u64 = 0xd000_0000;
/// On arm64 the marker is the first page of moat-vmm's MMIO region, `BOOT_MARKER_START`
/// in `vmm/src/arch/aarch64/layout.rs` (also described in the guest's device tree as
/// `boot-marker@40000000`); keep the two in step.
#[cfg(target_arch = "aarch64")]
pub const BOOT_MARKER_ADDR: u64 = 0x4000_0000;

/// The byte written to the boot-time marker.
pub const BOOT_MARKER_VALUE: u8 = 123;

/// Where the agent keeps its state in the guest (a tmpfs).
pub const GUEST_RUN_DIR: &str = "/run/moat";

/// Longest virtio-fs tag (the device's config field is 36 bytes).
pub const MAX_FS_TAG_LEN: usize = 36;

/// Agent options from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    pub shares: Vec<Share>,
    pub oneshot: bool,
    pub log: Option<String>,
    /// Problems found while parsing; logged, never fatal.
    pub warnings: Vec<String>,
}

impl BootConfig {
    /// Parses the `moat.*` words of a kernel command line and ignores the rest.
    pub fn parse(cmdline: &str) -> Self {
        let mut cfg = BootConfig::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "moat.fs" => {
                    for entry in value.split(',').filter(|e| !e.is_empty()) {
                        match parse_share(entry) {
                            Ok(share) => cfg.shares.push(share),
                            Err(why) => {
                                cfg.warnings.push(format!("moat.fs entry {entry:?}: {why}"))
                            }
                        }
                    }
                }
                "moat.oneshot" => match value {
                    "1" | "true" | "yes" => cfg.oneshot = true,
                    "0" | "false" | "no" => cfg.oneshot = false,
                    _ => cfg
                        .warnings
                        .push(format!("moat.oneshot={value}: expected 0 or 1")),
                },
                "moat.log" => cfg.log = Some(value.to_owned()),
                k if k.starts_with("moat.") => {
                    cfg.warnings.push(format!("unknown option {k}, ignored"));
                }
                _ => {}
            }
        }
        cfg
    }
}

fn parse_share(entry: &str) -> Result<Share, String> {
    let (tag, path) = entry
        .split_once(':')
        .ok_or_else(|| "expected <tag>:<dir>".to_owned())?;
    let share = Share {
        tag: tag.to_owned(),
        path: path.to_owned(),
    };
    validate_share(&share)?;
    Ok(share)
}

/// Checks a share's tag and mount point.
pub fn validate_share(share: &Share) -> Result<(), String> {
    if share.tag.is_empty() || share.tag.len() > MAX_FS_TAG_LEN {
        return Err(format!("tag must be 1 to {MAX_FS_TAG_LEN} bytes"));
    }
    if share
        .tag
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',' || b == b':')
    {
        return Err("tag contains a separator or control character".to_owned());
    }
    let path = Path::new(&share.path);
    if !is_clean_absolute(path) || path == Path::new("/") {
        return Err(format!(
            "mount point {:?} must be a clean absolute path below /",
            share.path
        ));
    }
    Ok(())
}

/// Errors of guest set-up steps that the agent cannot do without.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("switch to a pivotable root: {0}")]
    SwitchRoot(#[source] SysError),
    #[error("mount {what}: {source}")]
    BaseMount {
        what: &'static str,
        #[source]
        source: SysError,
    },
}

/// What [`setup_guest`] found and did.
#[derive(Debug, Default)]
pub struct GuestReport {
    pub boot: BootConfig,
    /// Non-fatal failures, already logged.
    pub warnings: Vec<String>,
    /// cgroup controllers enabled for children of the root cgroup.
    pub controllers: Vec<String>,
}

/// One base mount of the guest: `(fstype, target, flags, data)`.
type BaseMount = (&'static str, &'static str, MsFlags, Option<&'static str>);

fn base_mounts() -> [BaseMount; 7] {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("proc", "/proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", nosuid_nodev_noexec, None),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "/sys/fs/cgroup", nosuid_nodev_noexec, None),
    ]
}

/// Controllers the agent delegates to container cgroups when the kernel has them.
pub const WANTED_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// PID 1's start-up, in order:
/// 1. move the initramfs root under a bind mount so that `pivot_root` works for the
///    containers (pivot_root refuses the initramfs root itself, which has no parent);
/// 2. mount `/dev` and write the boot-time marker;
/// 3. the remaining base mounts: `/dev/pts`, `/dev/shm`, `/proc`, `/sys`, `/run`,
///    cgroup2 at `/sys/fs/cgroup`;
/// 4. read `/proc/cmdline`;
/// 5. enable cgroup controllers in the root's `cgroup.subtree_control`;
/// 6. mount the virtio-fs shares; 7. set `lo` up.
///
/// Only steps 1 and 3 for `/proc` and `/run` are fatal; everything else is logged and
/// reported, because a guest that serves with a missing share is more useful (it can
/// say what is wrong) than one that powered off.
pub fn setup_guest(sys: &dyn Sys) -> Result<GuestReport, InitError> {
    let mut report = GuestReport::default();

    switch_root(sys).map_err(InitError::SwitchRoot)?;

    for (fstype, target, flags, data) in base_mounts() {
        let target_path = Path::new(target);
        if let Err(e) = sys.mkdir_all(target_path, 0o755) {
            warn(&mut report, format!("create mount point {target}: {e}"));
        }
        match sys.mount(fstype, target_path, Some(fstype), flags, data) {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(e) if target == "/dev" && e.errno() == Some(libc::EBUSY) => {}
            Err(source) if matches!(target, "/proc" | "/run") => {
                return Err(InitError::BaseMount {
                    what: target,
                    source,
                });
            }
            Err(e) => warn(&mut report, format!("mount {fstype} on {target}: {e}")),
        }
        if target == "/dev" {
            if let Err(e) = write_boot_marker(sys) {
                warn(&mut report, format!("boot-time marker: {e}"));
            }
        }
    }

    match sys.read_file(Path::new("/proc/cmdline")) {
        Ok(bytes) => report.boot = BootConfig::parse(&String::from_utf8_lossy(&bytes)),
        Err(e) => warn(&mut report, format!("kernel command line: {e}")),
    }
    for w in report.boot.warnings.clone() {
        warn(&mut report, w);
    }

    match enable_controllers(sys, Path::new("/sys/fs/cgroup")) {
        Ok(enabled) => report.controllers = enabled,
        Err(e) => warn(&mut report, format!("cgroup controllers: {e}")),
    }

    for share in report.boot.shares.clone() {
        if let Err(e) = mount_share(sys, &share) {
            warn(&mut report, e.to_string());
        }
    }

    if let Err(e) = sys.link_up("lo") {
        warn(&mut report, format!("loopback: {e}"));
    }
    if let Err(e) = sys.mkdir_all(Path::new(GUEST_RUN_DIR), 0o700) {
        warn(&mut report, format!("create {GUEST_RUN_DIR}: {e}"));
    }
    Ok(report)
}

fn warn(report: &mut GuestReport, msg: String) {
    tracing::warn!("{msg}");
    report.warnings.push(msg);
}

/// Directory the root is bind-mounted on before it is moved over `/`.
const NEW_ROOT: &str = "/.moat-root";

/// Bind-mounts `/` (recursively) on [`NEW_ROOT`], moves that mount over `/` and
/// chroots into it, as `switch_root` does. Afterwards the process root is a mount with
/// a parent, which `pivot_root(2)` requires.
pub fn switch_root(sys: &dyn Sys) -> Result<(), SysError> {
    let new_root = Path::new(NEW_ROOT);
    sys.mkdir_all(new_root, 0o700)?;
    sys.mount(
        "/",
        new_root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    sys.chdir(new_root)?;
    sys.mount(".", Path::new("/"), None, MsFlags::MS_MOVE, None)?;
    sys.chroot(Path::new("."))?;
    sys.chdir(Path::new("/"))
}

/// Writes the boot-time marker byte through `/dev/mem`.
pub fn write_boot_marker(sys: &dyn Sys) -> Result<(), SysError> {
    sys.poke_phys(BOOT_MARKER_ADDR, BOOT_MARKER_VALUE)
}

/// Enables every wanted controller the kernel offers at `root`, one write each so a
/// refused one does not hide the others. Returns the enabled ones.
pub fn enable_controllers(sys: &dyn Sys, root: &Path) -> Result<Vec<String>, SysError> {
    let available = sys.read_file(&root.join("cgroup.controllers"))?;
    let available = String::from_utf8_lossy(&available);
    let mut enabled = Vec::new();
    for name in available.split_ascii_whitespace() {
        if !WANTED_CONTROLLERS.contains(&name) {
            continue;
        }
        let control = root.join("cgroup.subtree_control");
        match sys.write_file(&control, format!("+{name}").as_bytes(), 0o644) {
            Ok(()) => enabled.push(name.to_owned()),
            Err(e) => tracing::warn!("enable cgroup controller {name}: {e}"),
        }
    }
    Ok(enabled)
}

/// Share mount failures.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share {tag}: {why}")]
    Invalid { tag: String, why: String },
    #[error("mount virtio-fs share {tag} on {path}: {source}")]
    Mount {
        tag: String,
        path: PathBuf,
        #[source]
        source: SysError,
    },
}

/// `mkdir -p <path>; mount -t virtiofs <tag> <path>`.
pub fn mount_share(sys: &dyn Sys, share: &Share) -> Result<(), ShareError> {
    validate_share(share).map_err(|why| ShareError::Invalid {
        tag: share.tag.clone(),
        why,
    })?;
    let path = PathBuf::from(&share.path);
    let fail = |source| ShareError::Mount {
        tag: share.tag.clone(),
        path: path.clone(),
        source,
    };
    sys.mkdir_all(&path, 0o755).map_err(fail)?;
    sys.mount(&share.tag, &path, Some("virtiofs"), MsFlags::empty(), None)
        .map_err(fail)?;
    tracing::info!(tag = %share.tag, path = %share.path, "mounted virtio-fs share");
    Ok(())
}

/// Flushes file systems and restarts the machine, which ends the VMM (`reboot=k` on
/// the kernel command line makes the kernel reset through the i8042 controller, the
/// exit moat-vmm watches for). Returns only if the kernel refused.
pub fn power_off(sys: &dyn Sys) -> SysError {
    sys.sync();
    sys.reboot()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSys};

    #[test]
    fn parses_agent_options_and_ignores_the_rest() {
        let cfg = BootConfig::parse(
            "console=ttyS0 reboot=k moat.fs=moat:/mnt/moat,vol1:/mnt/volumes/v1 moat.oneshot=1 \
             moat.log=debug virtio_mmio.device=4K@0xd0001000:5 init=/init",
        );
        assert_eq!(
            cfg.shares,
            vec![
                Share {
                    tag: "moat".into(),
                    path: "/mnt/moat".into()
                },
                Share {
                    tag: "vol1".into(),
                    path: "/mnt/volumes/v1".into()
                },
            ]
        );
        assert!(cfg.oneshot);
        assert_eq!(cfg.log.as_deref(), Some("debug"));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn bad_options_become_warnings() {
        let cfg = BootConfig::parse(
            "moat.fs=notag,x:relative,y:/a/../b,:/empty,ok:/ok moat.oneshot=maybe moat.colour=red",
        );
        assert_eq!(cfg.shares.len(), 1);
        assert_eq!(cfg.shares[0].tag, "ok");
        assert!(!cfg.oneshot);
        assert_eq!(cfg.warnings.len(), 6, "{:?}", cfg.warnings);
    }

    #[test]
    fn overlong_tag_is_refused() {
        let long = "t".repeat(MAX_FS_TAG_LEN + 1);
        assert!(BootConfig::parse(&format!("moat.fs={long}:/mnt/x"))
            .shares
            .is_empty());
    }

    fn guest_sys() -> RecordingSys {
        let sys = RecordingSys::new();
        sys.set_file(
            "/proc/cmdline",
            "console=ttyS0 moat.fs=moat:/mnt/moat moat.oneshot=1\n",
        );
        sys.set_file(
            "/sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        sys
    }

    #[test]
    fn init_sequence_order() {
        let sys = guest_sys();
        let report = setup_guest(&sys).unwrap();
        assert!(report.boot.oneshot);
        assert_eq!(
            report.controllers,
            ["cpuset", "cpu", "io", "memory", "pids"]
        );

        let calls = sys.calls();
        // The root switch comes first, the boot marker right after /dev.
        let expected_prefix = [
            Call::MkdirAll {
                path: NEW_ROOT.into(),
                mode: 0o700,
            },
            Call::Mount {
                source: "/".into(),
                target: NEW_ROOT.into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            },
            Call::Chdir {
                path: NEW_ROOT.into(),
            },
            Call::Mount {
                source: ".".into(),
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_MOVE,
                data: None,
            },
            Call::Chroot { path: ".".into() },
            Call::Chdir { path: "/".into() },
            Call::MkdirAll {
                path: "/dev".into(),
                mode: 0o755,
            },
            Call::Mount {
                source: "devtmpfs".into(),
                target: "/dev".into(),
                fstype: Some("devtmpfs".into()),
                flags: MsFlags::MS_NOSUID,
                data: Some("mode=0755".into()),
            },
            Call::PokePhys {
                addr: BOOT_MARKER_ADDR,
                value: 123,
            },
        ];
        assert_eq!(&calls[..expected_prefix.len()], &expected_prefix);

        let mounts: Vec<_> = sys
            .mounts()
            .into_iter()
            .map(|(t, f, _)| (t.display().to_string(), f))
            .collect();
        let targets: Vec<&str> = mounts.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            targets,
            [
                NEW_ROOT,
                "/",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/proc",
                "/sys",
                "/run",
                "/sys/fs/cgroup",
                "/mnt/moat"
            ]
        );
        assert_eq!(mounts[8].1.as_deref(), Some("cgroup2"));
        assert_eq!(mounts[9].1.as_deref(), Some("virtiofs"));

        // Controllers are enabled one write each, after cgroup2 is mounted.
        let writes: Vec<String> = calls
            .iter()
            .filter_map(|c| match c {
                Call::WriteFile { path, data, .. }
                    if path == Path::new("/sys/fs/cgroup/cgroup.subtree_control") =>
                {
                    Some(String::from_utf8_lossy(data).into_owned())
                }
                _ => None,
            })
            .collect();
        assert_eq!(writes, ["+cpuset", "+cpu", "+io", "+memory", "+pids"]);
        assert!(calls.contains(&Call::LinkUp { name: "lo".into() }));
    }

    #[test]
    fn marker_and_share_failures_are_not_fatal() {
        let sys = guest_sys();
        sys.fail("map", "/dev/mem", libc::EPERM);
        sys.fail("mount", "/mnt/moat", libc::ENODEV);
        let report = setup_guest(&sys).unwrap();
        assert!(report
            .warnings
            .iter()
            .any(|w| w.contains("boot-time marker")));
        assert!(report
            .warnings
            .iter()
            .any(|w| w.contains("mount virtio-fs share moat on /mnt/moat")));
    }

    #[test]
    fn missing_proc_is_fatal() {
        let sys = guest_sys();
        sys.fail("mount", "/proc", libc::ENODEV);
        let err = setup_guest(&sys).unwrap_err();
        assert!(
            err.to_string().starts_with("mount /proc: mount /proc:"),
            "{err}"
        );
    }

    #[test]
    fn devtmpfs_already_mounted_is_fine() {
        let sys = guest_sys();
        sys.fail("mount", "/dev", libc::EBUSY);
        let report = setup_guest(&sys).unwrap();
        assert!(!report.warnings.iter().any(|w| w.contains("on /dev:")));
    }

    #[test]
    fn power_off_syncs_first() {
        let sys = RecordingSys::new();
        let _ = power_off(&sys);
        assert_eq!(sys.calls(), [Call::Sync, Call::Reboot]);
    }
}
