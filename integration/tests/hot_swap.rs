//! Hot swap under load: HTTP/1.1 and HTTP/2 keep-alive clients and a long gRPC stream run through the
//! proxy while the control plane changes its config every 100 ms for 30 s (SotW ADS). Nothing may
//! fail: every request answered 200 by a service the config allows (the weights move between `a` and
//! `b`; `c` is a service no route ever sends to), and the gRPC stream survives with every message
//! echoed in order.

#[path = "../support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const DURATION: Duration = Duration::from_secs(30);

/// A request body fed message by message: the client half of a long gRPC stream.
type StreamingBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn mesh(port: u16, upstreams: &[SocketAddr; 4], k: usize) -> String {
    let [a, b, c, g] = upstreams;
    let wa = 10 + (k * 7) % 80;
    let timeout = if k.is_multiple_of(2) { "5s" } else { "4s" };
    format!(
        "listeners: [{{ name: http, port: {port} }}]\n\
         services:\n\
         - {{ name: a, endpoints: ['{a}'] }}\n\
         - {{ name: b, endpoints: ['{b}'] }}\n\
         - {{ name: c, endpoints: ['{c}'] }}\n\
         - {{ name: grpc, endpoints: ['{g}'], protocol: http2 }}\n\
         routes:\n\
         - {{ name: grpc, listener: http, match: {{ prefix: /pkg.Echo/ }}, to: [{{ service: grpc }}] }}\n\
         - {{ name: web, listener: http, to: [{{ service: a, weight: {wa} }}, {{ service: b, weight: {} }}], timeout: {timeout} }}\n",
        100 - wa
    )
}

fn grpc_message(i: usize) -> Bytes {
    let payload = format!("message {i}");
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload.as_bytes());
    Bytes::from(m)
}

/// Sends plain GETs until `stop`; counts answers, fails on anything but 200 from `a` or `b`.
async fn load(client: HttpClient, url: String, stop: Arc<AtomicBool>, count: Arc<AtomicUsize>) -> [usize; 2] {
    let mut seen = [0, 0];
    while !stop.load(Ordering::Relaxed) {
        let reply = get(&client, &url, &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        match reply.service().as_str() {
            "a" => seen[0] += 1,
            "b" => seen[1] += 1,
            other => panic!("answered by '{other}', which no config routes to"),
        }
        count.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_every_100ms_under_load_lose_nothing() {
    let upstreams = [echo("a").await, echo("b").await, echo("c").await, echo("grpc").await];
    let dir = TempDir::new("hot-swap");
    let port = free_port();
    write_file(&dir.0, "mesh.yaml", &mesh(port, &upstreams, 0));
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let source = Arc::new(strait_control::store::Directory(PathBuf::from(&dir.0)));
    tokio::spawn(strait_control::serve(source, xds, std::future::pending()));
    while tokio::net::TcpStream::connect(xds).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    assert!(h1[0] > 0 && h1[1] > 0 && h2[0] > 0 && h2[1] > 0, "both services answer: {h1:?} {h2:?}");
    let applied = proxy.stat("strait_ads_update_success_total").await;
    assert!(applied >= 20.0, "only {applied} config updates applied in {DURATION:?}");
    assert_eq!(proxy.stat("strait_ads_update_rejected_total").await, 0.0);
    eprintln!("hot swap: {total} requests ({per_second:.0}/s), {changes} config writes, {applied} updates applied");
}
