//! Consistent hashing (RING_HASH, MAGLEV) with the route's `hash_policy`: requests with the same
//! header, cookie or source address stick to one endpoint while different keys spread; a cookie
//! policy with a `ttl` makes up the cookie when it is missing and sets it on the response. The same
//! bootstrap runs on a real Envoy, which must stick and set the cookie alike.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use support::scripted::Scripted;
use support::*;

fn bootstrap(admin: u16, port: u16, upstreams: &[SocketAddr]) -> String {
    let route = |prefix: &str, cluster: &str, policy: &str| {
        format!(
            "              - match: {{ prefix: {prefix} }}\n                route: {{ cluster: {cluster}, hash_policy: [{policy}] }}\n"
        )
    };
    let routes = [
        route("/ring/header", "ring", "{ header: { header_name: x-user } }"),
        route("/ring/cookie", "ring", "{ cookie: { name: route, ttl: 60s, path: / } }"),
        route("/ring/ip", "ring", "{ connection_properties: { source_ip: true } }"),
        route(
            "/maglev/header",
            "maglev",
            "{ header: { header_name: x-user }, terminal: true }, { connection_properties: { source_ip: true } }",
        ),
    ]
    .concat();
    let route_config = one_virtual_host(&routes);
    let clusters = [
        static_cluster(
            "ring",
            upstreams,
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: { minimum_ring_size: 1024 }\n",
        ),
        static_cluster("maglev", upstreams, "    lb_policy: MAGLEV\n"),
    ]
    .concat();
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

/// The upstreams that answered `n` requests to `path` with these headers, and the last `set-cookie`.
async fn answers(port: u16, path: &str, headers: &[(&str, &str)], n: usize) -> (BTreeSet<String>, Option<String>) {
    let client = http1_client();
    let mut seen = BTreeSet::new();
    let mut cookie = None;
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), headers).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        seen.insert(reply.header("x-upstream").unwrap_or_default().to_string());
        cookie = reply.header("set-cookie").map(str::to_string);
    }
    (seen, cookie)
}

async fn scenario(port: u16) {
    for path in ["/ring/header", "/maglev/header"] {
        let (one, _) = answers(port, path, &[("x-user", "ann")], 20).await;
        assert_eq!(one.len(), 1, "{path}: one user, one endpoint: {one:?}");
        let mut spread = BTreeSet::new();
        for i in 0..40 {
            spread.extend(answers(port, path, &[("x-user", &format!("user-{i}"))], 1).await.0);
        }
        assert!(spread.len() >= 3, "{path}: 40 users over 4 endpoints reached only {spread:?}");
    }
    let (one, _) = answers(port, "/ring/ip", &[], 20).await;
    assert_eq!(one.len(), 1, "one source address, one endpoint: {one:?}");

    // No cookie yet: one is made up and set; sent back, it keeps the client on one endpoint.
    let (_, set) = answers(port, "/ring/cookie", &[], 1).await;
    let set = set.expect("a set-cookie for the made-up cookie");
    let value = set.split('"').nth(1).expect("a quoted value").to_string();
    assert!(set.ends_with("\"; Max-Age=60; Path=/; HttpOnly"), "{set}");
    let cookie = format!("route=\"{value}\"");
    let (sticky, again) = answers(port, "/ring/cookie", &[("cookie", &cookie)], 20).await;
    assert_eq!((sticky.len(), again), (1, None), "a client with the cookie sticks and is not given another");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_policies_keep_keys_on_one_endpoint_as_envoys_do() {
    let mut upstreams = Vec::new();
    for name in ["u1", "u2", "u3", "u4"] {
        upstreams.push(Scripted::always(name, "ok").await.addr);
    }
    let (port, admin) = (free_port(), free_port());
    let _strait = Proxy::start(&bootstrap(admin, port, &upstreams), admin).await;
    scenario(port).await;
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(_envoy) = Envoy::start(&bootstrap(envoy_admin, envoy_port, &upstreams), envoy_admin).await {
        scenario(envoy_port).await;
    }
}
