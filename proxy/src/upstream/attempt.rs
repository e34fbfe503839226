//! One attempt at an upstream exchange: pick an endpoint of the cluster (one not tried yet by this
//! request, when the retry policy asks for that) and send the request through that endpoint's pool.
//! The retry layer calls it once per attempt.

use super::outlier::Outcome;
use super::pool::{DownstreamBody, RequestBody, UpstreamResponse};
use super::{Cluster, Endpoint, UpstreamError};
use crate::http::ProxyError;
use crate::policy::retry::body::ReplayBody;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// A request whose body a retry can send again.
pub type UpstreamRequest = http::Request<ReplayBody<DownstreamBody>>;

/// An attempt's response and the endpoint that gave it.
pub struct Attempted {
    pub response: UpstreamResponse,
    pub endpoint: Arc<Endpoint>,
}

/// The endpoints a request's attempts went to, lent to its attempts and its retry policy for the
/// request's life (no allocation: the latest [`RECENT`] endpoints are kept, enough for any retry
/// policy that avoids previous hosts in practice).
#[derive(Debug, Default)]
pub struct TriedHosts(Mutex<Tried>);

/// How many of a request's endpoints [`TriedHosts`] remembers.
const RECENT: usize = 8;

#[derive(Debug, Default)]
struct Tried {
    recent: [Option<SocketAddr>; RECENT],
    count: usize,
}

impl TriedHosts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tried> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.lock().recent.contains(&Some(addr))
    }

    fn add(&self, addr: SocketAddr) {
        let mut tried = self.lock();
        let slot = tried.count % RECENT;
        tried.recent[slot] = Some(addr);
        tried.count += 1;
    }

    /// The endpoint of the latest attempt.
    pub fn last(&self) -> Option<SocketAddr> {
        let tried = self.lock();
        tried.count.checked_sub(1).and_then(|latest| tried.recent[latest % RECENT])
    }

    /// How many attempts picked an endpoint.
    pub fn count(&self) -> usize {
        self.lock().count
    }
}

/// Sends one attempt to the cluster. It borrows what its request owns, so the retry layer's copies
/// of it cost nothing.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub cluster: &'a Cluster,
    /// Extra picks made to find an endpoint not in [`TriedHosts`] (0: any endpoint).
    pub host_selection_attempts: u32,
    /// Where this request's attempts went.
    pub tried: &'a TriedHosts,
    /// The request's hash for RING_HASH and MAGLEV clusters.
    pub hash: Option<u64>,
}

impl Attempt<'_> {
    fn pick(&self) -> Option<Arc<Endpoint>> {
        let mut picked = self.cluster.pick(self.hash)?;
        for _ in 0..self.host_selection_attempts {
            if !self.tried.contains(picked.addr) {
                break;
            }
            // Another pick (a hashing cluster picks at random then, as Envoy does).
            picked = self.cluster.pick(None)?;
        }
        self.tried.add(picked.addr);
        Some(picked)
    }
}

/// An attempt's answer in the making, boxed: it is moved as the retry layer's state changes, and
/// the request's own future stays the size of one without retries.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<Attempted, ProxyError>> + Send + 'a>>;

impl<'a> Attempt<'a> {
    /// Sends one attempt. The pool's future is made here and the rest of the attempt is a map
    /// over it, so the box does not also hold the request it sends. As a tower service (the retry
    /// layer's) it is `tower::service_fn(move |request| attempt.send(request))`.
    pub fn send(self, request: UpstreamRequest) -> Sending<'a> {
        let cluster = self.cluster;
        let Some(endpoint) = self.pick() else {
            cluster.stats.cx_none_healthy.increment(1);
            return Box::pin(std::future::ready(Err(ProxyError::NoHealthyUpstream)));
        };
        Box::pin(send_to(
            cluster,
            endpoint,
            request.map(RequestBody::Replayed),
            false,
            |result, endpoint| match result {
                Ok(response) => Ok(Attempted { response, endpoint }),
                Err(e) => Err(e.into()),
            },
        ))
    }
}

/// Sends `request` to `endpoint` of `cluster`: counted as in flight at the endpoint until the
/// response comes, and reported for outlier detection and peak-EWMA balancing; `answer` makes the
/// caller's answer of it. The pool's future is made at once and mapped, so the caller's future
/// does not also hold the request.
pub fn send_to<'a, T>(
    cluster: &'a Cluster,
    endpoint: Arc<Endpoint>,
    request: http::Request<RequestBody>,
    upgrade: bool,
    answer: impl FnOnce(Result<UpstreamResponse, UpstreamError>, Arc<Endpoint>) -> T + Send + 'a,
) -> impl Future<Output = T> + Send + 'a {
    use futures_util::FutureExt;
    let in_flight = endpoint.start_request();
    let started = cluster.attempt_clock();
    Arc::clone(&endpoint.pool).send(request, cluster, upgrade).map(move |result| {
        drop(in_flight);
        cluster.report_attempt(&endpoint, Outcome::of(&result), started);
        answer(result, endpoint)
    })
}
