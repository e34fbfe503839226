//! A test PKI: certificate authorities issuing leaf certificates with DNS and URI (SPIFFE) SANs,
//! valid now or already expired, as PEM files a bootstrap can name; and a TLS client to talk to a
//! listener with them (SNI, ALPN, a client certificate).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf valid from a day ago for a year, with these DNS names and URI SANs.
    pub fn issue(&self, common_name: &str, dns: &[&str], uris: &[&str]) -> Leaf {
        let now = time_now();
        self.issue_valid(common_name, dns, uris, now - 86_400, now + 365 * 86_400)
    }

    /// A leaf for a public-facing server: it also names where its revocation list is published.
    pub fn issue_with_crl(&self, common_name: &str, dns: &[&str], crl: &str) -> Leaf {
        let now = time_now();
        let mut params = leaf_params(common_name, dns, &[], now - 86_400, now + 365 * 86_400);
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![crl.to_string()] }];
        self.sign(params)
    }

    /// A leaf that expired yesterday.
    pub fn issue_expired(&self, common_name: &str, uris: &[&str]) -> Leaf {
        let now = time_now();
        self.issue_valid(common_name, &[], uris, now - 30 * 86_400, now - 86_400)
    }

    fn issue_valid(&self, common_name: &str, dns: &[&str], uris: &[&str], from: i64, until: i64) -> Leaf {
        self.sign(leaf_params(common_name, dns, uris, from, until))
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

fn leaf_params(common_name: &str, dns: &[&str], uris: &[&str], from: i64, until: i64) -> CertificateParams {
    let mut params = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "Strait tests");
    for uri in uris {
        params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
    }
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(from as u64);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(until as u64);
    params
}

fn time_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

impl Leaf {
    /// Writes `<name>.crt` and `<name>.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// Lower-case hex SHA-256 of the certificate (`Hash=` in `x-forwarded-client-cert`).
    pub fn sha256(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a TLS client asks for.
#[derive(Default)]
pub struct TlsClient<'a> {
    /// The CA to trust (PEM); the server's certificate is checked against it and `sni`.
    pub ca_pem: Option<&'a str>,
    pub sni: &'a str,
    pub alpn: &'a [&'a str],
    pub identity: Option<&'a Leaf>,
}

/// A TLS connection's answer to one GET.
#[derive(Debug)]
pub struct TlsReply {
    pub status: u16,
    pub version: http::Version,
    pub body: String,
    /// The server's certificate (DER).
    pub server_cert: Vec<u8>,
}

/// A TLS connection to `addr` as `client` asks.
pub async fn connect(
    addr: SocketAddr,
    client: &TlsClient<'_>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = client.ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let builder = builder.with_root_certificates(roots);
    let mut config = match client.identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(leaf.der.clone())],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = client.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(client.sni.to_string()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake: timeout".to_string())?
        .map_err(|e| format!("handshake: {e}"))
}

/// GETs `path` over TLS from `addr`; an error says where it failed (the handshake, the request).
pub async fn tls_get(addr: SocketAddr, client: &TlsClient<'_>, path: &str) -> Result<TlsReply, String> {
    let tls = connect(addr, client).await?;
    let (_, session) = tls.get_ref();
    let server_cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let request =
        |uri: String| http::Request::get(uri).header("host", client.sni).body(Full::new(Bytes::new())).unwrap();
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        let mut req = request(format!("https://{}{path}", client.sni));
        req.headers_mut().remove("host");
        sender.send_request(req).await.map_err(|e| format!("request: {e}"))?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request(path.to_string())).await.map_err(|e| format!("request: {e}"))?
    };
    let status = response.status().as_u16();
    let version = response.version();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(TlsReply { status, version, body: String::from_utf8_lossy(&body).into_owned(), server_cert })
}
