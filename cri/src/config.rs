//! The daemon's configuration file (`/etc/berth/config.toml`).
//!
//! Every key is optional and has a default that works on a plain Linux node; an unknown key
//! or a value of the wrong type is an error naming the key and the file. Each crate owns the
//! section it consumes (`registry` is the image service's, `network` the network's); this
//! module composes them into the one file an operator edits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The effective configuration of a daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: the metadata database, content store, snapshots, writable layers.
    pub root: PathBuf,
    /// Volatile state: sockets, per-pod and per-container run directories.
    pub state: PathBuf,
    /// The handler (a key of `runtimes`) that runs pods asking for no RuntimeClass handler;
    /// empty (the default): Berth runs them itself.
    pub default_runtime: String,
    /// The CRI gRPC endpoint.
    pub grpc: GrpcConfig,
    /// Logging of the daemon itself.
    pub log: LogConfig,
    /// Registry mirrors, credentials and TLS per host.
    pub registry: berth_imageservice::RegistryConfig,
    /// Budgets of each image layer.
    pub image: berth_imageservice::ImageConfig,
    /// Pod networking: the built-in bridge or CNI plugins.
    pub network: berth_cni::NetworkConfig,
    /// The exec/attach/port-forward streaming server.
    pub streaming: StreamingConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// How pods and containers are placed in cgroups.
    pub cgroup: CgroupConfig,
    /// RuntimeClass handlers backed by an external OCI runtime, by handler name.
    pub runtimes: BTreeMap<String, RuntimeHandlerConfig>,
    /// Devices described by Container Device Interface specs.
    pub cdi: CdiConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            default_runtime: String::new(),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            registry: Default::default(),
            image: Default::default(),
            network: Default::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
            cgroup: CgroupConfig::default(),
            runtimes: BTreeMap::new(),
            cdi: CdiConfig::default(),
        }
    }
}

/// `[cdi]`: where the CDI device specs are (vendors' `nvidia-ctk cdi generate`, device
/// plugins and DRA drivers write them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdiConfig {
    /// Apply the CDI devices containers ask for; off, a container asking for one fails.
    pub enabled: bool,
    /// Directories of spec files (`*.json`, `*.yaml`), a later one overriding an earlier
    /// one's devices.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            enabled: true,
            spec_dirs: berth_runtime::cdi::DEFAULT_SPEC_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// `[grpc]`: the CRI endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Path of the unix socket kubelet and crictl connect to.
    pub socket: PathBuf,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            socket: PathBuf::from("/run/berth/berth.sock"),
        }
    }
}

/// `[log]`: the daemon's own log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or directives.
    pub level: String,
    /// Line format on stderr.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// `[streaming]`: the HTTP server kubelet redirects exec, attach and port-forward to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Listen address; port 0 picks a free port, as containerd does.
    pub address: String,
    /// PEM certificate for TLS; empty serves plain HTTP.
    pub tls_cert_file: String,
    /// PEM private key for TLS.
    pub tls_key_file: String,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// `[metrics]`: Berth's own Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address such as `127.0.0.1:9323`; empty turns the endpoint off.
    pub address: String,
}

/// `[cgroup]`: which cgroup manager kubelet and Berth agree on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Must match kubelet's `cgroupDriver`.
    pub driver: CgroupDriver,
    /// Where pods go when kubelet sends no `cgroup_parent` (crictl, tests): a cgroupfs path
    /// (default `/berth`) or, with the systemd driver, a slice (default `berth.slice`).
    pub parent: String,
    /// The most processes each container may have (`pids.max`) unless kubelet sets a
    /// limit through `unified`; 0 leaves it unlimited, as containerd does.
    pub pids_limit: i64,
}

impl CgroupConfig {
    /// The parent for pods without one, the driver's default when none is configured.
    pub fn parent_or_default(&self) -> &str {
        match (self.parent.as_str(), self.driver) {
            ("", CgroupDriver::Cgroupfs) => "/berth",
            ("", CgroupDriver::Systemd) => "berth.slice",
            (p, _) => p,
        }
    }
}

/// The cgroup driver, as kubelet names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups are paths under the cgroup filesystem.
    #[default]
    Cgroupfs,
    /// Cgroups are systemd slices and scopes.
    Systemd,
}

