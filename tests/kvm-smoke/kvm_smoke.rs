//! `moat-kvm-smoke`: proves that a `/dev/kvm` really runs a guest.
//!
//! It creates a VM with 64 KiB of memory and one vCPU in real mode, and runs a
//! 38-byte guest that copies a per-run message from guest memory to I/O port 0x10,
//! sums 1..N (N also chosen per run) with the CPU's `loop` instruction, writes the
//! sum's low byte to port 0x10 and to MMIO address 0xF0000, its high byte to port
//! 0x10, and halts. The host checks every byte and the exit sequence, so the check
//! passes only if the vCPU really executed the guest code.
//!
//! Owns: this one test program. Touches no files; needs only `/dev/kvm`.
//! Exit status: 0 when the guest did exactly what it should, 1 otherwise.

#[cfg(target_arch = "x86_64")]
mod smoke {
    use std::time::{Duration, Instant};

    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

    const MEM_SIZE: usize = 0x1_0000;
    const CODE_ADDR: u64 = 0x1000;
    const MSG_ADDR: u64 = 0x1100;
    const N_ADDR: u64 = 0x1200;
    const PORT: u16 = 0x10;
    const MMIO_ADDR: u64 = 0xF_0000;
    /// Guests that leave without halting are cut off after this many exits.
    const MAX_EXITS: usize = 10_000;

    /// Real-mode guest; addresses in the comments are guest-physical.
    #[rustfmt::skip]
    const GUEST_CODE: [u8; 38] = [
        0xBA, 0x10, 0x00,       // 1000: mov dx, 0x10
        0xBE, 0x00, 0x11,       // 1003: mov si, MSG_ADDR
        0xAC,                   // 1006: lodsb
        0x84, 0xC0,             // 1007: test al, al
        0x74, 0x03,             // 1009: jz 100E
        0xEE,                   // 100B: out dx, al
        0xEB, 0xF8,             // 100C: jmp 1006
        0x31, 0xC0,             // 100E: xor ax, ax
        0x8B, 0x0E, 0x00, 0x12, // 1010: mov cx, [N_ADDR]
        0x01, 0xC8,             // 1014: add ax, cx
        0xE2, 0xFC,             // 1016: loop 1014
        0xEE,                   // 1018: out dx, al
        0xBB, 0x00, 0xF0,       // 1019: mov bx, 0xF000
        0x8E, 0xC3,             // 101C: mov es, bx
        0x26, 0xA2, 0x00, 0x00, // 101E: mov es:[0], al   (MMIO 0xF0000)
        0x88, 0xE0,             // 1022: mov al, ah
        0xEE,                   // 1024: out dx, al
        0xF4,                   // 1025: hlt
    ];

    #[derive(Debug, thiserror::Error)]
    pub enum SmokeError {
        #[error("open /dev/kvm: {0}")]
        Open(kvm_ioctls::Error),
        #[error("create vm: {0}")]
        CreateVm(kvm_ioctls::Error),
        #[error("allocate guest memory: {0}")]
        Memory(String),
        #[error("register guest memory with kvm: {0}")]
        MemoryRegion(kvm_ioctls::Error),
        #[error("create vcpu: {0}")]
        CreateVcpu(kvm_ioctls::Error),
        #[error("set up vcpu registers: {0}")]
        Registers(kvm_ioctls::Error),
        #[error("run vcpu: {0}")]
        Run(kvm_ioctls::Error),
        #[error("guest made an unexpected exit after {port_bytes} port bytes: {exit}")]
        UnexpectedExit { exit: String, port_bytes: usize },
        #[error("guest did not halt within {0} exits")]
        NoHalt(usize),
        #[error("guest output is wrong: expected {expected:02x?}, got {got:02x?}")]
        WrongOutput { expected: Vec<u8>, got: Vec<u8> },
        #[error("guest mmio write is wrong: expected [{expected:02x}] at {MMIO_ADDR:#x}, got {got:02x?} at {addr:#x}")]
        WrongMmio {
            expected: u8,
            addr: u64,
            got: Vec<u8>,
        },
        #[error("guest made no mmio write")]
        NoMmio,
    }

    #[derive(Debug)]
    pub struct Report {
        pub message: String,
        pub n: u16,
        pub exits: usize,
        pub elapsed: Duration,
    }

