//! Filters: HTTP filters ahead of the router, configured per route with `typed_per_filter_config`: local rate
//! limiting (`envoy.filters.http.local_ratelimit`: token bucket, 429 with `x-ratelimit-*` headers,
//! enabled-but-not-enforced, a virtual host's limit) and fault injection (`envoy.filters.http.fault`:
//! fixed and header-driven delays and aborts, gRPC aborts, a share of requests, a route that turns
//! the filter off), request mirroring, and the TCP connection rate limit. The same bootstrap runs on
//! a real Envoy, which must answer alike.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::scripted::Scripted;
use support::*;

const RATELIMIT: &str = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// A route (YAML flow) to the upstream with `per_filter` as its `typed_per_filter_config` entries.
fn route(prefix: &str, per_filter: &str) -> String {
    let per_filter =
        if per_filter.is_empty() { String::new() } else { format!(", typed_per_filter_config: {{ {per_filter} }}") };
    format!("              - {{ match: {{ prefix: {prefix} }}, route: {{ cluster: upstream }}{per_filter} }}\n")
}

fn limit(stat_prefix: &str, max_tokens: u32, enforced: u32, extra: &str) -> String {
    format!(
        "envoy.filters.http.local_ratelimit: {{ '@type': {RATELIMIT}, stat_prefix: {stat_prefix}, \
         token_bucket: {{ max_tokens: {max_tokens}, tokens_per_fill: {max_tokens}, fill_interval: 1s }}, \
         filter_enabled: {{ default_value: {{ numerator: 100 }} }}, \
         filter_enforced: {{ default_value: {{ numerator: {enforced} }} }}{extra} }}"
    )
}

fn fault(config: &str) -> String {
    format!("envoy.filters.http.fault: {{ '@type': {FAULT}, {config} }}")
}

fn bootstrap(admin: u16, port: u16, upstream: SocketAddr) -> String {
    bootstrap_in_order(admin, port, upstream, false)
}

/// The filters: the fault filter then the rate limit, or (`rate_limit_first`) the other way round.
fn bootstrap_in_order(admin: u16, port: u16, upstream: SocketAddr, rate_limit_first: bool) -> String {
    let routes = [
        route(
            "/limited",
            &limit(
                "route_limit",
                3,
                100,
                ", enable_x_ratelimit_headers: DRAFT_VERSION_03, \
                 response_headers_to_add: [{ header: { key: x-limited, value: 'yes' } }]",
            ),
        ),
        route(
            "/shadow",
            &limit(
                "shadow_limit",
                1,
                0,
                ", request_headers_to_add_when_not_enforced: [{ header: { key: x-would-limit, value: 'true' } }]",
            ),
        ),
        route("/abort", &fault("abort: { http_status: 503, percentage: { numerator: 100 } }")),
        route("/grpc-abort", &fault("abort: { grpc_status: 14, percentage: { numerator: 100 } }")),
        route("/delay", &fault("delay: { fixed_delay: 0.3s, percentage: { numerator: 100 } }")),
        route(
            "/asked",
            &fault("delay: { header_delay: {}, percentage: { numerator: 100 } }, abort: { header_abort: {}, percentage: { numerator: 100 } }"),
        ),
        route("/half", &fault("abort: { http_status: 500, percentage: { numerator: 50 } }")),
        route(
            "/only-beta",
            &fault("abort: { http_status: 418, percentage: { numerator: 100 } }, headers: [{ name: x-user, string_match: { exact: beta } }]"),
        ),
        route(
            "/nodes",
            &fault("abort: { http_status: 418, percentage: { numerator: 100 } }, downstream_nodes: [frontend]"),
        ),
        route(
            "/no-fault",
            "envoy.filters.http.fault: { '@type': type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }",
        ),
        route("/", ""),
    ]
    .concat();
    // The virtual host aborts everything, which /no-fault turns off; limited.test has its own limit.
    let vhost_fault = fault("abort: { http_status: 402, percentage: { numerator: 100 } }");
    let route_config = format!(
        "            virtual_hosts:\n            - name: all\n              domains: ['*']\n              routes:\n{routes}\
         \x20           - name: limited\n              domains: [limited.test]\n              \
         typed_per_filter_config: {{ {vh_limit} }}\n              routes:\n{plain}\
         \x20           - name: faulty\n              domains: [faulty.test]\n              \
         typed_per_filter_config: {{ {vhost_fault} }}\n              routes:\n{no_fault}{plain}",
        vh_limit = limit("vhost_limit", 2, 100, ""),
        plain = route("/", ""),
        no_fault = route(
            "/no-fault",
            "envoy.filters.http.fault: { '@type': type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }"
        ),
    );
    // The same upstream under a second name, for a split that only one side's faults apply to.
    let twin_split = "              - { match: { prefix: /bound }, route: { weighted_clusters: { clusters: \
                      [{ name: upstream, weight: 50 }, { name: twin, weight: 50 }] } }, \
                      typed_per_filter_config: { envoy.filters.http.fault: { '@type': type.googleapis.com/\
                      envoy.extensions.filters.http.fault.v3.HTTPFault, upstream_cluster: twin, \
                      abort: { http_status: 418, percentage: { numerator: 100 } } } } }\n";
    let route_config =
        route_config.replacen("              routes:\n", &format!("              routes:\n{twin_split}"), 1);
    let clusters = [static_cluster("upstream", &[upstream], ""), static_cluster("twin", &[upstream], "")].concat();
    let fault =
        format!("          - name: envoy.filters.http.fault\n            typed_config: {{ \"@type\": {FAULT} }}\n");
    let limit = format!(
        "          - name: envoy.filters.http.local_ratelimit\n            \
         typed_config: {{ \"@type\": {RATELIMIT}, stat_prefix: listener_limit }}\n"
    );
    let filters = if rate_limit_first { limit + &fault } else { fault + &limit };
    http_bootstrap_with_filters(admin, port, "", &route_config, &filters, &clusters)
}

