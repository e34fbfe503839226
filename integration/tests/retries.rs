//! Retries (`retry_policy`) with a scripted upstream that fails the first attempts of a request as
//! told (a status, a reset, a hang, a gRPC status): for every `retry_on` condition, the number of
//! attempts, the final answer, the spacing of the attempts, the counters; a request body sent again
//! whole (or not retried past its buffer limit); a retry sent to another endpoint
//! (`previous_hosts`). The same bootstrap runs on a real Envoy, which must agree on every case.

#[path = "../support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::Duration;
use support::scripted::{Scripted, Seen};
use support::*;

fn retry(policy: &str) -> String {
    format!("retry_policy: {{ {policy} }}")
}

fn bootstrap(admin: u16, port: u16, scripted: SocketAddr, dead: SocketAddr, pair: &[SocketAddr]) -> String {
    let route = |prefix: &str, cluster: &str, policy: &str| {
        let policy = if policy.is_empty() { String::new() } else { format!(", {}", retry(policy)) };
        format!(
            "              - match: {{ prefix: {prefix} }}\n                route: {{ cluster: {cluster}{policy} }}\n"
        )
    };
    let previous_hosts = "retry_on: 5xx, num_retries: 1, host_selection_retry_max_attempts: 20, \
         retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { '@type': \
         type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]";
    let routes = [
        route("/5xx", "scripted", "retry_on: 5xx, num_retries: 2"),
        route("/gateway", "scripted", "retry_on: gateway-error, num_retries: 2"),
        route("/4xx", "scripted", "retry_on: retriable-4xx, num_retries: 2"),
        route("/codes", "scripted", "retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 2"),
        route("/reset", "scripted", "retry_on: reset, num_retries: 1"),
        route("/connect", "dead", "retry_on: connect-failure, num_retries: 2"),
        route("/unsent-connect", "dead", "retry_on: reset-before-request, num_retries: 2"),
        route("/unsent", "scripted", "retry_on: reset-before-request, num_retries: 1"),
        route("/pertry", "scripted", "retry_on: 5xx, num_retries: 1, per_try_timeout: 0.3s"),
        route("/grpc", "scripted", "retry_on: 'unavailable,cancelled', num_retries: 2"),
        route("/none", "scripted", ""),
        format!(
            "              - match: {{ prefix: /limited }}\n                request_body_buffer_limit: 16\n\
             \x20               route: {{ cluster: scripted, {} }}\n",
            retry("retry_on: 5xx, num_retries: 1")
        ),
        route("/hosts", "pair", previous_hosts),
        route(
            "/flagged",
            "scripted",
            "retry_on: retriable-headers, num_retries: 2, retriable_headers: [{ name: x-retry-me, present_match: true }]",
        ),
        route("/ratelimited", "scripted", "retry_on: envoy-ratelimited, num_retries: 1"),
        route(
            "/marked",
            "scripted",
            "retry_on: 5xx, num_retries: 1, retriable_request_headers: [{ name: x-may-retry, present_match: true }]",
        ),
        route("/idle", "scripted", "retry_on: 5xx, num_retries: 1, per_try_idle_timeout: 0.3s"),
        route(
            "/after",
            "scripted",
            "retry_on: 5xx, num_retries: 1, rate_limited_retry_back_off: { reset_headers: [{ name: retry-after }], \
             max_interval: 5s }",
        ),
    ]
    .concat();
    // A second virtual host whose policy its route inherits.
    let route_config = format!(
        "            virtual_hosts:\n\
         \x20           - name: all\n              domains: ['*']\n              routes:\n{routes}\
         \x20           - name: inherit\n              domains: [inherit.test]\n              {}\n              routes:\n{}",
        retry("retry_on: 5xx, num_retries: 3"),
        route("/", "scripted", "")
    );
    let clusters = [
        static_cluster("scripted", &[scripted], ""),
        static_cluster("dead", &[dead], ""),
        static_cluster("pair", pair, "    lb_policy: RANDOM\n"),
    ]
    .concat();
    // Requests from this host (no x-forwarded-for) are internal and may steer retries with headers.
    let hcm = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: \
               [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n";
    http_bootstrap(admin, port, hcm, &route_config, &clusters)
}

/// One request: its path, its script, a body (POST) or none (GET), and what must come of it.
struct Case {
    host: &'static str,
    path: &'static str,
    script: &'static str,
    body: usize,
    attempts: usize,
    status: u16,
    /// More request headers.
    headers: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case { host: "any.test", path: "/5xx", script: "503,503,ok", body: 0, attempts: 3, status: 200, headers: &[] },
    Case { host: "any.test", path: "/5xx", script: "500", body: 0, attempts: 3, status: 500, headers: &[] },
    Case { host: "any.test", path: "/5xx", script: "reset,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/5xx", script: "404,ok", body: 0, attempts: 1, status: 404, headers: &[] },
    Case { host: "any.test", path: "/gateway", script: "500,ok", body: 0, attempts: 1, status: 500, headers: &[] },
    Case { host: "any.test", path: "/gateway", script: "502,504,ok", body: 0, attempts: 3, status: 200, headers: &[] },
    Case { host: "any.test", path: "/gateway", script: "reset,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/4xx", script: "409,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/4xx", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/codes", script: "418,418,ok", body: 0, attempts: 3, status: 200, headers: &[] },
    Case { host: "any.test", path: "/codes", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/reset", script: "reset", body: 0, attempts: 2, status: 503, headers: &[] },
    Case { host: "any.test", path: "/reset", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    // reset-before-request: an upstream that read the request and reset is not retried.
    Case { host: "any.test", path: "/unsent", script: "reset,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/unsent", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/pertry", script: "hang,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/pertry", script: "hang", body: 0, attempts: 2, status: 504, headers: &[] },
    Case {
        host: "any.test",
        path: "/grpc",
        script: "grpc-14,grpc-1,ok",
        body: 0,
        attempts: 3,
        status: 200,
        headers: &[],
    },
    Case { host: "any.test", path: "/grpc", script: "grpc-13,ok", body: 0, attempts: 1, status: 200, headers: &[] },
    Case { host: "any.test", path: "/none", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/limited", script: "503,ok", body: 8, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/limited", script: "503,ok", body: 100, attempts: 1, status: 503, headers: &[] },
    Case { host: "any.test", path: "/5xx", script: "503,ok", body: 5000, attempts: 2, status: 200, headers: &[] },
    Case {
        host: "inherit.test",
        path: "/inherited",
        script: "503,503,503,ok",
        body: 0,
        attempts: 4,
        status: 200,
        headers: &[],
    },
    Case {
        host: "any.test",
        path: "/flagged",
        script: "flagged,flagged,ok",
        body: 0,
        attempts: 3,
        status: 200,
        headers: &[],
    },
    Case { host: "any.test", path: "/flagged", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case {
        host: "any.test",
        path: "/ratelimited",
        script: "ratelimited,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[],
    },
    Case { host: "any.test", path: "/ratelimited", script: "429,ok", body: 0, attempts: 1, status: 429, headers: &[] },
    Case { host: "any.test", path: "/marked", script: "503,ok", body: 0, attempts: 1, status: 503, headers: &[] },
    Case {
        host: "any.test",
        path: "/marked",
        script: "503,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-may-retry", "1")],
    },
    Case { host: "any.test", path: "/idle", script: "hang,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    Case { host: "any.test", path: "/after", script: "after-60,ok", body: 0, attempts: 2, status: 200, headers: &[] },
    // x-envoy-* headers from an internal client: conditions added, count and timeouts changed.
    Case {
        host: "any.test",
        path: "/none",
        script: "503,503,503,ok",
        body: 0,
        attempts: 4,
        status: 200,
        headers: &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "503,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-envoy-retry-on", "gateway-error,bogus")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "grpc-14,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-envoy-retry-grpc-on", "unavailable")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "418,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-envoy-retry-on", "retriable-status-codes"), ("x-envoy-retriable-status-codes", "418")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "flagged,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-envoy-retry-on", "retriable-headers"), ("x-envoy-retriable-header-names", "x-retry-me")],
    },
    Case {
        host: "any.test",
        path: "/5xx",
        script: "503,ok",
        body: 0,
        attempts: 1,
        status: 503,
        headers: &[("x-envoy-max-retries", "0")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "hang",
        body: 0,
        attempts: 1,
        status: 504,
        headers: &[("x-envoy-upstream-rq-timeout-ms", "300")],
    },
    Case {
        host: "any.test",
        path: "/none",
        script: "hang,ok",
        body: 0,
        attempts: 2,
        status: 200,
        headers: &[("x-envoy-retry-on", "reset"), ("x-envoy-upstream-rq-per-try-timeout-ms", "300")],
    },
    // An external client (it came through another proxy) steers nothing.
    Case {
        host: "any.test",
        path: "/none",
        script: "503,ok",
        body: 0,
        attempts: 1,
        status: 503,
        headers: &[("x-envoy-retry-on", "5xx"), ("x-forwarded-for", "203.0.113.7")],
    },
];

/// What one proxy made of a case: the final status and body, and the attempts the upstream saw
/// (their count, and the body bytes each carried).
async fn run(client: &HttpClient, port: u16, upstream: &Scripted, id: &str, case: &Case) -> (u16, String, Vec<Seen>) {
    let method = if case.body > 0 { "POST" } else { "GET" };
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{}", case.path))
        .header("host", case.host)
        .header("x-test-id", id)
        .header("x-script", case.script);
    let request = case
        .headers
        .iter()
        .fold(request, |r, (name, value)| r.header(*name, *value))
        .body(Full::new(Bytes::from(vec![b'x'; case.body])))
        .unwrap();
    let reply = send(client, request).await;
    (reply.status, reply.body, upstream.attempts(id))
}

/// What the upstream saw of the proxy's own headers at a first attempt: the timeout it was told
/// (`x-envoy-expected-rq-timeout-ms`), and which `x-envoy-*` control headers reached it.
fn envoy_headers(attempt: &Seen) -> (Option<String>, Vec<String>) {
    let expected = attempt.headers.get("x-envoy-expected-rq-timeout-ms").map(|v| v.to_str().unwrap().to_string());
    let mut others: Vec<String> = attempt
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("x-envoy-") && k != "x-envoy-expected-rq-timeout-ms")
        .collect();
    others.sort();
    (expected, others)
}

