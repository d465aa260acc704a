//! The profiles' JSON: the OCI / Docker seccomp profile format kubelet's Localhost
//! profiles are written in, and the runtime default is built as.

use serde::Deserialize;

use super::{Error, Result};

/// An OCI / Docker seccomp profile (the JSON kubelet's Localhost profiles are written in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// What a system call no rule matches gets.
    pub default_action: String,
    /// errno for a default `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names; checked against the node's.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Docker's form of the architectures.
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    /// The rules, tried in order.
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Docker's `archMap` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// The main architecture.
    pub architecture: String,
    /// Its sub-architectures.
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

/// One rule: system calls, an action, and conditions on the arguments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// The system calls (names unknown on this architecture are skipped, as libseccomp
    /// does).
    #[serde(default)]
    pub names: Vec<String>,
    /// Docker's single-name form.
    #[serde(default)]
    pub name: Option<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Conditions, all of which must hold.
    #[serde(default)]
    pub args: Vec<ArgCondition>,
}

/// A condition on one argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    /// Argument index, 0 to 5.
    pub index: u32,
    /// The value compared with (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The second value (what the masked argument must equal).
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

/// Reads the JSON profile at `path`.
pub fn read_profile(path: &str) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("seccomp profile {path}: cannot read it: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("seccomp profile {path}: {e}")))
}
