//! The flattened device tree an aarch64 guest boots with: everything the kernel
//! cannot probe. It describes memory, the vCPUs (by MPIDR, started through
//! PSCI), PSCI itself, the GICv3, the architected timer, the UART's clock, the
//! 8250 UART, the boot-time marker, each virtio-mmio device, and `/chosen`
//! (command line, initrd, console). This module builds the blob with `vm-fdt`;
//! it owns the node layout and property values, takes every address from
//! `layout.rs`, and writes nothing into guest memory.

use std::ffi::CString;

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::{self, GicLayout};
use super::regs::mpidr_affinity;
use super::InitrdRegion;
use crate::arch::VirtioMmioInfo;

/// Device-tree interrupt specifier fields for `arm,gic-v3` (`#interrupt-cells
/// = <3>`: type, number, flags).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// PPIs of the architected timer, in the order the `arm,armv8-timer` binding
/// lists them: secure physical, non-secure physical, virtual, hypervisor. KVM
/// raises the virtual timer on PPI 11 and the physical one on PPI 14.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// The UART's input clock: 1.8432 MHz, the 8250's classic crystal (115200 baud
/// with a divisor of 1). The emulated UART ignores baud rates; Linux only needs a
/// plausible clock to compute divisors.
pub const UART_CLOCK_HZ: u32 = 1_843_200;

const PHANDLE_GIC: u32 = 1;
const PHANDLE_UART_CLOCK: u32 = 2;

/// Everything the device tree says that is not fixed by the layout.
#[derive(Debug, Clone)]
pub struct FdtConfig<'a> {
    /// Guest RAM size in bytes, from `layout::RAM_START`.
    pub mem_size: u64,
    /// The kernel command line.
    pub cmdline: &'a CString,
    /// Each vCPU's MPIDR_EL1 as KVM set it, vCPU 0 first.
    pub mpidrs: &'a [u64],
    pub initrd: Option<InitrdRegion>,
    pub devices: &'a [VirtioMmioInfo],
}

/// Why the device tree could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error("build device tree: {0}")]
    Write(#[from] vm_fdt::Error),
    #[error("build device tree: {0} vCPUs, expected 1..=255")]
    VcpuCount(usize),
    #[error("build device tree: the kernel command line is not valid UTF-8")]
    Cmdline,
    #[error("build device tree: {size} bytes, more than the boot protocol's {max}")]
    TooLarge { size: usize, max: u64 },
}

/// `reg` of a node with `#address-cells = <2>, #size-cells = <2>`.
fn reg(fdt: &mut FdtWriter, base: u64, size: u64) -> FdtWriterResult<()> {
    fdt.property_array_u64("reg", &[base, size])
}

/// Builds the device tree blob.
pub fn create_fdt(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    let vcpus =
        u8::try_from(cfg.mpidrs.len()).map_err(|_| FdtError::VcpuCount(cfg.mpidrs.len()))?;
    if vcpus == 0 {
        return Err(FdtError::VcpuCount(0));
    }
    let cmdline = cfg.cmdline.to_str().map_err(|_| FdtError::Cmdline)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    // No board to name: "linux,dummy-virt" is what Linux knows generic virtual
    // platforms by.
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "moat microVM")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    write_chosen(&mut fdt, cmdline, cfg.initrd)?;
    write_memory(&mut fdt, cfg.mem_size)?;
    write_cpus(&mut fdt, cfg.mpidrs)?;
    write_psci(&mut fdt)?;
    write_gic(&mut fdt, &layout::gic_layout(vcpus))?;
    write_timer(&mut fdt)?;
    write_uart(&mut fdt)?;
    write_boot_marker(&mut fdt)?;
    for device in cfg.devices {
        write_virtio_mmio(&mut fdt, device)?;
    }

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(FdtError::TooLarge {
            size: blob.len(),
            max: layout::FDT_MAX_SIZE,
        });
    }
    Ok(blob)
}

fn uart_path() -> String {
    format!("/uart@{:x}", layout::SERIAL_MMIO_START)
}

