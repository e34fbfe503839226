//! Request mirroring (`request_mirror_policies`): a copy of a share of a route's requests goes to a
//! shadow cluster, its authority suffixed `-shadow`, fire and forget. The copy's body is teed from
//! the real one as it streams ([`Tee`]): a shadow that cannot keep up is abandoned, never waited
//! for, and its answer is read and dropped. Nothing about the shadow delays or fails the request.

use super::Fraction;
use crate::upstream::Cluster;
use crate::upstream::pool::{RequestBody, UpstreamResponse};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Frames a shadow may lag behind the request before it is abandoned.
const SHADOW_LAG: usize = 32;

/// One `RequestMirrorPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub target: MirrorTarget,
    /// `runtime_fraction` (default: every request).
    pub share: Fraction,
    /// `disable_shadow_host_suffix_append`.
    pub keep_host: bool,
}

/// Where a mirror policy sends its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorTarget {
    /// `cluster`: this cluster.
    Cluster(String),
    /// `cluster_header`: the cluster named by the request's first value of this header; no copy
    /// when the request has none (or names no cluster).
    Header(http::HeaderName),
}

impl MirrorTarget {
    /// The shadow cluster's name for a request with these headers.
    pub fn cluster<'a>(&'a self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        match self {
            MirrorTarget::Cluster(name) => Some(name),
            MirrorTarget::Header(name) => headers.get(name)?.to_str().ok().filter(|v| !v.is_empty()),
        }
    }
}

/// The authority a shadow request carries: `-shadow` appended to the host, before any port.
pub fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') =>
        {
            format!("{host}-shadow:{port}")
        }
        Some((host, port)) if host.ends_with(']') => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

/// The sending side of a teed body: every frame the request body yields is offered to each shadow.
#[derive(Debug, Default)]
pub struct Tee {
    shadows: Vec<(mpsc::Sender<Frame<Bytes>>, Arc<AtomicBool>)>,
}

impl Tee {
    /// A new shadow's body, fed from now on.
    pub fn shadow(&mut self) -> ShadowBody {
        let (tx, rx) = mpsc::channel(SHADOW_LAG);
        let abandoned = Arc::new(AtomicBool::new(false));
        self.shadows.push((tx, abandoned.clone()));
        ShadowBody { frames: rx, abandoned, empty: false }
    }

    pub fn is_empty(&self) -> bool {
        self.shadows.is_empty()
    }

    /// Offers a frame to every shadow; one that is full or gone is dropped (and told so).
    pub fn offer(&mut self, frame: &Frame<Bytes>) {
        let copy = || match (frame.data_ref(), frame.trailers_ref()) {
            (Some(data), _) => Some(Frame::data(data.clone())),
            (None, Some(trailers)) => Some(Frame::trailers(trailers.clone())),
            _ => None,
        };
        self.shadows.retain(|(tx, abandoned)| {
            let Some(frame) = copy() else { return true };
            if tx.try_send(frame).is_ok() {
                return true;
            }
            abandoned.store(true, Ordering::Release);
            false
        });
    }

    /// The request body failed: the shadows' bodies fail too.
    pub fn fail(&mut self) {
        for (_, abandoned) in self.shadows.drain(..) {
            abandoned.store(true, Ordering::Release);
        }
    }
}

/// A shadow request's body: the frames teed from the request; an error if the shadow was abandoned.
#[derive(Debug)]
pub struct ShadowBody {
    frames: mpsc::Receiver<Frame<Bytes>>,
    abandoned: Arc<AtomicBool>,
    /// The request had no body at all.
    empty: bool,
}

impl ShadowBody {
    /// The body of a shadow of a request without one.
    pub fn empty() -> Self {
        let (_, frames) = mpsc::channel(1);
        ShadowBody { frames, abandoned: Arc::default(), empty: true }
    }
}

impl Body for ShadowBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.abandoned.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(std::io::Error::other("shadow abandoned: it fell behind the request"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }

    fn size_hint(&self) -> SizeHint {
        if self.empty { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}

/// Sends a shadow request to `cluster` on its own task; its answer is read to the end and dropped.
/// It is an attempt like any other at its endpoint (as Envoy's shadows go through a router of their
/// own): in flight there until answered, and what it got reported to outlier detection and to
/// latency-aware balancing.
pub fn send(cluster: Arc<Cluster>, request: Request<RequestBody>) {
    tokio::spawn(async move {
        let Some(_slot) = cluster.open.request(&cluster.config.breakers) else {
            cluster.stats.rq_active_overflow.increment(1);
            return;
        };
        let Some(endpoint) = cluster.pick(None) else {
            cluster.stats.cx_none_healthy.increment(1);
            return;
        };
        cluster.stats.rq_total.increment(1);
        match crate::upstream::attempt::send_to(&cluster, endpoint, request, false, |result, _| result).await {
            Ok(UpstreamResponse::Pooled(response)) => {
                cluster.stats.rq_xx.record(response.status().as_u16());
                let _ = response.into_body().collect().await;
            }
            Ok(UpstreamResponse::Upgraded(_)) => {}
            Err(e) => tracing::debug!(cluster = %cluster.config.name, error = %e, "shadow request failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_authority("api.test"), "api.test-shadow");
        assert_eq!(shadow_authority("api.test:8080"), "api.test-shadow:8080");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[tokio::test]
    async fn a_shadow_that_falls_behind_is_abandoned_not_waited_for() {
        let mut tee = Tee::default();
        let mut slow = tee.shadow();
        for _ in 0..SHADOW_LAG + 1 {
            tee.offer(&Frame::data(Bytes::from_static(b"x")));
        }
        assert!(tee.is_empty(), "the full shadow was dropped, the request went on");
        let mut frames = 0;
        let failed = loop {
            match slow.frame().await {
                Some(Ok(_)) => frames += 1,
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert!(failed && frames == SHADOW_LAG, "its body fails after what it got ({frames} frames)");
    }
}
