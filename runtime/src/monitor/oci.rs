//! Containers of RuntimeClass handler pods, run by an external OCI runtime (runc, crun): the
//! daemon wrote the bundle's `config.json`; here the monitor runs `<runtime> create` with the
//! container's stdio pipes (or a console socket for a tty), then `start` and `delete`.
//!
//! Every runtime command runs in a private mount namespace with a /proc of the pod's PID
//! namespace (the monitor's, which the runtime is born in), so the pids it records and
//! checks are the pod's. For `create` the monitor also mounts the container's overlay root
//! there at `root.path`: the runtime's own mount namespace for the container copies it, and
//! the mount disappears with the container, so nothing is left on the host. When `create`
//! exits, the container's first process is reparented to the monitor (the child
//! subreaper), which reaps it, writes its exit code and signals it by pidfd, as for its own
//! containers. Exec processes join the container by its pidfd as
//! for the default handler. The monitor runs the runtime only for handler containers.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::child::reset_signals;
use super::container::{ChildStdio, Created, devnull};
use super::logs::set_nonblocking;
use super::rootfs::{mount_raw, overlay_data, set_propagation};
use super::sync::recv_sync;
use super::{Failure, Monitor, SETUP_TIMEOUT, err, sys_err};
use crate::protocol::{Class, Response};
use crate::spec::{ContainerSpec, OciRuntimeSpec, PidNamespace};
use crate::sys::{self, pipe};

/// The most of a runtime's error output kept for a message.
const MAX_MESSAGE: usize = 4096;
/// How long `start` and `delete` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The console socket's name in the bundle (passed relative to it: `sun_path` is short).
const CONSOLE_SOCKET: &str = "console.sock";

/// The argv of a runtime command: `<binary> --root R --log L <args...>`.
fn argv(rt: &OciRuntimeSpec, args: &[&str]) -> Result<Vec<CString>, String> {
    let log = rt.bundle.join("runtime.log");
    let mut v: Vec<&[u8]> = vec![
        rt.binary.as_os_str().as_bytes(),
        b"--root",
        rt.root.as_os_str().as_bytes(),
        b"--log",
        log.as_os_str().as_bytes(),
    ];
    v.extend(rt.args.iter().map(|a| a.as_bytes()));
    v.extend(args.iter().map(|a| a.as_bytes()));
    v.into_iter()
        .map(|a| CString::new(a).map_err(|_| "runtime argument contains a NUL byte".to_string()))
        .collect()
}

/// Runs the runtime with `args` and `stdio` (0, 1, 2) and waits for it. Returns its exit code
/// (128 + signal when killed).
///
/// The runtime runs in a mount namespace of its own with a /proc of the pod's PID namespace
/// (the monitor's, which it is born in): the pids it records and checks are the pod's,
/// whatever command runs. With `rootfs`, that container's overlay root is mounted there too.
fn run(
    rt: &OciRuntimeSpec,
    args: &[&str],
    stdio: [RawFd; 3],
    rootfs: Option<&ContainerSpec>,
    timeout: Duration,
) -> Result<i32, String> {
    let argv = argv(rt, args)?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let bundle = CString::new(rt.bundle.as_os_str().as_bytes())
        .map_err(|_| "bundle path contains a NUL byte".to_string())?;
    let overlay = rootfs.map(|s| {
        (
            s.rootfs.mount_point.clone(),
            overlay_data(
                &s.rootfs.lower_dirs,
                Some((&s.rootfs.upper_dir, &s.rootfs.work_dir)),
            ),
        )
    });
    // SAFETY: the monitor is single-threaded; the child only runs the code below and execs
    // or `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        let r = (|| -> Result<(), String> {
            reset_signals();
            // SAFETY: setsid, umask and dup2 on fds we hold; we are the only thread.
            unsafe {
                libc::setsid();
                // The runtime creates mount targets in the container's root and the
                // container's process: with containerd's umask, not the daemon's 077.
                libc::umask(0o022);
                for (from, to) in stdio.iter().zip(0..) {
                    if libc::dup2(*from, to) < 0 {
                        return Err(format!("set up stdio: {}", io::Error::last_os_error()));
                    }
                }
            }
            sys::cloexec_from(3).map_err(|e| format!("mark fds close-on-exec: {e}"))?;
            // SAFETY: unshare with a flag, in this child only.
            if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                return Err(format!(
                    "unshare mount namespace: {}",
                    io::Error::last_os_error()
                ));
            }
            // A slave: the overlay, this /proc and what the runtime mounts never reach the
            // host.
            set_propagation(Path::new("/"), libc::MS_SLAVE)
                .map_err(|e| format!("make mounts private: {e}"))?;
            mount_raw(
                Some("proc"),
                Path::new("/proc"),
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                "",
            )
            .map_err(|e| format!("mount /proc of the pod: {e}"))?;
            hide_hybrid_cgroup2();
            if let Some((root, data)) = &overlay {
                mount_raw(Some("overlay"), root, Some("overlay"), 0, data)
                    .map_err(|e| format!("mount overlay on {}: {e}", root.display()))?;
            }
            // SAFETY: chdir to a NUL-terminated path; execv with NULL-terminated arrays of
            // pointers into CStrings that outlive the call.
            unsafe {
                libc::chdir(bundle.as_ptr());
                libc::execv(argv_p[0], argv_p.as_ptr());
            }
            Err(format!(
                "exec {}: {}",
                rt.binary.display(),
                io::Error::last_os_error()
            ))
        })();
        let msg = format!("berth-monitor: {}\n", r.err().unwrap_or_default());
        // SAFETY: writing our buffer to stderr, then ending the child without the monitor's
        // handlers.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    wait_child(pid, timeout)
}

