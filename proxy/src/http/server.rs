//! Serves one downstream connection: HTTP/1.1 or HTTP/2 by preface (or as the codec says), each request
//! handled with the newest config snapshot, closed after the idle timeout, drained on shutdown.

use super::proxy::{self, Downstream};
use super::{Codec, HttpConnectionManager};
use crate::listeners::ListenerKind;
use crate::snapshot::SharedSnapshot;
use crate::telemetry::GaugeGuard;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Activity on a connection, for its idle timeout.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    active_streams: AtomicUsize,
    /// Milliseconds after `opened` of the last stream start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Per-connection state shared by its requests.
struct Connection {
    activity: Activity,
    downstream: Downstream,
    shared: SharedSnapshot,
    /// The connection manager the connection was accepted with, if its listener has since gone.
    initial: Arc<HttpConnectionManager>,
}

struct StreamGuard<'a>(&'a Activity);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serves a connection until it closes, idles out, or `shutdown` asks it to drain.
pub async fn serve(
    stream: TcpStream,
    downstream: Downstream,
    initial: Arc<HttpConnectionManager>,
    shared: SharedSnapshot,
    shutdown: CancellationToken,
) {
    let _cx = GaugeGuard::new(&initial.stats.cx_active);
    initial.stats.cx_total.increment(1);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(initial.max_request_headers_bytes.max(8192))
        .max_headers(initial.max_headers_count);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(initial.max_request_headers_bytes as u32)
        .max_pending_accept_reset_streams(100)
        .max_local_error_reset_streams(1024);
    let builder = match initial.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };

    // Everything a request needs from its connection, behind one reference count.
    let connection = Arc::new(Connection {
        activity: Activity { opened: Instant::now(), active_streams: AtomicUsize::new(0), last_ms: AtomicU64::new(0) },
        downstream,
        shared,
        initial: initial.clone(),
    });
    let service = {
        let connection = connection.clone();
        service_fn(move |req| {
            let c = connection.clone();
            async move {
                c.activity.active_streams.fetch_add(1, Ordering::Relaxed);
                let _guard = StreamGuard(&c.activity);
                // One snapshot for the whole request; routes follow the newest config.
                let snapshot = c.shared.load_full();
                let hcm = match snapshot.listener(&c.downstream.listener).map(|l| &l.kind) {
                    Some(ListenerKind::Http(h)) => h.clone(),
                    _ => c.initial.clone(),
                };
                Ok::<_, Infallible>(proxy::handle(req, &c.downstream, snapshot, hcm).await)
            }
        })
    };
    let activity = &connection.activity;

    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = initial.idle_timeout;
    let mut draining = false;
    let mut idle_check = Box::pin(tokio::time::sleep(idle.unwrap_or(Duration::from_secs(3600))));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "downstream connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut idle_check, if idle.is_some() && !draining => {
                let limit = idle.unwrap_or_default();
                let last = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                let since = activity.opened.elapsed().saturating_sub(last);
                if activity.active_streams.load(Ordering::Relaxed) == 0 && since >= limit {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    let wait = if since >= limit { limit } else { limit - since };
                    idle_check.as_mut().reset(Instant::now() + wait);
                }
            }
        }
    }
}
