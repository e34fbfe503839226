//! `Cluster` -> [`ClusterConfig`]: discovery type, endpoints, load-balancing policy, upstream protocol,
//! circuit breakers.

use super::convert::{self, ConfigError, Result};
use crate::upstream::breakers::{RetryBudget, Thresholds};
use crate::upstream::health::{HealthCheckConfig, Probe};
use crate::upstream::outlier::OutlierConfig;
use crate::upstream::transport::UpstreamTls;
use crate::upstream::{
    ClusterConfig, Discovery, DnsFamily, EndpointSpec, HealthStatus, LbPolicy, PoolOptions, UpstreamProtocol,
};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::cluster::v3 as cluster;
use xds_proto::pb::envoy::config::core::v3 as core;
use xds_proto::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use xds_proto::type_url;

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

pub fn cluster_config(c: &cluster::Cluster, secrets: &super::tls::Secrets) -> Result<ClusterConfig> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    if c.name.is_empty() {
        return Err(ConfigError::new("name", "a cluster name is required"));
    }
    let discovery = match &c.cluster_discovery_type {
        None => Discovery::Static,
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Static) => Discovery::Static,
            Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
            Ok(DiscoveryType::LogicalDns) => Discovery::LogicalDns,
            Ok(DiscoveryType::Eds) => {
                return Err(ConfigError::new(
                    "type",
                    "EDS clusters need the control plane (not supported in a static file yet)",
                ));
            }
            Ok(other) => {
                return Err(ConfigError::new("type", format!("{} clusters are not supported", other.as_str_name())));
            }
            Err(_) => return Err(ConfigError::new("type", format!("unknown discovery type {t}"))),
        },
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(ConfigError::new(
                "cluster_type",
                format!("custom cluster type '{}' is not supported", ct.name),
            ));
        }
    };
    let lb_policy = match &c.load_balancing_policy {
        Some(typed) => typed_lb_policy(typed).map_err(|e| e.within("load_balancing_policy"))?,
        None => legacy_lb_policy(c)?,
    };

    let endpoints = endpoints(c, discovery)?;
    if discovery == Discovery::LogicalDns && endpoints.len() != 1 {
        return Err(ConfigError::new("load_assignment", "a LOGICAL_DNS cluster needs exactly one endpoint"));
    }
    let (protocol, pool) = protocol(c)?;
    let dns_family = match cluster::cluster::DnsLookupFamily::try_from(c.dns_lookup_family) {
        Ok(cluster::cluster::DnsLookupFamily::Auto) => DnsFamily::Auto,
        Ok(cluster::cluster::DnsLookupFamily::V4Only) => DnsFamily::V4Only,
        Ok(cluster::cluster::DnsLookupFamily::V6Only) => DnsFamily::V6Only,
        Ok(cluster::cluster::DnsLookupFamily::V4Preferred) => DnsFamily::V4Preferred,
        Ok(cluster::cluster::DnsLookupFamily::All) => DnsFamily::All,
        Err(_) => return Err(ConfigError::new("dns_lookup_family", format!("unknown value {}", c.dns_lookup_family))),
    };
    #[allow(deprecated)]
    let dns_refresh_rate = c.dns_refresh_rate.as_ref().map_or(DEFAULT_DNS_REFRESH, convert::duration);
    if dns_refresh_rate < Duration::from_millis(1) {
        return Err(ConfigError::new("dns_refresh_rate", "must be at least 1ms"));
    }
    let connect_timeout = c.connect_timeout.as_ref().map_or(DEFAULT_CONNECT_TIMEOUT, convert::duration);
    if connect_timeout.is_zero() {
        return Err(ConfigError::new("connect_timeout", "must be greater than 0"));
    }
    let breakers = circuit_breakers(c.circuit_breakers.as_ref()).map_err(|e| e.within("circuit_breakers"))?;
    let outlier = match &c.outlier_detection {
        Some(o) => Some(outlier_detection(o).map_err(|e| e.within("outlier_detection"))?),
        None => None,
    };
    let health_check = match c.health_checks.as_slice() {
        [] => None,
        [one] => Some(health_check(one).map_err(|e| e.within("health_checks[0]"))?),
        _ => return Err(ConfigError::new("health_checks", "only one health check per cluster is supported yet")),
    };
    let panic_threshold = match c.common_lb_config.as_ref().and_then(|l| l.healthy_panic_threshold.as_ref()) {
        Some(p) if (0.0..=100.0).contains(&p.value) => p.value.ceil() as u32,
        Some(_) => {
            return Err(ConfigError::new("common_lb_config.healthy_panic_threshold.value", "must be 0-100"));
        }
        None => 50,
    };
    let (overprovisioning_factor, weighted_priority_health) = load_policy(c)?;
    if !c.transport_socket_matches.is_empty() {
        return Err(ConfigError::new("transport_socket_matches", "is not supported yet"));
    }
    let tls = match &c.transport_socket {
        Some(socket) => super::tls::upstream(socket, secrets)
            .map_err(|e| e.within("transport_socket"))?
            .map(|(client, fingerprint)| UpstreamTls { client: Arc::new(client), fingerprint }),
        None => None,
    };
    Ok(ClusterConfig {
        name: c.name.clone(),
        discovery,
        endpoints,
        connect_timeout,
        lb_policy,
        protocol,
        dns_refresh_rate,
        dns_family,
        pool,
        breakers,
        outlier,
        health_check,
        panic_threshold,
        overprovisioning_factor,
        tls,
        weighted_priority_health,
        locality_weighted: c.common_lb_config.as_ref().is_some_and(|l| {
            matches!(
                l.locality_config_specifier,
                Some(cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            )
        }),
    })
}

