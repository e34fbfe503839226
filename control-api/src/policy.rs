//! A service's traffic policy, in the shape of Istio's DestinationRule `trafficPolicy`: the load
//! balancer (simple or consistent hashing), outlier detection, connection-pool limits, and active
//! health checks (which Istio leaves to Kubernetes probes). Compiled onto the service's Envoy
//! cluster, and for consistent hashing onto the routes that send to it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// How requests are spread over a service's endpoints (Envoy's `lb_policy`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
    /// Latency-aware (linkerd2-proxy's): sent as a `load_balancing_policy` listing Strait's
    /// peak-EWMA first and LEAST_REQUEST second, which an Envoy uses instead.
    PeakEwma,
}

impl LoadBalancer {
    pub const NAMES: &'static str = "round_robin, least_request, random, ring_hash, maglev, peak_ewma";

    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(Value::String(name.to_string())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            LoadBalancer::RoundRobin => "round_robin",
            LoadBalancer::LeastRequest => "least_request",
            LoadBalancer::Random => "random",
            LoadBalancer::RingHash => "ring_hash",
            LoadBalancer::Maglev => "maglev",
            LoadBalancer::PeakEwma => "peak_ewma",
        }
    }

    fn envoy(self) -> &'static str {
        match self {
            LoadBalancer::RoundRobin => "ROUND_ROBIN",
            LoadBalancer::LeastRequest => "LEAST_REQUEST",
            LoadBalancer::Random => "RANDOM",
            LoadBalancer::RingHash => "RING_HASH",
            LoadBalancer::Maglev => "MAGLEV",
            LoadBalancer::PeakEwma => "LEAST_REQUEST",
        }
    }

    fn is_hashing(self) -> bool {
        matches!(self, LoadBalancer::RingHash | LoadBalancer::Maglev)
    }
}

/// What a consistent-hashing balancer hashes, as Istio's `consistentHash`: one of a request
/// header, a cookie (made up and set with `cookie_ttl` when the client has none) or the source IP.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub cookie_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
}

/// Passive health checking, as Istio's `outlierDetection`: an endpoint is ejected after
/// `consecutive_5xx_errors` 5xx answers (default 5, 0 off) or `consecutive_gateway_errors`
/// 502/503/504 and connection failures (default off), for `base_ejection_time` times its
/// ejections so far; at most `max_ejection_percent` of the endpoints at once.
/// `min_health_percent` is the panic threshold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// The kind of active health check probe.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `GET path`, healthy on 200.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// `grpc.health.v1.Health/Check` for `service`, healthy on SERVING.
    Grpc,
}

/// Active health checking: every `interval` (default 10s) each endpoint is probed, `timeout`
/// (default 2s) bounding each probe; `unhealthy_threshold` failures in a row (default 3) take it
/// out, `healthy_threshold` successes (default 1) bring it back.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub kind: ProbeKind,
    /// HTTP: the path probed (default `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// gRPC: the service name asked about (default "", the whole server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// Limits, as Istio's `connectionPool`: connections to the service (`max_connections`, Envoy's
