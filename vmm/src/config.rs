//! The VM configuration: what `--config vm.json` holds (and what the command-line
//! flags fill in), how it is parsed (serde, unknown fields refused) and
//! validated. Errors name the field. The types also serialize, so a supervisor
//! (moat-runtime) writes the file from them and the two sides cannot drift. This
//! module owns the configuration types only; it opens no files besides the config
//! itself and creates no devices.
//!
//! ```json
//! {
//!   "vcpus": 2,
//!   "memory_mib": 256,
//!   "kernel": "/var/lib/moat/vmlinux",
//!   "initrd": "/var/lib/moat/initrd.cpio",
//!   "cmdline": "console=ttyS0 reboot=k panic=-1 quiet",
//!   "boot_protocol": "auto",
//!   "console": { "output": { "file": "/run/moat/c1/console.log" }, "input": false },
//!   "vsock": { "guest_cid": 3, "uds_path": "/run/moat/c1/vsock.sock" },
//!   "fs": [ { "tag": "rootfs", "path": "/var/lib/moat/layers/ab12", "read_only": true },
//!           { "tag": "layers", "mounts": [ { "guest_path": "/0", "host_dir": "/l/0", "read_only": true },
//!                                          { "guest_path": "/upper", "host_dir": "/c1/upper" } ] } ],
//!   "net": [ { "tap": "moat0", "mac": "02:00:00:00:00:01" } ],
//!   "disks": [ { "path": "/c1/scratch.img", "read_only": false, "id": "scratch" } ],
//!   "rng": {},
//!   "seccomp": true
//! }
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arch;

/// Smallest guest: room for the low boot structures and a small kernel.
pub const MIN_MEMORY_MIB: u32 = 8;
/// Largest guest: 1 TiB.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// virtio-fs tags are at most 36 bytes (the config space field).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Linux interface names are at most 15 bytes.
pub const MAX_TAP_NAME_LEN: usize = 15;
/// virtio-blk serial numbers are at most 20 bytes.
pub const MAX_DISK_ID_LEN: usize = 20;

fn default_vcpus() -> u8 {
    1
}

fn default_memory_mib() -> u32 {
    128
}

fn default_seccomp() -> bool {
    true
}

fn default_request_queues() -> u16 {
    1
}

/// How the kernel is entered (x86_64; an arm64 Image has one entry, so aarch64
/// refuses anything but `auto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocolChoice {
    /// PVH when the kernel has the PVH note, the 64-bit entry otherwise.
    #[default]
    Auto,
    /// The 64-bit Linux boot protocol.
    Linux64,
    /// PVH; fails if the kernel has no PVH note.
    Pvh,
}

/// Where the serial console's output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleOutput {
    #[default]
    Stdout,
    Stderr,
    None,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

impl FromStr for ConsoleOutput {
    type Err = String;

    /// `stdout`, `stderr`, `none` or `file:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(ConsoleOutput::Stdout),
            "stderr" => Ok(ConsoleOutput::Stderr),
            "none" => Ok(ConsoleOutput::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(ConsoleOutput::File(path.into())),
                _ => Err(format!(
                    "console output `{s}`: expected stdout, stderr, none or file:PATH"
                )),
            },
        }
    }
}

/// The serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub output: ConsoleOutput,
    /// Feed the VMM's stdin to the guest's console.
    #[serde(default)]
    pub input: bool,
}

/// virtio-vsock, Firecracker-style hybrid: guest ports map to a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// One directory of a virtio-fs device, at `guest_path` inside the share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsMountConfig {
    pub guest_path: String,
    pub host_dir: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// A virtio-fs device: either one host directory (`path`, shared at the root)
/// or several (`mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub mounts: Vec<FsMountConfig>,
    #[serde(default = "default_request_queues")]
    pub num_request_queues: u16,
}

impl FsConfig {
    /// The device's mounts: `path` as a single mount at `/`, or `mounts`.
    pub fn all_mounts(&self) -> Vec<FsMountConfig> {
        match &self.path {
            Some(path) => vec![FsMountConfig {
                guest_path: "/".into(),
                host_dir: path.clone(),
                read_only: self.read_only,
            }],
            None => self.mounts.clone(),
        }
    }
}

impl FromStr for FsConfig {
    type Err = String;

