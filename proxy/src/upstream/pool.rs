//! Per-endpoint connection pools: idle keep-alive HTTP/1.1 connections reused last-in first-out, or one
//! multiplexed HTTP/2 connection. A pooled HTTP/1.1 connection goes back to the pool when the response
//! body has been read to the end; one the upstream closed meanwhile is retried on a fresh connection.
//! A request that finds no idle connection is pending (within the cluster's `max_pending_requests`)
//! until a new one is made or, with the cluster at `max_connections`, one is given back.

use super::breakers::Slot;
use super::transport::UpstreamStream;
use super::{Cluster, UpstreamProtocol};
use crate::policy::mirror::{ShadowBody, Tee};
use crate::policy::retry::body::ReplayBody;
use crate::telemetry::ClusterStats;
use crate::tls::client::Purpose;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The downstream request body, streamed under the stream timeouts, and teed to any shadows.
pub struct DownstreamBody {
    body: crate::http::timeout_body::TimedBody<Incoming>,
    tee: Tee,
}

impl DownstreamBody {
    pub fn new(body: crate::http::timeout_body::TimedBody<Incoming>, tee: Tee) -> Self {
        DownstreamBody { body, tee }
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = <crate::http::timeout_body::TimedBody<Incoming> as Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if !this.tee.is_empty() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => this.tee.offer(frame),
                Poll::Ready(Some(Err(_))) => this.tee.fail(),
                // The end: dropping the senders ends the shadows' bodies.
                Poll::Ready(None) => this.tee = Tee::default(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body sent upstream: the downstream's streamed through, or a copy that a retry can send again.
pub enum RequestBody {
    Streamed(DownstreamBody),
    Replayed(ReplayBody<DownstreamBody>),
    /// A mirrored request's copy of the body.
    Shadow(ShadowBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Replayed(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Shadow(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(b) => b.is_end_stream(),
            RequestBody::Replayed(b) => b.is_end_stream(),
            RequestBody::Shadow(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streamed(b) => b.size_hint(),
            RequestBody::Replayed(b) => b.size_hint(),
            RequestBody::Shadow(b) => b.size_hint(),
        }
    }
}

/// Pool settings from the cluster config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// HTTP/2: the streams we allow ourselves on one connection (`max_concurrent_streams`) and the
    /// windows we offer.
    pub http2: crate::http::Http2Options,
    /// An upstream connection unused this long is closed (`common_http_protocol_options.idle_timeout`,
    /// Envoy's default 1 h; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Requests one connection carries before it is closed (`max_requests_per_connection`).
    pub max_requests_per_connection: Option<u32>,
    /// A connection this old takes no new request (`max_connection_duration`).
    pub max_connection_duration: Option<Duration>,
}

/// When a connection was made and how much it has been used.
#[derive(Debug, Clone, Copy)]
struct Lifetime {
    born: Instant,
    requests: u32,
    last_used: Instant,
}

impl Lifetime {
    fn new() -> Self {
        let now = Instant::now();
        Lifetime { born: now, requests: 0, last_used: now }
    }

    /// Whether the connection may carry another request at `now` (one clock read per caller).
    fn usable(&self, options: &PoolOptions, now: Instant) -> bool {
        options.idle_timeout.is_none_or(|t| now.saturating_duration_since(self.last_used) < t)
            && options.max_connection_duration.is_none_or(|d| now.saturating_duration_since(self.born) < d)
            && options.max_requests_per_connection.is_none_or(|n| self.requests < n)
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            http2: crate::http::Http2Options::default(),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_requests_per_connection: None,
            max_connection_duration: None,
        }
    }
}

/// An upstream's answer: a pooled exchange, or an upgrade attempt on a connection of its own.
pub enum UpstreamResponse {
    Pooled(Response<PooledBody>),
    Upgraded(Response<Incoming>),
}

impl UpstreamResponse {
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamResponse::Pooled(r) => r.status(),
            UpstreamResponse::Upgraded(r) => r.status(),
        }
    }

    pub fn headers(&self) -> &http::HeaderMap {
        match self {
            UpstreamResponse::Pooled(r) => r.headers(),
            UpstreamResponse::Upgraded(r) => r.headers(),
        }
    }
}

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connection timeout")]
    ConnectTimeout,
    /// The TLS handshake failed (the upstream's certificate refused, no common protocol...).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[source] hyper::Error),
    #[error("connection termination: {0}")]
    Reset(#[source] hyper::Error),
    /// The connection closed before the request was written to it.
    #[error("connection termination before the request was sent: {0}")]
    ResetBeforeRequest(#[source] hyper::Error),
    /// No connection, and `max_pending_requests` requests already wait for one.
    #[error("overflow: too many requests pending")]
    Overflow,
    /// The endpoint has no connection pool and the cluster has `max_connection_pools` already.
    #[error("overflow: too many connection pools")]
    PoolOverflow,
}

impl UpstreamError {
    fn from_hyper(e: hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            UpstreamError::Protocol(e)
        } else {
            UpstreamError::Reset(e)
        }
    }

    /// True when no connection could be made (Envoy's `UF`), false for a failure after connecting.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_))
    }
}

