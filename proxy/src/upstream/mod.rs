//! Upstream clusters: their endpoints (static or discovered by DNS), load balancing, and per-endpoint
//! connection pools. A `Cluster` is identified by its name and config: an unchanged cluster is carried
//! from one config snapshot to the next with its pools, counters and discovered endpoints intact.

pub mod attempt;
pub mod breakers;
mod dns;
mod endpoints;
pub mod lb;
pub mod outlier;
pub mod pool;

pub use endpoints::{Endpoint, EndpointSet, HealthStatus};
pub use lb::LbPolicy;
pub use pool::{Pool, PoolOptions, UpstreamError};

use crate::telemetry::ClusterStats;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    /// Every address every name resolves to is an endpoint; re-resolved on `dns_refresh_rate`.
    StrictDns,
    /// The first address of the (single) name; re-resolved on `dns_refresh_rate`.
    LogicalDns,
}

/// Envoy's `Cluster.DnsLookupFamily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    /// IPv6 if any, otherwise IPv4.
    Auto,
    V4Only,
    V6Only,
    /// IPv4 if any, otherwise IPv6.
    V4Preferred,
    All,
}

/// The protocol spoken to the cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// One configured endpoint: an IP address (STATIC) or a DNS name (STRICT_DNS / LOGICAL_DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub health: HealthStatus,
}

/// A validated `Cluster`: everything that decides how the cluster behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub discovery: Discovery,
    pub endpoints: Vec<EndpointSpec>,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    pub pool: PoolOptions,
    pub breakers: breakers::Thresholds,
    pub outlier: Option<outlier::OutlierConfig>,
    /// Under this percentage of endpoints taking traffic, the balancer uses all (Envoy's
    /// `healthy_panic_threshold`, default 50; 0 never).
    pub panic_threshold: u32,
}

/// A running cluster: config, the current endpoint set, and the state that outlives config swaps.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    endpoints: ArcSwap<EndpointSet>,
    /// Round-robin position; kept when endpoints change.
    rr_cursor: AtomicUsize,
    pub stats: ClusterStats,
    /// Requests and retries in flight, against the circuit breakers.
    pub open: breakers::Open,
    /// Background work of this cluster (DNS refresh, outlier sweeps), stopped when it is dropped.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Cluster {
    /// Builds a cluster; STATIC endpoints are parsed now, DNS ones are resolved by `start_discovery`.
    pub fn new(config: ClusterConfig) -> Arc<Self> {
        Self::replacing(config, None)
    }

    /// Builds a cluster that replaces `previous` (same name, changed config): when the connections
    /// would be made the same way (protocol, connect timeout, pool settings), an endpoint that stays
    /// keeps its pool and in-flight count; only the changed endpoints are new.
    pub fn replacing(config: ClusterConfig, previous: Option<&Cluster>) -> Arc<Self> {
        let previous = previous
            .filter(|p| {
                p.config.protocol == config.protocol
                    && p.config.connect_timeout == config.connect_timeout
                    && p.config.pool == config.pool
            })
            .map(|p| p.endpoints.load_full());
        let stats = ClusterStats::new(&config.name);
        let initial = if config.discovery == Discovery::Static {
            let addrs = config
                .endpoints
                .iter()
                .filter_map(|e| Some((SocketAddr::new(e.host.parse().ok()?, e.port), e.weight, e.health)))
                .collect::<Vec<_>>();
            EndpointSet::build(&config, addrs, previous.as_deref())
        } else {
            EndpointSet::build(&config, Vec::new(), None)
        };
        stats.set_membership(&initial);
        Arc::new(Cluster {
            config,
            endpoints: ArcSwap::from_pointee(initial),
            rr_cursor: AtomicUsize::new(0),
            stats,
            open: breakers::Open::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Starts the cluster's background work on `handle` (the control runtime): DNS resolution for
    /// STRICT_DNS / LOGICAL_DNS clusters (resolved once before returning, so the first requests find
    /// endpoints) and the outlier detection sweep.
    pub async fn start_discovery(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        if let Some(outlier) = &self.config.outlier {
            let weak = Arc::downgrade(self);
            let period = outlier.interval;
            let task = handle.spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(cluster) = weak.upgrade() else { return };
                    cluster.sweep_outliers();
                }
            });
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task.abort_handle());
        }
        if self.config.discovery == Discovery::Static {
            return;
        }
        dns::refresh(self).await;
        let weak = Arc::downgrade(self);
        let period = self.config.dns_refresh_rate;
        let task = handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(cluster) = weak.upgrade() else { return };
                dns::refresh(&cluster).await;
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task.abort_handle());
    }

    /// Reports what an attempt at `endpoint` got, for outlier detection.
    pub fn report(&self, endpoint: &Endpoint, outcome: outlier::Outcome) {
        let Some(config) = &self.config.outlier else { return };
        if let Some(reason) = endpoint.outlier.record(outcome, config) {
            let all = self.endpoints.load();
            let verdict = outlier::detected(endpoint, &all.all, reason, config);
            self.stats.outlier.count(verdict);
            if matches!(verdict, outlier::Verdict::Ejected(_)) {
                tracing::info!(cluster = self.config.name, endpoint = %endpoint.addr, ?reason, "endpoint ejected");
                self.rebalance();
            }
        }
    }

    fn sweep_outliers(&self) {
        let Some(config) = &self.config.outlier else { return };
        let all = self.endpoints.load_full();
        let (verdicts, returned) = outlier::sweep(&all.all, config);
        let ejected = verdicts.iter().any(|v| matches!(v, outlier::Verdict::Ejected(_)));
        for verdict in verdicts {
            self.stats.outlier.count(verdict);
        }
        if ejected || returned {
            self.rebalance();
        }
    }

    /// Rebuilds the balancer's view after an endpoint was ejected or came back.
    fn rebalance(&self) {
        self.endpoints.rcu(|current| current.rebalanced(&self.config));
        let current = self.endpoints.load();
        self.stats.set_membership(&current);
        let ejected = current.all.iter().filter(|e| e.outlier.is_ejected()).count();
        self.stats.outlier.ejections_active.set(ejected as f64);
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replaces the endpoint set, keeping the pools and counters of endpoints that stay.
    pub fn update_endpoints(&self, addrs: Vec<(SocketAddr, u32, HealthStatus)>) {
        let old = self.endpoints.load_full();
        let next = EndpointSet::build(&self.config, addrs, Some(&old));
        if next.same_as(&old) {
            return;
        }
        self.stats.set_membership(&next);
        self.endpoints.store(Arc::new(next));
    }

    /// Picks an endpoint by the cluster's policy; `None` when no endpoint is healthy.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        lb::pick(&self.config.lb_policy, &set, &self.rr_cursor).cloned()
    }
}