/// What a client sees of one answer.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
}

const SHOWN: [&str; 6] =
    ["x-ratelimit-limit", "x-ratelimit-remaining", "x-limited", "grpc-status", "grpc-message", "x-upstream"];

async fn ask(client: &HttpClient, port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let reply = get(client, &format!("http://127.0.0.1:{port}{path}"), &all).await;
    let headers = SHOWN.iter().filter_map(|h| Some((h.to_string(), reply.header(h)?.to_string()))).collect();
    let body = if reply.status == 200 && reply.body.contains("attempt") { "(upstream)".into() } else { reply.body };
    Seen { status: reply.status, body, headers }
}

/// A run of requests as one proxy answers them.
async fn sequence(client: &HttpClient, port: u16, id: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    for _ in 0..5 {
        out.push(ask(client, port, "any.test", "/limited", &[]).await);
    }
    for _ in 0..3 {
        out.push(ask(client, port, "limited.test", "/", &[]).await);
    }
    for _ in 0..2 {
        out.push(ask(client, port, "any.test", "/shadow", &[("x-test-id", id)]).await);
    }
    out.push(ask(client, port, "any.test", "/abort", &[]).await);
    out.push(ask(client, port, "any.test", "/grpc-abort", &[("content-type", "application/grpc")]).await);
    out.push(ask(client, port, "any.test", "/asked", &[("x-envoy-fault-abort-request", "418")]).await);
    out.push(
        ask(
            client,
            port,
            "any.test",
            "/asked",
            &[("x-envoy-fault-abort-grpc-request", "8"), ("content-type", "application/grpc")],
        )
        .await,
    );
    out.push(ask(client, port, "any.test", "/asked", &[]).await);
    out.push(ask(client, port, "any.test", "/only-beta", &[("x-user", "beta")]).await);
    out.push(ask(client, port, "any.test", "/only-beta", &[("x-user", "alpha")]).await);
    out.push(ask(client, port, "any.test", "/nodes", &[("x-envoy-downstream-service-node", "frontend")]).await);
    out.push(ask(client, port, "any.test", "/nodes", &[("x-envoy-downstream-service-node", "backend")]).await);
    out.push(ask(client, port, "faulty.test", "/x", &[]).await);
    out.push(ask(client, port, "faulty.test", "/no-fault", &[]).await);
    out
}

