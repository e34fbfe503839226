//! `Listener` -> [`ListenerConfig`]: the address and the one terminal network filter, an HTTP
//! connection manager or a TCP proxy.

use super::convert::{self, ConfigError, Result};
use super::route::route_table;
use super::tls::Secrets;
use crate::http::client_cert::{CertDetails, ForwardClientCert};
use crate::http::{Codec, HttpConnectionManager};
use crate::listeners::chains::ChainMatch;
use crate::listeners::{FilterChain, ListenerConfig, ListenerKind};
use crate::net::CidrRange;
use crate::policy::HttpFilter;
use crate::policy::local_ratelimit::ConnectionRateLimit;
use crate::policy::rbac::{NetworkRbac, RbacStats};
use crate::routing::{ClusterTarget, WeightedClusters};
use crate::tcp::TcpProxyConfig;
use crate::telemetry::access_log::{AccessLog, DEFAULT_FORMAT, LogFormat, LogTarget};
use crate::telemetry::{HttpStats, TcpStats};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::accesslog::v3 as accesslog;
use xds_proto::pb::envoy::config::listener::v3 as listener;
use xds_proto::pb::envoy::extensions::access_loggers::{file::v3 as file_log, stream::v3 as stream_log};
use xds_proto::pb::envoy::extensions::filters::http::router::v3 as router_proto;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds_proto::pb::envoy::extensions::filters::network::local_ratelimit::v3 as network_ratelimit;
use xds_proto::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use xds_proto::type_url;

const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const NETWORK_LOCAL_RATELIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
const TLS_INSPECTOR: &str = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// HTTP/2 streams a client may open on one connection when unset: what Envoy 1.40 advertises.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

pub fn listener_config(l: &listener::Listener, secrets: &Secrets) -> Result<ListenerConfig> {
    if l.name.is_empty() {
        return Err(ConfigError::new("name", "a listener name is required"));
    }
    let addr = convert::socket_address(l.address.as_ref(), "address")?;
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(ConfigError::new("filter_chains", "a listener needs a filter chain"));
    }
    let mut chains = Vec::new();
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let at = format!("filter_chains[{i}]");
        let mut converted = filter_chain(chain, secrets).map_err(|e| e.within(&at))?;
        converted.filter_path = format!("{at}.{}", converted.filter_path);
        if let Some(j) = chains.iter().position(|c: &FilterChain| c.matcher == converted.matcher) {
            return Err(ConfigError::new(
                format!("{at}.filter_chain_match"),
                format!("filter_chains[{j}] has the same filter_chain_match"),
            ));
        }
        chains.push(converted);
    }
    let has_default_chain = l.default_filter_chain.is_some();
    if let Some(default) = &l.default_filter_chain {
        if default.filter_chain_match.is_some() {
            return Err(ConfigError::new(
                "default_filter_chain.filter_chain_match",
                "a default chain matches anything",
            ));
        }
        let mut converted = filter_chain(default, secrets).map_err(|e| e.within("default_filter_chain"))?;
        converted.filter_path = format!("default_filter_chain.{}", converted.filter_path);
        chains.push(converted);
    }
    let mut inspect_tls = chains.iter().any(|c| c.matcher.needs_inspection());
    for (i, f) in l.listener_filters.iter().enumerate() {
        let type_url = match &f.config_type {
            Some(listener::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        if f.name == "envoy.filters.listener.tls_inspector" || type_url == TLS_INSPECTOR {
            inspect_tls = true;
        } else {
            return Err(ConfigError::new(
                format!("listener_filters[{i}]"),
                format!("listener filter '{}' is not supported (envoy.filters.listener.tls_inspector is)", f.name),
            ));
        }
    }
    Ok(ListenerConfig {
        name: l.name.clone(),
        addr,
        chains,
        has_default_chain,
        inspect_tls,
        inspect_timeout: convert::timeout(l.listener_filters_timeout.as_ref(), Some(DEFAULT_LISTENER_FILTERS_TIMEOUT))
            .unwrap_or(Duration::MAX),
    })
}

/// One `FilterChain`: its match, its transport socket and its network filters.
fn filter_chain(chain: &listener::FilterChain, secrets: &Secrets) -> Result<FilterChain> {
    let matcher = match &chain.filter_chain_match {
        Some(m) => chain_match(m).map_err(|e| e.within("filter_chain_match"))?,
        None => ChainMatch::default(),
    };
    let tls = match &chain.transport_socket {
        Some(socket) => {
            super::tls::downstream(socket, secrets).map_err(|e| e.within("transport_socket"))?.map(Arc::new)
        }
        None => None,
    };
    let Some((filter, before)) = chain.filters.split_last() else {
        return Err(ConfigError::new("filters", "a filter chain needs a network filter"));
    };
    let mut connection_limits = Vec::new();
    let mut authorization = Vec::new();
    for (i, f) in before.iter().enumerate() {
        match network_filter(f).map_err(|e| e.within(&format!("filters[{i}]")))? {
            NetworkFilter::RateLimit(limit) => connection_limits.push(limit),
            NetworkFilter::Rbac(rbac) => authorization.push(rbac),
        }
    }
    let at = format!("filters[{}]", before.len());
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(ConfigError::new(format!("{at}.typed_config"), "typed_config is required"));
    };
    let kind = match any.type_url.as_str() {
        type_url::HTTP_CONNECTION_MANAGER => {
            let proto: hcm::HttpConnectionManager = convert::unpack(any, &at)?;
            ListenerKind::Http(Arc::new(
                http_connection_manager(&proto).map_err(|e| e.within(&format!("{at}.typed_config")))?,
            ))
        }
        type_url::TCP_PROXY => {
            let proto: tcp_proxy::TcpProxy = convert::unpack(any, &at)?;
            ListenerKind::Tcp(Arc::new(tcp_proxy_config(&proto).map_err(|e| e.within(&format!("{at}.typed_config")))?))
        }
        other => {
            return Err(ConfigError::new(
                format!("{at}.typed_config"),
                format!("network filter {other} is not supported (http_connection_manager and tcp_proxy are)"),
            ));
        }
    };
    Ok(FilterChain {
        name: chain.name.clone(),
        matcher,
        tls,
        kind,
        connection_limits,
        authorization,
        filter_path: format!("{at}.typed_config"),
        handshake_timeout: convert::timeout(chain.transport_socket_connect_timeout.as_ref(), None),
    })
}

