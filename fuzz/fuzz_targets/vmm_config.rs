//! The VM configuration and the kernel command line built from it. The first
//! byte picks the input: a `--config` JSON document, or the command-line flags
//! (arguments separated by NUL bytes; `--config` itself is dropped so no file
//! is read). A configuration that validates must give a command line within
//! the architecture's limit that names every virtio-mmio device it asks for.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use moat_vmm::arch::{kernel_cmdline, layout, VirtioMmioInfo, CMDLINE_MAX_SIZE};
use moat_vmm::builder::base_cmdline;
use moat_vmm::cli::Cli;
use moat_vmm::config::VmConfig;

fn check(cfg: &VmConfig) {
    let _ = cfg.memory_bytes();
    for f in &cfg.fs {
        let _ = f.all_mounts();
    }
    for n in &cfg.net {
        let _ = n.mac_bytes();
    }
    if cfg.validate().is_err() {
        return;
    }
    let Ok(base) = base_cmdline(cfg) else {
        return;
    };
    let mut devices = Vec::new();
    let mut added = Vec::new();
    for slot in 0..cfg.virtio_device_count() {
        let (addr, irq) = layout::virtio_mmio_slot(slot).expect("validate bounds the device count");
        devices.push(VirtioMmioInfo {
            addr,
            size: layout::VIRTIO_MMIO_SIZE,
            irq,
        });
        added.push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }
    let Ok(cmdline) = kernel_cmdline(&base, &devices) else {
        // Too long for the limit: the builder fails the VM the same way.
        return;
    };
    let c = cmdline
        .as_cstring()
        .expect("a built command line has no NUL");
    let s = c.to_str().expect("command line is UTF-8");
    assert!(
        c.as_bytes_with_nul().len() <= CMDLINE_MAX_SIZE,
        "command line over the limit"
    );
    for a in &added {
        assert!(s.contains(a.as_str()), "{a} missing from {s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(cfg) = VmConfig::from_json(text, std::path::Path::new("fuzz.json")) {
            check(&cfg);
        }
    } else {
        let args = std::iter::once("moat-vmm").chain(text.split('\0'));
        if let Ok(mut cli) = Cli::try_parse_from(args) {
            cli.config = None;
            if let Ok(cfg) = cli.to_config() {
                check(&cfg);
            }
        }
    }
});
