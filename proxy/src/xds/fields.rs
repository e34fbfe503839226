//! Finds fields that are set in a config but that Strait does not implement, by walking the message
//! with its descriptor (typed_config `Any`s included). Lenient mode logs each once; `--strict` rejects.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use std::collections::HashSet;
use std::sync::Mutex;

/// The fields Strait implements, per message type. Message types not listed are taken whole (well-known
/// types, wrappers, `Node`); a set field missing from its type's list is reported.
const SUPPORTED: &[(&str, &[&str])] = &[
    ("envoy.config.bootstrap.v3.Bootstrap", &["admin", "static_resources", "dynamic_resources", "node"]),
    ("envoy.config.bootstrap.v3.Bootstrap.DynamicResources", &["lds_config", "cds_config", "ads_config"]),
    ("envoy.config.core.v3.ConfigSource", &["ads", "resource_api_version"]),
    (
        "envoy.config.core.v3.ApiConfigSource",
        &["api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"],
    ),
    ("envoy.config.core.v3.GrpcService", &["envoy_grpc", "initial_metadata"]),
    ("envoy.config.core.v3.GrpcService.EnvoyGrpc", &["cluster_name"]),
    ("envoy.config.bootstrap.v3.Admin", &["address"]),
    ("envoy.config.bootstrap.v3.Bootstrap.StaticResources", &["listeners", "clusters", "secrets"]),
    ("envoy.config.core.v3.Address", &["socket_address"]),
    ("envoy.config.core.v3.SocketAddress", &["address", "port_value", "protocol"]),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "stat_prefix",
            "listener_filters",
            "listener_filters_timeout",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &["filters", "name", "filter_chain_match", "transport_socket", "transport_socket_connect_timeout"],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "source_prefix_ranges",
            "source_ports",
        ],
    ),
    ("envoy.config.listener.v3.ListenerFilter", &["name", "typed_config"]),
    ("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", &[]),
    ("envoy.config.core.v3.TransportSocket", &["name", "typed_config"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate", "prefer_client_ciphers"],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", &["common_tls_context", "sni"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
            "alpn_protocols",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &["default_validation_context", "validation_context_sds_secret_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &["tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites"],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.TlsCertificate", &["certificate_chain", "private_key"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &["trusted_ca", "match_typed_subject_alt_names"],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher", &["san_type", "matcher"]),
    ("envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig", &["name", "sds_config"]),
    ("envoy.extensions.transport_sockets.tls.v3.Secret", &["name", "tls_certificate", "validation_context"]),
    ("envoy.extensions.filters.http.rbac.v3.RBAC", &["rules", "shadow_rules", "matcher", "shadow_matcher"]),
    ("envoy.extensions.filters.http.rbac.v3.RBACPerRoute", &["rbac"]),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &["rules", "shadow_rules", "stat_prefix", "enforcement_type", "matcher", "shadow_matcher"],
    ),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    ("envoy.config.rbac.v3.Policy", &["permissions", "principals", "condition", "checked_condition"]),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "not_rule",
            "requested_server_name",
            "metadata",
            "matcher",
            "uri_template",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "not_id",
            "metadata",
            "filter_state",
            "custom",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    ("envoy.config.rbac.v3.Principal.Authenticated", &["principal_name"]),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    ("envoy.config.core.v3.DataSource", &["filename", "inline_string", "inline_bytes", "environment_variable"]),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "stat_prefix",
            "codec_type",
            "route_config",
            "http_filters",
            "stream_idle_timeout",
            "request_timeout",
            "common_http_protocol_options",
            "use_remote_address",
            "internal_address_config",
            "xff_num_trusted_hops",
            "skip_xff_append",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "server_name",
            "max_request_headers_kb",
            "http2_protocol_options",
            "strip_any_host_port",
            "upgrade_configs",
            "access_log",
            "forward_client_cert_details",
            "set_current_client_cert_details",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["subject", "cert", "dns", "uri"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config", "is_optional", "disabled"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled", "filters"],
    ),
    ("envoy.extensions.filters.http.router.v3.Router", &["suppress_envoy_headers"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["cidr_ranges"],
    ),
    ("envoy.config.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &[
            "idle_timeout",
            "max_headers_count",
            "max_requests_per_connection",
            "max_connection_duration",
            "max_stream_duration",
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &["stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "access_log"],
    ),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster", &["clusters"]),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight", &["name", "weight"]),
    ("envoy.config.accesslog.v3.AccessLog", &["name", "typed_config", "filter"]),
    ("envoy.extensions.access_loggers.file.v3.FileAccessLog", &["path", "format", "log_format"]),
    ("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", &["log_format"]),
    ("envoy.extensions.access_loggers.stream.v3.StderrAccessLog", &["log_format"]),
    ("envoy.config.core.v3.SubstitutionFormatString", &["text_format", "text_format_source", "json_format"]),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "ignore_port_in_host_matching",
            "validate_clusters",
            "typed_per_filter_config",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "retry_policy",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
            "typed_per_filter_config",
            "hedge_policy",
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "typed_per_filter_config",
        ],
    ),
    ("envoy.config.route.v3.FilterConfig", &["config", "is_optional", "disabled"]),
    ("envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit", &["stat_prefix", "token_bucket"]),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "request_headers_to_add_when_not_enforced",
            "response_headers_to_add",
            "enable_x_ratelimit_headers",
            "rate_limited_as_resource_exhausted",
            "enable_retry_after_header",
        ],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[
            "delay",
            "abort",
            "headers",
            "max_active_faults",
            "downstream_nodes",
            "upstream_cluster",
            "response_rate_limit",
        ],
    ),
    ("envoy.extensions.filters.common.fault.v3.FaultRateLimit", &["fixed_limit", "header_limit", "percentage"]),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "grpc_status", "header_abort", "percentage", "response_body"],
    ),
    ("envoy.extensions.filters.common.fault.v3.FaultDelay", &["fixed_delay", "header_delay", "percentage"]),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
        ],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
    ),
    ("envoy.config.route.v3.QueryParameterMatcher", &["name", "string_match", "present_match"]),
    ("envoy.type.matcher.v3.StringMatcher", &["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"]),
    ("envoy.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("envoy.type.matcher.v3.RegexMatchAndSubstitute", &["pattern", "substitution"]),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "cluster_header",
            "cluster_not_found_response_code",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "timeout",
            "idle_timeout",
            "retry_policy",
            "hash_policy",
            "max_stream_duration",
            "max_grpc_timeout",
            "grpc_timeout_offset",
            "request_mirror_policies",
            "hedge_policy",
        ],
    ),
    (
        "envoy.config.route.v3.HedgePolicy",
        &["initial_requests", "additional_request_chance", "hedge_on_per_try_timeout"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "cluster_header", "runtime_fraction", "trace_sampled", "disable_shadow_host_suffix_append"],
    ),
    (
        "envoy.config.route.v3.RouteAction.MaxStreamDuration",
        &["max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &["header", "cookie", "connection_properties", "query_parameter", "filter_state", "terminal"],
    ),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Header", &["header_name", "regex_rewrite"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Cookie", &["name", "ttl", "path", "attributes"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties", &["source_ip"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter", &["name"]),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retry_priority",
            "retry_host_predicate",
            "retry_options_predicates",
            "host_selection_retry_max_attempts",
            "retriable_status_codes",
            "retry_back_off",
            "rate_limited_retry_back_off",
            "retriable_headers",
            "retriable_request_headers",
        ],
    ),
    ("envoy.config.route.v3.RetryPolicy.RetryBackOff", &["base_interval", "max_interval"]),
    ("envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff", &["reset_headers", "max_interval"]),
    ("envoy.config.route.v3.RetryPolicy.ResetHeader", &["name", "format"]),
    ("envoy.config.route.v3.RetryPolicy.RetryHostPredicate", &["name", "typed_config"]),
    ("envoy.config.route.v3.WeightedCluster", &["clusters", "total_weight"]),
    ("envoy.config.route.v3.WeightedCluster.ClusterWeight", &["name", "weight"]),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    ("envoy.config.route.v3.DirectResponseAction", &["status", "body"]),
    ("envoy.config.core.v3.HeaderValueOption", &["header", "append", "append_action", "keep_empty_value"]),
    ("envoy.config.core.v3.HeaderValue", &["key", "value", "raw_value"]),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "transport_socket",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "dns_refresh_rate",
            "dns_lookup_family",
            "typed_extension_protocol_options",
            "least_request_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "http2_protocol_options",
            "circuit_breakers",
            "outlier_detection",
            "common_lb_config",
            "health_checks",
            "load_balancing_policy",
        ],
    ),
    ("envoy.config.cluster.v3.LoadBalancingPolicy", &["policies"]),
    ("envoy.config.cluster.v3.LoadBalancingPolicy.Policy", &["typed_extension_config"]),
    ("envoy.config.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    ("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin", &[]),
    ("envoy.extensions.load_balancing_policies.random.v3.Random", &[]),
    ("envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", &["choice_count"]),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        &["hash_function", "minimum_ring_size", "maximum_ring_size"],
    ),
    ("envoy.extensions.load_balancing_policies.maglev.v3.Maglev", &["table_size"]),
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "alt_port",
            // Each probe opens its own connection either way; only the connection count differs.
            "reuse_connection",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "tls_options",
            "transport_socket_match_criteria",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
            "custom_health_check",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        &[
            "host",
            "path",
            "expected_statuses",
            "codec_client_type",
            "request_headers_to_add",
            "request_headers_to_remove",
        ],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    ("envoy.config.core.v3.HealthCheck.TcpHealthCheck", &["send", "receive"]),
    ("envoy.config.core.v3.HealthCheck.Payload", &["text", "binary"]),
    ("envoy.config.core.v3.HealthCheck.GrpcHealthCheck", &["service_name", "authority"]),
    ("envoy.config.cluster.v3.Cluster.CommonLbConfig", &["healthy_panic_threshold", "locality_weighted_lb_config"]),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_success_rate",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            // Only in effect with split_external_local_origin_errors, as in Envoy.
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "enforcing_failure_percentage_local_origin",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "monitors",
            "always_eject_one_host",
        ],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds", "per_host_thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "retry_budget",
            "max_connection_pools",
        ],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget", &["budget_percent", "min_retry_concurrency"]),
    ("envoy.config.cluster.v3.Cluster.LeastRequestLbConfig", &["choice_count"]),
    ("envoy.config.cluster.v3.Cluster.RingHashLbConfig", &["minimum_ring_size", "maximum_ring_size", "hash_function"]),
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", &["table_size"]),
    ("envoy.config.endpoint.v3.ClusterLoadAssignment", &["cluster_name", "endpoints", "policy"]),
    // `endpoint_stale_after` is an EDS freshness guard; its absence (the default) means never stale.
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        &["overprovisioning_factor", "weighted_priority_health", "drop_overloads"],
    ),
    // `load_balancing_weight` only matters with `locality_weighted_lb_config`, as in Envoy.
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &["lb_endpoints", "locality", "priority", "load_balancing_weight"],
    ),
    ("envoy.config.endpoint.v3.LbEndpoint", &["endpoint", "health_status", "load_balancing_weight"]),
    ("envoy.config.endpoint.v3.Endpoint", &["address", "hostname"]),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["explicit_http_config", "use_downstream_protocol_config", "auto_config", "common_http_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options", "http3_protocol_options"],
    ),
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &["max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"],
    ),
];

