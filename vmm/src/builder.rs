//! Assembles a running microVM from a validated `VmConfig`, as one straight
//! recipe of small steps (Firecracker's habit):
//!
//! `enter_fs_sandbox` → `build_virtio_devices` → `create_vm` → `setup_memory` →
//! `load_kernel` → `setup_irqchip` → `create_vcpus` (then `Irqchip::finish`) →
//! `attach_legacy_devices` → `attach_boot_marker` → `attach_virtio_device`
//! (each) → `configure_system` → `start_vcpus`; the caller then runs
//! `Vmm::start`, which confines the main thread and lets the vCPUs run.
//!
//! The same recipe builds x86_64 and aarch64 VMs: `arch` exports the same names
//! for both. Ordering rules are stated where they bind; where the two
//! architectures have different reasons for the same order, both are given. This
//! module owns the order and the wiring between parts (slots, IRQs, irqfds,
//! ioeventfds, the command line); each part's own work lives in `arch`, `vstate`
//! and `devices`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{self, layout, EntryPoint, InitrdRegion, LoadedKernel, VirtioMmioInfo};
use crate::config::{ConfigError, ConsoleConfig, ConsoleOutput, VmConfig};
use crate::devices::boot_marker::BootMarker;
use crate::devices::bus::{Bus, BusError, Buses};
use crate::devices::legacy::{ConsoleWriter, IrqTrigger, SerialDevice};
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportError, NOTIFY_REG_OFFSET};
use crate::devices::virtio::{block, fs, net, rng, vsock};
use crate::devices::virtio::{GuestMemory, Interrupt, VirtioDevice};
use crate::exit::{ExitCode, ExitHandle};
use crate::seccomp::{self, Filters, SeccompError};
use crate::vmm::Vmm;
use crate::vstate::memory::{create_guest_memory, GuestRam, MemoryError};
use crate::vstate::vcpu::{self, StartGate, Vcpu};
use crate::vstate::vm::{CreateVmError, RegisterEventError, RegisterMemoryError, Vm};

/// Why a virtio device could not be created from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: {source}")]
    Create {
        device: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Boxes a freshly created device, or names it in the error.
pub fn created<D, E>(
    device: &'static str,
    result: Result<D, E>,
) -> Result<Box<dyn VirtioDevice>, DeviceError>
where
    D: VirtioDevice + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(dev) => Ok(Box::new(dev)),
        Err(e) => Err(DeviceError::Create {
            device,
            source: Box::new(e),
        }),
    }
}

/// The virtio-fs devices' configurations, as the device takes them.
fn fs_configs(config: &VmConfig) -> Vec<fs::FsConfig> {
    config
        .fs
        .iter()
        .map(|c| fs::FsConfig {
            tag: c.tag.clone(),
            num_request_queues: c.num_request_queues,
            mounts: c
                .all_mounts()
                .into_iter()
                .map(|m| fs::FsMount {
                    guest_path: m.guest_path,
                    host_dir: m.host_dir,
                    read_only: m.read_only,
                })
                .collect(),
        })
        .collect()
}

/// Creates the configured virtio devices, in slot order: vsock, shares, network,
/// disks, rng. One line per device kind. The virtio-fs sandbox must have been
/// entered already (see [`enter_fs_sandbox`]).
pub fn build_virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, DeviceError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(c) = &config.vsock {
        devices.push(created(
            "vsock",
            vsock::Vsock::new(vsock::VsockConfig {
                guest_cid: c.guest_cid,
                uds_path: c.uds_path.clone(),
            }),
        )?);
    }
    for c in fs_configs(config) {
        devices.push(created("fs", fs::Fs::new(c))?);
    }
    for c in &config.net {
        let mac = c.mac_bytes().map_err(|reason| DeviceError::Create {
            device: "net",
            source: reason.into(),
        })?;
        devices.push(created(
            "net",
            net::Net::new(net::NetConfig {
                tap_name: c.tap.clone(),
                mac,
            }),
        )?);
    }
    for c in &config.disks {
        devices.push(created(
            "block",
            block::Block::new(block::BlockConfig {
                path: c.path.clone(),
                read_only: c.read_only,
                id: c.id.clone(),
            }),
        )?);
    }
    if config.rng.is_some() {
        devices.push(created("rng", rng::Rng::new(rng::RngConfig::default()))?);
    }
    Ok(devices)
}

