//! The route configuration shared by the routing tests and the Envoy differential tests: it uses every
//! supported route field.

use super::{echo, static_cluster};

/// Clusters `a`, `b`, `c` (RANDOM) and `h2` (HTTP/2 upstream), each one echo upstream, plus `dead`
/// (nothing listens there).
pub async fn routing_fixture_clusters() -> String {
    let a = echo("a").await;
    let b = echo("b").await;
    let c = echo("c").await;
    let h2 = echo("h2").await;
    let dead = ([127, 0, 0, 1], super::free_port()).into();
    [
        static_cluster("a", &[a], ""),
        static_cluster("b", &[b], ""),
        static_cluster("c", &[c], "    lb_policy: RANDOM\n"),
        static_cluster("h2", &[h2], H2_OPTIONS),
        static_cluster("dead", &[dead], ""),
    ]
    .join("")
}

pub const H2_OPTIONS: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

pub const ROUTES: &str = r#"
            name: routes
            request_headers_to_add:
            - header: { key: x-level, value: config }
            response_headers_to_add:
            - header: { key: x-resp-level, value: config }
            virtual_hosts:
            - name: exact
              domains: ["exact.test"]
              response_headers_to_add:
              - header: { key: x-vh, value: exact }
              routes:
              - match: { prefix: / }
                route: { cluster: b }
            - name: suffix
              domains: ["*.wild.test"]
              routes:
              - match: { prefix: / }
                route: { cluster: c }
            - name: prefix
              domains: ["api.*"]
              routes:
              - match: { prefix: / }
                route: { cluster: h2 }
            - name: with-port
              domains: ["port.test:8080"]
              routes:
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "port vhost" } }
            - name: narrow
              domains: ["narrow.test"]
              routes:
              - match: { path: /only }
                route: { cluster: a }
            - name: default
              domains: ["*"]
              request_headers_to_add:
              - header: { key: x-level, value: vhost }
              routes:
              - match: { path: /exact }
                route: { cluster: b }
              - match: { prefix: /CaseIns, case_sensitive: false }
                route: { cluster: c }
              - match: { safe_regex: { regex: "/re/[0-9]+" } }
                route: { cluster: c }
              - match: { path_separated_prefix: /sep }
                route: { cluster: b }
              - match:
                  prefix: /hdr
                  headers:
                  - name: x-env
                    string_match: { exact: prod }
                  - name: x-debug
                    present_match: true
                    invert_match: true
                route: { cluster: b }
              - match:
                  prefix: /hdr
                  headers:
                  - name: x-version
                    range_match: { start: 2, end: 5 }
                route: { cluster: c }
              - match:
                  prefix: /hdr
                  headers:
                  - name: x-tag
                    string_match: { suffix: "-CANARY", ignore_case: true }
                route: { cluster: h2 }
              - match:
                  prefix: /q
                  query_parameters:
                  - name: debug
                    present_match: true
                  - name: user
                    string_match: { prefix: adm }
                route: { cluster: b }
              - match: { prefix: /rewrite/ }
                route: { cluster: a, prefix_rewrite: /new/, host_rewrite_literal: rewritten.test }
              - match: { prefix: /regexrw/ }
                route:
                  cluster: a
                  regex_rewrite:
                    pattern: { regex: "^/regexrw/(\\w+)/(\\w+)" }
                    substitution: "/\\2/\\1"
              - match: { prefix: /redirect }
                redirect: { https_redirect: true, path_redirect: /target, response_code: PERMANENT_REDIRECT }
              - match: { prefix: /moved }
                redirect: { host_redirect: other.test, prefix_rewrite: /v2, strip_query: true }
              - match: { prefix: /direct }
                direct_response: { status: 418, body: { inline_string: "I am a teapot" } }
              - match: { prefix: /split }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: a, weight: 75 }
                    - { name: b, weight: 25 }
              - match: { prefix: /delay/ }
                route: { cluster: a, timeout: 0.3s }
              - match: { prefix: /headers }
                request_headers_to_add:
                - header: { key: x-level, value: route }
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: { key: x-added, value: "yes" }
                - header: { key: x-absent-only, value: new }
                  append_action: ADD_IF_ABSENT
                request_headers_to_remove: [x-drop]
                response_headers_to_add:
                - header: { key: x-resp-route, value: "100%%" }
                response_headers_to_remove: [x-served-by]
                route: { cluster: a }
              - match: { prefix: /dead }
                route: { cluster: dead }
              - match: { prefix: /by-header-404 }
                route: { cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND }
              - match: { prefix: /by-header }
                route: { cluster_header: x-cluster }
              - match: { prefix: / }
                route: { cluster: a }
"#;

/// A bootstrap (for Strait or Envoy) that takes all its config over ADS from `xds`, State of the World
/// (`api_type` GRPC) or delta (DELTA_GRPC).
pub fn ads_bootstrap(node: &str, admin: u16, xds: std::net::SocketAddr, api_type: &str) -> String {
    strait_proxy::mesh::ads_bootstrap(node, "test", ([127, 0, 0, 1], admin).into(), xds, api_type)
}

/// `strait-control` (in-process) serving the mesh directory `dir` over ADS on `xds`, until the
/// returned sender is dropped or fired.
pub async fn control_plane(dir: &std::path::Path, xds: std::net::SocketAddr) -> tokio::sync::oneshot::Sender<()> {
    use std::time::{Duration, Instant};
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source = std::sync::Arc::new(strait_control::store::Directory(dir.to_path_buf()));
    tokio::spawn(strait_control::serve(source, xds, async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(xds).await.is_err() {
        assert!(Instant::now() < deadline, "the control plane did not listen on {xds}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop
}

/// An ADS bootstrap (SotW) for a proxy of node cluster `cluster`, which the mesh's `nodes:` use to
/// give it its own listeners.
pub fn peer_bootstrap(xds: std::net::SocketAddr, cluster: &str, admin: u16) -> String {
    ads_bootstrap("peer", admin, xds, "GRPC").replace("cluster: test", &format!("cluster: {cluster}"))
}

/// One section of an admin `/config_dump` (Strait's or Envoy's), by the end of its `@type`.
pub fn dump_section(dump: &serde_json::Value, kind: &str) -> Option<serde_json::Value> {
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(&format!(".{kind}"))))
        .cloned()
}
