//! Load-balancing policies: weighted round robin (a precomputed smooth-WRR sequence walked by one atomic
//! cursor), least request (power of two choices, weight-aware), peak-EWMA (power of two choices by
//! latency times load), weighted random, ring hash and maglev. No locks on the pick but peak-EWMA's
//! two estimate reads.

use super::endpoints::{Endpoint, EndpointSet, Tier};
use super::hashing::{Maglev, Ring};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Envoy's `Cluster.LbPolicy`, the subset Strait implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// `choice_count` random candidates; the one with the fewest active requests (per weight) wins.
    LeastRequest {
        choice_count: u32,
    },
    Random,
    /// Consistent hashing on a ring (`ring_hash_lb_config` sizes).
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    /// Consistent hashing with a Maglev table (`maglev_lb_config.table_size`, a prime).
    Maglev {
        table_size: u64,
    },
    /// Two random candidates; the one with the lower peak-EWMA response time times requests in
    /// flight wins (linkerd2-proxy's balancer). `default_rtt` stands in before the first answer.
    PeakEwma {
        decay: std::time::Duration,
        default_rtt: std::time::Duration,
    },
}

impl LbPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::LeastRequest { .. } => "LEAST_REQUEST",
            LbPolicy::Random => "RANDOM",
            LbPolicy::RingHash { .. } => "RING_HASH",
            LbPolicy::Maglev { .. } => "MAGLEV",
            LbPolicy::PeakEwma { .. } => "PEAK_EWMA",
        }
    }

    /// Whether picks follow a request hash (the route's `hash_policy`).
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// Tables precomputed when an endpoint set is built, so a pick is O(1) or O(log n).
#[derive(Debug, Default)]
pub struct LbTable {
    /// Smooth weighted round-robin order of endpoint indices (weights reduced by their gcd).
    rr_sequence: Vec<u32>,
    /// Cumulative weights for weighted random draws.
    cumulative: Vec<u64>,
    equal_weights: bool,
    /// The consistent-hashing table of RING_HASH and MAGLEV clusters.
    hashed: Option<HashTable>,
}

#[derive(Debug)]
enum HashTable {
    Ring(Ring),
    Maglev(Maglev),
}

impl HashTable {
    fn pick(&self, hash: u64) -> Option<usize> {
        match self {
            HashTable::Ring(ring) => ring.pick(hash),
            HashTable::Maglev(maglev) => maglev.pick(hash),
        }
    }
}

/// The longest round-robin sequence kept; heavier weight sets are scaled down to fit.
const MAX_RR_SEQUENCE: u64 = 16_384;

