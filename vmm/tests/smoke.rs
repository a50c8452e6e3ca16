//! Smoke tests on the local `/dev/kvm` with tiny hand-written guests: a few
//! x86 instructions wrapped in an ELF, entered through the 64-bit Linux entry or
//! PVH, that write to the serial port, the boot-time marker and virtio-mmio
//! registers, and reboot through the i8042. They check `moat-vmm`'s output and
//! exit status. They cannot boot Linux (this machine's KVM may be `kvm_pvm`,
//! which emulates every instruction); the end-to-end tests do that.
//!
//! Without a usable `/dev/kvm` every test prints why and passes, unless
//! `MOAT_E2E_REQUIRED=1`, which makes that a failure.
//!
//! x86_64 only: the guests are x86 code. aarch64 boots are tested end to end
//! (`tests/vmm_boot_arm64.rs`).
#![cfg(target_arch = "x86_64")]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_vmm::builder::build_microvm_with;
use moat_vmm::config::{ConsoleOutput, VmConfig};
use moat_vmm::devices::virtio::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};
use moat_vmm::exit::VmExit;
use vmm_sys_util::eventfd::EventFd;

/// Why KVM cannot be used here, if it cannot.
fn kvm_unusable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm: {e}")),
    }
}

/// Skips the test (saying why) when KVM is unusable, or fails it when
/// `MOAT_E2E_REQUIRED=1`.
macro_rules! require_kvm {
    () => {
        if let Some(why) = kvm_unusable() {
            if std::env::var("MOAT_E2E_REQUIRED").as_deref() == Ok("1") {
                panic!("kvm smoke test required but {why}");
            }
            eprintln!("SKIPPED: kvm smoke test: {why}");
            return;
        }
    };
}

/// A tiny x86 assembler: just the instructions the guests use. The encodings
/// are the same in 32-bit protected mode and 64-bit mode unless noted.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// mov dx, 0x3f8 (COM1)
    fn serial_port(self) -> Self {
        self.bytes(&[0x66, 0xba, 0xf8, 0x03])
    }
    /// mov al, imm8; out dx, al
    fn putc(self, c: u8) -> Self {
        self.bytes(&[0xb0, c, 0xee])
    }
    fn puts(mut self, s: &[u8]) -> Self {
        for c in s {
            self = self.putc(*c);
        }
        self
    }
    /// out dx, al
    fn out_al(self) -> Self {
        self.bytes(&[0xee])
    }
    /// shr eax, 8
    fn shr_eax_8(self) -> Self {
        self.bytes(&[0xc1, 0xe8, 0x08])
    }
    /// mov ebx, imm32 (zero-extends into rbx in 64-bit mode)
    fn mov_ebx(self, imm: u32) -> Self {
        self.bytes(&[0xbb]).bytes(&imm.to_le_bytes())
    }
    /// mov dword [rbx + disp32], imm32
    fn store32(self, disp: u32, imm: u32) -> Self {
        self.bytes(&[0xc7, 0x83])
            .bytes(&disp.to_le_bytes())
            .bytes(&imm.to_le_bytes())
    }
    /// mov eax, dword [rbx + disp32]
    fn load32(self, disp: u32) -> Self {
        self.bytes(&[0x8b, 0x83]).bytes(&disp.to_le_bytes())
    }
    /// mov byte [0xd0000000], 123 through ebx (the boot-time marker)
    fn boot_marker(self) -> Self {
        self.mov_ebx(0xd000_0000).bytes(&[0xc6, 0x03, 123])
    }
    /// Pulse the i8042 reset line, then halt forever.
    fn reboot(self) -> Vec<u8> {
        self.bytes(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]).0
    }
}

const LOAD_ADDR: u64 = 0x100_0000;

