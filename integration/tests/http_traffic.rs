//! Traffic end to end: HTTP/2 downstream, streamed large bodies, gRPC trailers, WebSocket upgrades,
//! the TCP proxy, upstream failures with Envoy's answers, load balancing, DNS clusters, forwarding
//! headers, connection reuse and access logs.

#[path = "../support/mod.rs"]
mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ALL_TO: &str = r#"
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /uf }
                route: { cluster: dead }
              - match: { prefix: /upe }
                route: { cluster: garbage }
              - match: { prefix: /uc }
                route: { cluster: closer }
              - match: { prefix: /uh }
                route: { cluster: unhealthy }
              - match: { prefix: /rr }
                route: { cluster: three }
              - match: { prefix: /wrr }
                route: { cluster: weighted }
              - match: { prefix: /dns }
                route: { cluster: dns }
              - match: { prefix: /logical }
                route: { cluster: logical }
              - match: { prefix: /ws }
                route: { cluster: ws }
              - match: { prefix: /pkg.Echo/, grpc: {} }
                route: { cluster: grpc }
              - match: { prefix: / }
                route: { cluster: a, timeout: 0s }
"#;

/// An upstream that answers every connection with `reply` (raw bytes) and closes.
async fn raw_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

/// A WebSocket upstream that echoes messages, uppercased.
async fn ws_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let text = msg.into_text().unwrap().to_uppercase();
                        let _ = ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await;
                    }
                }
            });
        }
    });
    addr
}

struct Setup {
    proxy: Proxy,
    port: u16,
    log: std::path::PathBuf,
    _dir: TempDir,
}

