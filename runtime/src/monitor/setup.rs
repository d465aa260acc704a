//! The monitor's setup, once, before it serves: signals as a signalfd, its cgroups, the
//! pod's hostname, loopback and sysctls, the namespaces bound under the run dir, the pod's
//! shm, and the socket the daemon calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::Monitor;
use super::userns;
use crate::protocol::{MonitorConfig, PROTOCOL_VERSION};
use crate::sys::{self, cvt};

/// Reads `monitor.json` and sets up the pod's monitor from it.
pub(super) fn setup(config_path: &Path, userns: Option<OwnedFd>) -> Result<Monitor, String> {
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
        readbuf: Vec::new(),
        logbuf: Vec::new(),
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
