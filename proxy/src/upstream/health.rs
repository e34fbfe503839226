//! Active health checks (`health_checks`): a task per cluster on the control runtime probes every
//! endpoint each interval over HTTP (a GET whose status must be expected), TCP (connect, optionally
//! send bytes and find the expected ones in the answer) or gRPC (`grpc.health.v1.Health/Check` must
//! say SERVING). An endpoint fails after `unhealthy_threshold` failed probes in a row and passes again
//! after `healthy_threshold` good ones; a new endpoint is failed until its first probe, which alone
//! decides. A failed endpoint takes no traffic (unless the cluster is in panic).

use super::endpoints::Endpoint;
use super::transport::UpstreamStream;
use crate::tls::client::Purpose;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A validated `HealthCheck`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Used while the cluster has never had traffic (Envoy's default 60 s).
    pub no_traffic_interval: Duration,
    pub unhealthy_interval: Duration,
    pub probe: Probe,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Http {
        host: Option<String>,
        path: String,
        /// Half-open ranges `[start, end)` of statuses that pass (default 200 only).
        expected: Vec<(u16, u16)>,
        http2: bool,
    },
    Tcp {
        send: Vec<u8>,
        receive: Vec<Vec<u8>>,
    },
    Grpc {
        service: String,
        authority: Option<String>,
    },
}

/// One endpoint's active health state (kept by every version of the endpoint).
#[derive(Debug)]
pub struct HostHealth {
    failed: AtomicBool,
    /// No probe has answered yet.
    pending: AtomicBool,
    /// Failed probes in a row (positive) or good ones (as `successes`).
    failures: AtomicU32,
    successes: AtomicU32,
}

impl Default for HostHealth {
    fn default() -> Self {
        HostHealth::new(true)
    }
}

