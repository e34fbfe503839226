//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape, and `/clusters` in Envoy's text and
//! JSON forms.

use crate::snapshot::Snapshot;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use xds_proto::pb::envoy::admin::v3 as admin;
use xds_proto::pb::google::protobuf::Timestamp;

fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The running config as Envoy's admin `ConfigDump` JSON. With ADS, each type's `version_info` is the
/// control plane's last accepted version, and a rejected update shows as an `error_state` with the
/// rejected version and the error sent back in the NACK.
pub fn config_dump(s: &Snapshot, ads: Option<&crate::ads::AdsStatus>) -> Result<String, String> {
    use envoy_types_any::pack;
    use xds_proto::type_url::{CLUSTER, LISTENER};
    let resources = s.bootstrap.static_resources.clone().unwrap_or_default();
    let updated = Some(timestamp(s.applied_at));
    let version = |t: &str| ads.and_then(|a| a.versions.get(t).cloned()).unwrap_or_else(|| s.version.to_string());
    let rejected = |t: &str| {
        ads.and_then(|a| a.last_nack.get(t)).map(|(version, error)| admin::UpdateFailureState {
            details: error.clone(),
            version_info: version.clone(),
            ..Default::default()
        })
    };
    let listeners = admin::ListenersConfigDump {
        version_info: version(LISTENER),
        dynamic_listeners: rejected(LISTENER)
            .map(|e| admin::listeners_config_dump::DynamicListener { error_state: Some(e), ..Default::default() })
            .into_iter()
            .collect(),
        static_listeners: resources
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::StaticListener {
                listener: Some(pack(l.clone())),
                last_updated: updated,
            })
            .collect(),
    };
    let clusters = admin::ClustersConfigDump {
        version_info: version(CLUSTER),
        dynamic_active_clusters: rejected(CLUSTER)
            .map(|e| admin::clusters_config_dump::DynamicCluster { error_state: Some(e), ..Default::default() })
            .into_iter()
            .collect(),
        static_clusters: resources
            .clusters
            .iter()
            .map(|c| admin::clusters_config_dump::StaticCluster {
                cluster: Some(pack(c.clone())),
                last_updated: updated,
            })
            .collect(),
        ..Default::default()
    };
    let dump = admin::ConfigDump {
        configs: vec![
            pack(admin::BootstrapConfigDump { bootstrap: Some(s.bootstrap.clone()), last_updated: updated }),
            pack(listeners),
            pack(clusters),
        ],
    };
    let dynamic: DynamicMessage = xds_proto::to_dynamic(&dump).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::pretty(&mut out);
    dynamic.serialize_with_options(&mut ser, &options).map_err(|e| e.to_string())?;
    drop(dynamic);
    xds_proto::release_descriptor_pool();
    crate::sys::release_free_memory();
    String::from_utf8(out).map_err(|e| e.to_string())
}

mod envoy_types_any {
    pub fn pack<T: prost::Message + prost::Name>(m: T) -> xds_proto::pb::google::protobuf::Any {
        xds_proto::pb::google::protobuf::Any { type_url: T::type_url(), value: m.encode_to_vec() }
    }
}

/// Envoy's `/clusters` text: `cluster::host::stat::value` lines.
pub fn clusters_text(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut names: Vec<_> = s.clusters.keys().collect();
    names.sort();
    for name in names {
        let c = &s.clusters[name];
        let _ = writeln!(out, "{name}::default_priority::max_connections::1024");
        for e in &c.endpoints().all {
            let a = e.addr;
            let _ = writeln!(out, "{name}::{a}::rq_active::{}", e.active_requests.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::idle_connections::{}", e.pool.idle_connections());
            let _ = writeln!(out, "{name}::{a}::weight::{}", e.weight);
            let flags =
                if e.health.takes_traffic() { "healthy".to_string() } else { format!("/eds_{}", e.health.as_str()) };
            let _ = writeln!(out, "{name}::{a}::health_flags::{flags}");
        }
    }
    out
}

/// `/clusters?format=json`.
pub fn clusters_json(s: &Snapshot) -> String {
    let mut names: Vec<_> = s.clusters.keys().collect();
    names.sort();
    let statuses: Vec<_> = names
        .into_iter()
        .map(|name| {
            let c = &s.clusters[name];
            let hosts: Vec<_> = c
                .endpoints()
                .all
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": {"socket_address": {"address": e.addr.ip().to_string(), "port_value": e.addr.port()}},
                        "weight": e.weight,
                        "health_status": {"eds_health_status": e.health.as_str().to_ascii_uppercase()},
                        "stats": [{"name": "rq_active", "value": e.active_requests.load(Ordering::Relaxed)}],
                    })
                })
                .collect();
            serde_json::json!({
                "name": name,
                "lb_policy": c.config.lb_policy.name(),
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "cluster_statuses": statuses })).unwrap_or_default()
}