/// `FilterChainMatch`: the criteria Strait implements; the others are refused, not ignored (they
/// would route connections to the wrong chain).
fn chain_match(m: &listener::FilterChainMatch) -> Result<ChainMatch> {
    let unsupported = [
        (!m.direct_source_prefix_ranges.is_empty(), "direct_source_prefix_ranges"),
        (m.source_type != 0, "source_type"),
        (!m.address_suffix.is_empty() || m.suffix_len.is_some(), "address_suffix"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(ConfigError::new(*field, "is not supported yet"));
    }
    let ranges = |ranges: &[xds_proto::pb::envoy::config::core::v3::CidrRange], field: &str| {
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| convert::cidr_range(r).map_err(|e| e.within(&format!("{field}[{i}]"))))
            .collect::<Result<Vec<_>>>()
    };
    let destination_port = match m.destination_port.map(|p| p.value) {
        None => None,
        Some(p) => Some(u16::try_from(p).map_err(|_| ConfigError::new("destination_port", "is not a port"))?),
    };
    let source_ports = m
        .source_ports
        .iter()
        .map(|p| u16::try_from(*p).map_err(|_| ConfigError::new("source_ports", format!("{p} is not a port"))))
        .collect::<Result<Vec<_>>>()?;
    for (i, name) in m.server_names.iter().enumerate() {
        if name.is_empty() || (name.contains('*') && !name.starts_with("*.")) || name[1..].contains('*') {
            return Err(ConfigError::new(
                format!("server_names[{i}]"),
                format!("'{name}' is not a server name or a '*.suffix' wildcard"),
            ));
        }
    }
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        t @ ("tls" | "raw_buffer") => Some(t.to_string()),
        other => {
            return Err(ConfigError::new(
                "transport_protocol",
                format!("'{other}' is not a transport protocol (tls or raw_buffer)"),
            ));
        }
    };
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
        // A wildcard keeps its dot: "*.example.com" matches by the suffix ".example.com".
        server_names: m.server_names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        transport_protocol,
        application_protocols: m.application_protocols.clone(),
        source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

/// A network filter ahead of the terminal one.
enum NetworkFilter {
    RateLimit(ConnectionRateLimit),
    Rbac(NetworkRbac),
}

