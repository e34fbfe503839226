//! Balancing around bad endpoints, Strait against Envoy in one run (`--concurrency 1` each, pinned
//! to core 0; upstreams and the load generator on core 1). Five upstreams answer in 2 ms:
//! - **slow**: one of them answers in 20 ms (10x slower). Open-loop load at a fixed rate; the
//!   latency percentiles through Strait with P2C (LEAST_REQUEST) and with peak-EWMA, and through
//!   Envoy with LEAST_REQUEST, and the share of requests the slow one got.
//! - **failing**: one of them answers 503 to every other request; ROUND_ROBIN with outlier
//!   detection (success rate, 1 s interval). The success rate the client sees over the whole run
//!   and once the endpoint has been ejected (after the first seconds).
//!
//!   cargo build --release -p strait-proxy -p strait-benches && taskset -c 1 ./target/release/lb-resilience

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strait_benches::{admin_ready, free_port};

const RATE: u64 = 500;
const SECONDS: u64 = 12;
/// The failing scenario's "after ejection" window starts here.
const SETTLED_AFTER: Duration = Duration::from_secs(4);

/// An upstream named `name` answering after `delay`; with `fail_every_other`, every second request
/// gets a 503.
async fn upstream(name: &'static str, delay: Duration, fail_every_other: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    async move {
                        tokio::time::sleep(delay).await;
                        let status = if fail_every_other && n % 2 == 1 { 503 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from_static(b"hello")))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

fn bootstrap(admin: u16, port: u16, upstreams: &[SocketAddr], cluster_extra: &str) -> String {
    let endpoints: String = upstreams
        .iter()
        .map(|a| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n\
         static_resources:\n  listeners:\n  - name: http\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n\
         \x20   filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: bench\n          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]\n\
         \x20         route_config:\n            virtual_hosts:\n            - {{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: svc, timeout: 5s }} }}] }}\n\
         \x20 clusters:\n  - name: svc\n    connect_timeout: 1s\n{cluster_extra}    load_assignment:\n      cluster_name: svc\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
    )
}

const P2C: &str = "    lb_policy: LEAST_REQUEST\n";
const PEAK_EWMA: &str = "    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: strait.peak_ewma\n\
    \x20         typed_config: { '@type': type.googleapis.com/xds.type.v3.TypedStruct, type_url: type.googleapis.com/strait.lb.v1.PeakEwma }\n";
const PEAK_EWMA_FAST_DECAY: &str = "    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: strait.peak_ewma\n\
    \x20         typed_config: { '@type': type.googleapis.com/xds.type.v3.TypedStruct, type_url: type.googleapis.com/strait.lb.v1.PeakEwma, value: { decay: 1s } }\n";
