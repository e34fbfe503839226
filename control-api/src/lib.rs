//! Strait's control plane: a friendly mesh config ([`mesh`]) from a watched directory or the
//! embedded example ([`store`]), compiled to Envoy xDS v3 resources ([`compile`]) and served to
//! proxies over ADS, State of the World and delta ([`ads`]). A config that fails to load, validate or
//! compile is reported whole and the last good one keeps being served.

pub mod ads;
pub mod compile;
pub mod mesh;
pub mod resources;
pub mod store;

use resources::Resources;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::MeshSource;
use tokio::sync::watch;

/// Loads, validates and compiles the whole config from `source`.
pub fn load(source: &dyn MeshSource) -> Result<Resources, String> {
    let mesh = source.load()?;
    mesh.validate().map_err(|e| e.to_string())?;
    compile::compile(&mesh)
}

/// How often the source is checked for changes; a change is read once it has been quiet this long,
/// so a burst of edits becomes one push.
const POLL: Duration = Duration::from_millis(250);
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Serves ADS on `xds` until `shutdown` resolves, following changes to `source`.
pub async fn serve(
    source: Arc<dyn MeshSource>,
    xds: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let initial = load(source.as_ref()).map_err(|e| anyhow::anyhow!("{}:\n{e}", source.describe()))?;
    tracing::info!(version = initial.version, "serving {}", source.describe());
    let (tx, rx) = watch::channel(Arc::new(initial));
    // Ending the follower drops the watch sender, which ends every ADS stream, so a shutdown does not
    // wait on streams that never finish by themselves (clients reconnect to the next instance).
    let follower = tokio::spawn(follow(source, tx));
    let shutdown = async move {
        shutdown.await;
        follower.abort();
    };
    let listener = tokio::net::TcpListener::bind(xds).await.map_err(|e| anyhow::anyhow!("bind {xds}: {e}"))?;
    tracing::info!(%xds, "xDS (ADS) listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(ads::Ads::new(rx).into_service(), incoming, shutdown)
        .await?;
    Ok(())
}

/// Polls the source; publishes each new good config, logs a bad one and keeps the last good.
async fn follow(source: Arc<dyn MeshSource>, tx: watch::Sender<Arc<Resources>>) {
    let mut seen = source.fingerprint();
    loop {
        tokio::time::sleep(POLL).await;
        let now = source.fingerprint();
        if now == seen {
            continue;
        }
        // Let a burst of writes settle.
        tokio::time::sleep(DEBOUNCE).await;
        seen = source.fingerprint();
        match load(source.as_ref()) {
            Ok(next) if next.version == tx.borrow().version => {}
            Ok(next) => {
                tracing::info!(version = next.version, "config changed: pushing");
                tx.send_replace(Arc::new(next));
            }
            Err(e) => tracing::error!("config rejected, still serving the last good one:\n{e}"),
        }
    }
}