/// The statuses of [`sequence`]'s answers, whichever order the filters are in.
const EXPECTED_STATUSES: [u16; 21] =
    [200, 200, 200, 429, 429, 200, 200, 429, 200, 200, 503, 200, 418, 200, 200, 418, 200, 418, 200, 402, 200];

fn statuses(seen: &[Seen]) -> Vec<u16> {
    seen.iter().map(|s| s.status).collect()
}

/// How long a request takes.
async fn timed(client: &HttpClient, port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Duration) {
    let started = Instant::now();
    let seen = ask(client, port, "any.test", path, headers).await;
    (seen.status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_faults_as_envoy() {
    let upstream = Scripted::start("upstream").await;
    let (admin, port) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, upstream.addr), admin).await;
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    let envoy = Envoy::start(&bootstrap(envoy_admin, envoy_port, upstream.addr), envoy_admin).await;
    let client = http1_client();

    let ours = sequence(&client, port, "strait").await;
    assert_eq!(statuses(&ours), EXPECTED_STATUSES);
    assert_eq!(ours[3].body, "local_rate_limited");
    assert!(ours[3].headers.contains(&("x-limited".into(), "yes".into())), "{:?}", ours[3]);
    assert!(ours[0].headers.contains(&("x-ratelimit-remaining".into(), "2".into())), "{:?}", ours[0]);
    assert!(ours[11].headers.contains(&("grpc-status".into(), "14".into())), "a gRPC abort: {:?}", ours[11]);
    let shadowed = upstream.attempts("strait");
    assert_eq!(shadowed.len(), 2, "not enforced: both went upstream");
    assert!(shadowed[0].headers.get("x-would-limit").is_none() && shadowed[1].headers.get("x-would-limit").is_some());

    // The bucket refills: 3 tokens a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask(&client, port, "any.test", "/limited", &[]).await.status, 200);

    // Delays: fixed, and asked for by the request.
    let (status, took) = timed(&client, port, "/delay", &[]).await;
    assert!(status == 200 && took >= Duration::from_millis(300), "{status} after {took:?}");
    let (status, took) = timed(&client, port, "/asked", &[("x-envoy-fault-delay-request", "200")]).await;
    assert!(status == 200 && took >= Duration::from_millis(200), "{status} after {took:?}");

    // A fault bound to one cluster of a 50/50 split: only the requests sent there.
    let bound = |port: u16| {
        let client = client.clone();
        async move {
            let mut aborted = 0;
            for _ in 0..200 {
                aborted += usize::from(ask(&client, port, "any.test", "/bound", &[]).await.status == 418);
            }
            aborted
        }
    };
    let bound_aborts = bound(port).await;
    assert!((60..=140).contains(&bound_aborts), "{bound_aborts} of 200 bound for the faulty cluster");
    let mut envoy_bound_aborts = 0;
    if envoy.is_some() {
        envoy_bound_aborts = bound(envoy_port).await;
        assert!((60..=140).contains(&envoy_bound_aborts), "Envoy: {envoy_bound_aborts} of 200");
    }

    // Half the requests aborted.
    let mut aborted = 0;
    for _ in 0..400 {
        aborted += usize::from(ask(&client, port, "any.test", "/half", &[]).await.status == 500);
    }
    assert!((160..=240).contains(&aborted), "{aborted} of 400 aborted at 50%");

    let stat = |name: &str, label: &str| format!("envoy_{name}{{{label}}}");
    let rate_limited = strait
        .stat(&stat("http_local_rate_limit_rate_limited", "envoy_local_http_ratelimit_prefix=\"route_limit\""))
        .await;
    let aborts =
        strait.stat(&stat("http_fault_aborts_injected", "envoy_http_conn_manager_prefix=\"ingress_http\"")).await;
    assert_eq!(rate_limited, 2.0);
    assert_eq!(aborts, (7 + aborted + bound_aborts) as f64);

    if let Some(envoy) = envoy {
        let theirs = sequence(&client, envoy_port, "envoy").await;
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "answer {i}: Strait vs Envoy");
        }
        let shadowed = upstream.attempts("envoy");
        assert!(
            shadowed[0].headers.get("x-would-limit").is_none() && shadowed[1].headers.get("x-would-limit").is_some()
        );
        let (_, took) = timed(&client, envoy_port, "/delay", &[]).await;
        // Envoy's timers are a few milliseconds coarse.
        assert!(took >= Duration::from_millis(290), "envoy delayed {took:?}");
        let (text_status, text) =
            get_text(&format!("http://{}/stats?filter=rate_limited|aborts_injected", envoy.admin)).await.unwrap();
        assert_eq!(text_status, 200);
        assert!(text.contains("route_limit.http_local_rate_limit.rate_limited: 2"), "{text}");
        let (_, prom) = get_text(&format!("http://{}/stats/prometheus", envoy.admin)).await.unwrap();
        for line in [
            "envoy_http_local_rate_limit_rate_limited{envoy_local_http_ratelimit_prefix=\"route_limit\"} 2".to_string(),
            format!(
                "envoy_http_fault_aborts_injected{{envoy_http_conn_manager_prefix=\"ingress_http\"}} {}",
                7 + envoy_bound_aborts
            ),
        ] {
            assert!(prom.contains(&line), "Envoy's name for the counter is ours: {line}");
        }
    }
}

