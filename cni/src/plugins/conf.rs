//! Loading CNI network configurations (`.conf`, `.conflist`, `.json`) from the config
//! directory, as libcni does: the lexically first file wins.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// A CNI spec version (`1.0.0`, `0.4.0`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `major.minor[.patch]`.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.trim().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = match it.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// Whether this version is at least `other`.
    pub fn at_least(self, other: Version) -> bool {
        self.cmp(&other) != Ordering::Less
    }
}

/// CNI 0.4.0: the first version with CHECK and prevResult on DEL.
pub(crate) const V0_4_0: Version = Version(0, 4, 0);
/// CNI 1.1.0: the first version with STATUS and GC.
pub(crate) const V1_1_0: Version = Version(1, 1, 0);

/// A network configuration list: the plugins to run, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConfList {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `cniVersion` of the list.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// `disableCheck`: CHECK is skipped.
    pub disable_check: bool,
    /// `disableGC`: GC is skipped.
    pub disable_gc: bool,
    /// The plugin configurations, each with a `type`.
    pub plugins: Vec<Map<String, Value>>,
}

fn conf_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::CniConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

impl ConfList {
    /// Parses a config file's bytes; `.conflist` files hold a list, others one plugin.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<ConfList, Error> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| conf_err(path, format!("not JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(conf_err(path, "not a JSON object"));
        };
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let cni_version = string_field(&obj, "cniVersion").unwrap_or_else(|| "0.2.0".to_string());
        if Version::parse(&cni_version).is_none() {
            return Err(conf_err(
                path,
                format!("cniVersion {cni_version:?} is not a version"),
            ));
        }
        let name = string_field(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            return Err(conf_err(path, "no network name"));
        }
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        let (disable_check, disable_gc) = (flag("disableCheck"), flag("disableGC"));
        let plugins = if is_list {
            let Some(Value::Array(list)) = obj.get("plugins") else {
                return Err(conf_err(path, "no \"plugins\" list"));
            };
            let mut plugins = Vec::new();
            for p in list {
                let Value::Object(p) = p else {
                    return Err(conf_err(path, "a plugin is not an object"));
                };
                plugins.push(p.clone());
            }
            plugins
        } else {
            vec![obj]
        };
        if plugins.is_empty() {
            return Err(conf_err(path, "no plugins"));
        }
        for p in &plugins {
            match p.get("type").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {}
                _ => return Err(conf_err(path, "a plugin has no valid \"type\"")),
            }
        }
        Ok(ConfList {
            path: path.to_path_buf(),
            cni_version,
            name,
            disable_check,
            disable_gc,
            plugins,
        })
    }

    /// Loads the lexically first `.conf`, `.conflist` or `.json` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<ConfList, Error> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| conf_err(dir, format!("cannot read the directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
            })
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let first = files
            .into_iter()
            .next()
            .ok_or_else(|| conf_err(dir, "no network config found"))?;
        let bytes =
            std::fs::read(&first).map_err(|e| conf_err(&first, format!("cannot read: {e}")))?;
        ConfList::parse(&first, &bytes)
    }

    /// The list's version (validated when loading).
    pub fn version(&self) -> Version {
        Version::parse(&self.cni_version).unwrap_or(Version(0, 2, 0))
    }

    /// The `type` (binary name) of plugin `i`.
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The stdin of plugin `i`: its config with the list's name and version, the previous
    /// result, and the runtime config values of the capabilities it declares.
    pub fn plugin_stdin(
        &self,
        i: usize,
        prev_result: Option<&Value>,
        runtime: &Map<String, Value>,
    ) -> Value {
        let mut obj = self.plugins[i].clone();
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        obj.insert("name".into(), Value::String(self.name.clone()));
        if let Some(prev) = prev_result {
            obj.insert("prevResult".into(), prev.clone());
        }
        let mut rc = Map::new();
        if let Some(Value::Object(caps)) = self.plugins[i].get("capabilities") {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = runtime.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("0.3"), Some(Version(0, 3, 0)));
        assert_eq!(Version::parse("1.x"), None);
        assert!(Version(1, 0, 0).at_least(V0_4_0));
        assert!(!Version(0, 3, 1).at_least(V0_4_0));
        assert!(!Version(1, 0, 0).at_least(V1_1_0));
    }

    #[test]
    fn loads_the_lexically_first_config_and_wraps_single_plugins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp","ipam":{}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "junk").unwrap();
        let c = ConfList::load_dir(dir.path()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.plugins.len(), c.plugin_type(0)),
            ("a", 1, "ptp")
        );
        assert_eq!(c.version(), V0_4_0);
        std::fs::remove_file(dir.path().join("10-a.conf")).unwrap();
        let c = ConfList::load_dir(dir.path()).unwrap();
        assert_eq!((c.name.as_str(), c.plugin_type(0)), ("b", "bridge"));
    }

    #[test]
    fn rejects_broken_configs_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let e = ConfList::load_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("no network config found"), "{e}");
        let p = Path::new("/x/a.conflist");
        for (bytes, reason) in [
            ("{", "not JSON"),
            (
                r#"{"name":"n","cniVersion":"1.0.0"}"#,
                "no \"plugins\" list",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
                "no plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no network name",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}"#,
                "valid \"type\"",
            ),
            (
                r#"{"name":"n","cniVersion":"one","plugins":[{"type":"x"}]}"#,
                "not a version",
            ),
        ] {
            let e = ConfList::parse(p, bytes.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(reason), "{bytes}: {e}");
        }
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities() {
        let c = ConfList::parse(
            Path::new("/x/a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge"},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        )
        .unwrap();
        let mut rc = Map::new();
        rc.insert("portMappings".into(), json!([{"hostPort": 80}]));
        rc.insert("bandwidth".into(), json!({"ingressRate": 1}));
        let s = c.plugin_stdin(0, None, &rc);
        assert_eq!(
            s,
            json!({"type":"bridge","cniVersion":"1.0.0","name":"net"})
        );
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let s = c.plugin_stdin(1, Some(&prev), &rc);
        assert_eq!(s["prevResult"], prev);
        assert_eq!(
            s["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80}]})
        );
    }
}
