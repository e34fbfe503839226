//! Routing end to end: virtual hosts, every route match kind, every action, header mutations at each
//! level, and weighted splits, through the real binary with real upstreams.

#[path = "../support/mod.rs"]
mod support;

use support::*;

async fn start() -> (Proxy, u16) {
    let clusters = routing_fixture_clusters().await;
    let (admin, port) = (free_port(), free_port());
    let yaml = http_bootstrap(admin, port, "", ROUTES, &clusters);
    (Proxy::start(&yaml, admin).await, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosts_follow_envoys_domain_order() {
    let (proxy, port) = start().await;
    let c = http1_client();
    let url = format!("http://127.0.0.1:{port}/x");
    let r = get(&c, &url, &[("host", "EXACT.test")]).await;
    assert_eq!((r.status, r.service().as_str(), r.header("x-vh")), (200, "b", Some("exact")));
    assert_eq!(get(&c, &url, &[("host", "a.b.wild.test")]).await.service(), "c");
    // The wildcard must match at least one character.
    assert_eq!(get(&c, &url, &[("host", ".wild.test")]).await.service(), "a");
    let r = get(&c, &url, &[("host", "api.example.org")]).await;
    assert_eq!(r.service(), "h2");
    assert_eq!(r.json()["version"], "HTTP/2.0", "the h2 cluster is reached over HTTP/2");
    assert_eq!(r.json()["authority"], "api.example.org", "the authority is kept upstream");
    // The port is part of the authority.
    assert_eq!(get(&c, &url, &[("host", "port.test:8080")]).await.body, "port vhost");
    assert_eq!(get(&c, &url, &[("host", "port.test")]).await.service(), "a");
    // A virtual host whose routes do not match: 404, empty body.
    let r = get(&c, &url, &[("host", "narrow.test")]).await;
    assert_eq!((r.status, r.body.as_str()), (404, ""));
    assert_eq!(get(&c, &format!("http://127.0.0.1:{port}/only"), &[("host", "narrow.test")]).await.service(), "a");
    assert_eq!(proxy.stat("envoy_http_no_route{envoy_http_conn_manager_prefix=\"ingress_http\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_header_and_query_matches() {
    let (_proxy, port) = start().await;
    let c = http1_client();
    let at = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(get(&c, &at("/exact?x=1"), &[]).await.service(), "b", "path match ignores the query");
    assert_eq!(get(&c, &at("/exact/more"), &[]).await.service(), "a");
    assert_eq!(get(&c, &at("/caseins/x"), &[]).await.service(), "c");
    assert_eq!(get(&c, &at("/re/123"), &[]).await.service(), "c");
    assert_eq!(get(&c, &at("/re/12a"), &[]).await.service(), "a", "regex must match the whole path");
    assert_eq!(get(&c, &at("/sep"), &[]).await.service(), "b");
    assert_eq!(get(&c, &at("/sep/x"), &[]).await.service(), "b");
    assert_eq!(get(&c, &at("/separate"), &[]).await.service(), "a");

    assert_eq!(get(&c, &at("/hdr"), &[("x-env", "prod")]).await.service(), "b");
    assert_eq!(get(&c, &at("/hdr"), &[("x-env", "prod"), ("x-debug", "1")]).await.service(), "a", "inverted present");
    assert_eq!(get(&c, &at("/hdr"), &[("x-env", "dev")]).await.service(), "a");
    assert_eq!(get(&c, &at("/hdr"), &[("x-version", "4")]).await.service(), "c");
    assert_eq!(get(&c, &at("/hdr"), &[("x-version", "5")]).await.service(), "a", "range end is exclusive");
    assert_eq!(get(&c, &at("/hdr"), &[("x-tag", "blue-canary")]).await.service(), "h2");

    assert_eq!(get(&c, &at("/q?debug&user=admin"), &[]).await.service(), "b");
    assert_eq!(get(&c, &at("/q?user=admin"), &[]).await.service(), "a");
    assert_eq!(get(&c, &at("/q?debug=1&user=bob"), &[]).await.service(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_rewrite_redirect_and_answer_directly() {
    let (_proxy, port) = start().await;
    let c = http1_client();
    let at = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let r = get(&c, &at("/rewrite/x?y=1"), &[("host", "orig.test")]).await;
    assert_eq!(r.json()["path"], "/new/x?y=1");
    assert_eq!(r.json()["headers"]["host"], "rewritten.test");
    let r = get(&c, &at("/regexrw/one/two"), &[]).await;
    assert_eq!(r.json()["path"], "/two/one");

    let r = get(&c, &at("/redirect/x?q=1"), &[("host", "site.test")]).await;
    assert_eq!((r.status, r.header("location")), (308, Some("https://site.test/target?q=1")));
    let r = get(&c, &at("/moved/page?q=1"), &[("host", "site.test")]).await;
    assert_eq!((r.status, r.header("location")), (301, Some("http://other.test/v2/page")));

    let r = get(&c, &at("/direct"), &[]).await;
    assert_eq!((r.status, r.body.as_str(), r.header("content-type")), (418, "I am a teapot", Some("text/plain")));
    assert_eq!(r.header("x-resp-level"), Some("config"), "response headers apply to direct responses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mutations_at_every_level() {
    let (_proxy, port) = start().await;
    let c = http1_client();
    let r = get(
        &c,
        &format!("http://127.0.0.1:{port}/headers"),
        &[("x-drop", "secret"), ("x-absent-only", "original"), ("x-forwarded-for", "1.2.3.4")],
    )
    .await;
    let h = &r.json()["headers"];
    assert!(h.get("x-drop").is_none(), "removed: {h}");
    assert_eq!(h["x-added"], "yes");
    assert_eq!(h["x-absent-only"], "original");
    // Route overwrites, then the virtual host and the route config append (Envoy's order).
    let levels: Vec<&str> = h["x-level"].as_str().unwrap().split(',').map(str::trim).collect();
    assert_eq!(levels, vec!["route", "vhost", "config"], "{h}");
    assert_eq!(h["x-forwarded-for"], "1.2.3.4", "not appended without use_remote_address");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 36, "a UUID request id is generated");
    assert_eq!(r.header("x-resp-route"), Some("100%"));
    assert_eq!(r.header("x-resp-level"), Some("config"));
    assert!(r.header("x-served-by").is_none(), "response header removed");
    assert_eq!(r.header("server"), Some("strait"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_timeout() {
    let (proxy, port) = start().await;
    let c = http1_client();
    let mut a = 0;
    let n = 2000;
    for _ in 0..n {
        if get(&c, &format!("http://127.0.0.1:{port}/split"), &[]).await.service() == "a" {
            a += 1;
        }
    }
    let share = f64::from(a) / f64::from(n);
    assert!((share - 0.75).abs() < 0.04, "share of the weight-75 cluster: {share}");

    let r = get(&c, &format!("http://127.0.0.1:{port}/delay/50"), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&c, &format!("http://127.0.0.1:{port}/delay/2000"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (504, "upstream request timeout"));
    assert_eq!(proxy.stat("envoy_cluster_upstream_rq_timeout{envoy_cluster_name=\"a\"}").await, 1.0);
    assert!(proxy.stat("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"}").await >= 1000.0);
    assert!(proxy.stat("envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix=\"ingress_http\",envoy_response_code_class=\"5\"}").await >= 1.0);
}
