//! Upstream clusters: their endpoints (static or discovered by DNS), load balancing, and per-endpoint
//! connection pools. A `Cluster` is identified by its name and config: an unchanged cluster is carried
//! from one config snapshot to the next with its pools, counters and discovered endpoints intact.

pub mod attempt;
pub mod breakers;
mod dns;
mod endpoints;
pub mod ewma;
pub mod hashing;
pub mod health;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod transport;

pub use endpoints::{Endpoint, EndpointSet, HealthStatus, HostCounts, Locality, Member, PriorityLevel, Tier};
pub use lb::LbPolicy;
pub use pool::{Pool, PoolOptions, UpstreamError};

use crate::telemetry::ClusterStats;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// `LocalityLbEndpoints.priority`.
    pub priority: u32,
    pub locality: Locality,
}

impl EndpointSpec {
    /// The endpoint at `addr` (its IP, or one its name resolved to), as configured.
    pub fn member(&self, addr: SocketAddr) -> Member {
        Member { addr, weight: self.weight, health: self.health, priority: self.priority, locality: self.locality }
    }
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
    pub health_check: Option<health::HealthCheckConfig>,
    /// Under this percentage of endpoints taking traffic, the balancer uses all (Envoy's
    /// `healthy_panic_threshold`, default 50; 0 never).
    pub panic_threshold: u32,
    /// `ClusterLoadAssignment.policy.overprovisioning_factor` (percent, default 140).
    pub overprovisioning_factor: u32,
    /// `ClusterLoadAssignment.policy.weighted_priority_health`: a level's health by weight, not count.
    pub weighted_priority_health: bool,
    /// `common_lb_config.locality_weighted_lb_config`: picks choose a locality by weight first.
    pub locality_weighted: bool,
    /// `transport_socket` `envoy.transport_sockets.tls`: connections are TLS.
    pub tls: Option<transport::UpstreamTls>,
}

impl Default for ClusterConfig {
    /// Envoy's defaults for a STATIC cluster without endpoints.
    fn default() -> Self {
        ClusterConfig {
            name: String::new(),
            discovery: Discovery::Static,
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            lb_policy: LbPolicy::RoundRobin,
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            pool: PoolOptions::default(),
            breakers: breakers::Thresholds::default(),
            outlier: None,
            health_check: None,
            panic_threshold: 50,
            overprovisioning_factor: 140,
            weighted_priority_health: false,
            locality_weighted: false,
            tls: None,
        }
    }
}

