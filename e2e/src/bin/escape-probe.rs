//! A tiny program the escape tests copy into an image, to make the system calls busybox
//! has no applet for and print what the kernel (and the container's seccomp filter)
//! answered: one line, `ok` or `errno <n>`.
//!
//! - `escape-probe socket <family> <type>`: `socket(2)` with the family passed as a full
//!   64-bit register (decimal or `0x` hex), as a hostile program could pass it;
//! - `escape-probe pidfd_getfd`: `pidfd_getfd(2)` of its own stdout through a pidfd.

fn number(arg: Option<&String>) -> u64 {
    let Some(a) = arg else {
        usage();
    };
    let parsed = match a.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => a.parse(),
    };
    parsed.unwrap_or_else(|_| usage())
}

fn usage() -> ! {
    eprintln!("usage: escape-probe socket <family> <type> | escape-probe pidfd_getfd");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("socket") => {
            let (family, kind) = (number(args.get(2)), number(args.get(3)));
            // SAFETY: socket(2) takes integers; a new fd, if any, is closed at exit.
            unsafe { libc::syscall(libc::SYS_socket, family, kind, 0) }
        }
        Some("pidfd_getfd") => {
            // SAFETY: pidfd_open of this process, then pidfd_getfd of its fd 1 through it;
            // integer arguments only.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
                if pidfd < 0 {
                    eprintln!("pidfd_open: {}", std::io::Error::last_os_error());
                    std::process::exit(3);
                }
                libc::syscall(libc::SYS_pidfd_getfd, pidfd, 1, 0)
            }
        }
        _ => usage(),
    };
    if r >= 0 {
        println!("ok");
    } else {
        let e = std::io::Error::last_os_error();
        println!("errno {}", e.raw_os_error().unwrap_or(0));
    }
}
