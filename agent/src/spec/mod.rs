//! Docker's defaults as an OCI runtime spec: [`docker_default`] builds the spec a
//! `docker run` would get (namespaces, capabilities, seccomp, masked and read-only
//! paths, mounts, device rules, cgroup limits), from [`SpecOptions`]. moatd reuses it to
//! build the spec it sends with `create`; the agent does not call it on its own. This
//! module owns those defaults; it must not touch the system.

pub mod seccomp;

use oci_spec::runtime::{Capability, Mount, Spec};
use serde_json::{json, Value};

/// Spec building failures.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("build spec: {0}")]
    Build(String),
    #[error("build seccomp profile: {0}")]
    Seccomp(String),
}

/// Docker's default capability set (moby `oci/caps`).
pub const DOCKER_DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths Docker masks (a file under `/dev/null`, a directory under an empty tmpfs).
pub const DOCKER_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const DOCKER_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `PATH` Docker sets when the image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `RLIMIT_NOFILE` a Docker container sees by default (dockerd/containerd run with
/// `LimitNOFILE=infinity`, which is 1048576, and containers inherit it). The guest's
/// PID 1 starts with the kernel's 1024/4096, so the spec says it explicitly.
pub const DEFAULT_NOFILE: u64 = 1_048_576;

/// Docker's default `/dev/shm` size (64 MiB).
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// What a `docker run` command line decides; everything else is Docker's default.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecOptions {
    pub args: Vec<String>,
    /// `KEY=value` entries (image env, then `-e`). Docker's `PATH`, `HOSTNAME` and, in
    /// TTY mode, `TERM=xterm` come first; an entry here with the same key replaces them.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub terminal: bool,
    /// Initial window size `(rows, cols)` in TTY mode.
    pub console_size: Option<(u16, u16)>,
    /// The VM's network interface, moved into a new network namespace for the
    /// container. Without one the container shares the guest's network stack, which
    /// has only `lo`: the VM is the network sandbox.
    pub nic: Option<String>,
    pub cap_add: Vec<Capability>,
    pub cap_drop: Vec<Capability>,
    /// `--cap-drop ALL`: start from an empty set, then apply `cap_add`.
    pub cap_drop_all: bool,
    pub readonly_rootfs: bool,
    /// `--security-opt no-new-privileges` (Docker's default is off).
    pub no_new_privileges: bool,
    /// `--security-opt seccomp=unconfined`.
    pub seccomp_unconfined: bool,
    /// `--memory`, bytes.
    pub memory_limit: Option<i64>,
    /// `--memory-swap`, bytes (memory + swap).
    pub memory_swap: Option<i64>,
    /// `--cpu-shares`.
    pub cpu_shares: Option<u64>,
    /// `--cpu-quota` / `--cpu-period`, microseconds (`--cpus` sets both).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--ulimit`: `(name, soft, hard)`, name as in OCI (`RLIMIT_NOFILE`).
    pub rlimits: Vec<(String, u64, u64)>,
    /// `--shm-size`, bytes.
    pub shm_size: Option<u64>,
    /// Volumes, bind mounts and tmpfs mounts, after Docker's own mounts.
    pub mounts: Vec<Mount>,
}

impl Default for SpecOptions {
    fn default() -> Self {
        Self {
            args: vec!["sh".to_owned()],
            env: Vec::new(),
            cwd: "/".to_owned(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "moat".to_owned(),
            terminal: false,
            console_size: None,
            nic: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            cap_drop_all: false,
            readonly_rootfs: false,
            no_new_privileges: false,
            seccomp_unconfined: false,
            memory_limit: None,
            memory_swap: None,
            cpu_shares: None,
            cpu_quota: None,
            cpu_period: None,
            pids_limit: None,
            rlimits: Vec::new(),
            shm_size: None,
            mounts: Vec::new(),
        }
    }
}

impl SpecOptions {
    /// Defaults for running `args`.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The capability set after `--cap-drop`/`--cap-add`, in a stable order.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut caps: Vec<Capability> = if self.cap_drop_all {
            Vec::new()
        } else {
            DOCKER_DEFAULT_CAPS
                .iter()
                .copied()
                .filter(|c| !self.cap_drop.contains(c))
                .collect()
        };
        for c in &self.cap_add {
            if !caps.contains(c) {
                caps.push(*c);
            }
        }
        caps
    }
}

/// Sets `key` of a JSON object (no-op on anything else).
fn set(v: &mut Value, key: &str, value: Value) {
    if let Value::Object(map) = v {
        map.insert(key.to_owned(), value);
    }
}

