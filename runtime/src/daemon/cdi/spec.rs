//! One CDI spec file: its document (JSON or YAML), the version it declares, and the checks
//! the CDI Go library makes before it lets a runtime use the file (names, the fields each
//! version has, the form of every edit).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The CDI spec versions read, oldest first (the Go library's list from 0.3.0 on).
const VERSIONS: &[(u32, u32, u32)] = &[
    (0, 3, 0),
    (0, 4, 0),
    (0, 5, 0),
    (0, 6, 0),
    (0, 7, 0),
    (0, 8, 0),
    (1, 0, 0),
    (1, 1, 0),
];

/// The largest spec file read: vendor specs are a few KiB, a huge file is a mistake.
pub const MAX_SPEC_SIZE: u64 = 4 << 20;

/// Why a spec file cannot be used; the registry adds the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// The document is not JSON or YAML of a CDI spec.
    #[error("cannot parse: {0}")]
    Parse(String),
    /// A value breaks the spec's rules.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// A CDI spec document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The spec version the file follows (`0.6.0`).
    pub cdi_version: String,
    /// `vendor.com/class`.
    pub kind: String,
    /// Free-form metadata (0.6.0).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The devices the file defines.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Edits applied once for any device of this file.
    #[serde(default)]
    pub container_edits: Edits,
}

/// One named device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// The name after `=` in `vendor.com/class=name`.
    pub name: String,
    /// Free-form metadata (0.6.0).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// What the device adds to a container.
    #[serde(default)]
    pub container_edits: Edits,
}

/// What a spec or a device adds to a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Device nodes made in the container.
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    /// OCI hooks.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Intel RDT settings (0.7.0).
    #[serde(default)]
    pub intel_rdt: Option<serde_json::Value>,
    /// Groups added to the process (0.7.0).
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
    /// Host network interfaces moved into the pod (1.1.0).
    #[serde(default)]
    pub net_devices: Vec<NetDevice>,
}

/// A device node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// The host node (0.5.0); defaults to `path`.
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `u` (character), `b` (block) or `p` (fifo); read from the host when omitted.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Major number; read from the host when omitted.
    #[serde(default)]
    pub major: Option<i64>,
    /// Minor number; read from the host when omitted.
    #[serde(default)]
    pub minor: Option<i64>,
    /// Permission bits of the node.
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// cgroup access (`rwm`), all when empty.
    #[serde(default)]
    pub permissions: Option<String>,
    /// Owner of the node in the container.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group of the node in the container.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// An OCI hook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// The OCI point of life (`createContainer`, ...).
    pub hook_name: String,
    /// Absolute path of the program on the host.
    pub path: String,
    /// argv, `args[0]` included.
    #[serde(default)]
    pub args: Vec<String>,
    /// The hook's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds before it is killed.
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// A mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// What is mounted: a host path, or a file system's source name.
    pub host_path: String,
    /// Where, in the container.
    pub container_path: String,
    /// File system type (0.4.0); a bind mount when empty or `bind`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// OCI mount options (`ro`, `nosuid`, `rbind`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

/// A host network interface given to the pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetDevice {
    /// Its name on the host.
    pub host_interface_name: String,
    /// Its name in the pod.
    pub name: String,
}

/// The hook points a CDI spec may name (the OCI runtime spec's, `prestart` included).
pub const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Reads a spec document: JSON when the file name ends in `.json`, else YAML.
pub fn parse(path: &Path, text: &[u8]) -> Result<Spec, SpecError> {
    let spec: Spec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(text).map_err(|e| SpecError::Parse(e.to_string()))?
    } else {
        serde_yaml::from_slice(text).map_err(|e| SpecError::Parse(e.to_string()))?
    };
    validate(&spec)?;
    Ok(spec)
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(version)
}

