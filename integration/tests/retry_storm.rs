//! A retry storm kept small by a retry budget (`circuit_breakers.thresholds[].retry_budget`): an
//! upstream fails every request for 10 s under steady load (32 clients, each sending its next
//! request when the last is answered). With a 20% budget the upstream sees at most 1.2 times the
//! requests offered, and when it recovers every request succeeds again; without a budget (3 retries,
//! `max_retries` out of the way) each failing request is sent 4 times. Its own test binary: the load
//! would disturb the timing of other tests.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::scripted::Scripted;
use support::*;

fn bootstrap(admin: u16, port: u16, upstream: std::net::SocketAddr) -> String {
    let policy = "retry_policy: { retry_on: 5xx, num_retries: 3 }";
    let route_config = one_virtual_host(&format!(
        "\
         \x20             - match: {{ prefix: /budgeted }}\n                route: {{ cluster: budgeted, {policy} }}\n\
         \x20             - match: {{ prefix: /unbounded }}\n                route: {{ cluster: unbounded, {policy} }}\n"
    ));
    let budgeted = "    circuit_breakers: { thresholds: [{ retry_budget: { budget_percent: { value: 20 }, \
                    min_retry_concurrency: 3 } }] }\n";
    let unbounded = "    circuit_breakers: { thresholds: [{ max_retries: 100000 }] }\n";
    let clusters =
        [static_cluster("budgeted", &[upstream], budgeted), static_cluster("unbounded", &[upstream], unbounded)]
            .concat();
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

/// Closed-loop load for `length`: 32 clients, each sending its next request as soon as the last is
/// answered, all with test id `id`. Returns (requests answered, of them 200).
async fn load(port: u16, path: &str, id: &'static str, length: Duration) -> (usize, usize) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let until = Instant::now() + length;
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http1_client();
                let (mut sent, mut ok) = (0, 0);
                while Instant::now() < until {
                    let reply = get(&client, &url, &[("x-test-id", id)]).await;
                    sent += 1;
                    ok += usize::from(reply.status == 200);
                }
                (sent, ok)
            })
        })
        .collect();
    let mut totals = (0, 0);
    for client in clients {
        let (sent, ok) = client.await.unwrap();
        totals = (totals.0 + sent, totals.1 + ok);
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_keeps_an_outage_from_becoming_a_storm() {
    let upstream = Scripted::start("fragile").await;
    let (admin, port) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, upstream.addr), admin).await;

    // Without a budget every failed request is tried 4 times: the amplification a budget prevents.
    upstream.set_action(Some("503"));
    let (offered, ok) = load(port, "/unbounded", "unbounded", Duration::from_secs(2)).await;
    let seen = upstream.attempts("unbounded").len();
    assert_eq!(ok, 0);
    assert!(seen as f64 >= 3.5 * offered as f64, "without a budget: {seen} attempts for {offered} requests");

    // The outage: 10 s of failures, retries held to 20% of the requests in flight.
    let (offered, ok) = load(port, "/budgeted", "outage", Duration::from_secs(10)).await;
    let seen = upstream.attempts("outage").len();
    let ratio = seen as f64 / offered as f64;
    assert_eq!(ok, 0, "the upstream failed every request");
    assert!(offered > 1000, "the load was real: {offered} requests in 10 s");
    assert!(ratio <= 1.2, "with a 20% budget: {seen} attempts for {offered} requests ({ratio:.3}x)");
    let overflow = strait.stat("envoy_cluster_upstream_rq_retry_overflow{envoy_cluster_name=\"budgeted\"}").await;
    let retried = strait.stat("envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"budgeted\"}").await;
    assert!(overflow > 0.0, "retries over the budget are counted");
    assert_eq!(retried as usize, seen - offered, "every retry made is counted");

    // The upstream is back: the proxy serves at once, nothing left over from the storm.
    upstream.set_action(None);
    let (offered, ok) = load(port, "/budgeted", "recovered", Duration::from_secs(2)).await;
    assert!(offered > 100 && ok == offered, "after recovery {ok} of {offered} succeeded");
    println!(
        "retry storm: {seen} upstream attempts for the outage's requests: {ratio:.3}x, {overflow} retries refused"
    );
}
