//! The wait for the upstream's answer as a tower layer: the first of the route timeout, the
//! stream's maximum duration and the idle timeout before the response headers ends it, and the
//! error says which one did. The same layer bounds each attempt by the retry policy's per-try
//! timeout, counted from the attempt's start.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Which limit ended the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The route's `timeout`.
    Route,
    /// `max_stream_duration` (or the caller's gRPC deadline under it).
    StreamDuration,
    /// The stream's idle timeout, for a request with nothing more to send.
    Idle,
}

/// The retry policy's per-try timeout (or per-try idle timeout) passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerTry;

/// A deadline-bound call's failure: the inner service's, or the limit (`X`) that passed first.
#[derive(Debug)]
pub enum Deadlined<E, X = Expiry> {
    Inner(E),
    Expired(X),
}

/// When a call has to be done by.
#[derive(Debug, Clone, Copy)]
enum Limit {
    At(Instant),
    /// This long after the call starts.
    After(Duration),
}

/// Bounds a service's calls by the earliest of some limits, each named by an `X`.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer<X = Expiry> {
    first: Option<(Limit, X)>,
}

impl<X: Copy> DeadlineLayer<X> {
    /// The earliest of `limits` (none set: no bound).
    pub fn new(limits: impl IntoIterator<Item = (Option<Instant>, X)>) -> Self {
        let first = limits.into_iter().filter_map(|(at, kind)| Some((at?, kind))).min_by_key(|(at, _)| *at);
        DeadlineLayer { first: first.map(|(at, kind)| (Limit::At(at), kind)) }
    }

    /// Each call bounded by `limit` from its own start (none: no bound).
    pub fn per_call(limit: Option<Duration>, kind: X) -> Self {
        DeadlineLayer { first: limit.map(|limit| (Limit::After(limit), kind)) }
    }
}

impl<S, X: Copy> Layer<S> for DeadlineLayer<X> {
    type Service = Deadline<S, X>;

    fn layer(&self, inner: S) -> Deadline<S, X> {
        Deadline { inner, first: self.first }
    }
}

/// `S` bound by a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Deadline<S, X = Expiry> {
    inner: S,
    first: Option<(Limit, X)>,
}

impl<S: Service<R>, R, X: Copy> Service<R> for Deadline<S, X> {
    type Response = S::Response;
    type Error = Deadlined<S::Error, X>;
    type Future = DeadlineFuture<S::Future, X>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Deadlined::Inner)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let inner = self.inner.call(request);
        match self.first {
            Some((limit, expiry)) => {
                let sleep = match limit {
                    Limit::At(at) => tokio::time::sleep_until(at),
                    Limit::After(limit) => tokio::time::sleep(limit),
                };
                DeadlineFuture::Bounded { inner, sleep, expiry }
            }
            None => DeadlineFuture::Unbounded { inner },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, unless its deadline passes first.
    #[project = Projected]
    pub enum DeadlineFuture<F, X> {
        Bounded {
            #[pin]
            inner: F,
            #[pin]
            sleep: Sleep,
            expiry: X,
        },
        Unbounded {
            #[pin]
            inner: F,
        },
    }
}

impl<F: Future<Output = Result<T, E>>, T, E, X: Copy> Future for DeadlineFuture<F, X> {
    type Output = Result<T, Deadlined<E, X>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Unbounded { inner } => inner.poll(cx).map_err(Deadlined::Inner),
            Projected::Bounded { inner, sleep, expiry } => {
                if let Poll::Ready(answer) = inner.poll(cx) {
                    return Poll::Ready(answer.map_err(Deadlined::Inner));
                }
                ready!(sleep.poll(cx));
                Poll::Ready(Err(Deadlined::Expired(*expiry)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn the_earliest_limit_ends_the_wait_and_is_named() {
        let slow = tower::service_fn(|wait: Duration| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, ()>(wait)
        });
        let started = Instant::now();
        // Limits are instants: each call's counted from when it starts.
        let limits = |route: u64, idle: Option<u64>| {
            let now = Instant::now();
            DeadlineLayer::new([
                (Some(now + Duration::from_secs(route)), Expiry::Route),
                (None, Expiry::StreamDuration),
                (idle.map(|s| now + Duration::from_secs(s)), Expiry::Idle),
            ])
        };
        let answer = limits(5, None).layer(slow).oneshot(Duration::from_secs(1)).await;
        assert!(matches!(answer, Ok(d) if d == Duration::from_secs(1)));
        let answer = limits(5, Some(2)).layer(slow).oneshot(Duration::from_secs(3)).await;
        assert!(matches!(answer, Err(Deadlined::Expired(Expiry::Idle))));
        let answer = limits(5, None).layer(slow).oneshot(Duration::from_secs(10)).await;
        assert!(matches!(answer, Err(Deadlined::Expired(Expiry::Route))));
        assert_eq!(Instant::now() - started, Duration::from_secs(1 + 2 + 5));
        let unbounded = DeadlineLayer::new([(None, Expiry::Route)]).layer(slow).oneshot(Duration::from_secs(60)).await;
        assert!(unbounded.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_call_limit_counts_from_each_call() {
        let slow = tower::service_fn(|wait: Duration| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, ()>(wait)
        });
        let mut limited = DeadlineLayer::per_call(Some(Duration::from_secs(2)), PerTry).layer(slow);
        // The layer is made long before the calls: each still gets its 2 s.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let answer = limited.ready().await.unwrap().call(Duration::from_secs(1)).await;
        assert!(matches!(answer, Ok(d) if d == Duration::from_secs(1)));
        let started = Instant::now();
        let answer = limited.ready().await.unwrap().call(Duration::from_secs(3)).await;
        assert!(matches!(answer, Err(Deadlined::Expired(PerTry))));
        assert_eq!(Instant::now() - started, Duration::from_secs(2));
        let unlimited = DeadlineLayer::per_call(None, PerTry).layer(slow).oneshot(Duration::from_secs(60)).await;
        assert!(unlimited.is_ok());
    }
}