fn show((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

/// Every edit list of the spec, the spec's own first.
fn all_edits(spec: &Spec) -> impl Iterator<Item = &Edits> {
    std::iter::once(&spec.container_edits).chain(spec.devices.iter().map(|d| &d.container_edits))
}

/// The oldest spec version that has every field the document uses, and the field that
/// needs it (as the Go library's `MinimumRequiredVersion`).
fn required_version(spec: &Spec) -> ((u32, u32, u32), &'static str) {
    let edits: Vec<&Edits> = all_edits(spec).collect();
    if edits.iter().any(|e| !e.net_devices.is_empty()) {
        return ((1, 1, 0), "netDevices");
    }
    if edits.iter().any(|e| {
        e.intel_rdt
            .as_ref()
            .is_some_and(|r| r.get("schemata").is_some() || r.get("enableMonitoring").is_some())
    }) {
        return ((1, 1, 0), "intelRdt schemata or enableMonitoring");
    }
    if edits.iter().any(|e| e.intel_rdt.is_some()) {
        return ((0, 7, 0), "intelRdt");
    }
    if edits.iter().any(|e| !e.additional_gids.is_empty()) {
        return ((0, 7, 0), "additionalGids");
    }
    let class_has_dot = spec
        .kind
        .split_once('/')
        .is_some_and(|(_, c)| c.contains('.'));
    if !spec.annotations.is_empty() || spec.devices.iter().any(|d| !d.annotations.is_empty()) {
        return ((0, 6, 0), "annotations");
    }
    if class_has_dot {
        return ((0, 6, 0), "a dot in the kind's class");
    }
    if spec
        .devices
        .iter()
        .any(|d| d.name.starts_with(|c: char| !c.is_ascii_alphabetic()))
    {
        return ((0, 5, 0), "a device name that starts with a digit");
    }
    if edits
        .iter()
        .any(|e| e.device_nodes.iter().any(|n| n.host_path.is_some()))
    {
        return ((0, 5, 0), "deviceNodes hostPath");
    }
    if edits
        .iter()
        .any(|e| e.mounts.iter().any(|m| m.kind.is_some()))
    {
        return ((0, 4, 0), "mounts type");
    }
    ((0, 3, 0), "")
}

/// Checks a spec as the Go library does before using it.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let version = parse_version(&spec.cdi_version)
        .filter(|v| VERSIONS.contains(v))
        .ok_or_else(|| {
            invalid(format!(
                "cdiVersion {:?} is not one of {}",
                spec.cdi_version,
                VERSIONS
                    .iter()
                    .map(|v| show(*v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let (vendor, class) = spec
        .kind
        .split_once('/')
        .ok_or_else(|| invalid(format!("kind {:?} is not vendor.com/class", spec.kind)))?;
    check_vendor(vendor).map_err(|e| invalid(format!("kind {:?}: {e}", spec.kind)))?;
    check_class(class).map_err(|e| invalid(format!("kind {:?}: {e}", spec.kind)))?;
    let (needed, field) = required_version(spec);
    if needed > version {
        return Err(invalid(format!(
            "{field} needs cdiVersion {} or later, the file declares {}",
            show(needed),
            spec.cdi_version
        )));
    }
    if spec.devices.is_empty() {
        return Err(invalid("no devices"));
    }
    check_edits(&spec.container_edits).map_err(|e| invalid(format!("containerEdits: {e}")))?;
    let mut names = HashSet::new();
    for d in &spec.devices {
        check_device_name(&d.name).map_err(|e| invalid(format!("device {:?}: {e}", d.name)))?;
        if !names.insert(d.name.as_str()) {
            return Err(invalid(format!("device {:?} is defined twice", d.name)));
        }
        check_edits(&d.container_edits)
            .map_err(|e| invalid(format!("device {:?}: {e}", d.name)))?;
        if d.container_edits == Edits::default() {
            return Err(invalid(format!(
                "device {:?} has no containerEdits",
                d.name
            )));
        }
    }
    Ok(())
}

fn name_chars(s: &str, extra: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(*c))
    {
        return Err(format!("invalid character {c:?}"));
    }
    Ok(())
}

fn ends_alnum(s: &str) -> Result<(), String> {
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must end with a letter or a digit".into());
    }
    Ok(())
}

/// A vendor (`example.com`): a letter first, a letter or digit last, letters, digits, `-`,
/// `_` and `.` between.
pub fn check_vendor(vendor: &str) -> Result<(), String> {
    if !vendor.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("the vendor must start with a letter".into());
    }
    name_chars(vendor, "-_.")?;
    ends_alnum(vendor)
}

/// A class (`gpu`): as a vendor, dots allowed since 0.6.0.
pub fn check_class(class: &str) -> Result<(), String> {
    if !class.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("the class must start with a letter".into());
    }
    name_chars(class, "-_.")?;
    ends_alnum(class)
}

/// A device name (`0`, `gpu0`, `all`): letters, digits, `-`, `_`, `.` and `:`, a letter or
/// digit first and last.
pub fn check_device_name(name: &str) -> Result<(), String> {
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("a device name must start with a letter or a digit".into());
    }
    name_chars(name, "-_.:")?;
    ends_alnum(name)
}

/// Splits a fully qualified device name `vendor.com/class=name` into kind and name,
/// checking each part.
pub fn parse_qualified(qualified: &str) -> Result<(&str, &str), String> {
    let (kind, name) = qualified
        .split_once('=')
        .ok_or("not a fully qualified CDI device name (vendor.com/class=name)")?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or("not a fully qualified CDI device name (vendor.com/class=name)")?;
    check_vendor(vendor)?;
    check_class(class)?;
    check_device_name(name)?;
    Ok((kind, name))
}

/// An absolute path with no `.` or `..` component: what a container path from a spec must be.
pub fn check_container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.split('/').any(|c| c == "." || c == "..") || path.contains('\0') || path == "/" {
        return Err(format!("{path:?} is not a clean path"));
    }
    Ok(())
}

fn check_env(env: &[String]) -> Result<(), String> {
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains('\0') && !e.contains('\0') => {}
            _ => return Err(format!("env {e:?} is not KEY=value")),
        }
    }
    Ok(())
}