    /// A per-run value, so a replayed or faked output cannot pass.
    fn nonce() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Truncation is fine: any 64 bits of the clock and pid will do.
        (t as u64) ^ (u64::from(std::process::id()) << 32)
    }

    /// The bytes the guest must write to PORT: the message, then sum(1..=n) LE.
    pub fn expected_output(message: &str, n: u16) -> Vec<u8> {
        let sum = (1..=u32::from(n)).fold(0u16, |acc, i| acc.wrapping_add(i as u16));
        let mut out = message.as_bytes().to_vec();
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    pub fn run() -> Result<Report, SmokeError> {
        let nonce = nonce();
        let message = format!("moat-kvm-smoke {nonce:016x}\n");
        let n = 1000 + (nonce % 1000) as u16;

        let kvm = Kvm::new().map_err(SmokeError::Open)?;
        let vm = kvm.create_vm().map_err(SmokeError::CreateVm)?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| SmokeError::Memory(e.to_string()))?;
        let host_addr = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| SmokeError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: `host_addr` is the start of a MEM_SIZE mapping owned by `mem`,
        // which outlives `vm` (both live until the end of this function, `mem`
        // declared first so it is dropped last).
        unsafe { vm.set_user_memory_region(region) }.map_err(SmokeError::MemoryRegion)?;

        let write = |bytes: &[u8], addr: u64| {
            mem.write_slice(bytes, GuestAddress(addr))
                .map_err(|e| SmokeError::Memory(e.to_string()))
        };
        write(&GUEST_CODE, CODE_ADDR)?;
        let mut msg = message.as_bytes().to_vec();
        msg.push(0);
        write(&msg, MSG_ADDR)?;
        write(&n.to_le_bytes(), N_ADDR)?;

        let mut vcpu = vm.create_vcpu(0).map_err(SmokeError::CreateVcpu)?;
        let mut sregs = vcpu.get_sregs().map_err(SmokeError::Registers)?;
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs).map_err(SmokeError::Registers)?;
        let mut regs = vcpu.get_regs().map_err(SmokeError::Registers)?;
        regs.rip = CODE_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(SmokeError::Registers)?;

        let expected = expected_output(&message, n);
        let mut port_out = Vec::new();
        let mut mmio = None;
        let start = Instant::now();
        let mut exits = 0;
        loop {
            if exits == MAX_EXITS {
                return Err(SmokeError::NoHalt(MAX_EXITS));
            }
            exits += 1;
            match vcpu.run().map_err(SmokeError::Run)? {
                VcpuExit::IoOut(PORT, data) => port_out.extend_from_slice(data),
                VcpuExit::MmioWrite(addr, data) if mmio.is_none() => {
                    mmio = Some((addr, data.to_vec()));
                }
                VcpuExit::Hlt => break,
                other => {
                    return Err(SmokeError::UnexpectedExit {
                        exit: format!("{other:?}"),
                        port_bytes: port_out.len(),
                    })
                }
            }
        }
        let elapsed = start.elapsed();
        if port_out != expected {
            return Err(SmokeError::WrongOutput {
                expected,
                got: port_out,
            });
        }
        let low = expected[expected.len() - 2];
        match mmio {
            Some((addr, got)) if addr == MMIO_ADDR && got == [low] => {}
            Some((addr, got)) => {
                return Err(SmokeError::WrongMmio {
                    expected: low,
                    addr,
                    got,
                })
            }
            None => return Err(SmokeError::NoMmio),
        }
        Ok(Report {
            message,
            n,
            exits,
            elapsed,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn expected_output_appends_sum_little_endian() {
            // 1 + 2 + ... + 1000 = 500500 = 0x7A314, of which 16 bits: 0xA314.
            assert_eq!(expected_output("ab", 1000), vec![b'a', b'b', 0x14, 0xA3]);
        }

        #[test]
        fn guest_code_fits_before_message() {
            assert!(CODE_ADDR + GUEST_CODE.len() as u64 <= MSG_ADDR);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() -> std::process::ExitCode {
    match smoke::run() {
        Ok(r) => {
            print!("guest: {}", r.message);
            println!(
                "moat-kvm-smoke: ok: guest copied {} bytes, summed 1..{} and halted after {} exits in {:.3} ms",
                r.message.len(),
                r.n,
                r.exits,
                r.elapsed.as_secs_f64() * 1000.0
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("moat-kvm-smoke: failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() -> std::process::ExitCode {
    eprintln!("moat-kvm-smoke: this architecture is not supported yet");
    std::process::ExitCode::FAILURE
}
