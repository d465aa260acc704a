//! seccomp: the CRI's profiles (RuntimeDefault, Unconfined, Localhost with an OCI/Docker
//! JSON profile) compiled to a classic BPF program, which the container's process loads as
//! its last step before exec.
//!
//! The program checks the architecture (a foreign one kills the process), refuses x32
//! system calls, then tries each rule in order: a rule matches a system call number and,
//! optionally, conditions on its arguments (all must hold); the first rule that matches
//! decides; otherwise the profile's default action does. Each rule is a small block whose
//! jumps stay inside it, so the program never needs a jump longer than BPF allows.

mod aarch64;
mod x86_64;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A profile Berth cannot turn into a filter, or a profile file it cannot read: the
/// request's fault (a Localhost profile kubelet named), so the message says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile is refused; the message names the part and why.
    #[error("{0}")]
    Invalid(String),
}

/// The result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One classic BPF instruction of a seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInstruction {
    /// Opcode.
    pub code: u16,
    /// Jump if true.
    pub jt: u8,
    /// Jump if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// A compiled seccomp filter, loaded as the last step before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The program.
    pub instructions: Vec<BpfInstruction>,
    /// `SECCOMP_FILTER_FLAG_*` flags.
    #[serde(default)]
    pub flags: u32,
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture filters are compiled for: both tables are always built, so the arm64
/// filters are compiled and checked by the tests of an x86_64 build too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// The name profiles give it (`SCMP_ARCH_*`).
    name: &'static str,
    /// `AUDIT_ARCH_*`, which the kernel puts in `seccomp_data.arch`.
    audit: u32,
    /// (name, number) of its system calls, sorted by name.
    syscalls: &'static [(&'static str, u32)],
    /// Its system call numbers also carry the x32 ABI (bit 30), which filters refuse.
    x32: bool,
}

impl Arch {
    /// x86_64.
    pub const X86_64: Arch = Arch {
        name: "SCMP_ARCH_X86_64",
        audit: AUDIT_ARCH_X86_64,
        syscalls: x86_64::SYSCALLS,
        x32: true,
    };
    /// aarch64 (arm64).
    pub const AARCH64: Arch = Arch {
        name: "SCMP_ARCH_AARCH64",
        audit: AUDIT_ARCH_AARCH64,
        syscalls: aarch64::SYSCALLS,
        x32: false,
    };

    /// This node's, if filters can be built for it.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::AARCH64)
        } else {
            None
        }
    }

    /// The number of the system call `name`.
    fn number(&self, name: &str) -> Option<u32> {
        self.syscalls
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| self.syscalls[i].1)
    }
}

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// An OCI / Docker seccomp profile (the JSON kubelet's Localhost profiles are written in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// What a system call no rule matches gets.
    pub default_action: String,
    /// errno for a default `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names; checked against the node's.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Docker's form of the architectures.
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    /// The rules, tried in order.
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Docker's `archMap` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// The main architecture.
    pub architecture: String,
    /// Its sub-architectures.
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

/// One rule: system calls, an action, and conditions on the arguments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// The system calls (names unknown on this architecture are skipped, as libseccomp
    /// does).
    #[serde(default)]
    pub names: Vec<String>,
    /// Docker's single-name form.
    #[serde(default)]
    pub name: Option<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Conditions, all of which must hold.
    #[serde(default)]
    pub args: Vec<ArgCondition>,
}

/// A condition on one argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    /// Argument index, 0 to 5.
    pub index: u32,
    /// The value compared with (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The second value (what the masked argument must equal).
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

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

/// Reads the JSON profile at `path`.
pub fn read_profile(path: &str) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("seccomp profile {path}: cannot read it: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("seccomp profile {path}: {e}")))
}

/// Reads and compiles the JSON profile at `path`.
pub fn load_profile(path: &str) -> Result<SeccompFilter> {
    let profile = read_profile(path)?;
    compile(&profile).map_err(|e| Error::Invalid(format!("seccomp profile {path}: {e}")))
}

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// System calls the runtime default profile allows to every container: containerd's
/// default list (`contrib/seccomp/seccomp_default.go`), name for name, including the 32-bit
/// and newer names that this node's table may not know (those are skipped, as libseccomp
/// skips names it cannot resolve). `socket` is not here: only some families are allowed.
const DEFAULT_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// What containerd adds to [`DEFAULT_ALLOW`] on every kernel Berth runs on (4.8 or newer:
/// tracing is confined by the ptrace access mode checks then) and for amd64.
const DEFAULT_ALLOW_EXTRA: &[&str] = &[
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "arch_prctl",
    "modify_ldt",
];

