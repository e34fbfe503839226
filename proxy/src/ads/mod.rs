//! The proxy's ADS client, configured from the bootstrap's `dynamic_resources` (`ads_config` with an
//! `envoy_grpc` cluster; `lds_config`/`cds_config` with `ads: {}`) and `node`. State of the World
//! (`api_type: GRPC`) or delta (`DELTA_GRPC`). Each response is resolved and checked with the same
//! conversions as a static file; anything invalid NACKs the whole response with an `error_detail`
//! naming the resource and field, and the proxy stays on its last good config. Accepted config goes to
//! the control loop as one update (one new snapshot). When the control plane is lost the proxy keeps
//! serving (fail static), reconnects with jittered exponential backoff and resubscribes with the
//! versions it has.

mod state;

pub use state::{Received, Resolved};

use state::State;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use xds_proto::Bootstrap;
use xds_proto::pb::envoy::config::core::v3::{Node, api_config_source::ApiType, config_source::ConfigSourceSpecifier};
use xds_proto::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_proto::pb::google::rpc::Status as RpcStatus;
use xds_proto::type_url;
use xds_proto::type_url::{ADS_TYPES, ads_type, is_full_state};

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: SocketAddr,
    pub delta: bool,
    pub node: Option<Node>,
    /// Secrets this proxy makes itself (its workload certificate): present without SDS, and
    /// preferred over a secret of the same name from the control plane.
    pub local_secrets: LocalSecrets,
    /// `grpc_services[0].initial_metadata`: sent with the stream (a bootstrap token, say).
    pub metadata: Vec<(tonic::metadata::AsciiMetadataKey, tonic::metadata::AsciiMetadataValue)>,
}

/// The secrets the identity agent keeps current, shared with the ADS client.
pub type LocalSecrets =
    Arc<arc_swap::ArcSwap<Vec<xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret>>>;

/// Reads the bootstrap's `dynamic_resources`: `Ok(None)` when there are none (a static config).
pub fn settings(bootstrap: &Bootstrap) -> Result<Option<Settings>, String> {
    let Some(dynamic) = &bootstrap.dynamic_resources else { return Ok(None) };
    for (field, source) in [("lds_config", &dynamic.lds_config), ("cds_config", &dynamic.cds_config)] {
        match source.as_ref().and_then(|s| s.config_source_specifier.as_ref()) {
            None | Some(ConfigSourceSpecifier::Ads(_)) => {}
            Some(_) => return Err(format!("dynamic_resources.{field}: only `ads: {{}}` is supported")),
        }
    }
    let ads = dynamic.ads_config.as_ref().ok_or("dynamic_resources.ads_config: required for ADS")?;
    let delta = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => false,
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => true,
        _ => return Err("dynamic_resources.ads_config.api_type: GRPC or DELTA_GRPC".into()),
    };
    use xds_proto::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    let cluster_name = match ads.grpc_services.first().and_then(|g| g.target_specifier.as_ref()) {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
        _ => return Err("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: required".into()),
    };
    let cluster = bootstrap
        .static_resources
        .as_ref()
        .and_then(|r| r.clusters.iter().find(|c| c.name == cluster_name))
        .ok_or_else(|| format!("dynamic_resources.ads_config: no static cluster '{cluster_name}'"))?;
    let server = cluster
        .load_assignment
        .as_ref()
        .and_then(|a| a.endpoints.first())
        .and_then(|e| e.lb_endpoints.first())
        .and_then(|e| match &e.host_identifier {
            Some(xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                ep.address.as_ref()
            }
            _ => None,
        })
        .and_then(|a| crate::xds::socket_address_of(a).ok())
        .ok_or_else(|| format!("static cluster '{cluster_name}': needs an IP endpoint for the control plane"))?;
    let mut metadata = Vec::new();
    for (i, header) in ads.grpc_services.first().map_or(&[][..], |g| g.initial_metadata.as_slice()).iter().enumerate() {
        let at = format!("dynamic_resources.ads_config.grpc_services[0].initial_metadata[{i}]");
        let key = header.key.to_ascii_lowercase().parse().map_err(|_| format!("{at}.key: not a gRPC metadata name"))?;
        let value = header.value.parse().map_err(|_| format!("{at}.value: not printable ASCII"))?;
        metadata.push((key, value));
    }
    Ok(Some(Settings { server, delta, node: bootstrap.node.clone(), local_secrets: LocalSecrets::default(), metadata }))
}

