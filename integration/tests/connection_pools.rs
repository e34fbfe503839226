//! Upstream connection lifetimes (`common_http_protocol_options` in the cluster's
//! `HttpProtocolOptions`): `max_requests_per_connection` (HTTP/1.1 and HTTP/2), `idle_timeout` and
//! `max_connection_duration`, seen in how many connections the upstream gets; and HTTP/2 connections
//! shared up to `max_concurrent_streams` streams (ours, or the upstream's SETTINGS), another opened
//! when they are full; every connection a burst opened kept for the next one. The same
//! bootstrap runs on a real Envoy, which must open as many.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::scripted::Scripted;
use support::*;

fn options(http2: bool, common: &str) -> String {
    let protocol = if http2 { "http2_protocol_options: {}" } else { "http_protocol_options: {}" };
    format!(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
         common_http_protocol_options: {{ {common} }}\n        explicit_http_config: {{ {protocol} }}\n"
    )
}

fn bootstrap(admin: u16, port: u16, upstream: SocketAddr, limited: SocketAddr) -> String {
    let clusters = [
        ("per_conn", false, "max_requests_per_connection: 2"),
        ("per_stream", true, "max_requests_per_connection: 3"),
        ("idle", false, "idle_timeout: 0.3s"),
        ("aged", false, "max_connection_duration: 0.3s"),
    ];
    let routes: String = clusters
        .iter()
        .map(|(name, ..)| {
            format!("              - match: {{ prefix: /{name} }}\n                route: {{ cluster: {name} }}\n")
        })
        .collect();
    let route_config = one_virtual_host(&routes);
    let mut clusters: String =
        clusters.iter().map(|(name, h2, common)| static_cluster(name, &[upstream], &options(*h2, common))).collect();
    let streams = options(true, "")
        .replace("http2_protocol_options: {}", "http2_protocol_options: { max_concurrent_streams: 2 }");
    clusters += &static_cluster("streams", &[upstream], &streams);
    clusters += &static_cluster("peer_streams", &[limited], &options(true, ""));
    let route_config = route_config.replace(
        "              routes:\n",
        "              routes:\n              - match: { prefix: /streams }\n                route: { cluster: streams }\n\
         \x20             - match: { prefix: /peer_streams }\n                route: { cluster: peer_streams }\n",
    );
    http_bootstrap(admin, port, "", &route_config, &clusters)
}

