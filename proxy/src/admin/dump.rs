//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape, and `/clusters` in Envoy's text and
//! JSON forms.

use crate::ads::{AdsStatus, Received};
use crate::snapshot::Snapshot;
use crate::upstream::HealthStatus;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use xds_proto::pb::envoy::admin::v3 as admin;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use xds_proto::pb::google::protobuf::{Any, Timestamp};
use xds_proto::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, SECRET};

fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The running config as Envoy's admin `ConfigDump` JSON: the bootstrap, then clusters, endpoints,
/// listeners and routes. With ADS, resources from the control plane are the dynamic ones (active or
/// warming, each with the version it came in and when); each type's `version_info` is its last
/// accepted version; a rejected update shows as an entry with only an `error_state`: the rejected
/// version and the error sent back in the NACK.
pub fn config_dump(s: &Snapshot, ads: Option<&AdsStatus>) -> Result<String, String> {
    let dump = ConfigDump::new(s, ads);
    let mut base = s.bootstrap.clone();
    if let Some(resources) = base.static_resources.as_mut() {
        resources.listeners.retain(|l| !dump.is_dynamic(LISTENER, &l.name));
        resources.clusters.retain(|c| !dump.is_dynamic(CLUSTER, &c.name));
        resources.secrets.retain(|c| !dump.is_dynamic(SECRET, &c.name));
        resources.secrets.iter_mut().for_each(redact);
    }
    let updated = Some(timestamp(s.applied_at));
    let statics = base.static_resources.clone().unwrap_or_default();
    let clusters = admin::ClustersConfigDump {
        version_info: dump.version(CLUSTER),
        static_clusters: statics
            .clusters
            .into_iter()
            .map(|c| admin::clusters_config_dump::StaticCluster { cluster: Some(pack(c)), last_updated: updated })
            .collect(),
        dynamic_active_clusters: dump.dynamic(CLUSTER, false, cluster_entry).chain(dump.rejected(CLUSTER)).collect(),
        dynamic_warming_clusters: dump.dynamic(CLUSTER, true, cluster_entry).collect(),
    };
    let endpoints = admin::EndpointsConfigDump {
        dynamic_endpoint_configs: dump
            .dynamic(CLUSTER_LOAD_ASSIGNMENT, false, |version_info, body, last_updated| {
                admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info,
                    endpoint_config: Some(body),
                    last_updated,
                    ..Default::default()
                }
            })
            .chain(dump.rejected(CLUSTER_LOAD_ASSIGNMENT))
            .collect(),
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        version_info: dump.version(LISTENER),
        static_listeners: statics
            .listeners
            .into_iter()
            .map(|l| admin::listeners_config_dump::StaticListener { listener: Some(pack(l)), last_updated: updated })
            .collect(),
        dynamic_listeners: dump.dynamic_listeners().chain(dump.rejected(LISTENER)).collect(),
    };
    let routes = admin::RoutesConfigDump {
        dynamic_route_configs: dump
            .dynamic(ROUTE_CONFIGURATION, false, |version_info, body, last_updated| {
                admin::routes_config_dump::DynamicRouteConfig {
                    version_info,
                    route_config: Some(body),
                    last_updated,
                    ..Default::default()
                }
            })
            .chain(dump.rejected(ROUTE_CONFIGURATION))
            .collect(),
        ..Default::default()
    };
    let secrets = admin::SecretsConfigDump {
        static_secrets: statics
            .secrets
            .into_iter()
            .map(|secret| admin::secrets_config_dump::StaticSecret {
                name: secret.name.clone(),
                last_updated: updated,
                secret: Some(pack(secret)),
            })
            .collect(),
        dynamic_active_secrets: dump
            .accepted(SECRET)
            .filter_map(|(name, r)| {
                let mut secret = prost::Message::decode(r.body.value.as_slice()).ok()?;
                redact(&mut secret);
                Some(admin::secrets_config_dump::DynamicSecret {
                    name: name.clone(),
                    version_info: r.version.clone(),
                    last_updated: Some(timestamp(r.at)),
                    secret: Some(pack(secret)),
                    ..Default::default()
                })
            })
            .chain(dump.rejected(SECRET))
            .collect(),
        ..Default::default()
    };
    let mut configs =
        vec![pack(admin::BootstrapConfigDump { bootstrap: Some(base), last_updated: updated }), pack(clusters)];
    if ads.is_some() {
        configs.push(pack(endpoints));
    }
    configs.push(pack(listeners));
    if ads.is_some() {
        configs.push(pack(routes));
    }
    configs.push(pack(secrets));
    let dynamic: DynamicMessage = xds_proto::to_dynamic(&admin::ConfigDump { configs }).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::pretty(&mut out);
    dynamic.serialize_with_options(&mut ser, &options).map_err(|e| e.to_string())?;
    drop(dynamic);
    xds_proto::release_descriptor_pool();
    crate::sys::release_free_memory();
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// A secret as a dump shows it: private keys replaced by "[redacted]", as Envoy does.
fn redact(secret: &mut Secret) {
    use xds_proto::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    if let Some(secret::Type::TlsCertificate(cert)) = secret.r#type.as_mut()
        && cert.private_key.is_some()
    {
        cert.private_key =
            Some(DataSource { specifier: Some(Specifier::InlineString("[redacted]".into())), ..Default::default() });
    }
}