#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    tls: Option<super::transport::UpstreamTls>,
    options: PoolOptions,
    idle_http1: Mutex<Vec<(http1::SendRequest<RequestBody>, Lifetime)>>,
    /// Open HTTP/2 connections, each carrying up to `http2.max_concurrent_streams` streams.
    http2: Mutex<Vec<H2Connection>>,
    http2_connecting: tokio::sync::Mutex<()>,
    /// This endpoint's connections, connecting or open.
    connections: Arc<std::sync::atomic::AtomicU32>,
    /// Told when a connection is given back or closes, for requests waiting for one.
    freed: Arc<tokio::sync::Notify>,
    /// The stream limit this endpoint's HTTP/2 connections were last told (`u32::MAX`: not yet),
    /// assumed by a new connection until its own SETTINGS come.
    peer_stream_limit: Arc<std::sync::atomic::AtomicU32>,
    /// Connections attempted and those that failed, for `/clusters`.
    cx_total: std::sync::atomic::AtomicU64,
    cx_connect_fail: std::sync::atomic::AtomicU64,
}

/// A connection's hold on its cluster's and its endpoint's counts, released when it closes, which
/// also wakes a request waiting for a connection.
struct Held {
    _cluster: Slot,
    endpoint: Arc<std::sync::atomic::AtomicU32>,
    /// The cluster's count of endpoints with connections, left when this was the last.
    pools: Arc<std::sync::atomic::AtomicU32>,
    freed: Arc<tokio::sync::Notify>,
}

impl Held {
    fn new(pool: &Pool, cluster: &Cluster, slot: Slot) -> Self {
        if pool.connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
            cluster.open.pools.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Held {
            _cluster: slot,
            endpoint: pool.connections.clone(),
            pools: cluster.open.pools.clone(),
            freed: pool.freed.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.endpoint.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.pools.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.freed.notify_one();
    }
}

/// One HTTP/2 connection and its streams in flight.
struct H2Connection {
    sender: http2::SendRequest<RequestBody>,
    lifetime: Lifetime,
    streams: Arc<std::sync::atomic::AtomicU32>,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, as last seen by the connection's task.
    peer_limit: Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for H2Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Connection").field("streams", &self.streams).finish_non_exhaustive()
    }
}

/// A stream's place on its HTTP/2 connection, given back when its response body is done with.
#[derive(Debug)]
struct H2Stream(Arc<std::sync::atomic::AtomicU32>);

