//! Serves one downstream connection, plaintext or TLS: HTTP/1.1 or HTTP/2 by ALPN or preface (or as the
//! codec says), each request handled with the newest config snapshot, closed after the idle timeout,
//! drained on shutdown.

use super::coalesce::Coalescing;
use super::detect::{Prefixed, opens_with_http2_preface, read_http2_preface};
use super::proxy::{self, Downstream};
use super::{Codec, HttpConnectionManager};
use crate::listeners::ListenerConfig;
use crate::snapshot::{SharedSnapshot, Snapshot};
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
use tokio_rustls::server::TlsStream;
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
pub struct Connection {
    activity: Activity,
    downstream: Downstream,
    shared: SharedSnapshot,
    /// The connection manager the connection was accepted with, if its listener has since gone.
    initial: Arc<HttpConnectionManager>,
    /// The snapshot version in which `initial` was last found still in force (`u64::MAX`: not yet
    /// looked for). Versions only grow, one per config applied, so a match needs no search.
    initial_current_in: AtomicU64,
}

impl Connection {
    /// Counts a request (a stream) on the connection, for its idle timeout, until the guard drops.
    pub fn stream(&self) -> StreamGuard<'_> {
        self.activity.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(&self.activity)
    }

    /// The newest config; a request keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    /// The connection's manager in `snapshot`: its filter chain's, or the one the connection was
    /// accepted with if its listener or filter chain has gone since.
    pub fn manager<'a>(&'a self, snapshot: &'a Snapshot) -> &'a HttpConnectionManager {
        let downstream = &self.downstream;
        // Mostly the snapshot still holds the very manager the connection was accepted with (an
        // unchanged listener is carried over), and then it is the answer: found by address once per
        // config version, then by that version alone, with no listener searched per request.
        if self.initial_current_in.load(Ordering::Relaxed) == snapshot.version {
            return &self.initial;
        }
        let unchanged =
            |l: &Arc<ListenerConfig>| l.http(downstream.chain).is_some_and(|h| Arc::ptr_eq(h, &self.initial));
        if snapshot.listeners.iter().any(unchanged) {
            self.initial_current_in.store(snapshot.version, Ordering::Relaxed);
            return &self.initial;
        }
        snapshot
            .listener(&downstream.listener)
            .filter(|l| l.chains.get(downstream.chain).is_some_and(|ch| ch.name == downstream.chain_name))
            .and_then(|l| l.http(downstream.chain))
            .unwrap_or(&self.initial)
    }

    pub fn downstream(&self) -> &Downstream {
        &self.downstream
    }
}

/// A request in flight on a connection.
pub struct StreamGuard<'a>(&'a Activity);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
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

/// A downstream connection as its filter chain hands it over.
pub enum DownstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Serves a connection until it closes, idles out, or `shutdown` asks it to drain.
pub async fn serve(
    stream: DownstreamStream,
    downstream: Downstream,
    initial: Arc<HttpConnectionManager>,
    shared: SharedSnapshot,
    shutdown: CancellationToken,
) {
    let _cx = ConnectionGuard::new(&initial.stats.cx_active);
    initial.stats.cx_total.increment(1);
    let idle = initial.idle_timeout;
    // Until the first bytes arrive the connection is idle: the idle timeout and a drain apply.
    let first_bytes = async {
        tokio::select! {
            stream = detect(stream, initial.codec) => Some(stream),
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => None,
        }
    };
    let Some((http2, stream)) = first_bytes.await else { return };

    // Everything a request needs from its connection, behind one reference count.
    let connection = Arc::new(Connection {
        activity: Activity { opened: Instant::now(), active_streams: AtomicUsize::new(0), last_ms: AtomicU64::new(0) },
        downstream,
        shared,
        initial: initial.clone(),
        initial_current_in: AtomicU64::new(u64::MAX),
    });
    let service = {
        let connection = connection.clone();
        service_fn(move |req| {
            // Boxed: hyper keeps room for one request's future for as long as the connection is
            // open, and an idle keep-alive connection should not carry a request's worth of state.
            let request: Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>> =
                Box::pin(proxy::handle(req, connection.clone()));
            request
        })
    };
    match stream {
        // HTTP/2: the responses that finish in one pass of the worker's queue share a write.
        Detected::Plain(tcp) => {
            run(TokioIo::new(Coalescing::new(tcp, http2)), http2, service, &connection, &initial, shutdown).await
        }
        Detected::Tls(tls) => {
            run(TokioIo::new(Coalescing::new(tls, http2)), http2, service, &connection, &initial, shutdown).await
        }
    }
}

/// A connection once its HTTP version is known.
enum Detected {
    Plain(TcpStream),
    Tls(Prefixed<Box<TlsStream<TcpStream>>>),
}

/// Whether the connection speaks HTTP/2: as the codec says, else by ALPN, else by its first bytes.
async fn detect(stream: DownstreamStream, codec: Codec) -> (bool, Detected) {
    match (stream, codec) {
        (DownstreamStream::Plain(tcp), Codec::Auto) => (opens_with_http2_preface(&tcp).await, Detected::Plain(tcp)),
        (DownstreamStream::Plain(tcp), codec) => (codec == Codec::Http2, Detected::Plain(tcp)),
        (DownstreamStream::Tls(tls), codec) => match (codec, tls.get_ref().1.alpn_protocol()) {
            (Codec::Http2, _) | (Codec::Auto, Some(b"h2")) => (true, Detected::Tls(Prefixed::new(tls))),
            (Codec::Http1, _) | (Codec::Auto, Some(_)) => (false, Detected::Tls(Prefixed::new(tls))),
            (Codec::Auto, None) => {
                let (h2, tls) = read_http2_preface(tls).await;
                (h2, Detected::Tls(tls))
            }
        },
    }
}

/// Runs the codec over the connection.
async fn run<I, S>(
    io: I,
    http2: bool,
    service: S,
    connection: &Connection,
    initial: &HttpConnectionManager,
    shutdown: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = super::proxy::ResponseBody> + Send + 'static,
    S::Future: Send + 'static,
{
    let idle = initial.idle_timeout;
    if http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(initial.http2.max_concurrent_streams)
            .initial_stream_window_size(initial.http2.initial_stream_window)
            .initial_connection_window_size(initial.http2.initial_connection_window)
            .max_header_list_size(initial.max_request_headers_bytes as u32)
            .max_pending_accept_reset_streams(100)
            .max_local_error_reset_streams(1024)
            .serve_connection(io, service);
        // Boxed: an HTTP/2 connection's state is several times an HTTP/1.1 one's, and the task of
        // every connection would otherwise carry room for it.
        drive(Box::pin(conn).as_mut(), &connection.activity, idle, shutdown).await;
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(initial.max_request_headers_bytes.max(8192))
            .max_headers(initial.max_headers_count)
            .serve_connection(io, service)
            .with_upgrades();
        drive(std::pin::pin!(conn), &connection.activity, idle, shutdown).await;
    }
}

/// Runs a served connection to its end: drained on shutdown, or once idle for the idle timeout.
async fn drive<C: Served>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    idle: Option<Duration>,
    shutdown: CancellationToken,
) {
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
