//! The friendly mesh config: listeners, services and routes in a YAML that fits on one screen,
//! validated whole (every problem named by object and field) before anything is compiled.

use crate::policy::TrafficPolicy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// A whole mesh config: the union of every file in the config directory.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Istio's PeerAuthentication: mTLS on a listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<crate::security::PeerAuthenticationSpec>,
    /// Istio's AuthorizationPolicy: who may do what on a listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<crate::security::AuthorizationPolicySpec>,
}

/// Where proxies accept traffic.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// The file and the position in it this object came from, for error messages.
    #[serde(skip)]
    pub origin: Option<(String, usize)>,
    pub name: String,
    #[serde(default = "default_address")]
    pub address: String,
    pub port: u16,
    /// The proxies that get this listener, its routes and the services they use; empty: every
    /// proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSelector>,
}

/// Which proxies a listener is for. Written as a bare name (the proxy's Envoy `node.cluster`) or
/// as `{ id, cluster, metadata }`, every part given having to match: `metadata` keys name fields
/// of the node's metadata, nested ones with dots (`LABELS.app`), compared as text.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(from = "NodeSelectorForm", into = "NodeSelectorForm")]
pub struct NodeSelector {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The identity a proxy gives in its xDS requests (`node`): what [`NodeSelector`]s match on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeIdentity {
    pub id: String,
    pub cluster: String,
    /// `node.metadata`, flattened: nested fields as `outer.inner`, every scalar as text.
    pub metadata: BTreeMap<String, String>,
}

impl NodeSelector {
    pub fn matches(&self, node: &NodeIdentity) -> bool {
        self.id.as_ref().is_none_or(|id| *id == node.id)
            && self.cluster.as_ref().is_none_or(|c| *c == node.cluster)
            && self.metadata.iter().all(|(k, v)| node.metadata.get(k) == Some(v))
    }

    fn is_empty(&self) -> bool {
        self.id.is_none() && self.cluster.is_none() && self.metadata.is_empty()
    }
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum NodeSelectorForm {
    Cluster(String),
    Match {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metadata: BTreeMap<String, String>,
    },
}

impl From<NodeSelectorForm> for NodeSelector {
    fn from(form: NodeSelectorForm) -> Self {
        match form {
            NodeSelectorForm::Cluster(cluster) => NodeSelector { cluster: Some(cluster), ..Default::default() },
            NodeSelectorForm::Match { id, cluster, metadata } => NodeSelector { id, cluster, metadata },
        }
    }
}

impl From<NodeSelector> for NodeSelectorForm {
    fn from(s: NodeSelector) -> Self {
        match s {
            NodeSelector { id: None, cluster: Some(cluster), metadata } if metadata.is_empty() => {
                NodeSelectorForm::Cluster(cluster)
            }
            NodeSelector { id, cluster, metadata } => NodeSelectorForm::Match { id, cluster, metadata },
        }
    }
}

fn default_address() -> String {
    "127.0.0.1".into()
}

/// A service: a set of endpoints that routes send traffic to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The file and the position in it this object came from, for error messages.
    #[serde(skip)]
    pub origin: Option<(String, usize)>,
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    /// `http1` (default) or `http2` towards the endpoints.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, with = "humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Load balancing, outlier detection, health checks and limits, as Istio's `trafficPolicy`.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub traffic_policy: TrafficPolicy,
}

fn is_default_policy(p: &TrafficPolicy) -> bool {
    *p == TrafficPolicy::default()
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

/// `host:port`, or `{ address: host:port, weight: N, priority: P }`. An IP address is sent as an
/// endpoint (EDS); a DNS name makes the service a `STRICT_DNS` cluster. Priority 0 (the default) is
/// the highest: lower ones take traffic only as far as the higher ones are short of healthy
/// endpoints (Envoy's priority levels, for failover).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointSpec {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "one")]
        weight: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        priority: u32,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The lowest priority (highest number) an endpoint may have, as the proxy accepts.
pub const MAX_PRIORITY: u32 = 127;

fn one() -> u32 {
    1
}

impl EndpointSpec {
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) | EndpointSpec::Weighted { address: a, .. } => a,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 1,
            EndpointSpec::Weighted { weight, .. } => *weight,
        }
    }

    pub fn priority(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 0,
            EndpointSpec::Weighted { priority, .. } => *priority,
        }
    }

    /// The host and port, if the address has both.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address().rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some((host, port.parse().ok()?)).filter(|(h, p)| !h.is_empty() && *p != 0)
    }
}

