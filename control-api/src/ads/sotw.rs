//! State-of-the-World ADS: each response carries every subscribed resource of its type. Follows the
//! protocol as Envoy documents it: a response per type with `version_info` and a fresh `nonce`; a
//! request echoing the last nonce ACKs (no `error_detail`) or NACKs (with it: logged and counted, the
//! same version is not sent again); a request with an older nonce is stale and ignored; LDS/CDS with
//! an empty first subscription (or `*`) are wildcard; subscriptions are remembered, so later changes
//! are pushed without being asked.

use super::AdsStats;
use crate::resources::Resources;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use xds_proto::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_proto::type_url::is_full_state;

/// One type's subscription on a stream.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The version and nonce of the last response sent.
    sent: Option<(String, String)>,
}

pub(super) async fn serve(
    mut requests: Streaming<DiscoveryRequest>,
    mut resources: watch::Receiver<Arc<Resources>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    stats: Arc<AdsStats>,
) {
    let mut subscriptions: HashMap<&'static str, Subscription> = HashMap::new();
    let mut node = super::Peer::default();
    let mut nonce = 0u64;
    loop {
        let latest = resources.borrow_and_update().clone();
        tokio::select! {
            next = super::next_request(&mut requests, &mut node, "state-of-the-world") => {
                let Some((request, type_url)) = next else { break };
                let current = latest.view(&node.identity);
                let sub = subscriptions.entry(type_url).or_default();
                let last_nonce = sub.sent.as_ref().map(|(_, n)| n.as_str());
                if !super::ack_or_nack(&request, last_nonce, &node.id, &stats) {
                    continue;
                }
                let changed = subscription_changed(sub, &request);
                if changed || sub.sent.as_ref().is_none_or(|(v, _)| *v != current.version) {
                    nonce += 1;
                    let response = respond(sub, type_url, &current, nonce);
                    stats.responses.fetch_add(1, Ordering::Relaxed);
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                }
            }
            changed = resources.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = resources.borrow().clone().view(&node.identity);
                for type_url in xds_proto::type_url::ADS_TYPES {
                    let Some(sub) = subscriptions.get_mut(type_url) else { continue };
                    if sub.sent.as_ref().is_some_and(|(v, _)| *v == current.version) {
                        continue;
                    }
                    nonce += 1;
                    let response = respond(sub, type_url, &current, nonce);
                    stats.responses.fetch_add(1, Ordering::Relaxed);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    tracing::info!(node = node.id, "state-of-the-world ADS stream closed");
}

/// Records the request's subscription; true if it differs from what was subscribed before.
fn subscription_changed(sub: &mut Subscription, request: &DiscoveryRequest) -> bool {
    let first = sub.sent.is_none();
    let names: BTreeSet<String> = request.resource_names.iter().filter(|n| *n != "*").cloned().collect();
    let wildcard = request.resource_names.iter().any(|n| n == "*")
        || (is_full_state(&request.type_url) && request.resource_names.is_empty() && (first || sub.wildcard));
    let changed = wildcard != sub.wildcard || names != sub.names;
    sub.wildcard = wildcard;
    sub.names = names;
    changed
}

fn respond(sub: &mut Subscription, type_url: &'static str, current: &Resources, nonce: u64) -> DiscoveryResponse {
    let resources = if sub.wildcard {
        current.wildcard(type_url).map(|r| r.body.clone()).collect()
    } else {
        sub.names.iter().filter_map(|n| current.get(type_url, n)).map(|r| r.body.clone()).collect()
    };
    let nonce = nonce.to_string();
    sub.sent = Some((current.version.clone(), nonce.clone()));
    DiscoveryResponse {
        version_info: current.version.clone(),
        resources,
        type_url: type_url.to_string(),
        nonce,
        ..Default::default()
    }
}