/// A set field that Strait ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Where in the document, e.g. `static_resources.clusters[0].circuit_breakers`.
    pub path: String,
    /// The message type and field, e.g. `envoy.config.cluster.v3.Cluster.circuit_breakers`.
    pub field: String,
}

/// Every set-but-unsupported field in `message`.
pub fn unsupported_fields<T: prost::Message + prost::Name>(message: &T) -> Vec<Unsupported> {
    let mut out = Vec::new();
    if let Ok(dynamic) = xds_proto::to_dynamic(message) {
        walk(&dynamic, "", &mut out);
    }
    out
}

fn supported(type_name: &str) -> Option<&'static [&'static str]> {
    SUPPORTED.iter().find(|(t, _)| *t == type_name).map(|(_, f)| *f)
}

fn walk(message: &DynamicMessage, path: &str, out: &mut Vec<Unsupported>) {
    let desc = message.descriptor();
    let allowed = supported(desc.full_name());
    for (field, value) in message.fields() {
        let field_path = if path.is_empty() { field.name().to_string() } else { format!("{path}.{}", field.name()) };
        if let Some(allowed) = allowed {
            if !allowed.contains(&field.name()) {
                out.push(Unsupported { path: field_path, field: format!("{}.{}", desc.full_name(), field.name()) });
                continue;
            }
        } else {
            continue;
        }
        walk_value(value, &field_path, out);
    }
}

fn walk_value(value: &Value, path: &str, out: &mut Vec<Unsupported>) {
    match value {
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Any" => {
            if let Some(inner) = unpack_any(m) {
                walk(&inner, path, out);
            }
        }
        Value::Message(m) => walk(m, path, out),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(map) => {
            for (key, item) in map {
                let key = match key {
                    prost_reflect::MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk_value(item, &format!("{path}[\"{key}\"]"), out);
            }
        }
        _ => {}
    }
}

fn unpack_any(any: &DynamicMessage) -> Option<DynamicMessage> {
    let type_url = any.get_field_by_name("type_url")?.as_str()?.to_string();
    let value = any.get_field_by_name("value")?.as_bytes()?.clone();
    let name = type_url.rsplit('/').next()?;
    let desc = xds_proto::descriptor_pool().get_message_by_name(name)?;
    DynamicMessage::decode(desc, value).ok()
}

/// Logs each unsupported field once per process (by field, not by path).
pub fn warn_once(fields: &[Unsupported]) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    for u in fields {
        if seen.insert(u.field.clone()) {
            tracing::warn!(path = %u.path, field = %u.field, "field is not supported by Strait and is ignored (--strict rejects it)");
        }
    }
}
