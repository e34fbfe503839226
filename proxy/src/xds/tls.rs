//! `envoy.transport_sockets.tls` -> [`ServerTls`] / [`ClientTls`]: `DownstreamTlsContext` on a
//! filter chain, `UpstreamTlsContext` on a cluster, their certificates and validation contexts
//! inline or named from `static_resources.secrets` (SDS secrets without an `sds_config`).

use super::convert::{self, ConfigError, Result};
use crate::tls::certs::{self, Identity};
use crate::tls::client::{ClientTls, ClientTlsSpec};
use crate::tls::san::{SanMatcher, SanType};
use crate::tls::server::{ServerTls, ServerTlsSpec};
use crate::tls::{Params, Validation, Versions};
use std::collections::HashMap;
use xds_proto::pb::envoy::config::core::v3 as core;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

const RAW_BUFFER: &str = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Secrets by name, for contexts that refer to them (`static_resources.secrets`).
#[derive(Debug, Default)]
pub struct Secrets<'a>(HashMap<&'a str, &'a tls::Secret>);

impl<'a> Secrets<'a> {
    pub fn new(secrets: &'a [tls::Secret]) -> Self {
        Secrets(secrets.iter().map(|s| (s.name.as_str(), s)).collect())
    }

    fn get(&self, config: &tls::SdsSecretConfig, at: &str) -> Result<&'a tls::Secret> {
        let from_ads = sds_from_ads(config).map_err(|e| e.within(at))?;
        self.0.get(config.name.as_str()).copied().ok_or_else(|| {
            let whence = if from_ads { "received over ADS (SDS)" } else { "in static_resources.secrets" };
            ConfigError::new(format!("{at}.name"), format!("no secret named '{}' {whence}", config.name))
        })
    }
}

/// Whether a secret comes over ADS (`sds_config: { ads: {} }`) rather than from the bootstrap (no
/// `sds_config`); any other source is refused.
fn sds_from_ads(config: &tls::SdsSecretConfig) -> Result<bool> {
    use core::config_source::ConfigSourceSpecifier as S;
    match config.sds_config.as_ref().map(|c| &c.config_source_specifier) {
        None => Ok(false),
        Some(Some(S::Ads(_))) => Ok(true),
        Some(_) => Err(ConfigError::new("sds_config", "only `ads: {}` is supported as a secret source")),
    }
}

/// The `CommonTlsContext` of a transport socket's TLS context, either side's.
fn common_context_of(socket: &core::TransportSocket) -> Option<tls::CommonTlsContext> {
    match tls_context::<tls::DownstreamTlsContext>(socket) {
        Ok(Some(d)) => d.common_tls_context,
        _ => tls_context::<tls::UpstreamTlsContext>(socket).ok().flatten()?.common_tls_context,
    }
}

/// The names of the secrets a transport socket asks for over ADS (SDS), for the subscription.
pub fn sds_names(socket: &core::TransportSocket) -> Vec<String> {
    use tls::common_tls_context::ValidationContextType as V;
    let Some(common) = common_context_of(socket) else { return Vec::new() };
    let mut configs: Vec<&tls::SdsSecretConfig> = common.tls_certificate_sds_secret_configs.iter().collect();
    match &common.validation_context_type {
        Some(V::ValidationContextSdsSecretConfig(sds)) => configs.push(sds),
        Some(V::CombinedValidationContext(c)) => configs.extend(c.validation_context_sds_secret_config.as_ref()),
        _ => {}
    }
    configs.into_iter().filter(|c| matches!(sds_from_ads(c), Ok(true))).map(|c| c.name.clone()).collect()
}

/// Checks a secret on its own (its certificate and key, or its trust bundle load), so a bad one is
/// refused when it arrives, naming itself.
pub fn check_secret(secret: &tls::Secret) -> Result<()> {
    let mut loaded = Vec::new();
    match &secret.r#type {
        Some(tls::secret::Type::TlsCertificate(cert)) => {
            identity(cert, &mut loaded).map(|_| ()).map_err(|e| e.within("tls_certificate"))
        }
        Some(tls::secret::Type::ValidationContext(v)) => {
            validation(v, None, &mut loaded).map(|_| ()).map_err(|e| e.within("validation_context"))
        }
        _ => Err(ConfigError::new("", "only tls_certificate and validation_context secrets are supported")),
    }
}

