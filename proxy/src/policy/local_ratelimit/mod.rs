//! Local rate limiting (`envoy.filters.http.local_ratelimit`, and the token bucket the TCP
//! `envoy.filters.network.local_ratelimit` shares): a token bucket refilled continuously at
//! `tokens_per_fill` per `fill_interval` up to `max_tokens`, one token per request or connection;
//! none left: 429 (or the configured status) with `x-ratelimit-*` headers when enabled.

pub mod layer;

use super::Fraction;
use crate::routing::HeaderMutation;
use http::{HeaderMap, HeaderValue, StatusCode};
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A token bucket without a lock or a timer: it records the instant at which it was (or would
/// have been) empty; tokens are the time since then times the fill rate, up to the maximum.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    /// Nanoseconds it takes to earn one token.
    per_token_ns: u64,
    /// When the bucket was empty, in nanoseconds of [`clock`].
    empty_at: AtomicU64,
}

/// Nanoseconds on a clock that starts 1,000 days before the first use (so a new bucket can be full from
/// the start); tokio's clock, so paused-clock tests can step it.
fn clock() -> u64 {
    const OFFSET_NS: u64 = 1000 * 24 * 3600 * 1_000_000_000;
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    OFFSET_NS + start.elapsed().as_nanos() as u64
}

impl TokenBucket {
    /// A full bucket. `fill_interval` must not be zero.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let per_token_ns = (fill_interval.as_nanos() as u64 / u64::from(tokens_per_fill.max(1))).max(1);
        let full_ns = per_token_ns.saturating_mul(u64::from(max_tokens));
        TokenBucket { max_tokens, per_token_ns, empty_at: AtomicU64::new(clock().saturating_sub(full_ns)) }
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Takes a token if there is one; returns the whole tokens left either way, or `None` when empty.
    pub fn consume(&self) -> Option<u32> {
        let now = clock();
        let full_ns = self.per_token_ns.saturating_mul(u64::from(self.max_tokens));
        let mut empty_at = self.empty_at.load(Ordering::Acquire);
        loop {
            // Never more than a full bucket: an idle bucket does not bank tokens past its maximum.
            let from = empty_at.max(now.saturating_sub(full_ns));
            let next = from + self.per_token_ns;
            if next > now {
                return None;
            }
            match self.empty_at.compare_exchange_weak(empty_at, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(((now - next) / self.per_token_ns) as u32),
                Err(seen) => empty_at = seen,
            }
        }
    }

