//! Authorization (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`): named policies, each a
//! set of permissions (what: path, method and other headers, destination port, SNI) and principals
//! (who: the peer's SPIFFE ID or other certificate names, source address, headers). `ALLOW` lets
//! through only what some policy matches, `DENY` stops what some policy matches; Istio's "deny
//! wins" is a DENY filter ahead of an ALLOW one. `shadow_rules` are evaluated and counted only.

pub mod layer;

use crate::net::CidrRange;
use crate::routing::matcher::{HeaderCheck, HeaderMatcher, StringMatcher};
use crate::tls::identity::ConnectionTls;
use http::HeaderMap;
use metrics::Counter;
use std::net::SocketAddr;

/// What a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// Everything is allowed; matches are only counted.
    Log,
}

/// A `config.rbac.v3.RBAC`: the action and the policies, in name order (Envoy's map order).
#[derive(Debug)]
pub struct Rules {
    pub action: Action,
    pub policies: Vec<(String, Policy)>,
}

/// A `Policy`: it matches when any permission and any principal match.
#[derive(Debug)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// A request pseudo-header a header rule may name (`:method`, `:path`, `:authority`, `:scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Path,
    Authority,
    Scheme,
}

/// A header rule: a real header, or a pseudo-header.
#[derive(Debug)]
pub enum HeaderRule {
    Header(HeaderMatcher),
    Pseudo { name: Pseudo, check: HeaderCheck, invert: bool },
}

#[derive(Debug)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderRule),
    /// `url_path`: the path without its query.
    UrlPath(StringMatcher),
    DestinationIp(CidrRange),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u16, u16),
    RequestedServerName(StringMatcher),
}

#[derive(Debug)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A peer with a verified certificate; with a matcher, one of its URI SANs, else DNS SANs, else
    /// its subject must match (Envoy's order).
    Authenticated(Option<StringMatcher>),
    /// `direct_remote_ip` (and the deprecated `source_ip`): the connection's peer.
    DirectRemoteIp(CidrRange),
    /// `remote_ip`: the client address `x-forwarded-for` processing trusts (the peer otherwise).
    RemoteIp(CidrRange),
    Header(HeaderRule),
    UrlPath(StringMatcher),
}

/// What a decision can look at: the connection, and for HTTP the request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub peer: SocketAddr,
    /// The trusted client address (`remote_ip`).
    pub client: std::net::IpAddr,
    pub local: SocketAddr,
    pub tls: Option<&'a ConnectionTls>,
    pub request: Option<RequestFacts<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
}

impl HeaderRule {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        let Some(request) = &facts.request else { return false };
        match self {
            HeaderRule::Header(m) => m.matches(request.headers),
            HeaderRule::Pseudo { name, check, invert } => {
                let value = match name {
                    Pseudo::Method => request.method,
                    Pseudo::Path => request.path,
                    Pseudo::Authority => request.authority,
                    Pseudo::Scheme => request.scheme,
                };
                check.check(Some(value)) != *invert
            }
        }
    }
}

fn url_path_matches(m: &StringMatcher, facts: &Facts<'_>) -> bool {
    facts.request.is_some_and(|r| m.matches(crate::routing::matcher::without_query(r.path)))
}

impl Permission {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(facts)),
            Permission::Or(any) => any.iter().any(|p| p.matches(facts)),
            Permission::Not(p) => !p.matches(facts),
            Permission::Header(h) => h.matches(facts),
            Permission::UrlPath(m) => url_path_matches(m, facts),
            Permission::DestinationIp(range) => range.contains(facts.local.ip()),
            Permission::DestinationPort(port) => facts.local.port() == *port,
            Permission::DestinationPortRange(start, end) => (*start..*end).contains(&facts.local.port()),
            Permission::RequestedServerName(m) => {
                m.matches(facts.tls.and_then(|t| t.server_name.as_deref()).unwrap_or(""))
            }
        }
    }
}