/// A filter chain's `transport_socket`: TLS (`DownstreamTlsContext`), or plaintext (`None`).
pub fn downstream(socket: &core::TransportSocket, secrets: &Secrets) -> Result<Option<ServerTls>> {
    let Some(ctx) = tls_context::<tls::DownstreamTlsContext>(socket)? else { return Ok(None) };
    let at = "typed_config";
    if ctx.require_sni.is_some_and(|b| b.value) {
        return Err(ConfigError::new(format!("{at}.require_sni"), "is not supported yet"));
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    let c = common_context(&common, secrets, true).map_err(|e| e.within(&format!("{at}.common_tls_context")))?;
    if c.identities.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.common_tls_context.tls_certificates"),
            "a TLS listener needs a certificate",
        ));
    }
    let spec = ServerTlsSpec {
        identities: c.identities,
        validation: c.validation,
        require_client_certificate: ctx.require_client_certificate.is_some_and(|b| b.value),
        alpn: c.alpn,
        params: c.params,
        prefer_client_ciphers: ctx.prefer_client_ciphers,
    };
    ServerTls::new(spec).map(Some).map_err(|e| ConfigError::new(at, e))
}

/// A cluster's `transport_socket`: TLS (`UpstreamTlsContext`), or plaintext (`None`), with a
/// fingerprint of everything it loaded (so a changed file makes a changed cluster).
pub fn upstream(socket: &core::TransportSocket, secrets: &Secrets) -> Result<Option<(ClientTls, u64)>> {
    let Some(ctx) = tls_context::<tls::UpstreamTlsContext>(socket)? else { return Ok(None) };
    let at = "typed_config";
    let encoded = prost::Message::encode_to_vec(&ctx);
    let common = ctx.common_tls_context.unwrap_or_default();
    let mut c = common_context(&common, secrets, false).map_err(|e| e.within(&format!("{at}.common_tls_context")))?;
    if c.identities.len() > 1 {
        return Err(ConfigError::new(
            format!("{at}.common_tls_context.tls_certificates"),
            "a cluster presents one client certificate",
        ));
    }
    let spec = ClientTlsSpec {
        sni: ctx.sni.clone(),
        identity: c.identities.pop(),
        validation: c.validation,
        alpn: c.alpn,
        params: c.params,
    };
    let client = ClientTls::new(spec).map_err(|e| ConfigError::new(at, e))?;
    let mut fingerprint = xxhash_rust::xxh64::Xxh64::new(0);
    fingerprint.update(&encoded);
    fingerprint.update(&c.loaded);
    Ok(Some((client, fingerprint.digest())))
}

/// A transport socket's TLS context `T`, or `None` for `RawBuffer` (plaintext).
fn tls_context<T: prost::Message + prost::Name + Default>(socket: &core::TransportSocket) -> Result<Option<T>> {
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(ConfigError::new("typed_config", "typed_config is required"));
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if any.type_url != T::type_url() {
        return Err(ConfigError::new(
            "typed_config",
            format!("transport socket {} is not supported ({} and RawBuffer are)", any.type_url, T::NAME),
        ));
    }
    convert::unpack(any, "").map(Some)
}

/// What a `CommonTlsContext` gives either side.
struct Common {
    identities: Vec<Identity>,
    validation: Option<Validation>,
    alpn: Vec<Vec<u8>>,
    params: Params,
    /// The bytes loaded from files and secrets, for the fingerprint.
    loaded: Vec<u8>,
}

fn common_context(c: &tls::CommonTlsContext, secrets: &Secrets, server: bool) -> Result<Common> {
    use tls::common_tls_context::ValidationContextType as V;
    let mut loaded = Vec::new();
    let mut identities = Vec::new();
    for (i, cert) in c.tls_certificates.iter().enumerate() {
        identities.push(identity(cert, &mut loaded).map_err(|e| e.within(&format!("tls_certificates[{i}]")))?);
    }
    for (i, sds) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        let at = format!("tls_certificate_sds_secret_configs[{i}]");
        let secret = secrets.get(sds, &at)?;
        let Some(tls::secret::Type::TlsCertificate(cert)) = &secret.r#type else {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("secret '{}' is not a tls_certificate", sds.name),
            ));
        };
        identities.push(identity(cert, &mut loaded).map_err(|e| e.within(&format!("(secret '{}')", sds.name)))?);
    }
    let validation = match &c.validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => {
            validation(v, None, &mut loaded).map_err(|e| e.within("validation_context"))?
        }
        Some(V::ValidationContextSdsSecretConfig(sds)) => {
            let roots = secret_validation(sds, secrets, "validation_context_sds_secret_config")?;
            validation(roots, None, &mut loaded).map_err(|e| e.within(&format!("(secret '{}')", sds.name)))?
        }
        Some(V::CombinedValidationContext(combined)) => {
            let at = "combined_validation_context";
            let sds = combined
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{at}.validation_context_sds_secret_config"), "is required"))?;
            let roots = secret_validation(sds, secrets, &format!("{at}.validation_context_sds_secret_config"))?;
            let defaults = combined.default_validation_context.as_ref();
            validation(roots, defaults, &mut loaded).map_err(|e| e.within(at))?
        }
        Some(_) => {
            return Err(ConfigError::new(
                "validation_context_certificate_provider",
                "certificate providers are not supported",
            ));
        }
    };
    let alpn = c.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
    let params = params(c.tls_params.as_ref(), server).map_err(|e| e.within("tls_params"))?;
    Ok(Common { identities, validation, alpn, params, loaded })
}

