//! Outlier detection (`outlier_detection`) and panic mode, with upstreams that always fail or always
//! answer: a failing endpoint is ejected after its consecutive 5xx and takes no traffic, comes back
//! when its ejection time is over, is ejected again; with too many ejected the cluster panics and
//! uses every endpoint; the TCP proxy's refused connections eject too, and so do a mirror's failing
//! shadows. The same bootstrap runs on a real Envoy, which must count and answer alike.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::scripted::Scripted;
use support::*;

const OUTLIER: &str = "    outlier_detection: { consecutive_5xx: 3, interval: 0.5s, base_ejection_time: 1s, max_ejection_percent: 100 }\n";

fn bootstrap(admin: u16, port: u16, good: [SocketAddr; 2], bad: [SocketAddr; 2]) -> String {
    let route_config = one_virtual_host(
        "\
         \x20             - match: { prefix: /basic }\n                route: { cluster: basic }\n\
         \x20             - match: { prefix: /panic }\n                route: { cluster: panic }\n\
         \x20             - match: { prefix: /default }\n                route: { cluster: defaults }\n",
    );
    let clusters = [
        static_cluster("basic", &[good[0], good[1], bad[0]], OUTLIER),
        static_cluster(
            "panic",
            &[good[0], bad[0], bad[1]],
            &OUTLIER.replace("consecutive_5xx: 3", "consecutive_5xx: 1"),
        ),
        static_cluster("defaults", &[good[0], good[1], bad[0]], "    outlier_detection: { consecutive_5xx: 3 }\n"),
    ]
    .concat();
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

/// How many of `n` sequential requests to `path` failed.
async fn failures(port: u16, path: &str, n: usize) -> usize {
    let client = http1_client();
    let mut failed = 0;
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &[]).await;
        match reply.status {
            200 => {}
            503 => failed += 1,
            other => panic!("{path}: unexpected {other}: {}", reply.body),
        }
    }
    failed
}

/// What one proxy does, as numbers to compare: failures per phase.
async fn scenario(port: u16) -> Vec<usize> {
    let mut seen = Vec::new();
    // Ejected after its third 5xx; then nothing fails.
    seen.push(failures(port, "/basic", 30).await);
    seen.push(failures(port, "/basic", 30).await);
    // Back after its ejection time (1 s, seen at a 0.5 s sweep), taking its share of traffic again;
    // its consecutive count was not reset (only a success does that), so it stays (as in Envoy).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    seen.push(failures(port, "/basic", 30).await);
    // Two of three ejected: under the 50% panic threshold every endpoint takes traffic again.
    seen.push(failures(port, "/panic", 6).await);
    seen.push(failures(port, "/panic", 30).await);
    // Envoy's default maximum (10%) with three endpoints.
    seen.push(failures(port, "/default", 30).await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_and_return_as_in_envoy() {
    let good = [Scripted::always("good-1", "ok").await.addr, Scripted::always("good-2", "ok").await.addr];
    let bad = [Scripted::always("bad-1", "503").await.addr, Scripted::always("bad-2", "503").await.addr];
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, good, bad), admin).await;
    let ours = scenario(port).await;
    assert_eq!(ours[..3], [3, 0, 10], "ejected after 3 failures, back after its time");
    assert_eq!(ours[5], 10, "three endpoints: none may be ejected under the default 10%");
    let in_panic = |failed: usize| (10..=20).contains(&failed);
    assert!(in_panic(ours[4]), "in panic the ejected endpoints take traffic again: {ours:?}");
    let label = "{envoy_cluster_name=\"basic\"}";
    assert_eq!(strait.stat(&format!("envoy_cluster_outlier_detection_ejections_enforced_total{label}")).await, 1.0);
    assert_eq!(strait.stat(&format!("envoy_cluster_outlier_detection_ejections_active{label}")).await, 0.0);
    let label = "{envoy_cluster_name=\"panic\"}";
    assert_eq!(strait.stat(&format!("envoy_cluster_outlier_detection_ejections_active{label}")).await, 2.0);
    let clusters = strait.admin_text("/clusters").await;
    for b in bad {
        assert!(clusters.contains(&format!("panic::{b}::health_flags::/failed_outlier_check")), "{clusters}");
    }

    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&bootstrap(envoy_admin, envoy_port, good, bad), envoy_admin).await {
        let theirs = scenario(envoy_port).await;
        // How many fail on the way into panic depends on where round robin starts (random in Envoy),
        // and which endpoints share the traffic in panic is the balancer's business; that they do is
        // not.
        assert!(in_panic(theirs[4]), "Envoy in panic: {theirs:?}");
        let (ours, theirs) = ([&ours[..3], &ours[5..]].concat(), [&theirs[..3], &theirs[5..]].concat());
        assert_eq!(ours, theirs, "failures per phase: Strait vs Envoy");
        let (_, text) = get_text(&format!("http://{}/clusters", envoy.admin)).await.unwrap();
        for b in bad {
            assert!(text.contains(&format!("panic::{b}::health_flags::/failed_outlier_check")), "{text}");
        }
        let (_, stats) = get_text(&format!(
            "http://{}/stats?filter=^cluster\\.basic\\.outlier_detection\\.ejections_enforced_total$",
            envoy.admin
        ))
        .await
        .unwrap();
        // Envoy counts a second ejection some time after this phase, without it costing traffic
        // here (see the closing note of this change); at least the first is counted alike.
        assert!(!stats.contains(": 0"), "{stats}");
    }
}