/// A network filter ahead of the terminal one: `envoy.filters.network.local_ratelimit` or
/// `envoy.filters.network.rbac`.
fn network_filter(f: &listener::Filter) -> Result<NetworkFilter> {
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(ConfigError::new("typed_config", "typed_config is required"));
    };
    match any.type_url.as_str() {
        NETWORK_LOCAL_RATELIMIT => {
            let proto: network_ratelimit::LocalRateLimit = convert::unpack(any, "typed_config")?;
            if proto.stat_prefix.is_empty() {
                return Err(ConfigError::new("typed_config.stat_prefix", "is required"));
            }
            let bucket = proto
                .token_bucket
                .as_ref()
                .ok_or_else(|| ConfigError::new("typed_config.token_bucket", "is required"))?;
            let bucket = super::filters::token_bucket(bucket).map_err(|e| e.within("typed_config.token_bucket"))?;
            Ok(NetworkFilter::RateLimit(ConnectionRateLimit::new(bucket, &proto.stat_prefix)))
        }
        NETWORK_RBAC => {
            let proto: network_rbac::Rbac = convert::unpack(any, "typed_config")?;
            if proto.stat_prefix.is_empty() {
                return Err(ConfigError::new("typed_config.stat_prefix", "is required"));
            }
            if proto.enforcement_type != 0 {
                return Err(ConfigError::new(
                    "typed_config.enforcement_type",
                    "only ONE_TIME_ON_FIRST_BYTE is supported",
                ));
            }
            let rbac = super::rbac::filter(
                proto.rules.as_ref(),
                proto.shadow_rules.as_ref(),
                proto.matcher.is_some() || proto.shadow_matcher.is_some(),
            )
            .map_err(|e| e.within("typed_config"))?;
            Ok(NetworkFilter::Rbac(NetworkRbac { rbac, stats: RbacStats::network(&proto.stat_prefix) }))
        }
        other => Err(ConfigError::new(
            "typed_config",
            format!(
                "network filter {other} is not supported before the last filter \
                 (envoy.filters.network.local_ratelimit and envoy.filters.network.rbac are)"
            ),
        )),
    }
}

fn http_connection_manager(h: &hcm::HttpConnectionManager) -> Result<HttpConnectionManager> {
    use hcm::http_connection_manager::RouteSpecifier;
    if h.stat_prefix.is_empty() {
        return Err(ConfigError::new("stat_prefix", "a stat_prefix is required"));
    }
    let codec = match h.codec_type {
        0 => Codec::Auto,
        1 => Codec::Http1,
        2 => Codec::Http2,
        3 => return Err(ConfigError::new("codec_type", "HTTP/3 is not supported")),
        n => return Err(ConfigError::new("codec_type", format!("unknown codec type {n}"))),
    };
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => route_table(rc).map_err(|e| e.within("route_config"))?,
        Some(RouteSpecifier::Rds(_)) => {
            return Err(ConfigError::new("rds", "RDS needs the control plane (not supported in a static file yet)"));
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ConfigError::new("scoped_routes", "scoped routes are not supported"));
        }
        None => return Err(ConfigError::new("route_config", "an inline route_config is required")),
    };
    let (filters, router) = http_filters(&h.http_filters, &h.stat_prefix)?;
    let upgrades = h
        .upgrade_configs
        .iter()
        .filter(|u| u.enabled.is_none_or(|e| e.value))
        .map(|u| {
            if u.filters.is_empty() {
                Ok(u.upgrade_type.to_ascii_lowercase())
            } else {
                Err(ConfigError::new("upgrade_configs.filters", "per-upgrade filter chains are not supported"))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let common = h.common_http_protocol_options.as_ref();
    if let Some(c) = common {
        for (set, field) in [
            (c.max_requests_per_connection.is_some(), "max_requests_per_connection"),
            (c.max_connection_duration.is_some(), "max_connection_duration"),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("common_http_protocol_options.{field}"),
                    "is not supported yet for downstream connections",
                ));
            }
        }
    }
    let max_headers_count = common.and_then(|c| c.max_headers_count).map_or(100, |v| v.value) as usize;
    let max_request_headers_kb = h.max_request_headers_kb.map_or(60, |v| v.value);
    if !(1..=8192).contains(&max_request_headers_kb) {
        return Err(ConfigError::new("max_request_headers_kb", "must be in 1..8192"));
    }
    let mut http2 = match &h.http2_protocol_options {
        Some(h2) => convert::http2_options(h2, "http2_protocol_options")?,
        None => crate::http::Http2Options::default(),
    };
    http2.max_concurrent_streams.get_or_insert(DEFAULT_MAX_CONCURRENT_STREAMS);
    let strip_any_host_port =
        matches!(h.strip_port_mode, Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)));
    let access_logs = access_logs(&h.access_log)?;
    Ok(HttpConnectionManager {
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        stream_idle_timeout: convert::timeout(h.stream_idle_timeout.as_ref(), Some(DEFAULT_STREAM_IDLE_TIMEOUT)),
        request_timeout: convert::timeout(h.request_timeout.as_ref(), None),
        idle_timeout: convert::timeout(
            common.and_then(|c| c.idle_timeout.as_ref()),
            Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
        ),
        use_remote_address: h.use_remote_address.is_some_and(|b| b.value),
        internal_addresses: internal_addresses(h.internal_address_config.as_ref())?,
        xff_num_trusted_hops: h.xff_num_trusted_hops,
        skip_xff_append: h.skip_xff_append,
        generate_request_id: h.generate_request_id.is_none_or(|b| b.value),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        server_name: http::HeaderValue::from_str(if h.server_name.is_empty() { "strait" } else { &h.server_name })
            .map_err(|_| ConfigError::new("server_name", "not a valid header value"))?,
        max_request_headers_bytes: max_request_headers_kb as usize * 1024,
        max_headers_count,
        http2,
        strip_any_host_port,
        upgrades,
        access_logs,
        suppress_envoy_headers: router.suppress_envoy_headers,
        filters,
        max_stream_duration: convert::timeout(common.and_then(|c| c.max_stream_duration.as_ref()), None),
        forward_client_cert: forward_client_cert(h.forward_client_cert_details)?,
        client_cert_details: h.set_current_client_cert_details.map_or(Default::default(), |d| CertDetails {
            subject: d.subject.is_some_and(|b| b.value),
            cert: d.cert,
            uri: d.uri,
            dns: d.dns,
        }),
        stats: HttpStats::new(&h.stat_prefix),
    })
}