/// Envoy's counter `cluster.<cluster>.<name>` from its admin `/stats`.
async fn envoy_counter(admin: SocketAddr, cluster: &str, name: &str) -> f64 {
    let (_, text) = get_text(&format!("http://{admin}/stats?filter=^cluster\\.{cluster}\\.{name}$")).await.unwrap();
    text.lines().find_map(|l| l.rsplit(": ").next()?.parse().ok()).unwrap_or(0.0)
}

const COUNTERS: [&str; 9] = [
    "upstream_rq_timeout",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_per_try_timeout",
    "upstream_rq_per_try_idle_timeout",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_backoff_ratelimited",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_condition_as_envoy_counts_attempts() {
    let upstream = Scripted::start("scripted").await;
    let (bad, good) = (Scripted::always("bad", "503").await, Scripted::start("good").await);
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (port, admin) = (free_port(), free_port());
    let config = bootstrap(admin, port, upstream.addr, dead, &[bad.addr, good.addr]);
    let strait = Proxy::start(&config, admin).await;
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    let envoy_config = bootstrap(envoy_admin, envoy_port, upstream.addr, dead, &[bad.addr, good.addr]);
    let envoy = Envoy::start(&envoy_config, envoy_admin).await;
    let client = http1_client();

    for (i, case) in CASES.iter().enumerate() {
        let what = format!("{}{} {} ({} body bytes)", case.host, case.path, case.script, case.body);
        let (status, body, attempts) = run(&client, port, &upstream, &format!("strait-{i}"), case).await;
        assert_eq!((status, attempts.len()), (case.status, case.attempts), "{what}: status and attempts ({body})");
        let bytes: Vec<usize> = attempts.iter().map(|a| a.body_bytes).collect();
        assert!(bytes.iter().all(|&b| b == case.body), "{what}: every attempt carries the whole body: {bytes:?}");
        let (_, control) = envoy_headers(&attempts[0]);
        assert!(!control.iter().any(|h| h.contains("retr") || h.contains("rq-")), "{what}: upstream saw {control:?}");
        if envoy.is_some() {
            let theirs = run(&client, envoy_port, &upstream, &format!("envoy-{i}"), case).await;
            assert_eq!((status, attempts.len()), (theirs.0, theirs.2.len()), "{what}: Strait vs Envoy");
            if status != 200 {
                assert_eq!(body, theirs.1, "{what}: the same final body");
            }
            assert_eq!(envoy_headers(&attempts[0]), envoy_headers(&theirs.2[0]), "{what}: x-envoy-* headers upstream");
        }
    }

    // Retries back off: random waits up to 25 ms, then 75 ms (Envoy's 25 ms base), never longer.
    let spaced = upstream.attempts("strait-0");
    let gaps: Vec<Duration> = spaced.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] < Duration::from_millis(25 + 60) && gaps[1] < Duration::from_millis(75 + 60), "{gaps:?}");

    // A rate-limited upstream's Retry-After sets the wait: 1 s, jittered up to 1.5 s.
    let mut proxies = vec![("strait", port)];
    if envoy.is_some() {
        proxies.push(("envoy", envoy_port));
    }
    for (proxy, port) in &proxies {
        let case = Case {
            host: "any.test",
            path: "/after",
            script: "after-1,ok",
            body: 0,
            attempts: 2,
            status: 200,
            headers: &[],
        };
        let (status, _, attempts) = run(&client, *port, &upstream, &format!("{proxy}-after"), &case).await;
        assert_eq!((status, attempts.len()), (200, 2), "{proxy}");
        let gap = attempts[1].at - attempts[0].at;
        assert!(
            gap >= Duration::from_millis(990) && gap < Duration::from_millis(1500 + 150),
            "{proxy}: waited {gap:?}"
        );
    }

    // Connection failures: retried, then Envoy's 503 with the reset reason.
    let client = http1_client();
    let dead_reply = get(&client, &format!("http://127.0.0.1:{port}/connect"), &[]).await;
    assert_eq!(dead_reply.status, 503);
    assert!(dead_reply.body.contains("remote connection failure"), "{}", dead_reply.body);
    assert_eq!(strait.stat("envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"dead\"}").await, 2.0);
    // Under reset-before-request too: nothing was sent (the retries counted, and compared with
    // Envoy's below).
    assert_eq!(get(&client, &format!("http://127.0.0.1:{port}/unsent-connect"), &[]).await.status, 503);
    assert_eq!(strait.stat("envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"dead\"}").await, 4.0);

    // A retry goes to an endpoint not tried yet: a broken and a working endpoint, every request
    // answered by the working one (at the first or the second attempt).
    for i in 0..40 {
        let reply = get(&client, &format!("http://127.0.0.1:{port}/hosts"), &[("x-test-id", &format!("h{i}"))]).await;
        assert_eq!((reply.status, reply.header("x-upstream")), (200, Some("good")), "request {i}");
    }

    if let Some(envoy) = &envoy {
        let theirs = get(&client, &format!("http://127.0.0.1:{envoy_port}/connect"), &[]).await;
        assert_eq!((theirs.status, theirs.body.contains("remote connection failure")), (503, true));
        assert_eq!(get(&client, &format!("http://127.0.0.1:{envoy_port}/unsent-connect"), &[]).await.status, 503);
        for i in 0..40 {
            let url = format!("http://127.0.0.1:{envoy_port}/hosts");
            let reply = get(&client, &url, &[("x-test-id", &format!("eh{i}"))]).await;
            assert_eq!((reply.status, reply.header("x-upstream")), (200, Some("good")), "envoy request {i}");
        }
        for cluster in ["scripted", "dead"] {
            for name in COUNTERS {
                let ours = strait.stat(&format!("envoy_cluster_{name}{{envoy_cluster_name=\"{cluster}\"}}")).await;
                let theirs = envoy_counter(envoy.admin, cluster, name).await;
                assert_eq!(ours, theirs, "cluster.{cluster}.{name}: Strait vs Envoy");
            }
        }
    }
}

