//! `x-forwarded-client-cert` as Envoy's connection manager sets it: `forward_client_cert_details`
//! decides whether the header a client sent is dropped, passed on, or added to, and
//! `set_current_client_cert_details` which facts of this connection's client certificate go in
//! (`By=` our URI SAN and `Hash=` always; `Subject`, `URI`, `DNS`, `Cert` as configured).

use crate::tls::identity::ConnectionTls;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// `forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Removed (the default).
    #[default]
    Sanitize,
    /// Passed on as the client sent it, for mTLS connections only.
    ForwardOnly,
    /// This connection's details appended, for mTLS connections only.
    AppendForward,
    /// Replaced by this connection's details, for mTLS connections only.
    SanitizeSet,
    /// Passed on as the client sent it, whatever the connection.
    AlwaysForwardOnly,
}

/// `set_current_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertDetails {
    pub subject: bool,
    pub cert: bool,
    pub uri: bool,
    pub dns: bool,
}

/// Sets the header for one request.
pub fn apply(mode: ForwardClientCert, details: CertDetails, headers: &mut HeaderMap, tls: Option<&ConnectionTls>) {
    let peer = tls.and_then(|t| t.peer.as_ref().map(|p| (t, p)));
    let Some((tls, peer)) = peer.filter(|_| mode != ForwardClientCert::AlwaysForwardOnly) else {
        if mode != ForwardClientCert::AlwaysForwardOnly {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
        return;
    };
    let mut element = Vec::new();
    element.extend(tls.local_uris.iter().map(|uri| format!("By={uri}")));
    element.push(format!("Hash={}", peer.hash));
    if details.cert {
        let pem = peer.pem();
        let encoded = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC);
        element.push(format!("Cert=\"{encoded}\""));
    }
    if details.subject {
        element.push(format!("Subject=\"{}\"", peer.subject.replace('"', "\\\"")));
    }
    if details.uri {
        element.extend(peer.sans.uris.iter().map(|uri| format!("URI={uri}")));
    }
    if details.dns {
        element.extend(peer.sans.dns.iter().map(|dns| format!("DNS={dns}")));
    }
    let element = element.join(";");
    let value = match (mode, headers.get(&X_FORWARDED_CLIENT_CERT)) {
        (ForwardClientCert::Sanitize, _) => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
            return;
        }
        (ForwardClientCert::ForwardOnly | ForwardClientCert::AlwaysForwardOnly, _) => return,
        (ForwardClientCert::AppendForward, Some(existing)) => {
            format!("{},{element}", String::from_utf8_lossy(existing.as_bytes()))
        }
        (ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet, _) => element,
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
        Err(_) => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
    }
}
