//! The workload identity as xDS secrets, under Istio's names: `default` (the certificate chain and
//! its key) and `ROOTCA` (the trust bundle). The proxy's identity agent and the control plane's SDS
//! both publish them this way, and TLS contexts name them.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

/// The secret holding the workload's certificate chain and key.
pub const CERTIFICATE_SECRET: &str = "default";
/// The secret holding the roots to verify peers with.
pub const TRUST_BUNDLE_SECRET: &str = "ROOTCA";

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineString(text)), ..Default::default() })
}

/// The two secrets of a workload: its certificate chain and key (PEM), and the trust bundle (PEM).
pub fn secrets(chain_pem: String, key_pem: String, bundle_pem: String) -> [Secret; 2] {
    [
        Secret {
            name: CERTIFICATE_SECRET.to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(chain_pem),
                private_key: inline(key_pem),
                ..Default::default()
            })),
        },
        Secret {
            name: TRUST_BUNDLE_SECRET.to_string(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(bundle_pem),
                ..Default::default()
            })),
        },
    ]
}
