//! HTTP filters ahead of the router (`envoy.filters.http.local_ratelimit`, `envoy.filters.http.fault`)
//! and their per-route configs (`typed_per_filter_config`) -> [`HttpFilter`] / [`FilterConfig`].

use super::convert::{self, ConfigError, Result};
use crate::policy::fault::{
    AbortWith, DelayLength, Fault, FaultAbort, FaultDelay, FaultStats, ResponseRateLimit, Throughput,
};
use crate::policy::local_ratelimit::{LocalRateLimit, RateLimitStats, TokenBucket};
use crate::policy::rbac::RbacStats;
use crate::policy::{FilterConfig, FilterOverrides, Fraction, HttpFilter};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3 as core;
use xds_proto::pb::envoy::config::route::v3 as route;
use xds_proto::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use xds_proto::pb::envoy::extensions::filters::http::fault::v3 as fault_proto;
use xds_proto::pb::envoy::extensions::filters::http::local_ratelimit::v3 as ratelimit_proto;
use xds_proto::pb::envoy::extensions::filters::http::rbac::v3 as rbac_proto;
use xds_proto::pb::envoy::r#type::v3 as types;
use xds_proto::pb::google::protobuf::Any;

const LOCAL_RATELIMIT: &str = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// Envoy's shortest `fill_interval`.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// One HTTP filter of the connection manager: `None` for an optional filter Strait does not know
/// (skipped, as `is_optional` asks); an error for any other unknown one.
pub fn http_filter(
    f: &xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
    hcm_prefix: &str,
) -> Result<Option<HttpFilter>> {
    use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    let config = match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => known_config(any, false)?,
        _ => None,
    };
    match config {
        Some(config) => {
            let fault_stats = matches!(config, FilterConfig::Fault(_)).then(|| FaultStats::new(hcm_prefix));
            let rbac_stats = matches!(config, FilterConfig::Rbac(_)).then(|| RbacStats::http(hcm_prefix));
            Ok(Some(HttpFilter {
                name: f.name.clone(),
                config,
                disabled_by_default: f.disabled,
                fault_stats,
                rbac_stats,
            }))
        }
        None if f.is_optional => {
            tracing::warn!(filter = %f.name, "optional HTTP filter is not supported by Strait and is skipped");
            Ok(None)
        }
        None => Err(ConfigError::new(
            "",
            format!("HTTP filter '{}' is not supported (mark it is_optional to skip it)", f.name),
        )),
    }
}

/// A filter config Strait implements, by its type; `None` for any other type. A per-route config
/// (`per_route`) must carry its own token bucket.
fn known_config(any: &Any, per_route: bool) -> Result<Option<FilterConfig>> {
    Ok(match any.type_url.as_str() {
        LOCAL_RATELIMIT => {
            let config = convert::unpack::<ratelimit_proto::LocalRateLimit>(any, "typed_config")?;
            let limit = local_ratelimit(&config).map_err(|e| e.within("typed_config"))?;
            if per_route && limit.bucket.is_none() {
                return Err(ConfigError::new(
                    "typed_config.token_bucket",
                    "a per-route local rate limit needs a token bucket",
                ));
            }
            Some(FilterConfig::LocalRateLimit(Arc::new(limit)))
        }
        FAULT => {
            let config = convert::unpack::<fault_proto::HttpFault>(any, "typed_config")?;
            Some(FilterConfig::Fault(Arc::new(fault(&config).map_err(|e| e.within("typed_config"))?)))
        }
        RBAC if !per_route => Some(FilterConfig::Rbac(Arc::new(rbac_filter(any)?))),
        RBAC_PER_ROUTE if per_route => {
            let config = convert::unpack::<rbac_proto::RbacPerRoute>(any, "typed_config")?;
            // No `rbac`: the filter is off for these requests (Envoy's meaning).
            match config.rbac {
                None => Some(FilterConfig::Disabled),
                Some(rbac) => {
                    let any = Any { type_url: RBAC.to_string(), value: prost::Message::encode_to_vec(&rbac) };
                    Some(FilterConfig::Rbac(Arc::new(rbac_filter(&any).map_err(|e| e.within("rbac"))?)))
                }
            }
        }
        _ => None,
    })
}