async fn start(hcm_extra: &str) -> Setup {
    let a = echo("a").await;
    let three = [echo("r1").await, echo("r2").await, echo("r3").await];
    let w = [echo("w1").await, echo("w3").await];
    let dns = echo("dns").await;
    let garbage = raw_upstream(b"NOT HTTP AT ALL\r\n\r\n").await;
    let closer = raw_upstream(b"").await;
    let ws = ws_upstream().await;
    let dead: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = TempDir::new("traffic");
    let log = dir.0.join("access.log");
    let weighted = format!(
        "  - name: weighted\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: weighted\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          load_balancing_weight: 1\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          load_balancing_weight: 3\n",
        w[0].port(),
        w[1].port()
    );
    let unhealthy = format!(
        // Panic mode off: with every endpoint unhealthy there is no one to send to (by default, as in
        // Envoy, the cluster would panic and use the unhealthy endpoint).
        "  - name: unhealthy\n    connect_timeout: 1s\n    common_lb_config: {{ healthy_panic_threshold: {{ value: 0 }} }}\n    load_assignment:\n      cluster_name: unhealthy\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          health_status: UNHEALTHY\n",
        a.port()
    );
    let dns_cluster = |name: &str, kind: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: {kind}\n    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 0.5s\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }}\n"
        )
    };
    let clusters = [
        static_cluster("a", &[a], ""),
        static_cluster("three", &three, ""),
        weighted,
        unhealthy,
        dns_cluster("dns", "STRICT_DNS", dns.port()),
        dns_cluster("logical", "LOGICAL_DNS", dns.port()),
        static_cluster("garbage", &[garbage], ""),
        static_cluster("closer", &[closer], ""),
        static_cluster("dead", &[dead], ""),
        static_cluster("ws", &[ws], ""),
        static_cluster("grpc", &[echo("grpc").await], H2_OPTIONS),
    ]
    .join("");
    let hcm = format!(
        "{hcm_extra}          upgrade_configs: [{{ upgrade_type: websocket }}]\n          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n",
        log.display()
    );
    let (admin, port) = (free_port(), free_port());
    let proxy = Proxy::start(&http_bootstrap(admin, port, &hcm, ALL_TO, &clusters), admin).await;
    Setup { proxy, port, log, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_get_envoys_answers_and_flags() {
    let s = start("").await;
    let c = http1_client();
    let at = |p: &str| format!("http://127.0.0.1:{}{p}", s.port);
    let r = get(&c, &at("/uf"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
    );
    let r = get(&c, &at("/upe"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (502, "upstream connect error or disconnect/reset before headers. reset reason: protocol error")
    );
    let r = get(&c, &at("/uc"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.ends_with("connection termination"), "{}", r.body);
    let r = get(&c, &at("/uh"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream"));
    // Still serving after every failure.
    assert_eq!(get(&c, &at("/ok"), &[]).await.service(), "a");

    assert_eq!(s.proxy.stat("envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"dead\"}").await, 1.0);
    assert_eq!(s.proxy.stat("envoy_cluster_upstream_cx_none_healthy{envoy_cluster_name=\"unhealthy\"}").await, 1.0);
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if log.lines().count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flags: Vec<&str> = log.lines().map(|l| l.split_whitespace().nth(5).unwrap_or("")).collect();
    assert_eq!(flags, vec!["UF", "UPE", "UC", "UH", "-"], "access log:\n{log}");
    assert!(log.lines().next().unwrap().contains("\"GET /uf HTTP/1.1\" 503 UF"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_and_dns_clusters() {
    let s = start("").await;
    let c = http1_client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..300 {
        *counts.entry(get(&c, &format!("http://127.0.0.1:{}/rr", s.port), &[]).await.service()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 100), "round robin is exact: {counts:?}");
    let mut w3 = 0;
    for _ in 0..400 {
        if get(&c, &format!("http://127.0.0.1:{}/wrr", s.port), &[]).await.service() == "w3" {
            w3 += 1;
        }
    }
    assert_eq!(w3, 300, "weighted round robin 1:3 is exact over whole cycles");
    assert_eq!(get(&c, &format!("http://127.0.0.1:{}/dns", s.port), &[]).await.service(), "dns");
    assert_eq!(get(&c, &format!("http://127.0.0.1:{}/logical", s.port), &[]).await.service(), "dns");
    // Keep-alive pools: 700 sequential requests needed only a handful of upstream connections.
    let cx = s.proxy.stat("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"three\"}").await;
    assert!((3.0..=6.0).contains(&cx), "upstream connections to 'three': {cx}");
    let clusters = s.proxy.admin_text("/clusters").await;
    assert!(clusters.contains("weighted::127.0.0.1:") && clusters.contains("::weight::3"), "{clusters}");
    assert!(
        clusters.contains("unhealthy::127.0.0.1:") && clusters.contains("health_flags::/failed_eds_health"),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_downstream_multiplexes_and_keeps_grpc_trailers() {
    let s = start("").await;
    let c = http2_client();
    // One request first: the client's connection is up before the 50 race for it.
    assert_eq!(get(&c, &format!("http://127.0.0.1:{}/h2/first", s.port), &[]).await.status, 200);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        let url = format!("http://127.0.0.1:{}/h2/{i}", s.port);
        tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.service().as_str()), (200, "a"));
    }
    assert_eq!(
        s.proxy.stat("envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix=\"ingress_http\"}").await,
        1.0
    );

    // A gRPC-framed bidirectional exchange over HTTP/2: messages echoed, trailers intact.
    let msg = |payload: &[u8]| {
        let mut m = vec![0u8];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        Bytes::from(m)
    };
    let mut body = msg(b"hello").to_vec();
    body.extend_from_slice(&msg(b"world"));
    let req = http::Request::post(format!("http://127.0.0.1:{}/pkg.Echo/Call", s.port))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-grpc-status", "7")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "7");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(collected.to_bytes(), Bytes::from(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_without_buffering() {
    let s = start("").await;
    let c = http1_client();
    const SIZE: usize = 256 << 20;
    // Download 256 MiB.
    let resp = c
        .request(
            http::Request::get(format!("http://127.0.0.1:{}/bytes/{SIZE}", s.port))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, Bytes::len);
    }
    assert_eq!(got, SIZE);
    // Upload 256 MiB in chunks: the upstream counts what it received.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..256 {
            tx.send(Ok(http_body::Frame::data(chunk.clone()))).await.unwrap();
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = client
        .request(http::Request::post(format!("http://127.0.0.1:{}/upload", s.port)).body(body).unwrap())
        .await
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["body_bytes"], SIZE);
    // Neither direction was held in memory: the proxy's peak RSS stays far below the 256 MiB moved.
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.proxy.child.id())).unwrap();
    let hwm_kb: u64 =
        status.lines().find(|l| l.starts_with("VmHWM")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(hwm_kb < 64 * 1024, "peak RSS {hwm_kb} kB");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_both_ways() {
    let s = start("").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", s.port)).await.unwrap();
    assert_eq!(resp.status(), 101);
    for word in ["hello", "strait"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(word)).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), word.to_uppercase());
    }
    ws.close(None).await.unwrap();
    // An upgrade the connection manager does not allow is refused with 403.
    let r = get(
        &http1_client(),
        &format!("http://127.0.0.1:{}/ws", s.port),
        &[("connection", "upgrade"), ("upgrade", "h2c-custom")],
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_sets_forwarding_headers() {
    let s = start("          use_remote_address: true\n").await;
    let c = http1_client();
    let r = get(
        &c,
        &format!("http://127.0.0.1:{}/x", s.port),
        &[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https"), ("x-request-id", "keep-me")],
    )
    .await;
    let h = &r.json()["headers"];
    let xff = h["x-forwarded-for"].as_str().unwrap();
    let (client, appended) = xff.split_once(',').unwrap();
    assert_eq!(client, "203.0.113.9");
    // As Envoy: a loopback peer is recorded as this host's own address.
    assert!(appended.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()), "{xff}");
    assert_eq!(h["x-forwarded-proto"], "http", "an edge proxy sets the scheme it saw");
    assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
    assert_ne!(h["x-request-id"], "keep-me", "an external client's request id is replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_passes_half_close_and_times_out_idle() {
    // An upstream that reads to EOF, then answers with what it read and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = s.write_all(format!("got {} bytes", all.len()).as_bytes()).await;
            });
        }
    });
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        tcp_listener("tcp", port, "up", "          idle_timeout: 0.3s\n"),
        static_cluster("up", &[up], "")
    );
    let proxy = Proxy::start(&yaml, admin).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[1u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 100000 bytes");

    // An idle connection is closed after idle_timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed by the proxy");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
    assert_eq!(proxy.stat("envoy_tcp_idle_timeout{envoy_tcp_prefix=\"tcp\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_trusted_hops_and_request_id_in_response() {
    let hcm = "          request_timeout: 0.5s\n          always_set_request_id_in_response: true\n          use_remote_address: true\n          xff_num_trusted_hops: 1\n";
    let s = start(hcm).await;
    // The trusted client is the last x-forwarded-for hop: external, so its request id is replaced.
    let r = get(
        &http1_client(),
        &format!("http://127.0.0.1:{}/x", s.port),
        &[("x-forwarded-for", "203.0.113.9"), ("x-request-id", "from-outside")],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-envoy-external-address"], "203.0.113.9");
    let xff = h["x-forwarded-for"].as_str().unwrap();
    assert!(xff.starts_with("203.0.113.9,") && !xff.ends_with("127.0.0.1"), "the peer appended as this host: {xff}");
    let id = h["x-request-id"].as_str().unwrap();
    assert_ne!(id, "from-outside");
    assert_eq!(r.header("x-request-id"), Some(id), "the id the upstream saw is returned");

    // A request whose body never finishes: 408 after request_timeout.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    c.write_all(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    assert_eq!(
        s.proxy.stat("envoy_http_downstream_rq_timeout{envoy_http_conn_manager_prefix=\"ingress_http\"}").await,
        1.0
    );
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS an HTTP/2 client gets from the proxy on `port`, once a
/// request has been answered (the proxy's SETTINGS have come by then).
async fn advertised_streams(port: u16) -> usize {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::get(format!("http://127.0.0.1:{port}/")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::pin!(response);
    let response = tokio::select! {
        response = &mut response => response.unwrap(),
        done = &mut connection => panic!("the connection ended first: {done:?}"),
    };
    assert_eq!(response.status(), 200);
    connection.max_concurrent_send_streams()
}

/// A connection manager's `http2_protocol_options.max_concurrent_streams` is what HTTP/2 clients are
/// told, 1024 when unset (what Envoy 1.40 advertises); values outside Envoy's ranges are refused,
/// naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_as_envoy() {
    let upstream = echo("a").await;
    let routes = one_virtual_host("              - match: { prefix: / }\n                route: { cluster: a }\n");
    let clusters = static_cluster("a", &[upstream], "");
    let limited =
        "          http2_protocol_options: { max_concurrent_streams: 7, initial_stream_window_size: 131072 }\n";
    for (hcm, expected) in [("", 1024), (limited, 7)] {
        let both = side_by_side(|admin, port| http_bootstrap(admin, port, hcm, &routes, &clusters)).await;
        for &(proxy, port) in &both.ports {
            assert_eq!(advertised_streams(port).await, expected, "{proxy}: {hcm:?}");
        }
    }
    let dir = TempDir::new("h2-settings");
    for (bad, field) in [
        ("max_concurrent_streams: 0", "http2_protocol_options.max_concurrent_streams"),
        ("initial_stream_window_size: 1000", "http2_protocol_options.initial_stream_window_size"),
        ("initial_connection_window_size: 1000", "http2_protocol_options.initial_connection_window_size"),
    ] {
        let hcm = format!("          http2_protocol_options: {{ {bad} }}\n");
        let file = write_file(&dir.0, "bad.yaml", &http_bootstrap(free_port(), free_port(), &hcm, &routes, &clusters));
        let out = std::process::Command::new(BIN).arg("validate").arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(field), "{bad}: {text}");
    }
}
