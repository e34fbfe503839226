use super::*;
use crate::listeners::ListenerKind;
use crate::routing::Action;
use std::time::Duration;
use xds_proto::pb::envoy::config::listener::v3 as listener;
use xds_proto::pb::envoy::extensions::filters::http::router::v3 as router;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

fn bootstrap(clusters: &str) -> Bootstrap {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 10000 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: c }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}"#
    );
    parse_bootstrap(&yaml, Format::Yaml).unwrap()
}

const CLUSTER: &str = "  - name: c\n    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } } }] }] }\n";

#[test]
fn envoy_defaults_apply() {
    let s = build_snapshot(&bootstrap(CLUSTER), None, BuildOptions::default()).unwrap();
    let c = &s.clusters["c"];
    assert_eq!(c.config.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.config.lb_policy, crate::upstream::LbPolicy::RoundRobin);
    let ListenerKind::Http(hcm) = &s.listeners[0].chains[0].kind else { panic!("http listener") };
    assert_eq!(hcm.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(hcm.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(hcm.request_timeout, None);
    assert!(hcm.generate_request_id);
    let Action::Forward(f) = &hcm.routes.virtual_hosts[0].routes[0].action else { panic!("forward") };
    assert_eq!(f.timeout, Some(Duration::from_secs(15)));
}

#[test]
fn router_settings_are_read() {
    let mut b = bootstrap(CLUSTER);
    let l = &mut b.static_resources.as_mut().unwrap().listeners[0];
    let listener::filter::ConfigType::TypedConfig(any) = l.filter_chains[0].filters[0].config_type.as_mut().unwrap()
    else {
        panic!("typed config")
    };
    let mut hcm: hcm::HttpConnectionManager = prost::Message::decode(any.value.as_slice()).unwrap();
    let router = router::Router { suppress_envoy_headers: true, ..Default::default() };
    hcm.http_filters[0].config_type =
        Some(hcm::http_filter::ConfigType::TypedConfig(xds_proto::pb::google::protobuf::Any {
            type_url: xds_proto::type_url::ROUTER.into(),
            value: prost::Message::encode_to_vec(&router),
        }));
    any.value = prost::Message::encode_to_vec(&hcm);
    let s = build_snapshot(&b, None, BuildOptions::default()).unwrap();
    let ListenerKind::Http(h) = &s.listeners[0].chains[0].kind else { panic!("http listener") };
    assert!(h.suppress_envoy_headers);
}

#[test]
fn unchanged_clusters_are_carried_over_and_changed_ones_rebuilt() {
    let first = build_snapshot(&bootstrap(CLUSTER), None, BuildOptions::default()).unwrap();
    let same = build_snapshot(&bootstrap(CLUSTER), Some(&first), BuildOptions::default()).unwrap();
    assert!(Arc::ptr_eq(&first.clusters["c"], &same.clusters["c"]), "same config, same cluster state");
    let changed = CLUSTER.replace("  - name: c\n", "  - name: c\n    lb_policy: RANDOM\n");
    let next = build_snapshot(&bootstrap(&changed), Some(&same), BuildOptions::default()).unwrap();
    assert!(!Arc::ptr_eq(&same.clusters["c"], &next.clusters["c"]));
}

#[test]
fn a_changed_endpoint_set_keeps_the_pools_of_the_endpoints_that_stay() {
    let cluster = |ports: &[u16]| {
        let endpoints: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}"
                )
            })
            .collect();
        format!(
            "  - name: c\n    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
            endpoints.join(", ")
        )
    };
    let first = build_snapshot(&bootstrap(&cluster(&[9001, 9002])), None, BuildOptions::default()).unwrap();
    let next = build_snapshot(&bootstrap(&cluster(&[9001, 9003])), Some(&first), BuildOptions::default()).unwrap();
    let pool = |s: &Snapshot, port: u16| {
        s.clusters["c"].endpoints().all.iter().find(|e| e.addr.port() == port).map(|e| e.pool.clone()).unwrap()
    };
    assert!(Arc::ptr_eq(&pool(&first, 9001), &pool(&next, 9001)), "the endpoint that stays keeps its pool");
    assert_eq!(next.clusters["c"].endpoints().all.len(), 2);
    // A change in how connections are made (here the connect timeout) starts fresh pools.
    let slower = cluster(&[9001, 9003]).replace("  - name: c\n", "  - name: c\n    connect_timeout: 9s\n");
    let fresh = build_snapshot(&bootstrap(&slower), Some(&next), BuildOptions::default()).unwrap();
    assert!(!Arc::ptr_eq(&pool(&next, 9001), &pool(&fresh, 9001)));
}

#[test]
fn unsupported_fields_are_found_inside_typed_configs() {
    let mut b =
        bootstrap(&CLUSTER.replace("  - name: c\n", "  - name: c\n    per_connection_buffer_limit_bytes: 1024\n"));
    // An empty but present supported message (admin) must not be reported.
    b.admin = Some(Default::default());
    let found = fields::unsupported_fields(&b);
    let paths: Vec<&str> = found.iter().map(|u| u.path.as_str()).collect();
    assert_eq!(paths, vec!["static_resources.clusters[0].per_connection_buffer_limit_bytes"]);
    let strict = build_snapshot(&b, None, BuildOptions { strict: true }).unwrap_err().to_string();
    assert!(strict.contains("per_connection_buffer_limit_bytes: is not supported"), "{strict}");

    let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 1 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          tracing: {}
          route_config: { virtual_hosts: [{ name: v, domains: ["*"], cors: {}, routes: [] }] }
          http_filters: [{ name: envoy.filters.http.router }]
"#;
    let b = parse_bootstrap(yaml, Format::Yaml).unwrap();
    let found: Vec<String> = fields::unsupported_fields(&b).into_iter().map(|u| u.path).collect();
    assert_eq!(
        found,
        vec![
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].cors",
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing",
        ]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let clusters = "  - name: a\n    lb_policy: CLUSTER_PROVIDED\n  - name: b\n    connect_timeout: 0s\n";
    let err = build_snapshot(&bootstrap(clusters), None, BuildOptions::default()).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.0.len(), 3, "{text}");
    assert!(text.contains("clusters[0].lb_policy: CLUSTER_PROVIDED"), "{text}");
    assert!(text.contains("clusters[1].connect_timeout: must be greater than 0"), "{text}");
    assert!(text.contains("unknown cluster 'c'"), "{text}");
}
