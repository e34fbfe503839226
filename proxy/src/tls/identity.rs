//! What a TLS connection knows about its two ends: the peer's certificate (SPIFFE ID, DNS names,
//! subject, hash) and our own URI SANs, for routing, authorization, access logs and Envoy's
//! `x-forwarded-client-cert`.

use super::san::SubjectAltNames;
use rustls::pki_types::CertificateDer;
use std::fmt::Write;
use std::sync::Arc;

/// The TLS facts of one downstream connection.
#[derive(Debug, Default)]
pub struct ConnectionTls {
    /// The SNI the client asked for.
    pub server_name: Option<String>,
    /// The client's certificate, when it presented one (and it was verified).
    pub peer: Option<PeerCertificate>,
    /// Our certificate's URI SANs.
    pub local_uris: Arc<[String]>,
    pub version: Option<&'static str>,
}

/// A verified peer certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub sans: SubjectAltNames,
    /// RFC 2253 form, most specific first (`CN=client,O=example`), as Envoy prints it.
    pub subject: String,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub hash: String,
    /// The certificate itself, PEM, for `Cert=` in `x-forwarded-client-cert`.
    pub der: CertificateDer<'static>,
}

impl PeerCertificate {
    pub fn new(der: &CertificateDer<'_>) -> Result<PeerCertificate, String> {
        let sans = SubjectAltNames::of(der)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let subject = rfc2253(parsed.subject());
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let hash = digest.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(PeerCertificate { sans, subject, hash, der: der.clone().into_owned() })
    }

    /// The SPIFFE ID: the first `spiffe://` URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.sans.uris.iter().map(String::as_str).find(|u| u.starts_with("spiffe://"))
    }

    /// PEM of the certificate.
    pub fn pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.der.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// A distinguished name as OpenSSL's RFC 2253 printing gives it: last RDN first, comma-separated.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|attr| {
                let key = x509_parser::objects::oid2abbrev(attr.attr_type(), x509_parser::objects::oid_registry())
                    .map(str::to_string)
                    .unwrap_or_else(|_| attr.attr_type().to_id_string());
                let value = attr.as_str().map(escape_rfc2253).unwrap_or_default();
                format!("{key}={value}")
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
