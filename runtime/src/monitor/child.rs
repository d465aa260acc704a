//! Code that runs in a process the monitor forked, up to `execve`: the container's first
//! process and exec processes. The monitor is single-threaded, so the child may allocate.
//! Every failure is sent to the monitor on the sync socket and ends the child.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::MsgFlags;

use crate::command::{DEFAULT_PATH, env_value};
use crate::hooks;
use crate::monitor::rootfs;
use crate::monitor::terminal::setup_tty;
use crate::protocol::fds::send_with_fds;
use crate::security::SecuritySettings;
use crate::spec::{ContainerSpec, ProcessSpec};
use crate::sys::{self, cvt};

/// Message from child to monitor: set up, waiting for start. Payload: host PID (4 bytes LE).
pub(crate) const MSG_READY: u8 = b'R';
/// Message from child to monitor: failed. Payload: 1 if the request was at fault, else 0,
/// then the error text.
pub(crate) const MSG_ERROR: u8 = b'E';
/// Message from monitor to child: run.
pub(crate) const MSG_START: u8 = b'S';
/// Message from child to monitor: the root is built, not pivoted into yet; run the
/// `createRuntime` hooks. Payload: host PID (4 bytes LE). Sent only when there are some.
pub(crate) const MSG_HOOKS: u8 = b'H';
/// Message from monitor to child: the `createRuntime` hooks ran; go on.
pub(crate) const MSG_RESUME: u8 = b'C';

/// The fds a child gets: stdio and its end of the sync socket.
pub(crate) struct ChildFds {
    /// Becomes fd 0 (ignored with a tty).
    pub stdin: RawFd,
    /// Becomes fd 1 (ignored with a tty).
    pub stdout: RawFd,
    /// Becomes fd 2 (ignored with a tty).
    pub stderr: RawFd,
    /// SOCK_SEQPACKET end talking to the monitor (close-on-exec).
    pub sync: RawFd,
}

/// A failed step: whether the request was at fault (an executable that does not exist), and
/// what happened.
pub(crate) type ChildError = (bool, String);

/// A failed step of the runtime's own, with what was being done.
type StepResult<T = ()> = Result<T, String>;

/// The files of `/proc` the child writes to on its way to exec, opened before the
/// container's file system exists (from the monitor's own procfs, checked to be procfs) and
/// written through the fd: no volume, image symlink or mount made later can redirect these
/// writes to another file (CVE-2019-16884, CVE-2025-52881).
#[derive(Default)]
pub(crate) struct ProcFiles {
    /// `/proc/self/oom_score_adj`, when the process asks for a score.
    oom_score_adj: Option<std::fs::File>,
    /// The AppArmor exec attribute, when the process has a profile.
    apparmor_exec: Option<std::fs::File>,
}

impl ProcFiles {
    /// Opens what `p` will need. Must run in the process that will write (a task may only
    /// set its own attributes), before any mount the pod controls.
    pub(crate) fn open(p: &ProcessSpec) -> StepResult<ProcFiles> {
        let mut files = ProcFiles::default();
        if let Some(v) = p.oom_score_adj {
            files.oom_score_adj = Some(
                open_proc_file("/proc/self/oom_score_adj")
                    .map_err(|e| format!("set oom_score_adj {v}: {e}"))?,
            );
        }
        if let Some(name) = &p.security.apparmor_profile {
            // The per-LSM file is the one that works where several LSMs are stacked; older
            // kernels have only the shared one.
            files.apparmor_exec = Some(
                open_proc_file("/proc/thread-self/attr/apparmor/exec")
                    .or_else(|_| open_proc_file("/proc/self/attr/exec"))
                    .map_err(|e| format!("apparmor profile {name:?}: {e}"))?,
            );
        }
        Ok(files)
    }

    /// Writes the process's oom_score_adj, if it asked for one.
    fn set_oom_score_adj(&mut self, p: &ProcessSpec) -> StepResult {
        match (&mut self.oom_score_adj, p.oom_score_adj) {
            (Some(f), Some(v)) => f
                .write_all(v.to_string().as_bytes())
                .map_err(|e| format!("set oom_score_adj {v}: {e}")),
            _ => Ok(()),
        }
    }
}

/// Opens a `/proc` file for writing, with no symlink on the way but the `self` and
/// `thread-self` links, and checks that it is on procfs.
fn open_proc_file(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if sys::fs_magic(f.as_raw_fd())? != libc::PROC_SUPER_MAGIC {
        return Err(std::io::Error::other(format!("{path} is not on procfs")));
    }
    Ok(f)
}

fn internal(e: String) -> ChildError {
    (false, e)
}

