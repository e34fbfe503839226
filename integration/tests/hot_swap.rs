//! Hot swap under load: HTTP/1.1 and HTTP/2 keep-alive clients and a long gRPC stream run through the
//! proxy while the control plane changes its config every 100 ms for 30 s (SotW ADS). Nothing may
//! fail, and every response must come from the config in force when its request started: config `k`
//! sends to `a`/`b` (even `k`) or `c`/`d` (odd `k`) with weights that move, and stamps `k` on the
//! request going upstream and the response coming back; a reply from a service config `k` does not
//! route to, or a stamp older than one already seen on the same client, is a failure. The gRPC stream
//! survives with every message echoed in order.

#[path = "../support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const DURATION: Duration = Duration::from_secs(30);

/// A request body fed message by message: the client half of a long gRPC stream.
type StreamingBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// Config `k`: even `k` splits between `a` and `b`, odd `k` between `c` and `d`; `k` is stamped on
/// the request (`x-config-request`) and the response (`x-config`).
fn mesh(port: u16, upstreams: &[SocketAddr; 5], k: usize) -> String {
    let [a, b, c, d, g] = upstreams;
    let w = 10 + (k * 7) % 80;
    let (first, second) = pair(k);
    let timeout = if k.is_multiple_of(4) { "5s" } else { "4s" };
    format!(
        "listeners: [{{ name: http, port: {port} }}]\n\
         services:\n\
         - {{ name: a, endpoints: ['{a}'] }}\n\
         - {{ name: b, endpoints: ['{b}'] }}\n\
         - {{ name: c, endpoints: ['{c}'] }}\n\
         - {{ name: d, endpoints: ['{d}'] }}\n\
         - {{ name: grpc, endpoints: ['{g}'], protocol: http2 }}\n\
         routes:\n\
         - {{ name: grpc, listener: http, match: {{ prefix: /pkg.Echo/ }}, to: [{{ service: grpc }}] }}\n\
         - {{ name: web, listener: http, timeout: {timeout},\n\
              to: [{{ service: {first}, weight: {w} }}, {{ service: {second}, weight: {} }}],\n\
              headers: {{ request: {{ set: {{ x-config-request: '{k}' }} }}, response: {{ set: {{ x-config: '{k}' }} }} }} }}\n",
        100 - w
    )
}

/// The two services config `k` routes to.
fn pair(k: usize) -> (&'static str, &'static str) {
    if k.is_multiple_of(2) { ("a", "b") } else { ("c", "d") }
}

fn grpc_message(i: usize) -> Bytes {
    let payload = format!("message {i}");
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload.as_bytes());
    Bytes::from(m)
}

/// Sends plain GETs until `stop`; counts answers by service. Fails on anything but 200, on a reply
/// from a service its config does not route to, and on a config older than one seen before.
async fn load(client: HttpClient, url: String, stop: Arc<AtomicBool>, count: Arc<AtomicUsize>) -> [usize; 4] {
    let mut seen = [0; 4];
    let mut newest = 0;
    while !stop.load(Ordering::Relaxed) {
        let reply = get(&client, &url, &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let k: usize = reply.header("x-config").expect("the config stamp").parse().unwrap();
        let upstream_saw = reply.json()["headers"]["x-config-request"].as_str().unwrap_or_default().to_string();
        assert_eq!(upstream_saw, k.to_string(), "the request and the response were changed by different configs");
        let service = reply.service();
        let (first, second) = pair(k);
        assert!(service == first || service == second, "config {k} routes to {first}/{second}, answered by {service}");
        assert!(k >= newest, "config {k} in force after config {newest} was");
        newest = k;
        seen[usize::from(service.as_bytes()[0] - b'a')] += 1;
        count.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_every_100ms_under_load_lose_nothing() {
    let upstreams = [echo("a").await, echo("b").await, echo("c").await, echo("d").await, echo("grpc").await];
    let dir = TempDir::new("hot-swap");
    let port = free_port();
    write_file(&dir.0, "mesh.yaml", &mesh(port, &upstreams, 0));
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _control_plane = control_plane(&dir.0, xds).await;
    let admin = free_port();
    let proxy = Proxy::start(&ads_bootstrap("hot-swap", admin, xds, "GRPC"), admin).await;
    let url = format!("http://127.0.0.1:{port}/");

    // The long gRPC stream: a message every 50 ms, each echo read back before the next.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let grpc: Client<_, StreamingBody> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let request = http::Request::post(format!("http://127.0.0.1:{port}/pkg.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    tx.send(Ok(Frame::data(grpc_message(0)))).await.unwrap();
    let response = grpc.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.into_body();

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let h1 = tokio::spawn(load(http1_client(), url.clone(), stop.clone(), count.clone()));
    let h2 = tokio::spawn(load(http2_client(), url.clone(), stop.clone(), count.clone()));

    let started = Instant::now();
    let mut changes = 0;
    let mut sent = 1;
    let mut echoed = Vec::new();
    let mut next_change = Instant::now();
    while started.elapsed() < DURATION {
        if Instant::now() >= next_change {
            changes += 1;
            write_file(&dir.0, "mesh.yaml", &mesh(port, &upstreams, changes));
            next_change += Duration::from_millis(100);
        }
        // Read the echo of the last message, then send the next one.
        while echoed.len() < sent {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame()).await.expect("echo in time");
            let data = frame.expect("the stream is still open").unwrap().into_data().unwrap();
            echoed.push(data);
        }
        tx.send(Ok(Frame::data(grpc_message(sent)))).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (h1, h2) = (h1.await.unwrap(), h2.await.unwrap());

    // The stream ends cleanly: every message echoed in order, then trailers with grpc-status 0.
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = stream.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => echoed.push(data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let expected: Vec<Bytes> = (0..sent).map(grpc_message).collect();
    assert_eq!(echoed.concat(), expected.concat(), "the gRPC stream lost or reordered messages");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");

    let total = count.load(Ordering::Relaxed);
    let per_second = total as f64 / DURATION.as_secs_f64();
    assert!(per_second >= 200.0, "only {per_second:.0} requests/s");
    assert!(h1.iter().chain(&h2).all(|&n| n > 0), "every service answers: {h1:?} {h2:?}");
    let applied = proxy.stat("strait_ads_update_success_total").await;
    assert!(applied >= 20.0, "only {applied} config updates applied in {DURATION:?}");
    assert_eq!(proxy.stat("strait_ads_update_rejected_total").await, 0.0);
    eprintln!("hot swap: {total} requests ({per_second:.0}/s), {changes} config writes, {applied} updates applied");
}