fn forward_client_cert(mode: i32) -> Result<ForwardClientCert> {
    Ok(match mode {
        0 => ForwardClientCert::Sanitize,
        1 => ForwardClientCert::ForwardOnly,
        2 => ForwardClientCert::AppendForward,
        3 => ForwardClientCert::SanitizeSet,
        4 => ForwardClientCert::AlwaysForwardOnly,
        n => return Err(ConfigError::new("forward_client_cert_details", format!("unknown mode {n}"))),
    })
}

/// `internal_address_config`: the client ranges whose requests are internal (none unless configured).
fn internal_addresses(config: Option<&hcm::http_connection_manager::InternalAddressConfig>) -> Result<Vec<CidrRange>> {
    let Some(config) = config else { return Ok(Vec::new()) };
    config
        .cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            convert::cidr_range(r).map_err(|e| e.within(&format!("internal_address_config.cidr_ranges[{i}]")))
        })
        .collect()
}

/// Checks the HTTP filter list (it must end in the router) and returns the router's config.
fn http_filters(filters: &[hcm::HttpFilter], stat_prefix: &str) -> Result<(Vec<HttpFilter>, RouterConfig)> {
    let Some((last, rest)) = filters.split_last() else {
        return Err(ConfigError::new("http_filters", "the filter list must end with envoy.filters.http.router"));
    };
    let is_router = |f: &hcm::HttpFilter| match &f.config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(any)) => any.type_url == type_url::ROUTER,
        None => f.name == "envoy.filters.http.router",
        Some(_) => false,
    };
    if !is_router(last) {
        return Err(ConfigError::new(
            format!("http_filters[{}]", filters.len() - 1),
            "the last HTTP filter must be envoy.filters.http.router",
        ));
    }
    let router = match &last.config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(any)) => {
            convert::unpack::<router_proto::Router>(any, &format!("http_filters[{}]", filters.len() - 1))?
        }
        _ => router_proto::Router::default(),
    };
    let mut out = Vec::new();
    for (i, f) in rest.iter().enumerate() {
        if let Some(filter) =
            super::filters::http_filter(f, stat_prefix).map_err(|e| e.within(&format!("http_filters[{i}]")))?
        {
            out.push(filter);
        }
    }
    Ok((out, RouterConfig { suppress_envoy_headers: router.suppress_envoy_headers }))
}

/// The router filter's settings Strait honours.
struct RouterConfig {
    suppress_envoy_headers: bool,
}

