//! The pod monitor: one small single-threaded process per pod that holds the pod's
//! namespaces, creates and reaps its containers, writes their CRI logs and serves the daemon
//! on a unix socket (see [`crate::protocol`]).
//!
//! The daemon starts the `berth-monitor` binary with the pod's new namespaces already
//! unshared; [`launch`] forks once so that the monitor is PID 1 of the pod's PID namespace and
//! not the daemon's child, then the monitor reports readiness on fd 3.

mod child;
mod logs;
mod memory;
mod oci;
mod rootfs;
mod userns;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::*;
use crate::spec::{ContainerSpec, PidNamespace, ProcessSpec};
use crate::sys::{self, cvt, pipe};
use child::{ChildFds, MSG_ERROR, MSG_READY, MSG_START};
use logs::Output;

/// The fd on which the daemon waits for `ok <pid>` or `error: <message>`.
pub const READY_FD: RawFd = 3;

/// How long a container's setup may take before create fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a container's output at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Reads of one output per poll wake-up (so at most 128 KiB before others get a turn).
const MAX_READS_PER_WAKE: usize = 16;
/// How long after activity the monitor drops the pages that activity touched.
const TRIM_DELAY: Duration = Duration::from_secs(2);
/// How long a response write to the daemon may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point of the `berth-monitor` binary: `berth-monitor <monitor.json>`.
/// Returns the process exit code.
pub fn launch(args: &[String]) -> i32 {
    let Some(config_path) = args.get(1) else {
        eprintln!("usage: berth-monitor <monitor.json>");
        return 2;
    };
    // Not dumpable: the pod's processes see the monitor (PID 1 of the pod) and the children
    // it forks for containers until they exec, and reaching their /proc entries (exe, fds,
    // memory) now takes CAP_SYS_PTRACE. exec makes a container's process dumpable again.
    // It runs from a sealed copy named by its fd; ps and top show the binary's name.
    // SAFETY: prctl with integer arguments and a NUL-terminated literal.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-monitor".as_ptr(), 0, 0, 0);
    }
    // Fork once: the child is PID 1 of the PID namespace the daemon unshared for us (if any)
    // and is adopted by init when we exit, so it outlives the daemon.
    // Born in its cgroup where the kernel allows (the rest are joined in `setup`).
    let cfg = std::fs::read(config_path)
        .ok()
        .and_then(|t| serde_json::from_slice::<MonitorConfig>(&t).ok());
    // A user-namespaced pod: the daemon unshared nothing. Its net, ipc and uts namespaces
    // are made inside its user namespace; its PID namespace (owned by the node's: a PID
    // namespace cannot be joined before it has an init) is unshared here, after the helper
    // that made the others is gone, and the child below is born into all of them.
    let userns = match cfg.as_ref().and_then(|c| c.userns.as_ref().map(|u| (c, u))) {
        Some((c, u)) => {
            let flags = crate::namespace::unshare_flags(&c.namespaces);
            let made = userns::create_pod_namespaces(flags, u).and_then(|fd| {
                if flags & libc::CLONE_NEWPID != 0
                    // SAFETY: unshare with a flag; single-threaded.
                    && unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0
                {
                    return Err(format!(
                        "unshare the pid namespace: {}",
                        io::Error::last_os_error()
                    ));
                }
                Ok(fd)
            });
            match made {
                Ok(fd) => Some(fd),
                Err(e) => {
                    report_ready(&format!("error: {e}"));
                    return 1;
                }
            }
        }
        None => None,
    };
    let cgroups = cfg.map(|c| c.cgroup_procs).unwrap_or_default();
    // SAFETY: single-threaded here; the child only continues this program.
    match unsafe { sys::fork_into_cgroup(&cgroups) } {
        -1 => {
            report_ready(&format!("error: fork: {}", io::Error::last_os_error()));
            1
        }
        0 => run(Path::new(config_path), userns),
        _ => {
            // SAFETY: closing our copy of the readiness fd so only the monitor holds it.
            unsafe { libc::close(READY_FD) };
            0
        }
    }
}

fn report_ready(msg: &str) {
    let line = format!("{msg}\n");
    // SAFETY: writing our buffer to the readiness fd, then closing it.
    unsafe {
        libc::write(READY_FD, line.as_ptr().cast(), line.len());
        libc::close(READY_FD);
    }
}

struct Client {
    id: u64,
    stream: UnixStream,
    reader: FrameReader,
    fds: VecDeque<OwnedFd>,
    subscribed: bool,
    closed: bool,
}

struct Container {
    id: String,
    pid: i32,
    host_pid: i32,
    pidfd: OwnedFd,
    own_pidns: bool,
    started_at: i64,
    exit: Option<ExitStatus>,
    sync: Option<OwnedFd>,
    /// The write end of the container's stdin pipe, held so the container does not see
    /// EOF until `CloseStdin`; attachers get a duplicate to write to.
    stdin: Option<OwnedFd>,
    /// The container runs on a pty (its master is `outputs[0]` while it is open).
    tty: bool,
    /// Attach output sockets: every output chunk is copied to each; closed at exit.
    attachers: Vec<OwnedFd>,
    log_path: Option<PathBuf>,
    log: Option<std::fs::File>,
    outputs: Vec<Output>,
    exit_file: PathBuf,
    /// Run by an external OCI runtime (a RuntimeClass handler), see [`oci`].
    oci: Option<crate::spec::OciRuntimeSpec>,
}

