//! The workload's identity from the mesh's certificate authority (`strait.ca.v1`): a key generated
//! here (it never leaves the proxy), a CSR for the proxy's SPIFFE ID sent with its bootstrap token,
//! and the certificate and trust bundle back, published as the secrets `default` and `ROOTCA`
//! (Istio's names) for TLS contexts to name (`tls_certificate_sds_secret_configs: [{ name: default }]`).
//! Renewed at half its lifetime with a new key; a failed renewal is retried while the current
//! certificate is still valid.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use xds_proto::ca::CertificateRequest;
use xds_proto::ca::certificate_service_client::CertificateServiceClient;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

/// Where and as whom to ask for a certificate.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The certificate service, `http://host:port`.
    pub ca_address: String,
    /// A file holding the bootstrap token (read at every request, so it can be rotated).
    pub token_file: PathBuf,
    /// The SPIFFE ID to ask for (the token must allow it).
    pub spiffe_id: String,
    /// The lifetime to ask for; `None`: the CA's default.
    pub lifetime: Option<Duration>,
}

/// A certificate and trust bundle, as secrets, with when to renew them.
#[derive(Debug, Clone)]
pub struct Issued {
    pub secrets: Vec<Secret>,
    pub renew_at: SystemTime,
    pub expires: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the token file {0}: {1}")]
    Token(String, std::io::Error),
    #[error("cannot make a key or CSR: {0}")]
    Csr(String),
    #[error("cannot reach the certificate service {0}: {1}")]
    Connect(String, String),
    #[error("the certificate service refused: {0}")]
    Refused(String),
    #[error("the certificate service answered with an unusable certificate: {0}")]
    BadAnswer(String),
}

/// Asks the CA for a certificate once.
pub async fn request(settings: &AgentSettings) -> Result<Issued, AgentError> {
    let token = std::fs::read_to_string(&settings.token_file)
        .map_err(|e| AgentError::Token(settings.token_file.display().to_string(), e))?;
    let key = KeyPair::generate().map_err(|e| AgentError::Csr(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = settings.spiffe_id.clone().try_into().map_err(|e: rcgen::Error| AgentError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| AgentError::Csr(e.to_string()))?;
    let csr = csr.pem().map_err(|e| AgentError::Csr(e.to_string()))?;

    let connect = |e: &dyn std::fmt::Display| AgentError::Connect(settings.ca_address.clone(), e.to_string());
    let endpoint = tonic::transport::Endpoint::from_shared(settings.ca_address.clone())
        .map_err(|e| connect(&e))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let mut client = CertificateServiceClient::new(endpoint.connect().await.map_err(|e| connect(&e))?);
    let mut request = tonic::Request::new(CertificateRequest {
        csr,
        validity_duration: settings.lifetime.map_or(0, |d| d.as_secs() as i64),
    });
    let bearer = format!("Bearer {}", token.trim());
    request.metadata_mut().insert(
        "authorization",
        bearer.parse().map_err(|_| AgentError::Refused("the token is not valid metadata".into()))?,
    );
    let answer = client.create_certificate(request).await.map_err(|s| AgentError::Refused(s.message().to_string()))?;
    let answer = answer.into_inner();
    let chain = answer.cert_chain.concat();
    let bundle = answer.trust_bundle.concat();
    // The answer must be usable as is: the chain fits the key, the bundle has a root.
    let identity =
        super::certs::identity(chain.as_bytes(), key.serialize_pem().as_bytes()).map_err(AgentError::BadAnswer)?;
    if !identity.uris.contains(&settings.spiffe_id) {
        return Err(AgentError::BadAnswer(format!("it does not name {}", settings.spiffe_id)));
    }
    super::certs::trust_bundle(bundle.as_bytes()).map_err(AgentError::BadAnswer)?;
    let expires = not_after(identity.key.cert[0].as_ref()).map_err(AgentError::BadAnswer)?;
    // Half of what is left (the CA back-dates the start a little for clock skew).
    let received = SystemTime::now();
    let left = expires.duration_since(received).unwrap_or_default();
    let secrets = xds_proto::workload::secrets(chain, key.serialize_pem(), bundle).to_vec();
    Ok(Issued { secrets, renew_at: received + left / 2, expires })
}

/// When a certificate expires.
fn not_after(der: &[u8]) -> Result<SystemTime, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64))
}

/// Asks until it works: 1 s between attempts, doubling to 30 s. Each failure is logged.
pub async fn obtain(settings: &AgentSettings) -> Issued {
    let mut wait = Duration::from_secs(1);
    loop {
        match request(settings).await {
            Ok(issued) => {
                tracing::info!(
                    identity = settings.spiffe_id,
                    expires = %humantime::format_rfc3339_seconds(issued.expires),
                    "workload certificate obtained"
                );
                record_expiry(&issued);
                return issued;
            }
            Err(e) => {
                tracing::warn!(identity = settings.spiffe_id, error = %e, retry_in = ?wait, "no workload certificate yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// `strait_workload_certificate_expiry_seconds`: when the certificate in use expires (Unix time).
fn record_expiry(issued: &Issued) {
    let at = issued.expires.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!("strait_workload_certificate_expiry_seconds").set(at.as_secs_f64());
}

/// Renews for ever: each new certificate is sent to `renewed` at half the previous one's lifetime.
pub async fn renew(settings: AgentSettings, mut current: Issued, renewed: tokio::sync::mpsc::Sender<Issued>) {
    loop {
        let wait = current.renew_at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let next = loop {
            match request(&settings).await {
                Ok(next) => break next,
                Err(e) => {
                    let left = current.expires.duration_since(SystemTime::now()).unwrap_or_default();
                    tracing::warn!(error = %e, expires_in = ?left, "certificate renewal failed; retrying");
                    tokio::time::sleep((left / 10).clamp(Duration::from_millis(200), Duration::from_secs(30))).await;
                }
            }
        };
        tracing::info!(
            identity = settings.spiffe_id,
            expires = %humantime::format_rfc3339_seconds(next.expires),
            "workload certificate renewed"
        );
        metrics::counter!("strait_workload_certificate_renewals_total").increment(1);
        record_expiry(&next);
        if renewed.send(next.clone()).await.is_err() {
            return;
        }
        current = next;
    }
}