/// The highest priority number accepted (levels are kept as an array).
const MAX_PRIORITY: u32 = 127;

/// `load_assignment.policy`: the overprovisioning factor (percent, Envoy's default 140) and whether
/// a priority level's health is weighed by endpoint weights.
fn load_policy(c: &cluster::Cluster) -> Result<(u32, bool)> {
    let Some(policy) = c.load_assignment.as_ref().and_then(|la| la.policy.as_ref()) else { return Ok((140, false)) };
    if !policy.drop_overloads.is_empty() {
        return Err(ConfigError::new("load_assignment.policy.drop_overloads", "is not supported yet"));
    }
    let factor = policy.overprovisioning_factor.map_or(140, |f| f.value);
    if factor == 0 {
        return Err(ConfigError::new("load_assignment.policy.overprovisioning_factor", "must be greater than 0"));
    }
    Ok((factor, policy.weighted_priority_health))
}

/// A `HealthCheck`: HTTP, TCP or gRPC, with Envoy's defaults where a field is optional.
fn health_check(h: &core::HealthCheck) -> Result<HealthCheckConfig> {
    use core::health_check::HealthChecker as K;
    use core::health_check::payload::Payload as P;
    let required = |d: &Option<xds_proto::pb::google::protobuf::Duration>, field: &str| match d {
        Some(d) if !convert::duration(d).is_zero() => Ok(convert::duration(d)),
        _ => Err(ConfigError::new(field, "required, greater than zero")),
    };
    let threshold = |v: &Option<xds_proto::pb::google::protobuf::UInt32Value>, field: &str| match v {
        Some(v) => Ok(v.value.max(1)),
        None => Err(ConfigError::new(field, "required")),
    };
    let payload = |p: &core::health_check::Payload, field: &str| match &p.payload {
        Some(P::Text(hex)) => decode_hex(hex).ok_or_else(|| ConfigError::new(format!("{field}.text"), "not hex")),
        Some(P::Binary(bytes)) => Ok(bytes.clone()),
        None => Err(ConfigError::new(field, "text or binary is required")),
    };
    for (set, field) in [
        (h.alt_port.is_some(), "alt_port"),
        (h.tls_options.is_some(), "tls_options"),
        (h.transport_socket_match_criteria.is_some(), "transport_socket_match_criteria"),
        (h.unhealthy_edge_interval.is_some(), "unhealthy_edge_interval"),
        (h.healthy_edge_interval.is_some(), "healthy_edge_interval"),
        (h.no_traffic_healthy_interval.is_some(), "no_traffic_healthy_interval"),
    ] {
        if set {
            return Err(ConfigError::new(field, "is not supported yet"));
        }
    }
    let interval = required(&h.interval, "interval")?;
    let probe = match &h.health_checker {
        Some(K::HttpHealthCheck(http)) => {
            if !http.path.starts_with('/') {
                return Err(ConfigError::new("http_health_check.path", "required, starting with /"));
            }
            let mut expected = Vec::new();
            for (i, r) in http.expected_statuses.iter().enumerate() {
                if !(100..=600).contains(&r.start) || r.end <= r.start || r.end > 600 {
                    return Err(ConfigError::new(
                        format!("http_health_check.expected_statuses[{i}]"),
                        "not a status range",
                    ));
                }
                expected.push((r.start as u16, r.end as u16));
            }
            if expected.is_empty() {
                expected.push((200, 201));
            }
            if !http.request_headers_to_add.is_empty() || !http.request_headers_to_remove.is_empty() {
                return Err(ConfigError::new("http_health_check.request_headers_to_add", "is not supported yet"));
            }
            Probe::Http {
                host: (!http.host.is_empty()).then(|| http.host.clone()),
                path: http.path.clone(),
                expected,
                http2: http.codec_client_type == xds_proto::pb::envoy::r#type::v3::CodecClientType::Http2 as i32,
            }
        }
        Some(K::TcpHealthCheck(tcp)) => Probe::Tcp {
            send: match &tcp.send {
                Some(p) => payload(p, "tcp_health_check.send")?,
                None => Vec::new(),
            },
            receive: tcp
                .receive
                .iter()
                .enumerate()
                .map(|(i, p)| payload(p, &format!("tcp_health_check.receive[{i}]")))
                .collect::<Result<_>>()?,
        },
        Some(K::GrpcHealthCheck(grpc)) => Probe::Grpc {
            service: grpc.service_name.clone(),
            authority: (!grpc.authority.is_empty()).then(|| grpc.authority.clone()),
        },
        Some(K::CustomHealthCheck(_)) => {
            return Err(ConfigError::new("custom_health_check", "is not supported"));
        }
        None => return Err(ConfigError::new("", "one of http_health_check, tcp_health_check or grpc_health_check")),
    };
    Ok(HealthCheckConfig {
        timeout: required(&h.timeout, "timeout")?,
        interval,
        initial_jitter: h.initial_jitter.as_ref().map(convert::duration).unwrap_or_default(),
        interval_jitter: h.interval_jitter.as_ref().map(convert::duration).unwrap_or_default(),
        interval_jitter_percent: h.interval_jitter_percent,
        unhealthy_threshold: threshold(&h.unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(&h.healthy_threshold, "healthy_threshold")?,
        no_traffic_interval: h.no_traffic_interval.as_ref().map_or(Duration::from_secs(60), convert::duration),
        unhealthy_interval: h.unhealthy_interval.as_ref().map_or(interval, convert::duration),
        probe,
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `OutlierDetection` with Envoy's defaults for what is not set.
fn outlier_detection(o: &cluster::OutlierDetection) -> Result<OutlierConfig> {
    if !o.monitors.is_empty() {
        return Err(ConfigError::new("monitors", "is not supported"));
    }
    let d = OutlierConfig::default();
    let n = |v: &Option<xds_proto::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    let percent = |v: &Option<xds_proto::pb::google::protobuf::UInt32Value>, default: u32, field: &str| match v {
        Some(v) if v.value > 100 => Err(ConfigError::new(field, "must be 0-100")),
        _ => Ok(n(v, default)),
    };
    let time = |v: &Option<xds_proto::pb::google::protobuf::Duration>, default: Duration| {
        v.as_ref().map_or(default, convert::duration)
    };
    let interval = time(&o.interval, d.interval);
    if interval.is_zero() {
        return Err(ConfigError::new("interval", "must be greater than zero"));
    }
    Ok(OutlierConfig {
        consecutive_5xx: n(&o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: n(&o.consecutive_gateway_failure, d.consecutive_gateway_failure),
        interval,
        base_ejection_time: time(&o.base_ejection_time, d.base_ejection_time),
        max_ejection_time: time(&o.max_ejection_time, d.max_ejection_time),
        max_ejection_time_jitter: time(&o.max_ejection_time_jitter, d.max_ejection_time_jitter),
        max_ejection_percent: percent(&o.max_ejection_percent, d.max_ejection_percent, "max_ejection_percent")?,
        always_eject_one_host: o.always_eject_one_host.as_ref().is_some_and(|b| b.value),
        enforcing_consecutive_5xx: percent(
            &o.enforcing_consecutive_5xx,
            d.enforcing_consecutive_5xx,
            "enforcing_consecutive_5xx",
        )?,
        enforcing_consecutive_gateway_failure: percent(
            &o.enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure",
        )?,
        enforcing_success_rate: percent(&o.enforcing_success_rate, d.enforcing_success_rate, "enforcing_success_rate")?,
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: n(&o.consecutive_local_origin_failure, d.consecutive_local_origin_failure),
        enforcing_consecutive_local_origin_failure: percent(
            &o.enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
            "enforcing_consecutive_local_origin_failure",
        )?,
        enforcing_local_origin_success_rate: percent(
            &o.enforcing_local_origin_success_rate,
            d.enforcing_local_origin_success_rate,
            "enforcing_local_origin_success_rate",
        )?,
        enforcing_failure_percentage_local_origin: percent(
            &o.enforcing_failure_percentage_local_origin,
            d.enforcing_failure_percentage_local_origin,
            "enforcing_failure_percentage_local_origin",
        )?,
        success_rate_minimum_hosts: n(&o.success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: n(&o.success_rate_request_volume, d.success_rate_request_volume),
        success_rate_stdev_factor: n(&o.success_rate_stdev_factor, d.success_rate_stdev_factor),
        failure_percentage_threshold: percent(
            &o.failure_percentage_threshold,
            d.failure_percentage_threshold,
            "failure_percentage_threshold",
        )?,
        enforcing_failure_percentage: percent(
            &o.enforcing_failure_percentage,
            d.enforcing_failure_percentage,
            "enforcing_failure_percentage",
        )?,
        failure_percentage_minimum_hosts: n(&o.failure_percentage_minimum_hosts, d.failure_percentage_minimum_hosts),
        failure_percentage_request_volume: n(&o.failure_percentage_request_volume, d.failure_percentage_request_volume),
    })
}

/// The default priority's thresholds.
fn circuit_breakers(cb: Option<&cluster::CircuitBreakers>) -> Result<Thresholds> {
    let mut out = Thresholds::default();
    let Some(cb) = cb else { return Ok(out) };
    for t in &cb.per_host_thresholds {
        // As in Envoy, only `max_connections` applies per host; the other fields are ignored.
        if t.priority == core::RoutingPriority::Default as i32 {
            out.max_connections_per_host = t.max_connections.map_or(out.max_connections_per_host, |v| v.value);
        }
    }
    for (i, t) in cb.thresholds.iter().enumerate() {
        let at = format!("thresholds[{i}]");
        // HIGH priority thresholds apply to high-priority routes, which Strait does not have.
        if t.priority == core::RoutingPriority::Default as i32 {
            out.max_connection_pools = t.max_connection_pools.map_or(out.max_connection_pools, |v| v.value);
            out.max_connections = t.max_connections.map_or(out.max_connections, |v| v.value);
            out.max_pending_requests = t.max_pending_requests.map_or(out.max_pending_requests, |v| v.value);
            out.max_requests = t.max_requests.map_or(out.max_requests, |v| v.value);
            out.max_retries = t.max_retries.map_or(out.max_retries, |v| v.value);
            if let Some(budget) = &t.retry_budget {
                let percent = budget.budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(ConfigError::new(format!("{at}.retry_budget.budget_percent"), "must be 0 to 100"));
                }
                let min_concurrency = budget.min_retry_concurrency.as_ref().map_or(3, |v| v.value);
                out.retry_budget = Some(RetryBudget { percent, min_concurrency });
            }
        }
    }
    Ok(out)
}

fn endpoints(c: &cluster::Cluster, discovery: Discovery) -> Result<Vec<EndpointSpec>> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    use xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut out = Vec::new();
    let Some(la) = &c.load_assignment else { return Ok(out) };
    for (i, locality) in la.endpoints.iter().enumerate() {
        // Envoy's limit: priorities are levels of an array, 0 the highest.
        if locality.priority > MAX_PRIORITY {
            return Err(ConfigError::new(
                format!("load_assignment.endpoints[{i}].priority"),
                format!("must be at most {MAX_PRIORITY}"),
            ));
        }
        for (j, lbe) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("load_assignment.endpoints[{i}].lb_endpoints[{j}]");
            let endpoint = match &lbe.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                _ => return Err(ConfigError::new(format!("{at}.endpoint"), "an endpoint with an address is required")),
            };
            let Some(A::SocketAddress(sa)) = endpoint.address.as_ref().and_then(|a| a.address.as_ref()) else {
                return Err(ConfigError::new(format!("{at}.endpoint.address"), "a socket_address is required"));
            };
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) if (1..=u32::from(u16::MAX)).contains(&p) => p as u16,
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.endpoint.address.socket_address.port_value"),
                        "a port in 1..65535 is required",
                    ));
                }
            };
            if discovery == Discovery::Static && sa.address.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::new(
                    format!("{at}.endpoint.address.socket_address.address"),
                    format!(
                        "'{}' is not an IP address (a STATIC cluster needs IPs; use STRICT_DNS for names)",
                        sa.address
                    ),
                ));
            }
            let weight = lbe.load_balancing_weight.map_or(1, |w| w.value);
            if weight == 0 {
                return Err(ConfigError::new(format!("{at}.load_balancing_weight"), "must be at least 1"));
            }
            let health = match lbe.health_status {
                0 => HealthStatus::Unknown,
                1 => HealthStatus::Healthy,
                2 => HealthStatus::Unhealthy,
                3 => HealthStatus::Draining,
                4 => HealthStatus::Timeout,
                5 => HealthStatus::Degraded,
                n => return Err(ConfigError::new(format!("{at}.health_status"), format!("unknown value {n}"))),
            };
            let weight_of_locality = locality.load_balancing_weight.map_or(0, |w| w.value);
            let place = crate::upstream::Locality { index: i as u32, weight: weight_of_locality };
            out.push(EndpointSpec {
                host: sa.address.clone(),
                port,
                weight,
                health,
                priority: locality.priority,
                locality: place,
            });
        }
    }
    Ok(out)
}

