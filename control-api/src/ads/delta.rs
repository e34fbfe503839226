//! Incremental (delta) ADS: the client says which resources it wants (`*` for all) and which
//! versions it already has; each response carries only resources that are new or changed for it and
//! the names of those removed. ACK/NACK by nonce as in State of the World; a NACKed resource is not
//! sent again until it changes.

use super::AdsStats;
use crate::resources::Resources;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use xds_proto::type_url::is_full_state;

/// One type's subscription on a stream.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has (or has been sent): name -> version.
    client: HashMap<String, String>,
    last_nonce: Option<String>,
    started: bool,
}

pub(super) async fn serve(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    mut resources: watch::Receiver<Arc<Resources>>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    stats: Arc<AdsStats>,
) {
    let mut subscriptions: HashMap<&'static str, Subscription> = HashMap::new();
    let mut node = super::Peer::default();
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            next = super::next_request(&mut requests, &mut node, "delta") => {
                let Some((request, type_url)) = next else { break };
                let sub = subscriptions.entry(type_url).or_default();
                if !super::ack_or_nack(&request, sub.last_nonce.as_deref(), &node.id, &stats) {
                    continue;
                }
                subscribe(sub, type_url, &request);
                let current = resources.borrow().clone().view(&node.identity);
                if let Some(response) = diff(sub, type_url, &current, &mut nonce)
                    && !send(&tx, response, &stats).await
                {
                    break;
                }
            }
            changed = resources.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = resources.borrow_and_update().clone().view(&node.identity);
                for type_url in xds_proto::type_url::ADS_TYPES {
                    let Some(sub) = subscriptions.get_mut(type_url) else { continue };
                    if let Some(response) = diff(sub, type_url, &current, &mut nonce)
                        && !send(&tx, response, &stats).await
                    {
                        return;
                    }
                }
            }
        }
    }
    tracing::info!(node = node.id, "delta ADS stream closed");
}

async fn send(
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    response: DeltaDiscoveryResponse,
    stats: &AdsStats,
) -> bool {
    stats.responses.fetch_add(1, Ordering::Relaxed);
    tx.send(Ok(response)).await.is_ok()
}

fn subscribe(sub: &mut Subscription, type_url: &str, request: &DeltaDiscoveryRequest) {
    if !sub.started {
        sub.started = true;
        sub.client.extend(request.initial_resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())));
        // An empty first subscription to a full-state type means everything (legacy wildcard).
        if is_full_state(type_url) && request.resource_names_subscribe.is_empty() {
            sub.wildcard = true;
        }
    }
    for name in &request.resource_names_subscribe {
        if name == "*" {
            sub.wildcard = true;
        } else {
            sub.names.insert(name.clone());
        }
    }
    for name in &request.resource_names_unsubscribe {
        if name == "*" {
            sub.wildcard = false;
        } else {
            sub.names.remove(name);
            sub.client.remove(name);
        }
    }
}

/// What the client lacks: new or changed subscribed resources, and removed ones it has.
fn diff(
    sub: &mut Subscription,
    type_url: &'static str,
    current: &Resources,
    nonce: &mut u64,
) -> Option<DeltaDiscoveryResponse> {
    let wildcard: std::collections::BTreeSet<&str> =
        if sub.wildcard { current.wildcard(type_url).map(|r| r.name.as_str()).collect() } else { Default::default() };
    let wanted = |name: &str| wildcard.contains(name) || sub.names.contains(name);
    let resources: Vec<Resource> = current
        .of_type(type_url)
        .filter(|r| wanted(&r.name) && sub.client.get(&r.name) != Some(&r.version))
        .map(|r| Resource {
            name: r.name.clone(),
            version: r.version.clone(),
            resource: Some(r.body.clone()),
            ..Default::default()
        })
        .collect();
    let removed: Vec<String> =
        sub.client.keys().filter(|name| current.get(type_url, name).is_none()).cloned().collect();
    if resources.is_empty() && removed.is_empty() {
        return None;
    }
    for r in &resources {
        sub.client.insert(r.name.clone(), r.version.clone());
    }
    for name in &removed {
        sub.client.remove(name);
    }
    *nonce += 1;
    sub.last_nonce = Some(nonce.to_string());
    Some(DeltaDiscoveryResponse {
        system_version_info: current.version.clone(),
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce: nonce.to_string(),
        ..Default::default()
    })
}