fn rbac_filter(any: &Any) -> Result<crate::policy::rbac::Rbac> {
    let config = convert::unpack::<rbac_proto::Rbac>(any, "typed_config")?;
    super::rbac::filter(
        config.rules.as_ref(),
        config.shadow_rules.as_ref(),
        config.matcher.is_some() || config.shadow_matcher.is_some(),
    )
    .map_err(|e| e.within("typed_config"))
}

/// `typed_per_filter_config` of a route, virtual host or route table. Configs are stored by filter
/// name; those for filters the connection manager does not have are never looked up.
pub fn overrides(map: &HashMap<String, Any>) -> Result<FilterOverrides> {
    let mut out = Vec::with_capacity(map.len());
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let at = format!("typed_per_filter_config[\"{name}\"]");
        let any = &map[name];
        let (any, optional, disabled) = if any.type_url == FILTER_CONFIG {
            let wrapper = convert::unpack::<route::FilterConfig>(any, &at)?;
            match wrapper.config {
                Some(inner) => (inner, wrapper.is_optional, wrapper.disabled),
                None if wrapper.disabled => {
                    out.push((name.clone(), FilterConfig::Disabled));
                    continue;
                }
                // As Envoy 1.40: an empty per-filter config does not turn on a filter disabled by
                // default; only a config of its own does.
                None => return Err(ConfigError::new(format!("{at}.config"), "a filter config is required")),
            }
        } else {
            (any.clone(), false, false)
        };
        if disabled {
            out.push((name.clone(), FilterConfig::Disabled));
            continue;
        }
        // A per-route rate limit counts under its own stat_prefix; faults under the connection
        // manager's filter.
        match known_config(&any, true).map_err(|e| e.within(&at))? {
            Some(config) => out.push((name.clone(), config)),
            None if optional => {}
            None => {
                return Err(ConfigError::new(at, format!("filter config type '{}' is not supported", any.type_url)));
            }
        }
    }
    Ok(FilterOverrides::new(out))
}

/// `FractionalPercent` -> [`Fraction`]; `default` when it is not given.
pub(super) fn fraction(p: Option<&types::FractionalPercent>, default: Fraction) -> Fraction {
    use types::fractional_percent::DenominatorType;
    let Some(p) = p else { return default };
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        _ => 100,
    };
    Fraction { numerator: p.numerator.min(denominator), denominator }
}

fn runtime_fraction(p: Option<&core::RuntimeFractionalPercent>) -> Fraction {
    fraction(p.and_then(|p| p.default_value.as_ref()), Fraction::NONE)
}

fn local_ratelimit(c: &ratelimit_proto::LocalRateLimit) -> Result<LocalRateLimit> {
    let unsupported = |field: &str| Err(ConfigError::new(field, "is not supported yet"));
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new("stat_prefix", "is required"));
    }
    if !c.descriptors.is_empty() {
        return unsupported("descriptors");
    }
    if !c.rate_limits.is_empty() {
        return unsupported("rate_limits");
    }
    if c.local_rate_limit_per_downstream_connection {
        return unsupported("local_rate_limit_per_downstream_connection");
    }
    if c.local_cluster_rate_limit.is_some() {
        return unsupported("local_cluster_rate_limit");
    }
    let bucket = c.token_bucket.as_ref().map(|b| token_bucket(b).map_err(|e| e.within("token_bucket"))).transpose()?;
    let status = c.status.as_ref().map_or(429, |s| s.code);
    let status = http::StatusCode::from_u16(if (400..=599).contains(&status) { status as u16 } else { 429 })
        .unwrap_or(http::StatusCode::TOO_MANY_REQUESTS);
    Ok(LocalRateLimit {
        bucket,
        status,
        enabled: runtime_fraction(c.filter_enabled.as_ref()),
        enforced: runtime_fraction(c.filter_enforced.as_ref()),
        response_headers: convert::header_mutation(&c.response_headers_to_add, &[], "", "response")?,
        request_headers_when_not_enforced: convert::header_mutation(
            &c.request_headers_to_add_when_not_enforced,
            &[],
            "",
            "request",
        )?,
        x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
        retry_after_header: c.enable_retry_after_header,
        grpc_resource_exhausted: c.rate_limited_as_resource_exhausted,
        stats: RateLimitStats::new(&c.stat_prefix),
    })
}

