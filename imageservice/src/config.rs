//! The `[registry]` section of the daemon configuration: mirrors and per-host settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Registry settings: mirrors per registry host and per-host TLS and credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Mirrors per registry host (`docker.io`, `registry.k8s.io`, `host:port`), tried in
    /// order before the host itself.
    pub mirrors: BTreeMap<String, MirrorConfig>,
    /// Per-host settings, keyed by `host` or `host:port` as written in references or
    /// mirror endpoints.
    pub configs: BTreeMap<String, HostConfig>,
}

/// The mirrors of one registry host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Endpoint URLs (`https://mirror.example:5000`, `http://127.0.0.1:5000`), tried in
    /// order; a scheme-less endpoint means https (http for localhost/127.0.0.1).
    pub endpoints: Vec<String>,
}

/// TLS and credentials for one registry host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Skip TLS certificate verification for this host.
    pub insecure: bool,
    /// Extra CA certificate (PEM) trusted for this host, on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// `base64(username:password)`, as in a docker config file.
    pub auth: Option<String>,
    /// OAuth2 refresh token exchanged at the token endpoint.
    pub identity_token: Option<String>,
    /// For a mirror's host: it may receive the credentials given for the registry it
    /// mirrors (kubelet's, and that registry's configured ones) when it has none of its
    /// own. Off by default: credentials go only to the host they were given for.
    pub forward_credentials: bool,
}

/// The `[image]` section: how much one layer may hold before it is refused, so a hostile
/// image cannot fill the disk or exhaust inodes. The defaults fit the largest real images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Uncompressed bytes one layer may hold (the size of its tar stream).
    pub max_layer_bytes: u64,
    /// Entries (files, directories, links) one layer may hold.
    pub max_layer_entries: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_layer_bytes: crate::unpack::DEFAULT_MAX_LAYER_BYTES,
            max_layer_entries: crate::unpack::DEFAULT_MAX_LAYER_ENTRIES,
        }
    }
}

impl ImageConfig {
    /// The layer budget these settings give.
    pub fn layer_limits(&self) -> crate::unpack::LayerLimits {
        crate::unpack::LayerLimits {
            max_bytes: self.max_layer_bytes,
            max_entries: self.max_layer_entries,
        }
    }
}