impl H2Stream {
    fn on(connection: &H2Connection) -> Self {
        connection.streams.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        H2Stream(connection.streams.clone())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Marks a request as waiting for a connection while it lives.
struct Pending<'a> {
    _slot: Slot,
    gauge: &'a metrics::Gauge,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl Pool {
    pub fn new(addr: SocketAddr, cluster: &super::ClusterConfig) -> Self {
        Pool {
            addr,
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            tls: cluster.tls.clone(),
            options: cluster.pool.clone(),
            idle_http1: Mutex::new(Vec::new()),
            http2: Mutex::new(Vec::new()),
            http2_connecting: tokio::sync::Mutex::new(()),
            connections: Arc::default(),
            freed: Arc::default(),
            peer_stream_limit: Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX)),
            cx_total: Default::default(),
            cx_connect_fail: Default::default(),
        }
    }

    /// (connections attempted, failed to connect, open now), for `/clusters`.
    pub fn connection_counts(&self) -> (u64, u64, u32) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.cx_total.load(Relaxed), self.cx_connect_fail.load(Relaxed), self.connections.load(Relaxed))
    }

    /// Counts a request as waiting for a connection, or `Overflow` at `max_pending_requests`.
    fn pending<'a>(&self, cluster: &'a Cluster) -> Result<Pending<'a>, UpstreamError> {
        let Some(slot) = cluster.open.pending(&cluster.config.breakers) else {
            cluster.stats.rq_pending_overflow.increment(1);
            return Err(UpstreamError::Overflow);
        };
        cluster.stats.rq_pending_total.increment(1);
        cluster.stats.rq_pending_active.increment(1.0);
        Ok(Pending { _slot: slot, gauge: &cluster.stats.rq_pending_active })
    }

    /// A new connection's place: within the endpoint's own limit (`per_host_thresholds`) and the
    /// cluster's `max_connections`, or over them when this endpoint has no connection at all (as
    /// Envoy does, so its requests are not stuck).
    fn hold_connection(&self, cluster: &Cluster) -> Option<Held> {
        let open = self.connections.load(std::sync::atomic::Ordering::Acquire);
        if open > 0 && open >= cluster.config.breakers.max_connections_per_host {
            cluster.stats.cx_overflow.increment(1);
            return None;
        }
        let slot = match cluster.open.connection(&cluster.config.breakers) {
            Some(slot) => slot,
            None if self.connections.load(std::sync::atomic::Ordering::Acquire) == 0 => {
                cluster.stats.cx_overflow.increment(1);
                cluster.open.connection_over_limit()
            }
            None => {
                cluster.stats.cx_overflow.increment(1);
                return None;
            }
        };
        Some(Held::new(self, cluster, slot))
    }

    /// An idle HTTP/1.1 connection that may carry another request (closed or expired ones are dropped).
    fn take_idle(&self) -> Option<(http1::SendRequest<RequestBody>, Lifetime)> {
        let mut idle = self.idle_http1.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some((sender, lifetime)) = idle.pop() {
            if !sender.is_closed() && lifetime.usable(&self.options, now) {
                return Some((sender, lifetime));
            }
        }
        None
    }

    /// For a request that found no idle connection: waits, as a pending request, for a new
    /// connection or (at `max_connections`) one given back. The flag says whether it was reused.
    async fn wait_for_http1(
        &self,
        cluster: &Cluster,
    ) -> Result<(http1::SendRequest<RequestBody>, Lifetime, bool), UpstreamError> {
        let _pending = self.pending(cluster)?;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some((sender, lifetime)) = self.take_idle() {
                return Ok((sender, lifetime, true));
            }
            if let Some(held) = self.hold_connection(cluster) {
                return Ok((self.connect_http1(cluster, false, held).await?, Lifetime::new(), false));
            }
            freed.await;
        }
    }

    pub fn idle_connections(&self) -> usize {
        self.idle_http1.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.http2.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends a request (origin-form URI and `host` header for HTTP/1.1; absolute URI for HTTP/2); an
    /// `upgrade` request (WebSocket) gets an HTTP/1.1 connection of its own, never pooled.
    ///
    /// The future stays small, being part of every request's: connecting is the rare path and boxed,
    /// and it is not an `async fn`, which would hold the request twice (as argument and as local).
    /// It owns its handle on the pool, so a caller can make it before the attempt's own future.
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        cluster: &'a Cluster,
        upgrade: bool,
    ) -> impl Future<Output = Result<UpstreamResponse, UpstreamError>> + Send + 'a {
        async move {
            // An endpoint without connections has no pool (as Envoy's pools, which go when their
            // last connection does); at `max_connection_pools` it gets none.
            if self.connections.load(std::sync::atomic::Ordering::Acquire) == 0
                && !cluster.open.pool_allowed(&cluster.config.breakers)
            {
                cluster.stats.cx_pool_overflow.increment(1);
                return Err(UpstreamError::PoolOverflow);
            }
            if upgrade {
                let held = self.hold_connection(cluster).ok_or(UpstreamError::Overflow)?;
                let mut sender = Box::pin(self.connect_http1(cluster, true, held)).await?;
                return sender
                    .send_request(req)
                    .await
                    .map(UpstreamResponse::Upgraded)
                    .map_err(UpstreamError::from_hyper);
            }
            if self.protocol == UpstreamProtocol::Http2 {
                for _attempt in 0..2 {
                    let (mut sender, stream) = match self.current_http2(false) {
                        Some(found) => found,
                        None => Box::pin(self.http2_sender(cluster)).await?,
                    };
                    match sender.try_send_request(req).await {
                        Ok(resp) => {
                            return Ok(UpstreamResponse::Pooled(resp.map(|b| PooledBody {
                                inner: b,
                                checkin: None,
                                slot: None,
                                stream: Some(stream),
                            })));
                        }
                        Err(mut e) => {
                            // That connection is done for: requests go to the others or a new one.
                            let mut conns = self.http2.lock().unwrap_or_else(|e| e.into_inner());
                            conns.retain(|c| !Arc::ptr_eq(&c.streams, &stream.0));
                            drop(conns);
                            match e.take_message() {
                                Some(unsent) => req = unsent,
                                None => return Err(UpstreamError::from_hyper(e.into_error())),
                            }
                        }
                    }
                }
                return Err(UpstreamError::Connect(std::io::Error::other(
                    "HTTP/2 connection closed before the request was sent",
                )));
            }
            loop {
                let (mut sender, mut lifetime, reused) = match self.take_idle() {
                    Some((sender, lifetime)) => (sender, lifetime, true),
                    None => Box::pin(self.wait_for_http1(cluster)).await?,
                };
                lifetime.requests += 1;
                if sender.ready().await.is_err() {
                    if reused {
                        continue;
                    }
                    return Err(UpstreamError::ResetBeforeRequest(hyper_closed_error(&mut sender).await));
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let (parts, inner) = resp.into_parts();
                        let checkin = Some(Checkin { sender, lifetime, pool: Arc::downgrade(&self) });
                        let mut body = PooledBody { inner, checkin, slot: None, stream: None };
                        if body.inner.is_end_stream() {
                            // An empty body (HEAD, 204, 304, content-length: 0) is never polled.
                            body.release();
                        }
                        return Ok(UpstreamResponse::Pooled(Response::from_parts(parts, body)));
                    }
                    Err(mut e) => match e.take_message() {
                        // The connection closed before the request went out: try another one.
                        Some(unsent) if reused => req = unsent,
                        Some(_) => return Err(UpstreamError::ResetBeforeRequest(e.into_error())),
                        None => return Err(UpstreamError::from_hyper(e.into_error())),
                    },
                }
            }
        }
    }

    /// A new HTTP/2 connection for a request that found every connection full (or none); the
    /// request is pending meanwhile. At the cluster's `max_connections` the least busy connection
    /// takes it anyway (HTTP/2 queues streams over the peer's limit), unless there is none.
    async fn http2_sender(
        &self,
        cluster: &Cluster,
    ) -> Result<(http2::SendRequest<RequestBody>, H2Stream), UpstreamError> {
        let _pending = self.pending(cluster)?;
        let _connecting = self.http2_connecting.lock().await;
        if let Some(found) = self.current_http2(false) {
            return Ok(found);
        }
        let held = match self.hold_connection(cluster) {
            Some(held) => held,
            None => match self.current_http2(true) {
                Some(found) => return Ok(found),
                None => Held::new(self, cluster, cluster.open.connection_over_limit()),
            },
        };
        let stats = &cluster.stats;
        let stream = self.connect(stats).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.options.http2.initial_stream_window)
            .initial_connection_window_size(self.options.http2.initial_connection_window)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(max) = self.options.http2.max_concurrent_streams {
            builder.max_concurrent_streams(max);
        }
        // Until this connection's SETTINGS come, the endpoint's last known limit holds (in h2 too,
        // which queues streams over it instead of having them refused).
        let known = self.peer_stream_limit.load(std::sync::atomic::Ordering::Relaxed);
        if known != u32::MAX {
            builder.initial_max_send_streams(known as usize);
        }
        let (sender, conn) = builder.handshake(TokioIo::new(stream)).await.map_err(UpstreamError::from_hyper)?;
        let active = stats.connection_opened();
        let peer_limit = Arc::new(std::sync::atomic::AtomicU32::new(known));
        let (seen_limit, endpoint_limit) = (peer_limit.clone(), self.peer_stream_limit.clone());
        tokio::spawn(async move {
            // Drives the connection. The peer's stream limit (its SETTINGS, read by hyper's own
            // task) is looked at 10 ms and 100 ms after the handshake, then every second.
            let mut conn = std::pin::pin!(conn);
            let mut wait = Duration::from_millis(10);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = tokio::time::sleep(wait) => {
                        let limit = u32::try_from(conn.current_max_send_streams()).unwrap_or(u32::MAX);
                        if seen_limit.swap(limit, std::sync::atomic::Ordering::Relaxed) != limit {
                            endpoint_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
                        }
                        wait = (wait * 10).min(Duration::from_secs(1));
                    }
                }
            }
            drop((active, held));
        });
        let mut lifetime = Lifetime::new();
        lifetime.requests = 1;
        let connection = H2Connection { sender: sender.clone(), lifetime, streams: Arc::default(), peer_limit };
        let stream = H2Stream::on(&connection);
        self.http2.lock().unwrap_or_else(|e| e.into_inner()).push(connection);
        Ok((sender, stream))
    }

    /// An HTTP/2 connection for one more stream: the least busy one under its stream limit (the
    /// peer's `SETTINGS_MAX_CONCURRENT_STREAMS` or `http2.max_concurrent_streams`, the lower), or
    /// with `over_limit` the least busy one at all. Connections
    /// that closed or may carry no more (idle too long, too old, enough requests) are let go: their
    /// streams finish, then they close.
    fn current_http2(&self, over_limit: bool) -> Option<(http2::SendRequest<RequestBody>, H2Stream)> {
        use std::sync::atomic::Ordering::Acquire;
        let mut conns = self.http2.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        conns.retain(|c| !c.sender.is_closed() && c.lifetime.usable(&self.options, now));
        let configured = self.options.http2.max_concurrent_streams.unwrap_or(u32::MAX);
        let connection = conns
            .iter_mut()
            .filter(|c| {
                let limit = configured.min(c.peer_limit.load(std::sync::atomic::Ordering::Relaxed));
                over_limit || c.streams.load(Acquire) < limit
            })
            .min_by_key(|c| c.streams.load(Acquire))?;
        connection.lifetime.requests += 1;
        connection.lifetime.last_used = now;
        Some((connection.sender.clone(), H2Stream::on(connection)))
    }

    async fn connect(&self, stats: &ClusterStats) -> Result<UpstreamStream, UpstreamError> {
        use super::transport::ConnectError;
        stats.cx_total.increment(1);
        self.cx_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let purpose = match self.protocol {
            UpstreamProtocol::Http1 => Purpose::Http1,
            UpstreamProtocol::Http2 => Purpose::Http2,
        };
        let result = match super::transport::connect(self.addr, self.connect_timeout, self.tls.as_ref(), purpose).await
        {
            Ok(stream) => Ok(stream),
            Err(ConnectError::Timeout) => Err(UpstreamError::ConnectTimeout),
            Err(ConnectError::Tcp(e)) => Err(UpstreamError::Connect(e)),
            Err(ConnectError::Tls(e)) => {
                tracing::debug!(endpoint = %self.addr, error = %e, "upstream TLS handshake failed");
                stats.ssl_connection_error.increment(1);
                Err(UpstreamError::Tls(e))
            }
        };
        if result.is_err() {
            stats.cx_connect_fail.increment(1);
            self.cx_connect_fail.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Opens an HTTP/1.1 connection in the place `held` (given back when it closes).
    async fn connect_http1(
        &self,
        cluster: &Cluster,
        upgrades: bool,
        held: Held,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stats = &cluster.stats;
        let stream = self.connect(stats).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::from_hyper)?;
        let active = stats.connection_opened();
        if upgrades {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
                drop((active, held));
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
                drop((active, held));
            });
        }
        Ok(sender)
    }

    /// Takes back a connection whose exchange ended, unless it is closed or has carried its last
    /// request; idle connections past their idle timeout are closed on the way.
    fn checkin(&self, sender: http1::SendRequest<RequestBody>, mut lifetime: Lifetime) {
        let now = Instant::now();
        lifetime.last_used = now;
        let mut idle = self.idle_http1.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(timeout) = self.options.idle_timeout {
            // Pushed in the order they were last used: the expired ones are a prefix.
            let expired = idle.partition_point(|(_, l)| now.saturating_duration_since(l.last_used) >= timeout);
            idle.drain(..expired);
        }
        if sender.is_closed() || !lifetime.usable(&self.options, now) {
            return;
        }
        // Every connection given back is kept (as Envoy does): how many there are is bounded by
        // the cluster's `max_connections`, how long an unused one stays by the idle timeout.
        // Closing some after a burst would only have the next burst open them again.
        idle.push((sender, lifetime));
        drop(idle);
        self.freed.notify_one();
    }
}

async fn hyper_closed_error(sender: &mut http1::SendRequest<RequestBody>) -> hyper::Error {
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await.expect_err("called after ready() failed")
}

#[derive(Debug)]
struct Checkin {
    sender: http1::SendRequest<RequestBody>,
    lifetime: Lifetime,
    pool: Weak<Pool>,
}

/// A response body that returns its HTTP/1.1 connection to the pool once read to the end.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    /// The circuit breaker's place of the request, given back when the body is done with.
    slot: Option<crate::upstream::breakers::Slot>,
    /// The stream's place on its HTTP/2 connection, likewise.
    stream: Option<H2Stream>,
}

impl PooledBody {
    /// A body from a connection that is not pooled (an upgrade attempt).
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody { inner, checkin: None, slot: None, stream: None }
    }

    /// Keeps the request's circuit-breaker place until the body is read or dropped.
    pub fn hold(&mut self, slot: crate::upstream::breakers::Slot) {
        self.slot = Some(slot);
    }

    fn release(&mut self) {
        self.stream = None;
        if let Some(Checkin { sender, lifetime, pool }) = self.checkin.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(sender, lifetime);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