impl LbTable {
    pub fn build(policy: &LbPolicy, endpoints: &[(std::net::SocketAddr, u32)]) -> Self {
        let mut table = Self::weighted(&endpoints.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        table.hashed = match policy {
            LbPolicy::RingHash { min_ring_size, max_ring_size } => {
                Some(HashTable::Ring(Ring::build(endpoints, *min_ring_size, *max_ring_size)))
            }
            LbPolicy::Maglev { table_size } => Some(HashTable::Maglev(Maglev::build(endpoints, *table_size))),
            _ => None,
        };
        table
    }

    fn weighted(weights: &[u32]) -> Self {
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0;
        for w in &weights {
            total += w;
            cumulative.push(total);
        }
        let rr_sequence = if equal_weights { (0..weights.len() as u32).collect() } else { smooth_wrr(&weights) };
        LbTable { rr_sequence, cumulative, equal_weights, hashed: None }
    }

    fn weighted_random(&self) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let draw = fastrand::u64(0..total);
        self.cumulative.partition_point(|&c| c <= draw)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The nginx smooth weighted round-robin order: spreads heavier endpoints evenly through the cycle.
fn smooth_wrr(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = reduced.iter().sum();
    if sum > MAX_RR_SEQUENCE {
        reduced = reduced.iter().map(|w| (w * MAX_RR_SEQUENCE / sum).max(1)).collect();
    }
    let total: i64 = reduced.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; reduced.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

/// Picks an endpoint: first the priority level and tier by their loads (hashing policies draw by the
/// request's hash, as Envoy does, others at random), then an endpoint of that tier by the policy.
/// Returns it and whether its level was in panic; `None` when there is nobody to send to.
pub fn pick<'a>(
    policy: &LbPolicy,
    set: &'a EndpointSet,
    cursor: &AtomicUsize,
    hash: Option<u64>,
) -> Option<(&'a Arc<Endpoint>, bool)> {
    let hash = hash.filter(|_| policy.is_hashing());
    let (tier, panic) = set.choose_tier(|| hash.unwrap_or_else(|| fastrand::u64(..)))?;
    // Locality-weighted: a locality by its weight first (hashing policies hash over the whole tier).
    let tier = if tier.localities.is_empty() || hash.is_some() { tier } else { tier.locality(fastrand::f64()) };
    pick_in(policy, tier, cursor, hash).map(|e| (e, panic))
}

/// Picks an endpoint of one tier. Hashing policies use `hash` (a request without one gets a random
/// endpoint, as in Envoy).
fn pick_in<'a>(
    policy: &LbPolicy,
    tier: &'a Tier,
    cursor: &AtomicUsize,
    hash: Option<u64>,
) -> Option<&'a Arc<Endpoint>> {
    let hosts = &tier.hosts;
    match hosts.len() {
        0 => return None,
        1 => return hosts.first(),
        _ => {}
    }
    let table = &tier.lb;
    let index = match (policy, hash, &table.hashed) {
        (_, Some(hash), Some(hashed)) => hashed.pick(hash).unwrap_or(0),
        (LbPolicy::RoundRobin, ..) => {
            let n = cursor.fetch_add(1, Ordering::Relaxed);
            table.rr_sequence[n % table.rr_sequence.len()] as usize
        }
        // Random, and a hashing policy for a request without a hash.
        (LbPolicy::Random | LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }, ..) => {
            if table.equal_weights {
                fastrand::usize(..hosts.len())
            } else {
                table.weighted_random()
            }
        }
        (LbPolicy::PeakEwma { decay, default_rtt }, ..) => {
            let draw = || if table.equal_weights { fastrand::usize(..hosts.len()) } else { table.weighted_random() };
            let now = std::time::Instant::now();
            let cost = |i: usize| {
                let e = &hosts[i];
                let cost = e.rtt.cost(e.active_requests.load(Ordering::Relaxed), now, *decay, *default_rtt);
                if table.equal_weights { cost } else { cost / f64::from(e.weight.max(1)) }
            };
            let (a, mut b) = (draw(), draw());
            if b == a {
                b = (a + 1 + fastrand::usize(..hosts.len() - 1)) % hosts.len();
            }
            if cost(b) < cost(a) { b } else { a }
        }
        (LbPolicy::LeastRequest { choice_count }, ..) => {
            let draw = || if table.equal_weights { fastrand::usize(..hosts.len()) } else { table.weighted_random() };
            let load = |i: usize| {
                let active = hosts[i].active_requests.load(Ordering::Relaxed) as f64;
                if table.equal_weights { active } else { (active + 1.0) / f64::from(hosts[i].weight.max(1)) }
            };
            let mut best = draw();
            for _ in 1..(*choice_count).max(2) {
                let candidate = draw();
                if load(candidate) < load(best) {
                    best = candidate;
                }
            }
            best
        }
    };
    hosts.get(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClusterConfig, HealthStatus, Member};
    use std::time::Duration;

    fn set(policy: LbPolicy, weights: &[u32]) -> EndpointSet {
        let config = ClusterConfig { lb_policy: policy, ..Default::default() };
        let members = weights.iter().enumerate().map(|(i, w)| Member {
            addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
            weight: *w,
            health: HealthStatus::Healthy,
            priority: 0,
            locality: Default::default(),
        });
        EndpointSet::build(&config, members.collect(), None)
    }

    #[test]
    fn weighted_round_robin_is_within_one_percent_of_the_weights() {
        let policy = LbPolicy::RoundRobin;
        let set = set(policy.clone(), &[1, 2, 3, 4]);
        let cursor = AtomicUsize::new(0);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[(pick(&policy, &set, &cursor, None).unwrap().0.addr.port() - 1000) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let share = f64::from(*c) / 100.0;
            assert!((share - 10.0 * (i + 1) as f64).abs() <= 1.0, "endpoint {i}: {share}% of {counts:?}");
        }
    }

    /// Simulates 20,000 requests, one every millisecond, over five endpoints of which the first
    /// answers in 50 ms and the others in 5 ms; returns the slow one's share of the picks.
    fn slow_endpoint_share(policy: LbPolicy) -> f64 {
        fastrand::seed(7);
        let set = set(policy.clone(), &[1; 5]);
        let cursor = AtomicUsize::new(0);
        let mut in_flight: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> = Default::default();
        let mut picks = [0u32; 5];
        for now in 0..20_000u64 {
            while let Some(std::cmp::Reverse((done, i))) = in_flight.peek().copied() {
                if done > now {
                    break;
                }
                in_flight.pop();
                let e = &set.levels[0].healthy.hosts[i];
                e.active_requests.fetch_sub(1, Ordering::Relaxed);
                let rtt = Duration::from_millis(if i == 0 { 50 } else { 5 });
                e.rtt.observe(rtt, Duration::from_secs(10), Duration::from_millis(30));
            }
            let (e, _) = pick(&policy, &set, &cursor, None).unwrap();
            let i = (e.addr.port() - 1000) as usize;
            picks[i] += 1;
            e.active_requests.fetch_add(1, Ordering::Relaxed);
            in_flight.push(std::cmp::Reverse((now + if i == 0 { 50 } else { 5 }, i)));
        }
        f64::from(picks[0]) / 200.0
    }

    #[test]
    fn least_request_and_peak_ewma_steer_away_from_a_ten_times_slower_endpoint() {
        let round_robin = slow_endpoint_share(LbPolicy::RoundRobin);
        let least_request = slow_endpoint_share(LbPolicy::LeastRequest { choice_count: 2 });
        let peak_ewma = slow_endpoint_share(LbPolicy::PeakEwma {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        });
        assert!((round_robin - 20.0).abs() < 0.1, "round robin ignores latency: {round_robin}%");
        assert!(least_request < 12.0, "P2C least request gives the slow endpoint {least_request}%");
        assert!(peak_ewma < 3.0, "peak-EWMA gives the slow endpoint {peak_ewma}%");
        assert!(peak_ewma < least_request, "peak-EWMA {peak_ewma}% vs least request {least_request}%");
    }

    #[test]
    fn smooth_wrr_honours_weights_and_interleaves() {
        let order = smooth_wrr(&[5, 1, 1]);
        assert_eq!(order.len(), 7);
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[200, 100]), vec![0, 1, 0]);
    }

    #[test]
    fn weighted_random_follows_weights() {
        let table = LbTable::weighted(&[1, 3]);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[table.weighted_random()] += 1;
        }
        let share = f64::from(counts[1]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "share of the weight-3 endpoint: {share}");
    }
}
