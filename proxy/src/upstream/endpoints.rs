//! Endpoint sets: the hosts of a cluster with their weights, health and connection pools, plus the
//! precomputed load-balancing tables for them.

use super::ClusterConfig;
use super::ewma::RttEstimate;
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
    /// Its `LocalityLbEndpoints.priority` (0 is the highest).
    pub priority: u32,
    pub locality: Locality,
    /// Requests in flight, for least-request balancing.
    pub active_requests: AtomicU64,
    pub pool: Arc<Pool>,
    /// Outlier detection's view of this address (kept by every version of the endpoint).
    pub outlier: Arc<HostOutlier>,
    /// Active health checking's view of this address (kept likewise).
    pub health_check: Arc<HostHealth>,
    /// Its response-time estimate, for peak-EWMA balancing (kept likewise).
    pub rtt: Arc<RttEstimate>,
    /// Its request counters, for `/clusters` (kept likewise).
    pub counts: Arc<HostCounts>,
}

/// An endpoint's requests as Envoy's `/clusters` shows them: sent, answered below 500, failed
/// (5xx or no answer), timed out.
#[derive(Debug, Default)]
pub struct HostCounts {
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

/// What discovery says about one endpoint: where it is, its weight, EDS health, priority and
/// locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: HealthStatus,
    pub priority: u32,
    pub locality: Locality,
}

/// The `LocalityLbEndpoints` an endpoint came in: its place in the list and its
/// `load_balancing_weight` (used by locality-weighted balancing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locality {
    pub index: u32,
    pub weight: u32,
}

impl Default for Locality {
    fn default() -> Self {
        Locality { index: 0, weight: 1 }
    }
}

