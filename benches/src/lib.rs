//! Builders for the benchmarks: large route tables and clusters, made through the same conversions
//! the proxy uses for real config.

use std::sync::Arc;
use strait_proxy::routing::RouteTable;
use strait_proxy::upstream::Cluster;
use xds_proto::pb::envoy::config::cluster::v3 as cluster;
use xds_proto::pb::envoy::config::core::v3 as core;
use xds_proto::pb::envoy::config::endpoint::v3 as endpoint;
use xds_proto::pb::envoy::config::route::v3 as route;

/// One virtual host per `vhosts` domain (`svcN.example.com`) plus `*`, whose routes are `routes`
/// prefixes `/pathN/`, each with a header matcher on every tenth route.
pub fn route_table(vhosts: usize, routes: usize) -> RouteTable {
    let mk_routes = |n: usize| -> Vec<route::Route> {
        (0..n)
            .map(|i| route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix(format!("/path{i}/"))),
                    headers: if i % 10 == 0 {
                        vec![route::HeaderMatcher {
                            name: "x-tenant".into(),
                            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::PresentMatch(
                                false,
                            )),
                            ..Default::default()
                        }]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(format!("c{}", i % 10))),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect()
    };
    let mut virtual_hosts: Vec<route::VirtualHost> = (0..vhosts)
        .map(|v| route::VirtualHost {
            name: format!("vh{v}"),
            domains: vec![format!("svc{v}.example.com")],
            routes: mk_routes(10),
            ..Default::default()
        })
        .collect();
    virtual_hosts.push(route::VirtualHost {
        name: "default".into(),
        domains: vec!["*".into()],
        routes: mk_routes(routes),
        ..Default::default()
    });
    let rc = route::RouteConfiguration { name: "bench".into(), virtual_hosts, ..Default::default() };
    strait_proxy::xds::route_table(&rc).expect("valid generated route table")
}

/// A STATIC cluster of `n` endpoints (127.0.0.1:10000+i) with the given policy and weights 1..=weights.
fn cluster_proto(n: usize, weighted: bool) -> cluster::Cluster {
    let lb_endpoints = (0..n)
        .map(|i| endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(10_000 + i as u32)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            load_balancing_weight: weighted
                .then_some(xds_proto::pb::google::protobuf::UInt32Value { value: 1 + (i % 5) as u32 }),
            ..Default::default()
        })
        .collect();
    cluster::Cluster {
        name: "bench".into(),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: "bench".into(),
            endpoints: vec![endpoint::LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A STATIC cluster of `n` endpoints (weights 1-5 when `weighted`) balanced by `policy`.
pub fn cluster(n: usize, policy: cluster::cluster::LbPolicy, weighted: bool) -> Arc<Cluster> {
    let proto = cluster::Cluster { lb_policy: policy as i32, ..cluster_proto(n, weighted) };
    Cluster::new(strait_proxy::xds::cluster_config(&proto, &Default::default()).expect("valid generated cluster"))
}

/// The same, balanced by Strait's peak-EWMA (`load_balancing_policy` with its `TypedStruct`).
pub fn peak_ewma_cluster(n: usize, weighted: bool) -> Arc<Cluster> {
    use prost::Message;
    let typed = xds_proto::TypedStruct { type_url: xds_proto::PEAK_EWMA_TYPE.into(), value: Some(Default::default()) };
    let policy = cluster::load_balancing_policy::Policy {
        typed_extension_config: Some(core::TypedExtensionConfig {
            name: "strait.peak_ewma".into(),
            typed_config: Some(xds_proto::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/xds.type.v3.TypedStruct".into(),
                value: typed.encode_to_vec(),
            }),
        }),
    };
    let proto = cluster::Cluster {
        load_balancing_policy: Some(cluster::LoadBalancingPolicy { policies: vec![policy] }),
        ..cluster_proto(n, weighted)
    };
    Cluster::new(strait_proxy::xds::cluster_config(&proto, &Default::default()).expect("valid generated cluster"))
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether the proxy (Strait or Envoy) whose admin listens on `admin` answers `/ready` with 200.
pub fn admin_ready(admin: u16) -> bool {
    use std::io::{Read, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else { return false };
    let _ = s.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}
