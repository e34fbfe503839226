//! Compiles a validated [`Mesh`] into Envoy xDS v3 resources: one listener per mesh listener (an
//! HTTP connection manager whose routes come over ADS), one route configuration per listener (virtual
//! hosts by `hosts`), one cluster per service (EDS for IP endpoints, `STRICT_DNS` for names) and its
//! endpoints. Each resource is written in Envoy's own JSON form and read back into the real protobuf
//! type, so what is served is checked against Envoy's schema.

use crate::mesh::{HeadersSpec, Mesh, Protocol, RouteSpec, ServiceSpec};
use crate::resources::{Resources, Scope};
use serde_json::{Value, json};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::{Format, type_url};

/// Compiles `mesh` (validate it first); an error here is a bug in this compiler, named by resource.
pub fn compile(mesh: &Mesh) -> Result<Resources, String> {
    let mut items = Vec::new();
    for service in &mesh.services {
        let (cluster, endpoints) = service_resources(service);
        items.push(pack::<Cluster>(type_url::CLUSTER, &service.name, &cluster)?);
        if let Some(endpoints) = endpoints {
            items.push(pack::<ClusterLoadAssignment>(type_url::CLUSTER_LOAD_ASSIGNMENT, &service.name, &endpoints)?);
        }
    }
    for listener in &mesh.listeners {
        let routes: Vec<&RouteSpec> = mesh.routes.iter().filter(|r| r.listener == listener.name).collect();
        let with_faults = routes.iter().any(|r| r.fault.is_some());
        items.push(pack::<Listener>(type_url::LISTENER, &listener.name, &listener_json(listener, mesh, with_faults))?);
        items.push(pack::<RouteConfiguration>(
            type_url::ROUTE_CONFIGURATION,
            &listener.name,
            &route_config_json(&listener.name, &routes, mesh),
        )?);
    }
    // Proxyless gRPC clients ask for a listener named after their target (`xds:///name`): each route
    // host that is a plain name gets an API listener whose routes are its mesh listener's.
    let mut named_only = std::collections::BTreeSet::new();
    for route in &mesh.routes {
        for host in &route.hosts {
            let plain = !host.contains('*') && !host.is_empty();
            let taken = mesh.listeners.iter().any(|l| &l.name == host) || named_only.contains(host);
            if plain && !taken {
                let with_faults = mesh.routes.iter().any(|r| r.listener == route.listener && r.fault.is_some());
                let listener = api_listener_json(host, &route.listener, with_faults);
                items.push(pack::<Listener>(type_url::LISTENER, host, &listener)?);
                named_only.insert(host.clone());
            }
        }
    }
    let scopes = mesh
        .listeners
        .iter()
        .map(|l| Scope {
            listener: l.name.clone(),
            nodes: l.nodes.clone(),
            services: mesh
                .routes
                .iter()
                .filter(|r| r.listener == l.name)
                .flat_map(|r| r.to.iter().map(|t| t.service.clone()))
                .collect(),
        })
        .collect();
    // The descriptor pool is only needed while compiling.
    xds_proto::release_descriptor_pool();
    Ok(Resources::new(items).with_scopes(scopes, named_only))
}

fn pack<T: prost::Message + prost::Name + Default>(
    type_url: &'static str,
    name: &str,
    json: &Value,
) -> Result<(&'static str, String, Any), String> {
    let message: T =
        xds_proto::parse_document(&json.to_string(), Format::Json).map_err(|e| format!("{} '{name}': {e}", T::NAME))?;
    Ok((type_url, name.to_string(), Any { type_url: type_url.to_string(), value: message.encode_to_vec() }))
}

fn ads() -> Value {
    json!({ "ads": {}, "resource_api_version": "V3" })
}

