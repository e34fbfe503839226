//! Retries as Envoy's `retry_policy` describes them, in tower's shape: a [`tower::retry::Policy`]
//! ([`Retries`]) deciding from each attempt's outcome whether to try again, after a jittered
//! exponential back-off (or the wait a rate-limited upstream asked for), with a copy of the request
//! whose body is replayed ([`body::ReplayBody`]).

pub mod body;
pub mod headers;
pub mod hedge;

use crate::http::ProxyError;
use crate::policy::deadline::{Deadlined, PerTry};
use crate::routing::matcher::HeaderMatcher;
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
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 12);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 13);
    /// A reset before the request went out (a connection failure, or a connection that closed
    /// before the request was written): safe to retry whatever the request.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 14);
    /// The conditions on a gRPC status (`x-envoy-retry-grpc-on`); the others are HTTP's.
    pub const GRPC: RetryOn = RetryOn(0b1111_1000_0000);
    pub const HTTP: RetryOn = RetryOn(0b111_0000_0111_1111);

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

    /// The known names of a header's list, the unknown ones ignored (as Envoy reads
    /// `x-envoy-retry-on`), kept to those of `kind`.
    pub fn parse_lenient(list: &str, kind: RetryOn) -> RetryOn {
        let known = list.split(',').filter_map(|name| RetryOn::parse(name).ok());
        RetryOn(known.fold(0, |bits, on| bits | on.0) & kind.0)
    }

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How a `rate_limited_retry_back_off` reset header gives its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// A number of seconds to wait (`Retry-After: 120`).
    Seconds,
    /// The Unix time to retry at (`X-RateLimit-Reset: 1595320702`).
    UnixTimestamp,
}

/// `rate_limited_retry_back_off`: wait as long as the upstream's response says.
#[derive(Debug, Clone)]
pub struct RateLimitedBackOff {
    pub reset_headers: Vec<(http::HeaderName, ResetFormat)>,
    /// A wait longer than this is not taken from that header (Envoy's default 300 s).
    pub max_interval: Duration,
}

impl RateLimitedBackOff {
    /// The first reset header giving a wait up to the maximum, jittered to 1-1.5 times it.
    fn back_off(&self, headers: &http::HeaderMap) -> Option<Duration> {
        let interval = self.reset_headers.iter().find_map(|(name, format)| {
            let value: u64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
            let wait = match format {
                ResetFormat::Seconds => Duration::from_secs(value),
                ResetFormat::UnixTimestamp => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
                    Duration::from_secs(value).checked_sub(now)?
                }
            };
            (wait <= self.max_interval).then_some(wait)
        })?;
        let ms = interval.as_millis() as u64;
        Some(Duration::from_millis(fastrand::u64(ms..=ms + ms / 2)))
    }
}