fn write_chosen(
    fdt: &mut FdtWriter,
    cmdline: &str,
    initrd: Option<InitrdRegion>,
) -> FdtWriterResult<()> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cmdline)?;
    // The console when the command line names none, and the early console for a
    // bare `earlycon`.
    fdt.property_string("stdout-path", &uart_path())?;
    if let Some(initrd) = initrd {
        fdt.property_u64("linux,initrd-start", initrd.addr)?;
        fdt.property_u64("linux,initrd-end", initrd.addr + initrd.size)?;
    }
    fdt.end_node(chosen)
}

fn write_memory(fdt: &mut FdtWriter, mem_size: u64) -> FdtWriterResult<()> {
    let memory = fdt.begin_node(&format!("memory@{:x}", layout::RAM_START))?;
    fdt.property_string("device_type", "memory")?;
    reg(fdt, layout::RAM_START, mem_size)?;
    fdt.end_node(memory)
}

fn write_cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> FdtWriterResult<()> {
    let cpus = fdt.begin_node("cpus")?;
    // MPIDR affinities need two cells (Aff3 sits above bit 31).
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in mpidrs {
        let affinity = mpidr_affinity(*mpidr);
        let cpu = fdt.begin_node(&format!("cpu@{affinity:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        // Secondary vCPUs start powered off; the guest starts them with PSCI
        // CPU_ON.
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", affinity)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)
}

fn write_psci(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let psci = fdt.begin_node("psci")?;
    // KVM implements PSCI 0.2 and later (the vCPUs are created with
    // KVM_ARM_VCPU_PSCI_0_2); the guest asks for the exact version. Its
    // SYSTEM_OFF and SYSTEM_RESET are how the VM ends.
    fdt.property_string("compatible", "arm,psci-0.2")?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)
}

fn write_gic(fdt: &mut FdtWriter, gic: &GicLayout) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("intc@{:x}", gic.dist.0))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // An interrupt provider states its address cells (interrupt-map lookups
    // use them); 2/2 with an empty `ranges`, as for an ITS child, which this
    // GIC does not have.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u64(
        "reg",
        &[gic.dist.0, gic.dist.1, gic.redists.0, gic.redists.1],
    )?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_phandle(PHANDLE_GIC)?;
    fdt.end_node(node)
}

