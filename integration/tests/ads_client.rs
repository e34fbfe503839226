//! The proxy configured over ADS by `strait-control` (run in-process here: real gRPC over a real
//! socket), State of the World and delta: ready only once the first complete config is applied,
//! routes as pushed, follows a change, NACKs what it cannot apply (shown in `/config_dump`) while
//! serving on, and keeps serving with the control plane gone, converging once it is back.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn mesh(port: u16, a: SocketAddr, b: SocketAddr, service: &str) -> String {
    format!(
        "listeners: [{{ name: http, port: {port} }}]\n\
         services: [{{ name: a, endpoints: ['{a}'] }}, {{ name: b, endpoints: ['{b}'] }}]\n\
         routes: [{{ name: main, listener: http, to: [{{ service: {service} }}] }}]\n"
    )
}

/// Polls until a request is answered by `service`.
async fn wait_for_service(url: &str, service: &str) {
    let client = http1_client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = get(&client, url, &[]).await;
        if reply.status == 200 && reply.service() == service {
            return;
        }
        assert!(Instant::now() < deadline, "still answered by {} ({})", reply.service(), reply.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_from(url: &str, service: &str, n: usize) {
    let client = http1_client();
    for _ in 0..n {
        let reply = get(&client, url, &[]).await;
        assert_eq!((reply.status, reply.service().as_str()), (200, service), "{reply:?}");
    }
}

/// The listeners' `version_info` and the last rejection's details in `/config_dump`.
async fn listener_dump(proxy: &Proxy) -> (String, String) {
    let dump: serde_json::Value = serde_json::from_str(&proxy.admin_text("/config_dump").await).unwrap();
    let listeners = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(".ListenersConfigDump")))
        .cloned()
        .unwrap();
    let details = listeners["dynamic_listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|l| l["error_state"]["details"].as_str())
        .unwrap_or_default();
    (listeners["version_info"].as_str().unwrap_or_default().to_string(), details.to_string())
}

#[tokio::test]
async fn strait_proxy_follows_strait_control_sotw_and_delta() {
    let (a, b) = (echo("a").await, echo("b").await);
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let dir = TempDir::new("ads");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/");
        write_file(&dir.0, "mesh.yaml", &mesh(port, a, b, "a"));
        let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let stop = control_plane(&dir.0, xds).await;
        let admin = free_port();
        // Ready means the control plane's config is applied: traffic flows at once.
        let proxy = Proxy::start(&ads_bootstrap("strait-under-test", admin, xds, api_type), admin).await;
        all_from(&url, "a", 20).await;
        let (version, _) = listener_dump(&proxy).await;
        assert!(!version.is_empty(), "{api_type}: no ADS version in /config_dump");

        // A pushed change is followed.
        write_file(&dir.0, "mesh.yaml", &mesh(port, a, b, "b"));
        wait_for_service(&url, "b").await;
        all_from(&url, "b", 20).await;

        // A config the proxy cannot apply (its listener port is taken) is NACKed with the reason,
        // shown in /config_dump; the proxy keeps serving the last good config.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        write_file(&dir.0, "mesh.yaml", &mesh(taken_port, a, b, "b"));
        let deadline = Instant::now() + Duration::from_secs(15);
        let (kept, details) = loop {
            let (version, details) = listener_dump(&proxy).await;
            if !details.is_empty() {
                break (version, details);
            }
            assert!(Instant::now() < deadline, "{api_type}: no NACK in /config_dump");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(details.contains("cannot bind"), "{api_type}: {details}");
        assert_eq!(kept, listener_dump(&proxy).await.0);
        all_from(&url, "b", 20).await;

        // The control plane goes away: nothing fails meanwhile. It comes back with a new config: the
        // proxy reconnects and converges.
        drop(stop);
        tokio::time::sleep(Duration::from_millis(200)).await;
        all_from(&url, "b", 50).await;
        write_file(&dir.0, "mesh.yaml", &mesh(port, a, b, "a"));
        let stop = control_plane(&dir.0, xds).await;
        wait_for_service(&url, "a").await;
        all_from(&url, "a", 20).await;
        drop(stop);
        drop(proxy);
    }
}

/// `strait-control`'s ADS service serving whatever is published, on a free port.
async fn ads_server(
    initial: Arc<strait_control::resources::Resources>,
) -> (tokio::sync::watch::Sender<Arc<strait_control::resources::Resources>>, SocketAddr) {
    let (publish, resources) = tokio::sync::watch::channel(initial);
    let (_, stop) = tokio::sync::watch::channel(false);
    let ads = strait_control::ads::Ads::new(resources, stop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(ads.into_service(), tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (publish, addr)
}

/// The same resources with the route configuration's first route matching on an invalid regex.
fn with_broken_routes(good: &strait_control::resources::Resources) -> strait_control::resources::Resources {
    use prost::Message;
    use xds_proto::pb::envoy::config::route::v3::{RouteConfiguration, route_match::PathSpecifier};
    use xds_proto::type_url::{ADS_TYPES, ROUTE_CONFIGURATION};
    let mut items = Vec::new();
    for t in ADS_TYPES {
        for r in good.of_type(t) {
            let mut body = r.body.clone();
            if t == ROUTE_CONFIGURATION {
                let mut rc = RouteConfiguration::decode(body.value.as_slice()).unwrap();
                let regex = xds_proto::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "(unclosed".into(),
                    ..Default::default()
                };
                rc.virtual_hosts[0].routes[0].r#match.as_mut().unwrap().path_specifier =
                    Some(PathSpecifier::SafeRegex(regex));
                body.value = rc.encode_to_vec();
            }
            items.push((t, r.name.clone(), body));
        }
    }
    strait_control::resources::Resources::new(items)
}

#[tokio::test]
async fn config_dump_shows_what_came_over_ads_and_each_types_last_rejection() {
    let (a, b) = (echo("a").await, echo("b").await);
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/");
        let config = strait_control::mesh::parse(&mesh(port, a, b, "a")).unwrap();
        let good = Arc::new(strait_control::compile::compile(&config).unwrap());
        let (publish, xds) = ads_server(good.clone()).await;
        let admin = free_port();
        let proxy = Proxy::start(&ads_bootstrap("dumped", admin, xds, api_type), admin).await;
        all_from(&url, "a", 5).await;

        let dump: serde_json::Value = serde_json::from_str(&proxy.admin_text("/config_dump").await).unwrap();
        let (clusters, listeners) =
            (dump_section(&dump, "ClustersConfigDump").unwrap(), dump_section(&dump, "ListenersConfigDump").unwrap());
        let (routes, endpoints) =
            (dump_section(&dump, "RoutesConfigDump").unwrap(), dump_section(&dump, "EndpointsConfigDump").unwrap());
        let served = good.get(xds_proto::type_url::ROUTE_CONFIGURATION, "http").unwrap().version.clone();
        let route_version = routes["dynamic_route_configs"][0]["version_info"].as_str().unwrap();
        if api_type == "GRPC" {
            // State of the world: every type at the version the control plane served.
            assert_eq!(listeners["version_info"], good.version.as_str(), "{api_type}");
            assert_eq!(clusters["version_info"], good.version.as_str(), "{api_type}");
            assert_eq!(route_version, good.version, "{api_type}");
        } else {
            // Delta: each resource at its own version.
            assert_eq!(route_version, served, "{api_type}");
        }
        let listener = &listeners["dynamic_listeners"][0];
        assert_eq!(listener["name"], "http", "{api_type}: {listeners}");
        assert_eq!(listener["active_state"]["listener"]["name"], "http", "{api_type}");
        let names = |v: &serde_json::Value, field: &str| -> Vec<String> {
            v.as_array().unwrap().iter().map(|e| e[field]["name"].as_str().unwrap_or_default().to_string()).collect()
        };
        assert_eq!(names(&clusters["dynamic_active_clusters"], "cluster"), ["a", "b"], "{api_type}");
        assert!(
            names(&clusters["static_clusters"], "cluster").iter().all(|n| n != "a"),
            "{api_type}: a dynamic cluster listed as static"
        );
        assert_eq!(endpoints["dynamic_endpoint_configs"].as_array().unwrap().len(), 2, "{api_type}");
        assert_eq!(routes["dynamic_route_configs"][0]["route_config"]["name"], "http", "{api_type}");

        // Routes the proxy cannot accept: NACKed, the reason shown on the routes' dump; still serving.
        publish.send_replace(Arc::new(with_broken_routes(&good)));
        let deadline = Instant::now() + Duration::from_secs(15);
        let rejected = loop {
            let dump: serde_json::Value = serde_json::from_str(&proxy.admin_text("/config_dump").await).unwrap();
            let routes = dump_section(&dump, "RoutesConfigDump").unwrap();
            let rejected = routes["dynamic_route_configs"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|r| r["error_state"]["details"].as_str().map(str::to_string));
            if let Some(rejected) = rejected {
                assert_eq!(routes["dynamic_route_configs"][0]["version_info"], route_version, "{api_type}: kept");
                break rejected;
            }
            assert!(Instant::now() < deadline, "{api_type}: no rejection in the routes' dump: {routes}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            rejected.starts_with(
                "RouteConfiguration 'http': virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"
            ),
            "{rejected}"
        );
        all_from(&url, "a", 5).await;

        // Fixed: accepted, and the error state is gone.
        let fixed = strait_control::mesh::parse(&mesh(port, a, b, "b")).unwrap();
        publish.send_replace(Arc::new(strait_control::compile::compile(&fixed).unwrap()));
        wait_for_service(&url, "b").await;
        let dump: serde_json::Value = serde_json::from_str(&proxy.admin_text("/config_dump").await).unwrap();
        let routes = dump_section(&dump, "RoutesConfigDump").unwrap();
        assert!(!routes.to_string().contains("error_state"), "{api_type}: {routes}");
        drop(proxy);
    }
}

/// One route set for a listener (the same for Strait's and Envoy's).
fn routes_for(listener: &str) -> String {
    [
        "{ name: L-health, listener: L, match: { path: /healthz }, direct: { status: 200, body: ok } }",
        "{ name: L-old, listener: L, match: { prefix: /old }, redirect: { prefix: /new } }",
        "{ name: L-api, listener: L, match: { prefix: /api/ }, to: [{ service: b }], prefix_rewrite: /v2/ }",
        "{ name: L-canary, listener: L, match: { prefix: /, headers: { x-canary: 'yes' } }, to: [{ service: b }] }",
        "{ name: L-stamp, listener: L, match: { prefix: /stamp }, to: [{ service: a }], headers: { \
         request: { set: { x-team: blue }, add: { x-tag: two }, remove: [x-drop] }, \
         response: { set: { x-served-by: mesh }, add: { x-tag: back }, remove: [content-type] } } }",
        "{ name: L-main, listener: L, to: [{ service: a }] }",
    ]
    .iter()
    .map(|r| {
        format!(
            "- {}\n",
            r.replace("L-", &format!("{listener}-")).replace("listener: L", &format!("listener: {listener}"))
        )
    })
    .collect()
}

#[tokio::test]
async fn strait_and_envoy_driven_by_the_same_control_plane_answer_the_same() {
    if require_tool("envoy").is_none() {
        return;
    }
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = TempDir::new("ads-differential");
    let (strait_port, envoy_port) = (free_port(), free_port());
    // One control plane; each proxy gets its own listener (by node cluster) with the same routes.
    let mesh = format!(
        "listeners:\n\
         - {{ name: s, port: {strait_port}, nodes: [strait] }}\n\
         - {{ name: e, port: {envoy_port}, nodes: [envoy] }}\n\
         services: [{{ name: a, endpoints: ['{a}'] }}, {{ name: b, endpoints: ['{b}'] }}]\n\
         routes:\n{}{}",
        routes_for("s"),
        routes_for("e")
    );
    write_file(&dir.0, "mesh.yaml", &mesh);
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _stop = control_plane(&dir.0, xds).await;
    let bootstrap = |cluster: &str, admin: u16| peer_bootstrap(xds, cluster, admin);
    let (strait_admin, envoy_admin) = (free_port(), free_port());
    let _strait = Proxy::start(&bootstrap("strait", strait_admin), strait_admin).await;
    let _envoy = Envoy::start(&bootstrap("envoy", envoy_admin), envoy_admin).await.unwrap();

    let client = http1_client();
    for (path, headers) in [
        ("/", vec![]),
        ("/healthz", vec![]),
        ("/old/page?x=1", vec![]),
        ("/api/users", vec![]),
        ("/anything", vec![("x-canary", "yes")]),
        ("/stamp", vec![("x-team", "red"), ("x-tag", "one"), ("x-drop", "1")]),
    ] {
        let answer = |port: u16| {
            let (client, headers) = (client.clone(), headers.clone());
            async move {
                let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &headers).await;
                let upstream = if reply.status == 200 && reply.body != "ok" {
                    let json = reply.json();
                    let seen = ["x-team", "x-tag", "x-drop"].map(|h| json["headers"][h].as_str().map(str::to_string));
                    (reply.service(), json["path"].as_str().unwrap_or_default().to_string(), seen)
                } else {
                    (String::new(), reply.body.clone(), Default::default())
                };
                let back = ["x-served-by", "x-tag", "content-type"].map(|h| reply.header(h).map(str::to_string));
                (reply.status, upstream, back, reply.header("location").map(|l| l.replace(&port.to_string(), "PORT")))
            }
        };
        let strait = answer(strait_port).await;
        assert_eq!(strait, answer(envoy_port).await, "{path} {headers:?}");
        if path == "/stamp" {
            let some = |s: &str| Some(s.to_string());
            assert_eq!(strait.1.2, [some("blue"), some("one,two"), None], "headers upstream");
            assert_eq!(strait.2[..2], [some("mesh"), some("back")], "headers back");
            assert_eq!(strait.2[2], None, "content-type removed");
        }
    }
}

#[tokio::test]
async fn strait_proxy_runs_a_mesh_directory_standalone() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = TempDir::new("mesh-standalone");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    write_file(&dir.0, "mesh.yaml", &mesh(port, a, b, "a"));
    let admin = free_port();
    let child = std::process::Command::new(BIN)
        .args(["mesh", dir.0.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin}"), "--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut proxy = Proxy::adopt(child, admin);
    wait_ready("strait-proxy mesh", &mut proxy.child, proxy.admin, Duration::from_secs(20)).await;
    all_from(&url, "a", 10).await;
    write_file(&dir.0, "mesh.yaml", &mesh(port, a, b, "b"));
    wait_for_service(&url, "b").await;
    all_from(&url, "b", 10).await;
}