/// Whether a connection through the TCP proxy on `port` reached an upstream (an HTTP answer came).
async fn tcp_reaches_upstream(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nx-script: ok\r\nconnection: close\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    reply.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_connection_failures_eject_like_envoys() {
    let live = Scripted::always("live", "ok").await.addr;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let yaml = |admin: u16, port: u16| {
        format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
            tcp_listener("tcp", port, "pair", ""),
            // Ejected for longer than the test runs: on a loaded machine twelve connections through
            // Envoy can outlast a short ejection, and the endpoint's return would fail twice more.
            static_cluster(
                "pair",
                &[dead, live],
                &OUTLIER
                    .replace("consecutive_5xx: 3", "consecutive_5xx: 2")
                    .replace("base_ejection_time: 1s", "base_ejection_time: 30s")
            )
        )
    };
    // Paced: Envoy ejects on its main thread (the worker that saw the failure posts it there, and
    // the new host set comes back by another post), so on a loaded machine a connection made at
    // once after the second refusal could still reach the dead endpoint: 3 refusals, not 2. Strait
    // ejects before the failed attempt returns.
    let failures = |port: u16| async move {
        let mut failed = 0;
        for _ in 0..12 {
            failed += usize::from(!tcp_reaches_upstream(port).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        failed
    };
    let (port, admin) = (free_port(), free_port());
    let _strait = Proxy::start(&yaml(admin, port), admin).await;
    let ours = failures(port).await;
    assert_eq!(ours, 2, "the dead endpoint is ejected after its second refused connection");
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(_envoy) = Envoy::start(&yaml(envoy_admin, envoy_port), envoy_admin).await {
        assert_eq!(failures(envoy_port).await, ours, "Strait vs Envoy");
    }
}

/// The per-endpoint counter lines of a `/clusters` page, sorted.
fn host_counters(text: &str) -> Vec<&str> {
    let names =
        ["cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success", "rq_error", "rq_active"];
    let mut lines: Vec<&str> = text.lines().filter(|l| names.iter().any(|n| l.contains(&format!("::{n}::")))).collect();
    lines.sort_unstable();
    lines
}

/// Upstream timeouts count for outlier detection, as in Envoy (a local-origin failure, a 504): an
/// endpoint that hangs is ejected after its second timed-out request, by the route timeout and by
/// a retry's per-try timeout alike; then requests go to the live endpoint only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_eject_like_envoys() {
    let live = Scripted::always("live", "ok").await.addr;
    let hung = Scripted::always("hung", "hang").await.addr;
    let yaml = |admin: u16, port: u16| {
        let route_config = one_virtual_host(
            "\
             \x20             - match: { prefix: /route }\n                route: { cluster: route, timeout: 0.2s }\n\
             \x20             - match: { prefix: /try }\n                route: { cluster: try, timeout: 5s, \
             retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s } }\n",
        );
        let outlier = "    outlier_detection: { consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100 }\n";
        let clusters = static_cluster("route", &[hung, live], outlier) + &static_cluster("try", &[hung, live], outlier);
        http_bootstrap(admin, port, "", &route_config, &clusters)
    };
    // Statuses of 8 sequential requests to `path`.
    let statuses = |port: u16, path: &'static str| async move {
        let client = http1_client();
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(get(&client, &format!("http://127.0.0.1:{port}{path}"), &[]).await.status);
        }
        out
    };
    let check = |who: &str, route: &[u16], tried: &[u16]| {
        // Round robin alternates until the hung endpoint's second timeout ejects it.
        assert_eq!(route.iter().filter(|s| **s == 504).count(), 2, "{who}: route timeouts: {route:?}");
        assert!(route[4..].iter().all(|s| *s == 200), "{who}: after the ejection: {route:?}");
        // With a retry, a per-try timeout is retried on the live endpoint: every request succeeds.
        assert!(tried.iter().all(|s| *s == 200), "{who}: {tried:?}");
    };
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&yaml(admin, port), admin).await;
    let (route, tried) = (statuses(port, "/route").await, statuses(port, "/try").await);
    check("strait", &route, &tried);
    let clusters = strait.admin_text("/clusters").await;
    for cluster in ["route", "try"] {
        assert!(clusters.contains(&format!("{cluster}::{hung}::health_flags::/failed_outlier_check")), "{clusters}");
    }
    // Per-endpoint counters as Envoy shows them.
    let counted = |text: &str| {
        for line in [format!("route::{hung}::rq_timeout::2"), format!("route::{live}::rq_success::6")] {
            assert!(text.contains(&line), "{line} in {text}");
        }
    };
    counted(&clusters);
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&yaml(envoy_admin, envoy_port), envoy_admin).await {
        let (route, tried) = (statuses(envoy_port, "/route").await, statuses(envoy_port, "/try").await);
        check("envoy", &route, &tried);
        let text = get_text(&format!("http://{}/clusters", envoy.admin)).await.unwrap().1;
        counted(&text);
        assert_eq!(host_counters(&clusters), host_counters(&text), "per-endpoint counters: Strait vs Envoy");
        for cluster in ["route", "try"] {
            assert!(text.contains(&format!("{cluster}::{hung}::health_flags::/failed_outlier_check")), "{text}");
        }
    }
}

