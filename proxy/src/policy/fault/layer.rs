//! `envoy.filters.http.fault` as a tower layer: picks the request's faults (with the config its
//! route gives the filter), holds the request for the delay before the rest of the chain sees it,
//! then aborts it or passes it on, and slows the response body when a rate limit was picked. A
//! delayed response is flagged `DI` when nothing else flagged it; the fault counts as active until
//! the response is ready.

use super::Injected;
use crate::http::proxy::ResponseBody;
use crate::http::{ProxyError, ResponseFlag};
use crate::policy::filters::{Answer, Filtering};
use crate::policy::{FilterConfig, FilterOverrides, HttpFilter};
use http::Response;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Puts a [`Fault`] over the rest of the chain.
pub struct FaultLayer<'a> {
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
}

impl<'a> FaultLayer<'a> {
    pub fn new(filter: &'a HttpFilter, table: &'a FilterOverrides) -> Self {
        FaultLayer { filter, table }
    }
}

impl<'a, S> Layer<S> for FaultLayer<'a> {
    type Service = Fault<'a, S>;

    fn layer(&self, inner: S) -> Fault<'a, S> {
        Fault { inner, filter: self.filter, table: self.table }
    }
}

/// Fault injection ahead of `S`.
#[derive(Clone)]
pub struct Fault<'a, S> {
    inner: S,
    filter: &'a HttpFilter,
    table: &'a FilterOverrides,
}

impl<'a, S> Service<Filtering<'a>> for Fault<'a, S>
where
    S: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError> + Clone + Unpin,
    S::Future: Unpin,
{
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<'a, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Filtering<'a>) -> Self::Future {
        let (FilterConfig::Fault(fault), Some(stats)) =
            (request.config(self.filter, self.table), &self.filter.fault_stats)
        else {
            return ResponseFuture { state: State::Called(self.inner.call(request)), injected: None };
        };
        let mut injected = fault.decide(request.request.headers(), stats, request.selected.cluster_name.as_deref());
        let state = match (injected.delay, injected.abort.take()) {
            // The service that was made ready goes with the request; a clone stays (tower's way
            // of calling a service later).
            (Some(delay), abort) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                State::Delayed(Box::new(Delayed {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    then: Some((ready, request)),
                    abort,
                }))
            }
            (None, Some(abort)) => State::Aborted(Some(abort)),
            (None, None) => State::Called(self.inner.call(request)),
        };
        ResponseFuture { state, injected: Some(injected) }
    }
}

/// The request's way through the fault: held for its delay, aborted, or handed on.
pub struct ResponseFuture<'a, S: Service<Filtering<'a>>> {
    state: State<'a, S>,
    /// The faults picked (and their place among the faults in progress), until the response is ready.
    injected: Option<Injected>,
}

struct Delayed<'a, S> {
    sleep: Pin<Box<Sleep>>,
    then: Option<(S, Filtering<'a>)>,
    abort: Option<super::Abort>,
}

enum State<'a, S: Service<Filtering<'a>>> {
    /// Boxed: held requests are the rare case.
    Delayed(Box<Delayed<'a, S>>),
    Aborted(Option<super::Abort>),
    Called(S::Future),
}

impl<'a, S> Future for ResponseFuture<'a, S>
where
    S: Service<Filtering<'a>, Response = Response<ResponseBody>, Error = ProxyError> + Unpin,
    S::Future: Unpin,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Delayed(delayed) => {
                    ready!(delayed.sleep.as_mut().poll(cx));
                    let (mut service, request) = delayed.then.take().expect("a delayed request is handed on once");
                    this.state = match delayed.abort.take() {
                        Some(abort) => State::Aborted(Some(abort)),
                        None => State::Called(service.call(request)),
                    };
                }
                State::Aborted(abort) => {
                    this.injected = None;
                    let abort = abort.take().expect("a fault future is polled after it is done");
                    return Poll::Ready(Err(ProxyError::FaultAbort(Box::new(abort))));
                }
                State::Called(inner) => {
                    let mut answer = ready!(Pin::new(inner).poll(cx));
                    let injected = this.injected.take();
                    let delayed = injected.as_ref().is_some_and(|injected| injected.delay.is_some());
                    // The upstream's body is slowed (a local reply is not).
                    if let (Ok(response), Some(rate)) = (&mut answer, injected.and_then(|i| i.response_rate))
                        && let http_body_util::Either::Left(body) = response.body_mut()
                    {
                        body.throttle(rate);
                    }
                    if let Ok(response) = &mut answer
                        && delayed
                        && response.extensions().get::<ResponseFlag>().is_none()
                    {
                        response.extensions_mut().insert(ResponseFlag("DI"));
                    }
                    return Poll::Ready(answer);
                }
            }
        }
    }
}
