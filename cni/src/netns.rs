//! Network namespaces: opening them by path and running work inside one.
//!
//! Entering a namespace is per thread, so work that must happen inside a pod's namespace
//! (opening a netlink socket there, writing its sysctls) runs on a short-lived thread that
//! enters it and ends afterwards: no thread ever has to find its way back.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::Error;
use crate::types::PodNetworkRequest;

const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Opens the network namespace file at `path` (an nsfs bind mount or `/proc/PID/ns/net`).
pub(crate) fn open(path: &Path) -> io::Result<OwnedFd> {
    let file = File::open(path)?;
    // SAFETY: statfs is plain data, fully written by fstatfs on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is an open descriptor and `st` is valid for writes.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as libc::c_long != NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace file",
        ));
    }
    Ok(file.into())
}

/// The network namespace of the calling thread.
pub(crate) fn current() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// Runs `f` on a new thread that has entered the network namespace `ns`.
pub(crate) fn run_in<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace descriptor we hold; it changes only this
            // thread, which ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(io::Error::other(
                "thread inside the network namespace panicked",
            ))
        })
    })
}

/// Opens the network namespace `req` names, refusing the node's own (`node`).
pub(crate) fn open_pod(req: &PodNetworkRequest, node: &OwnedFd) -> Result<OwnedFd, Error> {
    let netns_err = |source| Error::Netns {
        pod_id: req.pod_id.clone(),
        path: req.netns.clone(),
        source,
    };
    let pod_ns = open(&req.netns).map_err(netns_err)?;
    if same(&pod_ns, node).map_err(netns_err)? {
        return Err(Error::InvalidRequest(format!(
            "network namespace {:?} of pod {} is the node's own",
            req.netns, req.pod_id
        )));
    }
    Ok(pod_ns)
}

/// Runs `f` inside the namespace `ns` of pod `pod_id` (opened from `path`); not being
/// able to enter it is the pod's namespace error.
pub(crate) fn run_in_pod<T: Send>(
    pod_id: &str,
    path: &Path,
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    run_in(ns, f).map_err(|source| Error::Netns {
        pod_id: pod_id.to_string(),
        path: path.to_path_buf(),
        source,
    })?
}

/// Writes `value` to the sysctl `/proc/sys/<key>` of the calling thread's namespace.
pub(crate) fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Whether `a` and `b` are the same namespace.
pub(crate) fn same(a: &impl AsFd, b: &impl AsFd) -> io::Result<bool> {
    let a = nix_stat(a.as_fd())?;
    let b = nix_stat(b.as_fd())?;
    Ok(a == b)
}

fn nix_stat(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: stat is plain data, fully written by fstat on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is valid for writes.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_file_that_is_not_a_namespace() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = open(f.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            open(Path::new("/nonexistent/ns/net")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn runs_in_own_namespace_and_compares() {
        let me = current().unwrap();
        let other = open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(same(&me, &other).unwrap());
        let seen = run_in(me.as_fd(), || current().unwrap()).unwrap();
        assert!(same(&seen, &me).unwrap());
    }
}