/// Docker's device cgroup rules: moby's default list followed by runc's always-allowed
/// devices (they end up in one list in a `docker run` container's cgroup).
fn device_rules() -> Value {
    let c = |major: i64, minor: Option<i64>, allow: bool| {
        let mut v = json!({"allow": allow, "type": "c", "major": major, "access": "rwm"});
        if let Some(m) = minor {
            set(&mut v, "minor", json!(m));
        }
        v
    };
    json!([
        {"allow": false, "access": "rwm"},
        c(1, Some(5), true),    // /dev/zero
        c(1, Some(3), true),    // /dev/null
        c(1, Some(9), true),    // /dev/urandom
        c(1, Some(8), true),    // /dev/random
        c(5, Some(0), true),    // /dev/tty
        c(5, Some(1), true),    // /dev/console
        c(10, Some(229), false), // /dev/fuse
        {"allow": true, "type": "c", "access": "m"}, // mknod of any char device
        {"allow": true, "type": "b", "access": "m"}, // mknod of any block device
        c(1, Some(7), true),    // /dev/full
        c(136, None, true),     // /dev/pts/*
        c(5, Some(2), true),    // /dev/ptmx
        c(10, Some(200), true), // /dev/net/tun
    ])
}

fn docker_mounts(shm_size: u64) -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={shm_size}")]},
    ])
}

