//! The `x-envoy-*` request headers an internal request steers its retries and timeouts with
//! (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`,
//! `x-envoy-retriable-status-codes`, `x-envoy-retriable-header-names`,
//! `x-envoy-upstream-rq-timeout-ms`, `x-envoy-upstream-rq-per-try-timeout-ms`), read as Envoy's
//! router does. External requests never get here: the connection manager removed them.

use super::{RetryOn, RetryPolicy};
use crate::routing::matcher::{HeaderCheck, HeaderMatcher};
use http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

/// What a request's headers change of its route's retry policy and timeout.
#[derive(Debug, Default)]
pub struct Overrides {
    retry_on: RetryOn,
    max_retries: Option<u32>,
    status_codes: Vec<u16>,
    header_names: Vec<http::HeaderName>,
    /// `Some(None)`: the header turned the route timeout off (0).
    timeout: Option<Option<Duration>>,
    per_try_timeout: Option<Duration>,
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    text(headers, name)?.trim().parse().ok()
}

impl Overrides {
    /// Reads the headers; `None` when the request has none of them (the usual case, one scan).
    pub fn read(headers: &HeaderMap) -> Option<Overrides> {
        if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
            return None;
        }
        let list = |name| text(headers, name).unwrap_or_default();
        let retry_on = RetryOn::parse_lenient(list("x-envoy-retry-on"), RetryOn::HTTP)
            .union(RetryOn::parse_lenient(list("x-envoy-retry-grpc-on"), RetryOn::GRPC));
        let overrides = Overrides {
            retry_on,
            max_retries: number(headers, "x-envoy-max-retries").and_then(|n| u32::try_from(n).ok()),
            status_codes: list("x-envoy-retriable-status-codes")
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .filter(|c| (100..=599).contains(c))
                .collect(),
            header_names: list("x-envoy-retriable-header-names")
                .split(',')
                .filter_map(|n| http::HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            timeout: number(headers, "x-envoy-upstream-rq-timeout-ms")
                .map(|ms| (ms > 0).then(|| Duration::from_millis(ms))),
            per_try_timeout: number(headers, "x-envoy-upstream-rq-per-try-timeout-ms")
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        };
        let changes = !overrides.retry_on.is_empty()
            || overrides.max_retries.is_some()
            || !overrides.status_codes.is_empty()
            || !overrides.header_names.is_empty()
            || overrides.timeout.is_some()
            || overrides.per_try_timeout.is_some();
        changes.then_some(overrides)
    }

    /// The route timeout as the headers leave it.
    pub fn timeout(&self, route: Option<Duration>) -> Option<Duration> {
        self.timeout.unwrap_or(route)
    }

    /// The route's retry policy with the headers' conditions added (a policy of Envoy's defaults when
    /// the route has none); `x-envoy-max-retries` counts only where some condition is set. `None`:
    /// nothing to retry and no per-try timeout. `buffer_limit`: the route's body buffer limit.
    pub fn retry_policy(&self, route: Option<&Arc<RetryPolicy>>, buffer_limit: usize) -> Option<Arc<RetryPolicy>> {
        let unchanged = self.retry_on.is_empty()
            && self.status_codes.is_empty()
            && self.header_names.is_empty()
            && self.per_try_timeout.is_none()
            && (self.max_retries.is_none() || route.is_none_or(|p| p.retry_on.is_empty()));
        if unchanged {
            return route.cloned();
        }
        let mut policy = match route {
            Some(p) => RetryPolicy::clone(p),
            None => RetryPolicy { buffer_limit, ..RetryPolicy::default() },
        };
        policy.retry_on = policy.retry_on.union(self.retry_on);
        if let Some(n) = self.max_retries.filter(|_| !policy.retry_on.is_empty()) {
            policy.num_retries = n;
        }
        policy.retriable_status_codes.extend_from_slice(&self.status_codes);
        policy.retriable_headers.extend(self.header_names.iter().map(|name| HeaderMatcher {
            name: name.clone(),
            check: HeaderCheck::Present(true),
            invert: false,
            treat_missing_as_empty: false,
        }));
        if self.per_try_timeout.is_some() {
            policy.per_try_timeout = self.per_try_timeout;
        }
        Some(Arc::new(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (http::HeaderName::from_static(n), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn headers_add_conditions_and_override_the_count() {
        assert!(Overrides::read(&headers(&[("x-request-id", "1")])).is_none());
        let o = Overrides::read(&headers(&[
            ("x-envoy-retry-on", "5xx,bogus,unavailable"),
            ("x-envoy-retry-grpc-on", "cancelled"),
            ("x-envoy-max-retries", "4"),
            ("x-envoy-retriable-status-codes", "418,abc"),
        ]))
        .unwrap();
        let policy = o.retry_policy(None, 1024).unwrap();
        assert!(policy.retry_on.contains(RetryOn::SERVER_ERROR) && policy.retry_on.contains(RetryOn::GRPC_CANCELLED));
        assert!(!policy.retry_on.contains(RetryOn::GRPC_UNAVAILABLE), "a gRPC name in x-envoy-retry-on is ignored");
        assert_eq!((policy.num_retries, policy.retriable_status_codes.clone()), (4, vec![418]));

        let route = Arc::new(RetryPolicy { retry_on: RetryOn::RESET, num_retries: 2, ..RetryPolicy::default() });
        let o = Overrides::read(&headers(&[("x-envoy-max-retries", "5")])).unwrap();
        assert_eq!(o.retry_policy(Some(&route), 1024).unwrap().num_retries, 5);
        assert!(o.retry_policy(None, 1024).is_none(), "a count without conditions retries nothing");

        let o = Overrides::read(&headers(&[("x-envoy-upstream-rq-timeout-ms", "0")])).unwrap();
        assert_eq!(o.timeout(Some(Duration::from_secs(15))), None, "0 turns the timeout off");
    }
}