fn protocol(c: &cluster::Cluster) -> Result<(UpstreamProtocol, PoolOptions)> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig as PC;
    let mut pool = PoolOptions::default();
    let mut protocol = UpstreamProtocol::Http1;
    #[allow(deprecated)]
    if let Some(h2) = &c.http2_protocol_options {
        protocol = UpstreamProtocol::Http2;
        pool.http2 = convert::http2_options(h2, "http2_protocol_options")?;
    }
    for (key, any) in &c.typed_extension_protocol_options {
        let at = format!("typed_extension_protocol_options[\"{key}\"]");
        if any.type_url != type_url::HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::new(at, format!("unsupported protocol options type {}", any.type_url)));
        }
        let opts: upstream_http::HttpProtocolOptions = convert::unpack(any, &at)?;
        if let Some(common) = &opts.common_http_protocol_options {
            connection_lifetimes(&mut pool, common)
                .map_err(|e| e.within(&format!("{at}.common_http_protocol_options")))?;
        }
        match &opts.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(PC::HttpProtocolOptions(_)) | None => protocol = UpstreamProtocol::Http1,
                Some(PC::Http2ProtocolOptions(h2)) => {
                    protocol = UpstreamProtocol::Http2;
                    pool.http2 =
                        convert::http2_options(h2, &format!("{at}.explicit_http_config.http2_protocol_options"))?;
                }
                Some(PC::Http3ProtocolOptions(_)) => {
                    return Err(ConfigError::new(
                        format!("{at}.explicit_http_config"),
                        "HTTP/3 upstreams are not supported",
                    ));
                }
            },
            Some(U::UseDownstreamProtocolConfig(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.use_downstream_protocol_config"),
                    "not supported yet; use explicit_http_config",
                ));
            }
            Some(U::AutoConfig(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.auto_config"),
                    "ALPN auto config needs TLS, which is not supported yet",
                ));
            }
            None => {}
        }
    }
    Ok((protocol, pool))
}

