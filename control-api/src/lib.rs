//! Strait's control plane: a friendly mesh config ([`mesh`]) from a watched directory or the
//! embedded example ([`store`]), compiled to Envoy xDS v3 resources ([`compile`]) and served to
//! proxies over ADS, State of the World and delta ([`ads`]). A config that fails to load, validate or
//! compile is reported whole and the last good one keeps being served.

pub mod ads;
pub mod api;
pub mod ca;
pub mod compile;
pub mod control;
pub mod mesh;
pub mod policy;
pub mod resources;
pub mod security;
pub mod store;

use control::Control;
use resources::Resources;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::MeshSource;

/// Loads, validates and compiles the whole config from `source`.
pub fn load(source: &dyn MeshSource) -> Result<Resources, String> {
    control::compile_checked(&source.load()?)
}

/// How often the source is checked for changes; a change is read once it has been quiet this long,
/// so a burst of edits becomes one push.
const POLL: Duration = Duration::from_millis(250);
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Where the control plane listens, and what ADS serves besides the mesh.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// xDS (ADS) for proxies.
    pub xds: SocketAddr,
    /// The management API (`strait.control.v1.MeshService`), if served.
    pub api: Option<SocketAddr>,
    /// Workload certificates over SDS for ADS clients with a bootstrap token (the CA's).
    pub sds: Option<ca::sds::SdsIssuer>,
}

/// The certificate authority's service (`strait.ca.v1.CertificateService`), when it is served.
#[derive(Debug)]
pub struct CaSettings {
    /// Bound by the caller, so a busy address is an error before anything is served.
    pub listener: tokio::net::TcpListener,
    pub ca: Arc<ca::CertificateAuthority>,
    pub tokens: Arc<ca::tokens::Tokens>,
}

/// Serves the certificate service until `shutdown` resolves.
pub async fn serve_ca(settings: CaSettings, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = settings.listener;
    let address = listener.local_addr()?;
    tracing::info!(%address, trust_domain = settings.ca.trust_domain(), "certificate service listening");
    let service = ca::service::CaService::new(settings.ca, settings.tokens).into_service();
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(service, tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Serves ADS (and the management API) until `shutdown` resolves, following changes to `source`.
pub async fn serve(
    source: Arc<dyn MeshSource>,
    xds: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_all(source, Addresses { xds, api: None, sds: None }, shutdown).await
}

/// Serves ADS and, if asked, the management API until `shutdown` resolves.
pub async fn serve_all(
    source: Arc<dyn MeshSource>,
    addresses: Addresses,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let control = Control::new(source.clone()).map_err(|e| anyhow::anyhow!("{}:\n{e}", source.describe()))?;
    tracing::info!(version = control.current().version, "serving {}", control.describe());
    let xds_listener = tokio::net::TcpListener::bind(addresses.xds)
        .await
        .map_err(|e| anyhow::anyhow!("bind {}: {e}", addresses.xds))?;
    let api_listener = match addresses.api {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?),
        None => None,
    };
    tracing::info!(xds = %addresses.xds, "xDS (ADS) listening");
    // Ending the follower drops the watch senders' last user, which ends every ADS stream, so a
    // shutdown does not wait on streams that never finish by themselves.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(follow(control.clone(), stop_rx.clone()));
    let mut ads = ads::Ads::new(control.resources(), stop_rx.clone());
    if let Some(sds) = addresses.sds.clone() {
        ads = ads.with_sds(sds);
    }
    let stop_api = stop_rx.clone();
    let api = api_listener.map(|listener| {
        tracing::info!(api = ?addresses.api, "management API listening");
        let service = api::MeshApi::new(control.clone(), stop_rx.clone()).into_service();
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming_shutdown(
            service,
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped(stop_api),
        ))
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        follower.abort();
    };
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            ads.into_service(),
            tokio_stream::wrappers::TcpListenerStream::new(xds_listener),
            shutdown,
        )
        .await?;
    if let Some(api) = api {
        let _ = api.await;
    }
    Ok(())
}

/// Polls the source; publishes each new good config, logs a bad one and keeps the last good.
async fn follow(control: Arc<Control>, stop: tokio::sync::watch::Receiver<bool>) {
    let source_changed = |seen: &mut Vec<_>| {
        let now = control.fingerprint();
        let changed = now != *seen;
        *seen = now;
        changed
    };
    let mut seen = control.fingerprint();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            () = stopped(stop.clone()) => return,
        }
        if !source_changed(&mut seen) && !control.needs_reload() {
            continue;
        }
        // Let a burst of writes settle, and read only a settled state: a file being rewritten
        // (truncated, then written) changes the fingerprint while it is read, and is read again.
        tokio::time::sleep(DEBOUNCE).await;
        source_changed(&mut seen);
        control.reload_if(|| control.fingerprint() == seen);
    }
}

/// Resolves once `stop` turns true; never, if its sender is gone without stopping.
pub(crate) async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
