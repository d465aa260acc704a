//! The compiler: a profile to a classic BPF program that checks the architecture, refuses
//! x32 system calls, then tries each rule in order, each a block whose jumps stay inside it.

use super::profile::{ArgCondition, Profile, read_profile};
use super::{Arch, BpfInstruction, Error, Result, SeccompFilter, X32_SYSCALL_BIT};

pub(crate) const RET_KILL_THREAD: u32 = 0x0000_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(crate) const RET_TRAP: u32 = 0x0003_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;
pub(crate) const RET_TRACE: u32 = 0x7ff0_0000;
pub(crate) const RET_LOG: u32 = 0x7ffc_0000;
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes.
pub(crate) const LD_W_ABS: u16 = 0x20;
pub(crate) const JEQ_K: u16 = 0x15;
pub(crate) const JGE_K: u16 = 0x35;
pub(crate) const JGT_K: u16 = 0x25;
pub(crate) const AND_K: u16 = 0x54;
pub(crate) const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
pub(crate) const OFF_NR: u32 = 0;
pub(crate) const OFF_ARCH: u32 = 4;
pub(crate) const OFF_ARGS: u32 = 16;

fn action(name: &str, errno: Option<u32>) -> Result<u32> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | errno,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_LOG" => RET_LOG,
        // No tracer is attached: like libseccomp, a trace rule without one is ENOSYS.
        "SCMP_ACT_TRACE" => RET_TRACE | errno,
        other => {
            return Err(Error::Invalid(format!(
                "seccomp action {other:?} is not supported"
            )));
        }
    })
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> BpfInstruction {
    BpfInstruction { code, jt, jf, k }
}

/// The instructions that fall through when `cond` holds for the argument and jump `skip`
/// forward (past the end of the caller's block) when it does not. `skip` counts from the
/// end of the returned instructions.
fn condition(cond: &ArgCondition) -> Result<Vec<BpfInstruction>> {
    if cond.index > 5 {
        return Err(Error::Invalid(format!(
            "seccomp argument index {} is out of range",
            cond.index
        )));
    }
    let lo_off = OFF_ARGS + 8 * cond.index;
    let hi_off = lo_off + 4;
    let (v_hi, v_lo) = ((cond.value >> 32) as u32, cond.value as u32);
    // Each sequence ends with the "holds" path falling through; FAIL is a placeholder
    // offset to the block's end, patched by the caller (jf/jt = 255 marks it).
    const FAIL: u8 = 255;
    let seq = match cond.op.as_str() {
        "SCMP_CMP_EQ" => vec![
            ins(LD_W_ABS, 0, 0, hi_off),
            ins(JEQ_K, 0, FAIL, v_hi),
            ins(LD_W_ABS, 0, 0, lo_off),
            ins(JEQ_K, 0, FAIL, v_lo),
        ],
        "SCMP_CMP_NE" => vec![
            // Holds unless both halves are equal.
            ins(LD_W_ABS, 0, 0, hi_off),
            ins(JEQ_K, 0, 2, v_hi),
            ins(LD_W_ABS, 0, 0, lo_off),
            ins(JEQ_K, FAIL, 0, v_lo),
        ],
        "SCMP_CMP_MASKED_EQ" => {
            let (m_hi, m_lo) = ((cond.value >> 32) as u32, cond.value as u32);
            let (w_hi, w_lo) = ((cond.value_two >> 32) as u32, cond.value_two as u32);
            vec![
                ins(LD_W_ABS, 0, 0, hi_off),
                ins(AND_K, 0, 0, m_hi),
                ins(JEQ_K, 0, FAIL, w_hi),
                ins(LD_W_ABS, 0, 0, lo_off),
                ins(AND_K, 0, 0, m_lo),
                ins(JEQ_K, 0, FAIL, w_lo),
            ]
        }
        op @ ("SCMP_CMP_GE" | "SCMP_CMP_GT" | "SCMP_CMP_LE" | "SCMP_CMP_LT") => {
            // Compare the high words; only when they are equal do the low words decide.
            // arg > v  <=> hi > v_hi || (hi == v_hi && lo > v_lo), and so on.
            let (lo_code, lo_holds_when_true) = match op {
                "SCMP_CMP_GE" => (JGE_K, true),
                "SCMP_CMP_GT" => (JGT_K, true),
                "SCMP_CMP_LE" => (JGT_K, false),
                _ => (JGE_K, false),
            };
            let greater_holds = matches!(op, "SCMP_CMP_GE" | "SCMP_CMP_GT");
            vec![
                ins(LD_W_ABS, 0, 0, hi_off),
                // hi > v_hi: holds for GE/GT, fails for LE/LT.
                if greater_holds {
                    ins(JGT_K, 3, 0, v_hi)
                } else {
                    ins(JGT_K, FAIL, 0, v_hi)
                },
                // hi < v_hi: fails for GE/GT, holds for LE/LT.
                if greater_holds {
                    ins(JEQ_K, 0, FAIL, v_hi)
                } else {
                    ins(JEQ_K, 0, 2, v_hi)
                },
                ins(LD_W_ABS, 0, 0, lo_off),
                if lo_holds_when_true {
                    ins(lo_code, 0, FAIL, v_lo)
                } else {
                    ins(lo_code, FAIL, 0, v_lo)
                },
            ]
        }
        other => {
            return Err(Error::Invalid(format!(
                "seccomp comparison {other:?} is not supported"
            )));
        }
    };
    Ok(seq)
}

