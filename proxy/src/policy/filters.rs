//! The HTTP filters ahead of the router as a tower stack: each filter of the connection manager is a
//! [`tower::Layer`] (`local_ratelimit/layer.rs`, `fault/layer.rs`, `rbac/layer.rs`) over the rest
//! of the chain, stacked in the order the connection manager lists them with the router at the
//! bottom. Envoy's filter order is configuration, so the stack is built per request from the
//! snapshot and boxed at each stage boundary; a connection manager without filters has no stack.

use super::{FilterConfig, FilterOverrides, HttpFilter};
use crate::http::ProxyError;
use crate::http::proxy::{Downstream, ResponseBody, Selected};
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
    /// The config `filter` has for this request: the route's, else its virtual host's, else the
    /// route table's (`typed_per_filter_config`), else the connection manager's own (none for a
    /// filter disabled by default).
    pub fn config(&self, filter: &'a HttpFilter, table: &'a FilterOverrides) -> &'a FilterConfig {
        const OFF: &FilterConfig = &FilterConfig::Disabled;
        let levels = [&self.selected.route.filter_configs, &self.selected.vhost.filter_configs, table];
        let most_specific =
            levels.into_iter().filter_map(|level| level.get(&filter.name)).find(|c| c.same_kind(&filter.config));
        match most_specific {
            Some(config) => config,
            None if filter.disabled_by_default => OFF,
            None => &filter.config,
        }
    }
}

/// What a stage answers: a response, or the error the connection manager turns into its reply.
pub type Answer = Result<Response<ResponseBody>, ProxyError>;

/// A stage's answer in the making, boxed at the stage boundary.
pub type BoxAnswer<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// One stage of the stack (a filter over the rest, or the router), boxed and cloneable.
pub trait Stage<'a>:
    Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError, Future = BoxAnswer<'a>> + Send + 'a
{
    fn clone_box(&self) -> BoxStage<'a>;
}

pub type BoxStage<'a> = Box<dyn Stage<'a>>;

impl<'a, S> Stage<'a> for S
where
    S: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError, Future = BoxAnswer<'a>>
        + Clone
        + Send
        + 'a,
{
    fn clone_box(&self) -> BoxStage<'a> {
        Box::new(self.clone())
    }
}

impl Clone for BoxStage<'_> {
    fn clone(&self) -> Self {
        // The boxed stage's own clone (a `BoxStage` is a `Stage` too: calling it on the box would
        // come back here).
        (**self).clone_box()
    }
}

/// A filter service with its own response future, boxed to sit in the stack.
#[derive(Clone)]
struct Boxed<S>(S);

impl<'a, S> Service<Filtering<'a>> for Boxed<S>
where
    S: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError>,
    S::Future: Send + 'a,
{
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = BoxAnswer<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Filtering<'a>) -> BoxAnswer<'a> {
        Box::pin(self.0.call(request))
    }
}

/// The connection manager's filters, first listed outermost, over `router`.
pub fn stack<'a>(
    filters: &'a [HttpFilter],
    table: &'a FilterOverrides,
    downstream: &'a Downstream,
    router: BoxStage<'a>,
) -> BoxStage<'a> {
    filters.iter().rev().fold(router, |inner, filter| match &filter.config {
        FilterConfig::LocalRateLimit(_) => {
            Box::new(Boxed(super::local_ratelimit::layer::RateLimitLayer::new(filter, table).layer(inner)))
        }
        FilterConfig::Fault(_) => Box::new(Boxed(super::fault::layer::FaultLayer::new(filter, table).layer(inner))),
        FilterConfig::Rbac(_) => {
            Box::new(Boxed(super::rbac::layer::RbacLayer::new(filter, table, downstream).layer(inner)))
        }
        FilterConfig::Disabled => inner,
    })
}
