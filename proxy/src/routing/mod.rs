//! Route tables: a virtual host is picked by authority, its routes are tried in order, and the first
//! match says what to do with the request (forward to a cluster, redirect, or answer directly).

mod domains;
pub mod hash_policy;
pub mod headers;
pub mod matcher;
pub mod redirect;

pub use domains::{DomainIndex, strip_port};
pub use headers::{AppendAction, HeaderAdd, HeaderMutation};
pub use matcher::{HeaderMatcher, PathMatch, QueryMatcher, StringMatcher};
pub use redirect::Redirect;

use http::{HeaderMap, Method, StatusCode};
use regex::Regex;
use std::time::Duration;

/// A validated `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub domains: DomainIndex,
    pub ignore_port_in_host_matching: bool,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub most_specific_header_mutations_wins: bool,
    /// `typed_per_filter_config` for the whole table.
    pub filter_configs: crate::policy::FilterOverrides,
    /// The config is refused when a route names a cluster that does not exist (Envoy's
    /// `validate_clusters`: on for inline routes, off for RDS, where such a route answers 503 `NC`).
    pub validate_clusters: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub filter_configs: crate::policy::FilterOverrides,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub filter_configs: crate::policy::FilterOverrides,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    /// Only gRPC requests (`content-type: application/grpc*`) match.
    pub grpc_only: bool,
}

/// What the request parts a route can look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl RouteMatch {
    /// `path` is the request path without its query, split once per request by the caller.
    pub fn matches(&self, req: &RequestView<'_>, path: &str) -> bool {
        if !self.path.matches_split(req.path_and_query, path, self.case_sensitive) {
            return false;
        }
        if self.grpc_only && !is_grpc(req.headers) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req.headers)) {
            return false;
        }
        if !self.query.is_empty() {
            let query = req.path_and_query.split_once('?').map(|(_, q)| q);
            return self.query.iter().all(|q| q.matches(query));
        }
        true
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What a matched route does.
#[derive(Debug)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect(Redirect),
    Direct(DirectResponse),
}

#[derive(Debug)]
pub struct Forward {
    pub target: RouteTarget,
    /// `cluster_not_found_response_code`: the answer when the cluster is not there (503 by default).
    pub cluster_not_found: StatusCode,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<http::HeaderValue>,
    /// `None` when the route's timeout is disabled (`0s`); Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// `x-envoy-expected-rq-timeout-ms` for a request that keeps the route's timeouts (made once).
    pub expected_timeout: Option<http::HeaderValue>,
    /// `idle_timeout`: the stream's idle timeout on this route (`Some(None)`: none), instead of the
    /// connection manager's `stream_idle_timeout`.
    pub idle_timeout: Option<Option<Duration>>,
    /// `max_stream_duration`: the stream's limit on this route (and how a gRPC caller's deadline sets it).
    pub stream_duration: Option<crate::policy::timeout::StreamDuration>,
    /// `max_grpc_timeout`: a gRPC caller's deadline as the route timeout.
    pub grpc_timeout: Option<crate::policy::timeout::GrpcTimeout>,
    /// The route's (or else its virtual host's) retry policy.
    pub retry: Option<std::sync::Arc<crate::policy::retry::RetryPolicy>>,
    /// Request body bytes kept for a retry (also one `x-envoy-retry-on` asks for).
    pub retry_buffer_limit: usize,
    /// `request_mirror_policies`: shadow clusters that get a copy of a share of the requests.
    pub mirrors: Vec<crate::policy::mirror::MirrorPolicy>,
    /// What RING_HASH and MAGLEV clusters hash a request by.
    pub hash_policy: Vec<hash_policy::HashPolicy>,
}

/// Where a forwarding route sends its requests: its clusters, or the one a request header names.
#[derive(Debug)]
pub enum RouteTarget {
    Clusters(ClusterTarget),
    /// `cluster_header`: the cluster named by the request's header (without one, no cluster is
    /// found).
    Header(http::HeaderName),
}