/// A route: requests on `listener` for one of `hosts` that match go to `to`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The file and the position in it this object came from, for error messages.
    #[serde(skip)]
    pub origin: Option<(String, usize)>,
    pub name: String,
    pub listener: String,
    #[serde(default = "any_host")]
    pub hosts: Vec<String>,
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// The services, with weights for a canary split. Exactly one of `to`, `redirect` and `direct`.
    #[serde(default)]
    pub to: Vec<TargetSpec>,
    /// Replaces the matched prefix before the request goes upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Answers with a redirect instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectSpec>,
    /// Answers directly instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectSpec>,
    #[serde(default, with = "humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Header changes on the request going upstream and on the response going back.
    #[serde(default, skip_serializing_if = "HeadersSpec::is_empty")]
    pub headers: HeadersSpec,
    /// Another attempt when one fails, as Istio's VirtualService `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// Delays and aborts injected, as Istio's VirtualService `fault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// A copy of a share of the requests to another service, as Istio's `mirror` / `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
}

fn all_requests() -> f64 {
    100.0
}

/// `delay` and / or `abort`, each for `percentage` of the requests (default 100).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    #[serde(with = "humantime_serde")]
    pub fixed_delay: Duration,
    #[serde(default = "all_requests")]
    pub percentage: f64,
}

/// Exactly one of `http_status` and `grpc_status` (a gRPC status code number).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AbortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default = "all_requests")]
    pub percentage: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub service: String,
    #[serde(default = "all_requests")]
    pub percentage: f64,
}

impl FaultSpec {
    /// Every problem, each prefixed with `at`.
    fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.delay.is_none() && self.abort.is_none() {
            out.push(format!("{at}: a delay or an abort is needed"));
        }
        if let Some(d) = &self.delay
            && !(0.0..=100.0).contains(&d.percentage)
        {
            out.push(format!("{at}.delay.percentage: must be 0 to 100"));
        }
        if let Some(a) = &self.abort {
            match (a.http_status, a.grpc_status) {
                (Some(code), None) if !(200..=599).contains(&code) => {
                    out.push(format!("{at}.abort.http_status: {code} is not an HTTP status (200-599)"))
                }
                (Some(_), None) => {}
                (None, Some(code)) if code > 16 => {
                    out.push(format!("{at}.abort.grpc_status: {code} is not a gRPC status (0-16)"))
                }
                (None, Some(_)) => {}
                _ => out.push(format!("{at}.abort: exactly one of http_status and grpc_status")),
            }
            if !(0.0..=100.0).contains(&a.percentage) {
                out.push(format!("{at}.abort.percentage: must be 0 to 100"));
            }
        }
        out
    }
}

/// `attempts` retries (after the first try), each try limited to `per_try_timeout`, on the
/// conditions of `retry_on`: Envoy's names (`5xx`, `gateway-error`, `reset`, `connect-failure`,
/// `retriable-4xx`, `refused-stream`, gRPC's `cancelled`, `deadline-exceeded`, `internal`,
/// `resource-exhausted`, `unavailable`) and status codes (`503`). Istio's default conditions when
/// none are given: `connect-failure,refused-stream,unavailable,cancelled,503`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    pub attempts: u32,
    #[serde(default, with = "humantime_serde_opt", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// Istio's default `retryOn`.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,503";

