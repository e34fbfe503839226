//! Lifecycle: readiness and admin, SIGHUP and `--watch` reloads (in-flight requests finish on the
//! old config, bad files are rejected while the old config serves, unchanged clusters keep their
//! pools, listeners come and go), and SIGTERM drain.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

fn config(admin: u16, port: u16, cluster: &str, a: SocketAddr, b: SocketAddr, extra_listener: Option<u16>) -> String {
    let routes = format!(
        "            virtual_hosts: [{{ name: v, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster}, timeout: 5s }} }}] }}]"
    );
    let mut yaml =
        http_bootstrap(admin, port, "", &routes, &(static_cluster("a", &[a], "") + &static_cluster("b", &[b], "")));
    if let Some(p) = extra_listener {
        let tcp = format!("{}  clusters:", tcp_listener("extra", p, "b", ""));
        yaml = yaml.replacen("  clusters:", &tcp, 1);
    }
    yaml
}

async fn service(port: u16, path: &str) -> String {
    get(&http1_client(), &format!("http://127.0.0.1:{port}{path}"), &[]).await.service()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_readiness_config_and_clusters() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (admin, port) = (free_port(), free_port());
    let proxy = Proxy::start(&config(admin, port, "a", a, b, None), admin).await;
    assert_eq!(proxy.admin_text("/ready").await, "LIVE\n");
    assert_eq!(proxy.admin_text("/live").await, "LIVE\n");
    let dump: serde_json::Value = serde_json::from_str(&proxy.admin_text("/config_dump").await).unwrap();
    let configs = dump["configs"].as_array().unwrap();
    let types: Vec<&str> = configs.iter().map(|c| c["@type"].as_str().unwrap()).collect();
    // Envoy 1.40's order for a static config: bootstrap, clusters, listeners, secrets.
    assert_eq!(
        types,
        vec![
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
        ]
    );
    assert_eq!(configs[2]["version_info"], "1");
    assert_eq!(configs[2]["static_listeners"][0]["listener"]["name"], "main");
    assert_eq!(configs[1]["static_clusters"][1]["cluster"]["name"], "b");
    let clusters: serde_json::Value = serde_json::from_str(&proxy.admin_text("/clusters?format=json").await).unwrap();
    assert_eq!(clusters["cluster_statuses"][0]["name"], "a");
    assert_eq!(
        clusters["cluster_statuses"][0]["host_statuses"][0]["address"]["socket_address"]["port_value"],
        a.port()
    );
    let stats = proxy.admin_text("/stats/prometheus").await;
    assert!(stats.contains("envoy_cluster_membership_healthy{envoy_cluster_name=\"a\"} 1"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_atomically_and_rejects_bad_files() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (admin, port, extra) = (free_port(), free_port(), free_port());
    let proxy = Proxy::start(&config(admin, port, "a", a, b, None), admin).await;
    assert_eq!(service(port, "/").await, "a");
    let cx_before = proxy.stat("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"a\"}").await;

    // A slow request in flight on the old config finishes there.
    let slow = tokio::spawn(async move { service(port, "/delay/800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.rewrite_config(&config(admin, port, "b", a, b, Some(extra)));
    proxy.signal("HUP");
    wait_for("the new route", async || service(port, "/").await == "b").await;
    assert_eq!(slow.await.unwrap(), "a", "in-flight request finished on the config it started with");
    // The added listener serves.
    let r = get(&http1_client(), &format!("http://127.0.0.1:{extra}/via-tcp"), &[]).await;
    assert_eq!(r.service(), "b");
    let dump = proxy.admin_text("/config_dump").await;
    assert!(dump.contains("\"version_info\": \"2\""), "{dump}");

    // A broken file is reported and the running config keeps serving.
    proxy.rewrite_config("static_resources: { clusters: [ { name: x, lb_policy: NOPE } ] }");
    proxy.signal("HUP");
    wait_for("the reload failure", async || proxy.stat("strait_config_reload_failed_total").await == 1.0).await;
    assert_eq!(service(port, "/").await, "b");
    assert!(proxy.admin_text("/config_dump").await.contains("\"version_info\": \"2\""));

    // Back to cluster a, dropping the extra listener: a's pool survived both swaps.
    proxy.rewrite_config(&config(admin, port, "a", a, b, None));
    proxy.signal("HUP");
    wait_for("the third config", async || service(port, "/").await == "a").await;
    assert_eq!(service(port, "/").await, "a");
    let cx_after = proxy.stat("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"a\"}").await;
    assert!(cx_after - cx_before <= 1.0, "cluster a kept its pool: {cx_before} -> {cx_after} connections");
    wait_for("the removed listener to close", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", extra)).await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_a_changed_file() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (admin, port) = (free_port(), free_port());
    let proxy = Proxy::start_with(&config(admin, port, "a", a, b, None), admin, &["--watch"]).await;
    assert_eq!(service(port, "/").await, "a");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.rewrite_config(&config(admin, port, "b", a, b, None));
    wait_for("the watched change", async || service(port, "/").await == "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (admin, port) = (free_port(), free_port());
    let mut proxy = Proxy::start(&config(admin, port, "a", a, b, None), admin).await;
    let h1 =
        tokio::spawn(async move { get(&http1_client(), &format!("http://127.0.0.1:{port}/delay/1000"), &[]).await });
    let h2 =
        tokio::spawn(async move { get(&http2_client(), &format!("http://127.0.0.1:{port}/delay/1000"), &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "no longer accepting");
    let (h1, h2) = (h1.await.unwrap(), h2.await.unwrap());
    assert_eq!((h1.status, h1.service().as_str()), (200, "a"));
    assert_eq!(h1.header("connection"), Some("close"), "HTTP/1.1 is told to close");
    assert_eq!((h2.status, h2.service().as_str()), (200, "a"));
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await, Some(0));
}