impl RouteTarget {
    /// The cluster for a request with these headers (a copy only when a header names it).
    pub fn pick<'a>(&'a self, headers: &http::HeaderMap) -> std::borrow::Cow<'a, str> {
        match self {
            RouteTarget::Clusters(target) => std::borrow::Cow::Borrowed(target.pick()),
            RouteTarget::Header(name) => {
                let value = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
                std::borrow::Cow::Owned(value.to_string())
            }
        }
    }

    /// The clusters named in the config (none for a header's).
    pub fn names(&self) -> Vec<&str> {
        match self {
            RouteTarget::Clusters(target) => target.names(),
            RouteTarget::Header(_) => Vec::new(),
        }
    }
}

/// One cluster, or a weighted choice among several (a canary split).
#[derive(Debug)]
pub enum ClusterTarget {
    Single(String),
    Weighted(WeightedClusters),
}

#[derive(Debug)]
pub struct WeightedClusters {
    /// (cluster name, cumulative weight): a pick draws `r < total` and takes the first entry above it.
    pub cumulative: Vec<(String, u64)>,
    pub total: u64,
}

impl WeightedClusters {
    pub fn new(clusters: Vec<(String, u32)>) -> Self {
        let mut total = 0u64;
        let cumulative = clusters
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(name, w)| {
                total += u64::from(w);
                (name, total)
            })
            .collect();
        WeightedClusters { cumulative, total }
    }

    /// Picks a cluster with probability proportional to its weight, from a uniform draw in `0..total`.
    pub fn pick_with(&self, draw: u64) -> &str {
        let i = self.cumulative.partition_point(|(_, upto)| *upto <= draw);
        &self.cumulative[i.min(self.cumulative.len() - 1)].0
    }

    pub fn pick(&self) -> &str {
        self.pick_with(fastrand::u64(0..self.total))
    }
}

impl ClusterTarget {
    pub fn pick(&self) -> &str {
        match self {
            ClusterTarget::Single(name) => name,
            ClusterTarget::Weighted(w) => w.pick(),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterTarget::Single(name) => vec![name.as_str()],
            ClusterTarget::Weighted(w) => w.cumulative.iter().map(|(n, _)| n.as_str()).collect(),
        }
    }
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Option<bytes::Bytes>,
}

impl Forward {
    /// The path sent upstream: `prefix_rewrite` replaces what the route matched, `regex_rewrite`
    /// substitutes in the path (the query string is kept as it is).
    pub fn rewrite_path(&self, matched: &PathMatch, path_and_query: &str) -> Option<String> {
        if let Some(prefix) = &self.prefix_rewrite {
            let cut = matched.rewrite_len(path_and_query).min(path_and_query.len());
            return Some(format!("{prefix}{}", &path_and_query[cut..]));
        }
        if let Some((re, substitution)) = &self.regex_rewrite {
            let (path, query) = match path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path_and_query, None),
            };
            let new_path = re.replace_all(path, substitution.as_str());
            return Some(match query {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path.into_owned(),
            });
        }
        None
    }
}

impl RouteTable {
    /// The virtual host for an authority, by Envoy's domain search order.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching { strip_port(authority) } else { authority };
        self.domains.find(host).map(|i| &self.virtual_hosts[i])
    }

    /// The first route that matches, with its virtual host.
    pub fn find(&self, req: &RequestView<'_>) -> Option<(&VirtualHost, &Route)> {
        let vhost = self.virtual_host(req.authority)?;
        let path = matcher::without_query(req.path_and_query);
        vhost.routes.iter().find(|r| r.matcher.matches(req, path)).map(|r| (vhost, r))
    }

    /// Header mutations in the order Envoy applies them: route, virtual host, route configuration
    /// (reversed with `most_specific_header_mutations_wins`).
    pub fn mutations<'a>(&'a self, vhost: &'a VirtualHost, route: &'a Route, request: bool) -> [&'a HeaderMutation; 3] {
        let pick = |r: &'a HeaderMutation, q: &'a HeaderMutation| if request { r } else { q };
        let levels = [
            pick(&route.request_headers, &route.response_headers),
            pick(&vhost.request_headers, &vhost.response_headers),
            pick(&self.request_headers, &self.response_headers),
        ];
        if self.most_specific_header_mutations_wins { [levels[2], levels[1], levels[0]] } else { levels }
    }
}

#[cfg(test)]
mod tests;