fn cluster_entry(
    version_info: String,
    body: Any,
    last_updated: Option<Timestamp>,
) -> admin::clusters_config_dump::DynamicCluster {
    admin::clusters_config_dump::DynamicCluster {
        version_info,
        cluster: Some(body),
        last_updated,
        ..Default::default()
    }
}

/// The ADS side of a dump: what came from the control plane.
struct ConfigDump<'a> {
    snapshot_version: u64,
    ads: Option<&'a AdsStatus>,
}

/// An admin dump entry that can carry a rejected update alone.
trait WithErrorState: Default {
    fn set_error_state(&mut self, e: admin::UpdateFailureState);
}

macro_rules! with_error_state {
    ($($t:ty),*) => {$(
        impl WithErrorState for $t {
            fn set_error_state(&mut self, e: admin::UpdateFailureState) {
                self.error_state = Some(e);
            }
        }
    )*};
}
with_error_state!(
    admin::secrets_config_dump::DynamicSecret,
    admin::clusters_config_dump::DynamicCluster,
    admin::listeners_config_dump::DynamicListener,
    admin::routes_config_dump::DynamicRouteConfig,
    admin::endpoints_config_dump::DynamicEndpointConfig
);

impl<'a> ConfigDump<'a> {
    fn new(s: &Snapshot, ads: Option<&'a AdsStatus>) -> Self {
        ConfigDump { snapshot_version: s.version, ads }
    }

    fn accepted(&self, type_url: &str) -> impl Iterator<Item = (&'a String, &'a Received)> {
        self.ads.and_then(|a| a.accepted.get(type_url)).into_iter().flatten()
    }

    fn is_dynamic(&self, type_url: &str, name: &str) -> bool {
        self.ads.and_then(|a| a.accepted.get(type_url)).is_some_and(|m| m.contains_key(name))
    }

    fn is_warming(&self, type_url: &'static str, name: &str) -> bool {
        self.ads.is_some_and(|a| a.warming.contains(&(type_url, name.to_string())))
    }

    /// The control plane's last accepted version of a type; the snapshot's own without one.
    fn version(&self, type_url: &str) -> String {
        self.ads.and_then(|a| a.versions.get(type_url).cloned()).unwrap_or_else(|| self.snapshot_version.to_string())
    }

    /// The accepted resources of a type that are (or are not) warming, as dump entries.
    fn dynamic<T>(
        &self,
        type_url: &'static str,
        warming: bool,
        entry: impl Fn(String, Any, Option<Timestamp>) -> T,
    ) -> impl Iterator<Item = T> {
        self.accepted(type_url)
            .filter(move |(name, _)| self.is_warming(type_url, name) == warming)
            .map(move |(_, r)| entry(r.version.clone(), (*r.body).clone(), Some(timestamp(r.at))))
    }

    fn dynamic_listeners(&self) -> impl Iterator<Item = admin::listeners_config_dump::DynamicListener> {
        self.accepted(LISTENER).map(|(name, r)| {
            let state = admin::listeners_config_dump::DynamicListenerState {
                version_info: r.version.clone(),
                listener: Some((*r.body).clone()),
                last_updated: Some(timestamp(r.at)),
            };
            let warming = self.is_warming(LISTENER, name);
            admin::listeners_config_dump::DynamicListener {
                name: name.clone(),
                active_state: (!warming).then(|| state.clone()),
                warming_state: warming.then_some(state),
                ..Default::default()
            }
        })
    }