/// Enters the virtio-fs mount-namespace sandbox when shares are configured.
/// Must run while the process is single-threaded, before the devices exist.
pub fn enter_fs_sandbox(config: &VmConfig) -> Result<(), fs::sandbox::SandboxError> {
    let configs = fs_configs(config);
    if configs.is_empty() {
        return Ok(());
    }
    fs::sandbox::enter(configs.iter().flat_map(|c| &c.mounts))
}

/// Why a virtio device could not be attached to the VM.
#[derive(Debug, thiserror::Error)]
pub enum AttachDeviceError {
    #[error("attach {device}: all {max} virtio-mmio slots are taken")]
    NoSlot { device: &'static str, max: usize },
    #[error("attach {device}: create irq eventfd: {source}")]
    EventFd {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("attach {device}: {source}")]
    Register {
        device: &'static str,
        #[source]
        source: RegisterEventError,
    },
    #[error(transparent)]
    Transport(#[from] MmioTransportError),
    #[error("attach {device}: {source}")]
    Bus {
        device: &'static str,
        #[source]
        source: BusError,
    },
}

/// Why the legacy devices could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachLegacyError {
    #[error("open console output {path}: {source}")]
    ConsoleFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create serial irq eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Arch(#[from] arch::LegacyDevicesError),
    #[error("attach boot marker: {0}")]
    BootMarker(#[source] BusError),
}

/// Why vCPUs could not be created, or the interrupt controller not completed
/// once they were.
#[derive(Debug, thiserror::Error)]
pub enum CreateVcpusError {
    #[error(transparent)]
    Template(#[from] arch::CpuTemplateError),
    #[error("create vcpu {vcpu}: {source}")]
    Create {
        vcpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Configure(#[from] arch::ConfigureVcpuError),
    #[error(transparent)]
    FinishIrqchip(#[from] arch::IrqchipError),
}

/// Why vCPUs could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartVcpusError {
    #[error("install the vcpu kick signal handler: {0}")]
    Signal(#[source] kvm_ioctls::Error),
    #[error("start vcpu thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why the VM could not be started. One variant per step of the recipe.
#[derive(Debug, thiserror::Error)]
pub enum StartVmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sandbox(#[from] fs::sandbox::SandboxError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    CreateVm(#[from] CreateVmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    RegisterMemory(#[from] RegisterMemoryError),
    #[error("open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LoadKernel(#[from] arch::LoadKernelError),
    #[error(transparent)]
    LoadInitrd(#[from] arch::LoadInitrdError),
    #[error(transparent)]
    Irqchip(#[from] arch::IrqchipError),
    #[error(transparent)]
    Legacy(#[from] AttachLegacyError),
    #[error(transparent)]
    AttachDevice(#[from] AttachDeviceError),
    #[error(transparent)]
    ConfigureSystem(#[from] arch::ConfigureSystemError),
    #[error(transparent)]
    CreateVcpus(#[from] CreateVcpusError),
    #[error(transparent)]
    StartVcpus(#[from] StartVcpusError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

impl StartVmError {
    /// Problems with what the caller asked for (configuration, files named in
    /// it, device configurations the devices refuse) exit with `BadConfig`; the rest with
    /// `Error`.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StartVmError::Config(_)
            | StartVmError::Device(_)
            | StartVmError::Open { .. }
            | StartVmError::LoadKernel(_)
            | StartVmError::LoadInitrd(_)
            | StartVmError::Legacy(AttachLegacyError::ConsoleFile { .. }) => ExitCode::BadConfig,
            StartVmError::Sandbox(
                fs::sandbox::SandboxError::HostDir { .. }
                | fs::sandbox::SandboxError::NotDirectory { .. }
                | fs::sandbox::SandboxError::Conflict { .. }
                | fs::sandbox::SandboxError::SystemDir { .. },
            ) => ExitCode::BadConfig,
            _ => ExitCode::Error,
        }
    }
}

/// Opens `/dev/kvm` and creates the VM.
fn create_vm() -> Result<Vm, StartVmError> {
    Ok(Vm::new()?)
}

/// Maps guest RAM and gives it to KVM.
fn setup_memory(vm: &Vm, size: u64) -> Result<GuestRam, StartVmError> {
    let ram = create_guest_memory(size)?;
    vm.register_memory(ram.memory())?;
    Ok(ram)
}

fn open(what: &'static str, path: &Path) -> Result<File, StartVmError> {
    File::open(path).map_err(|source| StartVmError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Loads the kernel, then the initrd above it.
fn load_kernel(
    mem: &GuestMemory,
    config: &VmConfig,
) -> Result<(LoadedKernel, Option<InitrdRegion>), StartVmError> {
    let Some(kernel_path) = &config.kernel else {
        return Err(ConfigError::Invalid {
            field: "kernel".into(),
            message: "required".into(),
        }
        .into());
    };
    let mut kernel_file = open("kernel", kernel_path)?;
    let kernel = arch::load_kernel(mem, &mut kernel_file, kernel_path, config.boot_protocol)?;
    let initrd = match &config.initrd {
        Some(path) => {
            let mut file = open("initrd", path)?;
            Some(arch::load_initrd(
                mem,
                config.memory_bytes(),
                &mut file,
                path,
                kernel.kernel_end,
            )?)
        }
        None => None,
    };
    Ok((kernel, initrd))
}

fn console_writer(
    config: &ConsoleConfig,
    exit: &ExitHandle,
) -> Result<ConsoleWriter, AttachLegacyError> {
    let sink: Option<Box<dyn Write + Send>> = match &config.output {
        ConsoleOutput::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleOutput::Stderr => Some(Box::new(std::io::stderr())),
        ConsoleOutput::None => None,
        ConsoleOutput::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AttachLegacyError::ConsoleFile {
                    path: path.clone(),
                    source,
                })?;
            Some(Box::new(file))
        }
    };
    // An interactive console shows every byte at once; otherwise whole lines.
    Ok(ConsoleWriter::new(sink, !config.input, exit.clone()))
}

/// Creates the serial console and puts it (with the i8042 on x86_64) where the
/// architecture wants it. Needs the irqchip (the serial's irqfd).
fn attach_legacy_devices(
    vm: &Vm,
    buses: &mut Buses,
    config: &VmConfig,
    exit: &ExitHandle,
) -> Result<Arc<Mutex<SerialDevice>>, AttachLegacyError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(AttachLegacyError::EventFd)?;
    let trigger = IrqTrigger(irq.try_clone().map_err(AttachLegacyError::EventFd)?);
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        trigger,
        console_writer(&config.console, exit)?,
    )));
    arch::attach_legacy_devices(vm.fd(), buses, serial.clone(), &irq, exit)?;
    Ok(serial)
}

/// Puts the boot-time marker where the layout says (the first page of the MMIO
/// window on both architectures).
fn attach_boot_marker(mmio: &mut Bus, start: Instant) -> Result<(), AttachLegacyError> {
    mmio.insert(
        Arc::new(Mutex::new(BootMarker::new(start))),
        "boot-marker",
        layout::BOOT_MARKER_START,
        layout::BOOT_MARKER_SIZE,
    )
    .map_err(AttachLegacyError::BootMarker)
}

/// The kernel command line before any device added itself: the configured
/// one or the default, checked against the architecture's size limit.
pub fn base_cmdline(config: &VmConfig) -> Result<Cmdline, ConfigError> {
    Cmdline::try_from(config.cmdline_or_default(), arch::CMDLINE_MAX_SIZE).map_err(|e| {
        ConfigError::Invalid {
            field: "cmdline".into(),
            message: e.to_string(),
        }
    })
}

/// Attaches any virtio device in virtio-mmio slot `slot`: its MMIO window and
/// IRQ from the layout, an irqfd for its interrupt, and one ioeventfd per queue
/// on `QueueNotify` (datamatch = queue index). Returns the transport and how
/// the guest is to be told about the device (`configure_system` does that: a
/// command-line entry on x86_64, a device-tree node on aarch64). Needs the
/// irqchip.
pub fn attach_virtio_device(
    vm: &Vm,
    mem: &GuestMemory,
    mmio: &mut Bus,
    slot: usize,
    device: Box<dyn VirtioDevice>,
) -> Result<(Arc<Mutex<MmioTransport>>, VirtioMmioInfo), AttachDeviceError> {
    let name = device.name();
    let (addr, irq) = layout::virtio_mmio_slot(slot).ok_or(AttachDeviceError::NoSlot {
        device: name,
        max: layout::MAX_VIRTIO_DEVICES,
    })?;
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| AttachDeviceError::EventFd {
        device: name,
        source,
    })?;
    let interrupt = Interrupt::new(irqfd);
    vm.register_irqfd(interrupt.irqfd(), irq)
        .map_err(|source| AttachDeviceError::Register {
            device: name,
            source,
        })?;
    let transport = MmioTransport::new(mem.clone(), device, interrupt)?;
    for (index, evt) in (0u32..).zip(transport.queue_evts()) {
        vm.register_mmio_ioevent(evt, addr + NOTIFY_REG_OFFSET, index)
            .map_err(|source| AttachDeviceError::Register {
                device: name,
                source,
            })?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), name, addr, layout::VIRTIO_MMIO_SIZE)
        .map_err(|source| AttachDeviceError::Bus {
            device: name,
            source,
        })?;
    tracing::debug!(
        device = name,
        slot,
        addr = format_args!("{addr:#x}"),
        irq,
        "virtio device attached"
    );
    let info = VirtioMmioInfo {
        addr,
        size: layout::VIRTIO_MMIO_SIZE,
        irq,
    };
    Ok((transport, info))
}

/// vCPUs created and configured, not yet running.
#[derive(Debug)]
struct CreatedVcpus {
    fds: Vec<kvm_ioctls::VcpuFd>,
    /// What the boot information needs to know about them (aarch64: the MPIDR
    /// KVM gave each, which the device tree lists).
    infos: Vec<arch::VcpuBootInfo>,
}

/// Creates and configures every vCPU, then completes the interrupt controller.
/// Needs the irqchip (x86_64: each LAPIC is set up here; aarch64: each vCPU
/// registers its GIC redistributor as it is created).
fn create_vcpus(
    vm: &Vm,
    irqchip: &arch::Irqchip,
    count: u8,
    entry: EntryPoint,
) -> Result<CreatedVcpus, CreateVcpusError> {
    let template = arch::CpuTemplate::new(vm.kvm(), vm.fd())?;
    let mut fds = Vec::with_capacity(usize::from(count));
    let mut infos = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| CreateVcpusError::Create { vcpu: id, source })?;
        infos.push(arch::configure_vcpu(&template, &fd, id, count, entry)?);
        fds.push(fd);
    }
    // Ordering: on aarch64 the vGIC is initialised (KVM_DEV_ARM_VGIC_CTRL_INIT)
    // only once every vCPU exists: the init sizes its per-vCPU state from the
    // vCPUs present and fails while one is still being created. It must also
    // come before any vCPU runs and before any irqfd is registered (KVM answers
    // EAGAIN to an irqfd until the vGIC is initialised). x86_64 has nothing left
    // to do here.
    irqchip.finish()?;
    Ok(CreatedVcpus { fds, infos })
}

/// Starts one thread per vCPU, each dispatching its exits to `buses`. Each
/// installs the vCPU filter (with `filters`) and then waits for `gate` before
/// its first `KVM_RUN`. If one cannot start, the others are stopped. Each logs
/// at debug level when it first enters `KVM_RUN`, counted from `start` (the
/// VMM process's start).
fn start_vcpus(
    fds: Vec<kvm_ioctls::VcpuFd>,
    buses: &Arc<Buses>,
    exit: &ExitHandle,
    start: Instant,
    filters: Option<&Arc<Filters>>,
    gate: &StartGate,
) -> Result<Vec<std::thread::JoinHandle<()>>, StartVcpusError> {
    vcpu::register_kick_signal().map_err(StartVcpusError::Signal)?;
    let mut handles = Vec::with_capacity(fds.len());
    for (id, fd) in (0u8..).zip(fds) {
        let vcpu = Vcpu::new(id, fd, buses.clone(), exit.clone())
            .report_first_run(start)
            .confined(filters.cloned(), gate.clone());
        match vcpu.start() {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                gate.abort();
                vcpu::stop_vcpus(exit, handles, Duration::from_secs(1));
                return Err(StartVcpusError::Thread(e));
            }
        }
    }
    Ok(handles)
}

fn elapsed_us(start: Instant) -> u128 {
    start.elapsed().as_micros()
}

/// Builds the VM described by `config`, its vCPU threads started and held
/// before their first `KVM_RUN` until [`Vmm::start`] (or [`Vmm::wait`]).
/// `start` is when the VMM process started (the boot marker's zero).
pub fn build_microvm(config: &VmConfig, start: Instant) -> Result<Vmm, StartVmError> {
    build_microvm_with(config, start, Vec::new())
}

/// Like [`build_microvm`], with `extra` devices attached after the configured
/// ones (for embedders and tests with devices of their own).
pub fn build_microvm_with(
    config: &VmConfig,
    start: Instant,
    extra: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vmm, StartVmError> {
    config.validate()?;
    // Compiled first, so a filter that cannot be built fails before any work.
    let filters = if config.seccomp {
        Some(Filters::compile(vcpu::kick_signal())?)
    } else {
        tracing::warn!(
            "seccomp filters are off: a guest that exploits a device bug gets every syscall of the VMM"
        );
        None
    };
    // Ordering: the virtio-fs sandbox needs a single-threaded process and comes
    // before the shares are opened.
    enter_fs_sandbox(config)?;
    // Devices next: a bad device configuration fails before any KVM work.
    let mut devices = build_virtio_devices(config)?;
    devices.extend(extra);
    if devices.len() > layout::MAX_VIRTIO_DEVICES {
        return Err(ConfigError::Invalid {
            field: "(devices)".into(),
            message: format!(
                "{} virtio devices, at most {}",
                devices.len(),
                layout::MAX_VIRTIO_DEVICES
            ),
        }
        .into());
    }

    let vm = create_vm()?;
    let ram = setup_memory(&vm, config.memory_bytes())?;
    let mem = ram.memory().clone();
    tracing::debug!(elapsed_us = elapsed_us(start), "vm and guest memory ready");
    let (kernel, initrd) = load_kernel(&mem, config)?;
    tracing::debug!(
        elapsed_us = elapsed_us(start),
        ?initrd,
        "kernel and initrd loaded"
    );

    // Ordering: the interrupt controller comes before any vCPU and before any
    // irqfd (an irqfd injects into it). x86_64: KVM refuses an irqchip once
    // vCPUs exist. aarch64: the vGIC device is created and given its addresses
    // here, before the vCPUs, so each vCPU registers its redistributor as it is
    // created; it is completed after them (see `create_vcpus`).
    let irqchip = arch::setup_irqchip(vm.fd(), config.vcpus)?;

    // Ordering: vCPUs come before the devices. aarch64: an irqfd can only be
    // registered once the vGIC is initialised, which needs every vCPU. x86_64
    // does not mind either way. They run only at the end.
    let vcpus = create_vcpus(&vm, &irqchip, config.vcpus, kernel.entry)?;

    let exit = ExitHandle::new();
    let mut buses = Buses::new();
    let serial = attach_legacy_devices(&vm, &mut buses, config, &exit)?;
    attach_boot_marker(&mut buses.mmio, start)?;

    let cmdline = base_cmdline(config)?;
    let mut transports = Vec::with_capacity(devices.len());
    let mut virtio_infos = Vec::with_capacity(devices.len());
    for (slot, device) in devices.into_iter().enumerate() {
        let (transport, info) = attach_virtio_device(&vm, &mem, &mut buses.mmio, slot, device)?;
        transports.push(transport);
        virtio_infos.push(info);
    }

    // Ordering: the boot information comes last, before any vCPU runs: it needs
    // every device (x86_64: the command line; aarch64: the device tree) and, on
    // aarch64, every vCPU's MPIDR, which KVM assigns at vCPU init.
    arch::configure_system(
        &mem,
        config.memory_bytes(),
        &cmdline,
        &vcpus.infos,
        kernel.entry,
        initrd,
        &virtio_infos,
    )?;

    // Ordering: the worker launcher comes before the vCPUs. Devices ask for
    // their workers from vCPU threads; the launcher, confined to what workers
    // may do, starts them, so they do not inherit the vCPU filter.
    if let Some(filters) = &filters {
        seccomp::start_launcher(filters)?;
    }
    // Ordering: buses are complete and read-only from here on; vCPUs share
    // them. vCPUs start last, once everything they can reach exists; each
    // confines itself and waits at the gate, which `Vmm::start` opens once
    // the main thread is confined too.
    let buses = Arc::new(buses);
    let gate = StartGate::new();
    let handles = start_vcpus(vcpus.fds, &buses, &exit, start, filters.as_ref(), &gate)?;
    tracing::debug!(elapsed_us = elapsed_us(start), "vcpus started");
    Ok(Vmm::new(
        vm,
        ram,
        exit,
        handles,
        serial,
        transports,
        config.console.input,
        gate,
        filters,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..VmConfig::default()
        }
    }

    #[test]
    fn devices_are_created_in_slot_order() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = VmConfig {
            vsock: Some(crate::config::VsockConfig {
                guest_cid: 3,
                uds_path: dir.path().join("v.sock"),
            }),
            disks: vec![crate::config::DiskConfig {
                path: disk.path().to_owned(),
                read_only: true,
                id: None,
            }],
            rng: Some(crate::config::RngConfig {}),
            ..config()
        };
        let devices = build_virtio_devices(&cfg).unwrap();
        let names: Vec<_> = devices.iter().map(|d| d.name()).collect();
        assert_eq!(names, vec!["vsock", "block", "rng"]);
        assert!(build_virtio_devices(&config()).unwrap().is_empty());
    }

    #[test]
    fn device_errors_name_the_device() {
        let cases: Vec<(VmConfig, &str)> = vec![
            (
                VmConfig {
                    vsock: Some(crate::config::VsockConfig {
                        guest_cid: 3,
                        uds_path: "/nonexistent/dir/v.sock".into(),
                    }),
                    ..config()
                },
                "device vsock: ",
            ),
            (
                VmConfig {
                    disks: vec!["path=/nonexistent/disk.img".parse().unwrap()],
                    ..config()
                },
                "device block: ",
            ),
        ];
        for (cfg, prefix) in cases {
            let err = build_microvm(&cfg, Instant::now()).unwrap_err();
            assert!(err.to_string().starts_with(prefix), "{err}");
            assert_eq!(err.exit_code(), ExitCode::BadConfig);
        }
    }

    #[test]
    fn invalid_config_is_refused_before_kvm() {
        let err = build_microvm(&VmConfig::default(), Instant::now()).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::BadConfig);
        assert!(err.to_string().contains("`kernel`"), "{err}");
    }

    #[test]
    fn start_errors_classify() {
        let open = StartVmError::Open {
            what: "kernel",
            path: "/k".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(open.exit_code(), ExitCode::BadConfig);
        assert!(open.to_string().starts_with("open kernel /k: "));
        let kvm = StartVmError::CreateVm(CreateVmError::ApiVersion(11));
        assert_eq!(kvm.exit_code(), ExitCode::Error);
    }

    #[test]
    fn created_names_the_device_in_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("socket in use")]
        struct Busy;
        #[derive(Debug)]
        struct Never;
        impl VirtioDevice for Never {
            fn name(&self) -> &'static str {
                "never"
            }
            fn device_type(&self) -> u32 {
                0
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[]
            }
            fn avail_features(&self) -> u64 {
                0
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn activate(
                &mut self,
                _: crate::devices::virtio::ActivateContext,
            ) -> Result<(), crate::devices::virtio::ActivateError> {
                Ok(())
            }
        }
        let err = created::<Never, Busy>("vsock", Err(Busy)).unwrap_err();
        assert_eq!(err.to_string(), "device vsock: socket in use");
        assert!(created::<Never, Busy>("x", Ok(Never)).is_ok());
    }
}
