//! `RouteConfiguration` -> [`RouteTable`]: virtual hosts, route matches and actions.

use super::convert::{self, ConfigError, Result, header_mutation};
use crate::policy::Fraction;
use crate::policy::mirror::{MirrorPolicy, MirrorTarget};
use crate::policy::timeout::{GrpcTimeout, StreamDuration};
use crate::routing::matcher::{HeaderCheck, HeaderMatcher, PathMatch, QueryMatcher, StringMatch, StringMatcher};
use crate::routing::redirect::RedirectPath;
use crate::routing::{
    Action, ClusterTarget, DirectResponse, DomainIndex, Forward, Redirect, Route, RouteMatch, RouteTable, RouteTarget,
    VirtualHost, WeightedClusters,
};
use http::StatusCode;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3 as route;

/// Envoy's default route timeout.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default `max_direct_response_body_size_bytes`.
const MAX_DIRECT_RESPONSE_BODY: usize = 4096;

pub fn route_table(rc: &route::RouteConfiguration) -> Result<RouteTable> {
    let mut domains = DomainIndex::default();
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            return Err(ConfigError::new(format!("{at}.domains"), "at least one domain is required"));
        }
        for (j, d) in vh.domains.iter().enumerate() {
            domains.insert(d, i).map_err(|e| ConfigError::new(format!("{at}.domains[{j}]"), e))?;
        }
        virtual_hosts.push(virtual_host(vh).map_err(|e| e.within(&at))?);
    }
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
        domains,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        validate_clusters: rc.validate_clusters.is_none_or(|v| v.value),
        request_headers: header_mutation(&rc.request_headers_to_add, &rc.request_headers_to_remove, "", "request")
            .map_err(strip_dot)?,
        response_headers: header_mutation(&rc.response_headers_to_add, &rc.response_headers_to_remove, "", "response")
            .map_err(strip_dot)?,
        most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
        filter_configs: super::filters::overrides(&rc.typed_per_filter_config)?,
    })
}

fn strip_dot(mut e: ConfigError) -> ConfigError {
    e.path = e.path.trim_start_matches('.').to_string();
    e
}

fn virtual_host(vh: &route::VirtualHost) -> Result<VirtualHost> {
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route_entry(r, vh).map_err(|e| e.within(&format!("routes[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
        request_headers: header_mutation(&vh.request_headers_to_add, &vh.request_headers_to_remove, "", "request")
            .map_err(strip_dot)?,
        response_headers: header_mutation(&vh.response_headers_to_add, &vh.response_headers_to_remove, "", "response")
            .map_err(strip_dot)?,
        filter_configs: super::filters::overrides(&vh.typed_per_filter_config)?,
    })
}

fn route_entry(r: &route::Route, vh: &route::VirtualHost) -> Result<Route> {
    let m = r.r#match.as_ref().ok_or_else(|| ConfigError::new("match", "a route needs a match"))?;
    let matcher = route_match(m).map_err(|e| e.within("match"))?;
    use route::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            let mut forward = forward(ra).map_err(|e| e.within("route"))?;
            #[allow(deprecated)] // Still honoured by Envoy, after request_body_buffer_limit.
            let buffer_limit = (r.request_body_buffer_limit.map(|b| b.value))
                .or(r.per_request_buffer_limit_bytes.map(|b| u64::from(b.value)))
                .or(vh.request_body_buffer_limit.map(|b| b.value))
                .or(vh.per_request_buffer_limit_bytes.map(|b| u64::from(b.value)));
            forward.retry_buffer_limit = buffer_limit
                .map_or(crate::policy::retry::DEFAULT_BUFFER_LIMIT, |b| usize::try_from(b).unwrap_or(usize::MAX));
            let hedge = ra.hedge_policy.as_ref().or(vh.hedge_policy.as_ref());
            let (own, inherited) = (ra.retry_policy.as_ref(), vh.retry_policy.as_ref());
            forward.retry =
                super::retry::retry_policy(own, inherited, hedge, forward.retry_buffer_limit)?.map(std::sync::Arc::new);
            let per_try = forward.retry.as_ref().and_then(|p| p.per_try_timeout);
            forward.expected_timeout = crate::policy::timeout::expected_header(forward.timeout, per_try);
            Action::Forward(Box::new(forward))
        }
        Some(A::Redirect(rd)) => Action::Redirect(redirect(rd).map_err(|e| e.within("redirect"))?),
        Some(A::DirectResponse(dr)) => Action::Direct(direct(dr).map_err(|e| e.within("direct_response"))?),
        Some(A::FilterAction(_)) | Some(A::NonForwardingAction(_)) => {
            return Err(ConfigError::new("action", "only route, redirect and direct_response actions are supported"));
        }
        None => return Err(ConfigError::new("", "a route needs one of route, redirect or direct_response")),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: header_mutation(&r.request_headers_to_add, &r.request_headers_to_remove, "", "request")
            .map_err(strip_dot)?,
        response_headers: header_mutation(&r.response_headers_to_add, &r.response_headers_to_remove, "", "response")
            .map_err(strip_dot)?,
        filter_configs: super::filters::overrides(&r.typed_per_filter_config)?,
    })
}