/// `split_external_local_origin_errors`: refused connections count only toward
/// `consecutive_local_origin_failure`, 5xx answers only toward `consecutive_5xx`; each ejects at
/// its own threshold, counted under its own name, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_ejects_local_and_upstream_failures_apart_like_envoy() {
    let live = [
        Scripted::always("live1", "ok").await.addr,
        Scripted::always("live2", "ok").await.addr,
        Scripted::always("live3", "ok").await.addr,
    ];
    let failing = Scripted::always("failing", "500").await.addr;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // Five endpoints, so two ejected (60% left) is no panic.
    let endpoints = [dead, failing, live[0], live[1], live[2]];
    let yaml = |admin: u16, port: u16| {
        let route_config = one_virtual_host(
            "\
             \x20             - match: { prefix: / }\n                route: { cluster: split }\n",
        );
        let outlier = "    outlier_detection: { split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, \
                       consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100 }\n";
        http_bootstrap(admin, port, "", &route_config, &static_cluster("split", &endpoints, outlier))
    };
    // Statuses of 25 sequential requests: round robin over the five until two are ejected.
    let statuses = |port: u16| async move {
        let client = http1_client();
        let mut out = Vec::new();
        for _ in 0..25 {
            out.push(get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await.status);
        }
        out
    };
    let counters = [
        "ejections_enforced_consecutive_local_origin_failure",
        "ejections_enforced_consecutive_5xx",
        "ejections_enforced_total",
    ];
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&yaml(admin, port), admin).await;
    let ours = statuses(port).await;
    assert_eq!(ours.iter().filter(|s| **s == 503).count(), 2, "two refused connections eject the dead one: {ours:?}");
    assert_eq!(ours.iter().filter(|s| **s == 500).count(), 3, "three 500s eject the failing one: {ours:?}");
    assert!(ours[15..].iter().all(|s| *s == 200), "{ours:?}");
    let mut our_counts = Vec::new();
    for c in counters {
        our_counts
            .push(strait.stat(&format!("envoy_cluster_outlier_detection_{c}{{envoy_cluster_name=\"split\"}}")).await);
    }
    assert_eq!(our_counts, [1.0, 1.0, 2.0]);
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&yaml(envoy_admin, envoy_port), envoy_admin).await {
        // Envoy applies a health change that comes within `update_merge_window` (1 s by default)
        // of the previous one only when that window ends, where Strait applies it at once: the
        // second ejection reaches Envoy's balancer up to a second later, so the sequences are not
        // compared request by request.
        let theirs = statuses(envoy_port).await;
        assert_eq!(theirs.iter().filter(|s| **s == 503).count(), 2, "Envoy: {theirs:?}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let after = statuses(envoy_port).await;
        assert!(after.iter().all(|s| *s == 200), "Envoy, both ejected: {after:?}");
        let mut theirs = Vec::new();
        for c in counters {
            let url = format!("http://{}/stats?filter=^cluster\\.split\\.outlier_detection\\.{c}$", envoy.admin);
            let (_, text) = get_text(&url).await.unwrap();
            theirs.push(text.lines().find_map(|l| l.rsplit(": ").next()?.parse::<f64>().ok()).unwrap_or(0.0));
        }
        assert_eq!(theirs, our_counts, "counters: Strait vs Envoy");
    }
}

