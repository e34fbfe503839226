//! Priority levels (`LocalityLbEndpoints.priority`), the overprovisioning factor and panic, with
//! endpoint health from the config (`health_status`): traffic stays at priority 0 while enough of
//! it is healthy, spills to priority 1 by Envoy's formula, goes to degraded endpoints only for what
//! the healthy ones cannot take, and in panic spreads over every endpoint; with locality-weighted
//! balancing, localities share by weight times availability. The same bootstrap runs on a real
//! Envoy, whose shares must agree with ours.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use support::scripted::Scripted;
use support::*;

/// A cluster of priority levels, each a list of (upstream index, EDS health), with an optional
/// `load_assignment.policy` line.
fn cluster(name: &str, up: &[SocketAddr], levels: &[&[(usize, &str)]], policy: &str) -> String {
    let mut out =
        format!("  - name: {name}\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n");
    out += policy;
    out += "      endpoints:\n";
    for (priority, level) in levels.iter().enumerate() {
        out += &format!("      - priority: {priority}\n        lb_endpoints:\n");
        for (i, health) in level.iter() {
            out += &format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          health_status: {health}\n",
                up[*i].ip(),
                up[*i].port()
            );
        }
    }
    out
}

fn bootstrap(admin: u16, port: u16, up: &[SocketAddr]) -> String {
    let names = ["normal", "spill", "factor", "degraded", "short", "total", "localities"];
    let routes: String = names
        .iter()
        .map(|n| format!("              - match: {{ prefix: /{n} }}\n                route: {{ cluster: {n} }}\n"))
        .collect();
    let route_config = one_virtual_host(&routes);
    let (h, u, d) = ("HEALTHY", "UNHEALTHY", "DEGRADED");
    let clusters = [
        cluster("normal", up, &[&[(0, h), (1, h), (2, h)], &[(3, h), (4, h)]], ""),
        // P0: 1 of 3 healthy, 1.4 x 33% = 46%; the other 54% spill to P1.
        cluster("spill", up, &[&[(0, h), (1, u), (2, u)], &[(3, h), (4, h)]], ""),
        // No overprovisioning: P0's 2 of 3 take 66%, P1 the rest.
        cluster(
            "factor",
            up,
            &[&[(0, h), (1, h), (2, u)], &[(3, h), (4, h)]],
            "      policy: { overprovisioning_factor: 100 }\n",
        ),
        // Healthy 46% + degraded 46% = 92%, scaled to 100: half to each; 66% available, no panic.
        cluster("degraded", up, &[&[(0, h), (1, d), (2, u)]], ""),
        // 2 of 5 healthy: short of 100% and 40% < 50%: panic, all five take traffic.
        cluster("short", up, &[&[(0, h), (1, h), (2, u), (3, u), (4, u)]], ""),
        // Nothing healthy: every level in panic, load by size (3/5 and 2/5).
        cluster("total", up, &[&[(0, u), (1, u), (2, u)], &[(3, u), (4, u)]], ""),
    ]
    .concat();
    // Locality-weighted: L0 (weight 1) u0, u1; L1 (weight 3) u2 and an unhealthy u3, so 3 x
    // min(1, 1.4 x 1/2) = 2.1; L2 (no weight) u4 gets nothing. u2: 2.1 / 3.1 = 68%.
    let endpoint = |i: usize, health: &str| {
        format!(
            "        - {{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}, health_status: {health} }}\n",
            up[i].ip(),
            up[i].port()
        )
    };
    let localities = format!(
        "  - name: localities\n    connect_timeout: 1s\n    common_lb_config: {{ locality_weighted_lb_config: {{}} }}\n    \
         load_assignment:\n      cluster_name: localities\n      endpoints:\n\
         \x20     - locality: {{ zone: a }}\n        load_balancing_weight: 1\n        lb_endpoints:\n{}{}\
         \x20     - locality: {{ zone: b }}\n        load_balancing_weight: 3\n        lb_endpoints:\n{}{}\
         \x20     - locality: {{ zone: c }}\n        lb_endpoints:\n{}",
        endpoint(0, h),
        endpoint(1, h),
        endpoint(2, h),
        endpoint(3, u),
        endpoint(4, h),
    );
    http_bootstrap(admin, port, "", &route_config, &(clusters + &localities))
}