impl RetriesSpec {
    /// Envoy's `retry_on` names and the retriable status codes, or the first entry that is neither.
    pub fn conditions(&self) -> Result<(Vec<&str>, Vec<u16>), String> {
        let (mut names, mut codes) = (Vec::new(), Vec::new());
        for entry in self.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON).split(',').map(str::trim) {
            if let Ok(code @ 100..=599) = entry.parse::<u16>() {
                codes.push(code);
            } else if xds_proto::RETRY_ON.contains(&entry) && entry != "retriable-status-codes" {
                names.push(entry);
            } else {
                return Err(format!(
                    "'{entry}' is not a status code or one of {}",
                    xds_proto::RETRY_ON
                        .iter()
                        .filter(|n| **n != "retriable-status-codes")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if !codes.is_empty() {
            names.push("retriable-status-codes");
        }
        Ok((names, codes))
    }
}

/// Header changes, in the shape of Istio's VirtualService `headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub request: HeaderOperations,
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub response: HeaderOperations,
}

/// `set` replaces a header (or adds it), `add` appends a value, `remove` drops it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeadersSpec {
    fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

impl HeaderOperations {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Problems, each as `field: message` under `at` (e.g. `headers.request`).
    fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        let names = self.set.keys().map(|n| ("set", n)).chain(self.add.keys().map(|n| ("add", n)));
        for (op, name) in names.chain(self.remove.iter().map(|n| ("remove", n))) {
            let token =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                out.push(format!("{at}.{op}: '{name}' is not a header name"));
            } else if name.eq_ignore_ascii_case("host") {
                out.push(format!("{at}.{op}: 'host' cannot be changed here (use a rewrite)"));
            }
        }
        for (op, values) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in values {
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    out.push(format!("{at}.{op}.{name}: the value has a line break or NUL"));
                }
            }
        }
        out
    }
}

/// A redirect: the matched prefix replaced by `prefix`, or the whole path by `path`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "found")]
    pub status: u16,
}

fn found() -> u16 {
    302
}

/// A response from the proxy itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectSpec {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn any_host() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Exact header values that must be present.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub service: String,
    #[serde(default = "one")]
    pub weight: u32,
}

/// Every problem in a mesh config, each naming the object and field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}", .0.join("\n"))]
pub struct MeshErrors(pub Vec<String>);

impl Mesh {
    /// Appends another file's objects (the config directory is read file by file), remembering
    /// which file each came from.
    pub fn extend_from(&mut self, file: &str, mut other: Mesh) {
        for (i, l) in other.listeners.iter_mut().enumerate() {
            l.origin = Some((file.to_string(), i));
        }
        for (i, s) in other.services.iter_mut().enumerate() {
            s.origin = Some((file.to_string(), i));
        }
        for (i, r) in other.routes.iter_mut().enumerate() {
            r.origin = Some((file.to_string(), i));
        }
        self.extend(other);
    }

    /// Appends another config's objects.
    pub fn extend(&mut self, other: Mesh) {
        self.listeners.extend(other.listeners);
        self.services.extend(other.services);
        self.routes.extend(other.routes);
        self.peer_authentications.extend(other.peer_authentications);
        self.authorization_policies.extend(other.authorization_policies);
    }

