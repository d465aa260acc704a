//! seccomp: the CRI's profiles (RuntimeDefault, Unconfined, Localhost with an OCI/Docker
//! JSON profile) compiled to a classic BPF program, which the container's process loads as
//! its last step before exec.
//!
//! The program checks the architecture (a foreign one kills the process), refuses x32
//! system calls, then tries each rule in order: a rule matches a system call number and,
//! optionally, conditions on its arguments (all must hold); the first rule that matches
//! decides; otherwise the profile's default action does. Each rule is a small block whose
//! jumps stay inside it, so the program never needs a jump longer than BPF allows.
//!
//! By concern: the profiles' JSON ([`profile`]), the compiler ([`compile()`]), the runtime
//! default profile ([`runtime_default`]) and loading a filter ([`install`]). The crate uses
//! nothing of the runtime's: the daemon compiles a filter, the monitor's child installs it.

mod aarch64;
mod compile;
mod default;
mod install;
mod profile;
#[cfg(test)]
mod tests;
mod x86_64;

use serde::{Deserialize, Serialize};

pub use compile::{compile, compile_for, load_profile};
pub use default::{guard_socket_family, runtime_default};
pub use install::install;
pub use profile::{ArchMap, ArgCondition, Profile, SyscallRule, read_profile};

/// A profile Berth cannot turn into a filter, or a profile file it cannot read: the
/// request's fault (a Localhost profile kubelet named), so the message says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile is refused; the message names the part and why.
    #[error("{0}")]
    Invalid(String),
}

/// The result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One classic BPF instruction of a seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInstruction {
    /// Opcode.
    pub code: u16,
    /// Jump if true.
    pub jt: u8,
    /// Jump if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// A compiled seccomp filter, loaded as the last step before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The program.
    pub instructions: Vec<BpfInstruction>,
    /// `SECCOMP_FILTER_FLAG_*` flags.
    #[serde(default)]
    pub flags: u32,
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture filters are compiled for: both tables are always built, so the arm64
/// filters are compiled and checked by the tests of an x86_64 build too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// The name profiles give it (`SCMP_ARCH_*`).
    name: &'static str,
    /// `AUDIT_ARCH_*`, which the kernel puts in `seccomp_data.arch`.
    audit: u32,
    /// (name, number) of its system calls, sorted by name.
    syscalls: &'static [(&'static str, u32)],
    /// Its system call numbers also carry the x32 ABI (bit 30), which filters refuse.
    x32: bool,
}

impl Arch {
    /// x86_64.
    pub const X86_64: Arch = Arch {
        name: "SCMP_ARCH_X86_64",
        audit: AUDIT_ARCH_X86_64,
        syscalls: x86_64::SYSCALLS,
        x32: true,
    };
    /// aarch64 (arm64).
    pub const AARCH64: Arch = Arch {
        name: "SCMP_ARCH_AARCH64",
        audit: AUDIT_ARCH_AARCH64,
        syscalls: aarch64::SYSCALLS,
        x32: false,
    };

    /// This node's, if filters can be built for it.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::AARCH64)
        } else {
            None
        }
    }

    /// The number of the system call `name`.
    fn number(&self, name: &str) -> Option<u32> {
        self.syscalls
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| self.syscalls[i].1)
    }
}
