//! The one place where a failure becomes a downstream response: each error maps to Envoy's status,
//! body and response flag (NR, NC, UH, UF, UC, UT, UPE, ...).

use crate::policy::fault::Abort;
use crate::policy::local_ratelimit::Limited;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched")]
    NoRoute,
    /// The cluster a route named, and the route's answer for it (`cluster_not_found_response_code`).
    #[error("cluster '{0}' not found")]
    ClusterNotFound(String, StatusCode),
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("upstream request timeout")]
    UpstreamTimeout,
    /// A circuit breaker is open (`max_requests`, `max_pending_requests`, `max_connections`).
    #[error("upstream overflow: the cluster's circuit breaker is open")]
    Overflow,
    /// One attempt ran out of its `per_try_timeout` (Envoy answers it as a route timeout).
    #[error("upstream per-try timeout")]
    UpstreamPerTryTimeout,
    /// Made from an [`UpstreamError`] with `into()`, which turns a pool overflow into `Overflow`.
    #[error("upstream: {0}")]
    Upstream(UpstreamError),
    /// The last of several attempts failed so.
    #[error("upstream, after retries: {0}")]
    UpstreamAfterRetries(UpstreamError),
    #[error("upgrade '{0}' is not allowed")]
    UpgradeRejected(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request timeout")]
    RequestTimeout,
    /// The stream ran past its `max_stream_duration` (or the gRPC caller's deadline) before its
    /// response started.
    #[error("downstream duration timeout")]
    StreamDurationTimeout,
    /// Nothing happened on the stream for its idle timeout while waiting for the response.
    #[error("stream timeout")]
    StreamIdleTimeout,
    /// The local rate limit's bucket was empty.
    #[error("local rate limit")]
    RateLimited(Box<Limited>),
    /// An abort injected by the fault filter.
    #[error("fault injected: abort")]
    FaultAbort(Box<Abort>),
    /// An RBAC filter refused the request (403 "RBAC: access denied", flag `RBAC`).
    #[error("RBAC: access denied")]
    RbacDenied,
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            // Never retried, never the endpoint's fault: the cluster's circuit breaker.
            UpstreamError::Overflow => ProxyError::Overflow,
            // Envoy answers a request that gets no connection pool as one with no host.
            UpstreamError::PoolOverflow => ProxyError::NoHealthyUpstream,
            e => ProxyError::Upstream(e),
        }
    }
}