    /// Checks references, names and values; all problems at once.
    pub fn validate(&self) -> Result<(), MeshErrors> {
        let mut errors = Vec::new();
        let mut listeners = HashSet::new();
        let mut ports = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = at("listeners", i, &l.name, &l.origin);
            if l.name.is_empty() {
                errors.push(format!("{at}: name: must not be empty"));
            }
            if !listeners.insert(l.name.as_str()) {
                errors.push(format!("{at}: name: duplicate listener name"));
            }
            if l.port == 0 {
                errors.push(format!("{at}: port: must be 1-65535"));
            } else if !ports.insert((l.address.as_str(), l.port)) {
                errors.push(format!("{at}: port: {}:{} is used by another listener", l.address, l.port));
            }
            if l.address.parse::<std::net::IpAddr>().is_err() {
                errors.push(format!("{at}: address: '{}' is not an IP address", l.address));
            }
            for (j, n) in l.nodes.iter().enumerate() {
                if n.is_empty() || n.cluster.as_deref() == Some("") || n.id.as_deref() == Some("") {
                    errors
                        .push(format!("{at}: nodes[{j}]: give a node cluster, or a non-empty id, cluster or metadata"));
                }
            }
        }
        let mut services = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = at("services", i, &s.name, &s.origin);
            if s.name.is_empty() {
                errors.push(format!("{at}: name: must not be empty"));
            }
            if !services.insert(s.name.as_str()) {
                errors.push(format!("{at}: name: duplicate service name"));
            }
            if s.endpoints.is_empty() {
                errors.push(format!("{at}: endpoints: at least one endpoint is needed"));
            }
            for (j, e) in s.endpoints.iter().enumerate() {
                if e.host_port().is_none() {
                    errors.push(format!("{at}: endpoints[{j}]: '{}' is not host:port", e.address()));
                }
                if e.weight() == 0 {
                    errors.push(format!("{at}: endpoints[{j}].weight: must be at least 1"));
                }
                if e.priority() > MAX_PRIORITY {
                    errors.push(format!("{at}: endpoints[{j}].priority: must be at most {MAX_PRIORITY}"));
                }
            }
            s.traffic_policy.validate(&format!("{at}: traffic_policy"), &mut errors);
        }
        let mut routes = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = at("routes", i, &r.name, &r.origin);
            if !routes.insert(r.name.as_str()) {
                errors.push(format!("{at}: name: duplicate route name"));
            }
            if !listeners.contains(r.listener.as_str()) {
                errors.push(format!("{at}: listener: unknown listener '{}'", r.listener));
            }
            if r.hosts.is_empty() {
                errors.push(format!("{at}: hosts: at least one host (or \"*\") is needed"));
            }
            match (&r.matcher.prefix, &r.matcher.path) {
                (Some(_), Some(_)) => errors.push(format!("{at}: match: set one of prefix and path")),
                (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
                    errors.push(format!("{at}: match: '{p}' must start with '/'"))
                }
                _ => {}
            }
            let actions =
                usize::from(!r.to.is_empty()) + usize::from(r.redirect.is_some()) + usize::from(r.direct.is_some());
            if actions != 1 {
                errors.push(format!("{at}: set exactly one of to (services), redirect and direct"));
            }
            if let Some(redirect) = &r.redirect {
                if redirect.prefix.is_some() == redirect.path.is_some() {
                    errors.push(format!("{at}: redirect: set one of prefix and path"));
                }
                if ![301, 302, 303, 307, 308].contains(&redirect.status) {
                    errors.push(format!("{at}: redirect.status: {} is not 301, 302, 303, 307 or 308", redirect.status));
                }
            }
            if let Some(direct) = &r.direct
                && !(200..=599).contains(&direct.status)
            {
                errors.push(format!("{at}: direct.status: {} is not an HTTP status (200-599)", direct.status));
            }
            errors.extend(r.headers.request.problems(&format!("{at}: headers.request")));
            errors.extend(r.headers.response.problems(&format!("{at}: headers.response")));
            let mut hashing: Vec<_> =
                r.to.iter()
                    .filter_map(|t| self.services.iter().find(|s| s.name == t.service))
                    .map(|s| s.traffic_policy.hash_on.clone())
                    .collect();
            hashing.dedup();
            if hashing.len() > 1 {
                errors.push(format!("{at}: to: the services split between must hash alike (traffic_policy.hash_on)"));
            }
            if let Some(retries) = &r.retries {
                if retries.attempts == 0 {
                    errors.push(format!("{at}: retries.attempts: must be at least 1"));
                }
                if let Err(e) = retries.conditions() {
                    errors.push(format!("{at}: retries.retry_on: {e}"));
                }
                if r.to.is_empty() {
                    errors.push(format!("{at}: retries: only for routes to services"));
                }
            }
            if let Some(fault) = &r.fault {
                errors.extend(fault.problems(&format!("{at}: fault")));
            }
            if let Some(mirror) = &r.mirror {
                if !services.contains(mirror.service.as_str()) {
                    errors.push(format!("{at}: mirror.service: unknown service '{}'", mirror.service));
                }
                if !(0.0..=100.0).contains(&mirror.percentage) {
                    errors.push(format!("{at}: mirror.percentage: must be 0 to 100"));
                }
                if r.to.is_empty() {
                    errors.push(format!("{at}: mirror: only for routes to services"));
                }
            }
            if r.prefix_rewrite.is_some() && r.to.is_empty() {
                errors.push(format!("{at}: prefix_rewrite: only for routes to services"));
            }
            for (j, t) in r.to.iter().enumerate() {
                if !services.contains(t.service.as_str()) {
                    errors.push(format!("{at}: to[{j}].service: unknown service '{}'", t.service));
                }
                if t.weight == 0 && r.to.len() > 1 {
                    errors.push(format!("{at}: to[{j}].weight: must be at least 1"));
                }
            }
        }
        let mut names = HashSet::new();
        let mut secured = HashSet::new();
        for (i, p) in self.peer_authentications.iter().enumerate() {
            let at = at("peer_authentications", i, &p.name, &p.origin);
            if !names.insert(("peer", p.name.as_str())) {
                errors.push(format!("{at}: name: duplicate peer authentication name"));
            }
            if !listeners.contains(p.listener.as_str()) {
                errors.push(format!("{at}: listener: unknown listener '{}'", p.listener));
            } else if !secured.insert(p.listener.as_str()) {
                errors.push(format!("{at}: listener: '{}' already has a peer authentication", p.listener));
            }
        }
        for (i, p) in self.authorization_policies.iter().enumerate() {
            let at = at("authorization_policies", i, &p.name, &p.origin);
            if p.name.is_empty() || !names.insert(("authz", p.name.as_str())) {
                errors.push(format!("{at}: name: must be set and unique"));
            }
            if !listeners.contains(p.listener.as_str()) {
                errors.push(format!("{at}: listener: unknown listener '{}'", p.listener));
            }
            errors.extend(crate::security::policy_problems(p, &at));
        }
        if errors.is_empty() { Ok(()) } else { Err(MeshErrors(errors)) }
    }

    /// The mTLS mode of a listener (none configured: plaintext).
    pub fn mtls(&self, listener: &str) -> crate::security::MtlsMode {
        self.peer_authentications
            .iter()
            .find(|p| p.listener == listener)
            .map_or(crate::security::MtlsMode::Disable, |p| p.mtls.mode)
    }
}

