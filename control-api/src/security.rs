//! Mesh security in Istio's shapes: `peer_authentications` (PeerAuthentication: a listener takes
//! mTLS only, STRICT, or mTLS and plaintext, PERMISSIVE), `authorization_policies`
//! (AuthorizationPolicy: ALLOW / DENY rules by source principal, namespace, IP block and by method,
//! path, port), and a service's `traffic_policy.tls` (DestinationRule `ISTIO_MUTUAL`). Compiled to
//! Envoy TLS contexts whose certificates are the workload's secrets `default` and `ROOTCA` (over
//! SDS, or made by a Strait proxy itself) and to RBAC filters: a DENY filter ahead of an ALLOW one.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xds_proto::workload::{CERTIFICATE_SECRET, TRUST_BUNDLE_SECRET};

/// PeerAuthentication: how a listener accepts connections.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(skip)]
    pub origin: Option<(String, usize)>,
    pub name: String,
    /// The listener it applies to (Istio's workload selector).
    pub listener: String,
    pub mtls: MtlsSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mTLS: a plaintext client is refused.
    Strict,
    /// mTLS and plaintext on the same port (told apart by the first bytes).
    Permissive,
    /// Plaintext only.
    Disable,
}

/// AuthorizationPolicy: on a listener, requests matching a rule are allowed (ALLOW: and nothing
/// else is) or refused (DENY, which wins).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(skip)]
    pub origin: Option<(String, usize)>,
    pub name: String,
    pub listener: String,
    #[serde(default = "allow")]
    pub action: AuthorizationAction,
    /// A request matches when it matches a rule; no rules: ALLOW matches nothing (allow-nothing),
    /// DENY nothing either.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

fn allow() -> AuthorizationAction {
    AuthorizationAction::Allow
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthorizationAction {
    Allow,
    Deny,
}

/// A rule: any of `from` and any of `to` (an empty list matches anything).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FromSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<ToSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    pub source: SourceSpec,
}

/// Who: every field given must match (each a list of alternatives).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `cluster.local/ns/default/sa/frontend`, with a `*` prefix or suffix, or `*` for any peer
    /// with a certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// CIDR ranges (`10.0.0.0/8`) or addresses of the connection's peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    pub operation: OperationSpec,
}

/// What: every field given must match (each a list of alternatives).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Exact, `/prefix/*`, `*suffix`, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// A service's DestinationRule TLS: `ISTIO_MUTUAL` (mTLS with the workload's certificate), with
/// the identities the upstream may have.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSpec {
    pub mode: ClientTlsMode,
    /// SPIFFE IDs (`spiffe://...`) the upstream's certificate must name; empty: any from the mesh CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    IstioMutual,
    Disable,
}

/// Checks a policy's values, naming each problem under `at`.
pub fn policy_problems(p: &AuthorizationPolicySpec, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in p.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let here = format!("{at}: rules[{i}].from[{j}].source");
            if s.principals.is_empty() && s.namespaces.is_empty() && s.ip_blocks.is_empty() {
                out.push(format!("{here}: give principals, namespaces or ip_blocks"));
            }
            for principal in &s.principals {
                let stars = principal.matches('*').count();
                let inner_star = principal.len() > 1 && principal[1..principal.len() - 1].contains('*');
                if principal.is_empty() || principal.starts_with("spiffe://") || stars > 1 || inner_star {
                    out.push(format!(
                        "{here}.principals: '{principal}' is not `<trust-domain>/ns/<ns>/sa/<sa>` (a `*` only at one end)"
                    ));
                }
            }
            for block in &s.ip_blocks {
                if cidr(block).is_none() {
                    out.push(format!("{here}.ip_blocks: '{block}' is not an address or CIDR range"));
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let o = &to.operation;
            let here = format!("{at}: rules[{i}].to[{j}].operation");
            if o.methods.is_empty() && o.paths.is_empty() && o.ports.is_empty() {
                out.push(format!("{here}: give methods, paths or ports"));
            }
            for path in &o.paths {
                if !(path.starts_with('/') || path.starts_with('*')) {
                    out.push(format!("{here}.paths: '{path}' must start with '/' or '*'"));
                }
            }
            for method in &o.methods {
                if method.is_empty() || method.chars().any(|c| !c.is_ascii_uppercase()) {
                    out.push(format!("{here}.methods: '{method}' is not an HTTP method (upper case)"));
                }
            }
        }
    }
    out
}

