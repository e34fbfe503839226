//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (detected from the preface) on a listener
//! and sends each request through [`proxy::handle`], which reads top to bottom.

pub mod client_cert;
mod coalesce;
pub mod detect;
mod error;
mod forwarding;
pub mod proxy;
pub mod server;
pub mod timeout_body;
mod upgrade;

pub use error::{ProxyError, ResponseFlag};

use crate::routing::RouteTable;
use crate::telemetry::HttpStats;
use crate::telemetry::access_log::AccessLog;
use std::time::Duration;

/// Envoy's `HttpConnectionManager.codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/2 when the connection opens with the HTTP/2 preface, HTTP/1.1 otherwise.
    Auto,
    Http1,
    Http2,
}

/// A validated `HttpConnectionManager`.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteTable,
    /// No activity on a stream for this long resets it (Envoy default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// The whole request must arrive within this (off by default).
    pub request_timeout: Option<Duration>,
    /// A connection with no active stream for this long is closed (Envoy default 1 h).
    pub idle_timeout: Option<Duration>,
    pub use_remote_address: bool,
    /// `internal_address_config.cidr_ranges`: clients whose requests count as internal.
    pub internal_addresses: Vec<crate::net::CidrRange>,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub server_name: http::HeaderValue,
    pub max_request_headers_bytes: usize,
    pub max_headers_count: usize,
    /// `http2_protocol_options` for HTTP/2 clients (`max_concurrent_streams` always set: 1024 by
    /// default, what Envoy 1.40 advertises; its documentation still says 2^31 - 1).
    pub http2: Http2Options,
    pub strip_any_host_port: bool,
    /// Upgrade types allowed (`websocket`), lowercased.
    pub upgrades: Vec<String>,
    pub access_logs: Vec<AccessLog>,
    /// The router's `suppress_envoy_headers`: no `x-envoy-upstream-service-time` on responses.
    pub suppress_envoy_headers: bool,
    /// `common_http_protocol_options.max_stream_duration`: a stream's limit where its route sets none.
    pub max_stream_duration: Option<Duration>,
    /// The HTTP filters ahead of the router, in order.
    pub filters: Vec<crate::policy::HttpFilter>,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    pub forward_client_cert: client_cert::ForwardClientCert,
    pub client_cert_details: client_cert::CertDetails,
    pub stats: HttpStats,
}

/// `http2_protocol_options` (`Http2ProtocolOptions`), within Envoy's ranges: what a connection
/// manager tells its HTTP/2 clients, or what a cluster's pool allows itself on a connection.
/// Unset values take each side's default (hyper's 1 MiB windows on both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http2Options {
    /// `max_concurrent_streams`: SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: Option<u32>,
    /// `initial_stream_window_size`.
    pub initial_stream_window: Option<u32>,
    /// `initial_connection_window_size`.
    pub initial_connection_window: Option<u32>,
}
