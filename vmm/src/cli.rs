//! The `moat-vmm` command line: `--config vm.json` plus flags for the common
//! fields, which override (or, for repeated devices, add to) the file. This
//! module owns the flag syntax and the merge; validation is `config.rs`'s.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{
    BootProtocolChoice, ConfigError, ConsoleOutput, DiskConfig, FsConfig, NetConfig, RngConfig,
    VmConfig, VsockConfig,
};

/// moat's KVM microVM monitor: boots one VM and exits when it stops.
///
/// Exit status: 0 the guest rebooted or powered off; 1 VMM error; 2 bad
/// configuration (or a device refused its configuration); 3 guest kernel panic; 4 triple fault;
/// 5 KVM could not run a vCPU; 130/143 stopped by SIGINT/SIGTERM; 159 a VMM
/// thread made a syscall its seccomp filter refuses.
#[derive(Debug, Parser)]
#[command(name = "moat-vmm", version, args_override_self = true)]
pub struct Cli {
    /// VM configuration (JSON). Flags below override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u32>,
    /// Guest kernel: an ELF vmlinux (x86_64) or an arm64 Image (aarch64).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (boot args, then init args after ` -- `).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Kernel entry (x86_64; aarch64 accepts only auto).
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub boot_protocol: Option<BootProtocolChoice>,
    /// Serial console output: stdout, stderr, none or file:PATH.
    #[arg(long, value_name = "OUTPUT")]
    pub console: Option<ConsoleOutput>,
    /// Feed stdin to the serial console.
    #[arg(long)]
    pub console_input: bool,
    /// vsock: host Unix socket path.
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    pub vsock_uds: Option<PathBuf>,
    /// vsock: guest CID (3 or more).
    #[arg(long, value_name = "CID", requires = "vsock_uds")]
    pub vsock_cid: Option<u64>,
    /// virtio-fs share, repeatable: tag=TAG,path=DIR[,ro].
    #[arg(long = "fs", value_name = "SHARE")]
    pub fs: Vec<FsConfig>,
    /// virtio-net on a tap device, repeatable: NAME[,mac=MAC].
    #[arg(long = "tap", value_name = "TAP")]
    pub tap: Vec<NetConfig>,
    /// virtio-blk on a raw image, repeatable: path=FILE[,ro][,id=ID].
    #[arg(long = "disk", value_name = "DISK")]
    pub disk: Vec<DiskConfig>,
    /// Add a virtio-rng device.
    #[arg(long)]
    pub rng: bool,
    /// Run without the seccomp filters on the VMM's threads (debugging only:
    /// a guest that exploits a device bug then has every syscall of the VMM).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Log filter (tracing syntax, e.g. `debug` or `moat_vmm=debug`); default
    /// from MOAT_VMM_LOG, else `warn`.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl Cli {
    /// The configuration: the file's (if any), overridden by the flags.
    /// Not validated yet.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::default(),
        };
        if let Some(v) = self.vcpus {
            cfg.vcpus = v;
        }
        if let Some(v) = self.memory_mib {
            cfg.memory_mib = v;
        }
        if let Some(v) = &self.kernel {
            cfg.kernel = Some(v.clone());
        }
        if let Some(v) = &self.initrd {
            cfg.initrd = Some(v.clone());
        }
        if let Some(v) = &self.cmdline {
            cfg.cmdline = Some(v.clone());
        }
        if let Some(v) = self.boot_protocol {
            cfg.boot_protocol = v;
        }
        if let Some(v) = &self.console {
            cfg.console.output = v.clone();
        }
        if self.console_input {
            cfg.console.input = true;
        }
        if let (Some(uds_path), Some(guest_cid)) = (&self.vsock_uds, self.vsock_cid) {
            cfg.vsock = Some(VsockConfig {
                guest_cid,
                uds_path: uds_path.clone(),
            });
        }
        cfg.fs.extend(self.fs.iter().cloned());
        cfg.net.extend(self.tap.iter().cloned());
        cfg.disks.extend(self.disk.iter().cloned());
        if self.rng {
            cfg.rng = Some(RngConfig {});
        }
        if self.no_seccomp {
            cfg.seccomp = false;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("moat-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn flags_build_a_config() {
        let c = cli(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--memory-mib",
            "512",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 -- -v",
            "--boot-protocol",
            "pvh",
            "--console",
            "file:/tmp/c.log",
            "--console-input",
            "--vsock-uds",
            "/v.sock",
            "--vsock-cid",
            "7",
            "--fs",
            "tag=a,path=/a,ro",
            "--fs",
            "tag=b,path=/b",
            "--tap",
            "tap0",
            "--disk",
            "path=/d.img",
            "--rng",
        ])
        .unwrap();
        let cfg = c.to_config().unwrap();
        cfg.validate().unwrap();
        assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 512));
        assert_eq!(cfg.cmdline.as_deref(), Some("console=ttyS0 -- -v"));
        assert_eq!(cfg.boot_protocol, BootProtocolChoice::Pvh);
        assert!(cfg.console.input);
        assert_eq!(cfg.vsock.as_ref().unwrap().guest_cid, 7);
        assert_eq!(cfg.fs.len(), 2);
        assert!(cfg.fs[0].read_only && !cfg.fs[1].read_only);
        assert_eq!(cfg.net[0].tap, "tap0");
        assert!(cfg.rng.is_some());
        assert_eq!(cfg.virtio_device_count(), 6);
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(
            file,
            r#"{{"kernel": "/from-file", "vcpus": 4, "fs": [{{"tag": "f", "path": "/f"}}]}}"#
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let cfg = cli(&["--config", path, "--vcpus", "1", "--fs", "tag=g,path=/g"])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.kernel, Some("/from-file".into()));
        assert_eq!(cfg.fs.len(), 2, "repeatable devices add to the file's");
        assert!(cfg.seccomp);
    }

    #[test]
    fn no_seccomp_turns_the_filters_off() {
        assert!(
            cli(&["--kernel", "/k"])
                .unwrap()
                .to_config()
                .unwrap()
                .seccomp
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, r#"{{"kernel": "/k", "seccomp": true}}"#).unwrap();
        let path = file.path().to_str().unwrap();
        let cfg = cli(&["--config", path, "--no-seccomp"])
            .unwrap()
            .to_config()
            .unwrap();
        assert!(!cfg.seccomp, "the flag wins over the file");
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value() {
        let cfg = cli(&["--kernel", "/a", "--vcpus", "2", "--vcpus", "3"])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(cfg.vcpus, 3);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["--vcpus", "many"],
            vec!["--vcpus", "300"],
            vec!["--console", "tty"],
            vec!["--fs", "tag=a"],
            vec!["--vsock-uds", "/v"],
            vec!["--boot-protocol", "bios"],
            vec!["--frobnicate"],
        ] {
            assert!(cli(&args).is_err(), "{args:?}");
        }
        // A missing config file is a config error naming the file.
        let err = cli(&["--config", "/nonexistent/vm.json"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("read config /nonexistent/vm.json: "),
            "{err}"
        );
    }
}