/// `idle_timeout` (default 1 h, 0 never), `max_requests_per_connection`, `max_connection_duration`
/// of upstream connections.
fn connection_lifetimes(pool: &mut PoolOptions, common: &core::HttpProtocolOptions) -> Result<()> {
    if common.max_stream_duration.is_some() {
        return Err(ConfigError::new("max_stream_duration", "is not supported yet"));
    }
    pool.idle_timeout = convert::timeout(common.idle_timeout.as_ref(), pool.idle_timeout);
    pool.max_connection_duration = convert::timeout(common.max_connection_duration.as_ref(), None);
    pool.max_requests_per_connection = common.max_requests_per_connection.map(|n| n.value).filter(|n| *n > 0);
    Ok(())
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// `lb_policy` with its `*_lb_config`.
fn legacy_lb_policy(c: &cluster::Cluster) -> Result<LbPolicy> {
    use cluster::cluster::LbPolicy as P;
    let lb_policy = match P::try_from(c.lb_policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(cluster::cluster::LbConfig::LeastRequestLbConfig(l)) => l.choice_count.map_or(2, |v| v.value),
                _ => 2,
            };
            least_request(choice_count).map_err(|e| e.within("least_request_lb_config"))?
        }
        Ok(P::RingHash) => match &c.lb_config {
            Some(cluster::cluster::LbConfig::RingHashLbConfig(r)) => {
                ring_hash(r.hash_function, r.minimum_ring_size, r.maximum_ring_size)
                    .map_err(|e| e.within("ring_hash_lb_config"))?
            }
            _ => ring_hash(0, None, None)?,
        },
        Ok(P::Maglev) => {
            let size = match &c.lb_config {
                Some(cluster::cluster::LbConfig::MaglevLbConfig(m)) => m.table_size,
                _ => None,
            };
            maglev(size).map_err(|e| e.within("maglev_lb_config"))?
        }
        Ok(other) => {
            return Err(ConfigError::new(
                "lb_policy",
                format!(
                    "{} is not supported yet (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV are)",
                    other.as_str_name()
                ),
            ));
        }
        Err(_) => return Err(ConfigError::new("lb_policy", format!("unknown policy {}", c.lb_policy))),
    };
    match (&c.lb_config, &lb_policy) {
        (None, _)
        | (Some(cluster::cluster::LbConfig::LeastRequestLbConfig(_)), LbPolicy::LeastRequest { .. })
        | (Some(cluster::cluster::LbConfig::RingHashLbConfig(_)), LbPolicy::RingHash { .. })
        | (Some(cluster::cluster::LbConfig::MaglevLbConfig(_)), LbPolicy::Maglev { .. }) => {}
        _ => return Err(ConfigError::new("lb_config", "does not go with the lb_policy")),
    }
    Ok(lb_policy)
}

