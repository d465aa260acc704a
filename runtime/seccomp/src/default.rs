//! The runtime default profile, equal to containerd's, and the guard Berth's own filter
//! adds in front of its `socket` rules.

use std::collections::BTreeSet;

use super::Arch;
use super::profile::{ArgCondition, Profile, SyscallRule};

pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;

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
pub(crate) const AF_ALG: u64 = 38;
/// `AF_VSOCK`: sockets to the hypervisor and its other guests.
pub(crate) const AF_VSOCK: u64 = 40;

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
