//! A service's `traffic_policy` in the mesh YAML (Istio's DestinationRule shape): `strait-control`
//! compiles it onto the Envoy cluster and routes, and a Strait proxy and a real Envoy, both fed over
//! ADS by the same control plane, behave by it: consistent hashing on a header keeps a user on one
//! endpoint; active health checks move traffic off a failing priority-0 endpoint to priority 1 and
//! back once it recovers (balanced by peak-EWMA on Strait, by the LEAST_REQUEST fallback on Envoy);
//! outlier detection ejects an endpoint that keeps answering 500.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::scripted::Scripted;
use support::*;

fn mesh(strait_port: u16, envoy_port: u16, up: &[SocketAddr]) -> String {
    let routes = |listener: &str| {
        format!(
            "- {{ name: {listener}-sticky, listener: {listener}, match: {{ prefix: /sticky }}, to: [{{ service: sticky }}] }}\n\
             - {{ name: {listener}-failover, listener: {listener}, match: {{ prefix: /failover }}, to: [{{ service: failover }}] }}\n\
             - {{ name: {listener}-flaky, listener: {listener}, match: {{ prefix: /flaky }}, to: [{{ service: flaky }}] }}\n"
        )
    };
    format!(
        "listeners:\n\
         - {{ name: s, port: {strait_port}, nodes: [strait] }}\n\
         - {{ name: e, port: {envoy_port}, nodes: [envoy] }}\n\
         services:\n\
         - name: sticky\n  endpoints: ['{u0}', '{u1}', '{u2}']\n  traffic_policy: {{ load_balancer: maglev, hash_on: {{ header: x-user }} }}\n\
         - name: failover\n  endpoints: ['{u0}', {{ address: '{u2}', priority: 1 }}]\n  \
           traffic_policy:\n    load_balancer: peak_ewma\n    \
           health_check: {{ path: /healthz, interval: 100ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }}\n\
         - name: flaky\n  endpoints: ['{u1}', '{bad}']\n  \
           traffic_policy: {{ outlier_detection: {{ consecutive_5xx_errors: 3, interval: 1s, base_ejection_time: 60s, max_ejection_percent: 50 }} }}\n\
         routes:\n{}{}",
        routes("s"),
        routes("e"),
        u0 = up[0],
        u1 = up[1],
        u2 = up[2],
        bad = up[3],
    )
}

/// Which upstreams answered `n` requests to `path` (with `headers`).
async fn answered(port: u16, path: &str, headers: &[(&str, &str)], n: usize) -> (BTreeSet<String>, usize) {
    let client = http1_client();
    let (mut seen, mut failed) = (BTreeSet::new(), 0);
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), headers).await;
        if reply.status != 200 {
            failed += 1;
        }
        seen.insert(reply.header("x-upstream").unwrap_or_default().to_string());
    }
    (seen, failed)
}

/// Waits until requests to `path` all land on `want`.
async fn settles_on(port: u16, path: &str, want: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seen, _) = answered(port, path, &[], 10).await;
        if seen.len() == 1 && seen.contains(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{who}: {path} never settled on {want}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(port: u16, who: &str, healthy: &Scripted) {
    // Consistent hashing: one user, one endpoint; many users, several.
    let (one, _) = answered(port, "/sticky", &[("x-user", "ann")], 20).await;
    assert_eq!(one.len(), 1, "{who}: {one:?}");
    let mut spread = BTreeSet::new();
    for i in 0..30 {
        spread.extend(answered(port, "/sticky", &[("x-user", &format!("user-{i}"))], 1).await.0);
    }
    assert!(spread.len() >= 2, "{who}: 30 users all on {spread:?}");

    // Priority 0 healthy: everything there. Failing its checks: priority 1 takes over; back again.
    settles_on(port, "/failover", "u0", who).await;
    healthy.set_healthy(false);
    settles_on(port, "/failover", "u2", who).await;
    healthy.set_healthy(true);
    settles_on(port, "/failover", "u0", who).await;

    // The endpoint answering 500 is ejected after 3 in a row; then only the good one answers.
    let (_, failed) = answered(port, "/flaky", &[], 12).await;
    assert!((3..=6).contains(&failed), "{who}: {failed} failures before the ejection");
    let (seen, failed) = answered(port, "/flaky", &[], 20).await;
    assert_eq!((seen.len(), failed), (1, 0), "{who}: after the ejection: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_traffic_policy_drives_strait_and_envoy_alike() {
    let u0 = Scripted::always("u0", "ok").await;
    let u1 = Scripted::always("u1", "ok").await;
    let u2 = Scripted::always("u2", "ok").await;
    let bad = Scripted::always("bad", "500").await;
    let up = [u0.addr, u1.addr, u2.addr, bad.addr];
    let dir = TempDir::new("traffic-policy");
    let (strait_port, envoy_port) = (free_port(), free_port());
    write_file(&dir.0, "mesh.yaml", &mesh(strait_port, envoy_port, &up));
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _stop = control_plane(&dir.0, xds).await;

    let admin = free_port();
    let strait = Proxy::start(&peer_bootstrap(xds, "strait", admin), admin).await;
    scenario(strait_port, "strait", &u0).await;
    let clusters = strait.admin_text("/clusters").await;
    assert!(clusters.contains(&format!("failover::{}::priority::1", u2.addr)), "{clusters}");
    assert!(clusters.contains(&format!("flaky::{}::health_flags::/failed_outlier_check", bad.addr)), "{clusters}");
    let json = strait.admin_text("/clusters?format=json").await;
    assert!(json.contains("\"lb_policy\": \"PEAK_EWMA\""), "peak_ewma reaches the proxy: {json}");

    let envoy_admin = free_port();
    if let Some(_envoy) = Envoy::start(&peer_bootstrap(xds, "envoy", envoy_admin), envoy_admin).await {
        scenario(envoy_port, "envoy", &u0).await;
    }
}