/// Wraps `code` in an ELF64 executable loaded (and entered) at 16 MiB, with a
/// PVH note pointing at the same code when `pvh`.
fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_off = 64 + 56 * u64::from(phnum);
    let mut note = Vec::new();
    if pvh {
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    }
    let code_off = note_off + note.len() as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes());
    e.extend_from_slice(&0x3eu16.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes());
    e.extend_from_slice(&64u64.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, phnum, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    let mut phdr = |ptype: u32, off: u64, addr: u64, size: u64| {
        e.extend_from_slice(&ptype.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes());
        for v in [off, addr, addr, size, size, 0x1000] {
            e.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, code_off, LOAD_ADDR, code.len() as u64);
    if pvh {
        phdr(4, note_off, 0, note.len() as u64);
    }
    e.extend_from_slice(&note);
    e.extend_from_slice(code);
    e
}

struct Guest {
    dir: tempfile::TempDir,
    kernel: PathBuf,
}

impl Guest {
    fn new(code: &[u8], pvh: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, elf(code, pvh)).unwrap();
        Guest { dir, kernel }
    }

    fn console(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// Runs `moat-vmm` on this guest with extra flags; kills it after 60 s.
    fn run(&self, extra: &[&str]) -> (Output, Vec<u8>) {
        // The console file is appended to; start each run empty.
        let _ = std::fs::remove_file(self.console());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
        cmd.arg("--kernel")
            .arg(&self.kernel)
            .arg("--memory-mib")
            .arg("32")
            .arg("--console")
            .arg(format!("file:{}", self.console().display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        let console = std::fs::read(self.console()).unwrap_or_default();
        (out, console)
    }
}

fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd.spawn().expect("spawn moat-vmm");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "moat-vmm did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The microseconds of the first `moat-vmm: boot-marker <us> us` line.
fn boot_marker_us(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.strip_prefix("moat-vmm: boot-marker ")?
            .strip_suffix(" us")?
            .parse()
            .ok()
    })
}

fn ok_guest() -> Vec<u8> {
    Asm::default()
        .serial_port()
        .puts(b"OK\n")
        .boot_marker()
        .reboot()
}

#[test]
fn boots_64bit_entry_prints_marks_and_reboots() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), false);
    let (out, console) = guest.run(&["--log", "debug"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(console, b"OK\n");
    let us = boot_marker_us(&err).unwrap_or_else(|| panic!("no boot marker line in:\n{err}"));
    assert!(us > 0 && us < 60_000_000, "{us} us");
    assert!(
        err.contains("entering through the 64-bit linux boot protocol"),
        "{err}"
    );
    assert!(
        err.contains("moat-vmm: guest rebooted (exit status 0)"),
        "{err}"
    );
}

#[test]
fn boots_pvh_entry_when_the_note_is_there() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), true);
    let (out, console) = guest.run(&["--log", "debug", "--vcpus", "2"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(console, b"OK\n");
    assert!(err.contains("entering through the pvh"), "{err}");
    assert!(boot_marker_us(&err).is_some(), "{err}");
    // The same kernel, forced through the 64-bit entry.
    let (out, console) = guest.run(&["--boot-protocol", "linux64"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(console, b"OK\n");
}

#[test]
fn memory_above_the_mmio_window_and_many_vcpus() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), false);
    // 4200 MiB: RAM is split around the MMIO window; never touched, so cheap.
    let (out, console) = guest.run(&["--memory-mib", "4200", "--vcpus", "8"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(console, b"OK\n");
}

#[test]
fn real_devices_attach_beside_a_guest_that_ignores_them() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), false);
    let disk = guest.dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let share = guest.dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let disk_arg = format!("path={},ro", disk.display());
    let fs_arg = format!("tag=share,path={}", share.display());
    let uds = guest.dir.path().join("v.sock");
    let (out, console) = guest.run(&[
        "--rng",
        "--disk",
        &disk_arg,
        "--fs",
        &fs_arg,
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--log",
        "debug",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(console, b"OK\n");
    for (device, irq) in [("vsock", 5), ("virtio-fs", 6), ("block", 7), ("rng", 8)] {
        assert!(
            err.lines().any(|l| l.contains("virtio device attached")
                && l.contains(&format!("device=\"{device}\""))
                && l.contains(&format!("irq={irq}"))),
            "{device} on irq {irq}: {err}"
        );
    }
}

#[test]
fn console_to_stdout_and_nowhere() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), false);
    let (out, _) = guest.run(&["--console", "stdout"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"OK\n");
    let (out, _) = guest.run(&["--console", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn triple_fault_exits_4() {
    require_kvm!();
    // ud2 with an empty IDT: #UD, #GP, #DF cannot be delivered: shutdown.
    let code = Asm::default()
        .serial_port()
        .puts(b"X")
        .bytes(&[0x0f, 0x0b])
        .reboot();
    let guest = Guest::new(&code, false);
    let (out, console) = guest.run(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("vcpu 0: triple fault"), "{err}");
    assert_eq!(console, b"X");
}

#[test]
fn kernel_panic_banner_then_reboot_exits_3() {
    require_kvm!();
    let code = Asm::default()
        .serial_port()
        .puts(b"[    0.4] Kernel panic - not syncing: smoke test\r\n")
        .reboot();
    let guest = Guest::new(&code, false);
    let (out, console) = guest.run(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("guest kernel panic: smoke test"), "{err}");
    assert!(console.starts_with(b"[    0.4] Kernel panic"));
}

#[test]
fn kernel_panic_end_marker_exits_3_without_reboot() {
    require_kvm!();
    let code = Asm::default()
        .serial_port()
        .puts(b"Kernel panic - not syncing: no reboot\n")
        .puts(b"---[ end Kernel panic - not syncing: no reboot ]---\n")
        // Halt forever: the VMM must end the VM on its own.
        .bytes(&[0xf4, 0xeb, 0xfd])
        .0;
    let guest = Guest::new(&code, false);
    let (out, _) = guest.run(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("guest kernel panic: no reboot"), "{err}");
}

#[test]
fn sigterm_stops_the_vm_and_flushes_the_console() {
    require_kvm!();
    // A guest that writes half a line, marks, and halts for good.
    let code = Asm::default()
        .serial_port()
        .puts(b"partial")
        .boot_marker()
        .bytes(&[0xf4, 0xeb, 0xfd])
        .0;
    let guest = Guest::new(&code, false);
    let err_path = guest.dir.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .arg("--kernel")
        .arg(&guest.kernel)
        .args(["--memory-mib", "32", "--console"])
        .arg(format!("file:{}", guest.console().display()))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("boot-marker")
    {
        assert!(Instant::now() < deadline, "guest never marked");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("moat-vmm: stopped by SIGTERM (exit status 143)"),
        "{err}"
    );
    assert_eq!(std::fs::read(guest.console()).unwrap(), b"partial");
}

#[test]
fn hostile_accesses_do_not_stop_the_vm() {
    require_kvm!();
    let code = Asm::default()
        // Unclaimed MMIO: below, inside and past the virtio slots, the IOAPIC
        // gap, and RAM-less space above the window's devices.
        .mov_ebx(0xd000_1000)
        .load32(0)
        .store32(0, 0xdead_beef)
        .mov_ebx(0xd010_0000)
        .load32(0)
        .store32(0x10, 1)
        // Boot marker: wrong values and offsets are ignored.
        .mov_ebx(0xd000_0000)
        .store32(0, 124)
        .store32(4, 123)
        .load32(0)
        // Ports nobody owns, and a wide access to the serial port.
        .bytes(&[0xb0, 0x00, 0xe6, 0x80]) // out 0x80, al
        .bytes(&[0xe4, 0x71]) // in al, 0x71
        .bytes(&[0x66, 0xba, 0xf8, 0x02, 0xec]) // mov dx, 0x2f8; in al, dx
        .bytes(&[0x66, 0xba, 0xf8, 0x03, 0xed]) // mov dx, 0x3f8; in eax, dx
        .serial_port()
        .puts(b"alive\n")
        .reboot();
    let guest = Guest::new(&code, false);
    let (out, console) = guest.run(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(console, b"alive\n");
    assert!(
        boot_marker_us(&err).is_none(),
        "no mark for a wrong value: {err}"
    );
}

#[test]
fn bad_input_gets_exit_code_2_with_the_field() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), false);
    let cases: [(&[&str], &str); 5] = [
        (&["--vcpus", "0"], "config field `vcpus`"),
        (
            &["--disk", "path=/nonexistent/d.img"],
            "device block: open disk /nonexistent/d.img",
        ),
        (
            &["--fs", "tag=a,path=/nonexistent/share"],
            "virtio-fs sandbox: share /nonexistent/share",
        ),
        (
            &["--vsock-uds", "/nonexistent/v.sock", "--vsock-cid", "3"],
            "device vsock: ",
        ),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, expect) in cases {
        let (out, _) = guest.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // A kernel that does not exist, and one that is not an ELF.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.args(["--kernel", "/nonexistent/vmlinux"])
        .stderr(Stdio::piped());
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("open kernel /nonexistent/vmlinux"),
        "{}",
        stderr(&out)
    );
    let not_elf = guest.dir.path().join("not-elf");
    std::fs::write(&not_elf, b"hello").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.arg("--kernel").arg(&not_elf).stderr(Stdio::piped());
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("load kernel"), "{}", stderr(&out));
}