/// Shadow requests (`request_mirror_policies`) are attempts at their cluster's endpoints like any
/// other: a shadow endpoint answering 503 is ejected after `consecutive_5xx` of them, while every
/// request itself is answered by the primary; Envoy ejects it alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_shadows_eject_their_endpoint_as_envoy() {
    let primary = Scripted::always("primary", "ok").await.addr;
    let failing = Scripted::always("failing", "503").await.addr;
    let yaml = |admin: u16, port: u16| {
        let route_config = one_virtual_host(
            "              - match: { prefix: / }\n                route: { cluster: primary, \
             request_mirror_policies: [{ cluster: shadow }] }\n",
        );
        let outlier = "    outlier_detection: { consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100 }\n";
        let clusters = static_cluster("primary", &[primary], "") + &static_cluster("shadow", &[failing], outlier);
        http_bootstrap(admin, port, "", &route_config, &clusters)
    };
    let ejected = format!("shadow::{failing}::health_flags::/failed_outlier_check");
    let counted = format!("shadow::{failing}::rq_error::3");
    let mirrored_three = |port: u16, admin: SocketAddr| {
        let (ejected, counted) = (ejected.clone(), counted.clone());
        async move {
            let client = http1_client();
            for _ in 0..3 {
                assert_eq!(get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await.status, 200);
            }
            // The shadows are answered on their own time: wait for the third.
            let mut clusters = String::new();
            for _ in 0..100 {
                clusters = get_text(&format!("http://{admin}/clusters")).await.unwrap().1;
                if clusters.contains(&counted) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(clusters.contains(&counted) && clusters.contains(&ejected), "{clusters}");
        }
    };
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&yaml(admin, port), admin).await;
    mirrored_three(port, strait.admin).await;
    let ejections =
        strait.stat("envoy_cluster_outlier_detection_ejections_enforced_total{envoy_cluster_name=\"shadow\"}").await;
    assert_eq!(ejections, 1.0);
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&yaml(envoy_admin, envoy_port), envoy_admin).await {
        mirrored_three(envoy_port, envoy.admin).await;
    }
}