impl ProxyError {
    /// Where the failure came from, for logs.
    pub fn source_side(&self) -> &'static str {
        match self {
            ProxyError::Upstream(_)
            | ProxyError::UpstreamAfterRetries(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamPerTryTimeout
            | ProxyError::Overflow
            | ProxyError::NoHealthyUpstream => "upstream",
            ProxyError::BadRequest(_)
            | ProxyError::UpgradeRejected(_)
            | ProxyError::RequestTimeout
            | ProxyError::StreamDurationTimeout
            | ProxyError::StreamIdleTimeout => "downstream",
            ProxyError::NoRoute | ProxyError::ClusterNotFound(..) => "config",
            ProxyError::RateLimited(_) | ProxyError::FaultAbort(_) | ProxyError::RbacDenied => "policy",
        }
    }

    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NR",
            ProxyError::ClusterNotFound(..) => "NC",
            ProxyError::NoHealthyUpstream => "UH",
            ProxyError::Overflow => "UO",
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => "UT",
            ProxyError::Upstream(e) | ProxyError::UpstreamAfterRetries(e) => match e {
                UpstreamError::Protocol(_) => "UPE",
                e if e.is_connect_failure() => "UF",
                _ => "UC",
            },
            ProxyError::UpgradeRejected(_) => "UAEX",
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::RequestTimeout | ProxyError::StreamDurationTimeout => "DT",
            ProxyError::StreamIdleTimeout => "SI",
            ProxyError::RateLimited(_) => "RL",
            ProxyError::FaultAbort(_) => "FI",
            ProxyError::RbacDenied => "RBAC",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::ClusterNotFound(_, status) => *status,
            ProxyError::NoHealthyUpstream | ProxyError::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Protocol(_))
            | ProxyError::UpstreamAfterRetries(UpstreamError::Protocol(_)) => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(_) | ProxyError::UpstreamAfterRetries(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpgradeRejected(_) => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            // Envoy 1.40 answers 504 (gRPC: DEADLINE_EXCEEDED).
            ProxyError::StreamDurationTimeout | ProxyError::StreamIdleTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited(limited) => limited.status,
            ProxyError::FaultAbort(abort) => abort.status,
            ProxyError::RbacDenied => StatusCode::FORBIDDEN,
        }
    }

    /// The body Envoy sends for this failure.
    pub fn body(&self) -> String {
        const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason:";
        const RETRIED: &str =
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason:";
        let reason = |e: &UpstreamError| match e {
            // Envoy: "remote connection failure, transport failure reason: TLS_error:..." (BoringSSL's text).
            UpstreamError::Tls(e) => format!("remote connection failure, transport failure reason: TLS_error: {e}"),
            UpstreamError::Connect(_) => "remote connection failure".into(),
            UpstreamError::ConnectTimeout => "connection timeout".into(),
            UpstreamError::Protocol(_) => "protocol error".into(),
            UpstreamError::Reset(_) | UpstreamError::ResetBeforeRequest(_) => "connection termination".into(),
            UpstreamError::Overflow | UpstreamError::PoolOverflow => "overflow".into(),
        };
        match self {
            ProxyError::NoRoute | ProxyError::ClusterNotFound(..) | ProxyError::UpgradeRejected(_) => String::new(),
            ProxyError::NoHealthyUpstream => "no healthy upstream".into(),
            ProxyError::Overflow => format!("{RESET} overflow"),
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => "upstream request timeout".into(),
            ProxyError::Upstream(e) => format!("{RESET} {}", reason(e)),
            ProxyError::UpstreamAfterRetries(e) => format!("{RETRIED} {}", reason(e)),
            ProxyError::BadRequest(what) => format!("Bad Request: {what}"),
            ProxyError::RequestTimeout => "request timeout".into(),
            ProxyError::StreamDurationTimeout => "downstream duration timeout".into(),
            ProxyError::StreamIdleTimeout => "stream timeout".into(),
            ProxyError::RateLimited(_) => "local_rate_limited".into(),
            ProxyError::FaultAbort(abort) => abort.body.clone(),
            ProxyError::RbacDenied => "RBAC: access denied".into(),
        }
    }

    /// The gRPC status a gRPC caller gets: the one the failure names, or Envoy's mapping of the
    /// HTTP status.
    fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::RateLimited(limited) => limited.grpc_status,
            ProxyError::FaultAbort(abort) if abort.grpc_status.is_some() => abort.grpc_status.unwrap_or(2),
            ProxyError::StreamDurationTimeout => 4,
            _ => match self.status().as_u16() {
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502 | 503 | 504 => 14,
                _ => 2,
            },
        }
    }

    /// The local reply for this error; for a gRPC request (`grpc`), as Envoy answers gRPC: 200 with
    /// `grpc-status` and the text in `grpc-message`, no body.
    pub fn into_response(self, grpc: bool) -> Response<Full<Bytes>> {
        let (body, flag) = (self.body(), ResponseFlag(self.flag()));
        let mut resp = if grpc {
            let message = percent_encoding::utf8_percent_encode(&body, GRPC_MESSAGE).to_string();
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
                .header("grpc-status", self.grpc_status())
                .header("grpc-message", message)
                .body(Full::new(Bytes::new()))
                .expect("static parts form a valid response")
        } else {
            let mut builder = Response::builder().status(self.status());
            if !body.is_empty() {
                builder = builder.header(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            builder
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(Full::new(Bytes::from(body)))
                .expect("static parts form a valid response")
        };
        if let ProxyError::RateLimited(limited) = self {
            resp.headers_mut().extend(limited.headers);
        }
        resp.extensions_mut().insert(flag);
        resp
    }
}

/// What gRPC's `grpc-message` percent-encodes: controls, non-ASCII and `%`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The response flag of a local reply, carried to the access log and stats.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFlag(pub &'static str);