/// default 1024; over it, requests wait for one), requests waiting for a connection
/// (`max_pending_requests`, 1024; over it, 503 at once), requests in flight (`max_requests`, 1024;
/// over it, 503 at once), concurrent retries (`max_retries`, 3), requests per upstream connection,
/// and how long an unused connection is kept (`idle_timeout`, 1h).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, with = "crate::mesh::humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// All of a service's traffic policy (`traffic_policy` in the YAML).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "is_default")]
    pub load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// DestinationRule TLS: `ISTIO_MUTUAL` sends to the service over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::security::ClientTlsSpec>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl TrafficPolicy {
    /// Every problem, each prefixed with `at` and the field.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        match &self.hash_on {
            Some(h) => {
                let given =
                    usize::from(h.header.is_some()) + usize::from(h.cookie.is_some()) + usize::from(h.source_ip);
                if given != 1 {
                    errors.push(format!("{at}: hash_on: set one of header, cookie and source_ip"));
                }
                if h.cookie_ttl.is_some() && h.cookie.is_none() {
                    errors.push(format!("{at}: hash_on.cookie_ttl: only with a cookie"));
                }
                if [&h.header, &h.cookie].into_iter().flatten().any(String::is_empty) {
                    errors.push(format!("{at}: hash_on: the header or cookie name must not be empty"));
                }
                if !self.load_balancer.is_hashing() {
                    errors.push(format!("{at}: hash_on: needs load_balancer ring_hash or maglev"));
                }
            }
            None if self.load_balancer.is_hashing() => {
                errors.push(format!("{at}: load_balancer: {} needs hash_on", self.load_balancer.name()));
            }
            None => {}
        }
        if let Some(o) = &self.outlier_detection {
            for (field, value) in
                [("max_ejection_percent", o.max_ejection_percent), ("min_health_percent", o.min_health_percent)]
            {
                if value.is_some_and(|v| v > 100) {
                    errors.push(format!("{at}: outlier_detection.{field}: must be 0-100"));
                }
            }
            for (field, value) in [("interval", o.interval), ("base_ejection_time", o.base_ejection_time)] {
                if value.is_some_and(|d| d < Duration::from_millis(1)) {
                    errors.push(format!("{at}: outlier_detection.{field}: must be at least 1ms"));
                }
            }
        }
        if let Some(h) = &self.health_check {
            for (field, value) in [("interval", h.interval), ("timeout", h.timeout)] {
                if value.is_some_and(|d| d < Duration::from_millis(1)) {
                    errors.push(format!("{at}: health_check.{field}: must be at least 1ms"));
                }
            }
            for (field, value) in
                [("unhealthy_threshold", h.unhealthy_threshold), ("healthy_threshold", h.healthy_threshold)]
            {
                if value == Some(0) {
                    errors.push(format!("{at}: health_check.{field}: must be at least 1"));
                }
            }
            if h.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                errors.push(format!("{at}: health_check.path: must start with '/'"));
            }
            if h.path.is_some() && h.kind != ProbeKind::Http {
                errors.push(format!("{at}: health_check.path: only for kind http"));
            }
            if h.service.is_some() && h.kind != ProbeKind::Grpc {
                errors.push(format!("{at}: health_check.service: only for kind grpc"));
            }
        }
    }

    /// Sets the cluster fields this policy decides.
    pub fn apply_to_cluster(&self, cluster: &mut Value) {
        if self.load_balancer == LoadBalancer::PeakEwma {
            cluster["load_balancing_policy"] = json!({ "policies": [
                { "typed_extension_config": { "name": "strait.peak_ewma", "typed_config": {
                    "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                    "type_url": xds_proto::PEAK_EWMA_TYPE,
                    "value": {}
                } } },
                { "typed_extension_config": { "name": "envoy.load_balancing_policies.least_request", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
                } } }
            ] });
        } else {
            cluster["lb_policy"] = json!(self.load_balancer.envoy());
        }
        if let Some(o) = &self.outlier_detection {
            // Istio's translation: each rule given is enforced; success-rate ejection is off.
            let mut od = json!({ "enforcing_success_rate": 0 });
            if let Some(n) = o.consecutive_5xx_errors {
                od["consecutive_5xx"] = json!(n);
                od["enforcing_consecutive_5xx"] = json!(if n > 0 { 100 } else { 0 });
            }
            if let Some(n) = o.consecutive_gateway_errors {
                od["consecutive_gateway_failure"] = json!(n);
                od["enforcing_consecutive_gateway_failure"] = json!(if n > 0 { 100 } else { 0 });
            }
            if let Some(d) = o.interval {
                od["interval"] = json!(seconds(d));
            }
            if let Some(d) = o.base_ejection_time {
                od["base_ejection_time"] = json!(seconds(d));
            }
            if let Some(p) = o.max_ejection_percent {
                od["max_ejection_percent"] = json!(p);
            }
            cluster["outlier_detection"] = od;
            if let Some(p) = o.min_health_percent {
                cluster["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": p } });
            }
        }
        if let Some(h) = &self.health_check {
            let interval = seconds(h.interval.unwrap_or(Duration::from_secs(10)));
            // Probed every interval from the start: Envoy's slower `no_traffic_interval` (60s
            // until a request comes) would leave a new service's health unknown for a minute.
            let mut check = json!({
                "interval": interval,
                "no_traffic_interval": interval,
                "timeout": seconds(h.timeout.unwrap_or(Duration::from_secs(2))),
                "unhealthy_threshold": h.unhealthy_threshold.unwrap_or(3),
                "healthy_threshold": h.healthy_threshold.unwrap_or(1),
            });
            match h.kind {
                ProbeKind::Http => {
                    check["http_health_check"] = json!({ "path": h.path.as_deref().unwrap_or("/healthz") });
                }
                ProbeKind::Tcp => check["tcp_health_check"] = json!({}),
                ProbeKind::Grpc => {
                    check["grpc_health_check"] = json!({ "service_name": h.service.as_deref().unwrap_or("") });
                }
            }
            cluster["health_checks"] = json!([check]);
        }
        if let Some(p) = &self.connection_pool {
            let mut thresholds = serde_json::Map::new();
            for (field, value) in [
                ("max_connections", p.max_connections),
                ("max_pending_requests", p.max_pending_requests),
                ("max_requests", p.max_requests),
                ("max_retries", p.max_retries),
            ] {
                if let Some(n) = value {
                    thresholds.insert(field.into(), json!(n));
                }
            }
            if !thresholds.is_empty() {
                thresholds.insert("priority".into(), json!("DEFAULT"));
                cluster["circuit_breakers"] = json!({ "thresholds": [thresholds] });
            }
            if p.max_requests_per_connection.is_some() || p.idle_timeout.is_some() {
                let mut common = json!({});
                if let Some(n) = p.max_requests_per_connection {
                    common["max_requests_per_connection"] = json!(n);
                }
                if let Some(d) = p.idle_timeout {
                    common["idle_timeout"] = json!(seconds(d));
                }
                common_http_protocol_options(cluster, common);
            }
        }
    }

    /// The route `hash_policy` entries for routes to this service (consistent hashing only).
    pub fn hash_policy(&self) -> Option<Value> {
        let h = self.hash_on.as_ref()?;
        let policy = if let Some(header) = &h.header {
            json!({ "header": { "header_name": header } })
        } else if let Some(cookie) = &h.cookie {
            let mut c = json!({ "name": cookie, "path": "/" });
            if let Some(ttl) = h.cookie_ttl {
                c["ttl"] = json!(seconds(ttl));
            }
            json!({ "cookie": c })
        } else {
            json!({ "connection_properties": { "source_ip": true } })
        };
        Some(json!([policy]))
    }
}