/// Accepted dynamic config for the control loop to apply; it answers whether the apply worked.
#[derive(Debug)]
pub struct Update {
    pub resolved: Resolved,
    /// LDS and CDS have arrived and nothing is warming: the proxy is ready.
    pub complete: bool,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What `/config_dump` shows about ADS: accepted versions and the last rejection, per type.
#[derive(Debug, Default, Clone)]
pub struct AdsStatus {
    pub connected: bool,
    pub versions: BTreeMap<String, String>,
    /// type URL -> (the rejected version, the error sent back), until the type's next accepted update.
    pub last_nack: BTreeMap<String, (String, String)>,
    /// The accepted resources, by type URL and name, as received.
    pub accepted: BTreeMap<&'static str, BTreeMap<String, Received>>,
    /// Accepted listeners and clusters (type URL, name) still waiting for their routes or endpoints.
    pub warming: BTreeSet<(&'static str, String)>,
}

pub type SharedStatus = Arc<Mutex<AdsStatus>>;

/// Runs the client until the process ends: connect, stream, apply, reconnect with backoff.
pub async fn run(settings: Settings, updates: mpsc::Sender<Update>, status: SharedStatus) {
    let mut state = State::default();
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut session = Session { settings: &settings, updates: &updates, status: &status, state, progressed: false };
        let result = if settings.delta { session.delta().await } else { session.sotw().await };
        let progressed = session.progressed;
        state = session.state;
        set_status(&status, |s| s.connected = false);
        match result {
            Ok(()) => {
                tracing::warn!(server = %settings.server, "ADS stream closed by the control plane; serving the last good config")
            }
            Err(e) => {
                tracing::warn!(server = %settings.server, error = %e, "ADS stream lost; serving the last good config")
            }
        }
        if progressed {
            backoff = Duration::from_millis(500);
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if updates.is_closed() {
            return;
        }
    }
}

fn set_status(status: &SharedStatus, f: impl FnOnce(&mut AdsStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The name of a resource: field 1 of every xDS type served here (`name`, or `cluster_name`).
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

fn resource_name(any: &xds_proto::pb::google::protobuf::Any) -> Result<String, String> {
    <Named as prost::Message>::decode(any.value.as_slice())
        .map(|n| n.name)
        .map_err(|e| format!("a {} cannot be decoded: {e}", any.type_url))
}

/// What a new stream subscribes to: listeners and clusters (wildcard), and the routes and endpoints
/// the current config needs (on a reconnect).
fn initial_subscriptions(wanted: &BTreeMap<&'static str, BTreeSet<String>>) -> Vec<(&'static str, BTreeSet<String>)> {
    ADS_TYPES
        .into_iter()
        .map(|t| (t, wanted.get(t).cloned().unwrap_or_default()))
        .filter(|(t, names)| is_full_state(t) || !names.is_empty())
        .collect()
}

/// One connection to the control plane.
struct Session<'a> {
    settings: &'a Settings,
    updates: &'a mpsc::Sender<Update>,
    status: &'a SharedStatus,
    state: State,
    progressed: bool,
}

impl Session<'_> {
    async fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, Box<dyn std::error::Error + Send + Sync>>
    {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.settings.server))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        Ok(AggregatedDiscoveryServiceClient::new(endpoint.connect().await?))
    }

