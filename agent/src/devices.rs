//! Device access control for cgroup v2: compiles the spec's `linux.resources.devices`
//! rules into a `BPF_PROG_TYPE_CGROUP_DEVICE` program and attaches it to the
//! container's cgroup. It owns the program's instructions and the two `bpf(2)` calls;
//! it must not touch anything else of the cgroup.
//!
//! Why by hand: libcgroups applies these rules only with its `cgroupsv2_devices`
//! feature, which needs libbpf-sys (a C library build) for what is 40 lines of BPF.
//! Without the rules, a container with Docker's default `CAP_MKNOD` could create and
//! open any device node of the guest, e.g. its serial console.
//!
//! Semantics (cgroup v1's, as runc emulates them): rules are read in order and the
//! last one that matches a device access decides; an access no rule matches is allowed
//! (Docker's list starts with "deny all", so nothing falls through). A rule matches
//! when its type is `a` or the device's type, its major and minor are wildcards or
//! equal, and its access letters include every requested one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR` (low 16 bits of `access_type`).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_*` (high 16 bits of `access_type`).
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used here.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54; // dst &= imm (32-bit)
const ALU32_RSH_K: u8 = 0x74; // dst >>= imm (32-bit)
const ALU32_MOV_X: u8 = 0xbc; // dst = src (32-bit)
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JNE_X: u8 = 0x5d; // if dst != src: pc += off
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// A rule in the form the program tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    /// `None`: any type.
    kind: Option<i32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: i32,
    allow: bool,
}

/// Device rule failures.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRuleError {
    #[error("device rule {index}: access {access:?} has letters other than r, w, m")]
    BadAccess { index: usize, access: String },
    #[error("device rule {index}: {what} {value} is out of range")]
    OutOfRange {
        index: usize,
        what: &'static str,
        value: i64,
    },
    #[error("device rules: {0} rules are more than a BPF program may hold")]
    TooMany(usize),
    #[error("{op} the device filter of cgroup {cgroup}: {source}{log}")]
    Bpf {
        op: &'static str,
        cgroup: String,
        source: std::io::Error,
        log: String,
    },
}

fn parse(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DeviceRuleError> {
    let mut out = Vec::new();
    for (index, r) in rules.iter().enumerate() {
        let kind = match r.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            // FIFOs are not devices; the device controller never sees them.
            Some(LinuxDeviceType::P) => continue,
        };
        let num = |what, v: Option<i64>| -> Result<Option<u32>, DeviceRuleError> {
            match v {
                None => Ok(None),
                Some(-1) => Ok(None),
                // Device numbers are at most 32 bits; the program compares them as
                // sign-extended immediates, so they must also fit in an i32.
                Some(v) => u32::try_from(v)
                    .ok()
                    .filter(|n| i32::try_from(*n).is_ok())
                    .map(Some)
                    .ok_or(DeviceRuleError::OutOfRange {
                        index,
                        what,
                        value: v,
                    }),
            }
        };
        let access_str = r.access().clone().unwrap_or_else(|| "rwm".to_owned());
        let mut access = 0;
        for c in access_str.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(DeviceRuleError::BadAccess {
                        index,
                        access: access_str.clone(),
                    })
                }
            };
        }
        if access == 0 {
            continue;
        }
        out.push(Rule {
            kind,
            major: num("major", r.major())?,
            minor: num("minor", r.minor())?,
            access,
            allow: r.allow(),
        });
    }
    Ok(out)
}

/// The program for `rules`: r1 is the `bpf_cgroup_dev_ctx`; r2 = type, r3 = access,
/// r4 = major, r5 = minor; then one block per rule, last rule first, each returning
/// its verdict when it matches; finally "allow".
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, DeviceRuleError> {
    let rules = parse(rules)?;
    if rules.len() > 500 {
        return Err(DeviceRuleError::TooMany(rules.len()));
    }
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    let mut falls_through = true;
    for rule in rules.iter().rev() {
        // Jumps are emitted with off = 0 and pointed past the block once its length
        // is known.
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            block.push(insn(JNE_K, 2, 0, 0, kind));
        }
        if rule.access != ACC_ALL {
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, rule.access));
            block.push(insn(JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(insn(
                JNE_K,
                4,
                0,
                0,
                i32::try_from(major).unwrap_or(i32::MAX),
            ));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(
                JNE_K,
                5,
                0,
                0,
                i32::try_from(minor).unwrap_or(i32::MAX),
            ));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let mut conditional = false;
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
                conditional = true;
            }
        }
        prog.extend(block);
        if !conditional {
            // A rule that matches everything decides every access: whatever came
            // before it can never be reached, and the verifier refuses dead code.
            falls_through = false;
            break;
        }
    }
    if falls_through {
        prog.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        prog.push(insn(EXIT, 0, 0, 0, 0));
    }
    Ok(prog)
}

// bpf(2) ABI.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (up to `expected_attach_type`).
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for
    // reads and writes of its size, which is passed along; the kernel zero-extends.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(rc).map_err(|_| std::io::Error::other("bpf returned an out-of-range descriptor"))
}