impl Endpoint {
    /// A new endpoint with its own pool and fresh health and outlier state.
    pub fn new(config: &ClusterConfig, m: Member) -> Self {
        Endpoint {
            addr: m.addr,
            weight: m.weight,
            health: m.health,
            priority: m.priority,
            locality: m.locality,
            active_requests: AtomicU64::new(0),
            pool: Arc::new(Pool::new(m.addr, config)),
            outlier: Arc::default(),
            health_check: Arc::new(HostHealth::new(config.health_check.is_some())),
            rtt: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// What discovery said about it.
    pub fn member(&self) -> Member {
        Member {
            addr: self.addr,
            weight: self.weight,
            health: self.health,
            priority: self.priority,
            locality: self.locality,
        }
    }

    /// The same address as discovery now says it (weight, health, priority, locality), keeping
    /// what belongs to the address: its pool, requests in flight, outlier, health-check and
    /// response-time state, and counters.
    fn as_member(&self, m: Member) -> Self {
        Endpoint {
            addr: m.addr,
            weight: m.weight,
            health: m.health,
            priority: m.priority,
            locality: m.locality,
            active_requests: AtomicU64::new(self.active_requests.load(Ordering::Relaxed)),
            pool: self.pool.clone(),
            outlier: self.outlier.clone(),
            health_check: self.health_check.clone(),
            rtt: self.rtt.clone(),
            counts: self.counts.clone(),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        self.counts.rq_total.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    /// Whether it takes traffic by its EDS health, outlier detection and (when `checked`) active
    /// health checks.
    pub fn takes_traffic(&self, checked: bool) -> bool {
        self.health.takes_traffic() && !self.outlier.is_ejected() && !(checked && self.health_check.is_failed())
    }

    /// Healthy for the balancer: takes traffic and is not merely degraded.
    fn is_healthy(&self, checked: bool) -> bool {
        self.takes_traffic(checked) && self.health != HealthStatus::Degraded
    }

    fn is_degraded(&self, checked: bool) -> bool {
        self.takes_traffic(checked) && self.health == HealthStatus::Degraded
    }
}

#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoints the balancer picks from, in the same order as its tables.
#[derive(Debug, Default)]
pub struct Tier {
    pub hosts: Vec<Arc<Endpoint>>,
    pub lb: LbTable,
    /// Locality-weighted balancing: the tier's localities, each a tier of its own, with their
    /// cumulative effective weights (empty: pick from the whole tier).
    pub localities: Vec<(f64, Tier)>,
}

impl Tier {
    fn new(policy: &super::LbPolicy, hosts: Vec<Arc<Endpoint>>) -> Self {
        let lb = LbTable::build(policy, &hosts.iter().map(|e| (e.addr, e.weight)).collect::<Vec<_>>());
        Tier { hosts, lb, localities: Vec::new() }
    }

    /// A tier whose picks first choose a locality by its effective weight, as Envoy's
    /// `locality_weighted_lb_config`: the locality's `load_balancing_weight` times its share of the
    /// level's endpoints in this tier, scaled by the overprovisioning factor (at most 1).
    fn by_locality(config: &ClusterConfig, hosts: Vec<Arc<Endpoint>>, level: &[Arc<Endpoint>]) -> Self {
        let mut indices: Vec<u32> = hosts.iter().map(|e| e.locality.index).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut localities = Vec::new();
        let mut total = 0.0;
        for index in indices {
            let members: Vec<Arc<Endpoint>> = hosts.iter().filter(|e| e.locality.index == index).cloned().collect();
            let all = level.iter().filter(|e| e.locality.index == index).count().max(1);
            let availability =
                (f64::from(config.overprovisioning_factor) / 100.0 * members.len() as f64 / all as f64).min(1.0);
            let weight = f64::from(members[0].locality.weight) * availability;
            if weight > 0.0 {
                total += weight;
                localities.push((total, Tier::new(&config.lb_policy, members)));
            }
        }
        let mut tier = Tier::new(&config.lb_policy, hosts);
        tier.localities = localities;
        tier
    }

    /// The locality a draw in [0, 1) lands in, by effective weight; the whole tier when not
    /// locality-weighted.
    pub fn locality(&self, draw: f64) -> &Tier {
        let Some((total, _)) = self.localities.last() else { return self };
        let point = draw * total;
        self.localities.iter().find(|(upto, _)| point < *upto).map_or(self, |(_, t)| t)
    }
}

/// The endpoints of one priority and the share of traffic they get.
#[derive(Debug)]
pub struct PriorityLevel {
    /// Every endpoint at this priority.
    pub hosts: Vec<Arc<Endpoint>>,
    /// The healthy endpoints (all of them in panic).
    pub healthy: Tier,
    /// The degraded endpoints, used for the traffic the healthy ones of all levels cannot take.
    pub degraded: Tier,
    /// Percent of requests sent to `healthy` and to `degraded`.
    pub healthy_load: u32,
    pub degraded_load: u32,
    /// Too few endpoints of this level are available and the cluster as a whole is short too:
    /// the level balances over all its endpoints.
    pub panic: bool,
}

/// The endpoints of a cluster at one moment.
#[derive(Debug)]
pub struct EndpointSet {
    pub all: Vec<Arc<Endpoint>>,
    /// Priority levels 0..=highest number in use (a level may be empty).
    pub levels: Vec<PriorityLevel>,
    /// The cluster is actively health checked (endpoints' check results count).
    pub health_checked: bool,
}

impl EndpointSet {
    /// Builds a set, reusing the `Endpoint` (pool and counters) of any address already in `previous`.
    pub fn build(config: &ClusterConfig, members: Vec<Member>, previous: Option<&EndpointSet>) -> Self {
        let all: Vec<Arc<Endpoint>> = members
            .into_iter()
            .map(|m| {
                let old = previous.and_then(|p| p.all.iter().find(|e| e.addr == m.addr));
                match old {
                    Some(e) if e.member() == m => e.clone(),
                    Some(e) => Arc::new(e.as_member(m)),
                    None => Arc::new(Endpoint::new(config, m)),
                }
            })
            .collect();
        Self::balance(config, all)
    }

    /// The same endpoints with their health looked at again (after an ejection or a return).
    pub fn rebalanced(&self, config: &ClusterConfig) -> Self {
        Self::balance(config, self.all.clone())
    }

    /// Envoy's priority load balancing: each level's availability is its healthy share times the
    /// overprovisioning factor (at most 100%); load goes to the highest levels first, as much as
    /// each is available, spilling the rest to lower levels and then to degraded endpoints. When
    /// the levels together are short (under 100%), a level whose healthy share is under the panic
    /// threshold balances over all its endpoints; when every level is, load follows their sizes.
    fn balance(config: &ClusterConfig, all: Vec<Arc<Endpoint>>) -> Self {
        let checked = config.health_check.is_some();
        let count = all.iter().map(|e| e.priority as usize + 1).max().unwrap_or(1);
        let mut by_level: Vec<Vec<Arc<Endpoint>>> = vec![Vec::new(); count];
        for e in &all {
            by_level[e.priority as usize].push(e.clone());
        }
        let weight_of = |hosts: &mut dyn Iterator<Item = &Arc<Endpoint>>| -> u64 {
            hosts.map(|e| if config.weighted_priority_health { u64::from(e.weight) } else { 1 }).sum()
        };
        let availability: Vec<(u32, u32)> = by_level
            .iter()
            .map(|hosts| {
                let total = weight_of(&mut hosts.iter());
                if total == 0 {
                    return (0, 0);
                }
                let share = |w: u64| (u64::from(config.overprovisioning_factor) * w / total).min(100) as u32;
                let healthy = weight_of(&mut hosts.iter().filter(|e| e.is_healthy(checked)));
                let degraded = weight_of(&mut hosts.iter().filter(|e| e.is_degraded(checked)));
                (share(healthy), share(degraded))
            })
            .collect();
        let loads = priority_loads(&availability);
        let total_availability = normalized_total(&availability);
        let mut panics: Vec<bool> = by_level
            .iter()
            .map(|hosts| total_availability < 100 && level_in_panic(hosts, checked, config.panic_threshold))
            .collect();
        let loads = if config.panic_threshold == 0 && total_availability == 0 {
            panics.iter_mut().for_each(|p| *p = false);
            let mut loads = vec![(0, 0); count];
            loads[0].0 = 100;
            loads
        } else if panics.iter().all(|p| *p) {
            loads_by_size(&by_level)
        } else {
            loads
        };
        let levels = by_level
            .into_iter()
            .zip(loads)
            .zip(panics)
            .map(|((hosts, (healthy_load, degraded_load)), panic)| {
                let (healthy, degraded) = if panic {
                    (hosts.clone(), if degraded_load > 0 { hosts.clone() } else { Vec::new() })
                } else {
                    (
                        hosts.iter().filter(|e| e.is_healthy(checked)).cloned().collect(),
                        hosts.iter().filter(|e| e.is_degraded(checked)).cloned().collect(),
                    )
                };
                let tier = |members: Vec<Arc<Endpoint>>| {
                    if config.locality_weighted {
                        Tier::by_locality(config, members, &hosts)
                    } else {
                        Tier::new(&config.lb_policy, members)
                    }
                };
                PriorityLevel {
                    healthy: tier(healthy),
                    degraded: tier(degraded),
                    hosts,
                    healthy_load,
                    degraded_load,
                    panic,
                }
            })
            .collect();
        EndpointSet { all, levels, health_checked: checked }
    }

    /// True when both sets hold the same endpoints (by identity), in order.
    pub fn same_as(&self, other: &EndpointSet) -> bool {
        self.all.len() == other.all.len() && self.all.iter().zip(&other.all).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Whether any level balances over all its endpoints.
    pub fn in_panic(&self) -> bool {
        self.levels.iter().any(|l| l.panic)
    }

    /// The endpoints a request goes to: the level and tier that `draw` (any number; its value
    /// modulo 100 is used) falls in by their loads. The common case, one level taking all the
    /// traffic, needs no draw.
    pub fn choose_tier(&self, draw: impl FnOnce() -> u64) -> Option<(&Tier, bool)> {
        if let [only] = self.levels.as_slice()
            && only.healthy_load == 100
        {
            return Some((&only.healthy, only.panic));
        }
        let point = (draw() % 100 + 1) as u32;
        let mut upto = 0;
        let healthy = self.levels.iter().map(|l| (l.healthy_load, &l.healthy, l.panic));
        let degraded = self.levels.iter().map(|l| (l.degraded_load, &l.degraded, l.panic));
        for (load, tier, panic) in healthy.chain(degraded) {
            upto += load;
            if point <= upto && load > 0 {
                return Some((tier, panic));
            }
        }
        None
    }
}

/// The sum of the levels' availabilities, capped at 100.
fn normalized_total(availability: &[(u32, u32)]) -> u32 {
    availability.iter().map(|(h, d)| (h + d).min(100)).sum::<u32>().min(100)
}

/// Percent of traffic per level (healthy, degraded), adding up to 100 unless nothing is available.
fn priority_loads(availability: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut loads = vec![(0, 0); availability.len()];
    let total = normalized_total(availability);
    if total == 0 {
        return loads;
    }
    let mut left = 100;
    for (i, (healthy, _)) in availability.iter().enumerate() {
        loads[i].0 = left.min(healthy * 100 / total);
        left -= loads[i].0;
    }
    for (i, (_, degraded)) in availability.iter().enumerate() {
        loads[i].1 = left.min(degraded * 100 / total);
        left -= loads[i].1;
    }
    // Rounding leftovers go to the first level with healthy (else degraded) availability.
    if left > 0 {
        if let Some(i) = availability.iter().position(|(h, _)| *h > 0) {
            loads[i].0 += left;
        } else if let Some(i) = availability.iter().position(|(_, d)| *d > 0) {
            loads[i].1 += left;
        }
    }
    loads
}

/// Envoy's panic test for one level: its (not overprovisioned) available share under the threshold.
fn level_in_panic(hosts: &[Arc<Endpoint>], checked: bool, threshold: u32) -> bool {
    if hosts.is_empty() {
        return threshold > 0;
    }
    let available = hosts.iter().filter(|e| e.takes_traffic(checked)).count();
    (100 * available as u64) < u64::from(threshold) * hosts.len() as u64
}

/// Every level in panic: traffic follows the number of endpoints per level, health aside.
fn loads_by_size(by_level: &[Vec<Arc<Endpoint>>]) -> Vec<(u32, u32)> {
    let total: usize = by_level.iter().map(Vec::len).sum();
    let mut loads = vec![(0, 0); by_level.len()];
    if total == 0 {
        loads[0].0 = 100;
        return loads;
    }
    let mut left = 100;
    for (i, hosts) in by_level.iter().enumerate() {
        loads[i].0 = (100 * hosts.len() / total) as u32;
        left -= loads[i].0;
    }
    if let Some(i) = by_level.iter().position(|h| !h.is_empty()) {
        loads[i].0 += left;
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_fills_the_highest_levels_first_and_spills_by_availability() {
        // All healthy at P0 (140% capped to 100): everything stays there.
        assert_eq!(priority_loads(&[(100, 0), (100, 0)]), vec![(100, 0), (0, 0)]);
        // Half of P0 healthy: 1.4 x 50% = 70% stays, 30% spills to P1.
        assert_eq!(priority_loads(&[(70, 0), (100, 0)]), vec![(70, 0), (30, 0)]);
        // Short overall (10% + 20% + 10%): loads scaled up to 100, rounding to the first level.
        assert_eq!(priority_loads(&[(10, 20), (20, 10), (10, 0)]), vec![(16, 28), (28, 14), (14, 0)]);
        assert_eq!(normalized_total(&[(0, 0), (0, 0)]), 0);
        assert_eq!(priority_loads(&[(0, 0), (0, 0)]), vec![(0, 0), (0, 0)]);
        // A degraded level takes what the healthy ones cannot.
        assert_eq!(priority_loads(&[(56, 0), (0, 100)]), vec![(56, 0), (0, 44)]);
    }

    #[test]
    fn total_panic_splits_by_level_size() {
        let config = ClusterConfig::default();
        let e = |n| (0..n).map(|i| Arc::new(Endpoint::new(&config, member(i, 0, HealthStatus::Healthy)))).collect();
        assert_eq!(loads_by_size(&[e(1), e(3)]), vec![(25, 0), (75, 0)]);
        assert_eq!(loads_by_size(&[e(1), e(1), e(1)]), vec![(34, 0), (33, 0), (33, 0)]);
        assert_eq!(loads_by_size(&[vec![], vec![]]), vec![(100, 0), (0, 0)]);
    }

    fn member(port: usize, priority: u32, health: HealthStatus) -> Member {
        Member {
            addr: ([127, 0, 0, 1], port as u16).into(),
            weight: 1,
            health,
            priority,
            locality: Locality::default(),
        }
    }

    /// (priority, healthy) per endpoint -> each level's (healthy load, degraded load, panic).
    fn levels(endpoints: &[(u32, bool)], threshold: u32) -> Vec<(u32, u32, bool)> {
        let config = ClusterConfig { panic_threshold: threshold, ..Default::default() };
        let members = endpoints.iter().enumerate().map(|(i, (priority, healthy))| {
            member(1000 + i, *priority, if *healthy { HealthStatus::Healthy } else { HealthStatus::Unhealthy })
        });
        let set = EndpointSet::build(&config, members.collect(), None);
        set.levels.iter().map(|l| (l.healthy_load, l.degraded_load, l.panic)).collect()
    }

    #[test]
    fn panic_needs_the_whole_cluster_short_and_the_level_under_the_threshold() {
        // One level, 4 of 5 healthy: 1.4 x 80% covers everything, no panic.
        assert_eq!(levels(&[(0, true), (0, true), (0, true), (0, true), (0, false)], 50), vec![(100, 0, false)]);
        // 2 of 5 healthy: short (56%) and 40% < 50%: panic, all five take traffic.
        assert_eq!(levels(&[(0, true), (0, true), (0, false), (0, false), (0, false)], 50), vec![(100, 0, true)]);
        // 3 of 5 (60%): short (84%) but over the threshold: no panic.
        assert_eq!(levels(&[(0, true), (0, true), (0, true), (0, false), (0, false)], 50), vec![(100, 0, false)]);
        // P0 1 of 3 healthy (46%), P1 all healthy: P1 covers the rest, nobody panics.
        let two = [(0, true), (0, false), (0, false), (1, true), (1, true), (1, true)];
        assert_eq!(levels(&two, 50), vec![(46, 0, false), (54, 0, false)]);
        // Nothing healthy anywhere: total panic, load by level size.
        assert_eq!(levels(&[(0, false), (1, false), (1, false), (1, false)], 50), vec![(25, 0, true), (75, 0, true)]);
        // ... unless panic is off: P0 nominally takes it all, and has no one to send to.
        assert_eq!(levels(&[(0, false), (1, false)], 0), vec![(100, 0, false), (0, 0, false)]);
    }

    #[test]
    fn a_draw_lands_in_the_level_its_load_says() {
        let config = ClusterConfig::default();
        let members = [(0, HealthStatus::Healthy), (0, HealthStatus::Unhealthy), (1, HealthStatus::Healthy)];
        let set = EndpointSet::build(
            &config,
            members.iter().enumerate().map(|(i, (p, h))| member(2000 + i, *p, *h)).collect(),
            None,
        );
        // P0: 1.4 x 50% = 70%; P1: the other 30%.
        let port_for = |draw: u64| set.choose_tier(|| draw).unwrap().0.hosts[0].addr.port();
        assert_eq!(port_for(0), 2000);
        assert_eq!(port_for(69), 2000);
        assert_eq!(port_for(70), 2002);
        assert_eq!(port_for(99), 2002);
    }
}