async fn requests(port: u16, path: &str, n: usize) {
    let client = http1_client();
    for _ in 0..n {
        let reply = get(&client, &format!("http://127.0.0.1:{port}{path}"), &[("x-script", "ok")]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
}

async fn scenario(port: u16) {
    requests(port, "/per_conn", 6).await;
    requests(port, "/per_stream", 9).await;
    requests(port, "/idle", 2).await;
    requests(port, "/aged", 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    requests(port, "/idle", 1).await;
    requests(port, "/aged", 1).await;
    // Five streams at once, two per connection: three connections; later ones reuse them.
    let mut concurrent = Vec::new();
    for _ in 0..5 {
        concurrent.push(tokio::spawn(async move {
            let client = http1_client();
            get(&client, &format!("http://127.0.0.1:{port}/streams"), &[("x-script", "slow-300")]).await.status
        }));
    }
    for c in concurrent {
        assert_eq!(c.await.unwrap(), 200);
    }
    requests(port, "/streams", 4).await;
}

const EXPECTED: [(&str, f64); 5] =
    [("per_conn", 3.0), ("per_stream", 3.0), ("idle", 2.0), ("aged", 2.0), ("streams", 3.0)];

/// The upstream's own SETTINGS_MAX_CONCURRENT_STREAMS (3), learnt from a first request: seven
/// streams at once then take three connections, none refused. (Envoy, on the same config, opens a
/// new connection's streams before its SETTINGS come and answers the ones the upstream refuses with
/// 503, so this part is Strait's alone.)
async fn peer_stream_limit(port: u16) {
    requests(port, "/peer_streams", 1).await;
    let mut concurrent = Vec::new();
    for _ in 0..7 {
        concurrent.push(tokio::spawn(async move {
            let client = http1_client();
            get(&client, &format!("http://127.0.0.1:{port}/peer_streams"), &[]).await.status
        }));
    }
    for c in concurrent {
        assert_eq!(c.await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_after_their_requests_idle_time_or_age_as_in_envoy() {
    let upstream = Scripted::start("pooled").await;
    let limited = Scripted::with_stream_limit("limited", "slow-300", 3).await;
    let (port, admin) = (free_port(), free_port());
    let strait = Proxy::start(&bootstrap(admin, port, upstream.addr, limited.addr), admin).await;
    scenario(port).await;
    peer_stream_limit(port).await;
    let peer = strait.stat("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"peer_streams\"}").await;
    assert_eq!(peer, 3.0, "peer_streams: upstream connections");
    for (cluster, connections) in EXPECTED {
        let ours = strait.stat(&format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{cluster}\"}}")).await;
        assert_eq!(ours, connections, "{cluster}: upstream connections");
    }
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    if let Some(envoy) =
        Envoy::start(&bootstrap(envoy_admin, envoy_port, upstream.addr, limited.addr), envoy_admin).await
    {
        scenario(envoy_port).await;
        for (cluster, connections) in EXPECTED {
            let url = format!("http://{}/stats?filter=^cluster\\.{cluster}\\.upstream_cx_total$", envoy.admin);
            let (_, text) = get_text(&url).await.unwrap();
            let theirs: f64 = text.lines().find_map(|l| l.rsplit(": ").next()?.parse().ok()).unwrap_or(0.0);
            assert_eq!(theirs, connections, "{cluster}: Envoy's upstream connections");
        }
    }
}

/// How a [`counting_upstream`] answers the requests on its connections.
#[derive(Clone, Copy)]
enum Answering {
    /// With `200 ok` at once; a connection is closed 200 ms after it went quiet (as a server's
    /// keep-alive timeout does).
    AtOnceClosingWhenQuiet,
    /// With `200 ok` once this many requests have arrived since the last burst was answered: a
    /// burst of that many concurrent requests needs that many connections.
    InBursts(usize),
}

/// An HTTP/1.1 upstream answering as told; counts the connections it accepted.
async fn counting_upstream(answering: Answering) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backlog for a burst of connections (the default 128 would drop the rest of a burst's SYNs,
    // and their retry come after the proxy's connect timeout).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let arrived = std::sync::Arc::new(tokio::sync::watch::channel(0usize).0);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let read = socket.read(&mut buf);
                    let read = match answering {
                        Answering::AtOnceClosingWhenQuiet => {
                            tokio::time::timeout(Duration::from_millis(200), read).await.unwrap_or(Ok(0))
                        }
                        Answering::InBursts(_) => read.await,
                    };
                    let Ok(n @ 1..) = read else { return };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if let Answering::InBursts(burst) = answering {
                            let mut this = 0;
                            arrived.send_modify(|n| {
                                *n += 1;
                                this = *n;
                            });
                            let released = this.div_ceil(burst) * burst;
                            let _ = arrived.subscribe().wait_for(|n| *n >= released).await;
                        }
                        if socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// An idle upstream connection that its upstream closes stops counting at once
/// (`upstream_cx_active` back to 0, as in Envoy), and the next request opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_its_upstream_closes_is_let_go_at_once() {
    let (upstream, accepted) = counting_upstream(Answering::AtOnceClosingWhenQuiet).await;
    let (port, admin) = (free_port(), free_port());
    let routes =
        one_virtual_host("              - match: { prefix: / }\n                route: { cluster: closing }\n");
    let strait =
        Proxy::start(&http_bootstrap(admin, port, "", &routes, &static_cluster("closing", &[upstream], "")), admin)
            .await;
    let active = "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"closing\"}";
    requests(port, "/", 2).await;
    assert_eq!(strait.stat(active).await, 1.0, "one connection, reused");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while strait.stat(active).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the connection its upstream closed still counts as open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    requests(port, "/", 1).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "a new connection after the close");
    assert_eq!(strait.stat(active).await, 1.0);
}

/// Sends `burst` concurrent requests on connections of their own, twice; returns how many
/// connections the upstream accepted.
async fn two_bursts(who: &str, port: u16, burst: usize, accepted: &std::sync::atomic::AtomicUsize) -> usize {
    for round in 0..2 {
        let sent: Vec<_> = (0..burst)
            .map(|_| {
                tokio::spawn(async move {
                    let client = http1_client();
                    get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await.status
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for reply in sent {
            *statuses.entry(reply.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(statuses, [(200, burst)].into(), "{who}, burst {round}: statuses");
    }
    accepted.load(std::sync::atomic::Ordering::SeqCst)
}

/// Every connection a burst opened stays in the pool (there is no cap below `max_connections`,
/// as in Envoy), so the next burst as large opens none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_a_few_hundred_reuses_the_last_bursts_connections_as_envoy() {
    const BURST: usize = 280;
    let routes =
        one_virtual_host("              - match: { prefix: / }\n                route: { cluster: gathered }\n");
    let (upstream, accepted) = counting_upstream(Answering::InBursts(BURST)).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = |admin, port| http_bootstrap(admin, port, "", &routes, &static_cluster("gathered", &[upstream], ""));
    let strait = Proxy::start(&yaml(admin, port), admin).await;
    assert_eq!(two_bursts("strait", port, BURST, &accepted).await, BURST, "upstream connections opened for two bursts");
    let total = strait.stat("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"gathered\"}").await;
    assert_eq!(total, BURST as f64);
    drop(strait);

    let (upstream, accepted) = counting_upstream(Answering::InBursts(BURST)).await;
    let (envoy_port, envoy_admin) = (free_port(), free_port());
    let yaml = http_bootstrap(envoy_admin, envoy_port, "", &routes, &static_cluster("gathered", &[upstream], ""));
    if let Some(_envoy) = Envoy::start(&yaml, envoy_admin).await {
        assert_eq!(two_bursts("envoy", envoy_port, BURST, &accepted).await, BURST, "Envoy's upstream connections");
    }
}