fn cidr(block: &str) -> Option<(String, u32)> {
    let (ip, len) = block.split_once('/').unwrap_or((block, ""));
    let addr: std::net::IpAddr = ip.parse().ok()?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() { bits } else { len.parse().ok().filter(|l| *l <= bits)? };
    Some((ip.to_string(), len))
}

/// A string matcher for a value with `*` at one end (Istio's convention).
fn wildcard(value: &str, prefix_text: &str) -> Value {
    if value == "*" {
        json!({ "safe_regex": { "regex": ".+" } })
    } else if let Some(rest) = value.strip_prefix('*') {
        json!({ "suffix": rest })
    } else if let Some(rest) = value.strip_suffix('*') {
        json!({ "prefix": format!("{prefix_text}{rest}") })
    } else {
        json!({ "exact": format!("{prefix_text}{value}") })
    }
}

fn principal(s: &SourceSpec) -> Value {
    let mut all = Vec::new();
    if !s.principals.is_empty() {
        let ids = s
            .principals
            .iter()
            .map(|p| {
                // `*` alone: any authenticated peer; a `*suffix` matches the end of the SPIFFE ID.
                let name = if p == "*" {
                    json!({ "safe_regex": { "regex": "spiffe://.+" } })
                } else {
                    wildcard(p, "spiffe://")
                };
                json!({ "authenticated": { "principal_name": name } })
            })
            .collect();
        all.push(or_ids(ids));
    }
    if !s.namespaces.is_empty() {
        let ids = s
            .namespaces
            .iter()
            .map(|ns| {
                let regex = format!("spiffe://[^/]+/ns/{}/.*", regex_escape(ns));
                json!({ "authenticated": { "principal_name": { "safe_regex": { "regex": regex } } } })
            })
            .collect();
        all.push(or_ids(ids));
    }
    if !s.ip_blocks.is_empty() {
        let ids = s
            .ip_blocks
            .iter()
            .filter_map(|b| cidr(b))
            .map(|(ip, len)| json!({ "direct_remote_ip": { "address_prefix": ip, "prefix_len": len } }))
            .collect();
        all.push(or_ids(ids));
    }
    if all.len() == 1 { all.remove(0) } else { json!({ "and_ids": { "ids": all } }) }
}

fn or_ids(ids: Vec<Value>) -> Value {
    if ids.len() == 1 { ids.into_iter().next().unwrap_or_default() } else { json!({ "or_ids": { "ids": ids } }) }
}

fn or_rules(rules: Vec<Value>) -> Value {
    if rules.len() == 1 {
        rules.into_iter().next().unwrap_or_default()
    } else {
        json!({ "or_rules": { "rules": rules } })
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { vec![c] } else { vec!['\\', c] })
        .collect()
}

fn permission(o: &OperationSpec) -> Value {
    let mut all = Vec::new();
    if !o.methods.is_empty() {
        all.push(or_rules(
            o.methods
                .iter()
                .map(|m| json!({ "header": { "name": ":method", "string_match": { "exact": m } } }))
                .collect(),
        ));
    }
    if !o.paths.is_empty() {
        all.push(or_rules(o.paths.iter().map(|p| json!({ "url_path": { "path": wildcard(p, "") } })).collect()));
    }
    if !o.ports.is_empty() {
        all.push(or_rules(o.ports.iter().map(|p| json!({ "destination_port": p })).collect()));
    }
    if all.len() == 1 { all.remove(0) } else { json!({ "and_rules": { "rules": all } }) }
}

/// The RBAC `policies` of a set of AuthorizationPolicies: one per rule.
fn rbac_policies(policies: &[&AuthorizationPolicySpec]) -> Value {
    let mut out = serde_json::Map::new();
    for p in policies {
        for (i, rule) in p.rules.iter().enumerate() {
            let principals: Vec<Value> = if rule.from.is_empty() {
                vec![json!({ "any": true })]
            } else {
                rule.from.iter().map(|f| principal(&f.source)).collect()
            };
            let permissions: Vec<Value> = if rule.to.is_empty() {
                vec![json!({ "any": true })]
            } else {
                rule.to.iter().map(|t| permission(&t.operation)).collect()
            };
            out.insert(format!("{}[{i}]", p.name), json!({ "permissions": permissions, "principals": principals }));
        }
    }
    Value::Object(out)
}