fn route_match(m: &route::RouteMatch) -> Result<RouteMatch> {
    use route::route_match::PathSpecifier as P;
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(convert::regex(r, "safe_regex")?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                return Err(ConfigError::new("path_separated_prefix", "must not end in '/' or contain '?' or '#'"));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => {
            return Err(ConfigError::new("connect_matcher", "CONNECT routing is not supported yet"));
        }
        Some(P::PathMatchPolicy(_)) => {
            return Err(ConfigError::new("path_match_policy", "path match policies are not supported"));
        }
        None => {
            return Err(ConfigError::new("", "one of prefix, path, safe_regex or path_separated_prefix is required"));
        }
    };
    if m.runtime_fraction.is_some() {
        return Err(ConfigError::new("runtime_fraction", "runtime fractions are not supported"));
    }
    if !m.cookies.is_empty() || !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() || m.tls_context.is_some()
    {
        return Err(ConfigError::new("", "only path, headers, query_parameters and grpc matches are supported"));
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h).map_err(|e| e.within(&format!("headers[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(q).map_err(|e| e.within(&format!("query_parameters[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.is_none_or(|b| b.value),
        headers,
        query,
        grpc_only: m.grpc.is_some(),
    })
}

pub(super) fn header_matcher(h: &route::HeaderMatcher) -> Result<HeaderMatcher> {
    Ok(HeaderMatcher {
        name: convert::header_name(&h.name, "name")?,
        check: header_check(h)?,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

/// What a `HeaderMatcher` checks of the value, whichever header (or pseudo-header) it names.
#[allow(deprecated)]
pub(super) fn header_check(h: &route::HeaderMatcher) -> Result<HeaderCheck> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let exact =
        |s: &str| HeaderCheck::Value(StringMatcher { kind: StringMatch::Exact(s.to_string()), ignore_case: false });
    let non_empty = |s: &String, field: &str| {
        if s.is_empty() { Err(ConfigError::new(field, "must not be empty; use present_match")) } else { Ok(s.clone()) }
    };
    let value = |kind| HeaderCheck::Value(StringMatcher { kind, ignore_case: false });
    Ok(match &h.header_match_specifier {
        None => HeaderCheck::Present(true),
        Some(S::ExactMatch(s)) => exact(s),
        Some(S::SafeRegexMatch(r)) => value(StringMatch::Regex(convert::regex(r, "safe_regex_match")?)),
        Some(S::RangeMatch(r)) => HeaderCheck::Range { start: r.start, end: r.end },
        Some(S::PresentMatch(p)) => HeaderCheck::Present(*p),
        Some(S::PrefixMatch(s)) => value(StringMatch::Prefix(non_empty(s, "prefix_match")?)),
        Some(S::SuffixMatch(s)) => value(StringMatch::Suffix(non_empty(s, "suffix_match")?)),
        Some(S::ContainsMatch(s)) => value(StringMatch::Contains(non_empty(s, "contains_match")?)),
        Some(S::StringMatch(m)) => HeaderCheck::Value(convert::string_matcher(m, "string_match")?),
    })
}

fn query_matcher(q: &route::QueryParameterMatcher) -> Result<QueryMatcher> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    if q.name.is_empty() {
        return Err(ConfigError::new("name", "a query parameter name is required"));
    }
    let (value, present) = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(m)) => (Some(convert::string_matcher(m, "string_match")?), None),
        Some(S::PresentMatch(p)) => (None, Some(*p)),
        None => (None, None),
    };
    Ok(QueryMatcher { name: q.name.clone(), value, present })
}

fn mirror_policy(m: &route::route_action::RequestMirrorPolicy) -> Result<MirrorPolicy> {
    let target = match (m.cluster.is_empty(), m.cluster_header.is_empty()) {
        (false, true) => MirrorTarget::Cluster(m.cluster.clone()),
        (true, false) => MirrorTarget::Header(
            http::HeaderName::from_bytes(m.cluster_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new("cluster_header", "not a valid header name"))?,
        ),
        (false, false) => return Err(ConfigError::new("cluster", "only one of cluster and cluster_header may be set")),
        (true, true) => return Err(ConfigError::new("cluster", "one of cluster or cluster_header is required")),
    };
    // No runtime_fraction: every request.
    let share =
        super::filters::fraction(m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()), Fraction::ALL);
    Ok(MirrorPolicy { target, share, keep_host: m.disable_shadow_host_suffix_append })
}

