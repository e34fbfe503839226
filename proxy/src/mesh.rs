//! `strait-proxy mesh DIR`: the proxy running a mesh config directory (the YAML `strait-control`
//! serves) standalone: the control plane's library serves it in-process over a loopback ADS stream,
//! so the same compiler, validation and hot swap apply, and edits to the directory take effect live.

use crate::app::{self, ConfigSource, Options};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts `strait-control`'s server for `dir` on `runtime`, listening on `xds`; returns once it
/// accepts connections, or with why it could not start.
pub fn start_control_plane(runtime: &tokio::runtime::Runtime, dir: PathBuf, xds: SocketAddr) -> anyhow::Result<()> {
    // Something else on the xDS port would configure this proxy: refuse to start instead.
    drop(std::net::TcpListener::bind(xds).map_err(|e| anyhow::anyhow!("the control plane cannot bind {xds}: {e}"))?);
    let source = Arc::new(strait_control::store::Directory(dir));
    let control = runtime.spawn(strait_control::serve(source, xds, std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(xds).is_err() {
        if control.is_finished() {
            let error = runtime.block_on(control).map_err(anyhow::Error::from).and_then(|r| r).err();
            return Err(anyhow::anyhow!(
                "the control plane did not start: {}",
                error.map_or(String::new(), |e| format!("{e:#}"))
            ));
        }
        anyhow::ensure!(Instant::now() < deadline, "the control plane did not listen on {xds}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An Envoy-format bootstrap (for Strait or Envoy) that takes everything over ADS from `xds`, as node
/// `id` of `cluster`; `api_type` GRPC (State of the World) or DELTA_GRPC.
pub fn ads_bootstrap(id: &str, cluster: &str, admin: SocketAddr, xds: SocketAddr, api_type: &str) -> String {
    format!(
        r#"node: {{ id: {id}, cluster: {cluster} }}
admin: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
"#,
        admin.ip(),
        admin.port(),
        xds.port()
    )
}

/// Runs the proxy on the mesh in `dir` until SIGTERM/SIGINT.
pub fn run(dir: PathBuf, node_cluster: &str, admin: SocketAddr, concurrency: usize) -> anyhow::Result<()> {
    strait_control::load(&strait_control::store::Directory(dir.clone()))
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let xds = SocketAddr::from(([127, 0, 0, 1], std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()));
    start_control_plane(&runtime, dir.clone(), xds)?;
    let options = Options {
        source: ConfigSource::Embedded(ads_bootstrap(
            &format!("strait-{node_cluster}"),
            node_cluster,
            admin,
            xds,
            "GRPC",
        )),
        strict: false,
        drain_time: Duration::from_secs(10),
        watch: false,
        concurrency,
        identity: None,
    };
    app::run(options, move |_| tracing::info!(dir = %dir.display(), "running the mesh config; edits apply live"))
}
