//! The device filter of cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container's cgroup, answering for each device access whether one of the
//! container's rules allows it (v2 has no `devices.allow` file). The program is generated
//! from the same rules as v1's, checked by an interpreter in the tests, and loaded with the
//! `bpf` system call.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::DeviceRule;

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `bpf_cgroup_dev_ctx.access_type` low half: the device type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `bpf_cgroup_dev_ctx.access_type` high half: what is asked.
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |b, c| {
        b | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// The program allowing exactly `rules` (the first that matches allows; nothing else is
/// allowed). Registers: r2 type, r3 access, r4 major, r5 minor.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check jumps past the rule's end (to the next rule) when it fails.
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        match r.kind {
            'b' => checks.push(vec![insn(JNE_K, 2, 0, 0, DEV_BLOCK)]),
            'c' => checks.push(vec![insn(JNE_K, 2, 0, 0, DEV_CHAR)]),
            _ => {}
        }
        let want = access_bits(&r.access);
        if want != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // Every bit asked for must be allowed: (access & want) == access.
            checks.push(vec![
                insn(MOV32_X, 1, 3, 0, 0),
                insn(AND32_K, 1, 0, 0, want),
                insn(JNE_X, 1, 3, 0, 0),
            ]);
        }
        if let Some(major) = r.major {
            checks.push(vec![insn(JNE_K, 4, 0, 0, major as i32)]);
        }
        if let Some(minor) = r.minor {
            checks.push(vec![insn(JNE_K, 5, 0, 0, minor as i32)]);
        }
        let body: usize = checks.iter().map(Vec::len).sum::<usize>() + 2;
        let mut at = 0;
        for c in checks {
            let n = c.len();
            for (i, mut ins) in c.into_iter().enumerate() {
                if i + 1 == n {
                    // Jump to the first instruction after this rule's `exit`.
                    ins.off = (body - at - i - 1) as i16;
                }
                p.push(ins);
            }
            at += n;
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

#[repr(C)]
#[derive(Default)]
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
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: attr is a live, initialised bpf_attr prefix of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Loads the filter for `rules` and attaches it to the cgroup v2 directory `dir`, where it
/// stays until the cgroup is removed.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> std::io::Result<()> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load)?;
    // SAFETY: the kernel returned a new fd we own.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let cgroup = std::fs::File::open(dir)?;
    let mut at = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut at)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::devices::default_rules;

    /// Runs `p` on a device access the way the kernel would, for the few opcodes
    /// [`program`] emits.
    fn run(p: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                AND32_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                MOV32_X => r[dst] = r[src] as u32 as u64,
                MOV64_K => r[dst] = i.imm as i64 as u64,
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = (pc as isize + i.off as isize) as usize;
                    }
                }
                JNE_X => {
                    if r[dst] != r[src] {
                        pc = (pc as isize + i.off as isize) as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
        panic!("no exit");
    }

    #[test]
    fn the_default_rules_allow_what_containerd_allows() {
        let mut rules = default_rules();
        rules.push(DeviceRule {
            kind: 'b',
            major: Some(7),
            minor: Some(0),
            access: "r".into(),
        });
        let p = program(&rules);
        // /dev/null read and write; mknod of anything; the asked-for loop device read only.
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 136, 5), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 7, 0), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 7, 0), 0);
        // The node's disk, /dev/mem, /dev/kmsg: no.
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 1), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 11), 0);
        // The same numbers as a block device are not the char device.
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn an_all_rule_allows_everything_and_no_rule_nothing() {
        let all = program(&[DeviceRule {
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        }]);
        assert_eq!(run(&all, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 0), 1);
        let none = program(&[]);
        assert_eq!(run(&none, DEV_CHAR, ACC_READ, 1, 3), 0);
    }
}