#[test]
fn config_file_drives_the_vm() {
    require_kvm!();
    let guest = Guest::new(&ok_guest(), true);
    let config = guest.dir.path().join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"vcpus": 2, "memory_mib": 24, "kernel": {:?}, "boot_protocol": "pvh",
                "console": {{"output": {{"file": {:?}}}}}}}"#,
            guest.kernel,
            guest.console()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
    cmd.arg("--config").arg(&config).stderr(Stdio::piped());
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(guest.console()).unwrap(), b"OK\n");
}

/// What the fake device saw, shared with the test.
#[derive(Debug, Default)]
struct Seen {
    acked_features: Option<u64>,
    queue: Option<(bool, u16, u64, u64, u64)>,
    notify: Option<EventFd>,
}

/// A virtio device with one queue of 16 that signals its interrupt when
/// activated.
#[derive(Debug)]
struct FakeDevice(Arc<Mutex<Seen>>);

impl VirtioDevice for FakeDevice {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        use virtio_queue::QueueT;
        let mut seen = self.0.lock().unwrap();
        seen.acked_features = Some(ctx.acked_features);
        let mut queues = ctx.queues;
        let q = queues.remove(0);
        seen.queue = Some((
            q.queue.ready(),
            q.queue.size(),
            q.queue.desc_table(),
            q.queue.avail_ring(),
            q.queue.used_ring(),
        ));
        seen.notify = Some(q.notify);
        ctx.interrupt
            .signal_used_queue()
            .map_err(|source| ActivateError::Io {
                device: "fake",
                source,
            })
    }
}

