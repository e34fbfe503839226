use super::*;
use http::{HeaderMap, Method};

fn table(yaml: &str) -> RouteTable {
    let rc: xds_proto::pb::envoy::config::route::v3::RouteConfiguration =
        xds_proto::parse_document(yaml, xds_proto::Format::Yaml).unwrap();
    crate::xds::route_table(&rc).unwrap()
}

fn find<'a>(t: &'a RouteTable, authority: &str, path: &str, headers: &HeaderMap) -> Option<&'a str> {
    let req = RequestView { authority, path_and_query: path, method: &Method::GET, headers };
    t.find(&req).map(|(_, r)| r.name.as_str())
}

#[test]
fn first_matching_route_wins_in_order() {
    let t = table(
        r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - { name: grpc, match: { prefix: /, grpc: {} }, route: { cluster: g } }
  - { name: api, match: { prefix: /api }, route: { cluster: a } }
  - { name: all, match: { prefix: / }, route: { cluster: b } }
"#,
    );
    let none = HeaderMap::new();
    assert_eq!(find(&t, "x", "/api/v1", &none), Some("api"));
    assert_eq!(find(&t, "x", "/other", &none), Some("all"));
    let mut grpc = HeaderMap::new();
    grpc.insert("content-type", "application/grpc+proto".parse().unwrap());
    assert_eq!(find(&t, "x", "/api/v1", &grpc), Some("grpc"));
}

#[test]
fn ignore_port_in_host_matching() {
    let t = table(
        r#"
ignore_port_in_host_matching: true
virtual_hosts:
- { name: v, domains: ["a.test"], routes: [{ name: r, match: { prefix: / }, route: { cluster: a } }] }
"#,
    );
    assert_eq!(find(&t, "a.test:8080", "/", &HeaderMap::new()), Some("r"));
}

#[test]
fn weighted_clusters_pick_by_cumulative_weight() {
    let w = WeightedClusters::new(vec![("a".into(), 1), ("zero".into(), 0), ("b".into(), 3)]);
    assert_eq!(w.total, 4);
    assert_eq!(w.pick_with(0), "a");
    assert_eq!(w.pick_with(1), "b");
    assert_eq!(w.pick_with(3), "b");
}

#[test]
fn most_specific_header_mutations_wins_reverses_the_order() {
    let yaml = |flag: bool| {
        format!(
            r#"
most_specific_header_mutations_wins: {flag}
request_headers_to_add: [{{ header: {{ key: x-l, value: config }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}]
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - name: r
    match: {{ prefix: / }}
    route: {{ cluster: a }}
    request_headers_to_add: [{{ header: {{ key: x-l, value: route }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}]
"#
        )
    };
    for (flag, winner) in [(false, "config"), (true, "route")] {
        let t = table(&yaml(flag));
        let (vh, r) = (&t.virtual_hosts[0], &t.virtual_hosts[0].routes[0]);
        let mut h = HeaderMap::new();
        for level in t.mutations(vh, r, true) {
            level.apply(&mut h);
        }
        assert_eq!(h["x-l"], winner);
    }
}