    /// The last rejected update of a type, as an entry with only its `error_state`.
    fn rejected<T: WithErrorState>(&self, type_url: &str) -> Option<T> {
        let (version, error) = self.ads?.last_nack.get(type_url)?;
        let mut entry = T::default();
        entry.set_error_state(admin::UpdateFailureState {
            details: error.clone(),
            version_info: version.clone(),
            ..Default::default()
        });
        Some(entry)
    }
}

fn pack<T: prost::Message + prost::Name>(m: T) -> Any {
    Any { type_url: T::type_url(), value: m.encode_to_vec() }
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
            let (cx_total, cx_connect_fail, cx_active) = e.pool.connection_counts();
            let n = &e.counts;
            let counters = [
                ("cx_total", cx_total),
                ("cx_active", u64::from(cx_active)),
                ("cx_connect_fail", cx_connect_fail),
                ("rq_total", n.rq_total.load(Ordering::Relaxed)),
                ("rq_timeout", n.rq_timeout.load(Ordering::Relaxed)),
                ("rq_success", n.rq_success.load(Ordering::Relaxed)),
                ("rq_error", n.rq_error.load(Ordering::Relaxed)),
                ("rq_active", e.active_requests.load(Ordering::Relaxed)),
            ];
            for (stat, value) in counters {
                let _ = writeln!(out, "{name}::{a}::{stat}::{value}");
            }
            let _ = writeln!(out, "{name}::{a}::idle_connections::{}", e.pool.idle_connections());
            let _ = writeln!(out, "{name}::{a}::weight::{}", e.weight);
            let _ = writeln!(out, "{name}::{a}::priority::{}", e.priority);
            // Envoy's health flag names.
            let mut flags = String::from(match e.health {
                HealthStatus::Unhealthy | HealthStatus::Timeout => "/failed_eds_health",
                HealthStatus::Draining => "/eds_status_draining",
                HealthStatus::Degraded => "/degraded_eds_health",
                HealthStatus::Unknown | HealthStatus::Healthy => "",
            });
            if e.outlier.is_ejected() {
                flags += "/failed_outlier_check";
            }
            if c.endpoints().health_checked && e.health_check.is_failed() {
                flags += "/failed_active_hc";
                if e.health_check.is_pending() {
                    flags += "/pending_active_hc";
                }
            }
            if flags.is_empty() {
                flags = "healthy".into();
            }
            let _ = writeln!(out, "{name}::{a}::health_flags::{flags}");
        }
    }
    out
}

/// An endpoint's counters as Envoy's `/clusters?format=json` lists them.
fn host_stats_json(e: &crate::upstream::Endpoint) -> Vec<serde_json::Value> {
    let (cx_total, cx_connect_fail, cx_active) = e.pool.connection_counts();
    let c = &e.counts;
    let counter = |name: &str, value: u64| serde_json::json!({ "name": name, "value": value, "type": "COUNTER" });
    vec![
        counter("cx_connect_fail", cx_connect_fail),
        counter("cx_total", cx_total),
        counter("rq_error", c.rq_error.load(Ordering::Relaxed)),
        counter("rq_success", c.rq_success.load(Ordering::Relaxed)),
        counter("rq_timeout", c.rq_timeout.load(Ordering::Relaxed)),
        counter("rq_total", c.rq_total.load(Ordering::Relaxed)),
        serde_json::json!({ "name": "cx_active", "value": cx_active, "type": "GAUGE" }),
        serde_json::json!({ "name": "rq_active", "value": e.active_requests.load(Ordering::Relaxed), "type": "GAUGE" }),
    ]
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
                        "health_status": {
                            "eds_health_status": e.health.as_str().to_ascii_uppercase(),
                            "failed_outlier_check": e.outlier.is_ejected(),
                            "failed_active_health_check": c.endpoints().health_checked && e.health_check.is_failed(),
                        },
                        "priority": e.priority,
                        "stats": host_stats_json(e),
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
