//! The TCP proxy: each downstream connection is spliced to an endpoint of the chosen cluster, with
//! half-close passed through and the connection closed after `idle_timeout` without traffic.

use crate::routing::ClusterTarget;
use crate::snapshot::SharedSnapshot;
use crate::telemetry::TcpStats;
use crate::upstream::outlier::Outcome;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A validated `TcpProxy` filter.
#[derive(Debug)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub target: ClusterTarget,
    pub idle_timeout: Option<Duration>,
    pub stats: TcpStats,
}

/// Proxies one connection to the end.
pub async fn serve<D: AsyncRead + AsyncWrite + Unpin>(
    mut downstream: D,
    peer: SocketAddr,
    config: Arc<TcpProxyConfig>,
    shared: SharedSnapshot,
    shutdown: CancellationToken,
) {
    config.stats.cx_total.increment(1);
    let cluster_name = config.target.pick();
    let snapshot = shared.load();
    let Some(cluster) = snapshot.clusters.get(cluster_name).cloned() else {
        config.stats.cx_no_route.increment(1);
        tracing::debug!(cluster = cluster_name, "tcp proxy: cluster not found");
        return;
    };
    drop(snapshot);
    let Some(endpoint) = cluster.pick(None) else {
        cluster.stats.cx_none_healthy.increment(1);
        tracing::debug!(cluster = cluster_name, %peer, "tcp proxy: no healthy upstream (UH)");
        return;
    };
    // The cluster's `max_connections` circuit breaker: over it, the connection is refused (`UO`).
    let Some(_held) = cluster.open.connection(&cluster.config.breakers) else {
        cluster.stats.cx_overflow.increment(1);
        tracing::debug!(cluster = cluster_name, %peer, "tcp proxy: max_connections reached (UO)");
        return;
    };
    cluster.stats.cx_total.increment(1);
    // Connection failures and successes count for outlier detection, as Envoy's TCP proxy reports
    // them (a failure as a 5xx and gateway failure, a success resets the counts).
    let connecting = crate::upstream::transport::connect(
        endpoint.addr,
        cluster.config.connect_timeout,
        cluster.config.tls.as_ref(),
        crate::tls::client::Purpose::Tcp,
    );
    let upstream = match connecting.await {
        Ok(s) => {
            cluster.report(&endpoint, Outcome::Status(200));
            s
        }
        Err(e) => {
            cluster.stats.cx_connect_fail.increment(1);
            if matches!(e, crate::upstream::transport::ConnectError::Tls(_)) {
                cluster.stats.ssl_connection_error.increment(1);
            }
            cluster.report(&endpoint, Outcome::LocalFailure);
            tracing::debug!(endpoint = %endpoint.addr, error = %e, "tcp proxy: connect failed (UF)");
            return;
        }
    };
    let _active = cluster.stats.connection_opened();
    let _in_flight = endpoint.start_request();

    let clock = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut down = Tracked { inner: &mut downstream, last: last.clone(), clock };
    let mut up = Tracked { inner: upstream, last: last.clone(), clock };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 16 * 1024, 16 * 1024);
    tokio::pin!(copy);
    let idle = config.idle_timeout;
    let mut check = Box::pin(tokio::time::sleep(idle.unwrap_or(Duration::from_secs(3600))));
    loop {
        tokio::select! {
            result = &mut copy => {
                match result {
                    Ok((to_up, to_down)) => {
                        config.stats.rx_bytes.increment(to_up);
                        config.stats.tx_bytes.increment(to_down);
                    }
                    Err(e) => tracing::debug!(error = %e, "tcp proxy: connection ended with an error"),
                }
                return;
            }
            _ = shutdown.cancelled() => return,
            _ = &mut check, if idle.is_some() => {
                let limit = idle.unwrap_or_default();
                let since = clock.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if since >= limit {
                    config.stats.idle_timeout.increment(1);
                    return;
                }
                check.as_mut().reset(Instant::now() + (limit - since));
            }
        }
    }
}

/// A stream that records when bytes last moved through it.
struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    clock: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last.store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