fn access_logs(logs: &[accesslog::AccessLog]) -> Result<Vec<AccessLog>> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| {
            let at = format!("access_log[{i}]");
            if log.filter.is_some() {
                return Err(ConfigError::new(format!("{at}.filter"), "access log filters are not supported yet"));
            }
            let Some(accesslog::access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
                return Err(ConfigError::new(format!("{at}.typed_config"), "typed_config is required"));
            };
            let (target, format) =
                if any.type_url == "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog" {
                    let f: file_log::FileAccessLog = convert::unpack(any, &at)?;
                    use file_log::file_access_log::AccessLogFormat as F;
                    #[allow(deprecated)]
                    let format = match &f.access_log_format {
                        None => DEFAULT_FORMAT.to_string(),
                        Some(F::Format(s)) if s.is_empty() => DEFAULT_FORMAT.to_string(),
                        Some(F::Format(s)) => s.clone(),
                        Some(F::LogFormat(sf)) => substitution_format(sf, &at)?,
                        Some(_) => {
                            return Err(ConfigError::new(
                                format!("{at}.typed_config"),
                                "JSON access logs are not supported yet",
                            ));
                        }
                    };
                    let target = match f.path.as_str() {
                        "/dev/stdout" => LogTarget::Stdout,
                        "/dev/stderr" => LogTarget::Stderr,
                        p => LogTarget::File(p.into()),
                    };
                    (target, format)
                } else if let Some(stream) =
                    any.type_url.strip_prefix("type.googleapis.com/envoy.extensions.access_loggers.stream.v3.")
                {
                    let target = match stream {
                        "StdoutAccessLog" => LogTarget::Stdout,
                        "StderrAccessLog" => LogTarget::Stderr,
                        other => {
                            return Err(ConfigError::new(
                                format!("{at}.typed_config"),
                                format!("unsupported logger {other}"),
                            ));
                        }
                    };
                    // Stdout and stderr loggers share one message shape.
                    let s: stream_log::StdoutAccessLog = prost::Message::decode(any.value.as_slice())
                        .map_err(|e| ConfigError::new(format!("{at}.typed_config"), format!("cannot decode: {e}")))?;
                    let format = match &s.access_log_format {
                        None => DEFAULT_FORMAT.to_string(),
                        Some(stream_log::stdout_access_log::AccessLogFormat::LogFormat(sf)) => {
                            substitution_format(sf, &at)?
                        }
                    };
                    (target, format)
                } else {
                    return Err(ConfigError::new(
                        format!("{at}.typed_config"),
                        format!("access logger {} is not supported", any.type_url),
                    ));
                };
            let format = LogFormat::parse(&format).map_err(|e| ConfigError::new(format!("{at}.typed_config"), e))?;
            AccessLog::open(target, format).map_err(|e| ConfigError::new(at, format!("cannot open: {e}")))
        })
        .collect()
}

fn substitution_format(
    sf: &xds_proto::pb::envoy::config::core::v3::SubstitutionFormatString,
    at: &str,
) -> Result<String> {
    use xds_proto::pb::envoy::config::core::v3::substitution_format_string::Format as F;
    match &sf.format {
        #[allow(deprecated)]
        Some(F::TextFormat(s)) => Ok(s.clone()),
        Some(F::TextFormatSource(ds)) => {
            let bytes = convert::data_source(ds, &format!("{at}.log_format.text_format_source"))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Some(F::JsonFormat(_)) => {
            Err(ConfigError::new(format!("{at}.log_format.json_format"), "JSON access logs are not supported yet"))
        }
        None => Ok(DEFAULT_FORMAT.to_string()),
    }
}

fn tcp_proxy_config(t: &tcp_proxy::TcpProxy) -> Result<TcpProxyConfig> {
    use tcp_proxy::tcp_proxy::ClusterSpecifier as C;
    if t.stat_prefix.is_empty() {
        return Err(ConfigError::new("stat_prefix", "a stat_prefix is required"));
    }
    let target = match &t.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterTarget::Single(c.clone()),
        Some(C::WeightedClusters(w)) => {
            let weighted = WeightedClusters::new(w.clusters.iter().map(|c| (c.name.clone(), c.weight)).collect());
            if weighted.total == 0 {
                return Err(ConfigError::new("weighted_clusters", "the sum of the weights must be greater than 0"));
            }
            ClusterTarget::Weighted(weighted)
        }
        _ => return Err(ConfigError::new("cluster", "one of cluster or weighted_clusters is required")),
    };
    Ok(TcpProxyConfig {
        stat_prefix: t.stat_prefix.clone(),
        target,
        idle_timeout: convert::timeout(t.idle_timeout.as_ref(), Some(DEFAULT_TCP_IDLE_TIMEOUT)),
        stats: TcpStats::new(&t.stat_prefix),
    })
}