fn least_request(choice_count: u32) -> Result<LbPolicy> {
    if choice_count < 2 {
        return Err(ConfigError::new("choice_count", "must be at least 2"));
    }
    Ok(LbPolicy::LeastRequest { choice_count })
}

type U64Value = xds_proto::pb::google::protobuf::UInt64Value;

fn ring_hash(hash_function: i32, min: Option<U64Value>, max: Option<U64Value>) -> Result<LbPolicy> {
    if hash_function != 0 {
        return Err(ConfigError::new("hash_function", "only XX_HASH is supported"));
    }
    let (min, max) = (min.map_or(1024, |v| v.value), max.map_or(8 << 20, |v| v.value));
    if min == 0 || min > max || max > 8 << 20 {
        return Err(ConfigError::new("minimum_ring_size", "must be 1 to maximum_ring_size, at most 8M"));
    }
    Ok(LbPolicy::RingHash { min_ring_size: min, max_ring_size: max })
}

fn maglev(table_size: Option<U64Value>) -> Result<LbPolicy> {
    let size = table_size.map_or(65537, |v| v.value);
    if !is_prime(size) || size > 5_000_011 {
        return Err(ConfigError::new("table_size", "must be a prime, at most 5000011"));
    }
    Ok(LbPolicy::Maglev { table_size: size })
}

