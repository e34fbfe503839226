//! Retries as Envoy's `retry_policy` describes them, in tower's shape: a [`tower::retry::Policy`]
//! ([`Retries`]) deciding from each attempt's outcome whether to try again, after a jittered
//! exponential back-off, with a copy of the request whose body is replayed ([`body::ReplayBody`]).

pub mod body;

use crate::http::ProxyError;
use crate::telemetry::ClusterStats;
use crate::upstream::attempt::{Attempted, TriedHosts, UpstreamRequest};
use crate::upstream::breakers::Slot;
use crate::upstream::{Cluster, UpstreamError};
use std::sync::Arc;
use std::time::Duration;

/// The conditions of `retry_on` (and `x-envoy-retry-on`), as bits in the order of
/// [`xds_proto::RETRY_ON`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const SERVER_ERROR: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    /// Parses a comma-separated list of Envoy's names ([`xds_proto::RETRY_ON`], whose order the
    /// bits follow); an unknown name is the error.
    pub fn parse(list: &str) -> Result<RetryOn, String> {
        let mut bits = RetryOn::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match xds_proto::RETRY_ON.iter().position(|n| *n == name) {
                Some(i) => bits.0 |= 1 << i,
                None => return Err(format!("unknown retry condition '{name}'")),
            }
        }
        Ok(bits)
    }

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A validated `RetryPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt (Envoy's default 1).
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// Jittered exponential back-off: 25 ms and 10 times that by default.
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry goes to an endpoint not tried yet.
    pub avoid_previous_hosts: bool,
    /// How many picks a retry makes to find such an endpoint (`host_selection_retry_max_attempts`).
    pub host_selection_attempts: u32,
    /// Bytes of request body kept for a retry (`per_request_buffer_limit_bytes`); beyond: no retry.
    pub buffer_limit: usize,
}

/// The gRPC status in a response's headers (a trailers-only response), if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl RetryPolicy {
    /// Whether a response with these status and headers is worth another attempt.
    pub fn retries_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        let on = self.retry_on;
        if (on.contains(RetryOn::SERVER_ERROR) && status >= 500)
            || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&status))
        {
            return true;
        }
        match grpc_status(headers) {
            Some(1) => on.contains(RetryOn::GRPC_CANCELLED),
            Some(4) => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
            Some(8) => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            Some(13) => on.contains(RetryOn::GRPC_INTERNAL),
            Some(14) => on.contains(RetryOn::GRPC_UNAVAILABLE),
            _ => false,
        }
    }

    /// Whether a failure before any response is worth another attempt: resets and per-try timeouts
    /// under `5xx`, `gateway-error` and `reset`; connection failures also under `connect-failure`.
    pub fn retries_error(&self, error: &ProxyError) -> bool {
        let on = self.retry_on;
        let any_reset =
            on.contains(RetryOn::SERVER_ERROR) || on.contains(RetryOn::GATEWAY_ERROR) || on.contains(RetryOn::RESET);
        match error {
            ProxyError::Upstream(e) if e.is_connect_failure() => any_reset || on.contains(RetryOn::CONNECT_FAILURE),
            ProxyError::Upstream(UpstreamError::Reset(e)) if is_refused_stream(e) => {
                any_reset || on.contains(RetryOn::REFUSED_STREAM)
            }
            ProxyError::Upstream(_) | ProxyError::UpstreamPerTryTimeout => any_reset,
            // Nothing to try (no healthy endpoint), or not the upstream's doing.
            _ => false,
        }
    }

    /// The wait before retry `n` (1 for the first retry): random up to `base * (2^n - 1)`, at most
    /// the maximum interval.
    pub fn back_off(&self, n: u32) -> Duration {
        let factor = (1u64 << n.min(16)) - 1;
        let ceiling = self.base_interval.saturating_mul(factor as u32).min(self.max_interval);
        Duration::from_micros(fastrand::u64(0..=ceiling.as_micros() as u64))
    }
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// One request's retry state, as tower's retry layer drives it: cloned per request.
#[derive(Clone)]
pub struct Retries {
    policy: Arc<RetryPolicy>,
    cluster: Arc<Cluster>,
    done: u32,
    /// The circuit breaker's place of the retry in flight.
    slot: Option<Arc<Slot>>,
}

impl Retries {
    pub fn new(policy: Arc<RetryPolicy>, cluster: Arc<Cluster>) -> Self {
        Retries { policy, cluster, done: 0, slot: None }
    }

    fn stats(&self) -> &ClusterStats {
        &self.cluster.stats
    }
}

/// An attempt's error as it comes out of the per-try timeout: the attempt's own, or the timeout.
pub fn attempt_error(e: tower::BoxError) -> ProxyError {
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(_) => ProxyError::UpstreamPerTryTimeout,
    }
}

/// [`attempt_error`] without taking the error.
fn is_retriable_error(policy: &RetryPolicy, e: &tower::BoxError) -> bool {
    match e.downcast_ref::<ProxyError>() {
        Some(e) => policy.retries_error(e),
        None => policy.retries_error(&ProxyError::UpstreamPerTryTimeout),
    }
}

impl tower::retry::Policy<UpstreamRequest, Attempted, tower::BoxError> for Retries {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut UpstreamRequest,
        result: &mut Result<Attempted, tower::BoxError>,
    ) -> Option<Self::Future> {
        if let Err(e) = result
            && e.is::<tower::timeout::error::Elapsed>()
        {
            self.stats().rq_per_try_timeout.increment(1);
            if let Some(addr) = request.extensions().get::<TriedHosts>().and_then(TriedHosts::last) {
                self.cluster.report_timeout(addr);
            }
        }
        let retriable = match result {
            Ok(attempted) => {
                self.policy.retries_response(attempted.response.status().as_u16(), attempted.response.headers())
            }
            Err(e) => is_retriable_error(&self.policy, e),
        };
        if !retriable {
            if self.done > 0 && result.is_ok() {
                self.stats().rq_retry_success.increment(1);
            }
            return None;
        }
        if self.done >= self.policy.num_retries {
            self.stats().rq_retry_limit_exceeded.increment(1);
            return None;
        }
        if !request.body().can_replay() {
            self.stats().retry_or_shadow_abandoned.increment(1);
            return None;
        }
        self.slot = None;
        let Some(slot) = self.cluster.open.retry(&self.cluster.config.breakers) else {
            self.stats().rq_retry_overflow.increment(1);
            return None;
        };
        self.slot = Some(Arc::new(slot));
        self.done += 1;
        self.stats().rq_retry.increment(1);
        Some(tokio::time::sleep(self.policy.back_off(self.done)))
    }

    fn clone_request(&mut self, request: &UpstreamRequest) -> Option<UpstreamRequest> {
        let body = request.body().replay()?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_by_envoys_names() {
        let on = RetryOn::parse("5xx, retriable-status-codes,unavailable").unwrap();
        assert!(on.contains(RetryOn::SERVER_ERROR));
        assert!(on.contains(RetryOn::RETRIABLE_STATUS_CODES));
        assert!(on.contains(RetryOn::GRPC_UNAVAILABLE));
        assert!(!on.contains(RetryOn::RESET));
        assert_eq!(RetryOn::parse("reset,sometimes"), Err("unknown retry condition 'sometimes'".into()));
        for (i, name) in xds_proto::RETRY_ON.iter().enumerate() {
            assert_eq!(RetryOn::parse(name), Ok(RetryOn(1 << i)), "{name}");
        }
    }

    #[test]
    fn back_off_grows_and_stays_under_its_ceiling() {
        let policy = RetryPolicy {
            retry_on: RetryOn::SERVER_ERROR,
            num_retries: 5,
            per_try_timeout: None,
            retriable_status_codes: vec![],
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_attempts: 1,
            buffer_limit: 0,
        };
        for (n, ceiling) in [(1, 25), (2, 75), (3, 175), (4, 250), (10, 250)] {
            let waits: Vec<Duration> = (0..200).map(|_| policy.back_off(n)).collect();
            assert!(waits.iter().all(|w| *w <= Duration::from_millis(ceiling)), "retry {n}");
            assert!(
                waits.iter().any(|w| *w > Duration::from_millis(ceiling) / 2),
                "retry {n}: jittered over the range"
            );
        }
    }
}