/// Where a route action sends its requests: `cluster`, `weighted_clusters` or `cluster_header`.
fn route_target(ra: &route::RouteAction) -> Result<RouteTarget> {
    use route::route_action::ClusterSpecifier as C;
    let target = match &ra.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => ClusterTarget::Single(name.clone()),
        Some(C::Cluster(_)) => return Err(ConfigError::new("cluster", "must not be empty")),
        Some(C::WeightedClusters(wc)) => {
            let mut clusters = Vec::new();
            for (i, c) in wc.clusters.iter().enumerate() {
                let at = format!("weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        "a cluster name is required (cluster_header is not supported)",
                    ));
                }
                clusters.push((c.name.clone(), c.weight.map_or(0, |w| w.value)));
            }
            let weighted = WeightedClusters::new(clusters);
            if weighted.total == 0 {
                return Err(ConfigError::new("weighted_clusters", "the sum of the weights must be greater than 0"));
            }
            ClusterTarget::Weighted(weighted)
        }
        Some(C::ClusterHeader(name)) => {
            let name = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new("cluster_header", "not a valid header name"))?;
            return Ok(RouteTarget::Header(name));
        }
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(ConfigError::new("cluster_specifier_plugin", "cluster specifier plugins are not supported"));
        }
        None => return Err(ConfigError::new("", "one of cluster or weighted_clusters is required")),
    };
    Ok(RouteTarget::Clusters(target))
}

fn forward(ra: &route::RouteAction) -> Result<Forward> {
    use route::route_action::HostRewriteSpecifier as H;
    let target = route_target(ra)?;
    let cluster_not_found = match ra.cluster_not_found_response_code {
        0 => http::StatusCode::SERVICE_UNAVAILABLE,
        1 => http::StatusCode::NOT_FOUND,
        2 => http::StatusCode::INTERNAL_SERVER_ERROR,
        other => {
            return Err(ConfigError::new("cluster_not_found_response_code", format!("unknown response code {other}")));
        }
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => Some(
            http::HeaderValue::from_str(h).map_err(|_| ConfigError::new("host_rewrite_literal", "not a valid host"))?,
        ),
        Some(_) => return Err(ConfigError::new("host_rewrite_specifier", "only host_rewrite_literal is supported")),
        None => None,
    };
    if !ra.prefix_rewrite.is_empty() && ra.regex_rewrite.is_some() {
        return Err(ConfigError::new("prefix_rewrite", "only one of prefix_rewrite and regex_rewrite may be set"));
    }
    let regex_rewrite = match &ra.regex_rewrite {
        Some(rr) => {
            let pattern = rr.pattern.as_ref().ok_or_else(|| ConfigError::new("regex_rewrite.pattern", "required"))?;
            let re = convert::unanchored_regex(&pattern.regex, "regex_rewrite.pattern")?;
            // RE2 writes capture groups as \1; the regex crate as ${1}.
            let substitution =
                regex::Regex::new(r"\\(\d)").expect("static regex").replace_all(&rr.substitution, "$${$1}");
            Some((re, substitution.into_owned()))
        }
        None => None,
    };
    if !ra.path_rewrite.is_empty() || ra.path_rewrite_policy.is_some() {
        return Err(ConfigError::new("path_rewrite", "only prefix_rewrite and regex_rewrite are supported"));
    }
    let stream_duration = ra.max_stream_duration.as_ref().map(|m| StreamDuration {
        max: m.max_stream_duration.as_ref().map(convert::duration),
        grpc_header_max: m.grpc_timeout_header_max.as_ref().map(convert::duration),
        grpc_header_offset: m.grpc_timeout_header_offset.as_ref().map(convert::duration),
    });
    #[allow(deprecated)] // Still honoured by Envoy: the caller's grpc-timeout as the route timeout.
    let grpc_timeout = ra.max_grpc_timeout.as_ref().map(|max| GrpcTimeout {
        max: convert::duration(max),
        offset: ra.grpc_timeout_offset.as_ref().map(convert::duration),
    });
    let mirrors = ra
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| mirror_policy(m).map_err(|e| e.within(&format!("request_mirror_policies[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Forward {
        target,
        cluster_not_found,
        mirrors,
        stream_duration,
        grpc_timeout,
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        timeout: convert::timeout(ra.timeout.as_ref(), Some(DEFAULT_ROUTE_TIMEOUT)),
        expected_timeout: None,
        idle_timeout: ra.idle_timeout.as_ref().map(|d| Some(convert::duration(d)).filter(|d| !d.is_zero())),
        retry: None,
        retry_buffer_limit: crate::policy::retry::DEFAULT_BUFFER_LIMIT,
        hash_policy: ra
            .hash_policy
            .iter()
            .enumerate()
            .map(|(i, p)| hash_policy(p).map_err(|e| e.within(&format!("hash_policy[{i}]"))))
            .collect::<Result<_>>()?,
    })
}

fn redirect(rd: &route::RedirectAction) -> Result<Redirect> {
    use route::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let path = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => Some(RedirectPath::Path(p.clone())),
        Some(P::PrefixRewrite(p)) => Some(RedirectPath::PrefixRewrite(p.clone())),
        Some(P::RegexRewrite(_)) => {
            return Err(ConfigError::new("regex_rewrite", "regex_rewrite redirects are not supported yet"));
        }
        Some(P::PathRewrite(_)) => {
            return Err(ConfigError::new("path_rewrite", "path_rewrite redirects are not supported yet"));
        }
        None => None,
    };
    let status = match rd.response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        n => return Err(ConfigError::new("response_code", format!("unknown redirect response code {n}"))),
    };
    let port = match rd.port_redirect {
        0 => None,
        p if p <= u32::from(u16::MAX) => Some(p as u16),
        p => return Err(ConfigError::new("port_redirect", format!("{p} is not a port"))),
    };
    Ok(Redirect {
        scheme,
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.clone()),
        port,
        path,
        strip_query: rd.strip_query,
        status,
    })
}

