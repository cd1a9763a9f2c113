//! The CA certificates every outbound TLS connection trusts: the system's,
//! plus an operator's own file where one is configured. One builder, so the
//! homeserver and the identity provider are trusted the same way, and a
//! system store that is missing or partly unreadable is said in the log
//! instead of surfacing later as "unknown issuer".

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The system roots, with `extra_ca_file`'s added when set. `peer` names who
/// is reached with them, for the log. An unreadable or empty
/// `extra_ca_file` is an error: the operator named it, so it must be what
/// they meant.
pub fn root_store(peer: &str, extra_ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = read_system_roots();
    if let Some(path) = extra_ca_file {
        add_ca_file(&mut roots, path)?;
    }
    warn_if_empty(&roots, peer);
    Ok(roots)
}

/// The system roots alone.
pub fn system_roots(peer: &str) -> RootCertStore {
    let roots = read_system_roots();
    warn_if_empty(&roots, peer);
    roots
}

fn warn_if_empty(roots: &RootCertStore, peer: &str) {
    if roots.is_empty() {
        tracing::warn!("no CA certificates found: https connections to {peer} will fail");
    }
}

fn read_system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "a system CA certificate store could not be read");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "system CA certificates that rustls cannot use were skipped"
        );
    }
    roots
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let bad = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad(&"holds no PEM certificate"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = root_store("x", Some(&empty)).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");

        let missing = root_store("x", Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(missing.contains("missing.pem"), "{missing}");

        let cert = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert.cert.pem()).unwrap();
        let with_extra = root_store("x", Some(&good)).unwrap();
        let system = system_roots("x");
        assert_eq!(with_extra.len(), system.len() + 1);
    }
}