/// A mesh listener: plaintext, or with its PeerAuthentication mTLS only (STRICT) or mTLS and
/// plaintext told apart by the first bytes (PERMISSIVE); its AuthorizationPolicies as RBAC filters.
fn listener_json(l: &crate::mesh::ListenerSpec, mesh: &Mesh, with_faults: bool) -> Value {
    use crate::security::MtlsMode;
    let policies: Vec<_> = mesh.authorization_policies.iter().filter(|p| p.listener == l.name).collect();
    let mut filters = crate::security::rbac_filters(&policies);
    filters.extend(http_filters(with_faults).as_array().cloned().unwrap_or_default());
    let hcm = |tls: bool| {
        let mut config = json!({
            "@type": type_url::HTTP_CONNECTION_MANAGER,
            "stat_prefix": l.name,
            "rds": { "config_source": ads(), "route_config_name": l.name },
            "http_filters": filters
        });
        if tls {
            // The app learns the caller's SPIFFE ID; a client's own header is never passed on.
            config["forward_client_cert_details"] = json!("SANITIZE_SET");
            config["set_current_client_cert_details"] = json!({ "uri": true });
        }
        json!([{ "name": "envoy.filters.network.http_connection_manager", "typed_config": config }])
    };
    let mut listener = json!({
        "name": l.name,
        "address": { "socket_address": { "address": l.address, "port_value": l.port } },
    });
    let tls_chain = |matcher: Value| json!({ "filter_chain_match": matcher, "transport_socket": crate::security::downstream_tls(), "filters": hcm(true) });
    listener["filter_chains"] = match mesh.mtls(&l.name) {
        MtlsMode::Disable => json!([{ "filters": hcm(false) }]),
        MtlsMode::Strict => json!([tls_chain(json!({}))]),
        MtlsMode::Permissive => {
            listener["listener_filters"] = json!([{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" }
            }]);
            json!([
                tls_chain(json!({ "transport_protocol": "tls" })),
                { "filter_chain_match": { "transport_protocol": "raw_buffer" }, "filters": hcm(false) }
            ])
        }
    };
    listener
}

/// An API listener (no socket): what a proxyless gRPC client resolves `xds:///{name}` to.
fn api_listener_json(name: &str, route_config: &str, with_faults: bool) -> Value {
    json!({
        "name": name,
        "api_listener": { "api_listener": {
            "@type": type_url::HTTP_CONNECTION_MANAGER,
            "stat_prefix": name,
            "rds": { "config_source": ads(), "route_config_name": route_config },
            "http_filters": http_filters(with_faults)
        } }
    })
}

/// Virtual hosts group the routes by their `hosts`, in the order the hosts first appear; routes keep
/// their file order within a virtual host (first match wins, as in Envoy).
fn route_config_json(name: &str, routes: &[&RouteSpec], mesh: &Mesh) -> Value {
    let mut hosts: Vec<(&Vec<String>, Vec<Value>)> = Vec::new();
    for route in routes {
        let entry = match hosts.iter_mut().find(|(h, _)| *h == &route.hosts) {
            Some(entry) => entry,
            None => {
                hosts.push((&route.hosts, Vec::new()));
                hosts.last_mut().expect("just pushed")
            }
        };
        entry.1.push(route_json(route, mesh));
    }
    let virtual_hosts: Vec<Value> = hosts
        .into_iter()
        .enumerate()
        .map(|(i, (domains, routes))| json!({ "name": format!("{name}-{i}"), "domains": domains, "routes": routes }))
        .collect();
    json!({ "name": name, "virtual_hosts": virtual_hosts })
}

/// A route's header changes as Envoy's `*_headers_to_add` / `*_headers_to_remove` fields.
fn header_fields(route: &mut Value, headers: &HeadersSpec) {
    for (direction, ops) in [("request", &headers.request), ("response", &headers.response)] {
        let set = ops.set.iter().map(|(k, v)| (k, v, "OVERWRITE_IF_EXISTS_OR_ADD"));
        let add = ops.add.iter().map(|(k, v)| (k, v, "APPEND_IF_EXISTS_OR_ADD"));
        let to_add: Vec<Value> = set
            .chain(add)
            .map(|(key, value, action)| json!({ "header": { "key": key, "value": value }, "append_action": action }))
            .collect();
        if !to_add.is_empty() {
            route[format!("{direction}_headers_to_add")] = json!(to_add);
        }
        if !ops.remove.is_empty() {
            route[format!("{direction}_headers_to_remove")] = json!(ops.remove);
        }
    }
}

fn route_json(route: &RouteSpec, mesh: &Mesh) -> Value {
    let mut out = route_action_json(route);
    header_fields(&mut out, &route.headers);
    // Consistent hashing is the services' policy; the hash comes from the route (validation made
    // sure every target of a split hashes alike).
    let hashing = route.to.iter().find_map(|t| mesh.services.iter().find(|s| s.name == t.service));
    if let (Some(policy), Some(action)) = (hashing.and_then(|s| s.traffic_policy.hash_policy()), out.get_mut("route")) {
        action["hash_policy"] = policy;
    }
    out
}