/// `load_balancing_policy`: the first policy of the list that Strait supports, as xDS clients do.
fn typed_lb_policy(typed: &cluster::LoadBalancingPolicy) -> Result<LbPolicy> {
    use prost::Message;
    use xds_proto::pb::envoy::extensions::load_balancing_policies as lbp;
    let mut seen = Vec::new();
    for (i, policy) in typed.policies.iter().enumerate() {
        let at = format!("policies[{i}].typed_extension_config.typed_config");
        let Some(any) = policy.typed_extension_config.as_ref().and_then(|t| t.typed_config.as_ref()) else {
            return Err(ConfigError::new(
                format!("policies[{i}].typed_extension_config"),
                "a typed_config is required",
            ));
        };
        let bad = |e: prost::DecodeError| ConfigError::new(at.clone(), format!("cannot be decoded: {e}"));
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let chosen = match name {
            "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => LbPolicy::RoundRobin,
            "envoy.extensions.load_balancing_policies.random.v3.Random" => LbPolicy::Random,
            "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
                let l = lbp::least_request::v3::LeastRequest::decode(any.value.as_slice()).map_err(bad)?;
                least_request(l.choice_count.map_or(2, |v| v.value)).map_err(|e| e.within(&at))?
            }
            "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
                let r = lbp::ring_hash::v3::RingHash::decode(any.value.as_slice()).map_err(bad)?;
                ring_hash(r.hash_function, r.minimum_ring_size, r.maximum_ring_size).map_err(|e| e.within(&at))?
            }
            "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
                let m = lbp::maglev::v3::Maglev::decode(any.value.as_slice()).map_err(bad)?;
                maglev(m.table_size).map_err(|e| e.within(&at))?
            }
            "xds.type.v3.TypedStruct" | "udpa.type.v1.TypedStruct" => {
                let typed = xds_proto::TypedStruct::decode(any.value.as_slice()).map_err(bad)?;
                if typed.type_url != xds_proto::PEAK_EWMA_TYPE {
                    seen.push(typed.type_url);
                    continue;
                }
                peak_ewma(typed.value.unwrap_or_default()).map_err(|e| e.within(&format!("{at}.value")))?
            }
            other => {
                seen.push(other.to_string());
                continue;
            }
        };
        return Ok(chosen);
    }
    Err(ConfigError::new(
        "policies",
        format!(
            "none of the policies is supported (got [{}]); Strait has round_robin, least_request, random, ring_hash, maglev and {}",
            seen.join(", "),
            xds_proto::PEAK_EWMA_TYPE
        ),
    ))
}

/// Peak-EWMA's settings from its `TypedStruct` value: `decay` (default 10s) and `default_rtt`
/// (default 30ms), as durations (`"10s"`), linkerd2-proxy's defaults.
fn peak_ewma(value: xds_proto::pb::google::protobuf::Struct) -> Result<LbPolicy> {
    use xds_proto::pb::google::protobuf::value::Kind;
    let mut out = (Duration::from_secs(10), Duration::from_millis(30));
    for (key, v) in value.fields {
        let slot = match key.as_str() {
            "decay" => &mut out.0,
            "default_rtt" => &mut out.1,
            other => return Err(ConfigError::new(other, "unknown setting (decay and default_rtt are)")),
        };
        let text = match v.kind {
            Some(Kind::StringValue(t)) => t,
            _ => return Err(ConfigError::new(key.as_str(), "must be a duration such as \"10s\"")),
        };
        *slot =
            humantime::parse_duration(&text).map_err(|e| ConfigError::new(key.as_str(), format!("'{text}': {e}")))?;
        if slot.is_zero() {
            return Err(ConfigError::new(key.as_str(), "must be greater than 0"));
        }
    }
    Ok(LbPolicy::PeakEwma { decay: out.0, default_rtt: out.1 })
}