fn secret_validation<'a>(
    sds: &tls::SdsSecretConfig,
    secrets: &Secrets<'a>,
    at: &str,
) -> Result<&'a tls::CertificateValidationContext> {
    match &secrets.get(sds, at)?.r#type {
        Some(tls::secret::Type::ValidationContext(v)) => Ok(v),
        _ => Err(ConfigError::new(format!("{at}.name"), format!("secret '{}' is not a validation_context", sds.name))),
    }
}

fn identity(cert: &tls::TlsCertificate, loaded: &mut Vec<u8>) -> Result<Identity> {
    if cert.private_key_provider.is_some() || cert.password.is_some() {
        return Err(ConfigError::new("private_key_provider", "key providers and encrypted keys are not supported"));
    }
    let chain = cert.certificate_chain.as_ref().ok_or_else(|| ConfigError::new("certificate_chain", "is required"))?;
    let key = cert.private_key.as_ref().ok_or_else(|| ConfigError::new("private_key", "is required"))?;
    let chain = convert::data_source(chain, "certificate_chain")?;
    let key = convert::data_source(key, "private_key")?;
    loaded.extend_from_slice(&chain);
    loaded.extend_from_slice(&key);
    certs::identity(&chain, &key).map_err(|e| ConfigError::new("certificate_chain", e))
}

