//! The HTTP filters ahead of the router as a tower stack: each filter of the connection manager is a
//! [`tower::Layer`] (`local_ratelimit/layer.rs`, `fault/layer.rs`, `rbac/layer.rs`) over the rest
//! of the chain ([`Chain`]), in the order the connection manager lists them with the router at the
//! bottom. Envoy's filter order is configuration, so a filter's future is boxed at its stage
//! boundary (unless the filter passed the request on with nothing to do on its response); a
//! connection manager without filters has no chain.
//!
//! Most requests need no chain at all: [`decide_early`] runs, in order, the filters that decide at
//! once and have nothing to do on the response (a rate limit without `x-ratelimit-*` headers, RBAC,
//! a fault filter with no fault for the route), and the chain, if any, starts at the first filter
//! that waits or works on the response (a fault, a rate limit with headers).

use super::{FilterConfig, FilterOverrides, HttpFilter};
use crate::http::ProxyError;
use crate::http::proxy::{Downstream, ResponseBody, Selected};
use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A request on its way through the filters: the request and where routing put it.
pub struct Filtering<'a> {
    pub request: Request<Incoming>,
    pub selected: Selected<'a>,
}

impl<'a> Filtering<'a> {
    /// The config `filter` has for this request (see [`config_for`]).
    pub fn config(&self, filter: &'a HttpFilter, table: &'a FilterOverrides) -> &'a FilterConfig {
        config_for(&self.selected, filter, table)
    }
}

/// The config `filter` has for a request routed to `selected`: the route's, else its virtual
/// host's, else the route table's (`typed_per_filter_config`), else the connection manager's own
/// (none for a filter disabled by default).
pub fn config_for<'a>(selected: &Selected<'a>, filter: &'a HttpFilter, table: &'a FilterOverrides) -> &'a FilterConfig {
    const OFF: &FilterConfig = &FilterConfig::Disabled;
    let levels = [&selected.route.filter_configs, &selected.vhost.filter_configs, table];
    let most_specific =
        levels.into_iter().filter_map(|level| level.get(&filter.name)).find(|c| c.same_kind(&filter.config));
    match most_specific {
        Some(config) => config,
        None if filter.disabled_by_default => OFF,
        None => &filter.config,
    }
}

/// Runs the filters that decide at once with nothing to do on the response, in order, up to the
/// first that needs the chain: its index (`filters.len()` when every filter let the request
/// through), or the refusal of one of them. A refused request's answer passes no filter on its
/// way back, as none of those it went through has anything to do on a response.
pub fn decide_early(
    filters: &[HttpFilter],
    table: &FilterOverrides,
    downstream: &Downstream,
    request: &mut Request<Incoming>,
    selected: &Selected<'_>,
) -> Result<usize, ProxyError> {
    for (index, filter) in filters.iter().enumerate() {
        match config_for(selected, filter, table) {
            FilterConfig::Disabled => {}
            // Its headers go on the response: the chain's work.
            FilterConfig::LocalRateLimit(limit) if limit.x_ratelimit_headers => return Ok(index),
            // No headers for the response: let through, or refused.
            FilterConfig::LocalRateLimit(limit) => {
                super::local_ratelimit::layer::admit(limit, request)?;
            }
            FilterConfig::Rbac(rbac) => {
                if !super::rbac::layer::allows(filter, rbac, downstream, request, selected) {
                    return Err(ProxyError::RbacDenied);
                }
            }
            // No fault to inject here (the filter is on for other routes).
            FilterConfig::Fault(fault) if fault.injects_nothing() => {}
            // A delay waits, and an abort may be answered only after one.
            FilterConfig::Fault(_) => return Ok(index),
        }
    }
    Ok(filters.len())
}

/// What a stage answers: a response, or the error the connection manager turns into its reply.
pub type Answer = Result<Response<ResponseBody>, ProxyError>;

/// A stage's answer in the making, boxed at the stage boundary.
pub type BoxAnswer<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// The chain's answer in the making: the router's own future, or a filter's boxed one.
pub type ChainAnswer<'a, F> = Either<F, BoxAnswer<'a>>;

/// The connection manager's filters over a router `R`, as one service: a call runs the first filter
/// (its tower layer over the chain of the rest), the chain ends at the router. Built per request
/// from references (no allocation); a filter's answer is a boxed future, the router's is its own.
pub struct Chain<'a, R> {
    filters: &'a [HttpFilter],
    table: &'a FilterOverrides,
    downstream: &'a Downstream,
    router: R,
}

impl<'a, R: Copy> Chain<'a, R> {
    /// The filters, first listed outermost, over `router`.
    pub fn new(filters: &'a [HttpFilter], table: &'a FilterOverrides, downstream: &'a Downstream, router: R) -> Self {
        Chain { filters, table, downstream, router }
    }
}

// Derived `Clone`/`Copy` would ask the same of `R` through the references' lifetime only.
impl<R: Copy> Clone for Chain<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: Copy> Copy for Chain<'_, R> {}

impl<'a, R> Service<Filtering<'a>> for Chain<'a, R>
where
    R: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError> + Copy + Send + Unpin + 'a,
    R::Future: Send + Unpin + 'a,
{
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = ChainAnswer<'a, R::Future>;

    /// The router and every filter are always ready (a filter refuses a request by answering it).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Filtering<'a>) -> Self::Future {
        use super::local_ratelimit::layer::{RateLimitLayer, ResponseFuture};
        let Some((filter, rest)) = self.filters.split_first() else {
            return Either::Left(self.router.call(request));
        };
        let mut next = Chain { filters: rest, ..*self };
        let table = self.table;
        match &filter.config {
            FilterConfig::LocalRateLimit(_) => match RateLimitLayer::new(filter, table).layer(next).call(request) {
                // No headers to add: the rest of the chain's answer is the filter's.
                ResponseFuture::Passed { inner, headers: None } => inner,
                limiting => Either::Right(Box::pin(limiting)),
            },
            FilterConfig::Fault(_) => {
                Either::Right(Box::pin(super::fault::layer::FaultLayer::new(filter, table).layer(next).call(request)))
            }
            FilterConfig::Rbac(_) => {
                let layer = super::rbac::layer::RbacLayer::new(filter, table, self.downstream);
                Either::Right(Box::pin(layer.layer(next).call(request)))
            }
            FilterConfig::Disabled => next.call(request),
        }
    }
}