impl Principal {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(facts)),
            Principal::Or(any) => any.iter().any(|p| p.matches(facts)),
            Principal::Not(p) => !p.matches(facts),
            Principal::Authenticated(name) => {
                let Some(peer) = facts.tls.and_then(|t| t.peer.as_ref()) else { return false };
                let Some(name) = name else { return true };
                peer.sans.uris.iter().any(|u| name.matches(u))
                    || peer.sans.dns.iter().any(|d| name.matches(d))
                    || name.matches(&peer.subject)
            }
            Principal::DirectRemoteIp(range) => range.contains(facts.peer.ip()),
            Principal::RemoteIp(range) => range.contains(facts.client),
            Principal::Header(h) => h.matches(facts),
            Principal::UrlPath(m) => url_path_matches(m, facts),
        }
    }
}

impl Rules {
    /// The first policy (in name order) that matches, if any.
    pub fn matching(&self, facts: &Facts<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| {
                p.permissions.iter().any(|x| x.matches(facts)) && p.principals.iter().any(|x| x.matches(facts))
            })
            .map(|(name, _)| name.as_str())
    }

    /// Whether the rules let this through.
    pub fn allows(&self, facts: &Facts<'_>) -> bool {
        let matched = self.matching(facts).is_some();
        match self.action {
            Action::Allow => matched,
            Action::Deny => !matched,
            Action::Log => true,
        }
    }
}

/// An RBAC filter's config: enforced rules (none: everything passes) and shadow rules.
#[derive(Debug)]
pub struct Rbac {
    pub rules: Option<Rules>,
    pub shadow: Option<Rules>,
}

/// Its counters: `rbac.allowed`, `rbac.denied` and the shadow ones.
#[derive(Debug)]
pub struct RbacStats {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
}

impl RbacStats {
    /// `envoy_http_rbac_*{envoy_http_conn_manager_prefix}` for an HTTP filter.
    pub fn http(hcm_prefix: &str) -> Self {
        let l = "envoy_http_conn_manager_prefix";
        let p = hcm_prefix.to_string();
        RbacStats {
            allowed: metrics::counter!("envoy_http_rbac_allowed", l => p.clone()),
            denied: metrics::counter!("envoy_http_rbac_denied", l => p.clone()),
            shadow_allowed: metrics::counter!("envoy_http_rbac_shadow_allowed", l => p.clone()),
            shadow_denied: metrics::counter!("envoy_http_rbac_shadow_denied", l => p),
        }
    }

    /// `envoy_rbac_*{envoy_rbac_prefix}` for a network filter (its `stat_prefix`, without the
    /// trailing dot), as Envoy names them.
    pub fn network(stat_prefix: &str) -> Self {
        let l = "envoy_rbac_prefix";
        let p = stat_prefix.trim_end_matches('.').to_string();
        RbacStats {
            allowed: metrics::counter!("envoy_rbac_allowed", l => p.clone()),
            denied: metrics::counter!("envoy_rbac_denied", l => p.clone()),
            shadow_allowed: metrics::counter!("envoy_rbac_shadow_allowed", l => p.clone()),
            shadow_denied: metrics::counter!("envoy_rbac_shadow_denied", l => p),
        }
    }
}

impl Rbac {
    /// Decides and counts; shadow rules are only counted.
    pub fn allows(&self, facts: &Facts<'_>, stats: &RbacStats) -> bool {
        if let Some(shadow) = &self.shadow {
            if shadow.allows(facts) { &stats.shadow_allowed } else { &stats.shadow_denied }.increment(1);
        }
        let Some(rules) = &self.rules else { return true };
        let allowed = rules.allows(facts);
        if allowed { &stats.allowed } else { &stats.denied }.increment(1);
        if !allowed {
            let peer = facts.tls.and_then(|t| t.peer.as_ref()).and_then(|p| p.spiffe_id()).unwrap_or("-");
            tracing::debug!(peer = %facts.peer, principal = peer, "RBAC: access denied");
        }
        allowed
    }
}