fn write_timer(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|ppi| [GIC_PPI, *ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    // The timer keeps counting while a vCPU idles (KVM emulates WFI), so Linux
    // needs no broadcast timer.
    fdt.property_null("always-on")?;
    fdt.end_node(timer)
}

fn write_uart(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let clock = fdt.begin_node("uartclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "uartclk")?;
    fdt.property_phandle(PHANDLE_UART_CLOCK)?;
    fdt.end_node(clock)?;

    // An 8250 (16550A) with byte-wide registers: Linux's of_serial driver binds
    // it, and it becomes ttyS0.
    let uart = fdt.begin_node(&format!("uart@{:x}", layout::SERIAL_MMIO_START))?;
    fdt.property_string("compatible", "ns16550a")?;
    reg(fdt, layout::SERIAL_MMIO_START, layout::SERIAL_MMIO_SIZE)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_u32("clocks", PHANDLE_UART_CLOCK)?;
    // The UART raises its line through an irqfd, one edge per event.
    fdt.property_array_u32(
        "interrupts",
        &[GIC_SPI, layout::SERIAL_SPI, IRQ_TYPE_EDGE_RISING],
    )?;
    fdt.end_node(uart)
}

fn write_boot_marker(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    // No driver binds it; it documents the page for whoever reads
    // /proc/device-tree (the guest agent writes it through /dev/mem).
    let marker = fdt.begin_node(&format!("boot-marker@{:x}", layout::BOOT_MARKER_START))?;
    fdt.property_string("compatible", "moat,boot-marker")?;
    reg(fdt, layout::BOOT_MARKER_START, layout::BOOT_MARKER_SIZE)?;
    fdt.end_node(marker)
}

fn write_virtio_mmio(fdt: &mut FdtWriter, device: &VirtioMmioInfo) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("virtio_mmio@{:x}", device.addr))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    reg(fdt, device.addr, device.size)?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, device.irq, IRQ_TYPE_EDGE_RISING])?;
    // The device reads and writes guest RAM coherently (it is the VMM, on the
    // same caches); without this the guest would map DMA buffers uncached.
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn sample() -> Vec<u8> {
        let cmdline = CString::new("console=ttyS0 panic=-1").unwrap();
        let mpidrs = [0x8000_0000, 0x8000_0001];
        let devices = [
            VirtioMmioInfo {
                addr: 0x4000_2000,
                size: 0x1000,
                irq: 2,
            },
            VirtioMmioInfo {
                addr: 0x4000_3000,
                size: 0x1000,
                irq: 3,
            },
        ];
        create_fdt(&FdtConfig {
            mem_size: 256 * MIB,
            cmdline: &cmdline,
            mpidrs: &mpidrs,
            initrd: Some(InitrdRegion {
                addr: 0x8f00_0000,
                size: 0x12_3456,
            }),
            devices: &devices,
        })
        .unwrap()
    }

    /// Decompiles `blob` with `dtc`, or `None` (after saying why) without it.
    fn decompile(blob: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.dtb");
        std::fs::write(&path, blob).unwrap();
        let out = match Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!(
                    "SKIPPED: device tree check: run dtc: {e} \
                     (install Debian's device-tree-compiler; `make deps` does)"
                );
                return None;
            }
        };
        assert!(
            out.status.success(),
            "dtc refused the blob: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // dtc warns about what it finds questionable; the tree must be clean.
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "dtc warnings: {warnings}");
        Some(String::from_utf8(out.stdout).unwrap())
    }

    /// The lines of node `name` (its properties and children), without
    /// indentation; panics if it is missing.
    fn node<'a>(dts: &'a str, name: &str) -> Vec<&'a str> {
        let mut lines = dts.lines().map(str::trim);
        let open = format!("{name} {{");
        assert!(
            lines
                .by_ref()
                .any(|l| l == open || l.ends_with(&format!(": {open}"))),
            "no node {name} in:\n{dts}"
        );
        let mut depth = 1;
        let mut body = Vec::new();
        for l in lines {
            if l.ends_with('{') {
                depth += 1;
            } else if l == "};" {
                depth -= 1;
                if depth == 0 {
                    return body;
                }
            }
            body.push(l);
        }
        panic!("node {name} is not closed");
    }

    fn has(node: &[&str], line: &str) -> bool {
        node.contains(&line)
    }

    #[test]
    fn device_tree_decompiles_to_what_linux_needs() {
        let blob = sample();
        let Some(dts) = decompile(&blob) else {
            return;
        };
        let root = node(&dts, "/");
        for line in [
            "compatible = \"linux,dummy-virt\";",
            "#address-cells = <0x02>;",
            "#size-cells = <0x02>;",
            "interrupt-parent = <0x01>;",
        ] {
            assert!(has(&root, line), "root lacks {line}:\n{dts}");
        }

        let chosen = node(&dts, "chosen");
        assert!(
            has(&chosen, "bootargs = \"console=ttyS0 panic=-1\";"),
            "{chosen:?}"
        );
        assert!(
            has(&chosen, "stdout-path = \"/uart@40001000\";"),
            "{chosen:?}"
        );
        assert!(
            has(&chosen, "linux,initrd-start = <0x00 0x8f000000>;"),
            "{chosen:?}"
        );
        assert!(
            has(&chosen, "linux,initrd-end = <0x00 0x8f123456>;"),
            "{chosen:?}"
        );

        let memory = node(&dts, "memory@80000000");
        assert!(has(&memory, "device_type = \"memory\";"));
        assert!(
            has(&memory, "reg = <0x00 0x80000000 0x00 0x10000000>;"),
            "{memory:?}"
        );

        let cpus = node(&dts, "cpus");
        assert!(has(&cpus, "#address-cells = <0x02>;"));
        assert!(has(&cpus, "#size-cells = <0x00>;"));
        for (name, reg) in [("cpu@0", "<0x00 0x00>"), ("cpu@1", "<0x00 0x01>")] {
            let cpu = node(&dts, name);
            assert!(has(&cpu, "device_type = \"cpu\";"), "{cpu:?}");
            assert!(has(&cpu, "compatible = \"arm,arm-v8\";"), "{cpu:?}");
            assert!(has(&cpu, "enable-method = \"psci\";"), "{cpu:?}");
            assert!(has(&cpu, &format!("reg = {reg};")), "{cpu:?}");
        }

        let psci = node(&dts, "psci");
        assert!(has(&psci, "compatible = \"arm,psci-0.2\";"));
        assert!(has(&psci, "method = \"hvc\";"));

        // Two vCPUs: two 128 KiB redistributors right below the distributor.
        let gic = node(&dts, "intc@7fff0000");
        for line in [
            "compatible = \"arm,gic-v3\";",
            "interrupt-controller;",
            "#interrupt-cells = <0x03>;",
            "reg = <0x00 0x7fff0000 0x00 0x10000 0x00 0x7ffb0000 0x00 0x40000>;",
            "phandle = <0x01>;",
        ] {
            assert!(has(&gic, line), "gic lacks {line}: {gic:?}");
        }

        let timer = node(&dts, "timer");
        assert!(has(&timer, "compatible = \"arm,armv8-timer\";"));
        assert!(
            has(
                &timer,
                "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;"
            ),
            "{timer:?}"
        );

        let clock = node(&dts, "uartclk");
        assert!(has(&clock, "compatible = \"fixed-clock\";"));
        assert!(has(&clock, "#clock-cells = <0x00>;"));
        assert!(has(&clock, "clock-frequency = <0x1c2000>;"));
        assert!(has(&clock, "phandle = <0x02>;"));

        let uart = node(&dts, "uart@40001000");
        for line in [
            "compatible = \"ns16550a\";",
            "reg = <0x00 0x40001000 0x00 0x1000>;",
            "clock-frequency = <0x1c2000>;",
            "clocks = <0x02>;",
            "interrupts = <0x00 0x01 0x01>;",
        ] {
            assert!(has(&uart, line), "uart lacks {line}: {uart:?}");
        }

        let marker = node(&dts, "boot-marker@40000000");
        assert!(has(&marker, "reg = <0x00 0x40000000 0x00 0x1000>;"));

        for (name, reg, irq) in [
            ("virtio_mmio@40002000", "0x40002000", "0x02"),
            ("virtio_mmio@40003000", "0x40003000", "0x03"),
        ] {
            let dev = node(&dts, name);
            assert!(has(&dev, "compatible = \"virtio,mmio\";"), "{dev:?}");
            assert!(
                has(&dev, &format!("reg = <0x00 {reg} 0x00 0x1000>;")),
                "{dev:?}"
            );
            assert!(
                has(&dev, &format!("interrupts = <0x00 {irq} 0x01>;")),
                "{dev:?}"
            );
            assert!(has(&dev, "dma-coherent;"), "{dev:?}");
        }
        assert_eq!(dts.matches("virtio,mmio").count(), 2);
    }

    #[test]
    fn device_tree_without_initrd_or_devices() {
        let cmdline = CString::new("console=ttyS0").unwrap();
        let blob = create_fdt(&FdtConfig {
            mem_size: 64 * MIB,
            cmdline: &cmdline,
            mpidrs: &[0x8000_0000],
            initrd: None,
            devices: &[],
        })
        .unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "fdt magic");
        let Some(dts) = decompile(&blob) else {
            return;
        };
        let chosen = node(&dts, "chosen");
        assert!(
            !chosen.iter().any(|l| l.starts_with("linux,initrd")),
            "{chosen:?}"
        );
        assert!(!dts.contains("virtio,mmio"));
        let gic = node(&dts, "intc@7fff0000");
        assert!(
            has(
                &gic,
                "reg = <0x00 0x7fff0000 0x00 0x10000 0x00 0x7ffd0000 0x00 0x20000>;"
            ),
            "{gic:?}"
        );
    }

    #[test]
    fn refuses_impossible_vcpu_counts() {
        let cmdline = CString::new("x").unwrap();
        let cfg = |mpidrs| FdtConfig {
            mem_size: 64 * MIB,
            cmdline: &cmdline,
            mpidrs,
            initrd: None,
            devices: &[],
        };
        assert!(matches!(create_fdt(&cfg(&[])), Err(FdtError::VcpuCount(0))));
        let many = vec![0x8000_0000u64; 256];
        assert!(matches!(
            create_fdt(&cfg(&many)),
            Err(FdtError::VcpuCount(256))
        ));
    }
}
