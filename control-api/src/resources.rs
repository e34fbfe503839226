//! A versioned set of xDS resources: what the control plane serves at one moment. Versions are
//! content hashes, so the same config gives the same versions across restarts (a proxy that already
//! has them is not sent them again).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url;

/// One resource as served: its name, its own version and the encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// Every resource, by type URL then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Changes whenever any resource changes (a hash of all of them).
    pub version: String,
    by_type: BTreeMap<&'static str, BTreeMap<String, Resource>>,
}

/// The types served, in the order Envoy wants them applied (clusters before the listeners and
/// routes that use them, endpoints with their clusters).
pub const TYPES: [&str; 4] =
    [type_url::CLUSTER, type_url::CLUSTER_LOAD_ASSIGNMENT, type_url::LISTENER, type_url::ROUTE_CONFIGURATION];

/// The canonical `&'static str` of a known type URL.
pub fn known_type(url: &str) -> Option<&'static str> {
    TYPES.into_iter().find(|t| *t == url)
}

/// LDS and CDS are "full state" types: a State-of-the-World response always carries all of them and
/// an empty first subscription means all of them (wildcard).
pub fn is_full_state(type_url: &str) -> bool {
    type_url == type_url::LISTENER || type_url == type_url::CLUSTER
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
        Resources { version: format!("{:016x}", all.finish()), by_type }
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
