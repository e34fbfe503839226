//! `strait-proxy demo`: the proxy on a built-in Envoy-format config with built-in upstreams, so a new
//! user can curl routing, a canary split, a redirect and a direct response right away.

pub mod echo;

use crate::app::{self, ConfigSource, Options};
use std::time::Duration;

/// The demo's bootstrap (Envoy format).
pub const CONFIG: &str = include_str!("demo.yaml");

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
    let options = Options {
        source: ConfigSource::Embedded(CONFIG.to_string()),
        strict: false,
        drain_time: Duration::from_secs(1),
        watch: false,
        concurrency,
    };
    app::run(options, |started| {
        let admin = started.admin.map_or("(none)".to_string(), |a| a.to_string());
        println!(
            r#"
Strait demo is running: the proxy on 127.0.0.1:10000 (HTTP) and 127.0.0.1:10001 (TCP), admin on {admin}.
Upstreams web-v1, web-v2 and api run inside this process. Try:

  curl -s localhost:10000/hello                       # 90/10 canary split between web-v1 and web-v2
  for i in $(seq 50); do curl -s localhost:10000/ -o /dev/null -w '%{{header_json}}\n' | grep -o 'web-v[12]'; done | sort | uniq -c
  curl -s -H 'x-canary: true' localhost:10000/        # header match: always web-v2
  curl -s localhost:10000/api/users                   # prefix rewrite to /users, HTTP/2 to 'api' (STRICT_DNS)
  curl -si localhost:10000/old/page                   # 302 redirect to /new/page
  curl -s localhost:10000/healthz                     # direct response
  curl -s --http2-prior-knowledge localhost:10000/    # HTTP/2 downstream
  curl -s localhost:10001/tcp                         # through the TCP proxy to web-v1
  curl -s localhost:15000/stats/prometheus | grep upstream_rq_total
  curl -s localhost:15000/clusters

Ctrl-C drains and stops.
"#
        );
    })
}