/// `TokenBucket` -> [`TokenBucket`] (shared with the TCP local rate limit).
pub fn token_bucket(b: &types::TokenBucket) -> Result<TokenBucket> {
    let fill_interval = b.fill_interval.as_ref().map(convert::duration).unwrap_or_default();
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(ConfigError::new("fill_interval", "must be at least 50ms"));
    }
    let tokens_per_fill = b.tokens_per_fill.map_or(1, |t| t.value);
    if tokens_per_fill == 0 {
        return Err(ConfigError::new("tokens_per_fill", "must be greater than 0"));
    }
    Ok(TokenBucket::new(b.max_tokens, tokens_per_fill, fill_interval))
}

fn fault(c: &fault_proto::HttpFault) -> Result<Fault> {
    let delay = c.delay.as_ref().map(|d| fault_delay(d).map_err(|e| e.within("delay"))).transpose()?;
    let abort = c.abort.as_ref().map(|a| fault_abort(a).map_err(|e| e.within("abort"))).transpose()?;
    let response_rate_limit = c
        .response_rate_limit
        .as_ref()
        .map(|r| response_rate_limit(r).map_err(|e| e.within("response_rate_limit")))
        .transpose()?;
    let headers = c
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| super::route::header_matcher(h).map_err(|e| e.within(&format!("headers[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    let max_active_faults = c.max_active_faults.map(|m| m.value);
    let upstream_cluster = (!c.upstream_cluster.is_empty()).then(|| c.upstream_cluster.clone());
    Ok(Fault {
        delay,
        abort,
        response_rate_limit,
        headers,
        max_active_faults,
        downstream_nodes: c.downstream_nodes.clone(),
        upstream_cluster,
    })
}

fn fault_delay(d: &common_fault::FaultDelay) -> Result<FaultDelay> {
    use common_fault::fault_delay::FaultDelaySecifier as S;
    let length = match &d.fault_delay_secifier {
        Some(S::FixedDelay(fixed)) => DelayLength::Fixed(convert::duration(fixed)),
        Some(S::HeaderDelay(_)) => DelayLength::FromHeader,
        None => return Err(ConfigError::new("fixed_delay", "a fixed_delay or header_delay is required")),
    };
    Ok(FaultDelay { length, share: fraction(d.percentage.as_ref(), Fraction::NONE) })
}

fn response_rate_limit(r: &common_fault::FaultRateLimit) -> Result<ResponseRateLimit> {
    use common_fault::fault_rate_limit::LimitType;
    let throughput = match &r.limit_type {
        Some(LimitType::FixedLimit(fixed)) if fixed.limit_kbps > 0 => Throughput::FixedKbps(fixed.limit_kbps),
        Some(LimitType::FixedLimit(_)) => return Err(ConfigError::new("fixed_limit.limit_kbps", "must be at least 1")),
        Some(LimitType::HeaderLimit(_)) => Throughput::FromHeader,
        None => return Err(ConfigError::new("fixed_limit", "a fixed_limit or header_limit is required")),
    };
    Ok(ResponseRateLimit { throughput, share: fraction(r.percentage.as_ref(), Fraction::NONE) })
}

fn fault_abort(a: &fault_proto::FaultAbort) -> Result<FaultAbort> {
    use fault_proto::fault_abort::ErrorType;
    let with = match &a.error_type {
        Some(ErrorType::HttpStatus(code)) if (200..600).contains(code) => AbortWith::Http(*code as u16),
        Some(ErrorType::HttpStatus(_)) => return Err(ConfigError::new("http_status", "must be 200 to 599")),
        Some(ErrorType::GrpcStatus(code)) => AbortWith::Grpc(*code),
        Some(ErrorType::HeaderAbort(_)) => AbortWith::FromHeader,
        None => return Err(ConfigError::new("http_status", "an http_status, grpc_status or header_abort is required")),
    };
    let body = if a.response_body.is_empty() { "fault filter abort".to_string() } else { a.response_body.clone() };
    Ok(FaultAbort { with, share: fraction(a.percentage.as_ref(), Fraction::NONE), body })
}