struct Exec {
    pid: i32,
    client: u64,
    deadline: Option<Instant>,
    timed_out: bool,
}

struct Monitor {
    cfg: MonitorConfig,
    host_pid: i32,
    listener: UnixListener,
    sigfd: OwnedFd,
    self_pidns: OwnedFd,
    clients: Vec<Client>,
    containers: Vec<Container>,
    execs: Vec<Exec>,
    next_client: u64,
    pollfds: Vec<libc::pollfd>,
    logbuf: Vec<u8>,
    /// One read buffer for every output stream (kept off the stack, allocated once).
    readbuf: Vec<u8>,
    /// When to trim the resident set next, set by activity since the last trim.
    next_trim: Option<Instant>,
    shutdown: bool,
    /// The pod's own user namespace, which its containers join; `None`: the node's.
    userns: Option<OwnedFd>,
}

type Failure = (WireClass, String);

fn err(class: WireClass, msg: impl Into<String>) -> Failure {
    (class, msg.into())
}

fn sys_err(what: &str, e: impl std::fmt::Display) -> Failure {
    (WireClass::Internal, format!("{what}: {e}"))
}

fn run(config_path: &Path, userns: Option<OwnedFd>) -> i32 {
    memory::tune_malloc();
    let mut m = match setup(config_path, userns) {
        Ok(m) => m,
        Err(e) => {
            report_ready(&format!("error: {e}"));
            return 1;
        }
    };
    report_ready(&format!("ok {}", m.host_pid));
    memory::trim_resident();
    m.serve();
    m.cleanup();
    0
}

fn setup(config_path: &Path, userns: Option<OwnedFd>) -> Result<Monitor, String> {
    let text =
        std::fs::read(config_path).map_err(|e| format!("read {}: {e}", config_path.display()))?;
    let cfg: MonitorConfig = serde_json::from_slice(&text)
        .map_err(|e| format!("parse {}: {e}", config_path.display()))?;
    if cfg.version != PROTOCOL_VERSION {
        return Err(format!(
            "daemon speaks protocol {}, monitor {}",
            cfg.version, PROTOCOL_VERSION
        ));
    }
    // SAFETY: prctl/sigprocmask/signalfd with values we own; single-threaded.
    let sigfd = unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", io::Error::last_os_error()));
        }
        OwnedFd::from_raw_fd(fd)
    };
    for p in cfg.cgroup_procs.iter().filter(|p| !sys::born_into(p)) {
        std::fs::write(p, b"0").map_err(|e| format!("join cgroup {}: {e}", p.display()))?;
    }
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("set hostname {h:?}: {e}"))?;
    }
    if cfg.namespaces.contains(&crate::namespace::Namespace::Net) {
        loopback_up().map_err(|e| format!("bring up lo: {e}"))?;
    }
    for (k, v) in &cfg.sysctls {
        let path = PathBuf::from("/proc/sys").join(crate::sysctl::proc_path(k));
        std::fs::write(&path, v).map_err(|e| format!("set sysctl {k}={v}: {e}"))?;
    }
    let ns_dir = cfg.run_dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(|e| format!("create {}: {e}", ns_dir.display()))?;
    for ns in &cfg.namespaces {
        let target = ns_dir.join(ns.name());
        if !sys::is_mount_point(&target) {
            std::fs::write(&target, b"")
                .map_err(|e| format!("create {}: {e}", target.display()))?;
            nix::mount::mount(
                Some(Path::new(&format!("/proc/self/ns/{ns}"))),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind {ns} namespace to {}: {e}", target.display()))?;
        }
    }
    if let Some(fd) = &userns {
        let target = ns_dir.join("user");
        if !sys::is_mount_point(&target) {
            std::fs::write(&target, b"")
                .map_err(|e| format!("create {}: {e}", target.display()))?;
            userns::bind_ns(fd.as_raw_fd(), &target)?;
        }
    }
    if let Some(size) = cfg.shm_size {
        let shm = cfg.run_dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(|e| format!("create {}: {e}", shm.display()))?;
        if !sys::is_mount_point(&shm) {
            use nix::mount::MsFlags;
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                // Owned by the node's root also in a user-namespaced pod: containers see it
                // through an idmapped bind, as their root's.
                Some(format!("mode=1777,size={size}").as_str()),
            )
            .map_err(|e| format!("mount the pod's shm at {}: {e}", shm.display()))?;
        }
    }
    let sock = cfg.run_dir.join("monitor.sock");
    let _ = std::fs::remove_file(&sock);
    let (_dirfd, short) =
        sys::socket_path(&sock).map_err(|e| format!("open {}: {e}", cfg.run_dir.display()))?;
    // Root's only, from the moment it exists.
    let listener = sys::bind_unix(Path::new(&short), 0o600)
        .map_err(|e| format!("listen on {}: {e}", sock.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listen: {e}"))?;
    let self_pidns = sys::openat2(
        libc::AT_FDCWD,
        Path::new("/proc/self/ns/pid"),
        libc::O_RDONLY,
        0,
        0,
    )
    .map_err(|e| format!("open own pid namespace: {e}"))?;
    // SAFETY: chdir to a literal path.
    unsafe { libc::chdir(c"/".as_ptr()) };
    Ok(Monitor {
        cfg,
        host_pid: sys::host_pid(),
        listener,
        sigfd,
        self_pidns,
        clients: Vec::new(),
        containers: Vec::new(),
        execs: Vec::new(),
        next_client: 1,
        pollfds: Vec::new(),
        logbuf: Vec::new(),
        readbuf: vec![0u8; READ_CHUNK],
        next_trim: None,
        shutdown: false,
        userns,
    })
}

/// Sets `lo` up with an ioctl, so a pod has loopback even without a CNI loopback plugin.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the interface ioctls, closed by OwnedFd.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    cvt(s as libc::c_long)?;
    // SAFETY: we own the fd just created.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) as libc::c_long)?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) as libc::c_long)?;
    }
    Ok(())
}