/// System calls the default profile allows only with a capability (bit number), as
/// containerd's does for a process whose bounding set holds it.
const DEFAULT_BY_CAPABILITY: &[(u32, &[&str])] = &[
    (2, &["open_by_handle_at"]), // CAP_DAC_READ_SEARCH
    (
        CAP_SYS_ADMIN,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (22, &["reboot"]),                                       // CAP_SYS_BOOT
    (18, &["chroot"]),                                       // CAP_SYS_CHROOT
    (16, &["delete_module", "init_module", "finit_module"]), // CAP_SYS_MODULE
    (20, &["acct"]),                                         // CAP_SYS_PACCT
    (
        CAP_SYS_PTRACE,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (17, &["iopl", "ioperm"]), // CAP_SYS_RAWIO
    (
        25,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ), // CAP_SYS_TIME
    (26, &["vhangup"]),        // CAP_SYS_TTY_CONFIG
    (
        23,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ), // CAP_SYS_NICE
    (34, &["syslog"]),         // CAP_SYSLOG
    (39, &["bpf"]),            // CAP_BPF
    (38, &["perf_event_open"]), // CAP_PERFMON
];

/// `AF_ALG`: the kernel's crypto API, a large attack surface no ordinary workload needs.
const AF_ALG: u64 = 38;
/// `AF_VSOCK`: sockets to the hypervisor and its other guests.
const AF_VSOCK: u64 = 40;

/// `socket(2)` for every family but AF_ALG and AF_VSOCK, as containerd writes it: three
/// allow rules of one condition each (below AF_ALG, the one family between, above
/// AF_VSOCK), so that the two fall through to the default errno (EPERM) in libseccomp too,
/// which turns two conditions on one argument into an "or" and does not keep rule order.
fn socket_rules() -> Vec<SyscallRule> {
    [
        ("SCMP_CMP_LT", AF_ALG),
        ("SCMP_CMP_EQ", AF_ALG + 1),
        ("SCMP_CMP_GT", AF_VSOCK),
    ]
    .into_iter()
    .map(|(op, value)| SyscallRule {
        names: vec!["socket".into()],
        action: "SCMP_ACT_ALLOW".into(),
        args: vec![ArgCondition {
            index: 0,
            value,
            value_two: 0,
            op: op.into(),
        }],
        ..Default::default()
    })
    .collect()
}

/// The runtime default profile for a process with capability set `caps`, equal to
/// containerd's: the default list, the calls its capabilities unlock, `socket` but for
/// AF_ALG and AF_VSOCK, `personality` for the usual personas, and `clone` without namespace
/// flags (with `clone3` answered ENOSYS so libc falls back to it) unless it holds
/// CAP_SYS_ADMIN. This is the profile a RuntimeClass handler's runtime is given; Berth's
/// own filter adds [`guard_socket_family`].
pub fn runtime_default(caps: u64) -> Profile {
    let rule = |names: Vec<String>| SyscallRule {
        names,
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut syscalls = vec![
        rule(strings(DEFAULT_ALLOW)),
        rule(strings(DEFAULT_ALLOW_EXTRA)),
    ];
    let mut unlocked = BTreeSet::new();
    for (cap, names) in DEFAULT_BY_CAPABILITY {
        if caps & (1 << cap) != 0 {
            unlocked.extend(names.iter().copied());
        }
    }
    syscalls.push(rule(unlocked.iter().map(|s| s.to_string()).collect()));
    syscalls.extend(socket_rules());
    for persona in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(SyscallRule {
            names: vec!["personality".into()],
            action: "SCMP_ACT_ALLOW".into(),
            args: vec![ArgCondition {
                index: 0,
                value: persona,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
            }],
            ..Default::default()
        });
    }
    if caps & (1 << CAP_SYS_ADMIN) == 0 {
        // CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET must be clear.
        syscalls.push(SyscallRule {
            names: vec!["clone".into()],
            action: "SCMP_ACT_ALLOW".into(),
            args: vec![ArgCondition {
                index: 0,
                value: 0x7e02_0000,
                value_two: 0,
                op: "SCMP_CMP_MASKED_EQ".into(),
            }],
            ..Default::default()
        });
        syscalls.push(SyscallRule {
            names: vec!["clone3".into()],
            action: "SCMP_ACT_ERRNO".into(),
            errno_ret: Some(libc::ENOSYS as u32),
            ..Default::default()
        });
    }
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: vec![Arch::X86_64.name.into(), Arch::AARCH64.name.into()],
        syscalls,
        ..Default::default()
    }
}

/// `profile` with one rule more in front of its first `socket` rule: a family with any of
/// its upper 32 bits set is refused (EPERM). The kernel reads the family as an `int` and
/// drops those bits, while Berth's compiler compares all 64: without the guard
/// `socket(0x1_0000_0026, ..)` passes containerd's `arg0 > AF_VSOCK` and opens an AF_ALG
/// socket. (runc's and crun's libseccomp refuse that call with the plain profile, as the
/// e2e test of the handlers shows.) Only Berth's own filter gets the guard: its rules are
/// tried in order, while libseccomp does not keep rule order, and mixing an errno rule
/// with the allow rules of one call is what containerd's comments warn against.
pub fn guard_socket_family(mut profile: Profile) -> Profile {
    let first_socket = profile.syscalls.iter().position(|r| {
        !r.args.is_empty() && r.names.iter().chain(r.name.iter()).any(|n| n == "socket")
    });
    if let Some(at) = first_socket {
        profile.syscalls.insert(
            at,
            SyscallRule {
                names: vec!["socket".into()],
                action: "SCMP_ACT_ERRNO".into(),
                errno_ret: Some(libc::EPERM as u32),
                args: vec![ArgCondition {
                    index: 0,
                    value: u64::from(u32::MAX),
                    value_two: 0,
                    op: "SCMP_CMP_GT".into(),
                }],
                ..Default::default()
            },
        );
    }
    profile
}

/// Installs `filter` on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`); the caller
/// has no_new_privs set or holds CAP_SYS_ADMIN.
pub fn install(filter: &SeccompFilter) -> std::io::Result<()> {
    let mut prog: Vec<libc::sock_filter> = filter
        .instructions
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, both alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            filter.flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child that has loaded `filter`; returns the child's exit code.
    fn in_child_with(filter: &SeccompFilter, f: fn() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and exits; the test process is not
        // touched.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(filter).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -libc::WTERMSIG(status)
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn profile(json: &str) -> SeccompFilter {
        compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn an_errno_rule_denies_only_its_call() {
        let f = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let code = in_child_with(&f, || {
            // SAFETY: mkdir of a path that cannot exist, then getpid.
            let r = unsafe { libc::mkdir(c"/proc/berth-seccomp-test".as_ptr(), 0o700) };
            if r == 0 || errno() != libc::EPERM {
                return 1;
            }
            // SAFETY: getpid has no arguments.
            if unsafe { libc::getpid() } <= 0 {
                return 2;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn argument_conditions_decide() {
        // personality(0xffffffff) (a query) allowed, anything else EPERM; the errno
        // chosen for the default is honoured.
        let f = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        let code = in_child_with(&f, || {
            // SAFETY: personality queries or sets the persona of this child only.
            unsafe {
                if libc::personality(0xffff_ffff) < 0 {
                    return 1;
                }
                if libc::personality(0x0040_0000) >= 0 || errno() != libc::EACCES {
                    return 2;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn ordering_comparisons_use_all_64_bits() {
        // Deny dup2 when the new fd is >= 100.
        let f = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["dup2"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":1,"value":100,"op":"SCMP_CMP_GE"}]}]}"#,
        );
        let code = in_child_with(&f, || {
            // SAFETY: dup2 of stdin onto fds this child owns.
            unsafe {
                if libc::dup2(0, 50) != 50 {
                    return 1;
                }
                if libc::dup2(0, 150) >= 0 || errno() != libc::EPERM {
                    return 2;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn the_runtime_default_runs_a_program_and_refuses_namespaces() {
        let f = compile(&runtime_default(0xa80425fb)).unwrap();
        let code = in_child_with(&f, || {
            // SAFETY: unshare and mount attempts in this child only.
            unsafe {
                if libc::unshare(libc::CLONE_NEWUTS) == 0 || errno() != libc::EPERM {
                    return 1;
                }
                let pid = libc::fork();
                if pid < 0 {
                    return 2;
                }
                if pid == 0 {
                    libc::_exit(0);
                }
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
            0
        });
        assert_eq!(code, 0);
        // With CAP_SYS_ADMIN, unshare is allowed by the filter.
        let f = compile(&runtime_default(0xa80425fb | 1 << CAP_SYS_ADMIN)).unwrap();
        let code = in_child_with(&f, || {
            // SAFETY: as above.
            if unsafe { libc::unshare(libc::CLONE_NEWUTS) } == 0 {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn bad_profiles_are_errors() {
        for json in [
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
        ] {
            let p: Profile = serde_json::from_str(json).unwrap();
            assert!(compile(&p).is_err(), "{json}");
        }
        assert!(load_profile("/nonexistent/profile.json").is_err());
    }

    #[test]
    fn the_tables_know_common_calls() {
        let x86 = Arch::X86_64;
        assert_eq!(x86.number("read"), Some(0));
        assert_eq!(x86.number("mkdir"), Some(83));
        assert_eq!(x86.number("unshare"), Some(272));
        assert_eq!(x86.number("no_such_call"), None);
        let arm = Arch::AARCH64;
        assert_eq!(arm.number("read"), Some(63));
        assert_eq!(arm.number("openat"), Some(56));
        assert_eq!(arm.number("unshare"), Some(97));
        assert_eq!(arm.number("clone"), Some(220));
        assert_eq!(arm.number("clone3"), Some(435));
        assert_eq!(arm.number("newfstatat"), Some(79));
        // arm64 never had the old path calls.
        assert_eq!(arm.number("open"), None);
        assert_eq!(arm.number("mkdir"), None);
        for arch in [x86, arm] {
            assert!(
                arch.syscalls.windows(2).all(|w| w[0].0 < w[1].0),
                "{} table is not sorted by name, or repeats one",
                arch.name
            );
        }
    }

    /// Runs a classic BPF seccomp program over one system call, as the kernel would.
    fn interpret(prog: &[BpfInstruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                OFF_NR => nr,
                OFF_ARCH => arch,
                o if (OFF_ARGS..OFF_ARGS + 48).contains(&o) => {
                    let a = args[((o - OFF_ARGS) / 8) as usize];
                    if (o - OFF_ARGS).is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load from offset {o}"),
            }
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => acc = word(i.k),
                AND_K => acc &= i.k,
                JEQ_K => pc += jump(acc == i.k),
                JGE_K => pc += jump(acc >= i.k),
                JGT_K => pc += jump(acc > i.k),
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_runtime_default_for_arm64_refuses_namespaces_by_arm64_numbers() {
        let caps = 0xa80425fb;
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let newuser = libc::CLONE_NEWUSER as u64;
        for (arch, unshare, read) in [(Arch::X86_64, 272, 0), (Arch::AARCH64, 97, 63)] {
            let f = compile_for(&runtime_default(caps), arch).unwrap();
            let run = |a, nr, arg0| interpret(&f.instructions, a, nr, [arg0, 0, 0, 0, 0, 0]);
            assert_eq!(run(arch.audit, unshare, newuser), eperm, "{}", arch.name);
            assert_eq!(run(arch.audit, read, 0), RET_ALLOW, "{}", arch.name);
            // A process of another architecture is killed, not filtered by wrong numbers.
            let other = if arch == Arch::X86_64 {
                AUDIT_ARCH_AARCH64
            } else {
                AUDIT_ARCH_X86_64
            };
            assert_eq!(run(other, read, 0), RET_KILL_PROCESS, "{}", arch.name);
            // With CAP_SYS_ADMIN the filter lets unshare through (the kernel decides).
            let f = compile_for(&runtime_default(caps | 1 << CAP_SYS_ADMIN), arch).unwrap();
            let got = interpret(
                &f.instructions,
                arch.audit,
                unshare,
                [newuser, 0, 0, 0, 0, 0],
            );
            assert_eq!(got, RET_ALLOW, "{}", arch.name);
        }
        // x32 numbers exist only on x86_64.
        let f = compile_for(&runtime_default(caps), Arch::X86_64).unwrap();
        let x32_read = X32_SYSCALL_BIT;
        assert_eq!(
            interpret(&f.instructions, AUDIT_ARCH_X86_64, x32_read, [0; 6]),
            eperm
        );
        let arm = compile_for(&runtime_default(caps), Arch::AARCH64).unwrap();
        assert!(
            !arm.instructions
                .iter()
                .any(|i| i.code == JGE_K && i.k == X32_SYSCALL_BIT),
            "arm64 has no x32 ABI to refuse"
        );
    }

    /// containerd's default capability set (CapEff of a plain container).
    const DEFAULT_CAPS: u64 = 0xa80425fb;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    /// What Berth's own RuntimeDefault filter answers `nr(arg0)` on `arch`.
    fn default_answer(arch: Arch, caps: u64, name: &str, arg0: u64) -> u32 {
        let f = compile_for(&guard_socket_family(runtime_default(caps)), arch).unwrap();
        let nr = arch
            .number(name)
            .unwrap_or_else(|| panic!("{name} on {}", arch.name));
        interpret(&f.instructions, arch.audit, nr, [arg0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn the_runtime_default_refuses_af_alg_and_af_vsock_sockets_only() {
        for arch in [Arch::X86_64, Arch::AARCH64] {
            let socket = |family| default_answer(arch, DEFAULT_CAPS, "socket", family);
            // As containerd: both fall through to the default action, EPERM.
            assert_eq!(socket(AF_ALG), EPERM, "{}", arch.name);
            assert_eq!(socket(AF_VSOCK), EPERM, "{}", arch.name);
            for family in [0, 1, 2, 10, 16, 17, 37, 39, 41, 44, 45, 1000] {
                assert_eq!(socket(family), RET_ALLOW, "{} family {family}", arch.name);
            }
            // The kernel drops the upper 32 bits of the family: they must not smuggle one.
            for family in [0x1_0000_0000 | AF_ALG, 0xffff_ffff_0000_0000 | AF_VSOCK] {
                assert_eq!(socket(family), EPERM, "{} family {family:#x}", arch.name);
            }
            // Without the guard (the profile as runc gets it) the comparison on 64 bits
            // would let that one through: the guard is what refuses it.
            let plain = compile_for(&runtime_default(DEFAULT_CAPS), arch).unwrap();
            let nr = arch.number("socket").unwrap();
            let smuggled = [0x1_0000_0000 | AF_ALG, 0, 0, 0, 0, 0];
            assert_eq!(
                interpret(&plain.instructions, arch.audit, nr, smuggled),
                RET_ALLOW
            );
        }
        // The profile handed to a RuntimeClass handler is containerd's: three allow rules
        // of one condition each, no errno rule for socket.
        let p = runtime_default(DEFAULT_CAPS);
        let socket: Vec<_> = p
            .syscalls
            .iter()
            .filter(|r| r.names.iter().any(|n| n == "socket"))
            .collect();
        assert_eq!(socket.len(), 3);
        assert!(
            socket
                .iter()
                .all(|r| r.action == "SCMP_ACT_ALLOW" && r.args.len() == 1)
        );
    }

    #[test]
    fn pidfd_getfd_kcmp_and_process_madvise_need_cap_sys_ptrace() {
        for arch in [Arch::X86_64, Arch::AARCH64] {
            for name in ["pidfd_getfd", "kcmp", "process_madvise"] {
                assert_eq!(
                    default_answer(arch, DEFAULT_CAPS, name, 0),
                    EPERM,
                    "{name} without CAP_SYS_PTRACE on {}",
                    arch.name
                );
                let with = DEFAULT_CAPS | 1 << CAP_SYS_PTRACE;
                assert_eq!(default_answer(arch, with, name, 0), RET_ALLOW, "{name}");
            }
            // containerd allows these to everyone on kernels >= 4.8.
            for name in ["ptrace", "process_vm_readv", "process_vm_writev"] {
                assert_eq!(default_answer(arch, DEFAULT_CAPS, name, 0), RET_ALLOW);
            }
        }
    }

    #[test]
    fn open_by_handle_at_needs_cap_dac_read_search() {
        for arch in [Arch::X86_64, Arch::AARCH64] {
            let name = "open_by_handle_at";
            assert_eq!(default_answer(arch, DEFAULT_CAPS, name, 0), EPERM);
            assert_eq!(
                default_answer(arch, DEFAULT_CAPS | 1 << 2, name, 0),
                RET_ALLOW
            );
        }
    }

    #[test]
    fn the_runtime_default_allows_what_containerds_does_on_newer_kernels() {
        // rmdir was missing; the others are Linux 6.5 to 6.13 calls containerd allows,
        // which the tables did not know (an unknown name is skipped, so they were EPERM).
        let newer = [
            "cachestat",
            "fchmodat2",
            "map_shadow_stack",
            "futex_wake",
            "futex_wait",
            "futex_requeue",
            "statmount",
            "listmount",
            "lsm_get_self_attr",
            "lsm_set_self_attr",
            "lsm_list_modules",
            "mseal",
            "setxattrat",
            "getxattrat",
            "listxattrat",
            "removexattrat",
        ];
        for arch in [Arch::X86_64, Arch::AARCH64] {
            for name in newer {
                assert_eq!(
                    default_answer(arch, DEFAULT_CAPS, name, 0),
                    RET_ALLOW,
                    "{name} on {}",
                    arch.name
                );
            }
        }
        for name in ["rmdir", "uretprobe", "arch_prctl", "modify_ldt"] {
            assert_eq!(
                default_answer(Arch::X86_64, DEFAULT_CAPS, name, 0),
                RET_ALLOW,
                "{name}"
            );
        }
        // Same numbers as the kernel's tables.
        assert_eq!(Arch::X86_64.number("uretprobe"), Some(335));
        assert_eq!(Arch::X86_64.number("removexattrat"), Some(466));
        assert_eq!(Arch::AARCH64.number("mseal"), Some(462));
        assert_eq!(Arch::AARCH64.number("uretprobe"), None);
        // Still refused: what containerd refuses without a capability.
        for name in [
            "mount", "unshare", "setns", "bpf", "reboot", "add_key", "keyctl",
        ] {
            assert_eq!(
                default_answer(Arch::X86_64, DEFAULT_CAPS, name, 0),
                EPERM,
                "{name}"
            );
        }
    }

    #[test]
    fn the_runtime_default_refuses_the_calls_on_this_kernel() {
        let f = compile(&guard_socket_family(runtime_default(DEFAULT_CAPS))).unwrap();
        let code = in_child_with(&f, || {
            // SAFETY: socket, pidfd_open and pidfd_getfd on this child's own fds.
            unsafe {
                let raw = |family: u64| {
                    libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) as i32
                };
                let inet = raw(libc::AF_INET as u64);
                if inet < 0 {
                    return 1;
                }
                libc::close(inet);
                for family in [AF_ALG, AF_VSOCK, 0x1_0000_0000 | AF_ALG] {
                    if raw(family) >= 0 || errno() != libc::EPERM {
                        return 2;
                    }
                }
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
                if pidfd < 0 {
                    return 3;
                }
                let r = libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0);
                if r >= 0 || errno() != libc::EPERM {
                    return 4;
                }
                // rmdir works (it was refused before).
                if libc::mkdir(c"/tmp/berth-seccomp-rmdir".as_ptr(), 0o700) != 0
                    && errno() != libc::EEXIST
                {
                    return 5;
                }
                if libc::rmdir(c"/tmp/berth-seccomp-rmdir".as_ptr()) != 0 {
                    return 6;
                }
            }
            0
        });
        assert_eq!(code, 0);
        // With CAP_SYS_PTRACE in the set, the filter lets pidfd_getfd through.
        let f = compile(&guard_socket_family(runtime_default(
            DEFAULT_CAPS | 1 << CAP_SYS_PTRACE,
        )))
        .unwrap();
        let code = in_child_with(&f, || {
            // SAFETY: as above.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
                if libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0) < 0 {
                    return 1;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn a_profile_for_another_architecture_is_refused() {
        let p: Profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#,
        )
        .unwrap();
        compile_for(&p, Arch::AARCH64).unwrap();
        let e = compile_for(&p, Arch::X86_64).unwrap_err();
        assert!(e.to_string().contains("SCMP_ARCH_X86_64"), "{e}");
    }
}