fn direct(dr: &route::DirectResponseAction) -> Result<DirectResponse> {
    let status = u16::try_from(dr.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ConfigError::new("status", format!("{} is not a status in [200, 600)", dr.status)))?;
    let body = match &dr.body {
        Some(ds) => {
            let b = convert::data_source(ds, "body")?;
            if b.len() > MAX_DIRECT_RESPONSE_BODY {
                return Err(ConfigError::new(
                    "body",
                    format!("{} bytes is over the {MAX_DIRECT_RESPONSE_BODY}-byte limit", b.len()),
                ));
            }
            Some(b)
        }
        None => None,
    };
    if dr.body_format.is_some() {
        return Err(ConfigError::new("body_format", "body formats are not supported"));
    }
    Ok(DirectResponse { status, body })
}

fn hash_policy(p: &route::route_action::HashPolicy) -> Result<crate::routing::hash_policy::HashPolicy> {
    use crate::routing::hash_policy::{HashKey, HashPolicy};
    use route::route_action::hash_policy::PolicySpecifier as S;
    let key = match &p.policy_specifier {
        Some(S::Header(h)) => {
            if h.regex_rewrite.is_some() {
                return Err(ConfigError::new("header.regex_rewrite", "is not supported yet"));
            }
            HashKey::Header(convert::header_name(&h.header_name, "header.header_name")?)
        }
        Some(S::Cookie(c)) => {
            if c.name.is_empty() {
                return Err(ConfigError::new("cookie.name", "required"));
            }
            if !c.attributes.is_empty() {
                return Err(ConfigError::new("cookie.attributes", "is not supported yet"));
            }
            HashKey::Cookie { name: c.name.clone(), ttl: c.ttl.as_ref().map(convert::duration), path: c.path.clone() }
        }
        Some(S::ConnectionProperties(c)) if c.source_ip => HashKey::SourceIp,
        Some(S::ConnectionProperties(_)) => {
            return Err(ConfigError::new("connection_properties.source_ip", "must be true"));
        }
        Some(S::QueryParameter(q)) if !q.name.is_empty() => HashKey::QueryParameter(q.name.clone()),
        Some(S::QueryParameter(_)) => return Err(ConfigError::new("query_parameter.name", "required")),
        Some(S::FilterState(_)) => return Err(ConfigError::new("filter_state", "is not supported")),
        None => return Err(ConfigError::new("", "one of header, cookie, connection_properties or query_parameter")),
    };
    Ok(HashPolicy { key, terminal: p.terminal })
}
