//! Endpoint sets: the hosts of a cluster with their weights, health and connection pools, plus the
//! precomputed load-balancing tables for them.

use super::ClusterConfig;
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
                    }),
                    None => Arc::new(Endpoint {
                        addr,
                        weight,
                        health,
                        active_requests: AtomicU64::new(0),
                        pool: Arc::new(Pool::new(addr, config.protocol, config.connect_timeout, config.pool.clone())),
                        outlier: Arc::default(),
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
    /// ejected), or all of them when too few do (panic: under `healthy_panic_threshold` percent).
    fn balance(config: &ClusterConfig, all: Vec<Arc<Endpoint>>) -> Self {
        let takes_traffic = |e: &&Arc<Endpoint>| e.health.takes_traffic() && !e.outlier.is_ejected();
        let healthy: Vec<_> = all.iter().filter(takes_traffic).cloned().collect();
        let panic = !all.is_empty() && healthy.len() * 100 < all.len() * config.panic_threshold as usize;
        let healthy = if panic { all.clone() } else { healthy };
        let lb = LbTable::build(&healthy.iter().map(|e| e.weight).collect::<Vec<_>>());
        EndpointSet { all, healthy, lb, panic }
    }

    /// True when both sets hold the same endpoints (by identity), in order.
    pub fn same_as(&self, other: &EndpointSet) -> bool {
        self.all.len() == other.all.len() && self.all.iter().zip(&other.all).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}
