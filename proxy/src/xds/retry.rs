//! `RetryPolicy` (a route's, or else its virtual host's) -> [`RetryPolicy`].

use super::convert::{self, ConfigError};
use crate::policy::retry::{BASE_INTERVAL, RateLimitedBackOff, ResetFormat, RetryOn, RetryPolicy};
use crate::routing::matcher::HeaderMatcher;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3 as route;

type Result<T> = std::result::Result<T, ConfigError>;

/// Envoy's default for the longest wait a rate-limited upstream may ask for.
const RATE_LIMITED_MAX_INTERVAL: Duration = Duration::from_secs(300);
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// The policy of a route: its own `retry_policy` or else the virtual host's (not merged, as Envoy).
/// `hedge` is the route's `hedge_policy`, or else its virtual host's.
pub fn retry_policy(
    own: Option<&route::RetryPolicy>,
    virtual_host: Option<&route::RetryPolicy>,
    hedge: Option<&route::HedgePolicy>,
    buffer_limit: usize,
) -> Result<Option<RetryPolicy>> {
    let hedge_on_per_try_timeout = match hedge {
        Some(h) if h.initial_requests.is_some_and(|n| n.value != 1) => {
            return Err(ConfigError::new("hedge_policy.initial_requests", "only 1 is supported (as in Envoy)"));
        }
        Some(h) if h.additional_request_chance.as_ref().is_some_and(|c| c.numerator > 0) => {
            return Err(ConfigError::new("hedge_policy.additional_request_chance", "is not supported (as in Envoy)"));
        }
        Some(h) => h.hedge_on_per_try_timeout,
        None => false,
    };
    let (policy, at) = match (own, virtual_host) {
        (Some(p), _) => (p, "route.retry_policy"),
        (None, Some(p)) => (p, "retry_policy (virtual host)"),
        (None, None) => return Ok(None),
    };
    let policy = convert_policy(policy, buffer_limit).map_err(|e| e.within(at))?;
    Ok(Some(RetryPolicy { hedge_on_per_try_timeout, ..policy }))
}

fn header_matchers(list: &[route::HeaderMatcher], field: &str) -> Result<Vec<HeaderMatcher>> {
    let matcher = |(i, h)| super::route::header_matcher(h).map_err(|e| e.within(&format!("{field}[{i}]")));
    list.iter().enumerate().map(matcher).collect()
}

fn rate_limited(r: &route::retry_policy::RateLimitedRetryBackOff) -> Result<RateLimitedBackOff> {
    if r.reset_headers.is_empty() {
        return Err(ConfigError::new("reset_headers", "at least one reset header is needed"));
    }
    let mut reset_headers = Vec::new();
    for (i, h) in r.reset_headers.iter().enumerate() {
        let name = convert::header_name(&h.name, &format!("reset_headers[{i}].name"))?;
        let format = match route::retry_policy::ResetHeaderFormat::try_from(h.format) {
            Ok(route::retry_policy::ResetHeaderFormat::Seconds) => ResetFormat::Seconds,
            Ok(route::retry_policy::ResetHeaderFormat::UnixTimestamp) => ResetFormat::UnixTimestamp,
            Err(_) => return Err(ConfigError::new(format!("reset_headers[{i}].format"), "unknown format")),
        };
        reset_headers.push((name, format));
    }
    let max_interval = r.max_interval.as_ref().map_or(RATE_LIMITED_MAX_INTERVAL, convert::duration);
    if max_interval < Duration::from_millis(1) {
        return Err(ConfigError::new("max_interval", "must be at least 1ms"));
    }
    Ok(RateLimitedBackOff { reset_headers, max_interval })
}

fn convert_policy(p: &route::RetryPolicy, buffer_limit: usize) -> Result<RetryPolicy> {
    let retry_on = RetryOn::parse(&p.retry_on).map_err(|e| ConfigError::new("retry_on", e))?;
    let unsupported = |field: &str| Err(ConfigError::new(field, "is not supported yet"));
    if p.retry_priority.is_some() {
        return unsupported("retry_priority");
    }
    if !p.retry_options_predicates.is_empty() {
        return unsupported("retry_options_predicates");
    }
    let rate_limited = p
        .rate_limited_retry_back_off
        .as_ref()
        .map(|r| rate_limited(r).map_err(|e| e.within("rate_limited_retry_back_off")))
        .transpose()?;
    let mut avoid_previous_hosts = false;
    for (i, predicate) in p.retry_host_predicate.iter().enumerate() {
        if predicate.name != PREVIOUS_HOSTS {
            return Err(ConfigError::new(
                format!("retry_host_predicate[{i}].name"),
                format!("'{}' is not supported (only {PREVIOUS_HOSTS})", predicate.name),
            ));
        }
        avoid_previous_hosts = true;
    }
    let mut retriable_status_codes = Vec::new();
    for (i, code) in p.retriable_status_codes.iter().enumerate() {
        match u16::try_from(*code) {
            Ok(c @ 100..=599) => retriable_status_codes.push(c),
            _ => return Err(ConfigError::new(format!("retriable_status_codes[{i}]"), "not an HTTP status")),
        }
    }
    let (base_interval, max_interval) = match &p.retry_back_off {
        None => (BASE_INTERVAL, BASE_INTERVAL * 10),
        Some(b) => {
            let base = b.base_interval.as_ref().map(convert::duration).unwrap_or_default();
            if base.is_zero() {
                return Err(ConfigError::new("retry_back_off.base_interval", "must be greater than zero"));
            }
            let max = b.max_interval.as_ref().map_or(base * 10, convert::duration);
            if max < base {
                return Err(ConfigError::new("retry_back_off.max_interval", "must not be less than base_interval"));
            }
            (base, max)
        }
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: convert::timeout(p.per_try_timeout.as_ref(), None),
        per_try_idle_timeout: convert::timeout(p.per_try_idle_timeout.as_ref(), None),
        retriable_status_codes,
        retriable_headers: header_matchers(&p.retriable_headers, "retriable_headers")?,
        retriable_request_headers: header_matchers(&p.retriable_request_headers, "retriable_request_headers")?,
        rate_limited,
        hedge_on_per_try_timeout: false,
        base_interval,
        max_interval,
        avoid_previous_hosts,
        host_selection_attempts: u32::try_from(p.host_selection_retry_max_attempts.max(1)).unwrap_or(1),
        buffer_limit,
    })
}
