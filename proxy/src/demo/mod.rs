//! `strait-proxy demo`: a local mesh in one process, so a new user can curl it right away: the control
//! plane (`strait-control`'s library) serving a mesh file over ADS, the proxy configured by it, and
//! built-in upstreams. Editing the mesh file shifts traffic live.

pub mod echo;

use crate::app::{self, ConfigSource, Options};
use std::time::Duration;

/// The demo's bootstrap (Envoy format): admin, a static TCP proxy, and ADS for the rest.
pub const CONFIG: &str = include_str!("demo.yaml");

/// The mesh the built-in control plane serves (written to a file the user can edit).
pub const MESH: &str = include_str!("mesh.yaml");

/// Where the built-in control plane listens (matches [`CONFIG`]).
const XDS: ([u8; 4], u16) = ([127, 0, 0, 1], 15010);

/// The demo upstreams: (name, port), matching [`CONFIG`].
pub const UPSTREAMS: &[(&str, u16)] = &[("web-v1", 18081), ("web-v2", 18082), ("api", 18083)];

/// Starts the demo upstreams and the proxy; runs until Ctrl-C.
pub fn run(concurrency: usize) -> anyhow::Result<()> {
    let upstreams = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    for (name, port) in UPSTREAMS {
        let addr = ([127, 0, 0, 1], *port).into();
        upstreams
            .block_on(echo::serve(name, addr))
            .map_err(|e| anyhow::anyhow!("demo upstream '{name}' cannot bind {addr}: {e}"))?;
    }
    // The control plane, on the same small runtime, serving a mesh file the user can edit.
    let mesh_dir = std::env::temp_dir().join("strait-demo");
    std::fs::create_dir_all(&mesh_dir)?;
    let mesh_file = mesh_dir.join("mesh.yaml");
    std::fs::write(&mesh_file, MESH)?;
    crate::mesh::start_control_plane(&upstreams, mesh_dir, std::net::SocketAddr::from(XDS))?;
    let mesh_file = mesh_file.display().to_string();
    let options = Options {
        source: ConfigSource::Embedded(CONFIG.to_string()),
        strict: false,
        drain_time: Duration::from_secs(1),
        watch: false,
        concurrency,
        identity: None,
    };
    app::run(options, move |started| {
        let admin = started.admin.map_or("(none)".to_string(), |a| a.to_string());
        println!(
            r#"
Strait demo: a local mesh. The control plane serves {mesh_file} over ADS (127.0.0.1:15010);
the proxy takes its HTTP listener (127.0.0.1:10000) and clusters from it, and has a static TCP proxy on
127.0.0.1:10001; admin on {admin}. Upstreams web-v1, web-v2 and api run inside this process. Try:

  curl -s localhost:10000/hello                       # 90/10 canary split between web-v1 and web-v2
  for i in $(seq 50); do curl -s localhost:10000/ -o /dev/null -w '%{{header_json}}\n' | grep -o 'web-v[12]'; done | sort | uniq -c
  curl -s -H 'x-canary: true' localhost:10000/        # header match: always web-v2
  curl -s localhost:10000/api/users                   # prefix rewrite to /users, HTTP/2 to 'api' (STRICT_DNS)
  curl -si localhost:10000/old/page                   # 302 redirect to /new/page
  curl -s localhost:10000/healthz                     # direct response
  curl -s --http2-prior-knowledge localhost:10000/    # HTTP/2 downstream
  curl -s localhost:10001/tcp                         # through the TCP proxy to web-v1

Shift the canary live (the control plane pushes it, the proxy swaps config without dropping a request):
  sed -i 's/weight: 90/weight: 50/; s/weight: 10/weight: 50/' {mesh_file}
  for i in $(seq 200); do curl -s -o /dev/null -w '%{{http_code}} %{{header_json}}\n' localhost:10000/; done | grep -o '^[0-9]*\|web-v[12]' | sort | uniq -c
  curl -s localhost:15000/stats/prometheus | grep upstream_rq_total
  curl -s localhost:15000/clusters
  curl -s localhost:15000/config_dump | grep version_info   # the versions accepted over ADS

Ctrl-C drains and stops.
"#
        );
    })
}