    /// Time until the next token (zero when one is there now).
    pub fn next_token_in(&self) -> Duration {
        let (now, empty_at) = (clock(), self.empty_at.load(Ordering::Acquire));
        Duration::from_nanos((empty_at + self.per_token_ns).saturating_sub(now))
    }
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
#[derive(Debug)]
pub struct LocalRateLimit {
    /// No bucket: the filter counts nothing and lets everything through (a route may set one).
    pub bucket: Option<TokenBucket>,
    /// The answer when limited (default 429; under 400 means 429, as Envoy).
    pub status: StatusCode,
    pub enabled: Fraction,
    pub enforced: Fraction,
    pub response_headers: HeaderMutation,
    pub request_headers_when_not_enforced: HeaderMutation,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    pub retry_after_header: bool,
    /// gRPC callers get RESOURCE_EXHAUSTED instead of UNAVAILABLE.
    pub grpc_resource_exhausted: bool,
    pub stats: RateLimitStats,
}

/// `<stat_prefix>.http_local_rate_limit.*`.
#[derive(Debug)]
pub struct RateLimitStats {
    pub enabled: Counter,
    pub enforced: Counter,
    pub rate_limited: Counter,
    pub ok: Counter,
}

impl RateLimitStats {
    pub fn new(stat_prefix: &str) -> Self {
        let l = "envoy_local_http_ratelimit_prefix";
        let prefix = stat_prefix.to_string();
        RateLimitStats {
            enabled: metrics::counter!("envoy_http_local_rate_limit_enabled", l => prefix.clone()),
            enforced: metrics::counter!("envoy_http_local_rate_limit_enforced", l => prefix.clone()),
            rate_limited: metrics::counter!("envoy_http_local_rate_limit_rate_limited", l => prefix.clone()),
            ok: metrics::counter!("envoy_http_local_rate_limit_ok", l => prefix),
        }
    }
}

/// What the filter makes of one request.
#[derive(Debug)]
pub enum Decision {
    /// Not enabled for this request, or no bucket.
    Pass,
    /// A token taken: on its way, with these headers for the response.
    Allowed(HeaderMap),
    /// No token, but not enforced: on its way with the not-enforced request headers.
    NotEnforced,
    /// No token: answered at once.
    Limited(Box<Limited>),
}

/// The local reply of a limited request.
#[derive(Debug)]
pub struct Limited {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub grpc_status: u32,
}

impl LocalRateLimit {
    pub fn decide(&self) -> Decision {
        let Some(bucket) = &self.bucket else { return Decision::Pass };
        if !self.enabled.sample() {
            return Decision::Pass;
        }
        self.stats.enabled.increment(1);
        let left = bucket.consume();
        let mut headers = HeaderMap::new();
        if self.x_ratelimit_headers {
            let reset = bucket.next_token_in().as_secs_f64().ceil() as u64;
            headers.insert("x-ratelimit-limit", HeaderValue::from(bucket.max_tokens()));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(left.unwrap_or(0)));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
        if left.is_some() {
            self.stats.ok.increment(1);
            return Decision::Allowed(headers);
        }
        self.stats.rate_limited.increment(1);
        if !self.enforced.sample() {
            return Decision::NotEnforced;
        }
        self.stats.enforced.increment(1);
        self.response_headers.apply(&mut headers);
        if self.retry_after_header
            && self.status == StatusCode::TOO_MANY_REQUESTS
            && !headers.contains_key("retry-after")
        {
            let wait = bucket.next_token_in().as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
        }
        let grpc_status = if self.grpc_resource_exhausted { 8 } else { 14 };
        Decision::Limited(Box::new(Limited { status: self.status, headers, grpc_status }))
    }
}

/// `envoy.filters.network.local_ratelimit`: one token per new connection; with none left the
/// connection is closed at once (`local_rate_limit.<stat_prefix>.rate_limited`).
#[derive(Debug)]
pub struct ConnectionRateLimit {
    pub bucket: TokenBucket,
    pub rate_limited: Counter,
}

impl ConnectionRateLimit {
    pub fn new(bucket: TokenBucket, stat_prefix: &str) -> Self {
        let label = "envoy_local_network_ratelimit_prefix";
        let rate_limited = metrics::counter!("envoy_local_rate_limit_rate_limited", label => stat_prefix.to_string());
        ConnectionRateLimit { bucket, rate_limited }
    }

    /// Whether a new connection may stay.
    pub fn admit(&self) -> bool {
        let admitted = self.bucket.consume().is_some();
        if !admitted {
            self.rate_limited.increment(1);
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_its_rate_up_to_its_maximum() {
        let bucket = TokenBucket::new(3, 1, Duration::from_secs(1));
        assert_eq!((bucket.consume(), bucket.consume(), bucket.consume()), (Some(2), Some(1), Some(0)));
        assert_eq!(bucket.consume(), None, "empty");
        assert_eq!(bucket.next_token_in(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!((bucket.consume(), bucket.consume()), (Some(0), None), "one token a second");
        tokio::time::advance(Duration::from_secs(60)).await;
        let taken = std::iter::from_fn(|| bucket.consume()).count();
        assert_eq!(taken, 3, "an idle bucket holds no more than its maximum");
        let never = TokenBucket::new(0, 1, Duration::from_secs(1));
        assert_eq!(never.consume(), None, "max_tokens 0 refuses everything");
    }
}
