//! Envoy's Aggregated Discovery Service: every xDS type on one gRPC stream per client, in both
//! variants, State of the World ([`sotw`]) and incremental ([`delta`]). Each stream runs as a task
//! that follows the current [`Resources`] and the client's requests.

mod delta;
mod sotw;

use crate::mesh::NodeIdentity;
use crate::resources::Resources;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::pb::envoy::config::core::v3::Node;
use xds_proto::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_proto::pb::google::protobuf::Struct;
use xds_proto::pb::google::protobuf::value::Kind;
use xds_proto::pb::google::rpc::Status as RpcStatus;

/// Counters over all streams.
#[derive(Debug, Default)]
pub struct AdsStats {
    pub streams: AtomicU64,
    pub responses: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
}

/// The ADS service, serving whatever `resources` currently holds.
#[derive(Debug, Clone)]
pub struct Ads {
    resources: watch::Receiver<Arc<Resources>>,
    /// Turns true when the control plane shuts down: every stream ends (clients reconnect elsewhere).
    stop: watch::Receiver<bool>,
    stats: Arc<AdsStats>,
    /// Certificates over SDS for streams that present a bootstrap token.
    sds: Option<crate::ca::sds::SdsIssuer>,
}

impl Ads {
    pub fn new(resources: watch::Receiver<Arc<Resources>>, stop: watch::Receiver<bool>) -> Self {
        Ads { resources, stop, stats: Arc::default(), sds: None }
    }

    /// Also serves workload certificates (secrets `default` and `ROOTCA`) to streams with a token.
    pub fn with_sds(mut self, sds: crate::ca::sds::SdsIssuer) -> Self {
        self.sds = Some(sds);
        self
    }

    /// The resources a stream follows: the mesh's, plus its workload's secrets when it presents a
    /// bootstrap token (refused when the token is unknown).
    fn resources_for<T>(&self, request: &Request<T>) -> Result<watch::Receiver<Arc<Resources>>, Status> {
        match (&self.sds, crate::ca::tokens::bearer(request.metadata())) {
            (Some(sds), Some(token)) => match sds.identity(token) {
                Some(id) => Ok(sds.follow(id, self.resources.clone())),
                None => Err(Status::unauthenticated("unknown bootstrap token")),
            },
            _ => Ok(self.resources.clone()),
        }
    }

    pub fn stats(&self) -> Arc<AdsStats> {
        self.stats.clone()
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let resources = self.resources_for(&request)?;
        let (tx, rx) = mpsc::channel(16);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let stream = sotw::serve(request.into_inner(), resources, tx, self.stats.clone());
        tokio::spawn(until_stopped(stream, self.stop.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let resources = self.resources_for(&request)?;
        let (tx, rx) = mpsc::channel(16);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let stream = delta::serve(request.into_inner(), resources, tx, self.stats.clone());
        tokio::spawn(until_stopped(stream, self.stop.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs a stream until it ends or the control plane stops.
async fn until_stopped(stream: impl Future<Output = ()>, stop: watch::Receiver<bool>) {
    tokio::select! {
        () = stream => {}
        () = crate::stopped(stop) => {}
    }
}

/// The client at the other end of a stream, from its first request: a name for logs, and its
/// identity (which config it gets, see [`Resources::view`]).
#[derive(Debug, Default)]
struct Peer {
    id: String,
    identity: NodeIdentity,
}

impl Peer {
    fn from_node(node: Option<&Node>) -> Peer {
        let identity = node
            .map(|n| {
                let mut metadata = BTreeMap::new();
                if let Some(m) = &n.metadata {
                    flatten("", m, &mut metadata);
                }
                NodeIdentity { id: n.id.clone(), cluster: n.cluster.clone(), metadata }
            })
            .unwrap_or_default();
        let id = if identity.id.is_empty() { "(no node id)".to_string() } else { identity.id.clone() };
        Peer { id, identity }
    }
}

/// `node.metadata` as `dotted.key -> text` for every scalar, nested structs included.
fn flatten(prefix: &str, fields: &Struct, out: &mut BTreeMap<String, String>) {
    for (key, value) in &fields.fields {
        let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let text = match &value.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::NumberValue(n)) => n.to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::StructValue(inner)) => {
                flatten(&key, inner, out);
                continue;
            }
            Some(Kind::NullValue(_) | Kind::ListValue(_)) | None => continue,
        };
        out.insert(key, text);
    }
}

/// What both request variants (State of the World and delta) have in common.
trait XdsRequest {
    fn node(&self) -> Option<&Node>;
    fn type_url(&self) -> &str;
    fn response_nonce(&self) -> &str;
    fn error_detail(&self) -> Option<&RpcStatus>;
}

macro_rules! xds_request {
    ($t:ty) => {
        impl XdsRequest for $t {
            fn node(&self) -> Option<&Node> {
                self.node.as_ref()
            }
            fn type_url(&self) -> &str {
                &self.type_url
            }
            fn response_nonce(&self) -> &str {
                &self.response_nonce
            }
            fn error_detail(&self) -> Option<&RpcStatus> {
                self.error_detail.as_ref()
            }
        }
    };
}
xds_request!(DiscoveryRequest);
xds_request!(DeltaDiscoveryRequest);

/// The next request of a known type and its type; `None` when the stream has ended. The node id is
/// noted from the first request; requests for types this server does not serve are logged and
/// skipped (the stream stays up).
async fn next_request<R: XdsRequest>(
    requests: &mut Streaming<R>,
    node: &mut Peer,
    variant: &str,
) -> Option<(R, &'static str)> {
    loop {
        let request = match requests.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(node = node.id, error = %e, "{variant} ADS stream ended");
                return None;
            }
        };
        if node.id.is_empty() {
            *node = Peer::from_node(request.node());
            tracing::info!(node = node.id, cluster = node.identity.cluster, "{variant} ADS stream opened");
        }
        match xds_proto::type_url::ads_type(request.type_url()) {
            Some(type_url) => return Some((request, type_url)),
            None => {
                tracing::warn!(node = node.id, type_url = request.type_url(), "request for an unknown type: ignored")
            }
        }
    }
}

/// The ACK/NACK part of a request, given the nonce of the last response sent for its type. False
/// when the request is stale (it answers an older response) and must be ignored.
fn ack_or_nack<R: XdsRequest>(request: &R, last_nonce: Option<&str>, node: &str, stats: &AdsStats) -> bool {
    let nonce = request.response_nonce();
    if nonce.is_empty() {
        return true;
    }
    if last_nonce != Some(nonce) {
        tracing::debug!(node, nonce, "stale nonce: request ignored");
        return false;
    }
    match request.error_detail() {
        Some(status) => {
            stats.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                node,
                type_url = request.type_url(),
                error = status.message,
                "NACK: the client rejected the update and keeps its last good config"
            );
        }
        None => {
            stats.acks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node, type_url = request.type_url(), "ACK");
        }
    }
    true
}
