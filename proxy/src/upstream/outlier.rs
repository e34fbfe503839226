//! Outlier detection (`outlier_detection`), Envoy's passive health checking: every upstream answer
//! is reported against its endpoint; consecutive 5xx (or gateway failures, or local failures such as
//! a refused connection, which count as both) eject the endpoint at once, and a sweep every
//! `interval` returns endpoints whose ejection time is over and ejects by success rate and failure
//! percentage. Detection by consecutive failures fires when the count reaches its threshold, and the
//! count is reset only by a success (Envoy's behaviour). With `split_external_local_origin_errors`
//! local failures (connect failures, resets, timeouts) are counted apart, by
//! `consecutive_local_origin_failure` and their own success rate and failure percentage, and the 5xx
//! counts see only the upstream's answers. An ejected endpoint takes no traffic (unless the cluster is in panic); each ejection of
//! the same endpoint lasts longer (`base_ejection_time` times the ejections, at most
//! `max_ejection_time`), and the multiplier goes back down while it stays healthy.

use super::endpoints::Endpoint;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
// Tokio's clock (the system's outside tests), so ejection times follow a paused test clock.
use tokio::time::Instant;

/// A validated `OutlierDetection`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_success_rate: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Thousandths of a standard deviation (1900: 1.9).
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage_local_origin: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage_local_origin: 0,
        }
    }
}

/// What came back from one attempt, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response: the connection failed, was reset, or timed out (counts as a 503).
    LocalFailure,
    /// Not sent: the cluster's circuit breaker was open (says nothing about the endpoint).
    NotSent,
}

impl Outcome {
    pub fn of(result: &Result<super::pool::UpstreamResponse, super::UpstreamError>) -> Outcome {
        match result {
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(super::UpstreamError::Overflow | super::UpstreamError::PoolOverflow) => Outcome::NotSent,
            Err(_) => Outcome::LocalFailure,
        }
    }
}

/// Why an endpoint was found to be an outlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    SuccessRate,
    FailurePercentage,
    ConsecutiveLocalOriginFailure,
    LocalOriginSuccessRate,
    LocalOriginFailurePercentage,
}