    /// The stream's request with the bootstrap's `initial_metadata`.
    fn with_metadata<T>(&self, stream: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(stream);
        for (key, value) in &self.settings.metadata {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        request
    }

    /// Checks a candidate state and hands it to the control loop; the error to NACK with, if any.
    async fn try_apply(&mut self, candidate: &mut State) -> Result<(), String> {
        candidate.local_secrets = self.settings.local_secrets.load_full();
        let resolved = candidate.resolve().map_err(|errors| errors.join("; "))?;
        let complete = [type_url::LISTENER, type_url::CLUSTER].iter().all(|t| candidate.versions.contains_key(t))
            && resolved.warming.is_empty();
        let active = resolved.clusters.iter().map(|c| (c.name.clone(), c.clone())).collect();
        let warming = resolved.warming.clone();
        let (reply, result) = oneshot::channel();
        self.updates
            .send(Update { resolved, complete, reply })
            .await
            .map_err(|_| "the proxy is shutting down".to_string())?;
        result.await.map_err(|_| "the proxy is shutting down".to_string())??;
        candidate.active_clusters = active;
        set_status(self.status, |s| {
            s.accepted = candidate.resources.clone();
            s.warming = warming;
        });
        Ok(())
    }

    /// The RDS, EDS and SDS names the accepted config needs.
    fn wanted(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let mut state = self.state.clone();
        state.local_secrets = self.settings.local_secrets.load_full();
        let resolved = state.resolve().unwrap_or_default();
        BTreeMap::from([
            (type_url::ROUTE_CONFIGURATION, resolved.route_names),
            (type_url::CLUSTER_LOAD_ASSIGNMENT, resolved.eds_names),
            (type_url::SECRET, resolved.secret_names),
        ])
    }

    fn record(&mut self, type_url: &'static str, version: &str, nack: Option<&str>) {
        set_status(self.status, |s| match nack {
            Some(error) => {
                s.last_nack.insert(type_url.to_string(), (version.to_string(), error.to_string()));
            }
            None => {
                // As Envoy: an error state lasts until the next successful update of its type.
                s.last_nack.remove(type_url);
                s.versions.insert(type_url.to_string(), version.to_string());
            }
        });
    }

    async fn sotw(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel(16);
        let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = self.wanted();
        let mut nonces: BTreeMap<&'static str, String> = BTreeMap::new();
        let node = self.settings.node.clone();
        let request =
            |type_url: &'static str, names: &BTreeSet<String>, version: String, nonce: String| DiscoveryRequest {
                node: node.clone(),
                type_url: type_url.to_string(),
                resource_names: names.iter().cloned().collect(),
                version_info: version,
                response_nonce: nonce,
                ..Default::default()
            };
        for (t, names) in initial_subscriptions(&subscribed) {
            let version = self.state.versions.get(t).cloned().unwrap_or_default();
            tx.send(request(t, &names, version, String::new())).await?;
        }
        let mut responses =
            client.stream_aggregated_resources(self.with_metadata(ReceiverStream::new(rx))).await?.into_inner();
        set_status(self.status, |s| s.connected = true);
        self.progressed = true;
        tracing::info!(server = %self.settings.server, "ADS stream (state of the world) open");
        while let Some(response) = responses.message().await? {
            let Some(t) = ads_type(&response.type_url) else {
                tracing::warn!(type_url = response.type_url, "ADS response of an unknown type: ignored");
                continue;
            };
            nonces.insert(t, response.nonce.clone());
            let mut candidate = self.state.clone();
            let mut items = BTreeMap::new();
            let mut outcome = Ok(());
            for any in response.resources {
                match resource_name(&any) {
                    Ok(name) => {
                        items.insert(name, Received::new(response.version_info.clone(), any));
                    }
                    Err(e) => outcome = Err(e),
                }
            }
            if !is_full_state(t) {
                // Routes and endpoints are not full state: a response carries what changed among the
                // subscribed names, and absence is not deletion. Keep the rest that is still wanted.
                let wanted = subscribed.get(t).cloned().unwrap_or_default();
                for (name, old) in self.state.of_type(t) {
                    if wanted.contains(name) && !items.contains_key(name) {
                        items.insert(name.clone(), old.clone());
                    }
                }
            }
            candidate.resources.insert(t, items);
            candidate.versions.insert(t, response.version_info.clone());
            if outcome.is_ok() {
                outcome = self.try_apply(&mut candidate).await;
            }
            let names = subscribed.get(t).cloned().unwrap_or_default();
            match outcome {
                Ok(()) => {
                    self.state = candidate;
                    self.record(t, &response.version_info, None);
                    tx.send(request(t, &names, response.version_info.clone(), response.nonce.clone())).await?;
                }
                Err(error) => {
                    tracing::warn!(type_url = t, version = response.version_info, error, "NACK: config rejected");
                    self.record(t, &response.version_info, Some(&error));
                    let kept = self.state.versions.get(t).cloned().unwrap_or_default();
                    let mut nack = request(t, &names, kept, response.nonce.clone());
                    nack.error_detail = Some(RpcStatus { code: 3, message: error, details: vec![] });
                    tx.send(nack).await?;
                }
            }
            // Routes and endpoints follow what the accepted listeners and clusters need.
            for (t, names) in self.wanted() {
                if subscribed.get(t) != Some(&names) {
                    let version = self.state.versions.get(t).cloned().unwrap_or_default();
                    let nonce = nonces.get(t).cloned().unwrap_or_default();
                    tx.send(request(t, &names, version, nonce)).await?;
                    subscribed.insert(t, names);
                }
            }
        }
        Ok(())
    }

