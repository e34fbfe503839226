//! Listeners: bound sockets and their accept loops. A config change binds new addresses first (so a
//! bad address fails before anything changes), then stops listeners that went away; their open
//! connections drain. Each accepted connection picks its filter chain ([`chains`]) and is served
//! by it ([`connection`]).

pub mod chains;
pub mod connection;

use crate::http::HttpConnectionManager;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tcp::TcpProxyConfig;
use crate::telemetry::{GaugeGuard, ListenerStats};
pub use chains::FilterChain;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A validated `Listener`.
#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// `filter_chains` in order, then the `default_filter_chain` if there is one.
    pub chains: Vec<FilterChain>,
    pub has_default_chain: bool,
    /// Whether connections are inspected for a ClientHello before a chain is chosen (the TLS
    /// inspector, configured or needed by a chain's match).
    pub inspect_tls: bool,
    /// `listener_filters_timeout` (default 15 s): how long the inspection may wait.
    pub inspect_timeout: Duration,
}

/// A filter chain's terminal network filter.
#[derive(Debug)]
pub enum ListenerKind {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxyConfig>),
}

impl ListenerConfig {
    /// Every cluster the listener's routes or TCP proxies name, with the field that names it.
    pub fn referenced_clusters(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for chain in &self.chains {
            match &chain.kind {
                ListenerKind::Tcp(t) => {
                    let at = format!("{}.cluster", chain.filter_path);
                    out.extend(t.target.names().into_iter().map(|n| (at.clone(), n)));
                }
                ListenerKind::Http(h) if !h.routes.validate_clusters => {}
                ListenerKind::Http(h) => {
                    for (i, vh) in h.routes.virtual_hosts.iter().enumerate() {
                        for (j, r) in vh.routes.iter().enumerate() {
                            if let crate::routing::Action::Forward(f) = &r.action {
                                let at =
                                    format!("{}.route_config.virtual_hosts[{i}].routes[{j}].route", chain.filter_path);
                                for n in f.target.names() {
                                    out.push((at.clone(), n));
                                }
                                for (k, m) in f.mirrors.iter().enumerate() {
                                    if let crate::policy::mirror::MirrorTarget::Cluster(name) = &m.target {
                                        out.push((format!("{at}.request_mirror_policies[{k}]"), name.as_str()));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The HTTP connection manager of a chain, if it has one.
    pub fn http(&self, chain: usize) -> Option<&Arc<HttpConnectionManager>> {
        match &self.chains.get(chain)?.kind {
            ListenerKind::Http(h) => Some(h),
            ListenerKind::Tcp(_) => None,
        }
    }
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
}

/// The listeners this process has bound, by name.
pub struct ListenerManager {
    running: HashMap<String, Running>,
    shared: SharedSnapshot,
    /// Cancelled on shutdown: every accept loop and connection drains.
    shutdown: CancellationToken,
    connections: TaskTracker,
    /// One runtime per data-plane worker; each gets its own accept socket for every listener.
    workers: Vec<tokio::runtime::Handle>,
}

/// Sockets bound for a snapshot that is about to be applied: per listener, one per worker.
pub struct Bound(Vec<(String, Vec<std::net::TcpListener>)>);

impl ListenerManager {
    pub fn new(shared: SharedSnapshot, shutdown: CancellationToken, workers: Vec<tokio::runtime::Handle>) -> Self {
        ListenerManager { running: HashMap::new(), shared, shutdown, connections: TaskTracker::new(), workers }
    }

    /// Binds `addr` once per worker with SO_REUSEPORT (the kernel spreads connections across them).
    fn bind_all(&self, addr: SocketAddr) -> std::io::Result<Vec<std::net::TcpListener>> {
        let first = bind_socket(addr)?;
        // With port 0, the others must join the port the first one got.
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(bind_socket(addr)?);
        }
        Ok(sockets)
    }

    /// Binds the addresses `next` adds or moves. Nothing changes if one fails.
    pub fn bind(&self, next: &Snapshot) -> std::io::Result<Bound> {
        let mut bound = Vec::new();
        for l in &next.listeners {
            if self.running.get(&l.name).is_some_and(|r| same_addr(r.addr, l.addr)) {
                continue;
            }
            // A listener that moves to an address another one is leaving must wait for it: bind after.
            if self.running.iter().any(|(n, r)| r.addr == l.addr && n != &l.name) {
                continue;
            }
            let sockets = self.bind_all(l.addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("listener '{}' cannot bind {}: {e}", l.name, l.addr))
            })?;
            bound.push((l.name.clone(), sockets));
        }
        Ok(Bound(bound))
    }

    /// Starts accept loops for the newly bound sockets and stops the listeners `next` no longer has.
    /// Call after `next` is published.
    pub fn activate(&mut self, next: &Snapshot, bound: Bound) {
        let keep: HashMap<&str, SocketAddr> = next.listeners.iter().map(|l| (l.name.as_str(), l.addr)).collect();
        self.running.retain(|name, r| {
            let stays = keep.get(name.as_str()).is_some_and(|a| same_addr(r.addr, *a));
            if !stays {
                tracing::info!(listener = %name, addr = %r.addr, "listener removed; draining its connections");
                r.stop.cancel();
            }
            stays
        });
        let mut sockets = bound.0;
        for l in &next.listeners {
            if self.running.contains_key(&l.name) || sockets.iter().any(|(n, _)| n == &l.name) {
                continue;
            }
            match self.bind_all(l.addr) {
                Ok(s) => sockets.push((l.name.clone(), s)),
                Err(e) => tracing::error!(listener = %l.name, addr = %l.addr, error = %e, "cannot bind listener"),
            }
        }
        for (name, per_worker) in sockets {
            let Some(addr) = per_worker.first().and_then(|s| s.local_addr().ok()) else { continue };
            let stop = self.shutdown.child_token();
            for (socket, worker) in per_worker.into_iter().zip(&self.workers) {
                let _guard = worker.enter();
                match TcpListener::from_std(socket) {
                    Ok(listener) => {
                        worker.spawn(accept_loop(
                            name.clone(),
                            listener,
                            self.shared.clone(),
                            stop.clone(),
                            self.connections.clone(),
                        ));
                    }
                    Err(e) => tracing::error!(listener = %name, error = %e, "cannot register listener socket"),
                }
            }
            tracing::info!(listener = %name, %addr, workers = self.workers.len(), "listening");
            self.running.insert(name, Running { addr, stop });
        }
    }

    /// The addresses actually bound, by listener name (port 0 resolved).
    pub fn bound_addresses(&self) -> HashMap<String, SocketAddr> {
        self.running.iter().map(|(n, r)| (n.clone(), r.addr)).collect()
    }

    /// Stops accepting everywhere and waits up to `drain_time` for open connections to finish.
    pub async fn drain(&self, drain_time: Duration) -> bool {
        self.shutdown.cancel();
        self.connections.close();
        tokio::time::timeout(drain_time, self.connections.wait()).await.is_ok()
    }
}

/// Whether a running listener bound at `bound` serves the configured `wanted` (port 0: any port).
fn same_addr(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound.ip() == wanted.ip() && (bound.port() == wanted.port() || wanted.port() == 0)
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    shared: SharedSnapshot,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let local = listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let stats = Arc::new(ListenerStats::new(&local));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        stats.cx_total.increment(1);
        let active = GaugeGuard::new(&stats.cx_active);
        let Some(config) = shared.load().listener(&name).cloned() else { continue };
        let accepted = connection::Accepted {
            stream,
            peer,
            local,
            listener: name.clone(),
            config,
            stats: stats.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
        };
        connections.spawn(async move {
            let _active = active;
            connection::serve(accepted).await;
        });
    }
}