/// An `envoy.filters.network.rbac` filter: decided once per connection, before its first byte
/// reaches the terminal filter (after the TLS handshake, so principals can name the peer).
#[derive(Debug)]
pub struct NetworkRbac {
    pub rbac: Rbac,
    pub stats: RbacStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::matcher::{StringMatch, StringMatcher};
    use crate::tls::identity::PeerCertificate;
    use crate::tls::san::SubjectAltNames;

    fn exact(s: &str) -> StringMatcher {
        StringMatcher { kind: StringMatch::Exact(s.into()), ignore_case: false }
    }

    fn tls(uris: &[&str], dns: &[&str], subject: &str) -> ConnectionTls {
        let sans = SubjectAltNames {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let peer = PeerCertificate {
            sans,
            subject: subject.into(),
            hash: String::new(),
            der: rustls::pki_types::CertificateDer::from(Vec::new()),
        };
        ConnectionTls { peer: Some(peer), server_name: Some("api.internal".into()), ..Default::default() }
    }

    fn facts<'a>(tls: Option<&'a ConnectionTls>, headers: &'a HeaderMap, method: &'a str, path: &'a str) -> Facts<'a> {
        Facts {
            peer: "10.1.2.3:4000".parse().unwrap(),
            client: "10.1.2.3".parse().unwrap(),
            local: "10.0.0.1:8443".parse().unwrap(),
            tls,
            request: Some(RequestFacts { headers, method, path, authority: "api", scheme: "https" }),
        }
    }

    #[test]
    fn permissions_and_principals_combine_as_envoys() {
        let get = Permission::Header(HeaderRule::Pseudo {
            name: Pseudo::Method,
            check: crate::routing::matcher::HeaderCheck::Value(exact("GET")),
            invert: false,
        });
        let not_admin = Permission::Not(Box::new(Permission::UrlPath(StringMatcher {
            kind: StringMatch::Prefix("/admin".into()),
            ignore_case: false,
        })));
        let rules = Rules {
            action: Action::Allow,
            policies: vec![(
                "reads".into(),
                Policy {
                    permissions: vec![Permission::And(vec![get, not_admin, Permission::DestinationPort(8443)])],
                    principals: vec![Principal::Authenticated(Some(exact("frontend.internal")))],
                },
            )],
        };
        let headers = HeaderMap::new();
        // The name is matched against the URI SANs, then the DNS SANs, then the subject.
        let by_dns = tls(&["spiffe://td/ns/a/sa/b"], &["frontend.internal"], "CN=x");
        let by_subject = tls(&[], &[], "frontend.internal");
        let stranger = tls(&["spiffe://td/ns/a/sa/c"], &[], "CN=c");
        assert!(rules.allows(&facts(Some(&by_dns), &headers, "GET", "/items?x=1")));
        assert!(rules.allows(&facts(Some(&by_subject), &headers, "GET", "/items")));
        assert!(!rules.allows(&facts(Some(&stranger), &headers, "GET", "/items")));
        assert!(!rules.allows(&facts(Some(&by_dns), &headers, "POST", "/items")), "only GET");
        assert!(!rules.allows(&facts(Some(&by_dns), &headers, "GET", "/admin/x")), "not /admin");
        assert!(!rules.allows(&facts(None, &headers, "GET", "/items")), "no certificate: not authenticated");

        let deny = Rules { action: Action::Deny, ..rules };
        assert!(!deny.allows(&facts(Some(&by_dns), &headers, "GET", "/items")));
        assert!(deny.allows(&facts(Some(&stranger), &headers, "GET", "/items")));
        let sni = Permission::RequestedServerName(exact("api.internal"));
        assert!(sni.matches(&facts(Some(&by_dns), &headers, "GET", "/")));
    }
}
