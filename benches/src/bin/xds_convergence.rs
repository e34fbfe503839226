//! Push convergence: N simulated ADS clients (each a real tonic gRPC stream, State of the World or
//! delta) connected to one real `strait-control` process; the time from one management-API change
//! until every client has received and ACKed it, with the control plane's CPU and RSS.
//!
//!   cargo run --release -p strait-benches --bin xds-convergence -- [--clients 100,1000,2000]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_benches::free_port;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use xds_proto::control as pb;
use xds_proto::pb::envoy::config::core::v3::Node;
use xds_proto::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_proto::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

const MESH: &str = "listeners: [{ name: http, port: 10000 }]
services:
  - { name: web, endpoints: ['127.0.0.1:18081', '127.0.0.1:18082'] }
  - { name: canary, endpoints: ['127.0.0.1:18083'] }
routes:
  - { name: main, listener: http, to: [{ service: web, weight: 90 }, { service: canary, weight: 10 }] }
";

fn proc_stat(pid: u32) -> (f64, f64) {
    let tick = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / tick, rss_kb / 1024.0)
}

struct ControlPlane {
    child: Child,
    xds: String,
    api: String,
    _dir: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_control(binary: &Path) -> ControlPlane {
    let dir = std::env::temp_dir().join(format!("strait-xds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    let (xds, api) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let child = Command::new(binary)
        .args(["serve", "--config-dir"])
        .arg(&dir)
        .args(["--xds-address", &xds, "--api-address", &api, "-l", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strait-control (build it with --release first)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&api).is_err() {
        assert!(Instant::now() < deadline, "strait-control did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    ControlPlane { child, xds, api, _dir: dir }
}

/// One simulated proxy: subscribes to everything, ACKs every response, and reports when a route
/// configuration with `weight` arrives (after the barrier: the change).
async fn client(
    id: usize,
    xds: String,
    delta: bool,
    connected: Arc<Barrier>,
    done: mpsc::Sender<Instant>,
    marker: &'static str,
) -> anyhow::Result<()> {
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")).await?;
    let node = Some(Node { id: format!("bench-{id}"), cluster: "bench".into(), ..Default::default() });
    let contains_marker = |bytes: &[u8]| bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    if delta {
        let (tx, rx) = mpsc::channel(8);
        for (t, names) in [(CLUSTER, vec![]), (LISTENER, vec![]), (ROUTE_CONFIGURATION, vec!["http".to_string()])] {
            let request = DeltaDiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                resource_names_subscribe: names,
                ..Default::default()
            };
            tx.send(request).await?;
        }
        let mut responses = ads.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
        let mut ready = false;
        while let Some(r) = responses.message().await? {
            let hit = r.resources.iter().any(|x| x.resource.as_ref().is_some_and(|a| contains_marker(&a.value)));
            let ack =
                DeltaDiscoveryRequest { type_url: r.type_url.clone(), response_nonce: r.nonce, ..Default::default() };
            tx.send(ack).await?;
            if hit {
                done.send(Instant::now()).await?;
            }
            if !ready && r.type_url == ROUTE_CONFIGURATION {
                ready = true;
                connected.wait().await;
            }
        }
    } else {
        let (tx, rx) = mpsc::channel(8);
        let names = |t: &str| {
            if t == ROUTE_CONFIGURATION {
                vec!["http".to_string()]
            } else if t == CLUSTER_LOAD_ASSIGNMENT {
                vec!["web".into(), "canary".into()]
            } else {
                vec![]
            }
        };
        for t in [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION] {
            let request = DiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                resource_names: names(t),
                ..Default::default()
            };
            tx.send(request).await?;
        }
        let mut responses = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
        let mut ready = false;
        while let Some(r) = responses.message().await? {
            let hit = r.type_url == ROUTE_CONFIGURATION && r.resources.iter().any(|a| contains_marker(&a.value));
            let ack = DiscoveryRequest {
                type_url: r.type_url.clone(),
                resource_names: names(&r.type_url),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            };
            tx.send(ack).await?;
            if hit {
                done.send(Instant::now()).await?;
            }
            if !ready && r.type_url == ROUTE_CONFIGURATION {
                ready = true;
                connected.wait().await;
            }
        }
    }
    Ok(())
}

async fn run(binary: &Path, n: usize, delta: bool) -> anyhow::Result<(Duration, f64, f64, f64)> {
    let control = start_control(binary);
    let pid = control.child.id();
    let connected = Arc::new(Barrier::new(n + 1));
    let (done_tx, mut done) = mpsc::channel(n);
    // The canary weight the change sets: its bytes mark the new route configuration.
    let marker = "canary-weight-marker";
    let mut clients = Vec::with_capacity(n);
    for id in 0..n {
        let (xds, connected, done_tx) = (control.xds.clone(), connected.clone(), done_tx.clone());
        clients.push(tokio::spawn(async move {
            if let Err(e) = client(id, xds, delta, connected, done_tx, marker).await {
                eprintln!("client {id}: {e}");
            }
        }));
    }
    connected.wait().await;
    let (_, rss_connected) = proc_stat(pid);
    let (cpu_before, _) = proc_stat(pid);
    let mut api = pb::mesh_service_client::MeshServiceClient::connect(format!("http://{}", control.api)).await?;
    let change = pb::Mesh {
        routes: vec![pb::Route {
            name: marker.into(),
            listener: "http".into(),
            r#match: Some(pb::Match { prefix: "/canary".into(), ..Default::default() }),
            to: vec![pb::Target { service: "canary".into(), weight: 1 }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let started = Instant::now();
    api.apply(pb::ApplyRequest { objects: Some(change), dry_run: false }).await?;
    let mut last = started;
    for _ in 0..n {
        last = tokio::time::timeout(Duration::from_secs(60), done.recv()).await?.expect("clients report");
    }
    let converged = last - started;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu_after, rss) = proc_stat(pid);
    for c in clients {
        c.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok((converged, cpu_after - cpu_before, rss_connected, rss))
}

fn main() -> anyhow::Result<()> {
    let mut counts = vec![100, 1000, 2000];
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        counts = args.get(i + 1).map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect()).unwrap_or(counts);
    }
    let binary = std::env::current_exe()?.with_file_name("strait-control");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "| clients | protocol | converged (change -> all ACKed) | control-plane CPU for the push | RSS connected | RSS after |"
    );
    println!("|---|---|---|---|---|---|");
    for n in counts {
        for delta in [false, true] {
            let (converged, cpu, rss_connected, rss) = runtime.block_on(run(&binary, n, delta))?;
            println!(
                "| {n} | {} | {:.0} ms | {:.2} s | {rss_connected:.1} MB | {rss:.1} MB |",
                if delta { "delta" } else { "SotW" },
                converged.as_secs_f64() * 1000.0,
                cpu
            );
        }
    }
    Ok(())
}
