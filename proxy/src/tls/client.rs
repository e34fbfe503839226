//! The client side of a cluster's TLS (`UpstreamTlsContext`): SNI, ALPN, our client certificate,
//! and the upstream's certificate checked as Envoy does: against the trust bundle and the SAN
//! matchers when a validation context is given (not against the SNI), not at all without one.

use super::certs::Identity;
use super::{Params, Validation};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A validated `UpstreamTlsContext`.
#[derive(Debug)]
pub struct ClientTls {
    /// With the configured ALPN (a TCP proxy's connections).
    config: Arc<rustls::ClientConfig>,
    /// For the HTTP pools: the configured ALPN, or when none is, `http/1.1` or `h2` as the cluster
    /// speaks (Envoy's fallback).
    http1: Arc<rustls::ClientConfig>,
    http2: Arc<rustls::ClientConfig>,
    /// `sni`; without it none is sent.
    sni: Option<ServerName<'static>>,
}

/// What an `UpstreamTlsContext` says, certificates loaded.
#[derive(Debug)]
pub struct ClientTlsSpec {
    pub sni: String,
    pub identity: Option<Identity>,
    pub validation: Option<Validation>,
    pub alpn: Vec<Vec<u8>>,
    pub params: Params,
}

impl ClientTls {
    pub fn new(spec: ClientTlsSpec) -> Result<ClientTls, String> {
        let provider = spec.params.provider();
        let sni = match spec.sni.as_str() {
            "" => None,
            name => Some(ServerName::try_from(name.to_string()).map_err(|e| format!("sni: {e}"))?),
        };
        let verifier =
            UpstreamVerifier { validation: spec.validation, algorithms: provider.signature_verification_algorithms };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&spec.params.versions.protocol_versions())
            .map_err(|e| format!("tls_params: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match spec.identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(ClientIdentity(identity.key))),
            None => builder.with_no_client_auth(),
        };
        // Envoy sends no SNI unless `sni` is set; rustls sends none for an IP address.
        config.enable_sni = sni.is_some();
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = config.clone();
            c.alpn_protocols =
                if spec.alpn.is_empty() { alpn.iter().map(|p| p.to_vec()).collect() } else { spec.alpn.clone() };
            Arc::new(c)
        };
        let (http1, http2) = (with_alpn(&[b"http/1.1"]), with_alpn(&[b"h2"]));
        config.alpn_protocols = spec.alpn;
        Ok(ClientTls { config: Arc::new(config), http1, http2, sni })
    }

    /// The handshake over a connected socket to `addr`, offering ALPN for `purpose`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        purpose: Purpose,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self.sni.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let config = match purpose {
            Purpose::Tcp => &self.config,
            Purpose::Http1 => &self.http1,
            Purpose::Http2 => &self.http2,
        };
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await
    }
}

/// What an upstream connection is for, which decides the ALPN offered when none is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Tcp,
    Http1,
    Http2,
}

#[derive(Debug)]
struct ClientIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct UpstreamVerifier {
    validation: Option<Validation>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(validation) = &self.validation {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &validation.roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            super::san::accepted(&validation.sans, end_entity).map_err(super::rejected)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