#[test]
fn invalid_retry_policies_are_refused_naming_the_field() {
    let dir = TempDir::new("retry-bad");
    let upstream: SocketAddr = ([127, 0, 0, 1], 1).into();
    for (policy, expected) in [
        ("retry_on: '5xx,sometimes'", "retry_policy.retry_on: unknown retry condition 'sometimes'"),
        ("retry_on: 5xx, retriable_status_codes: [99]", "retry_policy.retriable_status_codes[0]: not an HTTP status"),
        (
            "retry_on: 5xx, retry_back_off: { base_interval: 1s, max_interval: 0.5s }",
            "retry_policy.retry_back_off.max_interval: must not be less than base_interval",
        ),
        (
            "retry_on: 5xx, retry_host_predicate: [{ name: other }]",
            "retry_host_predicate[0].name: 'other' is not supported",
        ),
        (
            "retry_on: 5xx, rate_limited_retry_back_off: { reset_headers: [] }",
            "retry_policy.rate_limited_retry_back_off.reset_headers: at least one reset header is needed",
        ),
        ("retry_on: 'reset,reset-after-request'", "unknown retry condition 'reset-after-request'"),
    ] {
        let route_config = one_virtual_host(&format!(
            "\
             \x20             - match: {{ prefix: / }}\n                route: {{ cluster: c, {} }}\n",
            retry(policy)
        ));
        let yaml = http_bootstrap(free_port(), free_port(), "", &route_config, &static_cluster("c", &[upstream], ""));
        let file = write_file(&dir.0, "bad.yaml", &yaml);
        let out = std::process::Command::new(BIN).arg("validate").arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{policy}: accepted");
        assert!(text.contains(expected), "{policy}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_yaml_retries_reach_strait_and_envoy_alike() {
    let upstream = Scripted::start("scripted").await;
    let dir = TempDir::new("mesh-retries");
    let (strait_port, envoy_port) = (free_port(), free_port());
    let routes = |listener: &str| {
        format!(
            "- {{ name: {listener}-istio, listener: {listener}, match: {{ prefix: /default }}, to: [{{ service: s }}], retries: {{ attempts: 2 }} }}\n\
             - {{ name: {listener}-main, listener: {listener}, to: [{{ service: s }}], \
                  retries: {{ attempts: 3, per_try_timeout: 300ms, retry_on: 'gateway-error,409' }} }}\n"
        )
    };
    let mesh = format!(
        "listeners:\n\
         - {{ name: s, port: {strait_port}, nodes: [strait] }}\n\
         - {{ name: e, port: {envoy_port}, nodes: [envoy] }}\n\
         services: [{{ name: s, endpoints: ['{}'] }}]\n\
         routes:\n{}{}",
        upstream.addr,
        routes("s"),
        routes("e")
    );
    write_file(&dir.0, "mesh.yaml", &mesh);
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _control_plane = control_plane(&dir.0, xds).await;
    let bootstrap = |cluster: &str, admin: u16| peer_bootstrap(xds, cluster, admin);
    let (strait_admin, envoy_admin) = (free_port(), free_port());
    let _strait = Proxy::start(&bootstrap("strait", strait_admin), strait_admin).await;
    let envoy = Envoy::start(&bootstrap("envoy", envoy_admin), envoy_admin).await;
    let client = http1_client();
    let cases = [
        ("/default", "503,503,503", 3, 503),
        ("/default", "503,ok", 2, 200),
        ("/default", "500,ok", 1, 500),
        ("/", "502,409,hang,ok", 4, 200),
        ("/", "409,409,409,409,ok", 4, 409),
        ("/", "500,ok", 1, 500),
    ];
    for (i, (path, script, attempts, status)) in cases.into_iter().enumerate() {
        let mut ports = vec![("strait", strait_port)];
        if envoy.is_some() {
            ports.push(("envoy", envoy_port));
        }
        for (proxy, port) in ports {
            let id = format!("mesh-{proxy}-{i}");
            let case = Case { host: "any.test", path, script, body: 0, attempts, status, headers: &[] };
            let (got, body, seen) = run(&client, port, &upstream, &id, &case).await;
            assert_eq!((got, seen.len()), (status, attempts), "{proxy}: {path} {script}: {body}");
        }
    }
}

/// Strait and, when installed, a real Envoy running the same bootstrap: `routes` (YAML route items of
/// one catch-all virtual host) to the `scripted` cluster at `upstream`, with `hcm` added to the
/// connection manager.
async fn strait_and_envoy(routes: &str, hcm: &str, upstream: SocketAddr) -> SideBySide {
    let route_config = one_virtual_host(routes);
    side_by_side(|admin, port| {
        http_bootstrap(admin, port, hcm, &route_config, &static_cluster("scripted", &[upstream], ""))
    })
    .await
}

/// gRPC callers' deadlines and streams' maximum durations, as Envoy computes and answers them: the
/// legacy `max_grpc_timeout` makes `grpc-timeout` the route timeout (504, gRPC UNAVAILABLE), a
/// route's `max_stream_duration` with `grpc_timeout_header_max` makes it the stream's limit (504,
/// gRPC DEADLINE_EXCEEDED), and a plain `max_stream_duration` limits any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_deadlines_and_stream_durations_as_envoy() {
    let upstream = Scripted::start("deadlines").await;
    let routes = [
        ("/legacy", "max_grpc_timeout: 0.5s"),
        ("/duration", "max_stream_duration: { grpc_timeout_header_max: 1s }"),
        ("/plain", "max_stream_duration: { max_stream_duration: 0.2s }"),
    ]
    .iter()
    .map(|(prefix, extra)| {
        format!(
            "              - match: {{ prefix: {prefix} }}\n                route: {{ cluster: scripted, {extra} }}\n"
        )
    })
    .collect::<String>();
    let proxies = strait_and_envoy(&routes, "", upstream.addr).await;
    let client = http1_client();
    let grpc: &[(&str, &str)] = &[("content-type", "application/grpc"), ("te", "trailers")];
    // (path, script, grpc-timeout, gRPC?) -> (status, grpc-status)
    type Deadline = (&'static str, &'static str, Option<&'static str>, bool, (u16, Option<&'static str>));
    let cases: [Deadline; 7] = [
        ("/legacy", "slow-400", Some("200m"), true, (200, Some("14"))),
        ("/legacy", "slow-300", None, true, (200, None)),
        ("/legacy", "slow-300", Some("200m"), false, (200, None)),
        ("/duration", "slow-400", Some("200m"), true, (200, Some("4"))),
        ("/duration", "slow-300", Some("5S"), true, (200, None)),
        ("/plain", "slow-400", None, false, (504, None)),
        ("/plain", "slow-50", None, false, (200, None)),
    ];
    for (i, (path, script, deadline, is_grpc, expected)) in cases.into_iter().enumerate() {
        let mut headers: Vec<(&str, &str)> = vec![("x-script", script)];
        if is_grpc {
            headers.extend_from_slice(grpc);
        }
        if let Some(deadline) = deadline {
            headers.push(("grpc-timeout", deadline));
        }
        let mut answers = Vec::new();
        for &(proxy, port) in &proxies.ports {
            let mut headers = headers.clone();
            let id = format!("{proxy}-deadline-{i}");
            headers.push(("x-test-id", &id));
            let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &headers).await;
            let answer = (
                reply.status,
                reply.header("grpc-status").map(str::to_string),
                reply.header("grpc-message").map(str::to_string),
            );
            assert_eq!(
                (answer.0, answer.1.as_deref()),
                expected,
                "{proxy}: {path} {script} {deadline:?} grpc={is_grpc}: {}",
                reply.body
            );
            let body = if reply.status == 200 { String::new() } else { reply.body };
            answers.push((answer, body));
        }
        if answers.len() == 2 {
            assert_eq!(answers[0], answers[1], "{path} {script} {deadline:?}: Strait vs Envoy");
        }
    }
}

