//! Seccomp for the runtime: the [`berth_seccomp`] compiler, its profiles and filters, with
//! its errors as the runtime's: a profile it refuses is the request's fault
//! (`InvalidArgument`).

pub use berth_seccomp::{
    Arch, ArchMap, ArgCondition, BpfInstruction, Profile, SeccompFilter, SyscallRule,
    guard_socket_family, install, runtime_default,
};

use crate::error::{Error, Result};

impl From<berth_seccomp::Error> for Error {
    fn from(e: berth_seccomp::Error) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// Compiles `profile` for this node (see [`berth_seccomp::compile`]).
pub fn compile(profile: &Profile) -> Result<SeccompFilter> {
    Ok(berth_seccomp::compile(profile)?)
}

/// Reads the JSON profile at `path` (see [`berth_seccomp::read_profile`]).
pub fn read_profile(path: &str) -> Result<Profile> {
    Ok(berth_seccomp::read_profile(path)?)
}
