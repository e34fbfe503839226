//! The process: loads the bootstrap, builds and publishes snapshots, binds listeners, serves admin,
//! reloads on SIGHUP (or a changed file with `--watch`), and drains on SIGTERM. The data plane runs on
//! its own multi-threaded runtime; admin, DNS and reloads run on a small control runtime.

use crate::admin::{self, AdminState};
use crate::ads;
use crate::listeners::ListenerManager;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::xds::{self, BuildOptions, ConfigErrors};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use xds_proto::{Bootstrap, Format};

/// Where the bootstrap comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// A built-in document (the demo).
    Embedded(String),
}

impl ConfigSource {
    fn read(&self) -> Result<Bootstrap, ConfigErrors> {
        match self {
            ConfigSource::File(path) => xds::read_bootstrap(path),
            ConfigSource::Embedded(text) => xds::parse_bootstrap(text, Format::Yaml),
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        match self {
            ConfigSource::File(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            ConfigSource::Embedded(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: ConfigSource,
    pub strict: bool,
    pub drain_time: Duration,
    pub watch: bool,
    pub concurrency: usize,
    /// Obtain (and keep renewing) a workload certificate from the mesh's CA.
    pub identity: Option<crate::tls::agent::AgentSettings>,
}

/// A running proxy, as seen from its control runtime.
struct Proxy {
    options: Options,
    shared: SharedSnapshot,
    listeners: ListenerManager,
    control: tokio::runtime::Handle,
    /// The bootstrap as read from its source (its static resources).
    base: Bootstrap,
    /// The last accepted config from ADS, merged with `base` on every apply.
    dynamic: Option<ads::Resolved>,
    /// The workload certificate and trust bundle from the CA, as secrets (shared with the ADS client).
    identity: ads::LocalSecrets,
    /// The certificate, key and trust-bundle files the running config read (`--watch` reloads when
    /// one changes, as Envoy reloads its certificates).
    tls_files: Vec<PathBuf>,
}

impl Proxy {
    /// The bootstrap's static resources plus everything accepted over ADS, and the proxy's own
    /// certificate secrets.
    fn effective(&self, dynamic: Option<&ads::Resolved>) -> Bootstrap {
        let mut bootstrap = self.base.clone();
        if let Some(d) = dynamic {
            let resources = bootstrap.static_resources.get_or_insert_with(Default::default);
            resources.listeners.extend(d.listeners.iter().cloned());
            resources.clusters.extend(d.clusters.iter().cloned());
            resources.secrets.extend(d.secrets.iter().cloned());
        }
        let identity = self.identity.load();
        if !identity.is_empty() {
            let resources = bootstrap.static_resources.get_or_insert_with(Default::default);
            resources.secrets.retain(|s| !identity.iter().any(|own| own.name == s.name));
            resources.secrets.extend(identity.iter().cloned());
        }
        bootstrap
    }

    /// Applies config accepted over ADS; on success it becomes the dynamic part of every later apply.
    async fn apply_dynamic(&mut self, resolved: ads::Resolved) -> Result<(), String> {
        let bootstrap = self.effective(Some(&resolved));
        self.apply(&bootstrap).await.map_err(|e| format!("{e:#}"))?;
        self.dynamic = Some(resolved);
        Ok(())
    }

    /// Builds, resolves, binds and publishes a new config. On any error the running config stays.
    /// Either way the descriptor pool used to read it is dropped and its memory handed back.
    async fn apply(&mut self, bootstrap: &Bootstrap) -> anyhow::Result<()> {
        let result = self.build_and_publish(bootstrap).await;
        xds_proto::release_descriptor_pool();
        crate::sys::release_free_memory();
        crate::sys::release_startup_code();
        result
    }

    async fn build_and_publish(&mut self, bootstrap: &Bootstrap) -> anyhow::Result<()> {
        let current = self.shared.load_full();
        let mut next = xds::build_snapshot(bootstrap, Some(&current), BuildOptions { strict: self.options.strict })?;
        // New clusters start together: their first DNS answers and health probes (bounded by their
        // timeouts) are awaited at once, not one cluster after another.
        let starting = next
            .clusters
            .values()
            .filter(|cluster| !current.clusters.get(&cluster.config.name).is_some_and(|c| Arc::ptr_eq(c, cluster)));
        futures_util::future::join_all(starting.map(|cluster| cluster.start_discovery(&self.control))).await;
        let bound = self.listeners.bind(&next)?;
        self.tls_files = xds::tls::files(bootstrap);
        next.version = current.version + 1;
        let next = Arc::new(next);
        self.shared.store(next.clone());
        self.listeners.activate(&next, bound);
        tracing::info!(
            version = next.version,
            listeners = next.listeners.len(),
            clusters = next.clusters.len(),
            "config applied"
        );
        Ok(())
    }

    /// Applies a renewed workload certificate: new connections use it, open ones keep theirs.
    async fn renewed_identity(&mut self, issued: crate::tls::agent::Issued) {
        let previous = self.identity.swap(Arc::new(issued.secrets));
        let bootstrap = self.effective(self.dynamic.as_ref());
        if let Err(e) = self.apply(&bootstrap).await {
            self.identity.store(previous);
            tracing::error!("the renewed certificate could not be applied, the current one stays:\n{e:#}");
        }
    }

    async fn reload(&mut self) {
        let result = match self.options.source.read() {
            Ok(base) => {
                let previous = std::mem::replace(&mut self.base, base);
                let bootstrap = self.effective(self.dynamic.as_ref());
                let result = self.apply(&bootstrap).await;
                if result.is_err() {
                    self.base = previous;
                }
                result
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            metrics::counter!("strait_config_reload_failed_total").increment(1);
            tracing::error!("config reload rejected, the running config stays:\n{e:#}");
        } else {
            metrics::counter!("strait_config_reload_total").increment(1);
        }
    }
}

/// Bound addresses, reported once the proxy is serving (for the demo and tests).
#[derive(Debug, Clone)]
pub struct Started {
    pub admin: Option<SocketAddr>,
    pub listeners: std::collections::HashMap<String, SocketAddr>,
}

/// Runs the proxy until SIGTERM/SIGINT or `/quitquitquit`, then drains. Blocks the calling thread.
pub fn run(options: Options, on_started: impl FnOnce(&Started) + Send + 'static) -> anyhow::Result<()> {
    crate::telemetry::prometheus();
    let bootstrap = options.source.read().map_err(anyhow::Error::from).context("invalid config")?;
    let mut ads_settings = ads::settings(&bootstrap).map_err(anyhow::Error::msg).context("invalid config")?;
    let identity = ads::LocalSecrets::default();
    if let Some(settings) = ads_settings.as_mut() {
        settings.local_secrets = identity.clone();
    }
    let data_plane = DataPlane::start(options.concurrency)?;
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let shutdown = CancellationToken::new();
    let quit = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let listeners = ListenerManager::new(shared.clone(), shutdown.clone(), data_plane.handles());
    let mut proxy = Proxy {
        options: options.clone(),
        shared: shared.clone(),
        listeners,
        control: control.handle().clone(),
        base: bootstrap.clone(),
        dynamic: None,
        identity,
        tls_files: Vec::new(),
    };
    let ads_status = ads::SharedStatus::default();

    let (renewed_tx, mut renewed) = tokio::sync::mpsc::channel(1);
    let result = control.block_on(async {
        // The workload certificate comes first: listeners and clusters may name it.
        if let Some(agent) = options.identity.clone() {
            let issued = tokio::select! {
                issued = crate::tls::agent::obtain(&agent) => issued,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted while waiting for a workload certificate"),
            };
            proxy.identity.store(Arc::new(issued.secrets.clone()));
            tokio::spawn(crate::tls::agent::renew(agent, issued, renewed_tx));
        }
        let first = proxy.effective(None);
        proxy.apply(&first).await.context("cannot start")?;
        let admin_stop = CancellationToken::new();
        let admin_addr = match shared.load().admin {
            Some(addr) => {
                let state = AdminState {
                    shared: shared.clone(),
                    ready: ready.clone(),
                    quit: quit.clone(),
                    ads: ads_settings.as_ref().map(|_| ads_status.clone()),
                };
                Some(
                    admin::serve(addr, state, admin_stop.clone())
                        .await
                        .with_context(|| format!("cannot bind admin {addr}"))?,
                )
            }
            None => None,
        };
        // With ADS the proxy is ready once the control plane's first complete config is applied
        // (the control loop applies it); until then admin answers and `/ready` says 503.
        let (updates_tx, mut updates) = tokio::sync::mpsc::channel(4);
        match ads_settings {
            Some(settings) => {
                tracing::info!(server = %settings.server, delta = settings.delta, "config from ADS");
                tokio::spawn(ads::run(settings, updates_tx, ads_status.clone()));
            }
            None => ready.store(true, Ordering::Release),
        }
        on_started(&Started { admin: admin_addr, listeners: proxy.listeners.bound_addresses() });
        control_loop(&mut proxy, &quit, (&mut updates, &mut renewed), &ready).await;
        ready.store(false, Ordering::Release);
        tracing::info!(drain_time = ?options.drain_time, "draining");
        let clean = proxy.listeners.drain(options.drain_time).await;
        if !clean {
            tracing::warn!("drain time elapsed with connections still open");
        }
        admin_stop.cancel();
        anyhow::Ok(())
    });
    data_plane.stop();
    result
}

/// The data plane: one current-thread tokio runtime per worker thread, each with its own accept
/// socket per listener (SO_REUSEPORT), so a request never hops threads and there is no work stealing.
struct DataPlane {
    workers: Vec<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl DataPlane {
    fn start(workers: usize) -> std::io::Result<Self> {
        let mut out = Vec::new();
        for i in 0..workers.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("strait-worker-{i}")).spawn(move || {
                runtime.block_on(async {
                    // A timer that always fires within a second. Tokio's timer wakes its thread's
                    // event loop (an eventfd write, then one more epoll_wait) whenever a new timer
                    // is due before everything pending: without this, every request's route timeout
                    // on a quiet worker did that.
                    let tick = async {
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = tick => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
            out.push((handle, stop, thread));
        }
        Ok(DataPlane { workers: out })
    }

    fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.workers.iter().map(|(h, _, _)| h.clone()).collect()
    }

    fn stop(self) {
        for (_, stop, thread) in self.workers {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Applies an update from the ADS client and answers it (the client ACKs or NACKs on that answer).
async fn apply_update(proxy: &mut Proxy, update: ads::Update, ready: &AtomicBool) {
    let result = proxy.apply_dynamic(update.resolved).await;
    if let Err(e) = &result {
        metrics::counter!("strait_ads_update_rejected_total").increment(1);
        tracing::error!("config from ADS rejected, the running config stays:\n{e}");
    } else {
        metrics::counter!("strait_ads_update_success_total").increment(1);
        if update.complete {
            ready.store(true, Ordering::Release);
        }
    }
    let _ = update.reply.send(result);
}

/// When the bootstrap and the TLS files it names were last modified.
fn watched_stamp(proxy: &Proxy) -> Vec<Option<SystemTime>> {
    let files = proxy.tls_files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
    std::iter::once(proxy.options.source.modified()).chain(files).collect()
}

async fn control_loop(
    proxy: &mut Proxy,
    quit: &CancellationToken,
    (updates, renewed): (
        &mut tokio::sync::mpsc::Receiver<ads::Update>,
        &mut tokio::sync::mpsc::Receiver<crate::tls::agent::Issued>,
    ),
    ready: &AtomicBool,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        quit.cancelled().await;
        return;
    };
    let mut last_modified = watched_stamp(proxy);
    let mut watch_tick = tokio::time::interval(Duration::from_secs(1));
    let mut memory_tick = tokio::time::interval(Duration::from_millis(250));
    let (mut closed_seen, mut last_trim) = (0, None);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                proxy.reload().await;
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = quit.cancelled() => return,
            Some(update) = updates.recv() => apply_update(proxy, update, ready).await,
            Some(issued) = renewed.recv() => proxy.renewed_identity(issued).await,
            _ = memory_tick.tick() => crate::sys::return_memory_after_closes(&mut closed_seen, &mut last_trim),
            _ = watch_tick.tick(), if proxy.options.watch => {
                let modified = watched_stamp(proxy);
                if modified != last_modified {
                    // Stamped before the reload: a file that changes while it runs (a key written
                    // before its certificate) is reloaded again on the next tick.
                    last_modified = modified;
                    tracing::info!("config or certificate file changed: reloading");
                    proxy.reload().await;
                }
            }
        }
    }
}