/// The rate limit ahead of the fault filter: a request the rate limit lets through with nothing to
/// add to its response, or refuses, is decided before the chain of filters is built (the fault
/// filter then takes it from there). Each request takes one token, and every answer is Envoy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_ahead_of_a_fault_as_envoy() {
    let upstream = Scripted::start("upstream").await;
    let (admin, port) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap_in_order(admin, port, upstream.addr, true), admin).await;
    let client = http1_client();
    let ours = sequence(&client, port, "strait").await;
    assert_eq!(statuses(&ours), EXPECTED_STATUSES);
    assert!(ours[7].body == "local_rate_limited" && ours[7].headers.is_empty(), "{:?}", ours[7]);
    let shadowed = upstream.attempts("strait");
    assert_eq!(shadowed.len(), 2, "not enforced: both went upstream");
    assert!(shadowed[0].headers.get("x-would-limit").is_none() && shadowed[1].headers.get("x-would-limit").is_some());
    for (prefix, limited, ok) in [("route_limit", 2.0, 3.0), ("vhost_limit", 1.0, 2.0), ("shadow_limit", 1.0, 1.0)] {
        let label = format!("{{envoy_local_http_ratelimit_prefix=\"{prefix}\"}}");
        assert_eq!(strait.stat(&format!("envoy_http_local_rate_limit_rate_limited{label}")).await, limited, "{prefix}");
        assert_eq!(strait.stat(&format!("envoy_http_local_rate_limit_ok{label}")).await, ok, "{prefix}");
    }
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    if let Some(_envoy) =
        Envoy::start(&bootstrap_in_order(envoy_admin, envoy_port, upstream.addr, true), envoy_admin).await
    {
        let theirs = sequence(&client, envoy_port, "envoy").await;
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "answer {i}: Strait vs Envoy");
        }
    }
}

