//! The wait for the upstream's answer as a tower layer: the first of the route timeout, the
//! stream's maximum duration and the idle timeout before the response headers ends it, and the
//! error says which one did.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
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

/// A deadline-bound call's failure: the inner service's, or the limit that passed first.
#[derive(Debug)]
pub enum Deadlined<E> {
    Inner(E),
    Expired(Expiry),
}

/// Bounds a service's calls by the earliest of some limits.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    first: Option<(Instant, Expiry)>,
}

impl DeadlineLayer {
    /// The earliest of `limits` (none set: no bound).
    pub fn new(limits: impl IntoIterator<Item = (Option<Instant>, Expiry)>) -> Self {
        let first = limits.into_iter().filter_map(|(at, kind)| Some((at?, kind))).min_by_key(|(at, _)| *at);
        DeadlineLayer { first }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, first: self.first }
    }
}

/// `S` bound by a deadline.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    first: Option<(Instant, Expiry)>,
}

impl<S: Service<R>, R> Service<R> for Deadline<S> {
    type Response = S::Response;
    type Error = Deadlined<S::Error>;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Deadlined::Inner)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let inner = self.inner.call(request);
        match self.first {
            Some((at, expiry)) => DeadlineFuture::Bounded { inner, sleep: tokio::time::sleep_until(at), expiry },
            None => DeadlineFuture::Unbounded { inner },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, unless its deadline passes first.
    #[project = Projected]
    pub enum DeadlineFuture<F> {
        Bounded {
            #[pin]
            inner: F,
            #[pin]
            sleep: Sleep,
            expiry: Expiry,
        },
        Unbounded {
            #[pin]
            inner: F,
        },
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for DeadlineFuture<F> {
    type Output = Result<T, Deadlined<E>>;

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
}