/// A validation context: the trust bundle from `roots` (its `trusted_ca`), the SAN matchers from
/// `defaults` when given (a combined context) and from `roots`. Without a trust bundle nothing is
/// verified (as Envoy), which is refused when SAN matchers ask for a check.
fn validation(
    roots: &tls::CertificateValidationContext,
    defaults: Option<&tls::CertificateValidationContext>,
    loaded: &mut Vec<u8>,
) -> Result<Option<Validation>> {
    for v in [Some(roots), defaults].into_iter().flatten() {
        #[allow(deprecated)]
        let unsupported = [
            (!v.verify_certificate_spki.is_empty(), "verify_certificate_spki"),
            (!v.verify_certificate_hash.is_empty(), "verify_certificate_hash"),
            (!v.match_subject_alt_names.is_empty(), "match_subject_alt_names (use match_typed_subject_alt_names)"),
            (v.crl.is_some(), "crl"),
            (v.allow_expired_certificate, "allow_expired_certificate"),
            (v.custom_validator_config.is_some(), "custom_validator_config"),
            (v.trust_chain_verification != 0, "trust_chain_verification"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(ConfigError::new(*field, "is not supported yet"));
        }
    }
    let matchers = defaults
        .unwrap_or(roots)
        .match_typed_subject_alt_names
        .iter()
        .chain(defaults.map(|_| roots.match_typed_subject_alt_names.as_slice()).unwrap_or_default());
    let sans = matchers
        .enumerate()
        .map(|(i, m)| san_matcher(m).map_err(|e| e.within(&format!("match_typed_subject_alt_names[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    let Some(ca) = roots.trusted_ca.as_ref() else {
        if sans.is_empty() {
            return Ok(None);
        }
        return Err(ConfigError::new(
            "trusted_ca",
            "is required: verifying a peer without a trust bundle is not allowed (as in Envoy)",
        ));
    };
    let ca = convert::data_source(ca, "trusted_ca")?;
    loaded.extend_from_slice(&ca);
    let roots = certs::trust_bundle(&ca).map_err(|e| ConfigError::new("trusted_ca", e))?;
    Ok(Some(Validation { roots, sans }))
}

fn san_matcher(m: &tls::SubjectAltNameMatcher) -> Result<SanMatcher> {
    use tls::subject_alt_name_matcher::SanType as T;
    let san_type = match T::try_from(m.san_type) {
        Ok(T::Dns) => SanType::Dns,
        Ok(T::Uri) => SanType::Uri,
        Ok(T::Email) => SanType::Email,
        Ok(T::IpAddress) => SanType::IpAddress,
        Ok(T::OtherName) => return Err(ConfigError::new("san_type", "OTHER_NAME is not supported")),
        _ => return Err(ConfigError::new("san_type", "a SAN type is required (DNS, URI, EMAIL, IP_ADDRESS)")),
    };
    let matcher = m.matcher.as_ref().ok_or_else(|| ConfigError::new("matcher", "is required"))?;
    Ok(SanMatcher { san_type, matcher: convert::string_matcher(matcher, "matcher")? })
}

/// `tls_params`: versions (TLS 1.3 unless 1.2 is configured, the "1.2 only where configured")
/// and TLS 1.2 cipher suites by OpenSSL name.
fn params(p: Option<&tls::TlsParameters>, _server: bool) -> Result<Params> {
    let (min, max) = p.map_or((0, 0), |p| (p.tls_minimum_protocol_version, p.tls_maximum_protocol_version));
    // 0 AUTO, 1 TLSv1_0, 2 TLSv1_1, 3 TLSv1_2, 4 TLSv1_3. rustls speaks 1.2 and 1.3 only: a lower
    // minimum means 1.2.
    let min = match min {
        0 | 4 => 4,
        1..=3 => 3,
        n => return Err(ConfigError::new("tls_minimum_protocol_version", format!("unknown version {n}"))),
    };
    let max = match max {
        0 | 4 => 4,
        3 => 3,
        1 | 2 => {
            return Err(ConfigError::new(
                "tls_maximum_protocol_version",
                "TLS 1.0 and 1.1 are not supported (1.2 and 1.3 are)",
            ));
        }
        n => return Err(ConfigError::new("tls_maximum_protocol_version", format!("unknown version {n}"))),
    };
    if min > max {
        return Err(ConfigError::new("tls_minimum_protocol_version", "is above tls_maximum_protocol_version"));
    }
    let versions = Versions { tls12: min <= 3, tls13: max >= 4 };
    let mut tls12_suites = Vec::new();
    if let Some(p) = p {
        for (i, entry) in p.cipher_suites.iter().enumerate() {
            // `[A|B]` is BoringSSL's equal-preference group: each name counts.
            for name in entry.trim_matches(|c| c == '[' || c == ']').split('|') {
                match crate::tls::tls12_suite(name) {
                    Some(suite) => tls12_suites.push(suite),
                    // TLS 1.3 suites are not configurable in Envoy either; weak ones are not offered.
                    None => tracing::warn!(
                        cipher = name,
                        at = i,
                        "cipher suite not offered (rustls has only AEAD ECDHE suites)"
                    ),
                }
            }
        }
        if !p.cipher_suites.is_empty() && tls12_suites.is_empty() && versions.tls12 && !versions.tls13 {
            return Err(ConfigError::new("cipher_suites", "none of these suites is supported"));
        }
    }
    Ok(Params { versions, tls12_suites })
}

/// Every file a bootstrap's TLS contexts and secrets read (certificates, keys, trust bundles), so a
/// watcher can reload when one is replaced.
pub fn files(bootstrap: &xds_proto::Bootstrap) -> Vec<std::path::PathBuf> {
    use tls::common_tls_context::ValidationContextType as V;
    let mut out = Vec::new();
    let mut source = |ds: Option<&core::DataSource>| {
        if let Some(core::data_source::Specifier::Filename(f)) = ds.and_then(|d| d.specifier.as_ref()) {
            out.push(std::path::PathBuf::from(f));
        }
    };
    let certificate = |c: &tls::TlsCertificate, source: &mut dyn FnMut(Option<&core::DataSource>)| {
        source(c.certificate_chain.as_ref());
        source(c.private_key.as_ref());
    };
    let Some(resources) = bootstrap.static_resources.as_ref() else { return out };
    let sockets = resources
        .listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.as_ref()))
        .filter_map(|c| c.transport_socket.as_ref())
        .chain(resources.clusters.iter().filter_map(|c| c.transport_socket.as_ref()));
    let commons: Vec<tls::CommonTlsContext> = sockets.filter_map(common_context_of).collect();
    for common in &commons {
        for c in &common.tls_certificates {
            certificate(c, &mut source);
        }
        match &common.validation_context_type {
            Some(V::ValidationContext(v)) => source(v.trusted_ca.as_ref()),
            Some(V::CombinedValidationContext(c)) => {
                source(c.default_validation_context.as_ref().and_then(|v| v.trusted_ca.as_ref()))
            }
            _ => {}
        }
    }
    for secret in &resources.secrets {
        match &secret.r#type {
            Some(tls::secret::Type::TlsCertificate(c)) => certificate(c, &mut source),
            Some(tls::secret::Type::ValidationContext(v)) => source(v.trusted_ca.as_ref()),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}
