//! Loading a compiled filter on the calling thread, the last step before exec.

use super::SeccompFilter;

/// Installs `filter` on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`); the caller
/// has no_new_privs set or holds CAP_SYS_ADMIN.
pub fn install(filter: &SeccompFilter) -> std::io::Result<()> {
    let mut prog: Vec<libc::sock_filter> = filter
        .instructions
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, both alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            filter.flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
