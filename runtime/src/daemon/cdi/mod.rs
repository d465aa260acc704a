//! The Container Device Interface: the vendor spec files under `[cdi] spec_dirs`, the
//! devices they name, and what a container that asks for some of them gets.
//!
//! The registry reads the directories lazily: only when a container asks for a CDI device or
//! `Status` asks for the list, it re-stats them and re-reads the files whose identity, size
//! or times changed, so a spec written while the daemon runs is used by the next container and
//! a container without devices costs nothing. As the CDI Go library does, a later directory
//! overrides an earlier one, two files of one directory that define the same device make that
//! device unusable (both reported), and a broken file takes only its own devices away.
//!
//! `spec` reads and checks one file; `edits` turns the requested devices into changes of the
//! container's plan.

pub mod edits;
pub mod spec;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::error::{Error, Result};
use spec::{MAX_SPEC_SIZE, Spec, SpecError};

/// The annotation prefix device plugins use to ask for CDI devices.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The spec directories read by default, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// A host network interface a CDI device gives the pod: the node's `host_name` becomes
/// `name` in the pod's network namespace until the pod stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NetDevice {
    /// Its name on the node.
    pub host_name: String,
    /// Its name in the pod.
    pub name: String,
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        }
    }
}

/// One spec file as last read.
#[derive(Debug)]
struct SpecFile {
    stamp: Option<Stamp>,
    dir: usize,
    spec: std::result::Result<Arc<Spec>, SpecError>,
}

/// Where a device is defined.
#[derive(Debug, Clone)]
pub struct DeviceRef {
    /// The file defining it.
    pub path: PathBuf,
    /// Its spec.
    pub spec: Arc<Spec>,
    /// Its index in the spec's devices.
    pub index: usize,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, SpecFile>,
    devices: HashMap<String, DeviceRef>,
    /// Devices defined twice in one directory, with the files defining them.
    conflicts: HashMap<String, Vec<PathBuf>>,
}

/// The CDI devices of the node.
#[derive(Debug)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    state: Mutex<State>,
}

/// A spec file as `Status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// Its path.
    pub path: PathBuf,
    /// Its kind, when it could be read.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// How many devices it defines.
    pub devices: usize,
    /// Why it (or some of its devices) cannot be used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What `Status` shows of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The directories read, lowest priority first.
    #[serde(rename = "specDirs")]
    pub spec_dirs: Vec<PathBuf>,
    /// The fully qualified names of the devices that can be used, sorted.
    pub devices: Vec<String>,
    /// Every spec file found.
    #[serde(rename = "specFiles")]
    pub spec_files: Vec<FileReport>,
}

fn is_spec_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
}

fn read_spec(path: &Path, md: &std::fs::Metadata) -> std::result::Result<Arc<Spec>, SpecError> {
    if !md.is_file() {
        return Err(SpecError::Invalid("not a regular file".into()));
    }
    if md.len() > MAX_SPEC_SIZE {
        return Err(SpecError::Invalid(format!(
            "larger than {MAX_SPEC_SIZE} bytes"
        )));
    }
    let text = std::fs::read(path).map_err(|e| SpecError::Read(e.to_string()))?;
    spec::parse(path, &text).map(Arc::new)
}