fn check_edits(e: &Edits) -> Result<(), String> {
    check_env(&e.env)?;
    for n in &e.device_nodes {
        check_container_path(&n.path).map_err(|m| format!("deviceNodes path {m}"))?;
        if let Some(h) = &n.host_path
            && !h.starts_with('/')
        {
            return Err(format!(
                "deviceNodes hostPath {h:?} is not an absolute path"
            ));
        }
        match n.kind.as_deref() {
            None | Some("") | Some("c") | Some("u") | Some("b") => {}
            Some("p") if n.major.is_some() || n.minor.is_some() => {
                return Err(format!(
                    "device node {}: a fifo has no major or minor",
                    n.path
                ));
            }
            Some("p") => {}
            Some(t) => return Err(format!("device node {}: invalid type {t:?}", n.path)),
        }
        if n.major.is_some_and(|v| !(0..=0xfff).contains(&v))
            || n.minor.is_some_and(|v| !(0..=0xfffff).contains(&v))
        {
            return Err(format!(
                "device node {}: major or minor out of range",
                n.path
            ));
        }
        if let Some(p) = &n.permissions
            && p.chars().any(|c| !"rwm".contains(c))
        {
            return Err(format!("device node {}: invalid permissions {p:?}", n.path));
        }
        if n.file_mode.is_some_and(|m| m & !0o7777 != 0) {
            return Err(format!("device node {}: invalid fileMode", n.path));
        }
    }
    for h in &e.hooks {
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(format!("invalid hook name {:?}", h.hook_name));
        }
        if !h.path.starts_with('/') {
            return Err(format!("hook path {:?} is not an absolute path", h.path));
        }
        check_env(&h.env).map_err(|m| format!("hook {}: {m}", h.path))?;
        if h.timeout
            .is_some_and(|t| !(1..=i64::from(u32::MAX)).contains(&t))
        {
            return Err(format!("hook {}: timeout must be positive", h.path));
        }
    }
    for m in &e.mounts {
        if m.host_path.is_empty() {
            return Err(format!("mount {:?}: empty hostPath", m.container_path));
        }
        check_container_path(&m.container_path).map_err(|s| format!("mount containerPath {s}"))?;
    }
    for n in &e.net_devices {
        for name in [&n.host_interface_name, &n.name] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0', ':']) {
                return Err(format!("netDevices: invalid interface name {name:?}"));
            }
        }
    }
    Ok(())
}