fn fail(sync: RawFd, (invalid, msg): ChildError) -> ! {
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.push(MSG_ERROR);
    buf.push(invalid as u8);
    buf.extend_from_slice(msg.as_bytes());
    // SAFETY: sending our own buffer on a socket we hold; `_exit` skips atexit handlers
    // that belong to the monitor.
    unsafe {
        libc::send(sync, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL);
        libc::_exit(127)
    }
}

pub(super) fn reset_signals() {
    // SAFETY: a zeroed sigset emptied by sigemptyset; default dispositions for every
    // catchable signal; we are the only thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

fn join_cgroups(procs: &[PathBuf]) -> StepResult {
    for p in procs.iter().filter(|p| !crate::sys::born_into(p)) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(|e| format!("join cgroup {}: {e}", p.display()))?;
    }
    Ok(())
}

fn dup_stdio(fds: &ChildFds) -> StepResult {
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        // SAFETY: dup2 on fds we hold; clears close-on-exec on the target.
        cvt(unsafe { libc::dup2(from, to) } as libc::c_long)
            .map_err(|e| format!("set up stdio: {e}"))?;
    }
    Ok(())
}

/// Enters the working directory, resolved inside the container's root with no magic link
/// on the way (`/proc/self/fd/N` cannot lead to a directory the runtime holds open,
/// CVE-2024-21626), created with `create`. A path that loops or is not a directory is the
/// request's fault.
fn ensure_cwd(cwd: &str, create: bool) -> Result<(), ChildError> {
    let at_fault = |e: std::io::Error| {
        let invalid = matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR));
        (invalid, format!("change to working directory {cwd}: {e}"))
    };
    let root = sys::openat2(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )
    .map_err(|e| internal(format!("open /: {e}")))?;
    let dir = if create {
        rootfs::ensure_in_root(root.as_raw_fd(), cwd, false)
    } else {
        let rel = cwd.trim_start_matches('/');
        sys::openat2(
            root.as_raw_fd(),
            Path::new(if rel.is_empty() { "." } else { rel }),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
        )
    }
    .map_err(at_fault)?;
    // SAFETY: fchdir on a directory fd we hold.
    cvt(unsafe { libc::fchdir(dir.as_raw_fd()) } as libc::c_long).map_err(at_fault)?;
    Ok(())
}

/// Finds the executable as execvp would, with the container's PATH.
pub(crate) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if runnable(&p) {
            Ok(p)
        } else {
            Err(format!("exec: {arg0:?}: no such executable file"))
        };
    }
    let path = env_value(env, "PATH").unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(arg0);
        if runnable(&p) {
            return Ok(p);
        }
    }
    Err(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    ))
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, String> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{what} contains a NUL byte")))
        .collect()
}

