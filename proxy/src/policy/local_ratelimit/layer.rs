//! `envoy.filters.http.local_ratelimit` as a tower layer: takes a token for the request (with the
//! config its route gives the filter), answers 429 when there is none, and puts the
//! `x-ratelimit-*` headers on the response of a request it let through.

use super::{Decision, LocalRateLimit};
use crate::http::ProxyError;
use crate::http::proxy::ResponseBody;
use crate::policy::filters::{Answer, Filtering};
use crate::policy::{FilterConfig, FilterOverrides, HttpFilter};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Puts a [`RateLimit`] over the rest of the chain.
pub struct RateLimitLayer<'a> {
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
}

impl<'a> RateLimitLayer<'a> {
    pub fn new(filter: &'a HttpFilter, table: &'a FilterOverrides) -> Self {
        RateLimitLayer { filter, table }
    }
}

impl<'a, S> Layer<S> for RateLimitLayer<'a> {
    type Service = RateLimit<'a, S>;

    fn layer(&self, inner: S) -> RateLimit<'a, S> {
        RateLimit { inner, filter: self.filter, table: self.table }
    }
}

/// The local rate limit ahead of `S`.
#[derive(Clone)]
pub struct RateLimit<'a, S> {
    inner: S,
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
}

impl<'a, S> Service<Filtering<'a>> for RateLimit<'a, S>
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

    fn call(&mut self, mut request: Filtering<'a>) -> Self::Future {
        let FilterConfig::LocalRateLimit(limit) = request.config(self.filter, self.table) else {
            return ResponseFuture::Passed { inner: self.inner.call(request), headers: None };
        };
        match admit(limit, &mut request.request) {
            Ok(headers) => ResponseFuture::Passed { inner: self.inner.call(request), headers },
            Err(limited) => ResponseFuture::Limited(Some(limited)),
        }
    }
}

/// Takes a token for `request`: the refusal of a limited request, or the headers (if any) for the
/// response of one let through. One over the limit where the limit is not enforced gets the
/// not-enforced request headers.
pub fn admit(limit: &LocalRateLimit, request: &mut Request<Incoming>) -> Result<Option<HeaderMap>, ProxyError> {
    match limit.decide() {
        Decision::Pass => Ok(None),
        // No `x-ratelimit-*` headers asked for: nothing to add to the response.
        Decision::Allowed(headers) => Ok(Some(headers).filter(|h| !h.is_empty())),
        Decision::NotEnforced => {
            limit.request_headers_when_not_enforced.apply(request.headers_mut());
            Ok(None)
        }
        Decision::Limited(limited) => Err(ProxyError::RateLimited(limited)),
    }
}

/// A limited request's answer, or the rest of the chain's with the rate-limit headers added.
pub enum ResponseFuture<F> {
    Limited(Option<ProxyError>),
    Passed { inner: F, headers: Option<HeaderMap> },
}

impl<F: Future<Output = Answer> + Unpin> Future for ResponseFuture<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.get_mut() {
            ResponseFuture::Limited(error) => {
                Poll::Ready(Err(error.take().expect("a rate-limit future is polled after it is done")))
            }
            ResponseFuture::Passed { inner, headers } => {
                let mut answer = ready!(Pin::new(inner).poll(cx));
                if let (Ok(response), Some(headers)) = (&mut answer, headers.take()) {
                    response.headers_mut().extend(headers);
                }
                Poll::Ready(answer)
            }
        }
    }
}
