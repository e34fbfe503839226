//! `envoy.filters.http.rbac` as a tower layer: the request (its headers, path and authority, and the
//! connection's peer and certificate) is checked against the policies its route gives the filter;
//! a denied request is answered 403 and goes no further.

use super::{Facts, RequestFacts};
use crate::http::ProxyError;
use crate::http::proxy::{Downstream, ResponseBody, Selected};
use crate::policy::filters::{Answer, Filtering};
use crate::policy::{FilterConfig, FilterOverrides, HttpFilter};
use http::{Request, Response};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Puts an [`Rbac`] over the rest of the chain.
pub struct RbacLayer<'a> {
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
    downstream: &'a Downstream,
}

impl<'a> RbacLayer<'a> {
    pub fn new(filter: &'a HttpFilter, table: &'a FilterOverrides, downstream: &'a Downstream) -> Self {
        RbacLayer { filter, table, downstream }
    }
}

impl<'a, S> Layer<S> for RbacLayer<'a> {
    type Service = Rbac<'a, S>;

    fn layer(&self, inner: S) -> Rbac<'a, S> {
        Rbac { inner, filter: self.filter, table: self.table, downstream: self.downstream }
    }
}

/// Authorization ahead of `S`.
#[derive(Clone)]
pub struct Rbac<'a, S> {
    inner: S,
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
    downstream: &'a Downstream,
}

impl<'a, S> Service<Filtering<'a>> for Rbac<'a, S>
where
    S: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError>,
    S::Future: Unpin,
{
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Filtering<'a>) -> Self::Future {
        let FilterConfig::Rbac(rbac) = request.config(self.filter, self.table) else {
            return ResponseFuture::Allowed(self.inner.call(request));
        };
        if allows(self.filter, rbac, self.downstream, &request.request, &request.selected) {
            ResponseFuture::Allowed(self.inner.call(request))
        } else {
            ResponseFuture::Denied
        }
    }
}

/// Whether `rbac` (the config `filter` has for this request) lets the request through, counted in
/// the filter's stats.
pub fn allows(
    filter: &HttpFilter,
    rbac: &super::Rbac,
    downstream: &Downstream,
    request: &Request<Incoming>,
    selected: &Selected<'_>,
) -> bool {
    let Some(stats) = &filter.rbac_stats else { return true };
    let facts = Facts {
        peer: downstream.peer,
        client: selected.client,
        local: downstream.local,
        tls: downstream.tls.as_deref(),
        request: Some(RequestFacts {
            headers: request.headers(),
            method: request.method().as_str(),
            path: selected.path.as_str(),
            authority: selected.authority.to_str().unwrap_or_default(),
            scheme: if downstream.tls.is_some() { "https" } else { "http" },
        }),
    };
    rbac.allows(&facts, stats)
}

/// Denied at once, or the rest of the chain's answer.
pub enum ResponseFuture<F> {
    Denied,
    Allowed(F),
}

impl<F: Future<Output = Answer> + Unpin> Future for ResponseFuture<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.get_mut() {
            ResponseFuture::Denied => Poll::Ready(Err(ProxyError::RbacDenied)),
            ResponseFuture::Allowed(inner) => Pin::new(inner).poll(cx),
        }
    }
}