/// A running cluster: config, the current endpoint set, and the state that outlives config swaps.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    endpoints: ArcSwap<EndpointSet>,
    /// Round-robin position; kept when endpoints change.
    rr_cursor: AtomicUsize,
    pub stats: ClusterStats,
    /// Requests, retries, connections and pending requests, against the circuit breakers; carried
    /// from the cluster this one replaces, whose connections and requests may still be open.
    pub open: Arc<breakers::Open>,
    /// Whether a request was ever routed here (health checks probe at `no_traffic_interval` until).
    had_traffic: std::sync::atomic::AtomicBool,
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
        let open = previous.map(|p| p.open.clone()).unwrap_or_default();
        let previous = previous
            .filter(|p| {
                p.config.protocol == config.protocol
                    && p.config.connect_timeout == config.connect_timeout
                    && p.config.pool == config.pool
                    && p.config.tls == config.tls
            })
            .map(|p| p.endpoints.load_full());
        let stats = ClusterStats::new(&config.name);
        let initial = if config.discovery == Discovery::Static {
            let addrs = config
                .endpoints
                .iter()
                .filter_map(|e| Some(e.member(SocketAddr::new(e.host.parse().ok()?, e.port))))
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
            open,
            had_traffic: std::sync::atomic::AtomicBool::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Starts the cluster's background work on `handle` (the control runtime): DNS resolution for
    /// STRICT_DNS / LOGICAL_DNS clusters (resolved once before returning, so the first requests find
    /// endpoints) and the outlier detection sweep.
    pub async fn start_discovery(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        self.start_outlier_sweeps(handle);
        if self.config.discovery != Discovery::Static {
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
        self.start_health_checks(handle).await;
    }

    fn start_outlier_sweeps(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
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
    }

    /// Probes every endpoint once (so the first config is applied knowing their health, as Envoy
    /// warms a cluster), then keeps probing each on its own interval.
    async fn start_health_checks(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        let Some(config) = self.config.health_check.clone() else { return };
        let mut due: std::collections::HashMap<SocketAddr, tokio::time::Instant> = Default::default();
        if !config.initial_jitter.is_zero() {
            let start = tokio::time::Instant::now() + config.initial_jitter.mul_f64(fastrand::f64());
            for e in &self.endpoints.load().all {
                due.insert(e.addr, start);
            }
        }
        self.health_round(&config, &mut due).await;
        let weak = Arc::downgrade(self);
        let task = handle.spawn(async move {
            loop {
                let next = due.values().min().copied();
                let wait = next.map_or(config.interval, |t| t.saturating_duration_since(tokio::time::Instant::now()));
                tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
                let Some(cluster) = weak.upgrade() else { return };
                cluster.health_round(&config, &mut due).await;
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task.abort_handle());
    }

    /// Probes the endpoints whose turn it is (all of them concurrently) and records the results.
    async fn health_round(
        &self,
        config: &health::HealthCheckConfig,
        due: &mut std::collections::HashMap<SocketAddr, tokio::time::Instant>,
    ) {
        let now = tokio::time::Instant::now();
        let set = self.endpoints.load_full();
        due.retain(|addr, _| set.all.iter().any(|e| e.addr == *addr));
        let turn: Vec<Arc<Endpoint>> =
            set.all.iter().filter(|e| due.get(&e.addr).is_none_or(|t| *t <= now)).cloned().collect();
        let probes = turn.iter().map(|e| async move { (e, health::probe(e, config, &self.config).await) });
        let mut changed = false;
        let had_traffic = self.had_traffic.load(Ordering::Relaxed);
        for (endpoint, result) in futures_util::future::join_all(probes).await {
            self.stats.health_check.attempt.increment(1);
            match &result {
                Ok(()) => self.stats.health_check.success.increment(1),
                Err(why) => {
                    self.stats.health_check.failure.increment(1);
                    tracing::debug!(cluster = self.config.name, endpoint = %endpoint.addr, why, "health check failed");
                }
            }
            if endpoint.health_check.record(result.is_ok(), config) {
                changed = true;
                let health = if endpoint.health_check.is_failed() { "failed" } else { "passed" };
                tracing::info!(cluster = self.config.name, endpoint = %endpoint.addr, health, "health check state changed");
            }
            let failed = endpoint.health_check.is_failed();
            due.insert(endpoint.addr, now + health::next_interval(config, failed, had_traffic));
        }
        if changed {
            self.rebalance();
        }
    }

    /// Notes that a request was routed to this cluster.
    pub fn note_traffic(&self) {
        if !self.had_traffic.load(Ordering::Relaxed) {
            self.had_traffic.store(true, Ordering::Relaxed);
        }
    }

    /// When an attempt starts, for its response time: read only where the balancer uses it.
    pub fn attempt_clock(&self) -> Option<std::time::Instant> {
        matches!(self.config.lb_policy, LbPolicy::PeakEwma { .. }).then(std::time::Instant::now)
    }

    /// Reports what an attempt at `endpoint` got (and, from [`Cluster::attempt_clock`], how long it
    /// took), for outlier detection and peak-EWMA balancing.
    pub fn report_attempt(&self, endpoint: &Endpoint, outcome: outlier::Outcome, started: Option<std::time::Instant>) {
        let failed = match outcome {
            outlier::Outcome::Status(status) => status >= 500,
            outlier::Outcome::LocalFailure => true,
            outlier::Outcome::NotSent => return,
        };
        let counter = if failed { &endpoint.counts.rq_error } else { &endpoint.counts.rq_success };
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Some(started), LbPolicy::PeakEwma { decay, default_rtt }) = (started, &self.config.lb_policy) {
            endpoint.rtt.observe(started.elapsed(), *decay, *default_rtt);
        }
        self.report(endpoint, outcome);
    }

    /// Reports that the attempt at `addr` ran out of its (per-try or route) timeout: for outlier
    /// detection a local-origin failure, as Envoy counts a timeout (a 504).
    pub fn report_timeout(&self, addr: SocketAddr) {
        let endpoint = self.endpoints.load().all.iter().find(|e| e.addr == addr).cloned();
        if let Some(endpoint) = endpoint {
            endpoint.counts.rq_timeout.fetch_add(1, Ordering::Relaxed);
            endpoint.counts.rq_error.fetch_add(1, Ordering::Relaxed);
            self.report(&endpoint, outlier::Outcome::LocalFailure);
        }
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
        let passing = current.all.iter().filter(|e| !e.health_check.is_failed()).count();
        let passing = if current.health_checked { passing } else { current.all.len() };
        self.stats.health_check.healthy.set(passing as f64);
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replaces the endpoint set, keeping the pools and counters of endpoints that stay.
    pub fn update_endpoints(&self, addrs: Vec<Member>) {
        let old = self.endpoints.load_full();
        let next = EndpointSet::build(&self.config, addrs, Some(&old));
        if next.same_as(&old) {
            return;
        }
        self.stats.set_membership(&next);
        self.endpoints.store(Arc::new(next));
    }

    /// Picks an endpoint by the cluster's policy (hashing ones by `hash`, the request's from the
    /// route's `hash_policy`); `None` when no endpoint is healthy.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let (endpoint, panic) = lb::pick(&self.config.lb_policy, &set, &self.rr_cursor, hash)?;
        if panic {
            self.stats.lb_healthy_panic.increment(1);
        }
        Some(endpoint.clone())
    }
}