#[test]
fn invalid_filter_configs_are_refused_naming_the_field() {
    let dir = TempDir::new("filters-bad");
    let upstream: SocketAddr = ([127, 0, 0, 1], 1).into();
    let good = bootstrap(free_port(), free_port(), upstream);
    for (from, to, expected) in [
        ("fill_interval: 1s", "fill_interval: 0.01s", "token_bucket.fill_interval: must be at least 50ms"),
        ("http_status: 503", "http_status: 99", "abort.http_status: must be 200 to 599"),
        (
            "stat_prefix: listener_limit",
            "stat_prefix: listener_limit, descriptors: [{ entries: [{ key: a, value: b }] }]",
            "descriptors: is not supported yet",
        ),
    ] {
        let yaml = good.replacen(from, to, 1);
        assert_ne!(yaml, good, "{from}");
        let file = write_file(&dir.0, "bad.yaml", &yaml);
        let out = std::process::Command::new(BIN).arg("validate").arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to}: accepted");
        assert!(text.contains(expected), "{to}: {text}");
    }
}

/// The fault filter's `response_rate_limit`, on Strait and on a real Envoy: a 40 KiB body at a fixed
/// 20 KiB/s takes about two seconds (a twentieth of a second's bytes every 50 ms, the first at once),
/// at the rate a request's `x-envoy-fault-throughput-response` asks for, and without it at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_response_body_as_envoy() {
    let upstream = Scripted::start("upstream").await;
    let routes = [
        route(
            "/fixed",
            &fault("response_rate_limit: { fixed_limit: { limit_kbps: 20 }, percentage: { numerator: 100 } }"),
        ),
        route("/asked", &fault("response_rate_limit: { header_limit: {}, percentage: { numerator: 100 } }")),
    ]
    .concat();
    let route_config = one_virtual_host(&routes);
    let filters =
        format!("          - name: envoy.filters.http.fault\n            typed_config: {{ \"@type\": {FAULT} }}\n");
    let clusters = static_cluster("upstream", &[upstream.addr], "");
    let both =
        side_by_side(|admin, port| http_bootstrap_with_filters(admin, port, "", &route_config, &filters, &clusters))
            .await;
    let client = http1_client();
    for &(proxy, port) in &both.ports {
        let fetch = |path: &'static str, asked: Option<&'static str>| {
            let client = client.clone();
            async move {
                let mut headers = vec![("x-script", "size-40960")];
                headers.extend(asked.map(|kbps| ("x-envoy-fault-throughput-response", kbps)));
                let started = Instant::now();
                let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &headers).await;
                assert_eq!((reply.status, reply.body.len()), (200, 40960), "{proxy} {path}: the whole body");
                started.elapsed()
            }
        };
        let took = fetch("/fixed", None).await;
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(2600), "{proxy} fixed: {took:?}");
        let took = fetch("/asked", Some("40")).await;
        assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(1500), "{proxy} asked: {took:?}");
        let took = fetch("/asked", None).await;
        assert!(took < Duration::from_millis(500), "{proxy}: nothing asked, full speed: {took:?}");
    }
    let injected = both
        .strait
        .stat("envoy_http_fault_response_rl_injected{envoy_http_conn_manager_prefix=\"ingress_http\"}")
        .await;
    assert_eq!(injected, 2.0, "two responses slowed");
}

