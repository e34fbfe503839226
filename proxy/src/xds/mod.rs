//! Envoy xDS v3 resources in, validated runtime config out. Every source (the static bootstrap file
//! today, ADS later) goes through these `TryFrom`-style conversions and ends as one immutable
//! [`Snapshot`](crate::snapshot::Snapshot); a failure names the resource and the field.

mod cluster;
mod convert;
pub mod fields;
mod filters;
mod listener;
mod rbac;
mod retry;
mod route;
pub mod tls;

pub use cluster::cluster_config;
pub use convert::ConfigError;
pub use listener::listener_config;
pub use route::route_table;

use crate::snapshot::Snapshot;
use crate::upstream::Cluster;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use xds_proto::{Bootstrap, Format};

/// An Envoy `Address` as a socket address (IP and port).
pub fn socket_address_of(address: &xds_proto::pb::envoy::config::core::v3::Address) -> Result<SocketAddr, ConfigError> {
    convert::socket_address(Some(address), "address")
}

/// How strictly to treat fields Strait does not implement.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Reject unsupported fields instead of warning once and ignoring them.
    pub strict: bool,
}

/// Every problem found in one config document.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Reads and parses a bootstrap file (YAML, or JSON for `.json`).
pub fn read_bootstrap(path: &Path) -> Result<Bootstrap, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))]))?;
    parse_bootstrap(&text, Format::from_path(path))
}

pub fn parse_bootstrap(text: &str, format: Format) -> Result<Bootstrap, ConfigErrors> {
    xds_proto::parse_document::<Bootstrap>(text, format).map_err(|e| ConfigErrors(vec![ConfigError::from_document(e)]))
}

/// Converts a bootstrap into a complete snapshot. Clusters whose config is unchanged from `previous`
/// are carried over with their state. Nothing is applied here: the caller publishes the result.
pub fn build_snapshot(
    bootstrap: &Bootstrap,
    previous: Option<&Snapshot>,
    options: BuildOptions,
) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let unsupported = fields::unsupported_fields(bootstrap);
    if options.strict {
        errors.extend(
            unsupported.iter().map(|u| ConfigError::new(u.path.clone(), "is not supported by Strait (--strict)")),
        );
    } else {
        fields::warn_once(&unsupported);
    }

    let admin = match bootstrap.admin.as_ref().and_then(|a| a.address.as_ref()) {
        Some(addr) => match convert::socket_address(Some(addr), "admin.address") {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };

    let empty = Default::default();
    let resources = bootstrap.static_resources.as_ref().unwrap_or(&empty);

    let secrets = tls::Secrets::new(&resources.secrets);
    let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
    for (i, proto) in resources.clusters.iter().enumerate() {
        match cluster_config(proto, &secrets) {
            Ok(config) => {
                if clusters.contains_key(&config.name) {
                    errors.push(ConfigError::new(
                        format!("static_resources.clusters[{i}].name"),
                        format!("duplicate cluster name '{}'", config.name),
                    ));
                    continue;
                }
                let old = previous.and_then(|p| p.clusters.get(&config.name));
                let cluster = match old {
                    Some(old) if old.config == config => old.clone(),
                    // A changed cluster keeps the pools of the endpoints that stay.
                    _ => Cluster::replacing(config, old.map(|c| c.as_ref())),
                };
                clusters.insert(cluster.config.name.clone(), cluster);
            }
            Err(e) => errors.push(e.within(&format!("static_resources.clusters[{i}]"))),
        }
    }

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs: HashSet<SocketAddr> = HashSet::new();
    for (i, proto) in resources.listeners.iter().enumerate() {
        let at = format!("static_resources.listeners[{i}]");
        match listener_config(proto, &secrets) {
            Ok(l) => {
                if !names.insert(l.name.clone()) {
                    errors
                        .push(ConfigError::new(format!("{at}.name"), format!("duplicate listener name '{}'", l.name)));
                } else if !addrs.insert(l.addr) {
                    errors.push(ConfigError::new(
                        format!("{at}.address"),
                        format!("address {} is used by another listener", l.addr),
                    ));
                } else {
                    for (field, cluster) in l.referenced_clusters() {
                        if !clusters.contains_key(cluster) {
                            errors.push(ConfigError::new(
                                format!("{at}.{field}"),
                                format!("unknown cluster '{cluster}'"),
                            ));
                        }
                    }
                    listeners.push(Arc::new(l));
                }
            }
            Err(e) => errors.push(e.within(&at)),
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Snapshot::new(listeners, clusters, admin, bootstrap.clone()))
}

#[cfg(test)]
mod tests;
