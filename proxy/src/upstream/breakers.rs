//! Circuit breakers (`circuit_breakers.thresholds`): limits on what a cluster has open, over all its
//! endpoints. A request over `max_requests` is answered at once (503 `UO`); a retry over
//! `max_retries` is not made; over `max_connections` no connection is opened (a request waits for
//! one to be free, unless its endpoint has none at all); over `max_pending_requests` a request that
//! would wait for a connection is answered at once (503 `UO`). Envoy's defaults: 1024 connections,
//! pending requests and requests, 3 retries. A `retry_budget` replaces `max_retries` by a share of
//! the requests in flight, so retries cannot multiply the load on a failing upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The limits of the default routing priority.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Endpoints with open connections (Envoy's connection pools, which live while they have any).
    pub max_connection_pools: u32,
    pub max_connections: u32,
    /// `per_host_thresholds.max_connections`: connections to one endpoint.
    pub max_connections_per_host: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, retries in flight are limited by it instead of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

/// `retry_budget`: retries in flight at most `percent` of the requests in flight, but always
/// `min_concurrency` (Envoy's defaults 20% and 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

impl RetryBudget {
    /// Retries allowed in flight while `active` requests are.
    pub fn limit(&self, active: u32) -> u32 {
        ((self.percent / 100.0 * f64::from(active)) as u32).max(self.min_concurrency)
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connection_pools: u32::MAX,
            max_connections: 1024,
            max_connections_per_host: u32::MAX,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// What a cluster has open against its thresholds.
#[derive(Debug, Default)]
pub struct Open {
    requests: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
    /// Upstream connections, connecting or open (TCP proxy ones too).
    connections: Arc<AtomicU32>,
    /// Requests waiting for a connection.
    pending: Arc<AtomicU32>,
    /// Endpoints with at least one connection.
    pub(crate) pools: Arc<AtomicU32>,
}

/// One admitted request or retry; its place is given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(counter: &Arc<AtomicU32>, limit: u32) -> Option<Slot> {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
    Some(Slot(counter.clone()))
}

impl Open {
    /// A place for one more request, if the cluster is under `max_requests`.
    pub fn request(&self, t: &Thresholds) -> Option<Slot> {
        admit(&self.requests, t.max_requests)
    }

    /// A place for one more retry, if the cluster is under `max_retries` (or within its retry budget).
    pub fn retry(&self, t: &Thresholds) -> Option<Slot> {
        let limit = match &t.retry_budget {
            Some(budget) => budget.limit(self.requests.load(Ordering::Acquire)),
            None => t.max_retries,
        };
        admit(&self.retries, limit)
    }

    /// A place for one more connection, if the cluster is under `max_connections`.
    pub fn connection(&self, t: &Thresholds) -> Option<Slot> {
        admit(&self.connections, t.max_connections)
    }

    /// A connection counted whatever the limit (one endpoint's first, so its requests can proceed).
    pub fn connection_over_limit(&self) -> Slot {
        self.connections.fetch_add(1, Ordering::AcqRel);
        Slot(self.connections.clone())
    }

    /// A place for one more request waiting for a connection, if under `max_pending_requests`.
    pub fn pending(&self, t: &Thresholds) -> Option<Slot> {
        admit(&self.pending, t.max_pending_requests)
    }

    /// Whether an endpoint without connections may open its first (under `max_connection_pools`).
    pub fn pool_allowed(&self, t: &Thresholds) -> bool {
        self.pools.load(Ordering::Acquire) < t.max_connection_pools
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let (open, t) = (Open::default(), Thresholds { max_requests: 2, max_retries: 0, ..Default::default() });
        let first = open.request(&t).unwrap();
        let _second = open.request(&t).unwrap();
        assert!(open.request(&t).is_none(), "the third is over the limit");
        drop(first);
        assert!(open.request(&t).is_some(), "a freed place is taken again");
        assert!(open.retry(&t).is_none(), "no retries at all with max_retries 0");
        let t = Thresholds { max_connections: 1, ..t };
        let first = open.connection(&t).unwrap();
        assert!(open.connection(&t).is_none());
        let forced = open.connection_over_limit();
        assert_eq!(open.connections(), 2);
        drop((first, forced));
        assert_eq!(open.connections(), 0);
    }

    #[test]
    fn a_retry_budget_is_a_share_of_requests_in_flight_with_a_floor() {
        let budget = RetryBudget { percent: 20.0, min_concurrency: 3 };
        let open = Open::default();
        let t = Thresholds { max_retries: 0, retry_budget: Some(budget), ..Default::default() };
        let requests: Vec<Slot> = (0..50).map(|_| open.request(&t).unwrap()).collect();
        let retries: Vec<Slot> = (0..10).map(|_| open.retry(&t).expect("20% of 50")).collect();
        assert!(open.retry(&t).is_none(), "the 11th retry of 50 requests is over the budget");
        drop((requests, retries));
        let _few = open.request(&t).unwrap();
        let floor: Vec<Slot> = (0..3).map(|_| open.retry(&t).expect("the minimum concurrency")).collect();
        assert!(open.retry(&t).is_none(), "{} retries with 1 request", floor.len());
    }
}
