//! The running config: one immutable snapshot of listeners, routes and clusters, swapped atomically.
//! Requests `load()` it once and use that snapshot to the end.

use crate::listeners::ListenerConfig;
use crate::upstream::Cluster;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use xds_proto::Bootstrap;

#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every config applied.
    pub version: u64,
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub admin: Option<SocketAddr>,
    /// The config as given, for `/config_dump`.
    pub bootstrap: Bootstrap,
    pub applied_at: SystemTime,
}

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn new(
        listeners: Vec<Arc<ListenerConfig>>,
        clusters: HashMap<String, Arc<Cluster>>,
        admin: Option<SocketAddr>,
        bootstrap: Bootstrap,
    ) -> Self {
        Snapshot { version: 0, listeners, clusters, admin, bootstrap, applied_at: SystemTime::now() }
    }

    /// An empty snapshot, in force before the first config is applied.
    pub fn empty() -> Self {
        Snapshot::new(Vec::new(), HashMap::new(), None, Bootstrap::default())
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerConfig>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}
