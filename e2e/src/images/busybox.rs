//! The busybox image's root file system: Debian's dynamic busybox, its applet links and the
//! host libraries `ldd` lists for it, copied into a layer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::{MARKER_FILE, PATH_ENV};
use crate::error::{Error, IoContext, Result};
use crate::oci::{LayerBuilder, RunConfig};
use crate::process::run;

/// The host's dynamic busybox and the shared objects it needs.
#[derive(Debug, Clone)]
pub struct HostBusybox {
    /// The busybox executable.
    pub binary: PathBuf,
    /// Absolute paths `ldd` lists for it.
    pub libs: Vec<PathBuf>,
    /// Applet paths relative to the root (`bin/sh`, `usr/bin/env`, ...).
    pub applets: Vec<String>,
}

impl HostBusybox {
    /// Finds Debian's dynamic busybox (package `busybox`) and its libraries.
    pub fn find() -> Result<HostBusybox> {
        let binary = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::Environment("busybox is missing: apt-get install busybox".into())
            })?;
        let ldd = run("ldd", &[&binary.to_string_lossy()]).map_err(|e| {
            Error::Environment(format!(
                "{} is not a dynamic executable ({e}): install Debian's `busybox`, \
                 not `busybox-static`",
                binary.display()
            ))
        })?;
        let libs = parse_ldd(&ldd);
        if libs.is_empty() {
            return Err(Error::Environment(format!(
                "ldd lists no libraries for {}: install Debian's dynamic `busybox`",
                binary.display()
            )));
        }
        let list = run(&binary.to_string_lossy(), &["--list-full"])?;
        let applets = list
            .lines()
            .map(str::trim)
            .filter(|a| a.contains('/') && *a != "bin/busybox")
            .map(str::to_string)
            .collect();
        Ok(HostBusybox {
            binary,
            libs,
            applets,
        })
    }
}

/// The absolute library paths in `ldd` output (`name => /path (addr)` or `/path (addr)`).
pub fn parse_ldd(out: &str) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Resolves `.` and `..` lexically.
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Copies the host file `path` into the layer at the same path, reproducing every symlink
/// on the way (so merged-/usr hosts give `lib -> usr/lib` in the image too).
pub(super) fn add_host_path(layer: &mut LayerBuilder, path: &Path, depth: u32) -> Result<()> {
    if depth > 16 {
        return Err(Error::Image(format!(
            "too many symlinks under {}",
            path.display()
        )));
    }
    let comps: Vec<_> = normalize(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::from("/");
    for (i, comp) in comps.iter().enumerate() {
        let next = cur.join(comp);
        let rel = next.to_string_lossy().trim_start_matches('/').to_string();
        let md =
            std::fs::symlink_metadata(&next).io_context(|| format!("stat {}", next.display()))?;
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let target =
                std::fs::read_link(&next).io_context(|| format!("readlink {}", next.display()))?;
            if !layer.contains(&rel) {
                layer.symlink(&rel, &target.to_string_lossy())?;
            }
            let mut resolved = if target.is_absolute() {
                target
            } else {
                cur.join(target)
            };
            for rest in &comps[i + 1..] {
                resolved.push(rest);
            }
            return add_host_path(layer, &resolved, depth + 1);
        } else if md.is_dir() {
            if !layer.contains(&rel) {
                layer.dir(&rel, mode)?;
            }
            cur = next;
        } else if md.is_file() && i + 1 == comps.len() {
            if !layer.contains(&rel) {
                let data =
                    std::fs::read(&next).io_context(|| format!("read {}", next.display()))?;
                layer.file(&rel, mode, data)?;
            }
        } else {
            return Err(Error::Image(format!(
                "unexpected file type at {}",
                next.display()
            )));
        }
    }
    Ok(())
}

/// The busybox root file system: the dynamic busybox, its libraries, applet symlinks, the
/// usual empty directories, and /etc/passwd and /etc/group with root and nobody.
pub fn busybox_rootfs(host: &HostBusybox) -> Result<LayerBuilder> {
    let mut l = LayerBuilder::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "home", "var", "dev", "proc", "sys",
    ] {
        l.dir(d, 0o755)?;
    }
    l.dir("root", 0o700)?;
    l.dir("tmp", 0o1777)?;
    l.dir("var/tmp", 0o1777)?;
    let busybox =
        std::fs::read(&host.binary).io_context(|| format!("read {}", host.binary.display()))?;
    l.file("bin/busybox", 0o755, busybox)?;
    for lib in &host.libs {
        add_host_path(&mut l, lib, 0)?;
    }
    for applet in &host.applets {
        if !l.contains(applet) {
            l.symlink(applet, "/bin/busybox")?;
        }
    }
    l.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    l.file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(l)
}

pub(super) fn marker(reference: &str) -> Result<LayerBuilder> {
    let mut l = LayerBuilder::new();
    l.file(MARKER_FILE, 0o644, format!("{reference}\n"))?;
    Ok(l)
}

pub(super) fn busybox_run() -> RunConfig {
    RunConfig {
        env: vec![PATH_ENV.into()],
        cmd: Some(vec!["sh".into()]),
        ..RunConfig::default()
    }
}
