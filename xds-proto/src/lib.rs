//! The protobuf side of Strait: Envoy's xDS v3 types (from the maintained `envoy-types` crate) and a
//! reader that turns Envoy's own YAML/JSON config format into those types, with errors that name the
//! field path and the line.

pub mod document;
pub mod workload;

pub use document::{
    DocumentError, Format, decode_message, descriptor_pool, parse_document, parse_dynamic, release_descriptor_pool,
    to_dynamic,
};
pub use envoy_types::pb;

/// Strait's own management API (`strait.control.v1`): mesh objects and the `MeshService`.
pub mod control {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strait.control.v1");
}

/// Strait's certificate authority API (`strait.ca.v1.CertificateService`).
pub mod ca {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strait.ca.v1");
}

/// The Envoy bootstrap message, the root of every config file the proxy reads.
pub use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

/// Type URLs of the xDS resources Strait understands.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE_CONFIGURATION: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const CLUSTER_LOAD_ASSIGNMENT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const HTTP_CONNECTION_MANAGER: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const TCP_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// The xDS types Strait serves and consumes over ADS, in the order Envoy wants them applied
    /// (clusters and their endpoints before the listeners and routes that use them; secrets (SDS)
    /// are asked for by name once a listener or cluster names them).
    pub const ADS_TYPES: [&str; 5] = [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, SECRET];

    /// The canonical `&'static str` of an ADS type URL, if it is one.
    pub fn ads_type(url: &str) -> Option<&'static str> {
        ADS_TYPES.into_iter().find(|t| *t == url)
    }

    /// LDS and CDS are "full state": a State-of-the-World response carries all of them, and an empty
    /// first subscription means all of them (wildcard). Routes and endpoints are asked for by name.
    pub fn is_full_state(url: &str) -> bool {
        url == LISTENER || url == CLUSTER
    }
}

/// Envoy's `RetryPolicy.retry_on` conditions Strait implements (HTTP, then gRPC), for the proxy
/// and for the control plane's validation of the mesh YAML.
/// `xds.type.v3.TypedStruct` (and `udpa.type.v1.TypedStruct`, of the same shape): an extension's
/// config as a JSON-like struct under the extension's own type URL, for extensions without a
/// published proto. Its descriptor is in envoy-types' set, which has no Rust type for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<pb::google::protobuf::Struct>,
}

/// The type URL (inside a `TypedStruct`) of Strait's peak-EWMA balancer in a cluster's
/// `load_balancing_policy`. Envoy does not know it and, as xDS says, uses the next policy listed.
pub const PEAK_EWMA_TYPE: &str = "type.googleapis.com/strait.lb.v1.PeakEwma";

pub const RETRY_ON: [&str; 15] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "retriable-headers",
    "envoy-ratelimited",
    "reset-before-request",
];
