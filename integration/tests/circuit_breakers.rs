//! Circuit breakers (`circuit_breakers.thresholds`) with a scripted upstream that holds requests:
//! the request over `max_requests` is answered at once with 503 `UO` and counted; a retry over
//! `max_retries` is not made and counted; at `max_connections` (of the cluster, or per endpoint with
//! `per_host_thresholds`) a request waits for a connection and
//! gets one when another closes, while one more than `max_pending_requests` is answered at once;
//! places free up as requests end. The same bootstrap runs on a real Envoy, which must answer and
//! count the same.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::scripted::Scripted;
use support::*;

fn bootstrap(admin: u16, port: u16, upstream: SocketAddr) -> String {
    let route_config = one_virtual_host(
        "\
         \x20             - match: { prefix: /hold }\n                route: { cluster: limited, timeout: 1.5s }\n\
         \x20             - match: { prefix: /retry }\n                route: { cluster: limited, timeout: 1s, \
         retry_policy: { retry_on: 5xx, num_retries: 1 } }\n\
         \x20             - match: { prefix: /pooled/hold }\n                route: { cluster: pooled, timeout: 1s }\n\
         \x20             - match: { prefix: /pooled/wait }\n                route: { cluster: pooled, timeout: 10s }\n\
         \x20             - match: { prefix: /per_host/hold }\n                route: { cluster: per_host, timeout: 1s }\n\
         \x20             - match: { prefix: /per_host/wait }\n                route: { cluster: per_host, timeout: 10s }\n",
    );
    let breakers = "    circuit_breakers:\n      thresholds:\n      - { priority: DEFAULT, max_requests: 3, max_retries: 1 }\n      \
                    - { priority: HIGH, max_requests: 100, max_connections: 4294967295 }\n";
    let pooled = "    circuit_breakers:\n      thresholds: [{ max_connections: 2, max_pending_requests: 1 }]\n";
    // The same limits with the connection limit per endpoint instead (one endpoint here).
    let per_host = "    circuit_breakers:\n      thresholds: [{ max_pending_requests: 1 }]\n      \
                    per_host_thresholds: [{ max_connections: 2 }]\n";
    let clusters = static_cluster("limited", &[upstream], breakers)
        + &static_cluster("pooled", &[upstream], pooled)
        + &static_cluster("per_host", &[upstream], per_host);
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

/// `max_connections: 2, max_pending_requests: 1`: two held requests take both connections; a third
/// waits (pending) and a fourth overflows at once; when the held ones time out and their connections
/// close, the waiting one gets a new connection and its answer.
async fn pending_scenario(who: &str, port: u16, upstream: &Scripted, cluster: &str) {
    let mut held = Vec::new();
    for i in 0..2 {
        let client = http1_client();
        let id = format!("{who}-{cluster}-hold-{i}");
        let req = request(port, &format!("/{cluster}/hold"), &id, "hang");
        held.push(tokio::spawn(async move { send(&client, req).await.status }));
        seen(upstream, &id, 1).await;
    }
    let wait_id = format!("{who}-{cluster}-wait");
    let wait_req = request(port, &format!("/{cluster}/wait"), &wait_id, "ok");
    let waiting = tokio::spawn(async move { send(&http1_client(), wait_req).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(upstream.attempts(&wait_id).is_empty(), "{who}: a third connection was opened past max_connections");
    let client = http1_client();
    let over = send(&client, request(port, &format!("/{cluster}/wait"), &format!("{who}-{cluster}-over"), "ok")).await;
    assert_eq!(over.status, 503, "{who}: over max_pending_requests: {over:?}");
    assert_eq!(over.body, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "{who}");
    for h in held {
        assert_eq!(h.await.unwrap(), 504, "{who}");
    }
    assert_eq!(waiting.await.unwrap(), 200, "{who}: the pending request got a connection once one closed");
    assert_eq!(upstream.attempts(&wait_id).len(), 1, "{who}");
}

/// Waits until the upstream has seen `n` attempts for `id`.
async fn seen(upstream: &Scripted, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.attempts(id).len() < n {
        assert!(Instant::now() < deadline, "{id}: the upstream saw {} attempts, not {n}", upstream.attempts(id).len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request(port: u16, path: &str, id: &str, script: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .header("x-test-id", id)
        .header("x-script", script)
        .body(Default::default())
        .unwrap()
}

/// Runs the scenario against one proxy; returns its counters (pending overflow, retry overflow).
async fn scenario(who: &str, port: u16, upstream: &Scripted) {
    // Three requests held by the upstream fill max_requests: 3.
    let mut held = Vec::new();
    for i in 0..3 {
        let client = http1_client();
        let id = format!("{who}-hold-{i}");
        let req = request(port, "/hold", &id, "hang");
        held.push(tokio::spawn(async move { send(&client, req).await.status }));
        seen(upstream, &id, 1).await;
    }
    // The fourth is answered at once, never reaching the upstream.
    let client = http1_client();
    let over = send(&client, request(port, "/hold", &format!("{who}-over"), "ok")).await;
    assert_eq!(over.status, 503, "{who}: {over:?}");
    assert_eq!(over.body, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "{who}");
    assert!(upstream.attempts(&format!("{who}-over")).is_empty(), "{who}: the overflowed request went upstream");
    // The held ones time out (504); their places free up.
    for h in held {
        assert_eq!(h.await.unwrap(), 504, "{who}");
    }
    let after = send(&client, request(port, "/hold", &format!("{who}-after"), "ok")).await;
    assert_eq!(after.status, 200, "{who}: a place freed up: {after:?}");

    // max_retries: 1. A's retry is in flight (held by the upstream) when B fails: B is not retried.
    let a_client = http1_client();
    let a_id = format!("{who}-retry-a");
    let a_req = request(port, "/retry", &a_id, "503,hang");
    let a = tokio::spawn(async move { send(&a_client, a_req).await.status });
    seen(upstream, &a_id, 2).await;
    let b_id = format!("{who}-retry-b");
    let b = send(&client, request(port, "/retry", &b_id, "503,ok")).await;
    assert_eq!((b.status, upstream.attempts(&b_id).len()), (503, 1), "{who}: B retried past max_retries");
    assert_eq!(a.await.unwrap(), 504, "{who}");
    // With A done, C's retry is made.
    let c_id = format!("{who}-retry-c");
    let c = send(&client, request(port, "/retry", &c_id, "503,ok")).await;
    assert_eq!((c.status, upstream.attempts(&c_id).len()), (200, 2), "{who}: C");
}

/// Envoy's counter `cluster.<cluster>.<name>`.
async fn envoy_counter(admin: SocketAddr, cluster: &str, name: &str) -> f64 {
    let (_, text) = get_text(&format!("http://{admin}/stats?filter=^cluster\\.{cluster}\\.{name}$")).await.unwrap();
    text.lines().find_map(|l| l.rsplit(": ").next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_trip_at_their_thresholds_as_envoys_do() {
    let upstream = Scripted::start("limited").await;
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, upstream.addr), admin).await;
    scenario("strait", port, &upstream).await;
    pending_scenario("strait", port, &upstream, "pooled").await;
    pending_scenario("strait", port, &upstream, "per_host").await;
    let (limited, pooled) = ("{envoy_cluster_name=\"limited\"}", "{envoy_cluster_name=\"pooled\"}");
    let per_host = "{envoy_cluster_name=\"per_host\"}";
    let ours = [
        strait.stat(&format!("envoy_cluster_upstream_rq_active_overflow{limited}")).await,
        strait.stat(&format!("envoy_cluster_upstream_rq_retry_overflow{limited}")).await,
        strait.stat(&format!("envoy_cluster_upstream_rq_pending_overflow{pooled}")).await,
        strait.stat(&format!("envoy_cluster_upstream_rq_pending_total{pooled}")).await,
        strait.stat(&format!("envoy_cluster_upstream_rq_pending_overflow{per_host}")).await,
        strait.stat(&format!("envoy_cluster_upstream_rq_pending_total{per_host}")).await,
    ];
    assert_eq!(ours, [1.0, 1.0, 1.0, 3.0, 1.0, 3.0]);
    assert!(strait.stat(&format!("envoy_cluster_upstream_cx_overflow{pooled}")).await >= 1.0);

    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&bootstrap(envoy_admin, envoy_port, upstream.addr), envoy_admin).await {
        scenario("envoy", envoy_port, &upstream).await;
        pending_scenario("envoy", envoy_port, &upstream, "pooled").await;
        pending_scenario("envoy", envoy_port, &upstream, "per_host").await;
        let counter = |cluster: &'static str, name: &'static str| envoy_counter(envoy.admin, cluster, name);
        let theirs = [
            counter("limited", "upstream_rq_active_overflow").await,
            counter("limited", "upstream_rq_retry_overflow").await,
            counter("pooled", "upstream_rq_pending_overflow").await,
            counter("pooled", "upstream_rq_pending_total").await,
            counter("per_host", "upstream_rq_pending_overflow").await,
            counter("per_host", "upstream_rq_pending_total").await,
        ];
        assert_eq!(ours, theirs, "counters: Strait vs Envoy");
    }
}

/// `max_connection_pools: 1` over two endpoints: the first endpoint used gets the pool (its
/// connection stays open); the other, having none, is refused for as long, 503 "no healthy
/// upstream" and `upstream_cx_pool_overflow`, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_pool_over_the_limit_is_refused_as_envoy_does() {
    let (a, b) = (Scripted::always("a", "ok").await.addr, Scripted::always("b", "ok").await.addr);
    let yaml = |admin: u16, port: u16| {
        let route_config = one_virtual_host(
            "\
             \x20             - match: { prefix: / }\n                route: { cluster: pools }\n",
        );
        let breakers = "    circuit_breakers:\n      thresholds: [{ max_connection_pools: 1 }]\n";
        http_bootstrap(admin, port, "", &route_config, &static_cluster("pools", &[a, b], breakers))
    };
    let run = |port: u16| async move {
        let client = http1_client();
        let mut out = Vec::new();
        for _ in 0..6 {
            let reply = get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await;
            out.push((reply.status, reply.header("x-upstream").unwrap_or_default().to_string(), reply.body));
        }
        out
    };
    let summary = |replies: &[(u16, String, String)]| {
        let ok: std::collections::BTreeSet<&str> =
            replies.iter().filter(|r| r.0 == 200).map(|r| r.1.as_str()).collect();
        let refused = replies.iter().filter(|r| r.0 == 503 && r.2 == "no healthy upstream").count();
        (ok.len(), refused)
    };
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&yaml(admin, port), admin).await;
    let ours = run(port).await;
    assert_eq!(summary(&ours), (1, 3), "one endpoint served, the other refused: {ours:?}");
    let overflow = strait.stat("envoy_cluster_upstream_cx_pool_overflow{envoy_cluster_name=\"pools\"}").await;
    assert_eq!(overflow, 3.0);
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&yaml(envoy_admin, envoy_port), envoy_admin).await {
        let theirs = run(envoy_port).await;
        assert_eq!(summary(&theirs), summary(&ours), "Envoy: {theirs:?}");
        assert_eq!(envoy_counter(envoy.admin, "pools", "upstream_cx_pool_overflow").await, overflow);
    }
}
