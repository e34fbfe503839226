//! Endpoint sets: the hosts of a cluster with their weights, health and connection pools, plus the
//! precomputed load-balancing tables for them.

use super::ClusterConfig;
use super::lb::LbTable;
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
    /// The endpoints that take traffic, in the same order as `lb`'s tables.
    pub healthy: Vec<Arc<Endpoint>>,
    pub lb: LbTable,
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
                    }),
                    None => Arc::new(Endpoint {
                        addr,
                        weight,
                        health,
                        active_requests: AtomicU64::new(0),
                        pool: Arc::new(Pool::new(addr, config.protocol, config.connect_timeout, config.pool.clone())),
                    }),
                }
            })
            .collect();
        let healthy: Vec<_> = all.iter().filter(|e| e.health.takes_traffic()).cloned().collect();
        let lb = LbTable::build(&healthy.iter().map(|e| e.weight).collect::<Vec<_>>());
        EndpointSet { all, healthy, lb }
    }

    /// True when both sets hold the same endpoints (by identity), in order.
    pub fn same_as(&self, other: &EndpointSet) -> bool {
        self.all.len() == other.all.len() && self.all.iter().zip(&other.all).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}
