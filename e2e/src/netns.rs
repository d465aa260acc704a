//! The node network namespace: created with `ip netns add`, entered with setns on the
//! network namespace alone (never `ip netns exec`, which also unshares mounts), deleted
//! on drop.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

pub use berth_cri::leaks::host::parse_net_dev;

use crate::error::{Error, IoContext, Result};
use crate::process::run;

/// A named network namespace that this process created and deletes on drop.
#[derive(Debug)]
pub struct NodeNetns {
    name: String,
    path: PathBuf,
    deleted: bool,
}

impl NodeNetns {
    /// Creates `/run/netns/<name>` and brings its `lo` up.
    pub fn create(name: &str) -> Result<NodeNetns> {
        run("ip", &["netns", "add", name])?;
        let ns = NodeNetns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
            deleted: false,
        };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mounted path, `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file (for setns in a child's pre_exec).
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).io_context(|| format!("open {}", self.path.display()))
    }

    /// Runs `f` on a new thread that has entered this network namespace (threads it
    /// creates inherit it), and returns its result.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Environment("netns worker thread panicked".into())))
        })
    }

    /// The network interfaces in this namespace, by name.
    pub fn links(&self) -> Result<Vec<String>> {
        self.run_in(links_of_current_thread)?
    }

    /// Deletes the namespace now (also done on drop).
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        run("ip", &["netns", "delete", &self.name]).map(|_| ())
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = run("ip", &["netns", "delete", &self.name])
        {
            eprintln!("berth-e2e: cannot delete netns {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter(file: &File) -> Result<()> {
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).io_context(|| "setns into netns".into())
}

/// The interfaces of the calling thread's network namespace.
pub fn links_of_current_thread() -> Result<Vec<String>> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
        .io_context(|| "read /proc/thread-self/net/dev".into())?;
    Ok(parse_net_dev(&dev))
}

/// The names under /run/netns.
pub fn named_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_table_yields_interface_names() {
        let dev = "Inter-|   Receive                            |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
                   lo:       0       0    0    0    0     0          0         0        0\n\
                   berth0: 1 2 3\n";
        assert_eq!(parse_net_dev(dev), vec!["berth0", "lo"]);
    }
}
