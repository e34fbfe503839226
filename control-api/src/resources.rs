//! A versioned set of xDS resources: what the control plane serves at one moment. Versions are
//! content hashes, so the same config gives the same versions across restarts (a proxy that already
//! has them is not sent them again).

use crate::mesh::{NodeIdentity, NodeSelector};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url;

/// One resource as served: its name, its own version and the encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// Who gets a listener: the proxies it is for, and the services its routes use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub listener: String,
    /// Any of these proxies; empty: every proxy.
    pub nodes: Vec<NodeSelector>,
    pub services: BTreeSet<String>,
}

/// Every resource, by type URL then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Changes whenever any resource changes (a hash of all of them).
    pub version: String,
    by_type: BTreeMap<&'static str, BTreeMap<String, Resource>>,
    scopes: Vec<Scope>,
    /// Listeners served only to a client that names them (API listeners for proxyless gRPC): a
    /// wildcard subscription (Envoy, Strait) never sees them.
    named_only: BTreeSet<String>,
}

impl Resources {
    pub fn new(items: Vec<(&'static str, String, Any)>) -> Self {
        let mut by_type: BTreeMap<&'static str, BTreeMap<String, Resource>> = BTreeMap::new();
        let mut all = std::hash::DefaultHasher::new();
        for (type_url, name, body) in items {
            let version = hash_hex(&body.value);
            (type_url, &name, &version).hash(&mut all);
            by_type.entry(type_url).or_default().insert(name.clone(), Resource { name, version, body });
        }
        Resources {
            version: format!("{:016x}", all.finish()),
            by_type,
            scopes: Vec::new(),
            named_only: BTreeSet::new(),
        }
    }

    pub fn with_scopes(mut self, scopes: Vec<Scope>, named_only: BTreeSet<String>) -> Self {
        self.scopes = scopes;
        self.named_only = named_only;
        self
    }

    /// What a wildcard subscription gets of a type: all but the named-only listeners.
    pub fn wildcard(&self, type_url: &str) -> impl Iterator<Item = &Resource> {
        self.of_type(type_url).filter(move |r| type_url != type_url::LISTENER || !self.named_only.contains(&r.name))
    }

    /// What one proxy (by its `node`) is served: the listeners for it (and their route
    /// configurations), and the services those routes use plus those no listener uses; listeners
    /// for other proxies and the services only they use are left out. The whole set when no
    /// listener is restricted.
    pub fn view(self: &Arc<Self>, node: &NodeIdentity) -> Arc<Resources> {
        if self.scopes.iter().all(|s| s.nodes.is_empty()) {
            return self.clone();
        }
        let mine = |s: &Scope| s.nodes.is_empty() || s.nodes.iter().any(|n| n.matches(node));
        let listeners: BTreeSet<&str> = self.scopes.iter().filter(|s| mine(s)).map(|s| s.listener.as_str()).collect();
        let used: BTreeSet<&str> =
            self.scopes.iter().filter(|s| mine(s)).flat_map(|s| s.services.iter().map(String::as_str)).collect();
        let others: BTreeSet<&str> =
            self.scopes.iter().filter(|s| !mine(s)).flat_map(|s| s.services.iter().map(String::as_str)).collect();
        let keep = |type_url: &str, name: &str| match type_url {
            type_url::LISTENER => listeners.contains(name) || self.named_only.contains(name),
            type_url::ROUTE_CONFIGURATION => listeners.contains(name) || self.scopes.iter().all(|s| s.listener != name),
            _ => used.contains(name) || !others.contains(name),
        };
        let items = self
            .by_type
            .iter()
            .flat_map(|(t, m)| m.values().filter(|r| keep(t, &r.name)).map(|r| (*t, r.name.clone(), r.body.clone())))
            .collect();
        Arc::new(Resources::new(items).with_scopes(Vec::new(), self.named_only.clone()))
    }

    /// These resources plus `extra` (a workload's own secrets), which replace any of the same type
    /// and name; scopes are kept.
    pub fn with_extra(&self, extra: Vec<(&'static str, String, Any)>) -> Resources {
        let mut items: Vec<(&'static str, String, Any)> = self
            .by_type
            .iter()
            .flat_map(|(t, m)| m.values().map(|r| (*t, r.name.clone(), r.body.clone())))
            .filter(|(t, n, _)| !extra.iter().any(|(et, en, _)| et == t && en == n))
            .collect();
        items.extend(extra);
        Resources::new(items).with_scopes(self.scopes.clone(), self.named_only.clone())
    }

    /// The resources of one type, by name.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = &Resource> {
        self.by_type.get(type_url).into_iter().flat_map(|m| m.values())
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Resource> {
        self.by_type.get(type_url)?.get(name)
    }

    pub fn count(&self, type_url: &str) -> usize {
        self.by_type.get(type_url).map_or(0, |m| m.len())
    }
}

fn hash_hex(bytes: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}