impl HostHealth {
    /// New endpoints of a health-checked cluster are failed until their first probe.
    pub fn new(checked: bool) -> Self {
        HostHealth {
            failed: AtomicBool::new(checked),
            pending: AtomicBool::new(checked),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Counts a probe's result; true when the endpoint's health changed.
    pub fn record(&self, passed: bool, config: &HealthCheckConfig) -> bool {
        let first = self.pending.swap(false, Ordering::AcqRel);
        let was_failed = self.is_failed();
        let now_failed = if passed {
            self.failures.store(0, Ordering::Relaxed);
            let ok = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if first || ok >= config.healthy_threshold { false } else { was_failed }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let failed = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if first || failed >= config.unhealthy_threshold { true } else { was_failed }
        };
        self.failed.store(now_failed, Ordering::Release);
        now_failed != was_failed
    }
}

/// The wait before an endpoint's next probe.
pub fn next_interval(config: &HealthCheckConfig, failed: bool, had_traffic: bool) -> Duration {
    let base = if !had_traffic {
        config.no_traffic_interval
    } else if failed {
        config.unhealthy_interval
    } else {
        config.interval
    };
    let mut jitter = Duration::ZERO;
    if !config.interval_jitter.is_zero() {
        jitter += config.interval_jitter.mul_f64(fastrand::f64());
    }
    if config.interval_jitter_percent > 0 {
        jitter += base.mul_f64(f64::from(config.interval_jitter_percent) / 100.0 * fastrand::f64());
    }
    base + jitter
}

/// Probes one endpoint; `Ok(())` when it passes, else why not (for the log).
pub async fn probe(
    endpoint: &Endpoint,
    config: &HealthCheckConfig,
    cluster: &super::ClusterConfig,
) -> Result<(), String> {
    match tokio::time::timeout(config.timeout, probe_once(endpoint.addr, &config.probe, cluster)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

/// One probe over the cluster's transport (TLS when the cluster's connections are, as Envoy's).
async fn probe_once(addr: SocketAddr, probe: &Probe, config: &super::ClusterConfig) -> Result<(), String> {
    let cluster = config.name.as_str();
    let purpose = match probe {
        Probe::Http { http2: true, .. } | Probe::Grpc { .. } => Purpose::Http2,
        Probe::Http { .. } => Purpose::Http1,
        Probe::Tcp { .. } => Purpose::Tcp,
    };
    let stream = super::transport::connect(addr, Duration::MAX, config.tls.as_ref(), purpose)
        .await
        .map_err(|e| e.to_string())?;
    match probe {
        Probe::Tcp { send, receive } => tcp(stream, send, receive).await,
        Probe::Http { host, path, expected, http2 } => {
            let host = host.as_deref().unwrap_or(cluster);
            let request = http::Request::get(path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "Envoy/HC")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            let status = if *http2 {
                let uri = format!("http://{host}{path}");
                let (parts, body) = request.into_parts();
                let mut request = http::Request::from_parts(parts, body);
                *request.uri_mut() = uri.parse().map_err(|e| format!("request: {e}"))?;
                request.headers_mut().remove(http::header::HOST);
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("HTTP/2: {e}"))?;
                tokio::spawn(conn);
                sender.send_request(request).await.map_err(|e| format!("HTTP/2: {e}"))?.status()
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?;
                tokio::spawn(conn);
                sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?.status()
            };
            let code = status.as_u16();
            if expected.iter().any(|(start, end)| (*start..*end).contains(&code)) {
                Ok(())
            } else {
                Err(format!("status {code}"))
            }
        }
        Probe::Grpc { service, authority } => grpc(stream, service, authority.as_deref().unwrap_or(cluster)).await,
    }
}

/// Sends `send`, then reads until every `receive` block has been found, in order.
async fn tcp(mut stream: UpstreamStream, send: &[u8], receive: &[Vec<u8>]) -> Result<(), String> {
    if !send.is_empty() {
        stream.write_all(send).await.map_err(|e| format!("send: {e}"))?;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if found_in_order(&got, receive) {
            return Ok(());
        }
        let n = stream.read(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("the connection closed before the expected bytes came".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn found_in_order(haystack: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for block in blocks {
        match haystack[from..].windows(block.len().max(1)).position(|w| w == block.as_slice()) {
            Some(at) => from += at + block.len(),
            None => return block.is_empty(),
        }
    }
    true
}

/// `grpc.health.v1.HealthCheckRequest` / `HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

async fn grpc(stream: UpstreamStream, service: &str, authority: &str) -> Result<(), String> {
    use prost::Message;
    let message = HealthCheckRequest { service: service.to_string() }.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let request = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "Envoy/HC")
        .body(Full::new(Bytes::from(frame)))
        .map_err(|e| format!("request: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(|e| format!("gRPC: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let trailers_only = response.headers().get("grpc-status").cloned();
    let body = response.into_body().collect().await.map_err(|e| format!("gRPC: {e}"))?;
    let grpc_status = body.trailers().and_then(|t| t.get("grpc-status").cloned()).or(trailers_only);
    if grpc_status.as_ref().is_none_or(|s| s != "0") {
        return Err(format!("grpc-status {grpc_status:?}"));
    }
    let bytes = body.to_bytes();
    let message = bytes.get(5..).ok_or("an empty gRPC answer")?;
    let status = HealthCheckResponse::decode(message).map_err(|e| format!("gRPC answer: {e}"))?.status;
    if status == SERVING { Ok(()) } else { Err(format!("health status {status}, not SERVING")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthCheckConfig {
        HealthCheckConfig {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: 2,
            healthy_threshold: 3,
            no_traffic_interval: Duration::from_secs(60),
            unhealthy_interval: Duration::from_secs(1),
            probe: Probe::Tcp { send: vec![], receive: vec![] },
        }
    }

    #[test]
    fn the_first_probe_decides_then_thresholds_do() {
        let c = config();
        let h = HostHealth::default();
        assert!(h.is_failed() && h.is_pending());
        assert!(h.record(true, &c), "one good first probe is enough");
        assert!(!h.is_failed() && !h.is_pending());
        assert!(!h.record(false, &c), "one failure is under the threshold of 2");
        assert!(h.record(false, &c) && h.is_failed());
        assert!(!h.record(true, &c) && !h.record(true, &c), "two of three good probes");
        assert!(h.record(true, &c) && !h.is_failed());
    }

    #[test]
    fn expected_blocks_are_found_in_order_not_necessarily_together() {
        let blocks = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(found_in_order(b"+PONG\r\n", &blocks));
        assert!(found_in_order(b"POxxNG", &blocks));
        assert!(!found_in_order(b"NGPO", &blocks));
        assert!(found_in_order(b"anything", &[]));
    }

    #[test]
    fn intervals_follow_traffic_and_health_with_jitter() {
        let mut c = config();
        c.interval_jitter = Duration::from_millis(100);
        assert_eq!(next_interval(&config(), false, false), Duration::from_secs(60));
        for _ in 0..50 {
            let wait = next_interval(&c, false, true);
            assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1100), "{wait:?}");
        }
    }
}