/// Compiles `profile` for this node.
pub fn compile(profile: &Profile) -> Result<SeccompFilter> {
    let arch = Arch::native().ok_or_else(|| {
        Error::Invalid(
            "seccomp filters are built for x86_64 and aarch64 nodes, not this one".into(),
        )
    })?;
    compile_for(profile, arch)
}

/// Compiles `profile` for `arch`.
pub fn compile_for(profile: &Profile, arch: Arch) -> Result<SeccompFilter> {
    let archs: Vec<&str> = profile
        .architectures
        .iter()
        .map(String::as_str)
        .chain(profile.arch_map.iter().map(|a| a.architecture.as_str()))
        .collect();
    if !archs.is_empty() && !archs.contains(&arch.name) {
        return Err(Error::Invalid(format!(
            "the seccomp profile names architectures {archs:?}, not this node's {}",
            arch.name
        )));
    }
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 1, 0, arch.audit),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
    ];
    if arch.x32 {
        // x32 system calls are refused outright (runc and libseccomp do too).
        prog.extend([
            ins(LD_W_ABS, 0, 0, OFF_NR),
            ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
            ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        ]);
    }
    for rule in &profile.syscalls {
        let act = action(&rule.action, rule.errno_ret)?;
        let mut conds = Vec::new();
        for c in &rule.args {
            conds.push(condition(c)?);
        }
        let names = rule.names.iter().chain(rule.name.iter());
        for name in names {
            let Some(nr) = arch.number(name) else {
                continue;
            };
            // ld nr; jeq nr (else skip the block); conditions; ret action.
            let mut body: Vec<BpfInstruction> = conds.iter().flatten().copied().collect();
            body.push(ins(RET_K, 0, 0, act));
            let len = body.len();
            if len > 250 {
                return Err(Error::Invalid(format!(
                    "seccomp rule for {name} has too many conditions"
                )));
            }
            // Patch the failure placeholders: jump to just past this block.
            for (i, b) in body.iter_mut().enumerate() {
                let to_end = (len - i - 1) as u8;
                if b.jt == 255 {
                    b.jt = to_end;
                }
                if b.jf == 255 {
                    b.jf = to_end;
                }
            }
            prog.push(ins(LD_W_ABS, 0, 0, OFF_NR));
            prog.push(ins(JEQ_K, 0, len as u8, nr));
            prog.extend(body);
        }
    }
    prog.push(ins(RET_K, 0, 0, default));
    if prog.len() > 4096 {
        return Err(Error::Invalid(format!(
            "the seccomp profile compiles to {} instructions, over the kernel's 4096",
            prog.len()
        )));
    }
    let mut flags = 0;
    for f in &profile.flags {
        flags |= match f.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            other => {
                return Err(Error::Invalid(format!(
                    "seccomp flag {other:?} is not supported"
                )));
            }
        };
    }
    Ok(SeccompFilter {
        instructions: prog,
        flags,
    })
}

/// Reads and compiles the JSON profile at `path`.
pub fn load_profile(path: &str) -> Result<SeccompFilter> {
    let profile = read_profile(path)?;
    compile(&profile).map_err(|e| Error::Invalid(format!("seccomp profile {path}: {e}")))
}
