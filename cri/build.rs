//! Link settings of the `berth` binary.

use std::process::Command;

/// The build host's glibc version (`getconf GNU_LIBC_VERSION`: "glibc 2.36"), if known.
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    Some((major.parse().ok()?, minor.split('.').next()?.parse().ok()?))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_NO_RELR");
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let host = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    // RELR: the ~22 000 relative relocations of a position-independent `berth` packed
    // into a bitmap of a few KiB instead of 528 KiB of `.rela.dyn` that the loader reads
    // (keeps resident) at every start. A binary so linked needs glibc 2.36 to load, so it
    // is done only for a native build on a glibc that has it (Debian 12, Ubuntu 24.04,
    // RHEL 10); older nodes (RHEL 9: 2.34) get the classic table. `BERTH_NO_RELR=1` opts
    // out, e.g. to build on a new machine for older nodes.
    let relr = host_glibc().is_some_and(|v| v >= (2, 36));
    if gnu_linux && host && relr && std::env::var_os("BERTH_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