/// Compiles `rules` and attaches the program to the cgroup directory `cgroup`.
pub fn apply(cgroup: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), DeviceRuleError> {
    let prog = compile(rules)?;
    let name = cgroup.display().to_string();
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(b"moat_devices") {
        *d = *s;
    }
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    // Without the verifier's log first (it costs time); with it only to explain a
    // refusal.
    let mut log = Vec::new();
    let loaded = bpf(BPF_PROG_LOAD, &mut load).or_else(|_| {
        log = vec![0u8; 64 << 10];
        load.log_level = 1;
        load.log_size = u32::try_from(log.len()).unwrap_or(0);
        load.log_buf = log.as_mut_ptr() as u64;
        bpf(BPF_PROG_LOAD, &mut load)
    });
    let prog_fd = loaded.map_err(|source| {
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        DeviceRuleError::Bpf {
            op: "load",
            cgroup: name.clone(),
            source,
            log: if text.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {text})")
            },
        }
    })?;
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor that nothing else owns.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(prog_fd) };
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceRuleError::Bpf {
        op: "open the cgroup for",
        cgroup: name.clone(),
        source,
        log: String::new(),
    })?;
    let mut attach = ProgAttachAttr {
        target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(prog_fd.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|source| DeviceRuleError::Bpf {
        op: "attach",
        cgroup: name,
        source,
        log: String::new(),
    })?;
    // The attachment holds the program; our descriptors can go.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// Runs `prog` on a device access with the subset of eBPF that `compile` emits.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU32_AND_K => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
                ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JNE_X => {
                    if r[dst] != r[src] {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not exit");
    }

    /// Every instruction is reachable (the kernel's verifier refuses dead code).
    fn assert_all_reachable(prog: &[Insn]) {
        let mut seen = vec![false; prog.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= prog.len() || seen[pc] {
                continue;
            }
            seen[pc] = true;
            let i = prog[pc];
            match i.code {
                EXIT => {}
                JNE_K | JNE_X => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + i.off as usize);
                }
                _ => todo.push(pc + 1),
            }
        }
        let dead: Vec<usize> = (0..prog.len()).filter(|i| !seen[*i]).collect();
        assert!(dead.is_empty(), "unreachable instructions {dead:?}");
    }

    /// The reference semantics: last matching rule wins, default allow.
    fn reference(rules: &[Rule], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let mut verdict = true;
        for r in rules {
            let matches = r.kind.is_none_or(|k| k == kind)
                && r.major.is_none_or(|m| m == major)
                && r.minor.is_none_or(|m| m == minor)
                && access & r.access == access;
            if matches {
                verdict = r.allow;
            }
        }
        u64::from(verdict)
    }

    fn docker_rules() -> Vec<LinuxDeviceCgroup> {
        let spec = crate::spec::docker_default(&crate::spec::SpecOptions::new(["sh"])).unwrap();
        spec.linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap()
    }

    #[test]
    fn docker_rules_decide_like_cgroup_v1() {
        let rules = docker_rules();
        let prog = compile(&rules).unwrap();
        assert_all_reachable(&prog);
        let parsed = parse(&rules).unwrap();
        // Every combination of type, access and a set of interesting devices.
        let devices = [
            (1, 3),
            (1, 5),
            (1, 1),
            (1, 11),
            (4, 64),
            (5, 0),
            (5, 1),
            (5, 2),
            (10, 200),
            (10, 229),
            (136, 0),
            (136, 7),
            (8, 0),
            (253, 0),
        ];
        for kind in [DEV_BLOCK, DEV_CHAR] {
            for access in 1..=7 {
                for (major, minor) in devices {
                    assert_eq!(
                        run(&prog, kind, access, major, minor),
                        reference(&parsed, kind, access, major, minor),
                        "type {kind} access {access} {major}:{minor}"
                    );
                }
            }
        }
        // Spot checks of what the rules mean.
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3),
            1,
            "/dev/null"
        );
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 136, 4),
            1,
            "/dev/pts/4"
        );
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_WRITE, 4, 64),
            0,
            "the serial console"
        );
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 1), 0, "/dev/mem");
        assert_eq!(
            run(&prog, DEV_CHAR, ACC_MKNOD, 4, 64),
            1,
            "mknod is allowed"
        );
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ, 253, 0), 0, "a virtio disk");
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 10, 229), 0, "/dev/fuse");
    }

    #[test]
    fn no_rules_allow_everything() {
        let prog = compile(&[]).unwrap();
        assert_all_reachable(&prog);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_ALL, 8, 0), 1);
    }

    #[test]
    fn rules_after_a_catch_all_still_count_and_before_it_do_not() {
        let b = |allow: bool, access: &str| {
            LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .access(access)
                .build()
                .unwrap()
        };
        let null = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("rw")
            .build()
            .unwrap();
        // allow null, then deny all: null is denied too (the last match wins).
        let prog = compile(&[null.clone(), b(false, "rwm")]).unwrap();
        assert_all_reachable(&prog);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 0);
        // deny all, then allow null.
        let prog = compile(&[b(false, "rwm"), null]).unwrap();
        assert_all_reachable(&prog);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 5), 0);
        // A catch-all for mknod only is conditional on the access.
        let prog = compile(&[b(false, "rwm"), b(true, "m")]).unwrap();
        assert_all_reachable(&prog);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ, 8, 0), 0);
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwx")
            .build()
            .unwrap();
        assert!(matches!(
            compile(&[bad]),
            Err(DeviceRuleError::BadAccess { .. })
        ));
        let bad = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .major(1i64 << 40)
            .build()
            .unwrap();
        assert!(matches!(
            compile(&[bad]),
            Err(DeviceRuleError::OutOfRange { .. })
        ));
    }

    #[test]
    fn abi_layouts() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::offset_of!(Insn, off), 2);
        assert_eq!(std::mem::offset_of!(Insn, imm), 4);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 20);
    }
}
