//! Certificate material from PEM: a certificate chain with its private key (checked to belong
//! together), and a trust bundle of CA certificates.

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// A certificate chain (leaf first) with its key, ready to present.
#[derive(Debug)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names (`*.example.com` included), to pick among several certificates by SNI.
    pub dns_names: Vec<String>,
    /// The leaf's URI SANs (a SPIFFE ID), for `x-forwarded-client-cert`'s `By=`.
    pub uris: Vec<String>,
}

/// Every certificate in a PEM document, in order.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    Ok(certs)
}

/// A certificate chain and its private key (PKCS#8, PKCS#1 or SEC1 PEM), which must match.
pub fn identity(chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity, String> {
    let chain = certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    let sans = super::san::SubjectAltNames::of(&chain[0])?;
    let key = CertifiedKey::from_der(chain, key, &super::provider())
        .map_err(|e| format!("the private key does not fit the certificate: {e}"))?;
    Ok(Identity { key: Arc::new(key), dns_names: sans.dns, uris: sans.uris })
}

/// A trust bundle: every CA certificate in a PEM document; at least one must be usable.
pub fn trust_bundle(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(pem)?);
    if added == 0 {
        return Err(format!("none of the {ignored} certificates is a usable CA certificate"));
    }
    Ok(Arc::new(roots))
}