/// `[runtimes."<handler>"]`: a RuntimeClass handler run by an external OCI runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    /// Path of the runtime binary (runc, crun, or one with the same command line).
    pub path: PathBuf,
    /// Global options put before every command the runtime is given, after Berth's own
    /// `--root` and `--log` (for instance `--cgroup-manager=disabled` for crun, which then
    /// leaves the container in the cgroup Berth made for it).
    pub args: Vec<String>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema; the message names the key.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// The parser's account, naming the key and its line.
        message: String,
    },
    /// A value parsed but cannot be used.
    #[error("invalid config file {path}: {key}: {message}")]
    Invalid {
        /// The file named by `--config`.
        path: PathBuf,
        /// The dotted key at fault.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl Config {
    /// Reads `path`; a missing file means the defaults, so a plain node needs no file at all.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the text of a config file; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The complete default configuration as TOML, as `berth config default` prints it.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("the default config serializes")
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if !self.root.is_absolute() {
            return Err(invalid("root", "must be an absolute path"));
        }
        if !self.state.is_absolute() {
            return Err(invalid("state", "must be an absolute path"));
        }
        if !self.grpc.socket.is_absolute() {
            return Err(invalid("grpc.socket", "must be an absolute path"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", &e.to_string()));
        }
        for (name, h) in &self.runtimes {
            if name.is_empty() {
                return Err(invalid(
                    "runtimes",
                    "the default handler \"\" is Berth's own and cannot be configured",
                ));
            }
            // The name is a directory under the state dir (`runtimes/<name>`); kubelet's
            // handler names are DNS labels.
            let label = name.len() <= 63
                && !name.starts_with(['.', '-'])
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !label {
                return Err(invalid(
                    "runtimes",
                    &format!("{name:?}: a handler name is letters, digits, '-', '_' and '.'"),
                ));
            }
            if !h.path.is_absolute() {
                return Err(invalid(
                    "runtimes",
                    &format!("{name:?}: path must be an absolute path"),
                ));
            }
        }
        if !self.default_runtime.is_empty() && !self.runtimes.contains_key(&self.default_runtime) {
            return Err(invalid(
                "default_runtime",
                &format!(
                    "{:?} is not a configured handler (a [runtimes.NAME] section)",
                    self.default_runtime
                ),
            ));
        }
        if let Some(d) = self.cdi.spec_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(invalid(
                "cdi.spec_dirs",
                &format!("{}: must be an absolute path", d.display()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Config {
    /// The defaults with root and state under `dir`: a unit test touches nothing of the
    /// host's.
    pub(crate) fn in_dir(dir: &Path) -> Config {
        Config {
            root: dir.join("root"),
            state: dir.join("state"),
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/berth/test.toml"))
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        assert_eq!(parse(&text).unwrap(), Config::default());
        assert!(text.contains("root = \"/var/lib/berth\""), "{text}");
        assert!(
            text.contains("socket = \"/run/berth/berth.sock\""),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse("[grpc]\nsockett = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("sockett"), "{err}");
        assert!(err.contains("/etc/berth/test.toml"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("root = 3\n").unwrap_err().to_string();
        assert!(err.contains("root"), "{err}");
        assert!(err.contains("string"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = parse("state = \"run\"\n").unwrap_err().to_string();
        assert!(err.contains("state: must be an absolute path"), "{err}");
    }

    #[test]
    fn bad_log_level_is_refused() {
        let err = parse("[log]\nlevel = \"[\"\n").unwrap_err().to_string();
        assert!(err.contains("log.level"), "{err}");
    }

    #[test]
    fn sections_parse() {
        let config = parse(
            r#"
root = "/tmp/b/root"
[grpc]
socket = "/tmp/b/s.sock"
[log]
format = "json"
[cgroup]
driver = "systemd"
[runtimes.runc]
path = "/usr/bin/runc"
"#,
        )
        .unwrap();
        assert_eq!(config.root, Path::new("/tmp/b/root"));
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.cgroup.driver, CgroupDriver::Systemd);
        assert_eq!(config.runtimes["runc"].path, Path::new("/usr/bin/runc"));
    }

    #[test]
    fn cdi_is_on_with_the_standard_dirs_unless_configured() {
        let d = Config::default();
        assert!(d.cdi.enabled);
        assert_eq!(
            d.cdi.spec_dirs,
            [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
        );
        let c = parse("[cdi]\nenabled = false\nspec_dirs = [\"/x\"]\n").unwrap();
        assert!(!c.cdi.enabled);
        assert_eq!(c.cdi.spec_dirs, [PathBuf::from("/x")]);
        let e = parse("[cdi]\nspec_dirs = [\"rel\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cdi.spec_dirs"), "{e}");
    }

    #[test]
    fn runtime_handlers_need_a_plain_name_and_an_absolute_path() {
        let ok = parse("[runtimes.\"kata-2.x\"]\npath = \"/usr/bin/kata\"\nargs = [\"--debug\"]\n")
            .unwrap();
        assert_eq!(ok.runtimes["kata-2.x"].args, ["--debug"]);
        for bad in [
            "[runtimes.\"\"]\npath = \"/usr/bin/runc\"\n",
            "[runtimes.\"..\"]\npath = \"/usr/bin/runc\"\n",
            "[runtimes.\"a/b\"]\npath = \"/usr/bin/runc\"\n",
            "[runtimes.runc]\npath = \"runc\"\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("runtimes"), "{bad}: {e}");
        }
    }

    #[test]
    fn default_runtime_must_name_a_configured_handler() {
        let ok = parse("default_runtime = \"runc\"\n[runtimes.runc]\npath = \"/usr/sbin/runc\"\n")
            .unwrap();
        assert_eq!(ok.default_runtime, "runc");
        assert_eq!(Config::default().default_runtime, "");
        let e = parse("default_runtime = \"kata\"\n[runtimes.runc]\npath = \"/usr/sbin/runc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_runtime") && e.contains("kata"), "{e}");
    }

    #[test]
    fn missing_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("absent.toml")).unwrap();
        assert_eq!(config, Config::default());
    }
}