/// Ids, capabilities, no_new_privs and seccomp: the last steps before exec.
fn apply_identity(p: &ProcessSpec, proc_files: &mut ProcFiles) -> StepResult {
    let sec: &SecuritySettings = &p.security;
    let caps = &sec.capabilities;
    let last = sys::last_cap();
    if let (Some(profile), Some(attr)) = (&sec.apparmor_profile, &mut proc_files.apparmor_exec) {
        apparmor_on_exec(profile, attr)?;
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the steps below may
    // drop: load it first (as runc does), so the profile also covers those steps.
    if !sec.no_new_privs
        && let Some(filter) = &sec.seccomp
    {
        load_seccomp(filter)?;
    }
    // SAFETY: prctl/setgroups/setres[ug]id with integer arguments and a slice we own.
    unsafe {
        for cap in 0..=last {
            if caps.bounding & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            {
                return Err(format!(
                    "drop capability {cap} from the bounding set: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "keep capabilities: {}",
                std::io::Error::last_os_error()
            ));
        }
        let groups: Vec<libc::gid_t> = p.user.additional_gids.clone();
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setresgid(p.user.gid, p.user.gid, p.user.gid) != 0 {
            return Err(format!(
                "setgid {}: {}",
                p.user.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setresuid(p.user.uid, p.user.uid, p.user.uid) != 0 {
            return Err(format!(
                "setuid {}: {}",
                p.user.uid,
                std::io::Error::last_os_error()
            ));
        }
    }
    sys::capset(caps.effective, caps.permitted, caps.inheritable)
        .map_err(|e| format!("set capabilities: {e}"))?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        for cap in 0..=last {
            if caps.ambient & (1u64 << cap) != 0
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                ) != 0
            {
                return Err(format!(
                    "raise ambient capability {cap}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if sec.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if sec.no_new_privs
        && let Some(filter) = &sec.seccomp
    {
        load_seccomp(filter)?;
    }
    Ok(())
}

/// Makes the coming exec enter the AppArmor profile `name` (while this process still has
/// the capabilities to ask, as runc does), through the attribute file opened beforehand.
fn apparmor_on_exec(name: &str, attr: &mut std::fs::File) -> StepResult {
    attr.write_all(format!("exec {name}").as_bytes())
        .map_err(|e| format!("apparmor profile {name:?}: {e}"))
}

/// Installs a seccomp filter on this process.
fn load_seccomp(filter: &crate::security::SeccompFilter) -> StepResult {
    crate::seccomp::install(filter).map_err(|e| format!("load seccomp filter: {e}"))
}

fn exec(path: &Path, p: &ProcessSpec) -> Result<std::convert::Infallible, String> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "executable path contains a NUL byte".to_string())?;
    let argv = cstrings(&p.args, "argument")?;
    let envp = cstrings(&p.env, "environment")?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of pointers into CStrings that outlive the call.
    unsafe { libc::execve(cpath.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(format!(
        "exec {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    ))
}

fn send_ready(sync: RawFd, host_pid: i32, tty_master: Option<RawFd>) -> StepResult {
    let mut msg = [0u8; 5];
    msg[0] = MSG_READY;
    msg[1..].copy_from_slice(&host_pid.to_le_bytes());
    let fds: Vec<RawFd> = tty_master.into_iter().collect();
    send_with_fds(sync, &msg, &fds, MsgFlags::empty()).map_err(|e| format!("report ready: {e}"))?;
    Ok(())
}

fn wait_start(sync: RawFd) -> bool {
    recv_byte(sync) == Some(MSG_START)
}

/// Waits for a one-byte message from the monitor; `None` when it closed the socket.
fn recv_byte(sync: RawFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading one byte into our buffer.
        let n = unsafe { libc::recv(sync, b.as_mut_ptr().cast(), 1, 0) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return (n == 1).then_some(b[0]);
    }
}

/// The container's first process: set up, report, wait for start, exec. Never returns.
/// `userns` is the pod's user namespace, if it has one.
pub(crate) fn container_main(spec: &ContainerSpec, fds: ChildFds, userns: Option<RawFd>) -> ! {
    let sync = fds.sync;
    let userns = userns.filter(|_| spec.userns.is_some());
    let mut proc_files = match ProcFiles::open(&spec.process) {
        Ok(f) => f,
        Err(e) => fail(sync, internal(e)),
    };
    match container_setup(spec, &fds, userns, &mut proc_files) {
        Ok((exe, host_pid)) => {
            if !wait_start(sync) {
                // The monitor dropped the container before starting it.
                // SAFETY: ending the child without running the monitor's handlers.
                unsafe { libc::_exit(0) };
            }
            let r = (|| -> Result<std::convert::Infallible, String> {
                // SAFETY: umask is always safe.
                unsafe { libc::umask(0o022) };
                if userns.is_none() {
                    proc_files.set_oom_score_adj(&spec.process)?;
                }
                apply_identity(&spec.process, &mut proc_files)?;
                // In the container, as its process (its root, ids, capabilities), as what
                // the container's image holds at the hook's path is what runs.
                let state = hooks::State::new(
                    &spec.id,
                    &spec.rootfs.mount_point,
                    &spec.annotations,
                    hooks::Status::Created,
                    Some(host_pid),
                );
                hooks::run_all(&spec.hooks.start_container, &state)
                    .map_err(|e| hooks::message("startContainer", &e))?;
                exec(&exe, &spec.process)
            })();
            match r {
                Err(e) => fail(sync, internal(e)),
                Ok(never) => match never {},
            }
        }
        Err(e) => fail(sync, e),
    }
}

fn container_setup(
    spec: &ContainerSpec,
    fds: &ChildFds,
    userns: Option<RawFd>,
    proc_files: &mut ProcFiles,
) -> Result<(PathBuf, i32), ChildError> {
    let host_pid = container_prepare(spec, fds, userns, proc_files)?;
    ensure_cwd(&spec.process.cwd, true)?;
    let exe = find_executable(&spec.process.args[0], &spec.process.env).map_err(|e| (true, e))?;
    let master = if spec.tty {
        Some(setup_tty().map_err(internal)?)
    } else {
        None
    };
    sys::cloexec_from(3).map_err(|e| internal(format!("mark fds close-on-exec: {e}")))?;
    send_ready(fds.sync, host_pid, master).map_err(internal)?;
    if let Some(m) = master {
        // SAFETY: the monitor has its copy now.
        unsafe { libc::close(m) };
    }
    Ok((exe, host_pid))
}

/// Everything up to the exec lookup; returns the host PID (read before /proc changes).
/// Mounts are made with the node's privileges; then the process joins the pod's user
/// namespace, if any, so that the working directory it creates is its own.
fn container_prepare(
    spec: &ContainerSpec,
    fds: &ChildFds,
    userns: Option<RawFd>,
    proc_files: &mut ProcFiles,
) -> Result<i32, ChildError> {
    reset_signals();
    // SAFETY: setsid/umask/unshare with integer arguments; we are single-threaded.
    unsafe {
        libc::setsid();
        libc::umask(0);
    }
    let host_pid = sys::host_pid();
    join_cgroups(&spec.cgroup_procs).map_err(internal)?;
    // SAFETY: as above.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) } as libc::c_long)
        .map_err(|e| internal(format!("unshare mount namespace: {e}")))?;
    rootfs::setup(spec, userns, || before_pivot(spec, fds.sync, host_pid))?;
    if !spec.tty {
        dup_stdio(fds).map_err(internal)?;
    }
    if let Some(ns) = userns {
        // Lowering it needs privilege over the node, which the namespace's root lacks.
        proc_files
            .set_oom_score_adj(&spec.process)
            .map_err(internal)?;
        super::userns::join(ns).map_err(internal)?;
    }
    Ok(host_pid)
}

/// The hooks that run once the container's root is built and before it is pivoted into:
/// `createRuntime` in the monitor (asked for on the sync socket, and waited for), then
/// `createContainer` here, in the container's mount namespace, where the root is still
/// reachable at its path on the node (a file a hook writes under it is in the container).
/// They run with the node's privileges, before the process joins the pod's user namespace.
fn before_pivot(spec: &ContainerSpec, sync: RawFd, host_pid: i32) -> Result<(), ChildError> {
    let hooks = &spec.hooks;
    if !hooks.create_runtime.is_empty() {
        let mut msg = [0u8; 5];
        msg[0] = MSG_HOOKS;
        msg[1..].copy_from_slice(&host_pid.to_le_bytes());
        send_with_fds(sync, &msg, &[], MsgFlags::empty())
            .map_err(|e| internal(format!("ask for the createRuntime hooks: {e}")))?;
        if recv_byte(sync) != Some(MSG_RESUME) {
            return Err(internal(
                "the monitor ended the container's creation".into(),
            ));
        }
    }
    let state = hooks::State::new(
        &spec.id,
        &spec.rootfs.mount_point,
        &spec.annotations,
        hooks::Status::Creating,
        Some(host_pid),
    );
    hooks::run_all(&hooks.create_container, &state)
        .map_err(|e| internal(hooks::message("createContainer", &e)))
}

/// An exec process: enter the container's mount namespace (the monitor already put us in
/// its PID namespace) and, with `userns`, its user namespace, set up stdio (a new pty with
/// `tty`, whose master goes to the monitor first), then exec. Never returns.
pub(crate) fn exec_main(
    process: &ProcessSpec,
    cgroup_procs: &[PathBuf],
    container_pidfd: RawFd,
    tty: bool,
    userns: bool,
    fds: ChildFds,
) -> ! {
    let sync = fds.sync;
    let r = (|| -> Result<std::convert::Infallible, ChildError> {
        reset_signals();
        // SAFETY: setsid with no arguments.
        unsafe { libc::setsid() };
        join_cgroups(cgroup_procs).map_err(internal)?;
        // Before entering the container's mounts, where /proc is the container's to change.
        let mut proc_files = ProcFiles::open(process).map_err(internal)?;
        sys::setns(container_pidfd, libc::CLONE_NEWNS)
            .map_err(|e| internal(format!("enter the container's mounts: {e}")))?;
        if userns {
            // The container's own user namespace, through its pidfd.
            super::userns::join(container_pidfd).map_err(internal)?;
        }
        if tty {
            // The pty comes from the container's own devpts, as a tty container's does.
            let master = setup_tty().map_err(internal)?;
            send_ready(sync, 0, Some(master)).map_err(internal)?;
            // SAFETY: the monitor has its copy now.
            unsafe { libc::close(master) };
        } else {
            dup_stdio(&fds).map_err(internal)?;
        }
        ensure_cwd(&process.cwd, false).or_else(|_| ensure_cwd("/", false))?;
        let exe = find_executable(&process.args[0], &process.env).map_err(|e| (true, e))?;
        sys::cloexec_from(3).map_err(|e| internal(format!("mark fds close-on-exec: {e}")))?;
        // SAFETY: umask is always safe.
        unsafe { libc::umask(0o022) };
        apply_identity(process, &mut proc_files).map_err(internal)?;
        exec(&exe, process).map_err(internal)
    })();
    match r {
        Err(e) => fail(sync, e),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_lookup() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_executable("sh", &env).unwrap().ends_with("sh"));
        assert!(find_executable("/bin/sh", &[]).is_ok());
        let e = find_executable("no-such-binary-berth", &env).unwrap_err();
        assert!(e.contains("not found in $PATH"), "{e}");
        assert!(find_executable("/etc/passwd", &[]).is_err());
    }
}