fn route_action_json(route: &RouteSpec) -> Value {
    let mut matcher = serde_json::Map::new();
    match (&route.matcher.prefix, &route.matcher.path) {
        (_, Some(path)) => matcher.insert("path".into(), json!(path)),
        (Some(prefix), None) => matcher.insert("prefix".into(), json!(prefix)),
        (None, None) => matcher.insert("prefix".into(), json!("/")),
    };
    if !route.matcher.headers.is_empty() {
        let headers: Vec<Value> = route
            .matcher
            .headers
            .iter()
            .map(|(name, value)| json!({ "name": name, "string_match": { "exact": value } }))
            .collect();
        matcher.insert("headers".into(), json!(headers));
    }
    if let Some(redirect) = &route.redirect {
        let code = match redirect.status {
            301 => "MOVED_PERMANENTLY",
            303 => "SEE_OTHER",
            307 => "TEMPORARY_REDIRECT",
            308 => "PERMANENT_REDIRECT",
            _ => "FOUND",
        };
        let mut action = json!({ "response_code": code });
        match (&redirect.prefix, &redirect.path) {
            (Some(prefix), _) => action["prefix_rewrite"] = json!(prefix),
            (None, Some(path)) => action["path_redirect"] = json!(path),
            (None, None) => {}
        }
        return json!({ "name": route.name, "match": matcher, "redirect": action });
    }
    if let Some(direct) = &route.direct {
        let mut action = json!({ "status": direct.status });
        if let Some(body) = &direct.body {
            action["body"] = json!({ "inline_string": body });
        }
        return json!({ "name": route.name, "match": matcher, "direct_response": action });
    }
    let mut action = match route.to.as_slice() {
        [single] => json!({ "cluster": single.service }),
        many => json!({ "weighted_clusters": { "clusters": many.iter()
            .map(|t| json!({ "name": t.service, "weight": t.weight })).collect::<Vec<_>>() } }),
    };
    if let Some(timeout) = route.timeout {
        action["timeout"] = json!(format!("{}s", timeout.as_secs_f64()));
    }
    if let Some(prefix) = &route.prefix_rewrite {
        action["prefix_rewrite"] = json!(prefix);
    }
    if let Some(retries) = &route.retries {
        let (names, codes) = retries.conditions().unwrap_or_default();
        let mut policy = json!({ "retry_on": names.join(","), "num_retries": retries.attempts });
        if !codes.is_empty() {
            policy["retriable_status_codes"] = json!(codes);
        }
        if let Some(per_try) = retries.per_try_timeout {
            policy["per_try_timeout"] = json!(format!("{}s", per_try.as_secs_f64()));
        }
        action["retry_policy"] = policy;
    }
    if let Some(mirror) = &route.mirror {
        action["request_mirror_policies"] =
            json!([{ "cluster": mirror.service, "runtime_fraction": { "default_value": share(mirror.percentage) } }]);
    }
    let mut out = json!({ "name": route.name, "match": matcher, "route": action });
    if let Some(fault) = &route.fault {
        let mut config = json!({ "@type": FAULT_TYPE });
        if let Some(delay) = &fault.delay {
            config["delay"] = json!({ "fixed_delay": format!("{}s", delay.fixed_delay.as_secs_f64()), "percentage": share(delay.percentage) });
        }
        if let Some(abort) = &fault.abort {
            config["abort"] = json!({ "percentage": share(abort.percentage) });
            match (abort.http_status, abort.grpc_status) {
                (Some(code), _) => config["abort"]["http_status"] = json!(code),
                (None, Some(code)) => config["abort"]["grpc_status"] = json!(code),
                (None, None) => {}
            }
        }
        out["typed_per_filter_config"] = json!({ FAULT_FILTER: config });
    }
    out
}

const FAULT_FILTER: &str = "envoy.filters.http.fault";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// A percentage (Istio's, a float) as Envoy's `FractionalPercent` out of a million.
fn share(percentage: f64) -> Value {
    json!({ "numerator": (percentage * 10_000.0).round() as u32, "denominator": "MILLION" })
}

/// The connection manager's HTTP filters: the fault filter when a route injects faults (it costs
/// every other request nothing then), and the router.
fn http_filters(with_faults: bool) -> Value {
    let router = json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": type_url::ROUTER } });
    match with_faults {
        true => json!([{ "name": FAULT_FILTER, "typed_config": { "@type": FAULT_TYPE } }, router]),
        false => json!([router]),
    }
}