/// A validated `RetryPolicy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt (Envoy's default 1).
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// An attempt with nothing received for this long is given up (before its response headers,
    /// as a per-try timeout; after them, its body is cut).
    pub per_try_idle_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// `retriable_headers`: a response with one of these is retried under `retriable-headers`.
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retriable_request_headers`: when given, only a request matching one of them is retried.
    pub retriable_request_headers: Vec<HeaderMatcher>,
    pub rate_limited: Option<RateLimitedBackOff>,
    /// `hedge_policy.hedge_on_per_try_timeout`: a per-try timeout starts another attempt beside the
    /// slow one instead of cancelling it.
    pub hedge_on_per_try_timeout: bool,
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

/// Envoy's defaults: 25 ms base back-off, ten times that at most; request bodies kept up to 1 MiB
/// for a retry (the listener's default buffer limit).
pub const BASE_INTERVAL: Duration = Duration::from_millis(25);
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

impl Default for RetryPolicy {
    /// A policy with nothing to retry on and Envoy's defaults for the rest (one retry).
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            rate_limited: None,
            hedge_on_per_try_timeout: false,
            base_interval: BASE_INTERVAL,
            max_interval: BASE_INTERVAL * 10,
            avoid_previous_hosts: false,
            host_selection_attempts: 1,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
        }
    }
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
            || (on.contains(RetryOn::RETRIABLE_HEADERS) && self.retriable_headers.iter().any(|m| m.matches(headers)))
            || (on.contains(RetryOn::ENVOY_RATELIMITED) && headers.contains_key("x-envoy-ratelimited"))
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
    /// under `5xx`, `gateway-error` and `reset`; connection failures also under `connect-failure`;
    /// those and resets before the request went out under `reset-before-request`.
    pub fn retries_error(&self, error: &ProxyError) -> bool {
        let on = self.retry_on;
        let any_reset =
            on.contains(RetryOn::SERVER_ERROR) || on.contains(RetryOn::GATEWAY_ERROR) || on.contains(RetryOn::RESET);
        let unsent = on.contains(RetryOn::RESET_BEFORE_REQUEST);
        match error {
            ProxyError::Upstream(e) if e.is_connect_failure() => {
                any_reset || unsent || on.contains(RetryOn::CONNECT_FAILURE)
            }
            ProxyError::Upstream(UpstreamError::ResetBeforeRequest(_)) => any_reset || unsent,
            ProxyError::Upstream(UpstreamError::Reset(e)) if is_refused_stream(e) => {
                any_reset || on.contains(RetryOn::REFUSED_STREAM)
            }
            ProxyError::Upstream(_) | ProxyError::UpstreamPerTryTimeout => any_reset,
            // Nothing to try (no healthy endpoint), or not the upstream's doing.
            _ => false,
        }
    }

    /// Whether this request may be retried at all (`retriable_request_headers`).
    pub fn retries_request(&self, headers: &http::HeaderMap) -> bool {
        self.retriable_request_headers.is_empty() || self.retriable_request_headers.iter().any(|m| m.matches(headers))
    }

    /// The time an attempt may take before its response headers: the per-try timeout, or the
    /// per-try idle timeout when shorter (nothing has come back yet). `true`: the idle one.
    pub fn attempt_limit(&self) -> Option<(Duration, bool)> {
        match (self.per_try_timeout, self.per_try_idle_timeout) {
            (Some(t), Some(idle)) if idle < t => Some((idle, true)),
            (Some(t), _) => Some((t, false)),
            (None, Some(idle)) => Some((idle, true)),
            (None, None) => None,
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

/// One request's retry state, as tower's retry layer drives it (which copies it for the request):
/// it borrows the policy, the cluster and the tried endpoints from the request.
#[derive(Clone)]
pub struct Retries<'a> {
    policy: &'a RetryPolicy,
    cluster: &'a Cluster,
    /// Where the request's attempts went (a timed-out one is reported there).
    tried: &'a TriedHosts,
    done: u32,
    /// The circuit breaker's place of the retry in flight.
    slot: Option<Arc<Slot>>,
}

impl<'a> Retries<'a> {
    pub fn new(policy: &'a RetryPolicy, cluster: &'a Cluster, tried: &'a TriedHosts) -> Self {
        Retries { policy, cluster, tried, done: 0, slot: None }
    }

    fn stats(&self) -> &ClusterStats {
        &self.cluster.stats
    }
}

/// An attempt's error as it comes out of the per-try timeout: the attempt's own, or the timeout.
pub fn attempt_error(e: Deadlined<ProxyError, PerTry>) -> ProxyError {
    match e {
        Deadlined::Inner(e) => e,
        Deadlined::Expired(PerTry) => ProxyError::UpstreamPerTryTimeout,
    }
}

impl tower::retry::Policy<UpstreamRequest, Attempted, ProxyError> for Retries<'_> {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut UpstreamRequest,
        result: &mut Result<Attempted, ProxyError>,
    ) -> Option<Self::Future> {
        if let Err(ProxyError::UpstreamPerTryTimeout) = result {
            match self.policy.attempt_limit() {
                Some((_, true)) => self.stats().rq_per_try_idle_timeout.increment(1),
                _ => self.stats().rq_per_try_timeout.increment(1),
            }
            if let Some(addr) = self.tried.last() {
                self.cluster.report_timeout(addr);
            }
        }
        let retriable = match result {
            Ok(attempted) => {
                self.policy.retries_response(attempted.response.status().as_u16(), attempted.response.headers())
            }
            Err(e) => self.policy.retries_error(e),
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
        let asked = match (&self.policy.rate_limited, &result) {
            (Some(rate_limited), Ok(attempted)) => rate_limited.back_off(attempted.response.headers()),
            _ => None,
        };
        let wait = match asked {
            Some(wait) => {
                self.stats().rq_retry_backoff_ratelimited.increment(1);
                wait
            }
            None => {
                self.stats().rq_retry_backoff_exponential.increment(1);
                self.policy.back_off(self.done)
            }
        };
        Some(tokio::time::sleep(wait))
    }

    /// A copy to send: the request line, headers and a replay of the body (extensions are the
    /// downstream's and stay behind).
    fn clone_request(&mut self, request: &UpstreamRequest) -> Option<UpstreamRequest> {
        let body = request.body().replay()?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
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
        let header = RetryOn::parse_lenient("5xx,sometimes,unavailable", RetryOn::HTTP);
        assert_eq!(header, RetryOn::SERVER_ERROR, "unknown names ignored, gRPC ones not in this header");
        for (i, name) in xds_proto::RETRY_ON.iter().enumerate() {
            assert_eq!(RetryOn::parse(name), Ok(RetryOn(1 << i)), "{name}");
        }
    }

    #[test]
    fn a_rate_limited_upstream_sets_the_wait_within_the_maximum() {
        let rate_limited = RateLimitedBackOff {
            reset_headers: vec![
                (http::HeaderName::from_static("retry-after"), ResetFormat::Seconds),
                (http::HeaderName::from_static("x-ratelimit-reset"), ResetFormat::UnixTimestamp),
            ],
            max_interval: Duration::from_secs(10),
        };
        let headers = |pairs: &[(&'static str, String)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        let wait = rate_limited.back_off(&headers(&[("retry-after", "2".into())])).unwrap();
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_secs(3), "{wait:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let later = headers(&[("retry-after", "600".into()), ("x-ratelimit-reset", (now + 4).to_string())]);
        let wait = rate_limited.back_off(&later).unwrap();
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_secs(6), "over the maximum: the next header");
        assert_eq!(rate_limited.back_off(&headers(&[("retry-after", "soon".into())])), None);
        assert_eq!(rate_limited.back_off(&headers(&[])), None);
    }

    #[test]
    fn back_off_grows_and_stays_under_its_ceiling() {
        let policy = RetryPolicy {
            retry_on: RetryOn::SERVER_ERROR,
            num_retries: 5,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: vec![],
            retriable_headers: vec![],
            retriable_request_headers: vec![],
            rate_limited: None,
            hedge_on_per_try_timeout: false,
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