/// Puts `common` into the cluster's `HttpProtocolOptions` (creating them, HTTP/1.1, if absent).
fn common_http_protocol_options(cluster: &mut Value, common: Value) {
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let options = &mut cluster["typed_extension_protocol_options"][KEY];
    if options.is_null() {
        *options = json!({
            "@type": xds_proto::type_url::HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": { "http_protocol_options": {} }
        });
    }
    options["common_http_protocol_options"] = common;
}

#[cfg(test)]
mod tests {
    use crate::{api, compile, mesh};
    use prost::Message;
    use xds_proto::pb::envoy::config::cluster::v3::Cluster;
    use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
    use xds_proto::type_url;

    const MESH: &str = "listeners: [{ name: http, port: 10000 }]\n\
        services:\n\
        - name: web\n  endpoints: ['10.0.0.1:80', { address: '10.0.0.2:80', weight: 2, priority: 1 }]\n  \
          traffic_policy:\n    load_balancer: ring_hash\n    hash_on: { cookie: session, cookie_ttl: 1h }\n    \
          outlier_detection: { consecutive_5xx_errors: 3, consecutive_gateway_errors: 0, base_ejection_time: 10s, min_health_percent: 30 }\n    \
          health_check: { kind: grpc, service: web, interval: 2s }\n    \
          connection_pool: { max_connections: 10, max_pending_requests: 20, max_requests: 50, max_retries: 2, max_requests_per_connection: 100, idle_timeout: 5m }\n\
        routes: [{ name: main, listener: http, to: [{ service: web }] }]\n";