    async fn delta(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel(16);
        let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = self.wanted();
        for (t, names) in initial_subscriptions(&subscribed) {
            let initial_resource_versions =
                self.state.of_type(t).map(|(name, r)| (name.clone(), r.version.clone())).collect();
            tx.send(DeltaDiscoveryRequest {
                node: self.settings.node.clone(),
                type_url: t.to_string(),
                resource_names_subscribe: names.into_iter().collect(),
                initial_resource_versions,
                ..Default::default()
            })
            .await?;
        }
        let mut responses =
            client.delta_aggregated_resources(self.with_metadata(ReceiverStream::new(rx))).await?.into_inner();
        set_status(self.status, |s| s.connected = true);
        self.progressed = true;
        tracing::info!(server = %self.settings.server, "ADS stream (delta) open");
        while let Some(response) = responses.message().await? {
            let Some(t) = ads_type(&response.type_url) else {
                tracing::warn!(type_url = response.type_url, "ADS response of an unknown type: ignored");
                continue;
            };
            let mut candidate = self.state.clone();
            let items = candidate.resources.entry(t).or_default();
            let mut outcome = Ok(());
            for resource in response.resources {
                match resource.resource {
                    Some(body) => {
                        items.insert(resource.name, Received::new(resource.version, body));
                    }
                    None => outcome = Err(format!("resource '{}' has no body", resource.name)),
                }
            }
            for name in &response.removed_resources {
                items.remove(name);
            }
            candidate.versions.insert(t, response.system_version_info.clone());
            if outcome.is_ok() {
                outcome = self.try_apply(&mut candidate).await;
            }
            let mut reply = DeltaDiscoveryRequest {
                node: self.settings.node.clone(),
                type_url: t.to_string(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            };
            match outcome {
                Ok(()) => {
                    self.state = candidate;
                    self.record(t, &response.system_version_info, None);
                }
                Err(error) => {
                    tracing::warn!(type_url = t, error, "NACK: config rejected");
                    self.record(t, &response.system_version_info, Some(&error));
                    reply.error_detail = Some(RpcStatus { code: 3, message: error, details: vec![] });
                }
            }
            tx.send(reply).await?;
            for (t, names) in self.wanted() {
                let old = subscribed.get(t).cloned().unwrap_or_default();
                if old != names {
                    tx.send(DeltaDiscoveryRequest {
                        node: self.settings.node.clone(),
                        type_url: t.to_string(),
                        resource_names_subscribe: names.difference(&old).cloned().collect(),
                        resource_names_unsubscribe: old.difference(&names).cloned().collect(),
                        ..Default::default()
                    })
                    .await?;
                    subscribed.insert(t, names);
                }
            }
        }
        Ok(())
    }
}
