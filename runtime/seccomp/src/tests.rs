//! Tests of the compiler and the runtime default, by interpreting the programs and by
//! running system calls under them in a forked child.

use super::compile::*;
use super::default::*;
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
            let raw =
                |family: u64| libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) as i32;
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
