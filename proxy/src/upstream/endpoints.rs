//! Endpoint sets: the hosts of a cluster with their weights, health and connection pools, plus the
//! precomputed load-balancing tables for them.

use super::ClusterConfig;
use super::health::HostHealth;
use super::lb::LbTable;
use super::outlier::HostOutlier;
use super::pool::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Envoy's `core.v3.HealthStatus` as far as it decides whether an endpoint takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    pub fn takes_traffic(self) -> bool {
        matches!(self, HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown | HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Draining => "draining",
            HealthStatus::Timeout => "timeout",
            HealthStatus::Degraded => "degraded",
        }
    }
}

/// One upstream host.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: HealthStatus,
    /// Requests in flight, for least-request balancing.
    pub active_requests: AtomicU64,
    pub pool: Arc<Pool>,
    /// Outlier detection's view of this address (kept by every version of the endpoint).
    pub outlier: Arc<HostOutlier>,
    /// Active health checking's view of this address (kept likewise).
    pub health_check: Arc<HostHealth>,
}

impl Endpoint {
    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of a cluster at one moment.
#[derive(Debug)]
pub struct EndpointSet {
    pub all: Vec<Arc<Endpoint>>,
    /// The endpoints the balancer picks from, in the same order as `lb`'s tables: those that take
    /// traffic, or all in panic.
    pub healthy: Vec<Arc<Endpoint>>,
    pub lb: LbTable,
    /// Too few endpoints take traffic: the balancer uses all of them.
    pub panic: bool,
    /// The cluster is actively health checked (endpoints' check results count).
    pub health_checked: bool,
}

impl Endpoint {
    /// Whether it takes traffic by its EDS health, outlier detection and (when `checked`) active
    /// health checks.
    pub fn takes_traffic(&self, checked: bool) -> bool {
        self.health.takes_traffic() && !self.outlier.is_ejected() && !(checked && self.health_check.is_failed())
    }
}

impl EndpointSet {
    /// Builds a set, reusing the `Endpoint` (pool and counters) of any address already in `previous`.
    pub fn build(
        config: &ClusterConfig,
        addrs: Vec<(SocketAddr, u32, HealthStatus)>,
        previous: Option<&EndpointSet>,
    ) -> Self {
        let all: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|(addr, weight, health)| {
                let old = previous.and_then(|p| p.all.iter().find(|e| e.addr == addr));
                match old {
                    Some(e) if e.weight == weight && e.health == health => e.clone(),
                    Some(e) => Arc::new(Endpoint {
                        addr,
                        weight,
                        health,
                        active_requests: AtomicU64::new(e.active_requests.load(Ordering::Relaxed)),
                        pool: e.pool.clone(),
                        outlier: e.outlier.clone(),
                        health_check: e.health_check.clone(),
                    }),
                    None => Arc::new(Endpoint {
                        addr,
                        weight,
                        health,
                        active_requests: AtomicU64::new(0),
                        pool: Arc::new(Pool::new(addr, config.protocol, config.connect_timeout, config.pool.clone())),
                        outlier: Arc::default(),
                        health_check: Arc::new(HostHealth::new(config.health_check.is_some())),
                    }),
                }
            })
            .collect();
        Self::balance(config, all)
    }

    /// The same endpoints with their health looked at again (after an ejection or a return).
    pub fn rebalanced(&self, config: &ClusterConfig) -> Self {
        Self::balance(config, self.all.clone())
    }

    /// Which endpoints the balancer picks from: those that take traffic (by EDS health, not
    /// ejected, passing active health checks), or all of them when too few do (panic: their share
    /// times 1.4 under `healthy_panic_threshold` percent).
    fn balance(config: &ClusterConfig, all: Vec<Arc<Endpoint>>) -> Self {
        let checked = config.health_check.is_some();
        let healthy: Vec<_> = all.iter().filter(|e| e.takes_traffic(checked)).cloned().collect();
        let panic = in_panic(healthy.len(), all.len(), config.panic_threshold);
        let healthy = if panic { all.clone() } else { healthy };
        let lb = LbTable::build(&config.lb_policy, &healthy.iter().map(|e| (e.addr, e.weight)).collect::<Vec<_>>());
        EndpointSet { all, healthy, lb, panic, health_checked: checked }
    }

    /// True when both sets hold the same endpoints (by identity), in order.
    pub fn same_as(&self, other: &EndpointSet) -> bool {
        self.all.len() == other.all.len() && self.all.iter().zip(&other.all).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Envoy's panic rule: the health of the endpoints (their healthy share scaled by the
/// overprovisioning factor 1.4, at most 100%) under the threshold percentage.
fn in_panic(healthy: usize, total: usize, threshold: u32) -> bool {
    let health = (140 * healthy).checked_div(total).map_or(100, |h| h.min(100));
    health < threshold as usize
}

#[cfg(test)]
mod tests {
    use super::in_panic;

    #[test]
    fn panic_follows_envoys_overprovisioned_health() {
        assert!(in_panic(1, 3, 50), "1.4 x 33% = 46% < 50%");
        assert!(!in_panic(2, 5, 50), "1.4 x 40% = 56%");
        assert!(!in_panic(1, 2, 50));
        assert!(in_panic(0, 4, 50));
        assert!(!in_panic(0, 4, 0), "0 turns panic off");
        assert!(!in_panic(0, 0, 50), "no endpoints at all is not panic");
    }
}