/// Hedging (`hedge_policy.hedge_on_per_try_timeout`): past the per-try timeout the slow attempt keeps
/// running beside a new one and whichever answers first for good wins; without hedging the slow
/// attempt is cancelled. Strait and a real Envoy: the same answer, attempt and attempt count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_on_per_try_timeout_as_envoy() {
    let upstream = Scripted::start("hedged").await;
    let policy = "retry_policy: { retry_on: 5xx, num_retries: 2, per_try_timeout: 0.3s }";
    let routes = format!(
        "              - match: {{ prefix: /hedge }}\n                route: {{ cluster: scripted, {policy}, \
         hedge_policy: {{ hedge_on_per_try_timeout: true }} }}\n\
         \x20             - match: {{ prefix: /plain }}\n                route: {{ cluster: scripted, {policy} }}\n"
    );
    let proxies = strait_and_envoy(&routes, "", upstream.addr).await;
    let client = http1_client();
    // (path, script) -> (status, which attempt answered, attempts made)
    let cases = [
        ("/hedge", "slow-1500,ok", (200, "attempt 2", 2)),
        ("/hedge", "slow-500,slow-1500,ok", (200, "attempt 1", 2)),
        // The hedge's 503 is retried (another 503), and the first attempt still wins.
        ("/hedge", "slow-600,503", (200, "attempt 1", 3)),
        ("/plain", "slow-500,slow-1500,ok", (200, "attempt 3", 3)),
    ];
    for &(proxy, port) in &proxies.ports {
        for (i, (path, script, (status, answered, attempts))) in cases.iter().enumerate() {
            let id = format!("{proxy}-hedge-{i}");
            let started = std::time::Instant::now();
            let reply =
                get(&client, &format!("http://127.0.0.1:{port}{path}"), &[("x-test-id", &id), ("x-script", script)])
                    .await;
            let took = started.elapsed();
            assert_eq!(reply.status, *status, "{proxy} {path} {script}: {}", reply.body);
            assert!(reply.body.ends_with(answered), "{proxy} {path} {script}: {} after {took:?}", reply.body);
            assert_eq!(upstream.attempts(&id).len(), *attempts, "{proxy} {path} {script}: attempts");
            assert!(took < Duration::from_millis(1400), "{proxy} {path} {script}: {took:?}");
        }
    }
}