fn wait_status(status: libc::c_int) -> ExitStatus {
    let finished_at = sys::now_ns();
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        ExitStatus {
            exit_code: 128 + sig,
            signal: Some(sig),
            finished_at,
        }
    } else {
        ExitStatus {
            exit_code: libc::WEXITSTATUS(status),
            signal: None,
            finished_at,
        }
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into our array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } as libc::c_long)?;
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn devnull() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .open("/dev/null")?
        .into())
}

/// The read ends a container's output is logged from, non-blocking for the poll loop: a
/// tty container's pty master (its pipes are not used), else its stdout and stderr pipes.
fn container_outputs(tty_master: Option<OwnedFd>, out_r: OwnedFd, err_r: OwnedFd) -> Vec<Output> {
    let outputs = match tty_master {
        Some(master) => vec![Output::new(master, crate::crilog::Stream::Stdout, true)],
        None => vec![
            Output::new(out_r, crate::crilog::Stream::Stdout, false),
            Output::new(err_r, crate::crilog::Stream::Stderr, false),
        ],
    };
    for o in &outputs {
        set_nonblocking(o.fd.as_raw_fd());
    }
    outputs
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we hold.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Waits up to `timeout` for one message from a child on its sync socket. `Ok(None)` is EOF
/// (the child exec'd or died); a passed fd is returned with the bytes.
fn recv_sync(sync: &OwnedFd, timeout: Duration) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let mut pfd = libc::pollfd {
            fd: sync.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            sync.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut passed = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel installed this fd for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if passed.is_none() {
                        passed = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        return Ok(Some((buf, passed)));
    }
}

fn child_failure(msg: &[u8]) -> Failure {
    let invalid = msg.get(1) == Some(&1);
    let text = String::from_utf8_lossy(msg.get(2..).unwrap_or_default()).into_owned();
    (
        if invalid {
            WireClass::InvalidArgument
        } else {
            WireClass::Internal
        },
        text,
    )
}

impl Monitor {
    fn container(&mut self, id: &str) -> Result<&mut Container, Failure> {
        self.containers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| {
                err(
                    WireClass::NotFound,
                    format!("container {id} not found in this pod"),
                )
            })
    }

    fn serve(&mut self) {
        while !self.shutdown {
            self.build_pollfds();
            let timeout = self.poll_timeout();
            // SAFETY: polling the pollfd array we own.
            let n = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    timeout,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                eprintln!("berth-monitor: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.handle_timeouts();
            let now = Instant::now();
            if self.next_trim.is_some_and(|t| t <= now) {
                self.next_trim = None;
                memory::trim_resident();
            }
            if n > 0 && self.next_trim.is_none() {
                self.next_trim = Some(now + TRIM_DELAY);
            }
            let ready: Vec<(RawFd, i16)> = self
                .pollfds
                .iter()
                .filter(|p| p.revents != 0)
                .map(|p| (p.fd, p.revents))
                .collect();
            for (fd, revents) in ready {
                if fd == self.sigfd.as_raw_fd() {
                    self.handle_signals();
                } else if fd == self.listener.as_raw_fd() {
                    self.accept();
                } else if let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd)
                {
                    let id = self.clients[i].id;
                    self.read_client(id, revents);
                } else if !self.detach(fd) {
                    self.read_output(fd);
                }
            }
            self.clients.retain(|c| !c.closed);
        }
    }

    fn build_pollfds(&mut self) {
        self.pollfds.clear();
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.pollfds.push(pfd(self.sigfd.as_raw_fd()));
        self.pollfds.push(pfd(self.listener.as_raw_fd()));
        for c in &self.clients {
            self.pollfds.push(pfd(c.stream.as_raw_fd()));
        }
        for c in &self.containers {
            for o in &c.outputs {
                self.pollfds.push(pfd(o.fd.as_raw_fd()));
            }
            for a in &c.attachers {
                // No events asked: poll reports the daemon closing its end as POLLHUP.
                self.pollfds.push(libc::pollfd {
                    fd: a.as_raw_fd(),
                    events: 0,
                    revents: 0,
                });
            }
        }
    }

    fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        self.execs
            .iter()
            .filter(|e| !e.timed_out)
            .filter_map(|e| e.deadline)
            .chain(self.next_trim)
            .map(|d| {
                d.saturating_duration_since(now)
                    .as_millis()
                    .min(i32::MAX as u128) as i32
                    + 1
            })
            .min()
            .unwrap_or(-1)
    }

    fn handle_timeouts(&mut self) {
        let now = Instant::now();
        for e in &mut self.execs {
            if !e.timed_out && e.deadline.is_some_and(|d| d <= now) {
                e.timed_out = true;
                // SAFETY: the exec process is our unreaped child, so the PID is still its.
                unsafe { libc::kill(e.pid, libc::SIGKILL) };
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(true);
                    self.clients.push(Client {
                        id: self.next_client,
                        stream,
                        reader: FrameReader::default(),
                        fds: VecDeque::new(),
                        subscribed: false,
                        closed: false,
                    });
                    self.next_client += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("berth-monitor: accept: {e}");
                    return;
                }
            }
        }
    }

    fn client(&mut self, id: u64) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.id == id)
    }

    fn read_client(&mut self, id: u64, revents: i16) {
        let mut buf = [0u8; 8192];
        let Some(c) = self.client(id) else { return };
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let res = nix::sys::socket::recvmsg::<()>(
            c.stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
        let n = match res {
            Ok(msg) => {
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cm in cmsgs {
                        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cm {
                            for fd in fds {
                                // SAFETY: the kernel installed this fd for us.
                                c.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                msg.bytes
            }
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(_) => 0,
        };
        if n == 0 {
            if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLIN) != 0 {
                c.closed = true;
                // An exec whose caller went away is killed: nobody reads its output.
                for e in &mut self.execs {
                    if e.client == id && !e.timed_out {
                        e.timed_out = true;
                        // SAFETY: our unreaped child.
                        unsafe { libc::kill(e.pid, libc::SIGKILL) };
                    }
                }
            }
            return;
        }
        c.reader.push(&buf[..n]);
        loop {
            let Some(c) = self.client(id) else { return };
            match c.reader.next_message::<Request>() {
                Ok(Some(req)) => self.handle(id, req),
                Ok(None) => return,
                Err(e) => {
                    self.reply(
                        id,
                        &Response::Error {
                            class: WireClass::InvalidArgument,
                            message: e.to_string(),
                        },
                    );
                    if let Some(c) = self.client(id) {
                        c.closed = true;
                    }
                    return;
                }
            }
        }
    }

    fn reply(&mut self, id: u64, resp: &Response) {
        self.reply_fds(id, resp, &[]);
    }

    /// Answers with `fds` passed alongside the frame's first bytes.
    fn reply_fds(&mut self, id: u64, resp: &Response, fds: &[RawFd]) {
        let frame = encode_frame(resp);
        let Some(c) = self.client(id) else { return };
        let sent = if fds.is_empty() {
            Ok(0)
        } else {
            send_with_fds(&c.stream, &frame, fds, WRITE_TIMEOUT)
        };
        let ok = sent.and_then(|n| write_all_timeout(&c.stream, &frame[n..], WRITE_TIMEOUT));
        if ok.is_err() {
            c.closed = true;
        }
    }

    fn handle(&mut self, client: u64, req: Request) {
        // Calls that run code seldom needed again (all but the daemon's cheap queries): the
        // pages they touched are dropped afterwards.
        let rare = !matches!(
            req,
            Request::Hello { .. } | Request::State | Request::Subscribe
        );
        let result = match req {
            Request::Hello { .. } => Ok(Some(Response::Hello {
                version: PROTOCOL_VERSION,
                pod_id: self.cfg.pod_id.clone(),
                pid: self.host_pid,
            })),
            Request::Create { spec } => self.create(*spec).map(Some),
            Request::Start { id } => self.start(&id).map(Some),
            Request::Kill { id, signal } => self.kill(&id, signal).map(|_| Some(Response::Ok)),
            Request::Exec {
                id,
                process,
                cgroup_procs,
                timeout_ms,
                stdin,
                tty,
            } => self
                .exec(
                    client,
                    &id,
                    &process,
                    &cgroup_procs,
                    ExecOptions {
                        timeout_ms,
                        stdin,
                        tty,
                    },
                )
                .map(|_| None),
            Request::Attach { id, stdin } => self.attach(client, &id, stdin).map(|_| None),
            Request::CloseStdin { id } => self.container(&id).map(|c| {
                c.stdin = None;
                Some(Response::Ok)
            }),
            Request::State => Ok(Some(Response::State {
                containers: self
                    .containers
                    .iter()
                    .map(|c| ContainerState {
                        id: c.id.clone(),
                        pid: c.host_pid,
                        started_at: c.started_at,
                        exit: c.exit,
                    })
                    .collect(),
            })),
            Request::ReopenLog { id } => self.reopen_log(&id).map(|_| Some(Response::Ok)),
            Request::Remove { id } => self.remove(&id).map(|_| Some(Response::Ok)),
            Request::Subscribe => {
                if let Some(c) = self.client(client) {
                    c.subscribed = true;
                }
                Ok(Some(Response::Ok))
            }
            Request::Shutdown => {
                self.kill_all();
                self.shutdown = true;
                Ok(Some(Response::Ok))
            }
        };
        match result {
            Ok(Some(r)) => self.reply(client, &r),
            Ok(None) => {}
            Err((class, message)) => self.reply(client, &Response::Error { class, message }),
        }
        if rare {
            memory::trim_resident();
        }
    }

    fn create(&mut self, spec: ContainerSpec) -> Result<Response, Failure> {
        if self.shutdown {
            return Err(err(WireClass::FailedPrecondition, "the pod is stopping"));
        }
        if self.containers.iter().any(|c| c.id == spec.id) {
            return Err(err(
                WireClass::FailedPrecondition,
                format!("container {} already exists", spec.id),
            ));
        }
        if spec.process.args.is_empty() {
            return Err(err(WireClass::InvalidArgument, "empty argv"));
        }
        let log = match &spec.log_path {
            Some(p) => Some(
                logs::open_log(p)
                    .map_err(|e| sys_err(&format!("open log file {}", p.display()), e))?,
            ),
            None => None,
        };
        let (out_r, out_w) = pipe().map_err(|e| sys_err("pipe", e))?;
        let (err_r, err_w) = pipe().map_err(|e| sys_err("pipe", e))?;
        let (stdin_child, stdin_keep) = if spec.stdin {
            let (r, w) = pipe().map_err(|e| sys_err("pipe", e))?;
            (r, Some(w))
        } else {
            (devnull().map_err(|e| sys_err("open /dev/null", e))?, None)
        };
        if let Some(rt) = spec.oci.clone() {
            let stdio = oci::CreateStdio {
                log,
                out: (out_r, out_w),
                err: (err_r, err_w),
                stdin: (stdin_child, stdin_keep),
            };
            return self.create_oci(spec, rt, stdio);
        }
        let (sync_parent, sync_child) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        let (switched, own_pidns) = match &spec.pid_ns {
            PidNamespace::Container => {
                // SAFETY: unshare with a flag; affects only children we fork next.
                cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long)
                    .map_err(|e| sys_err("unshare pid namespace", e))?;
                (true, true)
            }
            PidNamespace::Target { container_id } => {
                let t = self.container(container_id)?;
                if t.exit.is_some() {
                    return Err(err(
                        WireClass::FailedPrecondition,
                        format!("target container {container_id} is not running"),
                    ));
                }
                sys::setns(t.pidfd.as_raw_fd(), libc::CLONE_NEWPID).map_err(|e| {
                    sys_err(&format!("enter the pid namespace of {container_id}"), e)
                })?;
                (true, true)
            }
            PidNamespace::Pod | PidNamespace::Node => (false, false),
        };
        // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
        let pid = unsafe { sys::fork_into_cgroup(&spec.cgroup_procs) };
        if pid == 0 {
            child::container_main(
                &spec,
                ChildFds {
                    stdin: stdin_child.as_raw_fd(),
                    stdout: out_w.as_raw_fd(),
                    stderr: err_w.as_raw_fd(),
                    sync: sync_child.as_raw_fd(),
                },
                self.userns.as_ref().map(|f| f.as_raw_fd()),
            );
        }
        let fork_err = io::Error::last_os_error();
        if switched {
            // Back to our own namespace for later children (allowed: it is our active one).
            if let Err(e) = sys::setns(self.self_pidns.as_raw_fd(), libc::CLONE_NEWPID) {
                eprintln!("berth-monitor: restore pid namespace: {e}");
            }
        }
        if pid < 0 {
            return Err(sys_err("fork", fork_err));
        }
        drop((stdin_child, out_w, err_w, sync_child));
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                reap_now(pid);
                return Err(sys_err("pidfd_open", e));
            }
        };
        let (host_pid, tty_master) = match recv_sync(&sync_parent, SETUP_TIMEOUT) {
            Ok(Some((msg, fd))) if msg.first() == Some(&MSG_READY) && msg.len() >= 5 => {
                (i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]), fd)
            }
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => {
                reap_now(pid);
                return Err(child_failure(&msg));
            }
            Ok(_) => {
                reap_now(pid);
                return Err(err(
                    WireClass::Internal,
                    "container setup ended without a report",
                ));
            }
            Err(e) => {
                let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                reap_now(pid);
                return Err(sys_err("container setup", e));
            }
        };
        let master = if spec.tty {
            Some(tty_master.ok_or_else(|| err(WireClass::Internal, "no pty received"))?)
        } else {
            None
        };
        let outputs = container_outputs(master, out_r, err_r);
        self.containers.push(Container {
            id: spec.id.clone(),
            pid,
            host_pid,
            pidfd,
            own_pidns,
            started_at: 0,
            exit: None,
            sync: Some(sync_parent),
            stdin: stdin_keep,
            tty: spec.tty,
            attachers: Vec::new(),
            log_path: spec.log_path.clone(),
            log,
            outputs,
            exit_file: self.cfg.containers_dir.join(&spec.id).join("exit"),
            oci: None,
        });
        Ok(Response::Created { pid: host_pid })
    }

    fn start(&mut self, id: &str) -> Result<Response, Failure> {
        if self.container(id)?.oci.is_some() {
            return self.start_oci(id);
        }
        let c = self.container(id)?;
        if c.exit.is_some() {
            return Err(err(
                WireClass::FailedPrecondition,
                format!("container {id} has exited"),
            ));
        }
        let Some(sync) = c.sync.take() else {
            return Err(err(
                WireClass::FailedPrecondition,
                format!("container {id} is already started"),
            ));
        };
        // SAFETY: sending one byte on our socket.
        let n = unsafe {
            libc::send(
                sync.as_raw_fd(),
                [MSG_START].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        if n != 1 {
            return Err(sys_err("signal start", io::Error::last_os_error()));
        }
        match recv_sync(&sync, SETUP_TIMEOUT) {
            Ok(None) => {
                c.started_at = sys::now_ns();
                Ok(Response::Started {
                    started_at: c.started_at,
                })
            }
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => Err(child_failure(&msg)),
            Ok(Some(_)) => Err(err(
                WireClass::Internal,
                "unexpected message from the container",
            )),
            Err(e) => Err(sys_err("start", e)),
        }
    }

    fn kill(&mut self, id: &str, signal: i32) -> Result<(), Failure> {
        if !(1..=64).contains(&signal) {
            return Err(err(
                WireClass::InvalidArgument,
                format!("invalid signal {signal}"),
            ));
        }
        let c = self.container(id)?;
        if c.exit.is_some() {
            return Ok(());
        }
        if c.sync.is_some() && signal == libc::SIGKILL {
            // Never started: dropping the sync socket makes it exit before running anything.
            c.sync = None;
        }
        match sys::pidfd_send_signal(&c.pidfd, signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(sys_err("signal", e)),
        }
    }

    fn exec(
        &mut self,
        client: u64,
        id: &str,
        process: &ProcessSpec,
        cgroups: &[PathBuf],
        opts: ExecOptions,
    ) -> Result<(), Failure> {
        if process.args.is_empty() {
            return Err(err(
                WireClass::InvalidArgument,
                "exec with an empty command",
            ));
        }
        // With a tty the child opens its own pty and these stay unused placeholders.
        let (stdin, stdout, stderr) = if opts.tty {
            let null = || devnull().map_err(|e| sys_err("open /dev/null", e));
            (null()?, null()?, null()?)
        } else {
            let c = self
                .client(client)
                .ok_or_else(|| err(WireClass::Internal, "client gone"))?;
            let stdin = if opts.stdin { c.fds.pop_front() } else { None };
            match (c.fds.pop_front(), c.fds.pop_front()) {
                (Some(o), Some(e)) if stdin.is_some() || !opts.stdin => {
                    let stdin = match stdin {
                        Some(fd) => fd,
                        None => devnull().map_err(|e| sys_err("open /dev/null", e))?,
                    };
                    (stdin, o, e)
                }
                _ => {
                    return Err(err(WireClass::InvalidArgument, "exec needs its stdio fds"));
                }
            }
        };
        let self_pidns = self.self_pidns.as_raw_fd();
        let userns = self.userns.is_some();
        let c = self.container(id)?;
        if c.exit.is_some() || c.started_at == 0 {
            return Err(err(
                WireClass::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        let pidfd = c.pidfd.as_raw_fd();
        let switched = c.own_pidns;
        let (sync_parent, sync_child) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        if switched {
            sys::setns(pidfd, libc::CLONE_NEWPID)
                .map_err(|e| sys_err("enter the container's pid namespace", e))?;
        }
        // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
        let pid = unsafe { sys::fork_into_cgroup(cgroups) };
        if pid == 0 {
            child::exec_main(
                process,
                cgroups,
                pidfd,
                opts.tty,
                userns,
                ChildFds {
                    stdin: stdin.as_raw_fd(),
                    stdout: stdout.as_raw_fd(),
                    stderr: stderr.as_raw_fd(),
                    sync: sync_child.as_raw_fd(),
                },
            );
        }
        let fork_err = io::Error::last_os_error();
        if switched && let Err(e) = sys::setns(self_pidns, libc::CLONE_NEWPID) {
            eprintln!("berth-monitor: restore pid namespace: {e}");
        }
        if pid < 0 {
            return Err(sys_err("fork", fork_err));
        }
        drop((stdin, stdout, stderr, sync_child));
        let mut sync_result = recv_sync(&sync_parent, SETUP_TIMEOUT);
        let mut master = None;
        if opts.tty
            && matches!(&sync_result, Ok(Some((msg, Some(_)))) if msg.first() == Some(&MSG_READY))
        {
            if let Ok(Some((_, fd))) = sync_result {
                master = fd;
            }
            sync_result = recv_sync(&sync_parent, SETUP_TIMEOUT);
        }
        match sync_result {
            Ok(None) if opts.tty && master.is_none() => {
                reap_now(pid);
                return Err(err(WireClass::Internal, "exec did not report its pty"));
            }
            Ok(None) => {}
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => {
                reap_now(pid);
                return Err(child_failure(&msg));
            }
            other => {
                // SAFETY: our unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                reap_now(pid);
                return Err(err(
                    WireClass::Internal,
                    format!("exec did not start: {other:?}"),
                ));
            }
        }
        if let Some(m) = master {
            self.reply_fds(client, &Response::ExecStarted, &[m.as_raw_fd()]);
        }
        let deadline =
            (opts.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(opts.timeout_ms));
        self.execs.push(Exec {
            pid,
            client,
            deadline,
            timed_out: false,
        });
        Ok(())
    }

    /// Hands the daemon a socket carrying the container's output, and its stdin if asked.
    fn attach(&mut self, client: u64, id: &str, want_stdin: bool) -> Result<(), Failure> {
        let c = self.container(id)?;
        if c.exit.is_some() || c.started_at == 0 {
            return Err(err(
                WireClass::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        let stdin = match (want_stdin, c.tty, &c.stdin) {
            (false, _, _) => Ok(None),
            (true, true, _) => c.outputs.first().map(|o| o.fd.try_clone()).transpose(),
            (true, false, Some(w)) => w.try_clone().map(Some),
            (true, false, None) => Ok(None),
        }
        .map_err(|e| sys_err("dup stdin", e))?;
        let (keep, give) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        set_nonblocking(keep.as_raw_fd());
        grow_send_buffer(&keep);
        // SAFETY: shutting down the read side of our own socket: the daemon never writes.
        unsafe { libc::shutdown(keep.as_raw_fd(), libc::SHUT_RD) };
        c.attachers.push(keep);
        let mut fds = vec![give.as_raw_fd()];
        fds.extend(stdin.as_ref().map(|f| f.as_raw_fd()));
        self.reply_fds(
            client,
            &Response::Attached {
                stdin: stdin.is_some(),
            },
            &fds,
        );
        Ok(())
    }

    /// Drops the attacher whose socket `fd` is; false when `fd` is not an attacher's.
    fn detach(&mut self, fd: RawFd) -> bool {
        for c in &mut self.containers {
            if let Some(i) = c.attachers.iter().position(|a| a.as_raw_fd() == fd) {
                c.attachers.remove(i);
                return true;
            }
        }
        false
    }

    fn reopen_log(&mut self, id: &str) -> Result<(), Failure> {
        let c = self.container(id)?;
        let Some(path) = c.log_path.clone() else {
            return Ok(());
        };
        let f = logs::open_log(&path)
            .map_err(|e| sys_err(&format!("reopen log file {}", path.display()), e))?;
        c.log = Some(f);
        Ok(())
    }

    fn remove(&mut self, id: &str) -> Result<(), Failure> {
        let c = self.container(id)?;
        if c.exit.is_none() {
            if c.oci.is_some() && c.started_at == 0 {
                // Created by the runtime, never started: its process waits to exec.
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
                let pid = c.pid;
                reap_now(pid);
            } else if c.sync.is_some() {
                // Created, never started: it waits on the sync socket; let it go and kill it.
                c.sync = None;
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
                let pid = c.pid;
                reap_now(pid);
            } else {
                return Err(err(
                    WireClass::FailedPrecondition,
                    format!("container {id} is running"),
                ));
            }
        }
        if let Some(rt) = &c.oci {
            oci::delete(rt, id);
        }
        self.containers.retain(|c| c.id != id);
        Ok(())
    }

    fn kill_all(&mut self) {
        for c in &mut self.containers {
            if c.exit.is_none() {
                c.sync = None;
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
            }
        }
        for e in &self.execs {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(e.pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (self.containers.iter().any(|c| c.exit.is_none()) || !self.execs.is_empty())
        {
            let mut pfd = libc::pollfd {
                fd: self.sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            self.handle_signals();
        }
        let fds: Vec<RawFd> = self
            .containers
            .iter()
            .flat_map(|c| c.outputs.iter().map(|o| o.fd.as_raw_fd()))
            .collect();
        for fd in fds {
            self.read_output(fd);
        }
        // Before the daemon hears that the pod is down and removes the bundles.
        for c in &self.containers {
            if let Some(rt) = &c.oci {
                oci::delete(rt, &c.id);
            }
        }
    }

    fn handle_signals(&mut self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        let mut terminate = false;
        loop {
            // SAFETY: reading whole siginfo records into our buffer.
            let n =
                unsafe { libc::read(self.sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n <= 0 {
                break;
            }
            // SAFETY: the kernel wrote a complete signalfd_siginfo.
            let si: libc::signalfd_siginfo =
                unsafe { std::ptr::read_unaligned(info.as_ptr().cast()) };
            if si.ssi_signo == libc::SIGTERM as u32 {
                terminate = true;
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: reaping any child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.reaped(pid, status);
        }
        if terminate && !self.shutdown {
            self.kill_all();
            self.shutdown = true;
        }
    }

    fn reaped(&mut self, pid: i32, status: libc::c_int) {
        let exit = wait_status(status);
        if let Some(i) = self
            .containers
            .iter()
            .position(|c| c.pid == pid && c.exit.is_none())
        {
            // Write what the container printed before it died ahead of the exit record.
            let fds: Vec<RawFd> = self.containers[i]
                .outputs
                .iter()
                .map(|o| o.fd.as_raw_fd())
                .collect();
            for fd in fds {
                self.read_output(fd);
            }
            let c = &mut self.containers[i];
            c.exit = Some(exit);
            c.sync = None;
            // Attachers see EOF: the container is gone.
            c.attachers.clear();
            if let Ok(json) = serde_json::to_vec(&exit)
                && let Err(e) = sys::write_atomic(&c.exit_file, &json)
            {
                eprintln!("berth-monitor: write {}: {e}", c.exit_file.display());
            }
            let ev = encode_frame(&Response::Event {
                id: c.id.clone(),
                exit,
            });
            for cl in self
                .clients
                .iter_mut()
                .filter(|c| c.subscribed && !c.closed)
            {
                if write_all_timeout(&cl.stream, &ev, WRITE_TIMEOUT).is_err() {
                    cl.closed = true;
                }
            }
        } else if let Some(i) = self.execs.iter().position(|e| e.pid == pid) {
            let e = self.execs.remove(i);
            let resp = Response::ExecExited {
                exit,
                timed_out: e.timed_out,
            };
            self.reply(e.client, &resp);
            memory::trim_resident();
        }
    }

    fn read_output(&mut self, fd: RawFd) {
        let buf = &mut self.readbuf[..];
        let Some(ci) = self
            .containers
            .iter()
            .position(|c| c.outputs.iter().any(|o| o.fd.as_raw_fd() == fd))
        else {
            return;
        };
        let c = &mut self.containers[ci];
        let oi = c
            .outputs
            .iter()
            .position(|o| o.fd.as_raw_fd() == fd)
            .unwrap_or(0);
        // A bounded number of reads per wake-up: a container that writes without pause must
        // not starve the daemon's calls or the other containers.
        for _ in 0..MAX_READS_PER_WAKE {
            let o = &mut c.outputs[oi];
            let r = o.file().read(buf);
            match r {
                Ok(0) => {
                    o.finish(&mut self.logbuf);
                    logs::write_log(c.log.as_mut(), &mut self.logbuf);
                    c.outputs.remove(oi);
                    return;
                }
                Ok(n) => {
                    o.feed(&buf[..n], &mut self.logbuf);
                    logs::write_log(c.log.as_mut(), &mut self.logbuf);
                    if !c.attachers.is_empty() {
                        let tag = match o.stream() {
                            crate::crilog::Stream::Stdout => AttachStream::Stdout,
                            crate::crilog::Stream::Stderr => AttachStream::Stderr,
                        };
                        // An attacher that cannot keep up loses its attachment, never
                        // the pod's log: the monitor does not block on it.
                        c.attachers.retain(|a| send_tagged(a, tag as u8, &buf[..n]));
                    }
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EIO: the pty's last holder closed it.
                    o.finish(&mut self.logbuf);
                    logs::write_log(c.log.as_mut(), &mut self.logbuf);
                    c.outputs.remove(oi);
                    return;
                }
            }
        }
    }

    fn cleanup(&mut self) {
        if let Some(_size) = self.cfg.shm_size {
            let _ = sys::umount_quiet(&self.cfg.run_dir.join("shm"));
        }
        let _ = std::fs::remove_file(self.cfg.run_dir.join("monitor.sock"));
        // Answering Shutdown happened before; flush by closing every client.
        self.clients.clear();
    }
}

/// How an exec's stdio is set up.
struct ExecOptions {
    timeout_ms: u64,
    stdin: bool,
    tty: bool,
}

/// Room for output bursts on an attach socket before a slow attacher is dropped.
const ATTACH_SEND_BUFFER: libc::c_int = 1 << 20;

fn grow_send_buffer(fd: &OwnedFd) {
    let size = ATTACH_SEND_BUFFER;
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setting an int socket option from a local.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// Sends one attach message (`tag`, then `data`) without blocking; false when the attacher
/// is gone or too slow.
fn send_tagged(sock: &OwnedFd, tag: u8, data: &[u8]) -> bool {
    let hdr = [tag];
    let iov = [io::IoSlice::new(&hdr), io::IoSlice::new(data)];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[],
        nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

/// Sends the first bytes of `data` with `fds` attached; returns how many bytes went.
fn send_with_fds(
    stream: &UnixStream,
    data: &[u8],
    fds: &[RawFd],
    timeout: Duration,
) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let iov = [io::IoSlice::new(data)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
        match nix::sys::socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                let mut pfd = libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: polling one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32 + 1) };
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn reap_now(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn write_all_timeout(stream: &UnixStream, mut data: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !data.is_empty() {
        // SAFETY: sending from our buffer; MSG_NOSIGNAL avoids SIGPIPE.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                let mut pfd = libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: polling one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32 + 1) };
            }
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
    Ok(())
}
