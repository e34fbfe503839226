//! Latency-aware balancing: of five endpoints one answers ten times slower (50 ms against 5 ms).
//! A cluster whose `load_balancing_policy` lists Strait's peak-EWMA first and LEAST_REQUEST second
//! runs on Strait as peak-EWMA and on a real Envoy (which skips the policy it does not know, as xDS
//! says) as LEAST_REQUEST; under concurrent load both send the slow endpoint much less than its fair
//! fifth, peak-EWMA least of all.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use support::scripted::Scripted;
use support::*;

fn bootstrap(admin: u16, port: u16, upstreams: &[SocketAddr]) -> String {
    let route_config = one_virtual_host(
        "\
         \x20             - match: { prefix: / }\n                route: { cluster: latency }\n",
    );
    let policy = "    load_balancing_policy:\n      policies:\n\
         \x20     - typed_extension_config:\n          name: strait.peak_ewma\n          typed_config:\n\
         \x20           '@type': type.googleapis.com/xds.type.v3.TypedStruct\n\
         \x20           type_url: type.googleapis.com/strait.lb.v1.PeakEwma\n\
         \x20           value: { decay: 10s, default_rtt: 5ms }\n\
         \x20     - typed_extension_config:\n          name: envoy.load_balancing_policies.least_request\n          typed_config:\n\
         \x20           '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest\n\
         \x20           choice_count: 2\n";
    http_bootstrap(admin, port, "", &route_config, &static_cluster("latency", upstreams, policy))
}

/// Percent of the requests each upstream answered: `workers` clients, `each` requests apiece.
async fn shares(port: u16, workers: usize, each: usize) -> BTreeMap<String, f64> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = Vec::new();
            for _ in 0..each {
                let reply = get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await;
                assert_eq!(reply.status, 200, "{reply:?}");
                seen.push(reply.header("x-upstream").unwrap_or_default().to_string());
            }
            seen
        }));
    }
    let mut counts = BTreeMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_insert(0.0) += 100.0 / (workers * each) as f64;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_and_least_request_steer_away_from_a_slow_endpoint() {
    let mut upstreams = vec![Scripted::always("slow", "slow-50").await.addr];
    for name in ["f1", "f2", "f3", "f4"] {
        upstreams.push(Scripted::always(name, "slow-5").await.addr);
    }
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, &upstreams), admin).await;
    let ours = shares(port, 8, 100).await;
    let json = strait.admin_text("/clusters?format=json").await;
    assert!(json.contains("\"lb_policy\": \"PEAK_EWMA\""), "{json}");
    let slow = ours.get("slow").copied().unwrap_or(0.0);
    assert!(slow < 8.0, "peak-EWMA sent the slow endpoint {slow:.1}% (fair share 20%): {ours:?}");
    assert_eq!(ours.len(), 5, "the slow one is still tried now and then, the others all used: {ours:?}");

    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(_envoy) = Envoy::start(&bootstrap(envoy_admin, envoy_port, &upstreams), envoy_admin).await {
        let theirs = shares(envoy_port, 8, 100).await;
        let envoy_slow = theirs.get("slow").copied().unwrap_or(0.0);
        assert!(envoy_slow < 15.0, "Envoy's least request sent the slow endpoint {envoy_slow:.1}%: {theirs:?}");
        assert!(slow < envoy_slow, "peak-EWMA {slow:.1}% vs Envoy's least request {envoy_slow:.1}%");
    }
}
