//! The system's trusted root certificates, read once per daemon and shared by every
//! registry client.
//!
//! Reading them (every file of `/etc/ssl/certs` and the bundle, each certificate found up
//! to three times) took a daemon's first pull several milliseconds, and every new registry
//! host paid it again. Here they are read once, deduplicated and checked, either by the
//! first client that needs them or ahead of time by [`prewarm`] while the daemon's start-up
//! reconciliation runs.

use std::collections::HashSet;
use std::sync::OnceLock;

static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// The trusted roots: each distinct certificate of the system's store that parses as a
/// trust anchor (stores often hold a few that do not; reqwest skips them too).
pub(super) fn native() -> &'static [reqwest::Certificate] {
    ROOTS.get_or_init(|| {
        let started = std::time::Instant::now();
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!(error = %e, "reading the system's root certificates");
        }
        let roots = distinct_anchors(loaded.certs.iter().map(|c| c.as_ref()));
        tracing::debug!(
            roots = roots.len(),
            read = loaded.certs.len(),
            us = started.elapsed().as_micros() as u64,
            "system root certificates loaded"
        );
        roots
            .into_iter()
            .map(reqwest::Certificate::from_der)
            .filter_map(Result::ok)
            .collect()
    })
}

/// The distinct certificates of `ders` that parse as trust anchors, in their first order.
fn distinct_anchors<'a>(ders: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    let mut seen = HashSet::new();
    ders.filter(|der| seen.insert(*der))
        .filter(|der| {
            let cert = rustls::pki_types::CertificateDer::from(der.to_vec());
            rustls::RootCertStore::empty().add(cert).is_ok()
        })
        .collect()
}

/// Loads the roots now (blocking), so the daemon's first pull need not: the start-up
/// reconciliation runs it beside its own work.
pub(crate) fn prewarm() {
    native();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_garbage_are_dropped() {
        let loaded = rustls_native_certs::load_native_certs();
        let Some(first) = loaded.certs.first() else {
            // No system store on this machine: nothing to check against.
            return;
        };
        let good: &[u8] = first.as_ref();
        let garbage: &[u8] = b"not a certificate";
        let out = distinct_anchors([good, garbage, good].into_iter());
        assert_eq!(out, vec![good]);
    }

    #[test]
    fn native_roots_are_read_once_and_shared() {
        let a = native().as_ptr();
        prewarm();
        assert_eq!(native().as_ptr(), a);
    }
}