/// On a hybrid host (cgroup v1 controllers, and a cgroup2 hierarchy at
/// `/sys/fs/cgroup/unified` holding some too), hides that hierarchy from the runtime: crun
/// refuses such a host outright. The container is in its cgroup there all the same: the
/// monitor writes it into every cgroup Berth made for it.
fn hide_hybrid_cgroup2() {
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    let is_cgroup2 = |p: &std::ffi::CStr| {
        // SAFETY: statfs into a zeroed struct we own, on a NUL-terminated path.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(p.as_ptr(), &mut st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC
        }
    };
    if !is_cgroup2(c"/sys/fs/cgroup") && is_cgroup2(c"/sys/fs/cgroup/unified") {
        // SAFETY: unmounting a literal path in this child's own mount namespace.
        unsafe { libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) };
    }
}

/// Waits up to `timeout` for the child `pid`, killing it when the time is up.
fn wait_child(pid: i32, timeout: Duration) -> Result<i32, String> {
    let deadline = Instant::now() + timeout;
    let pidfd = sys::pidfd_open(pid).ok();
    loop {
        let mut status = 0;
        // SAFETY: reaping our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(super::reaper::wait_status(status).exit_code);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(format!("wait: {}", io::Error::last_os_error()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            super::reaper::reap_now(pid);
            return Err(format!("timed out after {} s", timeout.as_secs()));
        }
        let ms = left.as_millis().min(100) as i32;
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(Duration::from_millis(ms as u64)),
        }
    }
}

/// What a failed runtime command said: its stderr, else the tail of its log file.
fn failure_text(stderr: Option<&OwnedFd>, rt: &OciRuntimeSpec) -> String {
    let mut text = Vec::new();
    if let Some(fd) = stderr {
        set_nonblocking(fd.as_raw_fd());
        let mut buf = [0u8; 1024];
        // SAFETY: the fd is ours; the File is forgotten, not closed.
        let mut f = std::mem::ManuallyDrop::new(unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(fd.as_raw_fd())
        });
        while text.len() < MAX_MESSAGE {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
    }
    if text.iter().all(u8::is_ascii_whitespace)
        && let Ok(log) = std::fs::read(rt.bundle.join("runtime.log"))
    {
        text = log[log.len().saturating_sub(MAX_MESSAGE)..].to_vec();
    }
    String::from_utf8_lossy(&text).trim().replace('\n', "; ")
}