/// Request mirroring (`request_mirror_policies`), on Strait and on a real Envoy: the shadow gets the
/// request with `-shadow` on its authority (before the port) and its whole body; a shadow that hangs
/// or is down changes nothing for the request; a 50% policy mirrors about half; `cluster_header`
/// mirrors to the cluster a request names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_as_envoy() {
    let primary = Scripted::start("primary").await;
    let shadow = Scripted::start("shadow").await;
    let hanging = Scripted::always("hanging", "hang").await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mirror = |prefix: &str, policies: &str| {
        format!(
            "              - {{ match: {{ prefix: {prefix} }}, route: {{ cluster: primary, request_mirror_policies: [{policies}] }} }}\n"
        )
    };
    let routes = [
        mirror("/all", "{ cluster: shadow }"),
        mirror("/slow", "{ cluster: hanging }, { cluster: dead }"),
        mirror("/half", "{ cluster: shadow, runtime_fraction: { default_value: { numerator: 50 } } }"),
        mirror("/same-host", "{ cluster: shadow, disable_shadow_host_suffix_append: true }"),
        mirror("/by-header", "{ cluster_header: x-mirror-to }"),
    ]
    .concat();
    let route_config = one_virtual_host(&routes);
    let clusters = [
        static_cluster("primary", &[primary.addr], ""),
        static_cluster("shadow", &[shadow.addr], ""),
        static_cluster("hanging", &[hanging.addr], ""),
        static_cluster("dead", &[dead], ""),
    ]
    .concat();
    let both = side_by_side(|admin, port| http_bootstrap(admin, port, "", &route_config, &clusters)).await;
    let client = http1_client();
    let proxies = &both.ports;

    let mut seen_by_shadow = Vec::new();
    for (proxy, port) in proxies {
        // A GET and a 100 KB POST, mirrored whole; the host as the shadow saw it.
        for (path, host, body) in
            [("/all", "api.test", 0), ("/all", "api.test:8080", 100_000), ("/same-host", "api.test", 10)]
        {
            let id = format!("{proxy}{path}{host}");
            let request = http::Request::builder()
                .method(if body > 0 { "POST" } else { "GET" })
                .uri(format!("http://127.0.0.1:{port}{path}"))
                .header("host", host)
                .header("x-test-id", &id)
                .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'm'; body])))
                .unwrap();
            let reply = send(&client, request).await;
            assert_eq!((reply.status, reply.header("x-upstream")), (200, Some("primary")), "{proxy} {path}");
            let mut copies = Vec::new();
            for _ in 0..50 {
                copies = shadow.attempts(&id);
                if !copies.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(copies.len(), 1, "{proxy} {path} {host}: one copy");
            assert_eq!(copies[0].body_bytes, body, "{proxy} {path}: the whole body");
            let shadow_host = copies[0].headers.get("host").map(|h| h.to_str().unwrap().to_string());
            seen_by_shadow.push((path, host, shadow_host));
        }

        // A shadow that hangs, and one that is down: the request does not wait for either.
        let started = Instant::now();
        let reply =
            get(&client, &format!("http://127.0.0.1:{port}/slow"), &[("x-test-id", &format!("{proxy}-slow"))]).await;
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "{proxy}: waited {:?} for a shadow", started.elapsed());

        // `cluster_header`: the shadow a request names; no copy without the header, or for a name
        // that is no cluster.
        for (to, copies) in [(Some("shadow"), 1), (None, 0), (Some("nowhere"), 0)] {
            let id = format!("{proxy}-by-header-{}", to.unwrap_or("none"));
            let mut headers = vec![("x-test-id", id.as_str())];
            headers.extend(to.map(|to| ("x-mirror-to", to)));
            let reply = get(&client, &format!("http://127.0.0.1:{port}/by-header"), &headers).await;
            assert_eq!((reply.status, reply.header("x-upstream")), (200, Some("primary")), "{proxy} to {to:?}");
            for _ in 0..25 {
                if shadow.attempts(&id).len() >= copies.max(1) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(shadow.attempts(&id).len(), copies, "{proxy}: mirrored to {to:?}");
        }

        // Half the requests mirrored.
        let id = format!("{proxy}-half");
        for _ in 0..300 {
            assert_eq!(get(&client, &format!("http://127.0.0.1:{port}/half"), &[("x-test-id", &id)]).await.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mirrored = shadow.attempts(&id).len();
        assert!((110..=190).contains(&mirrored), "{proxy}: {mirrored} of 300 mirrored at 50%");
    }
    let ours: Vec<_> = seen_by_shadow.iter().take(3).collect();
    assert_eq!(ours[0].2.as_deref(), Some("api.test-shadow"));
    assert_eq!(ours[1].2.as_deref(), Some("api.test-shadow:8080"));
    assert_eq!(ours[2].2.as_deref(), Some("api.test"));
    if proxies.len() == 2 {
        assert_eq!(seen_by_shadow[..3], seen_by_shadow[3..], "the shadow's host: Strait vs Envoy");
    }
}

/// The TCP equivalent (`envoy.filters.network.local_ratelimit` ahead of `tcp_proxy`): a token per
/// new connection; with the bucket empty a connection is closed at once, on Strait and on Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_limit_as_envoy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that echoes what it reads.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let config = |admin: u16, port: u16| {
        let limit = "      - name: envoy.filters.network.local_ratelimit\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit\n          \
             stat_prefix: tcp_limit\n          token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 30s }\n";
        let listener =
            tcp_listener("tcp", port, "echo", "").replacen("    - filters:\n", &format!("    - filters:\n{limit}"), 1);
        format!(
            "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}\n\
             static_resources:\n  listeners:\n{listener}\n  clusters:\n{}",
            static_cluster("echo", &[upstream_addr], "")
        )
    };
    // What each of four connections gets back: its echo, or nothing (closed).
    async fn four(port: u16) -> Vec<bool> {
        let mut out = Vec::new();
        let mut open = Vec::new();
        for i in 0..4 {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = c.write_all(format!("hello {i}").as_bytes()).await;
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await.ok().and_then(|r| r.ok());
            out.push(n.is_some_and(|n| n > 0));
            open.push(c);
        }
        out
    }
    let (admin, port) = (free_port(), free_port());
    let strait = Proxy::start(&config(admin, port), admin).await;
    assert_eq!(four(port).await, [true, true, false, false], "two tokens: two connections");
    const LIMITED: &str = "envoy_local_rate_limit_rate_limited{envoy_local_network_ratelimit_prefix=\"tcp_limit\"}";
    let limited = strait.stat(LIMITED).await;
    assert_eq!(limited, 2.0);
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    if let Some(envoy) = Envoy::start(&config(envoy_admin, envoy_port), envoy_admin).await {
        assert_eq!(four(envoy_port).await, [true, true, false, false], "Envoy");
        let (_, text) = get_text(&format!("http://{}/stats?filter=tcp_limit", envoy.admin)).await.unwrap();
        assert!(text.contains("local_rate_limit.tcp_limit.rate_limited: 2"), "{text}");
        let (_, prom) = get_text(&format!("http://{}/stats/prometheus", envoy.admin)).await.unwrap();
        assert!(prom.contains(&format!("{LIMITED} 2")), "Envoy's name for the counter is ours");
    }
}

