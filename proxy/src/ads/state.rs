//! The resources received over ADS, by type and name, and how they become config: listeners get their
//! route configuration (RDS) inline, EDS clusters their endpoints, so the same conversions as a static
//! file apply. A listener whose routes have not arrived yet is held back (warming, as Envoy does).

use crate::xds::{cluster_config, listener_config};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url;

/// One received resource.
#[derive(Debug, Clone)]
pub struct Received {
    pub version: String,
    pub body: Any,
}

/// Everything received and accepted so far.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Received>>,
    /// The last accepted `version_info` (State of the World) or `system_version_info` (delta), per type.
    pub versions: BTreeMap<&'static str, String>,
}

/// The dynamic part of the config, resolved and ready to merge with the bootstrap's static part.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// Route configurations the listeners need (RDS subscriptions).
    pub route_names: BTreeSet<String>,
    /// Clusters whose endpoints come over EDS (EDS subscriptions).
    pub eds_names: BTreeSet<String>,
    /// Listeners or clusters still waiting for their routes or endpoints.
    pub warming: Vec<String>,
}

impl State {
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &Received)> {
        self.resources.get(type_url).into_iter().flatten()
    }

    /// Decodes, resolves and checks every resource; all problems, each naming its resource and field.
    pub fn resolve(&self) -> Result<Resolved, Vec<String>> {
        let mut errors = Vec::new();
        let mut out = Resolved::default();
        let routes: BTreeMap<&str, RouteConfiguration> =
            decode_all(self.of_type(type_url::ROUTE_CONFIGURATION), "RouteConfiguration", &mut errors);
        let endpoints: BTreeMap<&str, ClusterLoadAssignment> =
            decode_all(self.of_type(type_url::CLUSTER_LOAD_ASSIGNMENT), "ClusterLoadAssignment", &mut errors);

        for (name, mut cluster) in decode_all::<Cluster>(self.of_type(type_url::CLUSTER), "Cluster", &mut errors) {
            let eds = matches!(cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            if eds {
                let service = cluster
                    .eds_cluster_config
                    .take()
                    .map(|c| c.service_name)
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| name.to_string());
                let assignment = endpoints.get(service.as_str()).cloned().unwrap_or_else(|| {
                    out.warming.push(format!("cluster '{name}' (waiting for its endpoints)"));
                    ClusterLoadAssignment { cluster_name: service.clone(), ..Default::default() }
                });
                cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
                cluster.load_assignment = Some(assignment);
                out.eds_names.insert(service);
            }
            match cluster_config(&cluster) {
                Ok(_) => out.clusters.push(cluster),
                Err(e) => errors.push(format!("Cluster '{name}': {e}")),
            }
        }

        for (name, mut listener) in decode_all::<Listener>(self.of_type(type_url::LISTENER), "Listener", &mut errors) {
            match inline_routes(&mut listener, &routes, &mut out.route_names) {
                Err(e) => errors.push(format!("Listener '{name}': {e}")),
                Ok(false) => out.warming.push(format!("listener '{name}' (waiting for its routes)")),
                Ok(true) => match listener_config(&listener) {
                    Ok(_) => out.listeners.push(listener),
                    Err(e) => errors.push(format!("Listener '{name}': {e}")),
                },
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

fn decode_all<'a, T: Message + Default>(
    items: impl Iterator<Item = (&'a String, &'a Received)>,
    kind: &str,
    errors: &mut Vec<String>,
) -> BTreeMap<&'a str, T> {
    let mut out = BTreeMap::new();
    for (name, received) in items {
        match T::decode(received.body.value.as_slice()) {
            Ok(message) => {
                out.insert(name.as_str(), message);
            }
            Err(e) => errors.push(format!("{kind} '{name}': cannot be decoded: {e}")),
        }
    }
    out
}

/// Puts each HTTP connection manager's RDS route configuration inline. `Ok(false)` when one has not
/// arrived yet.
fn inline_routes(
    listener: &mut Listener,
    routes: &BTreeMap<&str, RouteConfiguration>,
    wanted: &mut BTreeSet<String>,
) -> Result<bool, String> {
    let mut complete = true;
    for (i, chain) in listener.filter_chains.iter_mut().enumerate() {
        for (j, filter) in chain.filters.iter_mut().enumerate() {
            let Some(xds_proto::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
                filter.config_type.as_mut()
            else {
                continue;
            };
            if any.type_url != type_url::HTTP_CONNECTION_MANAGER {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|e| format!("filter_chains[{i}].filters[{j}]: cannot be decoded: {e}"))?;
            let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { continue };
            let name = rds.route_config_name.clone();
            if name.is_empty() {
                return Err(format!("filter_chains[{i}].filters[{j}].typed_config.rds.route_config_name: required"));
            }
            wanted.insert(name.clone());
            match routes.get(name.as_str()) {
                Some(rc) => {
                    hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc.clone()));
                    any.value = hcm.encode_to_vec();
                }
                None => complete = false,
            }
        }
    }
    Ok(complete)
}
