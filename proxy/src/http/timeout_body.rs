//! A body wrapper that enforces the connection manager's stream timeouts: `stream_idle_timeout` (no
//! frame for that long) and `request_timeout` (the whole body by a deadline). On expiry the body
//! yields an error, which aborts the exchange, and records that it expired. A body may also be slowed
//! to a rate (the fault filter's `response_rate_limit`).

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a timed body gave up.
#[derive(Debug, thiserror::Error)]
#[error("stream timeout: {0}")]
pub struct StreamTimeout(&'static str);

/// Limits for one body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub deadline: Option<Instant>,
}

impl Limits {
    pub fn is_none(&self) -> bool {
        self.idle.is_none() && self.deadline.is_none()
    }
}

pub struct TimedBody<B> {
    inner: B,
    limits: Limits,
    /// When the body last waited with nothing to read; `None` right after a frame (the clock is
    /// read only when the body has to wait).
    last_activity: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    expired: Option<Arc<AtomicBool>>,
    /// Set when the body is slowed (boxed: the rare case).
    throttle: Option<Box<Throttle>>,
}

/// A rate for a body: a slice of a twentieth of a second's bytes every 50 ms, the first at once (as
/// Envoy's stream rate limiter does).
struct Throttle {
    slice: usize,
    /// What came from the inner body and is not sent yet.
    held: Bytes,
    next_slice: Pin<Box<Sleep>>,
}

/// How often a slowed body sends a slice.
const SLICE_INTERVAL: Duration = Duration::from_millis(50);

impl<B> std::fmt::Debug for TimedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl<B> TimedBody<B> {
    /// Wraps `inner`; `expired` (if given) is set if a limit fires.
    pub fn new(inner: B, limits: Limits, expired: Option<Arc<AtomicBool>>) -> Self {
        TimedBody { inner, limits, last_activity: None, timer: None, expired, throttle: None }
    }

    /// Slows the body's data to `bytes_per_second`.
    pub fn throttle(&mut self, bytes_per_second: u64) {
        let slice = usize::try_from(bytes_per_second / 20).unwrap_or(usize::MAX).max(1);
        let next_slice = Box::pin(tokio::time::sleep_until(Instant::now()));
        self.throttle = Some(Box::new(Throttle { slice, held: Bytes::new(), next_slice }));
    }

    /// A body without limits.
    pub fn unlimited(inner: B) -> Self {
        Self::new(inner, Limits::default(), None)
    }

    /// Polls the timer: `Ready` with the reason when a limit has passed.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        loop {
            let now = Instant::now();
            // The idle period starts at the first wait after the last frame (or after creation).
            let last = *self.last_activity.get_or_insert(now);
            let idle_at = self.limits.idle.map(|d| last + d);
            let wake = match (idle_at, self.limits.deadline) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Poll::Pending,
            };
            if self.limits.deadline.is_some_and(|d| now >= d) {
                return Poll::Ready("request timeout");
            }
            if idle_at.is_some_and(|t| now >= t) {
                return Poll::Ready("stream idle timeout");
            }
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            ready!(timer.as_mut().poll(cx));
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(throttle) = &mut this.throttle
            && !throttle.held.is_empty()
        {
            ready!(throttle.next_slice.as_mut().poll(cx));
            let slice = throttle.held.split_to(throttle.slice.min(throttle.held.len()));
            let next = Instant::now() + SLICE_INTERVAL;
            throttle.next_slice.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(slice))));
        }
        let polled = this.poll_inner(cx);
        match (polled, &mut this.throttle) {
            (Poll::Ready(Some(Ok(frame))), Some(throttle)) if frame.is_data() => {
                // Held, then sent a slice at a time.
                throttle.held = frame.into_data().unwrap_or_default();
                self.poll_frame(cx)
            }
            (polled, _) => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.throttle.as_ref().is_none_or(|t| t.held.is_empty()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let held = self.throttle.as_ref().map_or(0, |t| t.held.len() as u64);
        if held == 0 {
            return hint;
        }
        let mut with_held = SizeHint::new();
        with_held.set_lower(hint.lower() + held);
        if let Some(upper) = hint.upper() {
            with_held.set_upper(upper + held);
        }
        with_held
    }
}

impl<B> TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The inner body's next frame, within the limits.
    #[allow(clippy::type_complexity)]
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>> {
        let this = self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last_activity = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.limits.is_none() => Poll::Pending,
            Poll::Pending => match this.poll_limits(cx) {
                Poll::Ready(reason) => {
                    if let Some(flag) = &this.expired {
                        flag.store(true, Ordering::Release);
                    }
                    Poll::Ready(Some(Err(Box::new(StreamTimeout(reason)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that never produces a frame.
    struct Silent;
    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_deadline_limits_fire() {
        let expired = Arc::new(AtomicBool::new(false));
        let limits = Limits { idle: Some(Duration::from_secs(5)), deadline: None };
        let mut body = TimedBody::new(Silent, limits, Some(expired.clone()));
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "stream timeout: stream idle timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(expired.load(Ordering::Acquire));

        let limits =
            Limits { idle: Some(Duration::from_secs(60)), deadline: Some(Instant::now() + Duration::from_secs(2)) };
        let mut body = TimedBody::new(Silent, limits, None);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "stream timeout: request timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_body_goes_a_slice_every_50_ms() {
        let inner = http_body_util::Full::new(Bytes::from(vec![b'x'; 4096]));
        let mut body = TimedBody::unlimited(inner);
        body.throttle(20 * 1024);
        let started = Instant::now();
        let mut slices = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            slices.push((data.len(), started.elapsed().as_millis()));
        }
        assert_eq!(slices, [(1024, 0), (1024, 50), (1024, 100), (1024, 150)]);
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_pass_through_untouched() {
        let inner = http_body_util::Full::new(Bytes::from_static(b"abc"));
        let limits = Limits { idle: Some(Duration::from_secs(1)), deadline: None };
        let body = TimedBody::new(inner, limits, None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from_static(b"abc"));
    }
}
