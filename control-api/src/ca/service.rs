//! `strait.ca.v1.CertificateService`: checks the caller's bootstrap token, signs its CSR for the
//! identity the token stands for, answers with the certificate and the trust bundle.

use super::tokens::Tokens;
use super::{CaError, CertificateAuthority};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use xds_proto::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use xds_proto::ca::{CertificateRequest, CertificateResponse};

#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Tokens>,
}

impl CaService {
    pub fn new(ca: Arc<CertificateAuthority>, tokens: Arc<Tokens>) -> Self {
        CaService { ca, tokens }
    }

    pub fn into_service(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let token = super::tokens::bearer(request.metadata())
            .ok_or_else(|| Status::unauthenticated("a bootstrap token is required (authorization: Bearer <token>)"))?;
        let Some((namespace, service_account)) = self.tokens.identity(token) else {
            tracing::warn!("certificate request with an unknown token refused");
            return Err(Status::unauthenticated("unknown bootstrap token"));
        };
        let allowed = self.ca.spiffe_id(namespace, service_account);
        let request = request.into_inner();
        let ttl = Duration::from_secs(request.validity_duration.max(0) as u64);
        match self.ca.issue(&request.csr, &allowed, ttl) {
            Ok(cert) => {
                tracing::info!(identity = allowed, "workload certificate issued");
                Ok(Response::new(CertificateResponse { cert_chain: vec![cert], trust_bundle: self.ca.trust_bundle() }))
            }
            Err(e @ CaError::NotAllowed { .. }) => {
                tracing::warn!(error = %e, "certificate request refused");
                Err(Status::permission_denied(e.to_string()))
            }
            Err(e @ CaError::BadCsr(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