/// The control plane's friendly YAML (Istio's VirtualService shapes): `fault` (delay, abort with a
/// share) and `mirror` reach Strait and a real Envoy over ADS, and both behave alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_yaml_faults_and_mirrors_reach_strait_and_envoy_alike() {
    let main = Scripted::start("main").await;
    let shadow = Scripted::start("shadow").await;
    let dir = TempDir::new("mesh-faults");
    let (strait_port, envoy_port) = (free_port(), free_port());
    let routes = |l: &str| {
        format!(
            "- {{ name: {l}-abort, listener: {l}, match: {{ prefix: /abort }}, to: [{{ service: main }}], \
                 fault: {{ abort: {{ http_status: 418 }} }} }}\n\
             - {{ name: {l}-grpc, listener: {l}, match: {{ prefix: /grpc }}, to: [{{ service: main }}], \
                 fault: {{ abort: {{ grpc_status: 8 }} }} }}\n\
             - {{ name: {l}-delay, listener: {l}, match: {{ prefix: /delay }}, to: [{{ service: main }}], \
                 fault: {{ delay: {{ fixed_delay: 300ms }} }} }}\n\
             - {{ name: {l}-none, listener: {l}, match: {{ prefix: /never }}, to: [{{ service: main }}], \
                 fault: {{ abort: {{ http_status: 500, percentage: 0 }} }} }}\n\
             - {{ name: {l}-mirror, listener: {l}, to: [{{ service: main }}], mirror: {{ service: shadow }} }}\n"
        )
    };
    let mesh = format!(
        "listeners:\n\
         - {{ name: s, port: {strait_port}, nodes: [strait] }}\n\
         - {{ name: e, port: {envoy_port}, nodes: [envoy] }}\n\
         services: [{{ name: main, endpoints: ['{}'] }}, {{ name: shadow, endpoints: ['{}'] }}]\n\
         routes:\n{}{}",
        main.addr,
        shadow.addr,
        routes("s"),
        routes("e")
    );
    write_file(&dir.0, "mesh.yaml", &mesh);
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _control_plane = control_plane(&dir.0, xds).await;
    let (strait_admin, envoy_admin) = (free_port(), free_port());
    let _strait = Proxy::start(&peer_bootstrap(xds, "strait", strait_admin), strait_admin).await;
    let envoy = Envoy::start(&peer_bootstrap(xds, "envoy", envoy_admin), envoy_admin).await;
    let client = http1_client();
    let mut proxies = vec![("strait", strait_port)];
    if envoy.is_some() {
        proxies.push(("envoy", envoy_port));
    }
    let mut answers = Vec::new();
    for (proxy, port) in proxies {
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let abort = get(&client, &url("/abort"), &[]).await;
        let grpc = get(&client, &url("/grpc"), &[("content-type", "application/grpc")]).await;
        let never = get(&client, &url("/never"), &[]).await;
        let started = Instant::now();
        let delayed = get(&client, &url("/delay"), &[]).await;
        let took = started.elapsed();
        assert!(
            delayed.status == 200 && took >= Duration::from_millis(290),
            "{proxy}: {} after {took:?}",
            delayed.status
        );
        let id = format!("{proxy}-mirrored");
        assert_eq!(get(&client, &url("/x"), &[("x-test-id", &id)]).await.status, 200);
        let mut copies = 0;
        for _ in 0..50 {
            copies = shadow.attempts(&id).len();
            if copies > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = (
            abort.status,
            abort.body,
            grpc.status,
            grpc.header("grpc-status").map(str::to_string),
            never.status,
            copies,
        );
        assert_eq!(answer, (418, "fault filter abort".to_string(), 200, Some("8".to_string()), 200, 1), "{proxy}");
        answers.push(answer);
    }
    if answers.len() == 2 {
        assert_eq!(answers[0], answers[1], "Strait vs Envoy");
    }
}

