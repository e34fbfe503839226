//! The resources received over ADS, by type and name, and how they become config: listeners get their
//! route configuration (RDS) inline, EDS clusters their endpoints, so the same conversions as a static
//! file apply. A listener whose routes have not arrived yet is held back (warming, as Envoy does).

use crate::xds::{cluster_config, listener_config, route_table};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use xds_proto::pb::envoy::config::core::v3::TransportSocket;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url;

/// One received resource (shared: the state is cloned for every candidate update and for
/// `/config_dump`).
#[derive(Debug, Clone)]
pub struct Received {
    pub version: String,
    pub body: Arc<Any>,
    pub at: SystemTime,
}

impl Received {
    pub fn new(version: String, body: Any) -> Self {
        Received { version, body: Arc::new(body), at: SystemTime::now() }
    }
}

/// Everything received and accepted so far.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Received>>,
    /// The last accepted `version_info` (State of the World) or `system_version_info` (delta), per type.
    pub versions: BTreeMap<&'static str, String>,
    /// The clusters in use, as applied: a changed EDS cluster whose endpoints have not arrived yet
    /// stays on this version meanwhile (warming, as Envoy does).
    pub active_clusters: BTreeMap<String, Cluster>,
    /// Secrets the proxy makes itself (its workload identity): they need no SDS subscription.
    pub local_secrets: Arc<Vec<Secret>>,
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
    /// Listeners or clusters (type URL, name) still waiting for their routes, endpoints or secrets.
    pub warming: BTreeSet<(&'static str, String)>,
    /// Secrets the listeners and clusters name (SDS subscriptions), and those received.
    pub secret_names: BTreeSet<String>,
    pub secrets: Vec<Secret>,
}