const OUTLIER: &str = "    outlier_detection: { interval: 1s, base_ejection_time: 30s, max_ejection_percent: 20 }\n";

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a proxy (`binary` is strait-proxy or envoy) on `config`, pinned to core 0.
fn start(binary: &Path, config: &str, dir: &Path, admin: u16) -> Option<Proxy> {
    let path = dir.join(format!("bootstrap-{admin}.yaml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(binary).arg("-c").arg(&path).args(["--concurrency", "1", "-l", "error"]);
    if binary.ends_with("envoy") {
        cmd.args(["--base-id", &admin.to_string()]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let proxy = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin_ready(admin) {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(proxy)
}

#[derive(Default)]
struct Run {
    /// (when sent, latency, status, upstream)
    results: Vec<(Duration, Duration, u16, String)>,
}

/// Open-loop load: `RATE` requests a second for `SECONDS`, each on its own task over a shared
/// keep-alive client.
async fn load(port: u16) -> Run {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut tasks = Vec::new();
    for _ in 0..RATE * SECONDS {
        tick.tick().await;
        let (client, results) = (client.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let req = http::Request::get(format!("http://127.0.0.1:{port}/")).body(Full::default()).unwrap();
            let (status, upstream) = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let upstream =
                        resp.headers().get("x-upstream").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let _ = resp.into_body().collect().await;
                    (status, upstream)
                }
                Err(_) => (0, String::new()),
            };
            results.lock().unwrap().push((sent - start, sent.elapsed(), status, upstream));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    Run { results }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn slow_row(name: &str, run: &Run) -> String {
    let mut latencies: Vec<Duration> = run.results.iter().map(|r| r.1).collect();
    latencies.sort();
    let slow = run.results.iter().filter(|r| r.3 == "slow").count() as f64 * 100.0 / run.results.len() as f64;
    let errors = run.results.iter().filter(|r| r.2 != 200).count();
    format!(
        "| {name} | {:.2} | {:.2} | {:.2} | {slow:.1}% | {errors} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999)
    )
}

fn failing_row(name: &str, run: &Run) -> String {
    let ok = |rs: &[&(Duration, Duration, u16, String)]| {
        rs.iter().filter(|r| r.2 == 200).count() as f64 * 100.0 / rs.len().max(1) as f64
    };
    let all: Vec<_> = run.results.iter().collect();
    let settled: Vec<_> = run.results.iter().filter(|r| r.0 >= SETTLED_AFTER).collect();
    format!("| {name} | {:.2}% | {:.2}% | {} |", ok(&all), ok(&settled), settled.len())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let strait = root.join("target/release/strait-proxy");
    if !strait.exists() {
        eprintln!("build Strait first: cargo build --release -p strait-proxy");
        std::process::exit(1);
    }
    let envoy = which("envoy");
    let dir = std::env::temp_dir().join(format!("lb-resilience-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let fast = Duration::from_millis(2);
        let mut slow_set = vec![upstream("slow", fast * 10, false).await];
        let mut failing_set = vec![upstream("failing", fast, true).await];
        for name in ["u1", "u2", "u3", "u4"] {
            slow_set.push(upstream(name, fast, false).await);
            failing_set.push(upstream(name, fast, false).await);
        }
        let mut slow_rows = Vec::new();
        let mut failing_rows = Vec::new();
        let mut targets: Vec<(&str, PathBuf, &str)> =
            vec![
                ("strait P2C", strait.clone(), P2C),
                ("strait peak-EWMA (decay 10s)", strait.clone(), PEAK_EWMA),
                ("strait peak-EWMA (decay 1s)", strait.clone(), PEAK_EWMA_FAST_DECAY),
            ];
        if let Some(envoy) = &envoy {
            targets.push(("envoy LEAST_REQUEST", envoy.clone(), P2C));
        }
        for (name, binary, policy) in &targets {
            let (port, admin) = (free_port(), free_port());
            let Some(_proxy) = start(binary, &bootstrap(admin, port, &slow_set, policy), &dir, admin) else {
                eprintln!("{name}: did not start");
                continue;
            };
            let run = load(port).await;
            let row = slow_row(name, &run);
            println!("{row}");
            slow_rows.push(row);
        }
        let mut failing_targets = vec![("strait", strait.clone())];
        if let Some(envoy) = &envoy {
            failing_targets.push(("envoy", envoy.clone()));
        }
        for (name, binary) in &failing_targets {
            let (port, admin) = (free_port(), free_port());
            let config = bootstrap(admin, port, &failing_set, OUTLIER);
            let Some(_proxy) = start(binary, &config, &dir, admin) else {
                eprintln!("{name}: did not start");
                continue;
            };
            let run = load(port).await;
            let row = failing_row(name, &run);
            println!("{row}");
            failing_rows.push(row);
        }
        let report = format!(
            "## 1 of 5 upstreams 10x slower (2 ms vs 20 ms), {RATE} req/s open loop for {SECONDS} s\n\n\
             | target | p50 ms | p99 ms | p99.9 ms | share to the slow one | errors |\n|---|---|---|---|---|---|\n{}\n\n\
             ## 1 of 5 upstreams answering 503 to every other request, ROUND_ROBIN + outlier detection (1 s interval), {RATE} req/s for {SECONDS} s\n\n\
             | target | success, whole run | success after {} s | requests after |\n|---|---|---|---|\n{}\n",
            slow_rows.join("\n"),
            SETTLED_AFTER.as_secs(),
            failing_rows.join("\n")
        );
        println!("\n{report}");
        let out = root.join("bench-results");
        let _ = std::fs::create_dir_all(&out);
        let _ = std::fs::write(out.join("lb-resilience.md"), report);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.exists())
}