/// A filter marked `disabled: true` in the connection manager is off unless a route (or its virtual
/// host) gives it a config of its own, bare or in a `FilterConfig`. Strait and Envoy answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_disabled_by_default_runs_only_where_a_route_enables_it_as_envoy() {
    const WRAPPER: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
    let upstream = Scripted::start("upstream").await;
    let config = |admin: u16, port: u16| {
        let routes = [
            route("/own", &fault("abort: { http_status: 451, percentage: { numerator: 100 } }")),
            route(
                "/wrapped",
                &format!(
                    "envoy.filters.http.fault: {{ '@type': {WRAPPER}, config: {{ '@type': {FAULT}, \
                     abort: {{ http_status: 503, percentage: {{ numerator: 100 }} }} }} }}"
                ),
            ),
            route("/", ""),
        ]
        .concat();
        let route_config = one_virtual_host(&routes);
        let filters = format!(
            "          - name: envoy.filters.http.fault\n            disabled: true\n            \
             typed_config: {{ \"@type\": {FAULT}, abort: {{ http_status: 418, percentage: {{ numerator: 100 }} }} }}\n"
        );
        let clusters = static_cluster("upstream", &[upstream.addr], "");
        http_bootstrap_with_filters(admin, port, "", &route_config, &filters, &clusters)
    };
    let (admin, port) = (free_port(), free_port());
    let _strait = Proxy::start(&config(admin, port), admin).await;
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    let _envoy = Envoy::start(&config(envoy_admin, envoy_port), envoy_admin).await;
    let client = http1_client();
    for (proxy, port) in [("strait", port), ("envoy", envoy_port)] {
        let mut statuses = Vec::new();
        for path in ["/off", "/own", "/wrapped"] {
            statuses.push(ask(&client, port, "any.test", path, &[]).await.status);
        }
        assert_eq!(statuses, [200, 451, 503], "{proxy}: off by default, on where a route says");
    }
}