impl Registry {
    /// A registry over `dirs`, lowest priority first; nothing is read yet.
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry {
            dirs,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-stats the directories and re-reads what changed; rebuilds the device index when
    /// any file came, went or changed.
    fn refresh(&self, st: &mut State) {
        let mut seen: Vec<(PathBuf, usize)> = Vec::new();
        for (i, dir) in self.dirs.iter().enumerate() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_spec_file(p))
                .collect();
            names.sort();
            seen.extend(names.into_iter().map(|p| (p, i)));
        }
        let mut changed = st.files.len() != seen.len();
        let mut files = BTreeMap::new();
        for (path, dir) in seen {
            let md = std::fs::metadata(&path);
            let stamp = md.as_ref().ok().map(Stamp::of);
            let old = st.files.remove(&path);
            let file = match old {
                Some(f) if f.stamp.is_some() && f.stamp == stamp && f.dir == dir => f,
                _ => {
                    changed = true;
                    let spec = match &md {
                        Ok(md) => read_spec(&path, md),
                        Err(e) => Err(SpecError::Read(e.to_string())),
                    };
                    if let Err(e) = &spec {
                        tracing::warn!(file = %path.display(), error = %e, "CDI spec file not used");
                    }
                    SpecFile { stamp, dir, spec }
                }
            };
            files.insert(path, file);
        }
        changed |= !st.files.is_empty();
        st.files = files;
        if changed {
            index(st);
        }
    }

    /// Finds each requested device (fully qualified names), re-reading the spec
    /// directories first. An unknown, conflicting or malformed name is an invalid argument
    /// naming it.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<(String, DeviceRef)>> {
        let mut st = self.lock();
        self.refresh(&mut st);
        names
            .iter()
            .map(|name| {
                spec::parse_qualified(name)
                    .map_err(|e| Error::InvalidArgument(format!("CDI device {name:?}: {e}")))?;
                if let Some(files) = st.conflicts.get(name) {
                    let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                    return Err(Error::InvalidArgument(format!(
                        "CDI device {name:?} cannot be used: it is defined in more than one spec \
                         file of the same directory ({})",
                        list.join(", ")
                    )));
                }
                st.devices
                    .get(name)
                    .map(|d| (name.clone(), d.clone()))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("unresolvable CDI device {name:?}"))
                    })
            })
            .collect()
    }

    /// The devices and files as they are now (re-read first), for `Status`.
    pub fn report(&self) -> Report {
        let mut st = self.lock();
        self.refresh(&mut st);
        let mut devices: Vec<String> = st.devices.keys().cloned().collect();
        devices.sort();
        let spec_files = st
            .files
            .iter()
            .map(|(path, f)| {
                let mut errors: Vec<String> = Vec::new();
                let (kind, count) = match &f.spec {
                    Ok(s) => (s.kind.clone(), s.devices.len()),
                    Err(e) => {
                        errors.push(e.to_string());
                        (String::new(), 0)
                    }
                };
                let mut conflicting: Vec<&String> = st
                    .conflicts
                    .iter()
                    .filter(|(_, files)| files.contains(path))
                    .map(|(name, _)| name)
                    .collect();
                conflicting.sort();
                errors.extend(conflicting.into_iter().map(|n| {
                    format!("device {n} is also defined in another file of its directory")
                }));
                FileReport {
                    path: path.clone(),
                    kind,
                    devices: count,
                    errors,
                }
            })
            .collect();
        Report {
            spec_dirs: self.dirs.clone(),
            devices,
            spec_files,
        }
    }
}

/// Rebuilds the device index from the files: per directory in order, later directories
/// replacing earlier ones' devices; a device defined twice in one directory is dropped
/// (unless a later directory defines it).
fn index(st: &mut State) {
    let mut devices: HashMap<String, DeviceRef> = HashMap::new();
    let mut conflicts: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let mut dir_of: HashMap<String, usize> = HashMap::new();
    let mut files: Vec<(&PathBuf, &SpecFile)> = st.files.iter().collect();
    files.sort_by_key(|(path, f)| (f.dir, *path));
    for (path, f) in files {
        let Ok(spec) = &f.spec else { continue };
        for (index, d) in spec.devices.iter().enumerate() {
            let name = format!("{}={}", spec.kind, d.name);
            if dir_of.get(&name) == Some(&f.dir) {
                let entry = conflicts.entry(name.clone()).or_default();
                if entry.is_empty()
                    && let Some(first) = devices.get(&name)
                {
                    entry.push(first.path.clone());
                }
                entry.push(path.clone());
                continue;
            }
            dir_of.insert(name.clone(), f.dir);
            conflicts.remove(&name);
            devices.insert(
                name,
                DeviceRef {
                    path: path.clone(),
                    spec: spec.clone(),
                    index,
                },
            );
        }
    }
    for name in conflicts.keys() {
        devices.remove(name);
    }
    st.devices = devices;
    st.conflicts = conflicts;
}

/// The CDI devices a container asks for: the CRI `CDI_devices` field first, then the
/// `cdi.k8s.io/*` annotations (by key; each value a comma-separated list), each name once,
/// as containerd does. An annotation value that is not a list of fully qualified names is
/// an invalid argument.
pub fn requested(config: &k8s_cri::v1::ContainerConfig) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    // The names come from the pod spec: a set keeps "each once" linear in their number,
    // where a scan of the list would be quadratic in what a request can carry.
    let mut seen: HashSet<String> = HashSet::new();
    let mut push = |n: &str| {
        if seen.insert(n.to_owned()) {
            names.push(n.to_owned());
        }
    };
    for d in &config.cdi_devices {
        push(&d.name);
    }
    let mut keys: Vec<&String> = config
        .annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for key in keys {
        for n in config.annotations[key].split(',') {
            let n = n.trim();
            spec::parse_qualified(n).map_err(|e| {
                Error::InvalidArgument(format!("annotation {key}: CDI device {n:?}: {e}"))
            })?;
            push(n);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