    /// `tag=T,path=P[,ro]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tag = None;
        let mut path = None;
        let mut read_only = false;
        for (key, value) in key_values(s)? {
            match (key, value) {
                ("tag", Some(v)) => tag = Some(v.to_owned()),
                ("path", Some(v)) => path = Some(PathBuf::from(v)),
                ("ro", None) => read_only = true,
                _ => {
                    return Err(format!(
                        "fs `{s}`: unknown option `{key}`; expected tag=T,path=P[,ro]"
                    ))
                }
            }
        }
        Ok(FsConfig {
            tag: tag.ok_or_else(|| format!("fs `{s}`: tag= is required"))?,
            path: Some(path.ok_or_else(|| format!("fs `{s}`: path= is required"))?),
            read_only,
            mounts: Vec::new(),
            num_request_queues: default_request_queues(),
        })
    }
}

/// A virtio-net device on a tap interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    /// `xx:xx:xx:xx:xx:xx`; generated by the device when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

impl NetConfig {
    /// The MAC address as bytes, if given and valid.
    pub fn mac_bytes(&self) -> Result<Option<[u8; 6]>, String> {
        self.mac.as_deref().map(parse_mac).transpose()
    }
}

impl FromStr for NetConfig {
    type Err = String;

    /// `NAME[,mac=MAC]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(2, ',');
        let tap = parts.next().unwrap_or_default().to_owned();
        let mut mac = None;
        if let Some(rest) = parts.next() {
            for (key, value) in key_values(rest)? {
                match (key, value) {
                    ("mac", Some(v)) => mac = Some(v.to_owned()),
                    _ => {
                        return Err(format!(
                            "tap `{s}`: unknown option `{key}`; expected NAME[,mac=MAC]"
                        ))
                    }
                }
            }
        }
        Ok(NetConfig { tap, mac })
    }
}

/// A virtio-blk device on a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Serial number the guest sees (`/sys/block/vdX/serial`).
    #[serde(default)]
    pub id: Option<String>,
}

impl FromStr for DiskConfig {
    type Err = String;

    /// `path=P[,ro][,id=ID]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut path = None;
        let mut read_only = false;
        let mut id = None;
        for (key, value) in key_values(s)? {
            match (key, value) {
                ("path", Some(v)) => path = Some(PathBuf::from(v)),
                ("ro", None) => read_only = true,
                ("id", Some(v)) => id = Some(v.to_owned()),
                _ => {
                    return Err(format!(
                        "disk `{s}`: unknown option `{key}`; expected path=P[,ro][,id=ID]"
                    ))
                }
            }
        }
        Ok(DiskConfig {
            path: path.ok_or_else(|| format!("disk `{s}`: path= is required"))?,
            read_only,
            id,
        })
    }
}

/// A virtio-rng device (entropy from the host's `getrandom`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {}

/// The whole VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// ELF `vmlinux` (x86_64) or arm64 `Image` (aarch64). Required, from the
    /// file or `--kernel`.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel boot arguments (and init arguments after ` -- `); the VMM appends
    /// its virtio-mmio devices. Default: `arch::DEFAULT_CMDLINE`.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub boot_protocol: BootProtocolChoice,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub rng: Option<RngConfig>,
    /// Confine the VMM's threads with seccomp filters (default on; off only
    /// for debugging, see `--no-seccomp`).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            kernel: None,
            initrd: None,
            cmdline: None,
            boot_protocol: BootProtocolChoice::default(),
            console: ConsoleConfig::default(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            disks: Vec::new(),
            rng: None,
            seccomp: default_seccomp(),
        }
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Splits `a=1,b,c=2` into `(key, Some(value))` / `(key, None)` pairs.
fn key_values(s: &str) -> Result<Vec<(&str, Option<&str>)>, String> {
    s.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, Some(v))),
            None if !part.is_empty() => Ok((part, None)),
            _ => Err(format!("`{s}`: empty key or value in `{part}`")),
        })
        .collect()
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex), refusing multicast addresses.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "mac `{s}`: expected six hex bytes separated by `:`"
        ));
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("mac `{s}`: `{part}` is not two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("mac `{s}`: `{part}` is not two hex digits"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac `{s}`: multicast address"));
    }
    Ok(mac)
}

