//! The limits a request runs under beyond the route's `timeout`: the caller's `grpc-timeout`
//! (honoured up to the route's `max_grpc_timeout` as the route timeout, or up to
//! `max_stream_duration.grpc_timeout_header_max` as the stream's limit) and the stream's maximum
//! duration (`max_stream_duration`, or the connection manager's), as Envoy computes them.

use http::HeaderMap;
use std::time::Duration;

/// A route's `max_stream_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDuration {
    /// `Some(ZERO)`: no limit on this route, whatever the connection manager's.
    pub max: Option<Duration>,
    /// When set, a gRPC request's `grpc-timeout` is its limit, capped at this (zero: uncapped).
    pub grpc_header_max: Option<Duration>,
    /// Taken off the `grpc-timeout`, to leave time for the answer to come back.
    pub grpc_header_offset: Option<Duration>,
}

/// A route's legacy `max_grpc_timeout` (with `grpc_timeout_offset`): a gRPC request's route timeout
/// is its `grpc-timeout`, capped at the maximum (zero: uncapped; no header: the maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcTimeout {
    pub max: Duration,
    pub offset: Option<Duration>,
}

/// The `grpc-timeout` of a request: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What the upstream is told it has (`x-envoy-expected-rq-timeout-ms`): the per-try timeout when
/// shorter than the route's, else the route's; nothing when neither limits the request.
pub fn expected(timeout: Option<Duration>, per_try: Option<Duration>) -> Option<Duration> {
    match (per_try, timeout) {
        (Some(per_try), Some(whole)) if per_try < whole => Some(per_try),
        (Some(per_try), None) => Some(per_try),
        (_, whole) => whole,
    }
}

/// [`expected`] as the header's value (milliseconds).
pub fn expected_header(timeout: Option<Duration>, per_try: Option<Duration>) -> Option<http::HeaderValue> {
    expected(timeout, per_try).map(|d| http::HeaderValue::from(d.as_millis() as u64))
}

fn less_offset(timeout: Duration, offset: Option<Duration>) -> Duration {
    match offset {
        Some(offset) if !timeout.is_zero() => timeout.saturating_sub(offset),
        _ => timeout,
    }
}

impl GrpcTimeout {
    /// The route timeout of a gRPC request with this `grpc-timeout` (`None`: no limit).
    pub fn route_timeout(&self, asked: Option<Duration>) -> Option<Duration> {
        let mut timeout = less_offset(asked.unwrap_or_default(), self.offset);
        if !self.max.is_zero() && (timeout.is_zero() || timeout > self.max) {
            timeout = self.max;
        }
        (!timeout.is_zero()).then_some(timeout)
    }
}

impl StreamDuration {
    /// The stream's limit on this route: the gRPC caller's when the route honours it, else the
    /// route's, else the connection manager's (`default`). `None`: no limit.
    pub fn limit(
        route: Option<&StreamDuration>,
        default: Option<Duration>,
        asked: Option<Duration>,
    ) -> Option<Duration> {
        let Some(route) = route else { return default };
        let limit = match (asked, route.grpc_header_max) {
            (Some(asked), Some(max)) => {
                let capped = if !max.is_zero() && asked > max { max } else { asked };
                less_offset(capped, route.grpc_header_offset)
            }
            _ => match route.max {
                Some(max) => max,
                None => return default,
            },
        };
        (!limit.is_zero()).then_some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static(value));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(asked("2S"), Some(Duration::from_secs(2)));
        assert_eq!(asked("150m"), Some(Duration::from_millis(150)));
        assert_eq!(asked("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(asked("100u"), Some(Duration::from_micros(100)));
        assert_eq!((asked("123456789m"), asked("5x"), asked("m")), (None, None, None));
    }

    #[test]
    fn the_callers_deadline_is_capped_and_offset() {
        let legacy = GrpcTimeout { max: Duration::from_secs(1), offset: None };
        assert_eq!(legacy.route_timeout(asked("200m")), Some(Duration::from_millis(200)));
        assert_eq!(legacy.route_timeout(asked("5S")), Some(Duration::from_secs(1)), "capped");
        assert_eq!(legacy.route_timeout(None), Some(Duration::from_secs(1)), "no header: the maximum");
        let uncapped = GrpcTimeout { max: Duration::ZERO, offset: Some(Duration::from_millis(50)) };
        assert_eq!(uncapped.route_timeout(asked("5S")), Some(Duration::from_millis(4950)));
        assert_eq!(uncapped.route_timeout(None), None, "zero: no limit");

        let route = StreamDuration {
            max: Some(Duration::from_secs(3)),
            grpc_header_max: Some(Duration::from_secs(1)),
            grpc_header_offset: None,
        };
        let default = Some(Duration::from_secs(60));
        assert_eq!(StreamDuration::limit(Some(&route), default, asked("300m")), Some(Duration::from_millis(300)));
        assert_eq!(StreamDuration::limit(Some(&route), default, asked("9S")), Some(Duration::from_secs(1)));
        assert_eq!(StreamDuration::limit(Some(&route), default, None), Some(Duration::from_secs(3)));
        let off = StreamDuration { max: Some(Duration::ZERO), grpc_header_max: None, grpc_header_offset: None };
        assert_eq!(StreamDuration::limit(Some(&off), default, None), None, "zero turns the limit off");
        assert_eq!(StreamDuration::limit(None, default, None), default);
    }
}