/// Runs a runtime command that needs no container stdio (`start`, `delete`); its stdout and
/// stderr are collected for the error message.
fn command(rt: &OciRuntimeSpec, args: &[&str]) -> Result<(), String> {
    let null = devnull().map_err(|e| format!("open /dev/null: {e}"))?;
    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let code = run(
        rt,
        args,
        [null.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
        None,
        COMMAND_TIMEOUT,
    )?;
    drop(w);
    if code == 0 {
        return Ok(());
    }
    Err(format!(
        "exit status {code}: {}",
        failure_text(Some(&r), rt)
    ))
}

/// `<runtime> delete --force <id>`: removes the runtime's state and cgroup of a container
/// whose process is gone (or kills it first). Failures are logged: there is nobody to tell.
pub(super) fn delete(rt: &OciRuntimeSpec, id: &str) {
    if let Err(e) = command(rt, &["delete", "--force", id]) {
        eprintln!("berth-monitor: {} delete {id}: {e}", rt.binary.display());
    }
}

impl Monitor {
    /// `create` for a handler container: the runtime creates it, stopped before exec, with
    /// `stdio` (or a pty it hands over on the console socket); `err_r` is where its error
    /// output is read from when it fails.
    pub(super) fn create_oci(
        &self,
        spec: &ContainerSpec,
        rt: &OciRuntimeSpec,
        stdio: ChildStdio,
        err_r: &OwnedFd,
    ) -> Result<Created, Failure> {
        let own_pidns = matches!(
            &spec.pid_ns,
            PidNamespace::Container | PidNamespace::Target { .. }
        );
        let pid_file = rt.bundle.join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(rt.bundle.join("runtime.log"));
        let pid_file_s = pid_file.to_string_lossy().into_owned();
        let bundle_s = rt.bundle.to_string_lossy().into_owned();
        let mut args = vec!["create", "--bundle", &bundle_s, "--pid-file", &pid_file_s];
        let console = if spec.tty {
            let path = rt.bundle.join(CONSOLE_SOCKET);
            let _ = std::fs::remove_file(&path);
            let (_dirfd, short) =
                sys::socket_path(&path).map_err(|e| sys_err("console socket path", e))?;
            let l = sys::bind_unix(Path::new(&short), 0o600)
                .map_err(|e| sys_err(&format!("listen on {}", path.display()), e))?;
            args.extend(["--console-socket", CONSOLE_SOCKET]);
            Some((l, path))
        } else {
            None
        };
        args.push(&spec.id);
        let code = run(
            rt,
            &args,
            [
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
            ],
            Some(spec),
            SETUP_TIMEOUT,
        );
        drop(stdio);
        let failed = match code {
            Ok(0) => None,
            Ok(c) => Some(format!(
                "exit status {c}: {}",
                failure_text(Some(err_r), rt)
            )),
            Err(e) => Some(e),
        };
        if let Some(msg) = failed {
            delete(rt, &spec.id);
            if let Some((_, path)) = &console {
                let _ = std::fs::remove_file(path);
            }
            return Err(err(
                Class::Internal,
                format!("{} create {}: {msg}", rt.binary.display(), spec.id),
            ));
        }
        let undo = |rt: &OciRuntimeSpec, f: Failure| {
            delete(rt, &spec.id);
            f
        };
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                undo(
                    rt,
                    err(
                        Class::Internal,
                        format!("{} create wrote no pid file", rt.binary.display()),
                    ),
                )
            })?;
        // Into the cgroup Berth made for it, before it runs any code of the container: a
        // runtime that manages cgroups has put it there already; one told not to has not.
        for p in &spec.cgroup_procs {
            std::fs::write(p, pid.to_string())
                .map_err(|e| undo(rt, sys_err(&format!("join cgroup {}", p.display()), e)))?;
        }
        let pidfd = sys::pidfd_open(pid).map_err(|e| undo(rt, sys_err("pidfd_open", e)))?;
        let host_pid =
            host_pid_of(&pidfd).map_err(|e| undo(rt, sys_err("read the host pid", e)))?;
        let master = match console {
            Some((listener, path)) => {
                let master = receive_console(&listener);
                let _ = std::fs::remove_file(&path);
                Some(master.map_err(|e| undo(rt, sys_err("receive the pty", e)))?)
            }
            None => None,
        };
        Ok(Created {
            pid,
            host_pid,
            pidfd,
            own_pidns,
            sync: None,
            tty_master: master,
        })
    }

    /// `start` for a handler container: `<runtime> start` lets it exec.
    pub(super) fn start_oci(&mut self, id: &str) -> Result<Response, Failure> {
        let c = self.container(id)?;
        if c.exit.is_some() {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} has exited"),
            ));
        }
        if c.started_at != 0 {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} is already started"),
            ));
        }
        let Some(rt) = c.oci.clone() else {
            return Err(err(Class::Internal, "not a handler container"));
        };
        command(&rt, &["start", id]).map_err(|e| {
            err(
                Class::Internal,
                format!("{} start {id}: {e}", rt.binary.display()),
            )
        })?;
        let c = self.container(id)?;
        c.started_at = sys::now_ns();
        Ok(Response::Started {
            started_at: c.started_at,
        })
    }
}

/// The host PID of the process `pidfd` refers to: the pid file holds the pod's view of it,
/// and the host's /proc (the monitor's) shows a pidfd's pid as the host sees it.
fn host_pid_of(pidfd: &OwnedFd) -> io::Result<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|p: &i32| *p > 0)
        .ok_or_else(|| io::Error::other("no Pid in the pidfd's fdinfo"))
}

/// Takes the pty master the runtime sent on the console socket (it has already exited, so
/// its connection is queued).
fn receive_console(listener: &UnixListener) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let (conn, _) = listener.accept()?;
    let conn: OwnedFd = conn.into();
    match recv_sync(&conn, Duration::from_secs(5))? {
        Some((_, Some(fd))) => Ok(fd),
        _ => Err(io::Error::other("no pty master on the console socket")),
    }
}