impl VmConfig {
    /// Parses a configuration from JSON text; `path` only names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // serde would also take a JSON array for a struct; a config is an object.
        if !text.trim_start().starts_with('{') {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                field: "(top level)".into(),
                message: "expected a JSON object".into(),
            });
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Parse {
                path: path.to_owned(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// The guest memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// The kernel boot arguments, given or default.
    pub fn cmdline_or_default(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(arch::DEFAULT_CMDLINE)
    }

    /// How many virtio-mmio devices the configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock.is_some())
            + self.fs.len()
            + self.net.len()
            + self.disks.len()
            + usize::from(self.rng.is_some())
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > arch::MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!("{} is out of range 1..={}", self.vcpus, arch::MAX_VCPUS),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!(
                    "{} is out of range {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    self.memory_mib
                ),
            ));
        }
        match &self.kernel {
            None => {
                return Err(invalid(
                    "kernel",
                    "required (in the config file or --kernel)",
                ))
            }
            Some(p) if p.as_os_str().is_empty() => return Err(invalid("kernel", "empty path")),
            Some(_) => {}
        }
        if matches!(&self.initrd, Some(p) if p.as_os_str().is_empty()) {
            return Err(invalid("initrd", "empty path"));
        }
        let cmdline = self.cmdline_or_default();
        if let Some(c) = cmdline.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(invalid("cmdline", format!("{c:?} is not printable ASCII")));
        }
        if cmdline.len() >= arch::CMDLINE_MAX_SIZE {
            return Err(invalid(
                "cmdline",
                format!(
                    "{} bytes, at most {} (devices are appended to it)",
                    cmdline.len(),
                    arch::CMDLINE_MAX_SIZE - 1
                ),
            ));
        }
        let parsed = linux_loader::cmdline::Cmdline::try_from(cmdline, arch::CMDLINE_MAX_SIZE)
            .map_err(|e| invalid("cmdline", e.to_string()))?;
        // Init arguments (after ` -- `) go to the kernel after its own; with
        // none of its own the kernel would read the init's as its own, and
        // linux-loader refuses to write such a line. Refused here, where the
        // message can name the field, not when the VM is half built.
        if let Err(linux_loader::cmdline::Error::NoBootArgsInserted) = parsed.as_cstring() {
            return Err(invalid(
                "cmdline",
                "arguments after `--` (for init) need kernel arguments before them",
            ));
        }
        if let ConsoleOutput::File(p) = &self.console.output {
            if p.as_os_str().is_empty() {
                return Err(invalid("console.output.file", "empty path"));
            }
        }
        if let Some(vsock) = &self.vsock {
            if !(3..u64::from(u32::MAX)).contains(&vsock.guest_cid) {
                return Err(invalid(
                    "vsock.guest_cid",
                    format!(
                        "{} is reserved or out of range 3..=4294967294",
                        vsock.guest_cid
                    ),
                ));
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return Err(invalid("vsock.uds_path", "empty path"));
            }
        }
        let mut tags = Vec::new();
        for (i, fs) in self.fs.iter().enumerate() {
            let field = |f: &str| format!("fs[{i}].{f}");
            if fs.tag.is_empty() || fs.tag.len() > MAX_FS_TAG_LEN {
                return Err(invalid(
                    field("tag"),
                    format!("`{}` must be 1..={MAX_FS_TAG_LEN} bytes", fs.tag),
                ));
            }
            if tags.contains(&fs.tag.as_str()) {
                return Err(invalid(field("tag"), format!("`{}` is used twice", fs.tag)));
            }
            tags.push(&fs.tag);
            match (&fs.path, fs.mounts.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(
                        field("mounts"),
                        "give either path or mounts, not both",
                    ))
                }
                (None, true) => return Err(invalid(field("path"), "give path or mounts")),
                _ => {}
            }
            if fs.num_request_queues == 0 {
                return Err(invalid(field("num_request_queues"), "must be at least 1"));
            }
            for (j, m) in fs.all_mounts().iter().enumerate() {
                if !m.guest_path.starts_with('/') {
                    return Err(invalid(
                        field(&format!("mounts[{j}].guest_path")),
                        format!("`{}` is not absolute", m.guest_path),
                    ));
                }
                if m.host_dir.as_os_str().is_empty() {
                    return Err(invalid(
                        field(&format!("mounts[{j}].host_dir")),
                        "empty path",
                    ));
                }
            }
        }
        for (i, net) in self.net.iter().enumerate() {
            let tap = &net.tap;
            let bad_char = tap
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
            if tap.is_empty()
                || tap.len() > MAX_TAP_NAME_LEN
                || bad_char
                || tap == "."
                || tap == ".."
            {
                return Err(invalid(
                    format!("net[{i}].tap"),
                    format!("`{tap}` is not a valid interface name (1..={MAX_TAP_NAME_LEN} bytes, no `/`, `:` or spaces)"),
                ));
            }
            net.mac_bytes()
                .map_err(|e| invalid(format!("net[{i}].mac"), e))?;
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if disk.path.as_os_str().is_empty() {
                return Err(invalid(format!("disks[{i}].path"), "empty path"));
            }
            if let Some(id) = &disk.id {
                if id.len() > MAX_DISK_ID_LEN {
                    return Err(invalid(
                        format!("disks[{i}].id"),
                        format!("`{id}` is longer than {MAX_DISK_ID_LEN} bytes"),
                    ));
                }
            }
        }
        let devices = self.virtio_device_count();
        if devices > arch::layout::MAX_VIRTIO_DEVICES {
            return Err(invalid(
                "(devices)",
                format!(
                    "{devices} virtio devices, at most {}",
                    arch::layout::MAX_VIRTIO_DEVICES
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_json(text, Path::new("vm.json"))
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => field,
            ConfigError::Read { .. } => panic!("unexpected read error"),
        }
    }

    #[test]
    fn full_example_parses_and_validates() {
        let text = r#"{
          "vcpus": 2, "memory_mib": 256, "kernel": "/k", "initrd": "/i",
          "cmdline": "console=ttyS0 quiet -- init_arg",
          "boot_protocol": "linux64",
          "console": { "output": { "file": "/tmp/console.log" }, "input": true },
          "vsock": { "guest_cid": 3, "uds_path": "/tmp/v.sock" },
          "fs": [ { "tag": "root", "path": "/srv", "read_only": true },
                  { "tag": "layers", "mounts": [ { "guest_path": "/0", "host_dir": "/l0", "read_only": true } ],
                    "num_request_queues": 2 } ],
          "net": [ { "tap": "moat0", "mac": "02:00:00:00:00:01" } ],
          "disks": [ { "path": "/d.img", "id": "scratch" } ],
          "rng": {}
        }"#;
        let cfg = parse(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.boot_protocol, BootProtocolChoice::Linux64);
        assert_eq!(
            cfg.console.output,
            ConsoleOutput::File("/tmp/console.log".into())
        );
        assert_eq!(cfg.fs[0].all_mounts()[0].guest_path, "/");
        assert!(cfg.fs[0].all_mounts()[0].read_only);
        assert_eq!(cfg.fs[1].all_mounts().len(), 2 - 1);
        assert_eq!(cfg.net[0].mac_bytes().unwrap(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(cfg.virtio_device_count(), 6);
        assert_eq!(cfg.memory_bytes(), 256 << 20);
        assert!(cfg.seccomp, "seccomp is on unless turned off");
        let off = parse(r#"{"kernel": "/k", "seccomp": false}"#).unwrap();
        assert!(!off.seccomp);
        assert_eq!(
            field_of(parse(r#"{"seccomp": "no"}"#).unwrap_err()),
            "seccomp"
        );
    }

    #[test]
    fn serialized_config_parses_back_to_itself() {
        let cfg = VmConfig {
            vcpus: 2,
            memory_mib: 256,
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            cmdline: Some("console=ttyS0 moat.fs=moat:/mnt/moat".into()),
            boot_protocol: BootProtocolChoice::Pvh,
            console: ConsoleConfig {
                output: ConsoleOutput::File("/c/console.log".into()),
                input: false,
            },
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/c/vsock.sock".into(),
            }),
            fs: vec![FsConfig {
                tag: "moat".into(),
                path: None,
                read_only: false,
                mounts: vec![
                    FsMountConfig {
                        guest_path: "/layers/0".into(),
                        host_dir: "/l/0".into(),
                        read_only: true,
                    },
                    FsMountConfig {
                        guest_path: "/upper".into(),
                        host_dir: "/c/upper".into(),
                        read_only: false,
                    },
                ],
                num_request_queues: 1,
            }],
            net: vec!["moat0,mac=02:00:00:00:00:01".parse().unwrap()],
            disks: vec!["path=/d.img,ro,id=x".parse().unwrap()],
            rng: Some(RngConfig {}),
            seccomp: false,
        };
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg, "{text}");
        let minimal = VmConfig {
            kernel: Some("/k".into()),
            ..VmConfig::default()
        };
        let text = serde_json::to_string(&minimal).unwrap();
        assert_eq!(parse(&text).unwrap(), minimal, "{text}");
    }

    #[test]
    fn defaults() {
        let cfg = parse(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!((cfg.vcpus, cfg.memory_mib), (1, 128));
        assert_eq!(cfg.console, ConsoleConfig::default());
        assert_eq!(cfg.cmdline_or_default(), arch::DEFAULT_CMDLINE);
        cfg.validate().unwrap();
        assert_eq!(
            parse(r#"{"console": {"output": "none"}}"#)
                .unwrap()
                .console
                .output,
            ConsoleOutput::None
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (r#"{"vcpus": "two"}"#, "vcpus"),
            (r#"{"vcpus": 300}"#, "vcpus"),
            (r#"{"memory_mib": -1}"#, "memory_mib"),
            (r#"{"console": {"output": "printer"}}"#, "console.output"),
            (r#"{"console": {"colour": true}}"#, "console.colour"),
            (
                r#"{"fs": [{"tag": "a", "path": "/x", "rw": true}]}"#,
                "fs[0].rw",
            ),
            (r#"{"vsock": {"guest_cid": 3}}"#, "vsock"),
            (r#"{"boot_protocol": "bios"}"#, "boot_protocol"),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err();
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{text}: {msg}");
            assert!(msg.starts_with("config vm.json: field `"), "{msg}");
        }
        let unknown = parse(r#"{"kernal": "/k"}"#).unwrap_err().to_string();
        assert!(unknown.contains("unknown field `kernal`"), "{unknown}");
        assert!(parse("{").is_err());
        assert!(parse("").is_err());
        assert!(parse("[]").is_err());
    }

    #[test]
    fn validation_errors_name_the_field() {
        let base = || VmConfig {
            kernel: Some("/k".into()),
            ..VmConfig::default()
        };
        let cases: Vec<(VmConfig, &str)> = vec![
            (VmConfig { vcpus: 0, ..base() }, "vcpus"),
            (
                VmConfig {
                    vcpus: arch::MAX_VCPUS + 1,
                    ..base()
                },
                "vcpus",
            ),
            (
                VmConfig {
                    memory_mib: 4,
                    ..base()
                },
                "memory_mib",
            ),
            (
                VmConfig {
                    memory_mib: u32::MAX,
                    ..base()
                },
                "memory_mib",
            ),
            (
                VmConfig {
                    kernel: None,
                    ..base()
                },
                "kernel",
            ),
            (
                VmConfig {
                    initrd: Some("".into()),
                    ..base()
                },
                "initrd",
            ),
            (
                VmConfig {
                    cmdline: Some("caf\u{e9}".into()),
                    ..base()
                },
                "cmdline",
            ),
            (
                VmConfig {
                    cmdline: Some("a".repeat(5000)),
                    ..base()
                },
                "cmdline",
            ),
            (
                // Found by fuzzing (fuzz/corpus/vmm_config/crash-init-args-only):
                // this passed validation and failed the boot with exit 1 and
                // "invalid command line provided".
                VmConfig {
                    cmdline: Some("   -- init_arg".into()),
                    ..base()
                },
                "cmdline",
            ),
            (
                VmConfig {
                    cmdline: Some("a\0b".into()),
                    ..base()
                },
                "cmdline",
            ),
            (
                VmConfig {
                    cmdline: Some("a\nb".into()),
                    ..base()
                },
                "cmdline",
            ),
            (
                VmConfig {
                    vsock: Some(VsockConfig {
                        guest_cid: 2,
                        uds_path: "/v".into(),
                    }),
                    ..base()
                },
                "vsock.guest_cid",
            ),
            (
                VmConfig {
                    vsock: Some(VsockConfig {
                        guest_cid: u64::from(u32::MAX),
                        uds_path: "/v".into(),
                    }),
                    ..base()
                },
                "vsock.guest_cid",
            ),
            (
                VmConfig {
                    fs: vec![FsConfig {
                        tag: String::new(),
                        path: Some("/x".into()),
                        read_only: false,
                        mounts: vec![],
                        num_request_queues: 1,
                    }],
                    ..base()
                },
                "fs[0].tag",
            ),
            (
                VmConfig {
                    fs: vec![
                        "tag=a,path=/x".parse().unwrap(),
                        "tag=a,path=/y".parse().unwrap(),
                    ],
                    ..base()
                },
                "fs[1].tag",
            ),
            (
                VmConfig {
                    fs: vec![FsConfig {
                        tag: "a".repeat(37),
                        path: Some("/x".into()),
                        read_only: false,
                        mounts: vec![],
                        num_request_queues: 1,
                    }],
                    ..base()
                },
                "fs[0].tag",
            ),
            (
                VmConfig {
                    fs: vec![FsConfig {
                        tag: "a".into(),
                        path: None,
                        read_only: false,
                        mounts: vec![],
                        num_request_queues: 1,
                    }],
                    ..base()
                },
                "fs[0].path",
            ),
            (
                VmConfig {
                    fs: vec![FsConfig {
                        tag: "a".into(),
                        path: None,
                        read_only: false,
                        mounts: vec![FsMountConfig {
                            guest_path: "rel".into(),
                            host_dir: "/x".into(),
                            read_only: false,
                        }],
                        num_request_queues: 1,
                    }],
                    ..base()
                },
                "fs[0].mounts[0].guest_path",
            ),
            (
                VmConfig {
                    net: vec!["".parse().unwrap()],
                    ..base()
                },
                "net[0].tap",
            ),
            (
                VmConfig {
                    net: vec!["a/b".parse().unwrap()],
                    ..base()
                },
                "net[0].tap",
            ),
            (
                VmConfig {
                    net: vec!["a-very-long-interface".parse().unwrap()],
                    ..base()
                },
                "net[0].tap",
            ),
            (
                VmConfig {
                    net: vec!["t0,mac=01:00:00:00:00:01".parse().unwrap()],
                    ..base()
                },
                "net[0].mac",
            ),
            (
                VmConfig {
                    net: vec!["t0,mac=zz:00:00:00:00:01".parse().unwrap()],
                    ..base()
                },
                "net[0].mac",
            ),
            (
                VmConfig {
                    disks: vec!["path=/d,id=abcdefghijklmnopqrstuvwxyz".parse().unwrap()],
                    ..base()
                },
                "disks[0].id",
            ),
            (
                VmConfig {
                    disks: (0..=arch::layout::MAX_VIRTIO_DEVICES)
                        .map(|i| format!("path=/d{i}").parse().unwrap())
                        .collect(),
                    ..base()
                },
                "(devices)",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg
                .validate()
                .err()
                .unwrap_or_else(|| panic!("{field}: accepted {cfg:?}"));
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
            assert!(msg.starts_with(&format!("config field `{field}`")), "{msg}");
        }
    }

    #[test]
    fn flag_syntax() {
        assert_eq!(
            "stdout".parse::<ConsoleOutput>().unwrap(),
            ConsoleOutput::Stdout
        );
        assert_eq!(
            "none".parse::<ConsoleOutput>().unwrap(),
            ConsoleOutput::None
        );
        assert_eq!(
            "file:/a b".parse::<ConsoleOutput>().unwrap(),
            ConsoleOutput::File("/a b".into())
        );
        assert!("file:".parse::<ConsoleOutput>().is_err());
        assert!("tty".parse::<ConsoleOutput>().is_err());

        let fs: FsConfig = "tag=root,path=/srv,ro".parse().unwrap();
        assert_eq!((fs.tag.as_str(), fs.read_only), ("root", true));
        assert_eq!(fs.path, Some("/srv".into()));
        assert!("tag=root".parse::<FsConfig>().is_err());
        assert!("path=/x".parse::<FsConfig>().is_err());
        assert!("tag=a,path=/x,rw".parse::<FsConfig>().is_err());
        assert!("tag=a,,path=/x".parse::<FsConfig>().is_err());

        let net: NetConfig = "tap0,mac=02:00:00:00:00:02".parse().unwrap();
        assert_eq!(net.tap, "tap0");
        assert_eq!(net.mac.as_deref(), Some("02:00:00:00:00:02"));
        assert!("tap0,speed=10".parse::<NetConfig>().is_err());

        let disk: DiskConfig = "path=/d.img,ro,id=x".parse().unwrap();
        assert_eq!((disk.read_only, disk.id.as_deref()), (true, Some("x")));
        assert!("ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:ab:CD:00:00:ff").unwrap(),
            [2, 0xab, 0xcd, 0, 0, 0xff]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "02-00-00-00-00-00",
            "03:00:00:00:00:00",
            "+2:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
