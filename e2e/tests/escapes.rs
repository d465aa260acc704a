//! The regression corpus of runtime escapes: one test per known escape class of runc,
//! containerd and CRI-O since 2019 that applies to Berth, each named after its CVE and
//! building the hostile pod or image it needs itself. Every test attempts the attack and
//! asserts that it fails cleanly: the request is refused with a clear error, or the
//! container runs and cannot see or change anything of the node. `docs/security.md` lists
//! each class, its test and what defends against it.

#[path = "escapes/files.rs"]
mod files;
#[path = "escapes/identity.rs"]
mod identity;
#[path = "escapes/images.rs"]
mod images;
#[path = "escapes/mounts.rs"]
mod mounts;