/// The cluster, and its endpoints when they go over EDS (all IP addresses).
fn service_resources(s: &ServiceSpec) -> (Value, Option<Value>) {
    let mut priorities: Vec<u32> = s.endpoints.iter().map(|e| e.priority()).collect();
    priorities.sort_unstable();
    priorities.dedup();
    // One locality per priority, each with a weight: gRPC's xDS client requires both (Envoy does
    // not mind).
    let localities: Vec<Value> = priorities
        .iter()
        .map(|&priority| {
            let lb_endpoints: Vec<Value> = s
                .endpoints
                .iter()
                .filter(|e| e.priority() == priority)
                .map(|e| {
                    let (host, port) = e.host_port().expect("validated");
                    json!({ "endpoint": { "address": { "socket_address": { "address": host, "port_value": port } } },
                            "load_balancing_weight": e.weight() })
                })
                .collect();
            json!({ "locality": {}, "load_balancing_weight": 1, "priority": priority, "lb_endpoints": lb_endpoints })
        })
        .collect();
    let endpoints = json!({ "cluster_name": s.name, "endpoints": localities });
    let by_ip = s.endpoints.iter().all(|e| e.host_port().is_some_and(|(h, _)| h.parse::<std::net::IpAddr>().is_ok()));
    let timeout = s.connect_timeout.map_or(1.0, |d| d.as_secs_f64());
    let mut cluster = json!({ "name": s.name, "connect_timeout": format!("{timeout}s") });
    if let Some(tls) = s.traffic_policy.tls.as_ref().filter(|t| t.mode == crate::security::ClientTlsMode::IstioMutual) {
        cluster["transport_socket"] = crate::security::upstream_tls(tls);
    }
    if s.protocol == Protocol::Http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": type_url::HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    s.traffic_policy.apply_to_cluster(&mut cluster);
    if by_ip {
        cluster["type"] = json!("EDS");
        cluster["eds_cluster_config"] = json!({ "eds_config": ads() });
        (cluster, Some(endpoints))
    } else {
        cluster["type"] = json!("STRICT_DNS");
        cluster["load_assignment"] = endpoints;
        (cluster, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh;
    use prost::Message;

    #[test]
    fn a_canary_split_compiles_to_weighted_clusters_over_ads() {
        let mesh = mesh::parse(
            "listeners: [{ name: http, port: 10000 }]\n\
             services:\n\
             - { name: web, endpoints: ['127.0.0.1:8081', { address: '127.0.0.1:8082', weight: 3 }] }\n\
             - { name: web-canary, endpoints: ['localhost:8083'], protocol: http2 }\n\
             routes:\n\
             - { name: main, listener: http, to: [{ service: web, weight: 90 }, { service: web-canary, weight: 10 }], timeout: 2s }\n",
        )
        .unwrap();
        mesh.validate().unwrap();
        let resources = compile(&mesh).unwrap();
        assert_eq!(resources.count(type_url::LISTENER), 1);
        assert_eq!(resources.count(type_url::CLUSTER), 2);
        // Only the IP-addressed service goes over EDS.
        assert_eq!(resources.count(type_url::CLUSTER_LOAD_ASSIGNMENT), 1);
        let rc = resources.get(type_url::ROUTE_CONFIGURATION, "http").unwrap();
        let rc = RouteConfiguration::decode(rc.body.value.as_slice()).unwrap();
        let route = &rc.virtual_hosts[0].routes[0];
        let json = format!("{route:?}");
        assert!(json.contains("WeightedClusters"), "{json}");
        let canary = resources.get(type_url::CLUSTER, "web-canary").unwrap();
        let canary = Cluster::decode(canary.body.value.as_slice()).unwrap();
        assert!(
            canary
                .typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
        // Same config, same versions; one weight changed, only that resource's version changes.
        let again = compile(&mesh).unwrap();
        assert_eq!(again.version, resources.version);
        let mut changed = mesh.clone();
        changed.routes[0].to[1].weight = 20;
        let changed = compile(&changed).unwrap();
        assert_ne!(changed.version, resources.version);
        assert_eq!(
            changed.get(type_url::CLUSTER, "web").unwrap().version,
            resources.get(type_url::CLUSTER, "web").unwrap().version
        );
        assert_ne!(
            changed.get(type_url::ROUTE_CONFIGURATION, "http").unwrap().version,
            resources.get(type_url::ROUTE_CONFIGURATION, "http").unwrap().version
        );
    }
}
