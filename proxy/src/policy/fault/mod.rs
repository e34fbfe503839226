//! Fault injection (`envoy.filters.http.fault`), as Istio's VirtualService `fault` uses it: a share
//! of requests delayed (a fixed time, or what `x-envoy-fault-delay-request` asks for) and a share
//! aborted with an HTTP or gRPC status (fixed, or from `x-envoy-fault-abort-request` /
//! `x-envoy-fault-abort-grpc-request`), a share of responses whose body is slowed to a rate (fixed,
//! or from `x-envoy-fault-throughput-response`), only for requests matching `headers`, at most
//! `max_active_faults` at once.

pub mod layer;

use super::Fraction;
use crate::routing::HeaderMatcher;
use http::HeaderMap;
use metrics::{Counter, Gauge};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a delay is: fixed, or from the request's `x-envoy-fault-delay-request` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayLength {
    Fixed(Duration),
    FromHeader,
}

/// What an abort answers: an HTTP status, a gRPC status, or what the request's headers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWith {
    Http(u16),
    Grpc(u32),
    FromHeader,
}

#[derive(Debug)]
pub struct FaultDelay {
    pub length: DelayLength,
    pub share: Fraction,
}

#[derive(Debug)]
pub struct FaultAbort {
    pub with: AbortWith,
    pub share: Fraction,
    /// `response_body` (Envoy's default "fault filter abort").
    pub body: String,
}

/// How fast a slowed response body goes: a fixed rate, or what the request's
/// `x-envoy-fault-throughput-response` asks for (KiB/s both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throughput {
    FixedKbps(u64),
    FromHeader,
}