    #[test]
    fn a_traffic_policy_compiles_onto_the_cluster_and_its_routes() {
        let mesh = mesh::parse(MESH).unwrap();
        mesh.validate().unwrap();
        let resources = compile::compile(&mesh).unwrap();
        let cluster = Cluster::decode(resources.get(type_url::CLUSTER, "web").unwrap().body.value.as_slice()).unwrap();
        assert_eq!(cluster.lb_policy, 2, "RING_HASH");
        let od = cluster.outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx.unwrap().value, 3);
        assert_eq!(od.enforcing_consecutive_5xx.unwrap().value, 100);
        assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 0);
        assert_eq!(od.enforcing_success_rate.unwrap().value, 0, "Istio turns success-rate ejection off");
        assert_eq!(od.base_ejection_time.unwrap().seconds, 10);
        assert_eq!(cluster.common_lb_config.unwrap().healthy_panic_threshold.unwrap().value, 30.0);
        let hc = &cluster.health_checks[0];
        assert_eq!((hc.interval.unwrap().seconds, hc.no_traffic_interval.unwrap().seconds), (2, 2));
        assert_eq!(hc.unhealthy_threshold.unwrap().value, 3);
        assert!(format!("{:?}", hc.health_checker).contains("GrpcHealthCheck"), "{:?}", hc.health_checker);
        let limits = &cluster.circuit_breakers.unwrap().thresholds[0];
        assert_eq!((limits.max_requests.unwrap().value, limits.max_retries.unwrap().value), (50, 2));
        assert_eq!((limits.max_connections.unwrap().value, limits.max_pending_requests.unwrap().value), (10, 20));
        assert!(
            cluster
                .typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );

        let cla = resources.get(type_url::CLUSTER_LOAD_ASSIGNMENT, "web").unwrap();
        let cla = ClusterLoadAssignment::decode(cla.body.value.as_slice()).unwrap();
        let levels: Vec<(u32, usize)> = cla.endpoints.iter().map(|l| (l.priority, l.lb_endpoints.len())).collect();
        assert_eq!(levels, [(0, 1), (1, 1)]);

        let rc = resources.get(type_url::ROUTE_CONFIGURATION, "http").unwrap();
        let rc = RouteConfiguration::decode(rc.body.value.as_slice()).unwrap();
        let route = format!("{:?}", rc.virtual_hosts[0].routes[0]);
        assert!(route.contains("Cookie") && route.contains("\"session\""), "{route}");
    }

    #[test]
    fn the_policy_survives_the_management_api_both_ways() {
        let mesh = mesh::parse(MESH).unwrap();
        let back = api::from_proto(api::to_proto(&mesh)).unwrap();
        assert_eq!(back.services[0].traffic_policy, mesh.services[0].traffic_policy);
        assert_eq!(back.services[0].endpoints[1].priority(), 1);
    }

    #[test]
    fn policy_mistakes_are_named() {
        let mesh = mesh::parse(
            "listeners: [{ name: http, port: 10000 }]\n\
             services:\n\
             - { name: a, endpoints: ['10.0.0.1:80'], traffic_policy: { load_balancer: maglev } }\n\
             - { name: b, endpoints: ['10.0.0.2:80'], traffic_policy: { hash_on: { header: x-user, source_ip: true } } }\n\
             - { name: c, endpoints: [{ address: '10.0.0.3:80', priority: 200 }], traffic_policy: { outlier_detection: { max_ejection_percent: 101 }, health_check: { kind: tcp, path: healthz } } }\n\
             - { name: d, endpoints: ['10.0.0.4:80'], traffic_policy: { load_balancer: ring_hash, hash_on: { header: x-user } } }\n\
             routes: [{ name: split, listener: http, to: [{ service: a }, { service: d }] }]\n",
        )
        .unwrap();
        let errors = mesh.validate().unwrap_err().0;
        for expected in [
            "services[0] 'a': traffic_policy: load_balancer: maglev needs hash_on",
            "services[1] 'b': traffic_policy: hash_on: set one of header, cookie and source_ip",
            "services[1] 'b': traffic_policy: hash_on: needs load_balancer ring_hash or maglev",
            "services[2] 'c': endpoints[0].priority: must be at most 127",
            "services[2] 'c': traffic_policy: outlier_detection.max_ejection_percent: must be 0-100",
            "services[2] 'c': traffic_policy: health_check.path: must start with '/'",
            "services[2] 'c': traffic_policy: health_check.path: only for kind http",
            "routes[0] 'split': to: the services split between must hash alike (traffic_policy.hash_on)",
        ] {
            assert!(errors.iter().any(|e| e == expected), "missing '{expected}' in {errors:#?}");
        }
        let unknown = mesh::parse("services: [{ name: a, endpoints: ['10.0.0.1:80'], traffic_policy: { lb: x } }]\n");
        assert!(unknown.unwrap_err().contains("unknown field `lb`"));
    }
}