/// Names an object in errors: `mesh.yaml: routes[2] 'canary'` (its file and position there).
fn at(kind: &str, index: usize, name: &str, origin: &Option<(String, usize)>) -> String {
    match origin {
        Some((file, i)) => format!("{file}: {kind}[{i}] '{name}'"),
        None => format!("{kind}[{index}] '{name}'"),
    }
}

/// Reads one YAML document; errors name the field path and line.
pub fn parse(text: &str) -> Result<Mesh, String> {
    if text.trim().is_empty() {
        return Ok(Mesh::default());
    }
    // The YAML reader's errors carry the field path and the line.
    yaml_serde::from_str(text).map_err(|e| e.to_string())
}

/// `fixed_delay: 5s` style durations (humantime), required.
pub(crate) mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `timeout: 5s` style durations (humantime), optional.
pub(crate) mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_by_object_and_field() {
        let mesh = parse(
            "listeners: [{ name: http, port: 10000 }]\n\
             services: [{ name: a, endpoints: ['127.0.0.1:1', 'nope'] }]\n\
             routes:\n\
             - { name: r, listener: web, to: [{ service: b }], match: { prefix: x } }\n",
        )
        .unwrap();
        let errors = mesh.validate().unwrap_err().0;
        assert_eq!(
            errors,
            [
                "services[0] 'a': endpoints[1]: 'nope' is not host:port",
                "routes[0] 'r': listener: unknown listener 'web'",
                "routes[0] 'r': match: 'x' must start with '/'",
                "routes[0] 'r': to[0].service: unknown service 'b'",
            ]
        );
    }

    #[test]
    fn faults_and_mirrors_are_checked() {
        let mesh = parse(
            "listeners: [{ name: http, port: 10000 }]\n\
             services: [{ name: a, endpoints: ['127.0.0.1:1'] }]\n\
             routes:\n\
             - { name: ok, listener: http, to: [{ service: a }], fault: { delay: { fixed_delay: 1s, percentage: 5 } }, mirror: { service: a } }\n\
             - { name: bad, listener: http, to: [{ service: a }], fault: { abort: { http_status: 99, grpc_status: 3 } }, mirror: { service: b, percentage: 150 } }\n\
             - { name: empty, listener: http, to: [{ service: a }], fault: {} }\n",
        )
        .unwrap();
        let errors = mesh.validate().unwrap_err().0;
        assert_eq!(
            errors,
            [
                "routes[1] 'bad': fault.abort: exactly one of http_status and grpc_status",
                "routes[1] 'bad': mirror.service: unknown service 'b'",
                "routes[1] 'bad': mirror.percentage: must be 0 to 100",
                "routes[2] 'empty': fault: a delay or an abort is needed",
            ]
        );
        assert_eq!(mesh.routes[0].fault.as_ref().unwrap().delay.as_ref().unwrap().percentage, 5.0);
    }

    #[test]
    fn retries_take_envoys_conditions_and_status_codes() {
        let mesh = parse(
            "listeners: [{ name: http, port: 10000 }]\n\
             services: [{ name: a, endpoints: ['127.0.0.1:1'] }]\n\
             routes:\n\
             - { name: ok, listener: http, to: [{ service: a }], retries: { attempts: 2, retry_on: '5xx, 409' } }\n\
             - { name: none, listener: http, to: [{ service: a }], retries: { attempts: 0, retry_on: 'sometimes' } }\n\
             - { name: local, listener: http, direct: { status: 200 }, retries: { attempts: 1 } }\n",
        )
        .unwrap();
        let errors = mesh.validate().unwrap_err().0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0], "routes[1] 'none': retries.attempts: must be at least 1");
        assert!(
            errors[1]
                .starts_with("routes[1] 'none': retries.retry_on: 'sometimes' is not a status code or one of 5xx, ")
        );
        assert_eq!(errors[2], "routes[2] 'local': retries: only for routes to services");
        let ok = mesh.routes[0].retries.as_ref().unwrap();
        assert_eq!(ok.conditions().unwrap(), (vec!["5xx", "retriable-status-codes"], vec![409]));
        let istio = RetriesSpec { attempts: 1, per_try_timeout: None, retry_on: None };
        assert_eq!(
            istio.conditions().unwrap(),
            (
                vec!["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"],
                vec![503]
            )
        );
    }

    #[test]
    fn node_selectors_read_as_a_cluster_name_or_a_match_and_write_back_the_same() {
        let mesh = parse(
            "listeners:\n\
             - { name: a, port: 1, nodes: [web, { id: web-1 }, { cluster: api, metadata: { LABELS.app: api } }] }\n\
             - { name: b, port: 2, nodes: [{}, { id: '' }] }\n",
        )
        .unwrap();
        let errors = mesh.validate().unwrap_err().0;
        assert_eq!(
            errors,
            [
                "listeners[1] 'b': nodes[0]: give a node cluster, or a non-empty id, cluster or metadata",
                "listeners[1] 'b': nodes[1]: give a node cluster, or a non-empty id, cluster or metadata",
            ]
        );
        let nodes = &mesh.listeners[0].nodes;
        let api = NodeIdentity {
            id: "api-7".into(),
            cluster: "api".into(),
            metadata: [("LABELS.app".to_string(), "api".to_string())].into(),
        };
        let matched: Vec<bool> = nodes.iter().map(|n| n.matches(&api)).collect();
        assert_eq!(matched, [false, false, true]);
        let web1 = NodeIdentity { id: "web-1".into(), cluster: "other".into(), ..Default::default() };
        assert_eq!(nodes.iter().map(|n| n.matches(&web1)).collect::<Vec<_>>(), [false, true, false]);
        let written = yaml_serde::to_string(&mesh.listeners[0]).unwrap();
        assert!(written.contains("- web\n"), "{written}");
        let back: ListenerSpec = yaml_serde::from_str(&written).unwrap();
        assert_eq!(back.nodes, *nodes);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let err = parse("services: [{ name: a, endpoints: ['127.0.0.1:1'], weights: 3 }]").unwrap_err();
        assert!(err.starts_with("services[0]: unknown field `weights`"), "{err}");
        let err = parse("listeners: [{ name: a, port: web }]").unwrap_err();
        assert!(err.starts_with("listeners[0].port: invalid type"), "{err}");
    }
}