/// The share (percent) of `n` requests to `path` each upstream answered.
async fn shares(port: u16, path: &str, n: usize) -> BTreeMap<String, f64> {
    let client = http1_client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &[]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        *counts.entry(reply.header("x-upstream").unwrap_or_default().to_string()).or_insert(0.0) += 1.0;
    }
    counts.values_mut().for_each(|c| *c = *c * 100.0 / n as f64);
    counts
}

fn share_of(shares: &BTreeMap<String, f64>, upstreams: &[&str]) -> f64 {
    upstreams.iter().map(|u| shares.get(*u).copied().unwrap_or(0.0)).sum()
}

/// Each case: the path, the upstreams of interest, and the share they should get (percent).
async fn scenario(port: u16, who: &str) {
    let normal = shares(port, "/normal", 200).await;
    assert_eq!(share_of(&normal, &["u0", "u1", "u2"]), 100.0, "{who}: all of P0 healthy keeps everything: {normal:?}");

    let close = |got: f64, want: f64, what: &str, all: &BTreeMap<String, f64>| {
        assert!((got - want).abs() <= 6.0, "{who}: {what}: {got:.1}% (want {want}%): {all:?}");
    };
    let spill = shares(port, "/spill", 1000).await;
    close(share_of(&spill, &["u0"]), 46.0, "spill: P0's one healthy endpoint", &spill);
    close(share_of(&spill, &["u3", "u4"]), 54.0, "spill: P1", &spill);
    assert_eq!(share_of(&spill, &["u1", "u2"]), 0.0, "{who}: unhealthy P0 endpoints get nothing: {spill:?}");

    let factor = shares(port, "/factor", 1000).await;
    close(share_of(&factor, &["u0", "u1"]), 66.0, "overprovisioning 100: P0", &factor);

    let degraded = shares(port, "/degraded", 1000).await;
    close(share_of(&degraded, &["u1"]), 50.0, "degraded endpoint", &degraded);
    assert_eq!(share_of(&degraded, &["u2"]), 0.0, "{who}: no panic, the unhealthy one gets nothing: {degraded:?}");

    let short = shares(port, "/short", 500).await;
    assert_eq!(short.len(), 5, "{who}: in panic all five endpoints take traffic: {short:?}");

    let localities = shares(port, "/localities", 1000).await;
    close(share_of(&localities, &["u2"]), 68.0, "locality-weighted: the heavier locality", &localities);
    assert_eq!(share_of(&localities, &["u3", "u4"]), 0.0, "{who}: unhealthy, and unweighted locality: {localities:?}");

    let total = shares(port, "/total", 1000).await;
    assert_eq!(total.len(), 5, "{who}: total panic, every endpoint: {total:?}");
    close(share_of(&total, &["u0", "u1", "u2"]), 60.0, "total panic: P0 by its size", &total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_spreads_over_priorities_as_envoys_does() {
    let mut upstreams = Vec::new();
    for name in ["u0", "u1", "u2", "u3", "u4"] {
        upstreams.push(Scripted::always(name, "ok").await.addr);
    }
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, &upstreams), admin).await;
    scenario(port, "strait").await;
    assert!(strait.stat("envoy_cluster_lb_healthy_panic{envoy_cluster_name=\"short\"}").await >= 500.0);
    assert_eq!(strait.stat("envoy_cluster_lb_healthy_panic{envoy_cluster_name=\"spill\"}").await, 0.0);
    let clusters_page = |text: String| {
        for line in [
            format!("spill::{}::priority::1", upstreams[3]),
            format!("spill::{}::health_flags::/failed_eds_health", upstreams[1]),
            format!("degraded::{}::health_flags::/degraded_eds_health", upstreams[1]),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
    };
    clusters_page(strait.admin_text("/clusters").await);

    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&bootstrap(envoy_admin, envoy_port, &upstreams), envoy_admin).await {
        scenario(envoy_port, "envoy").await;
        let text = get_text(&format!("http://{}/clusters", envoy.admin)).await.unwrap().1;
        clusters_page(text);
    }
}
