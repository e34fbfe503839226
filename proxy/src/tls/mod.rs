//! TLS through rustls (ring): certificates and trust bundles as Envoy's TLS contexts name them, the
//! server side of a listener's filter chain (`DownstreamTlsContext`), the client side of a cluster
//! (`UpstreamTlsContext`), the peer's identity (SPIFFE ID) and the ClientHello a listener inspects.

pub mod agent;
pub mod certs;
pub mod client;
pub mod identity;
pub mod inspect;
pub mod san;
pub mod server;

use std::sync::{Arc, OnceLock};

/// The crypto provider every TLS config uses: ring's, with its AEAD-only suites.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// TLS protocol versions a context allows (`tls_params`): rustls speaks 1.2 and 1.3 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub tls12: bool,
    pub tls13: bool,
}

impl Versions {
    pub fn protocol_versions(self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        let mut out = Vec::new();
        if self.tls13 {
            out.push(&rustls::version::TLS13);
        }
        if self.tls12 {
            out.push(&rustls::version::TLS12);
        }
        out
    }
}

/// A context's protocol settings: versions and, when configured, the TLS 1.2 cipher suites.
#[derive(Debug, Clone)]
pub struct Params {
    pub versions: Versions,
    /// `cipher_suites` by OpenSSL name, mapped to rustls' suites; empty means the provider's.
    pub tls12_suites: Vec<rustls::SupportedCipherSuite>,
}

impl Params {
    /// The provider, narrowed to the configured TLS 1.2 suites.
    pub fn provider(&self) -> Arc<rustls::crypto::CryptoProvider> {
        let base = provider();
        if self.tls12_suites.is_empty() {
            return base;
        }
        let mut narrowed = (*base).clone();
        narrowed.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => self.tls12_suites.contains(s),
        });
        Arc::new(narrowed)
    }
}

/// Maps an OpenSSL cipher-suite name (as Envoy's `cipher_suites` lists them) to rustls' suite.
pub fn tls12_suite(openssl_name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match openssl_name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// How a peer certificate is checked (`CertificateValidationContext`): chained to one of these
/// roots, then matched by SAN.
#[derive(Debug, Clone)]
pub struct Validation {
    pub roots: Arc<rustls::RootCertStore>,
    pub sans: Vec<san::SanMatcher>,
}

/// A SAN mismatch as the handshake error rustls reports (and the log line shows).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SanMismatch(pub String);

fn rejected(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(SanMismatch(
        reason,
    )))))
}