/// One endpoint's outlier state, shared by every version of that endpoint (it outlives config swaps
/// that keep the address).
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Answers in the current interval, for success rate and failure percentage.
    successes: AtomicU64,
    failures: AtomicU64,
    /// Split mode: local failures in a row, and the interval's local successes and failures.
    consecutive_local: AtomicU32,
    local_successes: AtomicU64,
    local_failures: AtomicU64,
    ejected: AtomicBool,
    /// The ejection-time multiplier: times ejected, less the healthy intervals since.
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Counts an outcome; the reason when it makes the endpoint an outlier now.
    pub fn record(&self, outcome: Outcome, config: &OutlierConfig) -> Option<Reason> {
        if config.split_external_local_origin_errors {
            match outcome {
                Outcome::LocalFailure => {
                    self.local_failures.fetch_add(1, Ordering::Relaxed);
                    let c = self.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                    return (c == config.consecutive_local_origin_failure)
                        .then_some(Reason::ConsecutiveLocalOriginFailure);
                }
                // An answer came: the connection worked, whatever the status says.
                Outcome::Status(_) => {
                    self.local_successes.fetch_add(1, Ordering::Relaxed);
                    self.consecutive_local.store(0, Ordering::Relaxed);
                }
                Outcome::NotSent => return None,
            }
        }
        let (server_error, gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::LocalFailure => (true, true),
            Outcome::NotSent => return None,
        };
        if !server_error {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let c5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if gateway {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        if c5 == config.consecutive_5xx {
            Some(Reason::Consecutive5xx)
        } else if cg == config.consecutive_gateway_failure {
            Some(Reason::ConsecutiveGatewayFailure)
        } else {
            None
        }
    }

    fn eject(&self, config: &OutlierConfig, now: Instant) {
        let times = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let base = config.base_ejection_time.saturating_mul(times);
        let jitter = config.max_ejection_time_jitter.mul_f64(fastrand::f64());
        let length = base.min(config.max_ejection_time.max(config.base_ejection_time)) + jitter;
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + length);
        // As in Envoy, the consecutive counts go on (only a success resets them): an endpoint back
        // from ejection that still fails is not ejected again for it.
        self.ejected.store(true, Ordering::Release);
    }

    /// Ends an ejection whose time is over; true when it did.
    fn uneject_if_due(&self, now: Instant) -> bool {
        let mut until = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if now >= t => {
                *until = None;
                self.ejected.store(false, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// The interval's (successes, total) so far, and starts a new interval.
    fn take_interval(&self) -> (u64, u64) {
        let s = self.successes.swap(0, Ordering::Relaxed);
        let f = self.failures.swap(0, Ordering::Relaxed);
        (s, s + f)
    }

    /// The same for local-origin outcomes (split mode).
    fn take_local_interval(&self) -> (u64, u64) {
        let s = self.local_successes.swap(0, Ordering::Relaxed);
        let f = self.local_failures.swap(0, Ordering::Relaxed);
        (s, s + f)
    }
}

/// Envoy's enforcement roll: eject with this percentage of chance.
fn enforced(percent: u32) -> bool {
    percent >= 100 || fastrand::u32(0..100) < percent
}

/// Whether one more endpoint may be ejected from `all`.
fn room_to_eject(all: &[Arc<Endpoint>], config: &OutlierConfig) -> bool {
    let ejected = all.iter().filter(|e| e.outlier.is_ejected()).count();
    let total = all.len().max(1);
    (ejected + 1) * 100 <= total * config.max_ejection_percent as usize
        || (config.always_eject_one_host && ejected == 0)
}

/// What a detection led to, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Detected and ejected.
    Ejected(Reason),
    /// Detected; not ejected (the roll, or the cluster's maximum).
    Detected(Reason),
    /// Detected, and refused because too many are ejected already.
    Overflow(Reason),
}

/// Acts on a detection for `endpoint` among `all`.
pub fn detected(endpoint: &Endpoint, all: &[Arc<Endpoint>], reason: Reason, config: &OutlierConfig) -> Verdict {
    let enforcing = match reason {
        Reason::Consecutive5xx => config.enforcing_consecutive_5xx,
        Reason::ConsecutiveGatewayFailure => config.enforcing_consecutive_gateway_failure,
        Reason::SuccessRate => config.enforcing_success_rate,
        Reason::FailurePercentage => config.enforcing_failure_percentage,
        Reason::ConsecutiveLocalOriginFailure => config.enforcing_consecutive_local_origin_failure,
        Reason::LocalOriginSuccessRate => config.enforcing_local_origin_success_rate,
        Reason::LocalOriginFailurePercentage => config.enforcing_failure_percentage_local_origin,
    };
    if endpoint.outlier.is_ejected() || !enforced(enforcing) {
        return Verdict::Detected(reason);
    }
    if !room_to_eject(all, config) {
        return Verdict::Overflow(reason);
    }
    endpoint.outlier.eject(config, Instant::now());
    Verdict::Ejected(reason)
}

/// One sweep over a cluster's endpoints: returns ejected ones whose time is over (and lowers the
/// multiplier of the healthy ones), then ejects by success rate and failure percentage over the
/// interval's answers. The verdicts, and whether any endpoint came back.
pub fn sweep(all: &[Arc<Endpoint>], config: &OutlierConfig) -> (Vec<Verdict>, bool) {
    let now = Instant::now();
    let mut returned = false;
    let (mut volumes, mut local_volumes) = (Vec::new(), Vec::new());
    for e in all {
        let o = &e.outlier;
        let interval = o.take_interval();
        let local = o.take_local_interval();
        if o.is_ejected() {
            returned |= o.uneject_if_due(now);
        } else {
            let _ = o.ejections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            volumes.push((e.clone(), interval));
            local_volumes.push((e.clone(), local));
        }
    }
    let mut verdicts = Vec::new();
    judge(all, &volumes, config, [Reason::SuccessRate, Reason::FailurePercentage], &mut verdicts);
    if config.split_external_local_origin_errors {
        let reasons = [Reason::LocalOriginSuccessRate, Reason::LocalOriginFailurePercentage];
        judge(all, &local_volumes, config, reasons, &mut verdicts);
    }
    (verdicts, returned)
}

/// Success rate (below the mean by more than the factor times the standard deviation) and failure
/// percentage (at or over the threshold) over one kind of the interval's answers.
fn judge(
    all: &[Arc<Endpoint>],
    volumes: &[(Arc<Endpoint>, (u64, u64))],
    config: &OutlierConfig,
    [success_rate, failure_percentage]: [Reason; 2],
    verdicts: &mut Vec<Verdict>,
) {
    let rated: Vec<(&Arc<Endpoint>, f64)> = volumes
        .iter()
        .filter(|(_, (_, total))| *total >= u64::from(config.success_rate_request_volume))
        .map(|(e, (ok, total))| (e, *ok as f64 * 100.0 / *total as f64))
        .collect();
    if rated.len() >= config.success_rate_minimum_hosts as usize && !rated.is_empty() {
        let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / rated.len() as f64;
        let variance = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / rated.len() as f64;
        let threshold = mean - f64::from(config.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
        for (e, rate) in &rated {
            if *rate < threshold {
                verdicts.push(detected(e, all, success_rate, config));
            }
        }
    }
    let counted: Vec<_> = volumes
        .iter()
        .filter(|(_, (_, total))| *total >= u64::from(config.failure_percentage_request_volume))
        .collect();
    if counted.len() >= config.failure_percentage_minimum_hosts as usize {
        for (e, (ok, total)) in counted {
            let failed = (total - ok) as f64 * 100.0 / *total as f64;
            if failed >= f64::from(config.failure_percentage_threshold) {
                verdicts.push(detected(e, all, failure_percentage, config));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_are_found_at_their_threshold_and_reset_by_a_success() {
        let config = OutlierConfig { consecutive_5xx: 3, consecutive_gateway_failure: 2, ..Default::default() };
        let h = HostOutlier::default();
        assert_eq!(h.record(Outcome::Status(500), &config), None);
        assert_eq!(h.record(Outcome::Status(200), &config), None);
        assert_eq!(h.record(Outcome::Status(500), &config), None);
        assert_eq!(h.record(Outcome::Status(500), &config), None);
        assert_eq!(h.record(Outcome::Status(500), &config), Some(Reason::Consecutive5xx));
        let g = HostOutlier::default();
        assert_eq!(g.record(Outcome::Status(503), &config), None);
        assert_eq!(g.record(Outcome::LocalFailure, &config), Some(Reason::ConsecutiveGatewayFailure));
    }

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        use super::super::endpoints::{HealthStatus, Member};
        (0..n)
            .map(|i| {
                let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1000 + i as u16).into();
                let member = Member {
                    addr,
                    weight: 1,
                    health: HealthStatus::Healthy,
                    priority: 0,
                    locality: Default::default(),
                };
                Arc::new(Endpoint::new(&Default::default(), member))
            })
            .collect()
    }

    /// Feeds `ok` successes and `failed` 500s to an endpoint.
    fn answers(e: &Endpoint, ok: usize, failed: usize, config: &OutlierConfig) {
        let statuses = std::iter::repeat_n(200, ok).chain(std::iter::repeat_n(500, failed));
        for status in statuses {
            e.outlier.record(Outcome::Status(status), config);
        }
    }

    #[test]
    fn the_sweep_ejects_by_success_rate_and_failure_percentage() {
        let config = OutlierConfig { max_ejection_percent: 100, consecutive_5xx: 1000, ..Default::default() };
        let all = endpoints(5);
        for e in &all[..4] {
            answers(e, 100, 0, &config);
        }
        answers(&all[4], 50, 50, &config);
        // Mean 90%, deviation 20: under 90 - 1.9 * 20 = 52% is an outlier.
        let (verdicts, returned) = sweep(&all, &config);
        assert_eq!(verdicts, [Verdict::Ejected(Reason::SuccessRate)]);
        assert!(!returned && all[4].outlier.is_ejected() && !all[0].outlier.is_ejected());

        let config = OutlierConfig {
            enforcing_success_rate: 0,
            enforcing_failure_percentage: 100,
            max_ejection_percent: 100,
            consecutive_5xx: 1000,
            ..Default::default()
        };
        let all = endpoints(5);
        for e in &all[..4] {
            answers(e, 60, 0, &config);
        }
        answers(&all[4], 6, 54, &config);
        // 60 answers each: too few for success rate (100), enough for failure percentage (50).
        let (verdicts, _) = sweep(&all, &config);
        assert_eq!(verdicts, [Verdict::Ejected(Reason::FailurePercentage)]);
        // Too few endpoints with enough answers: nothing is judged.
        let few = endpoints(3);
        answers(&few[2], 0, 100, &config);
        assert!(sweep(&few, &config).0.is_empty());
    }

    #[test]
    fn split_mode_counts_local_failures_apart_from_the_upstreams_answers() {
        let config = OutlierConfig {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            consecutive_5xx: 2,
            ..Default::default()
        };
        let h = HostOutlier::default();
        // A 500 and a local failure: neither count reaches 2 (they are kept apart).
        assert_eq!(h.record(Outcome::Status(500), &config), None);
        assert_eq!(h.record(Outcome::LocalFailure, &config), None);
        // Any answer resets the local count, a 500 included; two local failures in a row eject.
        assert_eq!(h.record(Outcome::Status(503), &config), Some(Reason::Consecutive5xx));
        assert_eq!(h.record(Outcome::LocalFailure, &config), None);
        assert_eq!(h.record(Outcome::LocalFailure, &config), Some(Reason::ConsecutiveLocalOriginFailure));
        // Not split: a local failure is a 5xx too.
        let joint = OutlierConfig { consecutive_5xx: 2, ..Default::default() };
        let g = HostOutlier::default();
        assert_eq!(g.record(Outcome::Status(500), &joint), None);
        assert_eq!(g.record(Outcome::LocalFailure, &joint), Some(Reason::Consecutive5xx));
    }

    /// A cluster's sweeps on a paused clock: an ejected endpoint takes no traffic until a sweep
    /// after its ejection time; ejected again, it stays out twice as long.
    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_come_back_at_the_sweep_after_their_time() {
        use crate::upstream::{Cluster, ClusterConfig, EndpointSpec, HealthStatus};
        let spec = |port| EndpointSpec {
            host: "127.0.0.1".into(),
            port,
            weight: 1,
            health: HealthStatus::Healthy,
            priority: 0,
            locality: Default::default(),
        };
        let outlier = OutlierConfig {
            consecutive_5xx: 1,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            ..Default::default()
        };
        let config =
            ClusterConfig { endpoints: vec![spec(1001), spec(1002)], outlier: Some(outlier), ..Default::default() };
        let cluster = Cluster::new(config);
        cluster.start_discovery(&tokio::runtime::Handle::current()).await;
        let bad = cluster.endpoints().all[0].clone();
        let takes_traffic = |cluster: &Cluster| (0..50).any(|_| cluster.pick(None).is_some_and(|e| e.addr == bad.addr));
        // A second at a time, letting the sweep task run at each step, as a clock would.
        let wait = |secs| async move {
            for _ in 0..secs {
                tokio::time::advance(Duration::from_secs(1)).await;
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
            }
        };
        cluster.report(&bad, Outcome::Status(500));
        assert!(!takes_traffic(&cluster), "ejected at once");
        wait(29).await;
        assert!(!takes_traffic(&cluster), "still out after 29 s");
        wait(2).await;
        assert!(takes_traffic(&cluster), "back at the sweep at 30 s");
        // A success resets its count (only a success does); the next 500 ejects it again.
        cluster.report(&bad, Outcome::Status(200));
        cluster.report(&bad, Outcome::Status(500));
        wait(55).await;
        assert!(!takes_traffic(&cluster), "the second ejection lasts 60 s");
        wait(10).await;
        assert!(takes_traffic(&cluster), "back after 60 s, at a sweep");
    }

    #[test]
    fn ejections_last_longer_each_time_up_to_the_maximum() {
        let config = OutlierConfig {
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..Default::default()
        };
        let h = HostOutlier::default();
        let now = Instant::now();
        for (n, expected) in [(1, 10), (2, 20), (3, 25)] {
            h.eject(&config, now);
            assert_eq!(*h.ejected_until.lock().unwrap(), Some(now + Duration::from_secs(expected)), "ejection {n}");
        }
        assert!(!h.uneject_if_due(now + Duration::from_secs(24)));
        assert!(h.uneject_if_due(now + Duration::from_secs(25)));
        assert!(!h.is_ejected());
    }
}
