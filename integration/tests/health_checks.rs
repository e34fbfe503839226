//! Active health checks (`health_checks`) against upstreams whose health probes are switched during
//! the test: an endpoint that starts failing its HTTP check stops taking traffic after
//! `unhealthy_threshold` probes and takes it again after `healthy_threshold` good ones; TCP (connect,
//! and bytes sent and expected) and gRPC (`grpc.health.v1`) checks fail a dead or NOT_SERVING
//! endpoint. The same bootstrap runs on a real Envoy, which must route alike.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::scripted::Scripted;
use support::*;

const TIMING: &str =
    "timeout: 0.5s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2";

fn bootstrap(admin: u16, port: u16, http: [SocketAddr; 2], grpc: [SocketAddr; 2], dead: SocketAddr) -> String {
    let route_config = one_virtual_host(
        "\
         \x20             - match: { prefix: /http }\n                route: { cluster: http }\n\
         \x20             - match: { prefix: /tcp }\n                route: { cluster: tcp }\n\
         \x20             - match: { prefix: /grpc }\n                route: { cluster: grpc }\n",
    );
    // "GET /healthz" sent, "200 OK" expected back: an HTTP check written as a TCP one.
    let tcp = format!(
        "    health_checks: [{{ {TIMING}, tcp_health_check: {{ send: {{ text: '{}' }}, receive: [{{ text: '{}' }}] }} }}]\n",
        hex(b"GET /healthz HTTP/1.1\r\nhost: hc\r\n\r\n"),
        hex(b"200 OK")
    );
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
              \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
              explicit_http_config: { http2_protocol_options: {} }\n";
    let clusters = [
        static_cluster(
            "http",
            &http,
            &format!("    health_checks: [{{ {TIMING}, http_health_check: {{ path: /healthz }} }}]\n"),
        ),
        static_cluster("tcp", &[http[0], dead], &tcp),
        static_cluster(
            "grpc",
            &grpc,
            &format!("{h2}    health_checks: [{{ {TIMING}, grpc_health_check: {{ service_name: echo }} }}]\n"),
        ),
    ]
    .concat();
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which upstreams answered `n` requests to `path`.
async fn answered_by(port: u16, path: &str, n: usize) -> BTreeSet<String> {
    let client = http1_client();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &[("x-script", "ok")]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        seen.insert(reply.header("x-upstream").unwrap_or_default().to_string());
    }
    seen
}

/// Waits until `n` requests in a row to `path` are all answered by exactly `expected`.
async fn until_answered_by(port: u16, path: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = answered_by(port, path, 12).await;
        if seen == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: still answered by {seen:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(port: u16, b: &Scripted, g2: &Scripted) {
    until_answered_by(port, "/http", &["a", "b"]).await;
    b.set_healthy(false);
    until_answered_by(port, "/http", &["a"]).await;
    b.set_healthy(true);
    until_answered_by(port, "/http", &["a", "b"]).await;
    // The dead endpoint fails its TCP check; the live one passes the bytes check.
    until_answered_by(port, "/tcp", &["a"]).await;
    // gRPC: NOT_SERVING fails, SERVING passes.
    g2.set_healthy(false);
    until_answered_by(port, "/grpc", &["g1"]).await;
    g2.set_healthy(true);
    until_answered_by(port, "/grpc", &["g1", "g2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probes_take_endpoints_out_and_passing_ones_bring_them_back() {
    let (a, b) = (Scripted::start("a").await, Scripted::start("b").await);
    let (g1, g2) = (Scripted::start("g1").await, Scripted::start("g2").await);
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (port, admin) = (free_port(), free_port());
    let config = |admin, port| bootstrap(admin, port, [a.addr, b.addr], [g1.addr, g2.addr], dead);
    let strait = Proxy::start(&config(admin, port), admin).await;
    scenario(port, &b, &g2).await;
    let clusters = strait.admin_text("/clusters").await;
    assert!(clusters.contains(&format!("tcp::{dead}::health_flags::/failed_active_hc")), "{clusters}");
    assert!(clusters.contains(&format!("http::{}::health_flags::healthy", b.addr)), "{clusters}");
    assert!(strait.stat("envoy_cluster_health_check_failure{envoy_cluster_name=\"http\"}").await >= 2.0);

    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&config(envoy_admin, envoy_port), envoy_admin).await {
        scenario(envoy_port, &b, &g2).await;
        let (_, text) = get_text(&format!("http://{}/clusters", envoy.admin)).await.unwrap();
        assert!(text.contains(&format!("tcp::{dead}::health_flags::/failed_active_hc")), "{text}");
    }
}
