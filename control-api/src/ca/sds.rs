//! Certificates over SDS for proxies that cannot make their own key (Envoy): an ADS stream that
//! carries a bootstrap token (`authorization: Bearer <token>` in its metadata, Envoy's
//! `grpc_services[].initial_metadata`) is served, beside the mesh's resources, the secrets `default`
//! (a certificate and key for the token's SPIFFE ID, made here) and `ROOTCA` (the trust bundle),
//! renewed at half their lifetime for as long as the stream lasts.

use super::CertificateAuthority;
use super::tokens::Tokens;
use crate::resources::Resources;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url::SECRET;

/// Who may get secrets over ADS, and for how long they are valid.
#[derive(Debug, Clone)]
pub struct SdsIssuer {
    pub ca: Arc<CertificateAuthority>,
    pub tokens: Arc<Tokens>,
    pub lifetime: Duration,
}

fn pack(secret: Secret) -> (&'static str, String, Any) {
    let name = secret.name.clone();
    (SECRET, name, Any { type_url: SECRET.to_string(), value: prost::Message::encode_to_vec(&secret) })
}

impl SdsIssuer {
    /// The SPIFFE ID a token stands for, if it is known.
    pub fn identity(&self, token: &str) -> Option<String> {
        self.tokens.identity(token).map(|(ns, sa)| self.ca.spiffe_id(ns, sa))
    }

    fn secrets(&self, spiffe_id: &str) -> Result<Vec<(&'static str, String, Any)>, super::CaError> {
        let (cert, key) = self.ca.issue_with_key(spiffe_id, self.lifetime)?;
        Ok(xds_proto::workload::secrets(cert, key, self.ca.trust_bundle().concat()).into_iter().map(pack).collect())
    }

    /// The mesh's resources with this workload's secrets, kept current (mesh changes, renewals) by a
    /// task that ends when the stream does (when the returned receiver is dropped).
    pub fn follow(
        &self,
        spiffe_id: String,
        mut mesh: watch::Receiver<Arc<Resources>>,
    ) -> watch::Receiver<Arc<Resources>> {
        let issuer = self.clone();
        let mut secrets = issuer.secrets(&spiffe_id).unwrap_or_else(|e| {
            tracing::error!(identity = spiffe_id, error = %e, "cannot issue a certificate for an SDS client");
            Vec::new()
        });
        let first = Arc::new(mesh.borrow_and_update().with_extra(secrets.clone()));
        let (tx, rx) = watch::channel(first);
        tracing::info!(identity = spiffe_id, "certificate issued over SDS");
        tokio::spawn(async move {
            let renew_every = issuer.lifetime / 2;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = mesh.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = renew.tick() => match issuer.secrets(&spiffe_id) {
                        Ok(fresh) => {
                            secrets = fresh;
                            tracing::info!(identity = spiffe_id, "certificate renewed over SDS");
                        }
                        Err(e) => tracing::error!(identity = spiffe_id, error = %e, "certificate renewal failed"),
                    },
                }
                let current = mesh.borrow_and_update().with_extra(secrets.clone());
                if tx.send(Arc::new(current)).is_err() {
                    return;
                }
            }
        });
        rx
    }
}