/// `response_rate_limit`.
#[derive(Debug)]
pub struct ResponseRateLimit {
    pub throughput: Throughput,
    pub share: Fraction,
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`.
#[derive(Debug)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    pub response_rate_limit: Option<ResponseRateLimit>,
    /// Only requests matching all of these get faults.
    pub headers: Vec<HeaderMatcher>,
    /// Faults in progress at most (default unlimited).
    pub max_active_faults: Option<u32>,
    /// When given, only requests whose `x-envoy-downstream-service-node` is one of these get faults.
    pub downstream_nodes: Vec<String>,
    /// When given, only requests bound for this cluster get faults.
    pub upstream_cluster: Option<String>,
}

/// `http.<stat_prefix>.fault.*`, and the faults in progress: the connection manager's filter's,
/// whichever route's settings apply.
#[derive(Debug)]
pub struct FaultStats {
    active: Arc<AtomicU32>,
    pub delays_injected: Counter,
    pub aborts_injected: Counter,
    pub faults_overflow: Counter,
    pub response_rl_injected: Counter,
    pub active_faults: Gauge,
}

impl FaultStats {
    pub fn new(hcm_prefix: &str) -> Self {
        let l = "envoy_http_conn_manager_prefix";
        let prefix = hcm_prefix.to_string();
        FaultStats {
            active: Arc::default(),
            delays_injected: metrics::counter!("envoy_http_fault_delays_injected", l => prefix.clone()),
            aborts_injected: metrics::counter!("envoy_http_fault_aborts_injected", l => prefix.clone()),
            faults_overflow: metrics::counter!("envoy_http_fault_faults_overflow", l => prefix.clone()),
            response_rl_injected: metrics::counter!("envoy_http_fault_response_rl_injected", l => prefix.clone()),
            active_faults: metrics::gauge!("envoy_http_fault_active_faults", l => prefix),
        }
    }
}

/// The faults picked for one request; holds its place among the active faults until dropped.
#[derive(Debug, Default)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
    /// The response body's rate, bytes per second.
    pub response_rate: Option<u64>,
    /// Its place among the faults in progress.
    _active: Option<ActiveFault>,
}

/// An abort's answer.
#[derive(Debug, Clone)]
pub struct Abort {
    pub status: http::StatusCode,
    pub grpc_status: Option<u32>,
    pub body: String,
}

#[derive(Debug)]
struct ActiveFault(Arc<AtomicU32>, Gauge);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.decrement(1.0);
    }
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The share a `x-envoy-fault-*-percentage` header asks for (over the config's denominator), never
/// more than the config's.
fn share(headers: &HeaderMap, header: &str, config: Fraction) -> Fraction {
    match header_number(headers, header) {
        Some(n) => Fraction { numerator: (n.min(u64::from(config.numerator))) as u32, ..config },
        None => config,
    }
}

impl Fault {
    /// No delay, abort or response rate limit configured (a filter's config with no fault in it).
    pub fn injects_nothing(&self) -> bool {
        self.delay.is_none() && self.abort.is_none() && self.response_rate_limit.is_none()
    }

    /// Picks this request's faults (none, a delay, an abort, or both: the delay first).
    /// `cluster`: where the route sends this request.
    pub fn decide(&self, headers: &HeaderMap, stats: &FaultStats, cluster: Option<&str>) -> Injected {
        if !self.headers.iter().all(|m| m.matches(headers)) {
            return Injected::default();
        }
        if self.upstream_cluster.as_deref().is_some_and(|wanted| cluster != Some(wanted)) {
            return Injected::default();
        }
        if !self.downstream_nodes.is_empty() {
            let node = headers.get("x-envoy-downstream-service-node").and_then(|v| v.to_str().ok());
            if !node.is_some_and(|node| self.downstream_nodes.iter().any(|n| n == node)) {
                return Injected::default();
            }
        }
        let delay = self.delay.as_ref().and_then(|d| {
            let length = match d.length {
                DelayLength::Fixed(length) => length,
                DelayLength::FromHeader => {
                    Duration::from_millis(header_number(headers, "x-envoy-fault-delay-request")?)
                }
            };
            share(headers, "x-envoy-fault-delay-request-percentage", d.share).sample().then_some(length)
        });
        let abort = self.abort.as_ref().and_then(|a| {
            let (status, grpc_status) = match a.with {
                AbortWith::Http(code) => (code, None),
                AbortWith::Grpc(code) => (200, Some(code)),
                AbortWith::FromHeader => match header_number(headers, "x-envoy-fault-abort-request") {
                    Some(code @ 200..=599) => (code as u16, None),
                    _ => (200, Some(u32::try_from(header_number(headers, "x-envoy-fault-abort-grpc-request")?).ok()?)),
                },
            };
            let status = http::StatusCode::from_u16(status).ok()?;
            let picked = share(headers, "x-envoy-fault-abort-request-percentage", a.share).sample();
            picked.then(|| Abort { status, grpc_status, body: a.body.clone() })
        });
        let response_rate = self.response_rate_limit.as_ref().and_then(|r| {
            let kbps = match r.throughput {
                Throughput::FixedKbps(kbps) => kbps,
                Throughput::FromHeader => header_number(headers, "x-envoy-fault-throughput-response")?,
            };
            let picked = share(headers, "x-envoy-fault-throughput-response-percentage", r.share).sample();
            (picked && kbps > 0).then_some(kbps.saturating_mul(1024))
        });
        if delay.is_none() && abort.is_none() && response_rate.is_none() {
            return Injected::default();
        }
        let limit = self.max_active_faults.unwrap_or(u32::MAX);
        if stats.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).is_err() {
            stats.faults_overflow.increment(1);
            return Injected::default();
        }
        stats.active_faults.increment(1.0);
        if delay.is_some() {
            stats.delays_injected.increment(1);
        }
        if abort.is_some() {
            stats.aborts_injected.increment(1);
        }
        if response_rate.is_some() {
            stats.response_rl_injected.increment(1);
        }
        let _active = Some(ActiveFault(stats.active.clone(), stats.active_faults.clone()));
        Injected { delay, abort, response_rate, _active }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(delay: Option<FaultDelay>, abort: Option<FaultAbort>, max_active_faults: Option<u32>) -> Fault {
        Fault {
            delay,
            abort,
            response_rate_limit: None,
            headers: vec![],
            max_active_faults,
            downstream_nodes: vec![],
            upstream_cluster: None,
        }
    }

    fn driven_abort() -> Option<FaultAbort> {
        Some(FaultAbort { with: AbortWith::FromHeader, share: Fraction::ALL, body: "x".into() })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (http::HeaderName::from_static(n), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn faults_come_from_the_config_or_the_request_headers() {
        let fixed = fault(
            Some(FaultDelay { length: DelayLength::Fixed(Duration::from_millis(5)), share: Fraction::ALL }),
            Some(FaultAbort { with: AbortWith::Http(503), share: Fraction::ALL, body: "x".into() }),
            Some(1),
        );
        let stats = FaultStats::new("t");
        let first = fixed.decide(&HeaderMap::new(), &stats, None);
        assert_eq!(first.delay, Some(Duration::from_millis(5)));
        assert_eq!(first.abort.as_ref().map(|a| a.status.as_u16()), Some(503));
        assert!(
            fixed.decide(&HeaderMap::new(), &stats, None).abort.is_none(),
            "max_active_faults 1: the second is spared"
        );
        drop(first);
        assert!(fixed.decide(&HeaderMap::new(), &stats, None).abort.is_some(), "a finished fault frees its place");

        let driven = fault(
            Some(FaultDelay { length: DelayLength::FromHeader, share: Fraction::ALL }),
            Some(FaultAbort { with: AbortWith::FromHeader, share: Fraction::ALL, body: "x".into() }),
            None,
        );
        assert!(driven.decide(&HeaderMap::new(), &stats, None).abort.is_none(), "no header, no fault");
        let asked = driven.decide(
            &headers(&[("x-envoy-fault-delay-request", "20"), ("x-envoy-fault-abort-request", "418")]),
            &stats,
            None,
        );
        assert_eq!((asked.delay, asked.abort.map(|a| a.status.as_u16())), (Some(Duration::from_millis(20)), Some(418)));
        let grpc = driven.decide(&headers(&[("x-envoy-fault-abort-grpc-request", "14")]), &stats, None);
        assert_eq!(grpc.abort.map(|a| a.grpc_status), Some(Some(14)));
        let only = Fault { downstream_nodes: vec!["frontend".into()], ..fault(None, driven_abort(), None) };
        assert!(only.decide(&headers(&[("x-envoy-fault-abort-request", "418")]), &stats, None).abort.is_none());
        let from_frontend =
            headers(&[("x-envoy-fault-abort-request", "418"), ("x-envoy-downstream-service-node", "frontend")]);
        assert!(only.decide(&from_frontend, &stats, None).abort.is_some(), "the listed node gets its fault");
        let bound = Fault { upstream_cluster: Some("a".into()), ..fault(None, driven_abort(), None) };
        let asked = headers(&[("x-envoy-fault-abort-request", "418")]);
        assert!(bound.decide(&asked, &stats, Some("b")).abort.is_none(), "another cluster's request is spared");
        assert!(bound.decide(&asked, &stats, Some("a")).abort.is_some());
        let none = driven.decide(
            &headers(&[("x-envoy-fault-abort-request", "418"), ("x-envoy-fault-abort-request-percentage", "0")]),
            &stats,
            None,
        );
        assert!(none.abort.is_none(), "the request's percentage applies");
    }
}