/// A route's `idle_timeout` (instead of the connection manager's `stream_idle_timeout`): a request
/// with no activity for that long is answered as Envoy answers it; `0s` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_as_envoy() {
    let upstream = Scripted::start("idle").await;
    let routes = "              - match: { prefix: /quiet }\n                route: { cluster: scripted, idle_timeout: 0.3s }\n\
                  \x20             - match: { prefix: /patient }\n                route: { cluster: scripted, idle_timeout: 0s }\n";
    // The connection manager's own idle timeout is short: /patient turns it off.
    let proxies = strait_and_envoy(routes, "          stream_idle_timeout: 0.2s\n", upstream.addr).await;
    let client = http1_client();
    let cases = [("/quiet", "hang"), ("/quiet", "slow-100"), ("/patient", "slow-500")];
    let mut answers = Vec::new();
    for &(proxy, port) in &proxies.ports {
        let mut seen = Vec::new();
        for (i, (path, script)) in cases.iter().enumerate() {
            let started = std::time::Instant::now();
            let id = format!("{proxy}-idle-{i}");
            let reply =
                get(&client, &format!("http://127.0.0.1:{port}{path}"), &[("x-test-id", &id), ("x-script", script)])
                    .await;
            let took = started.elapsed();
            let body = if reply.status == 200 { String::new() } else { reply.body };
            seen.push((reply.status, body, took < Duration::from_millis(1000)));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0][1].0, 200);
    assert_eq!(answers[0][2].0, 200, "0s: no idle timeout, not even the connection manager's");
    assert_eq!(
        (answers[0][0].0, answers[0][0].1.as_str()),
        (504, "stream timeout"),
        "no answer for the route's idle timeout"
    );
    if answers.len() == 2 {
        assert_eq!(answers[0], answers[1], "Strait vs Envoy");
    }
}