fn env(opts: &SpecOptions) -> Vec<String> {
    // Docker's order: its own entries first, then each user entry replaces the entry
    // with the same key in place or is appended.
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", opts.hostname),
    ];
    if opts.terminal {
        env.push("TERM=xterm".to_owned());
    }
    for entry in &opts.env {
        let key = entry.split('=').next();
        match env.iter_mut().find(|e| e.split('=').next() == key) {
            Some(slot) => slot.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    env
}

fn resources(opts: &SpecOptions) -> Value {
    let mut r = json!({"devices": device_rules()});
    if opts.memory_limit.is_some() || opts.memory_swap.is_some() {
        let mut m = json!({});
        if let Some(l) = opts.memory_limit {
            set(&mut m, "limit", json!(l));
        }
        if let Some(s) = opts.memory_swap {
            set(&mut m, "swap", json!(s));
        }
        set(&mut r, "memory", m);
    }
    if opts.cpu_shares.is_some() || opts.cpu_quota.is_some() || opts.cpu_period.is_some() {
        let mut c = json!({});
        if let Some(s) = opts.cpu_shares {
            set(&mut c, "shares", json!(s));
        }
        if let Some(q) = opts.cpu_quota {
            set(&mut c, "quota", json!(q));
        }
        if let Some(p) = opts.cpu_period {
            set(&mut c, "period", json!(p));
        }
        set(&mut r, "cpu", c);
    }
    if let Some(p) = opts.pids_limit {
        set(&mut r, "pids", json!({"limit": p}));
    }
    r
}

/// The OCI spec `docker run` would produce for `opts`. `root.path` is left as
/// `rootfs`: the agent points it at the overlay it mounts.
pub fn docker_default(opts: &SpecOptions) -> Result<Spec, SpecError> {
    let caps = opts.capabilities();
    let cap_names = serde_json::to_value(&caps).map_err(|e| SpecError::Build(e.to_string()))?;

    let mut namespaces = vec![
        json!({"type": "mount"}),
        json!({"type": "uts"}),
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "cgroup"}),
    ];
    if opts.nic.is_some() {
        namespaces.push(json!({"type": "network"}));
    }

    let mut rlimits = Vec::new();
    if !opts.rlimits.iter().any(|(n, _, _)| n == "RLIMIT_NOFILE") {
        rlimits
            .push(json!({"type": "RLIMIT_NOFILE", "soft": DEFAULT_NOFILE, "hard": DEFAULT_NOFILE}));
    }
    for (name, soft, hard) in &opts.rlimits {
        rlimits.push(json!({"type": name, "soft": soft, "hard": hard}));
    }

    let mut user = json!({"uid": opts.uid, "gid": opts.gid});
    if !opts.additional_gids.is_empty() {
        set(&mut user, "additionalGids", json!(opts.additional_gids));
    }
    let mut process = json!({
        "terminal": opts.terminal,
        "user": user,
        "args": opts.args,
        "env": env(opts),
        "cwd": opts.cwd,
        "capabilities": {
            "bounding": cap_names,
            "effective": cap_names,
            "permitted": cap_names,
        },
        "rlimits": rlimits,
    });
    if opts.no_new_privileges {
        set(&mut process, "noNewPrivileges", json!(true));
    }
    if let (true, Some((rows, cols))) = (opts.terminal, opts.console_size) {
        set(
            &mut process,
            "consoleSize",
            json!({"height": rows, "width": cols}),
        );
    }

    let mut mounts = docker_mounts(opts.shm_size.unwrap_or(DEFAULT_SHM_SIZE));
    let extra = serde_json::to_value(&opts.mounts).map_err(|e| SpecError::Build(e.to_string()))?;
    if let (Some(list), Value::Array(more)) = (mounts.as_array_mut(), extra) {
        // A user mount on a default destination replaces the default, as in Docker.
        let dests: Vec<Value> = more.iter().map(|m| m["destination"].clone()).collect();
        list.retain(|m| !dests.contains(&m["destination"]));
        list.extend(more);
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": DOCKER_MASKED_PATHS,
        "readonlyPaths": DOCKER_READONLY_PATHS,
        "resources": resources(opts),
    });
    if let Some(nic) = &opts.nic {
        set(
            &mut linux,
            "netDevices",
            json!({ nic.as_str(): {"name": nic} }),
        );
    }
    if !opts.seccomp_unconfined {
        let profile = seccomp::docker_profile(&caps, seccomp::native_go_arch())?;
        let profile = serde_json::to_value(profile).map_err(|e| SpecError::Build(e.to_string()))?;
        set(&mut linux, "seccomp", profile);
    }

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": opts.readonly_rootfs},
        "hostname": opts.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(spec).map_err(|e| SpecError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType};

    fn spec() -> Spec {
        docker_default(&SpecOptions::new(["sh", "-c", "echo hi"])).unwrap()
    }

    #[test]
    fn process_defaults() {
        let s = spec();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["sh", "-c", "echo hi"]);
        assert_eq!(
            p.env().as_ref().unwrap(),
            &[format!("PATH={DEFAULT_PATH}"), "HOSTNAME=moat".to_owned()]
        );
        assert_eq!(p.cwd().to_str(), Some("/"));
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        assert_eq!(p.no_new_privileges(), None);
        let caps = p.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), 14);
        for c in DOCKER_DEFAULT_CAPS {
            assert!(bounding.contains(&c), "{c:?}");
        }
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert!(caps.inheritable().is_none() || caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().is_none() || caps.ambient().as_ref().unwrap().is_empty());
        let nofile = p.rlimits().as_ref().unwrap()[0];
        assert_eq!(nofile.typ(), PosixRlimitType::RlimitNofile);
        assert_eq!(
            (nofile.soft(), nofile.hard()),
            (DEFAULT_NOFILE, DEFAULT_NOFILE)
        );
    }

    #[test]
    fn linux_defaults() {
        let s = spec();
        let l = s.linux().as_ref().unwrap();
        let ns: Vec<_> = l
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            ns,
            [
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Cgroup
            ]
        );
        assert_eq!(l.masked_paths().as_ref().unwrap().len(), 12);
        assert_eq!(l.readonly_paths().as_ref().unwrap().len(), 5);
        let devices = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert!(!devices[0].allow());
        assert!(devices
            .iter()
            .any(|d| d.allow() && d.major() == Some(136) && d.minor().is_none()));
        assert!(l.seccomp().is_some());
        assert!(l.net_devices().is_none());
        let dests: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/dev/shm"
            ]
        );
        assert_eq!(s.hostname().as_deref(), Some("moat"));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    }

    #[test]
    fn options_are_applied() {
        let mut o = SpecOptions::new(["top"]);
        o.terminal = true;
        o.console_size = Some((40, 120));
        o.nic = Some("eth0".into());
        o.cap_drop = vec![Capability::NetRaw];
        o.cap_add = vec![Capability::SysPtrace];
        o.memory_limit = Some(256 << 20);
        o.pids_limit = Some(100);
        o.cpu_quota = Some(50_000);
        o.cpu_period = Some(100_000);
        o.uid = 1000;
        o.gid = 1000;
        o.additional_gids = vec![10, 20];
        o.env = vec!["FOO=bar".into(), "PATH=/bin".into(), "HOSTNAME=nope".into()];
        o.rlimits = vec![("RLIMIT_NOFILE".into(), 10, 20)];
        o.mounts = vec![oci_spec::runtime::MountBuilder::default()
            .destination("/dev/shm")
            .typ("tmpfs")
            .source("shm")
            .options(vec!["size=1m".to_owned()])
            .build()
            .unwrap()];
        let s = docker_default(&o).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.terminal(), Some(true));
        let size = p.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (40, 120));
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/bin", "HOSTNAME=nope", "TERM=xterm", "FOO=bar"]
        );
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[10, 20][..]));
        let bounding = p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert!(!bounding.contains(&Capability::NetRaw));
        assert!(bounding.contains(&Capability::SysPtrace));
        let rl = p.rlimits().as_ref().unwrap();
        assert_eq!(rl.len(), 1);
        assert_eq!((rl[0].soft(), rl[0].hard()), (10, 20));
        let l = s.linux().as_ref().unwrap();
        assert!(l
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(l.net_devices().as_ref().unwrap().contains_key("eth0"));
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(256 << 20));
        assert_eq!(r.pids().unwrap().limit(), 100);
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        // With CAP_SYS_PTRACE the profile allows kcmp.
        let sec = l.seccomp().as_ref().unwrap();
        assert!(sec
            .syscalls()
            .iter()
            .flatten()
            .any(|sc| sc.names().iter().any(|n| n == "kcmp")));
        // The user's /dev/shm replaced Docker's.
        let shm: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().to_str() == Some("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(
            shm[0].options().as_deref(),
            Some(&["size=1m".to_owned()][..])
        );
    }

    #[test]
    fn cap_drop_all_and_unconfined() {
        let mut o = SpecOptions::new(["true"]);
        o.cap_drop_all = true;
        o.cap_add = vec![Capability::Kill];
        o.seccomp_unconfined = true;
        let s = docker_default(&o).unwrap();
        let caps = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 1);
        assert!(s.linux().as_ref().unwrap().seccomp().is_none());
    }
}
