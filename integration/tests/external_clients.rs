//! Real clients nobody here wrote: `curl` (HTTP/1.1 and HTTP/2 prior knowledge), `h2load`, and Python
//! `grpcio` for unary and all streaming kinds against a grpcio server behind the proxy. Skipped
//! loudly when a tool is missing; in CI (`CI=true`) a missing tool fails.

#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::*;

async fn proxy_to(clusters: &str, cluster: &str) -> (Proxy, u16) {
    let (admin, port) = (free_port(), free_port());
    let routes = format!(
        "            virtual_hosts: [{{ name: v, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]"
    );
    (Proxy::start(&http_bootstrap(admin, port, "", &routes, clusters), admin).await, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2() {
    let Some(curl) = require_tool("curl") else { return };
    let a = echo("a").await;
    let (_proxy, port) = proxy_to(&static_cluster("a", &[a], ""), "a").await;
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2")] {
        let out = tokio::process::Command::new(&curl)
            .args(["-sS", flag, "-w", "\n%{http_version} %{response_code}", "-H", "x-from: curl"])
            .arg(format!("http://127.0.0.1:{port}/curl?x=1"))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(tail, format!("{} 200", version.trim_start_matches("HTTP/")), "{text}");
        assert_eq!(json["path"], "/curl?x=1");
        assert_eq!(json["headers"]["x-from"], "curl");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_sees_no_failures() {
    let Some(h2load) = require_tool("h2load") else { return };
    let a = echo("a").await;
    let (proxy, port) = proxy_to(&static_cluster("a", &[a], ""), "a").await;
    let out = tokio::process::Command::new(h2load)
        .args(["-n", "5000", "-c", "10", "-m", "10"])
        .arg(format!("http://127.0.0.1:{port}/load"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5000 total, 5000 started, 5000 done, 5000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 5000 2xx"), "{text}");
    assert_eq!(
        proxy.stat("envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"a\",envoy_response_code_class=\"2\"}").await,
        5000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_through_the_proxy_to_a_grpcio_server() {
    let Some(python) = require_tool("python3") else { return };
    let has_grpc = Command::new(&python).args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    if !has_grpc {
        assert!(!in_ci(), "Python grpcio is not installed (CI=true): .ci/run must install it");
        eprintln!("\n*** SKIPPING: Python grpcio is not installed; this test runs in CI ***\n");
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration/python/grpc_echo.py");
    let upstream_port = free_port();
    let mut server = Command::new(&python)
        .arg(&script)
        .args(["server", &upstream_port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let cluster = static_cluster("grpc", &[([127, 0, 0, 1], upstream_port).into()], H2_OPTIONS);
    let (_proxy, port) = proxy_to(&cluster, "grpc").await;
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["client", &format!("127.0.0.1:{port}")])
        .output()
        .await
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for label in ["unary", "unary trailer", "server stream", "client stream", "bidi", "fail status", "fail details"] {
        assert!(text.lines().any(|l| l == format!("ok {label}")), "missing '{label}':\n{text}");
    }
}
