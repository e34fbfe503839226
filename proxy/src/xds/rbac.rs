//! `envoy.filters.http.rbac` / `envoy.filters.network.rbac` -> [`Rbac`]: policies, permissions and
//! principals. What Strait cannot evaluate (CEL conditions, metadata, custom matchers) is refused,
//! never skipped: a skipped rule would allow or deny the wrong requests.

use super::convert::{self, ConfigError, Result};
use crate::policy::rbac::{Action, HeaderRule, Permission, Policy, Principal, Pseudo, Rbac, Rules};
use xds_proto::pb::envoy::config::rbac::v3 as rbac;
use xds_proto::pb::envoy::config::route::v3 as route;
use xds_proto::pb::envoy::r#type::matcher::v3 as matcher;

/// An RBAC filter's `rules` and `shadow_rules` (`matcher` / `shadow_matcher` are refused).
pub fn filter(rules: Option<&rbac::Rbac>, shadow: Option<&rbac::Rbac>, matcher_set: bool) -> Result<Rbac> {
    if matcher_set {
        return Err(ConfigError::new("matcher", "the matcher API is not supported (use rules)"));
    }
    Ok(Rbac {
        rules: rules.map(|r| convert_rules(r).map_err(|e| e.within("rules"))).transpose()?,
        shadow: shadow.map(|r| convert_rules(r).map_err(|e| e.within("shadow_rules"))).transpose()?,
    })
}

fn convert_rules(r: &rbac::Rbac) -> Result<Rules> {
    let action = match rbac::rbac::Action::try_from(r.action) {
        Ok(rbac::rbac::Action::Allow) => Action::Allow,
        Ok(rbac::rbac::Action::Deny) => Action::Deny,
        Ok(rbac::rbac::Action::Log) => Action::Log,
        Err(_) => return Err(ConfigError::new("action", format!("unknown action {}", r.action))),
    };
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let at = format!("policies[\"{name}\"]");
        policies.push((name.clone(), policy(&r.policies[name]).map_err(|e| e.within(&at))?));
    }
    Ok(Rules { action, policies })
}

fn policy(p: &rbac::Policy) -> Result<Policy> {
    if p.condition.is_some() || p.checked_condition.is_some() {
        return Err(ConfigError::new("condition", "CEL conditions are not supported"));
    }
    if p.permissions.is_empty() || p.principals.is_empty() {
        return Err(ConfigError::new("", "a policy needs at least one permission and one principal"));
    }
    let permissions = p
        .permissions
        .iter()
        .enumerate()
        .map(|(i, x)| permission(x).map_err(|e| e.within(&format!("permissions[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    let principals = p
        .principals
        .iter()
        .enumerate()
        .map(|(i, x)| principal(x).map_err(|e| e.within(&format!("principals[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Policy { permissions, principals })
}

fn permission(p: &rbac::Permission) -> Result<Permission> {
    use rbac::permission::Rule as R;
    let set = |rules: &[rbac::Permission], field: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x).map_err(|e| e.within(&format!("{field}.rules[{i}]"))))
            .collect::<Result<Vec<_>>>()
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any,
        Some(R::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(R::NotRule(inner)) => Permission::Not(Box::new(permission(inner).map_err(|e| e.within("not_rule"))?)),
        Some(R::Header(h)) => Permission::Header(header_rule(h).map_err(|e| e.within("header"))?),
        Some(R::UrlPath(m)) => Permission::UrlPath(path_matcher(m).map_err(|e| e.within("url_path"))?),
        Some(R::DestinationIp(r)) => {
            Permission::DestinationIp(convert::cidr_range(r).map_err(|e| e.within("destination_ip"))?)
        }
        Some(R::DestinationPort(port)) => Permission::DestinationPort(
            u16::try_from(*port).map_err(|_| ConfigError::new("destination_port", "is not a port"))?,
        ),
        Some(R::DestinationPortRange(r)) => {
            let port = |v: i32| {
                u16::try_from(v).map_err(|_| ConfigError::new("destination_port_range", "is not a port range"))
            };
            Permission::DestinationPortRange(port(r.start)?, port(r.end)?)
        }
        Some(R::RequestedServerName(m)) => {
            Permission::RequestedServerName(convert::string_matcher(m, "requested_server_name")?)
        }
        Some(R::Any(false)) | None => return Err(ConfigError::new("rule", "a permission rule is required")),
        Some(_) => {
            return Err(ConfigError::new(
                "rule",
                "this permission rule (metadata, matcher, uri_template) is not supported",
            ));
        }
    })
}

fn principal(p: &rbac::Principal) -> Result<Principal> {
    use rbac::principal::Identifier as I;
    let set = |ids: &[rbac::Principal], field: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, x)| principal(x).map_err(|e| e.within(&format!("{field}.ids[{i}]"))))
            .collect::<Result<Vec<_>>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any,
        Some(I::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(I::NotId(inner)) => Principal::Not(Box::new(principal(inner).map_err(|e| e.within("not_id"))?)),
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| convert::string_matcher(m, "authenticated.principal_name"))
                .transpose()?,
        ),
        #[allow(deprecated)]
        Some(I::SourceIp(r)) => Principal::DirectRemoteIp(convert::cidr_range(r).map_err(|e| e.within("source_ip"))?),
        Some(I::DirectRemoteIp(r)) => {
            Principal::DirectRemoteIp(convert::cidr_range(r).map_err(|e| e.within("direct_remote_ip"))?)
        }
        Some(I::RemoteIp(r)) => Principal::RemoteIp(convert::cidr_range(r).map_err(|e| e.within("remote_ip"))?),
        Some(I::Header(h)) => Principal::Header(header_rule(h).map_err(|e| e.within("header"))?),
        Some(I::UrlPath(m)) => Principal::UrlPath(path_matcher(m).map_err(|e| e.within("url_path"))?),
        Some(I::Any(false)) | None => return Err(ConfigError::new("identifier", "a principal identifier is required")),
        Some(_) => {
            return Err(ConfigError::new(
                "identifier",
                "this principal identifier (metadata, filter_state, custom) is not supported",
            ));
        }
    })
}

fn path_matcher(m: &matcher::PathMatcher) -> Result<crate::routing::matcher::StringMatcher> {
    match &m.rule {
        Some(matcher::path_matcher::Rule::Path(s)) => convert::string_matcher(s, "path"),
        None => Err(ConfigError::new("path", "is required")),
    }
}

/// A header matcher; `:method`, `:path`, `:authority` (and `host`) and `:scheme` name the request's.
fn header_rule(h: &route::HeaderMatcher) -> Result<HeaderRule> {
    let pseudo = match h.name.as_str() {
        ":method" => Some(Pseudo::Method),
        ":path" => Some(Pseudo::Path),
        ":authority" | "host" => Some(Pseudo::Authority),
        ":scheme" => Some(Pseudo::Scheme),
        n if n.starts_with(':') => return Err(ConfigError::new("name", format!("unknown pseudo-header {n}"))),
        _ => None,
    };
    Ok(match pseudo {
        None => HeaderRule::Header(super::route::header_matcher(h)?),
        Some(name) => HeaderRule::Pseudo { name, check: super::route::header_check(h)?, invert: h.invert_match },
    })
}
