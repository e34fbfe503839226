//! The server side of a TLS filter chain (`DownstreamTlsContext`): which certificate to present
//! (by SNI among several), whether and how a client certificate is verified (trust bundle, SAN
//! matchers), ALPN and protocol versions.

use super::certs::Identity;
use super::san::SanMatcher;
use super::{Params, Validation};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// A validated `DownstreamTlsContext`.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The URI SANs of the (first) certificate presented, `By=` in `x-forwarded-client-cert`.
    pub local_uris: Arc<[String]>,
}

/// What a `DownstreamTlsContext` says, certificates loaded.
#[derive(Debug)]
pub struct ServerTlsSpec {
    pub identities: Vec<Identity>,
    pub validation: Option<Validation>,
    pub require_client_certificate: bool,
    pub alpn: Vec<Vec<u8>>,
    pub params: Params,
    /// `prefer_client_ciphers`: the client's cipher order wins (default: the server's, as Envoy).
    pub prefer_client_ciphers: bool,
}

impl ServerTls {
    pub fn new(spec: ServerTlsSpec) -> Result<ServerTls, String> {
        let Some(first) = spec.identities.first() else {
            return Err("a TLS listener needs a certificate (tls_certificates)".into());
        };
        let local_uris: Arc<[String]> = first.uris.clone().into();
        let provider = spec.params.provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&spec.params.versions.protocol_versions())
            .map_err(|e| format!("tls_params: {e}"))?;
        let builder = match spec.validation {
            None if spec.require_client_certificate => {
                return Err("require_client_certificate needs a validation_context with trusted_ca".into());
            }
            None => builder.with_no_client_auth(),
            Some(validation) => {
                let webpki = WebPkiClientVerifier::builder_with_provider(validation.roots.clone(), provider);
                let webpki = if spec.require_client_certificate { webpki } else { webpki.allow_unauthenticated() };
                let inner = webpki.build().map_err(|e| format!("validation_context: {e}"))?;
                builder.with_client_cert_verifier(Arc::new(ClientVerifier { inner, sans: validation.sans }))
            }
        };
        let certs = spec.identities.into_iter().map(Arc::new).collect();
        let mut config = builder.with_cert_resolver(Arc::new(CertBySni { certs }));
        config.alpn_protocols = spec.alpn;
        config.ignore_client_order = !spec.prefer_client_ciphers;
        Ok(ServerTls { config: Arc::new(config), local_uris })
    }
}

/// Presents the first certificate whose DNS names cover the SNI (exact or `*.` wildcard), else the
/// first one, as Envoy picks among a context's `tls_certificates`.
#[derive(Debug)]
struct CertBySni {
    certs: Vec<Arc<Identity>>,
}

impl ResolvesServerCert for CertBySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|sni| self.certs.iter().find(|c| c.dns_names.iter().any(|d| dns_covers(d, sni))))
            .or_else(|| self.certs.first())?;
        Some(chosen.key.clone())
    }
}

/// Whether a certificate's DNS name covers `host` (`*.example.com` covers one label under it).
pub fn dns_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => {
            host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix))
        }
        None => name.eq_ignore_ascii_case(host),
    }
}

/// Verifies a client certificate against the trust bundle, then the SAN matchers.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatcher>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        super::san::accepted(&self.sans, end_entity).map_err(super::rejected)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