/// The RBAC HTTP filters for a listener's policies: DENY first (so it wins), then ALLOW.
pub fn rbac_filters(policies: &[&AuthorizationPolicySpec]) -> Vec<Value> {
    let mut out = Vec::new();
    for (action, name) in [
        (AuthorizationAction::Deny, "strait.authorization.deny"),
        (AuthorizationAction::Allow, "strait.authorization.allow"),
    ] {
        let these: Vec<&AuthorizationPolicySpec> = policies.iter().copied().filter(|p| p.action == action).collect();
        if these.is_empty() {
            continue;
        }
        let action = if action == AuthorizationAction::Deny { "DENY" } else { "ALLOW" };
        out.push(json!({
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": { "action": action, "policies": rbac_policies(&these) }
            }
        }));
    }
    out
}

/// A secret named `name`, over ADS (SDS): the workload's `default` certificate or `ROOTCA` bundle.
fn sds(name: &str) -> Value {
    json!({ "name": name, "sds_config": { "ads": {}, "resource_api_version": "V3" } })
}

/// The `DownstreamTlsContext` of a mesh listener: the workload certificate, a client certificate
/// from the mesh required.
pub fn downstream_tls() -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [sds(CERTIFICATE_SECRET)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "prefix": "spiffe://" } }]
                    },
                    "validation_context_sds_secret_config": sds(TRUST_BUNDLE_SECRET)
                }
            }
        }
    })
}

/// The `UpstreamTlsContext` of a service with `ISTIO_MUTUAL`.
pub fn upstream_tls(tls: &ClientTlsSpec) -> Value {
    let sans: Vec<Value> = if tls.subject_alt_names.is_empty() {
        vec![json!({ "san_type": "URI", "matcher": { "prefix": "spiffe://" } })]
    } else {
        tls.subject_alt_names.iter().map(|s| json!({ "san_type": "URI", "matcher": { "exact": s } })).collect()
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": { "tls_maximum_protocol_version": "TLSv1_3" },
                "tls_certificate_sds_secret_configs": [sds(CERTIFICATE_SECRET)],
                "combined_validation_context": {
                    "default_validation_context": { "match_typed_subject_alt_names": sans },
                    "validation_context_sds_secret_config": sds(TRUST_BUNDLE_SECRET)
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> AuthorizationPolicySpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn deny_comes_first_and_rules_become_rbac_policies() {
        let allow = policy(
            "{ name: a, listener: l, rules: [{ from: [{ source: { principals: ['td/ns/x/sa/y', '*/sa/z'], namespaces: [prod] } }], to: [{ operation: { paths: ['/api/*'] } }] }] }",
        );
        let deny =
            policy("{ name: d, listener: l, action: DENY, rules: [{ to: [{ operation: { ports: [9000] } }] }] }");
        let filters = rbac_filters(&[&allow, &deny]);
        assert_eq!(filters[0]["typed_config"]["rules"]["action"], "DENY");
        assert_eq!(filters[1]["typed_config"]["rules"]["action"], "ALLOW");
        let rule = &filters[1]["typed_config"]["rules"]["policies"]["a[0]"];
        let ids = &rule["principals"][0]["and_ids"]["ids"];
        assert_eq!(ids[0]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["exact"], "spiffe://td/ns/x/sa/y");
        assert_eq!(ids[0]["or_ids"]["ids"][1]["authenticated"]["principal_name"]["suffix"], "/sa/z");
        assert_eq!(ids[1]["authenticated"]["principal_name"]["safe_regex"]["regex"], "spiffe://[^/]+/ns/prod/.*");
        assert_eq!(rule["permissions"][0]["url_path"]["path"]["prefix"], "/api/");
        let nothing = policy("{ name: n, listener: l }");
        let filters = rbac_filters(&[&nothing]);
        assert_eq!(filters[0]["typed_config"]["rules"]["policies"], json!({}), "allow-nothing: no policy matches");
    }

    #[test]
    fn bad_values_are_named() {
        let bad = policy(
            "{ name: b, listener: l, rules: [{ from: [{ source: { principals: ['spiffe://x', 'a*b'], ip_blocks: ['10.0.0.0/40'] } }], to: [{ operation: { methods: [get], paths: [api] } }] }] }",
        );
        let problems = policy_problems(&bad, "p").join("\n");
        for expected in ["'spiffe://x'", "'a*b'", "'10.0.0.0/40'", "'get'", "'api'"] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
    }
}
