//! The mesh's certificate authority: a root generated on first start and kept in a directory (or
//! one an operator put there), workload certificates signed from CSRs for the SPIFFE ID a bootstrap
//! token allows (default lifetime 24 h), and the trust bundle proxies verify peers with. A root
//! rotation keeps the previous root in the bundle for an overlap period, so certificates it signed
//! stay trusted until they are renewed.

pub mod sds;
pub mod service;
pub mod tokens;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Workload certificates live this long unless asked for less (Istio's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// A root lives ten years.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What went wrong issuing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CSR cannot be read: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked}, but the token allows only {allowed}")]
    NotAllowed { asked: String, allowed: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("CA directory {dir}: {message}")]
    Storage { dir: String, message: String },
}

/// A signing root and its PEM certificate.
struct Root {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// The certificate authority of one trust domain.
pub struct CertificateAuthority {
    trust_domain: String,
    root: Root,
    /// Roots still trusted (a rotation's previous root, until its overlap ends), PEM.
    previous: Vec<String>,
    max_ttl: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Sets a certificate's validity, in Unix seconds.
fn valid(params: &mut CertificateParams, from: u64, until: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from);
    params.not_after = epoch + Duration::from_secs(until);
}

fn storage(dir: &Path, message: impl std::fmt::Display) -> CaError {
    CaError::Storage { dir: dir.display().to_string(), message: message.to_string() }
}

impl CertificateAuthority {
    /// The CA kept in `dir`: its root is loaded, or generated and written there (key mode 0600) on
    /// first start. A previous root (from a rotation) is trusted until its overlap ends.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        std::fs::create_dir_all(dir).map_err(|e| storage(dir, e))?;
        let (cert, key) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        let root = if cert.exists() {
            load_root(&cert, &key)?
        } else {
            let root = new_root(trust_domain)?;
            write_root(&root, &cert, &key, dir)?;
            tracing::info!(dir = %dir.display(), trust_domain, "generated a new root CA");
            root
        };
        let previous = match std::fs::read_to_string(dir.join("previous-root-cert.pem")) {
            Ok(pem) if overlap_open(dir) => vec![pem],
            _ => Vec::new(),
        };
        Ok(CertificateAuthority { trust_domain: trust_domain.to_string(), root, previous, max_ttl: DEFAULT_TTL })
    }

    /// Replaces the root with a new one; the old one stays trusted for `overlap`.
    pub fn rotate_root(dir: &Path, trust_domain: &str, overlap: Duration) -> Result<(), CaError> {
        let (cert, key) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        std::fs::rename(&cert, dir.join("previous-root-cert.pem")).map_err(|e| storage(dir, e))?;
        std::fs::write(dir.join("previous-root-until"), (unix_now() + overlap.as_secs()).to_string())
            .map_err(|e| storage(dir, e))?;
        let root = new_root(trust_domain)?;
        write_root(&root, &cert, &key, dir)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots to trust: the current one first.
    pub fn trust_bundle(&self) -> Vec<String> {
        std::iter::once(self.root.pem.clone()).chain(self.previous.iter().cloned()).collect()
    }

    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.trust_domain)
    }

    /// Signs `csr_pem` for `allowed` (its only SAN must be that URI), valid for `ttl` (capped at
    /// the CA's maximum). The certificate says only what the CA decides: the SPIFFE ID, client and
    /// server use, the lifetime; nothing else from the CSR is copied.
    pub fn issue(&self, csr_pem: &str, allowed: &str, ttl: Duration) -> Result<String, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [allowed] {
            return Err(CaError::NotAllowed { asked: asked.join(", "), allowed: allowed.to_string() });
        }
        let ttl = if ttl.is_zero() { DEFAULT_TTL } else { ttl.min(self.max_ttl) };
        let now = unix_now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(allowed.try_into().map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?)];
        valid(&mut params, now.saturating_sub(60), now + ttl.as_secs());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        csr.params = params;
        let cert = csr.signed_by(&self.root.issuer).map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(cert.pem())
    }
}

impl CertificateAuthority {
    /// A key and certificate made here, for a client that cannot make its own key (an Envoy fed over
    /// SDS): (certificate PEM, private key PEM).
    pub fn issue_with_key(&self, spiffe_id: &str, ttl: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.try_into().map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?)];
        let csr = params.serialize_request(&key).map_err(|e| CaError::Signing(e.to_string()))?;
        let csr = csr.pem().map_err(|e| CaError::Signing(e.to_string()))?;
        Ok((self.issue(&csr, spiffe_id, ttl)?, key.serialize_pem()))
    }
}

fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    for chunk in serial.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_be_bytes());
    }
    serial[0] &= 0x7f;
    serial
}

fn overlap_open(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("previous-root-until"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|until| unix_now() < until)
}

fn new_root(trust_domain: &str) -> Result<Root, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name.push(DnType::CommonName, format!("Strait root CA ({trust_domain})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = unix_now();
    valid(&mut params, now.saturating_sub(3600), now + ROOT_TTL.as_secs());
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    let key = KeyPair::generate().map_err(|e| CaError::Signing(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| CaError::Signing(e.to_string()))?;
    Ok(Root { pem: cert.pem(), issuer: Issuer::new(params, key) })
}

fn write_root(root: &Root, cert: &PathBuf, key: &PathBuf, dir: &Path) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| storage(dir, e))?;
    file.write_all(root.issuer.key().serialize_pem().as_bytes()).map_err(|e| storage(dir, e))?;
    std::fs::write(cert, &root.pem).map_err(|e| storage(dir, e))
}

fn load_root(cert: &Path, key: &Path) -> Result<Root, CaError> {
    let dir = cert.parent().unwrap_or(Path::new("."));
    let pem = std::fs::read_to_string(cert).map_err(|e| storage(dir, format!("{}: {e}", cert.display())))?;
    let key_pem = std::fs::read_to_string(key).map_err(|e| storage(dir, format!("{}: {e}", key.display())))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| storage(dir, format!("{}: {e}", key.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| storage(dir, format!("{}: {e}", cert.display())))?;
    Ok(Root { issuer, pem })
}
