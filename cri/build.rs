//! Link settings of the `berth` binary.

fn main() {
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if gnu_linux {
        // RELR: the ~22 000 relative relocations of a position-independent `berth` packed
        // into a bitmap of a few KiB instead of 528 KiB of `.rela.dyn` that the loader reads
        // (keeps resident) at every start. Needs glibc 2.36 and binutils 2.38.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