/// A guest plays the virtio driver through KVM's MMIO exits: reads the
/// identification registers, negotiates, configures a queue, sets DRIVER_OK,
/// notifies (through the ioeventfd), reads and acknowledges the interrupt.
#[test]
fn a_guest_drives_the_virtio_mmio_transport() {
    require_kvm!();
    let slot0 = 0xd000_1000;
    let code = Asm::default()
        .serial_port()
        .mov_ebx(slot0)
        // Magic "virt", byte by byte; device id; version.
        .load32(0x000)
        .out_al()
        .shr_eax_8()
        .out_al()
        .shr_eax_8()
        .out_al()
        .shr_eax_8()
        .out_al()
        .load32(0x008)
        .out_al()
        .load32(0x004)
        .out_al()
        // ACKNOWLEDGE, DRIVER, VERSION_1 (page 1 bit 0), FEATURES_OK.
        .store32(0x070, 1)
        .store32(0x070, 3)
        .store32(0x024, 1)
        .store32(0x020, 1)
        .store32(0x070, 0xb)
        // Queue 0: 8 entries, rings in guest RAM, ready.
        .store32(0x030, 0)
        .store32(0x038, 8)
        .store32(0x080, 0x10000)
        .store32(0x084, 0)
        .store32(0x090, 0x11000)
        .store32(0x094, 0)
        .store32(0x0a0, 0x12000)
        .store32(0x0a4, 0)
        .store32(0x044, 1)
        .store32(0x070, 0xf)
        // Status back, config byte, interrupt status, ack, interrupt status.
        .load32(0x070)
        .out_al()
        .load32(0x100)
        .out_al()
        .load32(0x060)
        .out_al()
        .store32(0x064, 1)
        .load32(0x060)
        .out_al()
        // Two notifications of queue 0.
        .store32(0x050, 0)
        .store32(0x050, 0)
        .putc(b'\n')
        .reboot();
    let guest = Guest::new(&code, false);
    let config = VmConfig {
        kernel: Some(guest.kernel.clone()),
        memory_mib: 32,
        console: moat_vmm::config::ConsoleConfig {
            output: ConsoleOutput::File(guest.console()),
            input: false,
        },
        // In process: `wait` would confine this test thread with the main
        // thread's filter, and the test reads files afterwards. The binary's
        // filters are checked by every other test here.
        seccomp: false,
        ..VmConfig::default()
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let vmm = build_microvm_with(
        &config,
        Instant::now(),
        vec![Box::new(FakeDevice(seen.clone()))],
    )
    .unwrap();
    assert_eq!(vmm.wait(), VmExit::GuestReset);
    let console = std::fs::read(guest.console()).unwrap();
    assert_eq!(console, b"virt\x2a\x02\x0f\x5a\x01\x00\n");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.acked_features, Some(VIRTIO_F_VERSION_1));
    assert_eq!(seen.queue, Some((true, 8, 0x10000, 0x11000, 0x12000)));
    assert_eq!(seen.notify.as_ref().unwrap().read().unwrap(), 2);
}

/// Keeps the helper honest: a boot marker line is found, others are not.
#[test]
fn boot_marker_line_parsing() {
    assert_eq!(boot_marker_us("x\nmoat-vmm: boot-marker 42 us\n"), Some(42));
    assert_eq!(boot_marker_us("moat-vmm: boot-marker x us"), None);
}