impl State {
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &Received)> {
        self.resources.get(type_url).into_iter().flatten()
    }

    /// Decodes, resolves and checks every resource; all problems, each naming its resource and field.
    pub fn resolve(&self) -> Result<Resolved, Vec<String>> {
        let mut errors = Vec::new();
        let mut out = Resolved::default();
        let mut routes: BTreeMap<&str, RouteConfiguration> =
            decode_all(self.of_type(type_url::ROUTE_CONFIGURATION), "RouteConfiguration", &mut errors);
        // Route configurations are checked on their own, so a problem names them, not a listener.
        routes.retain(|name, rc| match route_table(rc) {
            Ok(_) => true,
            Err(e) => {
                errors.push(format!("RouteConfiguration '{name}': {e}"));
                false
            }
        });
        let endpoints: BTreeMap<&str, ClusterLoadAssignment> =
            decode_all(self.of_type(type_url::CLUSTER_LOAD_ASSIGNMENT), "ClusterLoadAssignment", &mut errors);
        let mut secrets: BTreeMap<&str, Secret> = decode_all(self.of_type(type_url::SECRET), "Secret", &mut errors);
        // Secrets are checked on their own, so a bad certificate names its secret.
        secrets.retain(|name, secret| match crate::xds::tls::check_secret(secret) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("Secret '{name}': {e}"));
                false
            }
        });
        out.secrets = secrets.values().cloned().collect();
        // The proxy's own secrets stand in for (and win over) any of the same name.
        for local in self.local_secrets.iter() {
            secrets.insert(local.name.as_str(), local.clone());
        }
        let checked: Vec<Secret> = secrets.values().cloned().collect();
        let secret_set = crate::xds::tls::Secrets::new(&checked);
        let local_names: BTreeSet<&str> = self.local_secrets.iter().map(|s| s.name.as_str()).collect();
        // Whether every secret a transport socket names is here (noting the names to subscribe to).
        let mut has_secrets = |socket: Option<&TransportSocket>, names: &mut BTreeSet<String>| {
            let mut wanted = socket.map(crate::xds::tls::sds_names).unwrap_or_default();
            wanted.retain(|n| !local_names.contains(n.as_str()));
            let complete = wanted.iter().all(|n| secrets.contains_key(n.as_str()));
            names.extend(wanted);
            complete
        };

        for (name, mut cluster) in decode_all::<Cluster>(self.of_type(type_url::CLUSTER), "Cluster", &mut errors) {
            let eds = matches!(cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            if eds {
                let service = cluster
                    .eds_cluster_config
                    .take()
                    .map(|c| c.service_name)
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| name.to_string());
                out.eds_names.insert(service.clone());
                match endpoints.get(service.as_str()) {
                    Some(assignment) => cluster.load_assignment = Some(assignment.clone()),
                    None => {
                        out.warming.insert((type_url::CLUSTER, name.to_string()));
                        if let Some(active) = self.active_clusters.get(name) {
                            out.clusters.push(active.clone());
                            continue;
                        }
                        // New: in place with no endpoints (503 `UH`) until they come.
                        cluster.load_assignment =
                            Some(ClusterLoadAssignment { cluster_name: service, ..Default::default() });
                    }
                }
                cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            }
            if !has_secrets(cluster.transport_socket.as_ref(), &mut out.secret_names) {
                // Waits for its certificates: the version in use meanwhile, if there is one.
                out.warming.insert((type_url::CLUSTER, name.to_string()));
                if let Some(active) = self.active_clusters.get(name) {
                    out.clusters.push(active.clone());
                }
                continue;
            }
            match cluster_config(&cluster, &secret_set) {
                Ok(_) => out.clusters.push(cluster),
                Err(e) => errors.push(format!("Cluster '{name}': {e}")),
            }
        }

        for (name, mut listener) in decode_all::<Listener>(self.of_type(type_url::LISTENER), "Listener", &mut errors) {
            match inline_routes(&mut listener, &routes, &mut out.route_names) {
                Err(e) => errors.push(format!("Listener '{name}': {e}")),
                Ok(false) => {
                    out.warming.insert((type_url::LISTENER, name.to_string()));
                }
                Ok(true) if !listener_secrets(&listener, &mut has_secrets, &mut out.secret_names) => {
                    out.warming.insert((type_url::LISTENER, name.to_string()));
                }
                Ok(true) => match listener_config(&listener, &secret_set) {
                    Ok(_) => out.listeners.push(listener),
                    Err(e) => errors.push(format!("Listener '{name}': {e}")),
                },
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

/// Whether every secret the listener's filter chains name is here.
fn listener_secrets(
    listener: &Listener,
    has_secrets: &mut impl FnMut(Option<&TransportSocket>, &mut BTreeSet<String>) -> bool,
    names: &mut BTreeSet<String>,
) -> bool {
    let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.as_ref());
    // Every chain is looked at (not short-circuited): all the names are subscribed to.
    let complete: Vec<bool> = chains.map(|chain| has_secrets(chain.transport_socket.as_ref(), names)).collect();
    complete.into_iter().all(|c| c)
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
                    let mut rc = rc.clone();
                    // Routes from RDS may name clusters not (yet) known: Envoy's default for RDS.
                    rc.validate_clusters.get_or_insert(xds_proto::pb::google::protobuf::BoolValue { value: false });
                    hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
                    any.value = hcm.encode_to_vec();
                }
                None => complete = false,
            }
        }
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::Format;

    fn resource<T: Message + prost::Name + Default>(yaml: &str) -> (String, Received) {
        let message: T = xds_proto::parse_document(yaml, Format::Yaml).unwrap();
        let body = Any { type_url: T::type_url(), value: message.encode_to_vec() };
        let name = yaml.split("name: ").nth(1).unwrap().split([',', ' ', '}']).next().unwrap().to_string();
        (name, Received::new("1".into(), body))
    }

    fn eds_cluster(name: &str, service: &str) -> (String, Received) {
        resource::<Cluster>(&format!(
            "{{ name: {name}, type: EDS, eds_cluster_config: {{ service_name: {service}, eds_config: {{ ads: {{}} }} }} }}"
        ))
    }

    fn endpoints(name: &str, port: u16) -> (String, Received) {
        resource::<ClusterLoadAssignment>(&format!(
            "{{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: \
             {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }}"
        ))
    }

    fn ports(resolved: &Resolved, cluster: &str) -> Vec<u32> {
        let c = resolved.clusters.iter().find(|c| c.name == cluster).expect("the cluster is in the config");
        let mut out = Vec::new();
        for locality in &c.load_assignment.as_ref().unwrap().endpoints {
            for e in &locality.lb_endpoints {
                if let Some(xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) =
                    &e.host_identifier
                {
                    let Some(xds_proto::pb::envoy::config::core::v3::address::Address::SocketAddress(a)) =
                        ep.address.as_ref().and_then(|a| a.address.as_ref())
                    else {
                        continue;
                    };
                    if let Some(xds_proto::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) =
                        a.port_specifier
                    {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_changed_eds_cluster_keeps_serving_its_old_version_until_its_endpoints_arrive() {
        let mut state = State::default();
        state.resources.insert(type_url::CLUSTER, [eds_cluster("web", "web-v1")].into());
        state.resources.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, [endpoints("web-v1", 8081)].into());
        let first = state.resolve().unwrap();
        assert!(first.warming.is_empty());
        assert_eq!(ports(&first, "web"), [8081]);
        state.active_clusters = first.clusters.iter().map(|c| (c.name.clone(), c.clone())).collect();

        // The cluster now reads another assignment, not here yet; a new cluster arrives too.
        state.resources.insert(type_url::CLUSTER, [eds_cluster("web", "web-v2"), eds_cluster("api", "api")].into());
        let warming = state.resolve().unwrap();
        assert_eq!(warming.warming.len(), 2, "{:?}", warming.warming);
        assert_eq!(ports(&warming, "web"), [8081], "the old version serves meanwhile");
        assert_eq!(ports(&warming, "api"), Vec::<u32>::new(), "a new cluster waits with no endpoints");
        assert_eq!(warming.eds_names, ["api".to_string(), "web-v2".to_string()].into());

        state
            .resources
            .insert(type_url::CLUSTER_LOAD_ASSIGNMENT, [endpoints("web-v2", 8082), endpoints("api", 8083)].into());
        let warm = state.resolve().unwrap();
        assert!(warm.warming.is_empty());
        assert_eq!((ports(&warm, "web"), ports(&warm, "api")), (vec![8082], vec![8083]));
    }

    #[test]
    fn routes_from_rds_may_name_a_cluster_not_known_yet() {
        let mut state = State::default();
        let hcm = "{ name: envoy.filters.network.http_connection_manager, typed_config: { '@type': \
                   type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, \
                   stat_prefix: in, rds: { route_config_name: in, config_source: { ads: {} } }, \
                   http_filters: [{ name: router, typed_config: { '@type': \
                   type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }] } }";
        state.resources.insert(
            type_url::LISTENER,
            [resource::<Listener>(&format!(
                "{{ name: in, address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }}, \
                 filter_chains: [{{ filters: [{hcm}] }}] }}"
            ))]
            .into(),
        );
        let waiting = state.resolve().unwrap();
        assert!(waiting.listeners.is_empty(), "held back until its routes come");
        assert_eq!(waiting.route_names, ["in".to_string()].into());
        state.resources.insert(
            type_url::ROUTE_CONFIGURATION,
            [resource::<RouteConfiguration>(
                "{ name: in, virtual_hosts: [{ name: all, domains: ['*'], \
                 routes: [{ match: { prefix: / }, route: { cluster: not-yet } }] }] }",
            )]
            .into(),
        );
        let resolved = state.resolve().unwrap();
        let listener = crate::xds::listener_config(&resolved.listeners[0], &Default::default()).unwrap();
        assert!(listener.referenced_clusters().is_empty(), "not checked against the clusters (503 NC at runtime)");
    }
}
