//! Serves one downstream connection: HTTP/1.1 or HTTP/2 by preface (or as the codec says), each request
//! handled with the newest config snapshot, closed after the idle timeout, drained on shutdown.

use super::proxy::{self, Downstream};
use super::{Codec, HttpConnectionManager};
use crate::listeners::ListenerKind;
use crate::snapshot::SharedSnapshot;
use crate::telemetry::ConnectionGuard;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::pin::Pin;
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

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True when the connection opens with the HTTP/2 preface. The bytes are peeked, not read, so the
/// chosen codec reads the connection from its first byte with a buffer of its own (no rewind copy).
async fn opens_with_http2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != HTTP2_PREFACE[..n] {
            return false;
        }
        if n == HTTP2_PREFACE.len() {
            return true;
        }
        // Part of the preface so far: the socket stays readable, so wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A served connection that can be asked to finish its in-flight requests and close.
trait Served: Future<Output = Result<(), hyper::Error>> {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Served for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
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
    let _cx = ConnectionGuard::new(&initial.stats.cx_active);
    initial.stats.cx_total.increment(1);
    let idle = initial.idle_timeout;
    let http2 = match initial.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        // Until the first bytes arrive the connection is idle: the idle timeout and a drain apply.
        Codec::Auto => tokio::select! {
            h2 = opens_with_http2_preface(&stream) => h2,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => return,
        },
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
                    Some(ListenerKind::Http(h)) => h,
                    _ => &c.initial,
                };
                Ok::<_, Infallible>(proxy::handle(req, &c.downstream, &snapshot, hcm).await)
            }
        })
    };
    let io = TokioIo::new(stream);
    if http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(100)
            .max_header_list_size(initial.max_request_headers_bytes as u32)
            .max_pending_accept_reset_streams(100)
            .max_local_error_reset_streams(1024)
            .serve_connection(io, service);
        drive(conn, &connection.activity, idle, shutdown).await;
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(initial.max_request_headers_bytes.max(8192))
            .max_headers(initial.max_headers_count)
            .serve_connection(io, service)
            .with_upgrades();
        drive(conn, &connection.activity, idle, shutdown).await;
    }
}

/// Runs a served connection to its end: drained on shutdown, or once idle for the idle timeout.
async fn drive(conn: impl Served, activity: &Activity, idle: Option<Duration>, shutdown: CancellationToken) {
    tokio::pin!(conn);
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
                conn.as_mut().drain();
            }
            _ = &mut idle_check, if idle.is_some() && !draining => {
                let limit = idle.unwrap_or_default();
                let last = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                let since = activity.opened.elapsed().saturating_sub(last);
                if activity.active_streams.load(Ordering::Relaxed) == 0 && since >= limit {
                    draining = true;
                    conn.as_mut().drain();
                } else {
                    let wait = if since >= limit { limit } else { limit - since };
                    idle_check.as_mut().reset(Instant::now() + wait);
                }
            }
        }
    }
}
